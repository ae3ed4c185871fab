// Outlier ejection at the waypoint (Envoy's consecutive_5xx outlier detection), from the client service's
// `service-defaults` UpstreamConfig PassiveHealthCheck for the service it dialled, as Consul configures the
// client's Envoy: per (client service, chain target), per endpoint. MaxFailures consecutive 5xx answers
// (or failures before one: connect failure, reset, timeout, which Envoy maps to 5xx) eject the endpoint,
// drawn at EnforcingConsecutive5xx percent, unless MaxEjectionPercent of the target's endpoints are out
// already. It is out for BaseEjectionTime x its ejection count (at most max(300 s, BaseEjectionTime)), and
// comes back at the first Interval sweep after that; each sweep it stays in, the count goes down by one.
// Nothing is held or timed for a target whose client configures no PassiveHealthCheck.
import type { PassiveHealthCheck } from '../../lib/l7/entries.js';
import type { Random } from '../../lib/l7/lb.js';
import { type EntrySet, keyOf, nsOf } from '../../lib/l7/set.js';
import type { Logger } from '../../lib/log.js';
import { REFUSAL_LOG_INTERVAL_MS } from '../limits/refusal.js';
import { LogThrottle } from '../limits/throttle.js';
import { type ServiceRef, upstreamFields } from './traffic-limits.js';

/** What an endpoint made of one request: its HTTP status (gRPC's mapped), or how it failed before one. */
export type UpstreamResult = number | 'connect_failure' | 'reset' | 'timeout';

/** Envoy's defaults where Consul leaves a field unset (Consul passes only what the entry gives). */
export const OUTLIER_DEFAULTS = {
  intervalMs: 10_000,
  maxFailures: 5,
  enforcingPercent: 100,
  maxEjectionPercent: 10,
  baseEjectionMs: 30_000,
  /** Envoy's max_ejection_time, which Consul does not set: 300 s, or BaseEjectionTime when longer. */
  maxEjectionMs: 300_000,
} as const;

export interface OutlierSettings {
  readonly intervalMs: number;
  readonly maxFailures: number;
  readonly enforcingPercent: number;
  readonly maxEjectionPercent: number;
  readonly baseEjectionMs: number;
  readonly maxEjectionMs: number;
}

/** A PassiveHealthCheck with Envoy's defaults for what it leaves unset (Consul: 0 Interval or MaxFailures is unset). */
export function settingsOf(p: PassiveHealthCheck): OutlierSettings {
  const known = settingsCache.get(p);
  if (known) return known;
  const base = p.BaseEjectionTime ?? OUTLIER_DEFAULTS.baseEjectionMs;
  const s: OutlierSettings = {
    intervalMs: p.Interval || OUTLIER_DEFAULTS.intervalMs,
    maxFailures: p.MaxFailures || OUTLIER_DEFAULTS.maxFailures,
    enforcingPercent: p.EnforcingConsecutive5xx ?? OUTLIER_DEFAULTS.enforcingPercent,
    maxEjectionPercent: p.MaxEjectionPercent ?? OUTLIER_DEFAULTS.maxEjectionPercent,
    baseEjectionMs: base,
    maxEjectionMs: Math.max(OUTLIER_DEFAULTS.maxEjectionMs, base),
  };
  settingsCache.set(p, s);
  return s;
}

/** Per entry object read: a request costs a lookup, not a new object. */
const settingsCache = new WeakMap<PassiveHealthCheck, OutlierSettings>();

/**
 * The PassiveHealthCheck the client's service-defaults sets for `dialed`: the override naming it (its
 * Namespace defaults to the entry's) when that override has one, else Defaults'. A peer's override is
 * another cluster's service, never this one.
 */
export function passiveHealthCheck(
  set: EntrySet,
  client: ServiceRef,
  dialed: ServiceRef,
): PassiveHealthCheck | undefined {
  return upstreamFields(set, client, dialed, (f) => f.PassiveHealthCheck !== undefined)?.PassiveHealthCheck;
}

export const isFailure = (r: UpstreamResult): boolean => typeof r !== 'number' || r >= 500;

interface HostState {
  consecutive: number;
  /** When it was ejected; undefined while it takes traffic. */
  ejectedAt: number | undefined;
  /** Envoy's ejection time multiplier: up by one per ejection, down by one per sweep it stays in. */
  backoff: number;
  lastReturn: number | undefined;
  ejections: number;
}

/** One client service's view of one chain target's endpoints. */
interface Group {
  readonly key: string;
  readonly client: string;
  readonly target: string;
  /** `<name>.<namespace>` of the target's service: the metrics' destination_service. */
  readonly service: string;
  readonly ref: ServiceRef;
  settings: OutlierSettings;
  /** The endpoints of the target when a request last met it: what MaxEjectionPercent is a share of. */
  size: number;
  readonly hosts: Map<string, HostState>;
  ejected: number;
  timer: NodeJS.Timeout | undefined;
}

/** What a request routed through a group reports its result to. */
export interface OutlierTicket {
  readonly group: Group;
  readonly host: string;
}

export interface OutlierMetrics {
  ejection(destinationService: string, reason: string): void;
  ejected(destinationService: string, delta: number): void;
}

export interface OutlierDeps {
  readonly log: Logger;
  readonly metrics?: OutlierMetrics | undefined;
  /** Draws in [0, 1) for EnforcingConsecutive5xx. */
  readonly random?: Random;
  /** Sweeps on timers (the daemon); off, a test calls sweep() with its own clock. */
  readonly timers?: boolean;
}

/** An ejection in force, as /config_dump shows it. */
export interface EjectionView {
  readonly endpoint: string;
  readonly ejectedAt: string;
  /** The earliest it comes back: it does at the first sweep from then. */
  readonly until: string;
  readonly ejections: number;
}

export interface GroupView {
  readonly client: string;
  readonly target: string;
  readonly settings: OutlierSettings;
  readonly endpoints: number;
  readonly ejected: EjectionView[];
}

export class OutlierDetector {
  readonly #d: OutlierDeps;
  readonly #random: Random;
  readonly #groups = new Map<string, Group>();
  /**
   * An endpoint left in (by the draw or the percent) goes on failing: its detections are logged once per
   * interval, the rest counted into the next line. Ejections need no throttle: one per ejection time.
   */
  readonly #notEnforced = new LogThrottle(REFUSAL_LOG_INTERVAL_MS);
  readonly #overPercent = new LogThrottle(REFUSAL_LOG_INTERVAL_MS);

  constructor(d: OutlierDeps) {
    this.#d = d;
    this.#random = d.random ?? Math.random;
  }

  /** Groups held now (one per client service and target that has a PassiveHealthCheck and met a request). */
  get size(): number {
    return this.#groups.size;
  }

  /**
   * The group of (client, target) under `settings`, made when first met; `size` its endpoints now. A group
   * whose settings changed keeps its counts and ejections: the new numbers apply from now on.
   */
  ticket(
    client: ServiceRef,
    target: { readonly id: string; readonly service: ServiceRef },
    settings: OutlierSettings,
    size: number,
    host: string,
  ): OutlierTicket {
    const clientKey = keyOf(client.name, client.namespace);
    const key = `${clientKey}\u0000${target.id}`;
    let g = this.#groups.get(key);
    if (!g) {
      g = {
        key,
        client: clientKey,
        target: target.id,
        service: `${target.service.name}.${nsOf(target.service.namespace)}`,
        ref: target.service,
        settings,
        size,
        hosts: new Map(),
        ejected: 0,
        timer: undefined,
      };
      this.#groups.set(key, g);
    } else {
      if (g.settings !== settings && !sameSettings(g.settings, settings)) {
        g.settings = settings;
        // A new Interval is the timer's period from now on.
        if (g.timer) clearInterval(g.timer);
        g.timer = undefined;
        this.#rearm(g);
      }
      g.size = size;
    }
    return { group: g, host };
  }

  /** `list` without the group's ejected endpoints; all of `list` when none would be left (Envoy's panic). */
  live<T extends { readonly id: string }>(t: Pick<OutlierTicket, 'group'>, list: T[]): T[] {
    const g = t.group;
    if (g.ejected === 0) return list;
    const ok = list.filter((i) => g.hosts.get(i.id)?.ejectedAt === undefined);
    return ok.length > 0 ? ok : list;
  }

  /** The group of (client, target), if one is held: what route() filters by before it picks. */
  group(client: ServiceRef, targetId: string): Pick<OutlierTicket, 'group'> | undefined {
    if (this.#groups.size === 0) return undefined;
    const g = this.#groups.get(`${keyOf(client.name, client.namespace)}\u0000${targetId}`);
    return g && { group: g };
  }

  /** One request's result at its endpoint. */
  observe(t: OutlierTicket, result: UpstreamResult, now = Date.now()): void {
    const g = t.group;
    if (this.#groups.get(g.key) !== g) return;
    let h = g.hosts.get(t.host);
    if (!isFailure(result)) {
      if (h) h.consecutive = 0;
      return;
    }
    if (!h) {
      h = { consecutive: 0, ejectedAt: undefined, backoff: 0, lastReturn: undefined, ejections: 0 };
      g.hosts.set(t.host, h);
    }
    // Answers of requests that were in flight when it was ejected add nothing.
    if (h.ejectedAt !== undefined) return;
    if (++h.consecutive < g.settings.maxFailures) return;
    h.consecutive = 0;
    const s = g.settings;
    const fields = {
      client: g.client,
      target: g.target,
      endpoint: t.host,
      consecutive: s.maxFailures,
    };
    if (!(s.enforcingPercent >= 100 || this.#random() * 100 < s.enforcingPercent)) {
      const suppressed = this.#notEnforced.take();
      if (suppressed !== undefined)
        this.#d.log.info(
          { ...fields, enforcing: s.enforcingPercent, ...(suppressed > 0 ? { suppressed } : {}) },
          'waypoint outlier detected, not ejected (EnforcingConsecutive5xx)',
        );
      return;
    }
    // Envoy's rule: eject while the share ejected now is below MaxEjectionPercent, so that the first one
    // always may (unless the percent is 0), and never more than one past the share.
    if (g.ejected * 100 >= s.maxEjectionPercent * Math.max(g.size, 1)) {
      const suppressed = this.#overPercent.take();
      if (suppressed !== undefined)
        this.#d.log.info(
          {
            ...fields,
            ejected: g.ejected,
            endpoints: g.size,
            maxEjectionPercent: s.maxEjectionPercent,
            ...(suppressed > 0 ? { suppressed } : {}),
          },
          'waypoint outlier not ejected: MaxEjectionPercent of the endpoints are out already',
        );
      return;
    }
    h.ejectedAt = now;
    if (h.backoff * s.baseEjectionMs < s.maxEjectionMs + s.baseEjectionMs) h.backoff++;
    h.ejections++;
    g.ejected++;
    this.#d.metrics?.ejection(g.service, 'consecutive_5xx');
    this.#d.metrics?.ejected(g.service, 1);
    this.#d.log.info(
      { ...fields, ejections: h.ejections, until: new Date(now + ejectionMs(s, h)).toISOString() },
      'waypoint ejected an endpoint (outlier)',
    );
    this.#rearm(g);
  }

  /**
   * Every group's Interval sweep at once (a test's clock; the daemon's groups sweep on their own timers):
   * endpoints out their time come back, the others' multipliers go down.
   */
  sweep(now = Date.now()): void {
    for (const g of this.#groups.values()) this.#sweep(g, now);
  }

  #sweep(g: Group, now: number): void {
    const s = g.settings;
    for (const [id, h] of g.hosts) {
      if (h.ejectedAt !== undefined) {
        if (now - h.ejectedAt < ejectionMs(s, h)) continue;
        h.ejectedAt = undefined;
        h.lastReturn = now;
        h.consecutive = 0;
        g.ejected--;
        this.#d.metrics?.ejected(g.service, -1);
        this.#d.log.info(
          { client: g.client, target: g.target, endpoint: id, ejections: h.ejections },
          'waypoint returned an ejected endpoint',
        );
        continue;
      }
      if (h.backoff > 0 && h.lastReturn !== undefined && now - h.lastReturn >= s.intervalMs) h.backoff--;
      if (h.backoff === 0 && h.consecutive === 0) g.hosts.delete(id);
    }
    this.#rearm(g);
  }

  /** A group sweeps on a timer while it has something to sweep: an endpoint out, or a multiplier up. */
  #rearm(g: Group): void {
    const busy = [...g.hosts.values()].some((h) => h.ejectedAt !== undefined || h.backoff > 0);
    if (!busy || this.#d.timers === false) {
      if (g.timer) clearInterval(g.timer);
      g.timer = undefined;
      return;
    }
    if (g.timer) return;
    g.timer = setInterval(() => this.#sweep(g, Date.now()), g.settings.intervalMs);
    g.timer.unref();
  }

  /**
   * New entries: a group whose client no longer has a PassiveHealthCheck for it goes, its ejections
   * ended (`keep` says which groups still have one).
   */
  prune(keep: (client: string, target: string) => boolean): void {
    for (const g of this.#groups.values()) {
      if (keep(g.client, g.target)) continue;
      this.#drop(g);
    }
  }

  /**
   * New endpoints: the state of an endpoint that left its service goes with it (an ejection of it ends
   * quietly), so that endpoints coming and going leave nothing behind.
   */
  forget(present: (service: ServiceRef) => ReadonlySet<string>): void {
    for (const g of this.#groups.values()) {
      const names = present(g.ref);
      for (const [id, h] of g.hosts) {
        if (names.has(id)) continue;
        if (h.ejectedAt !== undefined) {
          g.ejected--;
          this.#d.metrics?.ejected(g.service, -1);
        }
        g.hosts.delete(id);
      }
      this.#rearm(g);
    }
  }

  #drop(g: Group): void {
    if (g.timer) clearInterval(g.timer);
    if (g.ejected > 0) this.#d.metrics?.ejected(g.service, -g.ejected);
    this.#groups.delete(g.key);
  }

  /** Every group with its ejections in force, for /config_dump. */
  dump(): GroupView[] {
    return [...this.#groups.values()].map((g) => ({
      client: g.client,
      target: g.target,
      settings: g.settings,
      endpoints: g.size,
      ejected: [...g.hosts.entries()]
        .filter(([, h]) => h.ejectedAt !== undefined)
        .map(([id, h]) => ({
          endpoint: id,
          ejectedAt: new Date(h.ejectedAt!).toISOString(),
          until: new Date(h.ejectedAt! + ejectionMs(g.settings, h)).toISOString(),
          ejections: h.ejections,
        })),
    }));
  }

  /** Whether `host` is ejected from (client, target) now (what tests check). */
  isEjected(client: ServiceRef, targetId: string, host: string): boolean {
    return this.group(client, targetId)?.group.hosts.get(host)?.ejectedAt !== undefined;
  }

  close(): void {
    for (const g of this.#groups.values()) if (g.timer) clearInterval(g.timer);
  }
}

const ejectionMs = (s: OutlierSettings, h: HostState): number =>
  Math.min(s.baseEjectionMs * h.backoff, s.maxEjectionMs);

const sameSettings = (a: OutlierSettings, b: OutlierSettings): boolean =>
  a.intervalMs === b.intervalMs &&
  a.maxFailures === b.maxFailures &&
  a.enforcingPercent === b.enforcingPercent &&
  a.maxEjectionPercent === b.maxEjectionPercent &&
  a.baseEjectionMs === b.baseEjectionMs &&
  a.maxEjectionMs === b.maxEjectionMs;
