import test from 'ava';
import {
  compileChain,
  explainRoutes,
  indexEntries,
  routeRequest,
  validateEntries,
} from '../../lib/l7/index.js';
import type { L7Request } from '../../lib/l7/index.js';

const W = 'test';
const set = (raw: unknown[]) => indexEntries(validateEntries(raw, W));
const req = (path: string, extra: Partial<L7Request> = {}): L7Request => ({
  method: 'GET',
  path,
  headers: {},
  sourceIp: '198.18.0.1',
  ...extra,
});
const http = (name: string) => ({ Kind: 'service-defaults', Name: name, Protocol: 'http' });
const resolver = {
  Kind: 'service-resolver',
  Name: 'api',
  Subsets: { v1: { Filter: 'Service.Meta.version == "v1"' }, v2: { Filter: 'Service.Meta.version == "v2"' } },
  DefaultSubset: 'v1',
};
const fixed = (x: number) => () => x;

test('protocol: service-defaults, else proxy-defaults, else tcp', (t) => {
  t.is(compileChain(set([]), 'api').Protocol, 'tcp');
  t.is(
    compileChain(set([{ Kind: 'proxy-defaults', Name: 'global', Config: { protocol: 'http2' } }]), 'api')
      .Protocol,
    'http2',
  );
  t.is(
    compileChain(
      set([
        { Kind: 'proxy-defaults', Name: 'global', Config: { protocol: 'http2' } },
        { Kind: 'service-defaults', Name: 'api', Protocol: 'grpc' },
      ]),
      'api',
    ).Protocol,
    'grpc',
  );
});

test('a default chain is one resolver node to the service itself', (t) => {
  const c = compileChain(set([]), 'api');
  t.true(c.Default);
  t.is(c.StartNode, 'resolver:api.default.default.dc1');
  t.deepEqual(Object.keys(c.Targets), ['api.default.default.dc1']);
  t.is(JSON.parse(JSON.stringify(c)).ServiceName, 'api');
  const r = routeRequest(c, req('/x'), fixed(0));
  t.like(r, {
    route: undefined,
    implicit: true,
    target: { service: 'api', subset: '' },
    ConnectTimeout: 5000,
  });
});

test('the router gets the implicit catch-all route to the service, and DefaultSubset applies', (t) => {
  const c = compileChain(
    set([
      http('api'),
      resolver,
      {
        Kind: 'service-router',
        Name: 'api',
        Routes: [{ Match: { HTTP: { PathPrefix: '/v2' } }, Destination: { ServiceSubset: 'v2' } }],
      },
    ]),
    'api',
  );
  const router = c.Nodes[c.StartNode]!;
  t.is(router.Type, 'router');
  if (router.Type !== 'router') return;
  t.is(router.Routes.length, 2);
  t.deepEqual(router.Routes[1]!.Definition.Match, { HTTP: { PathPrefix: '/' } });
  t.like(routeRequest(c, req('/v2/x'), fixed(0)), { route: 0, implicit: false, target: { subset: 'v2' } });
  t.like(routeRequest(c, req('/other'), fixed(0)), {
    route: 1,
    implicit: true,
    target: { subset: 'v1', id: 'v1.api.default.default.dc1' },
  });
});

test('a router on a tcp chain is ignored at compile', (t) => {
  const entries = indexEntries([{ Kind: 'service-router', Name: 'api', Routes: [] }]);
  t.is(compileChain(entries, 'api').StartNode, 'resolver:api.default.default.dc1');
});

const routed = (routes: unknown[]) =>
  compileChain(
    set([http('api'), resolver, http('b'), { Kind: 'service-router', Name: 'api', Routes: routes }]),
    'api',
  );

test('first matching route wins', (t) => {
  const c = routed([
    { Match: { HTTP: { PathPrefix: '/a' } }, Destination: { ServiceSubset: 'v2' } },
    { Match: { HTTP: { PathPrefix: '/a/b' } }, Destination: { Service: 'b' } },
  ]);
  t.like(routeRequest(c, req('/a/b/c'), fixed(0)), { route: 0, target: { service: 'api', subset: 'v2' } });
});

test('path exact, prefix, regex; query string ignored; case-insensitive for exact and prefix', (t) => {
  const c = routed([
    { Match: { HTTP: { PathExact: '/exact' } }, Destination: { Service: 'b' } },
    { Match: { HTTP: { PathPrefix: '/Pre', CaseInsensitive: true } }, Destination: { ServiceSubset: 'v2' } },
    { Match: { HTTP: { PathRegex: '/r/[0-9]+' } }, Destination: { Service: 'b' } },
  ]);
  t.is(routeRequest(c, req('/exact?x=1'), fixed(0)).route, 0);
  t.is(routeRequest(c, req('/exact/'), fixed(0)).route, 3);
  t.is(routeRequest(c, req('/pre/x'), fixed(0)).route, 1);
  t.is(routeRequest(c, req('/PRE'), fixed(0)).route, 1);
  t.is(routeRequest(c, req('/r/123'), fixed(0)).route, 2);
  t.is(routeRequest(c, req('/r/123/x'), fixed(0)).route, 3, 'regex matches the whole path');
  const cs = routed([{ Match: { HTTP: { PathPrefix: '/Pre' } }, Destination: { Service: 'b' } }]);
  t.is(routeRequest(cs, req('/pre'), fixed(0)).route, 1, 'case-sensitive by default');
});

test('header matches: present, exact, prefix, suffix, regex, inverted', (t) => {
  const c = routed([
    {
      Match: { HTTP: { Header: [{ Name: 'x-canary', Present: true }] } },
      Destination: { ServiceSubset: 'v2' },
    },
    {
      Match: { HTTP: { Header: [{ Name: 'x-user', Exact: 'alice' }] } },
      Destination: { ServiceSubset: 'v2' },
    },
    {
      Match: {
        HTTP: {
          Header: [
            { Name: 'x-user', Prefix: 'bo' },
            { Name: 'x-user', Suffix: 'b' },
          ],
        },
      },
      Destination: { ServiceSubset: 'v2' },
    },
    {
      Match: { HTTP: { Header: [{ Name: 'x-id', Regex: '[0-9]{3}' }] } },
      Destination: { ServiceSubset: 'v2' },
    },
    {
      Match: { HTTP: { Header: [{ Name: 'x-env', Exact: 'prod', Invert: true }] } },
      Destination: { Service: 'b' },
    },
  ]);
  const h = (headers: Record<string, string>) => routeRequest(c, req('/', { headers }), fixed(0)).route;
  t.is(h({ 'x-canary': '', 'x-env': 'prod' }), 0);
  t.is(h({ 'x-user': 'alice', 'x-env': 'prod' }), 1);
  t.is(h({ 'x-user': 'bob', 'x-env': 'prod' }), 2);
  t.is(h({ 'x-user': 'bot', 'x-env': 'prod' }), 5);
  t.is(h({ 'x-id': '123', 'x-env': 'prod' }), 3);
  t.is(h({ 'x-id': '1234', 'x-env': 'prod' }), 5);
  t.is(h({ 'x-env': 'dev' }), 4);
  t.is(h({}), 4, 'an inverted match holds when the header is absent');
});

test('query parameters and methods', (t) => {
  const c = routed([
    { Match: { HTTP: { QueryParam: [{ Name: 'debug', Present: true }] } }, Destination: { Service: 'b' } },
    { Match: { HTTP: { QueryParam: [{ Name: 'v', Exact: '2' }] } }, Destination: { ServiceSubset: 'v2' } },
    {
      Match: { HTTP: { QueryParam: [{ Name: 'id', Regex: '[a-f]+' }] } },
      Destination: { ServiceSubset: 'v2' },
    },
    { Match: { HTTP: { Methods: ['post', 'PUT'] } }, Destination: { Service: 'b' } },
  ]);
  t.is(routeRequest(c, req('/?debug'), fixed(0)).route, 0);
  t.is(routeRequest(c, req('/?a=1&v=2'), fixed(0)).route, 1);
  t.is(routeRequest(c, req('/?v=22'), fixed(0)).route, 4);
  t.is(routeRequest(c, req('/?id=abc'), fixed(0)).route, 2);
  t.is(routeRequest(c, req('/?id=abz'), fixed(0)).route, 4);
  t.is(routeRequest(c, req('/', { method: 'POST' }), fixed(0)).route, 3);
  t.is(routeRequest(c, req('/', { method: 'GET' }), fixed(0)).route, 4);
});

test('PrefixRewrite, header operations and timeouts pass through', (t) => {
  const c = routed([
    {
      Match: { HTTP: { PathPrefix: '/v2/' } },
      Destination: {
        ServiceSubset: 'v2',
        PrefixRewrite: '/',
        RequestTimeout: '2s',
        IdleTimeout: '10s',
        NumRetries: 3,
        RetryOn: ['5xx'],
        RetryOnStatusCodes: [503],
        RequestHeaders: { Add: { 'x-a': '1' }, Set: { 'x-s': '2' }, Remove: ['x-r'] },
        ResponseHeaders: { Set: { 'x-resp': 'y' } },
      },
    },
  ]);
  const r = routeRequest(c, req('/v2/items?q=1'), fixed(0));
  t.is(r.path, '/items?q=1');
  t.deepEqual(r.requestHeaders, [
    { op: 'remove', name: 'x-r' },
    { op: 'add', name: 'x-a', value: '1' },
    { op: 'set', name: 'x-s', value: '2' },
  ]);
  t.deepEqual(r.responseHeaders, [{ op: 'set', name: 'x-resp', value: 'y' }]);
  t.like(r, {
    RequestTimeout: 2000,
    IdleTimeout: 10_000,
    NumRetries: 3,
    RetryOn: ['5xx'],
    RetryOnStatusCodes: [503],
  });
});

const split = (extra: unknown[] = []) =>
  compileChain(
    set([
      http('api'),
      resolver,
      {
        Kind: 'service-splitter',
        Name: 'api',
        Splits: [
          { Weight: 90, ServiceSubset: 'v1', RequestHeaders: { Set: { 'x-leg': 'v1' } } },
          { Weight: 10, ServiceSubset: 'v2', RequestHeaders: { Set: { 'x-leg': 'v2' } } },
        ],
      },
      ...extra,
    ]),
    'api',
  );

test('split distribution follows the weights, 0.01 steps, deterministic random', (t) => {
  const c = split();
  const counts = [0, 0];
  for (let i = 0; i < 10_000; i++) counts[routeRequest(c, req('/'), fixed(i / 10_000)).split!.index]!++;
  t.deepEqual(counts, [9000, 1000]);
  t.is(routeRequest(c, req('/'), fixed(0.8999)).target.subset, 'v1');
  t.is(routeRequest(c, req('/'), fixed(0.9)).target.subset, 'v2');
  t.is(routeRequest(c, req('/'), fixed(0.99999)).target.subset, 'v2');
});

test('router headers apply after the split leg (Envoy: most specific first)', (t) => {
  const c = split([
    {
      Kind: 'service-router',
      Name: 'api',
      Routes: [
        {
          Match: { HTTP: { PathPrefix: '/' } },
          Destination: { RequestHeaders: { Set: { 'x-leg': 'router' } } },
        },
      ],
    },
  ]);
  const r = routeRequest(c, req('/'), fixed(0.95));
  t.deepEqual(r.requestHeaders, [
    { op: 'set', name: 'x-leg', value: 'v2' },
    { op: 'set', name: 'x-leg', value: 'router' },
  ]);
  t.deepEqual(r.split, { index: 1, weight: 10 });
});

test('a split to another service with its own splitter is flattened', (t) => {
  const c = compileChain(
    set([
      http('api'),
      http('b'),
      { Kind: 'service-resolver', Name: 'b', Subsets: { x: {}, y: {} } },
      {
        Kind: 'service-splitter',
        Name: 'api',
        Splits: [{ Weight: 50 }, { Weight: 50, Service: 'b', RequestHeaders: { Set: { p: '1' } } }],
      },
      {
        Kind: 'service-splitter',
        Name: 'b',
        Splits: [
          { Weight: 50, ServiceSubset: 'x', RequestHeaders: { Set: { c: '1' } } },
          { Weight: 50, ServiceSubset: 'y' },
        ],
      },
    ]),
    'api',
  );
  const s = c.Nodes[c.StartNode]!;
  if (s.Type !== 'splitter') return t.fail();
  t.deepEqual(
    s.Splits.map((x) => [x.Weight, x.NextNode]),
    [
      [50, 'resolver:api.default.default.dc1'],
      [25, 'resolver:x.b.default.default.dc1'],
      [25, 'resolver:y.b.default.default.dc1'],
    ],
  );
  t.deepEqual(s.Splits[1]!.Definition.RequestHeaders, { Set: { p: '1', c: '1' } });
});

test('redirect is followed, once, with the target service default subset', (t) => {
  const c = compileChain(
    set([
      { Kind: 'service-resolver', Name: 'api', Redirect: { Service: 'api2' } },
      { Kind: 'service-resolver', Name: 'api2', DefaultSubset: 'v3', Subsets: { v3: {} } },
      {
        Kind: 'service-resolver',
        Name: 'self',
        Redirect: { Service: 'self', ServiceSubset: 'a' },
        Subsets: { a: {} },
      },
    ]),
    'api',
  );
  t.is(c.StartNode, 'resolver:v3.api2.default.default.dc1');
  const s = compileChain(
    indexEntries(
      validateEntries(
        [
          {
            Kind: 'service-resolver',
            Name: 'self',
            Redirect: { Service: 'self', ServiceSubset: 'a' },
            Subsets: { a: {} },
          },
        ],
        W,
      ),
    ),
    'self',
  );
  t.is(s.StartNode, 'resolver:a.self.default.default.dc1');
});

test('failover targets: by subset, by "*", by Targets, primary excluded', (t) => {
  const c = compileChain(
    set([
      {
        Kind: 'service-resolver',
        Name: 'api',
        DefaultSubset: 'v1',
        Subsets: { v1: {}, v2: {} },
        Failover: {
          v1: { ServiceSubset: 'v2' },
          '*': {
            Targets: [
              { Service: 'api', ServiceSubset: 'v1' },
              { Service: 'backup' },
              { Service: 'api', Datacenter: 'dc2' },
            ],
          },
        },
      },
    ]),
    'api',
  );
  const n = c.Nodes['resolver:v1.api.default.default.dc1']!;
  if (n.Type !== 'resolver') return t.fail();
  t.deepEqual(n.Resolver.Failover, { Targets: ['v2.api.default.default.dc1'] });
  const c2 = compileChain(
    set([
      {
        Kind: 'service-resolver',
        Name: 'api',
        Failover: { '*': { Targets: [{ Service: 'api' }, { Service: 'backup' }, { Datacenter: 'dc2' }] } },
      },
    ]),
    'api',
  );
  const n2 = c2.Nodes[c2.StartNode]!;
  if (n2.Type !== 'resolver') return t.fail();
  t.deepEqual(n2.Resolver.Failover, { Targets: ['backup.default.default.dc1', 'api.default.default.dc2'] });
});

test('explainRoutes says why each earlier route did not match', (t) => {
  const c = routed([
    { Match: { HTTP: { PathPrefix: '/v2' } }, Destination: { ServiceSubset: 'v2' } },
    { Match: { HTTP: { PathPrefix: '/', Methods: ['POST'] } }, Destination: { Service: 'b' } },
    {
      Match: { HTTP: { Header: [{ Name: 'x-canary', Present: true }] } },
      Destination: { ServiceSubset: 'v2' },
    },
  ]);
  t.deepEqual(explainRoutes(c, req('/x')), [
    { index: 0, matched: false, reason: 'path "/x" does not match PathPrefix "/v2"' },
    { index: 1, matched: false, reason: 'method GET is not one of POST' },
    { index: 2, matched: false, reason: 'Header[0] (x-canary) does not match' },
    { index: 3, matched: true, reason: 'the catch-all route to the service itself' },
  ]);
  t.deepEqual(explainRoutes(c, req('/v2')), [{ index: 0, matched: true, reason: 'matched' }]);
});

test('a compiled chain survives JSON unchanged (config_dump prints it)', (t) => {
  const c = split([
    {
      Kind: 'service-router',
      Name: 'api',
      Routes: [
        { Match: { HTTP: { PathPrefix: '/a' } }, Destination: { ServiceSubset: 'v2', RequestTimeout: '1s' } },
      ],
    },
  ]);
  t.deepEqual(JSON.parse(JSON.stringify(c)), c);
  t.is(c.StartNode, 'router:api.default.default');
  t.deepEqual(Object.keys(c.Targets).sort(), ['v1.api.default.default.dc1', 'v2.api.default.default.dc1']);
});

test('flattened splits merge headers as Consul MergeParent: request child wins, response parent wins', (t) => {
  const c = compileChain(
    set([
      http('api'),
      http('b'),
      {
        Kind: 'service-splitter',
        Name: 'api',
        Splits: [
          {
            Weight: 100,
            Service: 'b',
            RequestHeaders: { Set: { k: 'parent' }, Remove: ['r1'] },
            ResponseHeaders: { Set: { k: 'parent' } },
          },
        ],
      },
      {
        Kind: 'service-splitter',
        Name: 'b',
        Splits: [
          {
            Weight: 100,
            RequestHeaders: { Set: { k: 'child' }, Remove: ['r1', 'r2'] },
            ResponseHeaders: { Set: { k: 'child' } },
          },
        ],
      },
    ]),
    'api',
  );
  const s = c.Nodes[c.StartNode]!;
  if (s.Type !== 'splitter') return t.fail();
  t.deepEqual(s.Splits[0]!.Definition.RequestHeaders, { Set: { k: 'child' }, Remove: ['r1', 'r2'] });
  t.deepEqual(s.Splits[0]!.Definition.ResponseHeaders, { Set: { k: 'parent' } });
  t.is(s.Splits[0]!.NextNode, 'resolver:b.default.default.dc1');
});

test('a redirect to another service drops the subset asked for, as Consul rewriteTarget does', (t) => {
  const c = compileChain(
    set([
      { Kind: 'service-resolver', Name: 'old', Redirect: { Service: 'new' } },
      { Kind: 'service-resolver', Name: 'new', DefaultSubset: 'v1', Subsets: { v1: {} } },
      http('api'),
      http('old'),
      http('new'),
      {
        Kind: 'service-router',
        Name: 'api',
        Routes: [{ Destination: { Service: 'old', ServiceSubset: 'v9' } }],
      },
    ]),
    'api',
  );
  t.like(routeRequest(c, req('/'), fixed(0)), { route: 0, target: { service: 'new', subset: 'v1' } });
});

test('validateEntries wants a list', (t) => {
  t.throws(() => validateEntries({} as unknown as unknown[], W), { message: /must be a list/ });
});
