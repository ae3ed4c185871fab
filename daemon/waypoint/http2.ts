import {
  constants,
  type ClientHttp2Session,
  type ClientHttp2Stream,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
  type ServerOptions,
  connect,
  performServerHandshake,
} from 'node:http2';
import { grpcToHttp } from '../../lib/l7/fault.js';
import { shadowHost } from '../../lib/l7/mirror.js';
import type { Logger } from '../../lib/log.js';
import type { Workload } from '../../lib/mesh/model.js';
import type { Refusals } from '../limits/refusal.js';
import type { Metrics } from '../metrics/metrics.js';
import type { OutboundPlan } from '../proxy/outbound/plan.js';
// HTTP/2 and gRPC at the waypoint: node:http2's server (nghttp2) over each client's tunnel stream, with
// prior knowledge, and to each endpoint one node:http2 client session per client identity over a tunnel
// stream of the waypoint's own hop. Requests are streams on both sides; bodies are piped, so a slow reader
// holds its writer through both sessions' flow control instead of filling the waypoint's memory. Each
// request is decided as HTTP/1.1's are (decide.ts: L7 intentions, then the route), carries the trace
// fields, and is counted in Istio's request metrics with one access-log line.
import { ConnectionGate, type ConnectionLimit, OVERFLOW_BODY, PendingOverflow } from './conn-gate.js';
import { decide, refusePending } from './decide.js';
import { StreamDuplex } from './duplex.js';
import { FAULT_BODY, faultFlags } from './fault.js';
import { withConnectTimeout } from './h1/upstream.js';
import { forwardRequestHeaders, forwardResponseHeaders } from './headers.js';
import { type HopDeps, openHop } from './hop.js';
import type { HttpContext } from './http.js';
import { type Trace, addSetCookie, applyHeaderOps, setTraceHeaders, traceOf } from './l7-headers.js';
import type { MirrorCopy, Mirrors } from './mirror.js';
import { type Retries, type RetryCause, retryReason, withRetryFlag } from './retry.js';
import type { RequestRoute, WaypointRouter } from './router.js';
import { type RequestRecord, countRequest, logRequest, tapRequest } from './telemetry.js';
import { XFCC } from './xfcc.js';

export interface WaypointHttp2Deps {
  readonly hop: HopDeps;
  readonly router: WaypointRouter;
  readonly log: Logger;
  readonly refusals: Refusals;
  readonly metrics: Metrics;
  /** The tunnel's own bounds, applied to the HTTP/2 inside it too (docs/limits.md). */
  readonly limits: Http2Limits;
  /** Retries by the routes' policies; none: nothing is retried. */
  readonly retries?: Retries;
  /** Mirror copies by the routes' policies; none: nothing is mirrored. */
  readonly mirrors?: Mirrors;
}

export interface Http2Limits {
  /** Concurrent streams a client session may open (SETTINGS_MAX_CONCURRENT_STREAMS). */
  readonly maxStreams: number;
  /** Decoded header bytes per header block (SETTINGS_MAX_HEADER_LIST_SIZE). */
  readonly maxHeaderListSize: number;
  /** Streams per second a client may reset before they are answered. */
  readonly streamResetRate: number;
}

export const DEFAULT_HTTP2_LIMITS: Http2Limits = {
  maxStreams: 200,
  maxHeaderListSize: 16_384,
  streamResetRate: 100,
};

/** What the waypoint itself answers a request it cannot carry. */
export type WaypointFailure = 'unavailable' | 'timeout' | 'idle' | 'denied' | 'rate_limited' | 'overflow';

/** Each failure as plain HTTP/2 and as gRPC (https://grpc.github.io/grpc/core/md_doc_statuscodes.html). */
const FAILURES: Record<WaypointFailure, { status: number; grpc: number; text: string }> = {
  unavailable: { status: 503, grpc: 14, text: 'no healthy upstream' },
  timeout: { status: 504, grpc: 4, text: 'upstream request timeout' },
  // Envoy's stream idle timeout is a local 408, and its gRPC status the HTTP mapping's: 2 UNKNOWN.
  idle: { status: 408, grpc: 2, text: 'stream timeout' },
  denied: { status: 403, grpc: 7, text: 'RBAC: access denied' },
  rate_limited: { status: 429, grpc: 8, text: 'local_rate_limited' },
  overflow: { status: 503, grpc: 14, text: OVERFLOW_BODY },
};

/** A request is gRPC by its content-type, as gRPC over HTTP/2 defines it and as Envoy tells it. */
export const isGrpc = (h: IncomingHttpHeaders): boolean =>
  /^application\/grpc(?:[+;]|$)/i.test(String(h['content-type'] ?? ''));

/**
 * Answers `stream` with the waypoint's own error: for gRPC a trailers-only response (HTTP 200, grpc-status,
 * grpc-message), so that a gRPC client reports the status instead of a transport failure; otherwise the
 * HTTP status with a short text body. A stream already answered is reset instead. For the L7 router too:
 * an intention's denial is `respondFailure(stream, 'denied', isGrpc(headers))`.
 */
export function respondFailure(
  stream: ServerHttp2Stream,
  failure: WaypointFailure,
  grpc: boolean,
  message: string = FAILURES[failure].text,
): void {
  if (stream.destroyed || stream.closed) return;
  if (stream.headersSent) {
    resetStream(stream, constants.NGHTTP2_INTERNAL_ERROR);
    return;
  }
  const f = FAILURES[failure];
  if (grpc) {
    stream.respond(
      {
        ':status': 200,
        'content-type': 'application/grpc',
        'grpc-status': String(f.grpc),
        'grpc-message': grpcMessage(message),
      },
      { endStream: true },
    );
    return;
  }
  stream.respond({ ':status': f.status, 'content-type': 'text/plain' });
  stream.end(message);
}

/**
 * A grpc-message as gRPC over HTTP/2 encodes it: UTF-8, every byte outside printable ASCII (and `%`
 * itself) percent-encoded, the rest as it is; grpc-js decodes it with decodeURI, which would leave the
 * `%3A` of an encodeURIComponent in place.
 */
export function grpcMessage(text: string): string {
  let out = '';
  for (const b of Buffer.from(text, 'utf8'))
    out +=
      b >= 0x20 && b <= 0x7e && b !== 0x25
        ? String.fromCharCode(b)
        : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  return out;
}

/** Answers the waypoint's own failure, and records what the client got (a stream answered is reset). */
function answerFailure(
  stream: ServerHttp2Stream,
  line: RequestLine,
  failure: WaypointFailure,
  message?: string,
): void {
  if (!stream.headersSent && !stream.destroyed && !stream.closed) {
    line.status = line.grpc ? 200 : FAILURES[failure].status;
    line.grpcStatus = line.grpc ? String(FAILURES[failure].grpc) : undefined;
  }
  respondFailure(stream, failure, line.grpc, message);
}

/** Answers an injected abort: its HTTP status, or for gRPC a trailers-only answer with its gRPC status. */
function answerAbort(
  stream: ServerHttp2Stream,
  line: RequestLine,
  abort: { http: number; grpc: number },
): void {
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  if (line.grpc) {
    line.status = 200;
    line.grpcStatus = String(abort.grpc);
    stream.respond(
      {
        ':status': 200,
        'content-type': 'application/grpc',
        'grpc-status': String(abort.grpc),
        'grpc-message': FAULT_BODY,
      },
      { endStream: true },
    );
    return;
  }
  line.status = abort.http;
  stream.respond({ ':status': abort.http, 'content-type': 'text/plain' });
  stream.end(FAULT_BODY);
}

/** Streams the waypoint reset itself: not the client's resets, which are counted against its rate. */
const resetByWaypoint = new WeakSet<ServerHttp2Stream>();

function resetStream(stream: ServerHttp2Stream, code: number): void {
  resetByWaypoint.add(stream);
  stream.close(code);
}

/** A server session's options: the tunnel's bounds, and nghttp2's own flood guards kept at their defaults. */
export function serverOptions(l: Http2Limits): ServerOptions {
  return {
    settings: {
      maxConcurrentStreams: l.maxStreams,
      maxHeaderListSize: l.maxHeaderListSize,
      enablePush: false,
    },
    // Envoy's max_headers_count. With HPACK's 4 KiB table, a block of indexed references then decodes to
    // at most 100 x 4 KiB before node resets it, whatever it claims.
    maxHeaderListPairs: 100,
    maxSettings: 32,
    maxSessionMemory: 10,
    maxOutstandingPings: 10,
    maxSessionRejectedStreams: 100,
    maxSessionInvalidFrames: 1000,
  };
}

/** How long an upstream session with no stream is kept for its client's next request. */
const IDLE_UPSTREAM_MS = 60_000;

/** Resets a client may make faster than `streamResetRate` before its session ends: a short burst. */
const RESET_BURST_FACTOR = 5;

/** Oversized header blocks a session may send before it is ended (the tunnel's own rule: the fourth ends it). */
const MAX_OVERSIZED_BLOCKS = 3;

const PSEUDO = /^:/;

/** A header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it: name + value + 32 per field (RFC 9113 6.5.2). */
export function headerListSize(rawHeaders: readonly string[]): number {
  let n = 0;
  for (const h of rawHeaders) n += h.length;
  return n + 16 * rawHeaders.length;
}

/** The request as the endpoint gets it: its pseudo-headers, the shared rules for the rest, `te: trailers`. */
export function h2RequestHeaders(
  h: IncomingHttpHeaders,
  waypoint: string,
  client: string,
): OutgoingHttpHeaders {
  const { pseudo, plain } = splitPseudo(h);
  // No transfer-encoding comes through: nghttp2 refuses it in an HTTP/2 request (RFC 9113 8.2.2).
  const out = forwardRequestHeaders(plain, waypoint, client, false);
  // The one TE value HTTP/2 allows (RFC 9113 8.2.2), and one gRPC servers require.
  if (h.te === 'trailers') out.te = 'trailers';
  return { ...pseudo, ...out };
}

/** A request's pseudo-headers apart from its fields (what the router reads: intentions, matches, hashes). */
export function splitPseudo(h: IncomingHttpHeaders): {
  pseudo: OutgoingHttpHeaders;
  plain: IncomingHttpHeaders;
} {
  const pseudo: OutgoingHttpHeaders = {};
  const plain: IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) {
    if (PSEUDO.test(k)) pseudo[k] = v;
    else plain[k] = v;
  }
  return { pseudo, plain };
}

/** A response's fields or trailers as the client gets them. */
export const h2ResponseHeaders = (h: IncomingHttpHeaders): OutgoingHttpHeaders => forwardResponseHeaders(h);

/** A request's trailers as its endpoint and its mirror get them: never an identity the client set. */
function requestTrailers(t: IncomingHttpHeaders | undefined): OutgoingHttpHeaders {
  const out = t ? h2ResponseHeaders(t) : {};
  delete out[XFCC];
  return out;
}

/** One request's account: its access-log line once it is over. */
interface RequestLine extends RequestRecord {
  readonly grpc: boolean;
  readonly trace: Trace;
  requestTrailers?: IncomingHttpHeaders;
  /** The request's mirror copy, fed by the attempt that reads the client's body. */
  mirror?: H2Mirror;
}

/** Where a request's copy is sent from: the engine's sessions to endpoints. */
type SessionOf = (r: {
  readonly endpoint: Workload;
  readonly plan: OutboundPlan;
}) => Promise<{ session: ClientHttp2Session; release: () => void }>;

/**
 * One request's copy over HTTP/2: its body kept (mirror.ts bounds it), then sent as one stream on the
 * session to the mirror's endpoint once the body is whole; the answer read and dropped.
 */
class H2Mirror {
  readonly #copy: MirrorCopy;
  readonly #headers: OutgoingHttpHeaders;
  readonly #sessionOf: SessionOf;
  /** The request's trailers, once its body is whole (undefined: it had none). */
  readonly #trailers: () => IncomingHttpHeaders | undefined;
  #sent = false;

  constructor(
    copy: MirrorCopy,
    headers: OutgoingHttpHeaders,
    sessionOf: SessionOf,
    trailers: () => IncomingHttpHeaders | undefined,
  ) {
    this.#copy = copy;
    this.#headers = headers;
    this.#sessionOf = sessionOf;
    this.#trailers = trailers;
  }

  /** Body bytes are being kept, or sent: the copy is still to be fed. */
  get fed(): boolean {
    return this.#sent || !this.#copy.open;
  }

  keep(chunk: Buffer): void {
    if (!this.#sent) this.#copy.push(chunk);
  }

  abandon(): void {
    if (!this.#sent) this.#copy.end('failed');
  }

  /** The body is whole (`bodyless`: there was none): the copy goes. */
  whole(bodyless: boolean): void {
    if (this.fed) return;
    this.#sent = true;
    const copy = this.#copy;
    let up: ClientHttp2Stream | undefined;
    const timer = setTimeout(() => {
      if (up) up.close(constants.NGHTTP2_CANCEL);
      else copy.end('failed');
    }, copy.timeoutMs);
    timer.unref();
    this.#sessionOf(copy).then(
      (s) => {
        if (!copy.open) {
          s.release();
          return;
        }
        // A copy is the whole request: its trailers (gRPC clients' metadata at the end) go too.
        const trailers = bodyless ? undefined : this.#trailers();
        try {
          up = s.session.request(this.#headers, {
            endStream: bodyless,
            waitForTrailers: trailers !== undefined,
          });
        } catch {
          s.release();
          clearTimeout(timer);
          copy.end('failed');
          return;
        }
        let answered = false;
        up.on('error', () => {});
        if (trailers !== undefined)
          up.once('wantTrailers', () => up!.sendTrailers(requestTrailers(trailers)));
        up.once('response', () => {
          answered = true;
        });
        // Read and dropped, so that the mirror's answer never holds the session's window.
        up.resume();
        up.once('close', () => {
          s.release();
          clearTimeout(timer);
          copy.end(answered && up!.rstCode === constants.NGHTTP2_NO_ERROR ? 'sent' : 'failed');
        });
        if (!bodyless) {
          // Bounded by waypointMirrorBufferBytes: written at once, the stream's buffer holds it.
          for (const c of copy.body.chunks) up.write(c);
          up.end();
        }
        copy.body.close();
      },
      () => {
        clearTimeout(timer);
        copy.end('failed');
      },
    );
  }
}

/** When the request ended: its RequestTimeout runs from then, across its attempts. */
interface Clock {
  endedAt: number | undefined;
}

/** An upstream session being opened or open, and how many requests it carries now. */
interface Upstream {
  readonly session: Promise<ClientHttp2Session>;
  resolved: ClientHttp2Session | undefined;
  active: number;
  idle: NodeJS.Timeout | undefined;
  /** The MaxConnections pair whose slot the session holds (conn-gate.ts), until it closes. */
  pair: string | undefined;
}

class HopRefused extends Error {
  readonly failure: WaypointFailure;
  constructor(failure: WaypointFailure, message: string) {
    super(message);
    this.failure = failure;
  }
}

/** A token bucket: `rate` per second, `burst` at most. */
class Bucket {
  #tokens: number;
  #at = Date.now();
  constructor(
    readonly rate: number,
    readonly burst: number,
  ) {
    this.#tokens = burst;
  }
  take(now = Date.now()): boolean {
    this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#at) / 1000) * this.rate);
    this.#at = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}

export class WaypointHttp2 {
  readonly #d: WaypointHttp2Deps;
  readonly #options: ServerOptions;
  readonly #upstreams = new Map<string, Upstream>();
  readonly #gate = new ConnectionGate();
  readonly #open = new Set<ServerHttp2Session>();

  constructor(d: WaypointHttp2Deps) {
    this.#d = d;
    this.#options = serverOptions(d.limits);
  }

  /** Upstream sessions open or opening now (one per endpoint and client identity). */
  get upstreamSessions(): number {
    return this.#upstreams.size;
  }

  /** Serves one client's tunnel stream (answered 200 already) as an HTTP/2 connection with prior knowledge. */
  serve(socket: StreamDuplex, ctx: HttpContext): void {
    const session = performServerHandshake(socket, this.#options);
    this.#open.add(session);
    const resets = new Bucket(
      this.#d.limits.streamResetRate,
      this.#d.limits.streamResetRate * RESET_BURST_FACTOR,
    );
    session.on('error', () => socket.destroy());
    session.once('close', () => {
      this.#open.delete(session);
      socket.destroy();
    });
    socket.once('close', () => session.destroy());
    let oversized = 0;
    session.on(
      'stream',
      (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, _f: number, rawHeaders: string[]) => {
        // A stream's errors end it and show in its access-log line; none may reach the process.
        stream.on('error', () => {});
        stream.once('close', () => {
          // A reset the client sent before its answer was complete: what Rapid Reset is made of.
          if (stream.rstCode === constants.NGHTTP2_NO_ERROR || resetByWaypoint.has(stream)) return;
          if (resets.take() || session.destroyed) return;
          this.#d.refusals.refuse(
            'inbound',
            'h2_reset_flood',
            'waypoint HTTP/2 session ended: stream resets over the rate',
            {
              client: ctx.client.principal,
              rate: this.#d.limits.streamResetRate,
            },
          );
          session.goaway(constants.NGHTTP2_ENHANCE_YOUR_CALM);
          session.destroy();
        });
        // node:http2 advertises SETTINGS_MAX_HEADER_LIST_SIZE but does not hold a peer to it: we do.
        const size = headerListSize(rawHeaders);
        if (size > this.#d.limits.maxHeaderListSize) {
          this.#d.refusals.refuse(
            'inbound',
            'h2_header_flood',
            'waypoint HTTP/2 stream reset: header list too large',
            {
              client: ctx.client.principal,
              size,
              limit: this.#d.limits.maxHeaderListSize,
            },
          );
          resetStream(stream, constants.NGHTTP2_ENHANCE_YOUR_CALM);
          if (++oversized > MAX_OVERSIZED_BLOCKS) {
            session.goaway(constants.NGHTTP2_ENHANCE_YOUR_CALM);
            session.destroy();
          }
          return;
        }
        this.#request(ctx, stream, headers);
      },
    );
  }

  /**
   * A drain: GOAWAY on every client session (node's graceful close: the streams begun are answered, the
   * session ends after them), so that the client's next streams go on a new connection, to the workers
   * that accept now.
   */
  drain(): void {
    for (const s of this.#open) s.close();
  }

  close(): void {
    for (const s of this.#open) s.destroy();
    for (const u of this.#upstreams.values())
      void u.session.then(
        (s) => s.destroy(),
        () => {},
      );
    this.#upstreams.clear();
  }

  #request(ctx: HttpContext, stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    const d = this.#d;
    const line: RequestLine = {
      started: Date.now(),
      ctx,
      grpc: isGrpc(headers),
      method: headers[':method'],
      path: headers[':path'],
      authority: headers[':authority'],
      endpoint: undefined,
      status: 0,
      grpcStatus: undefined,
      bytesIn: 0,
      bytesOut: 0,
      reason: undefined,
      flags: '-',
      labels: undefined,
      trace: traceOf(headers),
      routed: undefined,
    };
    stream.on('error', () => {});
    // Trailers can come with the headers' read, before the upstream stream exists.
    stream.once('trailers', (t: IncomingHttpHeaders) => {
      line.requestTrailers = t;
    });
    // Known once routed; `done` must see it whenever the stream ends.
    const held: { route?: RequestRoute } = {};
    stream.once('close', () => {
      const outcome = stream.rstCode === constants.NGHTTP2_NO_ERROR ? 'completed' : 'reset';
      if (outcome === 'reset' && line.flags === '-' && !resetByWaypoint.has(stream)) line.flags = 'DC';
      if (line.retry) {
        line.flags = withRetryFlag(line.flags, line.retry);
        line.retry.end();
      }
      if (held.route) d.router.done(held.route);
      // Istio's request_protocol is `http` for HTTP/2 too; gRPC alone is told apart.
      countRequest(this.#d, line, line.grpc ? 'grpc' : 'http');
      logRequest(this.#d, line, line.grpc ? 'grpc' : 'http2', outcome);
      if (this.#d.metrics.connections.taps > 0)
        tapRequest(this.#d, line, line.grpc ? 'grpc' : 'http', outcome);
    });
    // The client is told what kind of failure, not which endpoint: that is in the access log.
    const fail = (failure: WaypointFailure, why: string, flags: string, message?: string): void => {
      line.reason = why;
      if (line.flags === '-') line.flags = flags;
      answerFailure(stream, line, failure, message);
      // The body nobody will read is drained, so that the client can finish sending and the stream close.
      stream.on('data', (c: Buffer) => {
        line.bytesIn += c.length;
      });
    };
    const dec = decide(d, ctx, { method: line.method, path: line.path, headers: splitPseudo(headers).plain });
    const drain = (): void => {
      stream.on('data', (c: Buffer) => {
        line.bytesIn += c.length;
      });
    };
    if (!dec.ok) {
      line.labels = dec.labels;
      if (dec.failure === 'fault') {
        line.reason = dec.reason;
        line.flags = dec.flags;
        answerAbort(stream, line, { http: dec.status, grpc: dec.grpcStatus ?? 2 });
        drain();
        return;
      }
      fail(dec.failure, dec.reason, dec.flags);
      return;
    }
    const r = dec.route;
    held.route = r;
    line.labels = r.labels;
    line.endpoint = r.endpoint;
    line.routed = r.plan;
    const fault = r.fault;
    if (fault) line.flags = faultFlags(fault);
    if (r.retry !== undefined) line.retry = d.retries?.start(r);
    if (r.mirror !== undefined) this.#mirror(ctx, r, line, headers, stream);
    const clock: Clock = { endedAt: undefined };
    /** Some attempt (or a failed connect) has read the client's body: no other listener may read it. */
    let bodyRead = false;
    /** Another attempt after `cause` ended one, when the route's policy and the budget allow: true if so. */
    const again = (route: RequestRoute, cause: RetryCause): boolean => {
      const state = line.retry;
      if (!state || !d.retries) return false;
      // Only what the client has not been answered, with its whole body kept (or none), is replayed.
      const replayable =
        !stream.headersSent && (stream.endAfterHeaders || (stream.readableEnded && !state.body.overflowed));
      const next = d.retries.next(state, route, cause, replayable);
      if (!next) return false;
      // The attempt given up is reported as the one that answered would have been (outlier ejection).
      if (cause.kind === 'response')
        d.router.outcome(route, line.grpc ? grpcToHttp(Number(cause.grpcStatus ?? 2)) : cause.status);
      else d.router.outcome(route, cause.kind === 'reset' ? 'reset' : 'connect_failure');
      held.route = next.route;
      line.endpoint = next.route.endpoint;
      line.reason = cause.kind === 'response' ? `retried: ${cause.status}` : `retried: ${cause.kind}`;
      setTimeout(() => {
        if (!stream.destroyed && !stream.closed) attempt(next.route);
      }, next.delayMs).unref();
      return true;
    };
    const attempt = (route: RequestRoute): void => {
      withConnectTimeout(this.#session(ctx, route), route.timeouts?.connectMs).then(
        (upstream) => {
          const first = !bodyRead;
          bodyRead = true;
          this.#forward(ctx, route, line, stream, headers, upstream, clock, again, first);
        },
        (err: Error) => {
          if (err instanceof PendingOverflow) {
            // The circuit breaker's answer, as MaxConcurrentRequests': never retried, no endpoint's fault.
            refusePending(d, ctx, line, err);
            fail('overflow', err.message, 'UO');
            return;
          }
          const failure = err instanceof HopRefused ? err.failure : 'unavailable';
          const answer = (): void =>
            fail(
              failure,
              err.message,
              failure === 'denied' ? 'DENY' : 'UF',
              failure === 'unavailable' ? 'upstream connect error' : undefined,
            );
          if (failure !== 'unavailable') {
            answer();
            return;
          }
          d.router.failed(route.endpoint);
          d.router.outcome(route, 'connect_failure');
          const cause: RetryCause = { kind: 'connect-failure' };
          const state = line.retry;
          if (
            state &&
            route.retry &&
            retryReason(route.retry, cause) &&
            !bodyRead &&
            !stream.endAfterHeaders
          ) {
            // No attempt has read the body yet: it is read into the replay buffer (within its bound),
            // then the retry is decided.
            bodyRead = true;
            let settled = false;
            const settle = (): void => {
              if (settled) return;
              settled = true;
              if (!again(route, cause)) answer();
            };
            stream.on('data', (c: Buffer) => {
              if (settled) return;
              line.bytesIn += c.length;
              if (!state.body.push(c)) {
                d.retries?.overflowed(route, ctx.client.principal);
                settle();
              }
            });
            if (stream.readableEnded) settle();
            else stream.once('end', settle);
            return;
          }
          if (!again(route, cause)) answer();
        },
      );
    };
    // After what the client sent with these headers is read: a stream it reset at once (HEADERS then
    // RST_STREAM, Rapid Reset) is never opened upstream. A delayed one waits its delay first.
    const go = (): void => {
      if (stream.destroyed || stream.closed) return;
      if (fault?.abort) {
        line.reason = `fault injected: delay ${fault.delayMs} ms, then abort ${fault.abort.http}`;
        answerAbort(stream, line, fault.abort);
        drain();
        return;
      }
      attempt(r);
    };
    if (fault?.delayMs !== undefined) setTimeout(go, fault.delayMs).unref();
    else setImmediate(go);
  }

  /**
   * The request's copy, when its route drew a mirror and the bounds allow: a bodiless request's goes at
   * once, another's when the attempt that reads the body has read it all (#forward).
   */
  #mirror(
    ctx: HttpContext,
    r: RequestRoute,
    line: RequestLine,
    headers: IncomingHttpHeaders,
    stream: ServerHttp2Stream,
  ): void {
    const copy = this.#d.mirrors?.start(r, ctx.client.principal);
    if (!copy) return;
    const out = this.#upstreamHeaders(ctx, r, line, headers);
    // As Envoy's shadow: the mirror's logs tell a copy from a request by its :authority.
    out[':authority'] = shadowHost(String(headers[':authority'] ?? headers.host ?? r.plan.service.name));
    Reflect.deleteProperty(out, 'x-envoy-attempt-count');
    const m = new H2Mirror(
      copy,
      out,
      (t) => this.#session(ctx, t),
      () => line.requestTrailers,
    );
    line.mirror = m;
    if (stream.endAfterHeaders) m.whole(true);
    // The client went before its body was whole: there is no whole copy to send.
    else stream.once('close', () => m.abandon());
  }

  /** The request as the endpoint gets it: the route's path and header changes, the trace fields. */
  #upstreamHeaders(
    ctx: HttpContext,
    r: RequestRoute,
    line: RequestLine,
    headers: IncomingHttpHeaders,
  ): OutgoingHttpHeaders {
    const out = h2RequestHeaders(headers, this.#d.hop.self, ctx.client.principal);
    // A CONNECT has no :path (RFC 9113 8.5), and gets none.
    if (headers[':path'] !== undefined) out[':path'] = r.path;
    applyHeaderOps(out, r.requestHeaders);
    setTraceHeaders(out, line.trace);
    // Envoy's header, on every attempt of a request that may be retried.
    if (line.retry) out['x-envoy-attempt-count'] = String(line.retry.attempts);
    return out;
  }

  /** The endpoint's response fields as the client gets them, with the route's changes and its cookie. */
  #clientHeaders(r: RequestRoute, h: IncomingHttpHeaders): OutgoingHttpHeaders {
    const out = h2ResponseHeaders(h);
    applyHeaderOps(out, r.responseHeaders);
    if (r.cookie) addSetCookie(out, r.cookie);
    return out;
  }

  #forward(
    ctx: HttpContext,
    r: RequestRoute,
    line: RequestLine,
    stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    upstream: { session: ClientHttp2Session; release: () => void },
    clock: Clock,
    again: (route: RequestRoute, cause: RetryCause) => boolean,
    /** No attempt has read the client's body yet: this one pipes it (and keeps it for a retry). */
    first = true,
  ): void {
    const d = this.#d;
    const ep = r.endpoint;
    const retry = line.retry;
    // A retry's attempt: the body was all read and kept, and is sent again whole.
    const replay = retry && !first ? retry.body.chunks : undefined;
    /** This attempt is being retried: none of its events reach the client. */
    let abandoned = false;
    if (stream.destroyed || stream.closed) {
      upstream.release();
      return;
    }
    let up: ClientHttp2Stream;
    try {
      // A request without a body stays one HEADERS frame with END_STREAM upstream too.
      const endStream = stream.endAfterHeaders;
      up = upstream.session.request(this.#upstreamHeaders(ctx, r, line, headers), {
        endStream,
        waitForTrailers: !endStream,
      });
    } catch (err) {
      // node:http2 refuses fields HTTP/2 forbids (a route's header op can name one): not sent at all.
      upstream.release();
      line.reason = (err as Error).message;
      line.flags = 'UF';
      answerFailure(stream, line, 'unavailable');
      return;
    }
    up.once('close', upstream.release);
    // Envoy's route timeout: from the end of the request to the end of the response.
    let timedOut = false;
    const timeoutMs = r.timeouts?.requestMs;
    if (timeoutMs !== undefined && timeoutMs > 0) {
      let timer: NodeJS.Timeout | undefined;
      const arm = (): void => {
        // One timeout for all the attempts, from the end of the request.
        clock.endedAt ??= Date.now();
        timer = setTimeout(
          () => {
            timedOut = true;
            d.router.outcome(r, 'timeout');
            line.reason = `RequestTimeout of ${timeoutMs} ms`;
            line.flags = 'UT';
            const answered = stream.headersSent;
            if (!answered) answerFailure(stream, line, 'timeout');
            up.unpipe(stream);
            up.close(constants.NGHTTP2_CANCEL);
            if (!answered) return;
            // A gRPC call already answered ends with DEADLINE_EXCEEDED in its trailers, as a client expects;
            // anything else answered is cut (a reset).
            if (line.grpc && !stream.closed && !stream.destroyed) {
              line.grpcStatus = String(FAILURES.timeout.grpc);
              stream.end();
            } else resetStream(stream, constants.NGHTTP2_CANCEL);
          },
          Math.max(0, timeoutMs - (Date.now() - clock.endedAt)),
        );
        timer.unref();
      };
      if (stream.endAfterHeaders || stream.readableEnded || replay) arm();
      else stream.once('end', arm);
      up.once('close', () => clearTimeout(timer));
      stream.once('close', () => clearTimeout(timer));
    }
    // The route's IdleTimeout: no byte either way for that long, from the attempt's start.
    const idleMs = r.timeouts?.idleMs;
    let idle: NodeJS.Timeout | undefined;
    if (idleMs !== undefined && idleMs > 0) {
      idle = setTimeout(() => {
        if (abandoned || timedOut || stream.destroyed || stream.closed) return;
        timedOut = true;
        d.router.outcome(r, 'timeout');
        line.reason = `IdleTimeout of ${idleMs} ms`;
        line.flags = 'SI';
        up.unpipe(stream);
        up.close(constants.NGHTTP2_CANCEL);
        if (stream.headersSent) resetStream(stream, constants.NGHTTP2_CANCEL);
        else answerFailure(stream, line, 'idle');
      }, idleMs);
      idle.unref();
      up.once('close', () => clearTimeout(idle));
      stream.once('close', () => clearTimeout(idle));
    }
    let responseTrailers: IncomingHttpHeaders | undefined;
    up.once('wantTrailers', () => up.sendTrailers(requestTrailers(line.requestTrailers)));
    const mirror = line.mirror && !line.mirror.fed ? line.mirror : undefined;
    if (replay) {
      // A request without a body went as one HEADERS frame with END_STREAM: nothing to replay.
      if (!stream.endAfterHeaders) {
        for (const c of replay) up.write(c);
        up.end();
        // The body read after a failed connect feeds the copy too.
        if (mirror) {
          for (const c of replay) mirror.keep(c);
          mirror.whole(false);
        }
      }
    } else {
      if (mirror) stream.once('end', () => mirror.whole(false));
      stream.on('data', (c: Buffer) => {
        line.bytesIn += c.length;
        idle?.refresh();
        mirror?.keep(c);
        // Kept for a retry while the bound allows; past it, counted once and never retried.
        if (retry && !retry.body.overflowed && !retry.body.push(c))
          d.retries?.overflowed(r, ctx.client.principal);
      });
      if (!stream.endAfterHeaders) stream.pipe(up);
    }
    up.on('headers', (h: IncomingHttpHeaders) => {
      // 1xx (103 Early Hints, 100 Continue) go on ahead of the response.
      if (!stream.destroyed && !stream.headersSent) stream.additionalHeaders(h2ResponseHeaders(h));
    });
    up.once('response', (h: IncomingHttpHeaders, flags: number) => {
      if (timedOut || abandoned) return;
      idle?.refresh();
      const cause: RetryCause | undefined = retry && {
        kind: 'response',
        status: Number(h[':status'] ?? 0),
        grpcStatus: h['grpc-status'] as string | undefined,
        rateLimited: h['x-envoy-ratelimited'] !== undefined,
      };
      if (cause && again(r, cause)) {
        abandoned = true;
        up.close(constants.NGHTTP2_CANCEL);
        return;
      }
      retry?.body.close();
      d.router.succeeded(ep);
      if (stream.destroyed || stream.closed) {
        up.close(constants.NGHTTP2_CANCEL);
        return;
      }
      line.status = Number(h[':status'] ?? 0);
      line.grpcStatus = h['grpc-status'] as string | undefined;
      const out = this.#clientHeaders(r, h);
      // A trailers-only answer (how gRPC sends an error) stays one HEADERS frame with END_STREAM.
      const endStream = (flags & constants.NGHTTP2_FLAG_END_STREAM) !== 0;
      // A gRPC call's outcome is its grpc-status (in trailers unless trailers-only), mapped as Envoy does.
      if (!line.grpc) d.router.outcome(r, line.status);
      else if (endStream) d.router.outcome(r, grpcToHttp(Number(line.grpcStatus ?? 2)));
      try {
        stream.respond(out, endStream ? { endStream: true } : { waitForTrailers: true });
      } catch (err) {
        // A response header op named a field HTTP/2 forbids: the client gets the waypoint's failure.
        line.reason = (err as Error).message;
        line.flags = 'UF';
        up.close(constants.NGHTTP2_CANCEL);
        answerFailure(stream, line, 'unavailable');
        return;
      }
      if (endStream) return;
      stream.once('wantTrailers', () => {
        if (timedOut) {
          stream.sendTrailers({
            'grpc-status': String(FAILURES.timeout.grpc),
            'grpc-message': FAILURES.timeout.text,
          });
          return;
        }
        if (responseTrailers) line.grpcStatus = responseTrailers['grpc-status'] as string | undefined;
        stream.sendTrailers(responseTrailers ? h2ResponseHeaders(responseTrailers) : {});
      });
      up.on('data', (c: Buffer) => {
        line.bytesOut += c.length;
        idle?.refresh();
      });
      up.pipe(stream);
    });
    up.once('trailers', (t: IncomingHttpHeaders) => {
      responseTrailers = t;
      if (line.grpc) d.router.outcome(r, grpcToHttp(Number(t['grpc-status'] ?? 2)));
    });
    up.on('error', (err: Error) => {
      line.reason = err.message;
    });
    up.once('close', () => {
      if (
        abandoned ||
        timedOut ||
        up.rstCode === constants.NGHTTP2_NO_ERROR ||
        stream.destroyed ||
        stream.closed
      )
        return;
      if (
        retry &&
        !stream.headersSent &&
        again(r, { kind: 'reset', refused: up.rstCode === constants.NGHTTP2_REFUSED_STREAM })
      ) {
        abandoned = true;
        return;
      }
      if (line.flags === '-') line.flags = 'UR';
      d.router.outcome(r, 'reset');
      if (!stream.headersSent) {
        d.router.failed(ep);
        answerFailure(stream, line, 'unavailable', line.reason ?? `upstream reset (code ${up.rstCode})`);
      } else resetStream(stream, constants.NGHTTP2_CANCEL);
    });
    stream.once('close', () => {
      if (!up.closed && !up.destroyed && stream.rstCode !== constants.NGHTTP2_NO_ERROR)
        up.close(constants.NGHTTP2_CANCEL);
    });
  }

  /**
   * The session to the route's endpoint for this client (one per endpoint, target port and client
   * identity), opened once. The port is the routed service's: a route to another service has its own.
   */
  async #session(
    ctx: HttpContext,
    r: {
      readonly endpoint: Workload;
      readonly plan: OutboundPlan;
      readonly connections?: ConnectionLimit | undefined;
    },
  ): Promise<{ session: ClientHttp2Session; release: () => void }> {
    const ep = r.endpoint;
    const key = `${ep.name}|${r.plan.targetPort}|${ctx.client.principal}`;
    let u = this.#upstreams.get(key);
    const limit = r.connections;
    if (!u && limit) {
      await this.#gate.take(limit, () => this.#evictIdle(limit.key));
      u = this.#upstreams.get(key);
      // Another request opened the session while this one waited: the slot goes back.
      if (u) this.#gate.release(limit.key);
    }
    if (!u) {
      const opened = this.#open2(ctx, r.plan, ep, key);
      const fresh: Upstream = {
        session: opened,
        resolved: undefined,
        active: 0,
        idle: undefined,
        pair: limit?.key,
      };
      u = fresh;
      this.#upstreams.set(key, fresh);
      opened.then(
        (s) => {
          fresh.resolved = s;
          s.once('close', () => this.#unpair(fresh));
        },
        () => {
          if (this.#upstreams.get(key) === fresh) this.#upstreams.delete(key);
          this.#unpair(fresh);
        },
      );
    }
    const held = u;
    held.active++;
    if (held.idle) clearTimeout(held.idle);
    held.idle = undefined;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      if (--held.active > 0) return;
      // A request waits for a connection of the pair: this idle one closes now, and its slot goes to it.
      if (held.pair !== undefined && this.#gate.waiting(held.pair) > 0) {
        this.#evict(key, held);
        return;
      }
      held.idle = setTimeout(() => {
        if (this.#upstreams.get(key) === held) this.#upstreams.delete(key);
        void held.session.then(
          (s) => s.close(),
          () => {},
        );
      }, IDLE_UPSTREAM_MS);
      held.idle.unref();
    };
    try {
      return { session: await held.session, release };
    } catch (err) {
      release();
      throw err;
    }
  }

  /** Closes an idle session of the pair, giving its slot back; false when there is none. */
  #evictIdle(pair: string): boolean {
    for (const [key, u] of this.#upstreams) {
      if (u.pair === pair && u.active === 0) {
        this.#evict(key, u);
        return true;
      }
    }
    return false;
  }

  /** Closes an idle session now, its slot given back at once (its close event comes later). */
  #evict(key: string, u: Upstream): void {
    if (this.#upstreams.get(key) === u) this.#upstreams.delete(key);
    if (u.idle) clearTimeout(u.idle);
    u.idle = undefined;
    this.#unpair(u);
    void u.session.then(
      (s) => s.close(),
      () => {},
    );
  }

  #unpair(u: Upstream): void {
    if (u.pair === undefined) return;
    const pair = u.pair;
    u.pair = undefined;
    this.#gate.release(pair);
  }

  async #open2(ctx: HttpContext, plan: OutboundPlan, ep: Workload, key: string): Promise<ClientHttp2Session> {
    const hop = await openHop(this.#d.hop, plan, ep, ctx.client).catch((err: Error) => {
      throw new HopRefused('unavailable', `endpoint ${ep.name}: ${err.message}`);
    });
    if (hop.kind === 'skip') throw new HopRefused('unavailable', hop.why);
    const { stream, status } = hop.response;
    if (status !== 200) {
      stream.close();
      // The destination's 401 is the client's intentions: for the client, a denial.
      throw new HopRefused(
        status === 401 ? 'denied' : 'unavailable',
        `endpoint ${ep.name} answered ${status}`,
      );
    }
    const socket = new StreamDuplex(stream);
    const session = connect(`http://${hop.authority}`, {
      createConnection: () => socket,
      settings: { enablePush: false },
      maxSessionMemory: 10,
    });
    // A session going away takes no new request: the next one opens another.
    const forget = (): void => {
      const u = this.#upstreams.get(key);
      if (u?.resolved !== session) return;
      if (u.idle) clearTimeout(u.idle);
      this.#upstreams.delete(key);
    };
    session.on('error', (err: Error) => {
      this.#d.log.debug({ endpoint: ep.name, err: err.message }, 'waypoint upstream HTTP/2 session failed');
    });
    session.once('goaway', forget);
    session.once('close', () => {
      forget();
      socket.destroy();
    });
    socket.once('close', () => session.destroy());
    return session;
  }
}
