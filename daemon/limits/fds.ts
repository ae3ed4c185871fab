// Descriptor exhaustion: ambitd keeps `fdReserve` descriptors free below RLIMIT_NOFILE and refuses new work
// (a tunnel connection, an upstream connect, a captured or explicit outbound connection) before it would
// eat into them, so that what is open keeps working and the daemon can still read its files, answer
// /metrics and accept again once the load is gone. EMFILE from the kernel is handled wherever it can
// surface (accept, connect, dup) and counted as the same refusal: the daemon never crashes on it.
import { readFileSync, readdirSync } from 'node:fs';
import type { Server, Socket } from 'node:net';
import type { Direction, Refusals } from './refusal.js';

/** Counting /proc/self/fd costs a directory read of every open descriptor: at most this often. */
export const FD_SAMPLE_MS = 250;

/** The soft "Max open files" of /proc/self/limits; undefined when unlimited or unreadable. */
export function readNofileLimit(text?: string): number | undefined {
  let limits = text;
  if (limits === undefined) {
    try {
      limits = readFileSync('/proc/self/limits', 'utf8');
    } catch {
      return undefined;
    }
  }
  const m = /^Max open files\s+(\S+)/m.exec(limits);
  if (!m || m[1] === 'unlimited') return undefined;
  const n = Number(m[1]);
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

/** Open descriptors of this process now; undefined when /proc cannot be read (EMFILE included). */
export function countOpenFds(): number | undefined {
  try {
    // The listing includes the descriptor readdir itself opened for the directory.
    return readdirSync('/proc/self/fd').length - 1;
  } catch {
    return undefined;
  }
}

export const isFdExhaustion = (err: unknown): boolean => {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EMFILE' || code === 'ENFILE';
};

/** Admission at a listener: `admit` false means the socket was refused (reset) and counted. */
export interface ListenerGate {
  admit(socket: Socket): boolean;
  /** A net.Server's 'error' on accept (EMFILE) is counted, never thrown. */
  watch(server: Server): void;
}

export interface FdReserveOptions {
  /** Overrides /proc/self/limits (tests). */
  readonly limit?: number | undefined;
  readonly sampleMs?: number;
  readonly now?: () => number;
  readonly count?: () => number | undefined;
}

/**
 * The estimate is the last count of /proc/self/fd plus every descriptor the daemon opened since (as told
 * through opened()); closes are not subtracted until the next count, so between two counts the estimate
 * can only be high, never low: a burst is refused a little early rather than let through to EMFILE.
 */
export class FdReserve {
  readonly reserve: number;
  readonly #refusals: Refusals;
  readonly #sampleMs: number;
  readonly #now: () => number;
  readonly #count: () => number | undefined;
  readonly #fixedLimit: number | undefined;
  #limit: number | undefined;
  #sampled = 0;
  #sampledAt = Number.NEGATIVE_INFINITY;
  #since = 0;

  constructor(reserve: number, refusals: Refusals, opts: FdReserveOptions = {}) {
    this.reserve = reserve;
    this.#refusals = refusals;
    this.#sampleMs = opts.sampleMs ?? FD_SAMPLE_MS;
    this.#now = opts.now ?? Date.now;
    this.#count = opts.count ?? countOpenFds;
    this.#fixedLimit = opts.limit;
    this.#limit = opts.limit ?? readNofileLimit();
  }

  /** RLIMIT_NOFILE's soft limit as last read (undefined: unlimited, nothing is refused). */
  get limit(): number | undefined {
    this.#sample();
    return this.#limit;
  }

  /** Descriptors believed open now (the last count plus the opens since). */
  get open(): number {
    this.#sample();
    return this.#sampled + this.#since;
  }

  /** True when `need` more descriptors leave at least the reserve free. */
  available(need = 1): boolean {
    this.#sample();
    if (this.#limit === undefined) return true;
    return this.#sampled + this.#since + need + this.reserve <= this.#limit;
  }

  /** The daemon took `n` descriptors (an accept, a connect): counted until the next sample sees them. */
  opened(n = 1): void {
    this.#since += n;
  }

  /**
   * Admits one unit of new work that takes `need` descriptors, or refuses it (counted and logged as
   * fd_reserve). Admitted work is added to the estimate.
   */
  admit(direction: Direction, message: string, fields: Record<string, unknown> = {}, need = 1): boolean {
    if (this.available(need)) {
      this.opened(need);
      return true;
    }
    this.refuse(direction, message, fields);
    return false;
  }

  refuse(direction: Direction, message: string, fields: Record<string, unknown> = {}): void {
    this.#refusals.refuse(direction, 'fd_reserve', message, {
      ...fields,
      open: this.#sampled + this.#since,
      limit: this.#limit,
      reserve: this.reserve,
    });
  }

  /** A gate for a plain listener (capture, explicit upstreams): refused sockets are reset at once. */
  gate(direction: Direction, what: string): ListenerGate {
    return {
      admit: (socket) => {
        if (
          this.admit(direction, `${what} connection refused: descriptor reserve reached`, {
            src: socket.remoteAddress,
          })
        )
          return true;
        socket.resetAndDestroy();
        return false;
      },
      watch: (server) => this.watch(server, direction, what),
    };
  }

  /**
   * Keeps a listener's accept errors from crashing the daemon: Node emits 'error' on the server when
   * accept(2) fails (EMFILE once libuv's spare descriptor is used up too), and an unheard 'error' throws.
   */
  watch(server: Server, direction: Direction, what: string): void {
    server.on('error', (err: NodeJS.ErrnoException) => {
      if (err.syscall !== 'accept') return; // listen errors are the binder's to report
      if (isFdExhaustion(err)) this.refuse(direction, `${what}: accept failed, out of descriptors`);
      else this.#refusals.note(direction, 'fd_reserve', `${what}: accept failed`, { err: err.message });
    });
  }

  #sample(): void {
    const now = this.#now();
    if (now - this.#sampledAt < this.#sampleMs) return;
    this.#sampledAt = now;
    if (this.#fixedLimit === undefined) this.#limit = readNofileLimit() ?? this.#limit;
    const n = this.#count();
    // /proc unreadable: EMFILE itself, most likely. Believe the worst until the next count.
    this.#sampled = n ?? this.#limit ?? this.#sampled;
    this.#since = 0;
  }
}
