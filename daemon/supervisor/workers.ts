// The worker processes: forked with cluster, in generations. A reload starts a whole new generation and
// only once every one of its workers is ready does it tell the previous one to drain, so that there is
// always a generation accepting on the listeners the supervisor holds.
import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { DaemonConfig } from '../../lib/config.js';
import type { Logger } from '../../lib/log.js';
import type { BoundPorts } from '../own-listeners.js';
import type { ControlPlane } from './control-plane.js';
import { type HeldListeners, LISTEN_FDS_ENV, type ListenerName } from './listeners.js';
import {
  type Answers,
  type FromWorker,
  type MetricsJson,
  type Question,
  type ToWorker,
  isMessage,
} from './protocol.js';
import { Rpc } from './rpc.js';

/** How long a new worker may take to start (load, certificates, listeners) before it counts as failed. */
export const WORKER_START_TIMEOUT_MS = 120_000;
/** How long a question to a worker (status, connections, metrics) may take. */
const ASK_TIMEOUT_MS = 5_000;
/** After its drain deadline, how long a worker has to exit before it is killed. */
const EXIT_GRACE_MS = 10_000;
const RESPAWN_MAX_MS = 30_000;

/** `workers: auto` is the cores this process may use, at most workersMax. */
export function workerCount(config: Pick<DaemonConfig, 'workers' | 'workersMax'>): number {
  return config.workers === 'auto' ? Math.min(availableParallelism(), config.workersMax) : config.workers;
}

const WORKER_LISTENERS: readonly ListenerName[] = [
  'tunnel',
  'outbound',
  'outbound6',
  'plaintext',
  'plaintext6',
];

export type WorkerState = 'starting' | 'ready' | 'draining';

/** Workers whose connection ids may be alive at once, at most: ids are unique on the host below that. */
const ID_SLOTS = 1024;
let forks = 0;

export class Member {
  readonly worker: Worker;
  readonly index: number;
  readonly generation: number;
  readonly rpc: Rpc;
  state: WorkerState = 'starting';
  ports: BoundPorts | undefined;
  readonly started = Date.now();
  /** This worker's place in the host's connection ids (see hostId). */
  readonly #slot = forks++ % ID_SLOTS;

  constructor(worker: Worker, index: number, generation: number, rpc: Rpc) {
    this.worker = worker;
    this.index = index;
    this.generation = generation;
    this.rpc = rpc;
  }

  /**
   * A connection id unique on the host, from this worker's own (each counts from 1): so that `ambit top`,
   * which follows rows by id between refreshes, never mixes two workers' connections.
   */
  hostId(id: number): number {
    return id * ID_SLOTS + this.#slot;
  }

  get pid(): number | undefined {
    return this.worker.process.pid;
  }

  send(m: ToWorker): void {
    if (this.worker.isConnected()) this.worker.send(m);
  }

  ask<Q extends Question>(what: Q): Promise<Answers[Q['q']]> {
    return this.rpc.ask(what, ASK_TIMEOUT_MS);
  }
}

export class Workers {
  readonly count: number;
  readonly #plane: ControlPlane;
  readonly #log: Logger;
  readonly #members = new Set<Member>();
  /** The generation in force: its workers accept, readiness is theirs. */
  #generation = 0;
  /** The last generation forked (one ahead of #generation while a reload starts its workers). */
  #forked = 0;
  #stopping = false;
  #respawns = 0;
  /** Counters of the workers that exited, so that a scrape's sums never go back on a reload. */
  #retired: MetricsJson = [];
  #allExited: (() => void) | undefined;

  readonly #listenFds: string;
  readonly #held: HeldListeners;

  constructor(plane: ControlPlane, log: Logger, count: number, held: HeldListeners) {
    this.#held = held;
    this.#plane = plane;
    this.#log = log;
    this.count = count;
    // The data path's sockets, held by the supervisor, at the same descriptors in every worker; admin,
    // metrics and readiness are the supervisor's own.
    const { stdio, env } = held.forChild(WORKER_LISTENERS);
    this.#listenFds = env;
    // Each worker accepts on the listening socket itself (the supervisor's, shared): no hop through the
    // supervisor per connection, as cluster's round-robin would make.
    cluster.schedulingPolicy = cluster.SCHED_NONE;
    cluster.setupPrimary({
      // The worker is ambitd itself, read from disk at each fork: a reload after an upgrade runs new code.
      exec: process.argv[1],
      args: process.argv.slice(2),
      execArgv: process.execArgv,
      serialization: 'advanced',
      stdio,
    });
  }

  /** The generation in force (a reload's new one counts once all its workers are ready). */
  get generation(): number {
    return this.#generation;
  }

  /** The workers accepting now, then those draining, by generation. */
  list(): Member[] {
    return [...this.#members].sort((a, b) => b.generation - a.generation || a.index - b.index);
  }

  current(): Member[] {
    return this.list().filter((m) => m.generation === this.#generation && m.state !== 'draining');
  }

  /** Starts a generation and waits until all of its workers are ready; on failure, ends those started. */
  async startGeneration(): Promise<Member[]> {
    const generation = ++this.#forked;
    const members = Array.from({ length: this.count }, (_, i) => this.#fork(i, generation));
    try {
      await Promise.all(members.map((m) => this.#ready(m)));
    } catch (err) {
      for (const m of members) m.worker.process.kill('SIGKILL');
      throw err;
    }
    this.#generation = generation;
    return members;
  }

  /** Tells these workers to drain (stop accepting, carry what is open for at most timeoutMs, exit). */
  drain(members: readonly Member[], timeoutMs: number, reason: 'reload' | 'stop'): void {
    for (const m of members) {
      m.state = 'draining';
      m.send({ t: 'drain', timeoutMs, reason });
      setTimeout(() => {
        if (!m.worker.isDead()) {
          this.#log.warn(
            { worker: m.pid, generation: m.generation },
            'worker did not exit after its drain: killed',
          );
          m.worker.process.kill('SIGKILL');
        }
      }, timeoutMs + EXIT_GRACE_MS).unref();
    }
  }

  broadcast(m: ToWorker): void {
    for (const member of this.#members) member.send(m);
  }

  /** Every live worker's answer; a worker that does not answer in time is left out. */
  async askAll<Q extends Question>(what: Q): Promise<{ member: Member; answer: Answers[Q['q']] }[]> {
    const all = this.list();
    const answers = await Promise.allSettled(all.map((m) => m.ask(what)));
    const out: { member: Member; answer: Answers[Q['q']] }[] = [];
    answers.forEach((a, i) => {
      if (a.status === 'fulfilled') out.push({ member: all[i]!, answer: a.value });
    });
    return out;
  }

  /** The metrics of the supervisor, every live worker and the workers that exited, summed per series. */
  async metrics(own: MetricsJson): Promise<Registry> {
    const workers = await this.askAll({ q: 'metrics' });
    return AggregatorRegistry.aggregate([own, ...workers.map((w) => w.answer), this.#retired]);
  }

  /**
   * Stops every worker: each drains for at most timeoutMs; resolves once all have exited. `reload` when a
   * successor supervisor carries on (its workers accept on the same sockets).
   */
  async stop(timeoutMs: number, reason: 'reload' | 'stop' = 'stop'): Promise<void> {
    this.#stopping = true;
    if (this.#members.size === 0) return;
    const exited = new Promise<void>((resolve) => {
      this.#allExited = resolve;
    });
    this.drain(this.list(), timeoutMs, reason);
    await exited;
  }

  #fork(index: number, generation: number): Member {
    const worker = cluster.fork({
      AMBIT_WORKER: String(index),
      AMBIT_WORKER_GENERATION: String(generation),
      [LISTEN_FDS_ENV]: this.#listenFds,
    });
    const rpc = new Rpc(
      (m) => {
        if (worker.isConnected()) worker.send(m);
      },
      (what) => this.#answer(what),
    );
    const member = new Member(worker, index, generation, rpc);
    this.#members.add(member);
    worker.on('message', (m: unknown) => {
      if (!isMessage(m)) return;
      const msg = m as FromWorker;
      if (rpc.handle(msg)) return;
      this.#onMessage(member, msg);
    });
    worker.on('error', (err) =>
      this.#log.warn({ worker: member.pid, err: err.message }, 'worker channel error'),
    );
    worker.on('exit', (code, signal) => this.#onExit(member, code, signal));
    return member;
  }

  #ready(m: Member): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`worker ${m.pid} was not ready within ${WORKER_START_TIMEOUT_MS} ms`));
      }, WORKER_START_TIMEOUT_MS);
      timer.unref();
      const onReady = (): void => {
        clearTimeout(timer);
        m.worker.off('exit', onExit);
        resolve();
      };
      const onExit = (code: number | null, signal: string | null): void => {
        clearTimeout(timer);
        m.worker.off('ambit:ready', onReady);
        reject(new Error(`worker ${m.pid} exited while starting (${signal ?? `code ${code}`})`));
      };
      m.worker.once('ambit:ready', onReady);
      m.worker.once('exit', onExit);
    });
  }

  #onMessage(m: Member, msg: FromWorker): void {
    switch (msg.t) {
      case 'hello': {
        const { config, store, kind } = this.#plane;
        m.send({
          t: 'init',
          kind,
          trustDomain: config.trustDomain,
          datacenter: config.datacenter,
          mesh: store.mesh,
          logLevel: this.#log.level as Extract<ToWorker, { t: 'init' }>['logLevel'],
        });
        break;
      }
      case 'event':
        this.#plane.metrics.connections.relay({
          ...msg.event,
          id: msg.event.id === undefined ? undefined : m.hostId(msg.event.id),
          worker: m.pid,
        } as typeof msg.event);
        break;
      case 'ready':
        m.ports = msg.ports;
        if (this.#plane.metrics.connections.taps > 0) m.send({ t: 'tap', on: true });
        if (m.state === 'starting') m.state = 'ready';
        this.#log.info({ worker: m.pid, index: m.index, generation: m.generation }, 'worker ready');
        m.worker.emit('ambit:ready');
        break;
      case 'listen': {
        const { id, host, port } = msg;
        let handle: object | undefined;
        let error: string | undefined;
        try {
          handle = this.#held.acquire(host, port, m.pid ?? -1);
        } catch (err) {
          error = (err as Error).message;
        }
        if (m.worker.isConnected()) {
          m.worker.send(
            { t: 'listening', id, ...(error ? { error } : {}) } satisfies ToWorker,
            handle as never,
          );
        }
        break;
      }
      case 'unlisten':
        this.#held.release(msg.host, msg.port, m.pid ?? -1);
        break;
      case 'drained':
        AggregatorRegistry.aggregate([this.#retired, msg.counters])
          .getMetricsAsJSON()
          .then(
            (summed) => {
              this.#retired = summed as MetricsJson;
            },
            (err: Error) =>
              this.#log.warn({ err: err.message }, 'cannot keep the counters of a worker that left'),
          );
        break;
    }
  }

  #answer(what: Question): unknown {
    switch (what.q) {
      case 'issue':
        return this.#plane.issue(what.identity);
      case 'roots':
        return this.#plane.certs.trustBundle();
      default:
        throw new Error(`the supervisor does not answer ${what.q}`);
    }
  }

  #onExit(m: Member, code: number | null, signal: string | null): void {
    this.#members.delete(m);
    if (m.pid !== undefined) this.#held.forget(m.pid);
    m.rpc.close('the worker exited');
    const fields = { worker: m.pid, index: m.index, generation: m.generation, code, signal };
    if (m.state === 'draining') this.#log.info(fields, 'worker exited');
    else this.#log.error(fields, 'worker exited unexpectedly');
    if (this.#members.size === 0) this.#allExited?.();
    // A worker of the generation in force that died is replaced; one that failed while starting is the
    // reload's (or the start's) to report.
    if (this.#stopping || m.state !== 'ready' || m.generation !== this.#generation) return;
    this.#respawn(m.index, m.generation);
  }

  /** Replaces a worker of the generation in force, with backoff while replacements keep failing. */
  #respawn(index: number, generation: number): void {
    const delay = Math.min(RESPAWN_MAX_MS, 1000 * 2 ** Math.min(this.#respawns++, 5));
    setTimeout(() => {
      if (this.#stopping || generation !== this.#generation) return;
      const fresh = this.#fork(index, generation);
      this.#ready(fresh).then(
        () => {
          this.#respawns = 0;
        },
        (err: Error) => {
          this.#log.error({ err: err.message, retryInMs: delay }, 'replacement worker failed');
          fresh.worker.process.kill('SIGKILL');
          this.#respawn(index, generation);
        },
      );
    }, delay).unref();
  }
}
