// Istio's request-metric labels for one request through the waypoint: the client as its certificate names
// it (the waypoint knows its service, not its workload or metadata), the endpoint's workload as the mesh
// knows it, and the request's outcome.
import type { Workload } from '../../lib/mesh/model.js';
import { type RequestLabels, workloadLabels } from '../metrics/metrics.js';
import { peerFromUris } from '../proxy/inbound/decide.js';
import type { RoutedService } from '../proxy/outbound/plan.js';

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

const LABEL_CACHE_MAX = 10_000;
const cache = new Map<string, Readonly<RequestLabels>>();

/** The labels of one request; requests alike share one frozen object (the mesh's pairs, not its requests). */
export function requestLabels(o: RequestOutcome, cluster: string): RequestLabels {
  const e = o.endpoint;
  // The endpoint by its labels as well as its name: one relabelled (a new version) under the same name
  // must not keep the labels it had.
  const key = `${o.client}|${o.service?.name}|${o.service?.namespace}|${e?.name}|${e?.namespace}|${e?.service}|${e?.app}|${e?.version}|${e?.canonicalService}|${e?.canonicalRevision}|${o.endpointPrincipal}|${o.protocol}|${o.status}|${o.grpcStatus}|${o.flags}|${cluster}`;
  const hit = cache.get(key);
  if (hit) return hit;
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
  if (cache.size >= LABEL_CACHE_MAX) cache.clear();
  cache.set(key, labels);
  return labels;
}
