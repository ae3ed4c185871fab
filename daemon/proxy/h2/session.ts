import { EventEmitter } from 'node:events';
import { H2ProtocolError } from '../../errors.js';
import { binding } from '../../io/binding.js';
import { EV_BDP, EV_H2_ERROR, EV_STREAM } from '../../io/connection.js';
import type { PlainConnection } from '../../io/plain.js';
import type { TlsConnection } from '../../tls/connection.js';
import {
  CONTINUATION,
  DATA,
  DEFAULT_MAX_FRAME,
  DEFAULT_WINDOW,
  ErrorCode,
  FLAG_ACK,
  FLAG_END_HEADERS,
  FLAG_END_STREAM,
  FLAG_PADDED,
  FLAG_PRIORITY,
  FRAME_HEADER,
  GOAWAY,
  HEADERS,
  MAX_FRAME_LIMIT,
  MAX_WINDOW,
  PING,
  PREFACE,
  PRIORITY,
  PUSH_PROMISE,
  RST_STREAM,
  SETTINGS,
  SETTINGS_ENABLE_PUSH,
  SETTINGS_INITIAL_WINDOW_SIZE,
  SETTINGS_MAX_CONCURRENT_STREAMS,
  SETTINGS_MAX_FRAME_SIZE,
  SETTINGS_MAX_HEADER_LIST_SIZE,
  WINDOW_UPDATE,
  frame,
  frameHeader,
  goawayFrame,
  pingFrame,
  rstStreamFrame,
  settingsAck,
  settingsFrame,
  windowUpdateFrame,
} from './frame.js';
import { DEFAULT_MAX_HEADER_LIST_SIZE, type HeaderField, HpackDecoder, HpackEncoder } from './hpack.js';
import { type H2Headers, H2Stream, type StreamHost } from './stream.js';

export interface H2SessionOptions {
  /** Streams the peer may open on us at once (server) / we advertise (client). */
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
  /** Largest frame we accept. */
  readonly maxFrameSize: number;
  /** How long a server waits for the client's preface and SETTINGS. */
  readonly prefaceTimeoutMs?: number;
  // The bounds of docs/limits.md that the nghttp2 session (h2 branch) enforces; this session ignores them.
  /** Decoded header list bytes per header block (SETTINGS_MAX_HEADER_LIST_SIZE). */
  readonly maxHeaderListSize?: number;
  /** HEADERS + CONTINUATION frames in one header block; above: the session ends (h2_header_flood). */
  readonly maxHeaderFrames?: number;
  /** RST_STREAM per second the peer may send (burst 10x); above: GOAWAY ENHANCE_YOUR_CALM (h2_reset_flood). */
  readonly streamResetRate?: number;
  /** Control answers queued for a peer that does not read; above: reading stops, then GOAWAY (h2_control_flood). */
  readonly maxOutboundControl?: number;
}

/** Largest header block (HEADERS plus CONTINUATION) we buffer from a peer: a CONNECT needs a few hundred bytes. */
const MAX_HEADER_BLOCK = 64 * 1024;

/** What the binding says happened to a spliced stream (native/src/h2.c, EV_STREAM). */
const SPLICE_REMOTE_END = 1;
const SPLICE_LOCAL_END = 2;
const SPLICE_ERROR = 0x100;

enum State {
  Preface = 0,
  Header = 1,
  Data = 2,
  Payload = 3,
}

const CONNECTION_HEADERS = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
]);

/**
 * One HTTP/2 connection over a TLS socket, as HBONE needs it: CONNECT streams carrying bytes, with flow control
 * both ways, SETTINGS, PING, GOAWAY and RST_STREAM. Written for the tunnel's hot path rather than taken from
 * node:http2, whose per-chunk cost (nghttp2 plus a Duplex per stream) was most of the daemon's CPU.
 *
 * Two paths for DATA. A stream that carries a workload's connection is spliced (splice()): from then on the
 * binding (native/src/h2.c) moves its DATA both ways, windows included, and this class hears only of its ends;
 * the binding hands every other frame here, whole. A stream that is not spliced (before its workload
 * connection is up, or a caller's own) has its DATA here, passed on as slices of what TLS delivered. The
 * connection's windows live in the binding for both.
 *
 * A peer's bytes never throw out of here: a protocol error ends the session with GOAWAY (or just the stream
 * with RST_STREAM), and the error is emitted as 'error' only if someone listens.
 *
 * Events: 'connect' (client: the server's SETTINGS arrived), 'stream' (server: stream, headers),
 * 'goaway' (code, lastStreamId), 'close'.
 */
export class H2Session extends EventEmitter implements StreamHost {
  readonly socket: TlsConnection;
  readonly isServer: boolean;
  readonly #opts: H2SessionOptions;
  readonly #streams = new Map<number, H2Stream>();
  readonly #decoder = new HpackDecoder();
  readonly #encoder = new HpackEncoder();
  ackThreshold: number;
  /** Our per-stream receive window now: it starts at opts.streamWindow and grows up to the max. */
  #localWindow: number;
  readonly #maxWindow: number;
  /** The binding's side of the TLS connection (frames, connection windows, spliced streams). */
  /** Inside #parse: a stream spliced now would still get DATA parsed here (splice waits for the next turn). */
  #parsing = false;

  // Peer's settings.
  #remoteMaxStreams = Number.POSITIVE_INFINITY;
  #remoteInitialWindow = DEFAULT_WINDOW;
  #remoteMaxFrame = DEFAULT_MAX_FRAME;

  #nextStreamId = 1;
  #lastPeerStreamId = 0;
  #gotSettings = false;

  // Parser.
  #state: State;
  #prefaceLeft = 0;
  readonly #hdr = Buffer.allocUnsafe(FRAME_HEADER);
  #hdrLen = 0;
  #type = 0;
  #flags = 0;
  #sid = 0;
  #left = 0;
  #payload: Buffer | undefined;
  #payloadLen = 0;
  #dataStream: H2Stream | undefined;
  #dataEnd = false;
  #block: { sid: number; endStream: boolean; parts: Buffer[]; size: number } | undefined;

  blocked = false;
  #goawaySent = false;
  #goawayReceived = false;
  #closing = false;
  #dead = false;
  #closeEmitted = false;
  /** FIN sent and the cut-off timer armed: once is enough, whoever asks again. */
  #ending = false;
  /** A connection error was sent: nothing more the peer says is read (RFC 9113 §5.4.1). */
  #failed = false;
  #pings: Array<(err: Error | null, ms: number) => void> = [];
  #pingSent: number[] = [];
  #prefaceTimer: NodeJS.Timeout | undefined;

  constructor(socket: TlsConnection, role: 'client' | 'server', opts: H2SessionOptions) {
    super();
    this.socket = socket;
    this.isServer = role === 'server';
    this.#opts = opts;
    this.ackThreshold = Math.max(1, Math.floor(opts.streamWindow / 4));
    this.#localWindow = opts.streamWindow;
    this.#maxWindow = Math.max(opts.streamWindow, opts.maxStreamWindow ?? opts.streamWindow);
    const h = socket.handle;
    if (h === undefined) throw new Error('the TLS connection is closed');
    binding().h2Enable(
      h,
      this.isServer,
      opts.maxFrameSize,
      opts.streamWindow,
      this.#maxWindow,
      Math.max(DEFAULT_WINDOW, opts.connectionWindow),
    );
    socket.h2Events = (event, a, b) => this.#onNative(event, a, b);
    this.#state = this.isServer ? State.Preface : State.Header;
    this.#prefaceLeft = this.isServer ? PREFACE.length : 0;

    const settings: Array<[number, number]> = [
      [SETTINGS_MAX_CONCURRENT_STREAMS, opts.maxConcurrentStreams],
      [SETTINGS_INITIAL_WINDOW_SIZE, opts.streamWindow],
      [SETTINGS_MAX_FRAME_SIZE, opts.maxFrameSize],
      // What our decoder enforces, so a peer that honours it is never refused.
      [SETTINGS_MAX_HEADER_LIST_SIZE, DEFAULT_MAX_HEADER_LIST_SIZE],
    ];
    if (!this.isServer) settings.push([SETTINGS_ENABLE_PUSH, 0]);
    const hello = [settingsFrame(settings)];
    if (opts.connectionWindow > DEFAULT_WINDOW)
      hello.push(windowUpdateFrame(0, opts.connectionWindow - DEFAULT_WINDOW));
    if (!this.isServer) socket.write(PREFACE);
    for (const f of hello) socket.write(f);

    socket.on('data', (chunk: Buffer) => this.#onSocketData(chunk));
    socket.on('drain', () => this.#onDrain());
    socket.on('error', () => {});
    socket.on('close', () => this.#onSocketClose());
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
  get activeStreams(): number {
    return this.#streams.size;
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
    if (this.#dead || this.#closing || this.#goawayReceived) throw new Error('session is closed');
    const id = this.#nextStreamId;
    if (id > MAX_WINDOW) throw new Error('stream ids exhausted');
    this.#nextStreamId += 2;
    const stream = new H2Stream(id, this, this.#remoteInitialWindow);
    stream.recvWindow = this.#localWindow;
    stream.headersSent = true;
    this.#streams.set(id, stream);
    this.sendHeaders(stream, headers, false);
    return stream;
  }

  /** Round trip of a PING; `cb` gets an error if the session ends first. */
  ping(cb: (err: Error | null, ms: number) => void): boolean {
    if (this.#dead) return false;
    const payload = Buffer.alloc(8);
    this.#pings.push(cb);
    this.#pingSent.push(Date.now());
    this.#write(pingFrame(payload, false));
    return true;
  }

  /**
   * Graceful: no new streams (a server says so with GOAWAY), and the connection ends once the last open stream
   * has. Open tunneled connections run to their end.
   */
  close(): void {
    if (this.#dead || this.#closing) return;
    this.#closing = true;
    this.#sendGoaway(ErrorCode.NO_ERROR);
    if (this.#streams.size === 0) this.#end();
  }

  /** Abrupt: the socket goes now, and every open stream ends with CANCEL. */
  destroy(): void {
    if (this.#dead) return;
    this.socket.destroy();
    this.#onSocketClose();
  }

  // ---- StreamHost, called by streams

  sendData(stream: H2Stream, chunk: Buffer, offset: number, endStream: boolean): number {
    if (this.#dead) return chunk.length - offset;
    const len = chunk.length;
    if (len === 0) {
      if (endStream) this.#write(frame(DATA, FLAG_END_STREAM, stream.id));
      return 0;
    }
    const sock = this.socket;
    const h = sock.handle;
    if (h === undefined) return len - offset;
    // The connection's window is shared with the spliced streams, so the binding keeps it.
    const b = binding();
    let credit = b.h2Credit(h);
    let off = offset;
    while (off < len) {
      let n = len - off;
      if (n > stream.sendWindow) n = stream.sendWindow;
      if (n > credit) n = credit;
      if (n > this.#remoteMaxFrame) n = this.#remoteMaxFrame;
      if (n <= 0) break;
      const piece = off === 0 && n === len ? chunk : chunk.subarray(off, off + n);
      const flags = endStream && off + n === len ? FLAG_END_STREAM : 0;
      // Header and payload leave in the same write (the connection batches a turn's writes) and the same
      // records; the payload is not copied here.
      sock.write(frameHeader(n, DATA, flags, stream.id));
      if (!sock.write(piece)) this.blocked = true;
      stream.sendWindow -= n;
      credit -= n;
      off += n;
    }
    if (off > offset) b.h2Spend(h, off - offset);
    return off - offset;
  }

  /**
   * Hands `stream` and the workload connection `plain` to the binding, which carries their bytes both ways
   * from now on (see the class comment). What each side already holds goes first: bytes Node read from the
   * workload before the takeover are sent, DATA the peer sent before is written to the workload. False when
   * the stream cannot be spliced now (its own queue waits for credit, one side has ended, or frames of this
   * turn are still being parsed): the caller pipes it in JavaScript, which is always correct.
   */
  splice(stream: H2Stream, plain: PlainConnection): boolean {
    const ph = plain.handle;
    const h = this.socket.handle;
    if (ph === undefined || h === undefined) return false;
    if (this.#dead || this.#failed || this.#parsing || !stream.spliceable) return false;
    if (this.#streams.get(stream.id) !== stream) return false;
    const early = plain.earlyLength;
    if (early > stream.sendWindow || early > binding().h2Credit(h)) return false;
    for (const chunk of plain.takeEarly()) stream.write(chunk);
    for (const chunk of stream.takeHeld()) plain.write(chunk);
    // The binding's writes go after everything JavaScript wrote (the answer's HEADERS first of all).
    plain.flushNow();
    this.socket.flushNow();
    if (!binding().h2Splice(h, stream.id, ph, stream.sendWindow, stream.recvWindow)) return false;
    stream.spliced = true;
    return true;
  }

  sendHeaders(stream: H2Stream, headers: H2Headers, endStream: boolean): void {
    if (this.#dead) return;
    const fields: HeaderField[] = [];
    for (const name in headers) if (name.charCodeAt(0) === 0x3a) fields.push([name, headers[name]!]);
    for (const name in headers) if (name.charCodeAt(0) !== 0x3a) fields.push([name, headers[name]!]);
    const block = this.#encoder.encode(fields);
    const max = this.#remoteMaxFrame;
    const end = endStream ? FLAG_END_STREAM : 0;
    if (block.length <= max) {
      this.#write(frame(HEADERS, FLAG_END_HEADERS | end, stream.id, block));
      return;
    }
    const frames = [frame(HEADERS, end, stream.id, block.subarray(0, max))];
    for (let off = max; off < block.length; off += max) {
      const last = off + max >= block.length;
      frames.push(
        frame(CONTINUATION, last ? FLAG_END_HEADERS : 0, stream.id, block.subarray(off, off + max)),
      );
    }
    this.#write(Buffer.concat(frames));
  }

  sendReset(stream: H2Stream, code: number): void {
    if (!this.#dead) this.#write(rstStreamFrame(stream.id, code));
  }

  release(stream: H2Stream, bytes: number): void {
    stream.recvWindow += bytes;
    if (!this.#dead && !stream.remoteEnded && !stream.destroyed)
      this.#write(windowUpdateFrame(stream.id, bytes));
  }

  streamClosed(stream: H2Stream): void {
    if (this.#streams.get(stream.id) !== stream) return;
    this.#streams.delete(stream.id);
    if (this.#streams.size === 0 && (this.#closing || this.#goawayReceived)) this.#end();
  }

  // ---- the socket

  #write(buf: Buffer): void {
    if (!this.socket.write(buf)) this.blocked = true;
  }

  #onDrain(): void {
    this.blocked = false;
    this.#flushStreams();
  }

  #flushStreams(): void {
    for (const s of this.#streams.values()) {
      if (this.blocked) return;
      s.onWritable();
    }
  }

  #onSocketData(chunk: Buffer): void {
    if (this.#dead || this.#failed) return;
    this.#parsing = true;
    try {
      this.#parse(chunk);
    } catch (err) {
      this.#fail(err as Error);
    } finally {
      this.#parsing = false;
    }
  }

  /** The binding's DATA path: a spliced stream's end or error, a BDP sample, a connection error. */
  #onNative(event: number, a: unknown, b: unknown): void {
    if (this.#dead) return;
    if (event === EV_STREAM) {
      const s = this.#streams.get(a as number);
      if (s === undefined) return;
      const what = b as number;
      if (what === SPLICE_REMOTE_END) s.onRemoteEnd();
      else if (what === SPLICE_LOCAL_END) s.onSplicedLocalEnd();
      else if (what >= SPLICE_ERROR) s.close(what - SPLICE_ERROR);
    } else if (event === EV_BDP) {
      this.#onBdpSample(a as number, b as boolean);
    } else if (event === EV_H2_ERROR) {
      this.#fail(new H2ProtocolError(a as number, b as string));
    }
  }

  #onSocketClose(): void {
    if (this.#closeEmitted) return;
    this.#dead = true;
    this.#closeEmitted = true;
    if (this.#prefaceTimer) clearTimeout(this.#prefaceTimer);
    for (const s of [...this.#streams.values()]) s.onReset(ErrorCode.CANCEL);
    this.#streams.clear();
    const pings = this.#pings;
    this.#pings = [];
    for (const cb of pings) cb(new Error('session closed'), 0);
    this.emit('close');
  }

  /** FIN once everything queued is out; a peer that never closes its side is cut off after a while. */
  #end(): void {
    if (this.#dead || this.#ending) return;
    this.#ending = true;
    this.socket.end();
    setTimeout(() => this.destroy(), 5_000).unref();
  }

  #sendGoaway(code: number, debug?: string): void {
    if (this.#goawaySent || this.#dead) return;
    this.#goawaySent = true;
    this.#write(goawayFrame(this.#lastPeerStreamId, code, debug));
  }

  /** A connection error: GOAWAY with the code, every stream ends, the socket closes. */
  #fail(err: Error): void {
    if (this.#dead || this.#failed) return;
    this.#failed = true;
    const code = err instanceof H2ProtocolError ? err.h2Code : ErrorCode.INTERNAL_ERROR;
    this.#sendGoaway(code, err.message);
    this.#closing = true;
    for (const s of [...this.#streams.values()]) s.onReset(code);
    if (this.listenerCount('error') > 0) this.emit('error', err);
    this.#end();
  }

  // ---- parsing: frames are cut out of what TLS delivers; DATA payloads pass through as slices

  #parse(chunk: Buffer): void {
    const len = chunk.length;
    let off = 0;
    if (this.#state === State.Preface) {
      const n = Math.min(this.#prefaceLeft, len);
      const at = PREFACE.length - this.#prefaceLeft;
      if (PREFACE.compare(chunk, 0, n, at, at + n) !== 0)
        throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'not an HTTP/2 client preface');
      this.#prefaceLeft -= n;
      off = n;
      if (this.#prefaceLeft > 0) return;
      this.#state = State.Header;
    }
    while (off < len && !this.#dead && !this.#failed) {
      const state = this.#state;
      if (state === State.Data) {
        let n = len - off;
        if (n > this.#left) n = this.#left;
        const piece = off === 0 && n === len ? chunk : chunk.subarray(off, off + n);
        off += n;
        this.#left -= n;
        const s = this.#dataStream;
        if (s !== undefined && !s.destroyed) s.onData(piece);
        if (this.#left === 0) {
          this.#state = State.Header;
          this.#dataStream = undefined;
          if (this.#dataEnd && s !== undefined && !s.destroyed) s.onRemoteEnd();
        }
        continue;
      }
      if (state === State.Payload) {
        let n = len - off;
        if (n > this.#left) n = this.#left;
        chunk.copy(this.#payload!, this.#payloadLen, off, off + n);
        this.#payloadLen += n;
        this.#left -= n;
        off += n;
        if (this.#left === 0) {
          const p = this.#payload!;
          this.#payload = undefined;
          this.#state = State.Header;
          this.#onFrame(this.#type, this.#flags, this.#sid, p);
        }
        continue;
      }
      // A frame header, whole in this chunk or pieced together across chunks.
      let h: Buffer;
      let at: number;
      if (this.#hdrLen === 0 && len - off >= FRAME_HEADER) {
        h = chunk;
        at = off;
        off += FRAME_HEADER;
      } else {
        const n = Math.min(FRAME_HEADER - this.#hdrLen, len - off);
        chunk.copy(this.#hdr, this.#hdrLen, off, off + n);
        this.#hdrLen += n;
        off += n;
        if (this.#hdrLen < FRAME_HEADER) return;
        this.#hdrLen = 0;
        h = this.#hdr;
        at = 0;
      }
      const length = (h[at]! << 16) | (h[at + 1]! << 8) | h[at + 2]!;
      const type = h[at + 3]!;
      const flags = h[at + 4]!;
      const sid = h.readUInt32BE(at + 5) & 0x7fffffff;
      if (length > this.#opts.maxFrameSize)
        throw new H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, `frame of ${length} bytes exceeds our maximum`);
      if (this.#block !== undefined && (type !== CONTINUATION || sid !== this.#block.sid))
        throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'header block interrupted by another frame');
      if (type === DATA && (flags & FLAG_PADDED) === 0) {
        const s = this.#dataStart(sid, length);
        if (length === 0) {
          if ((flags & FLAG_END_STREAM) !== 0 && s !== undefined && !s.destroyed) s.onRemoteEnd();
          continue;
        }
        this.#state = State.Data;
        this.#left = length;
        this.#dataStream = s;
        this.#dataEnd = (flags & FLAG_END_STREAM) !== 0;
        continue;
      }
      if (length <= len - off) {
        // Whole in this chunk: handled in place (a header block that continues is copied).
        const p = chunk.subarray(off, off + length);
        off += length;
        this.#onFrame(type, flags, sid, p);
        continue;
      }
      this.#type = type;
      this.#flags = flags;
      this.#sid = sid;
      this.#left = length;
      this.#payload = Buffer.allocUnsafe(length);
      this.#payloadLen = 0;
      this.#state = State.Payload;
    }
  }

  /**
   * Flow control for one DATA frame; returns the stream it is for, if it is still open to us. (The binding
   * has already counted it against the connection's window and given that back.)
   */
  #dataStart(sid: number, length: number): H2Stream | undefined {
    if (sid === 0) throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'DATA on stream 0');
    const s = this.#streams.get(sid);
    if (s === undefined) {
      if (this.#isIdle(sid))
        throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, `DATA on idle stream ${sid}`);
      return undefined; // closed or reset by us: in flight, dropped
    }
    if (s.remoteEnded) {
      s.close(ErrorCode.STREAM_CLOSED);
      return undefined;
    }
    s.recvWindow -= length;
    if (s.recvWindow < 0) {
      s.close(ErrorCode.FLOW_CONTROL_ERROR);
      return undefined;
    }
    return s;
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
    this.#write(settingsFrame([[SETTINGS_INITIAL_WINDOW_SIZE, next]]));
    for (const s of this.#streams.values()) if (!s.spliced) s.recvWindow += next - current;
    const h = this.socket.handle;
    if (h) binding().h2SetWindow(h, next);
  }

  /** A stream id the peer cannot have used yet. */
  #isIdle(sid: number): boolean {
    const peerOpened = (sid & 1) === (this.isServer ? 1 : 0);
    return peerOpened ? sid > this.#lastPeerStreamId : sid >= this.#nextStreamId;
  }

  #onFrame(type: number, flags: number, sid: number, p: Buffer): void {
    switch (type) {
      case DATA:
        this.#onPaddedData(flags, sid, p);
        return;
      case HEADERS:
        this.#onHeaders(flags, sid, p);
        return;
      case CONTINUATION:
        this.#onContinuation(flags, sid, p);
        return;
      case PRIORITY:
        if (sid === 0) throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'PRIORITY on stream 0');
        if (p.length !== 5) this.#streams.get(sid)?.close(ErrorCode.FRAME_SIZE_ERROR);
        return;
      case RST_STREAM:
        if (sid === 0) throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'RST_STREAM on stream 0');
        if (p.length !== 4) throw new H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, 'RST_STREAM of wrong size');
        if (this.#isIdle(sid))
          throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'RST_STREAM on idle stream');
        this.#streams.get(sid)?.onReset(p.readUInt32BE(0));
        return;
      case SETTINGS:
        this.#onSettings(flags, sid, p);
        return;
      case PUSH_PROMISE:
        throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'PUSH_PROMISE (push is disabled)');
      case PING:
        if (sid !== 0) throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'PING on a stream');
        if (p.length !== 8) throw new H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, 'PING of wrong size');
        // (The answers to the binding's BDP PINGs stay in the binding.)
        if ((flags & FLAG_ACK) === 0) this.#write(pingFrame(p, true));
        else {
          const cb = this.#pings.shift();
          const sent = this.#pingSent.shift();
          cb?.(null, sent === undefined ? 0 : Date.now() - sent);
        }
        return;
      case GOAWAY:
        this.#onGoaway(sid, p);
        return;
      case WINDOW_UPDATE:
        this.#onWindowUpdate(sid, p);
        return;
      default:
        return; // unknown frame types are ignored (RFC 9113 §4.1)
    }
  }

  #onPaddedData(flags: number, sid: number, p: Buffer): void {
    const s = this.#dataStart(sid, p.length);
    if (p.length < 1 || p[0]! >= p.length)
      throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'DATA padding exceeds the frame');
    const data = p.subarray(1, p.length - p[0]!);
    if (s === undefined || s.destroyed) return;
    // The padding is credit the reader never sees: give it back now.
    const padding = p.length - data.length;
    if (padding > 0) this.release(s, padding);
    if (data.length > 0) s.onData(Buffer.from(data));
    if ((flags & FLAG_END_STREAM) !== 0 && !s.destroyed) s.onRemoteEnd();
  }

  #onHeaders(flags: number, sid: number, p: Buffer): void {
    if (sid === 0) throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'HEADERS on stream 0');
    let start = 0;
    let pad = 0;
    if ((flags & FLAG_PADDED) !== 0) {
      if (p.length < 1) throw new H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, 'HEADERS too short');
      pad = p[0]!;
      start = 1;
    }
    if ((flags & FLAG_PRIORITY) !== 0) start += 5;
    if (start + pad > p.length)
      throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'HEADERS padding too long');
    const fragment = p.subarray(start, p.length - pad);
    const endStream = (flags & FLAG_END_STREAM) !== 0;
    if ((flags & FLAG_END_HEADERS) !== 0) {
      this.#onHeaderBlock(sid, endStream, fragment);
      return;
    }
    this.#block = { sid, endStream, parts: [Buffer.from(fragment)], size: fragment.length };
  }

  #onContinuation(flags: number, sid: number, p: Buffer): void {
    const b = this.#block;
    if (b === undefined || b.sid !== sid)
      throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'CONTINUATION without a header block');
    b.size += p.length;
    if (b.size > MAX_HEADER_BLOCK)
      throw new H2ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, `header block over ${MAX_HEADER_BLOCK} bytes`);
    b.parts.push(Buffer.from(p));
    if ((flags & FLAG_END_HEADERS) === 0) return;
    this.#block = undefined;
    this.#onHeaderBlock(sid, b.endStream, Buffer.concat(b.parts));
  }

  #onHeaderBlock(sid: number, endStream: boolean, block: Buffer): void {
    // Decoded whatever becomes of the stream: the HPACK table is shared by the whole connection.
    const fields = this.#decoder.decode(block);
    const existing = this.#streams.get(sid);
    if (this.isServer) {
      if (existing !== undefined) {
        // Trailers: only as the end of the request.
        if (!endStream) {
          existing.close(ErrorCode.PROTOCOL_ERROR);
          return;
        }
        this.#headersEnd(existing);
        return;
      }
      if ((sid & 1) === 0 || sid <= this.#lastPeerStreamId)
        throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, `HEADERS opening stream ${sid} out of order`);
      this.#lastPeerStreamId = sid;
      if (this.#goawaySent || this.#streams.size >= this.#opts.maxConcurrentStreams) {
        this.#write(rstStreamFrame(sid, ErrorCode.REFUSED_STREAM));
        return;
      }
      const headers = toHeaders(fields, true);
      if (headers === undefined) {
        this.#write(rstStreamFrame(sid, ErrorCode.PROTOCOL_ERROR));
        return;
      }
      const stream = new H2Stream(sid, this, this.#remoteInitialWindow);
      stream.recvWindow = this.#localWindow;
      stream.headers = headers;
      this.#streams.set(sid, stream);
      this.emit('stream', stream, headers);
      if (endStream && !stream.destroyed) stream.onRemoteEnd();
      return;
    }
    if (existing === undefined) {
      if (this.#isIdle(sid) || (sid & 1) === 0)
        throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, `HEADERS on stream ${sid} we never opened`);
      return; // an answer to a stream we already reset
    }
    if (existing.headers === undefined) {
      const headers = toHeaders(fields, false);
      const status = headers ? Number(headers[':status']) : Number.NaN;
      if (headers === undefined || !(status >= 100 && status <= 999)) {
        existing.close(ErrorCode.PROTOCOL_ERROR);
        return;
      }
      if (status < 200) return; // informational: the final answer follows
      existing.headers = headers;
      existing.emit('response', headers);
    }
    if (endStream && !existing.destroyed) this.#headersEnd(existing);
  }

  /** END_STREAM on a header block (trailers): a spliced stream's workload gets its FIN from the binding. */
  #headersEnd(s: H2Stream): void {
    const h = this.socket.handle;
    if (s.spliced && h) binding().h2RemoteEnd(h, s.id);
    s.onRemoteEnd();
  }

  #onSettings(flags: number, sid: number, p: Buffer): void {
    if (sid !== 0) throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'SETTINGS on a stream');
    if ((flags & FLAG_ACK) !== 0) {
      if (p.length !== 0)
        throw new H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, 'SETTINGS ACK with a payload');
      return;
    }
    if (p.length % 6 !== 0) throw new H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, 'SETTINGS of wrong size');
    let windowDelta = 0;
    for (let i = 0; i < p.length; i += 6) {
      const id = p.readUInt16BE(i);
      const value = p.readUInt32BE(i + 2);
      switch (id) {
        case SETTINGS_ENABLE_PUSH:
          if (value > 1) throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'ENABLE_PUSH not 0 or 1');
          break;
        case SETTINGS_MAX_CONCURRENT_STREAMS:
          this.#remoteMaxStreams = value;
          break;
        case SETTINGS_INITIAL_WINDOW_SIZE:
          if (value > MAX_WINDOW)
            throw new H2ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, 'INITIAL_WINDOW_SIZE too large');
          windowDelta += value - this.#remoteInitialWindow;
          this.#remoteInitialWindow = value;
          break;
        case SETTINGS_MAX_FRAME_SIZE:
          if (value < DEFAULT_MAX_FRAME || value > MAX_FRAME_LIMIT)
            throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'MAX_FRAME_SIZE out of range');
          this.#remoteMaxFrame = value;
          break;
        default:
          break; // header table size: our encoder never indexes; others are advisory or unknown
      }
    }
    const h = this.socket.handle;
    if (h && !binding().h2Settings(h, windowDelta, this.#remoteMaxFrame))
      throw new H2ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, 'stream window overflow');
    if (windowDelta !== 0) {
      for (const s of this.#streams.values()) {
        if (s.spliced) continue; // the binding moved its window
        s.sendWindow += windowDelta;
        if (s.sendWindow > MAX_WINDOW)
          throw new H2ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, 'stream window overflow');
      }
    }
    this.#write(settingsAck());
    if (!this.#gotSettings) {
      this.#gotSettings = true;
      if (this.#prefaceTimer) clearTimeout(this.#prefaceTimer);
      this.#prefaceTimer = undefined;
      this.emit('connect');
    }
    if (windowDelta > 0) this.#flushStreams();
  }

  #onGoaway(sid: number, p: Buffer): void {
    if (sid !== 0) throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'GOAWAY on a stream');
    if (p.length < 8) throw new H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, 'GOAWAY too short');
    const lastId = p.readUInt32BE(0) & 0x7fffffff;
    const code = p.readUInt32BE(4);
    this.#goawayReceived = true;
    // Streams we opened that the peer never saw: refused, safe to retry elsewhere.
    for (const s of [...this.#streams.values()]) {
      const ours = (s.id & 1) === (this.isServer ? 0 : 1);
      if (ours && s.id > lastId) s.onReset(ErrorCode.REFUSED_STREAM);
    }
    this.emit('goaway', code, lastId);
    if (this.#streams.size === 0) this.#end();
  }

  #onWindowUpdate(sid: number, p: Buffer): void {
    if (p.length !== 4) throw new H2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, 'WINDOW_UPDATE of wrong size');
    const inc = p.readUInt32BE(0) & 0x7fffffff;
    if (sid === 0) {
      // The binding checked it and added it to the connection's window; streams here may use it now.
      this.#flushStreams();
      return;
    }
    const s = this.#streams.get(sid);
    if (s === undefined) {
      if (this.#isIdle(sid))
        throw new H2ProtocolError(ErrorCode.PROTOCOL_ERROR, 'WINDOW_UPDATE on idle stream');
      return;
    }
    if (inc === 0) {
      s.close(ErrorCode.PROTOCOL_ERROR);
      return;
    }
    s.sendWindow += inc;
    if (s.sendWindow > MAX_WINDOW) {
      s.close(ErrorCode.FLOW_CONTROL_ERROR);
      return;
    }
    if (!this.blocked) s.onWritable();
  }
}

/**
 * A decoded header list as an object, or undefined when it is malformed (RFC 9113 §8.2): uppercase names,
 * pseudo-headers after regular ones or unknown or repeated, connection-specific fields.
 */
function toHeaders(fields: readonly HeaderField[], request: boolean): H2Headers | undefined {
  const h: H2Headers = {};
  let regular = false;
  for (const [name, value] of fields) {
    if (name.length === 0 || name !== name.toLowerCase()) return undefined;
    if (name.charCodeAt(0) === 0x3a) {
      if (regular || h[name] !== undefined) return undefined;
      const ok = request
        ? name === ':method' ||
          name === ':authority' ||
          name === ':scheme' ||
          name === ':path' ||
          name === ':protocol'
        : name === ':status';
      if (!ok) return undefined;
      h[name] = value;
      continue;
    }
    regular = true;
    if (CONNECTION_HEADERS.has(name) || (name === 'te' && value !== 'trailers')) return undefined;
    const prev = h[name];
    h[name] = prev === undefined ? value : `${prev}${name === 'cookie' ? '; ' : ', '}${value}`;
  }
  return h;
}
