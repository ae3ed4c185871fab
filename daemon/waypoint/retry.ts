// Retries at the waypoint, from a service-router route destination's NumRetries, RetryOnConnectFailure,
// RetryOn and RetryOnStatusCodes, with the semantics of the Envoy route Consul writes from them
// (agent/xds/routes.go): no condition, no retry; a condition without NumRetries retries once (Envoy's
// default); each retry after a jittered exponential backoff (25 ms base, 250 ms cap) and, where there is
// one, to an endpoint not tried yet. A retry replays the request, so its body is kept up to a bound; and a
// budget per destination service (Envoy's retry_budget: 20% of the requests in flight, at least 3) keeps
// retries from multiplying an outage. Both engines ask the same questions here; only a response that has
// not started towards the client can be retried, which the engines see to.
import { Counter } from 'prom-client';
import type { Refusals } from '../limits/refusal.js';
import type { Metrics } from '../metrics/metrics.js';
import type { RoutedService } from '../proxy/outbound/plan.js';
import type { RequestRoute, WaypointRouter } from './router.js';

/** A route destination's retry fields, as the chain passes them through (lib/l7/route.ts RouteResult). */
export interface RetryFields {
  readonly NumRetries?: number | undefined;
  readonly RetryOnConnectFailure?: boolean | undefined;
  readonly RetryOn?: readonly string[] | undefined;
  readonly RetryOnStatusCodes?: readonly number[] | undefined;
}

/** grpc-status codes of Consul's (Envoy's) gRPC retry conditions. */
const GRPC_CONDITIONS: Record<string, string> = {
  cancelled: '1',
  'deadline-exceeded': '4',
  'resource-exhausted': '8',
  internal: '13',
  unavailable: '14',
};

/** When one route retries, and how often. */
export interface RetryPolicy {
  /** Retries after the first attempt (NumRetries; 1 when unset or 0, as Envoy's default). */
  readonly numRetries: number;
  /** The conditions, as Envoy's retry_on names them (Consul's RetryOn plus what its other fields add). */
  readonly on: ReadonlySet<string>;
  readonly statusCodes: ReadonlySet<number>;
  /** grpc-status value -> the condition that names it. */
  readonly grpc: ReadonlyMap<string, string>;
}

/**
 * The policy of a destination, or undefined when it retries nothing: as Consul, only a condition
 * (RetryOn, RetryOnConnectFailure, RetryOnStatusCodes) makes a retry; NumRetries alone leaves Envoy's
 * retry_on empty.
 */
export function retryPolicy(f: RetryFields): RetryPolicy | undefined {
  const on = new Set<string>(f.RetryOn ?? []);
  if (f.RetryOnConnectFailure) on.add('connect-failure');
  const statusCodes = new Set<number>(f.RetryOnStatusCodes ?? []);
  if (statusCodes.size > 0) on.add('retriable-status-codes');
  if (on.size === 0) return undefined;
  const grpc = new Map<string, string>();
  for (const [cond, code] of Object.entries(GRPC_CONDITIONS)) if (on.has(cond)) grpc.set(code, cond);
  return { numRetries: f.NumRetries || 1, on, statusCodes, grpc };
}

/** What ended an attempt without a response the client may have: an answer, or no answer at all. */
export type RetryCause =
  | {
      readonly kind: 'response';
      readonly status: number;
      readonly grpcStatus?: string | undefined;
      readonly rateLimited?: boolean;
    }
  /** The endpoint's node could not be reached (the hop failed, or its ConnectTimeout passed). */
  | { readonly kind: 'connect-failure' }
  /** The connection or stream went before a response's head: `refused` for HTTP/2's REFUSED_STREAM. */
  | { readonly kind: 'reset'; readonly refused?: boolean };

/**
 * The condition of `policy` that `cause` meets, as the retries metric names it; undefined: not retried.
 * As Envoy's RetryStateImpl: 5xx and gateway-error retry resets and connect failures too, reset a
 * connect failure as well (no response either way), refused-stream only HTTP/2's REFUSED_STREAM.
 */
export function retryReason(policy: RetryPolicy, cause: RetryCause): string | undefined {
  const on = policy.on;
  if (cause.kind === 'response') {
    const s = cause.status;
    if (on.has('5xx') && s >= 500 && s <= 599) return '5xx';
    if (on.has('gateway-error') && (s === 502 || s === 503 || s === 504)) return 'gateway-error';
    if (on.has('retriable-4xx') && s === 409) return 'retriable-4xx';
    if (on.has('retriable-status-codes') && policy.statusCodes.has(s)) return 'retriable-status-codes';
    if (on.has('envoy-ratelimited') && cause.rateLimited) return 'envoy-ratelimited';
    const g = cause.grpcStatus === undefined ? undefined : policy.grpc.get(cause.grpcStatus);
    return g;
  }
  if (cause.kind === 'connect-failure') {
    for (const c of ['connect-failure', 'reset', '5xx', 'gateway-error']) if (on.has(c)) return c;
    return undefined;
  }
  if (cause.refused && on.has('refused-stream')) return 'refused-stream';
  for (const c of ['reset', '5xx', 'gateway-error']) if (on.has(c)) return c;
  return undefined;
}

export const BACKOFF_BASE_MS = 25;
export const BACKOFF_MAX_MS = 250;

/**
 * The wait before retry `n` (1-based), Envoy's JitteredExponentialBackOffStrategy: uniform in
 * [0, (2^n - 1) x 25 ms), never more than 250 ms.
 */
export function backoffMs(n: number, random: () => number = Math.random): number {
  const ceiling = (2 ** Math.min(n, 16) - 1) * BACKOFF_BASE_MS;
  return Math.min(Math.floor(random() * ceiling), BACKOFF_MAX_MS);
}

/** Envoy's retry_budget defaults: budget_percent 20, min_retry_concurrency 3. */
export const BUDGET_PERCENT = 20;
export const MIN_RETRY_CONCURRENCY = 3;

/** Concurrent retries a destination may have with `inFlight` requests in flight. */
export const budgetCap = (inFlight: number): number =>
  Math.max(MIN_RETRY_CONCURRENCY, Math.floor((inFlight * BUDGET_PERCENT) / 100));

/** Services at zero kept for their next request before they are swept (a sweep is O(services)). */
const IDLE_SERVICES = 1024;

/**
 * Requests with a retry policy in flight per destination service, and the retries among them (from the
 * decision to retry until that attempt ends). A service at zero of both stays for its next request (a
 * Map delete and insert per request cost more than the rest of the count); they are swept once more than
 * IDLE_SERVICES are kept.
 */
export class RetryBudget {
  readonly #by = new Map<string, { requests: number; retries: number }>();

  /** One request in flight to `service`; the function ends it (idempotent). */
  begin(service: string): () => void {
    let s = this.#by.get(service);
    if (!s) {
      if (this.#by.size >= IDLE_SERVICES) this.#sweep();
      s = { requests: 0, retries: 0 };
      this.#by.set(service, s);
    }
    s.requests++;
    const held = s;
    let open = true;
    return () => {
      if (!open) return;
      open = false;
      held.requests--;
    };
  }

  /** A retry if the budget has room, with the function that ends it (idempotent); else undefined. */
  retry(service: string): (() => void) | undefined {
    const s = this.#by.get(service);
    // A service kept at zero is one with nothing in flight: it retries nothing, as one never counted.
    if (!s || s.requests <= 0 || s.retries >= budgetCap(s.requests)) return undefined;
    s.retries++;
    let open = true;
    return () => {
      if (!open) return;
      open = false;
      s.retries--;
    };
  }

  /** What tests check: requests and retries in flight to `service`. */
  load(service: string): { requests: number; retries: number } {
    const s = this.#by.get(service);
    return { requests: s?.requests ?? 0, retries: s?.retries ?? 0 };
  }

  /** Services counted, at zero or not (what tests check of the bound). */
  get size(): number {
    return this.#by.size;
  }

  #sweep(): void {
    for (const [service, s] of this.#by) if (s.requests <= 0 && s.retries <= 0) this.#by.delete(service);
  }
}

/**
 * A request body kept for a retry, up to `limit` bytes; past it nothing more is kept and the request is
 * not retried (the endpoint still gets the whole body as it streams).
 */
export class ReplayBuffer {
  readonly #limit: number;
  chunks: Buffer[] = [];
  bytes = 0;
  overflowed = false;
  #closed = false;

  constructor(limit: number) {
    this.#limit = limit;
  }

  /** Keeps a copy of `chunk` (which may be a view of a read); false once the bound is passed. */
  push(chunk: Buffer, owned = false): boolean {
    if (this.overflowed) return false;
    if (this.#closed) return true;
    if (this.bytes + chunk.length > this.#limit) {
      this.overflowed = true;
      this.chunks = [];
      this.bytes = 0;
      return false;
    }
    this.chunks.push(owned ? chunk : Buffer.from(chunk));
    this.bytes += chunk.length;
    return true;
  }

  /** The answer has begun: no retry can come, so what is kept is freed and nothing more is. */
  close(): void {
    this.#closed = true;
    this.chunks = [];
    this.bytes = 0;
  }
}

interface RetryCounters {
  readonly retries: Counter<'destination_service' | 'reason'>;
  readonly budgetExhausted: Counter<'destination_service'>;
  readonly bufferOverflow: Counter<'destination_service'>;
}

/** One set of counters per registry: both engines (and a test's several waypoints) share it. */
const countersOf = new WeakMap<Metrics, RetryCounters>();
function counters(m: Metrics): RetryCounters {
  let c = countersOf.get(m);
  if (c) return c;
  const registers = [m.registry];
  c = {
    retries: new Counter({
      name: 'ambit_waypoint_retries_total',
      help: 'Requests the waypoint retried (one per retry), by destination service and the RetryOn condition met',
      labelNames: ['destination_service', 'reason'],
      registers,
    }),
    budgetExhausted: new Counter({
      name: 'ambit_waypoint_retry_budget_exhausted_total',
      help: 'Retries not made: the destination had its retry budget (20% of requests in flight, at least 3) retrying',
      labelNames: ['destination_service'],
      registers,
    }),
    bufferOverflow: new Counter({
      name: 'ambit_waypoint_retry_buffer_overflow_total',
      help: 'Requests whose body outgrew waypointRetryBufferBytes: not retried',
      labelNames: ['destination_service'],
      registers,
    }),
  };
  countersOf.set(m, c);
  return c;
}

/** Each routed service's label, made once: every request under a retry policy names its service twice. */
const labels = new WeakMap<RoutedService, string>();
function serviceLabel(s: RoutedService): string {
  let l = labels.get(s);
  if (l === undefined) {
    l = `${s.name}.${s.namespace}`;
    labels.set(s, l);
  }
  return l;
}

/** One request's retries: attempts made, endpoints tried, its hold on the budget. */
export class RetryState {
  /** Attempts made so far (the first included): the access log's `attempts`, x-envoy-attempt-count. */
  attempts = 1;
  /** The last attempt met a condition with no retry left: flag URX. */
  exhausted = false;
  /** The endpoints tried, made on the first retry (most requests never need it). */
  #tried: Set<string> | undefined;
  /** The request body kept for a replay; undefined: it has none (or the engine keeps it its own way). */
  readonly body: ReplayBuffer;
  readonly #end: () => void;
  #retry: (() => void) | undefined;

  constructor(end: () => void, bufferBytes: number) {
    this.#end = end;
    this.body = new ReplayBuffer(bufferBytes);
  }

  get tried(): Set<string> {
    this.#tried ??= new Set();
    return this.#tried;
  }

  /** The attempt in flight is over: a retry's hold on the budget ends with it. */
  attemptDone(): void {
    this.#retry?.();
    this.#retry = undefined;
  }

  holdRetry(release: () => void): void {
    this.#retry = release;
  }

  /** The request is over. */
  end(): void {
    this.attemptDone();
    this.#end();
  }
}

export interface RetriesDeps {
  readonly router: WaypointRouter;
  readonly metrics: Metrics;
  readonly refusals: Refusals;
  /** The most request-body bytes kept per request for a replay (waypointRetryBufferBytes). */
  readonly bufferBytes: number;
  readonly random?: () => number;
}

export const DEFAULT_RETRY_BUFFER_BYTES = 64 * 1024;

/** Another attempt: where it goes, and how long to wait first. */
export interface NextAttempt {
  readonly route: RequestRoute;
  readonly delayMs: number;
}

/** The waypoint's retries, shared by its HTTP/1.1 and HTTP/2 engines. */
export class Retries {
  readonly #d: RetriesDeps;
  readonly #random: () => number;
  readonly budget = new RetryBudget();
  readonly #c: RetryCounters;

  constructor(d: RetriesDeps) {
    this.#d = d;
    this.#random = d.random ?? Math.random;
    this.#c = counters(d.metrics);
  }

  /** The state of a request routed with a retry policy; undefined (and nothing allocated) without one. */
  start(route: RequestRoute): RetryState | undefined {
    if (route.retry === undefined) return undefined;
    return new RetryState(this.budget.begin(serviceLabel(route.plan.service)), this.#d.bufferBytes);
  }

  /** The body outgrew the bound: counted and logged once, the request goes on unretriable. */
  overflowed(route: RequestRoute, client: string): void {
    const svc = serviceLabel(route.plan.service);
    this.#c.bufferOverflow.inc({ destination_service: svc });
    this.#d.refusals.note(
      'inbound',
      'retry_buffer',
      `waypoint will not retry a request: its body is over ${this.#d.bufferBytes} bytes (waypointRetryBufferBytes)`,
      { client, service: svc },
    );
  }

  /**
   * Whether the attempt that ended with `cause` is retried: the route's condition met, a retry left, the
   * request replayable (its body whole and kept), the budget not spent, an endpoint to go to.
   */
  next(s: RetryState, route: RequestRoute, cause: RetryCause, replayable: boolean): NextAttempt | undefined {
    s.attemptDone();
    const policy = route.retry;
    if (!policy) return undefined;
    const reason = retryReason(policy, cause);
    if (reason === undefined) return undefined;
    if (s.attempts > policy.numRetries) {
      s.exhausted = true;
      return undefined;
    }
    if (!replayable) return undefined;
    const svc = serviceLabel(route.plan.service);
    const release = this.budget.retry(svc);
    if (!release) {
      this.#c.budgetExhausted.inc({ destination_service: svc });
      return undefined;
    }
    s.tried.add(route.endpoint.name);
    const next = this.#d.router.reroute(route, s.tried);
    if (!next) {
      release();
      return undefined;
    }
    s.holdRetry(release);
    s.attempts++;
    this.#c.retries.inc({ destination_service: svc, reason });
    return { route: next, delayMs: backoffMs(s.attempts - 1, this.#random) };
  }
}

/** Envoy's flags once retries are spent: URX joins what the last attempt's failure flagged. */
export function withRetryFlag(flags: string, s: RetryState | undefined): string {
  if (!s?.exhausted) return flags;
  return flags === '-' ? 'URX' : `${flags},URX`;
}
