// UpstreamConfig Limits.MaxConnections and MaxPendingRequests, Envoy's cluster circuit breakers: the
// connections the waypoint holds to one destination service for one client service, and the requests
// that may wait for one. A request that needs a new connection at the cap waits, up to MaxPendingRequests
// of them, until a connection of the pair closes; past that it is refused at once (503, flag UO). Pure
// counting: the engines' pools open, keep and close the connections.

/** One (client service, destination service) pair's connection limits, as its entries set them. */
export interface ConnectionLimit {
  /** The pair the connections count against. */
  readonly key: string;
  readonly maxConnections: number;
  /** Requests that may wait for a connection of the pair. */
  readonly maxPending: number;
  /** For a refusal's reason: `web to api`. */
  readonly names: string;
}

/** Envoy's answer when a circuit breaker (a limit of UpstreamConfig Limits) refuses a request, flag UO. */
export const OVERFLOW_BODY = 'upstream connect error or disconnect/reset before headers. reason: overflow';

/** Envoy's max_pending_requests when the entry sets none. */
export const DEFAULT_MAX_PENDING = 1024;

/** A request that needed a connection of a pair with MaxConnections open and MaxPendingRequests waiting. */
export class PendingOverflow extends Error {
  constructor(l: ConnectionLimit) {
    super(
      `${l.maxConnections} connections from ${l.names} open (MaxConnections) and ${l.maxPending} requests waiting (MaxPendingRequests)`,
    );
  }
}

interface PairState {
  open: number;
  readonly waiting: Array<() => void>;
}

export class ConnectionGate {
  readonly #pairs = new Map<string, PairState>();

  /**
   * A slot for one more connection of the pair: at once; or by closing an idle one of the pair (`evictIdle`
   * closes one and gives its slot back now, or says there is none); or by waiting for one to close, while
   * fewer than MaxPendingRequests wait. Else PendingOverflow.
   */
  async take(l: ConnectionLimit, evictIdle: () => boolean): Promise<void> {
    if (this.tryAcquire(l)) return;
    if (evictIdle() && this.tryAcquire(l)) return;
    const waiting = this.wait(l);
    if (!waiting) throw new PendingOverflow(l);
    await waiting;
  }

  /** Takes a slot for a new connection of the pair if one is free. */
  tryAcquire(l: ConnectionLimit): boolean {
    let p = this.#pairs.get(l.key);
    if (!p) {
      p = { open: 0, waiting: [] };
      this.#pairs.set(l.key, p);
    }
    if (p.open >= l.maxConnections) return false;
    p.open++;
    return true;
  }

  /**
   * Waits for a slot: the promise resolves when a connection of the pair closes and its slot is handed
   * over (held from then on, to be given back by `release`). Undefined: MaxPendingRequests wait already.
   */
  wait(l: ConnectionLimit): Promise<void> | undefined {
    const p = this.#pairs.get(l.key);
    if (!p) return this.tryAcquire(l) ? Promise.resolve() : undefined;
    if (p.waiting.length >= l.maxPending) return undefined;
    return new Promise((resolve) => p.waiting.push(resolve));
  }

  /** A connection of the pair closed (or was never opened): its slot goes to the first waiting, else back. */
  release(key: string): void {
    const p = this.#pairs.get(key);
    if (!p) return;
    const next = p.waiting.shift();
    if (next) {
      next();
      return;
    }
    p.open = Math.max(0, p.open - 1);
    if (p.open === 0) this.#pairs.delete(key);
  }

  /** Requests waiting for a connection of the pair. */
  waiting(key: string): number {
    return this.#pairs.get(key)?.waiting.length ?? 0;
  }

  /** Connections of the pair open (or opening). */
  open(key: string): number {
    return this.#pairs.get(key)?.open ?? 0;
  }
}
