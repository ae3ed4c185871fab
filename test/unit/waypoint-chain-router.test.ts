// The waypoint's ChainRouter over a real state store: workloads seen as Consul instances (tags, Meta,
// node), routes, splits by the draw, subsets, failover, hash policies, L7 intentions, the chain kept per
// mesh and kept when a new mesh's entries do not compile; and the L4 compile of L7 intentions.
import test from 'ava';
import type { OutboundPlan } from '../../daemon/proxy/outbound/plan.js';
import { ChainRouter, entrySetOf } from '../../daemon/waypoint/chain-router.js';
import { instanceOf } from '../../daemon/waypoint/instance.js';
import { applyHeaderOps, setTraceHeaders, traceOf } from '../../daemon/waypoint/l7-headers.js';
import type { RequestRoute, RouteRequest } from '../../daemon/waypoint/router.js';
import { compileIntentions } from '../../lib/consul/intentions.js';
import { type ConfigEntry, compileFilter, validateEntries } from '../../lib/l7/index.js';
import { silentLogger } from '../../lib/log.js';
import type { Mesh } from '../../lib/mesh/model.js';
import { identityOf, node, service, storeOf, workload } from '../helpers/mesh.js';

const v1a = workload({
  name: 'api-1',
  service: 'api',
  node: 'n1',
  addresses: ['10.1.0.10'],
  ports: [8080],
  version: 'v1',
});
const v1b = workload({
  name: 'api-2',
  service: 'api',
  node: 'n1',
  addresses: ['10.1.0.11'],
  ports: [8080],
  version: 'v1',
});
const v2 = workload({
  name: 'api-3',
  service: 'api',
  node: 'n2',
  addresses: ['10.1.0.12'],
  ports: [8080],
  version: 'v2',
  app: 'api-app',
});
const other = workload({
  name: 'legacy-1',
  service: 'legacy',
  node: 'n2',
  addresses: ['10.1.0.20'],
  ports: [9000],
});
const WEB = identityOf({ namespace: 'default', service: 'web' });

const ENTRIES = (extra: unknown[] = []): ConfigEntry[] =>
  validateEntries(
    [
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
            Match: { HTTP: { Header: [{ Name: 'x-canary', Exact: 'true' }] } },
            Destination: { ServiceSubset: 'v2', RequestHeaders: { Set: { 'x-by': 'header' } } },
          },
          {
            Match: { HTTP: { PathPrefix: '/old/' } },
            Destination: { Service: 'legacy', PrefixRewrite: '/' },
          },
        ],
      },
      {
        Kind: 'service-splitter',
        Name: 'api',
        Splits: [
          { Weight: 90, ServiceSubset: 'v1' },
          { Weight: 10, ServiceSubset: 'v2' },
        ],
      },
      ...extra,
    ],
    'unit',
  );

function meshWith(entries: readonly ConfigEntry[], workloads = [v1a, v1b, v2, other]): Partial<Mesh> {
  return {
    nodes: [node('n1', '10.0.0.1'), node('n2', '10.0.0.2')],
    workloads,
    services: [
      service({ name: 'api', waypoint: 'wp', protocol: 'http' }),
      service({ name: 'legacy', ports: [{ port: 80, targetPort: 9000 }] }),
    ],
    configEntries: entries,
  };
}

/** A draw that returns the given values in turn (the last one thereafter). */
const draws = (...xs: number[]): (() => number) => {
  let i = 0;
  return () => xs[Math.min(i++, xs.length - 1)]!;
};

const planOf = (store: ReturnType<typeof storeOf>): OutboundPlan => ({
  kind: 'mesh',
  service: { name: 'api', namespace: 'default' },
  endpoints: store.endpoints('default', 'api'),
  targetPort: 8080,
  targeted: undefined,
});

const req = (plan: OutboundPlan, p: Partial<RouteRequest> = {}): RouteRequest => ({
  plan,
  client: WEB,
  method: 'GET',
  path: '/',
  headers: {},
  sourceIp: '10.9.0.1',
  ...p,
});

const routed = (r: ReturnType<ChainRouter['route']>): RequestRoute => {
  if (r.kind !== 'route') throw new Error(`no route: ${r.why}`);
  return r;
};

test('a workload is an instance with the tags and Meta Consul registers it with, on its node', (t) => {
  const i = instanceOf(v2, node('n2', '10.0.0.2'));
  t.like(i, {
    id: 'api-3',
    address: '10.1.0.12',
    port: 8080,
    service: 'api',
    node: 'n2',
    nodeAddress: '10.0.0.2',
    datacenter: 'dc1',
    passing: true,
  });
  t.deepEqual(i.tags, ['ambit', 'ambit-node=n2']);
  t.deepEqual(i.meta, { 'ambit-workload': 'api-3', 'ambit-node': 'n2', app: 'api-app', version: 'v2' });
  const f = (src: string): boolean => {
    const c = compileFilter(src);
    if (typeof c === 'string') throw new Error(c);
    return c.test(i);
  };
  t.true(f('Service.Meta.version == v2'));
  t.false(f('Service.Meta.version == v1'));
  t.true(f('"ambit-node=n2" in Service.Tags'));
  t.true(f('Node.Node == n2 and Service.Meta.app == "api-app"'));
  // A workload without metadata has no such key, and no node address when its node is unknown.
  const bare = instanceOf(other, undefined);
  t.false('version' in bare.meta);
  t.is(bare.nodeAddress, undefined);
});

test('the model protocol stands in for a service-defaults entry the entries do not have', (t) => {
  const set = entrySetOf({ ...storeOf(meshWith([])).mesh });
  t.is(set.serviceDefaults.get('default/api')?.Protocol, 'http');
  const own = entrySetOf({
    ...storeOf(meshWith([{ Kind: 'service-defaults', Name: 'api', Protocol: 'http2' } as ConfigEntry])).mesh,
  });
  t.is(own.serviceDefaults.get('default/api')?.Protocol, 'http2');
});

test('route by header, split by the draw, another service by path: subset, plan and changes', (t) => {
  const store = storeOf(meshWith(ENTRIES()));
  const router = new ChainRouter({ store, log: silentLogger(), ejectMs: 1000, random: draws(0.5, 0.95) });
  const plan = planOf(store);
  const canary = routed(router.route(req(plan, { headers: { 'x-canary': 'true' } })));
  t.is(canary.endpoint.name, 'api-3');
  t.like(canary.labels, { route: 'service-router/api[0]', subset: 'v2', failover: false });
  t.deepEqual(canary.requestHeaders, [{ op: 'set', name: 'x-by', value: 'header' }]);
  t.is(canary.plan, plan);
  // The catch-all route goes to the splitter: a draw of 0.5 is within the first 90%, 0.95 is not.
  const low = routed(router.route(req(plan, { path: '/x' })));
  t.like(low.labels, { route: 'default', subset: 'v1', split: 'service-splitter/api[0] 90%' });
  t.true(['api-1', 'api-2'].includes(low.endpoint.name));
  const high = routed(router.route(req(plan, { path: '/x' })));
  t.like(high.labels, { subset: 'v2', split: 'service-splitter/api[1] 10%' });
  t.is(high.endpoint.name, 'api-3');
  // Another service: its own endpoints, at its one declared target port, the prefix rewritten.
  const old = routed(router.route(req(plan, { path: '/old/thing?q=1' })));
  t.is(old.endpoint.name, 'legacy-1');
  t.is(old.path, '/thing?q=1');
  t.like(old.plan, { service: { name: 'legacy', namespace: 'default' }, targetPort: 9000 });
});

test('round robin within a subset; a failed endpoint is passed over while another is left', (t) => {
  const store = storeOf(meshWith(ENTRIES()));
  const router = new ChainRouter({ store, log: silentLogger(), ejectMs: 1000, random: () => 0 });
  const plan = planOf(store);
  const names = Array.from(
    { length: 4 },
    () => routed(router.route(req(plan, { path: '/x' }))).endpoint.name,
  );
  t.deepEqual(names, ['api-1', 'api-2', 'api-1', 'api-2']);
  router.failed(v1a, Date.now());
  const after = Array.from(
    { length: 3 },
    () => routed(router.route(req(plan, { path: '/x' }))).endpoint.name,
  );
  t.deepEqual(after, ['api-2', 'api-2', 'api-2']);
  router.succeeded(v1a);
  const back = new Set(
    Array.from({ length: 2 }, () => routed(router.route(req(plan, { path: '/x' }))).endpoint.name),
  );
  t.deepEqual([...back].sort(), ['api-1', 'api-2']);
});

test('failover: a subset with no endpoint fails over to the target its resolver names', (t) => {
  const entries = ENTRIES().map((e) =>
    e.Kind === 'service-resolver' ? { ...e, Failover: { v2: { ServiceSubset: 'v1' } } } : e,
  ) as ConfigEntry[];
  const store = storeOf(meshWith(entries, [v1a, other]));
  const router = new ChainRouter({ store, log: silentLogger(), ejectMs: 1000 });
  const r = routed(router.route(req(planOf(store), { headers: { 'x-canary': 'true' } })));
  t.is(r.endpoint.name, 'api-1');
  t.like(r.labels, { subset: 'v1', failover: true, target: 'v1.api.default.default.dc1' });
  // Without a failover, no endpoint: the caller answers 503.
  const bare = storeOf(meshWith(ENTRIES(), [v1a, other]));
  const none = new ChainRouter({ store: bare, log: silentLogger(), ejectMs: 1000 }).route(
    req(planOf(bare), { headers: { 'x-canary': 'true' } }),
  );
  t.is(none.kind, 'none');
});

test('a header hash policy keeps one client on one endpoint; least_request counts until done', (t) => {
  const withLb = (lb: unknown): ConfigEntry[] =>
    ENTRIES().map((e) => (e.Kind === 'service-resolver' ? { ...e, LoadBalancer: lb } : e)) as ConfigEntry[];
  const store = storeOf(
    meshWith(withLb({ Policy: 'maglev', HashPolicies: [{ Field: 'header', FieldValue: 'x-user' }] })),
  );
  const router = new ChainRouter({ store, log: silentLogger(), ejectMs: 1000, random: () => 0 });
  const plan = planOf(store);
  const of = (user: string): Set<string> =>
    new Set(
      Array.from(
        { length: 20 },
        () => routed(router.route(req(plan, { path: '/x', headers: { 'x-user': user } }))).endpoint.name,
      ),
    );
  t.is(of('alice').size, 1);
  t.is(of('bob').size, 1);
  const users = new Set(Array.from({ length: 40 }, (_, i) => [...of(`u${i}`)][0]));
  t.deepEqual([...users].sort(), ['api-1', 'api-2']);

  const lstore = storeOf(
    // No splitter here: every draw is the picker's.
    meshWith(
      withLb({ Policy: 'least_request', LeastRequestConfig: { ChoiceCount: 2 } }).filter(
        (e) => e.Kind !== 'service-splitter',
      ),
    ),
  );
  // Draws alternate between the two v1 endpoints: the one with fewer requests in flight wins.
  const lr = new ChainRouter({
    store: lstore,
    log: silentLogger(),
    ejectMs: 1000,
    random: draws(0.1, 0.9, 0.1, 0.9, 0.1, 0.9),
  });
  const lplan = planOf(lstore);
  const first = routed(lr.route(req(lplan, { path: '/x' })));
  const second = routed(lr.route(req(lplan, { path: '/x' })));
  t.not(first.endpoint.name, second.endpoint.name);
  lr.done(first);
  const third = routed(lr.route(req(lplan, { path: '/x' })));
  t.is(third.endpoint.name, first.endpoint.name);
});

test('one compiled chain per mesh; a mesh whose entries do not compile keeps the last good one', (t) => {
  const store = storeOf(meshWith(ENTRIES()));
  const router = new ChainRouter({ store, log: silentLogger(), ejectMs: 1000 });
  const svc = { name: 'api', namespace: 'default' };
  const first = router.chain(svc);
  t.is(router.chain(svc), first);
  // A route to a subset no resolver defines (validation would refuse it; given unchecked here).
  const broken = ENTRIES().map((e) =>
    e.Kind === 'service-router'
      ? { ...e, Routes: [{ Match: { HTTP: { PathPrefix: '/' } }, Destination: { ServiceSubset: 'v9' } }] }
      : e,
  ) as ConfigEntry[];
  store.replace({ ...store.mesh, configEntries: broken });
  t.deepEqual(router.chain(svc), first);
  store.replace({ ...store.mesh, configEntries: [] });
  const plain = router.chain(svc);
  t.not(plain, first);
  t.true(plain.Default);
  t.is(plain.Protocol, 'http');
});

test('L7 intentions: the first matching permission decides; no entry leaves it to L4', (t) => {
  const intentions = {
    Kind: 'service-intentions',
    Name: 'api',
    Sources: [
      {
        Name: 'web',
        Permissions: [
          { Action: 'deny', HTTP: { PathPrefix: '/admin' } },
          { Action: 'allow', HTTP: { PathPrefix: '/', Methods: ['GET'] } },
        ],
      },
      { Name: '*', Action: 'deny' },
    ],
  };
  const store = storeOf({ ...meshWith(ENTRIES([intentions])), defaultPolicy: 'allow' });
  const router = new ChainRouter({ store, log: silentLogger(), ejectMs: 1000 });
  const plan = planOf(store);
  t.like(router.authorize(req(plan, { path: '/admin/x' })), { allowed: false });
  t.like(router.authorize(req(plan, { path: '/items' })), { allowed: true });
  // No permission matched: the default policy, not the next intention.
  t.like(router.authorize(req(plan, { method: 'POST', path: '/items' })), { allowed: true });
  t.like(router.authorize(req(plan, { client: identityOf({ namespace: 'default', service: 'other' }) })), {
    allowed: false,
  });
  t.like(router.authorize(req(plan, { client: 'spiffe://ambit.local/not-a-service' })), { allowed: false });
  const open = storeOf(meshWith(ENTRIES()));
  t.like(new ChainRouter({ store: open, log: silentLogger(), ejectMs: 1000 }).authorize(req(planOf(open))), {
    allowed: true,
  });
});

test("L4 compile: an L7 intention is the waypoint's to enforce when there is one, denied when not", (t) => {
  const l7 = [
    { SourceName: 'web', DestinationName: 'api', Action: 'allow', Permissions: [{ Action: 'deny' }] },
  ];
  const dst = { service: 'api', namespace: 'default' };
  const viaWaypoint = compileIntentions(dst, l7, 'deny', { waypoint: true }).policies;
  t.deepEqual(
    viaWaypoint.map((p) => [p.action, p.from.map((f) => f.service)]),
    [['allow', ['web']]],
  );
  const direct = compileIntentions(dst, l7, 'deny').policies;
  t.false(direct.some((p) => p.action === 'allow'));
});

test('header changes: remove, then add appends, set overwrites; trace fields kept or created', (t) => {
  const h: Record<string, string | string[]> = { 'x-a': '1', 'x-gone': 'y', 'x-s': 'old' };
  applyHeaderOps(h, [
    { op: 'remove', name: 'X-Gone' },
    { op: 'add', name: 'x-a', value: '2' },
    { op: 'add', name: 'x-new', value: 'n' },
    { op: 'set', name: 'x-s', value: 'new' },
  ]);
  t.deepEqual(h, { 'x-a': ['1', '2'], 'x-new': 'n', 'x-s': 'new' });
  const sent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
  t.like(traceOf({ traceparent: sent, 'x-request-id': 'r1' }), {
    traceparent: sent,
    traceId: '0af7651916cd43dd8448eb211c80319c',
    requestId: 'r1',
    createdTrace: false,
  });
  for (const bad of [undefined, 'junk', '00-00000000000000000000000000000000-b7ad6b7169203331-01']) {
    const tr = traceOf({ traceparent: bad });
    t.true(tr.createdTrace, String(bad));
    t.regex(tr.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
    t.regex(tr.requestId, /^[0-9a-f-]{36}$/);
  }
  // A tracestate goes with the traceparent it came with: not kept beside a new one.
  const out: Record<string, string> = { tracestate: 'v=1' };
  setTraceHeaders(out, traceOf({ traceparent: 'junk' }));
  t.false('tracestate' in out);
});
