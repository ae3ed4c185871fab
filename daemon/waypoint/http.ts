import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import { shadowHost } from '../../lib/l7/mirror.js';
import type { Logger } from '../../lib/log.js';
import type { Refusals } from '../limits/refusal.js';
import type { Metrics } from '../metrics/metrics.js';
import type { OutboundPlan } from '../proxy/outbound/plan.js';
// HTTP/1.1 at the waypoint: each client's tunnel stream read by llhttp (h1/connection.ts), each request
// first authorized (L7 intentions: 403 `RBAC: access denied`), then routed (route, split, subset, endpoint,
// header changes, path rewrite) and handed to a kept connection to the endpoint's node (h1/upstream.ts),
// then counted in Istio's request metrics with one access-log line. What llhttp refuses (request smuggling
// among it) gets 400 and is never forwarded.
import { PendingOverflow } from './conn-gate.js';
import { decide, refusePending } from './decide.js';
import { FaultAbort, afterDelay, faultFlags } from './fault.js';
import type { ByteStream } from './h1/byte-stream.js';
import {
  ClientConnection,
  type Decision,
  type ExchangeHost,
  type MirrorSink,
  type ReadRequest,
} from './h1/connection.js';
import { requestHead, safeOps } from './h1/head.js';
import { MAX_HEAD_BYTES, type ParseFailure, type ParsedHead } from './h1/parser.js';
import {
  HopFailure,
  type Opener,
  type ResponseHandler,
  type UpstreamConnection,
  UpstreamPool,
  hboneOpener,
  upstreamKey,
} from './h1/upstream.js';
import { forwardRequestHeaders, forwardResponseHeaders } from './headers.js';
import type { HopClient, HopDeps } from './hop.js';
import { addSetCookie, applyHeaderOps, ipOf, setTraceHeaders, traceOf } from './l7-headers.js';
import type { MirrorCopy, Mirrors } from './mirror.js';
import { type NextAttempt, type Retries, type RetryCause, type RetryState, withRetryFlag } from './retry.js';
import type { RequestRoute, WaypointRouter } from './router.js';
import { type RequestRecord, countRequest, logRequest, tapRequest } from './telemetry.js';
import { formatXfcc } from './xfcc.js';

/** What one client's tunnel stream to the waypoint is for. */
export interface HttpContext {
  readonly plan: OutboundPlan;
  readonly client: HopClient;
  /** The client's address as the access log shows it. */
  readonly clientAddr: string | undefined;
}

export interface Http1Limits {
  /** A client connection idle this long is closed; one mid-head then is answered 408 (slowloris). */
  readonly headTimeoutMs: number;
  /** A request's or a response's head larger than this is refused (431 for a client's). */
  readonly maxHeadBytes: number;
}

export const DEFAULT_HTTP1_LIMITS: Http1Limits = { headTimeoutMs: 60_000, maxHeadBytes: MAX_HEAD_BYTES };

export interface WaypointHttpDeps {
  readonly hop: HopDeps;
  readonly router: WaypointRouter;
  readonly log: Logger;
  readonly refusals: Refusals;
  readonly metrics: Metrics;
  readonly limits: Http1Limits;
  /** How connections to endpoints are opened: the HBONE hop unless told otherwise (the plain bench). */
  readonly open?: Opener;
  /** Retries by the routes' policies; none: nothing is retried. */
  readonly retries?: Retries;
  /** Mirror copies by the routes' policies; none: nothing is mirrored. */
  readonly mirrors?: Mirrors;
}

/** One request's account: its metrics and access-log line once it is over. */
type RequestLine = RequestRecord;

export class WaypointHttp {
  readonly #d: WaypointHttpDeps;
  readonly #pool: UpstreamPool;
  readonly #open = new Set<ClientConnection<RequestLine>>();
  #draining = false;

  constructor(d: WaypointHttpDeps) {
    this.#d = d;
    this.#pool = new UpstreamPool(d.open ?? hboneOpener(d.hop), d.limits.maxHeadBytes);
  }

  /** Serves one client's tunnel stream (answered 200 already) as an HTTP/1.1 connection. */
  serve(stream: ByteStream, ctx: HttpContext): void {
    const host = new Exchanges(this.#d, this.#pool, ctx, stream);
    const c = new ClientConnection(host, stream, this.#d.limits, () => this.#open.delete(c));
    this.#open.add(c);
    if (this.#draining) c.drain();
  }

  /** A drain: each client connection's next answer is its last (`connection: close`). */
  drain(): void {
    this.#draining = true;
    for (const c of this.#open) c.drain();
  }

  close(): void {
    for (const c of this.#open) c.destroy();
    this.#pool.destroy();
  }
}

/** One client connection's side of its exchanges: the decisions, the heads, and the account of each. */
class Exchanges implements ExchangeHost<RequestLine> {
  readonly #d: WaypointHttpDeps;
  readonly #pool: UpstreamPool;
  readonly #ctx: HttpContext;
  readonly #sourceIp: string;
  /** The client's identity as the endpoint gets it: the same for every request of the connection. */
  readonly #xfcc: string;
  /** Each request's route, for what is reported of it without one (a timeout's outcome). */
  readonly #routes = new WeakMap<RequestLine, RequestRoute>();

  /** The client's stream: a request delayed by a fault opens nothing for a client gone meanwhile. */
  readonly #client: { readonly destroyed: boolean };

  constructor(
    d: WaypointHttpDeps,
    pool: UpstreamPool,
    ctx: HttpContext,
    client: { readonly destroyed: boolean },
  ) {
    this.#d = d;
    this.#client = client;
    this.#pool = pool;
    this.#ctx = ctx;
    this.#sourceIp = ipOf(ctx.clientAddr);
    this.#xfcc = formatXfcc(d.hop.self, ctx.client.principal);
  }

  begin(req: ReadRequest): RequestLine {
    return newLine(this.#ctx, req.method, req.url, req.headers.host);
  }

  /**
   * L7 intentions, then the route: the one place HTTP/1.1 requests and upgrades are decided. A denial is
   * refused (counted, logged) here; the connection answers it.
   */
  decide(req: ReadRequest, line: RequestLine): Decision {
    const d = this.#d;
    const ctx = this.#ctx;
    // llhttp refuses both framings at once; should a lenient parser ever let one through, it stops here.
    if (req.headers['transfer-encoding'] !== undefined && req.headers['content-length'] !== undefined) {
      line.reason = 'both Content-Length and Transfer-Encoding';
      line.flags = 'BAD_REQUEST';
      refusedRequest(d, line, 'request smuggling: both Content-Length and Transfer-Encoding');
      return { ok: false, status: 400, body: 'both Content-Length and Transfer-Encoding' };
    }
    line.trace = traceOf(req.headers);
    const decision = decide(d, ctx, {
      method: req.method,
      path: req.url,
      headers: req.headers,
      sourceIp: this.#sourceIp,
    });
    if (!decision.ok) {
      line.reason = decision.reason;
      line.flags = decision.flags;
      line.labels = decision.labels;
      return decision;
    }
    const { route } = decision;
    line.labels = route.labels;
    line.endpoint = route.endpoint;
    line.routed = route.plan;
    if (route.fault) line.flags = faultFlags(route.fault);
    this.#routes.set(line, route);
    return { ok: true, route };
  }

  upstream(route: RequestRoute): UpstreamConnection | Promise<UpstreamConnection> {
    const client = this.#ctx.client;
    const connect = (): UpstreamConnection | Promise<UpstreamConnection> =>
      this.#pool.take(upstreamKey(route.endpoint, route.plan, client)) ??
      this.#pool.open(route.plan, route.endpoint, client, route.timeouts?.connectMs, route.connections);
    if (!route.fault) return connect();
    // A delayed request meets its endpoint (or the abort drawn with the delay) once the delay is over.
    return afterDelay(route.fault, () => {
      if (this.#client.destroyed) throw new Error('the client went away during the delay');
      return connect();
    });
  }

  requestHead(req: ReadRequest, route: RequestRoute, line: RequestLine): string {
    const headers = forwardRequestHeaders(
      req.headers,
      this.#d.hop.self,
      this.#ctx.client.principal,
      req.upgrade,
      this.#xfcc,
    );
    applyHeaderOps(headers, safeOps(route.requestHeaders));
    if (line.trace) setTraceHeaders(headers, line.trace);
    // Envoy's header, on every attempt of a request that may be retried.
    if (line.retry) headers['x-envoy-attempt-count'] = String(line.retry.attempts);
    return requestHead(req.method, route.path, headers);
  }

  responseFields(route: RequestRoute, headers: IncomingHttpHeaders): OutgoingHttpHeaders {
    const h = forwardResponseHeaders(headers);
    applyHeaderOps(h, safeOps(route.responseHeaders));
    if (route.cookie) addSetCookie(h, route.cookie);
    return h;
  }

  bodyIn(line: RequestLine, n: number): void {
    line.bytesIn += n;
  }

  bodyOut(line: RequestLine, n: number): void {
    line.bytesOut += n;
  }

  answered(line: RequestLine, route: RequestRoute, status: number, up: UpstreamConnection): void {
    line.upstream = up.authority;
    this.#d.router.succeeded(route.endpoint);
    this.#d.router.outcome(route, status);
  }

  upstreamFailed(line: RequestLine, route: RequestRoute, err: Error): void {
    if (err instanceof FaultAbort) {
      line.reason = `fault injected: delay ${route.fault?.delayMs} ms, then abort ${err.status}`;
      return;
    }
    if (err instanceof PendingOverflow) {
      line.reason = err.message;
      line.flags = 'UO';
      refusePending(this.#d, this.#ctx, line, err);
      return;
    }
    if (err instanceof HopFailure && err.status !== 401 && err.status !== 400) {
      this.#d.router.failed(route.endpoint);
      this.#d.router.outcome(route, 'connect_failure');
    }
    line.reason = err.message;
    if (line.flags === '-') line.flags = err instanceof HopFailure && err.status === 401 ? 'DENY' : 'UF';
  }

  finished(
    line: RequestLine,
    route: RequestRoute | undefined,
    status: number,
    outcome: string,
    flag?: string,
  ): void {
    line.status = status;
    if (flag !== undefined && line.flags === '-') line.flags = flag;
    if (line.retry) {
      line.flags = withRetryFlag(line.flags, line.retry);
      line.retry.end();
    }
    if (route) this.#d.router.done(route);
    countRequest(this.#d, line, 'http');
    logRequest(this.#d, line, 'http', outcome);
    if (this.#d.metrics.connections.taps > 0) tapRequest(this.#d, line, 'http', outcome);
  }

  retrying(line: RequestLine, route: RequestRoute): RetryState | undefined {
    line.retry = this.#d.retries?.start(route);
    return line.retry;
  }

  retry(
    line: RequestLine,
    state: RetryState,
    route: RequestRoute,
    cause: RetryCause,
    replayable: boolean,
  ): NextAttempt | undefined {
    const next = this.#d.retries?.next(state, route, cause, replayable);
    if (next) {
      // The attempt given up counts for its endpoint as an answered one would (outlier ejection).
      if (cause.kind === 'connect-failure') {
        this.#d.router.failed(route.endpoint);
        this.#d.router.outcome(route, 'connect_failure');
      } else this.#d.router.outcome(route, cause.kind === 'reset' ? 'reset' : cause.status);
      this.#routes.set(line, next.route);
      // What a retried attempt met shows in the log line, should the last one fail too.
      line.reason = cause.kind === 'response' ? `retried: ${cause.status}` : `retried: ${cause.kind}`;
      line.endpoint = next.route.endpoint;
    }
    return next;
  }

  mirror(req: ReadRequest, route: RequestRoute, line: RequestLine): MirrorSink | undefined {
    const copy = this.#d.mirrors?.start(route, this.#ctx.client.principal);
    if (!copy) return undefined;
    const headers = forwardRequestHeaders(
      req.headers,
      this.#d.hop.self,
      this.#ctx.client.principal,
      false,
      this.#xfcc,
    );
    applyHeaderOps(headers, safeOps(route.requestHeaders));
    if (line.trace) setTraceHeaders(headers, line.trace);
    // As Envoy's shadow: the mirror's logs tell a copy from a request by its Host.
    headers.host = shadowHost(String(req.headers.host ?? route.plan.service.name));
    return new H1Mirror(
      this.#pool,
      copy,
      requestHead(req.method, route.path, headers),
      this.#ctx.client,
      req.method,
    );
  }

  replayOverflow(_line: RequestLine, route: RequestRoute): void {
    this.#d.retries?.overflowed(route, this.#ctx.client.principal);
  }

  timedOut(line: RequestLine, why: string): void {
    line.reason = why;
    const route = this.#routes.get(line);
    if (route) this.#d.router.outcome(route, 'timeout');
  }

  malformed(f: ParseFailure, status: number): void {
    const line = newLine(this.#ctx, undefined, undefined, undefined);
    line.status = status;
    line.reason = `${f.code}: ${f.reason}`;
    line.flags = 'BAD_REQUEST';
    refusedRequest(this.#d, line, line.reason);
    countRequest(this.#d, line, 'http');
    logRequest(this.#d, line, 'http', 'refused');
    if (this.#d.metrics.connections.taps > 0) tapRequest(this.#d, line, 'http', 'refused');
  }

  slow(ms: number): void {
    const ctx = this.#ctx;
    this.#d.refusals.refuse(
      'inbound',
      'idle_timeout',
      `waypoint closed a connection: no whole request head in ${ms} ms`,
      {
        client: ctx.client.principal,
        src: ctx.clientAddr,
      },
    );
  }
}

/**
 * One request's copy over HTTP/1.1: its head and body frames kept (mirror.ts bounds them), then sent on a
 * connection of the pool to the mirror's endpoint once the body is whole; the answer read and dropped.
 */
class H1Mirror implements MirrorSink, ResponseHandler {
  readonly #pool: UpstreamPool;
  readonly #copy: MirrorCopy;
  readonly #head: string;
  readonly #client: HopClient;
  readonly #method: string;
  #sent = false;
  #interim = false;
  #up: UpstreamConnection | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(pool: UpstreamPool, copy: MirrorCopy, head: string, client: HopClient, method: string) {
    this.#pool = pool;
    this.#copy = copy;
    this.#head = head;
    this.#client = client;
    this.#method = method;
  }

  keep(frame: Buffer, owned: boolean): void {
    if (!this.#sent) this.#copy.push(frame, owned);
  }

  whole(): void {
    if (this.#sent || !this.#copy.open) return;
    this.#sent = true;
    this.#timer = setTimeout(() => this.#over('failed'), this.#copy.timeoutMs);
    this.#timer.unref();
    const { plan, endpoint } = this.#copy;
    const key = upstreamKey(endpoint, plan, this.#client);
    const kept = this.#pool.take(key);
    if (kept) this.#send(kept);
    else
      this.#pool.open(plan, endpoint, this.#client).then(
        (up) => this.#send(up),
        () => this.#over('failed'),
      );
  }

  abandon(): void {
    if (!this.#sent) this.#copy.end('failed');
  }

  #send(up: UpstreamConnection): void {
    if (!this.#copy.open) {
      up.release();
      return;
    }
    this.#up = up;
    up.lend(this);
    up.stream.write(Buffer.from(this.#head, 'latin1'));
    // Bounded by waypointMirrorBufferBytes: written at once, the stream's buffer holds it.
    for (const f of this.#copy.body.chunks) up.stream.write(f);
    this.#copy.body.close();
  }

  /** The copy is over: its connection kept when it can be (a whole answer), else closed. */
  #over(outcome: 'sent' | 'failed'): void {
    clearTimeout(this.#timer);
    const up = this.#up;
    this.#up = undefined;
    if (up) {
      if (outcome === 'sent') up.release();
      else up.destroy();
    }
    this.#copy.end(outcome);
  }

  head(h: ParsedHead): boolean {
    if (h.status >= 100 && h.status < 200 && h.status !== 101) this.#interim = true;
    return this.#method === 'HEAD';
  }
  body(): void {}
  end(): void {
    if (this.#interim) {
      this.#interim = false;
      return;
    }
    this.#over('sent');
  }
  raw(): void {}
  rawEnd(): void {}
  lost(): void {
    this.#up = undefined;
    this.#over('failed');
  }
  drain(): void {}
}

function newLine(
  ctx: HttpContext,
  method: string | undefined,
  path: string | undefined,
  authority: string | undefined,
): RequestLine {
  return {
    started: Date.now(),
    ctx,
    method,
    path,
    authority,
    endpoint: undefined,
    upstream: undefined,
    status: 0,
    bytesIn: 0,
    bytesOut: 0,
    reason: undefined,
    flags: '-',
    labels: undefined,
    trace: undefined,
    routed: undefined,
  };
}

function refusedRequest(d: WaypointHttpDeps, line: RequestLine, message: string): void {
  d.refusals.refuse('inbound', 'bad_request', `waypoint refused an HTTP request: ${message}`, {
    client: line.ctx?.client.principal,
    authority: line.authority,
  });
}
