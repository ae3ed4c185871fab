// Consul hands its regexes to Envoy's safe_regex and go-bexpr to Go's regexp: both RE2. JavaScript's
// RegExp is a superset in some ways (lookaround, backreferences) and spells some things differently
// (`(?P<name>`, a leading `(?i)`, `\A`, `\z`), so a pattern is checked and translated once, at
// validation: one that RE2 would refuse is refused here too rather than matched differently. What remains
// different is small: JavaScript's `\s` and `.` know a few more Unicode spaces and line ends.

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
  const t = translate(src);
  if (t.error !== undefined) return t.error;
  const unicode = /\\[pP]/.test(t.out);
  try {
    return new RegExp(full ? `^(?:${t.out})$` : t.out, flags + (unicode ? 'u' : ''));
  } catch (e) {
    return `invalid regular expression: ${(e as Error).message.replace(/^Invalid regular expression: /, '')}`;
  }
}

/**
 * The pattern in JavaScript's spelling, or what RE2 would refuse in it. One pass that steps over escapes
 * and character classes, so that `\(?=` or `[(?=]` stay literal text.
 */
function translate(src: string): { out: string; error?: undefined } | { error: string } {
  let out = '';
  let inClass = false;
  // One step per character or escape pair: bounded by the length.
  for (let i = 0; i < src.length; i++) {
    const c = src[i]!;
    if (c === '\\') {
      const n = src[i + 1] ?? '';
      if (/[1-9]/.test(n) || (n === 'k' && src[i + 2] === '<'))
        return { error: 'backreferences are not RE2 syntax' };
      if (n === 'Q' || n === 'E')
        return { error: '\\Q...\\E quoting is not supported; escape each character' };
      if (n === 'C') return { error: '\\C (any byte) is not supported' };
      out += !inClass && n === 'z' ? '(?![\\s\\S])' : !inClass && n === 'A' ? '^' : c + n;
      i++;
      continue;
    }
    if (inClass) {
      if (c === '[' && src[i + 1] === ':')
        return { error: 'POSIX character classes are not supported; use \\d, \\w, \\s' };
      if (c === ']') inClass = false;
      out += c;
      continue;
    }
    if (c === '[') {
      inClass = true;
      out += c;
      // A ] right after [ or [^ is a literal member, as in RE2; JavaScript needs it escaped.
      if (src[i + 1] === '^') out += src[++i];
      if (src[i + 1] === ']') {
        out += '\\]';
        i++;
      }
      continue;
    }
    if (c === '(' && src[i + 1] === '?') {
      const rest = src.slice(i + 2);
      if (/^<?[=!]/.test(rest)) return { error: 'lookaround assertions are not RE2 syntax' };
      const named = /^P?<([A-Za-z_]\w*)>/.exec(rest);
      if (named) {
        out += `(?<${named[1]}>`;
        i += 1 + named[0].length;
        continue;
      }
      if (rest.startsWith(':')) {
        out += c;
        continue;
      }
      return { error: 'inline flag groups are only supported at the start of the pattern' };
    }
    out += c;
  }
  return { out };
}
