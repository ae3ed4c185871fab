// Consul intentions → the catalog model's L4 policies.
//
// Consul evaluates the intentions that apply to a destination in precedence order and the first whose
// source matches decides; none matching leaves the decision to the default policy. The model's policies
// (rbac.ts) work the other way round (any matching deny wins; where allows exist only a matching allow
// admits; with none, the default). Sources in Consul are service names or `*` (per namespace in
// Enterprise), so peers fall into finitely many classes: each named source, "any other service of
// namespace N", "anyone else". The compiler decides each class by Consul's rule and writes policies that
// give every class exactly that decision under the model's rule. An intention with `Permissions` is L7: for
// a destination with a waypoint, the waypoint enforces it per request (lib/l7/intentions.ts) and L4 admits
// the sources it matches (the destination takes connections from its waypoint alone, so nothing reaches it
// unchecked); for one without a waypoint nothing could enforce it, so its sources are denied at L4 (fail
// closed).
//
// Sources of another cluster (`SourcePeer`), of a sameness group (`SourceSamenessGroup`) or of another
// admin partition (`SourcePartition`) are never this partition's services: Ambit's names stand for local
// sources only, so such intentions are left out (a peer-scoped `allow web` must not allow the local web).
// Those sources reach here, if at all, with foreign SPIFFE IDs that only a principal clause matches.
//
// One case the model cannot express (it needs Enterprise namespaces): "anyone else" allowed, a namespace
// denied, a named service in it allowed. Sources of namespaces no intention names are then denied, not
// allowed (fail closed), and `conflicts` says so. Without namespaces (Consul CE) it never arises.

import type { Policy, PolicyAction, PolicySource } from '../mesh/model.js';
import { isRecord } from './catalog.js';

export interface ConsulIntention {
  SourceName: string;
  SourceNS?: string;
  /** Enterprise: the source's admin partition; empty or `default` is this (CE's only) partition. */
  SourcePartition?: string;
  /** A cluster peer the source belongs to (cluster peering). */
  SourcePeer?: string;
  /** A sameness group the source stands for. */
  SourceSamenessGroup?: string;
  DestinationName: string;
  DestinationNS?: string;
  Action?: string;
  Permissions?: unknown[] | null;
  Precedence?: number;
}

export interface CompiledIntentions {
  policies: Policy[];
  /** Sources that the model cannot give their Consul decision; they are denied. */
  conflicts: string[];
}

const ns = (v: string | undefined): string => (v === undefined || v === '' ? 'default' : v);

/** How the destination is reached: through a waypoint, which enforces L7 intentions, or not. */
export interface CompileOptions {
  /** The destination has a waypoint: its L7 intentions are the waypoint's to enforce. */
  readonly waypoint?: boolean;
}

/**
 * What an intention decides at L4: its Action; an L7 (Permissions) intention allows where a waypoint
 * enforces its permissions, and denies where none does.
 */
export const l4Action = (i: ConsulIntention, opts: CompileOptions = {}): PolicyAction =>
  (i.Permissions?.length ?? 0) > 0
    ? opts.waypoint
      ? 'allow'
      : 'deny'
    : i.Action === 'deny'
      ? 'deny'
      : 'allow';

/** Whether an intention's source is of this partition and cluster: only those can match local sources. */
export const isLocalSource = (i: ConsulIntention): boolean =>
  !i.SourcePeer &&
  !i.SourceSamenessGroup &&
  (i.SourcePartition === undefined || i.SourcePartition === '' || i.SourcePartition === 'default');

/**
 * An intention's precedence: Consul's own figure when it sent one, else computed as Consul's
 * UpdatePrecedence does from how exact the destination and the source are (a config entry read from the
 * mesh file carries none): exact destination 9, 8, 7 for a source that is exact, `*` in a namespace, `*`
 * in `*`; a destination `*` in a namespace 6, 5, 4.
 */
export function precedenceOf(i: ConsulIntention): number {
  if (i.Precedence !== undefined) return i.Precedence;
  const exact = (namespace: string | undefined, name: string): number =>
    namespace === '*' ? 0 : name === '*' ? 1 : 2;
  const max = [3, 6, 9][exact(i.DestinationNS, i.DestinationName)]!;
  return max - (2 - exact(i.SourceNS, i.SourceName));
}

/** Intentions in Consul's evaluation order: precedence highest first; ties keep their given order. */
export function inPrecedenceOrder<T extends ConsulIntention>(intentions: readonly T[]): T[] {
  // Stable sort: Consul already answers in evaluation order; this only guards against one that does not.
  return intentions
    .map((i, n) => ({ i, n, p: precedenceOf(i) }))
    .sort((a, b) => b.p - a.p || a.n - b.n)
    .map((x) => x.i);
}

/** The intentions that apply to local sources, from a `/connect/intentions/match` answer. */
export function parseIntentions(body: unknown, destination: string): ConsulIntention[] {
  // /connect/intentions/match answers {"<name>": [...]}.
  const list = isRecord(body) ? body[destination] : undefined;
  if (!Array.isArray(list)) return [];
  return list.filter(
    (i): i is ConsulIntention =>
      isRecord(i) &&
      typeof i.SourceName === 'string' &&
      typeof i.DestinationName === 'string' &&
      isLocalSource(i as unknown as ConsulIntention),
  );
}

export function compileIntentions(
  destination: { service: string; namespace: string },
  intentions: readonly ConsulIntention[],
  defaultPolicy: PolicyAction,
  opts: CompileOptions = {},
): CompiledIntentions {
  if (intentions.length === 0) return { policies: [], conflicts: [] };
  const ordered = inPrecedenceOrder(intentions);
  const first = (pred: (i: ConsulIntention) => boolean): PolicyAction => {
    const hit = ordered.find(pred);
    return hit ? l4Action(hit, opts) : defaultPolicy;
  };
  const wildNs = (i: ConsulIntention): boolean => i.SourceNS === '*';
  const named = new Map<string, { namespace: string; service: string }>();
  const namespaces = new Set<string>();
  for (const i of ordered) {
    if (wildNs(i)) continue;
    namespaces.add(ns(i.SourceNS));
    if (i.SourceName !== '*')
      named.set(`${ns(i.SourceNS)}/${i.SourceName}`, { namespace: ns(i.SourceNS), service: i.SourceName });
  }
  const others = first((i) => wildNs(i));
  const nsDecision = new Map<string, PolicyAction>();
  for (const n of namespaces)
    nsDecision.set(
      n,
      first((i) => (wildNs(i) || ns(i.SourceNS) === n) && i.SourceName === '*'),
    );
  const namedDecision = new Map<string, PolicyAction>();
  for (const [k, s] of named) {
    namedDecision.set(
      k,
      first(
        (i) =>
          (wildNs(i) || ns(i.SourceNS) === s.namespace) &&
          (i.SourceName === '*' || i.SourceName === s.service),
      ),
    );
  }

  const dst = `${destination.service}.${destination.namespace}`;
  const policy = (action: PolicyAction, label: string, from: PolicySource[]): Policy => ({
    name: `intention:${label}=>${dst}:${action}`,
    action,
    service: destination.service,
    namespace: destination.namespace,
    ports: [],
    from,
  });
  const src = (namespace: string | undefined, service: string | undefined): PolicySource => ({
    service,
    namespace,
    principal: undefined,
  });
  const emit = (othersAction: PolicyAction): CompiledIntentions => {
    const policies: Policy[] = [];
    const conflicts: string[] = [];
    if (othersAction === 'allow') {
      policies.push(policy('allow', '*', []));
      for (const [n, d] of nsDecision)
        if (d === 'deny') policies.push(policy('deny', `${n}/*`, [src(n, undefined)]));
      for (const [k, s] of named) {
        const d = namedDecision.get(k)!;
        const enclosing = nsDecision.get(s.namespace) ?? othersAction;
        if (d === 'deny' && enclosing === 'allow')
          policies.push(policy('deny', k, [src(s.namespace, s.service)]));
        if (d === 'allow' && enclosing === 'deny') conflicts.push(k);
      }
    } else {
      for (const [n, d] of nsDecision)
        if (d === 'allow') policies.push(policy('allow', `${n}/*`, [src(n, undefined)]));
      for (const [k, s] of named) {
        const d = namedDecision.get(k)!;
        const enclosing = nsDecision.get(s.namespace) ?? othersAction;
        if (d === 'allow' && enclosing === 'deny')
          policies.push(policy('allow', k, [src(s.namespace, s.service)]));
        if (d === 'deny' && enclosing === 'allow')
          policies.push(policy('deny', k, [src(s.namespace, s.service)]));
      }
      // Everyone denied and no allow to make that an allowlist: say it outright (the default may be allow).
      if (!policies.some((p) => p.action === 'allow')) policies.push(policy('deny', '*', []));
    }
    return { policies, conflicts };
  };
  if (others === 'deny') return emit('deny');
  const open = emit('allow');
  if (open.conflicts.length === 0) return open;
  // Sources of namespaces no intention names cannot be allowed without denying a named service that must
  // be allowed: deny them instead (fail closed). Without Enterprise namespaces there are no such sources.
  const closed = emit('deny');
  return { policies: closed.policies, conflicts: ['sources in namespaces no intention names'] };
}
