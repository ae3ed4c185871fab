// Go's time.ParseDuration, since Consul's entries carry Go durations ("1.5s", "300ms", "1h2m"), and the
// integer nanoseconds that Consul's API answers for fields it does not format (PassiveHealthCheck's).

const UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  μs: 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

/** Milliseconds, or a reason the text is not a Go duration. */
export function parseGoDuration(text: string): number | string {
  let s = text;
  let sign = 1;
  if (s.startsWith('-') || s.startsWith('+')) {
    if (s[0] === '-') sign = -1;
    s = s.slice(1);
  }
  if (s === '0') return 0;
  if (s === '') return `invalid duration "${text}"`;
  let total = 0;
  const part = /^(\d*)(?:\.(\d*))?([a-zµμ]+)/;
  // Each step consumes at least one character, so the loop ends within text.length steps.
  while (s !== '') {
    const m = part.exec(s);
    if (!m || (m[1] === '' && (m[2] ?? '') === '')) return `invalid duration "${text}"`;
    const unit = UNIT_MS[m[3]!];
    if (unit === undefined) return `unknown unit "${m[3]}" in duration "${text}"`;
    total += Number(`${m[1] || '0'}.${m[2] || '0'}`) * unit;
    s = s.slice(m[0].length);
  }
  return sign * total;
}

/** A duration field: a Go duration string, or (as Consul's API answers some) integer nanoseconds. */
export function durationMs(v: unknown): number | string {
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) return `a number here is integer nanoseconds, not ${v}`;
    return v / 1e6;
  }
  if (typeof v === 'string') return parseGoDuration(v);
  return 'must be a Go duration string ("5s") or integer nanoseconds';
}
