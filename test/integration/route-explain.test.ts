// `ambit route explain`, the real CLI binary against a mesh file and against Consul (the emulator, or a real
// `consul agent -dev` when one is available): what a user reads off it for one request (the routes tried
// and why not, the route, every split leg, the subset and its endpoints, the failover, the load balancer,
// the intention that decides) and the exit code a script branches on.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { ConsulClient } from '../../lib/consul/client.js';
import { Secret } from '../../lib/consul/secret.js';
import { startConsul } from '../helpers/consul-emulator.js';
import { CLI } from '../helpers/paths.js';

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function ambit(args: string[]): Promise<Result> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      // No AMBIT_* or CONSUL_* from the developer's shell may leak in and point the CLI elsewhere.
      { env: { PATH: process.env.PATH ?? '', HOME: tmpdir() }, timeout: 20_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

// api: a router (an admin path to another service, a canary header to subset v2, /v3 to a subset with no
// instance, which fails over to v1), a 90/10 split by version for the rest, and L7 intentions for web.
// The waypoint opt-in is the service-defaults' ambit-waypoint Meta, as Consul mode reads it.
const MESH = `defaultPolicy: deny
nodes:
  node-a: { address: 127.0.0.1 }
workloads:
  api-v1: { service: api, node: node-a, addresses: [127.0.0.11], ports: [9001], version: v1 }
  api-v2: { service: api, node: node-a, addresses: [127.0.0.12], ports: [9002], version: v2 }
  api-v2b: { service: api, node: node-a, addresses: [127.0.0.15], ports: [9002], version: v2 }
  admin-1: { service: admin, node: node-a, addresses: [127.0.0.13], ports: [9003] }
  web-1: { service: web, node: node-a, addresses: [127.0.0.14], ports: [9004] }
  db-1: { service: db, node: node-a, addresses: [127.0.0.16], ports: [5432] }
configEntries:
  - { Kind: proxy-defaults, Name: global, Config: { protocol: http } }
  - { Kind: service-defaults, Name: api, Protocol: http, Meta: { ambit-waypoint: wp } }
  - { Kind: service-defaults, Name: db, Protocol: tcp, Meta: { ambit-waypoint: wp } }
  - Kind: service-router
    Name: api
    Routes:
      - Match: { HTTP: { PathPrefix: /admin } }
        Destination: { Service: admin }
      - Match: { HTTP: { PathPrefix: /v2, Header: [{ Name: x-canary, Exact: "1" }] } }
        Destination: { ServiceSubset: v2, PrefixRewrite: /canary }
      - Match: { HTTP: { PathPrefix: /v3 } }
        Destination: { ServiceSubset: v3 }
  - Kind: service-splitter
    Name: api
    Splits:
      - { Weight: 90, ServiceSubset: v1 }
      - { Weight: 10, ServiceSubset: v2, RequestHeaders: { Set: { x-leg: canary } } }
  - Kind: service-resolver
    Name: api
    DefaultSubset: v1
    Subsets:
      v1: { Filter: 'Service.Meta.version == v1' }
      v2: { Filter: 'Service.Meta.version == v2' }
      v3: { Filter: 'Service.Meta.version == v3' }
    Failover:
      v3: { Targets: [{ ServiceSubset: v1 }] }
    LoadBalancer: { Policy: least_request }
  - { Kind: service-resolver, Name: legacy, Redirect: { Service: api, ServiceSubset: v1 } }
  - Kind: service-intentions
    Name: api
    Sources:
      - Name: web
        Permissions:
          - { Action: deny, HTTP: { PathPrefix: /admin } }
          - { Action: allow, HTTP: { PathPrefix: /, Methods: [GET] } }
`;

async function meshFile(t: ExecutionContext, text = MESH): Promise<(...args: string[]) => Promise<Result>> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-route-explain-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const mesh = join(dir, 'mesh.yaml');
  await writeFile(mesh, text);
  return (...args) => ambit(['--mesh', mesh, 'route', 'explain', ...args]);
}

/** The lines of `out` from the one starting with `heading` up to the next blank line. */
function section(out: string, heading: string): string[] {
  const lines = out.split('\n');
  const i = lines.findIndex((l) => l.startsWith(heading));
  if (i < 0) throw new Error(`no "${heading}" in:\n${out}`);
  const end = lines.indexOf('', i);
  return lines.slice(i, end < 0 ? undefined : end);
}

test('a header route to a subset: the routes tried, the subset, its endpoints, the permission', async (t) => {
  const explain = await meshFile(t);
  const r = await explain('--service', 'api', '--path', '/v2/x', '--header', 'X-Canary=1', '--source', 'web');
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr, '');
  t.regex(
    r.stdout,
    /^GET \/v2\/x to api \(read from .*mesh\.yaml\)\n {2}header x-canary: 1\nwaypoint: wp; protocol http\n/,
  );
  t.deepEqual(section(r.stdout, 'routes of'), [
    'routes of service-router/api, the first that matches wins:',
    '  Routes[0]: no: path "/v2/x" does not match PathPrefix "/admin"',
    '  Routes[1]: matches',
    'route: service-router/api Routes[1], to api subset v2',
  ]);
  t.false(r.stdout.includes('split by'));
  t.deepEqual(section(r.stdout, 'destination:'), [
    'destination:',
    '  resolver: service-resolver/api',
    '  target v2.api.default.default.dc1: api, subset v2 (Filter "Service.Meta.version == v2")',
    "    api-v1  127.0.0.11:9001  not selected by the subset's Filter",
    '    api-v2  127.0.0.12:9002  selected, healthy',
    '    api-v2b  127.0.0.15:9002  selected, healthy',
    '  endpoints: api-v2, api-v2b',
    '  load balancer: least_request picks one',
    '  path rewritten to /canary/x',
  ]);
  t.deepEqual(section(r.stdout, 'authorization'), [
    'authorization of web (spiffe://ambit.local/ns/default/dc/dc1/svc/web): allowed',
    '  intention web => api, Permissions[1]: allow',
  ]);
  t.regex(r.stdout, /\nresult: 200 routed\n$/);
});

test('the catch-all and a split: every leg with its weight, each its own subset', async (t) => {
  const explain = await meshFile(t);
  // The canary route wants its header too: without it, the request falls through to the catch-all.
  const r = await explain('--service', 'api', '--path', '/v2/x');
  t.is(r.code, 0, r.stderr);
  t.deepEqual(section(r.stdout, 'routes of').slice(1), [
    '  Routes[0]: no: path "/v2/x" does not match PathPrefix "/admin"',
    '  Routes[1]: no: Header[0] (x-canary) does not match',
    '  Routes[2]: no: path "/v2/x" does not match PathPrefix "/v3"',
    '  catch-all: matches',
    'route: the catch-all route to api itself',
  ]);
  t.deepEqual(section(r.stdout, 'split by'), [
    'split by service-splitter/api: weighted random, each request draws one leg:',
    '  [0] 90% to v1.api.default.default.dc1',
    '  [1] 10% to v2.api.default.default.dc1',
  ]);
  t.deepEqual(section(r.stdout, 'leg [0] 90%').slice(2), [
    '  target v1.api.default.default.dc1: api, subset v1 (Filter "Service.Meta.version == v1")',
    '    api-v1  127.0.0.11:9001  selected, healthy',
    "    api-v2  127.0.0.12:9002  not selected by the subset's Filter",
    "    api-v2b  127.0.0.15:9002  not selected by the subset's Filter",
    '  endpoints: api-v1',
    '  load balancer: least_request picks one',
  ]);
  const canary = section(r.stdout, 'leg [1] 10%');
  t.true(canary.includes('  endpoints: api-v2, api-v2b'));
  // The split's own header change, on its leg only.
  t.true(canary.includes('  request headers: set x-leg: canary'));
  t.false(section(r.stdout, 'leg [0]').some((l) => l.includes('x-leg')));
  t.true(r.stdout.includes('\nauthorization: not checked (no --source)\n'));
  // Both legs meet the same (default) timeouts, said once; nothing else is set.
  t.deepEqual(section(r.stdout, 'policies:'), [
    'policies:',
    '  timeouts: RequestTimeout none, IdleTimeout none, ConnectTimeout 5s (default)',
    '  nothing else: no fault, rate limit, retries or mirror',
  ]);

  // The same as JSON, for scripts.
  const j = await explain('--service', 'api', '--path', '/v2/x', '--json');
  t.is(j.code, 0, j.stderr);
  const x = JSON.parse(j.stdout) as {
    splitter: string;
    legs: { split: { index: number; weight: number }; target: string; candidates: string[] }[];
    verdict: { routed: boolean; status: number };
  };
  t.is(x.splitter, 'service-splitter/api');
  t.deepEqual(
    x.legs.map((l) => [l.split.weight, l.target, l.candidates]),
    [
      [90, 'v1.api.default.default.dc1', ['api-v1']],
      [10, 'v2.api.default.default.dc1', ['api-v2', 'api-v2b']],
    ],
  );
  t.like(x.verdict, { routed: true, status: 200 });
});

test('a subset with no instance fails over; a redirect is followed to the service it names', async (t) => {
  const explain = await meshFile(t);
  const r = await explain('--service', 'api', '--path', '/v3/a', '--source', 'web');
  t.is(r.code, 0, r.stderr);
  t.deepEqual(section(r.stdout, 'destination:').slice(1, 5), [
    '  resolver: service-resolver/api',
    '  target v3.api.default.default.dc1: api, subset v3 (Filter "Service.Meta.version == v3")',
    "    api-v1  127.0.0.11:9001  not selected by the subset's Filter",
    "    api-v2  127.0.0.12:9002  not selected by the subset's Filter",
  ]);
  t.true(r.stdout.includes('\n  failover v1.api.default.default.dc1: api, subset v1'));
  t.true(r.stdout.includes('\n  endpoints: api-v1 (failover to v1.api.default.default.dc1)\n'));

  const redirected = await explain('--service', 'legacy', '--path', '/x');
  t.is(redirected.code, 0, redirected.stderr);
  t.deepEqual(section(redirected.stdout, 'destination:').slice(1, 3), [
    '  resolver: service-resolver/legacy redirects to api, whose resolver is service-resolver/api',
    '  target v1.api.default.default.dc1: api, subset v1 (Filter "Service.Meta.version == v1")',
  ]);
});

test('refused: a deny permission and the default policy are 403, exit 1', async (t) => {
  const explain = await meshFile(t);
  let r = await explain('--service', 'api', '--path', '/admin/users', '--source', 'web');
  t.is(r.code, 1);
  // What the request would have met is still shown: the admin route, to the admin service.
  t.true(r.stdout.includes('route: service-router/api Routes[0], to admin\n'));
  t.true(r.stdout.includes('    admin-1  127.0.0.13:9003  selected, healthy\n'));
  t.deepEqual(section(r.stdout, 'authorization'), [
    'authorization of web (spiffe://ambit.local/ns/default/dc/dc1/svc/web): denied: the waypoint answers 403, before any routing',
    '  intention web => api, Permissions[0]: deny',
  ]);
  t.regex(r.stdout, /\nresult: 403 denied: intention web => api, Permissions\[0\]: deny\n$/);
  t.is(r.stderr, 'ambit: not routed: 403 denied: intention web => api, Permissions[0]: deny\n');

  // No permission matches a POST: the mesh's default policy (deny) decides, not a lower intention.
  r = await explain('--service', 'api', '--path', '/x', '--method', 'post', '--source', 'web');
  t.is(r.code, 1);
  t.deepEqual(section(r.stdout, 'authorization').slice(1), [
    '  intention web => api has no permission matching; default deny',
    '  (the default policy is from the mesh file)',
  ]);
  // A client of no service of this mesh, and one no intention names.
  r = await explain('--service', 'api', '--path', '/x', '--source', 'spiffe://other.example/workload');
  t.is(r.code, 1);
  t.true(r.stdout.includes('  client spiffe://other.example/workload names no service of this mesh\n'));
  r = await explain('--service', 'api', '--path', '/x', '--source', 'admin', '--json');
  t.is(r.code, 1);
  t.like(JSON.parse(r.stdout), {
    authorization: { source: 'admin', allowed: false, reason: 'no intention matches; default deny' },
    verdict: { routed: false, status: 403 },
  });
});

test('no route: a service without an instance is 503, exit 1; a tcp service has no L7 routing', async (t) => {
  const explain = await meshFile(t);
  let r = await explain('--service', 'ghost', '--path', '/');
  t.is(r.code, 1);
  t.true(r.stdout.includes('waypoint: none (ghost opts into none)'));
  t.true(r.stdout.includes('    no instances of ghost in default\n'));
  t.true(r.stdout.includes('  endpoints: none healthy: the waypoint answers 503\n'));
  t.is(r.stderr, 'ambit: not routed: 503 no healthy endpoint for ghost.default.default.dc1\n');

  r = await explain('--service', 'db', '--path', '/', '--source', 'web');
  t.is(r.code, 0, r.stderr);
  t.true(r.stdout.includes('waypoint: wp; protocol tcp\n'));
  t.true(r.stdout.includes('no L7 routing: db is tcp, so no route, split or L7 intention applies'));
  t.false(r.stdout.includes('routes of'));
  t.false(r.stdout.includes('authorization'));
  t.true(r.stdout.includes('    db-1  127.0.0.16:5432  selected, healthy\n'));
});

test('usage errors exit 2 and name the flag; so does an invalid mesh file', async (t) => {
  const explain = await meshFile(t);
  const cases: [string[], RegExp][] = [
    [['--service', 'api'], /required option '--path <path>' not specified/],
    [
      ['--service', 'api', '--path', 'v2'],
      /option '--path <path>' argument 'v2' is invalid\. must start with "\/"/,
    ],
    [
      ['--service', 'api', '--path', '/', '--header', 'x-canary'],
      /'--header <name=value>' argument 'x-canary' is invalid/,
    ],
    [['--service', 'a.b', '--path', '/'], /service name must use only letters/],
    [['--service', 'api', '--path', '/', '--source', 'bad name'], /--source: service name must use only/],
    [
      ['--service', 'api', '--path', '/', '--default-policy', 'allow'],
      /--default-policy: only in Consul mode/,
    ],
  ];
  for (const [args, err] of cases) {
    const r = await explain(...args);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, err);
    t.is(r.stdout, '');
  }
  const bad = await meshFile(
    t,
    'services:\n  api: { waypoint: a }\nconfigEntries:\n  - { Kind: service-defaults, Name: api, Meta: { ambit-waypoint: b } }\n',
  );
  const r = await bad('--service', 'api', '--path', '/');
  t.is(r.code, 2);
  t.regex(
    r.stderr,
    /mesh\.yaml: services\.api\.waypoint: says a but configEntries\[0\] service-defaults\/api: Meta\["ambit-waypoint"\] says b/,
  );
});

test('Consul mode: the entries, the instances and their health, and the default from Consul', async (t) => {
  const consul = await startConsul({ acl: true });
  const client = new ConsulClient({
    address: consul.address,
    token: consul.managementToken ? new Secret(consul.managementToken) : undefined,
  });
  t.teardown(async () => {
    client.close();
    await consul.close();
  });
  const entries = [
    { Kind: 'service-defaults', Name: 'api', Protocol: 'http', Meta: { 'ambit-waypoint': 'wp' } },
    { Kind: 'service-defaults', Name: 'web', Protocol: 'http' },
    {
      Kind: 'service-resolver',
      Name: 'api',
      DefaultSubset: 'v1',
      Subsets: {
        v1: { Filter: 'Service.Meta.version == v1' },
        v2: { Filter: 'Service.Meta.version == v2' },
      },
      Failover: { v2: { Targets: [{ ServiceSubset: 'v1' }] } },
    },
    {
      Kind: 'service-router',
      Name: 'api',
      Routes: [
        {
          Match: { HTTP: { PathPrefix: '/', Header: [{ Name: 'x-canary', Present: true }] } },
          Destination: { ServiceSubset: 'v2' },
        },
      ],
    },
    {
      Kind: 'service-intentions',
      Name: 'api',
      Sources: [{ Name: 'web', Permissions: [{ Action: 'allow', HTTP: { Methods: ['GET'] } }] }],
    },
  ];
  for (const body of entries) t.true((await client.put<boolean>('/v1/config', { body })).body);
  // v2's only instance is critical: the daemon leaves it out, so the canary route fails over to v1.
  for (const [id, version, status] of [
    ['api-v1', 'v1', 'passing'],
    ['api-v2', 'v2', 'critical'],
  ] as const) {
    await client.put('/v1/agent/service/register', {
      body: {
        ID: id,
        Name: 'api',
        Address: id === 'api-v1' ? '127.0.0.21' : '127.0.0.22',
        Port: 9001,
        Tags: ['ambit'],
        Meta: { version, 'ambit-node': 'node-a' },
        Checks: [{ Name: 'alive', TTL: '300s', Status: status }],
      },
    });
  }
  const token = consul.managementToken ? ['--consul-token', consul.managementToken] : [];
  const explain = (...args: string[]): Promise<Result> =>
    ambit(['--consul', consul.address, ...token, 'route', 'explain', '--service', 'api', ...args]);

  let r = await explain('--path', '/x', '--header', 'x-canary=yes', '--source', 'web');
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^GET \/x to api \(read from Consul at 127\.0\.0\.1:\d+\)\n/);
  t.true(r.stdout.includes('\nwaypoint: wp; protocol http\n'), r.stdout);
  t.true(r.stdout.includes('route: service-router/api Routes[0], to api subset v2\n'));
  t.deepEqual(section(r.stdout, 'destination:'), [
    'destination:',
    '  resolver: service-resolver/api',
    '  target v2.api.default.default.dc1: api, subset v2 (Filter "Service.Meta.version == v2")',
    "    api-v1  127.0.0.21:9001  not selected by the subset's Filter",
    '    api-v2  127.0.0.22:9001  selected, but not passing: left out',
    '  failover v1.api.default.default.dc1: api, subset v1 (Filter "Service.Meta.version == v1")',
    '    api-v1  127.0.0.21:9001  selected, healthy',
    "    api-v2  127.0.0.22:9001  not selected by the subset's Filter",
    '  endpoints: api-v1 (failover to v1.api.default.default.dc1)',
    '  load balancer: round_robin picks one',
  ]);
  t.true(r.stdout.includes('  intention web => api, Permissions[0]: allow\n'));

  // With ACLs on, Consul's ACL default (deny) decides a source no intention names.
  r = await explain('--path', '/x', '--source', 'admin');
  t.is(r.code, 1);
  t.deepEqual(section(r.stdout, 'authorization').slice(1), [
    '  no intention matches; default deny',
    "  (the default policy is from Consul's ACL default policy)",
  ]);
  // ambitd's own defaultPolicy, when the operator says it sets one, overrides it.
  r = await explain('--path', '/x', '--source', 'admin', '--default-policy', 'allow');
  t.is(r.code, 0, r.stderr);
  t.true(r.stdout.includes("  (the default policy is from ambitd's defaultPolicy (--default-policy))\n"));
  r = await explain('--path', '/x', '--namespace', 'prod');
  t.is(r.code, 2);
  t.regex(r.stderr, /--namespace "prod": Consul CE has no namespaces/);
});

// The resilience policies: api's /search/ route sets a RequestTimeout and retries, its router's Meta a
// fault (for x-fault: on) on that route and a mirror to shadow on every route; api's service-defaults a
// rate for /search/ and one for the service; web's UpstreamConfig limits and ejects for api. plain sets none.
const POLICY_ENTRIES = [
  { Kind: 'proxy-defaults', Name: 'global', Config: { protocol: 'http' } },
  {
    Kind: 'service-defaults',
    Name: 'api',
    Protocol: 'http',
    Meta: { 'ambit-waypoint': 'wp' },
    RateLimits: {
      InstanceLevel: {
        RequestsPerSecond: 100,
        Routes: [{ PathPrefix: '/search/', RequestsPerSecond: 10, RequestsMaxBurst: 20 }],
      },
    },
  },
  { Kind: 'service-defaults', Name: 'plain', Protocol: 'http', Meta: { 'ambit-waypoint': 'wp' } },
  { Kind: 'service-defaults', Name: 'shadow', Protocol: 'http' },
  {
    Kind: 'service-defaults',
    Name: 'web',
    Protocol: 'http',
    UpstreamConfig: {
      Overrides: [
        {
          Name: 'api',
          Limits: { MaxConcurrentRequests: 10, MaxConnections: 100 },
          PassiveHealthCheck: { MaxFailures: 3 },
        },
      ],
    },
  },
  {
    Kind: 'service-router',
    Name: 'api',
    Meta: {
      'ambit-fault-0': JSON.stringify({
        Header: { Name: 'x-fault', Exact: 'on' },
        Delay: { Fixed: '100ms', Percent: 50 },
        Abort: { HTTPStatus: 503, Percent: 10 },
      }),
      'ambit-mirror': JSON.stringify({ Service: 'shadow', Percent: 25 }),
    },
    Routes: [
      {
        Match: { HTTP: { PathPrefix: '/search/' } },
        Destination: { RequestTimeout: '2s', NumRetries: 3, RetryOn: ['5xx'], RetryOnStatusCodes: [429] },
      },
    ],
  },
  { Kind: 'service-resolver', Name: 'api', ConnectTimeout: '3s' },
  { Kind: 'service-defaults', Name: 'split', Protocol: 'http', Meta: { 'ambit-waypoint': 'wp' } },
  {
    Kind: 'service-splitter',
    Name: 'split',
    Splits: [
      { Weight: 50, Service: 'api' },
      { Weight: 50, Service: 'plain' },
    ],
  },
];

const POLICY_MESH = `defaultPolicy: allow
nodes:
  node-a: { address: 127.0.0.1 }
workloads:
  api-1: { service: api, node: node-a, addresses: [127.0.0.31], ports: [9001] }
  shadow-1: { service: shadow, node: node-a, addresses: [127.0.0.32], ports: [9002] }
  plain-1: { service: plain, node: node-a, addresses: [127.0.0.33], ports: [9003] }
  web-1: { service: web, node: node-a, addresses: [127.0.0.34], ports: [9004] }
configEntries: ${JSON.stringify(POLICY_ENTRIES)}
`;

/** What a user reads of the policies, the same whichever source `explain` reads the entries from. */
async function checkPolicies(
  t: ExecutionContext,
  explain: (...args: string[]) => Promise<Result>,
): Promise<void> {
  let r = await explain(
    '--service',
    'api',
    '--path',
    '/search/x',
    '--header',
    'x-fault=on',
    '--source',
    'web',
  );
  t.is(r.code, 0, r.stderr);
  t.deepEqual(section(r.stdout, 'policies:'), [
    'policies:',
    '  timeouts: RequestTimeout 2s (service-router/api Routes[0]), IdleTimeout none, ConnectTimeout 3s (service-resolver/api)',
    '  rate limit (service-defaults/api RateLimits.InstanceLevel): Routes[0] PathPrefix "/search/" matches /search/x: 10/s, burst 20, per waypoint instance; over it 429',
    '  fault (service-router/api Meta.ambit-fault-0): header x-fault "on" matches: delay 100ms for 50%, abort 503 (gRPC 14) for 10% of requests',
    '  limits (service-defaults/web UpstreamConfig.Overrides[0]): MaxConcurrentRequests 10 in flight from web, then 503 (UO); MaxConnections 100 open from web, then up to MaxPendingRequests 1024 wait, then 503 (UO)',
    '  outlier ejection (service-defaults/web UpstreamConfig.Overrides[0] PassiveHealthCheck): after 3 consecutive 5xx, EnforcingConsecutive5xx 100%, MaxEjectionPercent 10%, BaseEjectionTime 30s (at most 5m), Interval 10s',
    '  retries (service-router/api Routes[0]): up to 3 (NumRetries), on 5xx, retriable-status-codes 429; backoff jittered, 25ms base, 250ms cap; budget 20% of requests in flight (at least 3)',
    '  mirror (service-router/api Meta.ambit-mirror): 25% of requests copied to shadow.default.default.dc1, endpoints shadow-1',
  ]);

  // The fault's header condition does not hold: the request meets no fault, the rest is as before.
  r = await explain('--service', 'api', '--path', '/search/x', '--header', 'x-fault=off', '--source', 'web');
  t.is(r.code, 0, r.stderr);
  t.true(
    r.stdout.includes(
      '\n  fault (service-router/api Meta.ambit-fault-0): header x-fault "on" does not match: no fault\n',
    ),
    r.stdout,
  );

  // The catch-all: no timeout, retry or fault of its own; the service's rate; the client's entries unread.
  r = await explain('--service', 'api', '--path', '/other');
  t.is(r.code, 0, r.stderr);
  t.deepEqual(section(r.stdout, 'policies:'), [
    'policies:',
    '  timeouts: RequestTimeout none, IdleTimeout none, ConnectTimeout 3s (service-resolver/api)',
    "  rate limit (service-defaults/api RateLimits.InstanceLevel): the service's own rate (no Routes entry matches /other): 100/s, burst 100, per waypoint instance; over it 429",
    "  limits, outlier ejection: set by the client's service-defaults UpstreamConfig: not checked (no --source)",
    '  mirror (service-router/api Meta.ambit-mirror): 25% of requests copied to shadow.default.default.dc1, endpoints shadow-1',
  ]);

  // A service that sets none: the default ConnectTimeout, and one line saying so.
  r = await explain('--service', 'plain', '--path', '/x', '--source', 'web');
  t.is(r.code, 0, r.stderr);
  t.deepEqual(section(r.stdout, 'policies:'), [
    'policies:',
    '  timeouts: RequestTimeout none, IdleTimeout none, ConnectTimeout 5s (default)',
    '  nothing else: no fault, rate limit, limits, outlier ejection, retries or mirror',
  ]);

  // Split legs that meet different policies: each leg's are named by its index.
  r = await explain('--service', 'split', '--path', '/search/x', '--source', 'web');
  t.is(r.code, 0, r.stderr);
  t.deepEqual(section(r.stdout, 'policies:'), [
    'policies:',
    '  leg [0] timeouts: RequestTimeout none, IdleTimeout none, ConnectTimeout 3s (service-resolver/api)',
    '  leg [0] rate limit (service-defaults/api RateLimits.InstanceLevel): Routes[0] PathPrefix "/search/" matches /search/x: 10/s, burst 20, per waypoint instance; over it 429',
    '  leg [1] timeouts: RequestTimeout none, IdleTimeout none, ConnectTimeout 5s (default)',
  ]);

  // The same as JSON.
  r = await explain(
    '--service',
    'api',
    '--path',
    '/search/x',
    '--header',
    'x-fault=on',
    '--source',
    'web',
    '--json',
  );
  t.is(r.code, 0, r.stderr);
  const x = JSON.parse(r.stdout);
  t.like(x.policies, {
    client: 'web',
    fault: {
      header: { name: 'x-fault', exact: 'on', matches: true },
      applies: true,
      abort: { http: 503, percent: 10 },
    },
    limits: { maxConcurrentRequests: 10, maxConnections: 100 },
    outlier: { maxFailures: 3, baseEjectionMs: 30_000 },
    retry: { numRetries: 3, on: ['5xx', 'retriable-status-codes'], statusCodes: [429] },
    mirror: { service: 'shadow', percent: 25, endpoints: ['shadow-1'] },
  });
  t.deepEqual(x.legs[0].policies, {
    timeouts: {
      request: { ms: 2000, from: 'service-router/api Routes[0]' },
      idle: { from: 'unset' },
      connect: { ms: 3000, from: 'service-resolver/api' },
    },
    rateLimit: {
      entry: 'service-defaults/api',
      rule: 'Routes[0]',
      match: 'PathPrefix "/search/"',
      path: '/search/x',
      perSecond: 10,
      burst: 20,
    },
  });
  r = await explain('--service', 'plain', '--path', '/x', '--source', 'web', '--json');
  t.deepEqual(JSON.parse(r.stdout).policies, { client: 'web', clientEntries: true });
}

test('policies from the mesh file: timeouts, retries, limits, a fault, a rate limit, a mirror', async (t) => {
  await checkPolicies(t, await meshFile(t, POLICY_MESH));
});

test('policies from Consul: the same entries, the same lines', async (t) => {
  const consul = await startConsul({ acl: true });
  const client = new ConsulClient({
    address: consul.address,
    token: consul.managementToken ? new Secret(consul.managementToken) : undefined,
  });
  t.teardown(async () => {
    client.close();
    await consul.close();
  });
  for (const body of POLICY_ENTRIES) t.true((await client.put<boolean>('/v1/config', { body })).body);
  for (const [id, service, address, port] of [
    ['api-1', 'api', '127.0.0.31', 9001],
    ['shadow-1', 'shadow', '127.0.0.32', 9002],
    ['plain-1', 'plain', '127.0.0.33', 9003],
  ] as const) {
    await client.put('/v1/agent/service/register', {
      body: {
        ID: id,
        Name: service,
        Address: address,
        Port: port,
        Tags: ['ambit'],
        Meta: { 'ambit-node': 'node-a' },
        Checks: [{ Name: 'alive', TTL: '300s', Status: 'passing' }],
      },
    });
  }
  const token = consul.managementToken ? ['--consul-token', consul.managementToken] : [];
  await checkPolicies(t, (...args) =>
    ambit(['--consul', consul.address, ...token, 'route', 'explain', ...args]),
  );
});
