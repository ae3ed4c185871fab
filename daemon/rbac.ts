import type { Policy, PolicyAction, PolicySource } from '../lib/mesh/model.js';

/** The partition this daemon's policy names belong to (Consul CE has only this one). */
export const LOCAL_PARTITION = 'default';

/** The authenticated peer of a tunneled connection, as its certificate names it. */
export interface Peer {
  readonly principal: string;
  /** The trust domain of the principal; undefined when the certificate's URI has none that is valid. */
  readonly trustDomain: string | undefined;
  /** The admin partition the ID names (`/ap/<p>/`); undefined is the default partition. */
  readonly partition?: string | undefined;
  readonly namespace: string | undefined;
  readonly service: string | undefined;
}

export interface Decision {
  readonly allowed: boolean;
  /** The policy that decided, or undefined when the default did. */
  readonly policy: string | undefined;
  readonly reason: string;
}

/**
 * Service and namespace name this trust domain's workloads: a peer of another trust domain (another mesh
 * whose certificates the same roots happen to sign) never matches them, only a clause naming its whole
 * principal. An empty clause stands for every source: of this trust domain when it allows, of any when it
 * denies, so that a deny is never narrower than it reads.
 */
function matchesSource(s: PolicySource, peer: Peer, local: boolean, action: PolicyAction): boolean {
  if (s.principal !== undefined) {
    if (s.principal !== peer.principal) return false;
  } else if (!local) {
    return action === 'deny' && s.service === undefined && s.namespace === undefined;
  }
  return (
    (s.service === undefined || s.service === peer.service) &&
    (s.namespace === undefined || s.namespace === peer.namespace)
  );
}

const matches = (p: Policy, peer: Peer, port: number, local: boolean): boolean =>
  (p.ports.length === 0 || p.ports.includes(port)) &&
  (p.from.length === 0
    ? local || p.action === 'deny'
    : p.from.some((s) => matchesSource(s, peer, local, p.action)));

/**
 * L4 authorization of one connection to one destination service: a matching deny denies; if the
 * destination has allow rules, only a matching allow admits; with none, the mesh default decides.
 * `trustDomain` is this mesh's: the one the policies' service and namespace names belong to.
 */
export function authorize(
  policies: readonly Policy[],
  defaultPolicy: PolicyAction,
  peer: Peer,
  port: number,
  trustDomain: string,
): Decision {
  // Service and namespace names are this partition's: a source of another admin partition is matched, like
  // one of another trust domain, only by a clause naming its principal.
  const otherPartition = peer.partition !== undefined && peer.partition !== LOCAL_PARTITION;
  const local = peer.trustDomain !== undefined && peer.trustDomain === trustDomain && !otherPartition;
  let hasAllow = false;
  let allowedBy: string | undefined;
  for (const p of policies) {
    if (p.action === 'deny') {
      if (matches(p, peer, port, local))
        return { allowed: false, policy: p.name, reason: `denied by policy ${p.name}` };
    } else {
      hasAllow = true;
      if (allowedBy === undefined && matches(p, peer, port, local)) allowedBy = p.name;
    }
  }
  if (allowedBy !== undefined)
    return { allowed: true, policy: allowedBy, reason: `allowed by policy ${allowedBy}` };
  if (hasAllow) {
    // Say why when the names match but the trust domain does not: the rule reads as if it should admit.
    const foreign = local
      ? ''
      : otherPartition && peer.trustDomain === trustDomain
        ? ` (${peer.principal} is of admin partition ${peer.partition}: only a rule naming its principal matches it)`
        : ` (${peer.principal} is not of trust domain ${trustDomain}: only a rule naming its principal matches it)`;
    return { allowed: false, policy: undefined, reason: `no allow policy matches the source${foreign}` };
  }
  return defaultPolicy === 'allow'
    ? { allowed: true, policy: undefined, reason: 'default allow' }
    : { allowed: false, policy: undefined, reason: 'default deny' };
}
