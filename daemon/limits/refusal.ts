// The one way a refusal is reported: counted in ambit_connections_refused_total{direction,reason}. A limit's
// refusal is logged at warn, at most once per reason per interval (a flood must not become a flood of log
// lines: the suppressed count rides on the next line); every limit of the daemon refuses through here. A
// connection refused before it carried anything (a ConnectionRefusal) is also counted in the connection
// metrics with its flag, and logged as its access-log line, one per connection as every connection is.
import type { Logger } from '../../lib/log.js';
import type { Direction } from '../../lib/tap.js';
import type { ConnectionLabels, Metrics, RefusalReason } from '../metrics/metrics.js';
import { LogThrottle } from './throttle.js';

export type { Direction };

/** How often one reason may log a line; the rest are counted and summed into the next line. */
export const REFUSAL_LOG_INTERVAL_MS = 10_000;

export class Refusals {
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #slots = new Map<string, LogThrottle>();
  readonly #intervalMs: number;

  constructor(metrics: Metrics, log: Logger, intervalMs = REFUSAL_LOG_INTERVAL_MS) {
    this.#metrics = metrics;
    this.#log = log;
    this.#intervalMs = intervalMs;
  }

  /** Counts one refusal and logs it unless this reason logged within the interval. */
  refuse(
    direction: Direction,
    reason: RefusalReason,
    message: string,
    fields: Record<string, unknown> = {},
  ): void {
    this.#metrics.refused.inc({ direction, reason });
    this.note(direction, reason, message, fields);
  }

  /**
   * A connection refused before it carried anything (its account built `line`): counted opened and closed
   * with `labels`, counted refused, and logged at info as its access-log line.
   */
  connection(
    labels: ConnectionLabels,
    direction: Direction,
    reason: RefusalReason,
    line: Record<string, unknown>,
  ): void {
    this.#metrics.refusedConnection(labels, direction, reason);
    this.#log.info(line, 'connection refused');
  }

  /** Logs (rate-limited) without counting: what is not a refusal of its own (an accept(2) failure, fds.ts). */
  note(
    direction: Direction,
    reason: RefusalReason,
    message: string,
    fields: Record<string, unknown> = {},
  ): void {
    const key = `${direction}\u0000${reason}`;
    let slot = this.#slots.get(key);
    if (slot === undefined) {
      slot = new LogThrottle(this.#intervalMs);
      this.#slots.set(key, slot);
    }
    const suppressed = slot.take();
    if (suppressed === undefined) return;
    this.#log.warn({ ...fields, direction, reason, ...(suppressed > 0 ? { suppressed } : {}) }, message);
  }
}

/** The reasons a session or TLS connection gives when a peer broke or abused its protocol (CONTRACT.md). */
const PEER_ABUSE: ReadonlySet<string> = new Set<RefusalReason>([
  'h2_protocol',
  'h2_reset_flood',
  'h2_control_flood',
  'h2_header_flood',
  'tls_record',
  'tls_keyupdate_flood',
  'tls_alert',
]);

/**
 * The `reason` an H2Session's or TlsConnection's 'error' carries, when it is one of the peer-abuse reasons;
 * undefined for an error without one (the connection just ended), so that a stray value never becomes a
 * metric label.
 */
export function peerAbuseReason(err: unknown): RefusalReason | undefined {
  const reason = (err as { reason?: unknown } | null | undefined)?.reason;
  return typeof reason === 'string' && PEER_ABUSE.has(reason) ? (reason as RefusalReason) : undefined;
}
