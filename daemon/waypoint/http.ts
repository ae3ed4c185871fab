// HTTP/1.1 at the waypoint: node:http's server (llhttp) over each client's tunnel stream, and its client
// with a keep-alive Agent whose connections are tunnel streams to the chosen endpoints' nodes. Requests
// llhttp refuses (request smuggling among them) get 400 and are never forwarded. Each request is first
// authorized (L7 intentions: 403 `RBAC: access denied`), then routed (route, split, subset, endpoint,
// header changes, path rewrite), and counted in Istio's request metrics with one access-log line.
import {
  type IncomingMessage,
  type OutgoingHttpHeaders,
  STATUS_CODES,
  type Server,
  type ServerResponse,
  createServer,
  request,
} from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from '../../lib/log.js';
import type { Workload } from '../../lib/mesh/model.js';
import type { Refusals } from '../limits/refusal.js';
import type { Metrics } from '../metrics/metrics.js';
import type { OutboundPlan } from '../proxy/outbound/plan.js';
import { HopFailure, type HopRequest, TunnelAgent } from './agent.js';
import { type Decision, decide } from './decide.js';
import type { StreamDuplex } from './duplex.js';
import { forwardRequestHeaders, forwardResponseHeaders } from './headers.js';
import type { HopClient, HopDeps } from './hop.js';
import { type Trace, addSetCookie, applyHeaderOps, setTraceHeaders, traceOf } from './l7-headers.js';
import type { RequestRoute, RouteLabels, WaypointRouter } from './router.js';
import { requestLabels } from './telemetry.js';
import { XFCC } from './xfcc.js';

/** What one client's tunnel stream to the waypoint is for. */
export interface HttpContext {
  readonly plan: OutboundPlan;
  readonly client: HopClient;
  /** The client's address as the access log shows it. */
  readonly clientAddr: string | undefined;
}

export interface WaypointHttpDeps {
  readonly hop: HopDeps;
  readonly router: WaypointRouter;
  readonly log: Logger;
  readonly refusals: Refusals;
  readonly metrics: Metrics;
}

/** How long a connection the waypoint ended waits for the client to end its side before it is reset. */
const CLOSE_GRACE_MS = 5_000;

/** One request's account: its access-log line once it is over. */
interface RequestLine {
  readonly started: number;
  readonly ctx: HttpContext | undefined;
  readonly method: string | undefined;
  readonly path: string | undefined;
  readonly authority: string | undefined;
  endpoint: Workload | undefined;
  upstream: string | undefined;
  status: number;
  bytesIn: number;
  bytesOut: number;
  reason: string | undefined;
  /** Envoy's response flag: `-` unless the waypoint itself answered, or the client went away. */
  flags: string;
  labels: RouteLabels | undefined;
  trace: Trace | undefined;
  /** The service the request landed on, when it was routed. */
  routed: OutboundPlan | undefined;
}

export class WaypointHttp {
  readonly #d: WaypointHttpDeps;
  readonly #server: Server;
  readonly #agent: TunnelAgent;
  readonly #contexts = new WeakMap<Duplex, HttpContext>();
  readonly #open = new Set<Duplex>();

  constructor(d: WaypointHttpDeps) {
    this.#d = d;
    // No Expect handler: node:http answers 100 Continue itself and the body follows (Envoy's default too).
    this.#server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => this.#request(req, res));
    this.#server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) =>
      this.#upgrade(req, socket, head),
    );
    this.#server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) =>
      this.#clientError(err, socket),
    );
    this.#agent = new TunnelAgent({ keepAlive: true, maxFreeSockets: 64 }, d.hop);
  }

  /** Serves one client's tunnel stream (answered 200 already) as an HTTP/1.1 connection. */
  serve(socket: StreamDuplex, ctx: HttpContext): void {
    this.#contexts.set(socket, ctx);
    this.#open.add(socket);
    socket.once('close', () => this.#open.delete(socket));
    this.#server.emit('connection', socket);
  }

  close(): void {
    for (const s of this.#open) s.destroy();
    this.#agent.destroy();
  }

  #line(req: IncomingMessage): RequestLine {
    return {
      started: Date.now(),
      ctx: this.#contexts.get(req.socket),
      method: req.method,
      path: req.url,
      authority: req.headers.host,
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

  /** Counts the request in Istio's metrics (every request, answered by the endpoint or by the waypoint). */
  #count(l: RequestLine): void {
    const d = this.#d;
    const labels = requestLabels(
      {
        client: l.ctx?.client.principal,
        service: l.routed?.service ?? l.ctx?.plan.service,
        endpoint: l.endpoint,
        endpointPrincipal: l.endpoint ? d.hop.identityOf(l.endpoint) : undefined,
        protocol: 'http',
        status: l.status,
        grpcStatus: '',
        flags: l.flags,
      },
      d.metrics.cluster,
    );
    d.metrics.requestDone(labels, Date.now() - l.started, l.bytesIn, l.bytesOut);
  }

  #log(l: RequestLine, outcome: string): void {
    const d = this.#d;
    const service = l.ctx?.plan.service;
    d.log.info(
      {
        access: 'waypoint',
        protocol: 'http',
        method: l.method,
        path: l.path,
        authority: l.authority,
        status: l.status,
        duration_ms: Date.now() - l.started,
        bytes_received: l.bytesIn,
        bytes_sent: l.bytesOut,
        response_flags: l.flags,
        route: l.labels?.route,
        split: l.labels?.split,
        subset: l.labels?.subset,
        ...(l.labels?.failover ? { failover: l.labels.target } : {}),
        endpoint: l.endpoint?.name,
        upstream: l.upstream,
        trace_id: l.trace?.traceId,
        request_id: l.trace?.requestId,
        src: { addr: l.ctx?.clientAddr, principal: l.ctx?.client.principal },
        dst: {
          service: service ? `${service.name}.${service.namespace}` : undefined,
          ...(l.routed && l.routed.service !== service
            ? { routed: `${l.routed.service.name}.${l.routed.service.namespace}` }
            : {}),
          principal: l.endpoint ? d.hop.identityOf(l.endpoint) : undefined,
        },
        outcome,
        ...(l.reason ? { reason: l.reason } : {}),
      },
      'request',
    );
  }

  /**
   * L7 intentions, then the route: the one place both HTTP/1.1 paths (requests and upgrades) decide. A
   * denial is refused (counted, logged) here; the caller answers it.
   */
  #decide(ctx: HttpContext, req: IncomingMessage, line: RequestLine): Decision {
    const dec = decide(this.#d, ctx, { method: req.method, path: req.url, headers: req.headers });
    if (!dec.ok) {
      line.labels = dec.labels;
      line.reason = dec.reason;
      line.flags = dec.flags;
      return dec;
    }
    line.labels = dec.route.labels;
    line.endpoint = dec.route.endpoint;
    line.routed = dec.route.plan;
    return dec;
  }

  #upstreamOptions(
    ctx: HttpContext,
    r: RequestRoute,
    req: IncomingMessage,
    trace: Trace,
    upgrade: boolean,
  ): HopRequest {
    const d = this.#d;
    const headers = forwardRequestHeaders(req.headers, d.hop.self, ctx.client.principal, upgrade);
    applyHeaderOps(headers, r.requestHeaders);
    setTraceHeaders(headers, trace);
    return {
      agent: this.#agent,
      method: req.method,
      path: r.path,
      host: r.endpoint.addresses[0],
      setHost: false,
      headers,
      ambit: { plan: r.plan, endpoint: r.endpoint, client: ctx.client },
    };
  }

  /** The endpoint's response fields as the client gets them: hop-by-hop dropped, the route's changes made. */
  #responseHeaders(r: RequestRoute, ur: IncomingMessage): OutgoingHttpHeaders {
    const h = forwardResponseHeaders(ur.headers);
    applyHeaderOps(h, r.responseHeaders);
    if (r.cookie) addSetCookie(h, r.cookie);
    return h;
  }

  #request(req: IncomingMessage, res: ServerResponse): void {
    const line = this.#line(req);
    const ctx = line.ctx;
    let finished = false;
    // Known once routed; `done` must see it whenever the request ends.
    const held: { route?: RequestRoute } = {};
    const finish = (outcome: string): void => {
      if (finished) return;
      finished = true;
      line.status = res.headersSent ? res.statusCode : 0;
      if (outcome === 'reset' && line.flags === '-') line.flags = 'DC';
      if (held.route) this.#d.router.done(held.route);
      this.#count(line);
      this.#log(line, outcome);
    };
    res.once('finish', () => finish('completed'));
    res.once('close', () => finish(res.writableFinished ? 'completed' : 'reset'));
    if (!ctx) {
      this.#answer(res, 500, 'no context for this connection');
      return;
    }
    // llhttp refuses both framings at once; should a lenient parser ever let one through, it stops here.
    if (req.headers['transfer-encoding'] !== undefined && req.headers['content-length'] !== undefined) {
      line.reason = 'both Content-Length and Transfer-Encoding';
      line.flags = 'BAD_REQUEST';
      this.#refused(line, 'request smuggling: both Content-Length and Transfer-Encoding');
      res.shouldKeepAlive = false;
      this.#answer(res, 400, 'both Content-Length and Transfer-Encoding');
      return;
    }
    const trace = traceOf(req.headers);
    line.trace = trace;
    req.on('data', (c: Buffer) => {
      line.bytesIn += c.length;
    });
    const decision = this.#decide(ctx, req, line);
    if (!decision.ok) {
      // The body is not read: the connection cannot be kept for the next request unless it is drained.
      if (!req.complete) res.shouldKeepAlive = false;
      this.#answer(res, decision.status, decision.body);
      return;
    }
    const r = decision.route;
    held.route = r;
    const ep = r.endpoint;
    const up = request(this.#upstreamOptions(ctx, r, req, trace, false));
    up.on('response', (ur: IncomingMessage) => {
      this.#d.router.succeeded(ep);
      res.writeHead(ur.statusCode ?? 502, ur.statusMessage, this.#responseHeaders(r, ur));
      ur.on('data', (c: Buffer) => {
        line.bytesOut += c.length;
      });
      ur.pipe(res);
      ur.once('aborted', () => res.destroy());
    });
    up.on('error', (err: Error) => {
      const status = hopStatus(err);
      if (err instanceof HopFailure && status === 503) this.#d.router.failed(ep);
      line.reason = err.message;
      if (line.flags === '-') line.flags = status === 403 ? 'DENY' : 'UF';
      if (!res.headersSent)
        this.#answer(res, status, status === 403 ? 'RBAC: access denied' : 'upstream connect error');
      else res.destroy();
    });
    res.once('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    req.pipe(up);
  }

  #answer(res: ServerResponse, status: number, body: string): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }

  #refused(line: RequestLine, message: string): void {
    this.#d.refusals.refuse('inbound', 'bad_request', `waypoint refused an HTTP request: ${message}`, {
      client: line.ctx?.client.principal,
      authority: line.authority,
    });
  }

  /** llhttp refused what the client sent: 400 (431 for oversized headers), never forwarded, connection closed. */
  #clientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    const line: RequestLine = {
      started: Date.now(),
      ctx: this.#contexts.get(socket),
      method: undefined,
      path: undefined,
      authority: undefined,
      endpoint: undefined,
      upstream: undefined,
      status: err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400,
      bytesIn: 0,
      bytesOut: 0,
      reason: `${err.code ?? 'error'}: ${(err as { reason?: string }).reason ?? err.message}`,
      flags: 'BAD_REQUEST',
      labels: undefined,
      trace: undefined,
      routed: undefined,
    };
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    this.#refused(line, line.reason!);
    this.#count(line);
    this.#log(line, 'refused');
    const text = STATUS_CODES[line.status] ?? 'Bad Request';
    // Ended, not reset: a reset could overtake the answer on its way to the client.
    socket.end(`HTTP/1.1 ${line.status} ${text}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
    setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
  }

  /** Upgrade (WebSocket): the request is forwarded; on 101 the two connections are joined byte for byte. */
  #upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const line = this.#line(req);
    const ctx = line.ctx;
    // Known once routed; `done` must see it whenever the request ends.
    const held: { route?: RequestRoute } = {};
    let over = false;
    const end = (outcome: string): void => {
      if (over) return;
      over = true;
      if (held.route) this.#d.router.done(held.route);
      this.#count(line);
      this.#log(line, outcome);
    };
    const fail = (status: number, why: string, body = ''): void => {
      line.status = status;
      line.reason ??= why;
      end('refused');
      const text = STATUS_CODES[status] ?? '';
      socket.end(
        `HTTP/1.1 ${status} ${text}\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
    };
    socket.on('error', () => {});
    if (!ctx) {
      fail(500, 'no context for this connection');
      return;
    }
    const trace = traceOf(req.headers);
    line.trace = trace;
    const decision = this.#decide(ctx, req, line);
    if (!decision.ok) {
      fail(decision.status, decision.body, decision.body);
      return;
    }
    const r = decision.route;
    held.route = r;
    const ep = r.endpoint;
    const up = request(this.#upstreamOptions(ctx, r, req, trace, true));
    up.on('upgrade', (ur: IncomingMessage, upSocket: Duplex, upHead: Buffer) => {
      this.#d.router.succeeded(ep);
      line.status = ur.statusCode ?? 101;
      let head101 = `HTTP/1.1 ${line.status} ${ur.statusMessage ?? 'Switching Protocols'}\r\n`;
      for (let i = 0; i + 1 < ur.rawHeaders.length; i += 2) {
        if (ur.rawHeaders[i]!.toLowerCase() === XFCC) continue;
        head101 += `${ur.rawHeaders[i]}: ${ur.rawHeaders[i + 1]}\r\n`;
      }
      socket.write(`${head101}\r\n`);
      if (upHead.length > 0) socket.write(upHead);
      if (head.length > 0) upSocket.write(head);
      upSocket.on('error', () => socket.destroy());
      socket.on('error', () => upSocket.destroy());
      upSocket.on('data', (c: Buffer) => {
        line.bytesOut += c.length;
      });
      socket.on('data', (c: Buffer) => {
        line.bytesIn += c.length;
      });
      upSocket.pipe(socket);
      socket.pipe(upSocket);
      let closed = 0;
      const onClose = (): void => {
        socket.destroy();
        upSocket.destroy();
        if (++closed === 2) end('upgraded');
      };
      socket.once('close', onClose);
      upSocket.once('close', onClose);
    });
    up.on('response', (ur: IncomingMessage) => {
      // The endpoint declined the upgrade: its answer, then the connection ends.
      line.status = ur.statusCode ?? 502;
      const headers = this.#responseHeaders(r, ur);
      let text = `HTTP/1.1 ${line.status} ${ur.statusMessage ?? ''}\r\nconnection: close\r\n`;
      for (const [k, v] of Object.entries(headers))
        text += `${k}: ${Array.isArray(v) ? v.join(', ') : v}\r\n`;
      socket.write(`${text}\r\n`);
      ur.pipe(socket);
      ur.once('end', () => end('completed'));
    });
    up.on('error', (err: Error) => {
      const status = hopStatus(err);
      if (err instanceof HopFailure && status === 503) this.#d.router.failed(ep);
      line.flags = status === 403 ? 'DENY' : 'UF';
      fail(status, err.message);
    });
    up.end();
  }
}

/** What the client is answered for a failed hop: the destination's 401 is the client's intentions, 403. */
const hopStatus = (err: Error): number =>
  err instanceof HopFailure ? (err.status === 401 ? 403 : err.status === 400 ? 400 : 503) : 503;
