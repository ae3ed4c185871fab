// Consul hands its regexes to Envoy's safe_regex and go-bexpr to Go's regexp: both RE2. JavaScript's
// RegExp is a superset in some ways (lookaround, backreferences) and spells some things differently
// (`(?P<name>`, leading `(?i)`), so a pattern is checked and translated once, at validation: one that RE2
// would refuse is refused here too rather than matched differently.

const FLAGS = /^\(\?([imsU]+)\)/;

/** A JS RegExp for an RE2 pattern (anchored at both ends when `full`, as Envoy matches), or a reason. */
export function compileRe2(pattern: string, full: boolean): RegExp | string {
  let src = pattern;
  let flags = '';
  const f = FLAGS.exec(src);
  if (f) {
    if (f[1]!.includes('U')) return 'the U (ungreedy) flag is not supported';
    flags = [...new Set(f[1]!)].join('');
    src = src.slice(f[0].length);
  }
  if (/\(\?<?[=!]/.test(src)) return 'lookaround assertions are not RE2 syntax';
  if (/\\[1-9]|\\k</.test(src)) return 'backreferences are not RE2 syntax';
  if (/\(\?[a-zA-Z]+[:)]/.test(src.replace(/\(\?P?<[A-Za-z_]\w*>/g, '')))
    return 'inline flag groups are only supported at the start of the pattern';
  if (/\[\[:[a-z]+:\]\]/.test(src)) return 'POSIX character classes are not supported; use \\d, \\w, \\s';
  src = src
    .replace(/\(\?P</g, '(?<')
    .replace(/\\z/g, '(?![\\s\\S])')
    .replace(/\\A/g, '^');
  const unicode = /\\[pP]/.test(src);
  try {
    return new RegExp(full ? `^(?:${src})$` : src, flags + (unicode ? 'u' : ''));
  } catch (e) {
    return `invalid regular expression: ${(e as Error).message.replace(/^Invalid regular expression: /, '')}`;
  }
}
