import type { DaemonConfig } from '../../lib/config.js';
import { ConsulCache } from '../../lib/consul/cache.js';
import { NODE_CHECK_TTL_S, NODE_SERVICE, nodeCheckId, nodeRegistration } from '../../lib/consul/catalog.js';
import {
  ConsulClient,
  MAX_CONNECTIONS,
  RESERVED_CONNECTIONS,
  type WatchOptions,
} from '../../lib/consul/client.js';
import type { Logger } from '../../lib/log.js';
import type { MeshNode } from '../../lib/mesh/model.js';
import { ConsulCa } from '../identity/consul-ca.js';
import type { CertificateManager } from '../identity/manager.js';
import type { Metrics } from '../metrics/metrics.js';
import { ConsulSource } from './consul-source.js';
import type { StateStore } from './store.js';

/**
 * Everything the daemon needs for Consul mode, made in one place: the client, the cache, the Consul CA, and
 * (once the store and certificate manager exist) the source. Keeps daemon.ts's part to a few lines.
 */
export class ConsulControlPlane {
  readonly client: ConsulClient;
  readonly cache: ConsulCache;
  readonly ca: ConsulCa;
  /** The daemon's config with Consul's trust domain and datacenter, so identities match Consul's leaves. */
  readonly config: DaemonConfig;
  source: ConsulSource | undefined;
  readonly #log: Logger;
  #registration: NodeJS.Timeout | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #heartbeatFailing = false;
  #closed = false;

  private constructor(
    config: DaemonConfig,
    client: ConsulClient,
    cache: ConsulCache,
    ca: ConsulCa,
    log: Logger,
  ) {
    this.client = client;
    this.cache = cache;
    this.ca = ca;
    this.#log = log;
    this.config = { ...config, trustDomain: ca.trustDomain, datacenter: ca.datacenter };
  }

  static async open(config: DaemonConfig, log: Logger): Promise<ConsulControlPlane> {
    const settings = config.consul;
    if (!settings) throw new Error('ConsulControlPlane.open without consul settings');
    const client = new ConsulClient({ address: settings.address, token: settings.token });
    const cache = new ConsulCache(config.stateDir, log);
    await cache.load();
    try {
      const ca = await ConsulCa.open(client, cache, { log, watch: watchOptions(config) });
      return new ConsulControlPlane(config, client, cache, ca, log);
    } catch (err) {
      client.close();
      throw err;
    }
  }

  /** Wires the CA to the certificate manager, starts the watches and applies the first view of the mesh. */
  async start(store: StateStore, certs: CertificateManager, metrics: Metrics): Promise<void> {
    const { config, ca } = this;
    const consul = config.consul!;
    this.client.onRequest = (endpoint, code) => metrics.consulRequests.inc({ endpoint, code });
    const source = new ConsulSource(this.client, store, {
      nodeName: config.nodeName,
      defaultPolicy: config.defaultPolicy,
      defaultIntentionPolicy: ca.defaultIntentionPolicy,
      log: this.#log,
      cache: this.cache,
      watch: watchOptions(config),
      startTimeoutMs: consul.startTimeoutMs,
      followEvery: config.role === 'waypoint',
    });
    this.source = source;
    source.countAlso(() => ca.watches);
    ca.on('roots', (roots) => {
      try {
        certs.setRoots(roots);
      } catch (err) {
        this.#log.error({ err: (err as Error).message }, 'cannot use the roots Consul sent');
      }
    });
    ca.on('leaf', (identity) => {
      if (certs.has(identity)) {
        certs
          .rotate(identity)
          .catch((err: Error) => this.#log.error({ identity, err: err.message }, 'leaf rotation failed'));
      }
    });
    ca.on('watchError', (path, err) => source.noteError(path, err));
    ca.on('watchOk', (path) => source.noteOk(path));
    // Blocking leaf queries get what the connection budget leaves after the source's long polls and the
    // roots watch; the other leaves are polled.
    const leafBudget = (): number => MAX_CONNECTIONS - RESERVED_CONNECTIONS - source.longPolls - 1;
    source.on('localServices', (services) => ca.watchLeaves(services, leafBudget()));
    const report = (): void => {
      const s = source.status();
      metrics.consulStale.set(s.stale ? 1 : 0);
      metrics.consulFilteredQueries.set(s.filteredByAcls.length);
      if (s.lastContact) metrics.consulLastContact.set(Date.parse(s.lastContact) / 1000);
    };
    source.on('status', report);
    ca.start();
    await source.start();
    ca.watchLeaves(source.localServices, leafBudget());
    report();
  }

  /** Registers this node's daemon (the `ambit` service at its tunnel address); retried in the background. */
  registerNode(node: MeshNode, role: string): Promise<void> {
    const body = nodeRegistration(node, { role });
    const attempt = async (n: number): Promise<void> => {
      try {
        await this.client.put('/v1/agent/service/register', {
          body,
          permission: `service:write on "${NODE_SERVICE}"`,
        });
        this.#log.info(
          { node: node.name, address: node.address, tunnelPort: node.tunnelPort },
          'node registered in Consul',
        );
        this.#keepAlive(node.name);
      } catch (err) {
        if (this.#closed) return;
        const delay = Math.min(30_000, 1000 * 2 ** Math.min(n, 5));
        this.#log.warn(
          { err: (err as Error).message, retryInMs: delay },
          'cannot register the node in Consul; retrying',
        );
        this.#registration = setTimeout(() => void attempt(n + 1), delay).unref();
      }
    };
    return attempt(0);
  }

  /**
   * Keeps the node's TTL check passing, every third of its TTL, with the readiness detail as its output:
   * the check goes critical when the daemon stops, and no probe ever touches the tunnel listener.
   */
  #keepAlive(nodeName: string): void {
    if (this.#heartbeat || this.#closed) return;
    const id = encodeURIComponent(nodeCheckId(nodeName));
    const beat = async (): Promise<void> => {
      try {
        await this.client.put(`/v1/agent/check/update/${id}`, {
          body: { Status: 'passing', Output: `ambitd: consul ${this.readiness()}` },
          permission: `service:write on "${NODE_SERVICE}"`,
        });
        if (this.#heartbeatFailing)
          this.#log.info({ check: nodeCheckId(nodeName) }, 'node check updated again');
        this.#heartbeatFailing = false;
      } catch (err) {
        if (this.#closed || this.#heartbeatFailing) return;
        this.#heartbeatFailing = true;
        this.#log.warn(
          { check: nodeCheckId(nodeName), err: (err as Error).message },
          'cannot update the node check in Consul; it goes critical when its TTL runs out',
        );
      }
    };
    this.#heartbeat = setInterval(() => void beat(), (NODE_CHECK_TTL_S * 1000) / 3).unref();
  }

  /** For the admin config dump: status, local services, raw config entries. */
  dump(): unknown {
    return {
      address: this.client.address,
      status: this.source?.status(),
      localServices: this.source?.localServices,
      configEntries: this.source?.configEntries(),
      cache: this.cache.file,
    };
  }

  /** The readiness detail: `ok`, or how stale the state in force is and why. */
  readiness(): string {
    const s = this.source?.status();
    if (!s) return 'starting';
    // Filtered answers do not make the node unready (what it can see still serves), but they are why
    // services may be missing, so they are named here.
    const filtered = s.filteredByAcls.length
      ? `answers filtered by ACLs (the token cannot read all of them): ${s.filteredByAcls.join(', ')}`
      : undefined;
    if (!s.stale) return filtered ?? 'ok';
    return (
      `stale since ${s.staleSince}: serving the last known state` +
      (s.lastContact ? ` (last answer from Consul ${s.lastContact})` : ' (no answer from Consul yet)') +
      (s.lastError ? `: ${s.lastError}` : '') +
      (filtered ? `; ${filtered}` : '')
    );
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#registration) clearTimeout(this.#registration);
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.source?.close();
    this.ca.close();
    await this.cache.flush();
    this.client.close();
  }
}

function watchOptions(config: DaemonConfig): WatchOptions {
  const c = config.consul!;
  return {
    waitMs: c.waitMs,
    minIntervalMs: c.minIntervalMs,
    backoff: { initialMs: c.backoffInitialMs, maxMs: c.backoffMaxMs },
  };
}
