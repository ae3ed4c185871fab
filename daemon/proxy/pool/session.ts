import { PeerIdentityError, TunnelError } from '../../../lib/errors.js';
import { joinHostPort } from '../../../lib/net/hostport.js';
import type { CertificateManager } from '../../identity/manager.js';
import { uriSans } from '../../identity/spiffe.js';
import { TlsConnection } from '../../tls/connection.js';
import { H2Session } from '../h2/session.js';
import type { H2Headers, H2Stream } from '../h2/stream.js';
import { type H2Limits, h2Options, sniForIdentity } from '../hbone.js';
import type { SocketFactory } from '../sockets.js';

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
  readonly h2: H2Session;
  readonly key: PoolKey;
  active = 0;
  draining = false;
  readonly #maxStreams: number;

  private constructor(h2: H2Session, key: PoolKey, maxStreams: number) {
    this.h2 = h2;
    this.key = key;
    this.#maxStreams = maxStreams;
  }

  /** Opens the TLS connection, verifies that the peer is who the catalog says, and waits for HTTP/2 to be up. */
  static open(
    key: PoolKey,
    certs: CertificateManager,
    opts: { maxStreams: number; connectTimeoutMs: number; h2Limits?: H2Limits; sockets: SocketFactory },
  ): Promise<TunnelSession> {
    return new Promise((resolve, reject) => {
      let settled = false;
      let tls: TlsConnection | undefined;
      let h2: H2Session | undefined;
      const where = joinHostPort(key.address, key.port);
      // Marked (when capture is on) so that the capture rules never redirect the tunnel itself.
      // No Nagle: a frame must not wait for the ACK of the previous one (interactive traffic).
      const tcp = opts.sockets.connect({ host: key.address, port: key.port, noDelay: true });
      const timer = setTimeout(() => {
        fail(new TunnelError(`tunnel to ${where} timed out`));
      }, opts.connectTimeoutMs);
      const fail = (err: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        tcp.destroy();
        if (h2) h2.destroy();
        else tls?.destroy();
        reject(
          err instanceof TunnelError || err instanceof PeerIdentityError
            ? err
            : new TunnelError(`tunnel to ${where} failed: ${err.message}`, { cause: err }),
        );
      };
      tcp.once('error', fail);
      tcp.once('connect', () => {
        tcp.removeListener('error', fail);
        if (settled) return;
        try {
          tls = new TlsConnection(tcp, certs.tlsContext(key.source), 'client', {
            servername: sniForIdentity(key.peer),
          });
        } catch (err) {
          fail(err as Error);
          return;
        }
        const session = new H2Session(tls, 'client', h2Options(opts.maxStreams, opts.h2Limits));
        h2 = session;
        tls.once('error', fail);
        session.once('close', () => fail(new Error('closed during handshake')));
        // Ready once TLS is: requests may go out before the server's SETTINGS (they start from the defaults).
        tls.once('secure', () => {
          const peer = tls as TlsConnection;
          if (peer.alpnProtocol !== 'h2') {
            fail(new TunnelError(`tunnel to ${where}: the peer does not speak h2 (ALPN)`));
            return;
          }
          const sans = peer.peerCertificate ? uriSans(peer.peerCertificate) : [];
          if (!sans.includes(key.peer)) {
            fail(new PeerIdentityError([key.peer], sans));
            return;
          }
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          peer.removeListener('error', fail);
          resolve(new TunnelSession(session, key, opts.maxStreams));
        });
      });
    });
  }

  get closed(): boolean {
    return this.h2.closed || this.h2.goawayReceived;
  }

  /** Room for one more stream, counting both our limit and the one the peer advertised. */
  get hasCapacity(): boolean {
    if (this.draining || this.closed) return false;
    const peerLimit = this.h2.remoteMaxConcurrentStreams;
    return this.active < Math.min(this.#maxStreams, peerLimit);
  }

  request(headers: H2Headers): H2Stream {
    return this.h2.request(headers);
  }

  drain(): void {
    this.draining = true;
    if (this.active === 0) this.close();
  }

  close(): void {
    if (!this.closed) this.h2.close();
  }

  destroy(): void {
    this.h2.destroy();
  }
}
