// Medians, ratios, targets, and the three renderings of a run: a text table, a Markdown table, an SVG chart.

import { CONTENDERS, type ContenderName, PEERS } from './contenders.js';
import type { Machine } from './proc.js';

export const METRICS = [
  { key: 'bulk1MBps', label: 'Bulk, 1 connection', unit: 'MB/s', better: 'higher' },
  { key: 'bulk8MBps', label: 'Bulk, 8 connections', unit: 'MB/s', better: 'higher' },
  { key: 'pingP50us', label: 'Ping-pong 64 B p50', unit: 'µs', better: 'lower' },
  { key: 'pingP99us', label: 'Ping-pong 64 B p99', unit: 'µs', better: 'lower' },
  { key: 'rateP50us', label: 'At 1,000 req/s p50', unit: 'µs', better: 'lower' },
  { key: 'rateP99us', label: 'At 1,000 req/s p99', unit: 'µs', better: 'lower' },
  { key: 'connPerSec', label: 'New connections (c=32)', unit: 'conn/s', better: 'higher' },
  { key: 'idleBytesPerConn', label: 'RSS per idle connection', unit: 'B', better: 'lower' },
  { key: 'cpuSecPerGB', label: 'CPU per GB carried', unit: 's/GB', better: 'lower' },
] as const;

export type MetricKey = (typeof METRICS)[number]['key'];
export type Metrics = Record<MetricKey, number | null>;

export const emptyMetrics = (): Metrics => Object.fromEntries(METRICS.map((m) => [m.key, null])) as Metrics;

export interface RoundResult {
  round: number;
  contender: ContenderName;
  metrics: Metrics;
  /** Everything measured, raw (per job), for whoever wants more than the headline figures. */
  detail: Record<string, unknown>;
  errors: string[];
}

export interface Target {
  id: string;
  description: string;
  ambit: number | null;
  bestPeer: ContenderName | null;
  bestPeerValue: number | null;
  /** ambit ÷ best peer for throughput-like targets; ambit's figure for absolute ones. */
  value: number | null;
  goal: string;
  status: 'met' | 'missed' | 'n/a';
}

export interface Report {
  schema: 1;
  mode: 'full' | 'smoke';
  date: string;
  durationSeconds: number;
  machine: Machine;
  versions: Record<string, string>;
  settings: Record<string, unknown>;
  contenders: { name: ContenderName; present: boolean; missing?: string }[];
  rounds: RoundResult[];
  medians: Partial<Record<ContenderName, Metrics>>;
  /** ambit ÷ peer, per metric, for each peer and for the better peer on that metric. */
  ratios: Record<string, Partial<Record<MetricKey, number | null>>>;
  targets: Target[];
  missing: string[];
}

export function median(values: readonly (number | null)[]): number | null {
  const v = values.filter((x): x is number => x !== null && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

const roundTo = (v: number | null, digits: number): number | null =>
  v === null ? null : Math.round(v * 10 ** digits) / 10 ** digits;

export function mediansOf(rounds: readonly RoundResult[]): Partial<Record<ContenderName, Metrics>> {
  const out: Partial<Record<ContenderName, Metrics>> = {};
  for (const c of CONTENDERS) {
    const mine = rounds.filter((r) => r.contender === c);
    if (mine.length === 0) continue;
    const m = emptyMetrics();
    for (const { key } of METRICS) m[key] = roundTo(median(mine.map((r) => r.metrics[key])), 3);
    out[c] = m;
  }
  return out;
}

const betterOf = (better: 'higher' | 'lower', a: number, b: number): boolean =>
  better === 'higher' ? a > b : a < b;

/** The peer (stunnel or haproxy) with the better median on a metric, if any has one. */
export function bestPeer(
  medians: Partial<Record<ContenderName, Metrics>>,
  key: MetricKey,
): { name: ContenderName; value: number } | undefined {
  const better = METRICS.find((m) => m.key === key)!.better;
  let best: { name: ContenderName; value: number } | undefined;
  for (const p of PEERS) {
    const v = medians[p]?.[key];
    if (v === null || v === undefined) continue;
    if (!best || betterOf(better, v, best.value)) best = { name: p, value: v };
  }
  return best;
}

export function ratiosOf(
  medians: Partial<Record<ContenderName, Metrics>>,
): Record<string, Partial<Record<MetricKey, number | null>>> {
  const out: Record<string, Partial<Record<MetricKey, number | null>>> = {};
  const a = medians.ambit;
  if (!a) return out;
  const ratio = (x: number | null, y: number | null | undefined): number | null =>
    x === null || y === null || y === undefined || y === 0 ? null : roundTo(x / y, 3);
  for (const p of [...PEERS, 'direct' as const]) {
    if (!medians[p]) continue;
    out[p] = Object.fromEntries(METRICS.map((m) => [m.key, ratio(a[m.key], medians[p]?.[m.key])]));
  }
  const best: Partial<Record<MetricKey, number | null>> = {};
  for (const m of METRICS) best[m.key] = ratio(a[m.key], bestPeer(medians, m.key)?.value);
  if (PEERS.some((p) => medians[p])) out['best peer'] = best;
  return out;
}

export const IDLE_TARGET_BYTES = 16 * 1024;

export function targetsOf(medians: Partial<Record<ContenderName, Metrics>>): Target[] {
  const a = medians.ambit;
  const direct = medians.direct;
  const targets: Target[] = [];
  const relative = (id: string, key: MetricKey, factor: number, description: string): void => {
    const best = bestPeer(medians, key);
    const mine = a?.[key] ?? null;
    const value = mine !== null && best && best.value > 0 ? roundTo(mine / best.value, 3) : null;
    targets.push({
      id,
      description,
      ambit: mine,
      bestPeer: best?.name ?? null,
      bestPeerValue: best?.value ?? null,
      value,
      goal: `≥ ${factor.toFixed(1)}× the better peer`,
      status: value === null ? 'n/a' : value >= factor ? 'met' : 'missed',
    });
  };
  relative('bulk1', 'bulk1MBps', 1, 'Throughput, 1 connection');
  relative('bulk8', 'bulk8MBps', 1, 'Throughput, 8 connections');
  {
    // Added latency: the contender's p50 minus direct TCP's p50, from the same run.
    const base = direct?.pingP50us ?? null;
    const added = (v: number | null | undefined): number | null =>
      base === null || v === null || v === undefined ? null : roundTo(v - base, 1);
    let best: { name: ContenderName; value: number } | undefined;
    for (const p of PEERS) {
      const v = added(medians[p]?.pingP50us);
      if (v !== null && (!best || v < best.value)) best = { name: p, value: v };
    }
    const mine = added(a?.pingP50us);
    targets.push({
      id: 'p50added',
      description: 'p50 latency added over direct TCP (µs)',
      ambit: mine,
      bestPeer: best?.name ?? null,
      bestPeerValue: best?.value ?? null,
      value: mine,
      goal: '≤ the better peer',
      status: mine === null || !best ? 'n/a' : mine <= best.value ? 'met' : 'missed',
    });
  }
  relative('connps', 'connPerSec', 2, 'New connections per second');
  {
    const mine = a?.idleBytesPerConn ?? null;
    targets.push({
      id: 'idle',
      description: 'ambitd RSS per idle tunneled connection (both ends, bytes)',
      ambit: mine,
      bestPeer: null,
      bestPeerValue: null,
      value: mine,
      goal: `≤ ${IDLE_TARGET_BYTES} B (16 KiB)`,
      status: mine === null ? 'n/a' : mine <= IDLE_TARGET_BYTES ? 'met' : 'missed',
    });
  }
  return targets;
}

// ---- rendering

function fmt(v: number | null | undefined, key?: MetricKey): string {
  if (v === null || v === undefined) return '—';
  if (key === 'idleBytesPerConn') return v >= 10_240 ? `${(v / 1024).toFixed(1)} KiB` : `${Math.round(v)} B`;
  if (key === 'cpuSecPerGB') return v.toFixed(2);
  const a = Math.abs(v);
  if (a >= 100) return Math.round(v).toLocaleString('en-US');
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

const fmtRatio = (v: number | null | undefined): string =>
  v === null || v === undefined ? '—' : `${v.toFixed(2)}×`;

function columns(report: Report): { head: string[]; rows: string[][] } {
  const present = CONTENDERS.filter((c) => report.medians[c]);
  const ratioCols = Object.keys(report.ratios).filter((k) => k !== 'direct');
  const head = ['Measure', ...present, ...ratioCols.map((p) => `ambit ÷ ${p}`)];
  const rows = METRICS.map((m) => [
    `${m.label} (${m.unit}, ${m.better} is better)`,
    ...present.map((c) => fmt(report.medians[c]?.[m.key], m.key)),
    ...ratioCols.map((p) => fmtRatio(report.ratios[p]?.[m.key])),
  ]);
  return { head, rows };
}

/** Rows as aligned plain text: the first column to the left, the figures to the right. */
export function alignedTable(head: readonly string[], rows: readonly (readonly string[])[]): string[] {
  const all = [head, ...rows];
  const widths = head.map((_, i) => Math.max(...all.map((r) => [...(r[i] ?? '')].length)));
  const line = (r: readonly string[]): string =>
    r.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)];
}

/** Rows as a Markdown table, the figures right-aligned. */
export function markdownTable(head: readonly string[], rows: readonly (readonly string[])[]): string[] {
  return [
    `| ${head.join(' | ')} |`,
    `| ${head.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ];
}

export function textTable(report: Report): string {
  const { head, rows } = columns(report);
  const out = alignedTable(head, rows);
  out.push('', 'Targets (ambit against the better of stunnel and haproxy, same run):');
  for (const t of report.targets) out.push(`  ${targetLine(t)}`);
  return out.join('\n');
}

const signed = (v: number | null): string => (v === null ? '—' : v >= 0 ? `+${fmt(v)}` : `−${fmt(-v)}`);

function targetLine(t: Target): string {
  const mark = t.status === 'met' ? '[met]   ' : t.status === 'missed' ? '[MISSED]' : '[n/a]   ';
  let what: string;
  if (t.id === 'idle') what = `ambit ${fmt(t.ambit, 'idleBytesPerConn')}`;
  else if (t.id === 'p50added')
    what = `ambit ${signed(t.ambit)} µs vs ${t.bestPeer ?? '—'} ${signed(t.bestPeerValue)} µs`;
  else what = `ambit ${fmt(t.ambit)} vs ${t.bestPeer ?? '—'} ${fmt(t.bestPeerValue)} = ${fmtRatio(t.value)}`;
  return `${mark} ${t.description}: ${what} (goal ${t.goal})`;
}

export function markdown(report: Report): string {
  const { head, rows } = columns(report);
  const m = report.machine;
  const lines = [
    `Run ${report.date} (${report.mode}, ${report.settings.rounds} round(s), medians), ${m.cpuModel}, ${m.cores} cores, ` +
      `Linux ${m.kernel}, ${m.os}, Node ${m.node}.` +
      (m.backgroundCpuPercent !== undefined
        ? ` Background load before the run: ${m.backgroundCpuPercent}% CPU` +
          (m.cpuPressureAtStart !== undefined ? `, CPU pressure (PSI avg60) ${m.cpuPressureAtStart}%` : '') +
          '.'
        : ''),
    '',
    ...markdownTable(head, rows),
    '',
    '| Target | Result | Goal | Status |',
    '| --- | --- | --- | --- |',
    ...report.targets.map((t) => {
      const line = targetLine(t);
      const result = line.slice(line.indexOf(':') + 2, line.lastIndexOf(' (goal'));
      return `| ${t.description} | ${result} | ${t.goal} | ${t.status} |`;
    }),
    '',
    'Versions: ' +
      Object.entries(report.versions)
        .map(([k, v]) => `${k}: ${v}`)
        .join('; ') +
      '.',
  ];
  if (report.missing.length) lines.push('', `Not measured: ${report.missing.join('; ')}.`);
  return `${lines.join('\n')}\n`;
}

const COLORS: Record<ContenderName, string> = {
  direct: '#9e9e9e',
  ambit: '#1f77b4',
  stunnel: '#ff7f0e',
  haproxy: '#2ca02c',
  'ambit-w1': '#6baed6',
  'ambit-w2': '#08519c',
};

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Small multiples: one bar chart per measure, one bar per contender (medians). */
export function svgChart(report: Report): string {
  const present = CONTENDERS.filter((c) => report.medians[c]);
  const cols = 3;
  const panelW = 300;
  const panelH = 200;
  const top = 70;
  const rowsN = Math.ceil(METRICS.length / cols);
  const width = cols * panelW + 20;
  const height = top + rowsN * panelH + 30;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="10" y="20" font-size="15" font-weight="bold">Ambit bench: ambitd vs stunnel vs HAProxy vs direct TCP (loopback, mTLS 1.3, ECDSA P-256)</text>`,
    `<text x="10" y="38">${esc(`${report.date} · ${report.mode} · ${report.settings.rounds} round(s), medians · ${report.machine.cpuModel}, ${report.machine.cores} cores · Linux ${report.machine.kernel} · Node ${report.machine.node}`)}</text>`,
  ];
  present.forEach((c, i) => {
    const x = 10 + i * 110;
    out.push(`<rect x="${x}" y="48" width="12" height="12" fill="${COLORS[c]}"/>`);
    out.push(`<text x="${x + 16}" y="58">${c}</text>`);
  });
  METRICS.forEach((m, idx) => {
    const px = 10 + (idx % cols) * panelW;
    const py = top + Math.floor(idx / cols) * panelH;
    const values = present.map((c) => report.medians[c]?.[m.key] ?? null);
    const max = Math.max(1e-9, ...values.map((v) => v ?? 0));
    const chartTop = py + 52;
    const chartH = panelH - 85;
    const barW = Math.min(50, (panelW - 40) / Math.max(1, present.length) - 10);
    out.push(`<text x="${px + 5}" y="${py + 15}" font-weight="bold">${esc(m.label)}</text>`);
    out.push(
      `<text x="${px + 5}" y="${py + 29}" fill="#555">${esc(`${m.unit}, ${m.better} is better`)}</text>`,
    );
    out.push(
      `<line x1="${px + 10}" y1="${chartTop + chartH}" x2="${px + panelW - 20}" y2="${chartTop + chartH}" stroke="#333"/>`,
    );
    present.forEach((c, i) => {
      const v = values[i];
      const bx = px + 20 + i * (barW + 10);
      const h = v === null ? 0 : Math.max(1, (v / max) * chartH);
      if (v !== null) {
        out.push(
          `<rect x="${bx}" y="${(chartTop + chartH - h).toFixed(1)}" width="${barW}" height="${h.toFixed(1)}" fill="${COLORS[c]}"/>`,
        );
      }
      out.push(
        `<text x="${bx + barW / 2}" y="${(chartTop + chartH - h - 3).toFixed(1)}" text-anchor="middle">${v === null ? 'n/a' : esc(fmt(v, m.key))}</text>`,
      );
      out.push(
        `<text x="${bx + barW / 2}" y="${chartTop + chartH + 13}" text-anchor="middle" fill="#333">${c}</text>`,
      );
    });
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
