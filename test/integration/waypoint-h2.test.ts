// HTTP/2 and gRPC through a waypoint, on loopback: two node daemons and ambitd --role waypoint. gRPC
// (@grpc/grpc-js) and node:http2 clients on node-a reach servers on node-b through client daemon ->
// waypoint -> destination daemon -> server, and raw frames test the waypoint's HTTP/2 bounds.
import { mkdtemp, rm } from 'node:fs/promises';
import {
  type Http2Server,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
  connect as h2connect,
  createServer as h2server,
} from 'node:http2';
import { type AddressInfo, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import type { Ambitd } from '../../daemon/daemon.js';
import { spiffeId } from '../../daemon/identity/spiffe.js';
import type { ConfigInput } from '../../lib/config.js';
import { editMeshFile } from '../../lib/mesh/edit.js';
import {
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
};

interface Setup {
  a: Ambitd;
  wp: Ambitd;
  logs: Map<string, LogLine[]>;
  /** Upstream listeners on node-a: the grpc service, the http2 one, and a grpc one nothing serves. */
  grpcPort: number;
  h2Port: number;
  deadPort: number;
  /** What the http2 server saw: requests, the sessions they came on, the most streams open at once. */
  h2: { requests: number; sessions: number; open: number; maxOpen: number; hold: number };
  grpcSeen: grpc.Metadata[];
  close(): Promise<void>;
}

async function setup(): Promise<Setup> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-wph2-'));
  const meshFile = join(dir, 'mesh.yaml');
  const { lines, logger } = captureLogs();
  const start = (node: string, extra: ConfigInput = {}): Promise<Ambitd> =>
    startDaemon(dir, meshFile, node, { ejectTime: '200ms', ...extra }, logger(node));

  const grpcSeen: grpc.Metadata[] = [];
  const gserver = new grpc.Server();
  gserver.addService(ECHO, {
    Unary: (call: grpc.ServerUnaryCall<Msg, Msg>, cb: grpc.sendUnaryData<Msg>) => {
      grpcSeen.push(call.metadata);
      const trailer = new grpc.Metadata();
      trailer.set('x-trailer', `for ${call.request.text}`);
      if (call.request.fail) {
        cb({ code: grpc.status.NOT_FOUND, details: `no ${call.request.text}`, metadata: trailer });
        return;
      }
      const head = new grpc.Metadata();
      head.set('x-head', String(call.metadata.get('x-ping')[0] ?? ''));
      call.sendMetadata(head);
      const xfcc = String(call.metadata.get('x-forwarded-client-cert')[0] ?? '');
      cb(null, { text: `${call.request.text}|${xfcc}` }, trailer);
    },
    Stream: (call: grpc.ServerWritableStream<Msg, Msg>) => {
      grpcSeen.push(call.metadata);
      for (let i = 0; i < (call.request.n ?? 0); i++) call.write({ text: call.request.text, n: i });
      const trailer = new grpc.Metadata();
      trailer.set('x-count', String(call.request.n ?? 0));
      call.end(trailer);
    },
  });
  const grpcServerPort = await new Promise<number>((resolve, reject) =>
    gserver.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(port),
    ),
  );

  // The http2 server: answers each request once `hold` are open at once (or after 5 s), with trailers.
  const h2 = { requests: 0, sessions: 0, open: 0, maxOpen: 0, hold: 1 };
  const waiting: Array<() => void> = [];
  const hserver: Http2Server = h2server({ settings: { maxConcurrentStreams: 1000 } });
  hserver.on('session', () => h2.sessions++);
  hserver.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
    h2.requests++;
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
          'x-path': String(headers[':path']),
          'x-xfcc': String(headers['x-forwarded-client-cert']),
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
  await new Promise<void>((r) => hserver.listen(0, '127.0.0.1', r));
  const h2ServerPort = (hserver.address() as AddressInfo).port;
  const nothingPort = await freePort();

  const a = await start('node-a');
  const b = await start('node-b');
  const wp = await start('wp-node', { role: 'waypoint', waypointService: 'wp' });
  const [grpcPort, h2Port, deadPort] = [await freePort(), await freePort(), await freePort()];
  await enroll(
    meshFile,
    clientWorkload(9, upstreamTo('greet', grpcPort), upstreamTo('h2', h2Port), upstreamTo('dead', deadPort)),
    workload({ name: 'greet-1', service: 'greet', node: 'node-b', ports: [grpcServerPort] }),
    workload({ name: 'h2-1', service: 'h2', node: 'node-b', ports: [h2ServerPort] }),
    workload({ name: 'dead-1', service: 'dead', node: 'node-b', ports: [nothingPort] }),
  );
  await editMeshFile(meshFile, (doc) => {
    doc.setIn(['services', 'greet'], doc.createNode({ waypoint: 'wp', protocol: 'grpc' }));
    doc.setIn(['services', 'h2'], doc.createNode({ waypoint: 'wp', protocol: 'http2' }));
    doc.setIn(['services', 'dead'], doc.createNode({ waypoint: 'wp', protocol: 'grpc' }));
  });
  await until(() => a.listeners.listening().length === 3, 5000, 'upstream listeners bound');
  const optedIn = (d: Ambitd): boolean =>
    d.store.service('default', 'greet')?.protocol === 'grpc' &&
    d.store.service('default', 'h2')?.protocol === 'http2' &&
    d.store.service('default', 'dead')?.protocol === 'grpc';
  await until(() => [a, b, wp].every(optedIn), 5000, 'every daemon sees the waypoints');
  await until(() => b.readiness().ready && b.certs.list().length === 3, 5000, 'node-b ready');
  await until(() => wp.readiness().ready && wp.certs.has(WP), 5000, 'waypoint ready');
  await until(() => a.store.endpoints('default', 'wp').length === 1, 5000, 'node-a sees the waypoint');
  return {
    a,
    wp,
    logs: lines,
    grpcPort,
    h2Port,
    deadPort,
    h2,
    grpcSeen,
    async close() {
      gserver.forceShutdown();
      hserver.close();
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

function unary(c: grpc.Client, msg: Msg, md = new grpc.Metadata()): Promise<UnaryResult> {
  return new Promise((resolve) => {
    const r: UnaryResult = { err: null, value: undefined, head: undefined, status: undefined };
    let left = 2;
    const done = (): void => {
      if (--left === 0) resolve(r);
    };
    const deadline = Date.now() + 10_000;
    const call = c.makeUnaryRequest(
      ECHO.Unary.path,
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
