import test from 'ava';
import { L7ConfigError, validateEntries, validateEntry } from '../../lib/l7/index.js';

const W = 'mesh.yaml';
const http = (name: string) => ({ Kind: 'service-defaults', Name: name, Protocol: 'http' });
const resolver = {
  Kind: 'service-resolver',
  Name: 'api',
  Subsets: { v1: { Filter: 'Service.Meta.version == "v1"' }, v2: { Filter: 'Service.Meta.version == "v2"' } },
};

function refused(
  t: import('ava').ExecutionContext,
  raw: unknown[],
  entry: string,
  field: string,
  reason?: RegExp,
) {
  const e = t.throws(() => validateEntries(raw, W), { instanceOf: L7ConfigError }) as L7ConfigError;
  t.is(e.code, 'AMBIT_L7_CONFIG_INVALID');
  t.is(e.entry, entry);
  t.is(e.field, field);
  if (reason) t.regex(e.reason, reason);
  t.true(e.message.startsWith(`${W}: `));
}

test('a valid router, splitter and resolver pass and keep Consul field names', (t) => {
  const out = validateEntries(
    [
      http('api'),
      resolver,
      {
        Kind: 'service-router',
        Name: 'api',
        Routes: [
          {
            Match: { HTTP: { PathPrefix: '/v2', Methods: ['get', 'post'] } },
            Destination: { ServiceSubset: 'v2', RequestTimeout: '1.5s' },
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
    ],
    W,
  );
  const router = out[2]!;
  t.is(router.Kind, 'service-router');
  if (router.Kind !== 'service-router') return;
  t.deepEqual(router.Routes[0]!.Match!.HTTP!.Methods, ['GET', 'POST']);
  t.is(router.Routes[0]!.Destination!.RequestTimeout, 1500);
});

test('Kind and Name are required; an unknown Kind is refused', (t) => {
  t.throws(() => validateEntry({ Name: 'x' }, W), { message: /Kind: is required/ });
  t.throws(() => validateEntry({ Kind: 'service-router' }, W), { message: /Name: is required/ });
  t.throws(() => validateEntry({ Kind: 'mesh-thing', Name: 'x' }, W), {
    message: /invalid config entry kind "mesh-thing"/,
  });
  t.throws(() => validateEntry('nope', W), { message: /must be an object/ });
});

test('unknown keys are refused at every level, named by path', (t) => {
  refused(t, [{ Kind: 'service-defaults', Name: 'api', Protocl: 'http' }], 'service-defaults/api', 'Protocl');
  refused(
    t,
    [
      http('api'),
      { Kind: 'service-router', Name: 'api', Routes: [{ Match: { HTTP: { PathPrefx: '/x' } } }] },
    ],
    'service-router/api',
    'Routes[0].Match.HTTP.PathPrefx',
  );
  refused(
    t,
    [
      http('api'),
      {
        Kind: 'service-router',
        Name: 'api',
        Routes: [{}, { Destination: { Service: 'api', Timeout: '1s' } }],
      },
    ],
    'service-router/api',
    'Routes[1].Destination.Timeout',
  );
  refused(
    t,
    [
      {
        Kind: 'service-resolver',
        Name: 'api',
        LoadBalancer: { Policy: 'maglev', HashPolicies: [{ Field: 'header', FieldValue: 'x', Bogus: 1 }] },
      },
    ],
    'service-resolver/api',
    'LoadBalancer.HashPolicies[0].Bogus',
  );
  refused(
    t,
    [{ Kind: 'service-defaults', Name: 'api', UpstreamConfig: { Defaults: { Limits: { MaxConn: 1 } } } }],
    'service-defaults/api',
    'UpstreamConfig.Defaults.Limits.MaxConn',
  );
});

test('fields Consul knows but the waypoint ignores are kept', (t) => {
  const e = validateEntry(
    { Kind: 'service-defaults', Name: 'api', Protocol: 'HTTP', MutualTLSMode: 'strict', CreateIndex: 5 },
    W,
  );
  t.is(e.Kind, 'service-defaults');
  t.is((e as { Protocol?: string }).Protocol, 'http');
  t.is((e as { MutualTLSMode?: unknown }).MutualTLSMode, 'strict');
});

test('a router or splitter on a tcp service is refused', (t) => {
  refused(
    t,
    [{ Kind: 'service-router', Name: 'api', Routes: [] }],
    'service-router/api',
    '',
    /discovery chain "api" uses a protocol "tcp" that does not permit advanced routing/,
  );
  refused(
    t,
    [
      { Kind: 'service-defaults', Name: 'api', Protocol: 'tcp' },
      { Kind: 'service-splitter', Name: 'api', Splits: [{ Weight: 100 }] },
    ],
    'service-splitter/api',
    '',
    /protocol "tcp"/,
  );
  // proxy-defaults' protocol counts when the service sets none
  t.notThrows(() =>
    validateEntries(
      [
        { Kind: 'proxy-defaults', Name: 'global', Config: { protocol: 'http' } },
        { Kind: 'service-router', Name: 'api', Routes: [] },
      ],
      W,
    ),
  );
  refused(
    t,
    [http('api'), { Kind: 'service-router', Name: 'api', Routes: [{ Destination: { Service: 'db' } }] }],
    'service-router/api',
    'Routes[0].Destination.Service',
    /chain "db" uses a protocol "tcp"/,
  );
});

test('splitter weights: rounded to 0.01, summing to 100, none negative, no destination twice', (t) => {
  refused(
    t,
    [
      http('api'),
      { Kind: 'service-splitter', Name: 'api', Splits: [{ Weight: 90 }, { Weight: 9.99, Service: 'b' }] },
    ],
    'service-splitter/api',
    'Splits',
    /must be 100, not 99.99/,
  );
  refused(
    t,
    [
      http('api'),
      {
        Kind: 'service-splitter',
        Name: 'api',
        Splits: [{ Weight: 33.333 }, { Weight: 33.333, Service: 'b' }, { Weight: 33.333, Service: 'c' }],
      },
    ],
    'service-splitter/api',
    'Splits',
    /99.99/,
  );
  refused(
    t,
    [http('api'), { Kind: 'service-splitter', Name: 'api', Splits: [] }],
    'service-splitter/api',
    'Splits',
    /no splits/,
  );
  refused(
    t,
    [
      http('api'),
      { Kind: 'service-splitter', Name: 'api', Splits: [{ Weight: 110 }, { Weight: -10, Service: 'b' }] },
    ],
    'service-splitter/api',
    'Splits[0].Weight',
  );
  refused(
    t,
    [
      http('api'),
      { Kind: 'service-splitter', Name: 'api', Splits: [{ Weight: 50 }, { Weight: 50, Service: 'api' }] },
    ],
    'service-splitter/api',
    'Splits[1]',
    /more than once/,
  );
  const ok = validateEntries(
    [
      http('api'),
      http('b'),
      { Kind: 'service-splitter', Name: 'api', Splits: [{ Weight: 99.99 }, { Weight: 0.01, Service: 'b' }] },
    ],
    W,
  );
  t.is(ok.length, 3);
});

test('a route or split naming a subset the resolver lacks is refused', (t) => {
  refused(
    t,
    [
      http('api'),
      { Kind: 'service-router', Name: 'api', Routes: [{}, { Destination: { ServiceSubset: 'v3' } }] },
    ],
    'service-router/api',
    'Routes[1].Destination.ServiceSubset',
    /no subset named "v3"|does not have a subset/,
  );
  refused(
    t,
    [
      http('api'),
      resolver,
      {
        Kind: 'service-splitter',
        Name: 'api',
        Splits: [
          { Weight: 50, ServiceSubset: 'v1' },
          { Weight: 50, ServiceSubset: 'v9' },
        ],
      },
    ],
    'service-splitter/api',
    'Splits[1].ServiceSubset',
  );
  refused(
    t,
    [{ Kind: 'service-resolver', Name: 'api', DefaultSubset: 'v9' }],
    'service-resolver/api',
    'DefaultSubset',
  );
  refused(
    t,
    [{ Kind: 'service-resolver', Name: 'api', Failover: { v9: { Service: 'b' } } }],
    'service-resolver/api',
    'Failover["v9"]',
  );
  refused(
    t,
    [{ Kind: 'service-resolver', Name: 'api', Redirect: { Service: 'b', ServiceSubset: 'x' } }],
    'service-resolver/api',
    'Redirect.ServiceSubset',
  );
});

test('router match rules as Consul writes them', (t) => {
  const router = (route: unknown) => [http('api'), { Kind: 'service-router', Name: 'api', Routes: [route] }];
  refused(
    t,
    router({ Match: { HTTP: { PathExact: '/a', PathPrefix: '/b' } } }),
    'service-router/api',
    'Routes[0].Match.HTTP',
    /at most one of/,
  );
  refused(
    t,
    router({ Match: { HTTP: { PathPrefix: 'x' } } }),
    'service-router/api',
    'Routes[0].Match.HTTP.PathPrefix',
    /start with/,
  );
  refused(
    t,
    router({ Match: { HTTP: { PathRegex: '(?=x)' } } }),
    'service-router/api',
    'Routes[0].Match.HTTP.PathRegex',
    /lookaround/,
  );
  refused(
    t,
    router({ Match: { HTTP: { PathRegex: '([a-z' } } }),
    'service-router/api',
    'Routes[0].Match.HTTP.PathRegex',
    /invalid regular expression/,
  );
  refused(
    t,
    router({ Match: { HTTP: { Header: [{ Name: 'x', Exact: 'a', Prefix: 'b' }] } } }),
    'service-router/api',
    'Routes[0].Match.HTTP.Header[0]',
    /only contain one of/,
  );
  refused(
    t,
    router({ Match: { HTTP: { Header: [{ Exact: 'a' }] } } }),
    'service-router/api',
    'Routes[0].Match.HTTP.Header[0].Name',
  );
  refused(
    t,
    router({ Match: { HTTP: { QueryParam: [{ Name: 'q' }] } } }),
    'service-router/api',
    'Routes[0].Match.HTTP.QueryParam[0]',
  );
  refused(
    t,
    router({ Match: { HTTP: { Methods: ['GET', 'get'] } } }),
    'service-router/api',
    'Routes[0].Match.HTTP.Methods[1]',
    /more than once/,
  );
  refused(
    t,
    router({ Match: { HTTP: { Methods: ['FETCH'] } } }),
    'service-router/api',
    'Routes[0].Match.HTTP.Methods[0]',
    /invalid method/,
  );
  refused(
    t,
    router({ Match: { HTTP: { PathRegex: '/x.*' } }, Destination: { PrefixRewrite: '/' } }),
    'service-router/api',
    'Routes[0].Destination.PrefixRewrite',
  );
  refused(
    t,
    router({ Destination: { RetryOn: ['5xx', 'sometimes'] } }),
    'service-router/api',
    'Routes[0].Destination.RetryOn[1]',
  );
  refused(
    t,
    router({ Destination: { RequestTimeout: '5 seconds' } }),
    'service-router/api',
    'Routes[0].Destination.RequestTimeout',
    /unknown unit|invalid duration/,
  );
  // Consul decodes RetryOnStatusCodes as []uint32: what that refuses is refused, nothing more.
  refused(
    t,
    router({ Destination: { RetryOnStatusCodes: [503, -1] } }),
    'service-router/api',
    'Routes[0].Destination.RetryOnStatusCodes[1]',
  );
  refused(
    t,
    router({ Destination: { RetryOnStatusCodes: [1.5] } }),
    'service-router/api',
    'Routes[0].Destination.RetryOnStatusCodes[0]',
  );
  refused(
    t,
    router({ Destination: { NumRetries: -1 } }),
    'service-router/api',
    'Routes[0].Destination.NumRetries',
  );
  const odd = validateEntries(router({ Destination: { RetryOnStatusCodes: [42], NumRetries: 0 } }), W)[1]!;
  t.deepEqual(odd.Kind === 'service-router' && odd.Routes[0]!.Destination, {
    RetryOnStatusCodes: [42],
    NumRetries: 0,
  });
});

test('durations: Go strings everywhere, integer nanoseconds for PassiveHealthCheck', (t) => {
  const e = validateEntry(
    {
      Kind: 'service-defaults',
      Name: 'api',
      UpstreamConfig: {
        Defaults: {
          PassiveHealthCheck: { Interval: 10_000_000_000, BaseEjectionTime: '30s', MaxEjectionPercent: 50 },
        },
      },
    },
    W,
  );
  const phc = (e as { UpstreamConfig?: { Defaults?: { PassiveHealthCheck?: Record<string, number> } } })
    .UpstreamConfig!.Defaults!.PassiveHealthCheck!;
  t.is(phc.Interval, 10_000);
  t.is(phc.BaseEjectionTime, 30_000);
  t.throws(
    () =>
      validateEntry(
        {
          Kind: 'service-defaults',
          Name: 'api',
          UpstreamConfig: { Defaults: { PassiveHealthCheck: { MaxEjectionPercent: 101 } } },
        },
        W,
      ),
    { message: /MaxEjectionPercent: must be a percentage/ },
  );
  const r = validateEntry(
    { Kind: 'service-resolver', Name: 'api', ConnectTimeout: '1m30s', RequestTimeout: '250ms' },
    W,
  );
  t.like(r, { ConnectTimeout: 90_000, RequestTimeout: 250 });
  t.throws(() => validateEntry({ Kind: 'service-resolver', Name: 'api', ConnectTimeout: '-1s' }, W), {
    message: /ConnectTimeout: must be >= 0/,
  });
});

test('resolver rules: subset names, filters, redirect, failover, load balancer', (t) => {
  t.throws(() => validateEntry({ Kind: 'service-resolver', Name: 'a', Subsets: { V1: {} } }, W), {
    message: /Subsets\["V1"\]/,
  });
  const bad = t.throws(() =>
    validateEntry(
      { Kind: 'service-resolver', Name: 'a', Subsets: { v1: { Filter: 'Service.Meta.version = "v1"' } } },
      W,
    ),
  ) as L7ConfigError;
  t.is(bad.field, 'Subsets["v1"].Filter');
  t.throws(
    () =>
      validateEntry(
        {
          Kind: 'service-resolver',
          Name: 'a',
          Redirect: { Service: 'b' },
          Failover: { '*': { Service: 'c' } },
        },
        W,
      ),
    { message: /Redirect and Failover cannot both be set/ },
  );
  t.throws(() => validateEntry({ Kind: 'service-resolver', Name: 'a', Redirect: {} }, W), {
    message: /Redirect is empty/,
  });
  t.throws(
    () => validateEntry({ Kind: 'service-resolver', Name: 'a', Redirect: { ServiceSubset: 'x' } }, W),
    { message: /defined without Redirect.Service/ },
  );
  t.throws(() => validateEntry({ Kind: 'service-resolver', Name: 'a', Failover: { '*': {} } }, W), {
    message: /one of Service, ServiceSubset/,
  });
  t.throws(
    () =>
      validateEntry(
        {
          Kind: 'service-resolver',
          Name: 'a',
          Failover: { '*': { Service: 'b', Targets: [{ Service: 'c' }] } },
        },
        W,
      ),
    { message: /Targets cannot be set with Service/ },
  );
  t.throws(
    () => validateEntry({ Kind: 'service-resolver', Name: 'a', LoadBalancer: { Policy: 'fastest' } }, W),
    { message: /"fastest" is not supported/ },
  );
  t.throws(
    () =>
      validateEntry(
        {
          Kind: 'service-resolver',
          Name: 'a',
          LoadBalancer: { Policy: 'random', HashPolicies: [{ SourceIP: true }] },
        },
        W,
      ),
    { message: /non-hash-based/ },
  );
  t.throws(
    () =>
      validateEntry(
        { Kind: 'service-resolver', Name: 'a', LoadBalancer: { Policy: 'maglev', RingHashConfig: {} } },
        W,
      ),
    { message: /RingHashConfig/ },
  );
  t.throws(
    () =>
      validateEntry(
        {
          Kind: 'service-resolver',
          Name: 'a',
          LoadBalancer: {
            Policy: 'maglev',
            HashPolicies: [{ SourceIP: true, Field: 'header', FieldValue: 'x' }],
          },
        },
        W,
      ),
    { message: /both a source address/ },
  );
  t.throws(
    () =>
      validateEntry(
        {
          Kind: 'service-resolver',
          Name: 'a',
          LoadBalancer: { Policy: 'maglev', HashPolicies: [{ Field: 'header' }] },
        },
        W,
      ),
    { message: /without a FieldValue/ },
  );
  t.throws(
    () =>
      validateEntry(
        {
          Kind: 'service-resolver',
          Name: 'a',
          LoadBalancer: {
            Policy: 'ring_hash',
            HashPolicies: [{ Field: 'cookie', FieldValue: 'c', CookieConfig: { Session: true, TTL: '1s' } }],
          },
        },
        W,
      ),
    { message: /session cookie/ },
  );
});

test('graph rules: redirect loops and inconsistent protocols are refused', (t) => {
  refused(
    t,
    [
      { Kind: 'service-resolver', Name: 'a', Redirect: { Service: 'b' } },
      { Kind: 'service-resolver', Name: 'b', Redirect: { Service: 'a' } },
    ],
    'service-resolver/a',
    'Redirect',
    /circular/,
  );
  refused(
    t,
    [
      http('a'),
      { Kind: 'service-splitter', Name: 'a', Splits: [{ Weight: 100, Service: 'b' }] },
      http('b'),
      { Kind: 'service-splitter', Name: 'b', Splits: [{ Weight: 100, Service: 'a' }] },
    ],
    'service-splitter/a',
    'Splits',
    /circular/,
  );
  refused(
    t,
    [
      { Kind: 'service-defaults', Name: 'a', Protocol: 'http' },
      { Kind: 'service-defaults', Name: 'b', Protocol: 'grpc' },
      { Kind: 'service-resolver', Name: 'a', Redirect: { Service: 'b' } },
    ],
    'service-defaults/b',
    'Protocol',
    /inconsistent protocols/,
  );
  refused(t, [http('a'), http('a')], 'service-defaults/a', '', /more than once/);
  refused(t, [{ Kind: 'proxy-defaults', Name: 'api' }], 'proxy-defaults/api', 'Name', /only "global"/);
});

test('intentions: Action and Permissions exclusive, permission rules, L7 only on http', (t) => {
  const ix = (sources: unknown[]) => [
    http('api'),
    { Kind: 'service-intentions', Name: 'api', Sources: sources },
  ];
  refused(
    t,
    ix([{ Name: 'web', Action: 'allow', Permissions: [{ Action: 'allow', HTTP: { PathPrefix: '/' } }] }]),
    'service-intentions/api',
    'Sources[0].Action',
    /omitted if Permissions/,
  );
  refused(t, ix([{ Name: 'web' }]), 'service-intentions/api', 'Sources[0].Action');
  refused(t, ix([{ Action: 'allow' }]), 'service-intentions/api', 'Sources[0].Name');
  refused(
    t,
    ix([{ Name: 'web', Permissions: [{ Action: 'maybe', HTTP: { PathPrefix: '/' } }] }]),
    'service-intentions/api',
    'Sources[0].Permissions[0].Action',
  );
  refused(
    t,
    ix([{ Name: 'web', Permissions: [{ Action: 'allow' }] }]),
    'service-intentions/api',
    'Sources[0].Permissions[0].HTTP',
    /required/,
  );
  refused(
    t,
    ix([{ Name: 'web', Permissions: [{ Action: 'allow', HTTP: {} }] }]),
    'service-intentions/api',
    'Sources[0].Permissions[0].HTTP',
    /not be empty/,
  );
  refused(
    t,
    ix([{ Name: 'web', Permissions: [{ Action: 'allow', HTTP: { Header: [{ Name: 'x' }] } }] }]),
    'service-intentions/api',
    'Sources[0].Permissions[0].HTTP.Header[0]',
  );
  refused(
    t,
    ix([
      { Name: 'web', Action: 'allow' },
      { Name: 'web', Action: 'deny' },
    ]),
    'service-intentions/api',
    'Sources[1]',
    /more than once/,
  );
  refused(
    t,
    ix([{ Name: 'web', Namespace: '*', Action: 'allow' }]),
    'service-intentions/api',
    'Sources[0].Name',
    /wildcard namespace/,
  );
  refused(
    t,
    [
      {
        Kind: 'service-intentions',
        Name: 'db',
        Sources: [{ Name: 'web', Permissions: [{ Action: 'allow', HTTP: { PathPrefix: '/' } }] }],
      },
    ],
    'service-intentions/db',
    'Sources[0].Permissions',
    /protocol "tcp"/,
  );
  t.notThrows(() =>
    validateEntries(
      [{ Kind: 'service-intentions', Name: 'db', Sources: [{ Name: 'web', Action: 'allow' }] }],
      W,
    ),
  );
});

test('service-defaults for issue 16: limits, rate limits', (t) => {
  const e = validateEntry(
    {
      Kind: 'service-defaults',
      Name: 'api',
      Protocol: 'http',
      UpstreamConfig: {
        Defaults: { Limits: { MaxConcurrentRequests: 10 } },
        Overrides: [{ Name: 'db', Limits: { MaxConnections: 5 } }],
      },
      RateLimits: {
        InstanceLevel: { RequestsPerSecond: 100, Routes: [{ PathPrefix: '/x', RequestsPerSecond: 5 }] },
      },
    },
    W,
  );
  t.like(e, {
    UpstreamConfig: { Defaults: { Limits: { MaxConcurrentRequests: 10 } } },
    RateLimits: { InstanceLevel: { RequestsPerSecond: 100 } },
  });
  t.throws(
    () =>
      validateEntry(
        {
          Kind: 'service-defaults',
          Name: 'api',
          RateLimits: { InstanceLevel: { Routes: [{ RequestsPerSecond: 5 }] } },
        },
        W,
      ),
    { message: /exactly one of PathExact/ },
  );
  t.throws(
    () =>
      validateEntry(
        { Kind: 'service-defaults', Name: 'api', UpstreamConfig: { Overrides: [{ Limits: {} }] } },
        W,
      ),
    { message: /Overrides\[0\]\.Name: is required/ },
  );
  t.throws(
    () =>
      validateEntry(
        {
          Kind: 'service-defaults',
          Name: 'api',
          UpstreamConfig: { Defaults: { Limits: { MaxConnections: -1 } } },
        },
        W,
      ),
    { message: /non-negative integer/ },
  );
});

test('keys match regardless of case and underscores, as Consul decodes them', (t) => {
  const [sd, router] = validateEntries(
    [
      { kind: 'service-defaults', name: 'api', protocol: 'HTTP' },
      {
        Kind: 'service-router',
        Name: 'api',
        routes: [
          {
            match: { http: { path_prefix: '/x', methods: ['get'] } },
            destination: { request_timeout: '1s' },
          },
        ],
      },
    ],
    W,
  );
  t.like(sd, { Kind: 'service-defaults', Name: 'api', Protocol: 'http' });
  t.like(router, {
    Routes: [
      { Match: { HTTP: { PathPrefix: '/x', Methods: ['GET'] } }, Destination: { RequestTimeout: 1000 } },
    ],
  });
  // Meta keys are the user's: never folded.
  t.like(validateEntry({ Kind: 'service-defaults', Name: 'api', Meta: { Some_Key: 'v' } }, W), {
    Meta: { Some_Key: 'v' },
  });
  t.throws(
    () => validateEntry({ Kind: 'service-defaults', Name: 'api', Protocol: 'http', protocol: 'grpc' }, W),
    { message: /repeats the field Protocol/ },
  );
});

test('Go durations', async (t) => {
  const { parseGoDuration } = await import('../../lib/l7/index.js');
  t.is(parseGoDuration('0'), 0);
  t.is(parseGoDuration('1h2m3.5s'), 3_723_500);
  t.is(parseGoDuration('250ms'), 250);
  t.is(parseGoDuration('1500us'), 1.5);
  t.is(parseGoDuration('-1s'), -1000);
  t.is(parseGoDuration('.5s'), 500);
  t.regex(String(parseGoDuration('1')), /invalid duration/);
  t.regex(String(parseGoDuration('1d')), /unknown unit "d"/);
  t.regex(String(parseGoDuration('')), /invalid duration/);
  t.regex(String(parseGoDuration('s')), /invalid duration/);
});

test('RE2 patterns: translated where JS spells them differently, refused where RE2 would refuse', async (t) => {
  const { compileRe2 } = await import('../../lib/l7/index.js');
  const re = (p: string, full = true) => {
    const r = compileRe2(p, full);
    if (typeof r === 'string') throw new Error(r);
    return r;
  };
  t.true(re('(?i)/API/.*').test('/api/x'));
  t.true(re('(?P<id>[0-9]+)').test('42'));
  t.false(re('[0-9]+').test('42x'), 'full match when anchored');
  t.true(re('[0-9]+', false).test('42x'));
  t.regex(String(compileRe2('a(?!b)', true)), /lookaround/);
  t.regex(String(compileRe2('(a)\\1', true)), /backreferences/);
  t.regex(String(compileRe2('a(?i)b', true)), /inline flag/);
  t.regex(String(compileRe2('[[:alpha:]]', true)), /POSIX/);
  t.true(re('(?:ab)+').test('abab'), 'non-capturing groups are fine');
});

test('RE2 translation steps over escapes and character classes', async (t) => {
  const { compileRe2 } = await import('../../lib/l7/index.js');
  const re = (p: string) => {
    const r = compileRe2(p, true);
    if (typeof r === 'string') throw new Error(r);
    return r;
  };
  t.true(re('\\(?=').test('='), 'an escaped paren is literal: optional "(" then "="');
  t.true(re('[(?=]+').test('(?='));
  t.true(re('\\\\1').test('\\1'), 'an escaped backslash then 1 is no backreference');
  t.true(re('[]a]').test(']'), 'a leading ] in a class is a member, as in RE2');
  t.true(re('[^]a]').test('b'));
  t.true(re('\\Aab\\z').test('ab'));
  t.false(re('a\\z').test('a\n'));
  t.true(re('(?<n>x)(?P<m>y)').test('xy'));
  t.regex(String(compileRe2('\\Qa.b\\E', true)), /quoting/);
});

test('load balancer sizes Envoy would refuse are refused at write', (t) => {
  const lb = (LoadBalancer: unknown) => () =>
    validateEntry({ Kind: 'service-resolver', Name: 'a', LoadBalancer }, W);
  t.throws(lb({ Policy: 'ring_hash', RingHashConfig: { MinimumRingSize: 4096, MaximumRingSize: 1024 } }), {
    message: /MinimumRingSize: must not exceed/,
  });
  t.throws(lb({ Policy: 'ring_hash', RingHashConfig: { MaximumRingSize: 9_000_000 } }), {
    message: /at most 8388608/,
  });
  t.throws(lb({ Policy: 'least_request', LeastRequestConfig: { ChoiceCount: 1 } }), {
    message: /ChoiceCount: must be at least 2/,
  });
  t.notThrows(lb({ Policy: 'least_request', LeastRequestConfig: { ChoiceCount: 3 } }));
  t.notThrows(lb({ Policy: 'ring_hash', RingHashConfig: { MinimumRingSize: 64, MaximumRingSize: 128 } }));
});

test('a route to a subset of a service whose resolver redirects is checked where the redirect lands', (t) => {
  t.notThrows(() =>
    validateEntries(
      [
        http('api'),
        http('new'),
        { Kind: 'service-resolver', Name: 'old', Redirect: { Service: 'new' } },
        { Kind: 'service-resolver', Name: 'new', Subsets: { v2: {} } },
        { Kind: 'service-defaults', Name: 'old', Protocol: 'http' },
        { Kind: 'service-router', Name: 'api', Routes: [{ Destination: { Service: 'old' } }] },
      ],
      W,
    ),
  );
});
