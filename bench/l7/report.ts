// The L7 bench's figures: per-round metrics, medians, the issue's targets, and the text and Markdown tables.

import type { Machine } from '../proc.js';
import { alignedTable, markdownTable, median } from '../report.js';
import { type L7Name, L7_ALL, L7_HOP, L7_PEERS, L7_SUBJECT } from './contender.js';

export const L7_METRICS = [
  { key: 'rps', label: 'Most requests/s (wrk, 16 connections)', unit: 'req/s', better: 'higher' },
  { key: 'rateP50us', label: 'p50 at 1,000 req/s', unit: 'µs', better: 'lower' },
  { key: 'rateP99us', label: 'p99 at 1,000 req/s', unit: 'µs', better: 'lower' },
  { key: 'p50AddedUs', label: 'p50 added over direct', unit: 'µs', better: 'lower' },
  { key: 'cpuUsPerReq', label: 'Hop CPU per request at 1,000 req/s', unit: 'µs', better: 'lower' },
  { key: 'rssPeakMB', label: 'Hop RSS, peak', unit: 'MB', better: 'lower' },
  { key: 'rssEndMB', label: 'Hop RSS at the end', unit: 'MB', better: 'lower' },
] as const;

export type L7MetricKey = (typeof L7_METRICS)[number]['key'];
export type L7Metrics = Record<L7MetricKey, number | null>;

export const emptyL7Metrics = (): L7Metrics =>
  Object.fromEntries(L7_METRICS.map((m) => [m.key, null])) as L7Metrics;

export interface L7Round {
  round: number;
  contender: L7Name;
  metrics: L7Metrics;
  detail: Record<string, unknown>;
  errors: string[];
}

export interface L7Target {
  id: 'cpu' | 'rss' | 'rps' | 'p50added';
  description: string;
  value: number | null;
  peer: L7Name | null;
  peerValue: number | null;
  goal: string;
  status: 'met' | 'missed' | 'n/a';
}

export interface L7Report {
  schema: 1;
  kind: 'l7';
  mode: 'full' | 'smoke';
  date: string;
  durationSeconds: number;
  machine: Machine;
  versions: Record<string, string>;
  settings: Record<string, unknown>;
  contenders: {
    name: L7Name;
    present: boolean;
    missing?: string;
    notBuilt?: boolean;
    description?: string;
  }[];
  rounds: L7Round[];
  medians: Partial<Record<L7Name, L7Metrics>>;
  /** Empty until the waypoint exists: the issue's targets are about it. */
  targets: L7Target[];
  /** Issue 16's policy cost, for each pair of contenders measured (empty when none is). */
  policyCost?: L7PolicyCost[];
  missing: string[];
}

const roundTo = (v: number | null, digits: number): number | null =>
  v === null ? null : Math.round(v * 10 ** digits) / 10 ** digits;

/** The latency each hop adds, per round: its p50 minus direct's p50 in the same round. */
export function fillAdded(rounds: L7Round[]): void {
  for (const r of rounds) {
    const base = rounds.find((d) => d.round === r.round && d.contender === 'direct')?.metrics.rateP50us;
    const mine = r.metrics.rateP50us;
    r.metrics.p50AddedUs =
      base === null || base === undefined || mine === null ? null : roundTo(mine - base, 1);
  }
}

export function l7Medians(rounds: readonly L7Round[]): Partial<Record<L7Name, L7Metrics>> {
  const out: Partial<Record<L7Name, L7Metrics>> = {};
  for (const c of L7_ALL) {
    const mine = rounds.filter((r) => r.contender === c);
    if (mine.length === 0) continue;
    const m = emptyL7Metrics();
    for (const { key } of L7_METRICS) m[key] = roundTo(median(mine.map((r) => r.metrics[key])), 1);
    out[c] = m;
  }
  return out;
}

/** What configured policies cost in CPU per request: a contender with them against the one without. */
export interface L7PolicyCost {
  readonly with: L7Name;
  readonly without: L7Name;
  /** The medians of CPU per request (µs). */
  readonly withUs: number | null;
  readonly withoutUs: number | null;
  /** Each round's `with` over its `without`, minus one, in percent (the pair ran in the same round). */
  readonly roundsPercent: number[];
  /** Their median: the figure, held against issue 16's 10%. */
  readonly percent: number | null;
}

/** The pairs issue 16's figure is read from: each with its policies, then the same without. */
export const POLICY_PAIRS: readonly (readonly [L7Name, L7Name])[] = [
  ['hop-policies', 'hop-chain'],
  ['hop-policies', 'hop'],
  ['waypoint-policies', 'waypoint'],
];
export const POLICY_COST_LIMIT_PERCENT = 10;

export function l7PolicyCost(
  rounds: readonly L7Round[],
  medians: Partial<Record<L7Name, L7Metrics>>,
): L7PolicyCost[] {
  const out: L7PolicyCost[] = [];
  for (const [w, wo] of POLICY_PAIRS) {
    if (!medians[w] || !medians[wo]) continue;
    const roundsPercent: number[] = [];
    for (const r of rounds) {
      if (r.contender !== w || r.metrics.cpuUsPerReq === null) continue;
      const base = rounds.find((b) => b.round === r.round && b.contender === wo)?.metrics.cpuUsPerReq;
      if (base) roundsPercent.push(roundTo((r.metrics.cpuUsPerReq / base - 1) * 100, 1)!);
    }
    out.push({
      with: w,
      without: wo,
      withUs: medians[w].cpuUsPerReq,
      withoutUs: medians[wo].cpuUsPerReq,
      roundsPercent,
      percent: roundTo(median(roundsPercent), 1),
    });
  }
  return out;
}

function policyLines(report: L7Report): string[] {
  return (report.policyCost ?? []).map(
    (p) =>
      `CPU per request, ${p.with} over ${p.without}: ${fmt(p.percent)}% (median of the rounds: ` +
      `${p.roundsPercent.map((x) => `${x}%`).join(', ')}; medians ${fmt(p.withUs)} vs ${fmt(p.withoutUs)} µs; ` +
      `issue 16: ≤ ${POLICY_COST_LIMIT_PERCENT}%)`,
  );
}

export const CPU_TARGET_US = 100;
/** Istio's published figure is 60 MB; read as 10⁶ bytes, the stricter reading. */
export const RSS_TARGET_MB = 60;

/** The issue's four targets for the waypoint, against the better of nginx and HAProxy (by requests/s). */
export function l7Targets(medians: Partial<Record<L7Name, L7Metrics>>): L7Target[] {
  const w = medians[L7_SUBJECT];
  if (!w) return [];
  const hop = medians[L7_HOP] ?? w;
  const hopName = medians[L7_HOP] ? 'the L7 hop alone' : 'the whole path';
  let peer: { name: L7Name; m: L7Metrics } | undefined;
  for (const p of L7_PEERS) {
    const m = medians[p];
    if (m?.rps !== null && m?.rps !== undefined && (!peer || m.rps > (peer.m.rps ?? 0)))
      peer = { name: p, m };
  }
  const status = (ok: boolean | null): L7Target['status'] => (ok === null ? 'n/a' : ok ? 'met' : 'missed');
  const rpsRatio = hop.rps !== null && peer?.m.rps ? roundTo(hop.rps / peer.m.rps, 2) : null;
  const peerAdded = peer?.m.p50AddedUs ?? null;
  const mineAdded = hop.p50AddedUs;
  return [
    {
      id: 'cpu',
      description: 'Waypoint CPU per request at 1,000 req/s (µs)',
      value: w.cpuUsPerReq,
      peer: null,
      peerValue: null,
      goal: `≤ ${CPU_TARGET_US} µs`,
      status: status(w.cpuUsPerReq === null ? null : w.cpuUsPerReq <= CPU_TARGET_US),
    },
    {
      id: 'rss',
      description: 'Waypoint RSS, peak (MB)',
      value: w.rssPeakMB,
      peer: null,
      peerValue: null,
      goal: `≤ ${RSS_TARGET_MB} MB`,
      status: status(w.rssPeakMB === null ? null : w.rssPeakMB <= RSS_TARGET_MB),
    },
    {
      id: 'rps',
      description: `Requests/s ÷ the better peer (${hopName})`,
      value: rpsRatio,
      peer: peer?.name ?? null,
      peerValue: peer?.m.rps ?? null,
      goal: '≥ 0.5× (aim 1×)',
      status: status(rpsRatio === null ? null : rpsRatio >= 0.5),
    },
    {
      id: 'p50added',
      description: `p50 added over direct (µs), against that peer (${hopName})`,
      value: mineAdded,
      peer: peer?.name ?? null,
      peerValue: peerAdded,
      goal: '≤ 2× the peer’s',
      status: status(
        mineAdded === null || peerAdded === null ? null : mineAdded <= 2 * Math.max(0, peerAdded),
      ),
    },
  ];
}

// ---- rendering

function fmt(v: number | null | undefined): string {
  if (v === null || v === undefined) return '—';
  const a = Math.abs(v);
  if (a >= 100) return Math.round(v).toLocaleString('en-US');
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function columns(report: L7Report): { head: string[]; rows: string[][] } {
  const present = L7_ALL.filter((c) => report.medians[c]);
  const head = ['Measure', ...present];
  const rows = L7_METRICS.map((m) => [
    `${m.label} (${m.unit}, ${m.better} is better)`,
    ...present.map((c) =>
      c === 'direct' && m.key !== 'rps' && !m.key.startsWith('rate') ? '—' : fmt(report.medians[c]?.[m.key]),
    ),
  ]);
  return { head, rows };
}

function targetLine(t: L7Target): string {
  const mark = t.status === 'met' ? '[met]   ' : t.status === 'missed' ? '[MISSED]' : '[n/a]   ';
  const vs = t.peer ? ` (${t.peer}: ${fmt(t.peerValue)})` : '';
  const v = t.id === 'rps' && t.value !== null ? `${t.value.toFixed(2)}×` : fmt(t.value);
  return `${mark} ${t.description}: ${v}${vs} (goal ${t.goal})`;
}

/** What is said in place of the targets while the waypoint is not there. */
function noTargets(report: L7Report): string {
  const w = report.contenders.find((c) => c.name === L7_SUBJECT);
  const why = !w ? 'not selected' : w.notBuilt ? 'not built yet' : w.missing ? 'missing' : 'no figures';
  return `Targets (issue 15): shown once a waypoint is measured (waypoint: ${why}).`;
}

export function l7TextTable(report: L7Report): string {
  const { head, rows } = columns(report);
  const out = alignedTable(head, rows);
  out.push('');
  if (report.targets.length === 0) out.push(noTargets(report));
  else {
    out.push('Targets (issue 15; the peer is the better of nginx and haproxy by requests/s, same run):');
    for (const t of report.targets) out.push(`  ${targetLine(t)}`);
  }
  const policies = policyLines(report);
  if (policies.length) out.push('', 'Policy cost (issue 16):', ...policies.map((l) => `  ${l}`));
  return out.join('\n');
}

export function l7Markdown(report: L7Report): string {
  const { head, rows } = columns(report);
  const m = report.machine;
  const lines = [
    `L7 run ${report.date} (${report.mode}, ${report.settings.rounds} round(s), medians), ${m.cpuModel}, ` +
      `${m.cores} cores, Linux ${m.kernel}, ${m.os}, Node ${m.node}.` +
      (m.backgroundCpuPercent !== undefined
        ? ` Background load before the run: ${m.backgroundCpuPercent}% CPU` +
          (m.cpuPressureAtStart !== undefined ? `, CPU pressure (PSI avg60) ${m.cpuPressureAtStart}%` : '') +
          '.'
        : ''),
    '',
    ...markdownTable(head, rows),
    '',
  ];
  if (report.targets.length === 0) lines.push(noTargets(report));
  else {
    lines.push('| Target | Waypoint | Peer | Goal | Status |', '| --- | ---: | --- | --- | --- |');
    for (const t of report.targets) {
      const v = t.id === 'rps' && t.value !== null ? `${t.value.toFixed(2)}×` : fmt(t.value);
      const peer = t.peer ? `${t.peer} ${fmt(t.peerValue)}` : '—';
      lines.push(`| ${t.description} | ${v} | ${peer} | ${t.goal} | ${t.status} |`);
    }
  }
  const policies = policyLines(report);
  if (policies.length) lines.push('', ...policies.map((l) => `- ${l}`));
  lines.push(
    '',
    `Versions: ${Object.entries(report.versions)
      .map(([k, v]) => `${k}: ${v}`)
      .join('; ')}.`,
  );
  if (report.missing.length) lines.push('', `Not measured: ${report.missing.join('; ')}.`);
  return `${lines.join('\n')}\n`;
}
