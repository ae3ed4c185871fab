// The inbound routing decision without sockets, as ztunnel's build_request is tested: from the state in
// force, this node, a CONNECT's :authority and the peer's SPIFFE identity, the target workload or a refusal.
import test, { type ExecutionContext } from 'ava';
import {
  type InboundAdmitted,
  type InboundRefused,
  type InboundScope,
  decideInbound,
  peerFromUris,
  stillAdmits,
} from '../../daemon/proxy/inbound/decide.js';
import type { Peer } from '../../daemon/rbac.js';
import type { StateStore } from '../../daemon/state/store.js';
import type { AmbitErrorCode } from '../../lib/errors.js';
import type { Mesh, Policy } from '../../lib/mesh/model.js';
import { canonicalIp, isLoopback } from '../../lib/net/addresses.js';
import { TRUST_DOMAIN, from, identityOf, node, policy, storeOf, workload } from '../helpers/mesh.js';

const NODE_ADDR = '10.0.0.1';
const TUNNEL = 15008;
const ADMIN = 15000;
const isLocalAddress = (ip: string): boolean => isLoopback(ip) || canonicalIp(ip) === NODE_ADDR;

const api = workload({
  name: 'api-1',
  service: 'api',
  node: 'node-a',
  addresses: ['10.1.0.10'],
  ports: [8080, 9090],
});
const remote = workload({
  name: 'api-2',
  service: 'api',
  node: 'node-b',
  addresses: ['10.1.0.11'],
  ports: [8080],
});
const db = workload({ name: 'db', service: 'db', node: 'node-a', addresses: ['10.1.0.20'] });
const v6 = workload({ name: 'v6', service: 'v6', node: 'node-a', addresses: ['fd00::10'], ports: [8443] });
const WORKLOADS = [api, remote, db, v6];

/** node-a: its tunnel on every address (port 15008), its admin API on loopback (port 15000). */
function scope(mesh: Partial<Mesh> = {}): InboundScope & { store: StateStore } {
  return {
    store: storeOf({
      nodes: [node('node-a', NODE_ADDR), node('node-b', '10.0.0.2')],
      workloads: WORKLOADS,
      ...mesh,
    }),
    nodeName: 'node-a',
    trustDomain: TRUST_DOMAIN,
    isSelf: (t) => (t.port === TUNNEL && isLocalAddress(t.ip)) || (t.port === ADMIN && isLoopback(t.ip)),
    isLocalAddress,
    identityOf: (w) => identityOf(w),
  };
}

const peerOf = (service: string, namespace = 'default', trustDomain = TRUST_DOMAIN): Peer =>
  peerFromUris([identityOf({ service, namespace }, trustDomain)])!;
const web = peerOf('web');

const admitted = (t: ExecutionContext, d: InboundAdmitted | InboundRefused): InboundAdmitted => {
  if (!d.ok) t.fail(`refused: ${d.refusal.message}`);
  return d as InboundAdmitted;
};
const refused = (
  t: ExecutionContext,
  d: InboundAdmitted | InboundRefused,
  code: AmbitErrorCode,
  message?: string | RegExp,
): InboundRefused => {
  if (d.ok) t.fail(`admitted to ${d.workload.name}`);
  const r = d as InboundRefused;
  t.is(r.refusal.code, code);
  if (typeof message === 'string') t.is(r.refusal.message, message);
  else if (message) t.regex(r.refusal.message, message);
  return r;
};
const STATUS = {
  AMBIT_BAD_REQUEST: [400, 'BAD_REQUEST'],
  AMBIT_DENIED: [401, 'DENY'],
  AMBIT_UNKNOWN_WORKLOAD: [503, 'NR'],
} as const;

// --- the request -----------------------------------------------------------------------------------------

test('a CONNECT to a workload of this node, default allow: admitted', (t) => {
  const d = admitted(t, decideInbound(scope(), 'CONNECT', '10.1.0.10:8080', web));
  t.is(d.workload, api);
  t.deepEqual(d.target, { ip: '10.1.0.10', port: 8080 });
  t.is(d.peer, web);
  t.deepEqual(d.decision, { allowed: true, policy: undefined, reason: 'default allow' });
});

test('each refusal carries its status and response flag', (t) => {
  const cases: [string | undefined, string | undefined, Peer | undefined, keyof typeof STATUS][] = [
    ['GET', '10.1.0.10:8080', web, 'AMBIT_BAD_REQUEST'],
    ['CONNECT', '10.1.0.10:8080', undefined, 'AMBIT_DENIED'],
    ['CONNECT', '10.1.0.99:8080', web, 'AMBIT_UNKNOWN_WORKLOAD'],
  ];
  for (const [method, authority, peer, code] of cases) {
    const r = refused(t, decideInbound(scope(), method, authority, peer), code);
    t.deepEqual([r.refusal.status, r.refusal.flag], [...STATUS[code]], code);
  }
});

test('a method other than CONNECT is a bad request', (t) => {
  refused(
    t,
    decideInbound(scope(), 'GET', '10.1.0.10:8080', web),
    'AMBIT_BAD_REQUEST',
    'method GET is not CONNECT',
  );
  refused(t, decideInbound(scope(), undefined, '10.1.0.10:8080', web), 'AMBIT_BAD_REQUEST');
});

test('an :authority that is not ip:port is a bad request', (t) => {
  for (const authority of [
    'api.default:8080',
    '10.1.0.10',
    '10.1.0.10:0',
    '10.1.0.10:65536',
    '[fd00::10]8443',
    '[fd00::10:8443',
    '',
  ])
    refused(
      t,
      decideInbound(scope(), 'CONNECT', authority, web),
      'AMBIT_BAD_REQUEST',
      /^malformed :authority/,
    );
  refused(
    t,
    decideInbound(scope(), 'CONNECT', undefined, web),
    'AMBIT_BAD_REQUEST',
    'malformed :authority undefined',
  );
});

test('a peer without a SPIFFE identity is denied, before the target is looked up', (t) => {
  const r = refused(
    t,
    decideInbound(scope(), 'CONNECT', '10.1.0.10:8080', undefined),
    'AMBIT_DENIED',
    'peer certificate carries no SPIFFE identity',
  );
  t.is(r.workload, undefined);
});

// --- never a relay ---------------------------------------------------------------------------------------

test("the daemon's own listeners are refused, at every spelling of a local address", (t) => {
  for (const authority of [
    `${NODE_ADDR}:${TUNNEL}`,
    `127.0.0.1:${TUNNEL}`,
    `127.0.0.1:${ADMIN}`,
    `127.9.9.9:${ADMIN}`,
    `[::1]:${ADMIN}`,
    `[::ffff:127.0.0.1]:${ADMIN}`,
    `[::ffff:${NODE_ADDR}]:${TUNNEL}`,
    `0.0.0.0:${TUNNEL}`,
  ])
    refused(
      t,
      decideInbound(scope(), 'CONNECT', authority, web),
      'AMBIT_BAD_REQUEST',
      /is this daemon's own listener$/,
    );
});

test('a workload enrolled at one of those listeners is refused all the same', (t) => {
  const squatter = workload({
    name: 'sq',
    service: 'sq',
    node: 'node-a',
    addresses: ['127.0.0.1'],
    ports: [ADMIN],
  });
  const s = scope({ workloads: [squatter] });
  refused(t, decideInbound(s, 'CONNECT', `127.0.0.1:${ADMIN}`, web), 'AMBIT_BAD_REQUEST');
});

test('an address no workload has is an unknown workload', (t) => {
  refused(
    t,
    decideInbound(scope(), 'CONNECT', '10.1.0.99:8080', web),
    'AMBIT_UNKNOWN_WORKLOAD',
    '10.1.0.99:8080 is not a workload enrolled on node node-a',
  );
});

test('an IPv6 address in a refusal is bracketed, so that its port can be told apart', (t) => {
  refused(
    t,
    decideInbound(scope(), 'CONNECT', '[fd00::99]:8443', web),
    'AMBIT_UNKNOWN_WORKLOAD',
    '[fd00::99]:8443 is not a workload enrolled on node node-a',
  );
  refused(
    t,
    decideInbound(scope(), 'CONNECT', `[::1]:${ADMIN}`, web),
    'AMBIT_BAD_REQUEST',
    `[::1]:${ADMIN} is this daemon's own listener`,
  );
});

test('a port a workload with an address of its own does not list is still that workload’s', (t) => {
  // Every port of a pod goes through the tunnel; policy, not the port list, says who reaches which.
  const d = admitted(t, decideInbound(scope(), 'CONNECT', '10.1.0.10:22', web));
  t.is(d.workload.name, 'api-1');
  t.is(d.target.port, 22);
});

test('a port a host-network workload does not list is an unknown workload', (t) => {
  // At the node's own address: the host's other ports are not the workload's to hand out.
  const vm = workload({ name: 'vm', service: 'vm', node: 'node-a', addresses: [NODE_ADDR], ports: [8080] });
  const s = scope({ workloads: [...WORKLOADS, vm] });
  refused(t, decideInbound(s, 'CONNECT', `${NODE_ADDR}:22`, web), 'AMBIT_UNKNOWN_WORKLOAD');
  t.is(admitted(t, decideInbound(s, 'CONNECT', `${NODE_ADDR}:8080`, web)).workload.name, 'vm');
  // By uid, at an address the host holds (isLocalAddress): the same.
  const proc = workload({
    name: 'proc',
    service: 'proc',
    node: 'node-a',
    addresses: ['127.0.0.5'],
    ports: [8081],
    uid: 1001,
  });
  const u = scope({ workloads: [...WORKLOADS, proc] });
  refused(t, decideInbound(u, 'CONNECT', '127.0.0.5:22', web), 'AMBIT_UNKNOWN_WORKLOAD');
});

test('a workload of another node is not reached through this one', (t) => {
  refused(
    t,
    decideInbound(scope(), 'CONNECT', '10.1.0.11:8080', web),
    'AMBIT_UNKNOWN_WORKLOAD',
    '10.1.0.11:8080 is not a workload enrolled on node node-a',
  );
});

test('a workload serving every port of its own address is reached at any port', (t) => {
  const d = admitted(t, decideInbound(scope(), 'CONNECT', '10.1.0.20:5432', web));
  t.is(d.workload, db);
  t.is(d.target.port, 5432);
});

test('"every port" of an address of this host is never a target', (t) => {
  const host = workload({
    name: 'host',
    service: 'host',
    node: 'node-a',
    addresses: [NODE_ADDR, '127.0.0.1'],
  });
  const s = scope({ workloads: [host] });
  refused(t, decideInbound(s, 'CONNECT', `${NODE_ADDR}:22`, web), 'AMBIT_UNKNOWN_WORKLOAD');
  refused(t, decideInbound(s, 'CONNECT', '127.0.0.1:6379', web), 'AMBIT_UNKNOWN_WORKLOAD');
});

test('a listed port at an address of this host is a target', (t) => {
  const lo = workload({ name: 'lo', service: 'lo', node: 'node-a', addresses: ['127.0.0.1'], ports: [6379] });
  const d = admitted(t, decideInbound(scope({ workloads: [lo] }), 'CONNECT', '127.0.0.1:6379', web));
  t.is(d.workload, lo);
});

test('an IPv6 workload is reached at its bracketed :authority', (t) => {
  const d = admitted(t, decideInbound(scope(), 'CONNECT', '[fd00::10]:8443', web));
  t.is(d.workload, v6);
  t.deepEqual(d.target, { ip: 'fd00::10', port: 8443 });
});

test('an IPv4-mapped :authority is matched as written, not as the IPv4 workload', (t) => {
  refused(t, decideInbound(scope(), 'CONNECT', '[::ffff:10.1.0.10]:8080', web), 'AMBIT_UNKNOWN_WORKLOAD');
});

// --- policy ------------------------------------------------------------------------------------------------

const allowWeb: Policy = policy({
  name: 'allow-web',
  action: 'allow',
  service: 'api',
  from: [from({ service: 'web' })],
});

test('default deny refuses, and names the workload it protected', (t) => {
  const r = refused(
    t,
    decideInbound(scope({ defaultPolicy: 'deny' }), 'CONNECT', '10.1.0.10:8080', web),
    'AMBIT_DENIED',
    'default deny',
  );
  t.is(r.workload, api);
});

test('an allow policy naming the source service admits it, and says which', (t) => {
  const s = scope({ defaultPolicy: 'deny', policies: [allowWeb] });
  const d = admitted(t, decideInbound(s, 'CONNECT', '10.1.0.10:8080', web));
  t.deepEqual(d.decision, { allowed: true, policy: 'allow-web', reason: 'allowed by policy allow-web' });
});

test('once a service has allow policies, a source none of them names is denied, even under default allow', (t) => {
  const s = scope({ policies: [allowWeb] });
  refused(
    t,
    decideInbound(s, 'CONNECT', '10.1.0.10:8080', peerOf('batch')),
    'AMBIT_DENIED',
    'no allow policy matches the source',
  );
});

test('a deny by source namespace wins over default allow', (t) => {
  const s = scope({
    policies: [
      policy({ name: 'no-dev', action: 'deny', service: 'api', from: [from({ namespace: 'dev' })] }),
    ],
  });
  refused(
    t,
    decideInbound(s, 'CONNECT', '10.1.0.10:8080', peerOf('web', 'dev')),
    'AMBIT_DENIED',
    'denied by policy no-dev',
  );
  admitted(t, decideInbound(s, 'CONNECT', '10.1.0.10:8080', web));
});

test('a deny wins over an allow that matches too', (t) => {
  const deny = policy({ name: 'deny-web', action: 'deny', service: 'api', from: [from({ service: 'web' })] });
  const s = scope({ policies: [allowWeb, deny] });
  refused(t, decideInbound(s, 'CONNECT', '10.1.0.10:8080', web), 'AMBIT_DENIED', 'denied by policy deny-web');
});

test("an allow scoped to a port admits that port only, the workload's other ports are denied", (t) => {
  const s = scope({ policies: [{ ...allowWeb, ports: [8080] }] });
  admitted(t, decideInbound(s, 'CONNECT', '10.1.0.10:8080', web));
  refused(t, decideInbound(s, 'CONNECT', '10.1.0.10:9090', web), 'AMBIT_DENIED');
});

test('a deny scoped to a port leaves the other ports to the default', (t) => {
  const s = scope({
    policies: [policy({ name: 'no-admin', action: 'deny', service: 'api', ports: [9090] })],
  });
  admitted(t, decideInbound(s, 'CONNECT', '10.1.0.10:8080', web));
  refused(t, decideInbound(s, 'CONNECT', '10.1.0.10:9090', web), 'AMBIT_DENIED', 'denied by policy no-admin');
});

test('policies of another service, or of the same service in another namespace, do not apply', (t) => {
  const s = scope({
    defaultPolicy: 'deny',
    policies: [
      policy({ name: 'db-only', action: 'allow', service: 'db', from: [from({ service: 'web' })] }),
      policy({
        name: 'prod-api',
        action: 'allow',
        service: 'api',
        namespace: 'prod',
        from: [from({ service: 'web' })],
      }),
    ],
  });
  refused(t, decideInbound(s, 'CONNECT', '10.1.0.10:8080', web), 'AMBIT_DENIED', 'default deny');
  admitted(t, decideInbound(s, 'CONNECT', '10.1.0.20:5432', web));
});

test('a peer of another trust domain does not match a service rule, and is told why', (t) => {
  const s = scope({ policies: [allowWeb] });
  const foreign = peerOf('web', 'default', 'other.td');
  refused(
    t,
    decideInbound(s, 'CONNECT', '10.1.0.10:8080', foreign),
    'AMBIT_DENIED',
    /is not of trust domain ambit\.local/,
  );
});

test('a rule naming the foreign principal admits it', (t) => {
  const foreign = peerOf('web', 'default', 'other.td');
  const s = scope({
    defaultPolicy: 'deny',
    policies: [
      policy({
        name: 'partner',
        action: 'allow',
        service: 'api',
        from: [from({ principal: foreign.principal })],
      }),
    ],
  });
  t.is(admitted(t, decideInbound(s, 'CONNECT', '10.1.0.10:8080', foreign)).decision.policy, 'partner');
  refused(t, decideInbound(s, 'CONNECT', '10.1.0.10:8080', web), 'AMBIT_DENIED');
});

test('a SPIFFE identity not of the Consul form matches no service rule; the default still admits it', (t) => {
  const odd = peerFromUris(['spiffe://ambit.local/workload/web'])!;
  refused(
    t,
    decideInbound(scope({ policies: [allowWeb] }), 'CONNECT', '10.1.0.10:8080', odd),
    'AMBIT_DENIED',
  );
  admitted(t, decideInbound(scope(), 'CONNECT', '10.1.0.10:8080', odd));
});

// --- the peer, from its certificate ------------------------------------------------------------------------

test('the peer is the first SPIFFE ID among the URI SANs', (t) => {
  t.is(peerFromUris([]), undefined);
  t.is(peerFromUris(['https://example.com/web', 'urn:x']), undefined);
  t.deepEqual(
    peerFromUris([
      'urn:x',
      identityOf({ service: 'web', namespace: 'ns1' }),
      identityOf({ service: 'b', namespace: 'n' }),
    ]),
    {
      principal: 'spiffe://ambit.local/ns/ns1/dc/dc1/svc/web',
      trustDomain: 'ambit.local',
      namespace: 'ns1',
      service: 'web',
    },
  );
});

test('a SPIFFE ID of another form keeps its trust domain, and names no service or namespace', (t) => {
  t.deepEqual(peerFromUris(['spiffe://other.td/workload/x']), {
    principal: 'spiffe://other.td/workload/x',
    trustDomain: 'other.td',
    namespace: undefined,
    service: undefined,
  });
  t.is(
    peerFromUris(['spiffe://Bad_TD!/ns/a/dc/b/svc/c'])?.trustDomain,
    undefined,
    'an invalid trust domain is none',
  );
});

// --- open connections, against the state now ---------------------------------------------------------------

test('an open connection is re-checked against the policies in force now', (t) => {
  const s = scope();
  t.true(stillAdmits(s, 'api-1', web, 8080).allowed);
  s.store.replace({ ...s.store.mesh, policies: [allowWeb] });
  t.true(stillAdmits(s, 'api-1', web, 8080).allowed);
  t.false(stillAdmits(s, 'api-1', peerOf('batch'), 8080).allowed);
  s.store.replace({ ...s.store.mesh, defaultPolicy: 'deny', policies: [] });
  t.deepEqual(stillAdmits(s, 'api-1', web, 8080), {
    allowed: false,
    policy: undefined,
    reason: 'default deny',
  });
});

test('an open connection to a workload no longer enrolled is not allowed', (t) => {
  const s = scope({ workloads: [remote] });
  t.deepEqual(stillAdmits(s, 'api-1', web, 8080), { allowed: false, reason: 'workload no longer enrolled' });
});
