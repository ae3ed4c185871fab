// L7 authorization of one request by service-intentions, evaluated as Consul's RBAC (agent/xds/rbac.go)
// makes Envoy evaluate it: the intentions for the destination and for `*`, in precedence order (the order
// code of lib/consul/intentions.ts), the first whose source matches the client decides; an L7 intention
// decides by its first matching permission, and when none matches the request falls to the default policy,
// not to a lower intention. Sources of a peer, a sameness group or another partition never match a local
// client: the names they carry are not this cluster's.

import {
  type ConsulIntention,
  inPrecedenceOrder,
  isLocalSource,
  precedenceOf,
} from '../consul/intentions.js';
import type { HTTPPermission, IntentionPermission, ServiceIntentions, SourceIntention } from './entries.js';
import { type L7Request, headerMatches, methodMatches, pathMatches } from './match.js';
import { nsOf } from './set.js';

/** The client, as the tunnel's mTLS proved it. */
export interface L7Client {
  service: string;
  namespace?: string;
}

export interface AuthzDecision {
  allowed: boolean;
  /** What decided: an L4 intention's Action, an L7 permission, or the default policy. */
  by: 'intention' | 'permission' | 'default';
  /** The deciding intention: its entry and source index, for the log and `ambit route explain`. */
  intention?: { entry: string; source: number; name: string; namespace: string; precedence: number };
  permission?: number;
  reason: string;
}

interface Candidate extends ConsulIntention {
  entry: ServiceIntentions;
  index: number;
  src: SourceIntention;
}

export function httpMatches(p: HTTPPermission | undefined, req: L7Request): boolean {
  if (!p) return true;
  if (!pathMatches(p, req.path)) return false;
  for (const h of p.Header ?? []) if (!headerMatches(h, req.headers)) return false;
  return methodMatches(p.Methods, req.method);
}

/**
 * Whether a permission applies to the request. A JWT requirement cannot be checked here, so it fails
 * closed: an allow that needs a token never matches, a deny that needs one always does.
 */
export function permissionMatches(p: IntentionPermission, req: L7Request): boolean {
  if (p.JWT !== undefined) return p.Action === 'deny';
  return httpMatches(p.HTTP, req);
}

const candidates = (e: ServiceIntentions | undefined): Candidate[] =>
  (e?.Sources ?? []).map((src, index) => ({
    SourceName: src.Name,
    SourceNS: src.Namespace,
    SourcePartition: src.Partition,
    SourcePeer: src.Peer,
    SourceSamenessGroup: src.SamenessGroup,
    DestinationName: e!.Name,
    DestinationNS: e!.Namespace,
    Action: src.Action,
    Permissions: src.Permissions,
    entry: e!,
    index,
    src,
  }));

// Validated entries are never changed, so their evaluation order is worked out once per pair.
const NONE: ServiceIntentions = { Kind: 'service-intentions', Name: '', Sources: [] };
const orders = new WeakMap<ServiceIntentions, WeakMap<ServiceIntentions, Candidate[]>>();
function orderedFor(
  entry: ServiceIntentions | undefined,
  wildcard: ServiceIntentions | undefined,
): Candidate[] {
  const a = entry ?? NONE;
  const b = wildcard ?? NONE;
  let inner = orders.get(a);
  if (!inner) {
    inner = new WeakMap();
    orders.set(a, inner);
  }
  let list = inner.get(b);
  if (!list) {
    list = inPrecedenceOrder([...candidates(entry), ...candidates(wildcard)]).filter(isLocalSource);
    inner.set(b, list);
  }
  return list;
}

/**
 * Whether `client` may make `req` to the destination of `entry`. `wildcard` is the `*` service-intentions
 * entry, if any; `defaultAllow` the default policy (Consul's ACL default, or the mesh's).
 */
export function authorizeRequest(
  entry: ServiceIntentions | undefined,
  wildcard: ServiceIntentions | undefined,
  client: L7Client,
  req: L7Request,
  defaultAllow: boolean,
): AuthzDecision {
  // A JWT required of every request to the destination cannot be checked here: deny them all (fail closed).
  for (const e of [entry, wildcard])
    if (e?.JWT !== undefined)
      return {
        allowed: false,
        by: 'intention',
        reason: `service-intentions/${e.Name} requires a JWT, which the waypoint does not verify`,
      };
  const ns = nsOf(client.namespace);
  const ordered = orderedFor(entry, wildcard);
  for (const c of ordered) {
    const nsHit = c.SourceNS === '*' || nsOf(c.SourceNS) === ns;
    if (!nsHit || (c.SourceName !== '*' && c.SourceName !== client.service)) continue;
    const intention = {
      entry: `service-intentions/${c.entry.Name}`,
      source: c.index,
      name: c.SourceName,
      namespace: nsOf(c.SourceNS),
      precedence: precedenceOf(c),
    };
    const perms = c.src.Permissions;
    if (!perms?.length) {
      const allowed = c.src.Action === 'allow';
      return {
        allowed,
        by: 'intention',
        intention,
        reason: `intention ${c.SourceName} => ${c.entry.Name}: ${c.src.Action}`,
      };
    }
    const j = perms.findIndex((p) => permissionMatches(p, req));
    if (j >= 0) {
      const allowed = perms[j]!.Action === 'allow';
      return {
        allowed,
        by: 'permission',
        intention,
        permission: j,
        reason: `intention ${c.SourceName} => ${c.entry.Name}, Permissions[${j}]: ${perms[j]!.Action}`,
      };
    }
    return {
      allowed: defaultAllow,
      by: 'default',
      intention,
      reason: `intention ${c.SourceName} => ${c.entry.Name} has no permission matching; default ${defaultAllow ? 'allow' : 'deny'}`,
    };
  }
  return {
    allowed: defaultAllow,
    by: 'default',
    reason: `no intention matches; default ${defaultAllow ? 'allow' : 'deny'}`,
  };
}
