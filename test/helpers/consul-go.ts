// Go and hashicorp library behaviour the emulator reproduces in its answers: time.ParseDuration and
// time.Duration.String(), and hashicorp/go-multierror's error text.

const UNIT_NS: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** Go's time.ParseDuration, in nanoseconds; undefined where Go returns an error. */
export function parseGoDuration(s: string): number | undefined {
  if (s === '0' || s === '+0' || s === '-0') return 0;
  const m = /^([-+]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+$/.exec(s);
  if (!m) return undefined;
  let ns = 0;
  for (const [, num, unit] of s.matchAll(/(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/g))
    ns += Number(num) * UNIT_NS[unit!]!;
  return Math.round(m[1] === '-' ? -ns : ns);
}

/** Go's time.Duration.String(). */
export function goDuration(ns: number): string {
  if (ns === 0) return '0s';
  const sign = ns < 0 ? '-' : '';
  const a = Math.abs(ns);
  if (a < 1e3) return `${sign}${a}ns`;
  if (a < 1e6) return `${sign}${trim(a / 1e3)}µs`;
  if (a < 1e9) return `${sign}${trim(a / 1e6)}ms`;
  const h = Math.floor(a / 3600e9);
  const min = Math.floor((a % 3600e9) / 60e9);
  const sec = trim((a % 60e9) / 1e9);
  if (h > 0) return `${sign}${h}h${min}m${sec}s`;
  if (min > 0) return `${sign}${min}m${sec}s`;
  return `${sign}${sec}s`;
}

const trim = (x: number): string => String(Number(x.toFixed(9)));

/** hashicorp/go-multierror's format. */
export function multiError(errs: readonly string[]): string {
  const n = errs.length;
  return `${n} error${n === 1 ? '' : 's'} occurred:\n${errs.map((e) => `\t* ${e}`).join('\n')}\n\n`;
}
