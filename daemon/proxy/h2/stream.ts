import { EventEmitter } from 'node:events';
import type { PlainConnection } from '../../io/plain.js';
import { ErrorCode } from './codes.js';

/** Request or response headers as a plain object; a repeated field is joined with ", " (RFC 9110 §5.3). */
export type H2Headers = Record<string, string>;

/** What a stream needs from the session that carries it. */
export interface StreamHost {
  /**
   * Hands `chunk` (null: none) to the binding, which frames it as the windows allow; with `endStream`,
   * END_STREAM follows it. Returns the bytes waiting in the stream's buffer, or -1 if the stream is gone.
   */
  sendData(stream: H2Stream, chunk: Buffer | null, endStream: boolean): number;
  sendHeaders(stream: H2Stream, headers: H2Headers, endStream: boolean): void;
  sendReset(stream: H2Stream, code: number): void;
  /** The stream's reader took `bytes` off the wire: the peer may send that much more. */
  release(stream: H2Stream, bytes: number): void;
  /** Credit is returned in batches of at least this much (a call per chunk would cost more than the chunk). */
  readonly ackThreshold: number;
  streamClosed(stream: H2Stream): void;
  /** Hands the stream's DATA both ways to the binding, joined to `plain`; false: not now. */
  splice(stream: H2Stream, plain: PlainConnection): boolean;
}

/** Bytes waiting in a stream's native buffer above which write() says wait for 'drain' (h2.c STREAM_HIGH). */
export const STREAM_HIGH_WATER = 64 * 1024;

/**
 * One HTTP/2 stream (one tunneled connection), with the part of the Duplex interface the data path uses:
 * write/end/pause/resume/destroy and the events 'data', 'drain', 'end', 'close' (plus 'response' on the
 * client side). Deliberately not a stream.Duplex: the Readable/Writable machinery costs more per chunk and per
 * idle connection than the tunnel itself. Incoming DATA goes straight to 'data' while flowing; a paused
 * stream keeps what arrives and gives no credit back, so the peer is held to one window per stream. What is
 * written waits in the binding's buffer for the stream (nghttp2 frames it as the peer's windows allow).
 */
export class H2Stream extends EventEmitter {
  readonly id: number;
  readonly #host: StreamHost;
  /** Received while paused or before anyone listens, in order. */
  #held: Buffer[] | undefined;
  #flowing = false;

  /** Data arrived that its reader has not taken: the reader, not the window, is what limits this stream. */
  get backlogged(): boolean {
    return this.#held !== undefined;
  }
  /** Received and handed to the reader, not yet acknowledged with WINDOW_UPDATE. */
  #unacked = 0;
  #needDrain = false;
  #endRequested = false;
  localEnded = false;
  remoteEnded = false;
  #endEmitted = false;
  #closed = false;
  headersSent = false;
  /** The RST_STREAM code that ended the stream (sent or received); 0 for a clean end. */
  rstCode: number | undefined;
  /** The peer's request (server side) or response (client side) headers. */
  headers: H2Headers | undefined;
  /**
   * The binding carries this stream's DATA both ways (joined to a workload connection): what is left here is
   * its life cycle, told by the session (onRemoteEnd, onSplicedLocalEnd, close, onReset).
   */
  spliced = false;

  constructor(id: number, host: StreamHost) {
    super();
    this.id = id;
    this.#host = host;
  }

  get destroyed(): boolean {
    return this.#closed;
  }
  get writableEnded(): boolean {
    return this.#endRequested;
  }
  get readableEnded(): boolean {
    return this.#endEmitted;
  }
  /** Server side: answers the CONNECT. With `endStream` the stream is over once sent (a refusal). */
  respond(headers: H2Headers, opts: { endStream?: boolean } = {}): void {
    if (this.#closed || this.headersSent) return;
    this.headersSent = true;
    const end = opts.endStream === true;
    if (end) this.#endRequested = true;
    this.#host.sendHeaders(this, headers, end);
    if (end) {
      this.localEnded = true;
      // The answer is complete: the binding resets the stream (NO_ERROR) once it is out, so that the
      // client stops sending rather than leaving the stream half open.
      if (!this.remoteEnded) this.#finish(ErrorCode.NO_ERROR);
      else this.#maybeClose();
    }
  }

  write(chunk: Buffer): boolean {
    if (this.#closed || this.#endRequested) return false;
    if (chunk.length === 0) return true;
    const waiting = this.#host.sendData(this, chunk, false);
    if (waiting < 0) return false;
    if (waiting < STREAM_HIGH_WATER) return true;
    this.#needDrain = true;
    return false;
  }

  /**
   * Joins this stream to a workload connection in the binding (see H2Session.splice): false when it cannot
   * be now (what either side held may have moved across already; piping carries on from there).
   */
  splice(plain: PlainConnection): boolean {
    return this.#host.splice(this, plain);
  }

  /** Open both ways and answered: the binding can take it over as it is (after what it buffered). */
  get spliceable(): boolean {
    return (
      !this.#closed &&
      !this.spliced &&
      this.headersSent &&
      this.headers !== undefined &&
      !this.#endRequested &&
      !this.remoteEnded
    );
  }

  /** What arrived before anyone read it, handed over (and acknowledged to the peer, as read). */
  takeHeld(): Buffer[] {
    const held = this.#held ?? [];
    this.#held = undefined;
    this.#flowing = true;
    for (const chunk of held) this.#unacked += chunk.length;
    if (this.#unacked > 0) this.#ack();
    return held;
  }

  /** Half-close: END_STREAM once everything written has gone out. */
  end(): void {
    if (this.#closed || this.#endRequested) return;
    this.#endRequested = true;
    this.#sendEnd();
  }

  pause(): this {
    this.#flowing = false;
    return this;
  }

  resume(): this {
    if (this.#flowing || this.#closed) return this;
    this.#flowing = true;
    const held = this.#held;
    if (held !== undefined) {
      this.#held = undefined;
      for (let i = 0; i < held.length; i++) {
        const chunk = held[i]!;
        this.#unacked += chunk.length;
        this.emit('data', chunk);
        if (!this.#flowing) {
          // Paused again by a reader that is full: keep the rest, in order.
          const rest = held.slice(i + 1);
          if (rest.length > 0) this.#held = rest;
          return this;
        }
      }
    }
    if (this.#unacked >= this.#host.ackThreshold) this.#ack();
    if (this.remoteEnded && !this.#endEmitted) this.#emitEnd();
    return this;
  }

  /** Ends the stream now with RST_STREAM (CANCEL unless told otherwise); the peer sees an abort. */
  destroy(err?: Error, code: number = ErrorCode.CANCEL): void {
    if (this.#closed) return;
    this.close(code);
    // After closing, so that a listener that destroys in turn finds the stream already gone.
    if (err && this.listenerCount('error') > 0) this.emit('error', err);
  }

  /** Ends the stream now with RST_STREAM `code` (NO_ERROR: "not needed any more"). */
  close(code: number = ErrorCode.NO_ERROR): void {
    if (this.#closed) return;
    this.#host.sendReset(this, code);
    this.#finish(code);
  }

  // ---- called by the session

  /** DATA payload for this stream. */
  onData(chunk: Buffer): void {
    if (this.spliced) {
      // The binding routes a spliced stream's DATA; a frame here would have skipped its flow control.
      this.close(ErrorCode.INTERNAL_ERROR);
      return;
    }
    if (this.#flowing) {
      this.#unacked += chunk.length;
      this.emit('data', chunk);
      if (this.#flowing && this.#unacked >= this.#host.ackThreshold) this.#ack();
    } else {
      // Copied: `chunk` is a view of the buffer a whole TLS read landed in (every stream's data), which a
      // reader that is behind would otherwise keep alive for as long as it waits.
      const own = Buffer.from(chunk);
      if (this.#held === undefined) this.#held = [own];
      else this.#held.push(own);
    }
  }

  onRemoteEnd(): void {
    if (this.remoteEnded) return;
    this.remoteEnded = true;
    if (this.#flowing && this.#held === undefined) this.#emitEnd();
  }

  /** The binding sent END_STREAM for a spliced stream (its workload's FIN). */
  onSplicedLocalEnd(): void {
    if (this.localEnded) return;
    this.#endRequested = true;
    this.localEnded = true;
    this.#maybeClose();
  }

  /** The binding framed what was written: the writer may write more. */
  onWritable(): void {
    if (this.#closed || !this.#needDrain) return;
    this.#needDrain = false;
    this.emit('drain');
  }

  /** The peer reset the stream, nghttp2 closed it, or the session went away under it. */
  onReset(code: number): void {
    if (this.#closed) return;
    // Both ends sent: what the reader has not taken yet is still delivered, then the stream closes.
    if (code === ErrorCode.NO_ERROR && this.remoteEnded && !this.#endEmitted && this.localEnded) return;
    if (code !== ErrorCode.NO_ERROR) this.emit('aborted');
    // A listener of 'aborted' may have destroyed the stream: it is closed once, and 'close' comes once.
    if (!this.#closed) this.#finish(code);
  }

  #ack(): void {
    const n = this.#unacked;
    this.#unacked = 0;
    this.#host.release(this, n);
  }

  #emitEnd(): void {
    this.#endEmitted = true;
    this.emit('end');
    this.#maybeClose();
  }

  #sendEnd(): void {
    if (this.localEnded) return;
    this.#host.sendData(this, null, true);
    this.localEnded = true;
    this.#maybeClose();
  }

  #maybeClose(): void {
    if (this.localEnded && this.remoteEnded && !this.#closed) this.#finish(ErrorCode.NO_ERROR);
  }

  #finish(code: number): void {
    this.#closed = true;
    this.rstCode = code;
    this.#held = undefined;
    this.#host.streamClosed(this);
    // 'close' after whatever else this turn emits ('end', 'error'), as Node's streams do.
    process.nextTick(emitClose, this);
  }
}

function emitClose(s: H2Stream): void {
  s.emit('close');
}
