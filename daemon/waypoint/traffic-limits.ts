import type { InstanceLevelRoute, ServiceDefaults, UpstreamConfigFields } from '../../lib/l7/entries.js';
import { pathMatches } from '../../lib/l7/match.js';
import { type EntrySet, keyOf, nsOf } from '../../lib/l7/set.js';
// Circuit breaking and local rate limits at the waypoint, from `service-defaults` as Consul writes them
// for Envoy: RateLimits.InstanceLevel of the service a request lands on (a token bucket per waypoint
// instance, Envoy's local_ratelimit), and UpstreamConfig Limits.MaxConcurrentRequests of the client's
// service for that destination (Envoy's circuit breaker max_requests). Pure state and arithmetic over an
// injected clock: the router asks, this answers; the entries in force are passed in on every ask, so a
// limit changed in Consul or the mesh file applies to the next request while the counts carry over.
import { type ConnectionLimit, DEFAULT_MAX_PENDING } from './conn-gate.js';

export interface ServiceRef {
  readonly name: string;
  readonly namespace: string;
}

/** One request to admit: who sends it, the service it dialled, the one it lands on, the path it gets there. */
export interface LimitRequest {
  /** The client's service (from its SPIFFE ID); none: no client entry applies. */
  readonly client: ServiceRef | undefined;
  /** The service the client asked for: UpstreamConfig.Overrides name it (Consul's upstream). */
  readonly dialed: ServiceRef;
  /** The service whose endpoint takes the request (after routes, splits, redirects, failover). */
  readonly target: ServiceRef;
  /** The path the endpoint gets (PrefixRewrite applied), as the instance's own rate limit would see it. */
  readonly path: string;
}

export type LimitRefusal = 'rate_limited' | 'overflow';

export type Admission =
  | { readonly ok: true; readonly release: () => void }
  | { readonly ok: false; readonly refusal: LimitRefusal; readonly why: string };

/** One rate of RateLimits.InstanceLevel: a route's (matched by path) or the service's (matches all). */
export interface RateRule {
  /** The bucket's name within its service: the route's match, or `*` for the service-wide rate. */
  readonly key: string;
  readonly match: InstanceLevelRoute | undefined;
  readonly perSecond: number;
  readonly burst: number;
}

/** A service's rates, routes first in their order, then the service-wide one (when it has one). */
export function rateRules(sd: ServiceDefaults | undefined): RateRule[] {
  const il = sd?.RateLimits?.InstanceLevel;
  if (!il) return [];
  const rules: RateRule[] = (il.Routes ?? []).map((r) => ({
    key:
      r.PathExact !== undefined
        ? `exact:${r.PathExact}`
        : r.PathPrefix !== undefined
          ? `prefix:${r.PathPrefix}`
          : `regex:${r.PathRegex}`,
    match: r,
    perSecond: r.RequestsPerSecond,
    burst: burstOf(r.RequestsPerSecond, r.RequestsMaxBurst),
  }));
  // Consul leaves a service without a rate when RequestsPerSecond is 0 or unset, whatever the burst says.
  if (il.RequestsPerSecond)
    rules.push({
      key: '*',
      match: undefined,
      perSecond: il.RequestsPerSecond,
      burst: burstOf(il.RequestsPerSecond, il.RequestsMaxBurst),
    });
  return rules;
}

// Consul: an unset (or 0) burst is the rate itself. A bucket holds at least one token, or it admits nothing.
const burstOf = (perSecond: number, burst: number | undefined): number => Math.max(1, burst || perSecond);

/** The first rule whose path matches, else the service-wide one: Consul's "first matching path". */
export const ruleFor = (rules: readonly RateRule[], path: string): RateRule | undefined =>
  rules.find((r) => r.match === undefined || pathMatches(r.match, path));

/**
 * MaxConcurrentRequests the client's service-defaults sets for `dialed`: the override naming it (its
 * Namespace defaults to the entry's), else Defaults; undefined (or 0) is no limit. An override for a peer
 * is another cluster's service: never this one.
 */
export function concurrencyLimit(set: EntrySet, client: ServiceRef, dialed: ServiceRef): number | undefined {
  return (
    upstreamFields(set, client, dialed, (f) => f.Limits !== undefined)?.Limits?.MaxConcurrentRequests ||
    undefined
  );
}

/**
 * MaxConnections and MaxPendingRequests the client's service-defaults sets for `dialed` (as
 * concurrencyLimit reads them), counted per (client, target); undefined without a MaxConnections (0 is
 * none, as for MaxConcurrentRequests). An unset MaxPendingRequests is Envoy's default; 0 waits for none.
 */
export function connectionLimit(
  set: EntrySet,
  client: ServiceRef,
  dialed: ServiceRef,
  target: ServiceRef,
): ConnectionLimit | undefined {
  const limits = upstreamFields(set, client, dialed, (f) => f.Limits !== undefined)?.Limits;
  if (!limits?.MaxConnections) return undefined;
  return {
    key: pairKey(client, target),
    maxConnections: limits.MaxConnections,
    maxPending: limits.MaxPendingRequests ?? DEFAULT_MAX_PENDING,
    names: `${client.name} to ${target.name}`,
  };
}

/**
 * The client's UpstreamConfig fields for the dialled service: the override for it (by name, its Namespace
 * defaulting to the entry's; never a peer's, another cluster's service) when it `has` the setting asked
 * for, else Defaults, as Consul merges them per setting.
 */
export function upstreamFields(
  set: EntrySet,
  client: ServiceRef,
  dialed: ServiceRef,
  has: (f: UpstreamConfigFields) => boolean,
): UpstreamConfigFields | undefined {
  const sd = set.serviceDefaults.get(keyOf(client.name, client.namespace));
  const uc = sd?.UpstreamConfig;
  if (!uc) return undefined;
  const own = nsOf(sd.Namespace ?? client.namespace);
  const override = uc.Overrides?.find(
    (o) =>
      o.Peer === undefined && o.Name === dialed.name && nsOf(o.Namespace ?? own) === nsOf(dialed.namespace),
  );
  return override && has(override) ? override : uc.Defaults;
}

/**
 * A token bucket refilled continuously at `perSecond` up to `burst`. Counted in thousandths of a token per
 * millisecond-rate (credit), so that whole milliseconds and whole rates add up exactly.
 */
class Bucket {
  #credit: number;
  #at: number;
  #perSecond: number;
  #cap: number;

  constructor(perSecond: number, burst: number, now: number) {
    this.#perSecond = perSecond;
    this.#cap = burst * 1000;
    // A new bucket starts full, as Envoy's does.
    this.#credit = this.#cap;
    this.#at = now;
  }

  /** The rule changed: its new rate and burst from now on, and no more than the new burst held. */
  retune(perSecond: number, burst: number, now: number): void {
    if (perSecond === this.#perSecond && burst * 1000 === this.#cap) return;
    this.#fill(now);
    this.#perSecond = perSecond;
    this.#cap = burst * 1000;
    this.#credit = Math.min(this.#credit, this.#cap);
  }

  take(now: number): boolean {
    this.#fill(now);
    if (this.#credit < 1000) return false;
    this.#credit -= 1000;
    return true;
  }

  #fill(now: number): void {
    // A clock that steps back adds nothing: the bucket never fills from time that did not pass.
    const elapsed = Math.max(0, now - this.#at);
    this.#at = Math.max(this.#at, now);
    this.#credit = Math.min(this.#cap, this.#credit + elapsed * this.#perSecond);
  }
}

const pairKey = (client: ServiceRef, target: ServiceRef): string =>
  `${keyOf(client.name, client.namespace)}\u0000${keyOf(target.name, target.namespace)}`;

/** The rules of an entry, built once per entry read (a new mesh brings new entry objects). */
const ruleCache = new WeakMap<ServiceDefaults, RateRule[]>();
function rulesOf(sd: ServiceDefaults | undefined): RateRule[] {
  if (!sd) return [];
  let rules = ruleCache.get(sd);
  if (!rules) {
    rules = rateRules(sd);
    ruleCache.set(sd, rules);
  }
  return rules;
}

/** Pairs and services at zero kept for their next request before they are swept (a sweep is O(pairs)). */
const IDLE_KEPT = 10_000;

/** Requests in flight of one (client service, destination service) pair. */
interface Count {
  n: number;
}

/**
 * What one (client, dialled service, target service) is admitted by under one entry set: its
 * MaxConcurrentRequests, its count, its service's rates and their buckets. Resolved once (`lane`) and
 * kept by the caller for as long as that set is in force, so that a request asks no entry again; the
 * count and buckets are looked up again after a sweep or a new set (`epoch`).
 */
export interface Lane {
  readonly set: EntrySet;
  readonly client: ServiceRef | undefined;
  readonly target: ServiceRef;
  readonly limit: number | undefined;
  /** MaxConnections and MaxPendingRequests, for the engines' pools; undefined: no cap. */
  readonly connections: ConnectionLimit | undefined;
  /** The pair's key; undefined without a client (nothing counted). */
  readonly pair: string | undefined;
  readonly service: string;
  readonly rules: readonly RateRule[];
  /** Its rule when it has one alone and that one matches every path (the service-wide rate). */
  readonly only: RateRule | undefined;
  epoch: number;
  count: Count | undefined;
  buckets: (Bucket | undefined)[];
}

export class TrafficLimits {
  readonly #now: () => number;
  /** Per service, per rule: bounded by the rules the entries hold (pruned when the entries change). */
  readonly #buckets = new Map<string, Map<string, Bucket>>();
  /**
   * Requests in flight per (client service, destination service). A pair at zero stays for its next
   * request (a Map delete and insert per request cost more than the rest of the check); pairs at zero
   * are dropped when the entries change and when more than IDLE_KEPT are kept.
   */
  readonly #inFlight = new Map<string, Count>();
  #set: EntrySet | undefined;
  /** Bumped when counts or buckets are dropped: a lane looks its own up again. */
  #epoch = 0;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /**
   * Admits one request or says why not. A request over the concurrency limit takes no token (it never
   * reaches the instance whose rate it is); a rate-limited one holds no slot. `release` is idempotent.
   */
  admit(set: EntrySet, req: LimitRequest, now: number = this.#now()): Admission {
    return this.admitLane(this.lane(set, req.client, req.dialed, req.target), req.path, now);
  }

  /** What `admitLane` needs of (client, dialled, target) under `set`, read from its entries once. */
  lane(set: EntrySet, client: ServiceRef | undefined, dialed: ServiceRef, target: ServiceRef): Lane {
    if (set !== this.#set) this.#prune(set);
    const service = keyOf(target.name, target.namespace);
    const rules = rulesOf(set.serviceDefaults.get(service));
    return {
      set,
      client,
      target,
      limit: client && concurrencyLimit(set, client, dialed),
      connections: client && connectionLimit(set, client, dialed, target),
      // Counted whenever the client is known, limit or not: a limit set later sees what is in flight.
      pair: client && pairKey(client, target),
      service,
      rules,
      only: rules.length === 1 && rules[0]!.match === undefined ? rules[0] : undefined,
      epoch: -1,
      count: undefined,
      buckets: [],
    };
  }

  /** admit, for a lane resolved (and kept) by the caller. */
  admitLane(lane: Lane, path: string, now: number = this.#now()): Admission {
    if (lane.set !== this.#set) this.#prune(lane.set);
    if (lane.epoch !== this.#epoch) {
      lane.epoch = this.#epoch;
      lane.count = lane.pair === undefined ? undefined : this.#countOf(lane.pair);
      lane.buckets = [];
    }
    const { limit, count } = lane;
    if (limit !== undefined && count !== undefined && count.n >= limit)
      return {
        ok: false,
        refusal: 'overflow',
        why: `${limit} requests from ${lane.client?.name} to ${lane.target.name} in flight (MaxConcurrentRequests)`,
      };
    const rules = lane.rules;
    if (rules.length > 0) {
      let i = 0;
      if (lane.only === undefined) {
        while (i < rules.length && !(rules[i]!.match === undefined || pathMatches(rules[i]!.match!, path)))
          i++;
      }
      const rule = rules[i];
      if (rule !== undefined) {
        let b = lane.buckets[i];
        if (b === undefined) {
          b = this.#bucket(lane.service, rule, now);
          lane.buckets[i] = b;
        }
        if (!b.take(now))
          return {
            ok: false,
            refusal: 'rate_limited',
            why: `${lane.target.name} over ${rule.perSecond}/s (burst ${rule.burst}) for ${rule.key === '*' ? 'the service' : rule.key}`,
          };
      }
    }
    if (count === undefined) return { ok: true, release: () => {} };
    count.n++;
    let held = true;
    return {
      ok: true,
      release: () => {
        if (!held) return;
        held = false;
        count.n--;
      },
    };
  }

  /** Requests in flight from `client`'s service to `target`'s (what tests check). */
  inFlight(client: ServiceRef, target: ServiceRef): number {
    return this.#inFlight.get(pairKey(client, target))?.n ?? 0;
  }

  /** Pairs counted, at zero or not (what tests check of the bound). */
  get pairs(): number {
    return this.#inFlight.size;
  }

  #countOf(pair: string): Count {
    let c = this.#inFlight.get(pair);
    if (c === undefined) {
      if (this.#inFlight.size >= IDLE_KEPT) this.#sweep();
      c = { n: 0 };
      this.#inFlight.set(pair, c);
    }
    return c;
  }

  #sweep(): void {
    for (const [pair, c] of this.#inFlight) if (c.n <= 0) this.#inFlight.delete(pair);
    this.#epoch++;
  }

  #bucket(service: string, rule: RateRule, now: number): Bucket {
    let rules = this.#buckets.get(service);
    if (!rules) {
      rules = new Map();
      this.#buckets.set(service, rules);
    }
    let b = rules.get(rule.key);
    if (b) b.retune(rule.perSecond, rule.burst, now);
    else {
      b = new Bucket(rule.perSecond, rule.burst, now);
      rules.set(rule.key, b);
    }
    return b;
  }

  /** New entries: a bucket whose rule is gone goes with it; the others keep their tokens. */
  #prune(set: EntrySet): void {
    this.#set = set;
    for (const [service, rules] of this.#buckets) {
      const keys = new Set(rulesOf(set.serviceDefaults.get(service)).map((r) => r.key));
      for (const k of rules.keys()) if (!keys.has(k)) rules.delete(k);
      if (rules.size === 0) this.#buckets.delete(service);
    }
    this.#sweep();
  }
}
