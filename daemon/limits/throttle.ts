// One log line per interval for whatever can come in floods (refusals, refused admin requests).

/**
 * Lets one line through per interval and counts the rest, so that a flood of refused requests is not a
 * flood of log lines. `take` answers how many were held back since the last line, or undefined to hold
 * this one back too.
 */
export class LogThrottle {
  readonly #intervalMs: number;
  readonly #now: () => number;
  #last = Number.NEGATIVE_INFINITY;
  #suppressed = 0;

  constructor(intervalMs: number, now: () => number = Date.now) {
    this.#intervalMs = intervalMs;
    this.#now = now;
  }

  take(): number | undefined {
    const now = this.#now();
    if (now - this.#last < this.#intervalMs) {
      this.#suppressed++;
      return undefined;
    }
    this.#last = now;
    const suppressed = this.#suppressed;
    this.#suppressed = 0;
    return suppressed;
  }
}
