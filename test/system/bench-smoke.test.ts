// The bench's smoke mode, so that the bench never rots: it runs (small sizes), writes its files, and every
// contender present on this machine produced numbers. No figure is compared with anything: machines differ.

import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import type { Report } from '../../bench/report.js';
import { ROOT } from '../helpers/paths.js';

const root = ROOT;

const run = (args: string[], timeoutMs: number): Promise<{ code: number; stdout: string; stderr: string }> =>
  new Promise((done) => {
    execFile(
      process.execPath,
      [join(root, 'dist/bench/run.js'), ...args],
      { cwd: root, timeout: timeoutMs, killSignal: 'SIGTERM', maxBuffer: 16 * 2 ** 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        done({ code, stdout, stderr });
      },
    );
  });

// Measured by every contender that has processes of its own; direct TCP has none to weigh.
const ALWAYS = ['bulk1MBps', 'bulk8MBps', 'pingP50us', 'pingP99us', 'rateP50us', 'rateP99us', 'connPerSec'];
const PROCESS = ['idleBytesPerConn', 'cpuSecPerGB'];

test('bench --smoke measures every contender present and writes JSON, SVG and Markdown', async (t) => {
  t.timeout(115_000);
  const out = await mkdtemp(join(tmpdir(), 'ambit-bench-smoke-'));
  try {
    const r = await run(['--smoke', '--out', out], 110_000);
    t.log(r.stdout);
    t.is(r.code, 0, r.stderr.slice(-4000));

    const report = JSON.parse(await readFile(join(out, 'latest.json'), 'utf8')) as Report;
    t.is(report.schema, 1);
    t.is(report.mode, 'smoke');
    t.truthy(Date.parse(report.date));
    for (const k of ['cpuModel', 'kernel', 'os', 'node'] as const)
      t.truthy(report.machine[k], `machine.${k}`);
    t.true(report.machine.cores > 0);
    t.truthy(report.versions.node);
    t.truthy(report.versions.ambit);
    t.deepEqual(
      report.contenders.map((c) => c.name),
      ['direct', 'ambit', 'stunnel', 'haproxy'],
    );
    const present = report.contenders.filter((c) => c.present).map((c) => c.name);
    t.true(present.includes('direct') && present.includes('ambit'), 'direct and ambit always run');
    for (const c of report.contenders.filter((c) => !c.present)) {
      // A missing peer is named, with how to install it.
      t.regex(c.missing ?? '', /apt-get install -y stunnel4 haproxy/, c.name);
      t.is(report.versions[c.name], 'missing');
    }

    for (const name of present) {
      const rounds = report.rounds.filter((r) => r.contender === name);
      t.is(rounds.length, report.settings.rounds as number, `${name}: one result per round`);
      for (const r of rounds) {
        if (r.errors.length) t.log(`${name} round ${r.round}: ${r.errors.join('; ')}`);
        // The latency steps interleave every contender in one job: each still gets all its round trips.
        for (const [k, want] of [
          ['pingpong', report.settings.pingCount as number],
          ['rate', report.settings.rateCount as number],
        ] as const) {
          t.is(
            (r.detail[k] as { count?: number } | undefined)?.count,
            want,
            `${name} round ${r.round}: ${k}`,
          );
        }
      }
      const m = report.medians[name];
      t.truthy(m, `${name}: medians`);
      const keys = name === 'direct' ? ALWAYS : [...ALWAYS, ...PROCESS];
      for (const k of keys) {
        const v = (m as Record<string, number | null>)[k];
        t.true(typeof v === 'number' && v > 0, `${name}.${k} = ${v}`);
      }
      t.not(report.versions[name], 'missing');
    }
    // Ratios against each peer present and the better one; all five targets reported.
    for (const p of present.filter((p) => p === 'stunnel' || p === 'haproxy')) t.truthy(report.ratios[p], p);
    t.deepEqual(
      report.targets.map((x) => x.id),
      ['bulk1', 'bulk8', 'p50added', 'connps', 'idle'],
    );
    for (const x of report.targets) t.true(['met', 'missed', 'n/a'].includes(x.status));

    const svg = await readFile(join(out, 'latest.svg'), 'utf8');
    t.regex(svg, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    t.regex(svg, /<\/svg>\s*$/);
    const md = await readFile(join(out, 'latest.md'), 'utf8');
    t.regex(md, /\| Measure \| direct \| ambit/);
    t.regex(r.stdout, /Targets \(ambit against the better of stunnel and haproxy/);
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});
