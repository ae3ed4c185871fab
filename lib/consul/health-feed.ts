// The health of many services through one long poll. Consul's agent caps the connections one client may
// hold (`limits.http_max_conns_per_client`, default 200, 429 above it), and a blocking query holds its
// connection for its whole wait, so one long poll per followed service does not scale: 200 local and 400
// upstream services would need 600. Instead one blocking query on `/v1/health/state/any` (every check of
// the datacenter, with its status and ModifyIndex) says which services changed, and only those are read,
// without blocking and a few at a time, from `/v1/health/service/<svc>`. A check that is registered, removed,
// re-registered with another target or changes status changes that service's line; a node check (Serf)
// changes every service. Instances without any check show only in the catalog's index: when it moves
// (`catalogMoved()`), every followed service is read again, at most once per `catalogResyncMs` (10 s), so
// that churn elsewhere costs a bounded number of reads; and every `resyncMs` all are read again anyway.

import { EventEmitter } from 'node:events';
import { type BackoffOptions, backoffDelay } from '../backoff.js';
import { AmbitError, ConsulUnavailableError } from '../errors.js';
import { isRecord } from './catalog.js';
import { type ConsulClient, type ResponseMeta, Watch, type WatchOptions } from './client.js';

export const HEALTH_FEED_PATH = '/v1/health/state/any';
export const healthPath = (svc: string): string => `/v1/health/service/${encodeURIComponent(svc)}`;

export interface HealthFeedOptions {
  watch?: WatchOptions;
  /** Reads of `/v1/health/service/<svc>` at once; default 4. */
  concurrency?: number;
  /** Every this long, every followed service is read again; default the watch's wait (5 min). */
  resyncMs?: number;
  /** After the catalog's index moves, all followed services are read again, at most this often; 10 s. */
  catalogResyncMs?: number;
}

export interface HealthFeedEvents {
  /** A followed service's `/v1/health/service/<svc>` answer (all instances, passing or not). */
  service: [name: string, body: unknown];
  ok: [key: string, meta: ResponseMeta];
  error: [key: string, err: AmbitError];
}

/** What of a check changes when the service's instances or health change. */
const lineOf = (c: Record<string, unknown>): string =>
  `${String(c.Node)}/${String(c.CheckID)}/${String(c.ServiceID)}/${String(c.Status)}/${String(c.ModifyIndex)}`;

/** Service name → its checks' lines, and the node checks (service name '') as one line. */
export function checkLines(body: unknown): Map<string, string> {
  const by = new Map<string, string[]>();
  for (const c of Array.isArray(body) ? body : []) {
    if (!isRecord(c)) continue;
    const svc = typeof c.ServiceName === 'string' ? c.ServiceName : '';
    const list = by.get(svc) ?? [];
    list.push(lineOf(c));
    by.set(svc, list);
  }
  return new Map([...by].map(([k, v]) => [k, v.sort().join('|')]));
}

export class HealthFeed extends EventEmitter<HealthFeedEvents> {
  readonly #client: ConsulClient;
  readonly #watch: Watch<unknown>;
  readonly #concurrency: number;
  readonly #resyncMs: number;
  readonly #backoff: BackoffOptions;
  readonly #catalogResyncMs: number;
  #lastCatalogResync = 0;
  #catalogTimer: NodeJS.Timeout | undefined;
  readonly #followed = new Set<string>();
  readonly #fetched = new Set<string>();
  readonly #pending = new Set<string>();
  readonly #failures = new Map<string, number>();
  #lines = new Map<string, string>();
  #running = 0;
  #stopped = false;
  #resync: NodeJS.Timeout | undefined;
  readonly #retries = new Set<NodeJS.Timeout>();

  constructor(client: ConsulClient, opts: HealthFeedOptions = {}) {
    super();
    this.#client = client;
    this.#concurrency = opts.concurrency ?? 4;
    this.#resyncMs = opts.resyncMs ?? opts.watch?.waitMs ?? 300_000;
    this.#backoff = { initialMs: 1000, maxMs: 60_000, ...opts.watch?.backoff };
    this.#catalogResyncMs = opts.catalogResyncMs ?? 10_000;
    this.#watch = new Watch<unknown>(client, HEALTH_FEED_PATH, opts.watch);
    this.#watch.on('change', (body) => this.#onChecks(body));
    this.#watch.on('ok', (meta) => this.emit('ok', HEALTH_FEED_PATH, meta));
    this.#watch.on('error', (err) => this.emit('error', HEALTH_FEED_PATH, err));
  }

  start(): this {
    this.#watch.start();
    this.#resync = setInterval(() => {
      for (const s of this.#followed) this.#enqueue(s);
    }, this.#resyncMs);
    this.#resync.unref();
    return this;
  }

  stop(): void {
    this.#stopped = true;
    this.#watch.stop();
    clearInterval(this.#resync);
    clearTimeout(this.#catalogTimer);
    for (const t of this.#retries) clearTimeout(t);
    this.#retries.clear();
  }

  /** Services to follow from now on; new ones are read at once, dropped ones are forgotten. */
  follow(services: Iterable<string>): void {
    const wanted = new Set(services);
    for (const s of [...this.#followed]) {
      if (wanted.has(s)) continue;
      this.#followed.delete(s);
      this.#fetched.delete(s);
      this.#pending.delete(s);
      this.#failures.delete(s);
    }
    for (const s of wanted) {
      if (this.#followed.has(s)) continue;
      this.#followed.add(s);
      this.#enqueue(s);
    }
  }

  /** The catalog's index moved (a registration somewhere): read every followed service again, bounded. */
  catalogMoved(): void {
    if (this.#catalogTimer || this.#stopped) return;
    const wait = Math.max(0, this.#lastCatalogResync + this.#catalogResyncMs - Date.now());
    this.#catalogTimer = setTimeout(() => {
      this.#catalogTimer = undefined;
      this.#lastCatalogResync = Date.now();
      for (const s of this.#followed) this.#enqueue(s);
    }, wait);
    this.#catalogTimer.unref();
  }

  /** The feed has answered once and every followed service has been read once. */
  get synced(): boolean {
    return this.#watch.synced && [...this.#followed].every((s) => this.#fetched.has(s));
  }

  get failing(): boolean {
    return this.#watch.failing || this.#failures.size > 0;
  }

  /** Long polls held: one, whatever the number of services. */
  get longPolls(): number {
    return 1;
  }

  #onChecks(body: unknown): void {
    const next = checkLines(body);
    const before = this.#lines;
    this.#lines = next;
    const nodesChanged = (before.get('') ?? '') !== (next.get('') ?? '');
    for (const s of this.#followed) {
      if (nodesChanged || (before.get(s) ?? '') !== (next.get(s) ?? '')) this.#enqueue(s);
    }
  }

  #enqueue(svc: string): void {
    if (this.#stopped) return;
    this.#pending.add(svc);
    this.#pump();
  }

  #pump(): void {
    // Bounded by the followed set: each service is pending at most once.
    while (this.#running < this.#concurrency && this.#pending.size > 0 && !this.#stopped) {
      const svc = this.#pending.values().next().value as string;
      this.#pending.delete(svc);
      this.#running++;
      void this.#read(svc).finally(() => {
        this.#running--;
        this.#pump();
      });
    }
  }

  async #read(svc: string): Promise<void> {
    const key = healthPath(svc);
    try {
      const res = await this.#client.get<unknown>(key);
      if (this.#stopped || !this.#followed.has(svc)) return;
      this.#fetched.add(svc);
      this.#failures.delete(svc);
      this.emit('ok', key, res);
      this.emit('service', svc, res.body);
    } catch (err) {
      if (this.#stopped || !this.#followed.has(svc)) return;
      const n = (this.#failures.get(svc) ?? 0) + 1;
      this.#failures.set(svc, n);
      const error =
        err instanceof AmbitError
          ? err
          : new ConsulUnavailableError(this.#client.address, String(err), { cause: err });
      this.emit('error', key, error);
      const t = setTimeout(
        () => {
          this.#retries.delete(t);
          this.#enqueue(svc);
        },
        backoffDelay(n, this.#backoff),
      );
      t.unref();
      this.#retries.add(t);
    }
  }
}
