// What the L7 bench's parent asks its fixed-rate load generator (bench/l7/rategen.ts, a child process).

import type { LatencyResult } from '../protocol.js';

export interface RateJob {
  kind: 'rate';
  port: number;
  /** Requests, at `rate` per second, on a pool of `conns` keep-alive connections. */
  count: number;
  rate: number;
  conns: number;
}

export interface RateResult extends LatencyResult {
  /** Responses that were not 200 with the 1 KiB body, or lost with their connection. */
  errors: number;
  /** Connections opened again after the server closed one (keep-alive refused or ended). */
  reopened: number;
  /** How late the generator itself sent, from the scheduled time (its own error, inside the latencies). */
  sendLagP50us: number;
  sendLagP99us: number;
  achievedRate: number;
  /** The most requests waiting for a free connection at once (queuing in the generator, counted). */
  maxQueued: number;
}
