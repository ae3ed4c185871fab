// A reload with transparent capture on, as root: two hosts as network namespaces, a pod behind each, each
// host's ambitd a supervisor with two workers. The client in pod A knows nothing of Ambit: it dials the
// server's own address, and capture carries it (15001 on A, the tunnel to B). During a reload of B, then
// of A, it opens a new connection every 10 ms and keeps one open from before: none fails, none is cut.
import test from 'ava';
import { type World as Hosts, PB, captureWorld, whyNotReady, worldHooks } from '../helpers/capture-world.js';
import { until } from '../helpers/cluster.js';
import { waitForOutput } from '../helpers/netns.js';

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

const build = () =>
  captureWorld({ prefix: 'ambitrl', env: { AMBIT_WORKERS: '2', AMBIT_STOP_GRACE: '0s' } }, async (w) => {
    await w.startDaemons();
    // startDaemon waits for the first 'ambitd ready' (a worker's); the supervisor's says how many workers.
    for (const node of ['node-a', 'node-b'] as const)
      await until(() => /"workers":2,"msg":"ambitd ready"/.test(w.logs[node]!()), 20_000, `${node} ready`);
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
  });

if (why) {
  console.log(`reload with capture test skipped: ${why}`);
  test.skip('a reload with capture on drops nothing', () => {});
} else {
  const built = worldHooks<Hosts>(build);

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
      const client = w.ns.spawn(w.pa, [process.execPath, '-e', CLIENT, '600']);
      let out = '';
      client.stdout?.on('data', (b: Buffer) => {
        out += b.toString();
      });
      await waitForOutput(client, 'started true', 10_000);
      const reloaded = (node: 'node-a' | 'node-b'): number =>
        w.logs[node]!()
          .split('\n')
          .filter((l) => l.includes('reload: new workers accept')).length;
      for (const node of ['node-b', 'node-a'] as const) {
        w.daemons[node]!.kill('SIGHUP');
        await until(() => reloaded(node) === 1, 30_000, `${node} reloaded`);
      }
      await until(() => out.includes('RESULT '), 60_000, 'the client finished');
      const result = JSON.parse(out.slice(out.indexOf('RESULT ') + 7).split('\n')[0]!) as {
        fails: string[];
        intact: boolean;
        n: number;
      };
      t.deepEqual(result.fails, [], `${result.n} new connections during two reloads, none failed`);
      t.true(result.intact, 'the connection opened before both reloads carried 256 KiB intact after them');
    },
  );
}
