// The resolver Subset `Filter` language: go-bexpr as Consul evaluates it over one service instance
// (a CheckServiceNode: `Service.*`, `Node.*`, `Checks`). No JavaScript library parses bexpr, and the
// grammar is small, so it is written here: tokenised and parsed once (compileFilter, at validation), then
// evaluated per instance with no allocation beyond the selector's value.
//
// Grammar (go-bexpr's, lowest precedence first):
//   expr  := and ('or' and)*
//   and   := unary ('and' unary)*
//   unary := 'not' unary | '(' expr ')' | match
//   match := selector ('==' | '!=') value
//          | selector 'is' ['not'] 'empty'
//          | selector ['not'] ('contains' | 'matches') value
//          | value ['not'] 'in' selector
//   value := "double-quoted" | `raw` | number | true | false | bare-word
//   selector := Ident ('.' Ident | '["' key '"]')*
// Semantics as go-bexpr's: `in`/`contains` test a list's members, a map's keys, or a string's substrings;
// `matches` is an unanchored RE2 match; a missing map key reads as the empty string. Unlike Consul, which
// checks only the syntax at write and meets an unknown selector at query time, an unknown selector or a
// type mismatch (`Service.Port == "x"`) is refused here at write.

import type { Instance } from './endpoints.js';
import { compileRe2 } from './regex.js';

export interface Filter {
  readonly source: string;
  test(instance: Instance): boolean;
}

type Kind = 'string' | 'number' | 'list' | 'map';
type Read = (i: Instance) => string | number | readonly string[] | Readonly<Record<string, string>>;

interface Selector {
  readonly path: string;
  readonly kind: Kind;
  readonly read: Read;
}

const checksOf = (i: Instance): readonly { CheckID: string; Name: string; Status: string }[] =>
  i.checks ?? [
    {
      CheckID: 'serfHealth',
      Name: 'Serf Health Status',
      Status: i.passing ? 'passing' : i.warning ? 'warning' : 'critical',
    },
  ];

const FIELDS: Record<string, { kind: Kind; read: Read }> = {
  'Service.ID': { kind: 'string', read: (i) => i.id },
  'Service.Service': { kind: 'string', read: (i) => i.service ?? '' },
  'Service.Address': { kind: 'string', read: (i) => i.address },
  'Service.Port': { kind: 'number', read: (i) => i.port },
  'Service.Tags': { kind: 'list', read: (i) => i.tags },
  'Service.Meta': { kind: 'map', read: (i) => i.meta },
  'Service.Kind': { kind: 'string', read: (i) => i.kind ?? '' },
  'Node.Node': { kind: 'string', read: (i) => i.node ?? '' },
  'Node.Address': { kind: 'string', read: (i) => i.nodeAddress ?? '' },
  'Node.Datacenter': { kind: 'string', read: (i) => i.datacenter ?? '' },
  'Node.Meta': { kind: 'map', read: (i) => i.nodeMeta },
  Checks: { kind: 'list', read: (i) => checksOf(i).map((c) => c.CheckID) },
  'Checks.Status': { kind: 'list', read: (i) => checksOf(i).map((c) => c.Status) },
  'Checks.CheckID': { kind: 'list', read: (i) => checksOf(i).map((c) => c.CheckID) },
  'Checks.Name': { kind: 'list', read: (i) => checksOf(i).map((c) => c.Name) },
};

function selector(parts: readonly string[]): Selector | string {
  const path = parts.join('.');
  const f = FIELDS[path];
  if (f) return { path, ...f };
  if (parts.length === 3 && (parts[0] === 'Service' || parts[0] === 'Node') && parts[1] === 'Meta') {
    const map = FIELDS[`${parts[0]}.Meta`]!.read;
    const key = parts[2]!;
    return { path, kind: 'string', read: (i) => (map(i) as Record<string, string>)[key] ?? '' };
  }
  return `selector "${path}" is not valid (known: ${Object.keys(FIELDS).join(', ')}, Service.Meta.<key>, Node.Meta.<key>)`;
}

// --- tokens -----------------------------------------------------------------------------------------------

type Tok =
  | { t: 'op'; v: '(' | ')' | '==' | '!='; at: number }
  | { t: 'str'; v: string; at: number }
  | { t: 'word'; v: string; at: number }
  | { t: 'sel'; v: string[]; at: number }
  | { t: 'end'; at: number };

const KEYWORDS = new Set(['and', 'or', 'not', 'in', 'contains', 'matches', 'is', 'empty']);

class FilterSyntaxError extends Error {}
const bad = (at: number, msg: string): never => {
  throw new FilterSyntaxError(`at ${at + 1}: ${msg}`);
};

function readQuoted(src: string, start: number): [string, number] {
  const q = src[start]!;
  let out = '';
  let i = start + 1;
  // Bounded by the source's length: each step consumes a character.
  while (i < src.length) {
    const c = src[i]!;
    if (c === q) return [out, i + 1];
    if (c === '\\' && q === '"') {
      const n = src[i + 1];
      const esc: Record<string, string> = { n: '\n', t: '\t', r: '\r', '"': '"', '\\': '\\' };
      if (n === undefined || esc[n] === undefined) bad(i, `unknown escape "\\${n ?? ''}"`);
      out += esc[n!]!;
      i += 2;
      continue;
    }
    out += c;
    i++;
  }
  return bad(start, 'unterminated string');
}

function tokenize(src: string): Tok[] {
  const toks: Tok[] = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (c === '(' || c === ')') {
      toks.push({ t: 'op', v: c, at: i });
      i++;
    } else if (src.startsWith('==', i) || src.startsWith('!=', i)) {
      toks.push({ t: 'op', v: src.slice(i, i + 2) as '==' | '!=', at: i });
      i += 2;
    } else if (c === '"' || c === '`') {
      const [v, next] = readQuoted(src, i);
      toks.push({ t: 'str', v, at: i });
      i = next;
    } else {
      const m = /^[A-Za-z0-9_\-+.:/]+/.exec(src.slice(i));
      if (!m) return bad(i, `unexpected "${c}"`);
      let word = m[0];
      let end = i + word.length;
      // A selector may continue with ["key"] indexes: Service.Meta["a.b"].
      const parts = /^[A-Za-z_]/.test(word) && !word.endsWith('.') ? word.split('.') : null;
      if (parts && src[end] === '[') {
        while (src[end] === '[') {
          if (src[end + 1] !== '"') bad(end, 'an index must be a quoted key: ["key"]');
          const [key, after] = readQuoted(src, end + 1);
          if (src[after] !== ']') bad(after, 'expected "]"');
          parts.push(key);
          end = after + 1;
        }
        word = src.slice(i, end);
      }
      if (KEYWORDS.has(word)) toks.push({ t: 'word', v: word, at: i });
      else if (parts?.every((p, n) => n > 0 || /^[A-Za-z_][A-Za-z0-9_]*$/.test(p)))
        toks.push({ t: 'sel', v: parts, at: i });
      else toks.push({ t: 'str', v: word, at: i });
      i = end;
    }
  }
  toks.push({ t: 'end', at: src.length });
  return toks;
}

// --- parser -----------------------------------------------------------------------------------------------

type Test = (i: Instance) => boolean;

class Parser {
  #n = 0;
  constructor(readonly toks: Tok[]) {}
  peek(): Tok {
    return this.toks[this.#n]!;
  }
  next(): Tok {
    return this.toks[this.#n++]!;
  }
  isWord(v: string): boolean {
    const t = this.peek();
    return t.t === 'word' && t.v === v;
  }
  expectWord(v: string): void {
    const t = this.next();
    if (t.t !== 'word' || t.v !== v) bad(t.at, `expected "${v}"`);
  }

  expr(): Test {
    const parts = [this.and()];
    while (this.isWord('or')) {
      this.next();
      parts.push(this.and());
    }
    return parts.length === 1 ? parts[0]! : (i) => parts.some((p) => p(i));
  }
  and(): Test {
    const parts = [this.unary()];
    while (this.isWord('and')) {
      this.next();
      parts.push(this.unary());
    }
    return parts.length === 1 ? parts[0]! : (i) => parts.every((p) => p(i));
  }
  unary(): Test {
    const t = this.peek();
    if (t.t === 'word' && t.v === 'not') {
      this.next();
      const inner = this.unary();
      return (i) => !inner(i);
    }
    if (t.t === 'op' && t.v === '(') {
      this.next();
      const inner = this.expr();
      const close = this.next();
      if (close.t !== 'op' || close.v !== ')') bad(close.at, 'expected ")"');
      return inner;
    }
    return this.match();
  }

  sel(t: Tok): Selector {
    if (t.t !== 'sel') return bad(t.at, 'expected a selector such as Service.Meta.version');
    const s = selector(t.v);
    return typeof s === 'string' ? bad(t.at, s) : s;
  }

  value(): { v: string; at: number } {
    const t = this.next();
    if (t.t === 'str') return { v: t.v, at: t.at };
    // A bare word that looks like a selector is a value too on the right of == (go-bexpr allows it).
    if (t.t === 'sel') return { v: t.v.join('.'), at: t.at };
    return bad(t.at, 'expected a value');
  }

  match(): Test {
    const first = this.next();
    if (first.t === 'end') return bad(first.at, 'expected an expression');
    // `value [not] in selector`
    const negIn =
      this.isWord('not') &&
      this.toks[this.#n + 1]?.t === 'word' &&
      (this.toks[this.#n + 1] as { v: string }).v === 'in';
    if (this.isWord('in') || negIn) {
      if (negIn) this.next();
      this.next();
      if (first.t !== 'str' && first.t !== 'sel') return bad(first.at, 'expected a value before "in"');
      const value = first.t === 'str' ? first.v : first.v.join('.');
      const s = this.sel(this.next());
      const has = this.membership(s, value, first.at);
      return negIn ? (i) => !has(i) : has;
    }
    const s = this.sel(first);
    const op = this.next();
    if (op.t === 'op' && (op.v === '==' || op.v === '!=')) {
      const { v, at } = this.value();
      const eq = this.equality(s, v, at);
      return op.v === '==' ? eq : (i) => !eq(i);
    }
    if (op.t === 'word' && op.v === 'is') {
      const not = this.isWord('not');
      if (not) this.next();
      this.expectWord('empty');
      const empty: Test = (i) => {
        const x = s.read(i);
        return typeof x === 'number'
          ? false
          : typeof x === 'string' || Array.isArray(x)
            ? x.length === 0
            : Object.keys(x).length === 0;
      };
      if (s.kind === 'number') bad(op.at, `"is empty" does not apply to the number ${s.path}`);
      return not ? (i) => !empty(i) : empty;
    }
    let neg = false;
    let word = op;
    if (op.t === 'word' && op.v === 'not') {
      neg = true;
      word = this.next();
    }
    if (word.t === 'word' && word.v === 'contains') {
      const { v, at } = this.value();
      const has = this.membership(s, v, at);
      return neg ? (i) => !has(i) : has;
    }
    if (word.t === 'word' && word.v === 'matches') {
      const { v, at } = this.value();
      if (s.kind !== 'string') bad(op.at, `"matches" applies to strings, and ${s.path} is a ${s.kind}`);
      const re = compileRe2(v, false);
      if (typeof re === 'string') bad(at, re);
      const m: Test = (i) => (re as RegExp).test(s.read(i) as string);
      return neg ? (i) => !m(i) : m;
    }
    return bad(op.at, 'expected ==, !=, is empty, contains, matches, or in');
  }

  equality(s: Selector, v: string, at: number): Test {
    if (s.kind === 'number') {
      const n = Number(v);
      if (v.trim() === '' || !Number.isFinite(n)) bad(at, `${s.path} is a number; "${v}" is not`);
      return (i) => s.read(i) === n;
    }
    if (s.kind !== 'string') bad(at, `== and != apply to strings and numbers, and ${s.path} is a ${s.kind}`);
    return (i) => s.read(i) === v;
  }

  membership(s: Selector, v: string, at: number): Test {
    if (s.kind === 'list') return (i) => (s.read(i) as readonly string[]).includes(v);
    if (s.kind === 'map') return (i) => Object.hasOwn(s.read(i) as object, v);
    if (s.kind === 'string') return (i) => (s.read(i) as string).includes(v);
    return bad(at, `${s.path} is a number: "in" and "contains" apply to lists, maps and strings`);
  }
}

/** The compiled filter, or the reason the expression is not valid (with its 1-based position). */
export function compileFilter(source: string): Filter | string {
  try {
    const p = new Parser(tokenize(source));
    const test = p.expr();
    const rest = p.peek();
    if (rest.t !== 'end') bad(rest.at, 'unexpected text after the expression');
    return { source, test };
  } catch (e) {
    if (e instanceof FilterSyntaxError) return e.message;
    throw e;
  }
}
