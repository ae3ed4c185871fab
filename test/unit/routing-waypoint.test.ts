// The waypoint's routing decisions without sockets: where a source sends a waypoint service's connection
// (steering, fail closed), and what the destination admits (no bypass, the client's identity).
import test from 'ava';
import {
  type InboundScope,
  decideInbound,
  peerFromUris,
  stillAdmits,
} from '../../daemon/proxy/inbound/decide.js';
import { decidePlaintext } from '../../daemon/proxy/inbound/plaintext.js';
import {
  type OutboundPlan,
  type OutboundTarget,
  planOutbound,
  planWaypoint,
  planWaypointHop,
} from '../../daemon/proxy/outbound/plan.js';
import type { Peer } from '../../daemon/rbac.js';
import { formatXfcc, xfccClient } from '../../daemon/waypoint/xfcc.js';
import type { Mesh } from '../../lib/mesh/model.js';
import { TRUST_DOMAIN, from, identityOf, node, policy, service, storeOf, workload } from '../helpers/mesh.js';

const client = workload({ name: 'client', service: 'web', node: 'node-a', addresses: ['10.1.0.1'] });
const api1 = workload({
  name: 'api-1',
  service: 'api',
  node: 'node-b',
  addresses: ['10.1.0.10'],
  ports: [8080],
});
const wp1 = workload({
  name: 'wp-1',
  service: 'wp',
  node: 'wp-node-1',
  addresses: ['10.2.0.1'],
  ports: [15018],
});
const wp2 = workload({
  name: 'wp-2',
  service: 'wp',
  node: 'wp-node-2',
  addresses: ['10.2.0.2'],
  ports: [15018],
});
const apiSvc = service({
  name: 'api',
  vips: ['10.96.0.10'],
  ports: [{ port: 80, targetPort: 8080 }],
  waypoint: 'wp',
});
const NODES = [node('node-a', '10.0.0.1'), node('node-b', '10.0.0.2')];

const storeWith = (mesh: Partial<Mesh> = {}) =>
  storeOf({ nodes: NODES, workloads: [client, api1, wp1, wp2], services: [apiSvc], ...mesh });

const mesh = (store: ReturnType<typeof storeOf>, target: OutboundTarget): OutboundPlan => {
  const r = planOutbound(store, target);
  if (r.kind !== 'mesh') throw new Error(`expected a mesh plan, got ${r.kind}`);
  return r;
};

const byVip: OutboundTarget = { kind: 'address', ip: '10.96.0.10', port: 80 };
const byWorkload: OutboundTarget = { kind: 'address', ip: '10.1.0.10', port: 8080 };
const byName: OutboundTarget = { kind: 'service', namespace: 'default', service: 'api', port: 80 };

// --- source side: steering --------------------------------------------------------------------------

test('a waypoint service by VIP goes to its waypoint, authority the VIP:port the client targeted', (t) => {
  const store = storeWith();
  const via = planWaypoint(store, mesh(store, byVip), byVip, client);
  if (via?.kind !== 'waypoint') return t.fail(`expected a waypoint route, got ${via?.kind}`);
  t.deepEqual(via.waypoint, { name: 'wp', namespace: 'default' });
  t.deepEqual(
    via.instances.map((w) => w.name),
    ['wp-1', 'wp-2'],
  );
  t.is(via.authority, '10.96.0.10:80');
  t.is(via.host, 'api.default');
});

test("a waypoint service by a workload's address keeps that address as the authority", (t) => {
  const store = storeWith();
  const via = planWaypoint(store, mesh(store, byWorkload), byWorkload, client);
  t.is(via?.kind === 'waypoint' ? via.authority : via?.kind, '10.1.0.10:8080');
});

test('an explicit upstream by name is sent as <service>.<namespace>:<port>, or without a port', (t) => {
  const store = storeWith();
  const via = planWaypoint(store, mesh(store, byName), byName, client);
  t.is(via?.kind === 'waypoint' ? via.authority : via?.kind, 'api.default:80');
  const noPort: OutboundTarget = { ...byName, port: undefined };
  const via2 = planWaypoint(store, mesh(store, noPort), noPort, client);
  t.is(via2?.kind === 'waypoint' ? via2.authority : via2?.kind, 'api.default');
});

test('a service without a waypoint, and the waypoint itself as the source, are not steered', (t) => {
  const store = storeWith({ services: [{ ...apiSvc, waypoint: undefined }] });
  t.is(planWaypoint(store, mesh(store, byVip), byVip, client), undefined);
  const steered = storeWith();
  t.is(planWaypoint(steered, mesh(steered, byVip), byVip, wp1), undefined);
});

test('a waypoint with no instance fails closed: waypoint_unavailable, never the endpoints', (t) => {
  const store = storeWith({ workloads: [client, api1] });
  const via = planWaypoint(store, mesh(store, byVip), byVip, client);
  t.is(via?.kind, 'waypoint_unavailable');
  t.regex(via?.kind === 'waypoint_unavailable' ? via.why : '', /waypoint wp of service api has no instance/);
});

test("the hop to an instance is its own address:port, the waypoint's identity the one to prove", (t) => {
  const store = storeWith();
  const via = planWaypoint(store, mesh(store, byVip), byVip, client);
  if (via?.kind !== 'waypoint') return t.fail();
  const hop = planWaypointHop(via, wp2, identityOf(client), identityOf);
  t.deepEqual(hop, {
    kind: 'hop',
    endpoint: wp2,
    authority: '10.96.0.10:80',
    session: { source: identityOf(client), peer: identityOf(wp2), address: '10.2.0.2', port: 15018 },
  });
  const portless = { ...wp1, ports: [] };
  t.is(planWaypointHop(via, portless, identityOf(client), identityOf).kind, 'skip');
});

// --- destination side: no bypass --------------------------------------------------------------------

function scope(mesh: Partial<Mesh> = {}): InboundScope {
  return {
    store: storeOf({ nodes: NODES, workloads: [client, api1, wp1], services: [apiSvc], ...mesh }),
    nodeName: 'node-b',
    trustDomain: TRUST_DOMAIN,
    isSelf: () => false,
    isLocalAddress: () => false,
    identityOf: (w) => identityOf(w),
  };
}
const peerOf = (svc: string): Peer => peerFromUris([identityOf({ service: svc, namespace: 'default' })])!;
const waypointPeer = peerOf('wp');
const webId = identityOf(client);
const xfcc = formatXfcc(identityOf(wp1), webId);

test('the waypoint is admitted, and the client it names is the source policy and the log see', (t) => {
  const to = decideInbound(scope(), 'CONNECT', '10.1.0.10:8080', waypointPeer, xfcc);
  if (!to.ok) return t.fail(to.refusal.message);
  t.is(to.client?.principal, webId);
  t.is(to.peer.principal, identityOf(wp1));
});

test('any other peer is refused as waypoint_bypass (401), whatever header it sends', (t) => {
  for (const header of [undefined, xfcc]) {
    const to = decideInbound(scope(), 'CONNECT', '10.1.0.10:8080', peerOf('web'), header);
    if (to.ok) return t.fail('admitted around the waypoint');
    t.like(to.refusal, { kind: 'waypoint_bypass', reason: 'waypoint_bypass', status: 401, flag: 'DENY' });
    t.regex(to.refusal.message, /through its waypoint .* only, not from spiffe:\/\/.*\/svc\/web/);
  }
});

test("the client's intentions apply, not the waypoint's: a deny for web refuses web through it", (t) => {
  const deny = policy({ name: 'no-web', action: 'deny', service: 'api', from: [from({ service: 'web' })] });
  const s = scope({ policies: [deny] });
  const to = decideInbound(s, 'CONNECT', '10.1.0.10:8080', waypointPeer, xfcc);
  t.false(to.ok);
  t.is(to.ok ? '' : to.refusal.kind, 'denied');
  const other = formatXfcc(identityOf(wp1), identityOf({ service: 'batch', namespace: 'default' }));
  t.true(decideInbound(s, 'CONNECT', '10.1.0.10:8080', waypointPeer, other).ok);
});

test('the waypoint without a client identity is refused; without a waypoint the header is ignored', (t) => {
  const to = decideInbound(scope(), 'CONNECT', '10.1.0.10:8080', waypointPeer, undefined);
  t.is(to.ok ? 'ok' : to.refusal.kind, 'denied');
  const plain = scope({ services: [{ ...apiSvc, waypoint: undefined }] });
  const direct = decideInbound(
    plain,
    'CONNECT',
    '10.1.0.10:8080',
    peerOf('web'),
    formatXfcc('x', identityOf(wp1)),
  );
  if (!direct.ok) return t.fail(direct.refusal.message);
  t.is(direct.client, undefined);
});

test('a re-check closes a connection from a peer that is no longer the waypoint', (t) => {
  const client = peerFromUris([webId])!;
  t.true(stillAdmits(scope(), 'api-1', waypointPeer, 8080, client).allowed);
  const moved = scope({ services: [{ ...apiSvc, waypoint: 'wp2' }] });
  t.false(stillAdmits(moved, 'api-1', waypointPeer, 8080, client).allowed);
  t.false(stillAdmits(scope(), 'api-1', waypointPeer, 8080, undefined).allowed);
});

test('x-forwarded-client-cert: the URI of the last element, SPIFFE IDs only, quotes undone', (t) => {
  t.is(xfccClient(xfcc), webId);
  t.is(xfccClient(`By=a;URI=spiffe://x/one,By="b;c";URI="spiffe://x/two"`), 'spiffe://x/two');
  t.is(xfccClient('By=a;URI=http://not-spiffe'), undefined);
  t.is(xfccClient('Hash=abc'), undefined);
  t.is(xfccClient(undefined), undefined);
});

test('plaintext to a permissive workload of a waypoint service is a bypass, but for its plaintext ports', (t) => {
  const open = { ...api1, mode: 'permissive' as const, plaintextPorts: [9090], ports: [8080, 9090] };
  const store = storeOf({ nodes: NODES, workloads: [open], services: [apiSvc] });
  const d = { store, nodeName: 'node-b', trustDomain: TRUST_DOMAIN };
  const refused = decidePlaintext(d, { ip: '10.1.0.10', port: 8080 });
  t.like(refused, { ok: false, kind: 'waypoint_bypass' });
  t.true(decidePlaintext(d, { ip: '10.1.0.10', port: 9090 }).ok);
  const plain = storeOf({ nodes: NODES, workloads: [open], services: [{ ...apiSvc, waypoint: undefined }] });
  t.true(decidePlaintext({ ...d, store: plain }, { ip: '10.1.0.10', port: 8080 }).ok);
});
