// Request mirroring on the waypoint's HTTP/2 engine (issue 16 item 7), as waypoint-mirror.test.ts tests it
// on HTTP/1.1: api's service-router carries `ambit-mirror-<i>` Meta sending copies to legacy, from the same
// entries in the mesh file's configEntries and in Consul's /v1/config (the emulator). A node:http2 client
// (service protocol http2) and a grpc-js client (protocol grpc) on node-a reach api (api-1, api-2 on
// node-b) through client daemon -> waypoint -> destination daemon; the copies go from the waypoint to
// legacy-1, which holds those of /held/ (the gRPC method Held) 2 s before it answers. A last world of
// node:http2 servers that record trailers checks that a copy carries the request's.
import { mkdtemp, rm } from 'node:fs/promises';
import {
  type ClientHttp2Session,
  type Http2Server,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
  connect as h2connect,
  createServer as h2server,
} from 'node:http2';
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
import { type L7World, startConsulWorld, startFileWorld } from '../helpers/l7-routing.js';
import { type LogLine, captureLogs } from '../helpers/logs.js';

type Mode = 'file' | 'consul';

interface Worlds {
  h2: Record<Mode, L7World>;
  grpc: Record<Mode, CallWorld>;
  /** node:http2 servers that see trailers, in the mesh file. */
  trailers: CallWorld;
}
const test = anyTest as TestFn<Worlds>;

/** The entries of both protocols: `route` matches a path prefix (http2) or a gRPC method's path. */
const entries = (protocol: 'http2' | 'grpc', prefix: (name: string) => string): unknown[] => {
  const route = (name: string): unknown => ({
    Match: { HTTP: { PathPrefix: prefix(name) } },
    Destination: { Service: 'api' },
  });
  return [
    { Kind: 'service-defaults', Name: 'api', Protocol: protocol, Meta: { 'ambit-waypoint': 'wp' } },
    { Kind: 'service-defaults', Name: 'legacy', Protocol: protocol },
    {
      Kind: 'service-router',
      Name: 'api',
      Meta: {
        'ambit-mirror-0': '{"Service": "legacy"}',
        'ambit-mirror-1': '{"Service": "legacy"}',
        'ambit-mirror-2': '{"Service": "legacy", "Percent": 50}',
      },
      Routes: [route('mirror'), route('held'), route('half'), route('plain')],
    },
    { Kind: 'service-intentions', Name: 'api', Sources: [{ Name: 'web', Action: 'allow' }] },
  ];
};

const H2_ENTRIES = entries('http2', (name) => `/${name}/`);
const METHOD = (name: string): string => `/ambit.test.Echo/${name[0]!.toUpperCase()}${name.slice(1)}`;
const GRPC_ENTRIES = entries('grpc', METHOD);

const SLOW = { server: 'legacy-1', prefix: '/held/', ms: 2000 };

// ---- servers that record each call (grpc-js, or node:http2 with trailers), in either backend ----

interface Msg {
  text: string;
}
const json = {
  serialize: (v: Msg): Buffer => Buffer.from(JSON.stringify(v)),
  deserialize: (b: Buffer): Msg => JSON.parse(b.toString()) as Msg,
};
const unaryMethod = (name: string): grpc.MethodDefinition<Msg, Msg> => ({
  path: METHOD(name),
  requestStream: false,
  responseStream: false,
  requestSerialize: json.serialize,
  requestDeserialize: json.deserialize,
  responseSerialize: json.serialize,
  responseDeserialize: json.deserialize,
});
const ECHO = {
  Mirror: unaryMethod('mirror'),
  Held: unaryMethod('held'),
  Half: unaryMethod('half'),
  Plain: unaryMethod('plain'),
};

interface Call {
  server: string;
  path: string;
  /** The call's :authority as the server got it. */
  host: string;
  rid: string;
  /** The request message's length (node:http2 servers: its body's). */
  bytes: number;
  /** node:http2 servers: the request's trailers. */
  trailers?: IncomingHttpHeaders;
}

interface CallWorld {
  wp: Ambitd;
  logs: Map<string, LogLine[]>;
  port: number;
  seen: Call[];
  holding(): number;
  close(): Promise<void>;
}

/** A gRPC Echo server: names itself in its answer, its head's `x-server` and its trailers' `x-trailer`. */
async function grpcServer(
  name: string,
  seen: Call[],
  held: { count: number },
): Promise<{ server: grpc.Server; port: number }> {
  const server = new grpc.Server();
  const impl = (call: grpc.ServerUnaryCall<Msg, Msg>, cb: grpc.sendUnaryData<Msg>): void => {
    const path = call.getPath();
    seen.push({
      server: name,
      path,
      host: call.getHost(),
      rid: String(call.metadata.get('x-request-id')[0] ?? ''),
      bytes: call.request.text.length,
    });
    const head = new grpc.Metadata();
    head.set('x-server', name);
    call.sendMetadata(head);
    const trailer = new grpc.Metadata();
    trailer.set('x-trailer', `from ${name}`);
    const answer = (): void => cb(null, { text: `${name} ${path} ${call.request.text.length}` }, trailer);
    if (name === SLOW.server && path === ECHO.Held.path) {
      held.count++;
      setTimeout(() => {
        held.count--;
        answer();
      }, SLOW.ms).unref();
      return;
    }
    answer();
  };
  server.addService(ECHO, { Mirror: impl, Held: impl, Half: impl, Plain: impl });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { server, port };
}

/** A node:http2 server that records each request with its trailers, and answers with its name. */
async function rawH2Server(name: string, seen: Call[]): Promise<{ server: Http2Server; port: number }> {
  const server = h2server();
  server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
    stream.on('error', () => {});
    let bytes = 0;
    let trailers: IncomingHttpHeaders | undefined;
    stream.on('data', (c: Buffer) => {
      bytes += c.length;
    });
    stream.once('trailers', (t: IncomingHttpHeaders) => {
      trailers = t;
    });
    stream.once('end', () => {
      const path = String(headers[':path']);
      const rid = String(headers['x-request-id'] ?? '');
      seen.push({ server: name, path, host: String(headers[':authority']), rid, bytes, trailers });
      stream.respond({ ':status': 200 });
      stream.end(`${name} ${path}`);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

/**
 * api-1, api-2 and legacy-1, the client on node-a, in the mesh file or in Consul: grpc-js servers (protocol
 * grpc), or node:http2 ones that record trailers (`h2`, protocol http2).
 */
async function startCallWorld(mode: Mode, kind: 'grpc' | 'h2' = 'grpc'): Promise<CallWorld> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-h2-mirror-'));
  const { lines, logger } = captureLogs();
  const seen: Call[] = [];
  const held = { count: 0 };
  const protocol = kind === 'grpc' ? 'grpc' : 'http2';
  const ENTRIES = kind === 'grpc' ? GRPC_ENTRIES : H2_ENTRIES;
  const servers: { server: { close(): void }; port: number }[] = [];
  for (const name of ['api-1', 'api-2', 'legacy-1']) {
    if (kind === 'h2') {
      const s = await rawH2Server(name, seen);
      servers.push({ server: { close: () => s.server.close() }, port: s.port });
    } else {
      const s = await grpcServer(name, seen, held);
      servers.push({ server: { close: () => s.server.forceShutdown() }, port: s.port });
    }
  }
  const port = await freePort();
  const workloads = [
    clientWorkload(9, upstreamTo('api', port)),
    workload({ name: 'api-1', service: 'api', node: 'node-b', ports: [servers[0]!.port] }),
    workload({ name: 'api-2', service: 'api', node: 'node-b', ports: [servers[1]!.port] }),
    workload({ name: 'legacy-1', service: 'legacy', node: 'node-b', ports: [servers[2]!.port] }),
  ];
  const daemons: Ambitd[] = [];
  let after = (): Promise<void> => rm(dir, { recursive: true, force: true });
  if (mode === 'file') {
    const meshFile = join(dir, 'mesh.yaml');
    const start = (node: string, extra: ConfigInput = {}): Promise<Ambitd> =>
      startDaemon(dir, meshFile, node, extra, logger(node));
    daemons.push(await start('node-a'), await start('node-b'));
    daemons.push(await start('wp-node', { role: 'waypoint', waypointService: 'wp' }));
    await enroll(meshFile, ...workloads);
    await editMeshFile(meshFile, (doc) => {
      for (const e of ENTRIES) setConfigEntry(doc, e as Record<string, unknown>);
    });
  } else {
    const consul = await startConsul();
    const start = (node: string, extra: ConfigInput = {}): Promise<Ambitd> =>
      Ambitd.start(consulDaemonConfig(consul, dir, node, { defaultPolicy: 'allow', ...extra }), logger(node));
    daemons.push(await start('node-a'), await start('node-b'));
    daemons.push(await start('wp-node', { role: 'waypoint', waypointService: 'wp' }));
    const client = new ConsulClient({
      address: consul.address,
      token: consul.managementToken ? new Secret(consul.managementToken) : undefined,
    });
    for (const e of ENTRIES) {
      const name = (e as { Name: string }).Name;
      await client.put('/v1/config', { body: e, permission: `service:write on "${name}"` });
    }
    for (const w of workloads) await consulEnroll(client, w);
    const rmDir = after;
    after = async () => {
      await consul.close();
      await rmDir();
    };
  }
  const [a, b, wp] = daemons as [Ambitd, Ambitd, Ambitd];
  const ms = mode === 'file' ? 5000 : 20_000;
  await until(() => a.listeners.listening().length === 1, ms, 'upstream listener bound');
  await until(
    () =>
      [a, b, wp].every((d) => d.store.service('default', 'api')?.protocol === protocol) &&
      a.store.service('default', 'api')?.waypoint === 'wp' &&
      (wp.store.mesh.configEntries?.length ?? 0) >= ENTRIES.length,
    ms,
    'every daemon sees the waypoint, the waypoint its entries',
  );
  await until(() => b.readiness().ready && b.certs.list().length >= 2, ms, 'node-b ready');
  await until(() => wp.readiness().ready, ms, 'waypoint ready');
  await until(() => a.store.endpoints('default', 'wp').length === 1, ms, 'node-a sees the waypoint');
  await until(() => a.store.endpoints('default', 'api').length === 2, ms, 'node-a sees api');
  return {
    wp,
    logs: lines,
    port,
    seen,
    holding: () => held.count,
    async close() {
      for (const s of servers) s.server.close();
      await Promise.all(daemons.map((d) => d.close()));
      await after();
    },
  };
}

test.before(async (t) => {
  t.context = {
    h2: {
      file: await startFileWorld(H2_ENTRIES, { slow: SLOW, h2: true }),
      consul: await startConsulWorld(H2_ENTRIES, { slow: SLOW, h2: true }),
    },
    grpc: { file: await startCallWorld('file'), consul: await startCallWorld('consul') },
    trailers: await startCallWorld('file', 'h2'),
  };
});

test.after.always(async (t) => {
  const c = t.context;
  for (const w of [c?.h2?.file, c?.h2?.consul, c?.grpc?.file, c?.grpc?.consul, c?.trailers]) await w?.close();
});

// ---- what both protocols' tests share ----

/** `n` calls, `width` at a time. */
async function load<T>(n: number, width: number, one: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < n) out.push(await one(next++));
    }),
  );
  return out;
}

const mirrored = async (wp: Ambitd, outcome: string): Promise<number> =>
  metricSum(await metricsText(wp), 'ambit_waypoint_mirrored_requests_total', {
    destination_service: 'api.default',
    mirror_service: 'legacy.default',
    outcome,
  });

/** `-shadow` after the host, ahead of its port. */
const shadowed = (host: string): string => host.replace(/(:\d+)?$/, '-shadow$1');

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

const BUFFER_LOG =
  'waypoint gave up a mirror copy: the request body is over 65536 bytes (waypointMirrorBufferBytes)';

// ---- HTTP/2 (node:http2, h2c with prior knowledge) ----

interface H2Answer {
  status: number;
  body: string;
  ms: number;
}

function h2send(
  session: ClientHttp2Session,
  method: string,
  path: string,
  id: string,
  body?: Buffer,
): Promise<H2Answer> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = session.request(
      { ':method': method, ':path': path, 'x-request-id': id },
      { endStream: body === undefined },
    );
    let status = 0;
    let text = '';
    req.setEncoding('utf8');
    req.once('response', (h: IncomingHttpHeaders) => {
      status = Number(h[':status']);
    });
    req.on('data', (c: string) => {
      text += c;
    });
    req.once('end', () => resolve({ status, body: text, ms: performance.now() - started }));
    req.once('error', reject);
    if (body !== undefined) req.end(body);
  });
}

function h2session(t: ExecutionContext<Worlds>, w: L7World): ClientHttp2Session {
  const session = h2connect(w.base);
  session.on('error', () => {});
  t.teardown(() => session.close());
  return session;
}

const h2seen = (w: L7World, server: string, rid: string): L7World['seen'] =>
  w.seen.filter((s) => s.server === server && String(s.headers['x-request-id']).startsWith(rid));
const authority = (s: L7World['seen'][number] | undefined): string => String(s?.headers[':authority']);

async function h2every(t: ExecutionContext<Worlds>, w: L7World, mode: Mode): Promise<void> {
  const session = h2session(t, w);
  const before = await mirrored(w.wp, 'sent');
  const rid = `h2-${mode}-m-`;
  const gets = await load(50, 8, (i) => h2send(session, 'GET', `/mirror/${i}`, `${rid}${i}`));
  const body = Buffer.alloc(20_000, 'b');
  const posts = await load(5, 4, (i) => h2send(session, 'POST', `/mirror/p${i}`, `${rid}p${i}`, body));
  const answers = [...gets, ...posts];
  // The client sees only the primary's answers, every one of them.
  t.true(answers.every((a) => a.status === 200 && /^api-[12] /.test(a.body)));
  await until(() => h2seen(w, 'legacy-1', rid).length >= 55, 5000, 'a copy of each request at the mirror');
  const copies = h2seen(w, 'legacy-1', rid);
  t.is(copies.length, 55);
  const primaries = [...h2seen(w, 'api-1', rid), ...h2seen(w, 'api-2', rid)];
  t.is(primaries.length, 55);
  for (const p of primaries) {
    const copy = copies.find((c) => c.headers['x-request-id'] === p.headers['x-request-id']);
    t.like(copy, { method: p.method, url: p.url, bytes: p.bytes });
    t.is(authority(copy), shadowed(authority(p)));
  }
  t.log(`${mode}: primary :authority ${authority(primaries[0])}, the copy's ${authority(copies[0])}`);
  t.true(authority(copies[0]).includes('-shadow'));
  t.true(copies.filter((c) => c.method === 'POST').every((c) => c.bytes === 20_000));
  await until(async () => (await mirrored(w.wp, 'sent')) - before >= 55, 5000, 'every copy answered');
  t.is((await mirrored(w.wp, 'sent')) - before, 55);
}

async function h2slow(t: ExecutionContext<Worlds>, w: L7World, mode: Mode): Promise<void> {
  const session = h2session(t, w);
  const plain = await load(20, 20, (i) => h2send(session, 'GET', `/plain/${i}`, `h2-${mode}-n-${i}`));
  const before = await mirrored(w.wp, 'sent');
  const rid = `h2-${mode}-h-`;
  const held = await load(20, 20, (i) => h2send(session, 'GET', `/held/${i}`, `${rid}${i}`));
  t.true(held.every((a) => a.status === 200 && /^api-[12] /.test(a.body)));
  // Every client answer is in, and the mirror has all 20 copies and has answered none of them.
  await until(() => h2seen(w, 'legacy-1', rid).length >= 20, 1500, 'the copies at the mirror');
  t.is(w.holding(), 20, 'the mirror still holds every copy');
  t.is((await mirrored(w.wp, 'sent')) - before, 0);
  t.log(
    `${mode}: 20 concurrent streams, median ${median(plain.map((a) => a.ms)).toFixed(0)} ms without a mirror, ` +
      `${median(held.map((a) => a.ms)).toFixed(0)} ms (max ${Math.max(...held.map((a) => a.ms)).toFixed(0)}) ` +
      `with a mirror answering after ${SLOW.ms} ms`,
  );
  // Then the mirror answers, and its answers go nowhere but the count.
  await until(() => w.holding() === 0, 5000, 'the mirror answered');
  await until(async () => (await mirrored(w.wp, 'sent')) - before >= 20, 3000, 'counted sent');
  t.is((await mirrored(w.wp, 'sent')) - before, 20);
}

async function h2percent(t: ExecutionContext<Worlds>, w: L7World, mode: Mode): Promise<void> {
  const session = h2session(t, w);
  const before = await mirrored(w.wp, 'sent');
  const rid = `h2-${mode}-p-`;
  const answers = await load(400, 8, (i) => h2send(session, 'GET', `/half/${i}`, `${rid}${i}`));
  t.true(answers.every((a) => a.status === 200 && /^api-[12] /.test(a.body)));
  await until(async () => (await mirrored(w.wp, 'sent')) - before >= 1, 3000, 'some copies');
  await until(
    async () => (await mirrored(w.wp, 'sent')) - before === h2seen(w, 'legacy-1', rid).length,
    3000,
    'the copies answered',
  );
  const copies = h2seen(w, 'legacy-1', rid).length;
  const share = (copies / 400) * 100;
  t.log(`${mode}: ${copies} of 400 streams mirrored (${share.toFixed(1)}%, Percent 50)`);
  // 400 draws at 50%: one standard deviation is 2.5 points; 10 points is four.
  t.true(share >= 40 && share <= 60, `${share}% mirrored`);
  t.is((await mirrored(w.wp, 'sent')) - before, copies);
}

async function h2bigBody(t: ExecutionContext<Worlds>, w: L7World, mode: Mode): Promise<void> {
  const session = h2session(t, w);
  const before = await mirrored(w.wp, 'skipped-body');
  const logged = (): number => (w.logs.get('wp-node') ?? []).filter((l) => l.msg === BUFFER_LOG).length;
  const loggedBefore = logged();
  const rid = `h2-${mode}-b-`;
  // Over waypointMirrorBufferBytes (64 KiB by default): the primary gets it whole, the mirror nothing.
  const body = Buffer.alloc(100_000, 'x');
  const answers = await load(3, 1, (i) => h2send(session, 'POST', `/mirror/big${i}`, `${rid}${i}`, body));
  t.true(answers.every((a) => a.status === 200 && /^api-[12] POST/.test(a.body)));
  const primaries = [...h2seen(w, 'api-1', rid), ...h2seen(w, 'api-2', rid)];
  t.deepEqual(
    primaries.map((p) => p.bytes),
    [100_000, 100_000, 100_000],
  );
  t.is((await mirrored(w.wp, 'skipped-body')) - before, 3);
  t.is(h2seen(w, 'legacy-1', rid).length, 0);
  t.is(logged() - loggedBefore, 1, 'logged once for the three');
  const line = (w.logs.get('wp-node') ?? []).find((l) => l.msg === BUFFER_LOG);
  t.like(line, { reason: 'mirror_buffer', mirror_service: 'legacy.default' });
}

// ---- gRPC (grpc-js) ----

interface GrpcAnswer {
  err: grpc.ServiceError | null;
  value: Msg | undefined;
  head: grpc.Metadata | undefined;
  status: grpc.StatusObject | undefined;
  ms: number;
}

function unary(c: grpc.Client, name: keyof typeof ECHO, rid: string, text: string): Promise<GrpcAnswer> {
  const started = performance.now();
  return new Promise((resolve) => {
    const r: GrpcAnswer = { err: null, value: undefined, head: undefined, status: undefined, ms: 0 };
    let left = 2;
    const done = (): void => {
      if (--left > 0) return;
      r.ms = performance.now() - started;
      resolve(r);
    };
    const md = new grpc.Metadata();
    md.set('x-request-id', rid);
    const call = c.makeUnaryRequest(
      ECHO[name].path,
      json.serialize,
      json.deserialize,
      { text },
      md,
      { deadline: Date.now() + 15_000 },
      (err, value) => {
        r.err = err;
        r.value = value;
        done();
      },
    );
    call.on('metadata', (m: grpc.Metadata) => {
      r.head = m;
    });
    call.on('status', (s: grpc.StatusObject) => {
      r.status = s;
      done();
    });
  });
}

function grpcClient(t: ExecutionContext<Worlds>, w: CallWorld): grpc.Client {
  const c = new grpc.Client(`127.0.0.1:${w.port}`, grpc.credentials.createInsecure());
  t.teardown(() => c.close());
  return c;
}

/** The primary's answer, head and trailers: what the client must see of every call, and nothing else. */
function fromPrimary(a: GrpcAnswer): boolean {
  const server = String(a.head?.get('x-server')[0] ?? '');
  return (
    a.err === null &&
    a.status?.code === grpc.status.OK &&
    /^api-[12]$/.test(server) &&
    a.value?.text.startsWith(`${server} `) === true &&
    a.status.metadata.get('x-trailer')[0] === `from ${server}`
  );
}

const callsAt = (w: CallWorld, server: string, rid: string): Call[] =>
  w.seen.filter((s) => s.server === server && s.rid.startsWith(rid));

async function grpcEvery(t: ExecutionContext<Worlds>, w: CallWorld, mode: Mode): Promise<void> {
  const c = grpcClient(t, w);
  const before = await mirrored(w.wp, 'sent');
  const rid = `grpc-${mode}-m-`;
  const answers = await load(50, 8, (i) => unary(c, 'Mirror', `${rid}${i}`, 'm'.repeat(i * 100)));
  t.true(answers.every(fromPrimary), 'every answer, head and trailer the primary sent');
  await until(() => callsAt(w, 'legacy-1', rid).length >= 50, 5000, 'a copy of each call at the mirror');
  const copies = callsAt(w, 'legacy-1', rid);
  t.is(copies.length, 50);
  const primaries = [...callsAt(w, 'api-1', rid), ...callsAt(w, 'api-2', rid)];
  t.is(primaries.length, 50);
  for (const p of primaries) {
    const copy = copies.find((k) => k.rid === p.rid);
    t.like(copy, { path: p.path, bytes: p.bytes });
    t.is(copy?.host, shadowed(p.host));
  }
  t.log(`${mode}: primary :authority ${primaries[0]?.host}, the copy's ${copies[0]?.host}`);
  t.true(String(copies[0]?.host).includes('-shadow'));
  await until(async () => (await mirrored(w.wp, 'sent')) - before >= 50, 5000, 'every copy answered');
  t.is((await mirrored(w.wp, 'sent')) - before, 50);
}

async function grpcSlow(t: ExecutionContext<Worlds>, w: CallWorld, mode: Mode): Promise<void> {
  const c = grpcClient(t, w);
  const plain = await load(20, 20, (i) => unary(c, 'Plain', `grpc-${mode}-n-${i}`, 'n'));
  const before = await mirrored(w.wp, 'sent');
  const rid = `grpc-${mode}-h-`;
  const held = await load(20, 20, (i) => unary(c, 'Held', `${rid}${i}`, 'h'));
  t.true(held.every(fromPrimary));
  // Every call is answered (status and trailers), and the mirror has all 20 copies, answered none.
  await until(() => callsAt(w, 'legacy-1', rid).length >= 20, 1500, 'the copies at the mirror');
  t.is(w.holding(), 20, 'the mirror still holds every copy');
  t.is((await mirrored(w.wp, 'sent')) - before, 0);
  t.log(
    `${mode}: 20 concurrent calls, median ${median(plain.map((a) => a.ms)).toFixed(0)} ms without a mirror, ` +
      `${median(held.map((a) => a.ms)).toFixed(0)} ms (max ${Math.max(...held.map((a) => a.ms)).toFixed(0)}) ` +
      `with a mirror answering after ${SLOW.ms} ms`,
  );
  await until(() => w.holding() === 0, 5000, 'the mirror answered');
  await until(async () => (await mirrored(w.wp, 'sent')) - before >= 20, 3000, 'counted sent');
  t.is((await mirrored(w.wp, 'sent')) - before, 20);
}

async function grpcPercent(t: ExecutionContext<Worlds>, w: CallWorld, mode: Mode): Promise<void> {
  const c = grpcClient(t, w);
  const before = await mirrored(w.wp, 'sent');
  const rid = `grpc-${mode}-p-`;
  const answers = await load(400, 8, (i) => unary(c, 'Half', `${rid}${i}`, 'p'));
  t.true(answers.every(fromPrimary));
  await until(async () => (await mirrored(w.wp, 'sent')) - before >= 1, 3000, 'some copies');
  await until(
    async () => (await mirrored(w.wp, 'sent')) - before === callsAt(w, 'legacy-1', rid).length,
    3000,
    'the copies answered',
  );
  const copies = callsAt(w, 'legacy-1', rid).length;
  const share = (copies / 400) * 100;
  t.log(`${mode}: ${copies} of 400 calls mirrored (${share.toFixed(1)}%, Percent 50)`);
  t.true(share >= 40 && share <= 60, `${share}% mirrored`);
  t.is((await mirrored(w.wp, 'sent')) - before, copies);
}

async function grpcBigBody(t: ExecutionContext<Worlds>, w: CallWorld, mode: Mode): Promise<void> {
  const c = grpcClient(t, w);
  const before = await mirrored(w.wp, 'skipped-body');
  const logged = (): number => (w.logs.get('wp-node') ?? []).filter((l) => l.msg === BUFFER_LOG).length;
  const loggedBefore = logged();
  const rid = `grpc-${mode}-b-`;
  // A message over waypointMirrorBufferBytes: the primary gets it whole, the mirror nothing.
  const answers = await load(3, 1, (i) => unary(c, 'Mirror', `${rid}${i}`, 'x'.repeat(100_000)));
  t.true(answers.every(fromPrimary));
  const primaries = [...callsAt(w, 'api-1', rid), ...callsAt(w, 'api-2', rid)];
  t.deepEqual(
    primaries.map((p) => p.bytes),
    [100_000, 100_000, 100_000],
  );
  t.is((await mirrored(w.wp, 'skipped-body')) - before, 3);
  t.is(callsAt(w, 'legacy-1', rid).length, 0);
  t.is(logged() - loggedBefore, 1, 'logged once for the three');
}

for (const mode of ['file', 'consul'] as const) {
  test.serial(
    `http2 ${mode}: the mirror gets a copy of every stream, -shadow :authority; the client only the primary's`,
    (t) => h2every(t, t.context.h2[mode], mode),
  );
  test.serial(`http2 ${mode}: a mirror that answers after 2 s does not hold the client`, (t) =>
    h2slow(t, t.context.h2[mode], mode),
  );
  test.serial(`http2 ${mode}: Percent 50 mirrors 50 ± 10% of 400 streams`, (t) =>
    h2percent(t, t.context.h2[mode], mode),
  );
  test.serial(`http2 ${mode}: a body over waypointMirrorBufferBytes is not mirrored, counted`, (t) =>
    h2bigBody(t, t.context.h2[mode], mode),
  );
  test.serial(
    `grpc ${mode}: the mirror gets a copy of every call; the client the primary's answer and trailers`,
    (t) => grpcEvery(t, t.context.grpc[mode], mode),
  );
  test.serial(`grpc ${mode}: a mirror that answers after 2 s does not hold the call`, (t) =>
    grpcSlow(t, t.context.grpc[mode], mode),
  );
  test.serial(`grpc ${mode}: Percent 50 mirrors 50 ± 10% of 400 calls`, (t) =>
    grpcPercent(t, t.context.grpc[mode], mode),
  );
  test.serial(`grpc ${mode}: a message over waypointMirrorBufferBytes is not mirrored, counted`, (t) =>
    grpcBigBody(t, t.context.grpc[mode], mode),
  );
}

test.serial("http2 file: a request's trailers go with its copy, as with the request", async (t) => {
  const w = t.context.trailers;
  const session = h2connect(`http://127.0.0.1:${w.port}`);
  session.on('error', () => {});
  t.teardown(() => session.close());
  const rid = 'h2-trailers-';
  const send = (i: number): Promise<string> =>
    new Promise((resolve, reject) => {
      const req = session.request(
        { ':method': 'POST', ':path': `/mirror/t${i}`, 'x-request-id': `${rid}${i}` },
        { waitForTrailers: true },
      );
      req.once('wantTrailers', () =>
        req.sendTrailers({ 'x-client-trailer': `t${i}`, 'x-forwarded-client-cert': 'By=spiffe://evil/x' }),
      );
      let text = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => {
        text += c;
      });
      req.once('end', () => resolve(text));
      req.once('error', reject);
      req.end(Buffer.alloc(1000, 't'));
    });
  const answers = await load(10, 4, send);
  t.true(answers.every((a) => /^api-[12] \/mirror\/t\d$/.test(a)));
  await until(() => callsAt(w, 'legacy-1', rid).length >= 10, 5000, 'a copy of each request at the mirror');
  const primaries = [...callsAt(w, 'api-1', rid), ...callsAt(w, 'api-2', rid)];
  const copies = callsAt(w, 'legacy-1', rid);
  t.is(primaries.length, 10);
  t.is(copies.length, 10);
  for (const p of primaries) {
    const copy = copies.find((c) => c.rid === p.rid);
    const i = p.rid.slice(rid.length);
    t.is(p.trailers?.['x-client-trailer'], `t${i}`);
    t.like(copy, { path: p.path, bytes: 1000, host: shadowed(p.host) });
    t.is(copy?.trailers?.['x-client-trailer'], `t${i}`, 'the copy has the trailers the request had');
    // An identity the client wrote in its trailers reaches neither.
    t.is(p.trailers?.['x-forwarded-client-cert'], undefined);
    t.is(copy?.trailers?.['x-forwarded-client-cert'], undefined);
  }
});
