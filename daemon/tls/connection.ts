// One TLS connection of the tunnel, on the native binding (native/src/tls.c): the socket a peer daemon
// connected with, or the one we opened to it. What a stream user needs and nothing more: write (batched
// per turn of the event loop), pause/resume, end, destroy, and the events 'secure', 'data', 'end', 'drain',
// 'error', 'close'. TLS 1.3, ALPN h2 and a verified certificate chain are required on both ends; whose
// certificate it is (the SPIFFE ID) is the caller's to check on 'secure'.
import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { type NativeHandle, fdOf } from '../native.js';
import { type NativeOwner, slab, tlsBinding } from './binding.js';
import type { TlsContext } from './context.js';

const EV_SECURE = 1;
const EV_DATA = 2;
const EV_END = 3;
const EV_DRAIN = 4;
const EV_CLOSE = 5;

/** Queued bytes (ours plus the binding's) above which write() says wait, and 'drain' follows. */
const HIGH_WATER = 1024 * 1024;

export interface TlsConnectOptions {
  /** Client: the name sent in SNI (which local workload of the peer we want). */
  readonly servername?: string;
  /** A handshake not finished by then fails (server side; a client has its own connect timeout). */
  readonly handshakeTimeoutMs?: number;
}

export class TlsConnection extends EventEmitter implements NativeOwner {
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  readonly isServer: boolean;
  /** Set on 'secure'. */
  alpnProtocol = '';
  peerCertificate: X509Certificate | undefined;
  secure = false;
  destroyed = false;

  /** The native connection; undefined once closed (the binding has freed it). */
  #h: NativeHandle | undefined;
  /**
   * Held so that the context outlives the handshake: OpenSSL keeps the SSL_CTX itself alive, but a server
   * context's SNI callback reaches the JavaScript lookup through the context object, which GC must not free.
   */
  readonly #ctx: TlsContext;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #nativeQueued = 0;
  #flushScheduled = false;
  #ended = false;
  #needDrain = false;
  #paused = false;
  #timer: NodeJS.Timeout | undefined;
  readonly #flush = (): void => this.#flushPending();

  /**
   * Takes over a connected TCP socket: the binding works on a duplicate of its descriptor and the socket
   * itself is closed here, unread (a server socket must come from a server with `pauseOnConnect`).
   */
  constructor(socket: Socket, ctx: TlsContext, role: 'client' | 'server', opts: TlsConnectOptions = {}) {
    super();
    this.remoteAddress = socket.remoteAddress;
    this.remotePort = socket.remotePort;
    this.isServer = role === 'server';
    this.#ctx = ctx;
    try {
      this.#h = tlsBinding().tlsConnect(
        ctx.handle,
        fdOf(socket),
        this.isServer,
        opts.servername ?? null,
        this,
      );
    } finally {
      socket.destroy();
    }
    if (opts.handshakeTimeoutMs !== undefined) {
      this.#timer = setTimeout(() => {
        if (!this.secure) this.#fail(new Error('TLS handshake timed out'));
      }, opts.handshakeTimeoutMs);
      this.#timer.unref();
    }
  }

  /** The context the handshake started with. */
  get context(): TlsContext {
    return this.#ctx;
  }

  /** Queued and not yet on the wire (ours and the binding's). */
  get writableLength(): number {
    return this.#pendingBytes + this.#nativeQueued;
  }

  /** Queues `buf`; it goes out with everything else written in this turn, in one call. False: wait for 'drain'. */
  write(buf: Buffer): boolean {
    if (this.destroyed || this.#ended) return false;
    this.#pending.push(buf);
    this.#pendingBytes += buf.length;
    if (!this.#flushScheduled && this.secure) {
      this.#flushScheduled = true;
      queueMicrotask(this.#flush);
    }
    if (this.writableLength < HIGH_WATER) return true;
    this.#needDrain = true;
    return false;
  }

  /** close_notify and FIN once everything written is out; the peer's end then closes the connection. */
  end(): void {
    if (this.destroyed || this.#ended) return;
    this.#ended = true;
    if (!this.secure) {
      this.destroy();
      return;
    }
    this.#flushPending();
    if (this.#h) tlsBinding().tlsEnd(this.#h);
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.#pending = [];
    this.#pendingBytes = 0;
    if (this.#h) tlsBinding().tlsDestroy(this.#h);
  }

  pause(): void {
    if (this.#paused || !this.#h) return;
    this.#paused = true;
    tlsBinding().tlsPause(this.#h);
  }

  resume(): void {
    if (!this.#paused || !this.#h) return;
    this.#paused = false;
    // Records OpenSSL already holds raise no poll event: they are read on the next turn.
    if (tlsBinding().tlsResume(this.#h)) setImmediate(() => this.#pump());
  }

  #pump(): void {
    if (this.#h && !this.#paused && !this.destroyed) tlsBinding().tlsPump(this.#h);
  }

  #flushPending(): void {
    this.#flushScheduled = false;
    const h = this.#h;
    if (!h || this.#pending.length === 0) return;
    const bufs = this.#pending;
    this.#pending = [];
    this.#pendingBytes = 0;
    const queued = tlsBinding().tlsWrite(h, bufs);
    this.#nativeQueued = queued < 0 ? 0 : queued;
    if (queued === 0 && this.#needDrain) {
      this.#needDrain = false;
      this.emit('drain');
    }
  }

  #fail(err: Error): void {
    if (this.destroyed) return;
    this.emit('error', err);
    this.destroy();
  }

  /** Called by the binding (see binding.ts); `a`, `b` depend on the event. */
  onNative(event: number, a: unknown, b: unknown): void {
    switch (event) {
      case EV_DATA:
        this.emit('data', slab.subarray(a as number, (a as number) + (b as number)));
        return;
      case EV_DRAIN:
        this.#nativeQueued = 0;
        if (this.#needDrain && this.#pendingBytes === 0) {
          this.#needDrain = false;
          this.emit('drain');
        }
        return;
      case EV_SECURE:
        this.#onSecure(a as Buffer | undefined, b as string);
        return;
      case EV_END:
        this.emit('end');
        // Neither side of the tunnel half-closes a TLS connection: the peer's end is ours too.
        this.end();
        return;
      case EV_CLOSE:
        this.#h = undefined;
        if (this.#timer) clearTimeout(this.#timer);
        if (typeof a === 'string' && !this.destroyed) this.emit('error', new Error(a));
        this.destroyed = true;
        this.emit('close', typeof a === 'string');
        return;
    }
  }

  #onSecure(der: Buffer | undefined, alpn: string): void {
    this.secure = true;
    this.alpnProtocol = alpn;
    if (this.#timer) clearTimeout(this.#timer);
    try {
      this.peerCertificate = der ? new X509Certificate(der) : undefined;
    } catch {
      // OpenSSL verified it; Node failing to parse it would be a bug in one of them. Treated as no identity.
      this.peerCertificate = undefined;
    }
    this.emit('secure');
    if (!this.destroyed && this.#pending.length > 0) this.#flushPending();
  }
}
