// L7 at the waypoint, for real on loopback: two node daemons and ambitd --role waypoint sharing one mesh
// file and CA; curl on node-a reaches servers on node-b through client daemon -> waypoint -> destination
// daemon -> server, routed by Consul's config entries (service-router, -splitter, -resolver, -intentions).
// The entries are in the mesh file's configEntries, as every daemon reads them.
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { type IncomingMessage, type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import anyTest, { type TestFn } from 'ava';
import type { Ambitd } from '../../daemon/daemon.js';
import { spiffeId } from '../../daemon/identity/spiffe.js';
import type { ConfigInput } from '../../lib/config.js';
import { editMeshFile, setConfigEntry } from '../../lib/mesh/edit.js';
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
import { type LogLine, captureLogs } from '../helpers/logs.js';

const run = promisify(execFile);
const id = (service: string): string =>
  spiffeId({ trustDomain: 'ambit.local', namespace: 'default', datacenter: 'dc1', service });
const WEB = id('web');

interface Seen {
  server: string;
  method: string | undefined;
  url: string | undefined;
  headers: IncomingMessage['headers'];
}

interface Setup {
  dir: string;
  a: Ambitd;
  b: Ambitd;
  wp: Ambitd;
  logs: Map<string, LogLine[]>;
  base: string;
  seen: Seen[];
  servers: Server[];
}

const ENTRIES: unknown[] = [
  { Kind: 'service-defaults', Name: 'api', Protocol: 'http' },
  { Kind: 'service-defaults', Name: 'legacy', Protocol: 'http' },
  {
    Kind: 'service-resolver',
    Name: 'api',
    DefaultSubset: 'v1',
    Subsets: {
      v1: { Filter: 'Service.Meta.version == v1' },
      v2: { Filter: 'Service.Meta.version == v2' },
    },
  },
  {
    Kind: 'service-router',
    Name: 'api',
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
      { Match: { HTTP: { PathPrefix: '/v1/' } }, Destination: { ServiceSubset: 'v1' } },
      { Match: { HTTP: { PathPrefix: '/legacy/' } }, Destination: { Service: 'legacy' } },
    ],
  },
  {
    Kind: 'service-splitter',
    Name: 'api',
    Splits: [
      { Weight: 90, ServiceSubset: 'v1' },
      { Weight: 10, ServiceSubset: 'v2', ResponseHeaders: { Set: { 'x-canary-split': 'yes' } } },
    ],
  },
  {
    Kind: 'service-intentions',
    Name: 'api',
    Sources: [
      {
        Name: 'web',
        Permissions: [
          { Action: 'deny', HTTP: { PathPrefix: '/admin' } },
          { Action: 'deny', HTTP: { PathPrefix: '/', Methods: ['DELETE'] } },
          { Action: 'allow', HTTP: { PathPrefix: '/' } },
        ],
      },
    ],
  },
];

const test = anyTest as TestFn<Setup>;

/** An HTTP server that records every request and answers with its name, what it saw, and a secret header. */
async function server(name: string, seen: Seen[]): Promise<{ server: Server; port: number }> {
  const s = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      seen.push({ server: name, method: req.method, url: req.url, headers: req.headers });
      res.setHeader('x-server-secret', 'hidden');
      res.end(`${name} ${req.method} ${req.url}\n`);
    });
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return { server: s, port: (s.address() as AddressInfo).port };
}

test.before(async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-l7-'));
  const meshFile = join(dir, 'mesh.yaml');
  const { lines, logger } = captureLogs();
  const start = (node: string, extra: ConfigInput = {}): Promise<Ambitd> =>
    startDaemon(dir, meshFile, node, { ...extra }, logger(node));
  const seen: Seen[] = [];
  const v1 = await server('api-1', seen);
  const v2 = await server('api-2', seen);
  const legacy = await server('legacy-1', seen);
  const a = await start('node-a');
  const b = await start('node-b');
  const wp = await start('wp-node', { role: 'waypoint', waypointService: 'wp' });
  const httpPort = await freePort();
  await enroll(
    meshFile,
    clientWorkload(9, upstreamTo('api', httpPort)),
    workload({ name: 'api-1', service: 'api', node: 'node-b', ports: [v1.port], version: 'v1' }),
    workload({ name: 'api-2', service: 'api', node: 'node-b', ports: [v2.port], version: 'v2' }),
    workload({ name: 'legacy-1', service: 'legacy', node: 'node-b', ports: [legacy.port] }),
  );
  // The entries in the mesh file's configEntries, as every daemon reads them.
  await editMeshFile(meshFile, (doc) => {
    doc.setIn(['services', 'api'], doc.createNode({ waypoint: 'wp', protocol: 'http' }));
    for (const e of ENTRIES) setConfigEntry(doc, e as Record<string, unknown>);
  });
  await until(() => a.listeners.listening().length === 1, 5000, 'upstream listener bound');
  await until(
    () =>
      [a, b, wp].every((d) => d.store.service('default', 'api')?.protocol === 'http') &&
      wp.store.mesh.configEntries !== undefined,
    5000,
    'every daemon sees the waypoint, the waypoint its entries',
  );
  await until(() => b.readiness().ready && b.certs.list().length === 2, 5000, 'node-b ready');
  await until(() => wp.readiness().ready, 5000, 'waypoint ready');
  await until(() => a.store.endpoints('default', 'wp').length === 1, 5000, 'node-a sees the waypoint');
  t.context = {
    dir,
    a,
    b,
    wp,
    logs: lines,
    base: `http://127.0.0.1:${httpPort}`,
    seen,
    servers: [v1.server, v2.server, legacy.server],
  };
});

test.after.always(async (t) => {
  const s = t.context;
  if (!s?.a) return;
  for (const srv of s.servers) {
    srv.closeAllConnections();
    srv.close();
  }
  await Promise.all([s.a.close(), s.b.close(), s.wp.close()]);
  await rm(s.dir, { recursive: true, force: true });
});

const requestLines = (s: Setup): LogLine[] =>
  (s.logs.get('wp-node') ?? []).filter((l) => l.access === 'waypoint' && l.msg === 'request');

/** The access-log line of the request that carried `x-request-id: rid`. */
const lineOf = (s: Setup, rid: string): LogLine | undefined =>
  requestLines(s).find((l) => l.request_id === rid);

test.serial(
  'curl keep-alive: by path and by header to v1 and v2, rewrite and header changes seen',
  async (t) => {
    const s = t.context;
    s.seen.length = 0;
    const { stdout, stderr } = await run('curl', [
      '-sS',
      '-v',
      '--http1.1',
      '-H',
      'x-request-id: r-path-v2',
      '-H',
      'x-drop: please',
      '-H',
      'traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      '-H',
      'tracestate: vendor=1',
      '-H',
      'baggage: user=alice',
      `${s.base}/v2/items?q=1`,
      '--next',
      '--http1.1',
      '-H',
      'x-request-id: r-header-v2',
      '-H',
      'x-canary: true',
      `${s.base}/anything`,
      '--next',
      '--http1.1',
      '-H',
      'x-request-id: r-path-v1',
      `${s.base}/v1/thing`,
      '--next',
      '--http1.1',
      '-H',
      'x-request-id: r-legacy',
      `${s.base}/legacy/old`,
    ]);
    t.is(
      stdout,
      'api-2 GET /internal/items?q=1\napi-2 GET /anything\napi-1 GET /v1/thing\nlegacy-1 GET /legacy/old\n',
    );
    t.regex(stderr, /Re-using existing connection/);
    // The response changes of the /v2/ route, and the endpoint's header it removes.
    t.regex(stderr, /< x-route: v2/);
    t.notRegex(stderr.split('r-header-v2')[0]!, /< x-server-secret/);
    const [byPath, byHeader, v1, old] = s.seen;
    t.like(byPath, { server: 'api-2', url: '/internal/items?q=1' });
    t.is(byPath!.headers['x-routed'], 'v2-by-path');
    t.is(byPath!.headers['x-extra'], 'added');
    t.is(byPath!.headers['x-drop'], undefined);
    // Trace context propagated as the client sent it.
    t.is(byPath!.headers.traceparent, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    t.is(byPath!.headers.tracestate, 'vendor=1');
    t.is(byPath!.headers.baggage, 'user=alice');
    t.is(byPath!.headers['x-request-id'], 'r-path-v2');
    t.like(byHeader, { server: 'api-2', url: '/anything' });
    t.is(byHeader!.headers['x-routed'], undefined);
    t.like(v1, { server: 'api-1', url: '/v1/thing' });
    t.like(old, { server: 'legacy-1', url: '/legacy/old' });
    // Created when missing: a valid traceparent and a request id.
    t.regex(v1!.headers.traceparent as string, /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/);
    t.is(v1!.headers['x-request-id'], 'r-path-v1');
    t.like(lineOf(s, 'r-path-v2'), {
      method: 'GET',
      path: '/v2/items?q=1',
      status: 200,
      route: 'service-router/api[0]',
      subset: 'v2',
      endpoint: 'api-2',
      trace_id: '0af7651916cd43dd8448eb211c80319c',
      response_flags: '-',
      src: { principal: WEB },
      dst: { service: 'api.default', principal: id('api') },
    });
    t.like(lineOf(s, 'r-header-v2'), { route: 'service-router/api[1]', subset: 'v2', endpoint: 'api-2' });
    t.like(lineOf(s, 'r-path-v1'), { route: 'service-router/api[2]', subset: 'v1', endpoint: 'api-1' });
    t.like(lineOf(s, 'r-legacy'), {
      route: 'service-router/api[3]',
      endpoint: 'legacy-1',
      dst: { routed: 'legacy.default', principal: id('legacy') },
    });
    t.is(lineOf(s, 'r-path-v1')!.trace_id, (v1!.headers.traceparent as string).split('-')[1]);
  },
);

test.serial('a 90/10 split over 1,000 keep-alive requests lands within 3 points of 10%', async (t) => {
  const s = t.context;
  s.seen.length = 0;
  const before = await metricsText(s.wp);
  const { stdout } = await run('curl', ['-sS', '--http1.1', `${s.base}/split/[1-1000]`], {
    maxBuffer: 1 << 20,
  });
  const lines = stdout.trim().split('\n');
  t.is(lines.length, 1000);
  const v2 = lines.filter((l) => l.startsWith('api-2 ')).length;
  const v1 = lines.filter((l) => l.startsWith('api-1 ')).length;
  t.is(v1 + v2, 1000);
  t.log(`measured split: v1 ${v1 / 10}%, v2 ${v2 / 10}% over 1000 requests`);
  t.true(Math.abs(v2 / 10 - 10) <= 3, `v2 took ${v2 / 10}%`);
  const after = await metricsText(s.wp);
  const count = (text: string, version: string): number =>
    metricSum(text, 'istio_requests_total', {
      reporter: 'waypoint',
      destination_service: 'api.default',
      destination_version: version,
      source_principal: WEB,
      response_code: '200',
      request_protocol: 'http',
    });
  // The metrics agree with what the servers answered, request for request.
  t.is(count(after, 'v2') - count(before, 'v2'), v2);
  t.is(count(after, 'v1') - count(before, 'v1'), v1);
  const splitLines = requestLines(s).filter((l) => String(l.path).startsWith('/split/'));
  t.is(splitLines.length, 1000);
  t.is(splitLines.filter((l) => l.split === 'service-splitter/api[1] 10%').length, v2);
  t.true(splitLines.every((l) => l.route === 'default'));
});

test.serial('an L7 intention denies a path and a method with 403; other requests pass', async (t) => {
  const s = t.context;
  s.seen.length = 0;
  const before = await metricsText(s.wp);
  const status = async (method: string, path: string, rid: string): Promise<string> =>
    (
      await run('curl', [
        '-sS',
        '-o',
        '-',
        '-w',
        ' %{http_code}',
        '-X',
        method,
        '-H',
        `x-request-id: ${rid}`,
        '--http1.1',
        `${s.base}${path}`,
      ])
    ).stdout;
  t.is(await status('GET', '/admin/users', 'r-admin'), 'RBAC: access denied 403');
  t.is(await status('DELETE', '/v1/thing', 'r-delete'), 'RBAC: access denied 403');
  t.is(await status('GET', '/v1/thing', 'r-get'), 'api-1 GET /v1/thing\n 200');
  t.is(await status('POST', '/v1/thing', 'r-post'), 'api-1 POST /v1/thing\n 200');
  // The denied requests never reached a server.
  t.deepEqual(
    s.seen.map((r) => `${r.method} ${r.url}`),
    ['GET /v1/thing', 'POST /v1/thing'],
  );
  t.like(lineOf(s, 'r-admin'), { status: 403, response_flags: 'RBAC', method: 'GET', path: '/admin/users' });
  t.regex(String(lineOf(s, 'r-admin')!.reason), /Permissions\[0\]: deny/);
  t.like(lineOf(s, 'r-delete'), { status: 403, response_flags: 'RBAC' });
  t.regex(String(lineOf(s, 'r-delete')!.reason), /Permissions\[1\]: deny/);
  t.like(lineOf(s, 'r-get'), { status: 200, response_flags: '-' });
  const after = await metricsText(s.wp);
  const refused = (m: string): number =>
    metricSum(m, 'ambit_connections_refused_total', { direction: 'inbound', reason: 'l7_denied' });
  t.is(refused(after) - refused(before), 2);
  const denied = (m: string): number =>
    metricSum(m, 'istio_requests_total', {
      reporter: 'waypoint',
      response_code: '403',
      response_flags: 'RBAC',
      source_principal: WEB,
    });
  t.is(denied(after) - denied(before), 2);
});

test.serial(
  'request metrics: Istio names and labels, a histogram with its buckets, body sizes',
  async (t) => {
    const s = t.context;
    const before = await metricsText(s.wp);
    await run('curl', ['-sS', '--http1.1', '--data-binary', 'x'.repeat(1000), `${s.base}/v1/upload`]);
    const m = await metricsText(s.wp);
    const labels = {
      reporter: 'waypoint',
      source_workload: 'web',
      source_workload_namespace: 'default',
      source_principal: WEB,
      destination_service: 'api.default',
      destination_service_name: 'api',
      destination_workload: 'api-1',
      destination_principal: id('api'),
      destination_version: 'v1',
      request_protocol: 'http',
      response_code: '200',
      grpc_response_status: '',
      response_flags: '-',
      connection_security_policy: 'mutual_tls',
    };
    const delta = (name: string, extra: Record<string, string> = {}): number =>
      metricSum(m, name, { ...labels, ...extra }) - metricSum(before, name, { ...labels, ...extra });
    t.is(delta('istio_requests_total'), 1);
    t.is(delta('istio_request_duration_milliseconds_count'), 1);
    t.is(delta('istio_request_bytes_sum'), 1000);
    t.is(delta('istio_request_bytes_bucket', { le: '1000' }), 1);
    t.is(delta('istio_request_bytes_bucket', { le: '500' }), 0);
    t.is(delta('istio_response_bytes_sum'), 'api-1 POST /v1/upload\n'.length);
    // Istio's buckets, every one of them.
    for (const le of [
      '0.5',
      '1',
      '5',
      '10',
      '25',
      '50',
      '100',
      '250',
      '500',
      '1000',
      '2500',
      '5000',
      '10000',
      '30000',
      '60000',
      '300000',
      '600000',
      '1800000',
      '3600000',
      '+Inf',
    ])
      t.true(
        m.split('\n').some((l) => l.startsWith(`istio_request_duration_milliseconds_bucket{le="${le}",`)),
        `bucket ${le}`,
      );
  },
);
