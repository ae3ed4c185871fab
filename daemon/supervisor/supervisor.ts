// ambitd with workers: the supervisor holds the listening sockets (listeners.ts), the one control plane
// and certificate manager of the host, and the admin, metrics and readiness ports; the workers
// (worker.ts) carry the traffic. SIGHUP reloads (new workers first, then the old ones drain), or, when
// the code on disk changed since this supervisor started (an upgrade), re-execs; SIGUSR2 re-execs: a new
// supervisor, handed the same sockets, starts its own workers, and only once they accept does this one
// let go and drain. SIGTERM stops (readiness fails first, the listeners close after stopGrace, then the
// drain).
import { type ChildProcess, spawn } from 'node:child_process';
import type { Server } from 'node:http';
import { Server as NetServer } from 'node:net';
import { detectBackend, setGate } from '../../lib/capture/iptables.js';
import type { DaemonConfig } from '../../lib/config.js';
import type { Logger } from '../../lib/log.js';
import type { ReloadKind, ReloadMode, ReloadOutcome } from '../../lib/reload.js';
import { AdminToken, portOf, startHttp } from '../admin/http.js';
import { adminAuth } from '../admin/routes.js';
import { TapServer } from '../admin/tap.js';
import { binding } from '../native/index.js';
import { registerInMeshFile } from '../reconcile.js';
import { baseNode } from '../state/store.js';
import { WaypointRegistration } from '../waypoint/registration.js';
import {
  type SupervisorView,
  supervisorAdminRoutes,
  supervisorMetricsRoutes,
  supervisorReadyRoutes,
} from './admin.js';
import { codeStamp } from './code-stamp.js';
import { ControlPlane } from './control-plane.js';
import { HeldListeners, LISTEN_FDS_ENV, type ListenerName } from './listeners.js';
import { Systemd } from './systemd.js';
import { WORKER_START_TIMEOUT_MS, Workers } from './workers.js';

/** Set in a re-exec'd supervisor's environment: the pid of the supervisor it takes over from. */
export const TAKE_OVER_ENV = 'AMBIT_TAKE_OVER_FROM';
/** How long the old supervisor still answers its HTTP clients after handing over, past keep-alive. */
const HTTP_LINGER_MS = 1_000;
/** After a take-over, how long the workers have to claim the upstream sockets they inherited. */
const SWEEP_AFTER_MS = 10_000;

/** What the new supervisor tells the one it replaces once its workers accept and its ports serve. */
interface TakenOver {
  t: 'taken-over';
}
const isTakenOver = (m: unknown): m is TakenOver =>
  typeof m === 'object' && m !== null && (m as { t?: unknown }).t === 'taken-over';

/** The sockets of the configuration: the data path's (capture's only when on), admin, metrics, readiness. */
function wanted(config: DaemonConfig): Partial<Record<ListenerName, DaemonConfig['tunnel']>> {
  return {
    tunnel: config.tunnel,
    admin: config.admin,
    metrics: config.metrics,
    ready: config.ready,
    ...(config.capture.enabled ? { outbound: config.outbound, plaintext: config.inboundPlaintext } : {}),
  };
}

export class Supervisor implements SupervisorView {
  readonly config: DaemonConfig;
  readonly log: Logger;
  readonly plane: ControlPlane;
  readonly workers: Workers;
  accepting = false;
  readonly ports = { tunnel: 0, admin: 0, metrics: 0, ready: 0, outbound: 0, plaintext: 0 };
  #http: Server[] = [];
  /** The reload or re-exec under way: one at a time, and one asked meanwhile answers with it. */
  #changing: Promise<ReloadOutcome> | undefined;
  #stopping: Promise<void> | undefined;
  #gateUp = false;
  #tap: TapServer | undefined;
  readonly #systemd: Systemd;
  readonly #held: HeldListeners;
  /** The pid of the supervisor this one took over from (a re-exec), if any. */
  readonly #predecessor: number | undefined;
  /** The code on disk when this supervisor started: SIGHUP re-execs once it differs (an upgrade). */
  readonly #stamp: string;
  #successor: ChildProcess | undefined;
  replacedBy: number | undefined;
  /** With role waypoint: its instance in the catalog, which the workers serve. */
  #waypoint: WaypointRegistration | undefined;

  private constructor(plane: ControlPlane, log: Logger, count: number, held: HeldListeners) {
    this.plane = plane;
    this.config = plane.config;
    this.log = log;
    this.#held = held;
    this.workers = new Workers(plane, log, count, held);
    this.#systemd = new Systemd(log);
    const from = Number(process.env[TAKE_OVER_ENV]);
    this.#predecessor = held.inherited && Number.isInteger(from) && from > 0 ? from : undefined;
    this.#stamp = codeStamp();
  }

  static async start(config: DaemonConfig, log: Logger, asked: number): Promise<Supervisor> {
    // A waypoint's rate limits, circuit breakers and outlier ejections are per instance (Envoy's are per
    // waypoint pod): two workers would be two instances under one catalog entry, each allowing the whole
    // limit. One worker keeps reloads and re-execs that drop nothing.
    const count = config.role === 'waypoint' ? Math.min(asked, 1) : asked;
    if (count < asked) {
      log.warn(
        { workers: asked },
        'a waypoint runs one worker (its limits are per instance): starting 1; run more waypoint instances to scale',
      );
    }
    // Fail here, in one line, rather than in every worker.
    binding();
    const held = HeldListeners.adopt() ?? HeldListeners.open(wanted(config));
    if (!held.inherited && config.capture.enabled) {
      if (config.outbound.host === '0.0.0.0') held.twin('outbound6', held.port('outbound')!);
      if (config.inboundPlaintext.host === '0.0.0.0') held.twin('plaintext6', held.port('plaintext')!);
    }
    // Not for this supervisor's own children: a worker inherits only what its fork passes.
    delete process.env[LISTEN_FDS_ENV];
    let plane: ControlPlane;
    try {
      plane = await ControlPlane.open(config, log);
    } catch (err) {
      held.close();
      throw err;
    }
    const s = new Supervisor(plane, log, count, held);
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
    // Taking over: the predecessor serves the HTTP ports until this one's workers accept; then both do,
    // for a moment, on the same sockets.
    if (this.#predecessor === undefined) await this.#startHttp();
    const first = await workers.startGeneration();
    Object.assign(this.ports, {
      ...first[0]!.ports,
      admin: this.ports.admin,
      metrics: this.ports.metrics,
      ready: this.ports.ready,
    });
    await plane.startPods(this.ports.tunnel);
    if (config.registerNode) {
      const node = { name: config.nodeName, address: config.advertiseAddress, tunnelPort: this.ports.tunnel };
      if (plane.consul) await plane.consul.registerNode(node, config.role);
      else await registerInMeshFile(config.meshFile, baseNode(plane.store, config.nodeName), node, log);
      if (config.role === 'waypoint') {
        // A successor registers the same instance again: same id, same tunnel port, nothing changes.
        this.#waypoint = new WaypointRegistration(config, plane.store, plane.consul?.client, log);
        await this.#waypoint.register(this.ports.tunnel);
      }
    }
    if (config.capture.enabled) await this.#gate(true);
    await plane.captureFollowsPods();
    this.accepting = true;
    if (this.#predecessor !== undefined) {
      // Only now, ready in every respect: a probe that lands here must not see a successor starting.
      await this.#startHttp();
      // Upstream sockets the predecessor held that no worker here wants: the mesh dropped them meanwhile.
      setTimeout(() => this.#held.sweep(), SWEEP_AFTER_MS).unref();
    }
    // A successor is not the service's main process until its predecessor says so (MAINPID): that one
    // sends READY=1 for it.
    if (this.#predecessor === undefined) this.#systemd.ready(`serving with ${workers.count} worker(s)`);
    // The keep-alive says the supervisor's loop runs and some worker of the generation in force is up.
    this.#systemd.watchdog(() => workers.current().length > 0);
    log.info(
      {
        node: config.nodeName,
        ports: this.ports,
        mesh: config.meshFile,
        workers: workers.count,
        pid: process.pid,
        ...(this.#predecessor !== undefined ? { tookOverFrom: this.#predecessor } : {}),
      },
      'ambitd ready',
    );
    if (this.#predecessor !== undefined && process.send) {
      process.send({ t: 'taken-over' } satisfies TakenOver);
      // The channel was only for that word; the predecessor exits once it has drained.
      process.disconnect();
    }
  }

  /** `POST /reload?mode=`: what SIGHUP does (`auto`), or a reload or a re-exec, answered once it is over. */
  reloadAs(mode: ReloadMode): Promise<ReloadOutcome> {
    if (mode === 'reload') return this.reload();
    return mode === 'reexec' ? this.reexec() : this.hangUp();
  }

  /** SIGHUP: a re-exec when the code on disk is not the code this supervisor runs, else a reload. */
  hangUp(): Promise<ReloadOutcome> {
    const now = codeStamp();
    if (now !== this.#stamp) {
      this.log.info('reload: the code on disk changed since the start: re-exec');
      return this.reexec();
    }
    return this.reload();
  }

  /**
   * SIGUSR2: a new supervisor from the code on disk, handed every socket this one holds. It starts its
   * own control plane and workers; once they accept and it serves the HTTP ports, this one hands the
   * service over (systemd's MAINPID), stops accepting, drains its workers (reloadDrainTimeout) and exits.
   * If the new one fails to start, it is ended and this one carries on.
   */
  reexec(): Promise<ReloadOutcome> {
    return this.#change('reexec', () => this.#reexec());
  }

  /**
   * Starts a reload or re-exec unless one is under way (then answers with that one) or it cannot be now:
   * stopping, or already replaced.
   */
  #change(kind: ReloadKind, run: () => Promise<ReloadOutcome>): Promise<ReloadOutcome> {
    const no = (error: string): Promise<ReloadOutcome> =>
      Promise.resolve({ ok: false, kind, pid: process.pid, generation: null, error });
    if (this.#stopping) return no('ambitd is stopping');
    if (this.replacedBy !== undefined) return no(`replaced by pid ${this.replacedBy}, which serves now`);
    if (this.#changing) {
      this.log.warn(
        `${kind === 'reexec' ? 're-exec' : 'reload'} asked while a reload or re-exec is under way: it answers with that one`,
      );
      return this.#changing;
    }
    this.#changing = run().finally(() => {
      this.#changing = undefined;
    });
    return this.#changing;
  }

  async #reexec(): Promise<ReloadOutcome> {
    const { log } = this;
    this.#systemd.reloading();
    const { stdio, env: fds } = this.#held.forChild();
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      [LISTEN_FDS_ENV]: fds,
      [TAKE_OVER_ENV]: String(process.pid),
    };
    // systemd names the main pid the watchdog is for; the successor is that once it takes over.
    env.WATCHDOG_PID = undefined;
    log.info({ listeners: fds }, 're-exec: starting a new supervisor with the same listeners');
    const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...process.argv.slice(2)], {
      stdio,
      env,
    });
    this.#successor = child;
    const outcome = await new Promise<string | undefined>((resolve) => {
      const timer = setTimeout(
        () => resolve(`not ready within ${WORKER_START_TIMEOUT_MS} ms`),
        WORKER_START_TIMEOUT_MS,
      );
      timer.unref();
      child.on('message', (m: unknown) => {
        if (!isTakenOver(m)) return;
        clearTimeout(timer);
        resolve(undefined);
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        resolve(`exited while starting (${signal ?? `code ${code}`})`);
      });
      child.once('error', (err) => {
        clearTimeout(timer);
        resolve(err.message);
      });
    });
    if (outcome !== undefined || child.pid === undefined || this.#stopping) {
      child.kill('SIGKILL');
      this.#successor = undefined;
      const error = this.#stopping ? 'ambitd is stopping' : (outcome ?? 'the new supervisor has no pid');
      if (!this.#stopping) {
        log.error({ err: error }, 're-exec failed: the new supervisor did not start; this one carries on');
        this.#systemd.ready(`re-exec failed; serving with generation ${this.workers.generation}`);
      }
      return { ok: false, kind: 'reexec', pid: process.pid, generation: this.workers.generation, error };
    }
    // Answered now, while this one drains in the background: the successor serves from here on.
    this.#handOver(child).catch((err: Error) => {
      log.error({ err: err.message }, 're-exec: the drain after the hand-over failed; exiting');
      process.exit(1);
    });
    return { ok: true, kind: 'reexec', pid: child.pid, generation: null };
  }

  /** The successor serves: this supervisor lets go of everything, drains its workers and exits. */
  async #handOver(child: ChildProcess): Promise<void> {
    const { config, log } = this;
    const pid = child.pid!;
    this.replacedBy = pid;
    this.accepting = false;
    this.#systemd.handOver(pid, `replaced by pid ${pid}`);
    this.#systemd.close();
    log.info(
      { successor: pid, drainMs: config.reloadDrainMs },
      're-exec: replaced; draining this supervisor',
    );
    // Its HTTP clients learn to go to the new one: answers say `connection: close`, and what is left goes
    // once a keep-alive would have timed out.
    const httpClosed = Promise.all(
      this.#http.map((server) => {
        server.on('request', (_req, res) => res.setHeader('connection', 'close'));
        setTimeout(() => server.closeAllConnections(), server.keepAliveTimeout + HTTP_LINGER_MS).unref();
        // net's close, not http's: http's also closes the idle keep-alive connections at once, racing a
        // client that is sending its next request on one. Past the keep-alive timeout no client reuses them.
        return new Promise<void>((resolve) => NetServer.prototype.close.call(server, () => resolve()));
      }),
    );
    // The successor keeps the waypoint's check passing from now on; a deregistration would remove its entry.
    await this.#waypoint?.close(false);
    await this.workers.stop(config.reloadDrainMs, 'reload');
    // Taps are upgraded sockets, which the HTTP servers' close would wait for: they end first (a tap
    // client reconnects, to the successor).
    this.#tap?.close();
    // Not before its HTTP clients are gone: an exit would cut a request sent on an idle keep-alive one.
    await httpClosed;
    await this.plane.close();
    this.#held.close();
    if (child.connected) child.disconnect();
    child.unref();
    this.#successor = undefined;
    log.info({ successor: pid }, 're-exec: done; exiting');
    process.exit(0);
  }

  /**
   * SIGHUP: a new generation of workers (the code on disk now), then the old one drains for up to
   * reloadDrainTimeout. If the new workers do not become ready, they are ended and the old ones carry on.
   */
  reload(): Promise<ReloadOutcome> {
    return this.#change('reload', async (): Promise<ReloadOutcome> => {
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
        return {
          ok: false,
          kind: 'reload',
          pid: process.pid,
          generation: workers.generation,
          error: `the new workers did not start: ${(err as Error).message}`,
        };
      }
      this.#systemd.ready(`serving with ${workers.count} worker(s), generation ${workers.generation}`);
      workers.drain(old, config.reloadDrainMs, 'reload');
      log.info(
        { generation: workers.generation, draining: old.map((m) => m.pid), timeoutMs: config.reloadDrainMs },
        'reload: new workers accept; the old ones drain',
      );
      return { ok: true, kind: 'reload', pid: process.pid, generation: workers.generation };
    });
  }

  /** SIGTERM: readiness fails at once, the listeners accept for stopGrace more, then every worker drains. */
  stop(): Promise<void> {
    // Replaced: the successor owns the host now (its gate, its sockets); this one ends with its drain.
    if (this.replacedBy !== undefined) {
      this.log.info(
        { successor: this.replacedBy },
        'stop asked while handing over: this supervisor exits once drained',
      );
      return new Promise(() => {});
    }
    this.#stopping ??= (async () => {
      const { config, log } = this;
      this.accepting = false;
      this.#systemd.stopping();
      log.info({ graceMs: config.stopGraceMs, drainMs: config.drainMs }, 'stopping: readiness fails now');
      await this.#changing;
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
    const held = this.#held;
    const token = await AdminToken.create(config.stateDir, this.#predecessor !== undefined);
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
      held.take('admin'),
    );
    const metrics = await startHttp(
      config.metrics,
      supervisorMetricsRoutes(this),
      undefined,
      {},
      held.take('metrics'),
    );
    const ready = await startHttp(
      config.ready,
      supervisorReadyRoutes(this),
      undefined,
      {},
      held.take('ready'),
    );
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
    this.#successor?.kill('SIGKILL');
    this.#systemd.close();
    this.#tap?.close();
    await this.#waypoint?.close(true);
    await this.plane.close();
    for (const s of this.#http) s.closeAllConnections();
    await Promise.all(this.#http.map((s) => new Promise((r) => s.close(r))));
    this.#held.close();
  }
}

/** ambitd's main with workers: the supervisor, and its signals. */
export async function runSupervisor(config: DaemonConfig, log: Logger, count: number): Promise<void> {
  const running: { s?: Supervisor } = {};
  // Installed first: a SIGHUP's default is to end the process, and a reload during the start has nothing to
  // replace yet.
  process.on('SIGHUP', () => {
    if (running.s) void running.s.hangUp();
    else log.warn('reload asked before the start finished: ignored');
  });
  process.on('SIGUSR2', () => {
    if (running.s) void running.s.reexec();
    else log.warn('re-exec asked before the start finished: ignored');
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
