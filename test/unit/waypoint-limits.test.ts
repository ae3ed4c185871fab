// The waypoint's circuit breaking and rate limits (daemon/waypoint/traffic-limits.ts) over simulated time:
// token buckets refilled at RequestsPerSecond up to RequestsMaxBurst, a bucket per route rule with the
// first matching route winning, MaxConcurrentRequests per client and destination taken and given back,
// limits that follow the entries as they change; and ChainRouter refusing through them.
import test from 'ava';
import type { OutboundPlan } from '../../daemon/proxy/outbound/plan.js';
import { ChainRouter } from '../../daemon/waypoint/chain-router.js';
import type { RouteRequest } from '../../daemon/waypoint/router.js';
import {
  type Admission,
  type LimitRequest,
  TrafficLimits,
  concurrencyLimit,
  rateRules,
} from '../../daemon/waypoint/traffic-limits.js';
import { type EntrySet, indexEntries, validateEntries } from '../../lib/l7/index.js';
import { silentLogger } from '../../lib/log.js';
import { identityOf, node, service, storeOf, workload } from '../helpers/mesh.js';

const API = { name: 'api', namespace: 'default' };
const WEB = { name: 'web', namespace: 'default' };

const setOf = (entries: unknown[]): EntrySet => indexEntries(validateEntries(entries, 'unit'));

const apiRates = (il: Record<string, unknown>): unknown => ({
  Kind: 'service-defaults',
  Name: 'api',
  Protocol: 'http',
  RateLimits: { InstanceLevel: il },
});

const webLimits = (upstreamConfig: Record<string, unknown>): unknown => ({
  Kind: 'service-defaults',
  Name: 'web',
  Protocol: 'http',
  UpstreamConfig: upstreamConfig,
});

const to = (path: string, p: Partial<LimitRequest> = {}): LimitRequest => ({
  client: WEB,
  dialed: API,
  target: API,
  path,
  ...p,
});

/** How many of `n` requests at `at` ms are admitted (released at once: rates only). */
function admitted(limits: TrafficLimits, set: EntrySet, n: number, at: number, path = '/'): number {
  let ok = 0;
  for (let i = 0; i < n; i++) {
    const a = limits.admit(set, to(path), at);
    if (a.ok) {
      ok++;
      a.release();
    }
  }
  return ok;
}

test('a rate admits its burst at once, then RequestsPerSecond as time passes', (t) => {
  const set = setOf([apiRates({ RequestsPerSecond: 100, RequestsMaxBurst: 20 })]);
  const limits = new TrafficLimits();
  t.is(admitted(limits, set, 50, 0), 20);
  // 10 ms at 100/s is one token; 5 ms is half of one, not enough.
  t.is(admitted(limits, set, 5, 5), 0);
  t.is(admitted(limits, set, 5, 10), 1);
  // Over 3 s of simulated time, a request every 5 ms (200/s): the rate's 300 and nothing more.
  let served = 0;
  for (let at = 15; at <= 3010; at += 5) served += admitted(limits, set, 1, at);
  t.is(served, 300);
  // Idle long enough, the bucket is full again, never over its burst.
  t.is(admitted(limits, set, 100, 60_000), 20);
});

test('an unset burst is the rate; a service without RequestsPerSecond has no service-wide rate', (t) => {
  const limits = new TrafficLimits();
  t.is(admitted(limits, setOf([apiRates({ RequestsPerSecond: 7 })]), 50, 0), 7);
  t.deepEqual(rateRules(setOf([apiRates({ RequestsMaxBurst: 9 })]).serviceDefaults.get('default/api')), []);
  t.is(admitted(new TrafficLimits(), setOf([apiRates({ RequestsMaxBurst: 9 })]), 50, 0), 50);
  t.is(admitted(new TrafficLimits(), setOf([{ Kind: 'service-defaults', Name: 'api' }]), 50, 0), 50);
});

test('each route has its own bucket; the first matching route wins, else the service-wide one', (t) => {
  const set = setOf([
    apiRates({
      RequestsPerSecond: 10,
      Routes: [
        { PathExact: '/login', RequestsPerSecond: 2 },
        { PathPrefix: '/search/', RequestsPerSecond: 3, RequestsMaxBurst: 5 },
        // Never reached for /search/...: the prefix above matches first.
        { PathRegex: '/search/.*', RequestsPerSecond: 1000 },
        { PathRegex: '/items/[0-9]+', RequestsPerSecond: 4 },
      ],
    }),
  ]);
  const limits = new TrafficLimits();
  t.is(admitted(limits, set, 20, 0, '/login'), 2);
  // The query string is not the path; a path only like the exact one is the service's.
  t.is(admitted(limits, set, 20, 0, '/login?next=/'), 0);
  t.is(admitted(limits, set, 20, 0, '/search/a'), 5);
  t.is(admitted(limits, set, 20, 0, '/search/b'), 0);
  t.is(admitted(limits, set, 20, 0, '/items/42'), 4);
  // The regex is over the whole path: /items/42/x is the service's, as is anything else.
  t.is(admitted(limits, set, 20, 0, '/items/42/x'), 10);
  t.is(admitted(limits, set, 20, 0, '/other'), 0);
  t.is(admitted(limits, set, 20, 0, '/login'), 0);
  // Each refills at its own rate: one second later, 2 logins and 10 others.
  t.is(admitted(limits, set, 20, 1000, '/login'), 2);
  t.is(admitted(limits, set, 20, 1000, '/'), 10);
});

test("the rate is the destination service's: another service has its own, or none", (t) => {
  const set = setOf([
    apiRates({ RequestsPerSecond: 2 }),
    { Kind: 'service-defaults', Name: 'legacy', RateLimits: { InstanceLevel: { RequestsPerSecond: 3 } } },
  ]);
  const limits = new TrafficLimits();
  const legacy = { name: 'legacy', namespace: 'default' };
  const n = (target: typeof API): number =>
    Array.from({ length: 10 }, () => limits.admit(set, to('/', { target }), 0)).filter((a) => a.ok).length;
  t.is(n(API), 2);
  t.is(n(legacy), 3);
  t.is(n({ name: 'other', namespace: 'default' }), 10);
});

test("MaxConcurrentRequests: the client entry's override for the destination, else its Defaults", (t) => {
  const set = setOf([
    webLimits({
      Defaults: { Limits: { MaxConcurrentRequests: 5 } },
      Overrides: [{ Name: 'api', Limits: { MaxConcurrentRequests: 2, MaxPendingRequests: 1 } }],
    }),
  ]);
  t.is(concurrencyLimit(set, WEB, API), 2);
  t.is(concurrencyLimit(set, WEB, { name: 'legacy', namespace: 'default' }), 5);
  // Another namespace's api is not the override's (it names the entry's namespace).
  t.is(concurrencyLimit(set, WEB, { name: 'api', namespace: 'ns2' }), 5);
  t.is(concurrencyLimit(set, { name: 'other', namespace: 'default' }, API), undefined);
  t.is(
    concurrencyLimit(setOf([webLimits({ Defaults: { Limits: { MaxConnections: 3 } } })]), WEB, API),
    undefined,
  );
});

test('concurrency slots are taken and given back, once each, never below zero', (t) => {
  const set = setOf([webLimits({ Overrides: [{ Name: 'api', Limits: { MaxConcurrentRequests: 3 } }] })]);
  const limits = new TrafficLimits();
  const held: Admission[] = Array.from({ length: 5 }, () => limits.admit(set, to('/'), 0));
  t.deepEqual(
    held.map((a) => a.ok),
    [true, true, true, false, false],
  );
  const refused = held[3]!;
  t.false(refused.ok);
  if (!refused.ok) {
    t.is(refused.refusal, 'overflow');
    t.regex(refused.why, /3 requests from web to api in flight/);
  }
  t.is(limits.inFlight(WEB, API), 3);
  const first = held[0]!;
  if (!first.ok) throw new Error('first refused');
  first.release();
  first.release();
  t.is(limits.inFlight(WEB, API), 2);
  t.true(limits.admit(set, to('/'), 0).ok);
  t.false(limits.admit(set, to('/'), 0).ok);
  for (const a of held) if (a.ok) a.release();
  for (const a of held) if (a.ok) a.release();
  t.is(limits.inFlight(WEB, API), 1);
  // Another client's service has a count of its own, and web's entry does not limit it.
  const other = { name: 'other', namespace: 'default' };
  const others = Array.from({ length: 5 }, () => limits.admit(set, to('/', { client: other }), 0));
  t.true(others.every((a) => a.ok));
  t.is(limits.inFlight(other, API), 5);
  t.is(limits.inFlight(WEB, API), 1);
  // A limit set while they are in flight counts them: 5 held, a limit of 5 admits no sixth.
  const later = setOf([
    {
      Kind: 'service-defaults',
      Name: 'other',
      UpstreamConfig: { Defaults: { Limits: { MaxConcurrentRequests: 5 } } },
    },
  ]);
  t.like(limits.admit(later, to('/', { client: other }), 0), { ok: false, refusal: 'overflow' });
  for (const a of others) if (a.ok) a.release();
  t.true(limits.admit(later, to('/', { client: other }), 0).ok);
  t.is(limits.inFlight(other, API), 1);
});

test('an overflow takes no token; a rate-limited request holds no slot', (t) => {
  const set = setOf([
    apiRates({ RequestsPerSecond: 2 }),
    webLimits({ Overrides: [{ Name: 'api', Limits: { MaxConcurrentRequests: 1 } }] }),
  ]);
  const limits = new TrafficLimits();
  const one = limits.admit(set, to('/'), 0);
  t.true(one.ok);
  const over = limits.admit(set, to('/'), 0);
  t.like(over, { ok: false, refusal: 'overflow' });
  if (one.ok) one.release();
  // The overflow did not spend the second token.
  const two = limits.admit(set, to('/'), 0);
  t.true(two.ok);
  if (two.ok) two.release();
  t.like(limits.admit(set, to('/'), 0), { ok: false, refusal: 'rate_limited' });
  t.is(limits.inFlight(WEB, API), 0);
});

test('limits follow the entries: a new rate, a lower burst, a rule removed, a new concurrency', (t) => {
  const limits = new TrafficLimits();
  const before = setOf([
    apiRates({ RequestsPerSecond: 10, Routes: [{ PathPrefix: '/a', RequestsPerSecond: 1 }] }),
    webLimits({ Defaults: { Limits: { MaxConcurrentRequests: 1 } } }),
  ]);
  t.is(admitted(limits, before, 3, 0, '/a'), 1);
  t.is(admitted(limits, before, 3, 0, '/b'), 3);
  const held = limits.admit(before, to('/b'), 0);
  t.true(held.ok);
  // A lower burst holds no more than it: 6 of the 10 tokens were left, 2 remain (one for `next`).
  const after = setOf([
    apiRates({ RequestsPerSecond: 100, RequestsMaxBurst: 2 }),
    webLimits({ Defaults: { Limits: { MaxConcurrentRequests: 2 } } }),
  ]);
  // The slot held under the old limit still counts; the new limit admits one more beside it.
  const next = limits.admit(after, to('/b'), 0);
  t.true(next.ok);
  t.like(limits.admit(after, to('/b'), 0), { ok: false, refusal: 'overflow' });
  if (held.ok) held.release();
  if (next.ok) next.release();
  t.is(limits.inFlight(WEB, API), 0);
  t.is(admitted(limits, after, 5, 0, '/b'), 1);
  // The /a route is gone: /a is the service's now, refilled at the new rate (100/s: one per 10 ms).
  t.is(admitted(limits, after, 5, 10, '/a'), 1);
  t.is(admitted(limits, after, 5, 1000, '/a'), 2);
  // No limits at all: everything goes.
  t.is(admitted(limits, setOf([]), 100, 1000), 100);
});

test('a clock that steps back refills nothing', (t) => {
  const set = setOf([apiRates({ RequestsPerSecond: 10, RequestsMaxBurst: 1 })]);
  const limits = new TrafficLimits();
  t.is(admitted(limits, set, 2, 10_000), 1);
  t.is(admitted(limits, set, 2, 0), 0);
  t.is(admitted(limits, set, 2, 10_050), 0);
  t.is(admitted(limits, set, 2, 10_100), 1);
});

test('ChainRouter refuses over a limit and gives the slot back on done', (t) => {
  const api1 = workload({
    name: 'api-1',
    service: 'api',
    node: 'n1',
    addresses: ['10.1.0.10'],
    ports: [8080],
  });
  const store = storeOf({
    nodes: [node('n1', '10.0.0.1')],
    workloads: [api1],
    services: [service({ name: 'api', waypoint: 'wp', protocol: 'http' })],
    configEntries: validateEntries(
      [
        apiRates({ RequestsPerSecond: 1, RequestsMaxBurst: 3 }),
        webLimits({ Overrides: [{ Name: 'api', Limits: { MaxConcurrentRequests: 2 } }] }),
      ],
      'unit',
    ),
  });
  const router = new ChainRouter({ store, log: silentLogger(), ejectMs: 1000 });
  const plan: OutboundPlan = {
    kind: 'mesh',
    service: API,
    endpoints: store.endpoints('default', 'api'),
    targetPort: 8080,
    targeted: undefined,
  };
  const req: RouteRequest = {
    plan,
    client: identityOf({ namespace: 'default', service: 'web' }),
    method: 'GET',
    path: '/',
    headers: {},
  };
  const a = router.route(req, 0);
  const b = router.route(req, 0);
  t.is(a.kind, 'route');
  t.is(b.kind, 'route');
  t.like(router.route(req, 0), { kind: 'limited', limit: 'overflow' });
  if (a.kind === 'route') router.done(a);
  const c = router.route(req, 0);
  t.is(c.kind, 'route');
  // Three tokens spent (the overflow took none): the next is rate limited.
  if (c.kind === 'route') router.done(c);
  const d = router.route(req, 0);
  t.like(d, { kind: 'limited', limit: 'rate_limited', labels: { target: 'api.default.default.dc1' } });
  // A client that names no service has no client entry: the rate alone applies.
  t.like(router.route({ ...req, client: 'spiffe://elsewhere/x' }, 1000), { kind: 'route' });
});

test('a lane kept by the caller counts with admit, and pairs at zero go when the entries change', (t) => {
  const set = setOf([
    webLimits({ Defaults: { Limits: { MaxConcurrentRequests: 2 } } }),
    apiRates({ RequestsPerSecond: 3 }),
  ]);
  const limits = new TrafficLimits();
  const lane = limits.lane(set, WEB, API, API);
  const a = limits.admitLane(lane, '/', 0);
  t.true(a.ok);
  // The same pair through admit: one count, one limit, one bucket.
  const b = limits.admit(set, to('/'), 0);
  t.true(b.ok);
  t.like(limits.admitLane(lane, '/', 0), { ok: false, refusal: 'overflow' });
  t.is(limits.inFlight(WEB, API), 2);
  if (a.ok) a.release();
  if (b.ok) b.release();
  t.like(limits.admitLane(lane, '/', 0), { ok: true });
  t.like(limits.admit(set, to('/'), 0), { ok: false, refusal: 'rate_limited' }, 'the fourth token of 3');
  // Another client's pair, released: at zero, kept for its next request until the entries change.
  const other = { name: 'other', namespace: 'default' };
  const o = limits.admit(set, to('/', { client: other }), 1000);
  if (o.ok) o.release();
  t.is(limits.pairs, 2);
  const next = setOf([webLimits({ Defaults: { Limits: { MaxConcurrentRequests: 2 } } })]);
  // web holds 1 (the rate-limited one holds none): counted on under the new entries, a second fits, a third not.
  t.true(limits.admit(next, to('/'), 1000).ok);
  t.is(limits.pairs, 1, 'the pair at zero was dropped, the one in flight kept');
  t.like(limits.admit(next, to('/'), 1000), { ok: false, refusal: 'overflow' });
  t.is(limits.inFlight(WEB, API), 2);
});
