// The load generator (child process, so that its CPU is never charged to a contender). It takes one job
// at a time from its parent over IPC (bench/protocol.ts) and answers with the figures.

import { randomBytes } from 'node:crypto';
import { type Socket, connect } from 'node:net';
import { Worker } from 'node:worker_threads';
import {
  BULK_ACK,
  BULK_HEADER,
  type BulkResult,
  type ConnRateResult,
  type IdleResult,
  type Job,
  type JobReply,
  type JobRequest,
  type JobResult,
  type LatencyResult,
  MODE_BULK,
  MODE_ECHO,
} from './protocol.js';

const now = (): bigint => process.hrtime.bigint();
const secondsSince = (t0: bigint): number => Number(now() - t0) / 1e9;

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

/** A socket's bytes as a stream of fixed-size replies: `onReply` runs once per `size` bytes received. */
function countReplies(s: Socket, size: number, onReply: () => void): void {
  let pending = 0;
  s.on('data', (chunk: Buffer) => {
    pending += chunk.length;
    while (pending >= size) {
      pending -= size;
      onReply();
    }
  });
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

function summarize(samplesUs: Float64Array, seconds: number): LatencyResult {
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

const round = (v: number, digits = 1): number => Math.round(v * 10 ** digits) / 10 ** digits;

function echoMessage(size: number): Buffer {
  const b = randomBytes(size);
  b[0] = MODE_ECHO;
  return b;
}

// ---- bulk: N bytes one way, split over `conns` connections started together.
const CHUNK = randomBytes(256 * 1024);

async function bulk(port: number, bytes: number, conns: number): Promise<BulkResult> {
  const per = Math.floor(bytes / conns);
  const sockets = await Promise.all(Array.from({ length: conns }, () => open(port)));
  const t0 = now();
  try {
    await Promise.all(
      sockets.map(
        (s) =>
          new Promise<void>((resolve, reject) => {
            s.once('error', reject);
            s.once('close', () => reject(new Error('bulk connection closed before the sink acknowledged')));
            s.on('data', (c: Buffer) => {
              if (c.includes(BULK_ACK)) resolve();
            });
            const header = Buffer.alloc(BULK_HEADER);
            header[0] = MODE_BULK;
            header.writeBigUInt64BE(BigInt(per), 1);
            s.write(header);
            let left = per;
            const pump = (): void => {
              while (left > 0) {
                const n = Math.min(left, CHUNK.length);
                left -= n;
                if (!s.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
                  s.once('drain', pump);
                  return;
                }
              }
            };
            pump();
          }),
      ),
    );
  } finally {
    for (const s of sockets) s.destroy();
  }
  const seconds = secondsSince(t0);
  const total = per * conns;
  return { bytes: total, seconds: round(seconds, 4), mbps: round(total / 1e6 / seconds) };
}

// ---- ping-pong: one persistent connection, one message in flight.
async function pingpong(port: number, count: number, size: number, warmup: number): Promise<LatencyResult> {
  const s = await open(port);
  const msg = echoMessage(size);
  const samples = new Float64Array(count);
  try {
    const t0 = await new Promise<bigint>((resolve, reject) => {
      s.once('error', reject);
      s.once('close', () => reject(new Error('connection closed during ping-pong')));
      let i = -warmup;
      let sent = now();
      let start = sent;
      countReplies(s, size, () => {
        if (i >= 0) samples[i] = Number(now() - sent) / 1000;
        i++;
        if (i === 0) start = now();
        if (i >= count) return resolve(start);
        sent = now();
        s.write(msg);
      });
      if (warmup === 0) start = now();
      sent = now();
      s.write(msg);
    });
    return summarize(samples, secondsSince(t0));
  } finally {
    s.destroy();
  }
}

// ---- fixed offered rate: a worker thread keeps the schedule (the main thread cannot sleep for less than
// a millisecond without blocking its I/O), the main thread sends what is due and times each reply from the
// moment it was scheduled, so that queuing anywhere (the contender, or a late send) shows in the figures.
const TICKER = `
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

async function rate(
  port: number,
  count: number,
  size: number,
  perSecond: number,
  warmup: number,
): Promise<LatencyResult> {
  if (warmup > 0) await pingpong(port, 1, size, warmup - 1);
  const s = await open(port);
  const msg = echoMessage(size);
  const intervalNs = Math.round(1e9 / perSecond);
  const samples = new Float64Array(count);
  const lags = new Float64Array(count);
  let sent = 0;
  let received = 0;
  const ticker = new Worker(TICKER, { eval: true, workerData: { intervalNs, count } });
  // The schedule starts once the worker is up (its start-up would otherwise count as queuing).
  await new Promise<void>((resolve, reject) => {
    ticker.once('message', () => resolve());
    ticker.once('error', reject);
  });
  const t0 = now() + 5_000_000n;
  const scheduled = (i: number): bigint => t0 + BigInt(intervalNs) * BigInt(i);
  try {
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.once('close', () => reject(new Error('connection closed during the fixed-rate run')));
      ticker.once('error', reject);
      countReplies(s, size, () => {
        samples[received] = Number(now() - scheduled(received)) / 1000;
        received++;
        if (received >= count) resolve();
      });
      ticker.postMessage(t0.toString());
      ticker.on('message', (i: number) => {
        while (sent <= i && sent < count) {
          lags[sent] = Number(now() - scheduled(sent)) / 1000;
          s.write(msg);
          sent++;
        }
      });
    });
  } finally {
    s.destroy();
    await ticker.terminate();
  }
  const seconds = Number(now() - t0) / 1e9;
  const lagSorted = Float64Array.from(lags).sort();
  return {
    ...summarize(samples, seconds),
    sendLagP50us: round(percentile(lagSorted, 50)),
    sendLagP99us: round(percentile(lagSorted, 99)),
    achievedRate: round(count / seconds),
  };
}

// ---- new connections: connect, one round trip, close; `concurrency` at a time.
async function connrate(
  port: number,
  count: number,
  concurrency: number,
  size: number,
): Promise<ConnRateResult> {
  const msg = echoMessage(size);
  let started = 0;
  let completed = 0;
  let errors = 0;
  const once = (): Promise<void> =>
    new Promise((resolve) => {
      const s = connect({ port, host: '127.0.0.1', noDelay: true });
      let got = 0;
      let done = false;
      const finish = (ok: boolean): void => {
        if (done) return;
        done = true;
        if (ok) completed++;
        else errors++;
        s.destroy();
        resolve();
      };
      const timer = setTimeout(() => finish(false), 10_000);
      s.once('connect', () => s.write(msg));
      s.on('data', (c: Buffer) => {
        got += c.length;
        if (got >= size) {
          clearTimeout(timer);
          finish(true);
        }
      });
      s.once('error', () => {
        clearTimeout(timer);
        finish(false);
      });
      s.once('close', () => {
        clearTimeout(timer);
        finish(false);
      });
    });
  const t0 = now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (started < count) {
        started++;
        await once();
      }
    }),
  );
  const seconds = secondsSince(t0);
  return { completed, errors, seconds: round(seconds, 3), perSecond: round(completed / seconds) };
}

// ---- idle connections: opened (each proven end to end by a 1-byte echo) and held until idle-close.
let idle: Socket[] = [];

async function idleOpen(port: number, count: number, concurrency: number): Promise<IdleResult> {
  let started = 0;
  let errors = 0;
  const t0 = now();
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const s = connect({ port, host: '127.0.0.1', noDelay: true });
      const timer = setTimeout(() => fail(), 15_000);
      const fail = (): void => {
        clearTimeout(timer);
        errors++;
        s.destroy();
        resolve();
      };
      s.once('error', fail);
      s.once('connect', () => s.write(Buffer.of(MODE_ECHO)));
      s.once('data', () => {
        clearTimeout(timer);
        s.removeListener('error', fail);
        s.on('error', () => {});
        idle.push(s);
        resolve();
      });
    });
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (started < count) {
        started++;
        await one();
      }
    }),
  );
  return { opened: idle.length, errors, seconds: round(secondsSince(t0), 3) };
}

function idleClose(): { closed: number } {
  const closed = idle.length;
  for (const s of idle) s.destroy();
  idle = [];
  return { closed };
}

/** A full collection before a latency measurement (the process runs with --expose-gc), not during it. */
const collect = (): void => (globalThis as { gc?: () => void }).gc?.();

function run(job: Job): Promise<JobResult> | JobResult {
  if (job.kind === 'pingpong' || job.kind === 'rate') collect();
  switch (job.kind) {
    case 'bulk':
      return bulk(job.port, job.bytes, job.conns);
    case 'pingpong':
      return pingpong(job.port, job.count, job.size, job.warmup);
    case 'rate':
      return rate(job.port, job.count, job.size, job.rate, job.warmup);
    case 'connrate':
      return connrate(job.port, job.count, job.concurrency, job.size);
    case 'idle-open':
      return idleOpen(job.port, job.count, job.concurrency);
    case 'idle-close':
      return idleClose();
  }
}

process.on('message', (req: JobRequest) => {
  Promise.resolve()
    .then(() => run(req.job))
    .then(
      (result) => process.send?.({ id: req.id, result } satisfies JobReply),
      (err: unknown) =>
        process.send?.({ id: req.id, error: (err as Error).message ?? String(err) } satisfies JobReply),
    );
});
process.on('disconnect', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
