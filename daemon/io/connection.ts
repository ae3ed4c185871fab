// A connection whose socket the native binding reads and writes (native/src/conn.c): what the tunnel's TLS
// connections and the workloads' plain TCP connections share. Node's net.Socket hands each read to
// JavaScript through a Readable and each write through a Writable, which on a 64-byte message costs more
// than the kernel does; here a read is one call into JavaScript with a view of the bytes, and the writes of
// one turn of the event loop leave in one call out of it.
//
// The subset of a socket's surface the data path uses: write (false: wait for 'drain'), pause/resume,
// end (FIN once everything queued is out), destroy, resetAndDestroy (RST), byte counts, and the events
// 'data', 'end', 'drain', 'error', 'close'.
import { EventEmitter } from 'node:events';
import { unmapIp } from '../../lib/net/addresses.js';
import {
  EV_CLOSE,
  EV_DATA,
  EV_DATA_COPY,
  EV_DRAIN,
  EV_END,
  type NativeHandle,
  type NativeOwner,
  binding,
  slab,
} from '../native/index.js';

export abstract class NativeConnection extends EventEmitter implements NativeOwner {
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  destroyed = false;
  bytesRead = 0;
  bytesWritten = 0;
  /** end() was called: nothing more is written. */
  writableEnded = false;
  /** The peer's end arrived. */
  readableEnded = false;

  /**
   * The bytes read and written so far, spliced ones included (bytesRead/bytesWritten have those only once
   * the connection has closed): for a live view, one call into the binding.
   */
  liveBytes(): { read: number; written: number } {
    if (this.h === undefined) return { read: this.bytesRead, written: this.bytesWritten };
    const [splicedIn, splicedOut] = binding().connSpliced(this.h);
    return { read: this.bytesRead + splicedIn, written: this.bytesWritten + splicedOut };
  }

  /** The native connection; undefined once closed (the binding has freed it). */
  protected h: NativeHandle | undefined;
  /** Whether writes may go out yet (a TLS connection holds them until its handshake is done). */
  protected ready = true;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #nativeQueued = 0;
  #flushScheduled = false;
  #needDrain = false;
  #paused = false;
  readonly #flush = (): void => this.flushPending();

  /** Queued bytes (ours plus the binding's) above which write() says wait, and 'drain' follows. */
  readonly #highWater: number;

  protected constructor(
    remoteAddress: string | undefined,
    remotePort: number | undefined,
    highWater: number,
  ) {
    super();
    // A dual-stack listener's IPv4 peer (::ffff:a.b.c.d) as the IPv4 address it is, for logs and limits.
    this.remoteAddress = remoteAddress === undefined ? undefined : unmapIp(remoteAddress);
    this.remotePort = remotePort;
    this.#highWater = highWater;
  }

  /** The binding's connection, for the calls that join two of them (undefined once closed). */
  get handle(): NativeHandle | undefined {
    return this.h;
  }

  /** Queued and not yet on the wire (ours and the binding's). */
  get writableLength(): number {
    return this.#pendingBytes + this.#nativeQueued;
  }

  /** Queues `buf`; it goes out with everything else written in this turn, in one call. False: wait for 'drain'. */
  write(buf: Buffer): boolean {
    if (this.destroyed || this.writableEnded) return false;
    this.#pending.push(buf);
    this.#pendingBytes += buf.length;
    this.bytesWritten += buf.length;
    if (!this.#flushScheduled && this.ready) {
      this.#flushScheduled = true;
      queueMicrotask(this.#flush);
    }
    if (this.writableLength < this.#highWater) return true;
    this.#needDrain = true;
    return false;
  }

  /** FIN (after close_notify on TLS) once everything written is out. */
  end(): void {
    if (this.destroyed || this.writableEnded) return;
    this.writableEnded = true;
    if (!this.ready) {
      this.destroy();
      return;
    }
    this.flushPending();
    if (this.h) binding().tlsEnd(this.h);
  }

  destroy(): void {
    this.#close(false);
  }

  /** An abortive close: the peer sees a reset, not the clean end of a possibly truncated stream. */
  resetAndDestroy(): void {
    this.#close(true);
  }

  #close(reset: boolean): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.#pending = [];
    this.#pendingBytes = 0;
    const h = this.h;
    if (!h) return;
    if (reset) binding().tlsReset(h);
    else binding().tlsDestroy(h);
  }

  pause(): void {
    if (this.#paused || !this.h) return;
    this.#paused = true;
    binding().tlsPause(this.h);
  }

  resume(): void {
    if (!this.#paused || !this.h) return;
    this.#paused = false;
    // What the binding already holds raises no poll event: it is read on the next turn.
    if (binding().tlsResume(this.h)) setImmediate(() => this.#pump());
  }

  #pump(): void {
    if (this.h && !this.#paused && !this.destroyed) binding().tlsPump(this.h);
  }

  protected startPaused(): void {
    this.#paused = true;
  }

  /** What this turn wrote (or what waited for the handshake) goes to the binding now, not at the end of the turn. */
  flushNow(): void {
    if (this.ready && !this.destroyed && this.#pending.length > 0) this.flushPending();
  }

  protected flushPending(): void {
    this.#flushScheduled = false;
    const h = this.h;
    if (!h || this.#pending.length === 0) return;
    const bufs = this.#pending;
    this.#pending = [];
    this.#pendingBytes = 0;
    const queued = binding().tlsWrite(h, bufs);
    this.#nativeQueued = queued < 0 ? 0 : queued;
    if (queued === 0 && this.#needDrain) {
      this.#needDrain = false;
      this.emit('drain');
    }
  }

  protected fail(err: Error): void {
    if (this.destroyed) return;
    this.emit('error', err);
    this.destroy();
  }

  /** The peer's end of the stream: what a subclass does about its own side. */
  protected abstract onPeerEnd(): void;

  /** The binding's other events (a TLS handshake). */
  protected onOther(_event: number, _a: unknown, _b: unknown, _c: unknown): void {}

  /** The Error 'error' carries when the binding closed the connection for `message` (`reason`: its code). */
  protected closeError(message: string, _reason: string | undefined): Error {
    return new Error(message);
  }

  /** Called by the binding (native/binding.ts); `a`, `b`, `c`, `d` depend on the event (codes.ts). */
  onNative(event: number, a: unknown, b: unknown, c: unknown, d?: unknown): void {
    switch (event) {
      case EV_DATA: {
        const n = b as number;
        this.bytesRead += n;
        this.emit('data', slab.subarray(a as number, (a as number) + n));
        return;
      }
      case EV_DATA_COPY:
        this.bytesRead += (a as Buffer).length;
        this.emit('data', a as Buffer);
        return;
      case EV_DRAIN:
        this.#nativeQueued = 0;
        if (this.#needDrain && this.#pendingBytes === 0) {
          this.#needDrain = false;
          this.emit('drain');
        }
        return;
      case EV_END:
        this.readableEnded = true;
        this.emit('end');
        this.onPeerEnd();
        return;
      case EV_CLOSE:
        // What the binding carried without JavaScript (a spliced workload connection) counts too.
        this.bytesRead += b as number;
        this.bytesWritten += c as number;
        this.h = undefined;
        this.closed();
        if (typeof a === 'string' && !this.destroyed)
          this.emit('error', this.closeError(a, typeof d === 'string' ? d : undefined));
        this.destroyed = true;
        this.emit('close', typeof a === 'string');
        return;
      default:
        this.onOther(event, a, b, c);
    }
  }

  /** The connection is gone (before 'close' is emitted). */
  protected closed(): void {}
}
