// The outbound routing decision without sockets, as ztunnel's build_request is tested: from the state in
// force and a target, which service, endpoints, port per endpoint and tunnel session.
import test from 'ava';
import { sniForIdentity } from '../../daemon/proxy/hbone.js';
import {
  type OutboundPlan,
  type OutboundRoute,
  type OutboundTarget,
  deliveryAddress,
  endpointPort,
  planHop,
  planOutbound,
} from '../../daemon/proxy/outbound/plan.js';
import type { Workload } from '../../lib/mesh/model.js';
import { identityOf, node, service, storeOf, workload } from '../helpers/mesh.js';

const NODES = [node('node-a', '10.0.0.1'), node('node-b', '10.0.0.2', 15018), node('node-6', 'fd00::6')];
const client = workload({ name: 'client', service: 'web', node: 'node-a', addresses: ['10.1.0.1'] });
const api1 = workload({
  name: 'api-1',
  service: 'api',
  node: 'node-a',
  addresses: ['10.1.0.10'],
  ports: [8080],
});
const api2 = workload({
  name: 'api-2',
  service: 'api',
  node: 'node-b',
  addresses: ['10.1.0.11'],
  ports: [8080],
});
const apiSvc = service({
  name: 'api',
  vips: ['10.96.0.10', 'fd00:96::10'],
  ports: [{ port: 80, targetPort: 8080 }],
});

const toService = (name: string, port?: number, namespace = 'default'): OutboundTarget => ({
  kind: 'service',
  namespace,
  service: name,
  port,
});
const toAddress = (ip: string, port: number): OutboundTarget => ({ kind: 'address', ip, port });

const mesh = (route: OutboundRoute): OutboundPlan => {
  if (route.kind !== 'mesh') throw new Error(`expected a mesh plan, got ${route.kind}`);
  return route;
};
const names = (ws: readonly Workload[]): string[] => ws.map((w) => w.name);
const sourceId = identityOf(client);

const defaultStore = storeOf({ nodes: NODES, workloads: [client, api1, api2], services: [apiSvc] });

// --- which service, which endpoints ------------------------------------------------------------------

test('a service target reaches every endpoint of that service, on every node', (t) => {
  const plan = mesh(planOutbound(defaultStore, toService('api', 80)));
  t.deepEqual(plan.service, { name: 'api', namespace: 'default' });
  t.deepEqual(names(plan.endpoints), ['api-1', 'api-2']);
});

test('a service target maps a listed port to its target port', (t) => {
  const plan = mesh(planOutbound(defaultStore, toService('api', 80)));
  t.is(plan.targetPort, 8080);
  t.is(endpointPort(plan, api1), 8080);
});

test('a service target keeps a port the service does not list', (t) => {
  const plan = mesh(planOutbound(defaultStore, toService('api', 9090)));
  t.is(plan.targetPort, 9090);
  t.is(endpointPort(plan, api2), 9090);
});

test('a service target without a port goes to each endpoint’s only port', (t) => {
  const plan = mesh(planOutbound(defaultStore, toService('api')));
  t.is(plan.targetPort, undefined);
  t.is(endpointPort(plan, api1), 8080);
});

test('without a port, an endpoint serving several ports (or every port) has none to reach', (t) => {
  const multi = workload({ name: 'm', service: 'multi', node: 'node-a', ports: [80, 443] });
  const every = workload({ name: 'e', service: 'multi', node: 'node-a', ports: [] });
  const store = storeOf({ nodes: NODES, workloads: [multi, every] });
  const plan = mesh(planOutbound(store, toService('multi')));
  t.is(endpointPort(plan, multi), undefined);
  t.is(endpointPort(plan, every), undefined);
  const skip = planHop(store, plan, multi, sourceId, identityOf);
  t.deepEqual(skip, { kind: 'skip', reason: 'no_port', why: 'endpoint m has no port to reach' });
});

test('a service that is not declared is still reached through its workloads', (t) => {
  const store = storeOf({ nodes: NODES, workloads: [api1, api2] });
  const plan = mesh(planOutbound(store, toService('api', 80)));
  t.deepEqual(names(plan.endpoints), ['api-1', 'api-2']);
  t.is(plan.targetPort, 80, 'no service ports to map through');
});

test('a service with no endpoints is refused with its name', (t) => {
  const store = storeOf({ nodes: NODES, services: [apiSvc] });
  t.deepEqual(planOutbound(store, toService('api', 80)), {
    kind: 'no_endpoint',
    service: { name: 'api', namespace: 'default' },
    why: 'service has no endpoints',
  });
});

test('an unknown service is refused as having no endpoints', (t) => {
  const route = planOutbound(defaultStore, toService('nope', 80));
  t.is(route.kind, 'no_endpoint');
  t.deepEqual(route.kind === 'no_endpoint' && route.service, { name: 'nope', namespace: 'default' });
});

test('namespaces keep services of one name apart', (t) => {
  const prod = workload({
    name: 'api-prod',
    service: 'api',
    namespace: 'prod',
    node: 'node-b',
    ports: [8080],
  });
  const store = storeOf({ nodes: NODES, workloads: [api1, prod] });
  t.deepEqual(names(mesh(planOutbound(store, toService('api', 8080, 'prod'))).endpoints), ['api-prod']);
  t.deepEqual(names(mesh(planOutbound(store, toService('api', 8080))).endpoints), ['api-1']);
  t.is(planOutbound(store, toService('api', 8080, 'staging')).kind, 'no_endpoint');
});

// --- address targets -----------------------------------------------------------------------------------

test('a service VIP at a listed port is load balanced over the service, port mapped', (t) => {
  const plan = mesh(planOutbound(defaultStore, toAddress('10.96.0.10', 80)));
  t.deepEqual(plan.service, { name: 'api', namespace: 'default' });
  t.deepEqual(names(plan.endpoints), ['api-1', 'api-2']);
  t.is(plan.targetPort, 8080);
});

test('an IPv6 VIP is a VIP too', (t) => {
  const plan = mesh(planOutbound(defaultStore, toAddress('fd00:96::10', 80)));
  t.deepEqual(names(plan.endpoints), ['api-1', 'api-2']);
  t.is(plan.targetPort, 8080);
});

test('a VIP at a port the service does not list is not the mesh’s', (t) => {
  t.deepEqual(planOutbound(defaultStore, toAddress('10.96.0.10', 443)), {
    kind: 'passthrough',
    ip: '10.96.0.10',
    port: 443,
  });
});

test('a VIP of a service with no endpoints is refused, not passed through', (t) => {
  const store = storeOf({ nodes: NODES, services: [apiSvc] });
  const route = planOutbound(store, toAddress('10.96.0.10', 80));
  t.is(route.kind, 'no_endpoint');
});

test('a workload’s address reaches that workload alone, at the port asked', (t) => {
  const plan = mesh(planOutbound(defaultStore, toAddress('10.1.0.11', 8080)));
  t.deepEqual(plan.service, { name: 'api', namespace: 'default' });
  t.deepEqual(names(plan.endpoints), ['api-2']);
  t.is(plan.targetPort, 8080);
});

test('every port of a workload’s own address is the mesh’s, listed or not: no plaintext to a pod', (t) => {
  const plan = mesh(planOutbound(defaultStore, toAddress('10.1.0.11', 9999)));
  t.deepEqual(names(plan.endpoints), ['api-2']);
  t.is(endpointPort(plan, api2), 9999, 'delivered at the port asked; the destination decides');
});

test('a port a host-network workload does not list is the host’s, not the mesh’s', (t) => {
  // At its node's address (registered without an address of its own, as in Consul), or by uid.
  const vm = workload({ name: 'vm', service: 'vm', node: 'node-b', addresses: ['10.0.0.2'], ports: [8080] });
  const proc = workload({
    name: 'proc',
    service: 'proc',
    node: 'node-b',
    addresses: ['10.1.0.30'],
    ports: [8080],
    uid: 1001,
  });
  const store = storeOf({ nodes: NODES, workloads: [vm, proc] });
  t.is(planOutbound(store, toAddress('10.0.0.2', 9100)).kind, 'passthrough');
  t.is(planOutbound(store, toAddress('10.1.0.30', 9100)).kind, 'passthrough');
  t.deepEqual(names(mesh(planOutbound(store, toAddress('10.0.0.2', 8080))).endpoints), ['vm']);
  t.deepEqual(names(mesh(planOutbound(store, toAddress('10.1.0.30', 8080))).endpoints), ['proc']);
});

test('an address two workloads share (disjoint ports) gives an unlisted port to neither', (t) => {
  const a = workload({ name: 'a', service: 'a', node: 'node-b', addresses: ['10.1.0.40'], ports: [80] });
  const b = workload({ name: 'b', service: 'b', node: 'node-b', addresses: ['10.1.0.40'], ports: [81] });
  const store = storeOf({ nodes: NODES, workloads: [a, b] });
  t.is(planOutbound(store, toAddress('10.1.0.40', 82)).kind, 'passthrough');
  t.deepEqual(names(mesh(planOutbound(store, toAddress('10.1.0.40', 81))).endpoints), ['b']);
});

test('a workload serving every port is reached at any port of its address', (t) => {
  const db = workload({ name: 'db', service: 'db', node: 'node-b', addresses: ['10.1.0.20'] });
  const store = storeOf({ nodes: NODES, workloads: [db] });
  const plan = mesh(planOutbound(store, toAddress('10.1.0.20', 5432)));
  t.deepEqual(names(plan.endpoints), ['db']);
  t.is(endpointPort(plan, db), 5432);
});

test('an IPv6 workload address is matched and spelled in brackets in :authority', (t) => {
  const v6 = workload({ name: 'v6', service: 'v6', node: 'node-6', addresses: ['fd00::20'], ports: [8443] });
  const store = storeOf({ nodes: NODES, workloads: [v6] });
  const plan = mesh(planOutbound(store, toAddress('fd00::20', 8443)));
  const hop = planHop(store, plan, v6, sourceId, identityOf);
  t.is(hop.kind, 'hop');
  if (hop.kind !== 'hop') return;
  t.is(hop.authority, '[fd00::20]:8443');
  t.deepEqual(hop.session, { source: sourceId, peer: identityOf(v6), address: 'fd00::6', port: 15008 });
});

test('an IPv4-mapped address is not unmapped here: callers hand over the address as connect(2) sees it', (t) => {
  // Capture unmaps SO_ORIGINAL_DST before it calls the outbound path; the plan matches the text it is given.
  t.is(planOutbound(defaultStore, toAddress('::ffff:10.1.0.11', 8080)).kind, 'passthrough');
  t.is(planOutbound(defaultStore, toAddress('10.1.0.11', 8080)).kind, 'mesh');
});

test('an address outside the mesh is passed through as it is', (t) => {
  t.deepEqual(planOutbound(defaultStore, toAddress('93.184.216.34', 443)), {
    kind: 'passthrough',
    ip: '93.184.216.34',
    port: 443,
  });
});

// --- which tunnel -------------------------------------------------------------------------------------

test('each endpoint is reached through its own node’s tunnel, with its own identity', (t) => {
  const plan = mesh(planOutbound(defaultStore, toService('api', 80)));
  const hops = plan.endpoints.map((ep) => planHop(defaultStore, plan, ep, sourceId, identityOf));
  t.deepEqual(hops, [
    {
      kind: 'hop',
      endpoint: api1,
      authority: '10.1.0.10:8080',
      session: { source: sourceId, peer: identityOf(api1), address: '10.0.0.1', port: 15008 },
    },
    {
      kind: 'hop',
      endpoint: api2,
      authority: '10.1.0.11:8080',
      session: { source: sourceId, peer: identityOf(api2), address: '10.0.0.2', port: 15018 },
    },
  ]);
});

test('an endpoint on this node still goes through the node’s tunnel listener', (t) => {
  const plan = mesh(planOutbound(defaultStore, toAddress('10.1.0.10', 8080)));
  const hop = planHop(defaultStore, plan, api1, sourceId, identityOf);
  t.is(hop.kind === 'hop' && hop.session.address, '10.0.0.1', 'node-a, where the client is too');
});

test('the session key names the source: two sources never share a tunnel', (t) => {
  const plan = mesh(planOutbound(defaultStore, toService('api', 80)));
  const other = identityOf({ namespace: 'default', service: 'batch' });
  const a = planHop(defaultStore, plan, api2, sourceId, identityOf);
  const b = planHop(defaultStore, plan, api2, other, identityOf);
  t.true(a.kind === 'hop' && b.kind === 'hop');
  if (a.kind !== 'hop' || b.kind !== 'hop') return;
  t.is(a.session.source, sourceId);
  t.is(b.session.source, other);
  t.deepEqual({ ...a.session, source: '' }, { ...b.session, source: '' });
});

test('two services on one node share its address, not their session: the peer identity (SNI) differs', (t) => {
  const cache = workload({
    name: 'cache-1',
    service: 'cache',
    node: 'node-b',
    addresses: ['10.1.0.30'],
    ports: [6379],
  });
  const store = storeOf({ nodes: NODES, workloads: [api2, cache] });
  const hopTo = (w: Workload) => {
    const hop = planHop(
      store,
      mesh(planOutbound(store, toAddress(w.addresses[0]!, w.ports[0]!))),
      w,
      sourceId,
      identityOf,
    );
    if (hop.kind !== 'hop') throw new Error(hop.why);
    return hop.session;
  };
  const [a, c] = [hopTo(api2), hopTo(cache)];
  t.is(a.address, c.address);
  t.not(a.peer, c.peer);
  t.not(sniForIdentity(a.peer), sniForIdentity(c.peer));
  t.is(c.peer, 'spiffe://ambit.local/ns/default/dc/dc1/svc/cache');
});

const dual = workload({
  name: 'dual',
  service: 'dual',
  node: 'node-b',
  addresses: ['10.1.0.40', 'fd00::40'],
  ports: [80],
});
const v4only = workload({
  name: 'v4only',
  service: 'dual',
  node: 'node-b',
  addresses: ['10.1.0.41'],
  ports: [80],
});
const dualSvc = service({
  name: 'dual',
  vips: ['10.96.0.40', 'fd00:96::40'],
  ports: [{ port: 80, targetPort: 80 }],
});
const dualStore = storeOf({ nodes: NODES, workloads: [dual, v4only], services: [dualSvc] });
const authorityOf = (target: OutboundTarget, ep: Workload): string | false => {
  const hop = planHop(dualStore, mesh(planOutbound(dualStore, target)), ep, sourceId, identityOf);
  return hop.kind === 'hop' && hop.authority;
};

test('a dual-stack workload is reached at the address the client targeted, in its family', (t) => {
  // A server listening on its IPv6 address alone is reached by a client that targeted that address.
  t.is(authorityOf(toAddress('fd00::40', 80), dual), '[fd00::40]:80');
  t.is(authorityOf(toAddress('10.1.0.40', 80), dual), '10.1.0.40:80');
});

test('deliveryAddress: the targeted address is matched whatever its spelling, sent as the mesh spells it', (t) => {
  t.is(deliveryAddress(dual, 'fd00:0:0::40'), 'fd00::40');
  t.is(deliveryAddress(dual, '::ffff:10.1.0.40'), '10.1.0.40');
});

test('a VIP reaches each endpoint at its address in the VIP’s family, else its other one', (t) => {
  t.is(authorityOf(toAddress('fd00:96::40', 80), dual), '[fd00::40]:80');
  t.is(authorityOf(toAddress('10.96.0.40', 80), dual), '10.1.0.40:80');
  t.is(authorityOf(toAddress('fd00:96::40', 80), v4only), '10.1.0.41:80', 'no IPv6 address: its IPv4 one');
});

test('a service named by an explicit upstream reaches each endpoint at its first address', (t) => {
  t.is(authorityOf(toService('dual', 80), dual), '10.1.0.40:80');
});

test('deliveryAddress: an endpoint without addresses has none to deliver to', (t) => {
  t.is(deliveryAddress({ ...dual, addresses: [] }, 'fd00::40'), undefined);
  t.is(deliveryAddress(dual, undefined), '10.1.0.40');
});

test('an endpoint on a node the mesh does not list is skipped', (t) => {
  const stray = workload({
    name: 'stray',
    service: 'api',
    node: 'node-x',
    addresses: ['10.1.0.50'],
    ports: [8080],
  });
  const store = storeOf({ nodes: NODES, workloads: [api1, stray] });
  const plan = mesh(planOutbound(store, toService('api', 80)));
  t.deepEqual(
    names(plan.endpoints),
    ['api-1', 'stray'],
    'still an endpoint: the attempt that picks it moves on to another',
  );
  t.deepEqual(planHop(store, plan, stray, sourceId, identityOf), {
    kind: 'skip',
    reason: 'unknown_node',
    why: 'endpoint stray is on unknown node node-x',
  });
});

test('an endpoint without an address is skipped', (t) => {
  const none = workload({ name: 'none', service: 'api', node: 'node-b', addresses: [], ports: [8080] });
  const store = storeOf({ nodes: NODES, workloads: [none] });
  const plan = mesh(planOutbound(store, toService('api', 80)));
  t.deepEqual(planHop(store, plan, none, sourceId, identityOf), {
    kind: 'skip',
    reason: 'no_port',
    why: 'endpoint none has no port to reach',
  });
});

test('the plan follows the state: a replaced mesh gives the new endpoints', (t) => {
  const store = storeOf({ nodes: NODES, workloads: [api1] });
  t.deepEqual(names(mesh(planOutbound(store, toService('api', 80))).endpoints), ['api-1']);
  store.replace({ ...store.mesh, workloads: [api2] });
  t.deepEqual(names(mesh(planOutbound(store, toService('api', 80))).endpoints), ['api-2']);
});
