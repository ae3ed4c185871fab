// A TLS context in the native binding: one identity's certificate and key (or none, for a server that picks
// one per SNI) and the trust bundle a peer must chain to. TLS 1.3 only.
import { type NativeHandle, binding } from '../native/index.js';

/**
 * The suites ztunnel allows, AES-128-GCM first: both ends are ours, and it costs less CPU per byte than
 * AES-256-GCM (OpenSSL's default first choice) for the same TLS 1.3 AEAD guarantees.
 */
export const TLS13_CIPHERSUITES = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384';

export interface TlsContextInit {
  /** Trust bundle: PEM roots. */
  readonly roots: readonly string[];
  /** PEM chain, leaf first; with `key`. */
  readonly cert?: string;
  readonly key?: string;
  /** Server: the context for the name a client sent in SNI, undefined to refuse the handshake. */
  readonly sni?: (servername: string) => TlsContext | undefined;
  /**
   * KeyUpdates a second a peer may send after the handshake (a token bucket, burst 10x; the contract's
   * `keyUpdateRate`, default 10): above it the connection fails with `tls_keyupdate_flood`. A server's
   * connections take it from the context the handshake started with, not the one SNI picked.
   */
  readonly keyUpdateRate?: number;
}

export class TlsContext {
  readonly handle: NativeHandle;

  /** Throws an Error naming what does not parse (a certificate, a key that does not match it, no roots). */
  constructor(init: TlsContextInit) {
    const sni = init.sni;
    this.handle = binding().tlsContext({
      roots: init.roots.join('\n'),
      ciphersuites: TLS13_CIPHERSUITES,
      cert: init.cert,
      key: init.key,
      sni: sni ? (name: string) => sni(name)?.handle : undefined,
      keyUpdateRate: init.keyUpdateRate,
    });
  }
}
