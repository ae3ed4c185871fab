// HTTP/2 and gRPC through a waypoint, on loopback: two node daemons and ambitd --role waypoint. gRPC
// (@grpc/grpc-js) and node:http2 clients on node-a reach servers on node-b through client daemon ->
// waypoint -> destination daemon -> server, and raw frames test the waypoint's HTTP/2 bounds.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import {
  type ClientHttp2Session,
  type Http2Server,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Stream,
  connect as h2connect,
  createServer as h2server,
} from 'node:http2';
import { type AddressInfo, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import WebSocket from 'ws';
import type { Ambitd } from '../../daemon/daemon.js';
import { spiffeId } from '../../daemon/identity/spiffe.js';
import { OVERFLOW_BODY } from '../../daemon/waypoint/conn-gate.js';
import type { ConfigInput } from '../../lib/config.js';
import { editMeshFile, setConfigEntry } from '../../lib/mesh/edit.js';
import type { TapEvent } from '../../lib/tap.js';
import {
  LOOP_CLOCK_SLACK_MS,
  clientWorkload,
  enroll,
  freePort,
  metricSum,
  metricsText,
  startDaemon,
  until,
  upstreamTo,
  workload,
} from '../helpers/cluster.js';
import * as raw from '../helpers/h2raw.js';
import { type LogLine, captureLogs } from '../helpers/logs.js';

const id = (service: string): string =>
  spiffeId({ trustDomain: 'ambit.local', namespace: 'default', datacenter: 'dc1', service });
const WEB = id('web');
const WP = id('wp');

// A gRPC service without .proto files: JSON messages, as grpc-js allows with its own serializers.
interface Msg {
  text: string;
  n?: number;
  fail?: boolean;
  /** The server answers this much later. */
  delayMs?: number;
  /** The server of this name answers INTERNAL, after its response's head (the status in trailers). */
  failOn?: string;
}
const json = {
  serialize: (v: Msg): Buffer => Buffer.from(JSON.stringify(v)),
  deserialize: (b: Buffer): Msg => JSON.parse(b.toString()) as Msg,
};
const method = (path: string, responseStream: boolean) => ({
  path,
  requestStream: false,
  responseStream,
  requestSerialize: json.serialize,
  requestDeserialize: json.deserialize,
  responseSerialize: json.serialize,
  responseDeserialize: json.deserialize,
});
const ECHO = {
  Unary: method('/ambit.test.Echo/Unary', false),
  Stream: method('/ambit.test.Echo/Stream', true),
  /** Served like Unary; the chain tests' intention denies it at the waypoint. */
  Forbidden: method('/ambit.test.Echo/Forbidden', false),
};

interface Setup {
  dir: string;
  a: Ambitd;
  wp: Ambitd;
  logs: Map<string, LogLine[]>;
  /** Upstream listeners on node-a: the grpc service, the http2 one, and a grpc one nothing serves. */
  grpcPort: number;
  h2Port: number;
  deadPort: number;
  /** What the http2 servers saw: requests, the sessions they came on, the most streams open at once. */
  h2: H2Seen;
  grpcSeen: grpc.Metadata[];
  close(): Promise<void>;
}

interface H2Seen {
  requests: number;
  sessions: number;
  open: number;
  maxOpen: number;
  hold: number;
  /** Each request's fields as the server got them, pseudo-headers too. */
  headers: IncomingHttpHeaders[];
  /** Per server: answers every request it holds now. */
  flushers: Array<() => void>;
}

interface SetupOptions {
  /**
   * Consul config entries for the mesh file. With them, greet and h2 each have a second endpoint: greet-1
   * and h2-1 are version v1, greet-2 and h2-2 version v2.
   */
  entries?: readonly Record<string, unknown>[];
}

/** A gRPC Echo server that names itself in its response's `x-server` metadata. */
async function grpcServer(
  name: string,
  seen: grpc.Metadata[],
): Promise<{ server: grpc.Server; port: number }> {
  const server = new grpc.Server();
  const unaryImpl = (call: grpc.ServerUnaryCall<Msg, Msg>, cb: grpc.sendUnaryData<Msg>): void => {
    seen.push(call.metadata);
    const trailer = new grpc.Metadata();
    trailer.set('x-trailer', `for ${call.request.text}`);
    if (call.request.fail) {
      cb({ code: grpc.status.NOT_FOUND, details: `no ${call.request.text}`, metadata: trailer });
      return;
    }
    const head = new grpc.Metadata();
    head.set('x-head', String(call.metadata.get('x-ping')[0] ?? ''));
    head.set('x-server', name);
    call.sendMetadata(head);
    if (call.request.failOn === name) {
      cb({ code: grpc.status.INTERNAL, details: `${name} fails`, metadata: trailer });
      return;
    }
    const xfcc = String(call.metadata.get('x-forwarded-client-cert')[0] ?? '');
    const answer = (): void => cb(null, { text: `${call.request.text}|${xfcc}` }, trailer);
    if (call.request.delayMs) setTimeout(answer, call.request.delayMs).unref();
    else answer();
  };
  server.addService(ECHO, {
    Unary: unaryImpl,
    Forbidden: unaryImpl,
    Stream: (call: grpc.ServerWritableStream<Msg, Msg>) => {
      seen.push(call.metadata);
      for (let i = 0; i < (call.request.n ?? 0); i++) call.write({ text: call.request.text, n: i });
      const trailer = new grpc.Metadata();
      trailer.set('x-count', String(call.request.n ?? 0));
      call.end(trailer);
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { server, port };
}

/**
 * An http2 server that names itself in `x-server`: answers each request once `hold` are open at once
 * (or after 5 s), with trailers.
 */
async function h2Server(name: string, h2: H2Seen): Promise<{ server: Http2Server; port: number }> {
  const waiting: Array<() => void> = [];
  h2.flushers.push(() => {
    for (const f of waiting.splice(0)) f();
  });
  const server: Http2Server = h2server({ settings: { maxConcurrentStreams: 1000 } });
  server.on('session', () => h2.sessions++);
  server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
    h2.requests++;
    h2.headers.push(headers);
    h2.open++;
    h2.maxOpen = Math.max(h2.maxOpen, h2.open);
    stream.once('close', () => h2.open--);
    stream.on('error', () => {});
    let body = 0;
    let trailers: IncomingHttpHeaders = {};
    stream.on('data', (c: Buffer) => {
      body += c.length;
    });
    stream.once('trailers', (t: IncomingHttpHeaders) => {
      trailers = t;
    });
    const answer = (): void => {
      if (stream.destroyed) return;
      stream.respond(
        {
          ':status': 200,
          'x-server': name,
          'x-path': String(headers[':path']),
          'x-xfcc': String(headers['x-forwarded-client-cert']),
          'x-server-secret': 'hidden',
        },
        { waitForTrailers: true },
      );
      stream.once('wantTrailers', () =>
        stream.sendTrailers({
          'x-body': String(body),
          'x-got-trailer': String(trailers['x-client-trailer'] ?? ''),
        }),
      );
      stream.end('ok');
    };
    stream.once('end', () => {
      waiting.push(answer);
      if (waiting.length >= h2.hold) for (const f of waiting.splice(0)) f();
      else
        setTimeout(
          () => waiting.includes(answer) && waiting.splice(waiting.indexOf(answer), 1) && answer(),
          5000,
        );
    });
    stream.resume();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

async function setup(o: SetupOptions = {}): Promise<Setup> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-wph2-'));
  const meshFile = join(dir, 'mesh.yaml');
  const { lines, logger } = captureLogs();
  const start = (node: string, extra: ConfigInput = {}): Promise<Ambitd> =>
    startDaemon(dir, meshFile, node, { ejectTime: '200ms', ...extra }, logger(node));
  const versioned = o.entries !== undefined;

  const grpcSeen: grpc.Metadata[] = [];
  const h2: H2Seen = { requests: 0, sessions: 0, open: 0, maxOpen: 0, hold: 1, headers: [], flushers: [] };
  const grpcs = [await grpcServer('greet-1', grpcSeen)];
  const h2s = [await h2Server('h2-1', h2)];
  if (versioned) {
    grpcs.push(await grpcServer('greet-2', grpcSeen));
    h2s.push(await h2Server('h2-2', h2));
  }
  const nothingPort = await freePort();

  const a = await start('node-a');
  const b = await start('node-b');
  const wp = await start('wp-node', { role: 'waypoint', waypointService: 'wp' });
  const [grpcPort, h2Port, deadPort] = [await freePort(), await freePort(), await freePort()];
  const version = (i: number): { version?: string } => (versioned ? { version: `v${i + 1}` } : {});
  await enroll(
    meshFile,
    clientWorkload(9, upstreamTo('greet', grpcPort), upstreamTo('h2', h2Port), upstreamTo('dead', deadPort)),
    ...grpcs.map((g, i) =>
      workload({ name: `greet-${i + 1}`, service: 'greet', node: 'node-b', ports: [g.port], ...version(i) }),
    ),
    ...h2s.map((h, i) =>
      workload({ name: `h2-${i + 1}`, service: 'h2', node: 'node-b', ports: [h.port], ...version(i) }),
    ),
    workload({ name: 'dead-1', service: 'dead', node: 'node-b', ports: [nothingPort] }),
  );
  await editMeshFile(meshFile, (doc) => {
    doc.setIn(['services', 'greet'], doc.createNode({ waypoint: 'wp', protocol: 'grpc' }));
    doc.setIn(['services', 'h2'], doc.createNode({ waypoint: 'wp', protocol: 'http2' }));
    doc.setIn(['services', 'dead'], doc.createNode({ waypoint: 'wp', protocol: 'grpc' }));
    for (const e of o.entries ?? []) setConfigEntry(doc, e);
  });
  await until(() => a.listeners.listening().length === 3, 5000, 'upstream listeners bound');
  const optedIn = (d: Ambitd): boolean =>
    d.store.service('default', 'greet')?.protocol === 'grpc' &&
    d.store.service('default', 'h2')?.protocol === 'http2' &&
    d.store.service('default', 'dead')?.protocol === 'grpc';
  await until(() => [a, b, wp].every(optedIn), 5000, 'every daemon sees the waypoints');
  if (versioned)
    await until(() => wp.store.mesh.configEntries !== undefined, 5000, 'the waypoint sees its entries');
  // One certificate per service on node-b, however many of its endpoints are there.
  await until(() => b.readiness().ready && b.certs.list().length === 3, 5000, 'node-b ready');
  await until(() => wp.readiness().ready && wp.certs.has(WP), 5000, 'waypoint ready');
  await until(() => a.store.endpoints('default', 'wp').length === 1, 5000, 'node-a sees the waypoint');
  return {
    dir,
    a,
    wp,
    logs: lines,
    grpcPort,
    h2Port,
    deadPort,
    h2,
    grpcSeen,
    async close() {
      for (const g of grpcs) g.server.forceShutdown();
      for (const h of h2s) h.server.close();
      await Promise.all([a.close(), b.close(), wp.close()]);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

const grpcClient = (port: number): grpc.Client =>
  new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());

interface UnaryResult {
  err: grpc.ServiceError | null;
  value: Msg | undefined;
  head: grpc.Metadata | undefined;
  status: grpc.StatusObject | undefined;
}

function unary(
  c: grpc.Client,
  msg: Msg,
  md = new grpc.Metadata(),
  path = ECHO.Unary.path,
): Promise<UnaryResult> {
  return new Promise((resolve) => {
    const r: UnaryResult = { err: null, value: undefined, head: undefined, status: undefined };
    let left = 2;
    const done = (): void => {
      if (--left === 0) resolve(r);
    };
    const deadline = Date.now() + 10_000;
    const call = c.makeUnaryRequest(
      path,
      json.serialize,
      json.deserialize,
      msg,
      md,
      { deadline },
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

const requestLines = (s: Setup): LogLine[] =>
  (s.logs.get('wp-node') ?? []).filter((l) => l.access === 'waypoint' && l.msg === 'request');

test.serial('gRPC unary through the waypoint: metadata, trailers and an error status carried', async (t) => {
  const s = await setup();
  const c = grpcClient(s.grpcPort);
  try {
    const md = new grpc.Metadata();
    md.set('x-ping', 'pong');
    md.set('x-forwarded-client-cert', `By=spiffe://evil/x;URI=${id('admin')}`);
    const ok = await unary(c, { text: 'hi' }, md);
    t.is(ok.err, null);
    // The server saw the waypoint's x-forwarded-client-cert, never the client's own.
    t.is(ok.value?.text, `hi|By=${WP};URI=${WEB}`);
    t.deepEqual(ok.head?.get('x-head'), ['pong']);
    t.is(ok.status?.code, grpc.status.OK);
    t.deepEqual(ok.status?.metadata.get('x-trailer'), ['for hi']);
    t.deepEqual(s.grpcSeen[0]?.get('x-forwarded-client-cert'), [`By=${WP};URI=${WEB}`]);

    // The server's error status and its trailers (a trailers-only answer) reach the client as sent.
    const bad = await unary(c, { text: 'thing', fail: true });
    t.is(bad.err?.code, grpc.status.NOT_FOUND);
    t.is(bad.err?.details, 'no thing');
    t.deepEqual(bad.status?.metadata.get('x-trailer'), ['for thing']);

    const lines = requestLines(s);
    t.is(lines.length, 2);
    t.like(lines[0], {
      protocol: 'grpc',
      method: 'POST',
      path: ECHO.Unary.path,
      status: 200,
      grpc_status: '0',
      endpoint: 'greet-1',
      src: { principal: WEB },
      dst: { service: 'greet.default', principal: id('greet') },
    });
    t.like(lines[1], { grpc_status: String(grpc.status.NOT_FOUND) });
  } finally {
    c.close();
    await s.close();
  }
});

test.serial('gRPC server streaming through the waypoint: every message, then the trailers', async (t) => {
  const s = await setup();
  const c = grpcClient(s.grpcPort);
  try {
    const got: Msg[] = [];
    const status = await new Promise<grpc.StatusObject>((resolve) => {
      const call = c.makeServerStreamRequest(ECHO.Stream.path, json.serialize, json.deserialize, {
        text: 'tick',
        n: 500,
      });
      call.on('data', (m: Msg) => got.push(m));
      call.on('error', () => {});
      call.on('status', resolve);
    });
    t.is(status.code, grpc.status.OK);
    t.is(got.length, 500);
    t.deepEqual(
      got.map((m) => m.n),
      Array.from({ length: 500 }, (_, i) => i),
    );
    t.deepEqual(status.metadata.get('x-count'), ['500']);
  } finally {
    c.close();
    await s.close();
  }
});

test.serial("the waypoint's own gRPC errors: a hop that fails is UNAVAILABLE, seen by grpc-js", async (t) => {
  const s = await setup();
  const c = grpcClient(s.deadPort);
  try {
    // dead-1's node answers the waypoint's hop 503 (nothing listens at its port).
    const r = await unary(c, { text: 'anyone' });
    t.is(r.err?.code, grpc.status.UNAVAILABLE);
    t.is(r.err?.details, 'upstream connect error');
    t.like(requestLines(s)[0], {
      protocol: 'grpc',
      status: 200,
      grpc_status: '14',
      endpoint: 'dead-1',
      reason: 'endpoint dead-1 answered 503',
    });
  } finally {
    c.close();
    await s.close();
  }
});

test.serial(
  'HTTP/2: 100 concurrent streams all answered, on one upstream session, trailers both ways',
  async (t) => {
    const s = await setup();
    const session = h2connect(`http://127.0.0.1:${s.h2Port}`);
    session.on('error', () => {});
    try {
      s.h2.hold = 100;
      const one = (
        i: number,
      ): Promise<{ status: number; body: string; trailers: IncomingHttpHeaders; xfcc: string }> =>
        new Promise((resolve, reject) => {
          const req = session.request(
            { ':method': 'POST', ':path': `/r/${i}`, 'x-forwarded-client-cert': 'By=x;URI=spiffe://evil/y' },
            { waitForTrailers: true },
          );
          req.once('wantTrailers', () => req.sendTrailers({ 'x-client-trailer': `t${i}` }));
          let status = 0;
          let xfcc = '';
          let body = '';
          req.once('response', (h) => {
            status = Number(h[':status']);
            xfcc = String(h['x-xfcc']);
          });
          req.setEncoding('utf8');
          req.on('data', (c: string) => {
            body += c;
          });
          req.once('trailers', (trailers) =>
            req.once('end', () => resolve({ status, body, trailers, xfcc })),
          );
          req.once('error', reject);
          req.end(`body ${i}`);
        });
      const results = await Promise.all(Array.from({ length: 100 }, (_, i) => one(i)));
      for (const [i, r] of results.entries()) {
        t.is(r.status, 200);
        t.is(r.body, 'ok');
        t.is(r.xfcc, `By=${WP};URI=${WEB}`);
        t.is(r.trailers['x-body'], String(`body ${i}`.length));
        t.is(r.trailers['x-got-trailer'], `t${i}`);
      }
      // The server had all 100 open at once, and all came on the waypoint's one session for this client.
      t.is(s.h2.maxOpen, 100);
      t.is(s.h2.sessions, 1);
      t.is(s.wp.waypoint?.http2.upstreamSessions, 1);
      t.is(requestLines(s).filter((l) => l.protocol === 'http2' && l.status === 200).length, 100);
    } finally {
      session.destroy();
      await s.close();
    }
  },
);

/** A raw HTTP/2 connection through node-a's upstream listener, i.e. to the waypoint, inside the tunnel. */
function rawH2(port: number): { write: (b: Buffer) => void; frames: raw.Frame[]; closed: Promise<void> } {
  const sock = connect({ port, host: '127.0.0.1' });
  const reader = new raw.FrameReader();
  const frames: raw.Frame[] = [];
  sock.on('data', (c: Buffer) => frames.push(...reader.push(c)));
  sock.on('error', () => {});
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  const timer = setTimeout(() => sock.destroy(), 15_000);
  void closed.then(() => clearTimeout(timer));
  sock.write(Buffer.concat([raw.PREFACE, raw.settingsFrame()]));
  return { write: (b) => sock.write(b), frames, closed };
}

const getBlock = (path: string, extra: Buffer[] = []): Buffer =>
  Buffer.concat([
    raw.literal(':method', 'GET'),
    raw.literal(':path', path),
    raw.literal(':scheme', 'http'),
    raw.literal(':authority', 'h2'),
    ...extra,
  ]);

test.serial(
  'rapid reset against the waypoint: the session ends and the server sees (almost) nothing',
  async (t) => {
    const s = await setup();
    try {
      const c = rawH2(s.h2Port);
      // 3000 HEADERS + RST_STREAM pairs, in bursts of 100; the waypoint is expected to cut it off midway.
      for (let i = 0; i < 30; i++) {
        const burst: Buffer[] = [];
        for (let j = 0; j < 100; j++) {
          const sid = 1 + 2 * (i * 100 + j);
          burst.push(raw.headersFrame(sid, getBlock('/reset')), raw.rstStreamFrame(sid));
        }
        c.write(Buffer.concat(burst));
      }
      await c.closed;
      // Streams reset before they were read are never opened upstream.
      t.log(`the server saw ${s.h2.requests} of 3000 reset streams`);
      t.true(s.h2.requests < 50, `the server saw ${s.h2.requests} requests`);
      const m = await metricsText(s.wp);
      t.true(metricSum(m, 'ambit_connections_refused_total', { reason: 'h2_reset_flood' }) >= 1);
      // The waypoint still serves everyone else.
      const session = h2connect(`http://127.0.0.1:${s.h2Port}`);
      session.on('error', () => {});
      const status = await new Promise<number>((resolve, reject) => {
        const req = session.request({ ':path': '/after' });
        req.once('response', (h) => resolve(Number(h[':status'])));
        req.once('error', reject);
        req.resume();
        req.end();
      });
      session.destroy();
      t.is(status, 200);
    } finally {
      await s.close();
    }
  },
);

test.serial(
  'a header-list bomb is reset at the waypoint and never forwarded; the session goes on',
  async (t) => {
    const s = await setup();
    try {
      const c = rawH2(s.h2Port);
      // ~3 KB on the wire that decode to ~180 KB: one 3000-byte field indexed, then referenced 60 times.
      const bomb = getBlock('/bomb', [
        raw.literalIndexed('x-big', 'a'.repeat(3000)),
        ...Array.from({ length: 60 }, () => raw.indexed(62)),
      ]);
      // More fields than maxHeaderListPairs, each small.
      const pairs = getBlock(
        '/pairs',
        Array.from({ length: 200 }, (_, i) => raw.literal(`x-h${i}`, 'v')),
      );
      c.write(Buffer.concat([raw.headersFrame(1, bomb, true), raw.headersFrame(3, pairs, true)]));
      c.write(
        raw.frame(raw.FrameType.HEADERS, raw.Flag.END_HEADERS | raw.Flag.END_STREAM, 5, getBlock('/fine')),
      );
      await until(
        () => c.frames.some((f) => f.type === raw.FrameType.HEADERS && f.streamId === 5),
        10_000,
        'answer on stream 5',
      );
      const resets = new Map(
        c.frames
          .filter((f) => f.type === raw.FrameType.RST_STREAM)
          .map((f) => [f.streamId, f.payload.readUInt32BE(0)] as const),
      );
      t.is(resets.get(1), raw.H2Error.ENHANCE_YOUR_CALM);
      t.is(resets.get(3), raw.H2Error.ENHANCE_YOUR_CALM);
      const answer = c.frames.find((f) => f.type === raw.FrameType.HEADERS && f.streamId === 5);
      t.is(answer && raw.statusOf(answer.payload), 200);
      // Only the well-formed request reached the server; the bomb was counted (node resets the other).
      t.is(s.h2.requests, 1);
      const m = await metricsText(s.wp);
      t.is(metricSum(m, 'ambit_connections_refused_total', { reason: 'h2_header_flood' }), 1);
    } finally {
      await s.close();
    }
  },
);

const subsets = {
  v1: { Filter: 'Service.Meta.version == v1' },
  v2: { Filter: 'Service.Meta.version == v2' },
  /** A subset no endpoint is in: what a route to it gets is the waypoint's own "no healthy upstream". */
  gone: { Filter: 'Service.Meta.version == v9' },
};

/** The discovery chains and L7 intentions of greet (grpc) and h2 (http2), as Consul config entries. */
const CHAIN: Record<string, unknown>[] = [
  { Kind: 'service-resolver', Name: 'greet', DefaultSubset: 'v1', Subsets: subsets },
  {
    Kind: 'service-router',
    Name: 'greet',
    Routes: [
      {
        Match: { HTTP: { Header: [{ Name: 'x-canary', Exact: 'true' }] } },
        Destination: { ServiceSubset: 'v2', RequestHeaders: { Set: { 'x-routed': 'grpc-v2' } } },
      },
      {
        Match: { HTTP: { Header: [{ Name: 'x-nowhere', Present: true }] } },
        Destination: { ServiceSubset: 'gone' },
      },
      // Issue 16's RequestTimeout, for gRPC: DEADLINE_EXCEEDED.
      {
        Match: { HTTP: { Header: [{ Name: 'x-slow', Present: true }] } },
        Destination: { ServiceSubset: 'v1', RequestTimeout: '200ms' },
      },
      // Issue 16's IdleTimeout: a call whose answer has begun and then goes quiet is cut.
      {
        Match: { HTTP: { Header: [{ Name: 'x-idle', Present: true }] } },
        Destination: { ServiceSubset: 'v1', IdleTimeout: '300ms' },
      },
    ],
  },
  {
    Kind: 'service-intentions',
    Name: 'greet',
    Sources: [
      {
        Name: 'web',
        Permissions: [
          { Action: 'deny', HTTP: { PathExact: ECHO.Forbidden.path } },
          { Action: 'allow', HTTP: { PathPrefix: '/' } },
        ],
      },
    ],
  },
  {
    Kind: 'service-resolver',
    Name: 'h2',
    DefaultSubset: 'v1',
    Subsets: subsets,
    LoadBalancer: {
      Policy: 'ring_hash',
      HashPolicies: [{ Field: 'cookie', FieldValue: 'sticky', CookieConfig: { TTL: '60s', Path: '/' } }],
    },
  },
  {
    Kind: 'service-router',
    Name: 'h2',
    Routes: [
      {
        Match: { HTTP: { PathPrefix: '/v2/' } },
        Destination: {
          ServiceSubset: 'v2',
          PrefixRewrite: '/internal/',
          RequestHeaders: {
            Set: { 'x-routed': 'v2-by-path' },
            Add: { 'x-extra': 'added' },
            Remove: ['x-drop'],
          },
          ResponseHeaders: { Set: { 'x-route': 'v2' }, Remove: ['x-server-secret'] },
        },
      },
      {
        Match: { HTTP: { Header: [{ Name: 'x-canary', Exact: 'true' }] } },
        Destination: { ServiceSubset: 'v2' },
      },
      // Issue 16's IdleTimeout: a request with no answer and no byte either way is answered 408.
      {
        Match: { HTTP: { PathPrefix: '/idle/' } },
        Destination: { ServiceSubset: 'v1', IdleTimeout: '300ms' },
      },
    ],
  },
  {
    Kind: 'service-intentions',
    Name: 'h2',
    Sources: [
      {
        Name: 'web',
        Permissions: [
          { Action: 'deny', HTTP: { PathPrefix: '/admin' } },
          { Action: 'allow', HTTP: { PathPrefix: '/' } },
        ],
      },
    ],
  },
];

interface H2Answer {
  headers: IncomingHttpHeaders;
  body: string;
}

/** One request on `session`: the response's fields and its body. */
const h2request = (session: ClientHttp2Session, headers: OutgoingHttpHeaders): Promise<H2Answer> =>
  new Promise((resolve, reject) => {
    const req = session.request(headers);
    let got: IncomingHttpHeaders = {};
    let body = '';
    req.once('response', (h) => {
      got = h;
    });
    req.setEncoding('utf8');
    req.on('data', (c: string) => {
      body += c;
    });
    req.once('end', () => resolve({ headers: got, body }));
    req.once('error', reject);
    req.end();
  });

/** The access-log line of the request that carried `x-request-id: rid`. */
const lineOf = (s: Setup, rid: string): LogLine | undefined =>
  requestLines(s).find((l) => l.request_id === rid);

const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

test.serial(
  'HTTP/2 by the chain: path and header to v1/v2, rewrite, header changes, trace, cookie, 403',
  async (t) => {
    const s = await setup({ entries: CHAIN });
    const session = h2connect(`http://127.0.0.1:${s.h2Port}`);
    session.on('error', () => {});
    try {
      const before = await metricsText(s.wp);
      const byPath = await h2request(session, {
        ':path': '/v2/items?q=1',
        'x-request-id': 'h-path',
        'x-drop': 'please',
        traceparent: TRACEPARENT,
        tracestate: 'vendor=1',
        baggage: 'user=alice',
      });
      const byHeader = await h2request(session, {
        ':path': '/anything',
        'x-request-id': 'h-header',
        'x-canary': 'true',
      });
      const byDefault = await h2request(session, { ':path': '/v1/thing', cookie: 'sticky=abc' });
      const denied = await h2request(session, { ':path': '/admin/users', 'x-request-id': 'h-admin' });

      // The /v2/ route: subset v2, the prefix rewritten, its header changes both ways, a cookie set.
      t.like(byPath.headers, { ':status': 200, 'x-server': 'h2-2', 'x-path': '/internal/items?q=1' });
      t.is(byPath.headers['x-route'], 'v2');
      t.is(byPath.headers['x-server-secret'], undefined);
      t.regex(String(byPath.headers['set-cookie']), /^sticky=[0-9a-f]+; Path=\/; Max-Age=60; HttpOnly$/);
      // By header to v2, untouched by the /v2/ route's changes; a client with the cookie gets none.
      t.like(byHeader.headers, { ':status': 200, 'x-server': 'h2-2', 'x-path': '/anything' });
      t.is(byHeader.headers['x-route'], undefined);
      t.is(byHeader.headers['x-server-secret'], 'hidden');
      t.like(byDefault.headers, { ':status': 200, 'x-server': 'h2-1', 'x-path': '/v1/thing' });
      t.is(byDefault.headers['set-cookie'], undefined);
      t.is(Number(denied.headers[':status']), 403);
      t.is(denied.body, 'RBAC: access denied');

      // What the servers got: three requests (the denied one never left the waypoint), changed as routed.
      t.deepEqual(
        s.h2.headers.map((h) => h[':path']),
        ['/internal/items?q=1', '/anything', '/v1/thing'],
      );
      const [p, h, v1] = s.h2.headers;
      t.is(p!['x-routed'], 'v2-by-path');
      t.is(p!['x-extra'], 'added');
      t.is(p!['x-drop'], undefined);
      t.is(p!.traceparent, TRACEPARENT);
      t.is(p!.tracestate, 'vendor=1');
      t.is(p!.baggage, 'user=alice');
      t.is(p!['x-request-id'], 'h-path');
      t.is(h!['x-routed'], undefined);
      // Created when missing: a valid traceparent and a request id, as the access log names them.
      t.regex(String(v1!.traceparent), /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/);
      t.regex(String(v1!['x-request-id']), /^[0-9a-f-]{36}$/);

      t.like(lineOf(s, 'h-path'), {
        protocol: 'http2',
        path: '/v2/items?q=1',
        status: 200,
        route: 'service-router/h2[0]',
        subset: 'v2',
        endpoint: 'h2-2',
        trace_id: '0af7651916cd43dd8448eb211c80319c',
        response_flags: '-',
        dst: { service: 'h2.default', principal: id('h2') },
      });
      t.like(lineOf(s, 'h-header'), { route: 'service-router/h2[1]', subset: 'v2', endpoint: 'h2-2' });
      const v1Line = lineOf(s, String(v1!['x-request-id']));
      t.like(v1Line, { route: 'default', subset: 'v1', endpoint: 'h2-1' });
      t.is(v1Line?.trace_id, String(v1!.traceparent).split('-')[1]);
      t.like(lineOf(s, 'h-admin'), { status: 403, response_flags: 'RBAC', path: '/admin/users' });
      t.regex(String(lineOf(s, 'h-admin')?.reason), /Permissions\[0\]: deny/);

      // Every request in Istio's metrics, HTTP/2 as `http`, once each request's stream is over.
      const istio = (m: string, labels: Record<string, string>): number =>
        metricSum(m, 'istio_requests_total', {
          reporter: 'waypoint',
          destination_service: 'h2.default',
          source_principal: WEB,
          request_protocol: 'http',
          ...labels,
        });
      await until(
        async () => {
          const m = await metricsText(s.wp);
          return istio(m, {}) - istio(before, {}) === 4;
        },
        5000,
        'four HTTP/2 requests counted',
      );
      const after = await metricsText(s.wp);
      const delta = (labels: Record<string, string>): number => istio(after, labels) - istio(before, labels);
      t.is(delta({ response_code: '200', destination_version: 'v2', response_flags: '-' }), 2);
      t.is(delta({ response_code: '200', destination_version: 'v1', response_flags: '-' }), 1);
      t.is(delta({ response_code: '403', response_flags: 'RBAC' }), 1);
      const refused = (m: string): number =>
        metricSum(m, 'ambit_connections_refused_total', { direction: 'inbound', reason: 'l7_denied' });
      t.is(refused(after) - refused(before), 1);
    } finally {
      session.destroy();
      await s.close();
    }
  },
);

test.serial(
  'gRPC by the chain: a header routes to v2, an intention answers PERMISSION_DENIED, metrics by status',
  async (t) => {
    const s = await setup({ entries: CHAIN });
    const c = grpcClient(s.grpcPort);
    try {
      const before = await metricsText(s.wp);
      const plain = await unary(c, { text: 'one' });
      const canaryMd = new grpc.Metadata();
      canaryMd.set('x-canary', 'true');
      const canary = await unary(c, { text: 'two' }, canaryMd);
      const notFound = await unary(c, { text: 'thing', fail: true });
      const seenBefore = s.grpcSeen.length;
      const forbidden = await unary(c, { text: 'three' }, new grpc.Metadata(), ECHO.Forbidden.path);
      const nowhereMd = new grpc.Metadata();
      nowhereMd.set('x-nowhere', '1');
      const nowhere = await unary(c, { text: 'four' }, nowhereMd);
      const slowMd = new grpc.Metadata();
      slowMd.set('x-slow', '1');
      const slowStarted = performance.now();
      const slow = await unary(c, { text: 'five', delayMs: 2000 }, slowMd);
      const slowMs = performance.now() - slowStarted;
      t.log(`DEADLINE_EXCEEDED after ${slowMs.toFixed(0)} ms (RequestTimeout 200ms, the server at 2,000 ms)`);
      t.is(slow.err?.code, grpc.status.DEADLINE_EXCEEDED);
      t.is(slow.err?.details, 'upstream request timeout');
      t.true(slowMs >= 190 && slowMs < 1500, `${slowMs} ms`);

      t.is(plain.err, null);
      t.deepEqual(plain.head?.get('x-server'), ['greet-1']);
      t.is(canary.err, null);
      t.deepEqual(canary.head?.get('x-server'), ['greet-2']);
      t.deepEqual(s.grpcSeen[1]?.get('x-routed'), ['grpc-v2']);
      t.deepEqual(s.grpcSeen[0]?.get('x-routed'), []);
      t.is(notFound.err?.code, grpc.status.NOT_FOUND);
      // The waypoint's answers, as grpc-js reports them: no server saw either call.
      t.is(forbidden.err?.code, grpc.status.PERMISSION_DENIED);
      t.is(forbidden.err?.details, 'RBAC: access denied');
      t.is(nowhere.err?.code, grpc.status.UNAVAILABLE);
      t.is(nowhere.err?.details, 'no healthy upstream');
      // (The slow call, after them, did reach its server.)
      t.is(s.grpcSeen.length, seenBefore + 1);

      t.like(
        requestLines(s).find((l) => l.path === ECHO.Forbidden.path),
        {
          protocol: 'grpc',
          status: 200,
          grpc_status: '7',
          response_flags: 'RBAC',
        },
      );
      t.like(
        requestLines(s).find((l) => l.grpc_status === '14'),
        { status: 200, response_flags: 'UH', route: 'service-router/greet[1]', subset: 'gone' },
      );
      t.like(
        requestLines(s).find((l) => l.endpoint === 'greet-2'),
        { route: 'service-router/greet[0]', subset: 'v2', grpc_status: '0', response_flags: '-' },
      );

      const istio = (m: string, labels: Record<string, string>): number =>
        metricSum(m, 'istio_requests_total', {
          reporter: 'waypoint',
          destination_service: 'greet.default',
          source_principal: WEB,
          request_protocol: 'grpc',
          response_code: '200',
          ...labels,
        });
      await until(
        async () => istio(await metricsText(s.wp), {}) - istio(before, {}) === 6,
        5000,
        'six gRPC calls counted',
      );
      const after = await metricsText(s.wp);
      const delta = (labels: Record<string, string>): number => istio(after, labels) - istio(before, labels);
      t.is(delta({ grpc_response_status: '0', destination_version: 'v1' }), 1);
      t.is(delta({ grpc_response_status: '0', destination_version: 'v2' }), 1);
      t.is(
        delta({ grpc_response_status: String(grpc.status.NOT_FOUND), destination_workload: 'greet-1' }),
        1,
      );
      t.is(delta({ grpc_response_status: '7', response_flags: 'RBAC' }), 1);
      t.is(delta({ grpc_response_status: '14', response_flags: 'UH' }), 1);
      t.is(delta({ grpc_response_status: '4', response_flags: 'UT', destination_workload: 'greet-1' }), 1);
    } finally {
      c.close();
      await s.close();
    }
  },
);

test.serial(
  'gRPC: a fault aborts with its gRPC status and delays by its time; INTERNAL in trailers ejects',
  async (t) => {
    const s = await setup({
      entries: [
        {
          Kind: 'service-defaults',
          Name: 'web',
          UpstreamConfig: {
            Overrides: [
              {
                Name: 'greet',
                PassiveHealthCheck: {
                  MaxFailures: 2,
                  Interval: '1s',
                  BaseEjectionTime: '1s',
                  MaxEjectionPercent: 50,
                },
              },
            ],
          },
        },
        {
          Kind: 'service-router',
          Name: 'greet',
          Meta: {
            'ambit-fault':
              '{"Abort": {"GRPCStatus": "RESOURCE_EXHAUSTED"}, "Header": {"Name": "x-fault", "Exact": "abort"}}',
            'ambit-fault-0': '{"Delay": {"Fixed": "100ms"}}',
          },
          Routes: [{ Match: { HTTP: { Header: [{ Name: 'x-fault', Exact: 'delay' }] } } }],
        },
      ],
    });
    const c = grpcClient(s.grpcPort);
    const md = (v: string): grpc.Metadata => {
      const m = new grpc.Metadata();
      m.set('x-fault', v);
      return m;
    };
    try {
      const seen = s.grpcSeen.length;
      const aborted = await unary(c, { text: 'a' }, md('abort'));
      t.is(aborted.err?.code, grpc.status.RESOURCE_EXHAUSTED);
      t.is(aborted.err?.details, 'fault filter abort');
      t.is(s.grpcSeen.length, seen, 'no server saw the aborted call');
      const started = performance.now();
      const delayed = await unary(c, { text: 'd' }, md('delay'));
      const ms = performance.now() - started;
      t.is(delayed.err, null);
      t.true(ms >= 100 - LOOP_CLOCK_SLACK_MS, `${ms} ms`);
      t.like(
        requestLines(s).find((l) => l.response_flags === 'FI'),
        { protocol: 'grpc', status: 200, grpc_status: '8' },
      );
      t.like(
        requestLines(s).find((l) => l.response_flags === 'DI'),
        { protocol: 'grpc', grpc_status: '0' },
      );

      // greet-1 answers INTERNAL (500 to outlier detection) in its trailers: twice in a row ejects it.
      const servers: string[] = [];
      const codes: number[] = [];
      for (let i = 0; i < 12; i++) {
        const r = await unary(c, { text: `o${i}`, failOn: 'greet-1' });
        servers.push(String(r.head?.get('x-server')[0]));
        codes.push(r.err?.code ?? 0);
      }
      t.is(codes.filter((x) => x === grpc.status.INTERNAL).length, 2);
      t.deepEqual(servers.slice(-6), Array(6).fill('greet-2'));
      t.true(
        (s.logs.get('wp-node') ?? []).some(
          (l) => l.msg === 'waypoint ejected an endpoint (outlier)' && l.endpoint === 'greet-1',
        ),
      );
      t.is(
        metricSum(await metricsText(s.wp), 'ambit_waypoint_outlier_ejected', {
          destination_service: 'greet.default',
        }),
        1,
      );
    } finally {
      c.close();
      await s.close();
    }
  },
);

test.serial(
  'IdleTimeout over HTTP/2: no answer in 300 ms is 408 stream timeout; a quiet gRPC answer is cut; SI',
  async (t) => {
    const s = await setup({ entries: CHAIN });
    // The h2 servers hold every request until 100 are open (or 5 s): this one gets no answer in time.
    s.h2.hold = 100;
    const session = h2connect(`http://127.0.0.1:${s.h2Port}`);
    session.on('error', () => {});
    const c = grpcClient(s.grpcPort);
    try {
      const before = await metricsText(s.wp);
      const started = performance.now();
      const quiet = await h2request(session, { ':path': '/idle/report', 'x-request-id': 'h-idle' });
      const ms = performance.now() - started;
      t.log(
        `HTTP/2: ${quiet.headers[':status']} after ${ms.toFixed(0)} ms (IdleTimeout 300ms, the server at 5 s)`,
      );
      t.is(Number(quiet.headers[':status']), 408);
      t.is(quiet.body, 'stream timeout');
      t.true(ms >= 300 - LOOP_CLOCK_SLACK_MS && ms < 4000, `${ms} ms`);
      // A gRPC answer that began (the server sends its metadata at once) and then says nothing for 300 ms.
      const md = new grpc.Metadata();
      md.set('x-idle', '1');
      const callStarted = performance.now();
      const cut = await unary(c, { text: 'quiet', delayMs: 2000 }, md);
      const callMs = performance.now() - callStarted;
      t.log(`gRPC: ${cut.err?.code} ${cut.err?.details} after ${callMs.toFixed(0)} ms`);
      t.not(cut.err, null, 'the call does not end as if answered');
      t.deepEqual(cut.head?.get('x-server'), ['greet-1'], 'its answer had begun');
      t.true(callMs < 1500, `cut at ${callMs} ms, not the server's 2,000`);
      await until(
        () => lineOf(s, 'h-idle') !== undefined && requestLines(s).some((l) => l.protocol === 'grpc'),
        3000,
        'the access-log lines',
      );
      const h2line = lineOf(s, 'h-idle');
      t.like(h2line, { protocol: 'http2', status: 408, response_flags: 'SI', endpoint: 'h2-1' });
      t.is(h2line?.reason, 'IdleTimeout of 300 ms');
      const grpcLine = requestLines(s).find((l) => l.protocol === 'grpc');
      t.like(grpcLine, { response_flags: 'SI', endpoint: 'greet-1', reason: 'IdleTimeout of 300 ms' });
      for (const l of [h2line, grpcLine]) {
        const took = Number(l?.duration_ms);
        t.true(took >= 300 - LOOP_CLOCK_SLACK_MS && took < 1500, `the waypoint took ${took} ms`);
      }
      const after = await metricsText(s.wp);
      const si = (m: string, service: string): number =>
        metricSum(m, 'istio_requests_total', { destination_service: service, response_flags: 'SI' });
      t.is(si(after, 'h2.default') - si(before, 'h2.default'), 1);
      t.is(si(after, 'greet.default') - si(before, 'greet.default'), 1);
    } finally {
      c.close();
      session.destroy();
      await s.close();
    }
  },
);

test.serial(
  'MaxConnections 1, MaxPendingRequests 1 over HTTP/2: a stream shares the session, one waits, one is UO',
  async (t) => {
    const limits = {
      Kind: 'service-defaults',
      Name: 'web',
      UpstreamConfig: { Overrides: [{ Name: 'h2', Limits: { MaxConnections: 1, MaxPendingRequests: 1 } }] },
    };
    const s = await setup({ entries: [...CHAIN, limits] });
    // The servers hold every request until told (or 5 s).
    s.h2.hold = 100;
    const session = h2connect(`http://127.0.0.1:${s.h2Port}`);
    session.on('error', () => {});
    try {
      const before = metricSum(await metricsText(s.wp), 'ambit_connections_refused_total', {
        direction: 'inbound',
        reason: 'overflow',
      });
      const at = (path: string, rid: string): Promise<H2Answer> =>
        h2request(session, { ':path': path, 'x-request-id': rid });
      // h2-2's session is the one connection; a second stream to h2-2 shares it.
      const a = at('/v2/a', 'c-a');
      await until(() => s.h2.open === 1, 5000, 'the first stream at h2-2');
      const d = at('/v2/d', 'c-d');
      await until(() => s.h2.open === 2, 5000, 'the second stream on the same session');
      // h2-1 needs a connection of its own: the first waits, the second is refused at once.
      let waited: H2Answer | undefined;
      const b = at('/v1/b', 'c-b').then((r) => {
        waited = r;
        return r;
      });
      const c = await at('/v1/c', 'c-c');
      t.is(Number(c.headers[':status']), 503);
      t.is(c.body, OVERFLOW_BODY);
      t.is(waited, undefined, 'the waiting request is not answered while the connection is busy');
      t.is(s.h2.sessions, 1, 'one session at the servers');
      for (const f of s.h2.flushers) f();
      const [ra, rd] = await Promise.all([a, d]);
      t.like(ra.headers, { ':status': 200, 'x-server': 'h2-2' });
      t.like(rd.headers, { ':status': 200, 'x-server': 'h2-2' });
      // Its slot came when h2-2's idle session closed; then it reached h2-1 on a session of its own.
      s.h2.hold = 1;
      const rb = await b;
      t.like(rb.headers, { ':status': 200, 'x-server': 'h2-1' });
      // (The /v2/ route rewrites its prefix to /internal/.)
      t.deepEqual(
        s.h2.headers.map((h) => h[':path']),
        ['/internal/a', '/internal/d', '/v1/b'],
      );
      t.is(s.h2.sessions, 2);
      await until(() => lineOf(s, 'c-c') !== undefined, 3000, 'the access-log line');
      t.like(lineOf(s, 'c-c'), { protocol: 'http2', status: 503, response_flags: 'UO' });
      t.regex(String(lineOf(s, 'c-c')?.reason), /^1 connections from web to h2 open \(MaxConnections\)/);
      const after = metricSum(await metricsText(s.wp), 'ambit_connections_refused_total', {
        direction: 'inbound',
        reason: 'overflow',
      });
      t.is(after - before, 1);
    } finally {
      session.destroy();
      await s.close();
    }
  },
);

test.serial("the waypoint's tap streams HTTP/2 requests and gRPC calls as they end", async (t) => {
  const s = await setup();
  const c = grpcClient(s.grpcPort);
  const token = (await readFile(join(s.dir, 'wp-node', 'admin.token'), 'utf8')).trim();
  const ws = new WebSocket(`ws://127.0.0.1:${s.wp.ports.admin}/tap`, {
    headers: { authorization: `Bearer ${token}` },
  });
  const taps: TapEvent[] = [];
  ws.on('message', (m) => taps.push(JSON.parse(String(m)) as TapEvent));
  try {
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    await until(() => s.wp.metrics.connections.taps > 0, 2000, 'the tap registered');
    const r = await unary(c, { text: 'tapped' });
    t.is(r.err, null);
    const session = h2connect(`http://127.0.0.1:${s.h2Port}`);
    try {
      const answer = await h2request(session, { ':method': 'GET', ':path': '/tapped-h2' });
      t.is(Number(answer.headers[':status']), 200);
    } finally {
      session.close();
    }
    const requests = (): TapEvent[] => taps.filter((e) => e.request !== undefined);
    await until(() => requests().length >= 2, 5000, 'both requests tapped');
    const grpcEvent = requests().find((e) => e.request?.protocol === 'grpc');
    const h2Event = requests().find((e) => e.request?.path === '/tapped-h2');
    t.is(grpcEvent?.request?.path, ECHO.Unary.path);
    t.is(grpcEvent?.dst.service, 'greet');
    t.is(h2Event?.request?.protocol, 'http', "Istio's request_protocol: http for HTTP/2 too");
    t.is(h2Event?.request?.response_code, 200);
    t.is(h2Event?.dst.workload, 'h2-1');
    t.is(h2Event?.src.principal, WEB);
  } finally {
    ws.close();
    c.close();
    await s.close();
  }
});
