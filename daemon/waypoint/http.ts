// HTTP/1.1 at the waypoint: each client's tunnel stream read by llhttp (h1/connection.ts), each request
// first authorized (L7 intentions: 403 `RBAC: access denied`), then routed (route, split, subset, endpoint,
// header changes, path rewrite) and handed to a kept connection to the endpoint's node (h1/upstream.ts),
// then counted in Istio's request metrics with one access-log line. What llhttp refuses (request smuggling
// among it) gets 400 and is never forwarded.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import type { Logger } from '../../lib/log.js';
import type { Refusals } from '../limits/refusal.js';
import type { Metrics } from '../metrics/metrics.js';
import { peerFromUris } from '../proxy/inbound/decide.js';
import type { OutboundPlan } from '../proxy/outbound/plan.js';
import { decide } from './decide.js';
import type { ByteStream } from './h1/byte-stream.js';
import { ClientConnection, type Decision, type ExchangeHost, type ReadRequest } from './h1/connection.js';
import { requestHead, safeOps } from './h1/head.js';
import { MAX_HEAD_BYTES, type ParseFailure } from './h1/parser.js';
import {
  HopFailure,
  type Opener,
  type UpstreamConnection,
  UpstreamPool,
  hboneOpener,
  upstreamKey,
} from './h1/upstream.js';
import { forwardRequestHeaders, forwardResponseHeaders } from './headers.js';
import type { HopClient, HopDeps } from './hop.js';
import { addSetCookie, applyHeaderOps, ipOf, setTraceHeaders, traceOf } from './l7-headers.js';
import type { RequestRoute, WaypointRouter } from './router.js';
import { type RequestRecord, countRequest, logRequest } from './telemetry.js';
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
}

/** One request's account: its metrics and access-log line once it is over. */
type RequestLine = RequestRecord;

export class WaypointHttp {
  readonly #d: WaypointHttpDeps;
  readonly #pool: UpstreamPool;
  readonly #open = new Set<ClientConnection<RequestLine>>();

  constructor(d: WaypointHttpDeps) {
    this.#d = d;
    this.#pool = new UpstreamPool(d.open ?? hboneOpener(d.hop), d.limits.maxHeadBytes);
  }

  /** Serves one client's tunnel stream (answered 200 already) as an HTTP/1.1 connection. */
  serve(stream: ByteStream, ctx: HttpContext): void {
    const host = new Exchanges(this.#d, this.#pool, ctx);
    const c = new ClientConnection(host, stream, this.#d.limits, () => this.#open.delete(c));
    this.#open.add(c);
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

  constructor(d: WaypointHttpDeps, pool: UpstreamPool, ctx: HttpContext) {
    this.#d = d;
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
    return { ok: true, route };
  }

  upstream(route: RequestRoute): UpstreamConnection | Promise<UpstreamConnection> {
    const client = this.#ctx.client;
    return (
      this.#pool.take(upstreamKey(route.endpoint, route.plan, client)) ??
      this.#pool.open(route.plan, route.endpoint, client, route.timeouts?.connectMs)
    );
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

  answered(line: RequestLine, route: RequestRoute, _status: number, up: UpstreamConnection): void {
    line.upstream = up.authority;
    this.#d.router.succeeded(route.endpoint);
  }

  upstreamFailed(line: RequestLine, route: RequestRoute, err: Error): void {
    if (err instanceof HopFailure && err.status !== 401 && err.status !== 400)
      this.#d.router.failed(route.endpoint);
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
    if (route) this.#d.router.done(route);
    countRequest(this.#d, line, 'http');
    logRequest(this.#d, line, 'http', outcome);
    if (this.#d.metrics.connections.taps > 0) tapRequest(this.#d, line, outcome);
  }

  timedOut(line: RequestLine, why: string): void {
    line.reason = why;
  }

  malformed(f: ParseFailure, status: number): void {
    const line = newLine(this.#ctx, undefined, undefined, undefined);
    line.status = status;
    line.reason = `${f.code}: ${f.reason}`;
    line.flags = 'BAD_REQUEST';
    refusedRequest(this.#d, line, line.reason);
    countRequest(this.#d, line, 'http');
    logRequest(this.#d, line, 'http', 'refused');
    if (this.#d.metrics.connections.taps > 0) tapRequest(this.#d, line, 'refused');
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

/** The request as the taps see it (`ambit tap` on the waypoint): built only while someone taps. */
function tapRequest(d: WaypointHttpDeps, l: RequestLine, outcome: string): void {
  const peer = peerFromUris([l.ctx.client.principal]);
  const service = l.routed?.service ?? l.ctx.plan.service;
  d.metrics.connections.request({
    status: outcome === 'reset' ? 'reset' : outcome === 'refused' || l.flags !== '-' ? 'refused' : 'closed',
    src: {
      addr: l.ctx.clientAddr,
      principal: l.ctx.client.principal,
      service: peer?.service,
      namespace: peer?.namespace,
    },
    dst: {
      addr: l.upstream,
      service: service.name,
      namespace: service.namespace,
      workload: l.endpoint?.name,
      principal: l.endpoint ? d.hop.identityOf(l.endpoint) : undefined,
    },
    started: l.started,
    bytesIn: l.bytesIn,
    bytesOut: l.bytesOut,
    flags: l.flags,
    reason: l.reason,
    request: {
      protocol: 'http',
      method: l.method,
      path: l.path,
      authority: l.authority,
      response_code: l.status,
      route: l.labels?.route,
      split: l.labels?.split,
      subset: l.labels?.subset,
      endpoint: l.endpoint?.name,
      trace_id: l.trace?.traceId,
    },
  });
}

function refusedRequest(d: WaypointHttpDeps, line: RequestLine, message: string): void {
  d.refusals.refuse('inbound', 'bad_request', `waypoint refused an HTTP request: ${message}`, {
    client: line.ctx?.client.principal,
    authority: line.authority,
  });
}
