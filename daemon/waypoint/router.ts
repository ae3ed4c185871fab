import type { IncomingHttpHeaders } from 'node:http';
import type { FaultDraw } from '../../lib/l7/fault.js';
import type { GeneratedCookie } from '../../lib/l7/lb.js';
import type { HeaderOp } from '../../lib/l7/route.js';
import type { Service, ServiceProtocol, Workload } from '../../lib/mesh/model.js';
import type { OutboundPlan, RoutedService } from '../proxy/outbound/plan.js';
// What the waypoint asks of its L7 configuration: how to parse a service, whether a request is allowed,
// and where one connection or one request goes. Protocol-neutral: HTTP/1.1 and HTTP/2 (and gRPC) ask the
// same questions with the same request shape. ServiceRouter is the trivial answer (the service itself,
// round robin); ChainRouter (chain-router.ts) answers with Consul's discovery chain and intentions.
import type { ConnectionLimit } from './conn-gate.js';
import type { GroupView, UpstreamResult } from './outlier.js';
import type { RetryPolicy } from './retry.js';

/** One connection (tcp) or one request (http, http2, grpc) to route. */
export interface RouteRequest {
  /** The resolved target: the service, its endpoints and the port at each. */
  readonly plan: OutboundPlan;
  /** The client's proven SPIFFE ID. */
  readonly client: string;
  /** HTTP only: the method, the path with its query, and the fields (names lower-case; h2 pseudo-headers left out). */
  readonly method?: string | undefined;
  readonly path?: string | undefined;
  readonly headers?: IncomingHttpHeaders | undefined;
  /** The client's IP (its daemon's `forwarded` claim, else the tunnel peer), for SourceIP hash policies. */
  readonly sourceIp?: string | undefined;
}

/** Whether a request may go on: L7 intentions, evaluated before any routing. */
export interface Authorization {
  readonly allowed: boolean;
  /** The deciding intention and permission, or the default, in words for the access log. */
  readonly reason: string;
}

/** Where one request goes, and what is changed on its way. */
export interface RequestRoute {
  readonly kind: 'route';
  /** The plan of the service the request lands on (another service's when a route or split says so). */
  readonly plan: OutboundPlan;
  readonly endpoint: Workload;
  /** The path to send: PrefixRewrite applied, query kept. */
  readonly path: string;
  /** In the order they apply, on the request the endpoint gets and on the response the client gets. */
  readonly requestHeaders: readonly HeaderOp[];
  readonly responseHeaders: readonly HeaderOp[];
  /** For the access log: the route (`<router>#<index>`, `default` for the catch-all), split, subset. */
  readonly labels: RouteLabels;
  /** A cookie to set on the response (a cookie hash policy with a TTL or Session, when the client had none). */
  readonly cookie?: GeneratedCookie | undefined;
  /** The route's timeouts (router destination, else resolver), in ms; none: the waypoint's own bounds only. */
  readonly timeouts?: RouteTimeouts | undefined;
  /** The route destination's retries (retry.ts); none: a failed attempt goes to the client as it is. */
  readonly retry?: RetryPolicy | undefined;
  /** A fault the request met (its route's `ambit-fault` Meta): a delay before it goes on, then maybe an abort. */
  readonly fault?: FaultDraw | undefined;
  /** Where a copy of the request goes (its route's `ambit-mirror` Meta drew one): mirror.ts. */
  readonly mirror?: MirrorTarget | undefined;
  /** The client's MaxConnections and MaxPendingRequests to the routed service (conn-gate.ts); none: no cap. */
  readonly connections?: ConnectionLimit | undefined;
}

/** A request's mirror: its service, and the endpoint picked for the copy (none: `why`). */
export interface MirrorTarget {
  readonly service: RoutedService;
  readonly plan?: OutboundPlan | undefined;
  readonly endpoint?: Workload | undefined;
  readonly why?: string | undefined;
}

/** Consul's timeouts for one request, as the chain gives them (Envoy's route and cluster timeouts). */
export interface RouteTimeouts {
  /** From the end of the request to the end of the response: 504 (gRPC 4), flag UT. */
  readonly requestMs?: number | undefined;
  /** No bytes either way for this long: 408 before a response (flag SI), a reset after. */
  readonly idleMs?: number | undefined;
  /** The hop to the endpoint's node must be up within this: else 503, flag UF. */
  readonly connectMs?: number | undefined;
}

export interface RouteLabels {
  readonly route: string | undefined;
  readonly split: string | undefined;
  readonly subset: string | undefined;
  /** The chain target the endpoint was picked from (after failover). */
  readonly target: string | undefined;
  readonly failover: boolean;
}

/** A request no endpoint can take: the target (and its failovers) has none. */
export interface NoRoute {
  readonly kind: 'none';
  readonly why: string;
  readonly labels: RouteLabels;
}

/** A request a limit of the destination refuses: its rate (RateLimits) or its concurrency (Limits). */
export interface LimitedRoute {
  readonly kind: 'limited';
  readonly limit: 'rate_limited' | 'overflow';
  readonly why: string;
  readonly labels: RouteLabels;
}

/** A request its route's fault aborts at once (no delay drawn): answered at the waypoint, flag FI. */
export interface FaultRoute {
  readonly kind: 'fault';
  readonly abort: NonNullable<FaultDraw['abort']>;
  readonly why: string;
  readonly labels: RouteLabels;
}

export interface WaypointRouter {
  /** How the waypoint parses connections for `service`. */
  protocol(service: Service | undefined): ServiceProtocol;
  /** L7 intentions for one request. */
  authorize(request: RouteRequest): Authorization;
  /** The route, split, target and endpoint for one request; call `done` with it once it is over. */
  route(request: RouteRequest): RequestRoute | NoRoute | LimitedRoute | FaultRoute;
  /**
   * Another endpoint for a retry of `route`, none of `exclude` where one is left (else any of the
   * route's): the same target, labels and changes. It takes over `route`'s hold (the one to call `done`
   * with); undefined: no endpoint at all.
   */
  reroute(route: RequestRoute, exclude: ReadonlySet<string>): RequestRoute | undefined;
  /** The request `route` gave is over (least_request and MaxConcurrentRequests count those in flight). */
  done(route: RequestRoute): void;
  /** The endpoint for one tcp connection, none of `exclude` (tried already); undefined: none left. */
  pick(request: RouteRequest, exclude: ReadonlySet<string>): Workload | undefined;
  /** An endpoint could not be reached: it goes last for a while. */
  failed(endpoint: Workload): void;
  /** An endpoint was reached. */
  succeeded(endpoint: Workload): void;
  /** What the endpoint made of a request `route` gave (its status, or a failure before one): outlier ejection. */
  outcome(route: RequestRoute, result: UpstreamResult): void;
  /** The outlier ejections in force, per client service and target (ChainRouter's; for /config_dump). */
  ejections?(): GroupView[];
}

const NO_LABELS: RouteLabels = {
  route: undefined,
  split: undefined,
  subset: undefined,
  target: undefined,
  failover: false,
};

/**
 * Every request to the service itself, round robin over its endpoints; one that failed lately is passed
 * over for `ejectMs` while another is left. The protocol is the model's (services.<svc>.protocol in the
 * mesh file, service-defaults Protocol in Consul), tcp when absent.
 */
export class ServiceRouter implements WaypointRouter {
  readonly #cursors = new Map<string, number>();
  readonly #ejectedUntil = new Map<string, number>();
  readonly #ejectMs: number;

  constructor(ejectMs: number) {
    this.#ejectMs = ejectMs;
  }

  protocol(service: Service | undefined): ServiceProtocol {
    return service?.protocol ?? 'tcp';
  }

  authorize(): Authorization {
    return { allowed: true, reason: 'no L7 intentions' };
  }

  route(request: RouteRequest): RequestRoute | NoRoute {
    const endpoint = this.pick(request, new Set());
    if (!endpoint) return { kind: 'none', why: 'no endpoint', labels: NO_LABELS };
    return {
      kind: 'route',
      plan: request.plan,
      endpoint,
      path: request.path ?? '/',
      requestHeaders: [],
      responseHeaders: [],
      labels: NO_LABELS,
    };
  }

  done(): void {}

  reroute(route: RequestRoute, exclude: ReadonlySet<string>): RequestRoute | undefined {
    const plan = route.plan;
    const endpoint = this.pick({ plan, client: '' }, exclude) ?? this.pick({ plan, client: '' }, new Set());
    return endpoint ? { ...route, endpoint, fault: undefined, mirror: undefined } : undefined;
  }

  pick(request: RouteRequest, exclude: ReadonlySet<string>, now = Date.now()): Workload | undefined {
    const { endpoints, service } = request.plan;
    const n = endpoints.length;
    if (n === 0) return undefined;
    const key = `${service.namespace}/${service.name}`;
    const start = this.#cursors.get(key) ?? 0;
    this.#cursors.set(key, (start + 1) % n);
    let fallback: Workload | undefined;
    for (let i = 0; i < n; i++) {
      const w = endpoints[(start + i) % n]!;
      if (exclude.has(w.name)) continue;
      if ((this.#ejectedUntil.get(w.name) ?? 0) <= now) return w;
      fallback ??= w;
    }
    return fallback;
  }

  failed(endpoint: Workload, now = Date.now()): void {
    this.#ejectedUntil.set(endpoint.name, now + this.#ejectMs);
  }

  succeeded(endpoint: Workload): void {
    this.#ejectedUntil.delete(endpoint.name);
  }

  outcome(): void {}
}
