import { STATUS_CODES } from 'node:http';
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
// One client's HTTP/1.1 connection through the waypoint: its tunnel stream read by llhttp, each request
// decided (intentions, route) when its head is complete, its head rewritten and its body handed on to a
// kept connection to the chosen endpoint, the response's head rewritten and its body handed back. Requests
// are answered in order: while one is in flight nothing more is read than the rest of its body (a
// pipelining client waits in its own buffers, not ours), so a client holds at most one read of ours.
import { OVERFLOW_BODY, PendingOverflow } from '../conn-gate.js';
import { FAULT_BODY, FaultAbort } from '../fault.js';
import { type NextAttempt, type RetryCause, type RetryState, retryReason } from '../retry.js';
import type { RequestRoute } from '../router.js';
import { XFCC } from '../xfcc.js';
import type { ByteStream } from './byte-stream.js';
import {
  type Framing,
  LAST_CHUNK,
  chunkOf,
  framingOf,
  headersOf,
  responseHead,
  responseMayHaveBody,
} from './head.js';
import { Http1Parser, type ParseFailure, type ParsedHead } from './parser.js';
import { HopFailure, type ResponseHandler, type UpstreamConnection } from './upstream.js';

/** How long a connection the waypoint ended waits for the client to end its side before it is reset. */
const CLOSE_GRACE_MS = 5_000;

/** One request as read: what the waypoint decides on. */
export interface ReadRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  /** HTTP/1.0 or 1.1, for the response's framing. */
  readonly http10: boolean;
  readonly upgrade: boolean;
}

/** Where a request's mirror copy takes its body: the frames the endpoint gets, then the end of them. */
export interface MirrorSink {
  /** A body frame as the endpoint gets it (`owned`: not a view of a read). */
  keep(frame: Buffer, owned: boolean): void;
  /** The body is whole: the copy goes. */
  whole(): void;
  /** The request ended before its body was whole (the client went, the answer came first): no copy. */
  abandon(): void;
}

/** What the waypoint decided for a request before it went anywhere. */
export type Decision =
  | { readonly ok: true; readonly route: RequestRoute }
  | { readonly ok: false; readonly status: number; readonly body: string };

/** What a connection asks of the waypoint; `T` is the waypoint's account of one request. */
export interface ExchangeHost<T> {
  begin(req: ReadRequest): T;
  decide(req: ReadRequest, account: T): Decision;
  /** The endpoint's connection for this route: a kept one at once, else a promise of a new one. */
  upstream(route: RequestRoute): UpstreamConnection | Promise<UpstreamConnection>;
  /** The request head the endpoint gets. */
  requestHead(req: ReadRequest, route: RequestRoute, account: T): string;
  /** The response fields the client gets (hop-by-hop dropped, the route's changes made). */
  responseFields(route: RequestRoute, headers: IncomingHttpHeaders): OutgoingHttpHeaders;
  /** Bytes of the request's and the response's bodies, and what the account shows. */
  bodyIn(account: T, n: number): void;
  bodyOut(account: T, n: number): void;
  /** The endpoint answered (its head), or could not be reached. */
  answered(account: T, route: RequestRoute, status: number, upstream: UpstreamConnection): void;
  upstreamFailed(account: T, route: RequestRoute, err: Error): void;
  /** The exchange is over: status 0 if nothing was answered; `flag` Envoy's response flag if any. */
  finished(account: T, route: RequestRoute | undefined, status: number, outcome: string, flag?: string): void;
  /** llhttp refused the client's bytes. */
  malformed(failure: ParseFailure, status: number): void;
  /** One of the route's timeouts ended the exchange (`why` for the access log). */
  timedOut(account: T, why: string): void;
  /** A request's head did not arrive whole within `ms` of the connection going idle (slowloris). */
  slow(ms: number): void;
  /** The request's retries, for a route with a retry policy (retry.ts). */
  retrying?(account: T, route: RequestRoute): RetryState | undefined;
  /** Another attempt after `cause` ended this one, or none (the client gets what ended it). */
  retry?(
    account: T,
    state: RetryState,
    route: RequestRoute,
    cause: RetryCause,
    replayable: boolean,
  ): NextAttempt | undefined;
  /** The request's body outgrew what is kept for a retry. */
  replayOverflow?(account: T, route: RequestRoute): void;
  /** The request's mirror copy, for a route that drew one (mirror.ts), within the waypoint's bounds. */
  mirror?(req: ReadRequest, route: RequestRoute, account: T): MirrorSink | undefined;
}

class Exchange<T> implements ResponseHandler {
  readonly conn: ClientConnection<T>;
  readonly req: ReadRequest;
  readonly account: T;
  readonly keepAlive: boolean;
  readonly reqFraming: Framing;
  /** No body follows the head (neither a length above 0 nor chunks). */
  readonly bodyless: boolean;
  route: RequestRoute | undefined;
  up: UpstreamConnection | undefined;
  /** Body frames (framed for the endpoint) read before the endpoint's connection was ready. */
  held: Buffer[] | undefined;
  reqEnded = false;
  /** The endpoint cannot take more now (its stream's buffer is full). */
  blocked = false;
  sent100 = false;
  /** What the client gets of the response: how its body is framed, and whether it was started. */
  resFraming: Framing = 'none';
  status = 0;
  interim = false;
  started = false;
  upgraded = false;
  /** After this exchange the connection ends (the client asked, the body was not read, ...). */
  closeAfter = false;
  done = false;
  /** The route's RequestTimeout, from the end of the request; its IdleTimeout, from the last byte. */
  deadline: NodeJS.Timeout | undefined;
  idle: NodeJS.Timeout | undefined;
  /** Its retries (a route with a retry policy): the body kept, the attempts made. */
  retry: RetryState | undefined;
  /** The endpoint's answer is being retried: its body is read and dropped, then the next attempt goes. */
  discarding = false;
  next: NextAttempt | undefined;
  backoff: NodeJS.Timeout | undefined;
  /** An attempt failed before the body was all read: the rest is read into the replay buffer, then decided. */
  pending: { readonly cause: RetryCause; readonly otherwise: () => void } | undefined;
  /** Its mirror copy, taking the same body frames until the body is whole. */
  mirror: MirrorSink | undefined;
  /**
   * A head not written yet because a body frame is likely in the same read: the two go in one write
   * (one syscall, one tunnel frame) instead of two. The request's, to the endpoint; the response's, to
   * the client. Written alone once the read is parsed if nothing came to join it.
   */
  reqHeadOut: Buffer | undefined = undefined;
  resHeadOut: Buffer | undefined = undefined;

  constructor(conn: ClientConnection<T>, req: ReadRequest, account: T, keepAlive: boolean) {
    this.conn = conn;
    this.req = req;
    this.account = account;
    this.keepAlive = keepAlive;
    const framing = framingOf(req.headers, true);
    this.reqFraming = framing === 'chunked' ? 'chunked' : 'length';
    this.bodyless =
      framing === 'close' || (framing === 'length' && Number(req.headers['content-length']) === 0);
  }

  /** The request's body is all read, or there is none: the connection can carry the next request. */
  get readWhole(): boolean {
    return this.reqEnded || this.bodyless;
  }

  // ---- the endpoint's response (ResponseHandler)

  head(h: ParsedHead): boolean {
    return this.conn.responseHead(this, h);
  }
  body(chunk: Buffer): void {
    this.conn.responseBody(this, chunk);
  }
  end(): void {
    this.conn.responseEnd(this);
  }
  raw(chunk: Buffer): void {
    this.conn.writeClient(chunk);
  }
  rawEnd(): void {
    this.conn.upgradedEnd();
  }
  lost(why: string): void {
    this.conn.upstreamLost(this, why);
  }
  drain(): void {
    this.blocked = false;
    this.conn.upstreamDrained();
  }
  parsed(): void {
    if (this.resHeadOut !== undefined) this.conn.flushResponseHead(this);
  }
}

export class ClientConnection<T> {
  readonly #host: ExchangeHost<T>;
  readonly stream: ByteStream;
  readonly #parser: Http1Parser;
  /** Requests read, in order; the first is the one in flight. */
  readonly #queue: Exchange<T>[] = [];
  /** The request whose body the parser is reading, if any. */
  #reading: Exchange<T> | undefined;
  #timer: NodeJS.Timeout;
  #executing = false;
  /** The client's bytes are no longer HTTP: after a 101, or after a refusal of what it sent. */
  #upgradedTo: UpstreamConnection | undefined;
  #poisoned: { readonly status: number } | undefined;
  #clientEnded = false;
  #ending = false;
  /** Draining: the next answer is the last, with `connection: close` (see drain). */
  #draining = false;
  /** Client bytes after an upgrade request's head, held until the endpoint answers 101. */
  #upgradeHead: Buffer[] = [];
  /** The client cannot take more now: this endpoint connection is paused until it can. */
  #pausedUp: UpstreamConnection | undefined;
  /** After an upgrade: the endpoint cannot take more of the client's bytes now. */
  #upgradeBlocked = false;
  /** A request's head has begun and is not complete (what the idle timer then refuses as too slow). */
  #inHead = false;
  /** The exchange whose request head waits for its first body frame of the read being parsed. */
  #headHeld: Exchange<T> | undefined;
  readonly #onDone: () => void;

  readonly #idleMs: number;

  constructor(
    host: ExchangeHost<T>,
    stream: ByteStream,
    limits: { readonly headTimeoutMs: number; readonly maxHeadBytes: number },
    onDone: () => void,
  ) {
    this.#host = host;
    this.#idleMs = limits.headTimeoutMs;
    this.stream = stream;
    this.#onDone = onDone;
    this.#parser = new Http1Parser(
      'request',
      {
        begin: () => {
          this.#inHead = true;
        },
        head: (h) => this.#requestHead(h),
        body: (c) => this.#requestBody(c),
        end: () => this.#requestEnd(),
      },
      limits.maxHeadBytes,
    );
    stream.on('data', (c: Buffer) => this.#data(c));
    stream.on('end', () => this.#clientEnd());
    stream.on('close', () => this.#closed());
    stream.on('drain', () => this.#clientDrained());
    stream.on('error', () => {});
    this.#timer = setTimeout(() => this.#idle(), this.#idleMs);
    this.#timer.unref();
    stream.resume();
  }

  /** Ends the connection now (the waypoint is stopping). */
  destroy(): void {
    this.stream.destroy();
  }

  // ---- the client's bytes

  #data(chunk: Buffer): void {
    if (this.#upgradedTo) {
      if (!this.#upgradedTo.stream.write(chunk)) {
        this.#upgradeBlocked = true;
        this.stream.pause();
      }
      return;
    }
    if (this.#poisoned || this.#ending) return;
    const active = this.#queue[0];
    if (active?.req.upgrade && !active.upgraded) {
      this.#upgradeHead.push(Buffer.from(chunk));
      this.flow();
      return;
    }
    this.#executing = true;
    const r = this.#parser.execute(chunk);
    this.#executing = false;
    const held = this.#headHeld;
    if (held !== undefined) {
      this.#headHeld = undefined;
      this.#flushRequestHead(held);
    }
    if (!r.ok) {
      this.#malformed(r.failure);
      return;
    }
    if (r.consumed < chunk.length) {
      // An upgrade's head ended inside this chunk: what follows is for the upgraded connection.
      this.#upgradeHead.push(Buffer.from(chunk.subarray(r.consumed)));
    }
    this.flow();
  }

  #requestHead(h: ParsedHead): boolean {
    this.#inHead = false;
    const req: ReadRequest = {
      method: h.method ?? 'GET',
      url: h.url,
      headers: headersOf(h.fields),
      http10: h.versionMajor === 1 && h.versionMinor === 0,
      upgrade: h.upgrade,
    };
    const ex = new Exchange(this, req, this.#host.begin(req), h.keepAlive);
    this.#reading = ex;
    this.#queue.push(ex);
    if (this.#queue.length === 1) this.#start(ex);
    return false;
  }

  #requestBody(chunk: Buffer): void {
    const ex = this.#reading;
    if (ex === undefined || ex.done) return;
    this.#host.bodyIn(ex.account, chunk.length);
    ex.idle?.refresh();
    this.#toEndpoint(ex, ex.reqFraming === 'chunked' ? chunkOf(chunk) : chunk);
  }

  #requestEnd(): void {
    const ex = this.#reading;
    this.#reading = undefined;
    if (ex === undefined) return;
    ex.reqEnded = true;
    if (ex.done) return;
    if (ex.route) this.#armDeadline(ex);
    if (ex.reqFraming === 'chunked') this.#toEndpoint(ex, LAST_CHUNK);
    ex.mirror?.whole();
    if (ex.pending) this.#settle(ex);
  }

  /**
   * Hands a body frame on, or holds it until it can go. Held and kept (for a replay, a mirror) as it is,
   * never copied: the parser's chunk is its own copy (parser.ts), a chunk frame or LAST_CHUNK a buffer
   * nothing writes into again.
   */
  #toEndpoint(ex: Exchange<T>, frame: Buffer): void {
    ex.mirror?.keep(frame, true);
    if (ex.retry !== undefined) {
      this.#keep(ex, frame);
      // No endpoint to give it to: it is kept (or, past the bound, the failure goes to the client).
      if (ex.pending) return;
    }
    if (ex === this.#queue[0] && ex.up !== undefined && ex.held === undefined) {
      const head = ex.reqHeadOut;
      let out = frame;
      if (head !== undefined) {
        ex.reqHeadOut = undefined;
        if (this.#headHeld === ex) this.#headHeld = undefined;
        out = Buffer.concat([head, frame], head.length + frame.length);
      }
      if (!ex.up.stream.write(out)) ex.blocked = true;
      return;
    }
    if (ex.held === undefined) ex.held = [frame];
    else ex.held.push(frame);
  }

  /** A body frame kept for a replay, while the bound allows. */
  #keep(ex: Exchange<T>, frame: Buffer): void {
    const body = ex.retry!.body;
    if (body.overflowed || body.push(frame, true)) return;
    this.#host.replayOverflow?.(ex.account, ex.route!);
    if (ex.pending) this.#settle(ex);
  }

  /**
   * A retry that waits for the rest of the body: true if `cause` would be retried but the body is still
   * arriving, and within the bound so far (what is read next decides).
   */
  #awaitBody(ex: Exchange<T>, cause: RetryCause, otherwise: () => void): boolean {
    if (ex.readWhole || ex.retry!.body.overflowed || retryReason(ex.route!.retry!, cause) === undefined)
      return false;
    ex.pending = { cause, otherwise };
    this.flow();
    return true;
  }

  /** The body is all read, or over the bound: the failed attempt is retried now, or answered. */
  #settle(ex: Exchange<T>): void {
    const p = ex.pending!;
    ex.pending = undefined;
    if (!ex.done && this.#retries(ex, p.cause)) this.#again(ex);
    else if (!ex.done) p.otherwise();
    this.flow();
  }

  // ---- one exchange

  #start(ex: Exchange<T>): void {
    const { req } = ex;
    const decision: Decision =
      req.method === 'CONNECT'
        ? { ok: false, status: 405, body: 'CONNECT is not forwarded' }
        : this.#host.decide(req, ex.account);
    if (!decision.ok) {
      this.#answer(ex, decision.status, decision.body);
      return;
    }
    const route = decision.route;
    ex.route = route;
    if (route.retry !== undefined && !req.upgrade) {
      ex.retry = this.#host.retrying?.(ex.account, route);
      // A pipelined request's body read before its turn: kept like the rest.
      if (ex.retry && ex.held) for (const f of ex.held) this.#keep(ex, f);
    }
    if (route.mirror !== undefined && !req.upgrade) {
      ex.mirror = this.#host.mirror?.(req, route, ex.account);
      if (ex.mirror) {
        for (const f of ex.held ?? []) ex.mirror.keep(f, true);
        if (ex.readWhole) ex.mirror.whole();
      }
    }
    const idleMs = route.timeouts?.idleMs;
    if (idleMs !== undefined && idleMs > 0) {
      ex.idle = setTimeout(() => this.#timedOut(ex, 'idle'), idleMs);
      ex.idle.unref();
    }
    if (ex.reqEnded) this.#armDeadline(ex);
    const expect = req.headers.expect;
    if (expect !== undefined && !req.http10 && !req.upgrade && /^\s*100-continue\s*$/i.test(expect)) {
      // As Envoy does by default: the waypoint says Continue itself, and the endpoint is not asked.
      ex.sent100 = true;
      this.writeClient(Buffer.from('HTTP/1.1 100 Continue\r\n\r\n'));
    }
    this.#connect(ex);
  }

  /** The attempt's connection to its endpoint: a kept one, else a new one. */
  #connect(ex: Exchange<T>): void {
    const up = this.#host.upstream(ex.route!);
    if (up instanceof Promise) {
      up.then(
        (c) => this.#attach(ex, c),
        (err: Error) => this.#unreachable(ex, err),
      );
    } else this.#attach(ex, up);
  }

  #attach(ex: Exchange<T>, up: UpstreamConnection): void {
    if (ex.done || this.stream.destroyed) {
      up.release();
      return;
    }
    ex.up = up;
    up.lend(ex);
    const route = ex.route!;
    const head = Buffer.from(this.#host.requestHead(ex.req, route, ex.account), 'latin1');
    // A retry replays the whole body kept (it is only retried when that is all of it).
    const held = ex.retry && ex.retry.attempts > 1 ? ex.retry.body.chunks : ex.held;
    if (
      held === undefined &&
      this.#executing &&
      this.#reading === ex &&
      !ex.readWhole &&
      (ex.retry === undefined || ex.retry.attempts === 1) &&
      !ex.req.upgrade
    ) {
      // Its head was just parsed and its body follows, usually in the same read: they go together. A first
      // attempt under a retry policy too (its body frames are kept for a replay as they go); a replay
      // writes what was kept.
      ex.reqHeadOut = head;
      this.#headHeld = ex;
      this.flow();
      return;
    }
    let ok = up.stream.write(head);
    ex.held = undefined;
    if (held) for (const f of held) ok = up.stream.write(f) && ok;
    if (!ok) ex.blocked = true;
    this.flow();
  }

  /** The request's head, alone: no body frame came in the read that completed it. */
  #flushRequestHead(ex: Exchange<T>): void {
    const head = ex.reqHeadOut;
    ex.reqHeadOut = undefined;
    if (head === undefined || ex.done || ex.up === undefined) return;
    if (!ex.up.stream.write(head)) ex.blocked = true;
  }

  #unreachable(ex: Exchange<T>, err: Error): void {
    if (ex.done) return;
    // The destination's 401 (the client's intentions) and 400 are answers, and an injected abort is the
    // waypoint's own: never retried.
    const final =
      err instanceof FaultAbort ||
      err instanceof PendingOverflow ||
      (err instanceof HopFailure && (err.status === 401 || err.status === 400));
    if (ex.retry && !final) {
      const cause: RetryCause = { kind: 'connect-failure' };
      if (this.#awaitBody(ex, cause, () => this.#unreachableAnswer(ex, err))) return;
      if (this.#retries(ex, cause)) {
        this.#again(ex);
        return;
      }
    }
    this.#unreachableAnswer(ex, err);
  }

  #unreachableAnswer(ex: Exchange<T>, err: Error): void {
    const route = ex.route!;
    this.#host.upstreamFailed(ex.account, route, err);
    if (err instanceof FaultAbort) {
      this.#answer(ex, err.status, FAULT_BODY, 'FI');
      return;
    }
    if (err instanceof PendingOverflow) {
      this.#answer(ex, 503, OVERFLOW_BODY, 'UO');
      return;
    }
    const status = err instanceof HopFailure ? hopStatus(err.status) : 503;
    this.#answer(ex, status, status === 403 ? 'RBAC: access denied' : 'upstream connect error', 'UF');
  }

  /** The endpoint's head. 1xx go on ahead (but a second 100 Continue); a 101 joins the two connections. */
  responseHead(ex: Exchange<T>, h: ParsedHead): boolean {
    if (ex.done) return true;
    const { status } = h;
    if (status >= 100 && status < 200 && !(status === 101 && h.upgrade)) {
      ex.interim = true;
      if (status === 100 && ex.sent100) return false;
      if (status === 100) ex.sent100 = true;
      this.writeClient(Buffer.from(`HTTP/1.1 ${status} ${h.reason}\r\n${rawLines(h.fields)}\r\n`, 'latin1'));
      return false;
    }
    if (
      ex.retry &&
      status !== 101 &&
      this.#retries(ex, {
        kind: 'response',
        status,
        // Only looked for when a condition asks: every other answer would lower-case each field name.
        rateLimited: ex.route!.retry!.on.has('envoy-ratelimited') && rateLimitedHead(h.fields),
      })
    ) {
      // Read to its end and dropped: the connection then serves the next attempt or another request.
      ex.discarding = true;
      return ex.req.method === 'HEAD';
    }
    const route = ex.route!;
    ex.status = status;
    ex.started = true;
    ex.retry?.body.close();
    this.#host.answered(ex.account, route, status, ex.up!);
    if (status === 101) {
      ex.upgraded = true;
      this.#upgradedTo = ex.up;
      this.writeClient(Buffer.from(`HTTP/1.1 101 ${h.reason}\r\n${rawLines(h.fields)}\r\n`, 'latin1'));
      for (const c of this.#upgradeHead) ex.up!.stream.write(c);
      this.#upgradeHead = [];
      this.stream.resume();
      return true;
    }
    const headers = headersOf(h.fields);
    const fields = this.#host.responseFields(route, headers);
    const framing = framingOf(headers, responseMayHaveBody(ex.req.method, status));
    if (ex.req.upgrade) ex.closeAfter = true;
    if (framing === 'chunked' || framing === 'close') {
      Reflect.deleteProperty(fields, 'content-length');
      if (ex.req.http10) {
        ex.resFraming = 'close';
        ex.closeAfter = true;
      } else {
        ex.resFraming = 'chunked';
        fields['transfer-encoding'] = 'chunked';
      }
    } else ex.resFraming = framing;
    if (this.#lastBeforeDrain(ex)) ex.closeAfter = true;
    if (!ex.keepAlive || ex.closeAfter || !ex.readWhole) {
      // A body the client is still sending when the answer is over cannot be skipped safely.
      if (!ex.readWhole) ex.closeAfter = true;
      fields.connection = 'close';
    } else if (ex.req.http10) fields.connection = 'keep-alive';
    const head = Buffer.from(responseHead(status, h.reason, fields), 'latin1');
    // Its body (or its end) follows, usually in the same read: written with it (parsed() flushes it).
    if (ex.resFraming !== 'none' && ex.req.method !== 'HEAD') ex.resHeadOut = head;
    else this.writeClient(head);
    return ex.req.method === 'HEAD';
  }

  /** The response's head, alone: the read that completed it held none of its body. */
  flushResponseHead(ex: Exchange<T>): void {
    const head = ex.resHeadOut;
    ex.resHeadOut = undefined;
    if (head !== undefined) this.writeClient(head);
  }

  responseBody(ex: Exchange<T>, chunk: Buffer): void {
    if (ex.done || ex.discarding) return;
    this.#host.bodyOut(ex.account, chunk.length);
    ex.idle?.refresh();
    const head = ex.resHeadOut;
    if (head === undefined) {
      this.writeClient(ex.resFraming === 'chunked' ? chunkOf(chunk) : chunk);
      return;
    }
    ex.resHeadOut = undefined;
    this.writeClient(
      ex.resFraming === 'chunked'
        ? Buffer.concat([head, chunkOf(chunk)])
        : Buffer.concat([head, chunk], head.length + chunk.length),
    );
  }

  responseEnd(ex: Exchange<T>): void {
    if (ex.done) return;
    if (ex.interim) {
      ex.interim = false;
      return;
    }
    if (ex.discarding) {
      const up = ex.up;
      ex.up = undefined;
      up?.release();
      this.#again(ex);
      return;
    }
    const head = ex.resHeadOut;
    ex.resHeadOut = undefined;
    if (ex.resFraming === 'chunked')
      this.writeClient(head === undefined ? LAST_CHUNK : Buffer.concat([head, LAST_CHUNK]));
    else if (head !== undefined) this.writeClient(head);
    if (!ex.reqEnded && ex.up) ex.up.reusable = false;
    this.#finish(ex, 'completed');
  }

  upstreamLost(ex: Exchange<T>, why: string): void {
    if (ex.done) return;
    if (ex.upgraded) {
      // Both ends closed cleanly is the end of the upgraded connection; a reset is passed on as one.
      if (this.#upgradedTo?.stream.rstCode === 0) this.stream.end();
      else this.stream.destroy();
      return;
    }
    ex.up = undefined;
    if (ex.discarding) {
      this.#again(ex);
      return;
    }
    if (!ex.started && ex.retry) {
      const cause: RetryCause = { kind: 'reset' };
      if (this.#awaitBody(ex, cause, () => this.#lostAnswer(ex, why))) return;
      if (this.#retries(ex, cause)) {
        this.#again(ex);
        return;
      }
    }
    if (!ex.started) {
      this.#lostAnswer(ex, why);
      return;
    }
    // The answer is cut short: the client must see it was (a reset, not a clean end).
    this.#finish(ex, 'reset', 'UC');
    this.stream.destroy();
  }

  /**
   * Whether the attempt that ended with `cause` is retried (then `ex.next` holds where and when). Only
   * before the client got anything of the answer, and with the whole body kept.
   */
  #retries(ex: Exchange<T>, cause: RetryCause): boolean {
    const state = ex.retry!;
    const replayable = ex.readWhole && !state.body.overflowed && !ex.started;
    const next = this.#host.retry?.(ex.account, state, ex.route!, cause, replayable);
    if (!next) return false;
    ex.next = next;
    return true;
  }

  /** The next attempt, after its backoff: the route (and its hold) is the new one from now on. */
  #again(ex: Exchange<T>): void {
    const next = ex.next;
    if (!next) return;
    ex.next = undefined;
    ex.route = next.route;
    ex.discarding = false;
    ex.blocked = false;
    ex.backoff = setTimeout(() => {
      ex.backoff = undefined;
      if (ex.done || this.stream.destroyed) return;
      this.#connect(ex);
    }, next.delayMs);
    ex.backoff.unref();
  }

  #lostAnswer(ex: Exchange<T>, why: string): void {
    this.#host.upstreamFailed(ex.account, ex.route!, new HopFailure(503, why));
    this.#answer(ex, 503, 'upstream connect error', 'UF');
  }

  upgradedEnd(): void {
    this.stream.end();
  }

  /** A response the waypoint makes itself; the request's body, unread, ends the connection after it. */
  #answer(ex: Exchange<T>, status: number, body: string, flag?: string): void {
    if (ex.started) {
      this.#finish(ex, 'reset', flag);
      this.stream.destroy();
      return;
    }
    ex.status = status;
    ex.started = true;
    if (!ex.readWhole || !ex.keepAlive || ex.req.upgrade || this.#lastBeforeDrain(ex)) ex.closeAfter = true;
    const fields: OutgoingHttpHeaders = {
      'content-type': 'text/plain',
      'content-length': Buffer.byteLength(body),
    };
    if (ex.closeAfter) fields.connection = 'close';
    this.writeClient(Buffer.from(responseHead(status, STATUS_CODES[status] ?? '', fields) + body, 'latin1'));
    this.#finish(ex, 'completed', flag);
  }

  /** As Envoy's route timeout: from the end of the request to the end of the response. */
  #armDeadline(ex: Exchange<T>): void {
    const ms = ex.route?.timeouts?.requestMs;
    if (ms === undefined || ms <= 0 || ex.deadline) return;
    // As Envoy's router, which a fault's delay holds the request ahead of: the delay is not the endpoint's.
    const delay = ex.route?.fault?.delayMs ?? 0;
    ex.deadline = setTimeout(() => this.#timedOut(ex, 'request'), ms + delay);
    ex.deadline.unref();
  }

  /**
   * A route timeout fired: before the endpoint answered, the waypoint answers (504 upstream request timeout,
   * UT; 408 stream timeout, SI, for idleness); after, the answer is cut (a reset). Never reused: the
   * endpoint may still be answering on that connection.
   */
  #timedOut(ex: Exchange<T>, which: 'request' | 'idle'): void {
    if (ex.done) return;
    const ms = which === 'request' ? ex.route?.timeouts?.requestMs : ex.route?.timeouts?.idleMs;
    this.#host.timedOut(ex.account, `${which === 'request' ? 'RequestTimeout' : 'IdleTimeout'} of ${ms} ms`);
    if (ex.up) ex.up.reusable = false;
    const flag = which === 'request' ? 'UT' : 'SI';
    if (which === 'request') this.#answer(ex, 504, 'upstream request timeout', flag);
    else this.#answer(ex, 408, 'stream timeout', flag);
  }

  #finish(ex: Exchange<T>, outcome: string, flag?: string): void {
    if (ex.done) return;
    this.flushResponseHead(ex);
    if (ex.reqHeadOut !== undefined) {
      // Never sent: the endpoint's connection carries nothing of this request.
      ex.reqHeadOut = undefined;
      if (this.#headHeld === ex) this.#headHeld = undefined;
    }
    ex.done = true;
    ex.mirror?.abandon();
    clearTimeout(ex.deadline);
    clearTimeout(ex.idle);
    clearTimeout(ex.backoff);
    const up = ex.up;
    ex.up = undefined;
    if (up && !ex.upgraded) {
      if (!ex.reqEnded) up.reusable = false;
      // Kept for another client's exchange: it must not stay paused for this one's reader.
      if (this.#pausedUp === up) this.#unpause();
      up.release();
    }
    this.#host.finished(ex.account, ex.route, ex.status, outcome, flag);
    this.#queue.shift();
    if (this.stream.destroyed) return;
    if (ex.closeAfter || !ex.keepAlive) {
      this.#end();
      return;
    }
    const next = this.#queue[0];
    if (next) this.#start(next);
    else if (this.#clientEnded) this.#end();
    else this.#timer.refresh();
    this.flow();
  }

  // ---- flow

  writeClient(chunk: Buffer): void {
    if (this.stream.destroyed) return;
    if (!this.stream.write(chunk)) {
      const up = this.#queue[0]?.up ?? this.#upgradedTo;
      if (up && this.#pausedUp === undefined) {
        this.#pausedUp = up;
        up.stream.pause();
      }
    }
  }

  #clientDrained(): void {
    this.#unpause();
  }

  /** The endpoint connection paused for this client reads again (the client drained, or is done with it). */
  #unpause(): void {
    const up = this.#pausedUp;
    this.#pausedUp = undefined;
    up?.stream.resume();
  }

  upstreamDrained(): void {
    if (this.#upgradedTo) {
      if (!this.#upgradeBlocked) return;
      this.#upgradeBlocked = false;
      this.stream.resume();
      return;
    }
    this.flow();
  }

  /**
   * Reads on only while what it reads can go somewhere: a new request's head when none is in flight, the
   * body of the one in flight while its endpoint takes it. Never from inside the parser's own call.
   */
  flow(): void {
    if (this.#executing || this.stream.destroyed || this.#upgradedTo) return;
    // (After an upgrade, the two connections' own backpressure decides: see #data and upstreamDrained.)
    const ex = this.#queue[0];
    const read =
      !this.#ending &&
      !this.#poisoned &&
      (ex === undefined ||
        (!ex.reqEnded &&
          !ex.done &&
          ((ex.up !== undefined && !ex.blocked) || ex.pending !== undefined) &&
          !(ex.req.upgrade && !ex.upgraded)));
    if (read) this.stream.resume();
    else this.stream.pause();
  }

  // ---- the connection's end

  /**
   * A drain (a reload, a re-exec, a stop), as Envoy's for HTTP/1.1: the answer of the last request read says
   * `connection: close` and the connection ends after it, so that the client opens its next one to the
   * workers that accept now. One idle now is not closed at once, which would race a request the client
   * is sending on it: its next answer says close, or its idle timeout ends it.
   */
  drain(): void {
    this.#draining = true;
  }

  /** Draining, and no other request read behind this one, nor one begun: its answer can be the last. */
  #lastBeforeDrain(ex: Exchange<T>): boolean {
    return this.#draining && this.#queue[this.#queue.length - 1] === ex && !this.#inHead;
  }

  #malformed(f: ParseFailure): void {
    const status = f.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    this.#host.malformed(f, status);
    this.#poisoned = { status };
    const ex = this.#queue[0];
    if (ex && !ex.done) {
      // What came after a request in flight is refused once its answer is out.
      ex.closeAfter = true;
      this.stream.pause();
      return;
    }
    this.writeClient(
      Buffer.from(
        `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`,
      ),
    );
    this.#end();
  }

  #clientEnd(): void {
    this.#clientEnded = true;
    if (this.#upgradedTo) {
      this.#upgradedTo.stream.end();
      return;
    }
    if (this.#queue.length === 0) this.#end();
  }

  /** Ends our side (after what was written), and resets the stream if the client does not end its own. */
  #end(): void {
    if (this.#ending) return;
    this.#ending = true;
    clearTimeout(this.#timer);
    this.stream.end();
    setTimeout(() => this.stream.destroy(), CLOSE_GRACE_MS).unref();
  }

  /** The idle timer: a keep-alive connection unused, or a head that did not arrive whole in time. */
  #idle(): void {
    if (this.#queue.length > 0) return;
    if (this.#inHead) {
      this.#host.slow(this.#idleMs);
      this.writeClient(
        Buffer.from('HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n'),
      );
    }
    this.#end();
  }

  #closed(): void {
    clearTimeout(this.#timer);
    this.#parser.close();
    for (const ex of this.#queue.splice(0)) {
      if (ex.done) continue;
      ex.done = true;
      ex.mirror?.abandon();
      clearTimeout(ex.deadline);
      clearTimeout(ex.idle);
      clearTimeout(ex.backoff);
      if (ex.upgraded) {
        this.#host.finished(ex.account, ex.route, ex.status, 'upgraded');
        continue;
      }
      if (ex.up) ex.up.destroy();
      this.#host.finished(ex.account, ex.route, ex.started ? ex.status : 0, 'reset', 'DC');
    }
    if (this.#upgradedTo) this.#upgradedTo.destroy();
    this.#onDone();
  }
}

/** Raw fields as lines, but the one only waypoints may set. */
function rawLines(fields: readonly string[]): string {
  let out = '';
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (fields[i]!.toLowerCase() === XFCC) continue;
    out += `${fields[i]}: ${fields[i + 1]}\r\n`;
  }
  return out;
}

/** What the client is answered for a failed hop: the destination's 401 is the client's intentions, 403. */
const hopStatus = (status: number): number => (status === 401 ? 403 : status === 400 ? 400 : 503);

/** The head carries x-envoy-ratelimited (what RetryOn envoy-ratelimited retries). */
function rateLimitedHead(fields: readonly string[]): boolean {
  for (let i = 0; i < fields.length; i += 2)
    if (fields[i]!.toLowerCase() === 'x-envoy-ratelimited') return true;
  return false;
}
