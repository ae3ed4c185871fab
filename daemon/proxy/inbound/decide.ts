// The inbound routing decision, as functions of the state in force: which local workload a CONNECT reaches
// and whether policy admits the peer to it. No sockets: the caller answers the stream and connects.
import { ConnectionRefusal, badRequest, denied, unknownWorkload } from '../../../lib/errors.js';
import type { Workload } from '../../../lib/mesh/model.js';
import { joinHostPort } from '../../../lib/net/hostport.js';
import { parseSpiffeId, trustDomainOf } from '../../identity/spiffe.js';
import { type Decision, type Peer, authorize } from '../../rbac.js';
import type { StateStore } from '../../state/store.js';
import { xfccClient } from '../../waypoint/xfcc.js';
import { type HostPort, parseAuthority } from '../hbone.js';

/** What the decision reads: the state in force and what this node knows of itself (InboundDeps has it all). */
export interface InboundScope {
  readonly store: Pick<StateStore, 'workload' | 'workloadAt' | 'policiesFor' | 'mesh' | 'service'>;
  readonly nodeName: string;
  /** This mesh's trust domain: policies name its services and namespaces. */
  readonly trustDomain: string;
  /** True when the target is one of the daemon's own listeners. */
  readonly isSelf: (target: HostPort) => boolean;
  /** True for an address of this host (loopback, an interface, the node's own address). */
  readonly isLocalAddress: (ip: string) => boolean;
  /** The SPIFFE ID of a service (a waypoint's, which is the identity its instances prove). */
  readonly identityOf: (w: Pick<Workload, 'namespace' | 'service'>) => string;
}

export interface InboundAdmitted {
  readonly ok: true;
  readonly workload: Workload;
  readonly target: HostPort;
  readonly peer: Peer;
  /** The policy that admitted, or the default. */
  readonly decision: Decision;
  /**
   * Through the service's waypoint: the original client, as the waypoint (the peer) vouches for it. Its
   * identity is the one policy was checked against and the access log names.
   */
  readonly client: Peer | undefined;
}

export interface InboundRefused {
  readonly ok: false;
  readonly refusal: ConnectionRefusal;
  /** The target workload, when it was found and policy refused the peer. */
  readonly workload: Workload | undefined;
}

/** The peer a certificate's URI SANs name: its first SPIFFE ID, or undefined when it has none. */
export function peerFromUris(uris: readonly string[]): Peer | undefined {
  const principal = uris.find((u) => u.startsWith('spiffe://'));
  if (!principal) return undefined;
  const parsed = parseSpiffeId(principal);
  return {
    principal,
    trustDomain: parsed?.trustDomain ?? trustDomainOf(principal),
    ...(parsed?.partition !== undefined ? { partition: parsed.partition } : {}),
    namespace: parsed?.namespace,
    service: parsed?.service,
  };
}

/**
 * One CONNECT: a well-formed request from an identified peer, to a workload enrolled on this node, that
 * policy admits. Never an open relay: the daemon's own listeners, addresses of nobody here and "every port"
 * of a host address are refused before a socket is opened.
 */
export function decideInbound(
  scope: InboundScope,
  method: string | undefined,
  authority: string | undefined,
  peer: Peer | undefined,
  clientCert?: string,
): InboundAdmitted | InboundRefused {
  if (method !== 'CONNECT') return refused(badRequest(`method ${method} is not CONNECT`));
  const target = parseAuthority(authority);
  if (!target) return refused(badRequest(`malformed :authority ${JSON.stringify(authority)}`));
  if (!peer) return refused(denied('peer certificate carries no SPIFFE identity'));
  if (scope.isSelf(target))
    return refused(badRequest(`${joinHostPort(target.ip, target.port)} is this daemon's own listener`));
  let w = scope.store.workloadAt(target.ip, target.port);
  // A port a workload does not list, at an address of this host, would reach whatever else listens on
  // the host, whoever enrolled it: only the ports it lists are its own there (a workload with an address
  // of its own, a pod, owns every port of it).
  if (w && !w.ports.includes(target.port) && scope.isLocalAddress(target.ip)) w = undefined;
  if (!w || w.node !== scope.nodeName) {
    return refused(
      unknownWorkload(
        `${joinHostPort(target.ip, target.port)} is not a workload enrolled on node ${scope.nodeName}`,
      ),
    );
  }
  const via = viaWaypoint(scope, w, peer, clientCert);
  if (!via.ok) return refused(via.refusal, w);
  const decision = admits(scope, w, via.client ?? peer, target.port);
  if (!decision.allowed) return refused(denied(decision.reason), w);
  return { ok: true, workload: w, target, peer, decision, client: via.client };
}

/** The identity a workload's service admits connections from alone: its waypoint's; undefined: any. */
export function waypointIdentity(scope: InboundScope, w: Workload): string | undefined {
  const name = scope.store.service(w.namespace, w.service)?.waypoint;
  return name === undefined ? undefined : scope.identityOf({ namespace: w.namespace, service: name });
}

/**
 * No bypass: a workload whose service has a waypoint takes connections from that waypoint only, and the
 * client policy is checked against is the one the waypoint names (x-forwarded-client-cert), as Consul
 * applies a client's intentions whatever proxy is in between. Without a waypoint, the header means nothing.
 */
function viaWaypoint(
  scope: InboundScope,
  w: Workload,
  peer: Peer,
  clientCert: string | undefined,
): { ok: true; client: Peer | undefined } | { ok: false; refusal: ConnectionRefusal } {
  const wp = waypointIdentity(scope, w);
  if (wp === undefined) return { ok: true, client: undefined };
  if (peer.principal !== wp) {
    const why = `service ${w.service} is reached through its waypoint ${wp} only, not from ${peer.principal}`;
    return { ok: false, refusal: new ConnectionRefusal('waypoint_bypass', why) };
  }
  const id = xfccClient(clientCert);
  const client = id ? peerFromUris([id]) : undefined;
  if (!client) return { ok: false, refusal: denied('the waypoint named no client identity') };
  return { ok: true, client };
}

const refused = (refusal: ConnectionRefusal, workload?: Workload): InboundRefused => ({
  ok: false,
  refusal,
  workload,
});

/** Whether the policies in force for `w`'s service admit `peer` to `port`. */
export const admits = (scope: InboundScope, w: Workload, peer: Peer, port: number): Decision =>
  authorize(
    scope.store.policiesFor(w.namespace, w.service),
    scope.store.mesh.defaultPolicy,
    peer,
    port,
    scope.trustDomain,
  );

/** Whether a connection opened earlier to the workload named `name` is still allowed by the state now. */
export function stillAdmits(
  scope: InboundScope,
  name: string,
  peer: Peer,
  port: number,
  client?: Peer,
): { readonly allowed: boolean; readonly reason: string } {
  const current = scope.store.workload(name);
  if (!current) return { allowed: false, reason: 'workload no longer enrolled' };
  const wp = waypointIdentity(scope, current);
  if (wp !== undefined && peer.principal !== wp)
    return { allowed: false, reason: `service ${current.service} is reached through its waypoint only` };
  if (wp !== undefined && client === undefined)
    return { allowed: false, reason: 'the waypoint named no client identity' };
  // A service that no longer has a waypoint: the peer itself is the source policy applies to.
  return admits(scope, current, wp !== undefined ? client! : peer, port);
}
