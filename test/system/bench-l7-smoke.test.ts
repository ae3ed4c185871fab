// The L7 bench's smoke mode, so that it never rots: it runs in under 30 s, writes its files, and every
// contender present produced figures from requests that all came back. No figure is compared with
// anything: machines differ.

import { execFile } from 'node:child_process';
import { readFile, readdir, rm } from 'node:fs/promises';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { L7_NAMES } from '../../bench/l7/contender.js';
import type { L7Report } from '../../bench/l7/report.js';
import { which } from '../../bench/proc.js';
import { ROOT } from '../helpers/paths.js';

const missingTools = ['nginx', 'haproxy', 'wrk'].filter((t) => !which(t));

const run = (args: string[], timeoutMs: number): Promise<{ code: number; stdout: string; stderr: string }> =>
  new Promise((done) => {
    execFile(
      process.execPath,
      [join(ROOT, 'dist/bench/l7/run.js'), ...args],
      { cwd: ROOT, timeout: timeoutMs, killSignal: 'SIGTERM', maxBuffer: 16 * 2 ** 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        done({ code, stdout, stderr });
      },
    );
  });

interface RateDetail {
  count: number;
  errors: number;
}
interface WrkDetail {
  requests: number;
  errors: number;
}

if (missingTools.length > 0) {
  console.log(
    `bench:l7 smoke test skipped: missing ${missingTools.join(', ')} (apt-get install -y nginx haproxy wrk)`,
  );
  test.skip('bench:l7 --smoke measures every contender present and writes JSON and Markdown', () => {});
} else {
  test('bench:l7 --smoke measures every contender present and writes JSON and Markdown', async (t) => {
    t.timeout(40_000);
    const out = await mkdtemp(join(tmpdir(), 'ambit-bench-l7-smoke-'));
    try {
      // The run is killed at 30 s: a smoke run that takes longer has become a bench.
      const r = await run(['--smoke', '--out', out], 30_000);
      t.log(r.stdout);
      t.is(r.code, 0, r.stderr.slice(-4000));

      const files = await readdir(out);
      t.true(files.includes('l7-latest.md'), files.join(', '));
      t.true(
        files.some((f) => /^l7-\d{4}-\d\d-\d\dT.*\.json$/.test(f)),
        files.join(', '),
      );
      const report = JSON.parse(await readFile(join(out, 'l7-latest.json'), 'utf8')) as L7Report;
      t.is(report.kind, 'l7');
      t.is(report.mode, 'smoke');
      t.truthy(Date.parse(report.date));
      t.deepEqual(
        report.contenders.map((c) => c.name),
        [...L7_NAMES],
      );
      const present = report.contenders.filter((c) => c.present).map((c) => c.name);
      for (const name of ['direct', 'nginx', 'haproxy'] as const) t.true(present.includes(name), name);
      // A slot without its module is said to be not built, in the report and in the output.
      for (const c of report.contenders.filter((c) => c.notBuilt)) {
        t.false(c.present);
        t.regex(r.stdout, new RegExp(`Not built yet: .*${c.name}`));
      }

      const rateCount = report.settings.rateCount as number;
      for (const name of present) {
        const rounds = report.rounds.filter((x) => x.contender === name);
        t.is(rounds.length, report.settings.rounds as number, `${name}: one result per round`);
        for (const x of rounds) {
          t.deepEqual(x.errors, [], `${name} round ${x.round}`);
          const rate = x.detail.rate as RateDetail | undefined;
          // Every scheduled request came back 200 with the 1 KiB body.
          t.is(rate?.count, rateCount, `${name}: fixed-rate responses`);
          t.is(rate?.errors, 0, `${name}: fixed-rate errors`);
          const wrk = x.detail.wrk as WrkDetail | undefined;
          t.true((wrk?.requests ?? 0) > 0, `${name}: wrk requests`);
          t.is(wrk?.errors, 0, `${name}: wrk errors`);
        }
        const m = report.medians[name]!;
        t.truthy(m, `${name}: medians`);
        t.true((m.rps ?? 0) > 0, `${name}.rps = ${m.rps}`);
        t.true((m.rateP50us ?? 0) > 0, `${name}.rateP50us = ${m.rateP50us}`);
        t.true((m.rateP99us ?? 0) >= (m.rateP50us ?? 0), `${name}: p99 ≥ p50`);
        t.is(typeof m.p50AddedUs, 'number', `${name}.p50AddedUs`);
        if (name === 'direct') continue;
        // A hop has processes of its own: what they cost is its figure.
        t.true((m.cpuUsPerReq ?? 0) > 0, `${name}.cpuUsPerReq = ${m.cpuUsPerReq}`);
        t.true((m.rssEndMB ?? 0) > 0, `${name}.rssEndMB = ${m.rssEndMB}`);
        t.true((m.rssPeakMB ?? 0) >= (m.rssEndMB ?? 0), `${name}: peak RSS ≥ RSS at the end`);
        t.not(report.versions[name], 'missing');
      }
      // The targets are the waypoint's: listed when it was measured, announced as pending otherwise.
      if (present.includes('waypoint')) {
        t.deepEqual(
          report.targets.map((x) => x.id),
          ['cpu', 'rss', 'rps', 'p50added'],
        );
      } else {
        t.deepEqual(report.targets, []);
        t.regex(r.stdout, /Targets \(issue 15\): shown once a waypoint is measured/);
      }

      const md = await readFile(join(out, 'l7-latest.md'), 'utf8');
      t.regex(md, /\| Measure \| direct \| nginx \| haproxy/);
      t.regex(r.stdout, /Most requests\/s/);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
}
