import type { Workload } from '../../../lib/mesh/model.js';

/**
 * Chooses among a service's endpoints: the fewest open connections wins, ties go round robin, and an
 * endpoint whose daemon refused us recently is skipped (unless every endpoint has been, then the least bad).
 */
export class Balancer {
  readonly #active = new Map<string, number>();
  readonly #ejectedUntil = new Map<string, number>();
  readonly #ejectMs: number;
  #cursor = 0;

  constructor(ejectMs: number) {
    this.#ejectMs = ejectMs;
  }

  pick(endpoints: readonly Workload[], exclude: ReadonlySet<string>, now = Date.now()): Workload | undefined {
    let best: Workload | undefined;
    let bestScore = Number.POSITIVE_INFINITY;
    const n = endpoints.length;
    const start = this.#cursor++ % Math.max(n, 1);
    for (let i = 0; i < n; i++) {
      const w = endpoints[(start + i) % n]!;
      if (exclude.has(w.name)) continue;
      const ejected = (this.#ejectedUntil.get(w.name) ?? 0) > now;
      // Ejected endpoints rank after every healthy one but stay usable as a last resort.
      const score = (this.#active.get(w.name) ?? 0) + (ejected ? 1e9 : 0);
      if (score < bestScore) {
        best = w;
        bestScore = score;
      }
    }
    return best;
  }

  opened(endpoint: string): void {
    this.#active.set(endpoint, (this.#active.get(endpoint) ?? 0) + 1);
  }

  closed(endpoint: string): void {
    const n = (this.#active.get(endpoint) ?? 1) - 1;
    if (n <= 0) this.#active.delete(endpoint);
    else this.#active.set(endpoint, n);
  }

  eject(endpoint: string, now = Date.now()): void {
    this.#ejectedUntil.set(endpoint, now + this.#ejectMs);
  }

  succeeded(endpoint: string): void {
    this.#ejectedUntil.delete(endpoint);
  }
}
