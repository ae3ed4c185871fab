// A route's IdleTimeout and a resolver's ConnectTimeout at a real waypoint over HTTP/1.1, from the same
// entries in both backends (the mesh file's configEntries, and Consul's /v1/config through the emulator).
// IdleTimeout: a backend that says nothing for 2 s is answered 408 before its answer, and one that sends
// its head and a line and then goes quiet is cut. ConnectTimeout: service `stuck` runs on node-z, whose
// tunnel port is a TCP listener that accepts and never answers the TLS handshake.
// (HTTP/2 and gRPC IdleTimeout: waypoint-h2.test.ts. RequestTimeout: the routing suite.)
import { Agent, type IncomingMessage, request } from 'node:http';
import { type AddressInfo, type Server, type Socket, createServer } from 'node:net';
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { LOOP_CLOCK_SLACK_MS, metricSum, metricsText, until, workload } from '../helpers/cluster.js';
import { type L7World, type L7Worlds, inBothWorlds } from '../helpers/l7-routing.js';
import type { LogLine } from '../helpers/logs.js';

const test = anyTest as TestFn<L7Worlds>;

const ENTRIES: unknown[] = [
  { Kind: 'service-defaults', Name: 'api', Protocol: 'http', Meta: { 'ambit-waypoint': 'wp' } },
  { Kind: 'service-defaults', Name: 'stuck', Protocol: 'http' },
  { Kind: 'service-resolver', Name: 'stuck', ConnectTimeout: '250ms' },
  {
    Kind: 'service-router',
    Name: 'api',
    Routes: [
      { Match: { HTTP: { PathPrefix: '/slow-idle/' } }, Destination: { IdleTimeout: '300ms' } },
      { Match: { HTTP: { PathPrefix: '/drip/' } }, Destination: { IdleTimeout: '300ms' } },
      { Match: { HTTP: { PathPrefix: '/stuck/' } }, Destination: { Service: 'stuck' } },
    ],
  },
  { Kind: 'service-intentions', Name: 'api', Sources: [{ Name: 'web', Action: 'allow' }] },
];

/**
 * node-z's tunnel port: connections are taken and held, and nothing is ever written. `hellos` counts those
 * that began a TLS handshake (a record of type 22), which Consul's TCP check of the port does not.
 */
let silent: { server: Server; sockets: Set<Socket>; hellos: number } | undefined;

inBothWorlds(test, ENTRIES, async () => {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.once('data', (c: Buffer) => {
      if (silent && c[0] === 0x16) silent.hellos++;
    });
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  silent = { server, sockets, hellos: 0 };
  const port = (server.address() as AddressInfo).port;
  return {
    more: {
      nodes: [{ name: 'node-z', address: '127.0.0.1', tunnelPort: port }],
      // Its port is the silent listener too: Consul's TCP check of it passes, so stuck-1 stays an endpoint.
      workloads: [workload({ name: 'stuck-1', service: 'stuck', node: 'node-z', ports: [port] })],
    },
  };
});

test.after.always(() => {
  for (const s of silent?.sockets ?? []) s.destroy();
  silent?.server.close();
});

interface Answer {
  status: number;
  body: string;
  /** From the request's start to its end or its cut, by the client's clock. */
  ms: number;
  /** The response ended short of its length (a reset, as curl reports it). */
  cut: boolean;
  /** It went on a connection an earlier request had used. */
  reused: boolean;
}

function get(w: L7World, path: string, id: string, agent = new Agent()): Promise<Answer> {
  const url = new URL(w.base);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    let answered = false;
    const req = request(
      { host: url.hostname, port: url.port, path, agent, headers: { 'x-request-id': id } },
      (res: IncomingMessage) => {
        answered = true;
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          body += c;
        });
        res.on('error', () => {});
        // Whole (its length or last chunk read), or cut: a reset before the end.
        res.once('close', () =>
          resolve({
            status: res.statusCode ?? 0,
            body,
            ms: performance.now() - started,
            cut: !res.complete,
            reused: req.reusedSocket,
          }),
        );
      },
    );
    // After a response began, a reset is its cut, which 'close' reports.
    req.on('error', (err) => {
      if (!answered) reject(err);
    });
    req.end();
  });
}

const lineOf = (w: L7World, id: string): LogLine | undefined =>
  (w.logs.get('wp-node') ?? []).find(
    (l) => l.access === 'waypoint' && l.msg === 'request' && l.request_id === id,
  );

/** The waypoint's own time for the request, by its access log. */
const took = (l: LogLine | undefined): number => Number(l?.duration_ms);

const flagged = async (w: L7World, flag: string): Promise<number> =>
  metricSum(await metricsText(w.wp), 'istio_requests_total', { reporter: 'waypoint', response_flags: flag });

async function idle(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  const before = await flagged(w, 'SI');
  const one = new Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => one.destroy());
  // No byte for 2 s: the waypoint answers first.
  const quiet = await get(w, '/slow-idle/report', `${mode}-idle`, one);
  // The head and a line at once, then 2 s of nothing: the answer is cut.
  const drip = await get(w, '/drip/report', `${mode}-drip`);
  t.log(
    `${mode}: quiet ${quiet.status} after ${quiet.ms.toFixed(0)} ms; drip ${drip.status}` +
      ` ${drip.cut ? 'cut' : 'whole'} after ${drip.ms.toFixed(0)} ms (IdleTimeout 300ms, the backend at 2 s)`,
  );
  t.is(quiet.status, 408);
  t.is(quiet.body, 'stream timeout');
  t.true(quiet.ms >= 300 - LOOP_CLOCK_SLACK_MS && quiet.ms < 1500, `${quiet.ms} ms`);
  t.is(drip.status, 200);
  t.true(drip.cut, 'the quiet answer is cut, not ended');
  t.regex(drip.body, /^api-[12] GET \/drip\/report\n$/, 'what came before the quiet reached the client');
  t.true(drip.ms < 1500, `cut at ${drip.ms} ms, not the backend's 2,000`);
  await until(
    () => lineOf(w, `${mode}-idle`) !== undefined && lineOf(w, `${mode}-drip`) !== undefined,
    3000,
    'the access-log lines',
  );
  for (const id of [`${mode}-idle`, `${mode}-drip`]) {
    const l = lineOf(w, id);
    t.like(l, { response_flags: 'SI', reason: 'IdleTimeout of 300 ms' });
    t.true(took(l) >= 300 - LOOP_CLOCK_SLACK_MS && took(l) < 1500, `${id}: the waypoint took ${took(l)} ms`);
  }
  t.is(lineOf(w, `${mode}-idle`)?.status, 408);
  await until(async () => (await flagged(w, 'SI')) - before === 2, 3000, 'both counted, SI');
  // The connection the waypoint answered 408 on still serves: the answer was whole.
  const next = await get(w, '/v1/after-idle', `${mode}-after`, one);
  t.is(next.status, 200);
  t.true(next.reused, 'on the same connection');
}

async function connect(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  await until(
    () => w.wp.store.endpoints('default', 'stuck').length === 1,
    10_000,
    'the waypoint sees stuck-1',
  );
  const before = await flagged(w, 'UF');
  const hellos = silent?.hellos ?? 0;
  const r = await get(w, '/stuck/report', `${mode}-stuck`);
  t.log(`${mode}: ${r.status} "${r.body}" after ${r.ms.toFixed(0)} ms (ConnectTimeout 250ms, node-z silent)`);
  t.is(r.status, 503);
  t.is(r.body, 'upstream connect error');
  t.true(
    (silent?.hellos ?? 0) > hellos,
    "the hop's handshake reached node-z's tunnel port, and was held there",
  );
  await until(() => lineOf(w, `${mode}-stuck`) !== undefined, 3000, 'the access-log line');
  const l = lineOf(w, `${mode}-stuck`);
  t.like(l, {
    status: 503,
    response_flags: 'UF',
    endpoint: 'stuck-1',
    reason: 'connect timeout: no hop within 250 ms',
  });
  t.true(took(l) >= 250 - LOOP_CLOCK_SLACK_MS && took(l) < 1500, `the waypoint took ${took(l)} ms`);
  await until(async () => (await flagged(w, 'UF')) - before === 1, 3000, 'counted, UF');
}

for (const mode of ['file', 'consul'] as const) {
  test.serial(`${mode}: IdleTimeout 300ms: 408 before an answer, a cut after; SI`, (t) =>
    idle(t, t.context[mode], mode),
  );
  test.serial(`${mode}: ConnectTimeout 250ms to a node that never answers the handshake: 503 UF`, (t) =>
    connect(t, t.context[mode], mode),
  );
}
