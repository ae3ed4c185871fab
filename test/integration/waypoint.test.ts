// A waypoint for real, on loopback: two node daemons and ambitd --role waypoint sharing one mesh file and
// CA. curl and ws clients on node-a reach servers on node-b through client daemon -> waypoint ->
// destination daemon -> server, and nothing reaches them around it.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { type IncomingMessage, type Server, createServer } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { WebSocket, WebSocketServer } from 'ws';
import type { Ambitd } from '../../daemon/daemon.js';
import { spiffeId } from '../../daemon/identity/spiffe.js';
import type { ConfigInput } from '../../lib/config.js';
import { addPolicy, editMeshFile, removeWorkload } from '../../lib/mesh/edit.js';
import type { TapEvent } from '../../lib/tap.js';
import {
  clientWorkload,
  echoServer,
  enroll,
  freePort,
  metricSum,
  metricsText,
  roundTrip,
  sha256,
  startDaemon,
  until,
  upstreamTo,
  workload,
} from '../helpers/cluster.js';
import { type LogLine, captureLogs } from '../helpers/logs.js';

const run = promisify(execFile);
const id = (service: string): string =>
  spiffeId({ trustDomain: 'ambit.local', namespace: 'default', datacenter: 'dc1', service });
const WEB = id('web');
const WP = id('wp');

interface Seen {
  method: string | undefined;
  url: string | undefined;
  headers: IncomingMessage['headers'];
  body: string;
  socket: number;
}

interface Setup {
  dir: string;
  a: Ambitd;
  b: Ambitd;
  wp: Ambitd;
  /** Every waypoint instance: wp first. */
  waypoints: Ambitd[];
  logs: Map<string, LogLine[]>;
  /** Upstream listeners on node-a: to the http service api, and to the tcp service echo. */
  httpPort: number;
  tcpPort: number;
  seen: Seen[];
  server: Server;
  echoAccepted: () => number;
  close(): Promise<void>;
}

async function setup(opts: { waypoints?: number; waypointConfig?: ConfigInput } = {}): Promise<Setup> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-wp-'));
  const meshFile = join(dir, 'mesh.yaml');
  const { lines, logger } = captureLogs();
  const start = (node: string, extra: ConfigInput = {}): Promise<Ambitd> =>
    startDaemon(dir, meshFile, node, { ejectTime: '200ms', ...extra }, logger(node));
  // The server: every request it sees, with the keep-alive connection it came on; WebSocket echo on /ws.
  const seen: Seen[] = [];
  // Each connection the server accepted, numbered in order.
  const socketIds = new WeakMap<object, number>();
  let accepted = 0;
  const server = createServer((req, res) => {
    if (!socketIds.has(req.socket)) socketIds.set(req.socket, ++accepted);
    const socket = socketIds.get(req.socket) ?? 0;
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => {
      body += c;
    });
    req.on('end', () => {
      seen.push({ method: req.method, url: req.url, headers: req.headers, body, socket });
      res.setHeader('x-served-by', 'api-1');
      if (req.url === '/chunked') {
        // No length: node:http frames it in chunks, written apart.
        res.write('one,');
        setTimeout(() => res.end('two'), 20);
        return;
      }
      res.end(`${req.method} ${req.url} ${body.length}\n`);
    });
  });
  const wss = new WebSocketServer({ server, path: '/ws' });
  wss.on('connection', (ws, req) => {
    ws.on('message', (m) => ws.send(`echo ${m.toString()} for ${req.headers['x-forwarded-client-cert']}`));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const apiPort = (server.address() as AddressInfo).port;
  const echo = await echoServer();

  const a = await start('node-a');
  const b = await start('node-b');
  const waypoints: Ambitd[] = [];
  for (let i = 1; i <= (opts.waypoints ?? 1); i++)
    waypoints.push(
      await start(i === 1 ? 'wp-node' : `wp-node-${i}`, {
        role: 'waypoint',
        waypointService: 'wp',
        ...opts.waypointConfig,
      }),
    );
  const wp = waypoints[0]!;
  const httpPort = await freePort();
  const tcpPort = await freePort();
  await enroll(
    meshFile,
    clientWorkload(9, upstreamTo('api', httpPort), upstreamTo('echo', tcpPort)),
    workload({ name: 'api-1', service: 'api', node: 'node-b', ports: [apiPort] }),
    workload({ name: 'echo-1', service: 'echo', node: 'node-b', ports: [echo.port] }),
  );
  await editMeshFile(meshFile, (doc) => {
    doc.setIn(['services', 'api'], doc.createNode({ waypoint: 'wp', protocol: 'http' }));
    doc.setIn(['services', 'echo'], doc.createNode({ waypoint: 'wp' }));
  });
  await until(() => a.listeners.listening().length === 2, 5000, 'upstream listeners bound');
  // Each daemon reads the mesh file on its own: all of them must hold the services' waypoints.
  const optedIn = (d: Ambitd): boolean =>
    d.store.service('default', 'echo')?.waypoint === 'wp' &&
    d.store.service('default', 'api')?.protocol === 'http';
  await until(() => [a, b, ...waypoints].every(optedIn), 5000, 'every daemon sees the waypoints');
  await until(() => b.readiness().ready && b.certs.list().length === 2, 5000, 'node-b ready');
  for (const w of waypoints)
    await until(() => w.readiness().ready && w.certs.has(WP), 5000, 'waypoint ready');
  await until(
    () => a.store.endpoints('default', 'wp').length === waypoints.length,
    5000,
    'node-a sees the waypoints',
  );
  return {
    dir,
    a,
    b,
    wp,
    waypoints,
    logs: lines,
    httpPort,
    tcpPort,
    seen,
    server,
    echoAccepted: echo.accepted,
    async close() {
      wss.close();
      server.closeAllConnections();
      server.close();
      echo.server.close();
      await Promise.all([a.close(), b.close(), ...waypoints.map((w) => w.close())]);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

const requestLines = (s: Setup): LogLine[] =>
  (s.logs.get('wp-node') ?? []).filter((l) => l.access === 'waypoint' && l.msg === 'request');

/** Writes `raw` on a fresh connection and collects the reply until the peer closes (bounded). */
function rawExchange(port: number, raw: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1' });
    let got = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve(got);
    }, 3000);
    s.setEncoding('utf8');
    s.on('data', (c: string) => {
      got += c;
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
    s.on('error', (err) => {
      clearTimeout(timer);
      if (got) resolve(got);
      else reject(err);
    });
    s.write(raw);
  });
}

test('curl with keep-alive: every request through the waypoint, one access-log line each', async (t) => {
  const s = await setup();
  try {
    // The waypoint's tap sees each request as it ends (ambit tap on a waypoint).
    const token = (await readFile(join(s.dir, 'wp-node', 'admin.token'), 'utf8')).trim();
    const taps: TapEvent[] = [];
    const ws = new WebSocket(`ws://127.0.0.1:${s.wp.ports.admin}/tap?to=api`, {
      headers: { authorization: `Bearer ${token}` },
    });
    ws.on('message', (m) => taps.push(JSON.parse(String(m)) as TapEvent));
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    await until(() => s.wp.metrics.connections.taps > 0, 2000, 'the tap registered');
    const base = `http://127.0.0.1:${s.httpPort}`;
    const { stdout, stderr } = await run('curl', [
      '-sS',
      '-v',
      '--http1.1',
      '-H',
      'x-forwarded-client-cert: By=spiffe://evil/x;URI=spiffe://ambit.local/ns/default/dc/dc1/svc/admin',
      `${base}/one`,
      `${base}/two?q=1`,
      `${base}/three`,
    ]);
    t.is(stdout, 'GET /one 0\nGET /two?q=1 0\nGET /three 0\n');
    // One client connection, kept alive by the waypoint's parser.
    t.regex(stderr, /Re-using existing connection/);
    t.deepEqual(
      s.seen.map((r) => r.url),
      ['/one', '/two?q=1', '/three'],
    );
    // The waypoint keeps its own connection to the endpoint alive too.
    t.is(new Set(s.seen.map((r) => r.socket)).size, 1);
    // The client's own header is gone; the waypoint's names the identity the tunnel proved.
    for (const r of s.seen) t.is(r.headers['x-forwarded-client-cert'], `By=${WP};URI=${WEB}`);
    const lines = requestLines(s);
    t.is(lines.length, 3);
    t.like(lines[1], {
      method: 'GET',
      path: '/two?q=1',
      authority: `127.0.0.1:${s.httpPort}`,
      status: 200,
      endpoint: 'api-1',
      src: { principal: WEB },
      dst: { service: 'api.default', principal: id('api') },
    });
    t.true((lines[1]!.bytes_sent as number) > 0);
    t.is(typeof lines[1]!.duration_ms, 'number');
    await until(() => taps.filter((e) => e.event === 'request').length === 3, 3000, 'three request events');
    const second = taps.filter((e) => e.event === 'request')[1]!;
    t.like(second, {
      status: 'closed',
      src: { principal: WEB },
      dst: { service: 'api', workload: 'api-1', principal: id('api') },
      request: { protocol: 'http', method: 'GET', path: '/two?q=1', response_code: 200, endpoint: 'api-1' },
    });
    t.regex(second.request?.trace_id ?? '', /^[0-9a-f]{32}$/);
    ws.close();
    // The destination took one stream from the waypoint for all three, and names the client it carried for.
    const m = await metricsText(s.b);
    t.is(
      metricSum(m, 'istio_tcp_connections_opened_total', {
        reporter: 'destination',
        destination_workload: 'api-1',
        source_principal: WEB,
      }),
      1,
    );
  } finally {
    await s.close();
  }
});

/** Like rawExchange, and says whether the waypoint closed the connection (rather than the timer). */
function rawSession(port: number, raw: string, ms = 3000): Promise<{ got: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' });
    let got = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ got, closed: false });
    }, ms);
    s.setEncoding('utf8');
    s.on('data', (c: string) => {
      got += c;
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ got, closed: true });
    });
    s.on('error', () => {});
    s.write(raw);
  });
}

test('HTTP/1.1 as clients speak it: pipelined, 1.0, HEAD, chunked answers, CONNECT, a head too slow', async (t) => {
  const s = await setup({ waypointConfig: { httpHeadTimeout: '500ms' } });
  try {
    // Three requests in one write: three answers, in order, and the last one's Connection: close kept.
    const pipelined = await rawSession(
      s.httpPort,
      'GET /p1 HTTP/1.1\r\nHost: api\r\n\r\nPOST /p2 HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\n\r\nabc' +
        'GET /p3 HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n',
    );
    t.true(pipelined.closed, 'closed after the request that asked for it');
    const bodies = [...pipelined.got.matchAll(/^(GET|POST) (\/p\d) (\d+)$/gm)].map(
      (m) => `${m[1]} ${m[2]} ${m[3]}`,
    );
    t.deepEqual(bodies, ['GET /p1 0', 'POST /p2 3', 'GET /p3 0']);
    t.is(pipelined.got.match(/^HTTP\/1\.1 200 /gm)?.length, 3);

    // HTTP/1.0 without keep-alive: one answer with a length, then the waypoint closes.
    const old = await rawSession(s.httpPort, 'GET /old HTTP/1.0\r\nHost: api\r\n\r\n');
    t.true(old.closed);
    t.regex(old.got, /^HTTP\/1\.1 200 /);
    t.regex(old.got, /\r\nconnection: close\r\n/i);
    t.true(old.got.endsWith('GET /old 0\n'));

    // HEAD: no body after its answer, and the connection still good for the next request.
    const head = await rawSession(
      s.httpPort,
      'HEAD /h HTTP/1.1\r\nHost: api\r\n\r\nGET /after-head HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n',
    );
    t.regex(head.got, /^HTTP\/1\.1 200 /);
    t.is(head.got.match(/^HTTP\/1\.1 200 /gm)?.length, 2);
    t.true(head.got.endsWith('GET /after-head 0\n'));
    t.is(head.got.match(/HEAD \/h/g), null, 'no body after the HEAD answer');

    // A response without a length reaches curl whole, in chunks.
    const { stdout } = await run('curl', ['-sS', '--http1.1', `http://127.0.0.1:${s.httpPort}/chunked`]);
    t.is(stdout, 'one,two');

    // CONNECT is not a request the waypoint forwards.
    const connectReply = await rawSession(
      s.httpPort,
      'CONNECT 198.18.0.9:443 HTTP/1.1\r\nHost: 198.18.0.9:443\r\n\r\n',
    );
    t.regex(connectReply.got, /^HTTP\/1\.1 405 /);
    t.true(connectReply.closed);

    // A head that never completes: 408 once httpHeadTimeout passes, counted and logged.
    const slow = await rawSession(s.httpPort, 'GET /slow HTTP/1.1\r\nHost: api\r\nX-Slow: a', 5000);
    t.regex(slow.got, /^HTTP\/1\.1 408 /);
    t.true(slow.closed);
    const m = await metricsText(s.wp);
    t.is(
      metricSum(m, 'ambit_connections_refused_total', { direction: 'inbound', reason: 'idle_timeout' }),
      1,
    );
    // An idle keep-alive connection is closed then too, quietly.
    const idle = await rawSession(s.httpPort, 'GET /idle HTTP/1.1\r\nHost: api\r\n\r\n', 5000);
    t.true(idle.closed);
    t.true(idle.got.endsWith('GET /idle 0\n'));
    t.is(
      metricSum(await metricsText(s.wp), 'ambit_connections_refused_total', { reason: 'idle_timeout' }),
      1,
    );
    t.false(
      s.seen.some((r) => r.url === '/slow' || r.method === 'CONNECT'),
      'neither reached the server',
    );
  } finally {
    await s.close();
  }
});

test('a chunked body with Expect: 100-continue is forwarded whole', async (t) => {
  const s = await setup();
  try {
    const body = 'x'.repeat(200_000);
    const file = join(s.dir, 'body');
    await writeFile(file, body);
    const { stdout, stderr } = await run('curl', [
      '-sS',
      '-v',
      '--expect100-timeout',
      '30',
      '--http1.1',
      '-H',
      'Transfer-Encoding: chunked',
      '-H',
      'Expect: 100-continue',
      '--data-binary',
      `@${file}`,
      `http://127.0.0.1:${s.httpPort}/upload`,
    ]);
    t.is(stdout, `POST /upload ${body.length}\n`);
    // The waypoint answered the expectation (curl waits up to 30 s for it otherwise).
    t.regex(stderr, /< HTTP\/1\.1 100 Continue/);
    t.is(s.seen.length, 1);
    t.is(s.seen[0]!.body.length, body.length);
    t.is(s.seen[0]!.headers['transfer-encoding'], 'chunked');
    t.is(s.seen[0]!.headers.expect, undefined);
  } finally {
    await s.close();
  }
});

test('smuggling probes get 400 from the waypoint and the server sees nothing', async (t) => {
  const s = await setup();
  try {
    const probes = {
      'Content-Length and Transfer-Encoding':
        'POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n',
      'duplicate Content-Length':
        'POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n',
      'Transfer-Encoding not ending in chunked':
        'POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n',
      'a space before the colon':
        'POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc',
    };
    for (const [what, raw] of Object.entries(probes)) {
      const reply = await rawExchange(s.httpPort, raw);
      t.regex(reply, /^HTTP\/1\.1 400 /, what);
    }
    t.is(s.seen.length, 0, 'nothing was forwarded');
    const m = await metricsText(s.wp);
    t.is(
      metricSum(m, 'ambit_connections_refused_total', { direction: 'inbound', reason: 'bad_request' }),
      Object.keys(probes).length,
    );
  } finally {
    await s.close();
  }
});

test('a WebSocket upgrade is passed through, both ways', async (t) => {
  const s = await setup();
  try {
    const ws = new WebSocket(`ws://127.0.0.1:${s.httpPort}/ws`);
    const got = await new Promise<string>((resolve, reject) => {
      ws.once('open', () => ws.send('hello'));
      ws.once('message', (m) => resolve(m.toString()));
      ws.once('error', reject);
    });
    t.is(got, `echo hello for By=${WP};URI=${WEB}`);
    const second = new Promise<string>((resolve) => ws.once('message', (m) => resolve(m.toString())));
    ws.send('again');
    t.is(await second, `echo again for By=${WP};URI=${WEB}`);
    ws.close();
    await until(() => requestLines(s).some((l) => l.status === 101), 5000, 'the upgrade logged');
  } finally {
    await s.close();
  }
});

test('a tcp service through its waypoint: bytes intact, the client named at the destination', async (t) => {
  const s = await setup();
  try {
    const payload = Buffer.alloc(1024 * 1024, 7);
    const back = await roundTrip(s.tcpPort, payload);
    t.is(back.sha256, sha256(payload));
    t.is(s.echoAccepted(), 1);
    const mb = await metricsText(s.b);
    t.is(
      metricSum(mb, 'istio_tcp_connections_opened_total', {
        reporter: 'destination',
        destination_workload: 'echo-1',
        source_principal: WEB,
      }),
      1,
    );
    const mw = await metricsText(s.wp);
    t.is(metricSum(mw, 'istio_tcp_connections_opened_total', { destination_workload: 'echo-1' }), 1);
    const line = (s.logs.get('node-b') ?? []).find(
      (l) => l.access === 'inbound' && (l.dst as { workload?: string })?.workload === 'echo-1',
    );
    t.like(line, { src: { principal: WEB, via: WP } });
  } finally {
    await s.close();
  }
});

test('a client straight to the destination daemon gets 401, counted as waypoint_bypass', async (t) => {
  const s = await setup();
  try {
    const echo = s.b.store.workload('echo-1')!;
    const authority = `127.0.0.1:${echo.ports[0]}`;
    const forged: Record<string, string>[] = [{}, { 'x-forwarded-client-cert': `By=${WP};URI=${WEB}` }];
    for (const headers of forged) {
      const { stream, status } = await s.a.pool.connect(
        { source: WEB, peer: id('echo'), address: '127.0.0.1', port: s.b.ports.tunnel },
        { ':method': 'CONNECT', ':authority': authority, ...headers },
      );
      stream.close();
      t.is(status, 401);
    }
    t.is(s.echoAccepted(), 0);
    const m = await metricsText(s.b);
    t.is(metricSum(m, 'ambit_connections_refused_total', { reason: 'waypoint_bypass' }), 2);
  } finally {
    await s.close();
  }
});

test('the waypoint stopped, or gone from the mesh: refused as waypoint_unavailable, never bypassed', async (t) => {
  const s = await setup();
  try {
    await s.wp.close();
    const tcp = await roundTrip(s.tcpPort, Buffer.from('hello')).then(
      (r) => `carried ${r.length}`,
      (err: Error) => `reset: ${err.message}`,
    );
    t.regex(tcp, /^(reset|carried 0)/);
    t.log(tcp);
    const http = await run('curl', ['-sS', '--http1.1', `http://127.0.0.1:${s.httpPort}/x`]).then(
      () => 'answered',
      () => 'failed',
    );
    t.is(http, 'failed');
    t.is(s.echoAccepted(), 0);
    t.is(s.seen.length, 0);
    const m = await metricsText(s.a);
    t.is(
      metricSum(m, 'ambit_connections_refused_total', {
        direction: 'outbound',
        reason: 'waypoint_unavailable',
      }),
      2,
    );
    const logged = (s.logs.get('node-a') ?? []).filter(
      (l) => l.msg === 'connection refused' && l.response_flags === 'UH',
    );
    t.is(logged.length, 2);
    // No instance at all in the mesh: the same.
    await editMeshFile(join(s.dir, 'mesh.yaml'), (doc) => void removeWorkload(doc, 'wp-wp-node'));
    await until(() => s.a.store.endpoints('default', 'wp').length === 0, 5000, 'waypoint gone from the mesh');
    await roundTrip(s.tcpPort, Buffer.from('hello')).catch(() => undefined);
    const m2 = await metricsText(s.a);
    t.is(metricSum(m2, 'ambit_connections_refused_total', { reason: 'waypoint_unavailable' }), 3);
    t.is(s.echoAccepted(), 0);
  } finally {
    await s.close();
  }
});

test('two waypoint instances share the connections; with one stopped the other takes them all', async (t) => {
  const s = await setup({ waypoints: 2 });
  try {
    const payload = Buffer.from('through one of the two');
    for (let i = 0; i < 6; i++) t.is((await roundTrip(s.tcpPort, payload)).sha256, sha256(payload));
    const carried = async (w: Ambitd): Promise<number> =>
      metricSum(await metricsText(w), 'istio_tcp_connections_opened_total', {
        destination_workload: 'echo-1',
      });
    const [first, second] = [await carried(s.waypoints[0]!), await carried(s.waypoints[1]!)];
    t.is(first + second, 6);
    t.true(first > 0 && second > 0, `spread ${first}/${second}`);
    await s.waypoints[1]!.close();
    for (let i = 0; i < 4; i++) t.is((await roundTrip(s.tcpPort, payload)).sha256, sha256(payload));
    t.is(await carried(s.waypoints[0]!), first + 4);
    const m = await metricsText(s.a);
    t.is(metricSum(m, 'ambit_connections_refused_total', { direction: 'outbound' }), 0);
    t.is(s.echoAccepted(), 10);
  } finally {
    await s.close();
  }
});

test("the client's intentions apply at the destination: a deny for web is 403 (http) and a reset (tcp)", async (t) => {
  const s = await setup();
  try {
    const from = [{ service: 'web', namespace: undefined, principal: undefined }];
    await editMeshFile(join(s.dir, 'mesh.yaml'), (doc) => {
      for (const svc of ['api', 'echo'])
        addPolicy(doc, {
          name: `no-web-${svc}`,
          action: 'deny',
          service: svc,
          namespace: 'default',
          ports: [],
          from,
        });
    });
    await until(() => s.b.store.policiesFor('default', 'echo').length === 1, 5000, 'node-b has the policies');
    const res = await fetch(`http://127.0.0.1:${s.httpPort}/secret`);
    t.is(res.status, 403);
    t.is(await res.text(), 'RBAC: access denied');
    await t.throwsAsync(roundTrip(s.tcpPort, Buffer.from('hello')));
    t.is(s.seen.length, 0);
    t.is(s.echoAccepted(), 0);
    const m = await metricsText(s.b);
    t.is(metricSum(m, 'ambit_connections_refused_total', { direction: 'inbound', reason: 'denied' }), 2);
    t.like(requestLines(s)[0], { path: '/secret', status: 403, endpoint: 'api-1' });
  } finally {
    await s.close();
  }
});
