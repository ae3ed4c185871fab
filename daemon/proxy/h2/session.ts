import { EventEmitter } from 'node:events';
import { DEFAULT_LIMITS } from '../../../lib/config.js';
import { H2ProtocolError, type H2RefusalReason } from '../../../lib/errors.js';
import type { PlainConnection } from '../../io/plain.js';
import {
  EV_BDP,
  EV_H2_DATA,
  EV_H2_ERROR,
  EV_H2_GOAWAY,
  EV_H2_HEADERS,
  EV_H2_PING,
  EV_H2_SETTINGS,
  EV_STREAM,
  STREAM_CLOSED,
  STREAM_DRAINED,
  STREAM_LOCAL_END,
  STREAM_REMOTE_END,
  binding,
} from '../../native/index.js';
import type { TlsConnection } from '../../tls/connection.js';
import { DEFAULT_WINDOW, ErrorCode } from './codes.js';
import { type H2Headers, H2Stream, type StreamHost } from './stream.js';

export interface H2SessionOptions {
  /** Streams the peer may open on us at once (SETTINGS_MAX_CONCURRENT_STREAMS; nghttp2 refuses more). */
  readonly maxConcurrentStreams: number;
  /** Our receive window per stream, to start with. */
  readonly streamWindow: number;
  /**
   * How far the per-stream window may grow when the path needs it (see the BDP sampler below); the
   * starting window when absent.
   */
  readonly maxStreamWindow?: number;
  /** Our receive window for the whole connection. */
  readonly connectionWindow: number;
  /** Largest frame we accept (SETTINGS_MAX_FRAME_SIZE). */
  readonly maxFrameSize: number;
  /** Decoded header bytes per block (name + value + 32 per field); a larger block resets its stream. */
  readonly maxHeaderListSize?: number;
  /** HEADERS + CONTINUATION frames in one header block; more ends the session (h2_header_flood). */
  readonly maxHeaderFrames?: number;
  /** RST_STREAM per second the peer may send (burst 10x); more ends the session (h2_reset_flood). */
  readonly streamResetRate?: number;
  /** PING/SETTINGS answers queued for a peer that does not read; more ends the session (h2_control_flood). */
  readonly maxOutboundControl?: number;
  /** How long a server waits for the client's preface and SETTINGS. */
  readonly prefaceTimeoutMs?: number;
}

/**
 * One HTTP/2 connection over a TLS socket, as HBONE needs it: CONNECT streams carrying bytes. The protocol
 * is nghttp2's, inside the binding (native/src/h2.c): framing, HPACK, flow control, SETTINGS, PING, GOAWAY
 * and its flood protections, run with our settings and limits. This class keeps each stream's life cycle,
 * told by the binding as decoded events (headers, DATA of a stream that is not spliced, END_STREAM, the
 * stream's close, GOAWAY, the peer's SETTINGS, PING round trips), and submits requests, responses, resets,
 * GOAWAY and PINGs. What it submits in one turn goes out together (h2Send, from a microtask).
 *
 * Two paths for DATA. A stream that carries a workload's connection is spliced (splice()): from then on the
 * binding moves its DATA both ways and this class hears only of its ends. A stream that is not spliced
 * (before its workload connection is up, or a caller's own) has its DATA here, as Buffers.
 *
 * A peer's bytes never throw out of here: a protocol error ends the session with GOAWAY (or just the stream
 * with RST_STREAM), and the error (an H2ProtocolError whose `reason` says which limit or rule) is emitted as
 * 'error' only if someone listens, then 'close'.
 *
 * Events: 'connect' (the peer's first SETTINGS arrived), 'stream' (server: stream, headers),
 * 'goaway' (code, lastStreamId), 'error', 'close'.
 */
export class H2Session extends EventEmitter implements StreamHost {
  readonly socket: TlsConnection;
  readonly isServer: boolean;
  readonly #streams = new Map<number, H2Stream>();
  ackThreshold: number;
  /** Our per-stream receive window now: it starts at opts.streamWindow and grows up to the max. */
  #localWindow: number;
  readonly #maxWindow: number;
  #remoteMaxStreams = Number.POSITIVE_INFINITY;
  #gotSettings = false;
  #sendScheduled = false;
  readonly #send = (): void => {
    this.#sendScheduled = false;
    const h = this.socket.handle;
    if (h !== undefined && !this.#dead) binding().h2Send(h);
  };

  #goawayReceived = false;
  #closing = false;
  #dead = false;
  #closeEmitted = false;
  /** The session is to end once its streams have: once is enough, whoever asks again. */
  #ending = false;
  /** FIN sent and the cut-off timer armed. */
  #finSent = false;
  #endForced = false;
  #endTimer: NodeJS.Timeout | undefined;
  /** The session ended on an error: nothing more the peer says is read. */
  #failed = false;
  #pings: Array<(err: Error | null, ms: number) => void> = [];
  #pingSent: number[] = [];
  #prefaceTimer: NodeJS.Timeout | undefined;

  constructor(socket: TlsConnection, role: 'client' | 'server', opts: H2SessionOptions) {
    super();
    this.socket = socket;
    this.isServer = role === 'server';
    this.ackThreshold = Math.max(1, Math.floor(opts.streamWindow / 4));
    this.#localWindow = opts.streamWindow;
    this.#maxWindow = Math.max(opts.streamWindow, opts.maxStreamWindow ?? opts.streamWindow);
    const h = socket.handle;
    if (h === undefined) throw new Error('the TLS connection is closed');
    binding().h2Enable(h, this.isServer, [
      opts.maxConcurrentStreams,
      opts.streamWindow,
      this.#maxWindow,
      Math.max(DEFAULT_WINDOW, opts.connectionWindow),
      opts.maxFrameSize,
      opts.maxHeaderListSize ?? DEFAULT_LIMITS.maxHeaderListSize,
      opts.maxHeaderFrames ?? DEFAULT_LIMITS.maxHeaderFrames,
      opts.streamResetRate ?? DEFAULT_LIMITS.streamResetRate,
      opts.maxOutboundControl ?? DEFAULT_LIMITS.maxOutboundControl,
    ]);
    socket.h2Events = (event, a, b, c) => this.#onNative(event, a, b, c);
    socket.on('error', () => {});
    socket.on('close', () => this.#onSocketClose());
    // A client's preface and SETTINGS go once TLS is up (a server's handshake is over already).
    if (socket.secure) this.#scheduleSend();
    else socket.once('secure', () => this.#scheduleSend());
    if (this.isServer) {
      this.#prefaceTimer = setTimeout(() => {
        if (!this.#gotSettings) this.destroy();
      }, opts.prefaceTimeoutMs ?? 10_000).unref();
    }
  }

  get closed(): boolean {
    return this.#closing || this.#dead;
  }
  get destroyed(): boolean {
    return this.#dead;
  }
  get goawayReceived(): boolean {
    return this.#goawayReceived;
  }
  /** Streams this side still follows. */
  get activeStreams(): number {
    return this.#streams.size;
  }
  /**
   * Streams nghttp2 still holds open: what activeStreams counts, plus those this side is done with whose
   * frames (a reset, the last DATA) have not all gone yet.
   */
  get openStreams(): number {
    const h = this.socket.handle;
    return h === undefined || this.#dead ? 0 : binding().h2Info(h)[0];
  }
  /** Our per-stream receive window now (grows from the starting one when the path's BDP needs it). */
  get localStreamWindow(): number {
    return this.#localWindow;
  }
  /** What the peer allows at once (Infinity until its SETTINGS say). */
  get remoteMaxConcurrentStreams(): number {
    return this.#remoteMaxStreams;
  }

  // ---- client side

  /** Opens a stream with a request (a CONNECT); its answer arrives as the stream's 'response' event. */
  request(headers: H2Headers): H2Stream {
    if (this.isServer) throw new Error('a server session does not open streams');
    const h = this.socket.handle;
    if (this.#dead || this.#closing || this.#goawayReceived || h === undefined)
      throw new Error('session is closed');
    const id = binding().h2Request(h, flatten(headers));
    if (id < 0) throw new Error(`session cannot open a stream (nghttp2 error ${id})`);
    const stream = new H2Stream(id, this);
    stream.headersSent = true;
    this.#streams.set(id, stream);
    this.#scheduleSend();
    return stream;
  }

  /** Round trip of a PING; `cb` gets an error if the session ends first. */
  ping(cb: (err: Error | null, ms: number) => void): boolean {
    const h = this.socket.handle;
    if (this.#dead || h === undefined || !binding().h2Ping(h)) return false;
    this.#pings.push(cb);
    this.#pingSent.push(Date.now());
    this.#scheduleSend();
    return true;
  }

  /**
   * Graceful: no new streams (GOAWAY with the last stream the peer opened), and the connection ends once
   * the last open stream has. Open tunneled connections run to their end.
   */
  close(): void {
    if (this.#dead || this.#closing) return;
    this.#closing = true;
    const h = this.socket.handle;
    if (h !== undefined) binding().h2Goaway(h, ErrorCode.NO_ERROR, '');
    this.#scheduleSend();
    if (this.#streams.size === 0) this.#end();
  }

  /** Abrupt: the socket goes now, and every open stream ends with CANCEL. */
  destroy(): void {
    if (this.#dead) return;
    this.socket.destroy();
    this.#onSocketClose();
  }

  // ---- StreamHost, called by streams

  sendData(stream: H2Stream, chunk: Buffer | null, endStream: boolean): number {
    const h = this.socket.handle;
    if (this.#dead || h === undefined) return -1;
    const waiting = binding().h2Write(h, stream.id, chunk, endStream);
    this.#scheduleSend();
    return waiting;
  }

  /**
   * Hands `stream` and the workload connection `plain` to the binding, which carries their bytes both ways
   * from now on (see the class comment). What each side already holds goes first: bytes Node read from the
   * workload before the takeover are sent, DATA the peer sent before is written to the workload. False when
   * the stream cannot be spliced now (one side has ended): the caller pipes it in JavaScript, which is
   * always correct.
   */
  splice(stream: H2Stream, plain: PlainConnection): boolean {
    const ph = plain.handle;
    const h = this.socket.handle;
    if (ph === undefined || h === undefined) return false;
    if (this.#dead || this.#failed || !stream.spliceable) return false;
    if (this.#streams.get(stream.id) !== stream) return false;
    // The workload's early bytes wait in the stream's buffer, which the binding sends before the rest.
    for (const chunk of plain.takeEarly()) stream.write(chunk);
    for (const chunk of stream.takeHeld()) plain.write(chunk);
    // The binding's writes to the workload go after everything JavaScript wrote.
    plain.flushNow();
    if (!binding().h2Splice(h, stream.id, ph)) return false;
    stream.spliced = true;
    this.#scheduleSend();
    return true;
  }

  sendHeaders(stream: H2Stream, headers: H2Headers, endStream: boolean): void {
    const h = this.socket.handle;
    if (this.#dead || h === undefined || !this.isServer) return;
    binding().h2Respond(h, stream.id, flatten(headers), endStream);
    this.#scheduleSend();
  }

  sendReset(stream: H2Stream, code: number): void {
    const h = this.socket.handle;
    if (this.#dead || h === undefined) return;
    binding().h2Reset(h, stream.id, code);
    this.#scheduleSend();
  }

  release(stream: H2Stream, bytes: number): void {
    const h = this.socket.handle;
    if (this.#dead || h === undefined || stream.remoteEnded || stream.destroyed) return;
    binding().h2Consume(h, stream.id, bytes);
    this.#scheduleSend();
  }

  streamClosed(stream: H2Stream): void {
    if (this.#streams.get(stream.id) !== stream) return;
    this.#streams.delete(stream.id);
    if (this.#streams.size === 0 && (this.#closing || this.#goawayReceived)) this.#end();
  }

  // ---- the binding

  #scheduleSend(): void {
    if (this.#sendScheduled || this.#dead) return;
    this.#sendScheduled = true;
    queueMicrotask(this.#send);
  }

  #onNative(event: number, a: unknown, b: unknown, c: unknown): void {
    if (this.#dead) return;
    switch (event) {
      case EV_H2_DATA: {
        const s = this.#streams.get(a as number);
        if (s !== undefined) s.onData(b as Buffer);
        else {
          // Nobody reads it (the stream is over here): the peer gets its credit back.
          const h = this.socket.handle;
          if (h !== undefined) binding().h2Consume(h, a as number, (b as Buffer).length);
        }
        return;
      }
      case EV_STREAM: {
        const s = this.#streams.get(a as number);
        const what = b as number;
        if (what >= STREAM_CLOSED && this.#ending) queueMicrotask(() => this.#endWhenSent());
        if (s === undefined) return;
        if (what === STREAM_REMOTE_END) s.onRemoteEnd();
        else if (what === STREAM_LOCAL_END) s.onSplicedLocalEnd();
        else if (what === STREAM_DRAINED) s.onWritable();
        else if (what >= STREAM_CLOSED) s.onReset(what - STREAM_CLOSED);
        return;
      }
      case EV_H2_HEADERS:
        this.#onHeaders(a as number, b as string[], c as boolean);
        return;
      case EV_BDP:
        this.#onBdpSample(a as number, b as boolean);
        return;
      case EV_H2_SETTINGS:
        this.#onSettings(a as number);
        return;
      case EV_H2_PING: {
        const cb = this.#pings.shift();
        const sent = this.#pingSent.shift();
        cb?.(null, sent === undefined ? 0 : Date.now() - sent);
        return;
      }
      case EV_H2_GOAWAY:
        this.#onGoaway(a as number, b as number);
        return;
      case EV_H2_ERROR:
        this.#fail(new H2ProtocolError(a as number, b as string, c as H2RefusalReason));
        return;
      default:
        return;
    }
  }

  #onHeaders(sid: number, list: string[], endStream: boolean): void {
    const existing = this.#streams.get(sid);
    if (this.isServer) {
      if (existing !== undefined) {
        // Trailers: END_STREAM is what matters.
        if (endStream) existing.onRemoteEnd();
        return;
      }
      const h = this.socket.handle;
      if (this.#closing || this.#failed) {
        if (h !== undefined) binding().h2Reset(h, sid, ErrorCode.REFUSED_STREAM);
        this.#scheduleSend();
        return;
      }
      const headers = toHeaders(list);
      const stream = new H2Stream(sid, this);
      stream.headers = headers;
      this.#streams.set(sid, stream);
      this.emit('stream', stream, headers);
      if (endStream && !stream.destroyed) stream.onRemoteEnd();
      return;
    }
    if (existing === undefined) return; // an answer to a stream we already reset
    if (existing.headers === undefined) {
      const headers = toHeaders(list);
      const status = Number(headers[':status']);
      if (!(status >= 100 && status <= 999)) {
        existing.close(ErrorCode.PROTOCOL_ERROR);
        return;
      }
      if (status < 200) return; // informational: the final answer follows
      existing.headers = headers;
      existing.emit('response', headers);
    }
    if (endStream && !existing.destroyed) existing.onRemoteEnd();
  }

  #onSettings(maxConcurrentStreams: number): void {
    this.#remoteMaxStreams =
      maxConcurrentStreams >= 2 ** 31 ? Number.POSITIVE_INFINITY : maxConcurrentStreams;
    if (this.#gotSettings) return;
    this.#gotSettings = true;
    if (this.#prefaceTimer) clearTimeout(this.#prefaceTimer);
    this.#prefaceTimer = undefined;
    this.emit('connect');
  }

  #onGoaway(code: number, lastId: number): void {
    this.#goawayReceived = true;
    // Streams we opened past lastId: nghttp2 closes them with REFUSED_STREAM (safe to retry elsewhere).
    this.emit('goaway', code, lastId);
    if (this.#streams.size === 0) this.#end();
  }

  #onSocketClose(): void {
    if (this.#closeEmitted) return;
    this.#dead = true;
    this.#closeEmitted = true;
    if (this.#prefaceTimer) clearTimeout(this.#prefaceTimer);
    if (this.#endTimer) clearTimeout(this.#endTimer);
    for (const s of [...this.#streams.values()]) s.onReset(ErrorCode.CANCEL);
    this.#streams.clear();
    const pings = this.#pings;
    this.#pings = [];
    for (const cb of pings) cb(new Error('session closed'), 0);
    this.emit('close');
  }

  /**
   * FIN once everything queued is out: what the streams' buffers in the binding still hold first (a stream
   * this side is done with may still wait for the peer's window). A peer that never closes its side is cut
   * off after a while.
   */
  #end(): void {
    if (this.#dead || this.#ending) return;
    this.#ending = true;
    this.#endWhenSent();
  }

  #endWhenSent(): void {
    if (this.#dead || this.#finSent) return;
    const h = this.socket.handle;
    // What nghttp2 holds (a GOAWAY, the last frames) goes on the queue before the FIN.
    this.#sendScheduled = false;
    if (h !== undefined) binding().h2Send(h);
    if (!this.#failed && !this.#endForced && this.openStreams > 0) {
      // Again when the binding closes the last stream; a peer that never opens its windows is not waited
      // for forever.
      if (this.#endTimer === undefined)
        this.#endTimer = setTimeout(() => {
          this.#endForced = true;
          this.#endWhenSent();
        }, 30_000).unref();
      return;
    }
    if (this.#endTimer) clearTimeout(this.#endTimer);
    this.#finSent = true;
    this.socket.end();
    setTimeout(() => this.destroy(), 5_000).unref();
  }

  /** The binding ended the session (its GOAWAY is on the queue): every stream ends, the socket closes. */
  #fail(err: H2ProtocolError): void {
    if (this.#dead || this.#failed) return;
    this.#failed = true;
    this.#closing = true;
    for (const s of [...this.#streams.values()]) s.onReset(err.h2Code);
    if (this.listenerCount('error') > 0) this.emit('error', err);
    this.#end();
  }

  // ---- window sizing: the binding takes a BDP sample (a PING, and the DATA that arrives before its answer)
  // at most every 100 ms while DATA flows and the window is below the max. When a round trip carries two
  // thirds of the window or more, the window is what limits the peer: it doubles (to twice the sample at
  // least), up to the max, for every stream at once (SETTINGS_INITIAL_WINDOW_SIZE moves open streams' windows
  // too, RFC 9113 §6.9.2). A short path keeps a small window, so a slow reader holds little here; a long one
  // gets what it needs. While any stream's reader is behind (`behind`: a spliced one), the sample measures
  // that reader's queue, and nothing grows.

  #onBdpSample(bdp: number, behind: boolean): void {
    const current = this.#localWindow;
    if (bdp * 3 < current * 2 || behind) return;
    for (const s of this.#streams.values()) if (s.backlogged) return;
    const next = Math.min(this.#maxWindow, Math.max(2 * bdp, 2 * current));
    if (next <= current) return;
    this.#localWindow = next;
    this.ackThreshold = Math.max(1, Math.floor(next / 4));
    const h = this.socket.handle;
    if (h) binding().h2SetWindow(h, next);
    this.#scheduleSend();
  }
}

/**
 * Which nghttp2 runs under the sessions: Node's own copy (the binding is not linked with a libnghttp2; its
 * calls resolve to the nghttp2 inside Node's binary), as `from` shows. Node does not export
 * nghttp2_version, and its process.versions.nghttp2 names the same build.
 */
export function nghttp2Version(): { version: string; from: string } {
  const [version, from] = binding().h2Version();
  return { version: version ?? process.versions.nghttp2 ?? 'unknown', from: from ?? 'unknown' };
}

/** Headers as nghttp2 takes them: [name, value, ...], pseudo-headers first. */
function flatten(headers: H2Headers): string[] {
  const out: string[] = [];
  for (const name in headers) if (name.charCodeAt(0) === 0x3a) out.push(name, headers[name]!);
  for (const name in headers) if (name.charCodeAt(0) !== 0x3a) out.push(name, headers[name]!);
  return out;
}

/**
 * A decoded header list as an object; a repeated field is joined (RFC 9110 §5.3). nghttp2 has checked it
 * already (RFC 9113 §8.2: lowercase names, pseudo-headers first and known, no connection-specific fields).
 */
function toHeaders(list: readonly string[]): H2Headers {
  const h: H2Headers = {};
  for (let i = 0; i + 1 < list.length; i += 2) {
    const name = list[i]!;
    const value = list[i + 1]!;
    if (name === '__proto__') continue;
    const prev = h[name];
    h[name] = prev === undefined ? value : `${prev}${name === 'cookie' ? '; ' : ', '}${value}`;
  }
  return h;
}
