// Consul scopes beyond this partition: intentions for peers, sameness groups and other partitions never
// match local sources, and SPIFFE IDs that name an admin partition are parsed and matched by principal.
import test from 'ava';
import { parseSpiffeId, spiffeId } from '../../daemon/identity/spiffe.js';
import { authorize } from '../../daemon/rbac.js';
import { compileIntentions, parseIntentions } from '../../lib/consul/intentions.js';
import type { Policy } from '../../lib/mesh/model.js';

const TD = 'a1b2.consul';
const local = (service: string) => ({
  principal: `spiffe://${TD}/ns/default/dc/dc1/svc/${service}`,
  trustDomain: TD,
  namespace: 'default',
  service,
});

/** What Consul's /v1/connect/intentions/match answers for `api`, with these extra source fields. */
const match = (...sources: Record<string, unknown>[]) => ({
  api: sources.map((s, n) => ({
    SourceName: 'web',
    SourceNS: 'default',
    DestinationName: 'api',
    DestinationNS: 'default',
    Action: 'allow',
    Precedence: 9 - n,
    ...s,
  })),
});

const decide = (body: unknown, def: 'allow' | 'deny', peer = local('web')): boolean => {
  const { policies } = compileIntentions(
    { service: 'api', namespace: 'default' },
    parseIntentions(body, 'api'),
    def,
  );
  return authorize(policies, def, peer, 80, TD).allowed;
};

test('an intention scoped to a peer, a sameness group or another partition never matches local sources', (t) => {
  for (const scope of [
    { SourcePeer: 'cluster-2' },
    { SourceSamenessGroup: 'group-1' },
    { SourcePartition: 'ap1' },
  ]) {
    const what = JSON.stringify(scope);
    // `allow web` of a peer leaves the local web to the default.
    t.false(decide(match(scope), 'deny'), what);
    // `deny web` of a peer does not deny the local web.
    t.true(decide(match({ ...scope, Action: 'deny' }), 'allow'), what);
    t.deepEqual(parseIntentions(match(scope), 'api'), [], what);
  }
  // Empty fields, and the default partition, are local: Consul CE sends `SourcePartition: ""` or none.
  for (const scope of [{}, { SourcePeer: '', SourcePartition: '' }, { SourcePartition: 'default' }]) {
    t.true(decide(match(scope), 'deny'), JSON.stringify(scope));
  }
  // A peer-scoped deny ahead of a local allow: the local allow decides.
  t.true(decide(match({ SourcePeer: 'cluster-2', Action: 'deny' }, {}), 'deny'));
});

test('partition SPIFFE IDs: parsed, written as Consul writes them, and invalid forms refused', (t) => {
  const ap = `spiffe://${TD}/ap/ap1/ns/default/dc/dc1/svc/web`;
  t.deepEqual(parseSpiffeId(ap), {
    trustDomain: TD,
    partition: 'ap1',
    namespace: 'default',
    datacenter: 'dc1',
    service: 'web',
  });
  t.is(spiffeId(parseSpiffeId(ap)!), ap);
  // The default partition is left out of the ID, as Consul does.
  t.is(
    spiffeId({
      trustDomain: TD,
      partition: 'default',
      namespace: 'default',
      datacenter: 'dc1',
      service: 'web',
    }),
    `spiffe://${TD}/ns/default/dc/dc1/svc/web`,
  );
  for (const bad of [
    `spiffe://${TD}/ap//ns/default/dc/dc1/svc/web`,
    `spiffe://${TD}/ap/../ns/default/dc/dc1/svc/web`,
    `spiffe://${TD}/ap/ap1/ns/default/dc/dc1/svc`,
    `spiffe://${TD}/part/ap1/ns/default/dc/dc1/svc/web`,
    `spiffe://${TD}/ns/default/ap/ap1/dc/dc1/svc/web`,
  ]) {
    t.is(parseSpiffeId(bad), undefined, bad);
  }
});

test('a source of another partition is matched by its principal, never by the local names it shares', (t) => {
  const parsed = parseSpiffeId(`spiffe://${TD}/ap/ap1/ns/default/dc/dc1/svc/web`)!;
  const peer = {
    principal: `spiffe://${TD}/ap/ap1/ns/default/dc/dc1/svc/web`,
    trustDomain: parsed.trustDomain,
    partition: parsed.partition,
    namespace: parsed.namespace,
    service: parsed.service,
  };
  const allowWeb: Policy = {
    name: 'allow-web',
    action: 'allow',
    service: 'api',
    namespace: 'default',
    ports: [],
    from: [{ service: 'web', namespace: 'default', principal: undefined }],
  };
  t.true(authorize([allowWeb], 'deny', local('web'), 80, TD).allowed);
  const d = authorize([allowWeb], 'deny', peer, 80, TD);
  t.false(d.allowed);
  t.regex(d.reason, /admin partition ap1/);
  const byPrincipal: Policy = {
    ...allowWeb,
    name: 'allow-ap1-web',
    from: [{ service: undefined, namespace: undefined, principal: peer.principal }],
  };
  t.true(authorize([byPrincipal], 'deny', peer, 80, TD).allowed);
  // A deny of everyone covers it too: a deny is never narrower than it reads.
  const denyAll: Policy = { ...allowWeb, name: 'deny-all', action: 'deny', from: [] };
  t.false(authorize([denyAll], 'allow', peer, 80, TD).allowed);
  // The default partition named outright is the local one.
  t.true(authorize([allowWeb], 'deny', { ...local('web'), partition: 'default' }, 80, TD).allowed);
});
