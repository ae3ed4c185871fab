#!/usr/bin/env node
// `npm run bench:l7` / `npm run bench:l7 -- --smoke`: HTTP/1.1 keep-alive L7 hops measured side by side
// on loopback, plaintext, one worker or thread each, all forwarding to one shared upstream server. See
// docs/benchmarks.md#l7-bench.
//
//   node dist/bench/l7/run.js [--smoke] [--only direct,nginx,haproxy,hop,waypoint,ambit] [--rounds N] [--out DIR]
//
// --only may also name hop-chain, hop-policies and waypoint-policies (issue 16's policy cost: see
// policies.ts); a run without --only measures the six above.
//
// Each round starts every hop afresh and measures them one after the other (A B C, then B C A, ...): a
// warm-up, the fixed-rate run (latency, and the hop's CPU per request), then the most requests per second
// (wrk). The load generators are processes of their own, so only the hop's processes are charged.

import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { LoadGen } from '../children.js';
import {
  backgroundCpuPercent,
  cpuPressure60,
  describeMachine,
  killAll,
  peakRssBytes,
  processTree,
  quiesce,
  raiseFileLimit,
  stopOnSignals,
  stopProcess,
  sumCpu,
  sumCpuFine,
  sumRss,
} from '../proc.js';
import { type L7Contender, type L7Name, L7_ALL, L7_NAMES, type Running } from './contender.js';
import { nginxBin, nginxVersion } from './nginx.js';
import type { RateJob, RateResult } from './protocol.js';
import { findContenders } from './registry.js';
import {
  type L7Report,
  type L7Round,
  emptyL7Metrics,
  fillAdded,
  l7Markdown,
  l7Medians,
  l7PolicyCost,
  l7Targets,
  l7TextTable,
} from './report.js';
import { startUpstream } from './upstream.js';
import { runWrk, writeWrkScript, wrkBin, wrkVersion } from './wrk.js';

const here = dirname(fileURLToPath(import.meta.url)); // dist/bench/l7
const root = resolve(here, '..', '..', '..');

interface Profile {
  rounds: number;
  wrkSeconds: number;
  wrkWarmupSeconds: number;
  wrkConns: number;
  rate: number;
  rateCount: number;
  rateWarmup: number;
  rateConns: number;
  backgroundSampleMs: number;
}

const FULL: Profile = {
  rounds: 3,
  wrkSeconds: 10,
  wrkWarmupSeconds: 2,
  wrkConns: 16,
  rate: 1000,
  rateCount: 10_000,
  rateWarmup: 1000,
  rateConns: 8,
  backgroundSampleMs: 2000,
};

const SMOKE: Profile = {
  rounds: 1,
  wrkSeconds: 1,
  wrkWarmupSeconds: 0,
  wrkConns: 16,
  rate: 1000,
  rateCount: 500,
  rateWarmup: 200,
  rateConns: 8,
  backgroundSampleMs: 500,
};

const INSTALL = 'install it with `apt-get install -y nginx haproxy wrk` (or run bench/install.sh)';

const log = (msg: string): void => {
  process.stderr.write(`[bench:l7] ${msg}\n`);
};

type Gen = LoadGen<RateJob, RateResult>;

const rateJob = (port: number, count: number, prof: Profile): RateJob => ({
  kind: 'rate',
  port,
  count,
  rate: prof.rate,
  conns: prof.rateConns,
});
/** Twice the schedule's length, plus start-up: a run that overruns it is broken, not slow. */
const rateTimeout = (count: number, prof: Profile): number => 20_000 + (count / prof.rate) * 2000;

const MB = 1e6;
const toMB = (bytes: number): number => Math.round((bytes / MB) * 10) / 10;

/** One contender, one round: start, warm up, fixed rate (latency, CPU), most requests/s, memory, stop. */
async function measure(
  c: L7Contender,
  result: L7Round,
  ctx: { work: string; upstreamPort: number; upstreamPids: readonly number[]; fileLimit: number },
  gen: Gen,
  prof: Profile,
  script: string,
): Promise<void> {
  const m = result.metrics;
  const dir = join(ctx.work, `${c.name}-${result.round}`);
  await mkdir(dir, { recursive: true });
  const step = async <T>(what: string, fn: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await fn();
    } catch (e) {
      const msg = `${what}: ${(e as Error).message}`;
      result.errors.push(msg);
      log(`  round ${result.round} ${c.name}: ${msg}`);
      return undefined;
    }
  };
  const running: Running | undefined = await step('start', () =>
    c.start({ root, dir, upstreamPort: ctx.upstreamPort, fileLimit: ctx.fileLimit }),
  );
  if (!running) return;
  try {
    const { port, pids } = running;
    const all = [...pids, ...ctx.upstreamPids];
    await step('warm-up', async () => {
      await gen.run(rateJob(port, prof.rateWarmup, prof), rateTimeout(prof.rateWarmup, prof));
      if (prof.wrkWarmupSeconds > 0) {
        await runWrk(port, { conns: prof.wrkConns, seconds: prof.wrkWarmupSeconds, script });
      }
    });

    result.detail.settleMs = await quiesce(all);
    const cpu0 = sumCpuFine(pids);
    const ticks0 = sumCpu(pids);
    const rate = await step('fixed rate', () =>
      gen.run<RateResult>(rateJob(port, prof.rateCount, prof), rateTimeout(prof.rateCount, prof)),
    );
    const cpuSeconds = sumCpuFine(pids) - cpu0;
    const tickSeconds = sumCpu(pids) - ticks0;
    if (rate) {
      result.detail.rate = { ...rate, cpuSeconds, cpuSecondsFromTicks: tickSeconds };
      if (rate.errors > 0) result.errors.push(`fixed rate: ${rate.errors} of ${prof.rateCount} failed`);
      if (rate.count > 0) {
        m.rateP50us = rate.p50us;
        m.rateP99us = rate.p99us;
      }
      if (pids.length > 0) m.cpuUsPerReq = Math.round((cpuSeconds * 1e7) / prof.rateCount) / 10;
    }

    await quiesce(all);
    const up0 = sumCpuFine(ctx.upstreamPids);
    const wrk = await step('most requests/s', () =>
      runWrk(port, { conns: prof.wrkConns, seconds: prof.wrkSeconds, script }),
    );
    const upstreamCpu = sumCpuFine(ctx.upstreamPids) - up0;
    if (wrk) {
      // How busy the upstream was: near 1.0 would mean it, not the hop, set the pace.
      const upstreamCores = wrk.seconds > 0 ? Math.round((upstreamCpu / wrk.seconds) * 100) / 100 : null;
      result.detail.wrk = { ...wrk, upstreamCores };
      if (wrk.errors > 0) result.errors.push(`most requests/s: ${wrk.errors} of ${wrk.requests} failed`);
      m.rps = wrk.rps;
    }

    if (pids.length > 0) {
      m.rssEndMB = toMB(sumRss(pids));
      m.rssPeakMB = toMB(pids.reduce((s, p) => s + peakRssBytes(p), 0));
      result.detail.pids = pids.length;
    }
  } finally {
    await running.stop();
  }
}

// ---- main

interface Cli {
  smoke: boolean;
  only: L7Name[];
  rounds: number | undefined;
  out: string;
}

function parseCli(): Cli {
  const { values } = parseArgs({
    options: {
      smoke: { type: 'boolean', default: false },
      only: { type: 'string' },
      rounds: { type: 'string' },
      out: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(
      `usage: node dist/bench/l7/run.js [--smoke] [--only ${L7_ALL.join(',')}] [--rounds N] [--out DIR]\n`,
    );
    process.exit(0);
  }
  const only = (values.only ?? L7_NAMES.join(','))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const o of only) {
    if (!(L7_ALL as readonly string[]).includes(o)) {
      throw new Error(`--only: unknown contender "${o}" (known: ${L7_ALL.join(', ')})`);
    }
  }
  let rounds: number | undefined;
  if (values.rounds !== undefined) {
    rounds = Number(values.rounds);
    if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) throw new Error('--rounds must be 1..20');
  }
  const out = resolve(values.out ?? join(root, 'bench', 'results', values.smoke ? 'smoke' : ''));
  return { smoke: values.smoke ?? false, only: only as L7Name[], rounds, out };
}

async function main(): Promise<void> {
  const cli = parseCli();
  const prof: Profile = { ...(cli.smoke ? SMOKE : FULL) };
  if (cli.rounds !== undefined) prof.rounds = cli.rounds;
  const started = Date.now();
  const fileLimit = raiseFileLimit(131_072) || 1024;

  // The upstream is nginx and the most-requests load is wrk: without them there is no L7 bench at all.
  if (!nginxBin()) throw new Error(`nginx (the upstream server) is not installed: ${INSTALL}`);
  if (!wrkBin()) throw new Error(`wrk (the load generator) is not installed: ${INSTALL}`);

  const found = await findContenders(cli.only);
  if (found.notBuilt.length > 0) {
    log(
      `not built yet: ${found.notBuilt.join(', ')} (bench/l7/contenders/<name>.ts, once the waypoint lands)`,
    );
  }
  const missing: string[] = [];
  const selected: L7Name[] = [];
  for (const [name, c] of found.available) {
    const why = c.missing(root);
    if (why) {
      missing.push(`${name}: ${why}`);
      log(`MISSING ${name}: ${why}; measuring the others`);
    } else {
      selected.push(name);
    }
  }
  if (selected.length === 0) throw new Error('nothing to measure');

  const work = await mkdtemp(join(tmpdir(), 'ambit-bench-l7-'));
  const gen: Gen = new LoadGen<RateJob, RateResult>(join(here, 'rategen.js'), 'l7 rategen');
  const interrupted = stopOnSignals(log);

  try {
    const machine = describeMachine(fileLimit);
    machine.cpuPressureAtStart = cpuPressure60();
    machine.backgroundCpuPercent = await backgroundCpuPercent(prof.backgroundSampleMs);
    if (machine.backgroundCpuPercent > 10 || (machine.cpuPressureAtStart ?? 0) > 10) {
      log(
        `WARNING: the machine is busy before the bench starts (${machine.backgroundCpuPercent}% CPU, ` +
          `pressure ${machine.cpuPressureAtStart ?? '?'}%): figures will be noisy, latencies above all`,
      );
    }
    const versions: Record<string, string> = {
      node: process.version,
      wrk: wrkVersion(),
      upstream: `${nginxVersion()}, return 200 with 1 KiB, 1 worker`,
    };
    for (const [name, c] of found.available) versions[name] = c.missing(root) ? 'missing' : c.version(root);
    log(
      `${cli.smoke ? 'smoke' : 'full'} run: ${selected.join(', ')}; ${prof.rounds} round(s); results to ${cli.out}`,
    );

    const script = await writeWrkScript(work);
    const upstream = await startUpstream(join(work, 'upstream'), fileLimit);
    const upstreamPids = processTree(upstream.proc.pid);
    const rounds: L7Round[] = [];
    for (let round = 1; round <= prof.rounds; round++) {
      if (interrupted()) throw new Error('interrupted');
      const order = selected.map((_, k) => selected[(k + round - 1) % selected.length]!);
      const t0 = Date.now();
      for (const name of order) {
        const result: L7Round = { round, contender: name, metrics: emptyL7Metrics(), detail: {}, errors: [] };
        rounds.push(result);
        await measure(
          found.available.get(name)!,
          result,
          { work, upstreamPort: upstream.port, upstreamPids, fileLimit },
          gen,
          prof,
          script,
        );
        const mm = result.metrics;
        log(
          `round ${round} ${name}: ${mm.rps ?? '—'} req/s, at ${prof.rate}/s p50 ${mm.rateP50us ?? '—'} µs ` +
            `p99 ${mm.rateP99us ?? '—'} µs, CPU ${mm.cpuUsPerReq ?? '—'} µs/req, RSS peak ${mm.rssPeakMB ?? '—'} MB`,
        );
      }
      log(`round ${round}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
    await gen.close();
    await stopProcess(upstream.proc, 2000);
    fillAdded(rounds);

    machine.cpuPressureAtEnd = cpuPressure60();
    const medians = l7Medians(rounds);
    const date = new Date().toISOString();
    const report: L7Report = {
      schema: 1,
      kind: 'l7',
      mode: cli.smoke ? 'smoke' : 'full',
      date,
      durationSeconds: Math.round((Date.now() - started) / 100) / 10,
      machine,
      versions,
      settings: { ...prof, bodyBytes: 1024, fileLimit },
      contenders: cli.only.map((name) => {
        const c = found.available.get(name);
        if (!c) return { name, present: false, notBuilt: true };
        const why = missing.find((m) => m.startsWith(`${name}:`));
        return why
          ? { name, present: false, missing: why, description: c.description }
          : { name, present: true, description: c.description };
      }),
      rounds,
      medians,
      targets: l7Targets(medians),
      policyCost: l7PolicyCost(rounds, medians),
      missing,
    };
    await mkdir(cli.out, { recursive: true });
    const stamp = date.replace(/[:.]/g, '-');
    const json = `${JSON.stringify(report, null, 2)}\n`;
    await writeFile(join(cli.out, `l7-${stamp}.json`), json);
    await writeFile(join(cli.out, 'l7-latest.json'), json);
    await writeFile(join(cli.out, 'l7-latest.md'), l7Markdown(report));
    process.stdout.write(`\n${l7TextTable(report)}\n\n`);
    if (found.notBuilt.length) process.stdout.write(`Not built yet: ${found.notBuilt.join(', ')}\n`);
    if (missing.length) process.stdout.write(`Not measured:\n${missing.map((m) => `  ${m}`).join('\n')}\n`);
    const errs = rounds.flatMap((r) => r.errors.map((e) => `round ${r.round} ${r.contender}: ${e}`));
    if (errs.length) process.stdout.write(`Errors:\n${errs.map((e) => `  ${e}`).join('\n')}\n`);
    process.stdout.write(
      `\nWrote ${join(cli.out, `l7-${stamp}.json`)}, l7-latest.json, l7-latest.md (${report.durationSeconds} s)\n`,
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
  process.stderr.write(`bench:l7: ${interrupted ? 'interrupted' : ((err as Error).stack ?? String(err))}\n`);
  await killAll();
  process.exit(interrupted ? 130 : 1);
});
