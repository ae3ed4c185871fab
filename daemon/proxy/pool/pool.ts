import { TunnelError } from '../../../lib/errors.js';
import type { Logger } from '../../../lib/log.js';
import type { CertificateManager } from '../../identity/manager.js';
import { type Refusals, peerAbuseReason } from '../../limits/refusal.js';
import type { Metrics } from '../../metrics/metrics.js';
import { ErrorCode } from '../h2/codes.js';
import type { H2Headers, H2Stream } from '../h2/stream.js';
import type { H2Limits } from '../hbone.js';
import type { SocketFactory } from '../sockets.js';
import { type PoolKey, TunnelSession, poolKeyString } from './session.js';

/** Tries of a stream its peer refused unprocessed (REFUSED_STREAM), each on another or a new session. */
const REFUSED_STREAM_TRIES = 3;

export interface PoolOptions {
  /** Streams one session carries at once before another is opened (ztunnel: 100). */
  maxStreams: number;
  /** A session with no streams for this long is closed (ztunnel: 5 min). */
  idleTimeoutMs: number;
  connectTimeoutMs: number;
  /** Liveness PING period; a session whose PING is not answered within twice this is destroyed. */
  pingIntervalMs: number;
  /** A peer daemon's abuse of our client sessions is bounded as on the server side (docs/limits.md). */
  h2Limits?: H2Limits;
  /** Counts a peer's protocol abuse that ends a session (the reason its 'error' carries). */
  refusals?: Refusals;
  /** Opens the TCP connection under each session (marked when capture is on). */
  sockets: SocketFactory;
}

export interface TunnelResponse {
  readonly stream: H2Stream;
  readonly status: number;
}

/**
 * Pooled outbound HBONE sessions. Connections with the same key share sessions, so 50 connections from one
 * workload to one peer cost one TLS handshake; concurrent first connections wait for the same handshake.
 */
export class Pool {
  readonly #certs: CertificateManager;
  readonly #opts: PoolOptions;
  readonly #log: Logger;
  readonly #sessions = new Map<string, TunnelSession[]>();
  readonly #pending = new Map<string, Promise<TunnelSession>>();
  readonly #idleTimers = new Map<TunnelSession, NodeJS.Timeout>();
  readonly #pinger: NodeJS.Timeout;
  readonly #metrics: Metrics;
  #closed = false;

  constructor(certs: CertificateManager, opts: PoolOptions, logger: Logger, metrics: Metrics) {
    this.#certs = certs;
    this.#metrics = metrics;
    this.#opts = opts;
    this.#log = logger;
    this.#pinger = setInterval(() => this.#ping(), opts.pingIntervalMs).unref();
  }

  /**
   * Opens a CONNECT stream through a pooled session and waits for the peer's answer. A stream the peer
   * refused (REFUSED_STREAM: past its GOAWAY, as a draining daemon or worker sends) was never processed
   * (RFC 9113, 8.7), so it is tried once more on another session rather than failing the connection.
   */
  async connect(key: PoolKey, headers: H2Headers): Promise<TunnelResponse> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#connectOnce(key, headers);
      } catch (err) {
        // Past a GOAWAY the session is closed to new streams, so the retry takes another (or a new) one.
        // More than one: during a peer's reload the new session itself may land on a worker that has just
        // begun to drain, and refuses it too. Bounded, as each try is a refusal the peer chose to send.
        if (!(err instanceof RefusedStream) || attempt >= REFUSED_STREAM_TRIES) throw err;
      }
    }
  }

  async #connectOnce(key: PoolKey, headers: H2Headers): Promise<TunnelResponse> {
    const session = await this.#acquire(key);
    session.active++;
    this.#clearIdle(session);
    let stream: H2Stream;
    try {
      stream = session.request(headers);
    } catch (err) {
      this.#release(session);
      throw new TunnelError(`cannot open a stream: ${(err as Error).message}`, { cause: err });
    }
    stream.on('close', () => this.#release(session));
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        stream.removeListener('response', onResponse);
        reject(new TunnelError(`tunnel stream failed: ${err.message}`, { cause: err }));
      };
      const onClose = (): void =>
        stream.rstCode === ErrorCode.REFUSED_STREAM
          ? reject(new RefusedStream())
          : onError(new Error(`stream closed with code ${stream.rstCode}`));
      const onResponse = (h: H2Headers): void => {
        stream.removeListener('error', onError);
        stream.removeListener('close', onClose);
        resolve({ stream, status: Number(h[':status'] ?? 0) });
      };
      stream.once('response', onResponse);
      stream.once('error', onError);
      stream.once('close', onClose);
    });
  }

  async #acquire(key: PoolKey): Promise<TunnelSession> {
    const k = poolKeyString(key);
    for (;;) {
      const ready = this.#sessions.get(k)?.find((s) => s.hasCapacity);
      if (ready) return ready;
      const pending = this.#pending.get(k);
      if (pending) {
        // A failed shared handshake fails every waiter, rather than each retrying in a storm.
        const s = await pending;
        if (s.hasCapacity) return s;
        continue;
      }
      const opening = this.#open(key, k);
      this.#pending.set(k, opening);
      try {
        return await opening;
      } finally {
        this.#pending.delete(k);
      }
    }
  }

  async #open(key: PoolKey, k: string): Promise<TunnelSession> {
    const session = await TunnelSession.open(key, this.#certs, this.#opts);
    if (this.#closed) {
      // The daemon stopped during the handshake: nothing may outlive it.
      session.destroy();
      throw new TunnelError('the daemon is stopping');
    }
    this.#metrics.handshakes.inc({ direction: 'outbound' });
    const list = this.#sessions.get(k);
    if (list) list.push(session);
    else this.#sessions.set(k, [session]);
    const forget = (): void => {
      this.#clearIdle(session);
      const l = this.#sessions.get(k);
      if (!l) return;
      const i = l.indexOf(session);
      if (i >= 0) l.splice(i, 1);
      if (l.length === 0) this.#sessions.delete(k);
    };
    session.h2.once('close', forget);
    const refusals = this.#opts.refusals;
    if (refusals) {
      const where = { peer: key.peer, address: key.address, port: key.port };
      const abuse = (err: Error): void => {
        const reason = peerAbuseReason(err);
        if (reason)
          refusals.refuse('outbound', reason, 'tunnel session ended', { ...where, err: err.message });
      };
      session.h2.on('error', abuse);
      session.h2.socket.on('error', abuse);
    }
    session.h2.once('goaway', () => {
      session.draining = true;
      forget();
    });
    this.#log.debug(
      { source: key.source, peer: key.peer, address: key.address, port: key.port },
      'tunnel session opened',
    );
    return session;
  }

  #release(session: TunnelSession): void {
    session.active--;
    if (session.active > 0) return;
    if (session.draining) {
      session.close();
      return;
    }
    this.#clearIdle(session);
    this.#idleTimers.set(
      session,
      setTimeout(() => {
        this.#idleTimers.delete(session);
        if (session.active === 0) session.close();
      }, this.#opts.idleTimeoutMs).unref(),
    );
  }

  #clearIdle(session: TunnelSession): void {
    const t = this.#idleTimers.get(session);
    if (t) {
      clearTimeout(t);
      this.#idleTimers.delete(session);
    }
  }

  #ping(): void {
    for (const list of this.#sessions.values()) {
      for (const s of list) {
        if (s.closed) continue;
        const deadline = setTimeout(() => s.destroy(), this.#opts.pingIntervalMs * 2).unref();
        const sent = s.h2.ping((err) => {
          clearTimeout(deadline);
          if (err) s.destroy();
        });
        if (!sent) clearTimeout(deadline);
      }
    }
  }

  /** New connections from `source` use new sessions (a rotated certificate); open ones finish where they are. */
  drainSource(source: string): void {
    for (const list of this.#sessions.values()) for (const s of list) if (s.key.source === source) s.drain();
  }

  drainAll(): void {
    for (const list of this.#sessions.values()) for (const s of list) s.drain();
  }

  stats(): { sessions: number; streams: number } {
    let sessions = 0;
    let streams = 0;
    for (const list of this.#sessions.values()) {
      sessions += list.length;
      for (const s of list) streams += s.active;
    }
    return { sessions, streams };
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#pinger);
    for (const list of this.#sessions.values()) for (const s of list) s.destroy();
    this.#sessions.clear();
  }
}

/** The peer refused the stream before processing it: safe to open again elsewhere. */
class RefusedStream extends TunnelError {
  constructor() {
    super('tunnel stream failed: stream closed with code 7 (refused, not processed)');
  }
}
