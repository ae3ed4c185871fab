// Whether a string parses as a go-bexpr filter expression (hashicorp/go-bexpr grammar.peg), for the
// emulator's check of service-resolver subset filters: Consul's ServiceResolverConfigEntry.Validate calls
// bexpr.CreateEvaluator(filter, nil), which only parses (no data type, so selectors are not checked).
// The grammar followed: `or`/`and`/`not` and parentheses over match expressions
//   Selector (== | !=) Value · Selector is [not] empty · Value [not] in Selector ·
//   Selector [not] contains Value · Selector [not] matches Value
// where a Selector is an identifier followed by `.ident` or `["key"]` parts, and a Value a quoted or
// backquoted string, a number, true/false, or a bare word. The reason given is the emulator's own
// wording; bexpr's parser words its errors differently ("1:7 (6): no match found, expected: ...").

type Token = { kind: 'word' | 'string' | 'op' | 'paren' | 'bracket' | 'dot'; text: string; at: number };

function tokenize(s: string): Token[] | string {
  const out: Token[] = [];
  let i = 0;
  while (i < s.length) {
    const c = s[i]!;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (c === '(' || c === ')') out.push({ kind: 'paren', text: c, at: i++ });
    else if (c === '[' || c === ']') out.push({ kind: 'bracket', text: c, at: i++ });
    else if (c === '.' && !/\d/.test(s[i + 1] ?? '')) out.push({ kind: 'dot', text: c, at: i++ });
    else if (s.startsWith('==', i) || s.startsWith('!=', i)) {
      out.push({ kind: 'op', text: s.slice(i, i + 2), at: i });
      i += 2;
    } else if (c === '"' || c === '`') {
      const start = i++;
      while (i < s.length && s[i] !== c) i += c === '"' && s[i] === '\\' ? 2 : 1;
      if (i >= s.length) return `unterminated string at ${start + 1}`;
      out.push({ kind: 'string', text: s.slice(start + 1, i), at: start });
      i++;
    } else if (/[^\s()[\]"`=!.]/.test(c) || c === '.') {
      const start = i;
      while (i < s.length && /[^\s()[\]"`=!]/.test(s[i]!) && !(s[i] === '.' && !/\d/.test(s[i + 1] ?? '')))
        i++;
      out.push({ kind: 'word', text: s.slice(start, i), at: start });
    } else return `unexpected character ${JSON.stringify(c)} at ${i + 1}`;
  }
  return out;
}

const KEYWORDS = new Set(['and', 'or', 'not', 'in', 'is', 'empty', 'contains', 'matches']);
const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** undefined when `filter` parses as a bexpr expression, else why not. */
export function bexprError(filter: string): string | undefined {
  const toks = tokenize(filter);
  if (typeof toks === 'string') return toks;
  let p = 0;
  const peek = (o = 0): Token | undefined => toks[p + o];
  const isWord = (t: Token | undefined, w: string): boolean => t?.kind === 'word' && t.text === w;
  const fail = (what: string): never => {
    const t = peek();
    throw new Error(
      t ? `${what} at ${t.at + 1}, found ${JSON.stringify(t.text)}` : `${what} at end of input`,
    );
  };
  const selector = (): void => {
    const t = peek();
    if (t?.kind !== 'word' || !IDENT.test(t.text) || KEYWORDS.has(t.text)) fail('expected a selector');
    p++;
    for (;;) {
      if (peek()?.kind === 'dot') {
        p++;
        const n = peek();
        if (n?.kind !== 'word' || !IDENT.test(n.text)) fail('expected a field name');
        p++;
      } else if (peek()?.kind === 'bracket' && peek()?.text === '[') {
        p++;
        if (peek()?.kind !== 'string') fail('expected a quoted key');
        p++;
        if (peek()?.text !== ']') fail('expected "]"');
        p++;
      } else return;
    }
  };
  const value = (): void => {
    const t = peek();
    if (t?.kind === 'string' || (t?.kind === 'word' && !KEYWORDS.has(t.text))) {
      p++;
      return;
    }
    fail('expected a value');
  };
  const match = (): void => {
    // `Value in Selector` starts with a value that may look like a selector: decide by what follows.
    const second = peek(1);
    const third = peek(2);
    if (isWord(second, 'in') || (isWord(second, 'not') && isWord(third, 'in'))) {
      value();
      p += isWord(peek(), 'not') ? 2 : 1;
      selector();
      return;
    }
    selector();
    const t = peek();
    if (t?.kind === 'op') {
      p++;
      value();
      return;
    }
    if (isWord(t, 'is')) {
      p++;
      if (isWord(peek(), 'not')) p++;
      if (!isWord(peek(), 'empty')) fail('expected "empty"');
      p++;
      return;
    }
    if (isWord(t, 'not')) p++;
    if (isWord(peek(), 'contains') || isWord(peek(), 'matches')) {
      p++;
      value();
      return;
    }
    fail('expected an operator');
  };
  const unary = (): void => {
    if (isWord(peek(), 'not') && !isWord(peek(1), 'in')) {
      p++;
      unary();
      return;
    }
    if (peek()?.kind === 'paren' && peek()?.text === '(') {
      p++;
      or();
      if (peek()?.text !== ')') fail('expected ")"');
      p++;
      return;
    }
    match();
  };
  const and = (): void => {
    unary();
    while (isWord(peek(), 'and')) {
      p++;
      unary();
    }
  };
  const or = (): void => {
    and();
    while (isWord(peek(), 'or')) {
      p++;
      and();
    }
  };
  try {
    if (toks.length === 0) return 'empty expression';
    or();
    if (p < toks.length) fail('unexpected input');
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}
