#!/usr/bin/env node
// A/B of data-path changes: one load, several builds of ambitd (and any peer), alternated round by round so
// that the machine's drift hits each alike; prints every run and the medians. What `npm run bench` is to the
// whole picture, this is to one change while it is being made.
//
//   node dist/bench/ab.js [--build label=DIR]... [--peer haproxy]... [--job bulk|ping|conn|latency] [--conns N]
//                         [--mib N] [--reps N] [--rounds N] [--idle N] [--node-args "..."]
//
// A build DIR is a checkout with dist/ built (the current one when no --build is given). bulk: MB/s and CPU
// s/GB of the contender's processes (both ends) per transfer; ping: 64 B ping-pong p50/p99 and new connections
// per second; conn: new connections per second alone (2,000 at concurrency 32), with CPU µs per connection;
// latency: every entry up at once, ping-pong p50 with each entry alone for a stretch, then interleaved.
// --idle N opens and closes N idle connections first (as the full bench does before its bulk run).
// Loopback only; every load is bounded in count and time.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { LoadGen, startSink } from './children.js';
import { ALL, type ContenderName, type Running, issuePeerCerts } from './contenders.js';
import { killAll, quiesce, raiseFileLimit, stopProcess, sumCpu } from './proc.js';
import type { BulkResult, ConnRateResult, LatencySet } from './protocol.js';
import { median } from './report.js';

const here = dirname(fileURLToPath(import.meta.url));
const thisRoot = resolve(here, '..', '..');

interface Entry {
  readonly label: string;
  readonly contender: ContenderName;
  readonly root: string;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      build: { type: 'string', multiple: true },
      peer: { type: 'string', multiple: true },
      job: { type: 'string', default: 'bulk' },
      conns: { type: 'string', default: '1' },
      mib: { type: 'string', default: '512' },
      reps: { type: 'string', default: '3' },
      rounds: { type: 'string', default: '3' },
      idle: { type: 'string', default: '0' },
      'node-args': { type: 'string', default: '' },
    },
  });
  const job = (['ping', 'conn', 'latency'] as const).find((j) => j === values.job) ?? 'bulk';
  const conns = Math.max(1, Math.min(64, Number(values.conns)));
  const bytes = Math.max(1, Math.min(4096, Number(values.mib))) * 2 ** 20;
  const reps = Math.max(1, Math.min(20, Number(values.reps)));
  const rounds = Math.max(1, Math.min(10, Number(values.rounds)));
  const idle = Math.max(0, Math.min(10_000, Number(values.idle)));
  const nodeArgs = (values['node-args'] ?? '').split(' ').filter(Boolean);

  const entries: Entry[] = (values.build ?? [`${basename(thisRoot)}=${thisRoot}`]).map((b) => {
    const [label, dir] = b.includes('=') ? (b.split('=', 2) as [string, string]) : [basename(b), b];
    return { label, contender: 'ambit' as const, root: resolve(dir) };
  });
  for (const p of values.peer ?? []) {
    if (!(p in ALL)) throw new Error(`--peer ${p}: not one of ${Object.keys(ALL).join(', ')}`);
    entries.push({ label: p, contender: p as ContenderName, root: thisRoot });
  }
  for (const e of entries) {
    const why = ALL[e.contender].missing(e.root);
    if (why) throw new Error(`${e.label}: ${why}`);
  }

  const fileLimit = raiseFileLimit(131_072) || 1024;
  const work = await mkdtemp(join(tmpdir(), 'ambit-ab-'));
  const gen = new LoadGen();
  const sink = await startSink(entries.map((e) => e.label));
  const results = new Map<string, number[][]>(entries.map((e) => [e.label, []]));
  let seq = 0;
  try {
    const certs = await issuePeerCerts(join(work, 'peer-certs'));
    const start = (e: Entry): Promise<Running> =>
      ALL[e.contender].start({
        root: e.root,
        work,
        sinkPort: sink.ports[e.label]!,
        certs,
        seq: ++seq,
        fileLimit,
        nodeArgs,
      });
    if (job === 'latency') return await latency(entries, start, gen, rounds, reps);
    for (let round = 1; round <= rounds; round++) {
      for (const e of entries) {
        const running = await start(e);
        try {
          const { port, pids } = running;
          await gen.run({ kind: 'bulk', port, bytes: 64 * 2 ** 20, conns }, 60_000);
          await gen.run({ kind: 'pingpong', ports: [port], count: 1000, size: 64, warmup: 0 }, 60_000);
          if (idle > 0) {
            await gen.run({ kind: 'idle-open', port, count: idle, concurrency: 64 }, 60_000 + idle * 20);
            await gen.run({ kind: 'idle-close' }, 30_000);
          }
          await quiesce(pids);
          for (let i = 0; i < reps; i++) {
            if (job === 'bulk') {
              const c0 = sumCpu(pids);
              const r = await gen.run<BulkResult>({ kind: 'bulk', port, bytes, conns }, 120_000);
              const cpu = (sumCpu(pids) - c0) / (r.bytes / 1e9);
              results.get(e.label)!.push([r.mbps, cpu]);
              console.log(`round ${round} ${e.label}: ${r.mbps} MB/s, ${cpu.toFixed(2)} CPU s/GB`);
            } else if (job === 'conn') {
              const c0 = sumCpu(pids);
              const c = await gen.run<ConnRateResult>(
                { kind: 'connrate', port, count: 2000, concurrency: 32, size: 64 },
                120_000,
              );
              const cpuUs = ((sumCpu(pids) - c0) * 1e6) / 2000;
              await quiesce(pids);
              results.get(e.label)!.push([c.perSecond, cpuUs]);
              console.log(
                `round ${round} ${e.label}: ${c.perSecond} conn/s, ${cpuUs.toFixed(0)} CPU µs per connection`,
              );
            } else {
              const c0 = sumCpu(pids);
              const { byPort } = await gen.run<LatencySet>(
                { kind: 'pingpong', ports: [port], count: 5000, size: 64, warmup: 200 },
                60_000,
              );
              const p = byPort[0]!;
              // CPU of both ends per round trip: on the serial path, so a floor under the added latency.
              const cpuUs = ((sumCpu(pids) - c0) * 1e6) / (p.count + 200);
              const c = await gen.run<ConnRateResult>(
                { kind: 'connrate', port, count: 1000, concurrency: 32, size: 64 },
                60_000,
              );
              results.get(e.label)!.push([p.p50us, p.p99us, c.perSecond, cpuUs]);
              console.log(
                `round ${round} ${e.label}: p50 ${p.p50us} µs, p99 ${p.p99us} µs, ` +
                  `${cpuUs.toFixed(1)} CPU µs per round trip, ${c.perSecond} conn/s`,
              );
            }
          }
        } finally {
          await running.stop();
        }
      }
    }
  } finally {
    await gen.close();
    await stopProcess(sink.proc, 1000);
    await killAll();
    await rm(work, { recursive: true, force: true });
  }
  const what =
    job === 'bulk'
      ? `bulk ${bytes / 2 ** 20} MiB over ${conns} connection(s)`
      : job === 'conn'
        ? 'new connections (2,000 at concurrency 32)'
        : '64 B ping-pong and new connections';
  console.log(`\nmedians (${what}, ${rounds} rounds × ${reps})${idle ? `, after ${idle} idle` : ''}:`);
  for (const [label, rows] of results) {
    const col = (i: number): number => median(rows.map((r) => r[i]!)) ?? Number.NaN;
    console.log(
      job === 'bulk'
        ? `  ${label}: ${col(0).toFixed(1)} MB/s, ${col(1).toFixed(2)} CPU s/GB`
        : job === 'conn'
          ? `  ${label}: ${col(0).toFixed(0)} conn/s, ${col(1).toFixed(0)} CPU µs per connection`
          : `  ${label}: p50 ${col(0).toFixed(1)} µs, p99 ${col(1).toFixed(1)} µs, ${col(3).toFixed(1)} CPU µs per round trip, ${col(2).toFixed(0)} conn/s`,
    );
  }
}

/**
 * 64 B ping-pong p50, two ways, with every entry up at once: each entry alone for one stretch of 5,000
 * round trips (in turn, as the full bench did until it interleaved), then all of them interleaved in blocks
 * of 500 within one job (as it does now). Shows how much of a difference between entries is the stretch's
 * luck rather than the entry.
 */
async function latency(
  entries: readonly Entry[],
  start: (e: Entry) => Promise<Running>,
  gen: LoadGen,
  rounds: number,
  reps: number,
): Promise<void> {
  const count = 5000;
  const alone = new Map<string, number[]>(entries.map((e) => [e.label, []]));
  const mixed = new Map<string, number[]>(entries.map((e) => [e.label, []]));
  const lowest = (row: number[]): string => entries[row.indexOf(Math.min(...row))]!.label;
  const wins = { alone: new Map<string, number>(), mixed: new Map<string, number>() };
  const win = (m: Map<string, number>, label: string): void => void m.set(label, (m.get(label) ?? 0) + 1);
  for (let round = 1; round <= rounds; round++) {
    const ups: Running[] = [];
    try {
      for (const e of entries) ups.push(await start(e));
      const all = ups.flatMap((u) => u.pids);
      for (const u of ups) {
        await gen.run({ kind: 'pingpong', ports: [u.port], count: 1000, size: 64, warmup: 0 }, 60_000);
      }
      for (let i = 0; i < reps; i++) {
        const a: number[] = [];
        for (const u of ups) {
          await quiesce(all);
          const { byPort } = await gen.run<LatencySet>(
            { kind: 'pingpong', ports: [u.port], count, size: 64, warmup: 200 },
            60_000,
          );
          a.push(byPort[0]!.p50us);
        }
        await quiesce(all);
        const { byPort } = await gen.run<LatencySet>(
          { kind: 'pingpong', ports: ups.map((u) => u.port), count, size: 64, warmup: 200, block: 500 },
          120_000,
        );
        const m = byPort.map((r) => r.p50us);
        entries.forEach((e, j) => {
          alone.get(e.label)!.push(a[j]!);
          mixed.get(e.label)!.push(m[j]!);
        });
        win(wins.alone, lowest(a));
        win(wins.mixed, lowest(m));
        const show = (row: number[]): string => entries.map((e, j) => `${e.label} ${row[j]}`).join(', ');
        console.log(`round ${round}: p50 µs alone: ${show(a)}; interleaved: ${show(m)}`);
      }
    } finally {
      await Promise.all(ups.map((u) => u.stop()));
    }
  }
  const n = rounds * reps;
  console.log(`\nmedians (64 B ping-pong p50, ${rounds} rounds × ${reps}; lowest in how many of ${n}):`);
  for (const e of entries) {
    const a = median(alone.get(e.label)!)!;
    const m = median(mixed.get(e.label)!)!;
    console.log(
      `  ${e.label}: alone ${a.toFixed(1)} µs (lowest ${wins.alone.get(e.label) ?? 0}), ` +
        `interleaved ${m.toFixed(1)} µs (lowest ${wins.mixed.get(e.label) ?? 0})`,
    );
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`ab: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
