import type { ConnectionRefusal, ResponseFlag } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import type { WorkloadMeta } from '../../lib/mesh/model.js';
import type { Direction, Refusals } from '../limits/refusal.js';
import {
  type ConnectionLabels,
  type Metrics,
  type Reporter,
  type SecurityPolicy,
  workloadLabels,
} from '../metrics/metrics.js';
import type { Tracked } from '../observe/connections.js';

/** One end of a connection as far as the daemon knows it; anything unknown is reported as "unknown". */
export interface Party {
  /** The address the daemon saw: the TCP peer of the connection that reached it. */
  readonly addr?: string | undefined;
  /** The client's own claim of its address (HBONE's `forwarded`), never taken for `addr`. */
  readonly forwarded?: string | undefined;
  readonly workload?: string | undefined;
  readonly namespace?: string | undefined;
  readonly service?: string | undefined;
  readonly principal?: string | undefined;
  /** The waypoint that carried the connection for this source, when one did (its proven identity). */
  readonly via?: string | undefined;
  /** The workload's Istio labels (app, version, canonical names), when its workload is known. */
  readonly meta?: WorkloadMeta | undefined;
}

export type { Direction } from '../limits/refusal.js';

/** What an account reports to: the connection metrics, the access log, and the refusal reporter. */
export interface AccountDeps {
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly refusals: Refusals;
}

const NO_BYTES = (): { fromClient: number; toClient: number } => ({ fromClient: 0, toClient: 0 });

const LABEL_CACHE_MAX = 10_000;
const labelCache = new Map<string, Readonly<ConnectionLabels>>();

/** What of a party its labels depend on, as a cache key. */
const partyKey = (p: Party): string => {
  const m = p.meta;
  return `${p.workload}|${p.namespace}|${p.principal}|${p.service}|${m?.app}|${m?.version}|${m?.canonicalService}|${m?.canonicalRevision}`;
};

/**
 * The account of one connection, whatever its entry (explicit upstream, capture, tunnel, plaintext):
 * the same metric labels, the same access-log line, the same open/close bookkeeping. Built once per
 * connection, when both ends are known. It counts and logs; carrying the bytes is carry.ts's.
 */
export class ConnectionAccount {
  readonly #d: AccountDeps;
  readonly #direction: Direction;
  readonly #src: Party;
  readonly #dst: Party;
  readonly #security: SecurityPolicy;
  readonly #started: number;
  /** The labels the connection was opened with, once it is. */
  #open: ConnectionLabels | undefined;
  /** Its row in the live table, once it is carried. */
  #tracked: Tracked | undefined;

  constructor(
    deps: AccountDeps,
    direction: Direction,
    src: Party,
    dst: Party,
    security: SecurityPolicy,
    started = Date.now(),
  ) {
    this.#started = started;
    this.#d = deps;
    this.#direction = direction;
    this.#src = src;
    this.#dst = dst;
    this.#security = security;
  }

  /**
   * The metric labels of this connection. Connections between the same pair share one frozen object, so an
   * open connection holds a reference rather than 23 fields of its own.
   */
  labels(flags: ResponseFlag): ConnectionLabels {
    const s = this.#src;
    const d = this.#dst;
    const cluster = this.#d.metrics.cluster;
    const key = `${this.#direction}|${partyKey(s)}|${partyKey(d)}|${cluster}|${this.#security}|${flags}`;
    let labels = labelCache.get(key);
    if (labels === undefined) {
      const sw = workloadLabels(s, cluster);
      const dw = workloadLabels(d, cluster);
      labels = Object.freeze({
        reporter: (this.#direction === 'outbound' ? 'source' : 'destination') as Reporter,
        source_workload: s.workload ?? 'unknown',
        source_workload_namespace: s.namespace ?? 'unknown',
        source_principal: s.principal ?? 'unknown',
        source_app: sw.app,
        source_version: sw.version,
        source_canonical_service: sw.canonical_service,
        source_canonical_revision: sw.canonical_revision,
        source_cluster: sw.cluster,
        destination_service: d.service && d.namespace ? `${d.service}.${d.namespace}` : 'unknown',
        destination_service_name: d.service ?? 'unknown',
        destination_service_namespace: d.namespace ?? 'unknown',
        destination_workload: d.workload ?? 'unknown',
        // Ambit's services and their workloads share one namespace; an unresolved endpoint has none.
        destination_workload_namespace: d.workload !== undefined ? (d.namespace ?? 'unknown') : 'unknown',
        destination_principal: d.principal ?? 'unknown',
        destination_app: dw.app,
        destination_version: dw.version,
        destination_canonical_service: dw.canonical_service,
        destination_canonical_revision: dw.canonical_revision,
        destination_cluster: dw.cluster,
        request_protocol: 'tcp' as const,
        connection_security_policy: this.#security,
        response_flags: flags,
      });
      // Bounded like any label cache: the mesh's pairs, not its connections; a flood of new pairs starts over.
      if (labelCache.size >= LABEL_CACHE_MAX) labelCache.clear();
      labelCache.set(key, labels);
    }
    return labels;
  }

  /**
   * A connection that carried nothing: counted opened and closed with the refusal's flag, and logged with
   * its message, through the refusal reporter.
   */
  refused(refusal: ConnectionRefusal, extra?: Record<string, unknown>): void {
    const table = this.#d.metrics.connections;
    if (table.taps > 0) table.refused(this.#row(), refusal.message, refusal.flag);
    this.#d.refusals.connection(this.labels(refusal.flag), this.#direction, refusal.reason, {
      access: this.#direction,
      src: this.#src,
      dst: this.#dst,
      security: this.#security,
      response_flags: refusal.flag,
      reason: refusal.message,
      duration_ms: Date.now() - this.#started,
      bytes_sent: 0,
      bytes_received: 0,
      ...extra,
    });
  }

  /**
   * The connection is being carried from now on: counted opened and active, and listed live with `bytes`
   * (from the client, to it, so far).
   */
  opened(bytes: Tracked['bytes'] = NO_BYTES): void {
    const labels = this.labels('-');
    this.#open = labels;
    this.#d.metrics.opened.inc(labels);
    this.#d.metrics.activeConnections.inc({ direction: this.#direction });
    this.#tracked = {
      direction: this.#direction,
      src: this.#src,
      dst: this.#dst,
      security: this.#security,
      started: this.#started,
      bytes,
    };
    this.#d.metrics.connections.opened(this.#tracked);
  }

  #row(): Omit<Tracked, 'bytes'> {
    return {
      direction: this.#direction,
      src: this.#src,
      dst: this.#dst,
      security: this.#security,
      started: this.#started,
    };
  }

  /** The carried connection ended (`err`: reset): counted closed with its bytes, and logged. */
  closed(fromClient: number, toClient: number, err: Error | undefined): void {
    const m = this.#d.metrics;
    m.activeConnections.dec({ direction: this.#direction });
    m.connectionClosed(this.#open ?? this.labels('-'), fromClient, toClient);
    if (this.#tracked) m.connections.closed(this.#tracked, fromClient, toClient, err !== undefined);
    this.#d.log.info(
      {
        access: this.#direction,
        src: this.#src,
        dst: this.#dst,
        security: this.#security,
        bytes_sent: fromClient,
        bytes_received: toClient,
        duration_ms: Date.now() - this.#started,
        outcome: err ? 'reset' : 'closed',
        err: err?.message,
      },
      'connection closed',
    );
  }
}
