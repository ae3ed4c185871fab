// The one way a refusal is reported: counted in ambit_connections_refused_total{direction,reason} and
// logged at warn, at most once per reason per interval (a flood must not become a flood of log lines: the
// suppressed count rides on the next line). Every limit of the daemon refuses through here.
import type { Logger } from '../../lib/log.js';
import type { Metrics, RefusalReason } from '../metrics/metrics.js';

export type Direction = 'inbound' | 'outbound';

/** How often one reason may log a line; the rest are counted and summed into the next line. */
export const REFUSAL_LOG_INTERVAL_MS = 10_000;

interface Slot {
  last: number;
  suppressed: number;
}

export class Refusals {
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #slots = new Map<string, Slot>();
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

  /** Logs (rate-limited) a refusal that was already counted elsewhere (a connection account). */
  note(
    direction: Direction,
    reason: RefusalReason,
    message: string,
    fields: Record<string, unknown> = {},
  ): void {
    const key = `${direction}\u0000${reason}`;
    const now = Date.now();
    let slot = this.#slots.get(key);
    if (slot === undefined) {
      slot = { last: Number.NEGATIVE_INFINITY, suppressed: 0 };
      this.#slots.set(key, slot);
    }
    if (now - slot.last < this.#intervalMs) {
      slot.suppressed++;
      return;
    }
    const suppressed = slot.suppressed;
    slot.last = now;
    slot.suppressed = 0;
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
