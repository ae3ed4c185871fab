import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { CONFIG_KEYS, SETTINGS, envName, flagName, optionOf } from '../../lib/config.js';
import { GENERATED_MARKER, configurationDoc } from '../../lib/config/docs.js';
import { ROOT } from '../helpers/paths.js';

// docs/configuration.md and `ambitd --help` are made from the schema table; these keep them from drifting.

const root = ROOT;
const run = promisify(execFile);

test('docs/configuration.md is what `npm run docs:config` writes from the schema', (t) => {
  const doc = readFileSync(join(root, 'docs', 'configuration.md'), 'utf8');
  t.true(doc.includes(GENERATED_MARKER));
  t.is(doc, configurationDoc(doc), 'run `npm run docs:config`');
  for (const k of CONFIG_KEYS) {
    t.true(doc.includes(`| \`${k}\` | \`${optionOf(k).replaceAll('|', '\\|')}\` | \`${envName(k)}\``), k);
  }
});

test('every setting has its own flag and variable, made from its key', (t) => {
  const flags = new Set(CONFIG_KEYS.map(flagName));
  const vars = new Set(CONFIG_KEYS.map(envName));
  t.is(flags.size, CONFIG_KEYS.length);
  t.is(vars.size, CONFIG_KEYS.length);
  for (const k of CONFIG_KEYS) {
    t.regex(envName(k), /^AMBIT_[A-Z_]+$/);
    t.regex(optionOf(k), /^--[a-z-]+( <.+>)?$/);
    t.truthy(SETTINGS[k].help, `${k} has help`);
  }
  t.is(envName('maxHandshakesPerSource'), 'AMBIT_MAX_HANDSHAKES_PER_SOURCE');
  t.is(optionOf('maxHandshakesPerSource'), '--max-handshakes-per-source <n>');
  t.is(optionOf('registerNode'), '--no-register-node');
  t.is(optionOf('capture'), '--capture');
});

test('ambitd --help lists the flag of every setting', async (t) => {
  const { stdout } = await run(process.execPath, [join(root, 'dist/daemon/main.js'), '--help']);
  for (const k of CONFIG_KEYS) t.true(stdout.includes(`  ${optionOf(k)} `), optionOf(k));
});
