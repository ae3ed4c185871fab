import { mkdir } from 'node:fs/promises';
import type { Server } from 'node:http';
import { detectBackend, setGate } from '../lib/capture/iptables.js';
import type { DaemonConfig } from '../lib/config.js';
import { ConfigError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import type { Workload } from '../lib/mesh/model.js';
import { LocalAddresses } from '../lib/net/addresses.js';
import { AdminToken, portOf, startHttp } from './admin/http.js';
import { adminAuth, adminRoutes, metricsRoutes, readyRoutes } from './admin/routes.js';
import { TapServer } from './admin/tap.js';
import { ReplyWatch } from './capture/reply-watch.js';
import { type CertificateAuthority, EmbeddedCa } from './identity/ca.js';
import { CertificateManager } from './identity/manager.js';
import { spiffeId } from './identity/spiffe.js';
import { FdReserve } from './limits/fds.js';
import { Refusals } from './limits/refusal.js';
import { Metrics } from './metrics/metrics.js';
import { binding } from './native/index.js';
import { type BoundPorts, ownListeners, reachesOwnListener } from './own-listeners.js';
import { Inbound } from './proxy/inbound/inbound.js';
import { PlaintextListener } from './proxy/inbound/plaintext.js';
import { TunnelServer } from './proxy/inbound/server.js';
import { CaptureListener } from './proxy/outbound/capture.js';
import { ExplicitListeners, type HeldSockets } from './proxy/outbound/explicit.js';
import { Balancer } from './proxy/outbound/lb.js';
import { Outbound } from './proxy/outbound/outbound.js';
import { Pool } from './proxy/pool/pool.js';
import { SocketFactory } from './proxy/sockets.js';
import { type Readiness, readinessOf } from './readiness.js';
import { Reconciler, checkHostMesh, missingCertificates, registerInMeshFile } from './reconcile.js';
import { ConsulControlPlane } from './state/consul-control-plane.js';
import { MeshFileSource, lastGoodPath } from './state/file-source.js';
import {
  type ConsulPodRegistry,
  type PodSource,
  captureFollowsPods,
  consulFollowsPods,
  podSourceFor,
} from './state/kubernetes/index.js';
import { StateStore, baseNode } from './state/store.js';
import { ChainRouter } from './waypoint/chain-router.js';
import { WaypointRegistration, waypointWorkload } from './waypoint/registration.js';
import { Waypoint } from './waypoint/waypoint.js';

export type { BoundPorts } from './own-listeners.js';

/**
 * A supervisor's worker (daemon/supervisor/): the supervisor's one control plane and certificate manager,
 * relayed over IPC, in place of the worker's own. The supervisor also serves admin, metrics and readiness,
 * registers the node and switches the capture gate, so a worker does none of these.
 */
export interface WorkerParts {
  readonly ca: CertificateAuthority;
  readonly source: { start(store: StateStore): Promise<void>; close(): void };
  /** The sockets the supervisor holds (listeners.ts) for the tunnel and capture, to listen on. */
  readonly held?: (
    name: 'tunnel' | 'outbound' | 'outbound6' | 'plaintext' | 'plaintext6',
  ) => object | undefined;
  /** The supervisor's sockets for explicit upstream listeners. */
  readonly upstreams?: HeldSockets;
}

/**
 * ambitd: wires the control plane (mesh file), identity (CA + certificate manager) and data path (tunnel
 * server, outbound pool, explicit listeners) together, and serves admin, metrics and readiness. What each
 * part decides lives with it: reconcile.ts (mesh -> this node), readiness.ts, admin/routes.ts.
 */
export class Ambitd {
  readonly config: DaemonConfig;
  readonly log: Logger;
  readonly store = new StateStore();
  readonly metrics: Metrics;
  /** Every limit's refusals, counted and logged (rate-limited) in one place. */
  readonly refusals: Refusals;
  /** The descriptor reserve (fdReserve below RLIMIT_NOFILE) new work is refused before. */
  readonly fds: FdReserve;
  readonly certs: CertificateManager;
  /** Opens every connection the daemon makes, marked when capture is on. */
  readonly sockets: SocketFactory;
  /** With capture and captureOriginalSource: where the reply routing for the client's address is installed. */
  readonly replies: ReplyWatch | undefined;
  readonly pool: Pool;
  readonly inbound: Inbound;
  readonly outbound: Outbound;
  readonly listeners: ExplicitListeners;
  readonly tunnel: TunnelServer;
  /** With role waypoint: what the tunnel's streams go to instead of local workloads (docs/waypoints.md). */
  readonly waypoint: Waypoint | undefined;
  /** Transparent capture (15001 outbound, 15006 inbound plaintext); only when config.capture.enabled. */
  readonly capture: { outbound: CaptureListener; plaintext: PlaintextListener } | undefined;
  readonly ports: BoundPorts = { tunnel: 0, admin: 0, metrics: 0, ready: 0, outbound: 0, plaintext: 0 };
  #source: MeshFileSource | undefined;
  /** With `kubernetes`: the pods enrolled beside the control plane's mesh (daemon/state/kubernetes/). */
  #pods: PodSource | undefined;
  /** With `kubernetes` and Consul: this node's pods in the agent's catalog. */
  #podRegistry: ConsulPodRegistry | undefined;
  #worker: WorkerParts | undefined;
  /** Consul mode: the control plane and CA (undefined: the embedded mesh file and CA). */
  #consul: ConsulControlPlane | undefined;
  readonly #reconciler: Reconciler;
  #http: Server[] = [];
  /** The live stream of connection events on the admin port (GET /tap). */
  #tapServer: TapServer | undefined;
  get #tap(): TapServer {
    this.#tapServer ??= new TapServer(this.metrics, this.log);
    return this.#tapServer;
  }
  #identities = new Map<string, string>();
  /** The waypoint workload this daemon registered (a single process), deregistered when it stops. */
  #waypointRegistration: WaypointRegistration | undefined;
  #ready = false;
  /** This host's addresses: the interfaces, loopback, the advertise address and this node's mesh address. */
  readonly #local: LocalAddresses;

  private constructor(config: DaemonConfig, logger: Logger, certs: CertificateManager) {
    this.config = config;
    this.metrics = new Metrics({ cluster: config.datacenter });
    this.log = logger;
    this.certs = certs;
    this.#local = new LocalAddresses(() => {
      const node = this.store.node(config.nodeName);
      return node ? [config.advertiseAddress, node.address] : [config.advertiseAddress];
    });
    const identityOf = (w: Pick<Workload, 'namespace' | 'service'>): string => this.identityOf(w);
    this.refusals = new Refusals(this.metrics, logger);
    this.fds = new FdReserve(config.limits.fdReserve, this.refusals);
    const mark = config.capture.enabled ? config.capture.mark : undefined;
    this.sockets = new SocketFactory({ mark, connectTimeoutMs: config.connectTimeoutMs });
    const c = config.capture;
    this.replies =
      c.enabled && c.originalSource
        ? new ReplyWatch({
            spec: { socketMark: c.mark, replyMark: c.replyMark, table: c.replyTable },
            backend: c.backend,
            log: logger,
            transparentError: (f) => this.sockets.transparentError(f),
          })
        : undefined;
    const replies = this.replies;
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
      originalSource: replies && { enabled: true, routed: () => replies.routed },
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
    this.waypoint =
      config.role === 'waypoint'
        ? new Waypoint({
            store: this.store,
            pool: this.pool,
            router: new ChainRouter({
              store: this.store,
              log: logger,
              ejectMs: config.ejectMs,
              datacenter: config.datacenter,
              outlierMetrics: {
                ejection: (service, reason) =>
                  this.metrics.outlierEjections.inc({ destination_service: service, reason }),
                ejected: (service, delta) => {
                  if (delta > 0) this.metrics.outlierEjected.inc({ destination_service: service }, delta);
                  else this.metrics.outlierEjected.dec({ destination_service: service }, -delta);
                },
              },
            }),
            metrics: this.metrics,
            log: logger,
            refusals: this.refusals,
            identityOf,
            self: { name: config.waypointService, namespace: 'default' },
            maxStreams: config.limits.maxInboundStreams,
            maxAttempts: config.maxAttempts,
            http2Limits: config.limits,
            http1Limits: {
              headTimeoutMs: config.limits.httpHeadTimeoutMs,
              maxHeadBytes: config.limits.maxHeaderListSize,
            },
            retryBufferBytes: config.limits.waypointRetryBufferBytes,
            mirrorLimits: {
              bufferBytes: config.limits.waypointMirrorBufferBytes,
              maxInFlight: config.limits.waypointMirrorMaxInFlight,
              timeoutMs: config.limits.waypointMirrorTimeoutMs,
            },
          })
        : undefined;
    this.tunnel = new TunnelServer({
      inbound: this.waypoint ?? this.inbound,
      metrics: this.metrics,
      log: logger,
      refusals: this.refusals,
      limits: config.limits,
      fds: this.fds,
      roots: () => certs.trustBundle(),
      contextForSni: (name) => this.#reconciler.contextForSni(name),
    });
    this.#reconciler = new Reconciler({
      localWorkloads: () => this.localWorkloads(),
      identityOf,
      certs,
      listeners: this.listeners,
      inbound: this.inbound,
      metrics: this.metrics,
      log: logger,
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
            rechecks: this.inbound.rechecks,
          }),
        }
      : undefined;
    if (this.capture) {
      this.capture.outbound.gate = this.fds.gate('outbound', 'captured');
      this.capture.plaintext.gate = this.fds.gate('inbound', 'captured plaintext');
    }
  }

  static async start(given: DaemonConfig, logger: Logger, worker?: WorkerParts): Promise<Ambitd> {
    // Before anything else: without the native binding there is no tunnel, and the reason is one line.
    binding();
    if (given.role === 'waypoint' && given.capture.enabled)
      throw new ConfigError('a waypoint captures nothing: turn capture off', { field: 'capture' });
    await mkdir(given.stateDir, { recursive: true, mode: 0o700 });
    let config = given;
    let consul: ConsulControlPlane | undefined;
    let ca: CertificateAuthority;
    if (worker) {
      ca = worker.ca;
    } else if (config.consul) {
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
    d.#worker = worker;
    d.listeners.held = worker?.upstreams;
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
      this.#reconciler.exportCertExpiry();
      log.info({ identity }, 'certificate rotated');
    });
    this.certs.on('roots', () => {
      this.tunnel.updateRoots();
      this.pool.drainAll();
    });
    this.store.on('change', () => this.#reconciler.schedule());
    // Marks first: every socket the daemon opens from here on must escape the capture rules.
    this.sockets.check();
    // Before the tunnel listens: where the reply routing is missing, not one connection from the client's
    // address (its replies would be lost).
    await this.replies?.start();
    this.ports.tunnel = await this.tunnel.listen(config.tunnel, this.#worker?.held?.('tunnel'));
    if (this.#worker) {
      await this.#worker.source.start(this.store);
    } else if (this.#consul) {
      await this.#consul.start(this.store, this.certs, this.metrics);
    } else {
      this.#source = new MeshFileSource(config.meshFile, this.store, log, {
        pollMs: config.meshPollMs,
        check: (mesh) => checkHostMesh(mesh, config),
        lastGood: lastGoodPath(config.stateDir, config.meshFile),
      });
      this.#source.on('applied', () => this.metrics.meshReloads.inc({ result: 'applied' }));
      this.#source.on('rejected', () => this.metrics.meshReloads.inc({ result: 'rejected' }));
      await this.#source.start();
    }
    if (!this.#worker) {
      this.#pods = podSourceFor(config, this.ports.tunnel, log, this.metrics);
      await this.#pods?.start(this.store);
      this.#podRegistry = await consulFollowsPods(this.#pods, config, this.#consul?.client, log);
    }
    await this.#reconciler.settled();
    if (config.registerNode && !this.#worker) {
      const node = { name: config.nodeName, address: config.advertiseAddress, tunnelPort: this.ports.tunnel };
      if (this.#consul) await this.#consul.registerNode(node, config.role);
      else await registerInMeshFile(config.meshFile, baseNode(this.store, config.nodeName), node, log);
      if (this.waypoint) {
        this.#waypointRegistration = new WaypointRegistration(config, this.store, this.#consul?.client, log);
        await this.#waypointRegistration.register(this.ports.tunnel);
      }
    }
    if (!this.#worker) await this.#startHttp();
    if (this.capture) await this.#startCapture();
    if (!this.#worker) await captureFollowsPods(this.#pods, config, this.store, log);
    this.#ready = true;
    log.info({ node: config.nodeName, ports: this.ports, mesh: config.meshFile }, 'ambitd ready');
  }

  /** The waypoint instance this daemon stands for in the catalog (its tunnel port bound). */
  waypointWorkload(): Workload {
    return waypointWorkload(this.config, this.ports.tunnel);
  }

  async #startCapture(): Promise<void> {
    const { config, log } = this;
    const c = this.capture!;
    const held = this.#worker?.held;
    const twins = (first: object | undefined, v6: object | undefined) => (first ? { first, v6 } : undefined);
    const outbound = await c.outbound.listen(config.outbound, twins(held?.('outbound'), held?.('outbound6')));
    const inbound = await c.plaintext.listen(
      config.inboundPlaintext,
      twins(held?.('plaintext'), held?.('plaintext6')),
    );
    this.ports.outbound = outbound;
    this.ports.plaintext = inbound;
    log.info({ outbound, inbound, mark: config.capture.mark }, 'transparent capture listening');
    // Fail-open workloads are redirected only while the gate is up (that is, while ambitd runs).
    if (!this.#worker) await this.#gate(true);
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

  identityOf(w: Pick<Workload, 'namespace' | 'service'>): string {
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

  /** Whether ip:port is one of this daemon's own listeners, never a tunnel's target. */
  #isSelf(ip: string, port: number): boolean {
    const bound = ownListeners(this.config, this.ports, this.listeners.bound());
    return reachesOwnListener(bound, ip, port, this.#local);
  }

  readiness(): Readiness {
    return readinessOf({
      started: this.#ready,
      meshError: this.#source?.lastError,
      consul: this.#consul?.readiness(),
      missingCertificates: missingCertificates(
        this.localWorkloads(),
        (w) => this.identityOf(w),
        (id) => this.certs.has(id),
      ),
      listenerFailures: this.listeners.failures(),
    });
  }

  async #startHttp(): Promise<void> {
    const { config } = this;
    const token = await AdminToken.create(config.stateDir);
    const admin = await startHttp(
      config.admin,
      adminRoutes(this, this.#consul),
      adminAuth(token, this.metrics, this.log),
      { 'GET /tap': (req, socket, head, url) => this.#tap.upgrade(req, socket, head, url) },
    );
    const metrics = await startHttp(config.metrics, metricsRoutes(this.metrics));
    const ready = await startHttp(
      config.ready,
      readyRoutes(() => this.readiness()),
    );
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
    this.replies?.close();
    if (this.capture) {
      // Fail-open workloads pass untouched from now on; fail-closed ones are refused until ambitd is back.
      if (wasReady && !this.#worker) await this.#gate(false);
      this.capture.outbound.close();
      this.capture.plaintext.close();
    }
    this.#source?.close();
    this.#podRegistry?.close();
    await this.#pods?.close();
    this.#worker?.source.close();
    await this.#waypointRegistration?.close(true);
    await this.#consul?.close();
    this.listeners.close();
    if (drainMs > 0) {
      const draining = this.tunnel.close(true);
      this.pool.drainAll();
      this.waypoint?.drain();
      const deadline = Date.now() + drainMs;
      while (Date.now() < deadline && this.#openConnections() > 0)
        await new Promise((r) => setTimeout(r, 100));
      this.log.info({ remaining: this.#openConnections() }, 'drain finished');
      void draining;
    }
    this.waypoint?.close();
    await this.tunnel.close(false);
    this.pool.close();
    this.certs.close();
    this.#tapServer?.close();
    for (const s of this.#http) s.closeAllConnections();
    await Promise.all(this.#http.map((s) => new Promise((r) => s.close(r))));
  }

  /** Connections carried now: tunneled in, and streams out through the pool. */
  get openConnections(): number {
    return this.#openConnections();
  }

  /**
   * What a drain waits for: connections carried, and those accepted but not carried yet (an outbound one
   * opening its stream, an inbound one connecting to its workload, a peer's tunnel still in its TLS
   * handshake), which closing now would reset. A handshake that ends in a session gets GOAWAY, so its
   * peer's first stream is refused and retried elsewhere; a handshake cut would fail the peer's connection.
   * And every inbound session until its peer has closed it: past our GOAWAY the peer may still be sending a
   * stream it opened before reading it, and a close then would reset the connection, GOAWAY unread, where
   * the peer, having read it, retries that stream elsewhere (a session's own timer bounds the wait).
   */
  #openConnections(): number {
    const tunnel = this.tunnel.stats();
    return (
      tunnel.handshaking +
      tunnel.sessions +
      this.inbound.openConnections +
      this.inbound.connecting +
      this.outbound.starting +
      (this.waypoint?.openConnections ?? 0) +
      this.pool.stats().streams
    );
  }
}
