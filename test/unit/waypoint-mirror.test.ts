// Request mirroring from a service-router's Meta (lib/l7/mirror.ts): the `ambit-mirror` and
// `ambit-mirror-<i>` keys, their JSON refused with the entry and the field named, the draw at its percent,
// the copy's Host with `-shadow` as Envoy writes it; ChainRouter picking the copy's endpoint (its subset,
// else the resolver's DefaultSubset) and never handing the copy on to a retry; and the waypoint's bounds on
// copies in flight and on their bodies (daemon/waypoint/mirror.ts), each outcome counted.
import test from 'ava';
import { Refusals } from '../../daemon/limits/refusal.js';
import { Metrics } from '../../daemon/metrics/metrics.js';
import { ChainRouter } from '../../daemon/waypoint/chain-router.js';
import { Mirrors } from '../../daemon/waypoint/mirror.js';
import type { RequestRoute } from '../../daemon/waypoint/router.js';
import { L7ConfigError, validateEntries } from '../../lib/l7/index.js';
import { drawMirror, mirrorFor, routerMirrors, shadowHost } from '../../lib/l7/mirror.js';
import { Reader } from '../../lib/l7/read.js';
import { silentLogger } from '../../lib/log.js';
import { meshRequests, node, service, storeOf, workload } from '../helpers/mesh.js';

const router = (meta: Record<string, string>, routes = 2): unknown => ({
  Kind: 'service-router',
  Name: 'api',
  Meta: meta,
  Routes: Array.from({ length: routes }, (_, i) => ({
    Match: { HTTP: { PathPrefix: `/r${i}/` } },
    Destination: { Service: 'api' },
  })),
});
const API_HTTP = { Kind: 'service-defaults', Name: 'api', Protocol: 'http' };

const parse = (meta: Record<string, string>, routes = 2) =>
  routerMirrors(new Reader('unit', 'service-router/api'), router(meta, routes) as never);

const refusal = (meta: Record<string, string>): string => {
  try {
    validateEntries([API_HTTP, router(meta)], 'mesh.yaml');
  } catch (e) {
    if (e instanceof L7ConfigError) return e.message;
    throw e;
  }
  throw new Error(`not refused: ${JSON.stringify(meta)}`);
};

test('Meta keys: ambit-mirror for every route, ambit-mirror-<i> for Routes[i] in its place', (t) => {
  const m = parse({
    'ambit-mirror': '{"Service": "api-shadow"}',
    'ambit-mirror-1': '{"Service": "canary", "ServiceSubset": "v2", "Namespace": "ops", "Percent": 12.5}',
    'ambit-fault': '{"Abort": {"HTTPStatus": 503}}',
    other: 'kept as it is',
  })!;
  t.deepEqual(m.all, { service: 'api-shadow', namespace: undefined, subset: '', percent: 100 });
  t.deepEqual(mirrorFor(m, 1, false), { service: 'canary', namespace: 'ops', subset: 'v2', percent: 12.5 });
  t.is(mirrorFor(m, 0, false), m.all);
  // The catch-all (index Routes.length) has no key of its own.
  t.is(mirrorFor(m, 2, true), m.all);
  t.is(parse({ 'ambit-fault': '{"Abort": {"HTTPStatus": 503}}' }), undefined);
  t.is(parse({}), undefined);
  // Validated with the rest of the entry: a good one passes.
  t.notThrows(() =>
    validateEntries([API_HTTP, router({ 'ambit-mirror-0': '{"Service": "x"}' })], 'mesh.yaml'),
  );
});

test('refusals name the entry, the Meta key and the field', (t) => {
  const cases: [Record<string, string>, string][] = [
    [{ 'ambit-mirror': '{nope' }, 'Meta.ambit-mirror: is not JSON'],
    [{ 'ambit-mirror': '"api"' }, 'Meta.ambit-mirror: must be an object'],
    [{ 'ambit-mirror': '{}' }, 'Meta.ambit-mirror.Service: is required'],
    [{ 'ambit-mirror': '{"Service": ""}' }, 'Meta.ambit-mirror.Service: is required'],
    [{ 'ambit-mirror': '{"Service": 7}' }, 'Meta.ambit-mirror.Service: must be a string'],
    [{ 'ambit-mirror': '{"Host": "api"}' }, 'Meta.ambit-mirror.Host: unknown field "Host"'],
    [
      { 'ambit-mirror': '{"Service": "api", "Percent": 101}' },
      'Meta.ambit-mirror.Percent: must be a percentage from 0 to 100',
    ],
    [
      { 'ambit-mirror': '{"Service": "api", "Percent": "50"}' },
      'Meta.ambit-mirror.Percent: must be a number',
    ],
    [
      { 'ambit-mirror': '{"Service": "api", "ServiceSubset": "V 2"}' },
      'Meta.ambit-mirror.ServiceSubset: "V 2" is not a valid subset name',
    ],
    [
      { 'ambit-mirror-2': '{"Service": "api"}' },
      'Meta.ambit-mirror-2: names Routes[2], and the router has 2',
    ],
    [{ 'ambit-mirror-01': '{"Service": "api"}' }, 'Meta.ambit-mirror-01: route index must be written'],
    [{ 'ambit-mirrors': '{}' }, 'Meta.ambit-mirrors: is not a mirror key'],
  ];
  for (const [meta, want] of cases) {
    const msg = refusal(meta);
    t.true(msg.startsWith('mesh.yaml: service-router/api: '), msg);
    t.true(msg.includes(want), `${msg}\n  wants: ${want}`);
  }
});

test('the draw: 100 always, 0 never, else below the percent; near 30% over 10,000 seeded draws', (t) => {
  const p = (percent: number) => ({ service: 'x', namespace: undefined, subset: '', percent });
  t.true(drawMirror(p(100), () => 0.999999));
  t.false(drawMirror(p(0), () => 0));
  t.true(drawMirror(p(30), () => 0.29));
  t.false(drawMirror(p(30), () => 0.3));
  let x = 12345;
  const rng = () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
  let hit = 0;
  for (let i = 0; i < 10_000; i++) if (drawMirror(p(30), rng)) hit++;
  t.true(hit > 2800 && hit < 3200, `${hit} of 10000`);
});

test("the copy's Host: -shadow after the host, ahead of its port, as Envoy's shadowAppendedHost", (t) => {
  t.is(shadowHost('api'), 'api-shadow');
  t.is(shadowHost('api.default:8080'), 'api.default-shadow:8080');
  t.is(shadowHost('127.0.0.1:41234'), '127.0.0.1-shadow:41234');
  t.is(shadowHost('[2001:2::1]:80'), '[2001:2::1]-shadow:80');
  t.is(shadowHost('[2001:2::1]'), '[2001:2::1]-shadow');
});

function routed(entries: unknown[], random: () => number = () => 0) {
  const w = (name: string, svc: string, version?: string) =>
    workload({
      name,
      service: svc,
      node: 'n1',
      addresses: [`10.1.0.${10 + name.length}`],
      ports: [8080],
      ...(version ? { version } : {}),
    });
  const store = storeOf({
    nodes: [node('n1', '10.0.0.1')],
    workloads: [w('api-1', 'api'), w('shadow-1', 'shadow', 'v1'), w('shadow-22', 'shadow', 'v2')],
    services: [
      service({ name: 'api', waypoint: 'wp', protocol: 'http' }),
      service({ name: 'shadow', protocol: 'http' }),
    ],
    configEntries: validateEntries([API_HTTP, ...entries], 'unit'),
  });
  const r = new ChainRouter({ store, log: silentLogger(), ejectMs: 1000, random });
  const req = meshRequests(store);
  return { r, req };
}

const RESOLVER = {
  Kind: 'service-resolver',
  Name: 'shadow',
  DefaultSubset: 'v1',
  Subsets: {
    v1: { Filter: 'Service.Meta.version == v1' },
    v2: { Filter: 'Service.Meta.version == v2' },
  },
};

test('ChainRouter: the copy goes to its subset, else the DefaultSubset; a retry carries none', (t) => {
  const { r, req } = routed([
    { Kind: 'service-defaults', Name: 'shadow', Protocol: 'http' },
    RESOLVER,
    router({
      'ambit-mirror-0': '{"Service": "shadow", "ServiceSubset": "v2"}',
      'ambit-mirror-1': '{"Service": "shadow"}',
    }),
  ]);
  for (let i = 0; i < 4; i++) {
    const v2 = r.route(req('/r0/x')) as RequestRoute;
    t.is(v2.endpoint.name, 'api-1');
    t.like(v2.mirror, {
      service: { name: 'shadow', namespace: 'default' },
      endpoint: { name: 'shadow-22' },
      plan: { service: { name: 'shadow' } },
    });
    r.done(v2);
    const v1 = r.route(req('/r1/x')) as RequestRoute;
    t.is(v1.mirror?.endpoint?.name, 'shadow-1');
    r.done(v1);
  }
  // The catch-all has no key of its own, and no ambit-mirror: no copy.
  const plain = r.route(req('/other')) as RequestRoute;
  t.is(plain.mirror, undefined);
  t.is(r.reroute(plain, new Set()), undefined, 'no retry policy, no reroute');
});

test('ChainRouter: a retried request is copied once; an unknown subset is a copy with no endpoint', (t) => {
  const { r, req } = routed([
    RESOLVER,
    {
      Kind: 'service-router',
      Name: 'api',
      Meta: {
        'ambit-mirror-0': '{"Service": "shadow"}',
        'ambit-mirror-1': '{"Service": "shadow", "ServiceSubset": "v9"}',
        'ambit-mirror-2': '{"Service": "nobody"}',
      },
      Routes: [
        { Match: { HTTP: { PathPrefix: '/r0/' } }, Destination: { NumRetries: 2, RetryOn: ['5xx'] } },
        { Match: { HTTP: { PathPrefix: '/r1/' } } },
        { Match: { HTTP: { PathPrefix: '/r2/' } } },
      ],
    },
  ]);
  const first = r.route(req('/r0/x')) as RequestRoute;
  t.is(first.mirror?.endpoint?.name, 'shadow-1');
  const again = r.reroute(first, new Set(['api-1']));
  t.truthy(again);
  t.is(again?.mirror, undefined, 'the retry sends no second copy');
  t.like((r.route(req('/r1/x')) as RequestRoute).mirror, {
    why: 'service-resolver/shadow has no subset v9',
    endpoint: undefined,
  });
  t.like((r.route(req('/r2/x')) as RequestRoute).mirror, {
    service: { name: 'nobody' },
    why: 'no healthy endpoint for nobody.default.default.dc1',
  });
});

test('ChainRouter: a percentage of the route is copied, drawn from the router RNG', (t) => {
  let i = 0;
  const draws = [0.1, 0.6, 0.49, 0.5];
  const { r, req } = routed(
    [router({ 'ambit-mirror': '{"Service": "shadow", "Percent": 50}' })],
    () => draws[i++ % draws.length]!,
  );
  const got = draws.map(() => {
    const x = r.route(req('/r0/x')) as RequestRoute;
    r.done(x);
    return x.mirror !== undefined;
  });
  // Round robin draws nothing: each request's one draw is the mirror's.
  t.deepEqual(got, [true, false, true, false]);
});

async function outcomes(m: Metrics): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  const metric = (await m.registry.getMetricsAsJSON()).find(
    (x) => x.name === 'ambit_waypoint_mirrored_requests_total',
  ) as { values: { labels: Record<string, string>; value: number }[] } | undefined;
  for (const v of metric?.values ?? []) out[v.labels.outcome!] = v.value;
  return out;
}

test('Mirrors: copies in flight and their bodies are bounded; each outcome counted', async (t) => {
  const metrics = new Metrics();
  const mirrors = new Mirrors({
    metrics,
    refusals: new Refusals(metrics, silentLogger()),
    bufferBytes: 10,
    maxInFlight: 2,
    timeoutMs: 1000,
  });
  const { r, req } = routed([router({ 'ambit-mirror': '{"Service": "shadow"}' })]);
  const route = r.route(req('/r0/x')) as RequestRoute;
  const a = mirrors.start(route, 'web')!;
  const b = mirrors.start(route, 'web')!;
  t.truthy(a && b);
  t.is(mirrors.start(route, 'web'), undefined, 'a third copy is over waypointMirrorMaxInFlight');
  t.is(mirrors.inFlight, 2);
  t.true(a.push(Buffer.alloc(6)));
  t.false(a.push(Buffer.alloc(6)), 'past waypointMirrorBufferBytes the copy is given up');
  t.false(a.open);
  t.deepEqual(a.body.chunks, [], 'and what it kept is freed');
  t.is(mirrors.inFlight, 1);
  b.end('sent');
  b.end('failed');
  t.is(mirrors.inFlight, 0, 'ending twice frees one slot');
  t.is(
    mirrors.start({ ...route, mirror: { service: { name: 'x', namespace: 'default' } } }, 'web'),
    undefined,
  );
  t.is(mirrors.start({ ...route, mirror: undefined }, 'web'), undefined);
  t.deepEqual(await outcomes(metrics), {
    'skipped-overflow': 1,
    'skipped-body': 1,
    sent: 1,
    failed: 1,
  });
});
