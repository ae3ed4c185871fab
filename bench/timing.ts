// Timing pieces shared by the load generators (bench/loadgen.ts, bench/l7/rategen.ts): the fixed-rate
// schedule's ticker thread and the latency summary.

import type { LatencyResult } from './protocol.js';

/**
 * Source of a worker thread (eval: true) that keeps a fixed-rate schedule: the main thread cannot sleep
 * for less than a millisecond without blocking its I/O. workerData `{ intervalNs, count }`; it posts
 * 'ready', waits for the start time (hrtime ns, as a string), then posts tick i at start + i * interval.
 */
export const TICKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { intervalNs, count } = workerData;
const cell = new Int32Array(new SharedArrayBuffer(4));
parentPort.once('message', (t0) => {
  const start = BigInt(t0);
  const step = BigInt(intervalNs);
  for (let i = 0; i < count; i++) {
    const due = start + step * BigInt(i);
    // Sleep until 200 us before the due time (a timed wait wakes late by ~100 us on a VM), then spin.
    for (;;) {
      const left = Number(due - process.hrtime.bigint());
      if (left <= 0) break;
      if (left > 200000) Atomics.wait(cell, 0, 0, (left - 200000) / 1e6);
    }
    parentPort.postMessage(i);
  }
});
parentPort.postMessage('ready');
`;

export const round = (v: number, digits = 1): number => Math.round(v * 10 ** digits) / 10 ** digits;

export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export function summarize(samplesUs: Float64Array, seconds: number): LatencyResult {
  const sorted = Float64Array.from(samplesUs).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    count: sorted.length,
    p50us: round(percentile(sorted, 50)),
    p99us: round(percentile(sorted, 99)),
    meanus: round(sorted.length ? sum / sorted.length : 0),
    maxus: round(sorted.length ? sorted[sorted.length - 1]! : 0),
    seconds: round(seconds, 3),
  };
}
