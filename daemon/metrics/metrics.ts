import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { ConnectionRefusalReason, ResponseFlag } from '../../lib/errors.js';
import type { WorkloadMeta } from '../../lib/mesh/model.js';
import { ConnectionTable } from '../observe/connections.js';
import { RequestMetrics } from './request-metrics.js';

// Istio's metric names and labels, so existing Grafana and Kiali dashboards read Ambit as they read ztunnel.

export type Reporter = 'source' | 'destination' | 'waypoint';
export type SecurityPolicy = 'mutual_tls' | 'unknown' | 'none';

export interface ConnectionLabels {
  reporter: Reporter;
  source_workload: string;
  source_workload_namespace: string;
  source_principal: string;
  source_app: string;
  source_version: string;
  source_canonical_service: string;
  source_canonical_revision: string;
  source_cluster: string;
  destination_service: string;
  destination_service_name: string;
  destination_service_namespace: string;
  destination_workload: string;
  destination_workload_namespace: string;
  destination_principal: string;
  destination_app: string;
  destination_version: string;
  destination_canonical_service: string;
  destination_canonical_revision: string;
  destination_cluster: string;
  request_protocol: 'tcp';
  connection_security_policy: SecurityPolicy;
  response_flags: ResponseFlag;
}

const CONNECTION_LABELS: readonly (keyof ConnectionLabels)[] = [
  'reporter',
  'source_workload',
  'source_workload_namespace',
  'source_principal',
  'source_app',
  'source_version',
  'source_canonical_service',
  'source_canonical_revision',
  'source_cluster',
  'destination_service',
  'destination_service_name',
  'destination_service_namespace',
  'destination_workload',
  'destination_workload_namespace',
  'destination_principal',
  'destination_app',
  'destination_version',
  'destination_canonical_service',
  'destination_canonical_revision',
  'destination_cluster',
  'request_protocol',
  'connection_security_policy',
  'response_flags',
];

/**
 * The labels of Istio's request metrics: a connection's (reporter `waypoint` here, as Istio's waypoints
 * report), with the request's protocol, status, gRPC status (empty for http) and Envoy's response flags.
 */
export interface RequestLabels extends Omit<ConnectionLabels, 'request_protocol' | 'response_flags'> {
  request_protocol: 'http' | 'grpc';
  response_code: string;
  grpc_response_status: string;
  /** Envoy's flags: `-`, RBAC, UH, UF, DENY, BAD_REQUEST, or DC when the client went away first. */
  response_flags: string;
}

/**
 * Envoy's default histogram buckets, which Istio's request histograms keep (milliseconds for the duration,
 * bytes for the sizes).
 */
export const ISTIO_BUCKETS: readonly number[] = [
  0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000,
  3600000,
];

/** One end of a connection as its labels need it; `meta` is its workload's, when the workload is known. */
export interface LabelledParty {
  readonly workload?: string | undefined;
  readonly service?: string | undefined;
  readonly meta?: WorkloadMeta | undefined;
}

/** The labels that describe one end's workload, without their `source_`/`destination_` prefix. */
export interface WorkloadLabels {
  app: string;
  version: string;
  canonical_service: string;
  canonical_revision: string;
  cluster: string;
}

/**
 * Istio's values for one end: its `app` and `version` labels or "unknown"; the canonical service from
 * `service.istio.io/canonical-name`, else `app`, else the workload's name; the canonical revision from
 * `service.istio.io/canonical-revision`, else `version`, else "latest"; its cluster. Ambit has no pod labels:
 * the workload's metadata (mesh file fields or Consul Meta) stands for them, and `app` defaults to the
 * workload's service, which is what Ambit's service is for. An end the daemon knows nothing of (a plaintext
 * client outside the mesh) is "unknown" throughout, as Istio reports it.
 */
export function workloadLabels(p: LabelledParty, cluster: string): WorkloadLabels {
  const m = p.meta ?? {};
  const known = p.workload !== undefined || p.service !== undefined;
  const app = m.app ?? p.service;
  return {
    app: app ?? 'unknown',
    version: m.version ?? 'unknown',
    canonical_service: m.canonicalService ?? app ?? p.workload ?? 'unknown',
    canonical_revision: m.canonicalRevision ?? m.version ?? (known ? 'latest' : 'unknown'),
    cluster: known ? cluster : 'unknown',
  };
}

/** Istio's default cluster name (`values.global.multiCluster.clusterName`), for a daemon told none. */
export const DEFAULT_CLUSTER = 'Kubernetes';

export type RefusalReason =
  // A connection refused before it carried anything (lib/errors.ts REFUSALS).
  | ConnectionRefusalReason
  // A tunnel handshake that failed (bad certificate, no h2).
  | 'tls_failure'
  // Limits (docs/limits.md): each names the bound that refused.
  | 'handshake_limit'
  | 'handshake_timeout'
  | 'connection_limit'
  | 'identity_limit'
  | 'idle_timeout'
  | 'stream_limit'
  | 'connect_limit'
  | 'node_connect_limit'
  | 'fd_reserve'
  // The waypoint's limits from service-defaults (RateLimits, UpstreamConfig Limits): one request refused.
  | 'rate_limited'
  | 'overflow'
  // Logged only (daemon/waypoint/retry.ts counts it): a request body past waypointRetryBufferBytes.
  | 'retry_buffer'
  // Logged only (daemon/waypoint/mirror.ts counts them): a mirror copy given up, the client's request served.
  | 'mirror_buffer'
  | 'mirror_overflow'
  // A peer that broke or abused a protocol: the session is ended.
  | 'h2_protocol'
  | 'h2_reset_flood'
  | 'h2_control_flood'
  | 'h2_header_flood'
  | 'tls_record'
  | 'tls_keyupdate_flood'
  | 'tls_alert';

export class Metrics {
  readonly registry = new Registry();
  readonly opened: Counter<keyof ConnectionLabels>;
  readonly closed: Counter<keyof ConnectionLabels>;
  readonly sent: Counter<keyof ConnectionLabels>;
  readonly received: Counter<keyof ConnectionLabels>;
  readonly refused: Counter<'direction' | 'reason'>;
  /** istio_requests_total and its three histograms (request-metrics.ts). */
  readonly requests: RequestMetrics<RequestLabels>;
  readonly meshReloads: Counter<'result'>;
  readonly adminUnauthorized: Counter<'route'>;
  readonly tapsDropped: Counter;
  /**
   * The connections being carried now, and their events for whoever taps: beside the counters they
   * mirror, so that every account that counts a connection also lists it (one table per daemon).
   */
  readonly connections = new ConnectionTable();
  readonly certExpiry: Gauge<'identity'>;
  readonly tunnelSessions: Gauge<'state'>;
  readonly activeConnections: Gauge<'direction'>;
  readonly handshakes: Counter<'direction'>;
  readonly consulRequests: Counter<'endpoint' | 'code'>;
  readonly consulStale: Gauge;
  readonly consulLastContact: Gauge;
  readonly consulFilteredQueries: Gauge;
  readonly kubernetesPods: Gauge;
  readonly kubernetesEvents: Counter<'type'>;
  readonly kubernetesRelists: Counter<'reason'>;
  readonly kubernetesRefused: Counter<'bound'>;
  /** The waypoint's outlier ejections (PassiveHealthCheck): per destination service and reason, and in force. */
  readonly outlierEjections: Counter<'destination_service' | 'reason'>;
  readonly outlierEjected: Gauge<'destination_service'>;

  /**
   * The `source_cluster`/`destination_cluster` of every known workload: one daemon sees one mesh, and a mesh
   * is one datacenter (Ambit's `datacenter` setting, or Consul's), as an Istio mesh is one cluster.
   */
  readonly cluster: string;

  constructor(opts: { processMetrics?: boolean; cluster?: string } = {}) {
    this.cluster = opts.cluster ?? DEFAULT_CLUSTER;
    const registers = [this.registry];
    const labelNames = CONNECTION_LABELS as (keyof ConnectionLabels)[];
    this.opened = new Counter({
      name: 'istio_tcp_connections_opened_total',
      help: 'TCP connections opened',
      labelNames,
      registers,
    });
    this.closed = new Counter({
      name: 'istio_tcp_connections_closed_total',
      help: 'TCP connections closed',
      labelNames,
      registers,
    });
    this.sent = new Counter({
      name: 'istio_tcp_sent_bytes_total',
      help: 'Bytes sent toward the client (response direction)',
      labelNames,
      registers,
    });
    this.received = new Counter({
      name: 'istio_tcp_received_bytes_total',
      help: 'Bytes received from the client (request direction)',
      labelNames,
      registers,
    });
    this.refused = new Counter({
      name: 'ambit_connections_refused_total',
      help: 'Connections refused, by direction and reason',
      labelNames: ['direction', 'reason'],
      registers,
    });
    this.requests = new RequestMetrics(
      {
        total: { name: 'istio_requests_total', help: 'Requests handled by the waypoint' },
        histograms: [
          {
            name: 'istio_request_duration_milliseconds',
            help: "Request duration at the waypoint, from its first byte to the response's last, in milliseconds",
          },
          { name: 'istio_request_bytes', help: 'Request body sizes, in bytes' },
          { name: 'istio_response_bytes', help: 'Response body sizes, in bytes' },
        ],
      },
      ISTIO_BUCKETS,
      registers,
    );
    this.adminUnauthorized = new Counter({
      name: 'ambit_admin_unauthorized_total',
      help: 'Admin API requests refused with 401 (no or wrong admin token), by route',
      labelNames: ['route'],
      registers,
    });
    this.tapsDropped = new Counter({
      name: 'ambit_tap_dropped_total',
      help: 'Taps (/tap, ambit tap) dropped because they read events slower than the daemon made them',
      registers,
    });
    this.meshReloads = new Counter({
      name: 'ambit_mesh_reloads_total',
      help: 'Mesh configuration loads, by result (applied|rejected)',
      labelNames: ['result'],
      registers,
    });
    this.certExpiry = new Gauge({
      name: 'ambit_certificate_expiry_timestamp_seconds',
      help: 'Expiry of the certificate held for each workload identity',
      labelNames: ['identity'],
      registers,
      // With workers, a scrape merges every process's registry: a timestamp or a state is not a sum.
      aggregator: 'max',
    });
    this.tunnelSessions = new Gauge({
      name: 'ambit_tunnel_sessions',
      help: 'Pooled outbound HBONE sessions',
      labelNames: ['state'],
      registers,
    });
    this.activeConnections = new Gauge({
      name: 'ambit_active_connections',
      help: 'Tunneled connections open now',
      labelNames: ['direction'],
      registers,
    });
    this.handshakes = new Counter({
      name: 'ambit_tls_handshakes_total',
      help: 'Completed tunnel TLS handshakes (outbound: sessions this daemon opened; inbound: accepted)',
      labelNames: ['direction'],
      registers,
    });
    this.consulRequests = new Counter({
      name: 'ambit_consul_requests_total',
      help: 'HTTP requests to the Consul agent, by endpoint family and status code (or error)',
      labelNames: ['endpoint', 'code'],
      registers,
    });
    this.outlierEjections = new Counter({
      name: 'ambit_waypoint_outlier_ejections_total',
      help: 'Endpoints the waypoint ejected (PassiveHealthCheck), by destination service and reason',
      labelNames: ['destination_service', 'reason'],
      registers,
    });
    this.outlierEjected = new Gauge({
      name: 'ambit_waypoint_outlier_ejected',
      help: "Endpoints ejected now, by destination service (one per client service's ejection)",
      labelNames: ['destination_service'],
      registers,
    });
    this.consulStale = new Gauge({
      name: 'ambit_consul_stale',
      help: '1 while Consul cannot be reached and the last known state is serving, else 0',
      registers,
      // With workers, a scrape merges every process's registry: a timestamp or a state is not a sum.
      aggregator: 'max',
    });
    this.consulFilteredQueries = new Gauge({
      name: 'ambit_consul_filtered_queries',
      help: 'Consul queries whose last answer was filtered by ACLs (X-Consul-Results-Filtered-By-ACLs)',
      registers,
      // With workers, a scrape merges every process's registry: a timestamp or a state is not a sum.
      aggregator: 'max',
    });
    this.consulLastContact = new Gauge({
      name: 'ambit_consul_last_contact_timestamp_seconds',
      help: 'When Consul last answered a query',
      registers,
      // With workers, a scrape merges every process's registry: a timestamp or a state is not a sum.
      aggregator: 'max',
    });
    this.kubernetesPods = new Gauge({
      name: 'ambit_kubernetes_pods',
      help: 'Pods enrolled as workloads from the Kubernetes pod watch',
      registers,
      aggregator: 'max',
    });
    this.kubernetesEvents = new Counter({
      name: 'ambit_kubernetes_watch_events_total',
      help: 'Pod watch events, by type (ADDED|MODIFIED|DELETED|BOOKMARK|ERROR|unknown)',
      labelNames: ['type'],
      registers,
    });
    this.kubernetesRelists = new Counter({
      name: 'ambit_kubernetes_relists_total',
      help: 'Pod LISTs, by reason (start|gone: resourceVersion expired, 410|error: after a failure)',
      labelNames: ['reason'],
      registers,
    });
    this.kubernetesRefused = new Counter({
      name: 'ambit_kubernetes_refused_total',
      help: 'Answers of the API server refused for a bound, by bound (line|page|pods)',
      labelNames: ['bound'],
      registers,
    });
    if (opts.processMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  /** A connection that never carried data: counted as opened and closed with its flag. */
  refusedConnection(
    labels: ConnectionLabels,
    direction: 'inbound' | 'outbound',
    reason: RefusalReason,
  ): void {
    this.opened.inc(labels);
    this.closed.inc(labels);
    this.refused.inc({ direction, reason });
  }

  /** One request over: counted, its duration and both body sizes observed. */
  requestDone(labels: RequestLabels, durationMs: number, requestBytes: number, responseBytes: number): void {
    this.requests.record(labels, durationMs, requestBytes, responseBytes);
  }

  /** Closes a connection's account: counts it closed and adds its bytes. */
  connectionClosed(labels: ConnectionLabels, bytesFromClient: number, bytesToClient: number): void {
    this.closed.inc(labels);
    if (bytesFromClient > 0) this.received.inc(labels, bytesFromClient);
    if (bytesToClient > 0) this.sent.inc(labels, bytesToClient);
  }
}
