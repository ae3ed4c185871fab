import { type AddressInfo, type Server, type Socket, createServer } from 'node:net';
import type { Listen } from '../../config.js';
import type { Logger } from '../../log.js';
import type { Metrics } from '../../metrics/metrics.js';
import { TlsConnection } from '../../tls/connection.js';
import { TlsContext } from '../../tls/context.js';
import { H2Session } from '../h2/session.js';
import { SERVER_MAX_STREAMS, h2Options } from '../hbone.js';
import type { Inbound } from './inbound.js';

export interface TunnelServerDeps {
  readonly inbound: Inbound;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Trust bundle every client certificate must chain to. */
  readonly roots: () => string[];
  /** The certificate to present for the identity a client names in SNI, if it is a local workload's. */
  readonly contextForSni: (servername: string) => TlsContext | undefined;
}

/** A client that has not finished its handshake by then is cut off (Node's own TLS server waits 120 s). */
const HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * The HBONE listener (15008): TLS 1.3 only, ALPN h2, a client certificate required and verified against the
 * trust bundle. Bytes from a peer never crash the daemon: a bad handshake or a bad frame ends that session.
 */
export class TunnelServer {
  readonly server: Server;
  readonly #d: TunnelServerDeps;
  readonly #sessions = new Set<H2Session>();
  readonly #handshaking = new Set<TlsConnection>();
  /** Starts each handshake; the certificate comes from the workload's own context once SNI names it. */
  #context: TlsContext | undefined;

  constructor(deps: TunnelServerDeps) {
    this.#d = deps;
    // Paused: the TLS connection reads the socket's descriptor itself, from the first byte.
    // No Nagle on accepted sockets (applied at accept, before the handshake).
    this.server = createServer({ pauseOnConnect: true, noDelay: true }, (socket) => this.#accept(socket));
  }

  #ctx(): TlsContext {
    if (!this.#context) {
      const d = this.#d;
      this.#context = new TlsContext({ roots: d.roots(), sni: (name) => d.contextForSni(name) });
    }
    return this.#context;
  }

  #accept(socket: Socket): void {
    const d = this.#d;
    let tls: TlsConnection;
    try {
      tls = new TlsConnection(socket, this.#ctx(), 'server', { handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS });
    } catch (err) {
      d.metrics.refused.inc({ direction: 'inbound', reason: 'tls_failure' });
      d.log.warn({ src: socket.remoteAddress, err: (err as Error).message }, 'tunnel connection dropped');
      return;
    }
    this.#handshaking.add(tls);
    const refused = (err: Error): void => {
      d.metrics.refused.inc({ direction: 'inbound', reason: 'tls_failure' });
      d.log.warn({ src: tls.remoteAddress, err: err.message }, 'tunnel handshake refused');
    };
    tls.once('error', refused);
    tls.once('close', () => this.#handshaking.delete(tls));
    tls.once('secure', () => {
      this.#handshaking.delete(tls);
      tls.removeListener('error', refused);
      this.#secured(tls);
    });
  }

  #secured(tls: TlsConnection): void {
    const d = this.#d;
    d.metrics.handshakes.inc({ direction: 'inbound' });
    if (tls.alpnProtocol !== 'h2') {
      // HBONE is HTTP/2 only: a client that did not negotiate h2 would read our frames as garbage.
      d.metrics.refused.inc({ direction: 'inbound', reason: 'tls_failure' });
      d.log.warn({ src: tls.remoteAddress, alpn: tls.alpnProtocol }, 'tunnel refused: ALPN is not h2');
      tls.destroy();
      return;
    }
    const session = new H2Session(tls, 'server', h2Options(SERVER_MAX_STREAMS));
    this.#sessions.add(session);
    session.once('close', () => this.#sessions.delete(session));
    session.on('error', (err: Error) => d.log.debug({ err: err.message }, 'tunnel session error'));
    session.on('stream', (stream, headers) => d.inbound.handleStream(stream, headers, session));
  }

  /** The trust bundle changed (root rotation): new handshakes check against the new set. */
  updateRoots(): void {
    this.#context = undefined;
  }

  listen(at: Listen): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(at.port, at.host, () => {
        this.server.removeListener('error', reject);
        resolve((this.server.address() as AddressInfo).port);
      });
    });
  }

  /**
   * Stops accepting. Graceful: peers get GOAWAY and open tunneled connections run to their end (an upgrade
   * or restart does not reset long TCP connections); otherwise every session is destroyed at once.
   */
  close(graceful = false): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const t of this.#handshaking) t.destroy();
    for (const s of this.#sessions) {
      if (graceful) s.close();
      else s.destroy();
    }
    return closed;
  }
}
