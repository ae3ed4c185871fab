// What an L7 contender is: an HTTP/1.1 keep-alive hop between the load generator and the shared upstream
// server. Each lives in bench/l7/contenders/<name>.ts and exports `contender`; a name whose file is absent
// is reported as not built yet (the waypoint and the whole Ambit path, until they land).

import type { Running } from '../contenders.js';

export type { Running } from '../contenders.js';

/** What a run measures unless --only says otherwise, in the order of the table and of each round. */
export const L7_NAMES = ['direct', 'nginx', 'haproxy', 'node-floor', 'hop', 'waypoint', 'ambit'] as const;
/**
 * Issue 16's policy cost, run by name only (`--only hop-chain,hop-policies`): the hop routed by the chain
 * router without and with a retry policy and limits, and the waypoint with them (bench/l7/policies.ts).
 */
export const L7_POLICY = ['hop-chain', 'hop-policies', 'waypoint-policies'] as const;
/** Every contender, in the order of the table; the bench alternates those selected round by round. */
export const L7_ALL = [...L7_NAMES, ...L7_POLICY] as const;
export type L7Name = (typeof L7_ALL)[number];
/** The established proxies the L7 hop is held against. */
export const L7_PEERS: readonly L7Name[] = ['nginx', 'haproxy'];
/**
 * The contenders the targets are about: the waypoint process in the real path for CPU and memory
 * (Istio's figure is its waypoint's, mTLS included), and the same HTTP engine alone for requests/s and
 * latency beside nginx and HAProxy (which run plaintext, one process).
 */
export const L7_SUBJECT: L7Name = 'waypoint';
export const L7_HOP: L7Name = 'hop';

export interface L7Context {
  /** Repository root (holds dist/). */
  readonly root: string;
  /** Scratch directory for this start (configs, logs, state), removed at the end of the run. */
  readonly dir: string;
  /** The shared upstream server (plaintext HTTP/1.1 on 127.0.0.1), answering every request with 1 KiB. */
  readonly upstreamPort: number;
  /** The open-file limit the contender's processes inherit. */
  readonly fileLimit: number;
}

export interface L7Contender {
  readonly name: L7Name;
  /** One line for docs and the report: what the hop is and how it is configured. */
  readonly description: string;
  /** Undefined when it can run; otherwise what is missing and how to get it. */
  missing(root: string): string | undefined;
  version(root: string): string;
  /**
   * Starts the hop on a loopback port, ready (one request answered through it), forwarding to
   * ctx.upstreamPort. `pids` are the hop's own processes: their CPU and RSS are its cost.
   */
  start(ctx: L7Context): Promise<Running>;
}
