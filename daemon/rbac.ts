import type { Policy, PolicyAction, PolicySource } from './state/model.js';

/** The authenticated peer of a tunneled connection, as its certificate names it. */
export interface Peer {
  readonly principal: string;
  readonly namespace: string | undefined;
  readonly service: string | undefined;
}

export interface Decision {
  readonly allowed: boolean;
  /** The policy that decided, or undefined when the default did. */
  readonly policy: string | undefined;
  readonly reason: string;
}

const matchesSource = (s: PolicySource, peer: Peer): boolean =>
  (s.service === undefined || s.service === peer.service) &&
  (s.namespace === undefined || s.namespace === peer.namespace) &&
  (s.principal === undefined || s.principal === peer.principal);

const matches = (p: Policy, peer: Peer, port: number): boolean =>
  (p.ports.length === 0 || p.ports.includes(port)) &&
  (p.from.length === 0 || p.from.some((s) => matchesSource(s, peer)));

/**
 * L4 authorization of one connection to one destination service: a matching deny denies; if the
 * destination has allow rules, only a matching allow admits; with none, the mesh default decides.
 */
export function authorize(
  policies: readonly Policy[],
  defaultPolicy: PolicyAction,
  peer: Peer,
  port: number,
): Decision {
  let hasAllow = false;
  let allowedBy: string | undefined;
  for (const p of policies) {
    if (p.action === 'deny') {
      if (matches(p, peer, port))
        return { allowed: false, policy: p.name, reason: `denied by policy ${p.name}` };
    } else {
      hasAllow = true;
      if (allowedBy === undefined && matches(p, peer, port)) allowedBy = p.name;
    }
  }
  if (allowedBy !== undefined)
    return { allowed: true, policy: allowedBy, reason: `allowed by policy ${allowedBy}` };
  if (hasAllow) return { allowed: false, policy: undefined, reason: 'no allow policy matches the source' };
  return defaultPolicy === 'allow'
    ? { allowed: true, policy: undefined, reason: 'default allow' }
    : { allowed: false, policy: undefined, reason: 'default deny' };
}
