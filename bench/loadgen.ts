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
  type LatencySet,
  MODE_BULK,
  MODE_ECHO,
} from './protocol.js';
import { TICKER, percentile, round, summarize } from './timing.js';

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

// ---- ping-pong: one persistent connection per port, one message in flight in all.

/** One persistent echo connection, timing `size`-byte round trips one at a time. */
class Pinger {
  #left = 0;
  #sent = 0n;
  #samples: Float64Array | undefined;
  #at = 0;
  #done: (() => void) | undefined;
  #fail: ((e: Error) => void) | undefined;

  constructor(
    readonly socket: Socket,
    readonly msg: Buffer,
  ) {
    const fail = (e: Error): void => this.#fail?.(e);
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('connection closed during ping-pong')));
    countReplies(socket, msg.length, () => {
      if (this.#samples) this.#samples[this.#at++] = Number(now() - this.#sent) / 1000;
      if (--this.#left === 0) return this.#done?.();
      this.#sent = now();
      socket.write(msg);
    });
  }

  /** `n` round trips, timed into `samples` from `at` on (untimed when no array is given). */
  run(n: number, samples?: Float64Array, at = 0): Promise<void> {
    if (n <= 0) return Promise.resolve();
    // Closed between two turns: nothing would answer.
    if (this.socket.destroyed) return Promise.reject(new Error('connection closed during ping-pong'));
    return new Promise((resolve, reject) => {
      this.#left = n;
      this.#samples = samples;
      this.#at = at;
      this.#done = resolve;
      this.#fail = reject;
      this.#sent = now();
      this.socket.write(this.msg);
    });
  }
}

/**
 * Block `b`'s order: every port once, shuffled (seeded, so runs repeat), so that no contender always runs
 * right after the same other one (whose processes have just gone idle on the same cores).
 */
function blockOrder(n: number, b: number): number[] {
  const order = Array.from({ length: n }, (_, k) => k);
  let x = (b + 1) * 0x9e3779b1;
  for (let k = n - 1; k > 0; k--) {
    x = Math.imul(x ^ (x >>> 15), 0x85ebca6b) ^ (x >>> 13);
    const r = (x >>> 0) % (k + 1);
    [order[k], order[r]] = [order[r]!, order[k]!];
  }
  return order;
}

async function pingpong(
  ports: number[],
  count: number,
  size: number,
  warmup: number,
  block = count,
): Promise<LatencySet> {
  const msg = echoMessage(size);
  const sockets = await Promise.all(ports.map(open));
  try {
    const pingers = sockets.map((s) => new Pinger(s, msg));
    for (const p of pingers) await p.run(warmup);
    const samples = ports.map(() => new Float64Array(count));
    const seconds = ports.map(() => 0);
    const per = Math.max(1, block);
    for (let b = 0, done = 0; done < count; b++, done += per) {
      const n = Math.min(per, count - done);
      for (const j of blockOrder(ports.length, b)) {
        const t0 = now();
        await pingers[j]!.run(n, samples[j], done);
        seconds[j]! += secondsSince(t0);
      }
    }
    return { byPort: samples.map((s, j) => summarize(s, seconds[j]!)) };
  } finally {
    for (const s of sockets) s.destroy();
  }
}

// ---- fixed offered rate: a worker thread keeps the schedule (the main thread cannot sleep for less than
// a millisecond without blocking its I/O), the main thread sends what is due and times each reply from the
// moment it was scheduled, so that queuing anywhere (the contender, or a late send) shows in the figures.
// With several ports, the schedule is one: blocks of `block` consecutive requests go to one port after the
// other (each turn in a shuffled order, as for ping-pong), so each sees the offered rate while its block runs.

async function rate(
  ports: number[],
  count: number,
  size: number,
  perSecond: number,
  warmup: number,
  block = count,
): Promise<LatencySet> {
  if (warmup > 0) await pingpong(ports, 1, size, warmup - 1, 1);
  const sockets = await Promise.all(ports.map(open));
  const msg = echoMessage(size);
  const n = ports.length;
  const total = count * n;
  const per = Math.max(1, block);
  const orders: number[][] = [];
  const portOf = (i: number): number => {
    const b = Math.floor(i / per);
    orders[Math.floor(b / n)] ??= blockOrder(n, Math.floor(b / n));
    return orders[Math.floor(b / n)]![b % n]!;
  };
  const intervalNs = Math.round(1e9 / perSecond);
  const samples = ports.map(() => new Float64Array(count));
  const lags = ports.map(() => new Float64Array(count));
  // Each connection's requests in the order sent: an echo answers them in that order.
  const sentIds = ports.map(() => new Int32Array(count));
  const sentOn = ports.map(() => 0);
  const gotOn = ports.map(() => 0);
  let sent = 0;
  let received = 0;
  const ticker = new Worker(TICKER, { eval: true, workerData: { intervalNs, count: total } });
  // The schedule starts once the worker is up (its start-up would otherwise count as queuing).
  await new Promise<void>((resolve, reject) => {
    ticker.once('message', () => resolve());
    ticker.once('error', reject);
  });
  const t0 = now() + 5_000_000n;
  const scheduled = (i: number): bigint => t0 + BigInt(intervalNs) * BigInt(i);
  try {
    await new Promise<void>((resolve, reject) => {
      ticker.once('error', reject);
      sockets.forEach((s, j) => {
        s.once('error', reject);
        s.once('close', () => reject(new Error('connection closed during the fixed-rate run')));
        countReplies(s, size, () => {
          const k = gotOn[j]!++;
          samples[j]![k] = Number(now() - scheduled(sentIds[j]![k]!)) / 1000;
          if (++received >= total) resolve();
        });
      });
      ticker.postMessage(t0.toString());
      ticker.on('message', (i: number) => {
        while (sent <= i && sent < total) {
          const j = portOf(sent);
          const k = sentOn[j]!++;
          sentIds[j]![k] = sent;
          lags[j]![k] = Number(now() - scheduled(sent)) / 1000;
          sockets[j]!.write(msg);
          sent++;
        }
      });
    });
  } finally {
    for (const s of sockets) s.destroy();
    await ticker.terminate();
  }
  // Each port's share of the run's time: its requests were a 1/n share of the schedule.
  const seconds = Number(now() - t0) / 1e9;
  return {
    byPort: samples.map((s, j) => {
      const lagSorted = Float64Array.from(lags[j]!).sort();
      return {
        ...summarize(s, seconds / n),
        sendLagP50us: round(percentile(lagSorted, 50)),
        sendLagP99us: round(percentile(lagSorted, 99)),
        achievedRate: round(total / seconds),
      };
    }),
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
      return pingpong(job.ports, job.count, job.size, job.warmup, job.block);
    case 'rate':
      return rate(job.ports, job.count, job.size, job.rate, job.warmup, job.block);
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
