import { type AddressInfo, type Server, type Socket, createServer } from 'node:net';
import { DEFAULT_LIMITS, type Limits, type Listen } from '../../../lib/config.js';
import type { Logger } from '../../../lib/log.js';
import { unmapIp } from '../../../lib/net/addresses.js';
import { uriSans } from '../../identity/spiffe.js';
import type { FdReserve } from '../../limits/fds.js';
import { type Refusals, peerAbuseReason } from '../../limits/refusal.js';
import type { Metrics } from '../../metrics/metrics.js';
import { TlsConnection } from '../../tls/connection.js';
import { TlsContext } from '../../tls/context.js';
import { H2Session } from '../h2/session.js';
import { h2Options } from '../hbone.js';
import type { Inbound } from './inbound.js';

export interface TunnelServerDeps {
  /** Where each CONNECT stream goes: the inbound data path, or a waypoint's (daemon/waypoint). */
  readonly inbound: Pick<Inbound, 'handleStream'>;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Trust bundle every client certificate must chain to. */
  readonly roots: () => string[];
  /** The certificate to present for the identity a client names in SNI, if it is a local workload's. */
  readonly contextForSni: (servername: string) => TlsContext | undefined;
  readonly refusals: Refusals;
  readonly limits?: Limits;
  /** The descriptor reserve; absent: only the kernel's EMFILE refuses. */
  readonly fds?: FdReserve | undefined;
}

/** The key peers without a SPIFFE ID share for maxConnectionsPerIdentity: they get 401 for every CONNECT. */
const NO_IDENTITY = '(no SPIFFE ID)';

/**
 * The HBONE listener (15008): TLS 1.3 only, ALPN h2, a client certificate required and verified against the
 * trust bundle. Bytes from a peer never crash the daemon: a bad handshake or a bad frame ends that session.
 * What a peer can make it hold is bounded (docs/limits.md): connections in all, handshakes in progress (in
 * all and per source address) and their duration, sessions per identity, and idle sessions.
 */
export class TunnelServer {
  readonly server: Server;
  readonly #d: TunnelServerDeps;
  readonly #limits: Limits;
  readonly #sessions = new Set<H2Session>();
  readonly #handshaking = new Set<TlsConnection>();
  /** A graceful close is under way: a handshake that completes now gets its GOAWAY at once. */
  #draining = false;
  readonly #handshakesBySource = new Map<string, number>();
  readonly #sessionsByIdentity = new Map<string, number>();
  /** Accepted connections still open, handshaking or up. */
  #connections = 0;
  /** Starts each handshake; the certificate comes from the workload's own context once SNI names it. */
  #context: TlsContext | undefined;

  constructor(deps: TunnelServerDeps) {
    this.#d = deps;
    this.#limits = deps.limits ?? DEFAULT_LIMITS;
    // Paused: the TLS connection reads the socket's descriptor itself, from the first byte.
    // No Nagle on accepted sockets (applied at accept, before the handshake).
    this.server = createServer({ pauseOnConnect: true, noDelay: true }, (socket) => this.#accept(socket));
    // accept(2) failing (EMFILE) is an 'error' on the server, which would otherwise throw.
    this.server.on('error', (err: NodeJS.ErrnoException) => {
      if (err.syscall !== 'accept') return;
      if (deps.fds) deps.fds.refuse('inbound', 'tunnel accept failed', { err: err.message });
      else deps.refusals.refuse('inbound', 'fd_reserve', 'tunnel accept failed', { err: err.message });
    });
  }

  /** Connections open now (handshaking or up), handshakes in progress, and sessions. */
  stats(): { connections: number; handshaking: number; sessions: number } {
    return {
      connections: this.#connections,
      handshaking: this.#handshaking.size,
      sessions: this.#sessions.size,
    };
  }

  #ctx(): TlsContext {
    if (!this.#context) {
      const d = this.#d;
      this.#context = new TlsContext({
        roots: d.roots(),
        sni: (name) => d.contextForSni(name),
        // A server connection keeps the rate of the context its handshake started with.
        keyUpdateRate: this.#limits.keyUpdateRate,
      });
    }
    return this.#context;
  }

  /** Refused before any TLS work: the socket is closed unread, which costs a peer nothing to retry. */
  #drop(socket: Socket, reason: 'handshake_limit' | 'connection_limit', message: string): void {
    this.#d.refusals.refuse('inbound', reason, message, { src: unmapIp(socket.remoteAddress ?? '') });
    socket.destroy();
  }

  #accept(socket: Socket): void {
    const d = this.#d;
    const l = this.#limits;
    const src = unmapIp(socket.remoteAddress ?? '');
    if (this.#connections >= l.maxConnections) {
      this.#drop(socket, 'connection_limit', `tunnel refused: ${l.maxConnections} connections open`);
      return;
    }
    if (this.#handshaking.size >= l.maxHandshakes) {
      this.#drop(socket, 'handshake_limit', `tunnel refused: ${l.maxHandshakes} handshakes in progress`);
      return;
    }
    const fromSource = this.#handshakesBySource.get(src) ?? 0;
    if (fromSource >= l.maxHandshakesPerSource) {
      this.#drop(
        socket,
        'handshake_limit',
        `tunnel refused: ${l.maxHandshakesPerSource} handshakes in progress from this source`,
      );
      return;
    }
    // The binding duplicates the descriptor: one more is taken while the socket is handed over.
    if (d.fds && !d.fds.admit('inbound', 'tunnel refused: descriptor reserve reached', { src }, 2)) {
      socket.destroy();
      return;
    }
    let tls: TlsConnection;
    try {
      tls = new TlsConnection(socket, this.#ctx(), 'server');
    } catch (err) {
      if (d.fds && (err as Error).message.includes('EMFILE')) {
        d.fds.refuse('inbound', 'tunnel refused: out of descriptors', { src, err: (err as Error).message });
        return;
      }
      d.refusals.refuse('inbound', 'tls_failure', 'tunnel connection dropped', {
        src,
        err: (err as Error).message,
      });
      return;
    }
    this.#connections++;
    this.#handshaking.add(tls);
    this.#handshakesBySource.set(src, fromSource + 1);
    let handshaking = true;
    const handshakeOver = (): void => {
      if (!handshaking) return;
      handshaking = false;
      clearTimeout(timer);
      this.#handshaking.delete(tls);
      const n = (this.#handshakesBySource.get(src) ?? 1) - 1;
      if (n <= 0) this.#handshakesBySource.delete(src);
      else this.#handshakesBySource.set(src, n);
    };
    // Our own timer rather than the connection's, so that a timeout is counted as what it is.
    const timer = setTimeout(() => {
      if (!handshaking) return;
      handshakeOver();
      tls.removeListener('error', refused);
      d.refusals.refuse('inbound', 'handshake_timeout', 'tunnel handshake timed out', {
        src,
        timeoutMs: l.handshakeTimeoutMs,
      });
      tls.destroy();
    }, l.handshakeTimeoutMs);
    timer.unref();
    // Rate-limited like every refusal: a flood of broken handshakes must not become a flood of log lines.
    const refused = (err: Error): void => {
      d.refusals.refuse('inbound', 'tls_failure', 'tunnel handshake refused', {
        src: tls.remoteAddress,
        err: err.message,
      });
    };
    tls.once('error', refused);
    tls.once('close', () => {
      handshakeOver();
      this.#connections--;
    });
    tls.once('secure', () => {
      handshakeOver();
      tls.removeListener('error', refused);
      this.#secured(tls);
    });
  }

  #secured(tls: TlsConnection): void {
    const d = this.#d;
    const l = this.#limits;
    d.metrics.handshakes.inc({ direction: 'inbound' });
    // After the handshake the TLS layer reports a peer's abuse (a bad record, a KeyUpdate flood, an alert)
    // with its reason; anything else is the end of a connection, as before.
    tls.on('error', (err: Error) => {
      const reason = peerAbuseReason(err);
      if (reason)
        d.refusals.refuse('inbound', reason, 'tunnel connection closed', {
          src: tls.remoteAddress,
          err: err.message,
        });
      else d.log.debug({ src: tls.remoteAddress, err: err.message }, 'tunnel connection error');
    });
    if (tls.alpnProtocol !== 'h2') {
      // HBONE is HTTP/2 only: a client that did not negotiate h2 would read our frames as garbage.
      d.refusals.refuse('inbound', 'tls_failure', 'tunnel refused: ALPN is not h2', {
        src: tls.remoteAddress,
        alpn: tls.alpnProtocol,
      });
      tls.destroy();
      return;
    }
    const cert = tls.peerCertificate;
    const identity = (cert ? uriSans(cert) : []).find((u) => u.startsWith('spiffe://')) ?? NO_IDENTITY;
    const held = this.#sessionsByIdentity.get(identity) ?? 0;
    if (held >= l.maxConnectionsPerIdentity) {
      d.refusals.refuse(
        'inbound',
        'identity_limit',
        `tunnel refused: ${held} sessions open for this identity`,
        {
          src: tls.remoteAddress,
          peer: identity,
        },
      );
      tls.destroy();
      return;
    }
    this.#sessionsByIdentity.set(identity, held + 1);
    const session = new H2Session(tls, 'server', h2Options(l.maxInboundStreams, l));
    this.#sessions.add(session);
    // Accepted just before a reload's drain: its peer opens its streams elsewhere (REFUSED_STREAM then
    // GOAWAY, and the pool retries), where a cut handshake would have failed the peer's connection.
    if (this.#draining) queueMicrotask(() => session.close());
    const idle = new IdleTimer(l.tunnelIdleTimeoutMs, () => {
      d.refusals.refuse('inbound', 'idle_timeout', 'tunnel session closed: idle', {
        src: tls.remoteAddress,
        peer: identity,
        idleMs: l.tunnelIdleTimeoutMs,
      });
      // GOAWAY, then the connection ends: no stream is open, so at once.
      session.close();
    });
    session.once('close', () => {
      idle.stop();
      this.#sessions.delete(session);
      const n = (this.#sessionsByIdentity.get(identity) ?? 1) - 1;
      if (n <= 0) this.#sessionsByIdentity.delete(identity);
      else this.#sessionsByIdentity.set(identity, n);
    });
    session.on('error', (err: Error) => {
      const reason = peerAbuseReason(err);
      if (reason)
        d.refusals.refuse('inbound', reason, 'tunnel session ended', {
          src: tls.remoteAddress,
          peer: identity,
          err: err.message,
        });
      else d.log.debug({ err: err.message }, 'tunnel session error');
    });
    session.on('stream', (stream, headers) => {
      idle.streamOpened();
      stream.once('close', () => idle.streamClosed());
      d.inbound.handleStream(stream, headers, session);
    });
  }

  /** The trust bundle changed (root rotation): new handshakes check against the new set. */
  updateRoots(): void {
    this.#context = undefined;
  }

  /** Listens on `at`, or on `handle`: a socket the supervisor bound and holds across reloads and re-execs. */
  listen(at: Listen, handle?: object): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      const listening = (): void => {
        this.server.removeListener('error', reject);
        resolve((this.server.address() as AddressInfo).port);
      };
      if (handle) this.server.listen(handle, listening);
      else this.server.listen(at.port, at.host, listening);
    });
  }

  /**
   * Stops accepting. Graceful: peers get GOAWAY and open tunneled connections run to their end (an upgrade
   * or restart does not reset long TCP connections); otherwise every session is destroyed at once.
   */
  close(graceful = false): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    // Graceful: handshakes under way finish (bounded by the handshake timeout), then get GOAWAY.
    this.#draining = graceful;
    if (!graceful) for (const t of this.#handshaking) t.destroy();
    for (const s of this.#sessions) {
      if (graceful) s.close();
      else s.destroy();
    }
    return closed;
  }
}

/**
 * A session's idle clock: it runs while no stream is open, and fires once after `ms` of that. Streams are
 * the work a session exists for; PINGs and SETTINGS do not count, so a peer cannot hold a session (and the
 * descriptor and memory behind it) by pinging alone. Our own pool closes idle sessions after 5 minutes.
 */
class IdleTimer {
  readonly #ms: number;
  readonly #fire: () => void;
  #open = 0;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(ms: number, fire: () => void) {
    this.#ms = ms;
    this.#fire = fire;
    this.#arm();
  }

  streamOpened(): void {
    this.#open++;
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }

  streamClosed(): void {
    this.#open--;
    if (this.#open === 0) this.#arm();
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #arm(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (!this.#stopped && this.#open === 0) this.#fire();
    }, this.#ms);
    this.#timer.unref();
  }
}
