// Workloads from the pods the Kubernetes API server says run with the mesh label: LIST, then WATCH from
// the list's resourceVersion, as client-go's reflector does (bookmarks asked for, 410 Gone relists, errors
// back off). The pods become workloads beside the control plane's mesh (StateStore.setBeside), so the mesh
// file or Consul still gives the policies, services and the nodes it knows.
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { backoffDelay } from '../../../lib/backoff.js';
import type { Logger } from '../../../lib/log.js';
import type { MeshNode, Workload } from '../../../lib/mesh/model.js';
import type { Metrics } from '../../metrics/metrics.js';
import type { StateStore } from '../store.js';
import { BoundExceeded, type KubeClient, KubeStatusError } from './client.js';
import { type Pod, type PodView, podWorkload, workloadName } from './pods.js';

export interface PodSourceOptions {
  readonly client: KubeClient;
  /** This node, as the mesh names it: its own entry, and the field selector in node scope. */
  readonly self: MeshNode;
  readonly labelSelector: string;
  /**
   * `node`: only the pods scheduled here (fieldSelector spec.nodeName), the rest of the mesh comes from the
   * control plane (Consul). `cluster`: every enrolled pod, so that a daemon on the embedded default knows
   * the workloads of the other nodes too.
   */
  readonly scope: 'node' | 'cluster';
  /**
   * Every pod's mesh namespace, instead of its own: with Consul, whose CE has one namespace and issues a
   * leaf per service name (its SPIFFE ID says ns/default), as consul-k8s maps every namespace to default.
   */
  readonly meshNamespace?: string;
  /** Most pods held; a LIST with more is refused whole, a watch's extra pods one by one. */
  readonly maxPods: number;
  readonly log: Logger;
  readonly metrics?: Pick<
    Metrics,
    'kubernetesPods' | 'kubernetesEvents' | 'kubernetesRelists' | 'kubernetesRefused'
  >;
  readonly backoff?: { initialMs: number; maxMs: number };
  /** timeoutSeconds of each watch: the server ends it then, and it is resumed from the last version. */
  readonly watchTimeoutS?: number;
  /** How long past watchTimeoutS a silent watch is given before it is ended here; default 30 s. */
  readonly watchGraceMs?: number;
  /** How long start() waits for the first LIST before going on without it; default 10s. */
  readonly startTimeoutMs?: number;
  /** Quiet time before the store gets a burst of events as one update; default 20 ms. */
  readonly coalesceMs?: number;
}

/** Ends a watch: the server said the resourceVersion is too old (HTTP 410 or an ERROR event with code 410). */
class Gone extends Error {}

/** Events: 'synced' after each LIST is applied; 'update' (workloads) after each change reaches the store. */
export class PodSource extends EventEmitter {
  readonly #o: PodSourceOptions;
  readonly #log: Logger;
  #store: StateStore | undefined;
  readonly #pods = new Map<string, PodView>();
  /** Why each pod last seen is not enrolled: one log line per change of reason, not per event. */
  readonly #left = new Map<string, string>();
  #abort = new AbortController();
  #closed = false;
  #publish: NodeJS.Timeout | undefined;
  #resourceVersion: string | undefined;
  #lastError: string | undefined;
  #running: Promise<void> | undefined;

  constructor(opts: PodSourceOptions) {
    super();
    this.#o = opts;
    this.#log = opts.log.child({ component: 'kubernetes' });
  }

  get lastError(): string | undefined {
    return this.#lastError;
  }

  get resourceVersion(): string | undefined {
    return this.#resourceVersion;
  }

  /** The workloads enrolled from pods now, this node's and (in cluster scope) the others'. */
  workloads(): Workload[] {
    return [...this.#pods.values()].map((p) => p.workload);
  }

  /** Starts the loop; resolves after the first LIST is applied, or startTimeoutMs without one. */
  async start(store: StateStore): Promise<void> {
    this.#store = store;
    store.setBeside([this.#o.self], []);
    const synced = new Promise<void>((resolve) => this.once('synced', resolve));
    this.#running = this.#run();
    const timeout = sleep(this.#o.startTimeoutMs ?? 10_000, undefined, { signal: this.#abort.signal }).catch(
      () => {},
    );
    await Promise.race([synced, timeout]);
    if (!this.#resourceVersion && !this.#closed)
      this.#log.warn({ err: this.#lastError }, 'no pod list yet; starting without, the watch goes on');
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#abort.abort();
    if (this.#publish) clearTimeout(this.#publish);
    await this.#running;
  }

  #query(extra: Record<string, string>): string {
    const q = new URLSearchParams({ labelSelector: this.#o.labelSelector });
    if (this.#o.scope === 'node') q.set('fieldSelector', `spec.nodeName=${this.#o.self.name}`);
    for (const [k, v] of Object.entries(extra)) q.set(k, v);
    return `/api/v1/pods?${q}`;
  }

  async #run(): Promise<void> {
    let attempt = 0;
    let goneInARow = 0;
    let reason: 'start' | 'gone' | 'error' = 'start';
    while (!this.#closed) {
      try {
        if (this.#resourceVersion === undefined) {
          this.#o.metrics?.kubernetesRelists.inc({ reason });
          await this.#list();
        }
        const events = await this.#watch(this.#resourceVersion!);
        // A watch that ran to the server's end is health: a list that works followed by a watch that
        // fails at once still backs off further each time.
        attempt = 0;
        if (events > 0) goneInARow = 0;
      } catch (err) {
        if (this.#closed) return;
        this.#resourceVersion = undefined;
        if (err instanceof Gone) {
          reason = 'gone';
          // Once at once, as client-go does; a server that answers 410 to every fresh version backs off.
          goneInARow++;
          this.#log.info('resourceVersion gone (410): listing again');
          if (goneInARow === 1) continue;
        } else {
          reason = 'error';
          this.#lastError = (err as Error).message;
          if (err instanceof BoundExceeded) this.#o.metrics?.kubernetesRefused.inc({ bound: err.bound });
          this.#log.warn(
            { err: this.#lastError, code: (err as { code?: string }).code, attempt: attempt + 1 },
            err instanceof BoundExceeded
              ? 'refused what the API server sent: over a bound; keeping the pods known, listing again'
              : 'pod list or watch failed; keeping the pods known, retrying',
          );
        }
        attempt++;
        const delay = backoffDelay(attempt, this.#o.backoff ?? { initialMs: 1000, maxMs: 30_000 });
        await sleep(delay, undefined, { signal: this.#abort.signal }).catch(() => {});
      }
    }
  }

  /** Every page of the LIST, then the pods replaced whole; over maxPods, nothing is applied. */
  async #list(): Promise<void> {
    const items: Pod[] = [];
    let cont: string | undefined;
    let version: string | undefined;
    do {
      const page = (await this.#o.client
        .getJson(
          this.#query({ limit: '500', ...(cont ? { continue: cont } : {}) }),
          this.#deadline(LIST_TIMEOUT_MS),
        )
        .catch((err: unknown) => {
          // An expired continue token: the list starts over (not from a watch version).
          if (err instanceof KubeStatusError && err.status === 410) throw new Gone();
          throw err;
        })) as { metadata?: { resourceVersion?: string; continue?: string }; items?: Pod[] };
      if (!Array.isArray(page.items)) throw new BoundExceeded('page', 'a LIST answer without items');
      if (items.length + page.items.length > this.#o.maxPods) {
        throw new BoundExceeded('pods', `more than ${this.#o.maxPods} pods match ${this.#o.labelSelector}`);
      }
      items.push(...page.items);
      version = page.metadata?.resourceVersion;
      cont = page.metadata?.continue || undefined;
    } while (cont);
    if (!version) throw new BoundExceeded('page', 'a LIST answer without a resourceVersion');
    const seen = new Set<string>();
    for (const pod of items) {
      const k = podKey(pod);
      if (!k) continue;
      seen.add(k);
      this.#upsert(k, pod);
    }
    for (const k of [...this.#pods.keys()]) if (!seen.has(k)) this.#remove(k, 'gone from the list');
    for (const k of [...this.#left.keys()]) if (!seen.has(k)) this.#left.delete(k);
    this.#resourceVersion = version;
    this.#lastError = undefined;
    this.#flush();
    this.#log.info({ pods: this.#pods.size, resourceVersion: version }, 'pods listed');
    this.emit('synced');
  }

  /** One watch from `version`; resolves with the number of events when the server ends it. */
  async #watch(version: string): Promise<number> {
    let events = 0;
    const timeoutS = this.#o.watchTimeoutS ?? 300;
    const path = this.#query({
      watch: '1',
      resourceVersion: version,
      allowWatchBookmarks: 'true',
      timeoutSeconds: String(timeoutS),
    });
    await this.#o.client
      // The server ends the watch at timeoutSeconds; a connection that went silent (a partition, a server
      // that never answers) is ended here a little later, so that the pods are never frozen for good.
      .watch(path, this.#deadline(timeoutS * 1000 + (this.#o.watchGraceMs ?? 30_000)), (raw) => {
        const e = raw as { type?: string; object?: Pod & { code?: number } };
        const type = typeof e.type === 'string' ? e.type : 'unknown';
        this.#o.metrics?.kubernetesEvents.inc({ type: KNOWN_EVENTS.has(type) ? type : 'unknown' });
        if (type === 'ERROR') {
          if (e.object?.code === 410) throw new Gone();
          throw new KubeStatusError(
            e.object?.code ?? 0,
            `watch ERROR event: ${JSON.stringify(e.object).slice(0, 300)}`,
          );
        }
        const rv = e.object?.metadata?.resourceVersion;
        if (rv) this.#resourceVersion = rv;
        events++;
        if (type === 'BOOKMARK' || !e.object) return;
        const k = podKey(e.object);
        if (!k) return;
        if (type === 'DELETED') this.#remove(k, 'deleted');
        else if (type === 'ADDED' || type === 'MODIFIED') {
          if (!this.#pods.has(k) && this.#pods.size >= this.#o.maxPods) {
            this.#o.metrics?.kubernetesRefused.inc({ bound: 'pods' });
            this.#log.warn({ pod: k, maxPods: this.#o.maxPods }, 'pod refused: kubernetesMaxPods reached');
            return;
          }
          this.#upsert(k, e.object);
        }
        this.#schedule();
      })
      .catch((err: unknown) => {
        if (err instanceof KubeStatusError && err.status === 410) throw new Gone();
        throw err;
      });
    return events;
  }

  /** The source's own signal, or `ms` elapsed: a request that outlives it fails as any broken one does. */
  #deadline(ms: number): AbortSignal {
    return AbortSignal.any([this.#abort.signal, AbortSignal.timeout(ms)]);
  }

  #upsert(k: string, pod: Pod): void {
    const view = podWorkload(pod, this.#o.meshNamespace);
    if (typeof view === 'string') {
      this.#remove(k, view);
      return;
    }
    if (this.#o.scope === 'node' && view.workload.node !== this.#o.self.name) {
      // The server did not honour the field selector: what runs elsewhere is not this node's to enroll.
      this.#remove(k, `on node ${view.workload.node}`);
      return;
    }
    const before = this.#pods.get(k);
    this.#pods.set(k, view);
    this.#left.delete(k);
    const w = view.workload;
    if (
      !before ||
      before.workload.addresses.join() !== w.addresses.join() ||
      before.workload.service !== w.service
    )
      this.#log.info(
        {
          pod: k,
          workload: w.name,
          service: w.service,
          node: w.node,
          addresses: w.addresses,
          ports: w.ports,
        },
        before ? 'pod workload changed' : 'pod enrolled',
      );
  }

  #remove(k: string, why: string): void {
    const had = this.#pods.delete(k);
    if (had) this.#log.info({ pod: k, why }, 'pod unenrolled');
    else if (this.#left.get(k) !== why) this.#log.debug({ pod: k, why }, 'pod not enrolled');
    this.#left.set(k, why);
  }

  #schedule(): void {
    if (this.#publish || this.#closed) return;
    this.#publish = setTimeout(() => this.#flush(), this.#o.coalesceMs ?? 20);
    this.#publish.unref();
  }

  #flush(): void {
    if (this.#publish) clearTimeout(this.#publish);
    this.#publish = undefined;
    if (this.#closed) return;
    const { self } = this.#o;
    const workloads = this.workloads();
    const nodes = new Map<string, MeshNode>([[self.name, self]]);
    for (const p of this.#pods.values()) {
      // Every node's ambitd is the same DaemonSet: the tunnel port is this one's, at the node's address.
      if (!nodes.has(p.workload.node) && p.hostIP)
        nodes.set(p.workload.node, { name: p.workload.node, address: p.hostIP, tunnelPort: self.tunnelPort });
    }
    this.#o.metrics?.kubernetesPods.set(workloads.length);
    this.#store?.setBeside([...nodes.values()], workloads);
    this.emit('update', workloads);
  }
}

/** Longest a LIST page may take. */
const LIST_TIMEOUT_MS = 60_000;

const KNOWN_EVENTS = new Set(['ADDED', 'MODIFIED', 'DELETED', 'BOOKMARK', 'ERROR']);

const podKey = (pod: Pod): string | undefined =>
  pod.metadata?.name && pod.metadata.namespace
    ? workloadName(pod.metadata.namespace, pod.metadata.name)
    : undefined;
