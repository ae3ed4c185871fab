// How node is started for a waypoint: the systemd drop-in the package ships gives the flags and the
// environment daemon/waypoint/runtime.ts names, and a node started that way is one the daemon finds tuned.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { WAYPOINT_ENV, WAYPOINT_NODE_FLAGS, missingWaypointRuntime } from '../../daemon/waypoint/runtime.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const dropIn = readFileSync(join(root, 'systemd/waypoint.conf'), 'utf8');
const unit = readFileSync(join(root, 'systemd/ambitd.service'), 'utf8');
const lines = (text: string, key: string): string[] =>
  text
    .split('\n')
    .filter((l) => l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1));

/** The drop-in's ExecStart: node's flags between the binary and the script, and the script. */
function execStart(): { node: string; flags: string[]; script: string } {
  const starts = lines(dropIn, 'ExecStart');
  const [node, ...rest] = starts[starts.length - 1]!.split(/\s+/);
  return { node: node!, flags: rest.slice(0, -1), script: rest[rest.length - 1]! };
}

test("the drop-in replaces the unit's ExecStart with the waypoint's flags, and no old-space size", (t) => {
  const starts = lines(dropIn, 'ExecStart');
  // systemd adds a second ExecStart to a simple service's first unless an empty one clears it.
  t.deepEqual(starts.length, 2);
  t.is(starts[0], '');
  const { node, flags, script } = execStart();
  const unitStart = lines(unit, 'ExecStart')[0]!.split(/\s+/);
  t.is(node, unitStart[0]);
  t.is(script, unitStart[unitStart.length - 1]);
  t.deepEqual(flags, [...WAYPOINT_NODE_FLAGS]);
  t.false(flags.some((f) => f.includes('initial-old-space')));
  for (const [k, v] of Object.entries(WAYPOINT_ENV))
    t.true(lines(dropIn, 'Environment').includes(`${k}=${v}`));
});

test('the package ships the drop-in and forgets its link on purge', (t) => {
  const build = readFileSync(join(root, 'packaging/deb/build.mjs'), 'utf8');
  t.true(build.includes("put('usr/share/ambit/waypoint.conf'"));
  const postrm = readFileSync(join(root, 'packaging/deb/postrm'), 'utf8');
  t.true(postrm.includes('/etc/systemd/system/ambitd.service.d/waypoint.conf'));
});

test('a node started as the drop-in starts it lacks none of the waypoint runtime', (t) => {
  const { flags } = execStart();
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH };
  for (const l of lines(dropIn, 'Environment')) {
    const i = l.indexOf('=');
    env[l.slice(0, i)] = l.slice(i + 1);
  }
  const mod = join(root, 'dist/daemon/waypoint/runtime.js');
  const out = execFileSync(
    process.execPath,
    [
      ...flags,
      '--input-type=module',
      '-e',
      `const m = await import(${JSON.stringify(mod)}); process.stdout.write(JSON.stringify(m.missingWaypointRuntime()))`,
    ],
    { env, encoding: 'utf8' },
  );
  t.deepEqual(JSON.parse(out), []);
});

test('what is missing: each flag and variable absent; a flag given another value is not', (t) => {
  t.deepEqual(missingWaypointRuntime([], {}), [
    '--max-semi-space-size=2',
    '--max-old-space-size=1024',
    'MALLOC_ARENA_MAX=2',
  ]);
  t.deepEqual(
    missingWaypointRuntime(['--max_semi_space_size=4', '--max-old-space-size=2048'], {
      MALLOC_ARENA_MAX: '4',
    }),
    [],
  );
  t.deepEqual(
    missingWaypointRuntime(['--initial-old-space-size=64', '--max-old-space-size=1024'], {
      MALLOC_ARENA_MAX: '2',
    }),
    ['--max-semi-space-size=2'],
  );
});
