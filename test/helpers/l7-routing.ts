// The waypoint's L7 routing suite, run as it is against both backends from the same config entries: the
// mesh file's configEntries (test/integration/waypoint-l7.test.ts) and Consul's /v1/config with catalog
// registrations (waypoint-l7-consul.test.ts; the emulator, or a real agent when one is on PATH). Two node
// daemons and ambitd --role waypoint on loopback; curl on node-a reaches servers on node-b through client
// daemon -> waypoint -> destination daemon -> server.
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import {
  type ClientRequest,
  type IncomingMessage,
  type ServerResponse,
  createServer,
  request,
} from 'node:http';
import { type Http2Session, createServer as createH2Server } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { TestFn } from 'ava';
import { consulEnroll } from '../../agent-cli/consul.js';
import { Ambitd } from '../../daemon/daemon.js';
import type { ConfigInput } from '../../lib/config.js';
import { NODE_SERVICE, nodeRegistration } from '../../lib/consul/catalog.js';
import { ConsulClient } from '../../lib/consul/client.js';
import { Secret } from '../../lib/consul/secret.js';
import { editMeshFile, setConfigEntry, setNode } from '../../lib/mesh/edit.js';
import type { MeshNode, Workload } from '../../lib/mesh/model.js';
import {
  LOOP_CLOCK_SLACK_MS,
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
} from './cluster.js';
import { startConsul } from './consul-emulator.js';
import { type LogLine, captureLogs } from './logs.js';

const run = promisify(execFile);

interface Seen {
  server: string;
  method: string | undefined;
  url: string | undefined;
  headers: IncomingMessage['headers'];
  /** Request-body bytes it read. */
  bytes: number;
}

export interface L7World {
  wp: Ambitd;
  logs: Map<string, LogLine[]>;
  base: string;
  seen: Seen[];
  /** Requests the `slow` server of WorldOptions holds now (read whole, not answered yet). */
  holding(): number;
  /** Requests the servers have begun and not answered, and the most at once since `peak` was last set. */
  readonly serving: { open: number; peak: number };
  /** A service's SPIFFE ID in this world's trust domain (Consul's is its cluster's). */
  id(service: string): string;
  close(): Promise<void>;
}

type Setup = L7World;

export interface WorldOptions {
  /** One server answers the requests on `prefix` `ms` late; the others answer them at once. */
  readonly slow?: { readonly server: string; readonly prefix: string; readonly ms: number };
  /** The servers speak HTTP/2 with prior knowledge (h2c), for entries that give api Protocol http2. */
  readonly h2?: boolean;
  /** More workloads, and nodes of their own that no daemon of the world runs (registered as a daemon's). */
  readonly more?: { readonly workloads: readonly Workload[]; readonly nodes: readonly MeshNode[] };
}

/** What the servers of a world share: the slow rule, and how many requests it holds now. */
interface Held {
  readonly slow: WorldOptions['slow'];
  readonly h2: boolean;
  count: number;
  readonly serving: { open: number; peak: number };
}

const heldFor = (options: WorldOptions): Held => ({
  slow: options.slow,
  h2: options.h2 === true,
  count: 0,
  serving: { open: 0, peak: 0 },
});

/** A server to stop: every connection it has, then its listener. */
type Stoppable = { close(): void };

/** The entries both backends hold, in an order Consul accepts them in (a router's subsets exist first). */
export const ENTRIES: unknown[] = [
  // The Meta opts api into its waypoint, in Consul and in the mesh file alike.
  { Kind: 'service-defaults', Name: 'api', Protocol: 'http', Meta: { 'ambit-waypoint': 'wp' } },
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
      // Issue 16's RequestTimeout: a backend that takes 2 s is cut at 200 ms.
      {
        Match: { HTTP: { PathPrefix: '/slow' } },
        Destination: { ServiceSubset: 'v1', RequestTimeout: '200ms' },
      },
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

/** An HTTP server that records every request and answers with its name, what it saw, and a secret header. */
async function server(name: string, seen: Seen[], held: Held): Promise<{ server: Stoppable; port: number }> {
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const serving = held.serving;
    serving.peak = Math.max(serving.peak, ++serving.open);
    res.once('close', () => serving.open--);
    let bytes = 0;
    req.on('data', (c: Buffer) => {
      bytes += c.length;
    });
    req.on('end', () => {
      seen.push({ server: name, method: req.method, url: req.url, headers: req.headers, bytes });
      res.setHeader('x-server-secret', 'hidden');
      // `/fail/<name>/...`: the server of that name answers 500, the others as usual (outlier ejection).
      if (req.url?.startsWith(`/fail/${name}/`)) res.statusCode = 500;
      const slow = held.slow;
      if (slow && slow.server === name && req.url?.startsWith(slow.prefix)) {
        held.count++;
        setTimeout(() => {
          held.count--;
          res.end(`${name} ${req.method} ${req.url}\n`);
        }, slow.ms).unref();
        return;
      }
      if (req.url?.startsWith('/slow')) {
        setTimeout(() => res.end(`${name} ${req.method} ${req.url}\n`), 2000).unref();
        return;
      }
      // `/drip/...`: the head and a first line at once, the rest 2 s later.
      if (req.url?.startsWith('/drip')) {
        res.write(`${name} ${req.method} ${req.url}\n`);
        setTimeout(() => res.end('the rest\n'), 2000).unref();
        return;
      }
      res.end(`${name} ${req.method} ${req.url}\n`);
    });
  };
  if (held.h2) {
    // node:http2's compatibility API: the same handler, `:authority` among the headers.
    const sessions = new Set<Http2Session>();
    const h2 = createH2Server((req, res) =>
      handle(req as unknown as IncomingMessage, res as unknown as ServerResponse),
    );
    h2.on('session', (sess: Http2Session) => {
      sessions.add(sess);
      sess.once('close', () => sessions.delete(sess));
    });
    await new Promise<void>((r) => h2.listen(0, '127.0.0.1', r));
    const stop = {
      close(): void {
        for (const sess of sessions) sess.destroy();
        h2.close();
      },
    };
    return { server: stop, port: (h2.address() as AddressInfo).port };
  }
  const s = createServer(handle);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const stop = {
    close(): void {
      s.closeAllConnections();
      s.close();
    },
  };
  return { server: stop, port: (s.address() as AddressInfo).port };
}

/** The three servers and the workloads they are: api v1 and v2, legacy, and the client on node-a. */
async function servers(seen: Seen[], httpPort: number, held: Held) {
  const v1 = await server('api-1', seen, held);
  const v2 = await server('api-2', seen, held);
  const legacy = await server('legacy-1', seen, held);
  const workloads: Workload[] = [
    clientWorkload(9, upstreamTo('api', httpPort)),
    workload({ name: 'api-1', service: 'api', node: 'node-b', ports: [v1.port], version: 'v1' }),
    workload({ name: 'api-2', service: 'api', node: 'node-b', ports: [v2.port], version: 'v2' }),
    workload({ name: 'legacy-1', service: 'legacy', node: 'node-b', ports: [legacy.port] }),
  ];
  return { workloads, list: [v1.server, v2.server, legacy.server] };
}

async function ready(
  a: Ambitd,
  b: Ambitd,
  wp: Ambitd,
  timeoutMs: number,
  entries: number,
  protocol = 'http',
): Promise<void> {
  await until(() => a.listeners.listening().length === 1, timeoutMs, 'upstream listener bound');
  await until(
    () =>
      [a, b, wp].every((d) => d.store.service('default', 'api')?.protocol === protocol) &&
      a.store.service('default', 'api')?.waypoint === 'wp' &&
      (wp.store.mesh.configEntries?.length ?? 0) >= entries,
    timeoutMs,
    'every daemon sees the waypoint, the waypoint its entries',
  );
  await until(() => b.readiness().ready && b.certs.list().length >= 2, timeoutMs, 'node-b ready');
  await until(() => wp.readiness().ready, timeoutMs, 'waypoint ready');
  await until(() => a.store.endpoints('default', 'wp').length === 1, timeoutMs, 'node-a sees the waypoint');
  await until(() => a.store.endpoints('default', 'api').length === 2, timeoutMs, 'node-a sees api');
}

const closing =
  (list: Stoppable[], daemons: Ambitd[], after: () => Promise<void>) => async (): Promise<void> => {
    for (const srv of list) srv.close();
    await Promise.all(daemons.map((d) => d.close()));
    await after();
  };

/**
 * Embedded mode: one mesh file and CA, the entries in its configEntries. Other entries must still opt
 * api in (an http service-defaults with the `ambit-waypoint` Meta).
 */
export async function startFileWorld(
  entries: readonly unknown[] = ENTRIES,
  options: WorldOptions = {},
): Promise<L7World> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-l7-'));
  const meshFile = join(dir, 'mesh.yaml');
  const { lines, logger } = captureLogs();
  const start = (node: string, extra: ConfigInput = {}): Promise<Ambitd> =>
    startDaemon(dir, meshFile, node, { ...extra }, logger(node));
  const seen: Seen[] = [];
  const held = heldFor(options);
  const httpPort = await freePort();
  const s = await servers(seen, httpPort, held);
  const a = await start('node-a');
  const b = await start('node-b');
  const wp = await start('wp-node', { role: 'waypoint', waypointService: 'wp' });
  const nodes = options.more?.nodes ?? [];
  if (nodes.length > 0) await editMeshFile(meshFile, (doc) => nodes.forEach((n) => setNode(doc, n)));
  await enroll(meshFile, ...s.workloads, ...(options.more?.workloads ?? []));
  // Nothing but the entries: service-defaults' Protocol and ambit-waypoint Meta opt api in, as in Consul.
  await editMeshFile(meshFile, (doc) => {
    for (const e of entries) setConfigEntry(doc, e as Record<string, unknown>);
  });
  await ready(a, b, wp, 5000, entries.length, options.h2 ? 'http2' : 'http');
  return {
    wp,
    logs: lines,
    base: `http://127.0.0.1:${httpPort}`,
    seen,
    holding: () => held.count,
    serving: held.serving,
    id: (service) => wp.identityOf({ namespace: 'default', service }),
    close: closing(s.list, [a, b, wp], () => rm(dir, { recursive: true, force: true })),
  };
}

/** Consul mode: the same entries written to /v1/config, the workloads registered in the catalog. */
export async function startConsulWorld(
  entries: readonly unknown[] = ENTRIES,
  options: WorldOptions = {},
): Promise<L7World> {
  const consul = await startConsul();
  const dir = await mkdtemp(join(tmpdir(), 'ambit-l7-consul-'));
  const { lines, logger } = captureLogs();
  const daemons: Ambitd[] = [];
  const start = async (node: string, extra: ConfigInput = {}): Promise<Ambitd> => {
    const config = consulDaemonConfig(consul, dir, node, { defaultPolicy: 'allow', ...extra });
    const d = await Ambitd.start(config, logger(node));
    daemons.push(d);
    return d;
  };
  const seen: Seen[] = [];
  const held = heldFor(options);
  const httpPort = await freePort();
  const s = await servers(seen, httpPort, held);
  const a = await start('node-a');
  const b = await start('node-b');
  const wp = await start('wp-node', { role: 'waypoint', waypointService: 'wp' });
  const client = new ConsulClient({
    address: consul.address,
    token: consul.managementToken ? new Secret(consul.managementToken) : undefined,
  });
  for (const e of entries) {
    const name = (e as { Name: string }).Name;
    await client.put('/v1/config', { body: e, permission: `service:write on "${name}"` });
  }
  for (const n of options.more?.nodes ?? []) {
    // As its daemon would register it, less the TTL check nothing here would keep passing.
    await client.put('/v1/agent/service/register', {
      body: { ...nodeRegistration(n, { role: 'node' }), Checks: [] },
      permission: `service:write on "${NODE_SERVICE}"`,
    });
  }
  for (const w of [...s.workloads, ...(options.more?.workloads ?? [])]) await consulEnroll(client, w);
  await ready(a, b, wp, 20_000, entries.length, options.h2 ? 'http2' : 'http');
  return {
    wp,
    logs: lines,
    base: `http://127.0.0.1:${httpPort}`,
    seen,
    holding: () => held.count,
    serving: held.serving,
    id: (service) => wp.identityOf({ namespace: 'default', service }),
    close: closing(s.list, daemons, async () => {
      await consul.close();
      await rm(dir, { recursive: true, force: true });
    }),
  };
}

/** Registers the suite's tests on `test`, whose context is the world a before hook started. */
export function routingSuite(test: TestFn<L7World>): void {
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
        src: { principal: s.id('web') },
        dst: { service: 'api.default', principal: s.id('api') },
      });
      t.like(lineOf(s, 'r-header-v2'), { route: 'service-router/api[1]', subset: 'v2', endpoint: 'api-2' });
      t.like(lineOf(s, 'r-path-v1'), { route: 'service-router/api[2]', subset: 'v1', endpoint: 'api-1' });
      t.like(lineOf(s, 'r-legacy'), {
        route: 'service-router/api[3]',
        endpoint: 'legacy-1',
        dst: { routed: 'legacy.default', principal: s.id('legacy') },
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
        source_principal: s.id('web'),
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

  test.serial('RequestTimeout: a backend that takes 2 s is answered 504 (UT) at about 200 ms', async (t) => {
    const s = t.context;
    const before = await metricsText(s.wp);
    const started = performance.now();
    const res = await fetch(`${s.base}/slow/report`, { headers: { 'x-request-id': 'r-slow' } });
    const body = await res.text();
    const ms = performance.now() - started;
    t.log(`504 after ${ms.toFixed(0)} ms (RequestTimeout 200ms, the backend answers at 2,000 ms)`);
    t.is(res.status, 504);
    t.is(body, 'upstream request timeout');
    // Not before the timeout, and long before the backend's own answer. The client's figure also holds its
    // connect and the fetch machinery, so the 200 to 300 ms is checked on the waypoint's own clock below.
    t.true(ms >= 200 - LOOP_CLOCK_SLACK_MS && ms < 1500, `${ms} ms`);
    await until(() => lineOf(s, 'r-slow') !== undefined, 3000, 'the access-log line');
    const line = lineOf(s, 'r-slow');
    t.like(line, { status: 504, response_flags: 'UT', endpoint: 'api-1' });
    const took = Number(line?.duration_ms);
    t.log(`the waypoint answered 504 after ${took} ms by its access log`);
    t.true(took >= 200 - LOOP_CLOCK_SLACK_MS && took < 300, `the waypoint took ${took} ms`);
    const after = await metricsText(s.wp);
    const q = { response_code: '504', response_flags: 'UT', destination_workload: 'api-1' };
    t.is(metricSum(after, 'istio_requests_total', q) - metricSum(before, 'istio_requests_total', q), 1);
    // The connection it came on still serves the next request.
    const next = await fetch(`${s.base}/v1/after-timeout`);
    t.is(next.status, 200);
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
    t.like(lineOf(s, 'r-admin'), {
      status: 403,
      response_flags: 'RBAC',
      method: 'GET',
      path: '/admin/users',
    });
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
        source_principal: s.id('web'),
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
        source_principal: s.id('web'),
        destination_service: 'api.default',
        destination_service_name: 'api',
        destination_workload: 'api-1',
        destination_principal: s.id('api'),
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
}

/** A suite's two worlds: the same entries in embedded mode and through Consul. */
export interface L7Worlds {
  file: L7World;
  consul: L7World;
}

/**
 * Registers the suite's hooks: both worlds started from `entries` before its tests, closed after them.
 * Each test then runs its checks in both, from `t.context`. Options a suite must make first (a server's
 * port) come from a function, called once before both worlds.
 */
export function inBothWorlds(
  test: TestFn<L7Worlds>,
  entries: readonly unknown[],
  options: WorldOptions | (() => Promise<WorldOptions>) = {},
): void {
  test.before(async (t) => {
    const o = typeof options === 'function' ? await options() : options;
    const file = await startFileWorld(entries, o);
    t.context = { file, consul: await startConsulWorld(entries, o) };
  });
  test.after.always(async (t) => {
    await t.context?.file?.close();
    await t.context?.consul?.close();
  });
}

/** A service-router route by path prefix, to `service` itself. */
export const prefixRoute = (prefix: string, service = 'api'): unknown => ({
  Match: { HTTP: { PathPrefix: prefix } },
  Destination: { Service: service },
});

/** A response's body, whole, as text. */
export function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', (c: string) => {
      body += c;
    });
    res.on('end', () => resolve(body));
    res.on('error', reject);
  });
}

export interface HeldAnswer {
  status: number;
  body: string;
  /** Answered before the bodies were sent: refused at once, never held. */
  early: boolean;
}

/**
 * `n` POSTs to the world at once, each on its own connection, each holding its one body byte back: those
 * the waypoint lets through stay in flight (the servers answer at the body's end), which no timer could
 * promise. `release` sends the bodies of those not answered yet and gives every answer (within 15 s).
 */
export function heldPosts(
  w: L7World,
  n: number,
  path: (i: number) => string,
  id: (i: number) => string,
): { answered(): number; release(): Promise<HeldAnswer[]> } {
  const url = new URL(w.base);
  const answers: (HeldAnswer | undefined)[] = Array.from({ length: n }, () => undefined);
  let released = false;
  const reqs: ClientRequest[] = [];
  const done: Promise<void>[] = [];
  for (let i = 0; i < n; i++) {
    const req = request({
      host: url.hostname,
      port: url.port,
      method: 'POST',
      path: path(i),
      agent: false,
      headers: { 'content-length': '1', 'x-request-id': id(i) },
    });
    reqs.push(req);
    done.push(
      new Promise<void>((resolve, reject) => {
        req.on('response', (res) => {
          const early = !released;
          readAll(res).then((body) => {
            answers[i] = { status: res.statusCode ?? 0, body, early };
            resolve();
          }, reject);
        });
        req.on('error', reject);
      }),
    );
    req.flushHeaders();
  }
  return {
    answered: () => answers.filter(Boolean).length,
    async release(): Promise<HeldAnswer[]> {
      released = true;
      for (const [i, req] of reqs.entries()) {
        if (answers[i]) req.destroy();
        else req.end('x');
      }
      await Promise.race([
        Promise.all(done),
        new Promise((_, reject) =>
          setTimeout(() => reject(new Error('requests still open after 15 s')), 15_000),
        ),
      ]);
      return answers as HeldAnswer[];
    },
  };
}
