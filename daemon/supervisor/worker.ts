// One worker under the supervisor (supervisor.ts): today's daemon, fed the supervisor's mesh and
// certificates, accepting on the listeners the supervisor holds (listeners.ts: inherited descriptors; the explicit
// upstream listeners are cluster's shared handles).
import type { DaemonConfig } from '../../lib/config.js';
import type { Logger } from '../../lib/log.js';
import { Ambitd } from '../daemon.js';
import { RelayedCa } from '../identity/relayed-ca.js';
import { IpcSource } from '../state/ipc-source.js';
import { drainWorker } from './drain.js';
import { inheritedListener } from './listeners.js';
import { type FromWorker, type Init, type Question, type ToWorker, isMessage } from './protocol.js';
import { Rpc } from './rpc.js';

/** How long a worker waits for the supervisor's certificate or roots before that issue fails (and is retried). */
const ASK_TIMEOUT_MS = 60_000;

/** False when the channel's backlog is long (or it closed): the caller may drop what it can. */
function send(m: FromWorker, done?: () => void): boolean {
  if (!process.connected || !process.send) throw new Error('the supervisor is gone');
  return process.send(m, undefined, undefined, done);
}

/** How long a relay that fell behind the channel waits before it taps again. */
const TAP_RETRY_MS = 1000;

export async function runWorker(loaded: DaemonConfig, log: Logger): Promise<void> {
  // Filled in once the supervisor's init has come and the daemon has started; messages may come before.
  const parts: { daemon?: Ambitd; source?: IpcSource } = {};
  let deadline: number | undefined;
  let initialised: (init: Init) => void = () => {};
  const init = new Promise<Init>((resolve) => {
    initialised = resolve;
  });

  const answer = (what: Question): unknown => {
    const d = parts.daemon;
    if (!d) throw new Error('the worker is starting');
    switch (what.q) {
      case 'connections':
        return d.metrics.connections.list(what.filter);
      case 'metrics':
        return d.metrics.registry.getMetricsAsJSON();
      case 'status':
        return {
          readiness: d.readiness(),
          open: d.metrics.connections.size,
          pool: d.pool.stats(),
          inbound: { open: d.inbound.openConnections, connecting: d.inbound.connecting },
        };
      default:
        throw new Error(`a worker does not answer ${what.q}`);
    }
  };
  const rpc = new Rpc((m) => void send(m), answer);

  // Explicit upstreams' sockets come from the supervisor, which keeps them bound across reloads.
  const listening = new Map<number, { resolve: (h: object) => void; reject: (e: Error) => void }>();
  let nextListen = 1;
  const upstreams = {
    acquire: (host: string, port: number): Promise<object> =>
      new Promise<object>((resolve, reject) => {
        const id = nextListen++;
        const timer = setTimeout(() => {
          listening.delete(id);
          reject(
            new Error(
              `the supervisor did not hand the socket of ${host}:${port} within ${ASK_TIMEOUT_MS} ms`,
            ),
          );
        }, ASK_TIMEOUT_MS);
        timer.unref();
        listening.set(id, {
          resolve: (h) => {
            clearTimeout(timer);
            resolve(h);
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        });
        send({ t: 'listen', id, host, port });
      }),
    release: (host: string, port: number): void => {
      if (process.connected) send({ t: 'unlisten', host, port });
    },
  };

  // Relaying tap events costs nothing until the supervisor has someone tapping.
  let untap: (() => void) | undefined;
  let tapping = false;
  const tap = (on: boolean): void => {
    tapping = on;
    untap?.();
    untap = undefined;
    const table = parts.daemon?.metrics.connections;
    if (!on || !table) return;
    untap = table.tap(
      {},
      (event) => send({ t: 'event', event }),
      () => {
        log.warn('tap relay fell behind the channel to the supervisor: events dropped');
        untap = undefined;
        setTimeout(() => tapping && !untap && tap(true), TAP_RETRY_MS).unref();
      },
    );
  };

  const drain = (timeoutMs: number, reason: string): void => {
    const at = Date.now() + timeoutMs;
    if (deadline !== undefined) {
      deadline = Math.min(deadline, at); // a stop during a reload's drain shortens it
      return;
    }
    deadline = at;
    log.info({ reason, timeoutMs }, 'draining: no new connections here');
    const d = parts.daemon;
    const finish = async (): Promise<void> => {
      const remaining = d ? await drainWorker(d, () => deadline ?? at, log) : 0;
      const counters = d
        ? (await d.metrics.registry.getMetricsAsJSON()).filter((m) => String(m.type) === 'counter') // prom-client's types say an enum; it sends the name
        : [];
      send({ t: 'drained', remaining, counters: counters }, () => process.exit(0));
    };
    finish().catch((err: Error) => {
      log.error({ err: err.message }, 'drain failed');
      process.exit(1);
    });
  };

  process.on('message', (m: unknown, handle: unknown) => {
    if (!isMessage(m)) return;
    const msg = m as ToWorker;
    if (rpc.handle(msg)) return;
    switch (msg.t) {
      case 'listening': {
        const p = listening.get(msg.id);
        listening.delete(msg.id);
        if (!p) break;
        if (msg.error || typeof handle !== 'object' || handle === null)
          p.reject(new Error(msg.error ?? 'the supervisor sent no socket'));
        else p.resolve(handle);
        break;
      }
      case 'init':
        initialised(msg);
        break;
      case 'mesh':
        parts.source?.apply(msg.mesh);
        break;
      case 'roots':
        try {
          parts.daemon?.certs.setRoots(msg.roots);
        } catch (err) {
          log.error({ err: (err as Error).message }, 'cannot use the roots the supervisor sent');
        }
        break;
      case 'rotated':
        if (parts.daemon?.certs.has(msg.identity)) {
          parts.daemon.certs
            .rotate(msg.identity)
            .catch((err: Error) => log.warn({ identity: msg.identity, err: err.message }, 'rotation failed'));
        }
        break;
      case 'logLevel':
        log.level = msg.level;
        break;
      case 'drain':
        drain(msg.timeoutMs, msg.reason);
        break;
      case 'tap':
        tap(msg.on);
        break;
    }
  });
  // The supervisor decides when workers stop (a terminal's ^C reaches the whole process group); when the
  // supervisor itself is gone, cluster ends the worker on the channel's disconnect.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () =>
      log.debug({ signal }, 'signal ignored: the supervisor stops and reloads workers'),
    );
  }

  send({ t: 'hello' });
  const i = await init;
  log.level = i.logLevel;
  const config: DaemonConfig = { ...loaded, trustDomain: i.trustDomain, datacenter: i.datacenter };
  const source = new IpcSource(i.mesh);
  parts.source = source;
  const ca = new RelayedCa(i.kind, {
    issue: (identity, ttlMs) => rpc.ask({ q: 'issue', identity, ttlMs }, ASK_TIMEOUT_MS),
    roots: () => rpc.ask({ q: 'roots' }, ASK_TIMEOUT_MS),
  });
  const daemon = await Ambitd.start(config, log, {
    ca,
    source,
    held: (name) => inheritedListener(name),
    upstreams,
  });
  parts.daemon = daemon;
  if (tapping) tap(true);
  if (deadline !== undefined) return; // asked to drain while starting
  send({ t: 'ready', ports: daemon.ports });
}
