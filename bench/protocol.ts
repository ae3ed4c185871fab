// What the load generator and the sink say to each other through a contender. Every contender is a plain
// TCP tunnel, so the first byte of a connection picks the sink's behaviour:
//   'E'  echo: everything (that first byte included) is written back.
//   'B'  bulk: an 8-byte big-endian length follows, then that many bytes, which the sink counts and drops;
//        once it has them all it writes the single byte 'K'. No half-close is needed, so tunnels that
//        handle FIN poorly are measured on the same terms.

export const MODE_ECHO = 0x45; // 'E'
export const MODE_BULK = 0x42; // 'B'
export const BULK_ACK = 0x4b; // 'K'
export const BULK_HEADER = 9;

/** Jobs the parent sends to the load generator (child process, IPC). */
export type Job =
  | { kind: 'bulk'; port: number; bytes: number; conns: number }
  /**
   * Latency jobs take one port per contender and interleave them in blocks of `block` requests (rotating
   * which goes first), so that the machine's drift over the run lands on every contender alike; `count` is
   * per port; without `block`, each port gets all of `count` in one turn. The answer is a `LatencySet`, one
   * result per port in the order given.
   */
  | { kind: 'pingpong'; ports: number[]; count: number; size: number; warmup: number; block?: number }
  | {
      kind: 'rate';
      ports: number[];
      count: number;
      size: number;
      rate: number;
      warmup: number;
      block?: number;
    }
  | { kind: 'connrate'; port: number; count: number; concurrency: number; size: number }
  | { kind: 'idle-open'; port: number; count: number; concurrency: number }
  | { kind: 'idle-close' };

export interface BulkResult {
  bytes: number;
  seconds: number;
  mbps: number;
}

export interface LatencyResult {
  count: number;
  p50us: number;
  p99us: number;
  meanus: number;
  maxus: number;
  seconds: number;
  /** For fixed-rate runs: how late the generator itself sent (its own timing error, in the latencies). */
  sendLagP50us?: number;
  sendLagP99us?: number;
  achievedRate?: number;
}

export interface LatencySet {
  byPort: LatencyResult[];
}

export interface ConnRateResult {
  completed: number;
  errors: number;
  seconds: number;
  perSecond: number;
}

export interface IdleResult {
  opened: number;
  errors: number;
  seconds: number;
}

export type JobResult = BulkResult | LatencySet | ConnRateResult | IdleResult | { closed: number };

export interface JobRequest {
  id: number;
  job: Job;
}

export interface JobReply {
  id: number;
  result?: JobResult;
  error?: string;
}

/** The sink tells its parent where it listens: one port per name asked for. */
export interface SinkReady {
  ports: Record<string, number>;
}
