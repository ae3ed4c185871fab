// Consul as the control plane, as seen by the daemon: blocking-query watches through the local agent,
// turned into the one catalog model (`StateStore.replace(mesh)`) that the mesh file also produces.
//
// Long polls per host stay under the agent's per-client connection cap (`limits.http_max_conns_per_client`,
// default 200) whatever the host runs; the client holds at most MAX_CONNECTIONS (32) connections:
//   1  /v1/catalog/services            which services exist; tags `ambit-node=<node>` say which run here
//   1  /v1/health/service/ambit        where each node's daemon (tunnel listener) is
//   6  /v1/config/<kind>               service-defaults, proxy-defaults, service-router, -splitter,
//                                      -resolver, -intentions (validated by lib/l7 into Mesh.configEntries)
//   1  /v1/health/state/any            the health feed: which followed services changed; those (local
//                                      and upstream) are then read without blocking (HealthFeed)
//   1 per 64 local services: /v1/connect/intentions/match?by=destination&name=<a>&name=<b>…
//   and in the Consul CA: roots, and leaves: blocking while the budget lasts, polled beyond it.
//
// Every answer is kept in the state directory (ConsulCache); when Consul is unreachable the last known
// state keeps serving, staleness is reported (metric, log, readiness), and the watches recover by themselves.

import { EventEmitter } from 'node:events';
import type { ConsulCache } from '../../lib/consul/cache.js';
import {
  AMBIT_TAG,
  type ConsulHealthEntry,
  META,
  NODE_SERVICE,
  fallbackNode,
  healthEntries,
  isPassing,
  isRecord,
  nodeFromEntry,
  nodeTag,
  workloadFromEntry,
} from '../../lib/consul/catalog.js';
import {
  type ConsulClient,
  type ResponseMeta,
  Watch,
  type WatchOptions,
  permissionFor,
} from '../../lib/consul/client.js';
import { validateLeniently } from '../../lib/consul/config-entries.js';
import { HealthFeed, healthPath } from '../../lib/consul/health-feed.js';
import { compileIntentions, parseIntentions } from '../../lib/consul/intentions.js';
import { AmbitError } from '../../lib/errors.js';
import type { ConfigEntry } from '../../lib/l7/entries.js';
import { FAULT_META } from '../../lib/l7/fault.js';
import type { Logger } from '../../lib/log.js';
import { ownAddress } from '../../lib/mesh/file/validate.js';
import type {
  Mesh,
  MeshNode,
  Policy,
  PolicyAction,
  Service,
  ServicePort,
  Workload,
} from '../../lib/mesh/model.js';
import { withProtocols } from '../../lib/mesh/protocols.js';
import { LocalAddresses } from '../../lib/net/addresses.js';
import type { StateStore } from './store.js';

export const CONFIG_KINDS = [
  'service-defaults',
  'proxy-defaults',
  'service-router',
  'service-splitter',
  'service-resolver',
  'service-intentions',
] as const;

const CATALOG = '/v1/catalog/services';
/** Local services per batched intentions query (`name` repeated). */
const INTENTIONS_BATCH = 64;
const intentionsPath = (names: readonly string[]): string =>
  `/v1/connect/intentions/match?by=destination${names.map((n) => `&name=${encodeURIComponent(n)}`).join('')}`;
/** The sorted local services in batches, as the intentions queries ask for them. */
const batches = (names: readonly string[]): string[][] => {
  const out: string[][] = [];
  for (let i = 0; i < names.length; i += INTENTIONS_BATCH) out.push(names.slice(i, i + INTENTIONS_BATCH));
  return out;
};
/** Where the last X-Consul-Default-ACL-Policy is kept, so that a start from the cache decides the same way. */
const ACL_DEFAULT_KEY = 'header:x-consul-default-acl-policy';

interface WatchSpec {
  key: string;
  path: string;
  query?: Record<string, string | boolean>;
  allow404?: boolean;
}

export interface ConsulStatus {
  /** True while some watch cannot reach Consul, or before any answer since a start from the cache. */
  stale: boolean;
  /** Since when the state in force may be out of date. */
  staleSince: string | undefined;
  /** Last successful answer from Consul. */
  lastContact: string | undefined;
  lastError: string | undefined;
  /** Long polls open now (catalog, health, intentions, config entries, roots, leaves). */
  watches: number;
  /** Queries whose last answer Consul filtered by ACLs (X-Consul-Results-Filtered-By-ACLs). */
  filteredByAcls: string[];
  /** What decides when no intention matches, and where that came from. */
  defaultPolicy: { action: PolicyAction; from: DefaultPolicySource };
}

/**
 * Who decides when no intention matches, in Consul's own order (agent `connect/authorize`): Ambit's
 * `defaultPolicy` when set, else the agent's `default_intention_policy`, else the ACL default policy
 * (X-Consul-Default-ACL-Policy), else allow (ACLs off, or a Consul that does not say).
 */
export type DefaultPolicySource = 'ambit' | 'default_intention_policy' | 'acl' | 'consul-default';

export interface ConsulSourceOptions {
  nodeName: string;
  /** Ambit's own `defaultPolicy`; undefined leaves the decision to Consul's defaults. */
  defaultPolicy: PolicyAction | undefined;
  /** The agent's `default_intention_policy` (agent/self DebugConfig), when it sets one. */
  defaultIntentionPolicy?: PolicyAction | undefined;
  log: Logger;
  cache: ConsulCache;
  watch?: WatchOptions;
  /** How long start() waits for the first complete view of the mesh; default 10 s. */
  startTimeoutMs?: number;
  /**
   * A waypoint: follow every Ambit service, since which ones name it as their waypoint is only known from
   * their instances' Meta (docs/waypoints.md).
   */
  followEvery?: boolean;
}

export interface ConsulSourceEvents {
  applied: [mesh: Mesh];
  /** Services with a workload on this node (their leaves are watched). */
  localServices: [services: string[]];
  status: [status: ConsulStatus];
}

export class ConsulSource extends EventEmitter<ConsulSourceEvents> {
  readonly #client: ConsulClient;
  readonly #store: StateStore;
  readonly #opts: ConsulSourceOptions;
  readonly #local = new LocalAddresses();
  readonly #everyPortWarned = new Set<string>();
  readonly #log: Logger;
  readonly #cache: ConsulCache;
  readonly #watches = new Map<string, Watch<unknown>>();
  readonly #feed: HealthFeed;
  readonly #results = new Map<string, unknown>();
  readonly #failing = new Map<string, string>();
  readonly #filtered = new Set<string>();
  /** The refusals of Consul's config entries last logged, so that each is said once. */
  #refusedEntries = new Set<string>();
  #aclDefault: PolicyAction | undefined;
  #extraWatches: () => number = () => 0;
  #lastMeshText: string | undefined;
  #rebuildTimer: NodeJS.Timeout | undefined;
  #localServices: string[] = [];
  #lastContact: Date | undefined;
  #staleSince: Date | undefined;
  #lastError: string | undefined;
  #closed = false;
  #fromCache = false;

  constructor(client: ConsulClient, store: StateStore, opts: ConsulSourceOptions) {
    super();
    this.#client = client;
    this.#store = store;
    this.#opts = opts;
    this.#log = opts.log.child({ component: 'consul' });
    this.#cache = opts.cache;
    this.#feed = new HealthFeed(client, { watch: opts.watch });
    this.#feed.on('service', (svc, body) => {
      this.#results.set(healthPath(svc), body);
      this.#cache.set(healthPath(svc), body);
      this.#scheduleRebuild();
    });
    this.#feed.on('ok', (key, meta) => this.noteOk(key, meta));
    this.#feed.on('error', (key, err) => this.noteError(key, err));
  }

  /** Long polls held by the source (the CA's leaves may use what is left of the budget). */
  get longPolls(): number {
    return this.#watches.size + this.#feed.longPolls;
  }

  /** Counts the CA's long polls in the status too. */
  countAlso(extra: () => number): void {
    this.#extraWatches = extra;
  }

  /**
   * Applies the cached state (if any), starts the watches and waits, bounded, until every watch has
   * answered once and no new watch was needed, or until Consul proves unreachable while a cached state serves.
   */
  async start(): Promise<void> {
    const cachedDefault = this.#cache.get(ACL_DEFAULT_KEY)?.body;
    if (cachedDefault === 'allow' || cachedDefault === 'deny') this.#aclDefault = cachedDefault;
    for (const key of this.#cache.keys()) {
      if (key.endsWith('?passing')) continue; // per-upstream queries of earlier versions
      if (
        key === CATALOG ||
        key.startsWith('/v1/health/') ||
        key.startsWith('/v1/connect/') ||
        key.startsWith('/v1/config/')
      )
        this.#results.set(key, this.#cache.get(key)?.body);
    }
    if (this.#results.size > 0) {
      this.#fromCache = true;
      this.#staleSince = this.#cache.savedAt ?? new Date();
      this.#rebuild();
      this.#log.info(
        { file: this.#cache.file, savedAt: this.#cache.savedAt?.toISOString() },
        'serving the cached Consul state until Consul answers',
      );
    }
    this.#feed.start();
    this.#reconcileWatches();
    const deadline = Date.now() + (this.#opts.startTimeoutMs ?? 10_000);
    // Bounded: at most startTimeoutMs, in 20 ms steps.
    while (Date.now() < deadline && !this.#closed) {
      this.#flushRebuild();
      const all = [...this.#watches.values()];
      if (all.every((w) => w.synced) && this.#feed.synced && this.#reconcileWatches() === 0) break;
      if (this.#fromCache && (all.some((w) => w.failing) || this.#feed.failing)) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    this.#flushRebuild();
    if (!this.#fromCache && this.#results.size === 0) this.#store.replace(this.#build());
  }

  close(): void {
    this.#closed = true;
    if (this.#rebuildTimer) clearTimeout(this.#rebuildTimer);
    for (const w of this.#watches.values()) w.stop();
    this.#watches.clear();
    this.#feed.stop();
  }

  get localServices(): readonly string[] {
    return this.#localServices;
  }

  /** Raw config entries by kind, as Consul last gave them (for the waypoint and the config dump). */
  configEntries(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const kind of CONFIG_KINDS) out[kind] = this.#results.get(`/v1/config/${kind}`) ?? [];
    return out;
  }

  status(): ConsulStatus {
    return {
      stale: this.#staleSince !== undefined,
      staleSince: this.#staleSince?.toISOString(),
      lastContact: this.#lastContact?.toISOString(),
      lastError: this.#lastError,
      watches: this.longPolls + this.#extraWatches(),
      filteredByAcls: [...this.#filtered].sort(),
      defaultPolicy: this.#defaultPolicy(),
    };
  }

  #defaultPolicy(): { action: PolicyAction; from: DefaultPolicySource } {
    if (this.#opts.defaultPolicy) return { action: this.#opts.defaultPolicy, from: 'ambit' };
    if (this.#opts.defaultIntentionPolicy)
      return { action: this.#opts.defaultIntentionPolicy, from: 'default_intention_policy' };
    if (this.#aclDefault) return { action: this.#aclDefault, from: 'acl' };
    return { action: 'allow', from: 'consul-default' };
  }

  /**
   * What an answer said about ACLs: a filtered answer means the token cannot see part of the mesh (and
   * Ambit would otherwise take the missing services as gone), so it is said once per query, loudly; a
   * change of the ACL default policy changes what an unmatched source gets.
   */
  #noteMeta(key: string, meta: ResponseMeta): void {
    if (meta.filteredByAcls && !this.#filtered.has(key)) {
      this.#filtered.add(key);
      this.#log.warn(
        { consul: this.#client.address, query: key, permission: permissionFor('GET', key) },
        'Consul filtered this answer by ACLs: the token cannot read part of it, so the mesh seen here is ' +
          'incomplete; grant the token read on every service and node it must see',
      );
    } else if (!meta.filteredByAcls && this.#filtered.delete(key)) {
      this.#log.info({ consul: this.#client.address, query: key }, 'Consul no longer filters this answer');
    }
    if (meta.defaultAclPolicy && meta.defaultAclPolicy !== this.#aclDefault) {
      const before = this.#defaultPolicy();
      this.#aclDefault = meta.defaultAclPolicy;
      this.#cache.set(ACL_DEFAULT_KEY, meta.defaultAclPolicy);
      const after = this.#defaultPolicy();
      if (after.action !== before.action) {
        this.#log.info(
          { defaultPolicy: after.action, from: after.from },
          'Consul default decides unmatched sources',
        );
        this.#scheduleRebuild();
      }
    }
  }

  /** Watch health reporting shared with the CA's watches. */
  noteError(key: string, err: Error): void {
    const wasStale = this.#staleSince !== undefined;
    this.#failing.set(key, err.message);
    this.#lastError = err.message;
    this.#staleSince ??= new Date();
    if (!wasStale || (err instanceof AmbitError && err.code === 'AMBIT_CONSUL_FORBIDDEN')) {
      const level = err instanceof AmbitError && err.code === 'AMBIT_CONSUL_FORBIDDEN' ? 'error' : 'warn';
      this.#log[level](
        { consul: this.#client.address, err: err.message, lastContact: this.#lastContact?.toISOString() },
        'Consul query failed; serving the last known state until it answers again',
      );
    }
    this.emit('status', this.status());
  }

  noteOk(key: string, meta?: ResponseMeta): void {
    if (meta) this.#noteMeta(key, meta);
    this.#failing.delete(key);
    this.#lastContact = new Date();
    if (this.#staleSince !== undefined && this.#failing.size === 0) {
      this.#log.info(
        { consul: this.#client.address, staleForMs: Date.now() - this.#staleSince.getTime() },
        'Consul answers again; state is current',
      );
      this.#staleSince = undefined;
      this.#lastError = undefined;
      this.#fromCache = false;
    }
    this.emit('status', this.status());
  }

  // --- watches -------------------------------------------------------------------------------------------

  #wanted(): WatchSpec[] {
    const specs: WatchSpec[] = [
      { key: CATALOG, path: CATALOG },
      { key: healthPath(NODE_SERVICE), path: healthPath(NODE_SERVICE) },
      ...CONFIG_KINDS.map((k) => ({ key: `/v1/config/${k}`, path: `/v1/config/${k}`, allow404: true })),
    ];
    const local = this.#localServiceNames();
    for (const names of batches(local))
      specs.push({ key: intentionsPath(names), path: intentionsPath(names) });
    return specs;
  }

  /** Local and upstream services, whose instances the health feed keeps. */
  #followed(): Set<string> {
    const out = new Set([...this.#localServiceNames(), ...this.#upstreamServices()]);
    if (this.#opts.followEvery) {
      const catalog = this.#results.get(CATALOG);
      if (isRecord(catalog))
        for (const [name, tags] of Object.entries(catalog))
          if (Array.isArray(tags) && tags.includes(AMBIT_TAG)) out.add(name);
    }
    // A followed service's waypoint instances are where its connections go.
    for (const svc of this.#store.mesh.services) if (svc.waypoint && out.has(svc.name)) out.add(svc.waypoint);
    out.delete(NODE_SERVICE);
    return out;
  }

  /** Starts missing watches and stops unneeded ones; returns how many were started. */
  #reconcileWatches(): number {
    if (this.#closed) return 0;
    const followed = this.#followed();
    this.#feed.follow(followed);
    for (const key of [...this.#results.keys()]) {
      if (!key.startsWith('/v1/health/service/') || key === healthPath(NODE_SERVICE)) continue;
      const svc = decodeURIComponent(key.slice('/v1/health/service/'.length));
      if (followed.has(svc)) continue;
      this.#results.delete(key);
      this.#failing.delete(key);
      this.#cache.delete(key);
    }
    const wanted = this.#wanted();
    const keys = new Set(wanted.map((s) => s.key));
    for (const [key, w] of this.#watches) {
      if (keys.has(key)) continue;
      w.stop();
      this.#watches.delete(key);
      this.#results.delete(key);
      this.#failing.delete(key);
      this.#filtered.delete(key);
      this.#cache.delete(key);
    }
    let started = 0;
    for (const spec of wanted) {
      if (this.#watches.has(spec.key)) continue;
      const w = new Watch<unknown>(this.#client, spec.path, {
        ...this.#opts.watch,
        query: spec.query,
        allow404: spec.allow404 ?? false,
      });
      w.on('change', (body) => {
        this.#results.set(spec.key, body);
        this.#cache.set(spec.key, body);
        this.#scheduleRebuild();
      });
      let index = 0;
      w.on('ok', (meta) => {
        this.noteOk(spec.key, meta);
        // Instances without checks show only here: a moved catalog index re-reads the followed services.
        if (spec.key === CATALOG && index > 0 && w.index !== index) this.#feed.catalogMoved();
        if (spec.key === CATALOG) index = w.index;
      });
      w.on('error', (err) => this.noteError(spec.key, err));
      this.#watches.set(spec.key, w.start());
      started++;
    }
    return started;
  }

  #localServiceNames(): string[] {
    const catalog = this.#results.get(CATALOG);
    if (!isRecord(catalog)) return [];
    const tag = nodeTag(this.#opts.nodeName);
    return Object.entries(catalog)
      .filter(([, tags]) => Array.isArray(tags) && tags.includes(tag))
      .map(([name]) => name)
      .sort();
  }

  #upstreamServices(): Set<string> {
    const out = new Set<string>();
    for (const w of this.#localWorkloads()) for (const u of w.upstreams) out.add(u.service);
    return out;
  }

  #localWorkloads(): Workload[] {
    const out: Workload[] = [];
    for (const svc of this.#localServiceNames()) {
      for (const e of healthEntries(this.#results.get(healthPath(svc)))) {
        if (e.Service.Meta?.[META.node] !== this.#opts.nodeName) continue;
        const w = this.#decode(e);
        if (w) out.push(w);
      }
    }
    return out;
  }

  /**
   * A local workload registered with every port at an address of this host is kept (Consul is the source of
   * truth) but serves nothing through the tunnel: the data path refuses it. Said once per registration.
   */
  #checkEveryPort(w: Workload, node: MeshNode | undefined): void {
    if (w.ports.length > 0) return;
    const own = ownAddress(w.addresses, node ?? { name: w.node, address: '', tunnelPort: 0 }, (ip) =>
      this.#local.has(ip),
    );
    const key = `${w.name}|${w.addresses.join(',')}`;
    if (!own || this.#everyPortWarned.has(key)) return;
    if (this.#everyPortWarned.size >= 1000) this.#everyPortWarned.clear(); // churn must not grow it forever
    this.#everyPortWarned.add(key);
    this.#log.warn(
      { workload: w.name, address: own.ip },
      `Consul registers workload ${w.name} with every port at ${own.ip}, ${own.what}: the tunnel delivers ` +
        'nothing to it until its ports are registered (ambit-ports Meta or the service port)',
    );
  }

  #decode(e: ConsulHealthEntry): Workload | undefined {
    try {
      return workloadFromEntry(e);
    } catch (err) {
      this.#log.warn(
        { service: e.Service.Service, id: e.Service.ID, err: (err as Error).message },
        'ignoring a Consul service instance',
      );
      return undefined;
    }
  }

  // --- building the mesh ----------------------------------------------------------------------------------

  #scheduleRebuild(): void {
    if (this.#rebuildTimer || this.#closed) return;
    // Answers that arrive together (a registration wakes several watches) become one replace().
    this.#rebuildTimer = setTimeout(() => this.#flushRebuild(), 10);
    this.#rebuildTimer.unref();
  }

  #flushRebuild(): void {
    if (this.#rebuildTimer) {
      clearTimeout(this.#rebuildTimer);
      this.#rebuildTimer = undefined;
    }
    if (this.#closed) return;
    this.#rebuild();
    this.#reconcileWatches();
  }

  #rebuild(): void {
    const mesh = this.#build();
    const text = JSON.stringify(mesh);
    const local = this.#localServiceNames();
    if (local.join(',') !== this.#localServices.join(',')) {
      this.#localServices = local;
      this.emit('localServices', local);
    }
    if (text === this.#lastMeshText) return;
    this.#lastMeshText = text;
    this.#store.replace(mesh);
    this.#log.info(
      {
        nodes: mesh.nodes.length,
        workloads: mesh.workloads.length,
        services: mesh.services.length,
        policies: mesh.policies.length,
      },
      'mesh applied from Consul',
    );
    this.emit('applied', mesh);
  }

  #build(): Mesh {
    const me = this.#opts.nodeName;
    const nodes = new Map<string, MeshNode>();
    for (const e of healthEntries(this.#results.get(healthPath(NODE_SERVICE)))) {
      const n = nodeFromEntry(e);
      if (n) nodes.set(n.name, n);
    }
    const workloads = new Map<string, Workload>();
    const waypoints = new Map<string, string>();
    const consider = (e: ConsulHealthEntry, requirePassing: boolean): void => {
      const local = e.Service.Meta?.[META.node] === me;
      // Local workloads are enrolled here whatever their health; remote ones are endpoints only when passing.
      if (!local && requirePassing && !isPassing(e)) return;
      const w = this.#decode(e);
      if (!w) return;
      if (local) this.#checkEveryPort(w, nodes.get(me));
      workloads.set(w.name, w);
      if (!nodes.has(w.node)) {
        const n = fallbackNode(e, w.node);
        if (n) nodes.set(n.name, n);
      }
      const wp = e.Service.Meta?.[META.waypoint];
      if (wp) waypoints.set(`${w.namespace}/${w.service}`, wp);
    };
    for (const [key, body] of this.#results) {
      if (!key.startsWith('/v1/health/service/') || key === healthPath(NODE_SERVICE)) continue;
      for (const e of healthEntries(body)) consider(e, true);
    }
    const policies: Policy[] = [];
    const defaultPolicy = this.#defaultPolicy().action;
    const services = this.#services(waypoints);
    // A service with a waypoint has its L7 intentions enforced there (lib/consul/intentions.ts).
    const viaWaypoint = new Set(services.filter((s) => s.waypoint).map((s) => s.name));
    for (const names of batches(this.#localServiceNames())) {
      const body = this.#results.get(intentionsPath(names));
      for (const svc of names)
        policies.push(...this.#policiesFor(svc, body, defaultPolicy, viaWaypoint.has(svc)));
    }
    const configEntries = this.#configEntries();
    return {
      defaultPolicy,
      nodes: [...nodes.values()].sort((a, b) => a.name.localeCompare(b.name)),
      workloads: [...workloads.values()].sort((a, b) => a.name.localeCompare(b.name)),
      services: withProtocols(services, configEntries),
      policies,
      ...(configEntries.length ? { configEntries } : {}),
    };
  }

  /**
   * Consul's entries of every watched kind, validated by lib/l7; one it refuses is left out, the rest kept,
   * and the refusal logged once (again only if it goes away and comes back).
   */
  #configEntries(): ConfigEntry[] {
    const raw: unknown[] = [];
    for (const kind of CONFIG_KINDS) {
      const body = this.#results.get(`/v1/config/${kind}`);
      if (Array.isArray(body)) raw.push(...body);
    }
    const { entries, refused } = validateLeniently(raw, 'consul');
    const now = new Set(refused.map((e) => e.message));
    for (const err of refused) {
      if (this.#refusedEntries.has(err.message)) continue;
      this.#log.warn(
        { entry: err.entry, field: err.field, err: err.message },
        err.field.startsWith(`Meta.${FAULT_META}`)
          ? "a fault in a service-router's Meta is not valid; keeping the router without its faults"
          : 'a config entry Consul holds is not valid for Ambit; leaving it out and keeping the others',
      );
    }
    this.#refusedEntries = now;
    return entries;
  }

  #policiesFor(svc: string, body: unknown, defaultPolicy: PolicyAction, waypoint: boolean): Policy[] {
    const compiled = compileIntentions(
      { service: svc, namespace: 'default' },
      parseIntentions(body, svc),
      defaultPolicy,
      { waypoint },
    );
    if (compiled.conflicts.length) {
      this.#log.warn(
        { destination: svc, denied: compiled.conflicts },
        'intentions the L4 model cannot express exactly; denying',
      );
    }
    return compiled.policies;
  }

  /** Services with VIPs or a waypoint: `service-defaults` Meta (ambit-vips, ambit-service-ports, ambit-waypoint) or instance Meta. */
  #services(waypoints: Map<string, string>): Service[] {
    const out = new Map<string, Service>();
    const defaults = this.#results.get('/v1/config/service-defaults');
    for (const entry of Array.isArray(defaults) ? defaults : []) {
      if (!isRecord(entry) || typeof entry.Name !== 'string' || !isRecord(entry.Meta)) continue;
      const meta = entry.Meta as Record<string, unknown>;
      const vips =
        typeof meta[META.vips] === 'string' ? (meta[META.vips] as string).split(',').filter(Boolean) : [];
      const ports: ServicePort[] = [];
      if (typeof meta[META.servicePorts] === 'string') {
        for (const p of (meta[META.servicePorts] as string).split(',')) {
          const [a, b] = p.split(':').map(Number);
          if (a && Number.isInteger(a)) ports.push({ port: a, targetPort: b && Number.isInteger(b) ? b : a });
        }
      }
      const wp = typeof meta[META.waypoint] === 'string' ? (meta[META.waypoint] as string) : undefined;
      if (!vips.length && !wp) continue;
      out.set(`default/${entry.Name}`, { name: entry.Name, namespace: 'default', vips, ports, waypoint: wp });
    }
    for (const [key, wp] of waypoints) {
      const [namespace, name] = key.split('/') as [string, string];
      const s = out.get(key);
      if (s) {
        if (!s.waypoint) out.set(key, { ...s, waypoint: wp });
      } else out.set(key, { name, namespace, vips: [], ports: [], waypoint: wp });
    }
    return [...out.values()].sort((a, b) => a.name.localeCompare(b.name));
  }
}
