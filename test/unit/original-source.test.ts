// Which source address the destination daemon connects to a workload from (daemon/proxy/inbound/original-
// source.ts): the client's only when it is proven and can work, the daemon's own otherwise.
import test from 'ava';
import {
  type Catalog,
  type Family,
  type SourceChoiceInput,
  chooseSource,
} from '../../daemon/proxy/inbound/original-source.js';
import type { Workload } from '../../lib/mesh/model.js';

const workload = (name: string, service: string, addresses: string[], uid?: number): Workload => ({
  name,
  service,
  namespace: 'default',
  node: name === 'server' || name === 'hostweb' ? 'node-b' : 'node-a',
  addresses,
  ports: [8080],
  uid,
  mode: 'strict',
  upstreams: [],
});

const client = workload('client', 'web', ['198.18.1.2', '2001:2:0:1::2']);
const other = workload('other', 'db', ['198.18.1.3']);
const server = workload('server', 'api', ['198.18.2.2', '2001:2:0:2::2']);
const hostweb = workload('hostweb', 'hostweb', ['198.18.0.2'], 65534);
const all = [client, other, server, hostweb];
const id = (service: string): string => `spiffe://ambit.local/ns/default/dc/dc1/svc/${service}`;
const catalog: Catalog = {
  workloadsByIp: (ip) => all.filter((w) => w.addresses.includes(ip)),
  identityOf: (w) => id(w.service),
};
const BOTH: ReadonlySet<Family> = new Set([4, 6]);

/** A connection that gets the client's address; each test changes one thing. */
const base: SourceChoiceInput = {
  claimed: '198.18.1.2',
  principal: id('web'),
  catalog,
  target: '198.18.2.2',
  destination: server,
  mark: 0x539,
  enabled: true,
  routed: BOTH,
};

test("a proven client of the target's family: the workload sees the client's address", (t) => {
  t.deepEqual(chooseSource(base), { from: '198.18.1.2', reason: 'original' });
  t.deepEqual(
    chooseSource({ ...base, claimed: '2001:2:0:1::2', target: '2001:2:0:2::2' }),
    { from: '2001:2:0:1::2', reason: 'original' },
    'IPv6 alike',
  );
});

test("a spoofed header (another workload's address, not the peer's identity) is not used", (t) => {
  t.deepEqual(chooseSource({ ...base, claimed: '198.18.1.3' }), { from: undefined, reason: 'unproven' });
  t.is(chooseSource({ ...base, claimed: '198.18.9.9' }).reason, 'unproven', 'an address of no workload');
  t.is(chooseSource({ ...base, claimed: undefined }).reason, 'unproven', 'no header');
  t.is(
    chooseSource({ ...base, principal: id('db') }).reason,
    'unproven',
    'the right address, the wrong peer',
  );
});

test("an address of the other family than the target's is not used", (t) => {
  t.deepEqual(chooseSource({ ...base, claimed: '2001:2:0:1::2' }), { from: undefined, reason: 'family' });
  t.is(chooseSource({ ...base, target: '2001:2:0:2::2' }).reason, 'family');
});

test("a workload on the host's network is reached from the daemon's own address", (t) => {
  t.deepEqual(chooseSource({ ...base, target: '198.18.0.2', destination: hostweb }), {
    from: undefined,
    reason: 'host_network',
  });
});

test('setting off, capture off, or reply routing missing for the family: own address', (t) => {
  t.is(chooseSource({ ...base, enabled: false }).reason, 'off');
  t.is(chooseSource({ ...base, mark: undefined }).reason, 'no_capture');
  t.is(chooseSource({ ...base, routed: new Set() }).reason, 'no_routing');
  t.is(chooseSource({ ...base, routed: new Set([6]) }).reason, 'no_routing', 'IPv6 routed, not IPv4');
  t.is(
    chooseSource({ ...base, routed: new Set([4]), claimed: '2001:2:0:1::2', target: '2001:2:0:2::2' }).reason,
    'no_routing',
  );
});

test("a call to itself, or from a loopback address, is not sent from the workload's own address", (t) => {
  t.is(chooseSource({ ...base, principal: id('api'), claimed: '198.18.2.2' }).reason, 'same_workload');
  const local = workload('local', 'web', ['127.0.0.1']);
  const withLocal: Catalog = { ...catalog, workloadsByIp: (ip) => (ip === '127.0.0.1' ? [local] : []) };
  t.is(chooseSource({ ...base, claimed: '127.0.0.1', catalog: withLocal }).reason, 'unroutable');
});
