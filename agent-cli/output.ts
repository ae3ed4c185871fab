// How the CLI prints: aligned tables for people, indented JSON for scripts (--json).

/** Left-aligned columns, two spaces apart, as kubectl and consul print them. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]): string =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

/** What --json prints: the value indented by two, one trailing newline. */
export const jsonText = (v: unknown): string => `${JSON.stringify(v, null, 2)}\n`;

/** "3d 4h", "5h 12m", "42s"; negative durations read "expired 5m ago". */
export function humanDuration(ms: number): string {
  const neg = ms < 0;
  let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const parts = d ? [`${d}d`, `${h}h`] : h ? [`${h}h`, `${m}m`] : m ? [`${m}m`, `${s}s`] : [`${s}s`];
  const txt = parts.join(' ');
  return neg ? `expired ${txt} ago` : txt;
}
