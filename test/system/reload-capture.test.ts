// A reload with transparent capture on, as root: two hosts as network namespaces, a pod behind each, each
// host's ambitd a supervisor with two workers, run from an installed copy of the build. The client in pod
// A knows nothing of Ambit: it dials the server's own address, and capture carries it (15001 on A, the
// tunnel to B). During a reload of B, then of A, then a re-exec of each (SIGUSR2), then an upgrade of the
// installed copy followed by a reload, it opens a new connection every 10 ms and keeps one open from
// before: none fails, none is cut.
import { cp, rm, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { type World as Hosts, PB, captureWorld, whyNotReady, worldHooks } from '../helpers/capture-world.js';
import { until } from '../helpers/cluster.js';
import { waitForOutput } from '../helpers/netns.js';
import { DIST } from '../helpers/paths.js';

/**
 * Where the daemons run from, as a package would install it: a copy of the build's daemon and lib, inside
 * dist so that node_modules and the native binding are found above it. An upgrade writes a build over it.
 */
const INSTALLED = join(DIST, `installed-${process.pid}`);
async function install(): Promise<void> {
  for (const part of ['daemon', 'lib']) {
    await cp(join(DIST, part), join(INSTALLED, part), { recursive: true });
  }
}
/** A new build on disk: the files written again, as dpkg writes a package's (new modification times). */
async function upgrade(): Promise<void> {
  await install();
  const later = new Date(Date.now() + 1000);
  await utimes(join(INSTALLED, 'daemon', 'supervisor', 'supervisor.js'), later, later);
}

const why = await whyNotReady([]);

/** The client, in pod A: a long-lived connection, then N new ones 10 ms apart, each a verified echo. */
const CLIENT = `
const net = require('net'), crypto = require('crypto');
const N = Number(process.argv[1]), fails = [];
const long = net.connect(8080, '${PB}');
let got = Buffer.alloc(0);
long.on('data', (b) => { got = Buffer.concat([got, b]); });
long.on('error', (e) => fails.push('long: ' + e.message));
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
async function echoed(n) {
  for (let t = 0; got.length < n && t < 500 && !long.destroyed; t++) await wait(20);
  return got.length === n;
}
function one(i) {
  return new Promise((resolve) => {
    const s = net.connect(8080, '${PB}');
    let b = '';
    s.setTimeout(10000, () => { fails.push(i + ': timeout'); s.destroy(); resolve(); });
    s.on('connect', () => s.end('ping' + i));
    s.on('data', (d) => { b += d; });
    s.on('end', () => { if (b !== 'ping' + i) fails.push(i + ': got ' + JSON.stringify(b)); resolve(); });
    s.on('error', (e) => { fails.push(i + ': ' + e.message); resolve(); });
  });
}
(async () => {
  long.write('hello');
  const opened = await echoed(5);
  console.log('started ' + opened);
  const runs = [];
  for (let i = 0; i < N; i++) { runs.push(one(i)); await wait(10); }
  await Promise.all(runs);
  got = Buffer.alloc(0);
  const payload = crypto.randomBytes(256 * 1024);
  long.write(payload);
  const intact = (await echoed(payload.length)) && got.equals(payload);
  console.log('RESULT ' + JSON.stringify({ fails, intact, n: N }));
  long.end();
})();
`;

const build = async () => {
  await install();
  return captureWorld(
    {
      prefix: 'ambitrl',
      env: { AMBIT_WORKERS: '2', AMBIT_STOP_GRACE: '0s' },
      ambitd: join(INSTALLED, 'daemon', 'main.js'),
    },
    async (w) => {
      await w.startDaemons();
      // startDaemon waits for the first 'ambitd ready' (a worker's); the supervisor's says how many workers.
      for (const node of ['node-a', 'node-b'] as const)
        await until(
          () => /"workers":2,.*"msg":"ambitd ready"/.test(w.logs[node]!()),
          20_000,
          `${node} ready`,
        );
      const cli = (args: string[]): string => w.cli(w.ha, 'node-a', args);
      cli(['enroll', 'client', '--service', 'web', '--node', 'node-a', '--ip', '198.18.1.2']);
      cli(['enroll', 'server', '--service', 'api', '--node', 'node-b', '--ip', PB, '--port', '8080']);
      w.cli(w.ha, 'node-a', ['capture', 'install']);
      w.cli(w.hb, 'node-b', ['capture', 'install']);
      const server = w.ns.spawn(w.pb, [
        process.execPath,
        '-e',
        `require('net').createServer((s)=>{s.on('error',()=>{});s.pipe(s)}).listen(8080,'${PB}',()=>console.log('listening'))`,
      ]);
      await waitForOutput(server, 'listening', 10_000);
      return {};
    },
  );
};

if (why) {
  console.log(`reload with capture test skipped: ${why}`);
  test.skip('a reload, a re-exec and an upgrade with capture on drop nothing', () => {});
} else {
  const built = worldHooks<Hosts>(build);
  test.after.always(() => rm(INSTALLED, { recursive: true, force: true }));

  /** Runs the client in pod A while `during` acts on the daemons; what it saw. */
  async function underLoad(
    w: Hosts,
    n: number,
    during: () => Promise<void>,
  ): Promise<{ fails: string[]; intact: boolean; n: number }> {
    const client = w.ns.spawn(w.pa, [process.execPath, '-e', CLIENT, String(n)]);
    let out = '';
    client.stdout?.on('data', (b: Buffer) => {
      out += b.toString();
    });
    await waitForOutput(client, 'started true', 10_000);
    await during();
    await until(() => out.includes('RESULT '), 90_000, 'the client finished');
    return JSON.parse(out.slice(out.indexOf('RESULT ') + 7).split('\n')[0]!) as {
      fails: string[];
      intact: boolean;
      n: number;
    };
  }

  /** On a failure, the daemons' warnings and errors, so that a CI log says which side cut what. */
  const explainFailures = (t: { log: (...v: unknown[]) => void }, w: Hosts, fails: string[]): void => {
    if (fails.length === 0) return;
    for (const node of ['node-a', 'node-b'] as const) {
      const lines = w.logs[node]!()
        .split('\n')
        .filter((l) => /"level":(40|50|60)/.test(l));
      t.log(`${node}: ${lines.length} warnings or errors\n${lines.slice(-40).join('\n')}`);
    }
  };

  const count = (w: Hosts, node: 'node-a' | 'node-b', text: string): number =>
    w.logs[node]!()
      .split('\n')
      .filter((l) => l.includes(text)).length;

  test.serial(
    'a reload of either host with capture on refuses no new connection and cuts no open one',
    async (t) => {
      const w = built();
      // Until both daemons hold the mesh and the certificates, a first connection may be refused: probe.
      await until(
        () => w.ns.run(w.pa, [process.execPath, '-e', CLIENT, '1']).stdout.includes('"fails":[]'),
        20_000,
        'the server reachable through capture',
      );
      const result = await underLoad(w, 600, async () => {
        for (const node of ['node-b', 'node-a'] as const) {
          w.daemons[node]!.kill('SIGHUP');
          await until(() => count(w, node, 'reload: new workers accept') === 1, 30_000, `${node} reloaded`);
        }
      });
      explainFailures(t, w, result.fails);
      t.deepEqual(result.fails, [], `${result.n} new connections during two reloads, none failed`);
      t.true(result.intact, 'the connection opened before both reloads carried 256 KiB intact after them');
    },
  );

  test.serial(
    'a re-exec of either supervisor, then an upgrade and a reload, refuse nothing and cut nothing',
    async (t) => {
      const w = built();
      const tookOver = (node: 'node-a' | 'node-b'): number => count(w, node, '"tookOverFrom"');
      const first = await underLoad(w, 800, async () => {
        for (const node of ['node-b', 'node-a'] as const) {
          w.daemons[node]!.kill('SIGUSR2');
          await until(() => tookOver(node) === 1, 60_000, `${node} re-exec'd`);
        }
      });
      explainFailures(t, w, first.fails);
      t.deepEqual(first.fails, [], `${first.n} new connections during two re-execs, none failed`);
      t.true(first.intact, 'the connection opened before both re-execs carried 256 KiB intact after them');
      // The successors are the supervisors now: the ones the test started have drained and exited.
      await until(
        () => w.daemons['node-a']!.exitCode !== null && w.daemons['node-b']!.exitCode !== null,
        30_000,
        'the first supervisors exit',
      );
      t.is(w.daemons['node-a']!.exitCode, 0);
      t.is(w.daemons['node-b']!.exitCode, 0);

      // An upgrade: the package's files written anew, then `systemctl reload` (SIGHUP to the main pid).
      const successor = (node: 'node-a' | 'node-b'): number => {
        const line = w.logs[node]!()
          .split('\n')
          .filter((l) => l.includes('"tookOverFrom"'))
          .at(-1)!;
        return (JSON.parse(line) as { pid: number }).pid;
      };
      await upgrade();
      const second = await underLoad(w, 600, async () => {
        for (const node of ['node-b', 'node-a'] as const) {
          process.kill(successor(node), 'SIGHUP');
          await until(() => tookOver(node) === 2, 60_000, `${node} upgraded`);
        }
      });
      explainFailures(t, w, second.fails);
      t.deepEqual(second.fails, [], `${second.n} new connections during two upgrades, none failed`);
      t.true(second.intact, 'the connection opened before both upgrades carried 256 KiB intact after them');
      for (const node of ['node-a', 'node-b'] as const) {
        t.is(
          count(w, node, 'the code on disk changed since the start: re-exec'),
          1,
          `${node} saw the upgrade`,
        );
      }
    },
  );
}
