// Every connection a workload on this node was accepted for, tunneled (15008) or plaintext (15006), from its
// accept to its close: what a policy change re-checks. Registered before the decision and kept through the
// upstream connect, so that a change landing while the connect is in flight (up to its timeout) is not
// missed: the connection is refused then rather than carried under the policy it was admitted by.
import type { Logger } from '../../../lib/log.js';

/** Whether the state in force still admits a connection, and why not when it does not. */
export interface Verdict {
  readonly allowed: boolean;
  readonly reason: string;
}

/** One accepted connection as the re-check sees it. */
export interface Recheckable {
  /** What the log line names: the target workload and the peer (a principal, or the plaintext client). */
  readonly workload: string | undefined;
  readonly peer: string | undefined;
  /** The state in force now; undefined while the connection is not decided yet (its decision reads it then). */
  check(): Verdict | undefined;
  /** The policy in force no longer allows it: refused if it is still connecting, reset if it is carried. */
  revoke(reason: string): void;
}

export class OpenConnections {
  readonly #all = new Set<Recheckable>();

  add(c: Recheckable): void {
    this.#all.add(c);
  }

  delete(c: Recheckable): void {
    this.#all.delete(c);
  }

  get size(): number {
    return this.#all.size;
  }

  /** Re-checks every connection against the state in force and revokes those it no longer allows. */
  recheck(log: Logger): number {
    let closed = 0;
    // A copy: a revoked connection leaves the set as it closes.
    for (const c of [...this.#all]) {
      const verdict = c.check();
      if (verdict === undefined || verdict.allowed) continue;
      closed++;
      this.#all.delete(c);
      log.info(
        { workload: c.workload, peer: c.peer, reason: verdict.reason },
        'closing connection no longer allowed',
      );
      c.revoke(verdict.reason);
    }
    return closed;
  }
}
