// The last good copy of the mesh file: kept at every apply, started from when the file is broken at start.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { pino } from 'pino';
import { MeshFileSource, lastGoodPath } from '../../daemon/state/file-source.js';
import { StateStore } from '../../daemon/state/store.js';
import { MeshFileError } from '../../lib/errors.js';
import { silentLogger } from '../../lib/log.js';

const NODE = 'nodes:\n  n1: { address: 127.0.0.1 }\n';
const GOOD = `${NODE}workloads:\n  web-1: { node: n1, addresses: [127.0.0.1], ports: [8080] }\n`;
const BROKEN = `${NODE}workloads:\n  web-1: { node: n1, addresses: [127.0.0.1], ports: [0] }\n`;

async function setup(t: ExecutionContext): Promise<{ file: string; lastGood: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-lastgood-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'mesh.yaml');
  return { file, lastGood: lastGoodPath(dir, file) };
}

const until = async (cond: () => boolean, ms: number, what: string): Promise<void> => {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

const text = (f: string): Promise<string> => readFile(f, 'utf8');

/** Until `f` holds `want` (the copy is written just after the store changes). */
async function holds(f: string, want: string, ms = 2000): Promise<string> {
  const deadline = Date.now() + ms;
  let got = '';
  while (Date.now() < deadline) {
    got = await text(f).catch(() => '');
    if (got === want) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  return got;
}

test('lastGoodPath: in the state directory, in the format of the mesh file', (t) => {
  t.is(lastGoodPath('/var/lib/ambit', '/etc/ambit/mesh.yaml'), '/var/lib/ambit/mesh.last-good.yaml');
  t.is(lastGoodPath('/var/lib/ambit', '/etc/ambit/mesh.JSON'), '/var/lib/ambit/mesh.last-good.json');
});

test('every applied file is kept as the last good copy; a rejected one is not', async (t) => {
  const { file, lastGood } = await setup(t);
  await writeFile(file, NODE);
  const source = new MeshFileSource(file, new StateStore(), silentLogger(), {
    pollMs: 100,
    debounceMs: 10,
    lastGood,
  });
  t.teardown(() => source.close());
  await source.start();
  t.is(await text(lastGood), NODE);
  await writeFile(file, GOOD);
  t.is(await holds(lastGood, GOOD), GOOD);
  await writeFile(file, BROKEN);
  await until(() => source.lastError !== undefined, 2000, 'the broken edit to be rejected');
  t.is(await text(lastGood), GOOD);
  await writeFile(file, '');
  await new Promise((r) => setTimeout(r, 300));
  t.is(await text(lastGood), GOOD, 'an empty file is never the last good copy');
});

test('a broken file at start: the last good copy serves, the error is reported, a fixed file applies', async (t) => {
  const { file, lastGood } = await setup(t);
  await writeFile(file, GOOD);
  const first = new MeshFileSource(file, new StateStore(), silentLogger(), { lastGood });
  await first.start();
  first.close();

  await writeFile(file, BROKEN);
  const lines: { level: number; msg: string; field?: string; lastGood?: string }[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => lines.push(JSON.parse(s)) });
  const store = new StateStore();
  const source = new MeshFileSource(file, store, log, { pollMs: 100, debounceMs: 10, lastGood });
  t.teardown(() => source.close());
  const rejected: MeshFileError[] = [];
  source.on('rejected', (e: MeshFileError) => rejected.push(e));
  await source.start();
  t.deepEqual(store.workload('web-1')?.ports, [8080], 'the last good state is in force');
  t.is(source.lastError?.field, 'workloads.web-1.ports[0]');
  t.is(rejected.length, 1);
  const err = lines.filter((l) => l.level === 50);
  t.is(err.length, 1);
  t.is(
    err[0]?.msg,
    'mesh file rejected at start; starting from the last good state, watching for a fixed file',
  );
  t.is(err[0]?.field, 'workloads.web-1.ports[0]');
  t.is(err[0]?.lastGood, lastGood);

  // The poll sees the same broken text: no second report.
  await new Promise((r) => setTimeout(r, 300));
  t.is(rejected.length, 1);

  await writeFile(file, GOOD.replace('8080', '8081'));
  await until(() => store.workload('web-1')?.ports[0] === 8081, 2000, 'the fixed file to be applied');
  t.is(source.lastError, undefined);
  t.is(await holds(lastGood, GOOD.replace('8080', '8081')), GOOD.replace('8080', '8081'));
});

test('a missing or empty file at start with a last good copy starts from it', async (t) => {
  const { file, lastGood } = await setup(t);
  await writeFile(file, GOOD);
  const first = new MeshFileSource(file, new StateStore(), silentLogger(), { lastGood });
  await first.start();
  first.close();
  for (const state of ['missing', 'empty'] as const) {
    if (state === 'missing') await rm(file);
    else await writeFile(file, '\n');
    const store = new StateStore();
    const source = new MeshFileSource(file, store, silentLogger(), { lastGood });
    await source.start();
    source.close();
    t.truthy(store.workload('web-1'), state);
    t.is(source.lastError, undefined, state);
  }
});

test('a broken file at start without a last good copy still refuses to start', async (t) => {
  const { file, lastGood } = await setup(t);
  await writeFile(file, BROKEN);
  const source = new MeshFileSource(file, new StateStore(), silentLogger(), { lastGood });
  await t.throwsAsync(source.start(), { instanceOf: MeshFileError, message: /workloads\.web-1\.ports\[0\]/ });
  source.close();
  // An unusable copy (here: itself broken) is as good as none.
  await writeFile(lastGood, BROKEN);
  await t.throwsAsync(new MeshFileSource(file, new StateStore(), silentLogger(), { lastGood }).start(), {
    instanceOf: MeshFileError,
  });
});
