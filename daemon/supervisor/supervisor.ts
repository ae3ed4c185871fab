// ambitd with workers: the supervisor holds the listening sockets (cluster's shared handles), the one
// control plane and certificate manager of the host, and the admin, metrics and readiness ports; the
// workers (worker.ts) carry the traffic. SIGHUP reloads (new workers first, then the old ones drain);
// SIGTERM stops (readiness fails first, the listeners close after stopGrace, then today's drain).
import type { Server } from 'node:http';
import { detectBackend, setGate } from '../../lib/capture/iptables.js';
import type { DaemonConfig } from '../../lib/config.js';
import { ConfigError } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { AdminToken, portOf, startHttp } from '../admin/http.js';
import { adminAuth } from '../admin/routes.js';
import { TapServer } from '../admin/tap.js';
import { binding } from '../native/index.js';
import { registerInMeshFile } from '../reconcile.js';
import {
  type SupervisorView,
  supervisorAdminRoutes,
  supervisorMetricsRoutes,
  supervisorReadyRoutes,
} from './admin.js';
import { ControlPlane } from './control-plane.js';
import { Systemd } from './systemd.js';
import { Workers } from './workers.js';

export class Supervisor implements SupervisorView {
  readonly config: DaemonConfig;
  readonly log: Logger;
  readonly plane: ControlPlane;
  readonly workers: Workers;
  accepting = false;
  readonly ports = { tunnel: 0, admin: 0, metrics: 0, ready: 0, outbound: 0, plaintext: 0 };
  #http: Server[] = [];
  #reloading: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  #gateUp = false;
  #tap: TapServer | undefined;
  readonly #systemd: Systemd;

  private constructor(plane: ControlPlane, log: Logger, count: number) {
    this.plane = plane;
    this.config = plane.config;
    this.log = log;
    this.workers = new Workers(plane, log, count);
    this.#systemd = new Systemd(log);
  }

  static async start(config: DaemonConfig, log: Logger, count: number): Promise<Supervisor> {
    // The waypoint's own registration and checks live in Ambitd's start, which workers skip.
    if (config.role === 'waypoint')
      throw new ConfigError('a waypoint runs in one process for now: set workers to 0', { field: 'workers' });
    // Fail here, in one line, rather than in every worker.
    binding();
    const plane = await ControlPlane.open(config, log);
    const s = new Supervisor(plane, log, count);
    try {
      await s.#start();
    } catch (err) {
      await s.#closeAll();
      throw err;
    }
    return s;
  }

  async #start(): Promise<void> {
    const { plane, workers, log, config } = this;
    await plane.start();
    plane.store.on('change', (mesh) => workers.broadcast({ t: 'mesh', mesh }));
    plane.certs.on('roots', (roots) => workers.broadcast({ t: 'roots', roots }));
    plane.certs.on('rotated', (identity) => workers.broadcast({ t: 'rotated', identity }));
    await this.#startHttp();
    const first = await workers.startGeneration();
    Object.assign(this.ports, {
      ...first[0]!.ports,
      admin: this.ports.admin,
      metrics: this.ports.metrics,
      ready: this.ports.ready,
    });
    if (config.registerNode) {
      const node = { name: config.nodeName, address: config.advertiseAddress, tunnelPort: this.ports.tunnel };
      if (plane.consul) await plane.consul.registerNode(node, config.role);
      else await registerInMeshFile(config.meshFile, plane.store.node(config.nodeName), node, log);
    }
    if (config.capture.enabled) await this.#gate(true);
    this.accepting = true;
    this.#systemd.ready(`serving with ${workers.count} worker(s)`);
    // The keep-alive says the supervisor's loop runs and some worker of the generation in force is up.
    this.#systemd.watchdog(() => workers.current().length > 0);
    log.info(
      { node: config.nodeName, ports: this.ports, mesh: config.meshFile, workers: workers.count },
      'ambitd ready',
    );
  }

  /**
   * SIGHUP: a new generation of workers (the code on disk now), then the old one drains for up to
   * reloadDrainTimeout. If the new workers do not become ready, they are ended and the old ones carry on.
   */
  reload(): Promise<void> {
    if (this.#stopping) return Promise.resolve();
    if (this.#reloading) {
      this.log.warn('reload asked while one is under way: ignored');
      return this.#reloading;
    }
    const run = async (): Promise<void> => {
      const { workers, log, config } = this;
      const old = workers.current();
      this.#systemd.reloading();
      log.info({ workers: workers.count }, 'reload: starting new workers');
      try {
        await workers.startGeneration();
      } catch (err) {
        log.error(
          { err: (err as Error).message },
          'reload failed: the new workers did not start; the old ones carry on',
        );
        this.#systemd.ready(`reload failed; serving with generation ${workers.generation}`);
        return;
      }
      this.#systemd.ready(`serving with ${workers.count} worker(s), generation ${workers.generation}`);
      workers.drain(old, config.reloadDrainMs, 'reload');
      log.info(
        { generation: workers.generation, draining: old.map((m) => m.pid), timeoutMs: config.reloadDrainMs },
        'reload: new workers accept; the old ones drain',
      );
    };
    this.#reloading = run().finally(() => {
      this.#reloading = undefined;
    });
    return this.#reloading;
  }

  /** SIGTERM: readiness fails at once, the listeners accept for stopGrace more, then every worker drains. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      const { config, log } = this;
      this.accepting = false;
      this.#systemd.stopping();
      log.info({ graceMs: config.stopGraceMs, drainMs: config.drainMs }, 'stopping: readiness fails now');
      await this.#reloading;
      if (config.stopGraceMs > 0) await new Promise((r) => setTimeout(r, config.stopGraceMs));
      if (this.#gateUp) await this.#gate(false);
      await this.workers.stop(config.drainMs);
      await this.#closeAll();
      log.info('stopped');
    })();
    return this.#stopping;
  }

  async #startHttp(): Promise<void> {
    const { config, plane, log } = this;
    const token = await AdminToken.create(config.stateDir);
    // /tap: the workers' events, relayed to this table's taps while there are any.
    const tap = new TapServer(plane.metrics, log);
    this.#tap = tap;
    plane.metrics.connections.onTaps = (n) => {
      if (n <= 1) this.workers.broadcast({ t: 'tap', on: n > 0 });
    };
    const admin = await startHttp(
      config.admin,
      supervisorAdminRoutes(this),
      adminAuth(token, plane.metrics, log),
      { 'GET /tap': (req, socket, head, url) => tap.upgrade(req, socket, head, url) },
    );
    const metrics = await startHttp(config.metrics, supervisorMetricsRoutes(this));
    const ready = await startHttp(config.ready, supervisorReadyRoutes(this));
    this.#http.push(admin, metrics, ready);
    this.ports.admin = portOf(admin);
    this.ports.metrics = portOf(metrics);
    this.ports.ready = portOf(ready);
  }

  /** The capture rules' fail-open gate is the host's, so the supervisor holds it across reloads. */
  async #gate(up: boolean): Promise<void> {
    const { config } = this;
    try {
      const backend = await detectBackend(config.capture.backend);
      await setGate(backend, { outboundPort: this.ports.outbound, inboundPort: this.ports.plaintext }, up);
      this.#gateUp = up;
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cannot switch the fail-open gate of the capture rules');
    }
  }

  async #closeAll(): Promise<void> {
    this.#systemd.close();
    this.#tap?.close();
    await this.plane.close();
    for (const s of this.#http) s.closeAllConnections();
    await Promise.all(this.#http.map((s) => new Promise((r) => s.close(r))));
  }
}

/** ambitd's main with workers: the supervisor, and its signals. */
export async function runSupervisor(config: DaemonConfig, log: Logger, count: number): Promise<void> {
  const running: { s?: Supervisor } = {};
  // Installed first: a SIGHUP's default is to end the process, and a reload during the start has nothing to
  // replace yet.
  process.on('SIGHUP', () => {
    if (running.s) void running.s.reload();
    else log.warn('reload asked before the start finished: ignored');
  });
  const started = await Supervisor.start(config, log, count);
  running.s = started;
  const stop = (signal: string): void => {
    log.info({ signal }, 'stopping');
    started.stop().then(
      () => process.exit(0),
      (err: Error) => {
        log.error({ err: err.message }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
