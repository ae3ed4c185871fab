import type { AddressInfo } from 'node:net';
import { type SecureContext, type Server, type TLSSocket, createServer } from 'node:tls';
import type { Listen } from '../../config.js';
import { TLS13_CIPHERSUITES } from '../../identity/manager.js';
import type { Logger } from '../../log.js';
import type { Metrics } from '../../metrics/metrics.js';
import { H2Session } from '../h2/session.js';
import { ALPN, SERVER_MAX_STREAMS, h2Options } from '../hbone.js';
import type { Inbound } from './inbound.js';

export interface TunnelServerDeps {
  readonly inbound: Inbound;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Trust bundle every client certificate must chain to. */
  readonly roots: () => string[];
  /** The certificate to present for the identity a client names in SNI, if it is a local workload's. */
  readonly contextForSni: (servername: string) => SecureContext | undefined;
}

/**
 * The HBONE listener (15008): TLS 1.3 only, ALPN h2, a client certificate required and verified against the
 * trust bundle. Bytes from a peer never crash the daemon: a bad handshake or a bad frame ends that session.
 */
export class TunnelServer {
  readonly server: Server;
  readonly #d: TunnelServerDeps;
  readonly #sessions = new Set<H2Session>();

  constructor(deps: TunnelServerDeps) {
    this.#d = deps;
    this.server = createServer({
      // No Nagle on accepted sockets (net.Server applies it at accept, before the handshake).
      noDelay: true,
      ALPNProtocols: ALPN,
      minVersion: 'TLSv1.3',
      // The suites are fixed by this default context: an SNI context swaps the certificate, not the suites.
      ciphers: TLS13_CIPHERSUITES,
      honorCipherOrder: true,
      requestCert: true,
      rejectUnauthorized: true,
      ca: deps.roots(),
      SNICallback: (servername, cb) => {
        const ctx = deps.contextForSni(servername);
        if (ctx) cb(null, ctx);
        else cb(new Error(`no local workload answers to ${servername}`), undefined);
      },
    });
    this.server.on('secureConnection', (socket: TLSSocket) => this.#accept(socket));
    this.server.on('tlsClientError', (err, socket) => {
      deps.metrics.refused.inc({ direction: 'inbound', reason: 'tls_failure' });
      deps.log.warn({ src: socket.remoteAddress, err: err.message }, 'tunnel handshake refused');
    });
  }

  #accept(socket: TLSSocket): void {
    const d = this.#d;
    d.metrics.handshakes.inc({ direction: 'inbound' });
    if (socket.alpnProtocol !== 'h2') {
      // HBONE is HTTP/2 only: a client that did not negotiate h2 would read our frames as garbage.
      d.metrics.refused.inc({ direction: 'inbound', reason: 'tls_failure' });
      d.log.warn({ src: socket.remoteAddress, alpn: socket.alpnProtocol }, 'tunnel refused: ALPN is not h2');
      socket.destroy();
      return;
    }
    const session = new H2Session(socket, 'server', h2Options(SERVER_MAX_STREAMS));
    this.#sessions.add(session);
    session.once('close', () => this.#sessions.delete(session));
    session.on('error', (err: Error) => d.log.debug({ err: err.message }, 'tunnel session error'));
    session.on('stream', (stream, headers) => d.inbound.handleStream(stream, headers, session));
  }

  /** The trust bundle changed (root rotation): new handshakes check against the new set. */
  updateRoots(): void {
    this.server.setSecureContext({
      ca: this.#d.roots(),
      minVersion: 'TLSv1.3',
      ciphers: TLS13_CIPHERSUITES,
      honorCipherOrder: true,
    });
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
    for (const s of this.#sessions) {
      if (graceful) s.close();
      else s.destroy();
    }
    return closed;
  }
}
