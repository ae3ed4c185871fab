// Retries at the waypoint (daemon/waypoint/retry.ts): the policy a route destination's fields make, which
// answers and failures each RetryOn condition retries, Envoy's jittered backoff, the retry budget's
// arithmetic, the body kept for a replay; and ChainRouter.reroute, which sends a retry elsewhere.
import { EventEmitter } from 'node:events';
import test from 'ava';
import { Refusals } from '../../daemon/limits/refusal.js';
import { Metrics } from '../../daemon/metrics/metrics.js';
import type { OutboundPlan } from '../../daemon/proxy/outbound/plan.js';
import { ChainRouter } from '../../daemon/waypoint/chain-router.js';
import type { ByteStream } from '../../daemon/waypoint/h1/byte-stream.js';
import { DEFAULT_HTTP1_LIMITS, WaypointHttp } from '../../daemon/waypoint/http.js';
import {
  BACKOFF_MAX_MS,
  ReplayBuffer,
  Retries,
  RetryBudget,
  type RetryCause,
  backoffMs,
  budgetCap,
  retryPolicy,
  retryReason,
  withRetryFlag,
} from '../../daemon/waypoint/retry.js';
import { type RequestRoute, type RouteRequest, ServiceRouter } from '../../daemon/waypoint/router.js';
import { validateEntries } from '../../lib/l7/index.js';
import { silentLogger } from '../../lib/log.js';
import { identityOf, node, service, storeOf, workload } from '../helpers/mesh.js';

const res = (status: number, grpcStatus?: string): RetryCause => ({ kind: 'response', status, grpcStatus });
const RESET: RetryCause = { kind: 'reset' };
const REFUSED: RetryCause = { kind: 'reset', refused: true };
const CONNECT: RetryCause = { kind: 'connect-failure' };

test('no condition, no retry: NumRetries alone leaves Envoy retry_on empty, as Consul writes it', (t) => {
  t.is(retryPolicy({}), undefined);
  t.is(retryPolicy({ NumRetries: 5 }), undefined);
  t.is(retryPolicy({ NumRetries: 3, RetryOn: [], RetryOnStatusCodes: [] }), undefined);
});

test('NumRetries 0 or unset with a condition is one retry (Envoy default); else as given', (t) => {
  t.is(retryPolicy({ RetryOn: ['5xx'] })?.numRetries, 1);
  t.is(retryPolicy({ RetryOn: ['5xx'], NumRetries: 0 })?.numRetries, 1);
  t.is(retryPolicy({ RetryOn: ['5xx'], NumRetries: 3 })?.numRetries, 3);
  // RetryOnConnectFailure is connect-failure; RetryOnStatusCodes adds retriable-status-codes (routes.go).
  t.deepEqual([...retryPolicy({ RetryOnConnectFailure: true })!.on], ['connect-failure']);
  t.deepEqual([...retryPolicy({ RetryOnStatusCodes: [418] })!.on], ['retriable-status-codes']);
});

test('which answers each HTTP condition retries', (t) => {
  const p = (...on: string[]) => retryPolicy({ RetryOn: on })!;
  t.is(retryReason(p('5xx'), res(500)), '5xx');
  t.is(retryReason(p('5xx'), res(599)), '5xx');
  t.is(retryReason(p('5xx'), res(404)), undefined);
  t.is(retryReason(p('5xx'), res(200)), undefined);
  t.is(retryReason(p('gateway-error'), res(503)), 'gateway-error');
  t.is(retryReason(p('gateway-error'), res(502)), 'gateway-error');
  t.is(retryReason(p('gateway-error'), res(504)), 'gateway-error');
  t.is(retryReason(p('gateway-error'), res(500)), undefined);
  t.is(retryReason(p('retriable-4xx'), res(409)), 'retriable-4xx');
  t.is(retryReason(p('retriable-4xx'), res(429)), undefined);
  t.is(
    retryReason(p('envoy-ratelimited'), { kind: 'response', status: 429, rateLimited: true }),
    'envoy-ratelimited',
  );
  t.is(retryReason(p('envoy-ratelimited'), res(429)), undefined);
  const codes = retryPolicy({ RetryOnStatusCodes: [418, 503] })!;
  t.is(retryReason(codes, res(418)), 'retriable-status-codes');
  t.is(retryReason(codes, res(503)), 'retriable-status-codes');
  t.is(retryReason(codes, res(500)), undefined);
  // Both: the first condition met names the retry.
  t.is(retryReason(p('5xx', 'gateway-error'), res(503)), '5xx');
});

test('which failures without an answer each condition retries', (t) => {
  const p = (...on: string[]) => retryPolicy({ RetryOn: on })!;
  t.is(retryReason(p('reset'), RESET), 'reset');
  t.is(retryReason(p('reset'), CONNECT), 'reset');
  t.is(retryReason(p('connect-failure'), CONNECT), 'connect-failure');
  t.is(retryReason(p('connect-failure'), RESET), undefined);
  t.is(retryReason(p('refused-stream'), REFUSED), 'refused-stream');
  t.is(retryReason(p('refused-stream'), RESET), undefined);
  // Envoy's 5xx and gateway-error also cover an upstream that never answered.
  t.is(retryReason(p('5xx'), RESET), '5xx');
  t.is(retryReason(p('gateway-error'), CONNECT), 'gateway-error');
  t.is(retryReason(p('retriable-4xx'), RESET), undefined);
  t.is(retryReason(retryPolicy({ RetryOnConnectFailure: true })!, CONNECT), 'connect-failure');
  t.is(retryReason(retryPolicy({ RetryOn: ['unavailable'] })!, RESET), undefined);
});

test('gRPC conditions match the grpc-status of a trailers-only answer', (t) => {
  const p = retryPolicy({
    RetryOn: ['cancelled', 'deadline-exceeded', 'internal', 'resource-exhausted', 'unavailable'],
  })!;
  t.is(retryReason(p, res(200, '1')), 'cancelled');
  t.is(retryReason(p, res(200, '4')), 'deadline-exceeded');
  t.is(retryReason(p, res(200, '8')), 'resource-exhausted');
  t.is(retryReason(p, res(200, '13')), 'internal');
  t.is(retryReason(p, res(200, '14')), 'unavailable');
  t.is(retryReason(p, res(200, '5')), undefined);
  t.is(retryReason(p, res(200, '0')), undefined);
  t.is(retryReason(p, res(200)), undefined);
  t.is(retryReason(retryPolicy({ RetryOn: ['unavailable'] })!, res(200, '13')), undefined);
});

test('backoff: uniform in [0, (2^n - 1) x 25 ms), capped at 250 ms', (t) => {
  const hi = () => 0.999_999;
  t.is(
    backoffMs(1, () => 0),
    0,
  );
  t.is(backoffMs(1, hi), 24);
  t.is(backoffMs(2, hi), 74);
  t.is(backoffMs(3, hi), 174);
  t.is(backoffMs(4, hi), BACKOFF_MAX_MS);
  t.is(backoffMs(40, hi), BACKOFF_MAX_MS);
  t.is(
    backoffMs(3, () => 0.5),
    87,
  );
  for (let i = 0; i < 1000; i++) {
    const d = backoffMs(1 + (i % 6));
    t.true(d >= 0 && d <= BACKOFF_MAX_MS && d < (2 ** (1 + (i % 6)) - 1) * 25);
  }
});

test('budget: at least 3 concurrent retries, else 20% of the requests in flight', (t) => {
  t.is(budgetCap(0), 3);
  t.is(budgetCap(10), 3);
  t.is(budgetCap(19), 3);
  t.is(budgetCap(20), 4);
  t.is(budgetCap(50), 10);
  t.is(budgetCap(1000), 200);
  const b = new RetryBudget();
  const ends = Array.from({ length: 30 }, () => b.begin('api.default'));
  const retries = Array.from({ length: 10 }, () => b.retry('api.default'));
  // 30 in flight: 6 retries at once, the 7th waits for one to end.
  t.is(retries.filter(Boolean).length, 6);
  t.deepEqual(b.load('api.default'), { requests: 30, retries: 6 });
  retries[0]!();
  retries[0]!();
  t.is(b.load('api.default').retries, 5);
  t.truthy(b.retry('api.default'));
  t.is(b.retry('api.default'), undefined);
  // Another service has a budget of its own; one with nothing in flight retries nothing here.
  t.is(b.retry('web.default'), undefined);
  for (const r of retries) r?.();
  for (const e of ends) e();
  t.deepEqual(b.load('api.default'), { requests: 0, retries: 1 });
  // Kept at zero for its next request, then swept: the services counted stay bounded.
  t.is(b.retry('api.default'), undefined);
  for (let i = 0; i < 2000; i++) b.begin(`svc-${i}.default`)();
  t.true(b.size <= 1024, `${b.size} services kept`);
  t.deepEqual(b.load('svc-1999.default'), { requests: 0, retries: 0 });
});

test('the body kept for a replay stops at its bound, and then keeps nothing', (t) => {
  const b = new ReplayBuffer(10);
  const src = Buffer.from('abcdef');
  t.true(b.push(src));
  src.fill(0);
  t.is(Buffer.concat(b.chunks).toString(), 'abcdef', 'a copy, not a view of the read');
  t.true(b.push(Buffer.from('ghij')));
  t.is(b.bytes, 10);
  t.false(b.push(Buffer.from('k')));
  t.true(b.overflowed);
  t.deepEqual(b.chunks, []);
  t.false(b.push(Buffer.from('')));
  t.true(new ReplayBuffer(0).push(Buffer.alloc(0)));
  // Once the answer has begun nothing is kept, and that is no overflow.
  const c = new ReplayBuffer(10);
  c.push(Buffer.from('abc'));
  c.close();
  t.deepEqual(c.chunks, []);
  t.true(c.push(Buffer.alloc(100)));
  t.false(c.overflowed);
  t.is(c.bytes, 0);
});

test('URX joins the flags once retries were spent', (t) => {
  t.is(withRetryFlag('-', undefined), '-');
  t.is(withRetryFlag('-', { exhausted: true } as never), 'URX');
  t.is(withRetryFlag('UF', { exhausted: true } as never), 'UF,URX');
  t.is(withRetryFlag('-', { exhausted: false } as never), '-');
});

const eps = ['api-1', 'api-2', 'api-3'].map((name, i) =>
  workload({ name, service: 'api', node: 'n1', addresses: [`10.1.0.${10 + i}`], ports: [8080] }),
);

function router(destination: Record<string, unknown>, policy?: string) {
  const entries = validateEntries(
    [
      { Kind: 'service-defaults', Name: 'api', Protocol: 'http' },
      ...(policy ? [{ Kind: 'service-resolver', Name: 'api', LoadBalancer: { Policy: policy } }] : []),
      {
        Kind: 'service-router',
        Name: 'api',
        Routes: [{ Match: { HTTP: { PathPrefix: '/r/' } }, Destination: destination }],
      },
    ],
    'unit',
  );
  const store = storeOf({
    nodes: [node('n1', '10.0.0.1')],
    workloads: eps,
    services: [service({ name: 'api', waypoint: 'wp', protocol: 'http' })],
    configEntries: entries,
  });
  const plan: OutboundPlan = {
    kind: 'mesh',
    service: { name: 'api', namespace: 'default' },
    endpoints: store.endpoints('default', 'api'),
    targetPort: 8080,
    targeted: undefined,
  };
  const r = new ChainRouter({ store, log: silentLogger(), ejectMs: 1000 });
  const route = (path: string): RequestRoute => {
    const got = r.route({
      plan,
      client: identityOf({ namespace: 'default', service: 'web' }),
      method: 'GET',
      path,
      headers: {},
    });
    if (got.kind !== 'route') throw new Error(got.kind);
    return got;
  };
  return { r, route };
}

test('a route with a retry policy carries it; the catch-all and NumRetries alone carry none', (t) => {
  const { route } = router({ NumRetries: 2, RetryOn: ['5xx'] });
  const a = route('/r/x');
  t.is(a.retry?.numRetries, 2);
  t.is(route('/r/y').retry, a.retry, 'parsed once per chain and route');
  t.is(route('/other').retry, undefined);
  t.is(router({ NumRetries: 2 }).route('/r/x').retry, undefined);
});

test('reroute: each retry to an endpoint not tried while one is left, then any', (t) => {
  const { r, route } = router({ NumRetries: 5, RetryOn: ['5xx'] });
  const first = route('/r/x');
  const tried = new Set([first.endpoint.name]);
  const second = r.reroute(first, tried)!;
  t.false(tried.has(second.endpoint.name));
  tried.add(second.endpoint.name);
  const third = r.reroute(second, tried)!;
  t.false(tried.has(third.endpoint.name));
  tried.add(third.endpoint.name);
  const fourth = r.reroute(third, tried);
  t.truthy(fourth, 'all tried: one of them again');
  t.is(fourth!.path, first.path);
  t.is(fourth!.labels, first.labels);
  // A route without a policy is never rerouted.
  t.is(r.reroute(route('/plain'), new Set()), undefined);
});

test('reroute moves the request hold: least_request counts the new endpoint, done ends it once', (t) => {
  const { r, route } = router({ NumRetries: 1, RetryOn: ['reset'] }, 'least_request');
  const first = route('/r/x');
  const next = r.reroute(first, new Set([first.endpoint.name]))!;
  t.not(next.endpoint.name, first.endpoint.name);
  // The old route's hold went with the reroute: done on it is a no-op, done on the new one ends it once.
  r.done(first);
  r.done(next);
  r.done(next);
  t.notThrows(() => r.done(first));
});

/** A ByteStream the test writes into and reads from, as waypoint-h1.test.ts has. */
class FakeStream extends EventEmitter implements ByteStream {
  written = '';
  destroyed = false;
  rstCode: number | undefined;
  write(chunk: Buffer): boolean {
    this.written += chunk.toString('latin1');
    return true;
  }
  end(): void {}
  pause(): void {}
  resume(): void {}
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.rstCode = 8;
    this.emit('close');
  }
  push(s: string): void {
    this.emit('data', Buffer.from(s, 'latin1'));
  }
}

/** The trivial router, its routes carrying a retry policy. */
class RetryingRouter extends ServiceRouter {
  readonly #policy = retryPolicy({ NumRetries: 2, RetryOn: ['5xx'] });
  override route(request: RouteRequest): ReturnType<ServiceRouter['route']> {
    const r = super.route(request);
    return r.kind === 'route' ? { ...r, retry: this.#policy } : r;
  }
}

test('HTTP/1.1: a 503 is read and dropped, its connection kept, the chunked body replayed elsewhere', async (t) => {
  const upstreams: { ep: string; s: FakeStream }[] = [];
  const metrics = new Metrics({ processMetrics: false });
  const log = silentLogger();
  const router = new RetryingRouter(1000);
  const plan: OutboundPlan = {
    kind: 'mesh',
    service: { name: 'api', namespace: 'default' },
    endpoints: ['api-1', 'api-2'].map((name) => workload({ name, service: 'api', node: 'n', ports: [8080] })),
    targetPort: 8080,
    targeted: undefined,
  };
  const refusals = new Refusals(metrics, log);
  const http = new WaypointHttp({
    hop: {
      store: undefined as never,
      pool: undefined as never,
      identityOf: () => 'spiffe://x/api',
      self: 'spiffe://x/wp',
    },
    router,
    log,
    refusals,
    metrics,
    limits: DEFAULT_HTTP1_LIMITS,
    retries: new Retries({ router, metrics, refusals, bufferBytes: 1024, random: () => 0 }),
    open: async (_plan, ep) => {
      const s = new FakeStream();
      upstreams.push({ ep: ep.name, s });
      return { stream: s, authority: `${ep.name}:8080` };
    },
  });
  const ctx = {
    plan,
    client: { principal: 'spiffe://x/web', forwarded: undefined, traceparent: undefined },
    clientAddr: undefined,
  };
  const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 5));
  const client = new FakeStream();
  http.serve(client, ctx);
  client.push('POST /x HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
  await tick();
  client.push('6\r\n world\r\n0\r\n\r\n');
  await tick();
  t.is(upstreams.length, 1);
  const first = upstreams[0]!;
  t.regex(first.s.written, /x-envoy-attempt-count: 1\r\n/i);
  t.true(first.s.written.endsWith('5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n'));
  // The 503 arrives in two reads: the client gets none of it.
  first.s.push('HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nno');
  first.s.push(' !');
  await tick();
  t.is(client.written, '');
  t.false(first.s.destroyed, 'read to its end and kept');
  t.is(upstreams.length, 2);
  const second = upstreams[1]!;
  t.not(second.ep, first.ep, 'the retry went to the other endpoint');
  t.regex(second.s.written, /^POST \/x HTTP\/1\.1\r\n/);
  t.regex(second.s.written, /x-envoy-attempt-count: 2\r\n/i);
  t.true(
    second.s.written.endsWith('\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n'),
    'the body replayed as sent',
  );
  second.s.push('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
  t.regex(client.written, /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nok$/);
  // Retries spent: the last 503 is the client's, flagged URX; a 404 is never retried.
  client.written = '';
  for (const u of upstreams) u.s.written = '';
  client.push('GET /y HTTP/1.1\r\nHost: api\r\n\r\n');
  for (let i = 0; i < 3; i++) {
    await tick();
    // Each attempt on a kept connection or a new one: the one just written to.
    const up = upstreams.find((u) => u.s.written !== '')!.s;
    t.regex(up.written, new RegExp(`x-envoy-attempt-count: ${i + 1}\\r\\n`, 'i'));
    up.written = '';
    up.push('HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n');
  }
  await tick();
  t.regex(client.written, /^HTTP\/1\.1 503 /);
  const text = await metrics.registry.metrics();
  t.regex(text, /istio_requests_total\{[^}]*response_code="503"[^}]*response_flags="URX"[^}]*\} 1/);
  t.regex(text, /ambit_waypoint_retries_total\{destination_service="api.default",reason="5xx"\} 3/);
  http.close();
});

test('an injected abort is never retried, and a reroute does not meet the fault again', async (t) => {
  const metrics = new Metrics({ processMetrics: false });
  const log = silentLogger();
  const opened: string[] = [];
  class AbortingRouter extends RetryingRouter {
    override route(request: RouteRequest): ReturnType<ServiceRouter['route']> {
      const r = super.route(request);
      return r.kind === 'route' ? { ...r, fault: { abort: { http: 503, grpc: 14 } } } : r;
    }
  }
  const router = new AbortingRouter(1000);
  const refusals = new Refusals(metrics, log);
  const plan: OutboundPlan = {
    kind: 'mesh',
    service: { name: 'api', namespace: 'default' },
    endpoints: ['api-1', 'api-2'].map((name) => workload({ name, service: 'api', node: 'n', ports: [8080] })),
    targetPort: 8080,
    targeted: undefined,
  };
  const http = new WaypointHttp({
    hop: {
      store: undefined as never,
      pool: undefined as never,
      identityOf: () => 'spiffe://x/api',
      self: 'spiffe://x/wp',
    },
    router,
    log,
    refusals,
    metrics,
    limits: DEFAULT_HTTP1_LIMITS,
    retries: new Retries({ router, metrics, refusals, bufferBytes: 1024, random: () => 0 }),
    open: async (_plan, ep) => {
      opened.push(ep.name);
      return { stream: new FakeStream(), authority: `${ep.name}:8080` };
    },
  });
  const client = new FakeStream();
  http.serve(client, {
    plan,
    client: { principal: 'spiffe://x/web', forwarded: undefined, traceparent: undefined },
    clientAddr: undefined,
  });
  client.push('GET /a HTTP/1.1\r\nHost: api\r\n\r\n');
  await new Promise((r) => setTimeout(r, 20));
  t.regex(client.written, /^HTTP\/1\.1 503 [\s\S]*fault filter abort$/);
  t.deepEqual(opened, []);
  t.notRegex(await metrics.registry.metrics(), /ambit_waypoint_retries_total\{/);
  const route = router.route({ plan, client: 'spiffe://x/web', path: '/' });
  if (route.kind !== 'route') throw new Error(route.kind);
  t.truthy(route.fault);
  t.is(router.reroute(route, new Set())?.fault, undefined);
  http.close();
});
