// One TLS connection of the tunnel, on the native binding (native/src/tls.c, tls_records.c): the socket a
// peer daemon connected with, or the one we opened to it. A NativeConnection (write batched per turn of the event loop,
// pause/resume, end, destroy) plus the handshake: 'secure' once it is done, with the peer's certificate.
// TLS 1.3, ALPN h2 and a verified certificate chain are required on both ends; whose certificate it is (the
// SPIFFE ID) is the caller's to check on 'secure'.
import { X509Certificate } from 'node:crypto';
import type { Socket } from 'node:net';
import { NativeConnection } from '../io/connection.js';
import type { RefusalReason } from '../metrics/metrics.js';
import {
  EV_SECURE,
  REASON_TLS_ALERT,
  REASON_TLS_KEYUPDATE_FLOOD,
  REASON_TLS_RECORD,
  binding,
  fdOf,
} from '../native/index.js';
import type { TlsContext } from './context.js';

/** Why a connection failed after its handshake (the binding's reason, one of RefusalReason's). */
export type TlsFailureReason = Extract<RefusalReason, 'tls_record' | 'tls_keyupdate_flood' | 'tls_alert'>;

/** The binding's post-handshake reasons (codes.h): the compiler checks each is a TlsFailureReason. */
const FAILURE_REASONS: ReadonlySet<string> = new Set<TlsFailureReason>([
  REASON_TLS_RECORD,
  REASON_TLS_KEYUPDATE_FLOOD,
  REASON_TLS_ALERT,
]);

/**
 * The 'error' of a TLS connection whose records failed after the handshake: `reason` says which way (a bad
 * MAC, malformed or oversized record, unexpected message: tls_record; too many KeyUpdates:
 * tls_keyupdate_flood; the peer's fatal alert: tls_alert); the message says what exactly and which alert
 * we sent. Handshake failures and socket errors stay plain Errors.
 */
export class TlsFailure extends Error {
  readonly reason: TlsFailureReason;
  constructor(message: string, reason: TlsFailureReason) {
    super(message);
    this.name = 'TlsFailure';
    this.reason = reason;
  }
}

/** The refusal reason of a connection's 'error', if it is a post-handshake TLS failure. */
export function tlsFailureReason(err: unknown): TlsFailureReason | undefined {
  return err instanceof TlsFailure ? err.reason : undefined;
}

export interface TlsConnectOptions {
  /** Client: the name sent in SNI (which local workload of the peer we want). */
  readonly servername?: string;
  /** A handshake not finished by then fails (server side; a client has its own connect timeout). */
  readonly handshakeTimeoutMs?: number;
}

export class TlsConnection extends NativeConnection {
  readonly isServer: boolean;
  /** Set on 'secure'. */
  alpnProtocol = '';
  peerCertificate: X509Certificate | undefined;
  secure = false;
  #timer: NodeJS.Timeout | undefined;

  /**
   * Takes over a connected TCP socket: the binding works on a duplicate of its descriptor and the socket
   * itself is closed here, unread (a server socket must come from a server with `pauseOnConnect`).
   */
  constructor(socket: Socket, ctx: TlsContext, role: 'client' | 'server', opts: TlsConnectOptions = {}) {
    // A session's streams all wait when this is full: room for several streams' worth of records.
    super(socket.remoteAddress, socket.remotePort, 1024 * 1024);
    this.isServer = role === 'server';
    // Writes wait for the handshake.
    this.ready = false;
    try {
      this.h = binding().tlsConnect(ctx.handle, fdOf(socket), this.isServer, opts.servername ?? null, this);
    } finally {
      socket.destroy();
    }
    if (opts.handshakeTimeoutMs !== undefined) {
      this.#timer = setTimeout(() => {
        if (!this.secure) this.fail(new Error('TLS handshake timed out'));
      }, opts.handshakeTimeoutMs);
      this.#timer.unref();
    }
  }

  /** Neither side of the tunnel half-closes a TLS connection: the peer's end is ours too. */
  protected onPeerEnd(): void {
    this.end();
  }

  protected override closeError(message: string, reason: string | undefined): Error {
    if (reason !== undefined && FAILURE_REASONS.has(reason))
      return new TlsFailure(message, reason as TlsFailureReason);
    return new Error(message);
  }

  protected override closed(): void {
    if (this.#timer) clearTimeout(this.#timer);
  }

  /** The HTTP/2 session's handler of the binding's HTTP/2 events (set by H2Session). */
  h2Events: ((event: number, a: unknown, b: unknown, c: unknown) => void) | undefined;

  protected override onOther(event: number, a: unknown, b: unknown, c: unknown): void {
    if (event === EV_SECURE) this.#onSecure(a as Buffer | undefined, b as string);
    else this.h2Events?.(event, a, b, c);
  }

  #onSecure(der: Buffer | undefined, alpn: string): void {
    this.secure = true;
    this.ready = true;
    this.alpnProtocol = alpn;
    if (this.#timer) clearTimeout(this.#timer);
    try {
      this.peerCertificate = der ? new X509Certificate(der) : undefined;
    } catch {
      // OpenSSL verified it; Node failing to parse it would be a bug in one of them. Treated as no identity.
      this.peerCertificate = undefined;
    }
    this.emit('secure');
    this.flushNow();
  }
}
