// What the daemon carries now: every connection from the moment it is carried to its close, for
// `GET /connections` and `ambit top`, and a stream of its events (opened, closed, refused) for whoever taps
// (`/tap`, `ambit tap`). The table is a Set add and delete per connection; an event object is built only
// while someone taps, and a tap that cannot keep up is dropped rather than let it hold memory.
import type {
  ConnectionRow,
  Direction,
  End,
  TapEvent,
  TapFilter,
  TapRequest,
  TapStatus,
} from '../../lib/tap.js';

export type { ConnectionRow, End, TapEvent, TapFilter, TapStatus } from '../../lib/tap.js';
export { TAP_FILTER_KEYS } from '../../lib/tap.js';

/** A connection being carried, as the account registers it. */
export interface Tracked {
  readonly direction: Direction;
  readonly src: End;
  readonly dst: End;
  readonly security: string;
  readonly started: number;
  /** Bytes so far from the client and to it (a call into the binding for a spliced connection). */
  readonly bytes: () => { readonly fromClient: number; readonly toClient: number };
  /** Given by the table. */
  id?: number;
}

/** Whether a connection (or an event of it) is one a tap with `f` asked for. */
export function matchesFilter(
  f: TapFilter,
  c: { readonly direction: Direction; readonly src: End; readonly dst: End },
  status?: TapStatus,
): boolean {
  if (f.direction !== undefined && c.direction !== f.direction) return false;
  if (f.workload !== undefined && c.src.workload !== f.workload && c.dst.workload !== f.workload)
    return false;
  if (f.service !== undefined && c.src.service !== f.service && c.dst.service !== f.service) return false;
  if (f.to !== undefined && c.dst.service !== f.to) return false;
  if (f.identity !== undefined && c.src.principal !== f.identity && c.dst.principal !== f.identity)
    return false;
  if (f.status !== undefined && status !== undefined && status !== f.status) return false;
  return true;
}

/** One tap: its filter and where its events go; `send` answers false when the tap cannot keep up. */
interface Tap {
  readonly filter: TapFilter;
  readonly send: (e: TapEvent) => boolean;
  readonly drop: () => void;
}

/** Copies the fields a row shows: the account's Party also holds the workload's metadata. */
const end = (p: End): End => ({
  addr: p.addr,
  workload: p.workload,
  namespace: p.namespace,
  service: p.service,
  principal: p.principal,
});

export class ConnectionTable {
  readonly #open = new Set<Tracked>();
  readonly #taps = new Set<Tap>();
  #nextId = 1;
  /** Taps dropped because they could not keep up, since the start. */
  dropped = 0;
  /** Called when the number of taps changes (a supervisor turns its workers' relaying on and off). */
  onTaps: ((taps: number) => void) | undefined;

  get size(): number {
    return this.#open.size;
  }

  get taps(): number {
    return this.#taps.size;
  }

  opened(t: Tracked): void {
    t.id = this.#nextId++;
    this.#open.add(t);
    if (this.#taps.size > 0) this.#emit(this.#event('opened', 'open', t));
  }

  closed(t: Tracked, fromClient: number, toClient: number, reset: boolean): void {
    this.#open.delete(t);
    if (this.#taps.size === 0) return;
    this.#emit({
      ...this.#event('closed', reset ? 'reset' : 'closed', t),
      duration_ms: Date.now() - t.started,
      bytes_sent: fromClient,
      bytes_received: toClient,
    });
  }

  /** A connection refused before it was carried: an event for the taps, nothing in the table. */
  refused(t: Omit<Tracked, 'bytes'>, reason: string, flags: string): void {
    if (this.#taps.size === 0) return;
    this.#emit({ ...this.#event('refused', 'refused', t), reason, response_flags: flags });
  }

  /**
   * A request a waypoint is done with, for the taps (nothing is kept). The caller builds the event only
   * when `taps` is above 0: a request costs nothing while nobody taps.
   */
  request(e: {
    readonly status: TapStatus;
    readonly src: End;
    readonly dst: End;
    readonly started: number;
    readonly bytesIn: number;
    readonly bytesOut: number;
    readonly flags: string;
    readonly reason: string | undefined;
    readonly request: TapRequest;
  }): void {
    if (this.#taps.size === 0) return;
    this.#emit({
      event: 'request',
      status: e.status,
      time: new Date().toISOString(),
      id: undefined,
      direction: 'inbound',
      src: end(e.src),
      dst: end(e.dst),
      security: 'mutual_tls',
      duration_ms: Date.now() - e.started,
      bytes_sent: e.bytesIn,
      bytes_received: e.bytesOut,
      response_flags: e.flags,
      ...(e.reason ? { reason: e.reason } : {}),
      request: e.request,
    });
  }

  /** The open connections, oldest first, with the bytes carried so far. */
  list(filter: TapFilter = {}, now = Date.now()): ConnectionRow[] {
    const rows: ConnectionRow[] = [];
    for (const t of this.#open) {
      if (!matchesFilter(filter, t, 'open')) continue;
      const b = t.bytes();
      rows.push({
        id: t.id ?? 0,
        direction: t.direction,
        src: end(t.src),
        dst: end(t.dst),
        security: t.security,
        started: new Date(t.started).toISOString(),
        age_ms: now - t.started,
        bytes_sent: b.fromClient,
        bytes_received: b.toClient,
      });
    }
    return rows;
  }

  /** Starts a tap; returns what stops it. `drop` is called when the table drops a tap that fell behind. */
  tap(filter: TapFilter, send: (e: TapEvent) => boolean, drop: () => void): () => void {
    const tap: Tap = { filter, send, drop };
    this.#taps.add(tap);
    this.onTaps?.(this.#taps.size);
    return () => {
      if (this.#taps.delete(tap)) this.onTaps?.(this.#taps.size);
    };
  }

  /** An event of another process's table (a worker's, relayed by the supervisor) for this table's taps. */
  relay(e: TapEvent): void {
    if (this.#taps.size > 0) this.#emit(e);
  }

  #event(event: TapEvent['event'], status: TapStatus, t: Omit<Tracked, 'bytes'>): TapEvent {
    return {
      event,
      status,
      time: new Date().toISOString(),
      id: t.id,
      direction: t.direction,
      src: end(t.src),
      dst: end(t.dst),
      security: t.security,
    };
  }

  #emit(e: TapEvent): void {
    for (const tap of this.#taps) {
      if (!matchesFilter(tap.filter, e, e.status)) continue;
      if (!tap.send(e)) {
        this.#taps.delete(tap);
        this.dropped++;
        tap.drop();
        this.onTaps?.(this.#taps.size);
      }
    }
  }
}
