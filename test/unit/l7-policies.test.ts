// The pure lookups the waypoint's router and `ambit route explain` share (lib/l7): which RequestTimeout a
// route has and where it is set, whether a fault's header gate lets a request in, and which fault and
// mirror a route meets (its own `ambit-*-<i>` key, else the router's) and where a mirror's copies go.
import test from 'ava';
import { drawFault, faultHeaderMatches, routeFault } from '../../lib/l7/fault.js';
import {
  type ResolverNode,
  compileChain,
  indexEntries,
  requestTimeoutOf,
  routeRequest,
  validateEntries,
} from '../../lib/l7/index.js';
import { mirrorTarget, routeMirror } from '../../lib/l7/mirror.js';

const entries = (extra: unknown[] = []) =>
  indexEntries(
    validateEntries(
      [
        { Kind: 'service-defaults', Name: 'api', Protocol: 'http' },
        { Kind: 'service-defaults', Name: 'shadow', Protocol: 'http' },
        {
          Kind: 'service-router',
          Name: 'api',
          Meta: {
            'ambit-fault': JSON.stringify({ Abort: { HTTPStatus: 503 } }),
            'ambit-fault-1': JSON.stringify({
              Header: { Name: 'X-Fault', Exact: 'on' },
              Delay: { Fixed: '1s' },
            }),
            'ambit-mirror-0': JSON.stringify({ Service: 'shadow', ServiceSubset: 'v2', Percent: 5 }),
          },
          Routes: [
            { Match: { HTTP: { PathPrefix: '/a' } }, Destination: { RequestTimeout: '2s' } },
            { Match: { HTTP: { PathPrefix: '/b' } } },
          ],
        },
        { Kind: 'service-resolver', Name: 'api', RequestTimeout: '20s' },
        ...extra,
      ],
      'unit',
    ),
  );

test('requestTimeoutOf: the route destination first, then the resolver, else none', (t) => {
  const set = entries();
  const chain = compileChain(set, 'api');
  const resolver = (chain.Nodes['resolver:api.default.default.dc1'] as ResolverNode).Resolver;
  t.deepEqual(requestTimeoutOf({ RequestTimeout: 2000 }, resolver), { ms: 2000, from: 'route' });
  t.deepEqual(requestTimeoutOf({}, resolver), { ms: 20_000, from: 'resolver' });
  t.deepEqual(requestTimeoutOf(undefined, resolver), { ms: 20_000, from: 'resolver' });
  t.is(requestTimeoutOf(undefined, { ...resolver, RequestTimeout: undefined }), undefined);
  // routeRequest passes on the same choice.
  const req = (path: string) => ({ method: 'GET', path, headers: {}, sourceIp: '' });
  t.is(routeRequest(chain, req('/a/x'), () => 0).RequestTimeout, 2000);
  t.is(routeRequest(chain, req('/b/x'), () => 0).RequestTimeout, 20_000);
});

test('routeFault: the route its own key, the others and the catch-all the router-wide one', (t) => {
  const set = entries();
  const chain = compileChain(set, 'api');
  t.like(routeFault(set, chain, 0, false), { key: 'ambit-fault', policy: { abort: { http: 503 } } });
  t.like(routeFault(set, chain, 1, false), { key: 'ambit-fault-1', policy: { delay: { ms: 1000 } } });
  t.like(routeFault(set, chain, 2, true), { key: 'ambit-fault' });
  // No router (no route index), or a router without fault keys: none.
  t.is(routeFault(set, chain, undefined, true), undefined);
  const plain = entries([{ Kind: 'service-defaults', Name: 'web', Protocol: 'http' }]);
  t.is(routeFault(plain, compileChain(plain, 'web'), undefined, true), undefined);
});

test('faultHeaderMatches: the gate drawFault applies, by lower-case name and exact value', (t) => {
  const set = entries();
  const policy = routeFault(set, compileChain(set, 'api'), 1, false)!.policy;
  t.true(faultHeaderMatches(policy, { 'x-fault': 'on' }));
  t.false(faultHeaderMatches(policy, { 'x-fault': 'On' }));
  t.false(faultHeaderMatches(policy, {}));
  // A policy without Header lets every request in.
  t.true(faultHeaderMatches(routeFault(set, compileChain(set, 'api'), 0, false)!.policy, {}));
  // drawFault agrees: a request the gate keeps out meets nothing, one it lets in meets the delay.
  t.is(
    drawFault(policy, { 'x-fault': 'off' }, () => 0),
    undefined,
  );
  t.deepEqual(
    drawFault(policy, { 'x-fault': 'on' }, () => 0),
    { delayMs: 1000 },
  );
});

test('routeMirror and mirrorTarget: the route its own mirror; the copy target by subset, else refused', (t) => {
  const set = entries([
    {
      Kind: 'service-resolver',
      Name: 'shadow',
      DefaultSubset: 'v1',
      Subsets: { v1: { Filter: 'Service.Meta.version == v1' }, v2: { Filter: 'Service.Meta.version == v2' } },
    },
  ]);
  const chain = compileChain(set, 'api');
  const m = routeMirror(set, chain, 0, false);
  t.like(m, { key: 'ambit-mirror-0', policy: { service: 'shadow', subset: 'v2', percent: 5 } });
  t.is(routeMirror(set, chain, 1, false), undefined);
  t.is(routeMirror(set, chain, 2, true), undefined);
  const to = mirrorTarget(set, m!.policy, 'default', 'dc1');
  t.is(to.target?.ID, 'v2.shadow.default.default.dc1');
  t.is(to.target?.Subset.Filter, 'Service.Meta.version == v2');
  // No subset named: the resolver's DefaultSubset, as a route Destination's.
  t.is(
    mirrorTarget(set, { ...m!.policy, subset: '' }, 'default', 'dc1').target?.ID,
    'v1.shadow.default.default.dc1',
  );
  t.deepEqual(mirrorTarget(set, { ...m!.policy, subset: 'v9' }, 'default', 'dc1'), {
    service: { name: 'shadow', namespace: 'default' },
    why: 'service-resolver/shadow has no subset v9',
  });
});
