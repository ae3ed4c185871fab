import { mkdir } from 'node:fs/promises';
import type { Server } from 'node:http';
import { detectBackend, setGate } from '../lib/capture/iptables.js';
import type { DaemonConfig } from '../lib/config.js';
import { MeshFileError } from '../lib/errors.js';
import { LOG_LEVELS, type LogLevel, type Logger } from '../lib/log.js';
import { editMeshFile, setNode } from '../lib/mesh/edit.js';
import { everyPortRefused, fieldPath, ownAddress } from '../lib/mesh/meshfile.js';
import type { Mesh, Workload } from '../lib/mesh/model.js';
import { LocalAddresses, bindAccepts } from '../lib/net/addresses.js';
import { AdminToken, type Reply, portOf, startHttp } from './admin/http.js';
import { type CertificateAuthority, EmbeddedCa } from './identity/ca.js';
import { CertificateManager } from './identity/manager.js';
import { spiffeId } from './identity/spiffe.js';
import { binding } from './io/binding.js';
import { FdReserve } from './limits/fds.js';
import { REFUSAL_LOG_INTERVAL_MS, Refusals } from './limits/refusal.js';
import { Metrics } from './metrics/metrics.js';
import { sniForIdentity } from './proxy/hbone.js';
import { Inbound } from './proxy/inbound/inbound.js';
import { PlaintextListener } from './proxy/inbound/plaintext.js';
import { TunnelServer } from './proxy/inbound/server.js';
import { CaptureListener } from './proxy/outbound/capture.js';
import { ExplicitListeners } from './proxy/outbound/explicit.js';
import { Balancer } from './proxy/outbound/lb.js';
import { Outbound } from './proxy/outbound/outbound.js';
import { Pool } from './proxy/pool/pool.js';
import { SocketFactory } from './proxy/sockets.js';
import { ConsulControlPlane } from './state/consul-source.js';
import { MeshFileSource } from './state/file-source.js';
import { StateStore } from './state/store.js';
import type { TlsContext } from './tls/context.js';

/** How soon a failed certificate issue is tried again (the certificate manager backs off on its own after). */
const RECONCILE_RETRY_MS = 5_000;

export interface BoundPorts {
  tunnel: number;
  admin: number;
  metrics: number;
  ready: number;
  /** Capture listeners (15001, 15006); 0 when capture is off. */
  outbound: number;
  plaintext: number;
}

/**
 * ambitd: wires the control plane (mesh file), identity (CA + certificate manager) and data path (tunnel
 * server, outbound pool, explicit listeners) together, and serves admin, metrics and readiness.
 */
export class Ambitd {
  readonly config: DaemonConfig;
  readonly log: Logger;
  readonly store = new StateStore();
  readonly metrics = new Metrics();
  /** Every limit's refusals, counted and logged (rate-limited) in one place. */
  readonly refusals: Refusals;
  /** The descriptor reserve (fdReserve below RLIMIT_NOFILE) new work is refused before. */
  readonly fds: FdReserve;
  readonly certs: CertificateManager;
  /** Opens every connection the daemon makes, marked when capture is on. */
  readonly sockets: SocketFactory;
  readonly pool: Pool;
  readonly inbound: Inbound;
  readonly outbound: Outbound;
  readonly listeners: ExplicitListeners;
  readonly tunnel: TunnelServer;
  /** Transparent capture (15001 outbound, 15006 inbound plaintext); only when config.capture.enabled. */
  readonly capture: { outbound: CaptureListener; plaintext: PlaintextListener } | undefined;
  readonly ports: BoundPorts = { tunnel: 0, admin: 0, metrics: 0, ready: 0, outbound: 0, plaintext: 0 };
  #source: MeshFileSource | undefined;
  /** Consul mode: the control plane and CA (undefined: the embedded mesh file and CA). */
  #consul: ConsulControlPlane | undefined;
  #http: Server[] = [];
  #identities = new Map<string, string>();
  #sni = new Map<string, string>();
  #reconciling: Promise<void> = Promise.resolve();
  #retryTimer: NodeJS.Timeout | undefined;
  #closing = false;
  #ready = false;
  /** This host's addresses: the interfaces, loopback, the advertise address and this node's mesh address. */
  readonly #local: LocalAddresses;
  #adminDeniedAt = Number.NEGATIVE_INFINITY;
  #adminSuppressed = 0;

  private constructor(config: DaemonConfig, logger: Logger, certs: CertificateManager) {
    this.config = config;
    this.log = logger;
    this.certs = certs;
    this.#local = new LocalAddresses(() => {
      const node = this.store.node(config.nodeName);
      return node ? [config.advertiseAddress, node.address] : [config.advertiseAddress];
    });
    const identityOf = (w: Workload): string => this.identityOf(w);
    this.refusals = new Refusals(this.metrics, logger);
    this.fds = new FdReserve(config.limits.fdReserve, this.refusals);
    const mark = config.capture.enabled ? config.capture.mark : undefined;
    this.sockets = new SocketFactory({ mark, connectTimeoutMs: config.connectTimeoutMs });
    this.pool = new Pool(
      certs,
      {
        ...config.pool,
        connectTimeoutMs: config.connectTimeoutMs,
        h2Limits: config.limits,
        refusals: this.refusals,
        sockets: this.sockets,
      },
      logger,
      this.metrics,
    );
    this.inbound = new Inbound({
      store: this.store,
      nodeName: config.nodeName,
      metrics: this.metrics,
      log: logger,
      identityOf,
      isSelf: (t) => this.#isSelf(t.ip, t.port),
      isLocalAddress: (ip) => this.#local.has(ip),
      trustDomain: config.trustDomain,
      sockets: this.sockets,
      limits: config.limits,
      refusals: this.refusals,
      fds: this.fds,
    });
    this.outbound = new Outbound({
      store: this.store,
      pool: this.pool,
      balancer: new Balancer(config.ejectMs),
      metrics: this.metrics,
      log: logger,
      refusals: this.refusals,
      identityOf,
      maxAttempts: config.maxAttempts,
      sockets: this.sockets,
    });
    this.listeners = new ExplicitListeners(this.outbound, logger);
    this.listeners.gate = this.fds.gate('outbound', 'upstream listener');
    this.tunnel = new TunnelServer({
      inbound: this.inbound,
      metrics: this.metrics,
      log: logger,
      refusals: this.refusals,
      limits: config.limits,
      fds: this.fds,
      roots: () => certs.trustBundle(),
      contextForSni: (name) => this.#contextForSni(name),
    });
    this.capture = config.capture.enabled
      ? {
          outbound: new CaptureListener({
            outbound: this.outbound,
            store: this.store,
            nodeName: config.nodeName,
            metrics: this.metrics,
            log: logger,
            refusals: this.refusals,
            unenrolledSource: config.capture.unenrolledSource,
          }),
          plaintext: new PlaintextListener({
            store: this.store,
            nodeName: config.nodeName,
            metrics: this.metrics,
            log: logger,
            refusals: this.refusals,
            identityOf,
            sockets: this.sockets,
            trustDomain: config.trustDomain,
          }),
        }
      : undefined;
    if (this.capture) {
      this.capture.outbound.gate = this.fds.gate('outbound', 'captured');
      this.capture.plaintext.gate = this.fds.gate('inbound', 'captured plaintext');
    }
  }

  static async start(given: DaemonConfig, logger: Logger): Promise<Ambitd> {
    // Before anything else: without the native binding there is no tunnel, and the reason is one line.
    binding();
    await mkdir(given.stateDir, { recursive: true, mode: 0o700 });
    let config = given;
    let consul: ConsulControlPlane | undefined;
    let ca: CertificateAuthority;
    if (config.consul) {
      consul = await ConsulControlPlane.open(config, logger);
      config = consul.config; // Consul's trust domain and datacenter, so identities match its leaves
      ca = consul.ca;
    } else {
      ca = await EmbeddedCa.loadOrCreate(config.caDir, config.trustDomain, logger);
    }
    const certs = new CertificateManager(ca, {
      ttlMs: config.certTtlMs,
      logger,
      keyUpdateRate: config.limits.keyUpdateRate,
    });
    try {
      await certs.start();
    } catch (err) {
      await consul?.close();
      throw err;
    }
    const d = new Ambitd(config, logger, certs);
    d.#consul = consul;
    try {
      await d.#start();
    } catch (err) {
      await d.close();
      throw err;
    }
    return d;
  }

  async #start(): Promise<void> {
    const { config, log } = this;
    this.certs.on('rotated', (identity: string) => {
      // New connections from this identity get a session with the new certificate; open ones stay.
      this.pool.drainSource(identity);
      this.#exportCertExpiry();
      log.info({ identity }, 'certificate rotated');
    });
    this.certs.on('roots', () => {
      this.tunnel.updateRoots();
      this.pool.drainAll();
    });
    this.store.on('change', () => this.#scheduleReconcile());
    // Marks first: every socket the daemon opens from here on must escape the capture rules.
    this.sockets.check();
    this.ports.tunnel = await this.tunnel.listen(config.tunnel);
    if (this.#consul) {
      await this.#consul.start(this.store, this.certs, this.metrics);
    } else {
      this.#source = new MeshFileSource(config.meshFile, this.store, log, {
        pollMs: config.meshPollMs,
        check: (mesh) => this.#checkMesh(mesh),
      });
      this.#source.on('applied', () => this.metrics.meshReloads.inc({ result: 'applied' }));
      this.#source.on('rejected', () => this.metrics.meshReloads.inc({ result: 'rejected' }));
      await this.#source.start();
    }
    await this.#reconciling;
    if (config.registerNode && this.#consul) {
      const node = { name: config.nodeName, address: config.advertiseAddress, tunnelPort: this.ports.tunnel };
      await this.#consul.registerNode(node, 'node');
    } else if (config.registerNode) await this.#registerNode();
    await this.#startHttp();
    if (this.capture) await this.#startCapture();
    this.#ready = true;
    log.info({ node: config.nodeName, ports: this.ports, mesh: config.meshFile }, 'ambitd ready');
  }

  async #startCapture(): Promise<void> {
    const { config, log } = this;
    const c = this.capture!;
    const outbound = await c.outbound.listen(config.outbound);
    const inbound = await c.plaintext.listen(config.inboundPlaintext);
    this.ports.outbound = outbound;
    this.ports.plaintext = inbound;
    log.info({ outbound, inbound, mark: config.capture.mark }, 'transparent capture listening');
    // Fail-open workloads are redirected only while the gate is up (that is, while ambitd runs).
    await this.#gate(true);
  }

  async #gate(up: boolean): Promise<void> {
    if (!this.capture) return;
    const { config } = this;
    try {
      const backend = await detectBackend(config.capture.backend);
      await setGate(
        backend,
        { outboundPort: this.capture.outbound.port, inboundPort: this.capture.plaintext.port },
        up,
      );
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cannot switch the fail-open gate of the capture rules');
    }
  }

  /**
   * What only this host can check in the mesh file: a local workload serving every port of one of the host's
   * addresses (the file's own validation knows loopback and the node's address, not the interfaces).
   */
  #checkMesh(mesh: Mesh): void {
    const { nodeName, advertiseAddress } = this.config;
    const node = mesh.nodes.find((n) => n.name === nodeName);
    if (!node) return;
    const local = new LocalAddresses(() => [advertiseAddress]);
    for (const w of mesh.workloads) {
      if (w.node !== nodeName || w.ports.length > 0) continue;
      const own = ownAddress(w.addresses, node, (ip) => local.has(ip));
      if (own)
        throw new MeshFileError(
          this.config.meshFile,
          fieldPath(['workloads', w.name, 'ports']),
          everyPortRefused(own),
        );
    }
  }

  /** Puts this node's tunnel address in the mesh file, unless it is already there as it is. */
  async #registerNode(): Promise<void> {
    const { nodeName, advertiseAddress } = this.config;
    const current = this.store.node(nodeName);
    if (current?.address === advertiseAddress && current.tunnelPort === this.ports.tunnel) return;
    await editMeshFile(this.config.meshFile, (doc) => {
      setNode(doc, { name: nodeName, address: advertiseAddress, tunnelPort: this.ports.tunnel });
    });
    this.log.info(
      { node: nodeName, address: advertiseAddress, tunnelPort: this.ports.tunnel },
      'node registered in mesh file',
    );
  }

  identityOf(w: Workload): string {
    const key = `${w.namespace}/${w.service}`;
    let id = this.#identities.get(key);
    if (id === undefined) {
      id = spiffeId({
        trustDomain: this.config.trustDomain,
        namespace: w.namespace,
        datacenter: this.config.datacenter,
        service: w.service,
      });
      this.#identities.set(key, id);
    }
    return id;
  }

  localWorkloads(): Workload[] {
    return this.store.workloadsOn(this.config.nodeName);
  }

  /** Certificates for exactly the local workloads' identities, listeners for their upstreams, policies re-checked. */
  async #reconcile(): Promise<void> {
    const local = this.localWorkloads();
    const wanted = new Set(local.map((w) => this.identityOf(w)));
    const sni = new Map<string, string>();
    for (const id of wanted) sni.set(sniForIdentity(id), id);
    let failed = 0;
    await Promise.all(
      [...wanted].map((id) =>
        this.certs.ensure(id).catch((err: Error) => {
          failed++;
          this.log.error({ identity: id, err: err.message }, 'cannot issue certificate');
        }),
      ),
    );
    // A first issue that failed (CA briefly unreachable) is tried again without waiting for a mesh change.
    if (failed > 0) this.#retryReconcile();
    this.#sni = sni;
    for (const c of this.certs.list()) if (!wanted.has(c.identity)) this.certs.forget(c.identity);
    this.#exportCertExpiry();
    await this.listeners.reconcile(local);
    const closed = this.inbound.recheck();
    if (closed > 0) this.log.info({ closed }, 'closed connections that policy no longer allows');
  }

  /** Reconciles after any reconcile already under way: changes apply in order, never concurrently. */
  #scheduleReconcile(): void {
    this.#reconciling = this.#reconciling
      .then(() => this.#reconcile())
      .catch((err: Error) => {
        this.log.error({ err: err.message }, 'applying the mesh failed');
      });
  }

  #retryReconcile(): void {
    if (this.#retryTimer) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      if (!this.#closing) this.#scheduleReconcile();
    }, RECONCILE_RETRY_MS).unref();
  }

  #exportCertExpiry(): void {
    this.metrics.certExpiry.reset();
    for (const c of this.certs.list())
      this.metrics.certExpiry.set({ identity: c.identity }, Date.parse(c.notAfter) / 1000);
  }

  #contextForSni(servername: string): TlsContext | undefined {
    const id = this.#sni.get(servername);
    if (!id || !this.certs.has(id)) return undefined;
    return this.certs.tlsContext(id);
  }

  /**
   * Whether ip:port reaches one of this daemon's own listeners (tunnel, capture, admin, metrics, ready,
   * explicit upstreams): such a CONNECT would be a self-call, or a way into the admin API through the
   * tunnel, whatever the mesh says is there.
   */
  #isSelf(ip: string, port: number): boolean {
    const { config, ports } = this;
    const bound: [string, number][] = [
      [config.tunnel.host, ports.tunnel],
      [config.admin.host, ports.admin],
      [config.metrics.host, ports.metrics],
      [config.ready.host, ports.ready],
      [config.outbound.host, ports.outbound],
      [config.inboundPlaintext.host, ports.plaintext],
      ...this.listeners.bound(),
    ];
    for (const [host, p] of bound)
      if (p === port && p !== 0 && bindAccepts(host, ip, this.#local)) return true;
    return false;
  }

  readiness(): { ready: boolean; checks: Record<string, string> } {
    const checks: Record<string, string> = {};
    checks.started = this.#ready ? 'ok' : 'starting';
    checks.mesh = this.#source?.lastError ? `last edit rejected: ${this.#source.lastError.message}` : 'ok';
    // Consul unreachable: reported here, but the last known state serves, so the node stays ready.
    if (this.#consul) checks.consul = this.#consul.readiness();
    const missing = this.localWorkloads().filter((w) => !this.certs.has(this.identityOf(w)));
    checks.certificates = missing.length ? `missing for ${missing.map((w) => w.name).join(', ')}` : 'ok';
    const failed = this.listeners.failures();
    checks.listeners = failed.length ? failed.map((f) => `${f.listen}: ${f.error}`).join('; ') : 'ok';
    // A rejected mesh edit is reported but does not make the node unready: the last good state still serves.
    const ready = this.#ready && missing.length === 0 && failed.length === 0;
    return { ready, checks };
  }

  async #startHttp(): Promise<void> {
    const { config } = this;
    const certRows = (): unknown[] => {
      const byId = new Map(this.certs.list().map((c) => [c.identity, c]));
      return this.localWorkloads().map((w) => {
        const c = byId.get(this.identityOf(w));
        return { workload: w.name, ...(c ?? { identity: this.identityOf(w), serial: null, notAfter: null }) };
      });
    };
    const token = await AdminToken.create(config.stateDir);
    const admin = await startHttp(
      config.admin,
      {
        'GET /config_dump': () => ({
          json: {
            node: config.nodeName,
            config,
            mesh: this.store.mesh,
            consul: this.#consul?.dump(),
            certificates: certRows(),
            listeners: this.listeners.listening(),
            pool: this.pool.stats(),
            inbound: {
              open: this.inbound.openConnections,
              connecting: this.inbound.connecting,
              tunnel: this.tunnel.stats(),
            },
            fds: { open: this.fds.open, limit: this.fds.limit ?? null, reserve: this.fds.reserve },
            readiness: this.readiness(),
          },
        }),
        'GET /workloads': () => ({ json: this.localWorkloads() }),
        'GET /certs': () => ({ json: certRows() }),
        'GET /logging': () => ({ json: { level: this.log.level } }),
        'POST /logging': (_req, url): Reply => {
          const level = url.searchParams.get('level') ?? '';
          if (!(LOG_LEVELS as readonly string[]).includes(level)) {
            return { status: 400, json: { error: `level must be one of ${LOG_LEVELS.join(', ')}` } };
          }
          this.log.level = level as LogLevel;
          return { json: { level } };
        },
      },
      {
        token,
        // Every change, and the dump (the whole mesh and configuration); the other reads stay open on the
        // admin address, as ztunnel's do, for `curl` and probes.
        required: (route) => !route.startsWith('GET ') || route === 'GET /config_dump',
        denied: (route, req) => {
          this.metrics.adminUnauthorized.inc({ route });
          this.#adminDenied(route, req.socket.remoteAddress);
        },
      },
    );
    const metrics = await startHttp(config.metrics, {
      'GET /metrics': async () => ({
        text: await this.metrics.registry.metrics(),
        contentType: this.metrics.registry.contentType,
      }),
    });
    const ready = await startHttp(config.ready, {
      'GET /healthz/ready': () => {
        const r = this.readiness();
        return { status: r.ready ? 200 : 503, json: r };
      },
    });
    // An accept that fails for want of descriptors must not take the daemon down through these either.
    this.fds.watch(admin, 'inbound', 'admin API');
    this.fds.watch(metrics, 'inbound', 'metrics');
    this.fds.watch(ready, 'inbound', 'readiness');
    this.#http.push(admin, metrics, ready);
    this.ports.admin = portOf(admin);
    this.ports.metrics = portOf(metrics);
    this.ports.ready = portOf(ready);
  }

  /**
   * Stops the daemon. With `drainMs`, it first stops accepting (readiness goes 503, listeners close, peers
   * get GOAWAY) and lets open connections finish for up to `drainMs`, so a restart or upgrade does not
   * reset long-lived connections that end in time; whatever is still open then is reset.
   */
  async close(drainMs = 0): Promise<void> {
    const wasReady = this.#ready;
    this.#ready = false;
    if (this.capture) {
      // Fail-open workloads pass untouched from now on; fail-closed ones are refused until ambitd is back.
      if (wasReady) await this.#gate(false);
      this.capture.outbound.close();
      this.capture.plaintext.close();
    }
    this.#source?.close();
    await this.#consul?.close();
    this.listeners.close();
    if (drainMs > 0) {
      const draining = this.tunnel.close(true);
      this.pool.drainAll();
      const deadline = Date.now() + drainMs;
      while (Date.now() < deadline && this.#openConnections() > 0)
        await new Promise((r) => setTimeout(r, 100));
      this.log.info({ remaining: this.#openConnections() }, 'drain finished');
      void draining;
    }
    await this.tunnel.close(false);
    this.pool.close();
    this.certs.close();
    for (const s of this.#http) s.closeAllConnections();
    await Promise.all(this.#http.map((s) => new Promise((r) => s.close(r))));
  }

  /** Logs a refused admin request, at most once per interval (the count is in the metric). */
  #adminDenied(route: string, from: string | undefined): void {
    const now = Date.now();
    if (now - this.#adminDeniedAt < REFUSAL_LOG_INTERVAL_MS) {
      this.#adminSuppressed++;
      return;
    }
    this.#adminDeniedAt = now;
    const suppressed = this.#adminSuppressed;
    this.#adminSuppressed = 0;
    this.log.warn(
      { route, from, ...(suppressed > 0 ? { suppressed } : {}) },
      'admin API request refused: no or wrong admin token',
    );
  }

  #openConnections(): number {
    return this.inbound.openConnections + this.pool.stats().streams;
  }
}
