// Retries at a real waypoint (issue 16 item 2), from the same service-router entries in both backends:
// the mesh file's configEntries, and Consul's /v1/config with catalog registrations (the emulator). Two
// node daemons and ambitd --role waypoint on loopback; node's HTTP client and @grpc/grpc-js on node-a reach
// servers on node-b through client daemon -> waypoint -> destination daemon -> server. The servers fail
// on purpose (503, a reset connection, gRPC UNAVAILABLE) and record every attempt they get.
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { Agent, type IncomingMessage, type Server, createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { consulEnroll } from '../../agent-cli/consul.js';
import { Ambitd } from '../../daemon/daemon.js';
import type { ConfigInput } from '../../lib/config.js';
import { ConsulClient } from '../../lib/consul/client.js';
import { Secret } from '../../lib/consul/secret.js';
import { editMeshFile, setConfigEntry } from '../../lib/mesh/edit.js';
import type { Workload } from '../../lib/mesh/model.js';
import {
  clientWorkload,
  consulDaemonConfig,
  enroll,
  freePort,
  metricSum,
  metricsText,
  startDaemon,
  until,
  upstreamTo,
  workload,
} from '../helpers/cluster.js';
import { startConsul } from '../helpers/consul-emulator.js';
import { type LogLine, captureLogs } from '../helpers/logs.js';

const ENTRIES: unknown[] = [
  { Kind: 'service-defaults', Name: 'api', Protocol: 'http', Meta: { 'ambit-waypoint': 'wp' } },
  { Kind: 'service-defaults', Name: 'greet', Protocol: 'grpc', Meta: { 'ambit-waypoint': 'wp' } },
  { Kind: 'service-defaults', Name: 'edge', Protocol: 'http', Meta: { 'ambit-waypoint': 'wp' } },
  {
    Kind: 'service-router',
    Name: 'edge',
    Routes: [{ Match: { HTTP: { PathPrefix: '/' } }, Destination: { RetryOnConnectFailure: true } }],
  },
  {
    Kind: 'service-router',
    Name: 'api',
    Routes: [
      { Match: { HTTP: { PathPrefix: '/flaky/' } }, Destination: { NumRetries: 3, RetryOn: ['5xx'] } },
      { Match: { HTTP: { PathPrefix: '/down/' } }, Destination: { NumRetries: 3, RetryOn: ['5xx'] } },
      { Match: { HTTP: { PathPrefix: '/reset/' } }, Destination: { NumRetries: 3, RetryOn: ['reset'] } },
    ],
  },
  {
    Kind: 'service-router',
    Name: 'greet',
    Routes: [
      {
        Match: { HTTP: { PathPrefix: '/' } },
        Destination: { NumRetries: 3, RetryOn: ['unavailable', 'connect-failure'] },
      },
    ],
  },
];

/** One attempt as a server got it. */
interface Attempt {
  server: string;
  path: string;
  rid: string;
  attempt: string;
  bodySha: string;
}

/** What the servers of a world share: every attempt, the requests seen once, the retried ones open now. */
interface Backends {
  attempts: Attempt[];
  failed503: number;
  seen: Set<string>;
  openRetried: number;
  maxOpenRetried: number;
  /** /down/hold/: first attempts held until this many are, then all answered at once. */
  holdFirst: number;
  held: (() => void)[];
}

interface World {
  wp: Ambitd;
  logs: Map<string, LogLine[]>;
  httpPort: number;
  grpcPort: number;
  edgePort: number;
  backends: Backends;
  close(): Promise<void>;
}

interface Worlds {
  file: World;
  consul: World;
}
const test = anyTest as TestFn<Worlds>;

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * api's servers: /flaky/ answers 503 the first time it sees a request (by its x-request-id, across both
 * servers: half the requests they get fail), /down/ always 503 after 50 ms, /reset/ drops the connection
 * the first time.
 */
async function apiServer(name: string, b: Backends): Promise<{ server: Server; port: number }> {
  const s = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const rid = String(req.headers['x-request-id'] ?? '');
      const attempt = String(req.headers['x-envoy-attempt-count'] ?? '');
      const path = req.url ?? '';
      b.attempts.push({ server: name, path, rid, attempt, bodySha: sha(Buffer.concat(chunks)) });
      const first = !b.seen.has(rid);
      b.seen.add(rid);
      if (path.startsWith('/down/')) {
        const retried = Number(attempt) >= 2;
        if (retried) {
          b.openRetried++;
          b.maxOpenRetried = Math.max(b.maxOpenRetried, b.openRetried);
        }
        const fail = (): void => {
          if (retried) b.openRetried--;
          b.failed503++;
          res.statusCode = 503;
          res.end('down\n');
        };
        if (!retried && path.startsWith('/down/hold/')) {
          // All in flight at the waypoint when the first 503 comes back: the budget is 20% of them all.
          b.held.push(fail);
          const release = (): void => {
            for (const f of b.held.splice(0)) f();
          };
          if (b.held.length >= b.holdFirst) release();
          // Bounded: should fewer arrive (one lost on a busy machine), the test fails on its figures
          // instead of hanging.
          else if (b.held.length === 1) setTimeout(release, 5000).unref();
          return;
        }
        setTimeout(fail, 50).unref();
        return;
      }
      if (first && path.startsWith('/reset/')) {
        req.socket.destroy();
        return;
      }
      if (first && path.startsWith('/flaky/')) {
        b.failed503++;
        res.statusCode = 503;
        res.end('try again\n');
        return;
      }
      res.end(`${name} ${path}\n`);
    });
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return { server: s, port: (s.address() as AddressInfo).port };
}

// A gRPC service without .proto files: JSON messages, as grpc-js allows with its own serializers.
interface Msg {
  text: string;
}
const json = {
  serialize: (v: Msg): Buffer => Buffer.from(JSON.stringify(v)),
  deserialize: (b: Buffer): Msg => JSON.parse(b.toString()) as Msg,
};
const UNARY = {
  path: '/ambit.test.Echo/Unary',
  requestStream: false,
  responseStream: false,
  requestSerialize: json.serialize,
  requestDeserialize: json.deserialize,
  responseSerialize: json.serialize,
  responseDeserialize: json.deserialize,
};

/** greet's servers: UNAVAILABLE (trailers-only) the first time a call is seen, else an echo. */
async function grpcServer(name: string, b: Backends): Promise<{ server: grpc.Server; port: number }> {
  const server = new grpc.Server();
  server.addService(
    { Unary: UNARY },
    {
      Unary: (call: grpc.ServerUnaryCall<Msg, Msg>, cb: grpc.sendUnaryData<Msg>) => {
        const rid = String(call.metadata.get('x-request-id')[0] ?? '');
        const attempt = String(call.metadata.get('x-envoy-attempt-count')[0] ?? '');
        b.attempts.push({ server: name, path: UNARY.path, rid, attempt, bodySha: '' });
        const first = !b.seen.has(rid);
        b.seen.add(rid);
        if (first) cb({ code: grpc.status.UNAVAILABLE, details: 'warming up' });
        else cb(null, { text: `${name} ${call.request.text}` });
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { server, port };
}

async function backends() {
  const b: Backends = {
    attempts: [],
    failed503: 0,
    seen: new Set(),
    openRetried: 0,
    maxOpenRetried: 0,
    holdFirst: 30,
    held: [],
  };
  const api = [await apiServer('api-1', b), await apiServer('api-2', b)];
  const greet = [await grpcServer('greet-1', b), await grpcServer('greet-2', b)];
  const edge = await apiServer('edge-1', b);
  const httpPort = await freePort();
  const grpcPort = await freePort();
  const edgePort = await freePort();
  // Where nothing listens: the destination daemon answers the waypoint's hop 503, a connect failure.
  const dead = [await freePort(), await freePort()];
  const workloads: Workload[] = [
    clientWorkload(
      9,
      upstreamTo('api', httpPort),
      upstreamTo('greet', grpcPort),
      upstreamTo('edge', edgePort),
    ),
    ...api.map((s, i) => workload({ name: `api-${i + 1}`, service: 'api', node: 'node-b', ports: [s.port] })),
    ...greet.map((s, i) =>
      workload({ name: `greet-${i + 1}`, service: 'greet', node: 'node-b', ports: [s.port] }),
    ),
    workload({ name: 'greet-3', service: 'greet', node: 'node-b', ports: [dead[0]!] }),
    workload({ name: 'edge-1', service: 'edge', node: 'node-b', ports: [edge.port] }),
    workload({ name: 'edge-2', service: 'edge', node: 'node-b', ports: [dead[1]!] }),
  ];
  const close = (): void => {
    for (const s of [...api, edge]) {
      s.server.closeAllConnections();
      s.server.close();
    }
    for (const g of greet) g.server.forceShutdown();
  };
  return { b, workloads, httpPort, grpcPort, edgePort, close };
}

async function ready(a: Ambitd, b: Ambitd, wp: Ambitd, timeoutMs: number): Promise<void> {
  await until(() => a.listeners.listening().length === 3, timeoutMs, 'upstream listeners bound');
  await until(
    () =>
      [a, b, wp].every(
        (d) =>
          d.store.service('default', 'api')?.protocol === 'http' &&
          d.store.service('default', 'greet')?.protocol === 'grpc' &&
          d.store.service('default', 'edge')?.protocol === 'http',
      ) && (wp.store.mesh.configEntries?.length ?? 0) >= ENTRIES.length,
    timeoutMs,
    'every daemon sees the waypoint, the waypoint its entries',
  );
  await until(() => b.readiness().ready && b.certs.list().length >= 2, timeoutMs, 'node-b ready');
  await until(() => wp.readiness().ready, timeoutMs, 'waypoint ready');
  await until(() => a.store.endpoints('default', 'wp').length === 1, timeoutMs, 'node-a sees the waypoint');
  await until(() => a.store.endpoints('default', 'api').length === 2, timeoutMs, 'node-a sees api');
  await until(() => wp.store.endpoints('default', 'greet').length === 3, timeoutMs, 'waypoint sees greet');
  await until(() => wp.store.endpoints('default', 'edge').length === 2, timeoutMs, 'waypoint sees edge');
}

async function fileWorld(): Promise<World> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-retry-'));
  const meshFile = join(dir, 'mesh.yaml');
  const { lines, logger } = captureLogs();
  const start = (node: string, extra: ConfigInput = {}): Promise<Ambitd> =>
    startDaemon(dir, meshFile, node, extra, logger(node));
  const s = await backends();
  const a = await start('node-a');
  const b = await start('node-b');
  const wp = await start('wp-node', { role: 'waypoint', waypointService: 'wp' });
  await enroll(meshFile, ...s.workloads);
  await editMeshFile(meshFile, (doc) => {
    for (const e of ENTRIES) setConfigEntry(doc, e as Record<string, unknown>);
  });
  await ready(a, b, wp, 5000);
  return {
    wp,
    logs: lines,
    httpPort: s.httpPort,
    grpcPort: s.grpcPort,
    edgePort: s.edgePort,
    backends: s.b,
    async close() {
      s.close();
      await Promise.all([a, b, wp].map((d) => d.close()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function consulWorld(): Promise<World> {
  const consul = await startConsul();
  const dir = await mkdtemp(join(tmpdir(), 'ambit-retry-consul-'));
  const { lines, logger } = captureLogs();
  const daemons: Ambitd[] = [];
  const start = async (node: string, extra: ConfigInput = {}): Promise<Ambitd> => {
    const config = consulDaemonConfig(consul, dir, node, { defaultPolicy: 'allow', ...extra });
    const d = await Ambitd.start(config, logger(node));
    daemons.push(d);
    return d;
  };
  const s = await backends();
  const a = await start('node-a');
  const b = await start('node-b');
  const wp = await start('wp-node', { role: 'waypoint', waypointService: 'wp' });
  const client = new ConsulClient({
    address: consul.address,
    token: consul.managementToken ? new Secret(consul.managementToken) : undefined,
  });
  for (const e of ENTRIES) {
    const name = (e as { Name: string }).Name;
    await client.put('/v1/config', { body: e, permission: `service:write on "${name}"` });
  }
  for (const w of s.workloads) await consulEnroll(client, w);
  await ready(a, b, wp, 20_000);
  return {
    wp,
    logs: lines,
    httpPort: s.httpPort,
    grpcPort: s.grpcPort,
    edgePort: s.edgePort,
    backends: s.b,
    async close() {
      s.close();
      await Promise.all(daemons.map((d) => d.close()));
      await consul.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

test.before(async (t) => {
  t.context = { file: await fileWorld(), consul: await consulWorld() };
});

test.after.always(async (t) => {
  await t.context?.file?.close();
  await t.context?.consul?.close();
});

interface Answer {
  status: number;
  body: string;
}

function get(
  w: World,
  path: string,
  rid: string,
  o: { agent?: Agent | false; body?: Buffer; port?: number } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: o.port ?? w.httpPort,
        path,
        method: o.body ? 'POST' : 'GET',
        agent: o.agent ?? false,
        headers: { 'x-request-id': rid, ...(o.body ? { 'content-length': o.body.length } : {}) },
      },
      (res: IncomingMessage) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          body += c;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(o.body);
  });
}

/** `total` calls of `one`, `width` at a time. */
async function pool<T>(total: number, width: number, one: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(total);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < total) {
        const i = next++;
        out[i] = await one(i);
      }
    }),
  );
  return out;
}

const requestLines = (w: World, rid: string): LogLine[] =>
  (w.logs.get('wp-node') ?? []).filter(
    (l) => l.access === 'waypoint' && l.msg === 'request' && String(l.request_id).startsWith(rid),
  );

const metric = async (w: World, name: string, labels: Record<string, string> = {}): Promise<number> =>
  metricSum(await metricsText(w.wp), name, labels);

const RETRIES = 'ambit_waypoint_retries_total';

async function flaky(t: ExecutionContext<Worlds>, w: World, mode: string): Promise<void> {
  const b = w.backends;
  const before503 = b.failed503;
  const before = await metric(w, RETRIES, { destination_service: 'api.default', reason: '5xx' });
  // Three at a time: within the budget's floor of 3 concurrent retries, so that every 503 is retried.
  const agent = new Agent({ keepAlive: true, maxSockets: 3 });
  const answers = await pool(1000, 3, (i) => get(w, `/flaky/${i}`, `${mode}-f-${i}`, { agent }));
  agent.destroy();
  const sent503 = b.failed503 - before503;
  const retries = (await metric(w, RETRIES, { destination_service: 'api.default', reason: '5xx' })) - before;
  const ok = answers.filter((a) => a.status === 200).length;
  t.log(`${mode}: 1000 requests, ${ok} answered 200; the backends sent ${sent503} 503s, ${retries} retries`);
  t.is(ok, 1000);
  t.is(sent503, 1000, 'half of what the backends got failed');
  t.is(retries, sent503);
  // Each retry went to the other endpoint, and said it was the second attempt.
  const mine = b.attempts.filter((a) => a.rid.startsWith(`${mode}-f-`));
  t.is(mine.length, 2000);
  const byRid = new Map<string, Attempt[]>();
  for (const a of mine) byRid.set(a.rid, [...(byRid.get(a.rid) ?? []), a]);
  t.true([...byRid.values()].every((p) => p.length === 2 && p[0]!.server !== p[1]!.server));
  t.true([...byRid.values()].every((p) => p[0]!.attempt === '1' && p[1]!.attempt === '2'));
  await until(() => requestLines(w, `${mode}-f-`).length >= 1000, 5000, 'a log line per request');
  const logged = requestLines(w, `${mode}-f-`);
  t.true(logged.every((l) => l.attempts === 2 && l.status === 200 && l.response_flags === '-'));
}

async function replayedBody(t: ExecutionContext<Worlds>, w: World, mode: string): Promise<void> {
  const body = Buffer.alloc(32 * 1024, 7);
  const a = await get(w, '/flaky/body', `${mode}-rb`, { body });
  t.is(a.status, 200);
  const got = w.backends.attempts.filter((x) => x.rid === `${mode}-rb`);
  t.is(got.length, 2);
  t.true(
    got.every((x) => x.bodySha === sha(body)),
    'the retry carried the whole body again',
  );
}

async function overBound(t: ExecutionContext<Worlds>, w: World, mode: string): Promise<void> {
  const before = await metric(w, 'ambit_waypoint_retry_buffer_overflow_total');
  const big = Buffer.alloc(100 * 1024, 1);
  const a = await get(w, '/down/big', `${mode}-big`, { body: big });
  t.is(a.status, 503, 'the first answer goes to the client: the body was not kept');
  const got = w.backends.attempts.filter((x) => x.rid === `${mode}-big`);
  t.is(got.length, 1);
  t.is(got[0]!.bodySha, sha(big), 'the endpoint still got all of it');
  t.is((await metric(w, 'ambit_waypoint_retry_buffer_overflow_total')) - before, 1);
  await until(() => requestLines(w, `${mode}-big`).length === 1, 5000, 'its log line');
  t.like(requestLines(w, `${mode}-big`)[0], { attempts: 1, status: 503, response_flags: '-' });
}

async function budget(t: ExecutionContext<Worlds>, w: World, mode: string): Promise<void> {
  const b = w.backends;
  b.maxOpenRetried = 0;
  const exhaustedBefore = await metric(w, 'ambit_waypoint_retry_budget_exhausted_total', {
    destination_service: 'api.default',
  });
  // 30 requests at once to a backend that fails every one: 20% of 30 is 6 concurrent retries at most.
  const answers = await Promise.all(
    Array.from({ length: 30 }, (_, i) => get(w, `/down/hold/${i}`, `${mode}-d-${i}`)),
  );
  const exhausted =
    (await metric(w, 'ambit_waypoint_retry_budget_exhausted_total', { destination_service: 'api.default' })) -
    exhaustedBefore;
  const attempts = b.attempts.filter((a) => a.rid.startsWith(`${mode}-d-`));
  t.log(
    `${mode}: 30 concurrent requests to a backend failing all: ${attempts.length} attempts, at most ` +
      `${b.maxOpenRetried} retried ones at the backends at once (cap 6), ${exhausted} retries refused by the budget`,
  );
  t.true(answers.every((a) => a.status === 503));
  t.true(b.maxOpenRetried <= 6, `${b.maxOpenRetried} retries at once`);
  t.true(b.maxOpenRetried >= 4, 'more than the floor of 3: the cap grew with the requests in flight');
  t.true(exhausted > 0);
  // Without a budget, 30 x 4 attempts; with it, far fewer.
  t.true(attempts.length < 30 * 4);
  await until(() => requestLines(w, `${mode}-d-`).length >= 30, 5000, 'a log line per request');
  const logged = requestLines(w, `${mode}-d-`);
  // Those that had all their retries are flagged URX; those the budget stopped are not.
  for (const l of logged) t.is(l.response_flags, l.attempts === 4 ? 'URX' : '-');
}

async function reset(t: ExecutionContext<Worlds>, w: World, mode: string): Promise<void> {
  const before = await metric(w, RETRIES, { destination_service: 'api.default', reason: 'reset' });
  const answers = await pool(50, 1, (i) => get(w, `/reset/${i}`, `${mode}-r-${i}`));
  const retries =
    (await metric(w, RETRIES, { destination_service: 'api.default', reason: 'reset' })) - before;
  t.log(
    `${mode}: 50 requests whose first attempt is reset: ${answers.filter((a) => a.status === 200).length} 200s`,
  );
  t.true(answers.every((a) => a.status === 200 && /^api-[12] \/reset\/\d+\n$/.test(a.body)));
  t.is(retries, 50);
}

function call(client: grpc.Client, rid: string): Promise<{ code: number; text?: string }> {
  return new Promise((resolve) => {
    const md = new grpc.Metadata();
    md.set('x-request-id', rid);
    client.makeUnaryRequest(UNARY.path, json.serialize, json.deserialize, { text: rid }, md, (err, v) =>
      resolve(err ? { code: err.code } : { code: 0, text: v?.text }),
    );
  });
}

async function grpcUnavailable(t: ExecutionContext<Worlds>, w: World, mode: string): Promise<void> {
  const labels = { destination_service: 'greet.default', reason: 'unavailable' };
  const before = await metric(w, RETRIES, labels);
  const client = new grpc.Client(`127.0.0.1:${w.grpcPort}`, grpc.credentials.createInsecure());
  try {
    const got = await pool(200, 3, (i) => call(client, `${mode}-g-${i}`));
    const ok = got.filter((g) => g.code === 0).length;
    const retries = (await metric(w, RETRIES, labels)) - before;
    t.log(`${mode}: 200 gRPC calls whose first attempt is UNAVAILABLE: ${ok} OK, ${retries} retries`);
    t.is(ok, 200);
    t.true(got.every((g, i) => g.text?.endsWith(` ${mode}-g-${i}`)));
    t.is(retries, 200);
    const mine = w.backends.attempts.filter((a) => a.rid.startsWith(`${mode}-g-`));
    // Two attempts reached the servers per call (UNAVAILABLE, then OK); a call that first met greet-3,
    // where nothing listens, had one more before them (connect-failure), its body read and replayed.
    t.is(mine.length, 400);
    const connect = await metric(w, RETRIES, {
      destination_service: 'greet.default',
      reason: 'connect-failure',
    });
    t.log(`${mode}: ${connect} connect-failure retries to greet-3 so far`);
    // In Consul, greet-3's TCP check fails and the chain never offers it: no connect failure to retry.
    if (mode === 'file') t.true(connect >= 1);
    else t.is(connect, 0);
  } finally {
    client.close();
  }
  await until(() => requestLines(w, `${mode}-g-`).length >= 200, 5000, 'a log line per call');
  const logged = requestLines(w, `${mode}-g-`);
  t.true(logged.every((l) => Number(l.attempts) >= 2 && l.grpc_status === '0' && l.response_flags === '-'));
}

async function connectFailure(t: ExecutionContext<Worlds>, w: World, mode: string): Promise<void> {
  const labels = { destination_service: 'edge.default', reason: 'connect-failure' };
  const before = await metric(w, RETRIES, labels);
  const body = Buffer.alloc(40 * 1024, 3);
  const answers = await pool(20, 1, (i) =>
    get(w, `/edge/${i}`, `${mode}-e-${i}`, { body, port: w.edgePort }),
  );
  const retries = (await metric(w, RETRIES, labels)) - before;
  t.log(`${mode}: 20 POSTs to edge (one endpoint refuses): ${retries} connect-failure retries`);
  t.true(answers.every((a) => a.status === 200 && a.body.startsWith('edge-1 /edge/')));
  // In Consul, edge-2's TCP check fails and the chain never offers it; in the mesh file it is offered.
  if (mode === 'file') t.true(retries >= 1, 'the endpoint where nothing listens was met, and retried');
  else t.is(retries, 0);
  const got = w.backends.attempts.filter((x) => x.rid.startsWith(`${mode}-e-`));
  t.is(got.length, 20);
  t.true(
    got.every((x) => x.bodySha === sha(body)),
    'a body read after the failed connect, replayed whole',
  );
}

for (const mode of ['file', 'consul'] as const) {
  test.serial(`${mode}: 50% 503s, NumRetries 3: 1000 of 1000 answered, one retry per 503`, (t) =>
    flaky(t, t.context[mode], mode),
  );
  test.serial(`${mode}: a retried POST carries its whole body again`, (t) =>
    replayedBody(t, t.context[mode], mode),
  );
  test.serial(`${mode}: a body over waypointRetryBufferBytes is not retried`, (t) =>
    overBound(t, t.context[mode], mode),
  );
  test.serial(`${mode}: a backend failing every request: the budget holds retries to 20% in flight`, (t) =>
    budget(t, t.context[mode], mode),
  );
  test.serial(`${mode}: a reset before the answer is retried with RetryOn reset`, (t) =>
    reset(t, t.context[mode], mode),
  );
  test.serial(`${mode}: gRPC UNAVAILABLE is retried with RetryOn unavailable`, (t) =>
    grpcUnavailable(t, t.context[mode], mode),
  );
  test.serial(`${mode}: RetryOnConnectFailure: a POST to an endpoint that refuses goes to the other`, (t) =>
    connectFailure(t, t.context[mode], mode),
  );
}
