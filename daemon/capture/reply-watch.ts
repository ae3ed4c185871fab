// Whether the reply routing the original source address needs (lib/capture/transparent.ts) is installed, per
// family: checked at start and every RECHECK_MS after, since `ambit capture install` (or remove, or a host
// whose capture was installed by an older Ambit) may come and go while ambitd runs. Where it is missing,
// connecting from the client's address would lose every reply, so the daemon connects from its own address
// and says so in one log line (one more whenever it changes).
import { type Backend, detectBackend } from '../../lib/capture/iptables.js';
import { replyRoutingState } from '../../lib/capture/reply-routing.js';
import type { ReplyRoutingSpec } from '../../lib/capture/transparent.js';
import type { Logger } from '../../lib/log.js';
import type { Family } from '../proxy/inbound/original-source.js';

export const RECHECK_MS = 30_000;

/** What is missing per family (undefined: nothing), for the families this host has. */
export type RoutingState = Partial<Record<Family, string | undefined>>;

export interface ReplyWatchDeps {
  readonly spec: ReplyRoutingSpec;
  readonly backend: 'auto' | 'nft' | 'legacy';
  readonly log: Logger;
  /** Why a transparent socket of this family cannot be made (no capability), or undefined. */
  readonly transparentError: (family: Family) => string | undefined;
  /** The installed state; the host's by default (tests give their own). */
  readonly state?: () => Promise<RoutingState>;
}

export class ReplyWatch {
  #routed: ReadonlySet<Family> = new Set();
  #last: string | undefined;
  #timer: NodeJS.Timeout | undefined;
  #checking: Promise<void> | undefined;
  #backend: Backend | undefined;
  readonly #d: ReplyWatchDeps;

  constructor(deps: ReplyWatchDeps) {
    this.#d = deps;
  }

  /** The families whose workloads may see the client's address now. */
  get routed(): ReadonlySet<Family> {
    return this.#routed;
  }

  async start(): Promise<void> {
    await this.check();
    this.#timer = setInterval(() => void this.check(), RECHECK_MS);
    this.#timer.unref();
  }

  close(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** One check (a second one asked for meanwhile shares it). */
  check(): Promise<void> {
    this.#checking ??= this.#check().finally(() => {
      this.#checking = undefined;
    });
    return this.#checking;
  }

  async #check(): Promise<void> {
    const d = this.#d;
    let state: RoutingState;
    try {
      if (d.state) state = await d.state();
      else {
        // Detected once: detection may read every rule of both backends, too much for every 30 s.
        this.#backend ??= await detectBackend(d.backend);
        state = await replyRoutingState(this.#backend, d.spec);
      }
    } catch (err) {
      const why = (err as Error).message;
      state = { 4: why, 6: why };
    }
    const families = ([4, 6] as const).filter((f) => f in state);
    const missing = new Map<Family, string>();
    if (families.length === 0) missing.set(4, 'no iptables tools for any family');
    for (const f of families) {
      const why = state[f] ?? d.transparentError(f);
      if (why !== undefined) missing.set(f, why);
    }
    this.#routed = new Set(families.filter((f) => !missing.has(f)));
    const summary = JSON.stringify([...this.#routed, ...missing]);
    if (summary === this.#last) return;
    this.#last = summary;
    const on = [...this.#routed].map((f) => `IPv${f}`);
    if (missing.size > 0) {
      const off = Object.fromEntries([...missing].map(([f, why]) => [`ipv${f}`, why]));
      d.log.warn(
        { on, off },
        "original source address off where reply routing is missing: workloads there see this host's address, not the client's (run ambit capture install)",
      );
    } else {
      d.log.info({ on }, "original source address on: workloads see the client workload's address");
    }
  }
}
