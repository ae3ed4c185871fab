import type { Socket } from 'node:net';
import type { ResponseFlag } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { connectTcp } from '../capture/mark.js';
import { PlainConnection } from '../io/plain.js';
import type {
  ConnectionLabels,
  Metrics,
  RefusalReason,
  Reporter,
  SecurityPolicy,
} from '../metrics/metrics.js';
import { H2Stream } from './h2/stream.js';
import { type PipeEnd, pipeBoth, spliceBoth } from './pipe.js';

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
}

export type Direction = 'inbound' | 'outbound';

const LABEL_CACHE_MAX = 10_000;
const labelCache = new Map<string, Readonly<ConnectionLabels>>();

/**
 * The account of one connection, whatever its entry (explicit upstream, capture, tunnel, plaintext):
 * the same metric labels, the same access-log line, the same open/close bookkeeping. Built once per
 * connection, when both ends are known.
 */
export class ConnectionAccount {
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #direction: Direction;
  readonly #src: Party;
  readonly #dst: Party;
  readonly #security: SecurityPolicy;
  readonly #started: number;

  constructor(
    deps: { metrics: Metrics; log: Logger },
    direction: Direction,
    src: Party,
    dst: Party,
    security: SecurityPolicy,
    started = Date.now(),
  ) {
    this.#started = started;
    this.#metrics = deps.metrics;
    this.#log = deps.log;
    this.#direction = direction;
    this.#src = src;
    this.#dst = dst;
    this.#security = security;
  }

  /**
   * The metric labels of this connection. Connections between the same pair share one frozen object, so an
   * open connection holds a reference rather than thirteen fields of its own.
   */
  labels(flags: ResponseFlag): ConnectionLabels {
    const s = this.#src;
    const d = this.#dst;
    const key = `${this.#direction}|${s.workload}|${s.namespace}|${s.principal}|${s.service}|${d.service}|${d.namespace}|${d.workload}|${d.principal}|${this.#security}|${flags}`;
    let labels = labelCache.get(key);
    if (labels === undefined) {
      labels = Object.freeze({
        reporter: (this.#direction === 'outbound' ? 'source' : 'destination') as Reporter,
        source_workload: s.workload ?? 'unknown',
        source_workload_namespace: s.namespace ?? 'unknown',
        source_principal: s.principal ?? 'unknown',
        source_app: s.service ?? 'unknown',
        destination_service: d.service && d.namespace ? `${d.service}.${d.namespace}` : 'unknown',
        destination_service_name: d.service ?? 'unknown',
        destination_service_namespace: d.namespace ?? 'unknown',
        destination_workload: d.workload ?? 'unknown',
        destination_principal: d.principal ?? 'unknown',
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

  /** A connection that carried nothing: counted opened and closed with its flag, logged with the reason. */
  refused(flag: ResponseFlag, reason: RefusalReason, why: string, extra?: Record<string, unknown>): void {
    this.#metrics.refusedConnection(this.labels(flag), this.#direction, reason);
    this.#log.info(
      {
        access: this.#direction,
        src: this.#src,
        dst: this.#dst,
        security: this.#security,
        response_flags: flag,
        reason: why,
        duration_ms: Date.now() - this.#started,
        bytes_sent: 0,
        bytes_received: 0,
        ...extra,
      },
      'connection refused',
    );
  }

  /**
   * Pipes `socket` and `other` both ways and accounts for the connection until both close. From here the
   * native binding carries the TCP side (`PlainConnection`); `clientSide` says whether `socket` faces the
   * client (so what it read came from the client) or the workload (what it wrote came from the client).
   */
  carry(socket: Socket, other: H2Stream | Socket, clientSide: boolean, onClose?: () => void): void {
    const m = this.#metrics;
    const labels = this.labels('-');
    let tcp: PlainConnection;
    let far: PipeEnd;
    try {
      tcp = new PlainConnection(socket);
      far = other instanceof H2Stream ? other : new PlainConnection(other);
    } catch (err) {
      // The socket went away between the answer and here (no descriptor left): nothing to carry.
      socket.destroy();
      if (other instanceof H2Stream) other.destroy(err as Error);
      else other.destroy();
      onClose?.();
      this.refused(
        'CONNECT',
        'upstream_failed',
        `the connection closed before it was carried: ${(err as Error).message}`,
      );
      return;
    }
    m.opened.inc(labels);
    m.activeConnections.inc({ direction: this.#direction });
    const done = (err: Error | undefined): void => {
      onClose?.();
      m.activeConnections.dec({ direction: this.#direction });
      const fromClient = clientSide ? tcp.bytesRead : tcp.bytesWritten;
      const toClient = clientSide ? tcp.bytesWritten : tcp.bytesRead;
      m.connectionClosed(labels, fromClient, toClient);
      this.#log.info(
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
    };
    // A tunnel stream is spliced (the binding carries it); otherwise, or when it cannot be yet, JavaScript pipes.
    if (far instanceof H2Stream && spliceBoth(tcp, far, done)) return;
    pipeBoth(tcp, far, done);
    tcp.resume();
  }
}

/**
 * Connects to a workload or a destination outside the mesh: marked (never captured again), half-close
 * allowed, no Nagle, bounded by a timeout. Resolves once the TCP connection is up.
 */
export function connectUpstream(ip: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const upstream = connectTcp({ host: ip, port, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(() => upstream.destroy(new Error('connect timed out')), timeoutMs);
    upstream.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    upstream.once('connect', () => {
      clearTimeout(timer);
      upstream.removeAllListeners('error');
      resolve(upstream);
    });
  });
}
