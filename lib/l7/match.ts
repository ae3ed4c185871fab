// HTTP request matching as Envoy does it for the route matches and RBAC permissions Consul generates:
// paths compared without the query string (exact, prefix, or an RE2 regex over the whole path), a
// CaseInsensitive option for exact and prefix only, headers by lower-case name with repeated values joined
// by ',' (Envoy's view), an inverted header match true when the header is absent, and query parameters
// by their first, undecoded value.

import type { HeaderMatch, PermissionHeader, QueryParamMatch } from './entries.js';
import { compileRe2 } from './regex.js';

export type Headers = Readonly<Record<string, string | readonly string[] | undefined>>;

/** One request as the waypoint sees it. `path` carries the query string; header names are lower-case. */
export interface L7Request {
  method: string;
  path: string;
  headers: Headers;
  sourceIp: string;
}

const regexes = new Map<string, RegExp>();
/** A validated RE2 pattern as an anchored RegExp, compiled once. */
export function fullRegex(pattern: string): RegExp {
  let re = regexes.get(pattern);
  if (!re) {
    const c = compileRe2(pattern, true);
    // Every pattern was checked at validation; a bad one here is a bug, not input.
    if (typeof c === 'string') throw new Error(`regex ${JSON.stringify(pattern)}: ${c}`);
    if (regexes.size > 10_000) regexes.clear();
    regexes.set(pattern, c);
    re = c;
  }
  return re;
}

export const pathOnly = (path: string): string => {
  const q = path.indexOf('?');
  return q < 0 ? path : path.slice(0, q);
};

export function pathMatches(
  m: { PathExact?: string; PathPrefix?: string; PathRegex?: string },
  path: string,
  caseInsensitive = false,
): boolean {
  const p = pathOnly(path);
  if (m.PathExact !== undefined)
    return caseInsensitive ? p.toLowerCase() === m.PathExact.toLowerCase() : p === m.PathExact;
  if (m.PathPrefix !== undefined)
    return caseInsensitive
      ? p.toLowerCase().startsWith(m.PathPrefix.toLowerCase())
      : p.startsWith(m.PathPrefix);
  if (m.PathRegex !== undefined) return fullRegex(m.PathRegex).test(p);
  return true;
}

export function headerValue(headers: Headers, name: string): string | undefined {
  const v = headers[name.toLowerCase()];
  return v === undefined ? undefined : typeof v === 'string' ? v : v.length ? v.join(',') : undefined;
}

export function headerMatches(h: HeaderMatch | PermissionHeader, headers: Headers): boolean {
  const value = headerValue(headers, h.Name);
  if (value === undefined) return h.Invert === true;
  const ic = 'IgnoreCase' in h && h.IgnoreCase === true;
  const v = ic ? value.toLowerCase() : value;
  const want = (s: string): string => (ic ? s.toLowerCase() : s);
  let hit: boolean;
  if (h.Present) hit = true;
  else if (h.Exact !== undefined) hit = v === want(h.Exact);
  else if (h.Prefix !== undefined) hit = v.startsWith(want(h.Prefix));
  else if (h.Suffix !== undefined) hit = v.endsWith(want(h.Suffix));
  else if ('Contains' in h && h.Contains !== undefined) hit = v.includes(want(h.Contains));
  else if (h.Regex !== undefined) hit = fullRegex(h.Regex).test(value);
  else hit = false;
  return h.Invert ? !hit : hit;
}

export function queryParam(path: string, name: string): string | undefined {
  const q = path.indexOf('?');
  if (q < 0) return undefined;
  for (const pair of path.slice(q + 1).split('&')) {
    const eq = pair.indexOf('=');
    if ((eq < 0 ? pair : pair.slice(0, eq)) === name) return eq < 0 ? '' : pair.slice(eq + 1);
  }
  return undefined;
}

export function queryMatches(m: QueryParamMatch, path: string): boolean {
  const v = queryParam(path, m.Name);
  if (v === undefined) return false;
  if (m.Present) return true;
  if (m.Exact !== undefined) return v === m.Exact;
  if (m.Regex !== undefined) return fullRegex(m.Regex).test(v);
  return false;
}

export const methodMatches = (methods: readonly string[] | undefined, method: string): boolean =>
  !methods || methods.length === 0 || methods.includes(method);
