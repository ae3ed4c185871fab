import {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  type OutgoingHttpHeaders,
  connect,
} from 'node:http2';
import { type PeerCertificate, connect as tlsConnect } from 'node:tls';
import { connectTcp } from '../../capture/mark.js';
import { PeerIdentityError, TunnelError } from '../../errors.js';
import type { CertificateManager } from '../../identity/manager.js';
import { uriSans } from '../../identity/spiffe.js';
import { ALPN, CONNECTION_WINDOW, formatAuthority, h2Settings, sniForIdentity } from '../hbone.js';

/** Which tunnel a connection may share: same source identity, same peer daemon, same expected peer identity. */
export interface PoolKey {
  readonly source: string;
  readonly peer: string;
  readonly address: string;
  readonly port: number;
}

export const poolKeyString = (k: PoolKey): string =>
  `${k.source}\u0000${k.peer}\u0000${k.address}\u0000${k.port}`;

/**
 * One mTLS HTTP/2 connection to a peer daemon. Carries up to `maxStreams` tunneled connections at once;
 * a draining session takes no new streams and closes once its last stream ends.
 */
export class TunnelSession {
  readonly h2: ClientHttp2Session;
  readonly key: PoolKey;
  readonly createdAt = Date.now();
  active = 0;
  draining = false;
  readonly #maxStreams: number;

  private constructor(h2: ClientHttp2Session, key: PoolKey, maxStreams: number) {
    this.h2 = h2;
    this.key = key;
    this.#maxStreams = maxStreams;
  }

  /** Opens the TLS connection, verifies that the peer is who the catalog says, and waits for HTTP/2 to be up. */
  static open(
    key: PoolKey,
    certs: CertificateManager,
    opts: { maxStreams: number; connectTimeoutMs: number },
  ): Promise<TunnelSession> {
    return new Promise((resolve, reject) => {
      let settled = false;
      const h2 = connect(`https://${formatAuthority(key.address, key.port)}`, {
        settings: h2Settings(opts.maxStreams),
        createConnection: () =>
          tlsConnect({
            // Marked (when capture is on) so that the capture rules never redirect the tunnel itself.
            // No Nagle: a frame must not wait for the ACK of the previous one (interactive traffic).
            socket: connectTcp({ host: key.address, port: key.port, noDelay: true }),
            host: key.address,
            port: key.port,
            secureContext: certs.secureContext(key.source),
            ALPNProtocols: ALPN,
            servername: sniForIdentity(key.peer),
            minVersion: 'TLSv1.3',
            checkServerIdentity: (_host: string, cert: PeerCertificate) => {
              const sans = uriSans(cert);
              return sans.includes(key.peer) ? undefined : new PeerIdentityError([key.peer], sans);
            },
          }),
      });
      const timer = setTimeout(() => {
        fail(new TunnelError(`tunnel to ${formatAuthority(key.address, key.port)} timed out`, 'UF'));
      }, opts.connectTimeoutMs);
      const fail = (err: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        h2.destroy();
        reject(
          err instanceof TunnelError || err instanceof PeerIdentityError
            ? err
            : new TunnelError(
                `tunnel to ${formatAuthority(key.address, key.port)} failed: ${err.message}`,
                'UF',
                undefined,
                {
                  cause: err,
                },
              ),
        );
      };
      h2.once('error', fail);
      h2.once('close', () => fail(new Error('closed during handshake')));
      h2.once('connect', () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        h2.removeListener('error', fail);
        h2.setLocalWindowSize(CONNECTION_WINDOW);
        // After the handshake, a session error only ends this session; its streams see their own errors.
        h2.on('error', () => {});
        resolve(new TunnelSession(h2, key, opts.maxStreams));
      });
    });
  }

  get closed(): boolean {
    return this.h2.closed || this.h2.destroyed;
  }

  /** Room for one more stream, counting both our limit and the one the peer advertised. */
  get hasCapacity(): boolean {
    if (this.draining || this.closed) return false;
    const peerLimit = this.h2.remoteSettings.maxConcurrentStreams ?? this.#maxStreams;
    return this.active < Math.min(this.#maxStreams, peerLimit);
  }

  request(headers: OutgoingHttpHeaders): ClientHttp2Stream {
    return this.h2.request(headers, { endStream: false });
  }

  drain(): void {
    this.draining = true;
    if (this.active === 0) this.close();
  }

  close(): void {
    if (!this.closed) this.h2.close();
  }

  destroy(): void {
    if (!this.h2.destroyed) this.h2.destroy();
  }
}
