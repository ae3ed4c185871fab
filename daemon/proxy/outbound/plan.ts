// The outbound routing decision, as functions of the state in force: where a connection goes (which service,
// which endpoints, which port at each) and, per endpoint picked, which tunnel carries it. No sockets, no
// pool, no balancer: the caller picks among the endpoints and connects.
import { isIP } from 'node:net';
import type { Workload } from '../../../lib/mesh/model.js';
import { canonicalIp, unmapIp } from '../../../lib/net/addresses.js';
import { joinHostPort } from '../../../lib/net/hostport.js';
import type { StateStore } from '../../state/store.js';
import type { PoolKey } from '../pool/session.js';

/** Where a captured or explicit connection wants to go, before the catalog is consulted. */
export type OutboundTarget =
  | {
      readonly kind: 'service';
      readonly namespace: string;
      readonly service: string;
      readonly port: number | undefined;
    }
  | { readonly kind: 'address'; readonly ip: string; readonly port: number };

/** The lookups the outbound decision makes; a StateStore has them all. */
export type OutboundState = Pick<StateStore, 'service' | 'endpoints' | 'vip' | 'workloadAt' | 'node'>;

/** The service a connection reaches, as the access log and metrics name it. */
export interface RoutedService {
  readonly name: string;
  readonly namespace: string;
}

/** A connection for the mesh: the service it reaches and the endpoints that may carry it. */
export interface OutboundPlan {
  readonly kind: 'mesh';
  readonly service: RoutedService;
  /** Every endpoint of the service, on any node, in catalog order (the balancer picks). */
  readonly endpoints: readonly Workload[];
  /** The port at every endpoint; undefined: each endpoint's only port (see {@link endpointPort}). */
  readonly targetPort: number | undefined;
  /**
   * The address the client connected to (a workload's address or a service's virtual address), which
   * picks the address each endpoint is reached at (see {@link deliveryAddress}); undefined for a target
   * named by service.
   */
  readonly targeted: string | undefined;
}

/** An address that is neither a service's virtual address nor a workload's: carried outside the mesh. */
export interface OutboundPassthrough {
  readonly kind: 'passthrough';
  readonly ip: string;
  readonly port: number;
}

/** A service the mesh knows by name but nothing serves; refused (`no_endpoint`, flag UH). */
export interface OutboundNoEndpoint {
  readonly kind: 'no_endpoint';
  readonly service: RoutedService;
  readonly why: string;
}

export type OutboundRoute = OutboundPlan | OutboundPassthrough | OutboundNoEndpoint;

/**
 * A service target reaches the workloads enrolled under that name whether or not a service is declared:
 * an explicit upstream names a service, and its workloads are its endpoints. The port is mapped through the
 * declared service ports when one matches, and used as it is otherwise. An address target is a service's
 * virtual address (load balanced, port mapped) or one workload's address (that workload alone, port as
 * given); anything else is not the mesh's.
 */
export function planOutbound(state: OutboundState, target: OutboundTarget): OutboundRoute {
  if (target.kind === 'service') {
    const service = { name: target.service, namespace: target.namespace };
    const endpoints = state.endpoints(target.namespace, target.service);
    if (endpoints.length === 0) return { kind: 'no_endpoint', service, why: 'service has no endpoints' };
    const svc = target.port !== undefined ? state.service(target.namespace, target.service) : undefined;
    const mapped = svc?.ports.find((p) => p.port === target.port);
    return {
      kind: 'mesh',
      service,
      endpoints,
      targetPort: mapped?.targetPort ?? target.port,
      targeted: undefined,
    };
  }
  const vip = state.vip(target.ip, target.port);
  if (vip) {
    const service = { name: vip.service.name, namespace: vip.service.namespace };
    const endpoints = state.endpoints(service.namespace, service.name);
    if (endpoints.length === 0) return { kind: 'no_endpoint', service, why: 'service has no endpoints' };
    return { kind: 'mesh', service, endpoints, targetPort: vip.targetPort, targeted: target.ip };
  }
  const w = state.workloadAt(target.ip, target.port);
  if (w) {
    const service = { name: w.service, namespace: w.namespace };
    return { kind: 'mesh', service, endpoints: [w], targetPort: target.port, targeted: target.ip };
  }
  return { kind: 'passthrough', ip: target.ip, port: target.port };
}

/** The destination port at one endpoint of a plan; undefined when the plan names none and it has several. */
export const endpointPort = (plan: OutboundPlan, w: Workload): number | undefined =>
  plan.targetPort ?? (w.ports.length === 1 ? w.ports[0] : undefined);

/**
 * The address of `ep` a connection is delivered to, so that a server listening on one family only is
 * reached as the client meant it: the address the client targeted when it is one of the endpoint's; for a
 * virtual address (or a target named by service, `targeted` undefined), the endpoint's first address in the
 * family of the one targeted, its first address of the other family when it has none.
 */
export function deliveryAddress(ep: Workload, targeted: string | undefined): string | undefined {
  if (targeted === undefined) return ep.addresses[0];
  const wanted = canonicalIp(targeted);
  const own = ep.addresses.find((a) => canonicalIp(a) === wanted);
  if (own !== undefined) return own;
  const family = isIP(unmapIp(targeted));
  return ep.addresses.find((a) => isIP(unmapIp(a)) === family) ?? ep.addresses[0];
}

/** One endpoint as the tunnel reaches it: the CONNECT's `:authority` and the pooled session that carries it. */
export interface OutboundHop {
  readonly kind: 'hop';
  readonly endpoint: Workload;
  /** The endpoint's address picked by {@link deliveryAddress} and its destination port, as `:authority` spells it. */
  readonly authority: string;
  /** Source identity, the identity the peer must prove (its SNI), the peer node's tunnel address. */
  readonly session: PoolKey;
}

/** An endpoint that cannot be tried; the caller moves on to another. */
export interface OutboundSkip {
  readonly kind: 'skip';
  readonly reason: 'unknown_node' | 'no_port';
  readonly why: string;
}

/**
 * The tunnel to one endpoint: the daemon of its node, whichever node that is. There is no shortcut for an
 * endpoint on this node: it is reached through this node's own tunnel listener, as any other.
 */
export function planHop(
  state: Pick<OutboundState, 'node'>,
  plan: OutboundPlan,
  ep: Workload,
  source: string,
  identityOf: (w: Workload) => string,
): OutboundHop | OutboundSkip {
  const node = state.node(ep.node);
  if (!node)
    return { kind: 'skip', reason: 'unknown_node', why: `endpoint ${ep.name} is on unknown node ${ep.node}` };
  const port = endpointPort(plan, ep);
  const ip = deliveryAddress(ep, plan.targeted);
  if (port === undefined || ip === undefined)
    return { kind: 'skip', reason: 'no_port', why: `endpoint ${ep.name} has no port to reach` };
  return {
    kind: 'hop',
    endpoint: ep,
    authority: joinHostPort(ip, port),
    session: { source, peer: identityOf(ep), address: node.address, port: node.tunnelPort },
  };
}

/**
 * A connection for a service that has a waypoint: it goes to one of the waypoint's instances, never to the
 * service's endpoints. `authority` is what the waypoint resolves the service from: the address the client
 * targeted (`VIP:port`, or a workload's `ip:port`) as ztunnel sends it, or, for a target named by service
 * (an explicit upstream), `<service>.<namespace>:<port>` (no port: the endpoints' only port).
 */
export interface WaypointRoute {
  readonly kind: 'waypoint';
  readonly service: RoutedService;
  readonly waypoint: RoutedService;
  /** The waypoint service's workloads, in catalog order (the balancer picks among the healthy ones). */
  readonly instances: readonly Workload[];
  readonly authority: string;
  /** The service as `forwarded`'s `host=` names it. */
  readonly host: string;
}

/** A waypoint service whose waypoint has no instance: refused (`waypoint_unavailable`), never sent around it. */
export interface WaypointUnavailable {
  readonly kind: 'waypoint_unavailable';
  readonly service: RoutedService;
  readonly why: string;
}

/** The `:authority` a waypoint is sent for a target named by service: `<service>.<namespace>[:<port>]`. */
export const serviceAuthority = (service: RoutedService, port: number | undefined): string =>
  `${service.name}.${service.namespace}${port !== undefined ? `:${port}` : ''}`;

/**
 * Whether a planned connection goes through a waypoint instead: when its service names one, unless the
 * source is that waypoint itself (its own hop to the endpoint). Undefined: the plan stands as it is.
 */
export function planWaypoint(
  state: Pick<OutboundState, 'service' | 'endpoints'>,
  plan: OutboundPlan,
  target: OutboundTarget,
  source: Pick<Workload, 'service' | 'namespace'>,
): WaypointRoute | WaypointUnavailable | undefined {
  const { service } = plan;
  const name = state.service(service.namespace, service.name)?.waypoint;
  if (name === undefined) return undefined;
  const waypoint = { name, namespace: service.namespace };
  if (source.service === waypoint.name && source.namespace === waypoint.namespace) return undefined;
  const instances = state.endpoints(waypoint.namespace, waypoint.name);
  if (instances.length === 0) {
    const why = `waypoint ${name} of service ${service.name} has no instance`;
    return { kind: 'waypoint_unavailable', service, why };
  }
  const authority =
    target.kind === 'address' ? joinHostPort(target.ip, target.port) : serviceAuthority(service, target.port);
  return {
    kind: 'waypoint',
    service,
    waypoint,
    instances,
    authority,
    host: `${service.name}.${service.namespace}`,
  };
}

/**
 * The tunnel to one waypoint instance: straight to its own HBONE listener (its first address and first
 * port, where it registered itself), the waypoint's identity as the one its certificate must prove.
 */
export function planWaypointHop(
  route: WaypointRoute,
  instance: Workload,
  source: string,
  identityOf: (w: Workload) => string,
): OutboundHop | OutboundSkip {
  const address = instance.addresses[0];
  const port = instance.ports[0];
  if (address === undefined || port === undefined)
    return { kind: 'skip', reason: 'no_port', why: `waypoint instance ${instance.name} has no address:port` };
  return {
    kind: 'hop',
    endpoint: instance,
    authority: route.authority,
    session: { source, peer: identityOf(instance), address, port },
  };
}
