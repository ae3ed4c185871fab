import { type Http2SecureServer, type ServerHttp2Session, createSecureServer } from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { SecureContext } from 'node:tls';
import type { Listen } from '../../config.js';
import { TLS13_CIPHERSUITES } from '../../identity/manager.js';
import type { Logger } from '../../log.js';
import type { Metrics } from '../../metrics/metrics.js';
import { ALPN, CONNECTION_WINDOW, SERVER_MAX_STREAMS, h2Settings } from '../hbone.js';
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
  readonly server: Http2SecureServer;
  readonly #d: TunnelServerDeps;
  readonly #sessions = new Set<ServerHttp2Session>();

  constructor(deps: TunnelServerDeps) {
    this.#d = deps;
    this.server = createSecureServer({
      allowHTTP1: false,
      noDelay: true,
      ALPNProtocols: ALPN,
      minVersion: 'TLSv1.3',
      // The suites are fixed by this default context: an SNI context swaps the certificate, not the suites.
      ciphers: TLS13_CIPHERSUITES,
      honorCipherOrder: true,
      requestCert: true,
      rejectUnauthorized: true,
      ca: deps.roots(),
      settings: h2Settings(SERVER_MAX_STREAMS),
      SNICallback: (servername, cb) => {
        const ctx = deps.contextForSni(servername);
        if (ctx) cb(null, ctx);
        else cb(new Error(`no local workload answers to ${servername}`), undefined);
      },
    });
    this.server.on('session', (session) => {
      this.#sessions.add(session);
      session.once('close', () => this.#sessions.delete(session));
      session.setLocalWindowSize(CONNECTION_WINDOW);
      session.on('error', (err) => deps.log.debug({ err: err.message }, 'tunnel session error'));
    });
    this.server.on('secureConnection', () => deps.metrics.handshakes.inc({ direction: 'inbound' }));
    this.server.on('stream', (stream, headers) => deps.inbound.handleStream(stream, headers));
    this.server.on('tlsClientError', (err, socket) => {
      deps.metrics.refused.inc({ direction: 'inbound', reason: 'tls_failure' });
      deps.log.warn({ src: socket.remoteAddress, err: err.message }, 'tunnel handshake refused');
    });
    this.server.on('sessionError', (err) => deps.log.debug({ err: err.message }, 'tunnel session error'));
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
