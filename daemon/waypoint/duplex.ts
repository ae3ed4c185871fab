// A tunnel stream as a stream.Duplex, for the waypoint's use only: node:http (llhttp) reads and writes
// sockets, and the tunnel's H2Stream is deliberately not one (see h2/stream.ts). This is the small part of
// net.Socket that node:http's server, its client and its Agent call.
import { Duplex } from 'node:stream';
import type { H2Stream } from '../proxy/h2/stream.js';

export interface StreamEnds {
  /** The address the stream's client is known by (its `forwarded` claim, or the session's TCP peer). */
  readonly remoteAddress?: string | undefined;
  readonly remotePort?: number | undefined;
}

/**
 * Backpressure both ways: a full readable side pauses the tunnel stream (which then gives the peer no more
 * window), a full tunnel stream holds the writer until its 'drain'. A reset stream destroys the Duplex.
 */
export class StreamDuplex extends Duplex {
  readonly stream: H2Stream;
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  /** Bytes read from and written to the stream, for the access log. */
  bytesRead = 0;
  bytesWritten = 0;
  /** The idle timeout set by setTimeout (node:http's keep-alive timeout), 0 for none. */
  timeout = 0;
  #timer: NodeJS.Timeout | undefined;
  #pendingWrite: ((err?: Error | null) => void) | undefined;
  /** The peer ended its side (what it sent may still wait in the readable buffer). */
  #ended = false;

  constructor(stream: H2Stream, ends: StreamEnds = {}) {
    super({ allowHalfOpen: true });
    this.stream = stream;
    this.remoteAddress = ends.remoteAddress;
    this.remotePort = ends.remotePort;
    stream.on('data', (chunk: Buffer) => {
      this.bytesRead += chunk.length;
      this.#touch();
      if (!this.push(chunk)) stream.pause();
    });
    stream.on('end', () => {
      this.#ended = true;
      this.push(null);
    });
    stream.on('drain', () => this.#drained());
    stream.on('error', (err: Error) => this.destroy(err));
    stream.on('close', () => {
      this.#drained(new Error('tunnel stream closed'));
      // A clean end both ways has ended the Duplex already; anything else is an abort.
      if (!this.destroyed && (stream.rstCode !== 0 || !this.#ended))
        this.destroy(new Error(`tunnel stream reset (code ${stream.rstCode})`));
    });
    stream.pause();
  }

  override _read(): void {
    this.stream.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.stream.destroyed) {
      cb(new Error('tunnel stream closed'));
      return;
    }
    this.bytesWritten += chunk.length;
    this.#touch();
    if (this.stream.write(chunk)) cb();
    else this.#pendingWrite = cb;
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.stream.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#clearTimer();
    this.#drained(err ?? new Error('destroyed'));
    if (!this.stream.destroyed) this.stream.destroy();
    cb(err);
  }

  #drained(err?: Error): void {
    const cb = this.#pendingWrite;
    this.#pendingWrite = undefined;
    cb?.(err);
  }

  // ---- what node:http asks of a socket

  setTimeout(ms: number, cb?: () => void): this {
    this.timeout = ms;
    // As net.Socket: a callback is a one-shot listener, and a timeout of 0 takes it off again.
    if (cb && ms === 0) this.removeListener('timeout', cb);
    else if (cb) this.once('timeout', cb);
    this.#touch();
    return this;
  }

  setNoDelay(): this {
    return this;
  }

  setKeepAlive(): this {
    return this;
  }

  ref(): this {
    return this;
  }

  unref(): this {
    return this;
  }

  #touch(): void {
    this.#clearTimer();
    if (this.timeout <= 0 || this.destroyed) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.emit('timeout');
    }, this.timeout);
    this.#timer.unref();
  }

  #clearTimer(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
