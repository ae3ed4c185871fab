// Istio's request-metric labels for one request through the waypoint: the client as its certificate names
// it (the waypoint knows its service, not its workload or metadata), the endpoint's workload as the mesh
// knows it, and the request's outcome.
import type { Logger } from '../../lib/log.js';
import type { Workload } from '../../lib/mesh/model.js';
import { type Metrics, type RequestLabels, workloadLabels } from '../metrics/metrics.js';
import { peerFromUris } from '../proxy/inbound/decide.js';
import type { OutboundPlan, RoutedService } from '../proxy/outbound/plan.js';
import type { HttpContext } from './http.js';
import type { Trace } from './l7-headers.js';
import type { RetryState } from './retry.js';
import type { RouteLabels } from './router.js';

export interface RequestOutcome {
  readonly client: string | undefined;
  /** The service the request landed on (the route's), else the one it was for. */
  readonly service: RoutedService | undefined;
  readonly endpoint: Workload | undefined;
  readonly endpointPrincipal: string | undefined;
  readonly protocol: 'http' | 'grpc';
  readonly status: number;
  readonly grpcStatus: string;
  readonly flags: string;
}

const MAX_CLIENTS = 10_000;
const MAX_OUTCOMES = 1_000;
const NONE = {};
/**
 * client (and cluster) -> the endpoint (or the service, when none was chosen) -> outcome -> labels. Found
 * by identity and a short key: a request's labels cost a few lookups, not a string of all 26 values.
 * Endpoints are the mesh's objects, held weakly: a reloaded mesh's old ones go with it.
 */
const cache = new Map<string, WeakMap<object, Map<string, Readonly<RequestLabels>>>>();

/** The labels of one request; requests alike share one frozen object (the mesh's pairs, not its requests). */
export function requestLabels(o: RequestOutcome, cluster: string): RequestLabels {
  const e = o.endpoint;
  const who = `${cluster}|${o.client}`;
  let byTarget = cache.get(who);
  if (byTarget === undefined) {
    if (cache.size >= MAX_CLIENTS) cache.clear();
    byTarget = new WeakMap();
    cache.set(who, byTarget);
  }
  const target: object = e ?? o.service ?? NONE;
  let byOutcome = byTarget.get(target);
  if (byOutcome === undefined) {
    byOutcome = new Map();
    byTarget.set(target, byOutcome);
  }
  const key = `${o.status}|${o.grpcStatus}|${o.flags}|${o.protocol}|${o.endpointPrincipal}|${e ? o.service?.name : ''}`;
  const hit = byOutcome.get(key);
  if (hit) return hit;
  if (byOutcome.size >= MAX_OUTCOMES) byOutcome.clear();
  const labels = makeLabels(o, cluster);
  byOutcome.set(key, labels);
  return labels;
}

function makeLabels(o: RequestOutcome, cluster: string): RequestLabels {
  const e = o.endpoint;
  const peer = o.client ? peerFromUris([o.client]) : undefined;
  const src = { workload: peer?.service, service: peer?.service };
  const dst = e ? { workload: e.name, service: e.service, meta: e } : { service: o.service?.name };
  const sw = workloadLabels(src, cluster);
  const dw = workloadLabels(dst, cluster);
  const svc = o.service;
  const labels: RequestLabels = Object.freeze({
    reporter: 'waypoint' as const,
    source_workload: peer?.service ?? 'unknown',
    source_workload_namespace: peer?.namespace ?? 'unknown',
    source_principal: o.client ?? 'unknown',
    source_app: sw.app,
    source_version: sw.version,
    source_canonical_service: sw.canonical_service,
    source_canonical_revision: sw.canonical_revision,
    source_cluster: sw.cluster,
    destination_service: svc ? `${svc.name}.${svc.namespace}` : 'unknown',
    destination_service_name: svc?.name ?? 'unknown',
    destination_service_namespace: svc?.namespace ?? 'unknown',
    destination_workload: e?.name ?? 'unknown',
    destination_workload_namespace: e?.namespace ?? 'unknown',
    destination_principal: o.endpointPrincipal ?? 'unknown',
    destination_app: dw.app,
    destination_version: dw.version,
    destination_canonical_service: dw.canonical_service,
    destination_canonical_revision: dw.canonical_revision,
    destination_cluster: dw.cluster,
    connection_security_policy: 'mutual_tls' as const,
    request_protocol: o.protocol,
    // 0: no response was sent (the client went away first), as Envoy reports it.
    response_code: String(o.status),
    grpc_response_status: o.grpcStatus,
    response_flags: o.flags,
  });
  return labels;
}

/** One request's account, whichever engine carried it: what its metrics and its access-log line say. */
export interface RequestRecord {
  readonly started: number;
  readonly ctx: HttpContext;
  readonly method: string | undefined;
  readonly path: string | undefined;
  readonly authority: string | undefined;
  endpoint: Workload | undefined;
  /** The endpoint's `ip:port` as the hop named it, when the engine knows it. */
  upstream?: string | undefined;
  status: number;
  /** gRPC only: the call's grpc-status. */
  grpcStatus?: string | undefined;
  bytesIn: number;
  bytesOut: number;
  reason: string | undefined;
  /** Envoy's response flag: `-` unless the waypoint itself answered, or a side went away. */
  flags: string;
  labels: RouteLabels | undefined;
  trace: Trace | undefined;
  /** The service the request landed on, once routed. */
  routed: OutboundPlan | undefined;
  /** Its retries, when its route has a retry policy: the access log's `attempts`. */
  retry?: RetryState | undefined;
}

export interface RecordDeps {
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly hop: { readonly identityOf: (w: Pick<Workload, 'namespace' | 'service'>) => string };
}

/** Endpoints' SPIFFE IDs, per daemon's identityOf (a trust domain) and the mesh's workload objects. */
const principals = new WeakMap<RecordDeps['hop']['identityOf'], WeakMap<Workload, string>>();

/** The endpoint's SPIFFE ID, made once per workload object rather than once per request. */
function principalOf(d: RecordDeps, w: Workload): string {
  let byWorkload = principals.get(d.hop.identityOf);
  if (byWorkload === undefined) {
    byWorkload = new WeakMap();
    principals.set(d.hop.identityOf, byWorkload);
  }
  let p = byWorkload.get(w);
  if (p === undefined) {
    p = d.hop.identityOf(w);
    byWorkload.set(w, p);
  }
  return p;
}

/** Counts the request in Istio's metrics (every one, answered by the endpoint or by the waypoint). */
export function countRequest(d: RecordDeps, l: RequestRecord, protocol: 'http' | 'grpc'): void {
  const labels = requestLabels(
    {
      client: l.ctx.client.principal,
      service: l.routed?.service ?? l.ctx.plan.service,
      endpoint: l.endpoint,
      endpointPrincipal: l.endpoint ? principalOf(d, l.endpoint) : undefined,
      protocol,
      status: l.status,
      grpcStatus: l.grpcStatus ?? '',
      flags: l.flags,
    },
    d.metrics.cluster,
  );
  d.metrics.requestDone(labels, Date.now() - l.started, l.bytesIn, l.bytesOut);
}

/**
 * The request's access-log line (`protocol`: http, http2 or grpc, as the log tells them apart); nothing is
 * built when info lines are not written.
 */
export function logRequest(d: RecordDeps, l: RequestRecord, protocol: string, outcome: string): void {
  if (!d.log.isLevelEnabled('info')) return;
  const service = l.ctx.plan.service;
  d.log.info(
    {
      access: 'waypoint',
      protocol,
      method: l.method,
      path: l.path,
      authority: l.authority,
      status: l.status,
      ...(l.grpcStatus !== undefined ? { grpc_status: l.grpcStatus } : {}),
      duration_ms: Date.now() - l.started,
      bytes_received: l.bytesIn,
      bytes_sent: l.bytesOut,
      response_flags: l.flags,
      route: l.labels?.route,
      split: l.labels?.split,
      subset: l.labels?.subset,
      ...(l.labels?.failover ? { failover: l.labels.target } : {}),
      endpoint: l.endpoint?.name,
      ...(l.upstream !== undefined ? { upstream: l.upstream } : {}),
      ...(l.retry !== undefined ? { attempts: l.retry.attempts } : {}),
      trace_id: l.trace?.traceId,
      request_id: l.trace?.requestId,
      src: { addr: l.ctx.clientAddr, principal: l.ctx.client.principal },
      dst: {
        service: `${service.name}.${service.namespace}`,
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

/** The request as the taps see it (`ambit tap` on the waypoint), either engine's: only while someone taps. */
export function tapRequest(
  d: RecordDeps,
  l: RequestRecord,
  protocol: 'http' | 'grpc',
  outcome: string,
): void {
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
      protocol,
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
