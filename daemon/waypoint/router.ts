// What the waypoint asks of its L7 configuration: how to parse a service, and which endpoint takes one
// connection or one request. This session's router is trivial (the service itself, round robin); the L7
// library (lib/l7: routers, splitters, resolvers, intentions) plugs in behind the same interface.
import type { IncomingHttpHeaders } from 'node:http';
import type { Service, ServiceProtocol, Workload } from '../../lib/mesh/model.js';
import type { OutboundPlan } from '../proxy/outbound/plan.js';

/** One connection (tcp) or one request (http) to route. */
export interface RouteRequest {
  /** The resolved target: the service, its endpoints and the port at each. */
  readonly plan: OutboundPlan;
  /** The client's proven SPIFFE ID. */
  readonly client: string;
  /** HTTP only. */
  readonly method?: string | undefined;
  readonly path?: string | undefined;
  readonly headers?: IncomingHttpHeaders | undefined;
}

export interface WaypointRouter {
  /** How the waypoint parses connections for `service`. */
  protocol(service: Service | undefined): ServiceProtocol;
  /** The endpoint for one connection or request, none of `exclude` (tried already); undefined: none left. */
  pick(request: RouteRequest, exclude: ReadonlySet<string>): Workload | undefined;
  /** An endpoint could not be reached: it goes last for a while. */
  failed(endpoint: Workload): void;
  /** An endpoint was reached. */
  succeeded(endpoint: Workload): void;
}

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
}
