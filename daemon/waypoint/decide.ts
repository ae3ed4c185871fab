import type { IncomingHttpHeaders } from 'node:http';
import type { Refusals } from '../limits/refusal.js';
// What the waypoint decides for one request before it goes anywhere, whatever carried it (HTTP/1.1,
// HTTP/2, gRPC): L7 intentions first, then the route. One place, so that a request is allowed and routed
// the same whichever protocol it came in, and a denial is refused (counted, logged) the same.
import { OVERFLOW_BODY, type PendingOverflow } from './conn-gate.js';
import { FAULT_BODY } from './fault.js';
import type { HttpContext } from './http.js';
import { ipOf } from './l7-headers.js';
import type { RequestRoute, RouteLabels, RouteRequest, WaypointRouter } from './router.js';

export interface DecideDeps {
  readonly router: WaypointRouter;
  readonly refusals: Refusals;
}

/** The request as the router sees it: fields with lower-case names, HTTP/2 pseudo-headers left out. */
export interface DecideRequest {
  readonly method: string | undefined;
  readonly path: string | undefined;
  readonly headers: IncomingHttpHeaders;
  /** The client's IP, when the caller keeps it per connection; else read from the context. */
  readonly sourceIp?: string;
}

/**
 * Why the waypoint answers a request itself: an intention denied it, no endpoint can take it, the
 * destination's rate is spent, its client has MaxConcurrentRequests in flight to it already, or its
 * route's fault aborts it.
 */
export type RefusedFailure = 'denied' | 'unavailable' | 'rate_limited' | 'overflow' | 'fault';

/** What a limit's refusal is answered with: Envoy's local_ratelimit (RL) and circuit breaker (UO) answers. */
const LIMITED = {
  rate_limited: { status: 429, body: 'local_rate_limited', flags: 'RL' },
  overflow: { status: 503, body: OVERFLOW_BODY, flags: 'UO' },
} as const;

export type Decision =
  | { readonly ok: true; readonly route: RequestRoute }
  | {
      readonly ok: false;
      readonly failure: RefusedFailure;
      /** The plain HTTP answer (HTTP/2 answers gRPC its own way, by `failure`). */
      readonly status: number;
      readonly body: string;
      /** For the access log: the deciding intention, or why there is no endpoint. */
      readonly reason: string;
      /** Envoy's response flag: RBAC for a denial, UH for no healthy upstream, RL and UO for the limits. */
      readonly flags: string;
      /** The route taken up to where no endpoint was left; none for a denial (it is never routed). */
      readonly labels: RouteLabels | undefined;
      /** A fault's abort: the gRPC status a gRPC call gets (HTTP/2 answers the other failures by `failure`). */
      readonly grpcStatus?: number;
    };

/** What a refusal's log line names: the client, the service and the request. */
const who = (
  ctx: HttpContext,
  req: Pick<DecideRequest, 'method' | 'path'>,
): Record<string, string | undefined> => ({
  client: ctx.client.principal,
  service: `${ctx.plan.service.name}.${ctx.plan.service.namespace}`,
  method: req.method,
  path: req.path,
});

/**
 * A routed request that found MaxConnections of its pair open and MaxPendingRequests waiting: refused as
 * MaxConcurrentRequests' overflow is, counted and logged the same way (the engines answer it).
 */
export function refusePending(
  d: Pick<DecideDeps, 'refusals'>,
  ctx: HttpContext,
  req: Pick<DecideRequest, 'method' | 'path'>,
  err: PendingOverflow,
): void {
  d.refusals.refuse('inbound', 'overflow', `waypoint refused a request: ${err.message}`, who(ctx, req));
}

export function decide(d: DecideDeps, ctx: HttpContext, req: DecideRequest): Decision {
  const rr: RouteRequest = {
    plan: ctx.plan,
    client: ctx.client.principal,
    method: req.method,
    path: req.path,
    headers: req.headers,
    sourceIp: req.sourceIp ?? ipOf(ctx.clientAddr),
  };
  const authz = d.router.authorize(rr);
  if (!authz.allowed) {
    d.refusals.refuse('inbound', 'l7_denied', `waypoint denied a request: ${authz.reason}`, who(ctx, req));
    return {
      ok: false,
      failure: 'denied',
      status: 403,
      body: 'RBAC: access denied',
      reason: authz.reason,
      flags: 'RBAC',
      labels: undefined,
    };
  }
  const route = d.router.route(rr);
  if (route.kind === 'limited') {
    d.refusals.refuse('inbound', route.limit, `waypoint refused a request: ${route.why}`, who(ctx, req));
    return {
      ok: false,
      failure: route.limit,
      ...LIMITED[route.limit],
      reason: route.why,
      labels: route.labels,
    };
  }
  // An injected abort is what the user asked for: answered, not refused (nor counted as a refusal).
  if (route.kind === 'fault')
    return {
      ok: false,
      failure: 'fault',
      status: route.abort.http,
      body: FAULT_BODY,
      reason: route.why,
      flags: 'FI',
      labels: route.labels,
      grpcStatus: route.abort.grpc,
    };
  if (route.kind === 'none')
    return {
      ok: false,
      failure: 'unavailable',
      status: 503,
      body: 'no healthy upstream',
      reason: route.why,
      flags: 'UH',
      labels: route.labels,
    };
  return { ok: true, route };
}
