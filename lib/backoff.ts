// Retry delays for a failing CA.

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
}

/**
 * Exponential delay before the `attempt`-th retry (1-based) with "equal jitter": half fixed, half random,
 * so the daemon still backs off but many daemons that lost the CA together do not return in lockstep.
 */
export function backoffDelay(
  attempt: number,
  opts: BackoffOptions,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(opts.maxMs, opts.initialMs * 2 ** Math.max(0, attempt - 1));
  return ceiling / 2 + random() * (ceiling / 2);
}
