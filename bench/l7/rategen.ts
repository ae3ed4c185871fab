// The L7 fixed-rate load generator, a child process of the bench (its CPU is never charged to a hop). The
// schedule is kept by time, not by responses: a ticker thread says when request i is due, and it goes out
// on a free keep-alive connection of the pool, or waits for one. Each latency runs from the *scheduled*
// time to the last byte of the response, so that a stall anywhere (the hop, the upstream, a late send,
// a request waiting for a connection) counts, rather than being omitted.

import { type Socket, connect } from 'node:net';
import { Worker } from 'node:worker_threads';
import { TICKER, percentile, round, summarize } from '../timing.js';
import { BODY_SIZE, type Response, ResponseReader, postRequest } from './http1.js';
import type { RateJob, RateResult } from './protocol.js';

const now = (): bigint => process.hrtime.bigint();

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', noDelay: true });
    s.once('error', reject);
    s.once('connect', () => {
      s.removeListener('error', reject);
      resolve(s);
    });
  });
}

const MAX_REOPEN = 1000;

interface Conn {
  socket: Socket;
  /** The request in flight on it (its index in the schedule), or -1. */
  busy: number;
}

async function rate(job: RateJob): Promise<RateResult> {
  const { port, count, conns } = job;
  const request = postRequest();
  const intervalNs = BigInt(Math.round(1e9 / job.rate));
  const samples = new Float64Array(count);
  const lags = new Float64Array(count);
  let measured = 0;
  let errors = 0;
  let reopened = 0;
  let done = 0;
  let maxQueued = 0;
  const queue: number[] = [];
  let queueHead = 0;
  const idle: Conn[] = [];
  const pool: Conn[] = [];

  const ticker = new Worker(TICKER, { eval: true, workerData: { intervalNs: Number(intervalNs), count } });
  await new Promise<void>((resolve, reject) => {
    ticker.once('message', () => resolve());
    ticker.once('error', reject);
  });
  const t0 = now() + 5_000_000n;
  const scheduled = (i: number): bigint => t0 + intervalNs * BigInt(i);

  let finish: (() => void) | undefined;
  let fail: ((e: Error) => void) | undefined;
  const finished = new Promise<void>((resolve, reject) => {
    finish = resolve;
    fail = reject;
  });
  const settle = (): void => {
    if (++done >= count) finish?.();
  };

  const dispatch = (): void => {
    while (idle.length > 0 && queueHead < queue.length) {
      const c = idle.pop()!;
      const i = queue[queueHead++]!;
      c.busy = i;
      lags[i] = Number(now() - scheduled(i)) / 1000;
      c.socket.write(request);
    }
    if (queueHead > 4096 && queueHead === queue.length) {
      queue.length = 0;
      queueHead = 0;
    }
  };

  const attach = (c: Conn): void => {
    const reader = new ResponseReader();
    c.socket.on('data', (chunk: Buffer) => {
      try {
        reader.push(chunk, (r: Response) => {
          const i = c.busy;
          if (i < 0) throw new Error('a response nobody asked for');
          c.busy = -1;
          if (r.status === 200 && r.bodyBytes === BODY_SIZE) {
            samples[measured++] = Number(now() - scheduled(i)) / 1000;
          } else {
            errors++;
          }
          if (r.close) {
            // Not put back: its 'close' opens a replacement.
            c.socket.end();
          } else {
            idle.push(c);
          }
          settle();
          dispatch();
        });
      } catch {
        c.socket.destroy();
      }
    });
    c.socket.once('error', () => c.socket.destroy());
    c.socket.once('close', () => {
      const k = idle.indexOf(c);
      if (k >= 0) idle.splice(k, 1);
      if (c.busy >= 0) {
        // Lost with its connection: an error, and the schedule goes on.
        c.busy = -1;
        errors++;
        settle();
      }
      if (done >= count) return;
      if (++reopened > MAX_REOPEN) {
        fail?.(new Error(`connections closed more than ${MAX_REOPEN} times`));
        return;
      }
      open(port).then(
        (socket) => {
          const fresh: Conn = { socket, busy: -1 };
          pool[pool.indexOf(c)] = fresh;
          attach(fresh);
          idle.push(fresh);
          dispatch();
        },
        (e: Error) => fail?.(new Error(`reconnecting: ${e.message}`)),
      );
    });
  };

  try {
    for (let k = 0; k < conns; k++) pool.push({ socket: await open(port), busy: -1 });
    for (const c of pool) {
      attach(c);
      idle.push(c);
    }
    ticker.once('error', (e) => fail?.(e));
    ticker.on('message', (i: number) => {
      queue.push(i);
      maxQueued = Math.max(maxQueued, queue.length - queueHead);
      dispatch();
    });
    ticker.postMessage(t0.toString());
    await finished;
  } finally {
    await ticker.terminate();
    for (const c of pool) c.socket.destroy();
  }
  const seconds = Number(now() - t0) / 1e9;
  const lagSorted = Float64Array.from(lags).sort();
  return {
    ...summarize(samples.subarray(0, measured), seconds),
    errors,
    reopened,
    sendLagP50us: round(percentile(lagSorted, 50)),
    sendLagP99us: round(percentile(lagSorted, 99)),
    achievedRate: round(count / seconds),
    maxQueued,
  };
}

/** A full collection before the run (the process runs with --expose-gc), not during it. */
const collect = (): void => (globalThis as { gc?: () => void }).gc?.();

process.on('message', (req: { id: number; job: RateJob }) => {
  collect();
  rate(req.job).then(
    (result) => process.send?.({ id: req.id, result }),
    (err: unknown) => process.send?.({ id: req.id, error: (err as Error).message ?? String(err) }),
  );
});
process.on('disconnect', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
