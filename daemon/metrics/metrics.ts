import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { ConnectionRefusalReason, ResponseFlag } from '../../lib/errors.js';

// Istio's metric names and labels, so existing Grafana and Kiali dashboards read Ambit as they read ztunnel.

export type Reporter = 'source' | 'destination';
export type SecurityPolicy = 'mutual_tls' | 'unknown' | 'none';

export interface ConnectionLabels {
  reporter: Reporter;
  source_workload: string;
  source_workload_namespace: string;
  source_principal: string;
  source_app: string;
  destination_service: string;
  destination_service_name: string;
  destination_service_namespace: string;
  destination_workload: string;
  destination_principal: string;
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
  'destination_service',
  'destination_service_name',
  'destination_service_namespace',
  'destination_workload',
  'destination_principal',
  'request_protocol',
  'connection_security_policy',
  'response_flags',
];

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
  readonly meshReloads: Counter<'result'>;
  readonly adminUnauthorized: Counter<'route'>;
  readonly certExpiry: Gauge<'identity'>;
  readonly tunnelSessions: Gauge<'state'>;
  readonly activeConnections: Gauge<'direction'>;
  readonly handshakes: Counter<'direction'>;
  readonly consulRequests: Counter<'endpoint' | 'code'>;
  readonly consulStale: Gauge;
  readonly consulLastContact: Gauge;
  readonly consulFilteredQueries: Gauge;

  constructor(opts: { processMetrics?: boolean } = {}) {
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
    this.adminUnauthorized = new Counter({
      name: 'ambit_admin_unauthorized_total',
      help: 'Admin API requests refused with 401 (no or wrong admin token), by route',
      labelNames: ['route'],
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
    this.consulStale = new Gauge({
      name: 'ambit_consul_stale',
      help: '1 while Consul cannot be reached and the last known state is serving, else 0',
      registers,
    });
    this.consulFilteredQueries = new Gauge({
      name: 'ambit_consul_filtered_queries',
      help: 'Consul queries whose last answer was filtered by ACLs (X-Consul-Results-Filtered-By-ACLs)',
      registers,
    });
    this.consulLastContact = new Gauge({
      name: 'ambit_consul_last_contact_timestamp_seconds',
      help: 'When Consul last answered a query',
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

  /** Closes a connection's account: counts it closed and adds its bytes. */
  connectionClosed(labels: ConnectionLabels, bytesFromClient: number, bytesToClient: number): void {
    this.closed.inc(labels);
    if (bytesFromClient > 0) this.received.inc(labels, bytesFromClient);
    if (bytesToClient > 0) this.sent.inc(labels, bytesToClient);
  }
}
