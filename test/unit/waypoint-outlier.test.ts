// Outlier ejection at the waypoint (daemon/waypoint/outlier.ts) over simulated time: consecutive failures
// up to MaxFailures eject, a success in between starts the count again, the ejection lasts
// BaseEjectionTime x the ejection multiplier and ends at a sweep, the multiplier comes down while the
// endpoint stays in, MaxEjectionPercent holds (Envoy's rule: below the share, so the first always may),
// EnforcingConsecutive5xx draws; and ChainRouter routing around an ejected endpoint, from the entries.
import test from 'ava';
import type { OutboundPlan } from '../../daemon/proxy/outbound/plan.js';
import { ChainRouter } from '../../daemon/waypoint/chain-router.js';
import {
  OUTLIER_DEFAULTS,
  OutlierDetector,
  type OutlierSettings,
  passiveHealthCheck,
  settingsOf,
} from '../../daemon/waypoint/outlier.js';
import type { RequestRoute, RouteRequest } from '../../daemon/waypoint/router.js';
import { indexEntries, validateEntries } from '../../lib/l7/index.js';
import { type LogLine, captureLogs } from '../helpers/logs.js';
import { identityOf, node, service, storeOf, workload } from '../helpers/mesh.js';

const API = { name: 'api', namespace: 'default' };
const WEB = { name: 'web', namespace: 'default' };
const TARGET = { id: 'api.default.default.dc1', service: API };

const settings = (p: Partial<OutlierSettings> = {}): OutlierSettings => ({
  intervalMs: 1000,
  maxFailures: 3,
  enforcingPercent: 100,
  maxEjectionPercent: 100,
  baseEjectionMs: 1000,
  maxEjectionMs: 300_000,
  ...p,
});

function detector(random: () => number = () => 0) {
  const { lines, logger } = captureLogs();
  const counted: string[] = [];
  let gauge = 0;
  const d = new OutlierDetector({
    log: logger('wp'),
    timers: false,
    random,
    metrics: {
      ejection: (svc, reason) => counted.push(`${svc} ${reason}`),
      ejected: (_svc, delta) => {
        gauge += delta;
      },
    },
  });
  return { d, counted, gauge: () => gauge, logs: (): LogLine[] => lines.get('wp') ?? [] };
}

/** `n` results for `host` of a target of `size` endpoints at `at`. */
function feed(
  d: OutlierDetector,
  s: OutlierSettings,
  host: string,
  results: (number | 'reset' | 'connect_failure' | 'timeout')[],
  at: number,
  size = 3,
): void {
  for (const r of results) d.observe(d.ticket(WEB, TARGET, s, size, host), r, at);
}

test('MaxFailures consecutive 5xx eject; a success between them starts the count again', (t) => {
  const { d, counted, gauge, logs } = detector();
  const s = settings();
  feed(d, s, 'api-1', [500, 503, 200, 500, 502], 0);
  t.false(d.isEjected(WEB, TARGET.id, 'api-1'), 'two, a success, two: never three in a row');
  feed(d, s, 'api-1', [504], 0);
  t.true(d.isEjected(WEB, TARGET.id, 'api-1'));
  t.deepEqual(counted, ['api.default consecutive_5xx']);
  t.is(gauge(), 1);
  t.true(logs().some((l) => l.msg === 'waypoint ejected an endpoint (outlier)' && l.endpoint === 'api-1'));
  // 4xx are the client's: they are successes to the endpoint's health.
  feed(d, s, 'api-2', [500, 404, 500, 429, 500], 0);
  t.false(d.isEjected(WEB, TARGET.id, 'api-2'));
});

test('failures before an answer count as 5xx: connect failures, resets, timeouts', (t) => {
  const { d } = detector();
  feed(d, settings(), 'api-1', ['connect_failure', 'reset', 'timeout'], 0);
  t.true(d.isEjected(WEB, TARGET.id, 'api-1'));
});

test('an ejection lasts BaseEjectionTime x its multiplier and ends at a sweep; the multiplier decays', (t) => {
  const { d, gauge, logs } = detector();
  const s = settings({ baseEjectionMs: 1000, intervalMs: 500 });
  const eject = (at: number): void => feed(d, s, 'api-1', [500, 500, 500], at);
  const out = (): boolean => d.isEjected(WEB, TARGET.id, 'api-1');
  eject(0);
  d.sweep(999);
  t.true(out(), 'still out before its 1 s');
  d.sweep(1000);
  t.false(out(), 'back at the first sweep from 1 s');
  t.is(gauge(), 0);
  t.true(logs().some((l) => l.msg === 'waypoint returned an ejected endpoint'));
  // Ejected again at once: the second time is 2 x 1 s.
  eject(1000);
  d.sweep(2999);
  t.true(out());
  d.sweep(3000);
  t.false(out());
  // In for an interval from its return: the multiplier is down from 2 to 1, so the third is 2 x 1 s, not 3.
  d.sweep(3500);
  eject(3500);
  d.sweep(5499);
  t.true(out());
  d.sweep(5500);
  t.false(out(), 'back after 2 s: the multiplier came down before the third ejection');
  const { d: d2 } = detector();
  // Far apart, the multiplier falls back to 0 and each ejection is the base time again.
  feed(d2, s, 'api-1', [500, 500, 500], 0);
  d2.sweep(1000);
  for (let at = 1500; at <= 5000; at += 500) d2.sweep(at);
  feed(d2, s, 'api-1', [500, 500, 500], 5000);
  d2.sweep(5999);
  t.true(d2.isEjected(WEB, TARGET.id, 'api-1'));
  d2.sweep(6000);
  t.false(d2.isEjected(WEB, TARGET.id, 'api-1'));
});

test('the ejection time is capped at max(300 s, BaseEjectionTime)', (t) => {
  const { d } = detector();
  const s = settingsOf({ BaseEjectionTime: 200_000, MaxFailures: 1, MaxEjectionPercent: 100 });
  t.is(s.maxEjectionMs, 300_000);
  t.is(settingsOf({ BaseEjectionTime: 400_000 }).maxEjectionMs, 400_000);
  feed(d, s, 'api-1', [500], 0);
  d.sweep(200_000);
  feed(d, s, 'api-1', [500], 200_000);
  // Twice 200 s would be 400 s: the cap makes it 300 s.
  d.sweep(499_999);
  t.true(d.isEjected(WEB, TARGET.id, 'api-1'));
  d.sweep(500_000);
  t.false(d.isEjected(WEB, TARGET.id, 'api-1'));
});

test('MaxEjectionPercent: below the share ejects, so the first always may; 0 never does', (t) => {
  const { d, counted, logs } = detector();
  // 10% of 3 endpoints: 0% ejected is below it, so one goes; then 33% is not.
  const s = settings({ maxEjectionPercent: 10 });
  feed(d, s, 'api-1', [500, 500, 500], 0);
  feed(d, s, 'api-2', [500, 500, 500], 0);
  t.true(d.isEjected(WEB, TARGET.id, 'api-1'));
  t.false(d.isEjected(WEB, TARGET.id, 'api-2'));
  t.is(counted.length, 1);
  t.true(logs().some((l) => String(l.msg).includes('MaxEjectionPercent') && l.endpoint === 'api-2'));
  // 50% of 4: two may go (0% and 25% are below 50%), the third not (50% is not below).
  const { d: d4 } = detector();
  const half = settings({ maxEjectionPercent: 50 });
  for (const h of ['a', 'b', 'c']) feed(d4, half, h, [500, 500, 500], 0, 4);
  t.deepEqual(
    ['a', 'b', 'c'].map((h) => d4.isEjected(WEB, TARGET.id, h)),
    [true, true, false],
  );
  const { d: d0 } = detector();
  feed(d0, settings({ maxEjectionPercent: 0 }), 'api-1', [500, 500, 500], 0);
  t.false(d0.isEjected(WEB, TARGET.id, 'api-1'));
});

test('EnforcingConsecutive5xx: the ejection is drawn at that percent', (t) => {
  let draw = 0.5;
  const { d, logs } = detector(() => draw);
  const s = settings({ enforcingPercent: 40 });
  feed(d, s, 'api-1', [500, 500, 500], 0);
  t.false(d.isEjected(WEB, TARGET.id, 'api-1'), '50 is not below 40: detected, not ejected');
  t.true(logs().some((l) => String(l.msg).includes('not ejected (EnforcingConsecutive5xx)')));
  draw = 0.39;
  // The count started again at the detection: three more are needed.
  feed(d, s, 'api-1', [500, 500], 0);
  t.false(d.isEjected(WEB, TARGET.id, 'api-1'));
  feed(d, s, 'api-1', [500], 0);
  t.true(d.isEjected(WEB, TARGET.id, 'api-1'));
});

test("Envoy's defaults fill what PassiveHealthCheck leaves unset; Consul's 0 is unset for two of them", (t) => {
  t.deepEqual(settingsOf({}), { ...OUTLIER_DEFAULTS });
  t.like(settingsOf({ Interval: 0, MaxFailures: 0, EnforcingConsecutive5xx: 0, MaxEjectionPercent: 0 }), {
    intervalMs: 10_000,
    maxFailures: 5,
    enforcingPercent: 0,
    maxEjectionPercent: 0,
  });
});

test("the client's override for the dialled service, else its Defaults; durations in nanoseconds", (t) => {
  const set = indexEntries(
    validateEntries(
      [
        {
          Kind: 'service-defaults',
          Name: 'web',
          UpstreamConfig: {
            Defaults: { PassiveHealthCheck: { MaxFailures: 7 } },
            Overrides: [
              { Name: 'api', PassiveHealthCheck: { MaxFailures: 2, BaseEjectionTime: 1_000_000_000 } },
              { Name: 'db', Limits: { MaxConcurrentRequests: 1 } },
            ],
          },
        },
      ],
      'unit',
    ),
  );
  t.like(passiveHealthCheck(set, WEB, API), { MaxFailures: 2, BaseEjectionTime: 1000 });
  t.like(passiveHealthCheck(set, WEB, { name: 'db', namespace: 'default' }), { MaxFailures: 7 });
  t.is(passiveHealthCheck(set, { name: 'other', namespace: 'default' }, API), undefined);
});

function world(phc: Record<string, unknown> | undefined) {
  const api = [1, 2, 3].map((i) =>
    workload({ name: `api-${i}`, service: 'api', node: 'n1', addresses: [`10.1.0.${i}`], ports: [8080] }),
  );
  const entries: unknown[] = [{ Kind: 'service-defaults', Name: 'api', Protocol: 'http' }];
  if (phc)
    entries.push({
      Kind: 'service-defaults',
      Name: 'web',
      UpstreamConfig: { Overrides: [{ Name: 'api', PassiveHealthCheck: phc }] },
    });
  const store = storeOf({
    nodes: [node('n1', '10.0.0.1')],
    workloads: api,
    services: [service({ name: 'api', waypoint: 'wp', protocol: 'http' })],
    configEntries: validateEntries(entries, 'unit'),
  });
  const router = new ChainRouter({
    store,
    log: captureLogs().logger('wp'),
    ejectMs: 1000,
    outlierTimers: false,
  });
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
  /** One request answered by `status(endpoint)`: the endpoint it went to. */
  const one = (status: (ep: string) => number, at: number): string => {
    const r = router.route(req, at) as RequestRoute;
    router.outcome(r, status(r.endpoint.name), at);
    router.done(r);
    return r.endpoint.name;
  };
  return { router, one, store };
}

test('ChainRouter: a failing endpoint is ejected, traffic goes to the others, and it comes back', (t) => {
  const { router, one } = world({
    MaxFailures: 2,
    MaxEjectionPercent: 50,
    BaseEjectionTime: '1s',
    Interval: '1s',
  });
  const failing = (ep: string): number => (ep === 'api-2' ? 500 : 200);
  for (let i = 0; i < 30; i++) one(failing, 0);
  const after = new Set(Array.from({ length: 30 }, () => one(failing, 10)));
  t.deepEqual([...after].sort(), ['api-1', 'api-3']);
  t.like(router.ejections(), [
    {
      client: 'default/web',
      target: 'api.default.default.dc1',
      endpoints: 3,
      ejected: [{ endpoint: 'api-2' }],
    },
  ]);
  router.outliers.sweep(1000);
  const back = new Set(Array.from({ length: 30 }, () => one(() => 200, 1000)));
  t.deepEqual([...back].sort(), ['api-1', 'api-2', 'api-3']);
  t.like(router.ejections(), [{ ejected: [] }]);
});

test('ChainRouter: an ejected endpoint that leaves its service leaves nothing behind', (t) => {
  const { router, one, store } = world({ MaxFailures: 1, MaxEjectionPercent: 50 });
  for (let i = 0; i < 6; i++) one((ep) => (ep === 'api-2' ? 500 : 200), 0);
  t.like(router.ejections(), [{ ejected: [{ endpoint: 'api-2' }] }]);
  store.replace({ ...store.mesh, workloads: store.mesh.workloads.filter((w) => w.name !== 'api-2') });
  one(() => 200, 0);
  t.like(router.ejections(), [{ endpoints: 2, ejected: [] }]);
});

test('ChainRouter: without a PassiveHealthCheck nothing is held, whatever the endpoints answer', (t) => {
  const { router, one } = world(undefined);
  const seen = new Set(Array.from({ length: 30 }, () => one(() => 500, 0)));
  t.is(seen.size, 3);
  t.is(router.outliers.size, 0);
  t.deepEqual(router.ejections(), []);
});
