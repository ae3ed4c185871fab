// The numbers and names the native binding and its TypeScript share: daemon/native/codes.ts is generated
// from native/src/codes.h (native/gen-codes.mjs); these tests fail when the committed file is stale, and
// tie the shared values to the TypeScript that depends on them.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import test from 'ava';
import {
  EV_CLOSE,
  EV_H2_PING,
  KEY_UPDATE_RATE,
  REASON_H2_CONTROL_FLOOD,
  REASON_H2_HEADER_FLOOD,
  REASON_H2_PROTOCOL,
  REASON_H2_RESET_FLOOD,
  STREAM_CLOSED,
} from '../../daemon/native/index.js';
import { DEFAULT_LIMITS } from '../../lib/config.js';
import type { H2RefusalReason } from '../../lib/errors.js';
import { ROOT } from '../helpers/paths.js';

const root = ROOT;
const generator = join(root, 'native', 'gen-codes.mjs');

type Generate = (source: string) => string;
const loadGenerate = async (): Promise<Generate> =>
  ((await import(pathToFileURL(generator).href)) as { generate: Generate }).generate;

test('daemon/native/codes.ts is what the generator makes of native/src/codes.h', (t) => {
  const expected = execFileSync(process.execPath, [generator, '--stdout'], { encoding: 'utf8' });
  const committed = readFileSync(join(root, 'daemon', 'native', 'codes.ts'), 'utf8');
  t.is(committed, expected, 'run `node native/gen-codes.mjs` and commit daemon/native/codes.ts');
});

test('the generated values are the header values', (t) => {
  t.is(EV_CLOSE, 5);
  t.is(EV_H2_PING, 14);
  t.is(STREAM_CLOSED, 0x100);
});

test("the binding's default KeyUpdate rate is the configuration's default", (t) => {
  t.is(KEY_UPDATE_RATE, DEFAULT_LIMITS.keyUpdateRate);
});

test('the HTTP/2 reasons the binding sends are the refusal reasons TypeScript knows', (t) => {
  // The annotation is the check: a reason in codes.h that H2RefusalReason lacks does not compile.
  const reasons: readonly H2RefusalReason[] = [
    REASON_H2_PROTOCOL,
    REASON_H2_RESET_FLOOD,
    REASON_H2_CONTROL_FLOOD,
    REASON_H2_HEADER_FLOOD,
  ];
  t.is(new Set(reasons).size, reasons.length);
});

test('the generator turns defines, comments and the option enum into TypeScript', async (t) => {
  const generate = await loadGenerate();
  const ts = generate(
    [
      '/*',
      ' * The header.',
      ' */',
      '/* A group. */',
      '#define EV_X 7 /* what x carries */',
      '#define REASON_Y "y_z" /* why */',
      'enum h2_option {',
      '  H2_OPT_MAX_FRAME_SIZE, /* the frame size */',
      '  H2_OPT_COUNT',
      '};',
    ].join('\n'),
  );
  t.true(ts.includes('// A group.\n/** what x carries */\nexport const EV_X = 7;\n'));
  t.true(ts.includes("export const REASON_Y = 'y_z';"));
  t.true(
    ts.includes('export type H2Options = readonly [\n  /** the frame size */\n  maxFrameSize: number,\n];'),
  );
  t.false(ts.includes('The header.'));
});

test('the generator refuses what it cannot read', async (t) => {
  const generate = await loadGenerate();
  t.throws(() => generate('#define EV_X 1u /* unsigned */'), { message: /neither an integer/ });
  t.throws(() => generate('#define EV_X 1'), { message: /cannot read/ });
  t.throws(() => generate('int x;'), { message: /cannot read/ });
});
