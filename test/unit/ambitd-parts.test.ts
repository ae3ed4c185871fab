import type { IncomingMessage } from 'node:http';
// Unit tests of what Ambitd decides, without a daemon: readiness, the admin routes and their token rule,
// reconcile's plan and its ordering, and the own-listener check. No sockets, no native binding.
import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import type { AdminToken, Handler } from '../../daemon/admin/http.js';
import {
  adminAuth,
  certificateRows,
  logLevelOf,
  metricsRoutes,
  readyRoutes,
  tokenRequired,
} from '../../daemon/admin/routes.js';
import type { CertificateInfo } from '../../daemon/identity/manager.js';
import { LogThrottle } from '../../daemon/limits/throttle.js';
import { Metrics } from '../../daemon/metrics/metrics.js';
import { type BoundPorts, ownListeners, reachesOwnListener } from '../../daemon/own-listeners.js';
import { sniForIdentity } from '../../daemon/proxy/hbone.js';
import { type Readiness, readinessOf, readinessStatus } from '../../daemon/readiness.js';
import {
  Reconciler,
  checkHostMesh,
  missingCertificates,
  nodeRegistered,
  unwantedIdentities,
  wantedIdentities,
} from '../../daemon/reconcile.js';
import type { TlsContext } from '../../daemon/tls/context.js';
import { MeshFileError } from '../../lib/errors.js';
import { type LogLevel, silentLogger } from '../../lib/log.js';
import { type Mesh, type Workload, emptyMesh } from '../../lib/mesh/model.js';
import { LocalAddresses } from '../../lib/net/addresses.js';

const workload = (name: string, over: Partial<Workload> = {}): Workload => ({
  name,
  service: name,
  namespace: 'default',
  node: 'node-a',
  addresses: ['10.1.0.1'],
  ports: [8080],
  uid: undefined,
  mode: 'strict',
  upstreams: [],
  ...over,
});
const idOf = (w: Workload): string => `spiffe://t/ns/${w.namespace}/sa/${w.service}`;
const cert = (identity: string, notAfter = '2030-01-01T00:00:00.000Z'): CertificateInfo => ({
  identity,
  serial: '01',
  notBefore: '2020-01-01T00:00:00.000Z',
  notAfter,
  rotations: 0,
  refreshAt: '2029-01-01T00:00:00.000Z',
});

// --- readiness ---

const allWell = { started: true, missingCertificates: [], listenerFailures: [] } as const;

test('readiness: started, no certificate missing and every listener bound is ready', (t) => {
  const r = readinessOf(allWell);
  t.deepEqual(r, { ready: true, checks: { started: 'ok', mesh: 'ok', certificates: 'ok', listeners: 'ok' } });
  t.deepEqual(
    Object.keys(r.checks),
    ['started', 'mesh', 'certificates', 'listeners'],
    'the order of the body',
  );
  t.is(readinessStatus(r), 200);
});

test('readiness: not yet started, or closing, is 503 "starting"', (t) => {
  const r = readinessOf({ ...allWell, started: false });
  t.false(r.ready);
  t.is(r.checks.started, 'starting');
  t.is(readinessStatus(r), 503);
});

test('readiness: a rejected mesh edit is reported and leaves the node ready', (t) => {
  const r = readinessOf({ ...allWell, meshError: new Error('m.yaml: workloads.x: bad') });
  t.true(r.ready);
  t.is(r.checks.mesh, 'last edit rejected: m.yaml: workloads.x: bad');
});

test('readiness: missing certificates and failed listeners make it unready, each named', (t) => {
  const r = readinessOf({
    ...allWell,
    missingCertificates: ['web', 'api'],
    listenerFailures: [
      { listen: '127.0.0.1:9000', error: 'EADDRINUSE' },
      { listen: '127.0.0.1:9001', error: 'EACCES' },
    ],
  });
  t.false(r.ready);
  t.is(r.checks.certificates, 'missing for web, api');
  t.is(r.checks.listeners, '127.0.0.1:9000: EADDRINUSE; 127.0.0.1:9001: EACCES');
  t.false(readinessOf({ ...allWell, missingCertificates: ['web'] }).ready);
  t.false(readinessOf({ ...allWell, listenerFailures: [{ listen: 'l', error: 'e' }] }).ready);
});

test('readiness: the consul check appears only in Consul mode, and a stale Consul stays ready', (t) => {
  t.false('consul' in readinessOf(allWell).checks);
  const r = readinessOf({ ...allWell, consul: 'stale since 12:00, serving the last known state' });
  t.true(r.ready);
  t.deepEqual(Object.keys(r.checks), ['started', 'mesh', 'consul', 'certificates', 'listeners']);
  t.is(r.checks.consul, 'stale since 12:00, serving the last known state');
});

test('readiness route: 200 or 503 with the readiness as the body', async (t) => {
  let r: Readiness = readinessOf(allWell);
  const route = readyRoutes(() => r)['GET /healthz/ready']!;
  const call = (h: Handler) => h({} as IncomingMessage, new URL('http://local/healthz/ready'));
  t.deepEqual(await call(route), { status: 200, json: r });
  r = readinessOf({ ...allWell, started: false });
  t.deepEqual(await call(route), { status: 503, json: r });
});

// --- admin routes ---

test('admin token: every change and the dump need it; the other reads do not', (t) => {
  t.true(tokenRequired('POST /logging'));
  t.true(tokenRequired('GET /config_dump'));
  t.true(tokenRequired('PUT /anything'));
  t.true(tokenRequired('DELETE /workloads'));
  t.false(tokenRequired('GET /workloads'));
  t.false(tokenRequired('GET /certs'));
  t.false(tokenRequired('GET /logging'));
});

test('POST /logging: only the logger levels are accepted', (t) => {
  for (const level of ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'])
    t.is(logLevelOf(level), level as LogLevel);
  for (const bad of ['', 'INFO', 'verbose', 'debug '] as const) t.is(logLevelOf(bad), undefined);
});

test('certificate rows: one per local workload, nulls while its certificate is missing', (t) => {
  const web = workload('web');
  const api = workload('api');
  const held = [cert(idOf(web)), cert('spiffe://t/ns/default/sa/gone')];
  t.deepEqual(certificateRows([web, api], held, idOf), [
    { workload: 'web', ...held[0] },
    { workload: 'api', identity: idOf(api), serial: null, notAfter: null },
  ]);
});

test('log throttle: one line per interval, the held-back count on the next', (t) => {
  let now = 1_000;
  const th = new LogThrottle(10_000, () => now);
  t.is(th.take(), 0);
  now += 1;
  t.is(th.take(), undefined);
  now += 9_000;
  t.is(th.take(), undefined);
  now += 1_000;
  t.is(th.take(), 2);
  t.is(th.take(), undefined);
});

test('admin auth: every refusal is counted by route, one is logged per interval', async (t) => {
  const metrics = new Metrics({ processMetrics: false });
  const lines: { fields: Record<string, unknown>; msg: string }[] = [];
  const log = silentLogger();
  log.warn = ((fields: Record<string, unknown>, msg: string) => {
    lines.push({ fields, msg });
  }) as typeof log.warn;
  const auth = adminAuth({ path: '/x/admin.token' } as AdminToken, metrics, log);
  t.is(auth.required, tokenRequired);
  const req = { socket: { remoteAddress: '127.0.0.9' } } as IncomingMessage;
  auth.denied('POST /logging', req);
  auth.denied('POST /logging', req);
  auth.denied('GET /config_dump', req);
  const counted = await metrics.adminUnauthorized.get();
  const byRoute = Object.fromEntries(counted.values.map((v) => [v.labels.route, v.value]));
  t.deepEqual(byRoute, { 'POST /logging': 2, 'GET /config_dump': 1 });
  t.deepEqual(lines, [
    {
      fields: { route: 'POST /logging', from: '127.0.0.9' },
      msg: 'admin API request refused: no or wrong admin token',
    },
  ]);
});

test('metrics route: the registry in its own content type', async (t) => {
  const metrics = new Metrics({ processMetrics: false });
  const reply = await metricsRoutes(metrics)['GET /metrics']!(
    {} as IncomingMessage,
    new URL('http://l/metrics'),
  );
  t.is(reply.contentType, metrics.registry.contentType);
  t.regex(reply.text ?? '', /ambit_admin_unauthorized_total/);
});

// --- reconcile ---

test('reconcile plan: one identity per service, its SNI name, and what to forget', (t) => {
  const { wanted, sni } = wantedIdentities(
    [workload('web-1', { service: 'web' }), workload('web-2', { service: 'web' }), workload('api')],
    idOf,
  );
  t.deepEqual([...wanted], [idOf(workload('web')), idOf(workload('api'))]);
  t.is(sni.get(sniForIdentity(idOf(workload('web')))), idOf(workload('web')));
  t.is(sni.size, 2);
  t.deepEqual(unwantedIdentities(['a', 'b', 'c'], new Set(['b'])), ['a', 'c']);
  t.deepEqual(
    missingCertificates([workload('web'), workload('api')], idOf, (id) => id === idOf(workload('web'))),
    ['api'],
  );
});

test('node registration: an edit only when the address or port differs', (t) => {
  const node = { name: 'node-a', address: '10.0.0.1', tunnelPort: 15008 };
  t.true(nodeRegistered(node, { ...node }));
  t.false(nodeRegistered(undefined, node));
  t.false(nodeRegistered({ ...node, address: '10.0.0.2' }, node));
  t.false(nodeRegistered({ ...node, tunnelPort: 15009 }, node));
});

test('host mesh check: a port-less local workload on one of the host addresses is refused', (t) => {
  const host = { nodeName: 'node-a', advertiseAddress: '10.0.0.1', meshFile: '/m.yaml' };
  const mesh = (w: Workload): Mesh => ({
    ...emptyMesh(),
    nodes: [{ name: 'node-a', address: '10.0.0.1', tunnelPort: 15008 }],
    workloads: [w],
  });
  const local = new LocalAddresses(() => ['10.0.0.1', '10.7.7.7']);
  const err = t.throws(
    () => checkHostMesh(mesh(workload('web', { addresses: ['10.7.7.7'], ports: [] })), host, local),
    {
      instanceOf: MeshFileError,
    },
  );
  t.is(err?.field, 'workloads.web.ports');
  t.is(err?.file, '/m.yaml');
  // With its ports listed, on an address not the host's, or on another node: nothing to refuse.
  t.notThrows(() => checkHostMesh(mesh(workload('web', { addresses: ['10.7.7.7'] })), host, local));
  t.notThrows(() =>
    checkHostMesh(mesh(workload('web', { addresses: ['10.8.8.8'], ports: [] })), host, local),
  );
  t.notThrows(() =>
    checkHostMesh(mesh(workload('web', { node: 'node-b', addresses: ['10.7.7.7'], ports: [] })), host, local),
  );
  t.notThrows(() =>
    checkHostMesh(mesh(workload('web', { ports: [] })), { ...host, nodeName: 'node-z' }, local),
  );
});

interface FakeCerts {
  held: Map<string, CertificateInfo>;
  failing: Set<string>;
  ensured: string[];
}

function reconciler(local: () => Workload[], retryMs = 20) {
  const certs: FakeCerts = { held: new Map(), failing: new Set(), ensured: [] };
  const metrics = new Metrics({ processMetrics: false });
  const calls: string[] = [];
  const context = {} as TlsContext;
  const r = new Reconciler({
    localWorkloads: local,
    identityOf: idOf,
    certs: {
      ensure: async (id: string) => {
        certs.ensured.push(id);
        await sleep(1);
        if (certs.failing.has(id)) throw new Error('CA unreachable');
        if (!certs.held.has(id)) certs.held.set(id, cert(id));
      },
      list: () => [...certs.held.values()],
      forget: (id: string) => {
        certs.held.delete(id);
      },
      has: (id: string) => certs.held.has(id),
      tlsContext: () => context,
    },
    listeners: {
      reconcile: async (ws: readonly Workload[]) => {
        calls.push(`listeners ${ws.map((w) => w.name).join(',')}`);
      },
    },
    inbound: {
      recheck: () => {
        calls.push('recheck');
        return 0;
      },
    },
    metrics,
    log: silentLogger(),
    retryMs,
  });
  return { r, certs, calls, metrics, context };
}

test('reconciler: certificates for the local workloads only, listeners, then policies re-checked', async (t) => {
  let local = [workload('web'), workload('api')];
  const { r, certs, calls, metrics, context } = reconciler(() => local);
  r.schedule();
  await r.settled();
  t.deepEqual([...certs.held.keys()].sort(), [idOf(workload('api')), idOf(workload('web'))]);
  t.is(r.contextForSni(sniForIdentity(idOf(workload('web')))), context);
  t.is(r.contextForSni('nobody.id.ambit'), undefined);
  const expiry = await metrics.certExpiry.get();
  t.is(expiry.values.length, 2);
  t.is(expiry.values[0]!.value, Date.parse('2030-01-01T00:00:00.000Z') / 1000);
  local = [workload('api')];
  r.schedule();
  await r.settled();
  t.deepEqual(
    [...certs.held.keys()],
    [idOf(workload('api'))],
    'the certificate of a workload gone is forgotten',
  );
  t.is(r.contextForSni(sniForIdentity(idOf(workload('web')))), undefined);
  t.is((await metrics.certExpiry.get()).values.length, 1);
  t.deepEqual(calls, ['listeners web,api', 'recheck', 'listeners api', 'recheck']);
});

test('reconciler: changes apply one after another, in order', async (t) => {
  const seen: number[] = [];
  let n = 0;
  const { r, calls } = reconciler(() => {
    seen.push(++n);
    return [workload(`w${n}`)];
  });
  r.schedule();
  r.schedule();
  r.schedule();
  await r.settled();
  t.deepEqual(seen, [1, 2, 3]);
  t.deepEqual(calls, ['listeners w1', 'recheck', 'listeners w2', 'recheck', 'listeners w3', 'recheck']);
});

test('reconciler: a failed issue is tried again without a mesh change, once per failure', async (t) => {
  const { r, certs } = reconciler(() => [workload('web')], 20);
  certs.failing.add(idOf(workload('web')));
  r.schedule();
  await r.settled();
  t.false(certs.held.has(idOf(workload('web'))));
  t.is(certs.ensured.length, 1);
  certs.failing.clear();
  const deadline = Date.now() + 5_000;
  while (certs.ensured.length < 2 && Date.now() < deadline) await sleep(10);
  await r.settled();
  t.is(certs.ensured.length, 2, 'one retry');
  t.true(certs.held.has(idOf(workload('web'))));
  await sleep(50);
  t.is(certs.ensured.length, 2, 'no retry once it succeeded');
});

test('reconciler: an error applying the mesh is logged and the next change still applies', async (t) => {
  let fail = true;
  const { r, calls } = reconciler(() => {
    if (fail) throw new Error('boom');
    return [workload('web')];
  });
  r.schedule();
  await r.settled();
  fail = false;
  r.schedule();
  await r.settled();
  t.deepEqual(calls, ['listeners web', 'recheck']);
});

// --- own listeners ---

test('own listeners: a bound port on an address its bind accepts is the daemon itself', (t) => {
  const l = (host: string, port: number) => ({ host, port });
  const config = {
    tunnel: l('0.0.0.0', 15008),
    admin: l('127.0.0.1', 0),
    metrics: l('127.0.0.1', 0),
    ready: l('127.0.0.1', 0),
    outbound: l('127.0.0.1', 0),
    inboundPlaintext: l('0.0.0.0', 0),
  };
  const ports: BoundPorts = {
    tunnel: 15008,
    admin: 15000,
    metrics: 15020,
    ready: 15021,
    outbound: 0,
    plaintext: 0,
  };
  const bound = ownListeners(config, ports, [['127.0.0.1', 9000]]);
  t.deepEqual(bound, [
    ['0.0.0.0', 15008],
    ['127.0.0.1', 15000],
    ['127.0.0.1', 15020],
    ['127.0.0.1', 15021],
    ['127.0.0.1', 0],
    ['0.0.0.0', 0],
    ['127.0.0.1', 9000],
  ]);
  const local = new LocalAddresses(() => ['10.0.0.1']);
  t.true(reachesOwnListener(bound, '10.0.0.1', 15008, local), 'wildcard tunnel on the advertise address');
  t.true(reachesOwnListener(bound, '127.0.0.2', 15000, local), 'loopback admin: all of 127/8');
  t.true(reachesOwnListener(bound, '::ffff:127.0.0.1', 9000, local), 'an upstream listener');
  t.false(reachesOwnListener(bound, '10.0.0.1', 15000, local), 'loopback admin is not on the node address');
  t.false(reachesOwnListener(bound, '10.9.9.9', 15008, local), 'not this host');
  t.false(reachesOwnListener(bound, '127.0.0.1', 0, local), 'port 0 is no listener');
  t.false(reachesOwnListener(bound, '127.0.0.1', 8080, local));
});
