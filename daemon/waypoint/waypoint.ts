// ambitd --role waypoint: the HBONE streams its tunnel listener accepts are not delivered to a local
// workload but resolved to the service they are for (one whose waypoint this is) and carried on, with the
// waypoint's own identity, to an endpoint the router chooses: byte for byte (tcp) or request by request
// (http).
import { ConnectionRefusal } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import type { Workload } from '../../lib/mesh/model.js';
import { socketAddress } from '../../lib/net/hostport.js';
import type { Refusals } from '../limits/refusal.js';
import type { Metrics } from '../metrics/metrics.js';
import { ConnectionAccount, type Party } from '../proxy/account.js';
import type { H2Session } from '../proxy/h2/session.js';
import type { H2Headers, H2Stream } from '../proxy/h2/stream.js';
import { parseForwardedFor } from '../proxy/hbone.js';
import { sessionPeer } from '../proxy/inbound/peer.js';
import type { OutboundPlan, OutboundState, RoutedService } from '../proxy/outbound/plan.js';
import { ignoreError } from '../proxy/pipe.js';
import type { Pool } from '../proxy/pool/pool.js';
import { StreamDuplex } from './duplex.js';
import { type HopClient, openHop } from './hop.js';
import { DEFAULT_HTTP1_LIMITS, type Http1Limits, WaypointHttp } from './http.js';
import { DEFAULT_HTTP2_LIMITS, type Http2Limits, WaypointHttp2 } from './http2.js';
import { DEFAULT_MIRROR_LIMITS, Mirrors, type MirrorsDeps } from './mirror.js';
import type { GroupView } from './outlier.js';
import { resolveForWaypoint } from './resolve.js';
import { DEFAULT_RETRY_BUFFER_BYTES, Retries } from './retry.js';
import type { WaypointRouter } from './router.js';

export interface WaypointDeps {
  readonly store: OutboundState;
  readonly pool: Pool;
  readonly router: WaypointRouter;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly refusals: Refusals;
  readonly identityOf: (w: Pick<Workload, 'namespace' | 'service'>) => string;
  /** The waypoint service this instance is one of. */
  readonly self: RoutedService;
  /** Streams one client session may hold open at once (maxInboundStreams). */
  readonly maxStreams: number;
  /** Endpoints tried per tcp connection before giving up. */
  readonly maxAttempts: number;
  /** The tunnel's HTTP/2 bounds, for the HTTP/2 inside it (http2 and grpc services). */
  readonly http2Limits?: Omit<Http2Limits, 'maxStreams'>;
  /** HTTP/1.1 bounds: the idle and head timeout, and a head's bytes (defaults as node:http's). */
  readonly http1Limits?: Partial<Http1Limits>;
  /** Request-body bytes kept per request for a retry (waypointRetryBufferBytes). */
  readonly retryBufferBytes?: number;
  /** Mirror copies' bounds (waypointMirrorBufferBytes, waypointMirrorMaxInFlight, waypointMirrorTimeout). */
  readonly mirrorLimits?: Partial<Pick<MirrorsDeps, 'bufferBytes' | 'maxInFlight' | 'timeoutMs'>>;
}

/** RST_STREAM REFUSED_STREAM: "not processed, safe to retry" (RFC 9113 section 8.7). */
const REFUSED_STREAM = 7;

const streamsOf = new WeakMap<H2Session, { n: number }>();

export class Waypoint {
  readonly #d: WaypointDeps;
  readonly #selfId: string;
  readonly http: WaypointHttp;
  readonly http2: WaypointHttp2;
  /** Connections and requests' streams being carried (what a drain waits for). */
  #carried = 0;

  constructor(d: WaypointDeps) {
    this.#d = d;
    this.#selfId = d.identityOf({ namespace: d.self.namespace, service: d.self.name });
    const retries = new Retries({
      router: d.router,
      metrics: d.metrics,
      refusals: d.refusals,
      bufferBytes: d.retryBufferBytes ?? DEFAULT_RETRY_BUFFER_BYTES,
    });
    const mirrors = new Mirrors({
      metrics: d.metrics,
      refusals: d.refusals,
      ...DEFAULT_MIRROR_LIMITS,
      ...d.mirrorLimits,
    });
    // What the HTTP/1.1 and HTTP/2 engines share: one retry budget, one mirror bound, one hop.
    const engine = {
      retries,
      mirrors,
      hop: { store: d.store, pool: d.pool, identityOf: d.identityOf, self: this.#selfId },
      router: d.router,
      log: d.log,
      refusals: d.refusals,
      metrics: d.metrics,
    };
    this.http = new WaypointHttp({ ...engine, limits: { ...DEFAULT_HTTP1_LIMITS, ...d.http1Limits } });
    this.http2 = new WaypointHttp2({
      ...engine,
      limits: {
        maxStreams: d.maxStreams,
        maxHeaderListSize: d.http2Limits?.maxHeaderListSize ?? DEFAULT_HTTP2_LIMITS.maxHeaderListSize,
        streamResetRate: d.http2Limits?.streamResetRate ?? DEFAULT_HTTP2_LIMITS.streamResetRate,
      },
    });
  }

  /** The router's outlier ejections in force, for /config_dump. */
  ejections(): GroupView[] {
    return this.#d.router.ejections?.() ?? [];
  }

  get openConnections(): number {
    return this.#carried;
  }

  handleStream(stream: H2Stream, headers: H2Headers, session: H2Session): void {
    const d = this.#d;
    stream.on('error', ignoreError);
    let load = streamsOf.get(session);
    if (!load) {
      load = { n: 0 };
      streamsOf.set(session, load);
    }
    if (load.n >= d.maxStreams) {
      d.refusals.refuse('inbound', 'stream_limit', 'waypoint stream refused: session stream limit', {
        src: session.socket.remoteAddress,
        limit: d.maxStreams,
      });
      stream.close(REFUSED_STREAM);
      return;
    }
    const held = load;
    held.n++;
    stream.once('close', () => held.n--);
    const started = Date.now();
    const authority = headers[':authority'];
    const peer = sessionPeer(session);
    const forwarded = headers.forwarded;
    const src: Party = {
      addr: socketAddress(session.socket.remoteAddress, session.socket.remotePort),
      forwarded: parseForwardedFor(forwarded),
      principal: peer?.principal,
      service: peer?.service,
      namespace: peer?.namespace,
      workload: peer?.service,
    };
    const refuse = (refusal: ConnectionRefusal, service?: RoutedService): void => {
      const to: Party = { addr: authority, service: service?.name, namespace: service?.namespace };
      new ConnectionAccount(d, 'inbound', src, to, 'mutual_tls', started).refused(refusal, {
        status: refusal.status,
        waypoint: this.#selfId,
      });
      if (!stream.destroyed && !stream.headersSent)
        stream.respond({ ':status': String(refusal.status) }, { endStream: true });
    };
    if (headers[':method'] !== 'CONNECT') {
      refuse(new ConnectionRefusal('bad_request', `method ${headers[':method']} is not CONNECT`));
      return;
    }
    if (!peer) {
      refuse(new ConnectionRefusal('denied', 'peer certificate carries no SPIFFE identity'));
      return;
    }
    const resolved = resolveForWaypoint(d.store, d.self, authority);
    if (!resolved.ok) {
      refuse(resolved.refusal, resolved.service);
      return;
    }
    const { plan } = resolved;
    const client: HopClient = {
      principal: peer.principal,
      forwarded,
      traceparent: headers.traceparent,
    };
    const protocol = d.router.protocol(d.store.service(plan.service.namespace, plan.service.name));
    if (protocol !== 'tcp') {
      stream.respond({ ':status': '200' });
      this.#carried++;
      const ctx = { plan, client, clientAddr: src.forwarded ?? src.addr };
      if (protocol === 'http') {
        stream.once('close', () => this.#carried--);
        this.http.serve(stream, ctx);
        return;
      }
      const socket = new StreamDuplex(stream, { remoteAddress: ctx.clientAddr });
      socket.once('close', () => this.#carried--);
      this.http2.serve(socket, ctx);
      return;
    }
    void this.#tcp(stream, plan, client, src, started, refuse);
  }

  /** tcp: the first endpoint that answers 200 is joined to the client's stream, which is answered 200 then. */
  async #tcp(
    stream: H2Stream,
    plan: OutboundPlan,
    client: HopClient,
    src: Party,
    started: number,
    refuse: (r: ConnectionRefusal, s?: RoutedService) => void,
  ): Promise<void> {
    const d = this.#d;
    const hop = { store: d.store, pool: d.pool, identityOf: d.identityOf, self: this.#selfId };
    const tried = new Set<string>();
    let lastError = 'no endpoint could be tried';
    for (let attempt = 0; attempt < d.maxAttempts; attempt++) {
      const ep = d.router.pick({ plan, client: client.principal }, tried);
      if (!ep) break;
      tried.add(ep.name);
      let result: Awaited<ReturnType<typeof openHop>>;
      try {
        result = await openHop(hop, plan, ep, client);
      } catch (err) {
        d.router.failed(ep);
        lastError = `endpoint ${ep.name}: ${(err as Error).message}`;
        continue;
      }
      if (result.kind === 'skip') {
        lastError = result.why;
        continue;
      }
      const { stream: upstream, status } = result.response;
      if (status !== 200) {
        upstream.close();
        if (status === 401) {
          refuse(new ConnectionRefusal('denied', 'endpoint answered 401'), plan.service);
          return;
        }
        d.router.failed(ep);
        lastError = `endpoint ${ep.name} answered ${status}`;
        continue;
      }
      if (stream.destroyed) {
        upstream.close();
        return;
      }
      d.router.succeeded(ep);
      stream.respond({ ':status': '200' });
      const dst: Party = {
        addr: result.authority,
        service: plan.service.name,
        namespace: plan.service.namespace,
        workload: ep.name,
        principal: d.identityOf(ep),
        meta: ep,
      };
      const account = new ConnectionAccount(d, 'inbound', src, dst, 'mutual_tls', started);
      this.#join(account, stream, upstream);
      return;
    }
    refuse(new ConnectionRefusal('upstream_failed', lastError), plan.service);
  }

  /** Two tunnel streams carried both ways, each direction ending on its own; a reset of one resets both. */
  #join(account: ConnectionAccount, client: H2Stream, upstream: H2Stream): void {
    const a = new StreamDuplex(client);
    const b = new StreamDuplex(upstream);
    account.opened();
    this.#carried++;
    let closed = 0;
    let failure: Error | undefined;
    const onError = (err: Error): void => {
      failure ??= err;
      a.destroy();
      b.destroy();
    };
    const onClose = (): void => {
      if (++closed < 2) return;
      this.#carried--;
      account.closed(a.bytesRead, a.bytesWritten, failure);
    };
    a.on('error', onError);
    b.on('error', onError);
    a.once('close', onClose);
    b.once('close', onClose);
    a.pipe(b);
    b.pipe(a);
  }

  /** A reload's or a stop's drain: clients' HTTP connections are told to go elsewhere once answered. */
  drain(): void {
    this.http.drain();
    this.http2.drain();
  }

  close(): void {
    this.http.close();
    this.http2.close();
  }
}
