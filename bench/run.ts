#!/usr/bin/env node
// `npm run bench` / `npm run bench:smoke`: the data path measured side by side with direct TCP, stunnel
// and HAProxy, on loopback, in one invocation. See docs/benchmarks.md.
//
//   node dist/bench/run.js [--smoke] [--only direct,ambit,stunnel,haproxy] [--rounds N] [--out DIR]
//
// Each round starts every contender afresh and measures them alternately (A B C D, then B C D A, ...); the
// latency steps interleave them in blocks within one job. The load generator and the sink are child
// processes of their own so that only the contender's processes are charged for memory and CPU.
// Everything is bounded in count and time, and everything started is killed at the end.

import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { LoadGen, type Sink, startSink } from './children.js';
import {
  ALL,
  CONTENDERS,
  type ContenderName,
  type Context,
  DEFAULT_CONTENDERS,
  type PeerCerts,
  type Running,
  issuePeerCerts,
} from './contenders.js';
import {
  backgroundCpuPercent,
  cpuPressure60,
  describeMachine,
  killAll,
  quiesce,
  raiseFileLimit,
  sleep,
  stopOnSignals,
  stopProcess,
  sumCpu,
  sumRss,
} from './proc.js';
import type { BulkResult, ConnRateResult, IdleResult, LatencySet } from './protocol.js';
import {
  type Report,
  type RoundResult,
  emptyMetrics,
  markdown,
  mediansOf,
  ratiosOf,
  svgChart,
  targetsOf,
  textTable,
} from './report.js';

const here = dirname(fileURLToPath(import.meta.url)); // dist/bench
const root = resolve(here, '..', '..');

interface Profile {
  rounds: number;
  bulkBytes: number;
  pingCount: number;
  rate: number;
  rateCount: number;
  connCount: number;
  connConcurrency: number;
  idleCount: number;
  idleConcurrency: number;
  idleSettleMs: number;
  warmupBulkBytes: number;
  warmupPings: number;
  warmupConns: number;
  messageSize: number;
  /** Requests per contender in each turn of the interleaved latency steps. */
  latencyBlock: number;
}

const FULL: Profile = {
  rounds: 3,
  bulkBytes: 2 ** 30,
  pingCount: 10_000,
  rate: 1000,
  rateCount: 5_000,
  connCount: 2_000,
  connConcurrency: 32,
  idleCount: 10_000,
  idleConcurrency: 64,
  idleSettleMs: 1500,
  warmupBulkBytes: 64 * 2 ** 20,
  warmupPings: 500,
  warmupConns: 200,
  messageSize: 64,
  latencyBlock: 500,
};

const SMOKE: Profile = {
  rounds: 1,
  bulkBytes: 32 * 2 ** 20,
  pingCount: 500,
  rate: 1000,
  rateCount: 300,
  connCount: 200,
  connConcurrency: 32,
  idleCount: 500,
  idleConcurrency: 64,
  idleSettleMs: 300,
  warmupBulkBytes: 4 * 2 ** 20,
  warmupPings: 100,
  warmupConns: 32,
  messageSize: 64,
  latencyBlock: 100,
};

const log = (msg: string): void => {
  process.stderr.write(`[bench] ${msg}\n`);
};

// ---- one contender, one round

/**
 * How many idle connections a contender can hold under the open-file limit: the generator and the sink
 * hold one descriptor each per connection, a tunnel end `fdsPerConn` (stunnel and haproxy: two).
 */
export function idleCountFor(name: ContenderName, wanted: number, fileLimit: number): number {
  const per = Math.max(1, ALL[name].fdsPerConn);
  return Math.max(0, Math.min(wanted, Math.floor((fileLimit - 1000) / per)));
}

/** A contender started for one round, and what it has measured so far. */
interface Up {
  readonly name: ContenderName;
  readonly running: Running;
  readonly result: RoundResult;
}

/**
 * A step of one round, for one contender or (the latency steps) all of them; a failure is recorded on each
 * one's round and the round goes on.
 */
async function step<T>(ups: Up | readonly Up[], what: string, fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch (e) {
    const msg = `${what}: ${(e as Error).message}`;
    const each = 'result' in ups ? [ups] : ups;
    for (const up of each) up.result.errors.push(msg);
    log(`  ${each.map((u) => u.name).join(', ')}: ${msg}`);
    return undefined;
  }
}

/**
 * The steps measured one contender at a time: warm-up, idle memory and new connections. Every contender of
 * the round is up meanwhile, so each step first waits until all of them are quiet (the last one's 10,000
 * idle connections may still be closing).
 */
async function measureAlone(
  up: Up,
  all: readonly number[],
  gen: LoadGen,
  prof: Profile,
  round: number,
  fileLimit: number,
): Promise<void> {
  const { name, running, result } = up;
  const { port, pids } = running;
  const m = result.metrics;
  const size = prof.messageSize;

  await quiesce(all);
  // Warm-up: JIT, session pools, TLS session caches.
  await step(up, 'warm-up', async () => {
    await gen.run({ kind: 'connrate', port, count: prof.warmupConns, concurrency: 8, size }, 60_000);
    await gen.run({ kind: 'pingpong', ports: [port], count: prof.warmupPings, size, warmup: 0 }, 60_000);
    await gen.run({ kind: 'bulk', port, bytes: prof.warmupBulkBytes, conns: 1 }, 60_000);
  });
  await quiesce(all);

  // Memory first, on processes that have only been warmed up.
  if (pids.length > 0) {
    await step(up, 'idle connections', async () => {
      const count = idleCountFor(name, prof.idleCount, fileLimit);
      if (count < prof.idleCount && round === 1) {
        log(
          `  ${name}: open-file limit ${fileLimit} allows ${count} idle connections, not ${prof.idleCount}`,
        );
      }
      const before = sumRss(pids);
      const perPidBefore = pids.map((p) => sumRss([p]));
      const idle = await gen.run<IdleResult>(
        { kind: 'idle-open', port, count, concurrency: prof.idleConcurrency },
        60_000 + count * 20,
      );
      await sleep(prof.idleSettleMs);
      const after = sumRss(pids);
      const perPidAfter = pids.map((p) => sumRss([p]));
      await gen.run({ kind: 'idle-close' }, 30_000);
      result.detail.idle = {
        ...idle,
        wanted: count,
        rssBefore: before,
        rssAfter: after,
        perPidBefore,
        perPidAfter,
      };
      if (idle.opened < count) {
        result.errors.push(`idle connections: only ${idle.opened} of ${count} opened`);
      }
      if (idle.opened > 0) m.idleBytesPerConn = Math.round((after - before) / idle.opened);
    });
    await quiesce(all);
  }

  const conn = await step(up, 'new connections', () =>
    gen.run<ConnRateResult>(
      { kind: 'connrate', port, count: prof.connCount, concurrency: prof.connConcurrency, size },
      30_000 + prof.connCount * 50,
    ),
  );
  if (conn) {
    result.detail.connrate = conn;
    if (conn.errors > 0) result.errors.push(`new connections: ${conn.errors} of ${prof.connCount} failed`);
    m.connPerSec = conn.perSecond;
  }
}

/**
 * Latency, every contender of the round in one job: the generator alternates blocks of requests between
 * them, so a noisy second on the machine lands on all of them and the p50s compare like with like.
 */
async function measureLatency(
  ups: readonly Up[],
  all: readonly number[],
  gen: LoadGen,
  prof: Profile,
  sink: Sink,
): Promise<void> {
  const ports = ups.map((u) => u.running.port);
  const size = prof.messageSize;
  const block = prof.latencyBlock;

  await sink.collect();
  const settleMs = await quiesce(all);
  const ping = await step(ups, 'ping-pong', () =>
    gen.run<LatencySet>(
      { kind: 'pingpong', ports, count: prof.pingCount, size, warmup: 100, block },
      30_000 + prof.pingCount * ports.length * 5,
    ),
  );
  ups.forEach((u, j) => {
    const r = ping?.byPort[j];
    if (!r) return;
    u.result.detail.settleMs = settleMs;
    u.result.detail.pingpong = r;
    u.result.metrics.pingP50us = r.p50us;
    u.result.metrics.pingP99us = r.p99us;
  });

  await sink.collect();
  await quiesce(all);
  const rate = await step(ups, 'fixed rate', () =>
    gen.run<LatencySet>(
      { kind: 'rate', ports, count: prof.rateCount, size, rate: prof.rate, warmup: 100, block },
      30_000 + ((prof.rateCount * ports.length) / prof.rate) * 2000,
    ),
  );
  ups.forEach((u, j) => {
    const r = rate?.byPort[j];
    if (!r) return;
    u.result.detail.rate = r;
    u.result.metrics.rateP50us = r.p50us;
    u.result.metrics.rateP99us = r.p99us;
  });
}

/** Bulk last, one contender at a time, with the contender's CPU read around it. */
async function measureBulk(up: Up, all: readonly number[], gen: LoadGen, prof: Profile): Promise<void> {
  const { port, pids } = up.running;
  const m = up.result.metrics;
  let cpuSeconds = 0;
  let carried = 0;
  for (const conns of [1, 8]) {
    await quiesce(all);
    const cpu0 = sumCpu(pids);
    const bulk = await step(up, `bulk x${conns}`, () =>
      gen.run<BulkResult>(
        { kind: 'bulk', port, bytes: prof.bulkBytes, conns },
        60_000 + prof.bulkBytes / 5e4,
      ),
    );
    const cpu1 = sumCpu(pids);
    if (!bulk) continue;
    up.result.detail[`bulk${conns}`] = { ...bulk, cpuSeconds: Math.round((cpu1 - cpu0) * 100) / 100 };
    if (conns === 1) m.bulk1MBps = bulk.mbps;
    else m.bulk8MBps = bulk.mbps;
    cpuSeconds += cpu1 - cpu0;
    carried += bulk.bytes;
  }
  if (pids.length > 0 && carried > 0)
    m.cpuSecPerGB = Math.round((cpuSeconds / (carried / 1e9)) * 1000) / 1000;
}

// ---- main

interface Cli {
  smoke: boolean;
  only: ContenderName[];
  rounds: number | undefined;
  out: string;
  nodeArgs: string[];
}

function parseCli(): Cli {
  const { values } = parseArgs({
    options: {
      smoke: { type: 'boolean', default: false },
      only: { type: 'string' },
      rounds: { type: 'string' },
      out: { type: 'string' },
      'node-args': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(
      'usage: node dist/bench/run.js [--smoke] [--only direct,ambit,stunnel,haproxy,ambit-w1,ambit-w2] [--rounds N] [--out DIR]\n' +
        '                              [--node-args "<node flags for each ambitd>"]\n',
    );
    process.exit(0);
  }
  const only = (values.only ?? DEFAULT_CONTENDERS.join(','))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const o of only) {
    if (!(CONTENDERS as readonly string[]).includes(o)) {
      throw new Error(`--only: unknown contender "${o}" (known: ${CONTENDERS.join(', ')})`);
    }
  }
  let rounds: number | undefined;
  if (values.rounds !== undefined) {
    rounds = Number(values.rounds);
    if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) throw new Error('--rounds must be 1..20');
  }
  const out = resolve(values.out ?? join(root, 'bench', 'results', values.smoke ? 'smoke' : ''));
  const nodeArgs = (values['node-args'] ?? '').split(/\s+/).filter(Boolean);
  return { smoke: values.smoke ?? false, only: only as ContenderName[], rounds, out, nodeArgs };
}

async function main(): Promise<void> {
  const cli = parseCli();
  const prof: Profile = { ...(cli.smoke ? SMOKE : FULL) };
  if (cli.rounds !== undefined) prof.rounds = cli.rounds;
  const started = Date.now();
  const fileLimit = raiseFileLimit(131_072) || 1024;

  const missing: string[] = [];
  const selected: ContenderName[] = [];
  for (const name of cli.only) {
    const why = ALL[name].missing(root);
    if (why) {
      missing.push(`${name}: ${why}`);
      log(`MISSING ${name}: ${why}; measuring the others`);
    } else {
      selected.push(name);
    }
  }
  if (selected.length === 0) throw new Error('nothing to measure');

  const work = await mkdtemp(join(tmpdir(), 'ambit-bench-'));
  const gen = new LoadGen();
  const interrupted = stopOnSignals(log);

  try {
    const machine = describeMachine(fileLimit);
    machine.cpuPressureAtStart = cpuPressure60();
    machine.backgroundCpuPercent = await backgroundCpuPercent(2000);
    if (machine.backgroundCpuPercent > 10 || (machine.cpuPressureAtStart ?? 0) > 10) {
      log(
        `WARNING: the machine is busy before the bench starts (${machine.backgroundCpuPercent}% CPU, ` +
          `pressure ${machine.cpuPressureAtStart ?? '?'}%): figures will be noisy, latencies above all`,
      );
    }
    const versions: Record<string, string> = {
      node: `${process.version} (OpenSSL ${process.versions.openssl})`,
    };
    for (const name of cli.only)
      versions[name] = missing.some((m) => m.startsWith(`${name}:`)) ? 'missing' : ALL[name].version(root);
    log(
      `${cli.smoke ? 'smoke' : 'full'} run: ${selected.join(', ')}; ${prof.rounds} round(s); results to ${cli.out}`,
    );
    log(
      `machine: ${machine.cpuModel}, ${machine.cores} cores, Linux ${machine.kernel}, Node ${machine.node}`,
    );

    const certs: PeerCerts = await issuePeerCerts(join(work, 'peer-certs'));
    const sink = await startSink(['warmup', ...selected]);
    // The generator and the sink are Node processes too: warm their JIT before the first contender.
    {
      const port = sink.ports.warmup!;
      const size = prof.messageSize;
      await gen.run({ kind: 'connrate', port, count: prof.warmupConns * 2, concurrency: 16, size }, 60_000);
      const ports = [port];
      await gen.run(
        { kind: 'pingpong', ports, count: prof.warmupPings * 4, size, warmup: 0, block: 100 },
        60_000,
      );
      await gen.run(
        { kind: 'rate', ports, count: 200, size, rate: prof.rate, warmup: 0, block: 100 },
        60_000,
      );
      await gen.run({ kind: 'bulk', port, bytes: prof.warmupBulkBytes * 4, conns: 2 }, 60_000);
    }
    const rounds: RoundResult[] = [];
    let seq = 0;
    for (let round = 1; round <= prof.rounds; round++) {
      if (interrupted()) throw new Error('interrupted');
      // Every contender of the round runs at once, on fresh processes; the order turns each round so that
      // none is always first after the start or last before the bulk.
      const order = selected.map((_, k) => selected[(k + round - 1) % selected.length]!);
      const ups: Up[] = [];
      const t0 = Date.now();
      try {
        for (const name of order) {
          const result: RoundResult = {
            round,
            contender: name,
            metrics: emptyMetrics(),
            detail: {},
            errors: [],
          };
          rounds.push(result);
          const ctx: Context = {
            root,
            work,
            sinkPort: sink.ports[name]!,
            certs,
            seq: seq++,
            fileLimit,
            nodeArgs: cli.nodeArgs,
          };
          try {
            ups.push({ name, running: await ALL[name].start(ctx), result });
          } catch (e) {
            const msg = `start: ${(e as Error).message}`;
            log(`round ${round} ${name}: ${msg}`);
            result.errors.push(msg);
          }
        }
        const all = ups.flatMap((u) => u.running.pids);
        for (const up of ups) await measureAlone(up, all, gen, prof, round, fileLimit);
        await measureLatency(ups, all, gen, prof, sink);
        for (const up of ups) await measureBulk(up, all, gen, prof);
      } finally {
        await Promise.all(ups.map((u) => u.running.stop()));
      }
      for (const { name, result } of ups) {
        const mm = result.metrics;
        log(
          `round ${round} ${name}: bulk ${mm.bulk1MBps}/${mm.bulk8MBps} MB/s, p50 ${mm.pingP50us} µs, ` +
            `p99 ${mm.pingP99us} µs, rate p50/p99 ${mm.rateP50us}/${mm.rateP99us} µs, ${mm.connPerSec} conn/s, ` +
            `${mm.idleBytesPerConn ?? '—'} B/idle conn, ${mm.cpuSecPerGB ?? '—'} CPU s/GB`,
        );
      }
      log(`round ${round}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
    await gen.close();
    await stopProcess(sink.proc, 1000);

    machine.cpuPressureAtEnd = cpuPressure60();
    const medians = mediansOf(rounds);
    const date = new Date().toISOString();
    const report: Report = {
      schema: 1,
      mode: cli.smoke ? 'smoke' : 'full',
      date,
      durationSeconds: Math.round((Date.now() - started) / 100) / 10,
      machine,
      versions,
      settings: { ...prof, fileLimit, ambitdNodeArgs: cli.nodeArgs },
      contenders: cli.only.map((name) => {
        const why = missing.find((m) => m.startsWith(`${name}:`));
        return why ? { name, present: false, missing: why } : { name, present: true };
      }),
      rounds,
      medians,
      ratios: ratiosOf(medians),
      targets: targetsOf(medians),
      missing,
    };
    await mkdir(cli.out, { recursive: true });
    const stamp = date.replace(/[:.]/g, '-');
    const json = `${JSON.stringify(report, null, 2)}\n`;
    const svg = svgChart(report);
    await writeFile(join(cli.out, `${stamp}.json`), json);
    await writeFile(join(cli.out, 'latest.json'), json);
    await writeFile(join(cli.out, 'latest.svg'), svg);
    await writeFile(join(cli.out, 'latest.md'), markdown(report));
    process.stdout.write(`\n${textTable(report)}\n\n`);
    if (missing.length) process.stdout.write(`Not measured:\n${missing.map((m) => `  ${m}`).join('\n')}\n\n`);
    const errs = rounds.flatMap((r) => r.errors.map((e) => `round ${r.round} ${r.contender}: ${e}`));
    if (errs.length) process.stdout.write(`Errors:\n${errs.map((e) => `  ${e}`).join('\n')}\n\n`);
    process.stdout.write(
      `Wrote ${join(cli.out, `${stamp}.json`)}, latest.json, latest.svg, latest.md (${report.durationSeconds} s)\n`,
    );
  } finally {
    await gen.close();
    await killAll();
    await rm(work, { recursive: true, force: true });
  }
  if (interrupted()) process.exit(130);
}

main().catch(async (err: unknown) => {
  const interrupted = process.exitCode === 130;
  process.stderr.write(`bench: ${interrupted ? 'interrupted' : ((err as Error).stack ?? String(err))}\n`);
  await killAll();
  process.exit(interrupted ? 130 : 1);
});
