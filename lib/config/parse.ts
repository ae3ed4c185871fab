import { isIP } from 'node:net';
import { Secret } from '../consul/secret.js';
import { ConfigError } from '../errors.js';
import { splitHostPort } from '../net/hostport.js';

/** Where a value came from, for the error: the file (if any) and the field, variable or flag. */
export interface Where {
  readonly file?: string;
  readonly field: string;
}

export interface Listen {
  readonly host: string;
  readonly port: number;
}

/**
 * How one setting is read. `I` is what a file, variable or flag may give; `O` what the daemon gets.
 * `arg` names the flag's argument in --help (empty for a switch); `show` prints a default for the docs
 * when the raw default would read badly (a bare port, a mark in decimal).
 */
export interface Parser<I, O> {
  readonly arg: string;
  parse(v: I, where: Where): O;
  show?(v: O): string;
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `500ms`, `30s`, `5m`, `24h`, `7d`, or a bare number of milliseconds. */
export function parseDuration(v: string | number, where: Where): number {
  if (typeof v === 'number' && Number.isFinite(v) && v >= 0) return v;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(String(v).trim());
  if (!m) throw new ConfigError(`must be a duration such as 30s, 5m or 24h, got ${JSON.stringify(v)}`, where);
  return Math.round(Number(m[1]) * UNITS[m[2] ?? 'ms']!);
}

/** `host:port`, `[v6]:port` or a bare port (bound on the default host). Port 0 picks a free port. */
export function parseListen(v: string | number, defaultHost: string, where: Where): Listen {
  const text = String(v).trim();
  let host = defaultHost;
  let portText = text;
  if (text.includes(':')) {
    // An unbracketed IPv6 host has no clear port: splitHostPort refuses it, and the port check below says so.
    const hp = splitHostPort(text);
    host = hp?.host ?? '';
    portText = hp?.port ?? '';
  }
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port > 65535) {
    throw new ConfigError(`must be host:port or a port number, got ${JSON.stringify(v)}`, where);
  }
  if (isIP(host) === 0 && host !== 'localhost')
    throw new ConfigError(`host must be an IP address, got ${JSON.stringify(host)}`, where);
  return { host, port };
}

export function oneOf<T extends string>(v: string, allowed: readonly T[], where: Where): T {
  if ((allowed as readonly string[]).includes(v)) return v as T;
  throw new ConfigError(`must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`, where);
}

export function positiveInt(v: number | string, where: Where): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1)
    throw new ConfigError(`must be a positive integer, got ${JSON.stringify(v)}`, where);
  return n;
}

export function nonNegativeInt(v: number | string, where: Where): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0)
    throw new ConfigError(`must be an integer >= 0, got ${JSON.stringify(v)}`, where);
  return n;
}

/** A socket mark: 1..0xffffffff, decimal or 0x hex. */
export function parseMark(v: number | string, where: Where): number {
  const n = typeof v === 'number' ? v : Number(String(v).trim());
  if (!Number.isInteger(n) || n < 1 || n > 0xffffffff)
    throw new ConfigError(`must be a mark between 1 and 0xffffffff, got ${JSON.stringify(v)}`, where);
  return n;
}

export function parseBool(v: boolean | string, where: Where): boolean {
  if (typeof v === 'boolean') return v;
  if (['true', '1', 'yes'].includes(v)) return true;
  if (['false', '0', 'no'].includes(v)) return false;
  throw new ConfigError(`must be true or false, got ${JSON.stringify(v)}`, where);
}

/** A list from a file (a YAML list) or the environment / a flag (comma-separated). */
export function listOf(v: string | readonly (string | number)[], where: Where): string[] {
  if (Array.isArray(v)) return v.map(String);
  if (typeof v === 'string')
    return v
      .split(',')
      .map((x) => x.trim())
      .filter((x) => x !== '');
  throw new ConfigError(`must be a list or a comma-separated string, got ${JSON.stringify(v)}`, where);
}

export function parsePortList(v: string | readonly number[], where: Where): number[] {
  return listOf(v, where).map((p) => {
    const n = Number(p);
    if (!Number.isInteger(n) || n < 1 || n > 65535)
      throw new ConfigError(`must list ports 1..65535, got ${JSON.stringify(p)}`, where);
    return n;
  });
}

export function parseCidrList(v: string | readonly string[], where: Where): string[] {
  return listOf(v, where).map((c) => {
    const [ip, bits, extra] = c.split('/');
    const fam = isIP(ip ?? '');
    const max = fam === 6 ? 128 : 32;
    if (
      fam === 0 ||
      extra !== undefined ||
      (bits !== undefined && !(Number(bits) >= 0 && Number(bits) <= max))
    )
      throw new ConfigError(`must list CIDRs such as 10.0.0.0/8, got ${JSON.stringify(c)}`, where);
    return c;
  });
}

// --- the parsers the schema's rows are made of ---------------------------------------------------------------

export const text = (arg: string): Parser<string, string> => ({ arg, parse: (v) => v });

export const ip = (arg: string): Parser<string, string> => ({
  arg,
  parse: (v, where) => {
    if (isIP(v) === 0) throw new ConfigError(`must be an IP address, got ${JSON.stringify(v)}`, where);
    return v;
  },
});

export const pattern = (arg: string, re: RegExp, message: string): Parser<string, string> => ({
  arg,
  parse: (v, where) => {
    if (!re.test(v)) throw new ConfigError(message, where);
    return v;
  },
});

/** A switch on the command line; `true`/`false`, `1`/`0`, `yes`/`no` in a file or variable. */
export const bool: Parser<boolean | string, boolean> = { arg: '', parse: parseBool };

export const duration: Parser<string | number, number> = { arg: '<duration>', parse: parseDuration };

export const count = (arg = '<n>'): Parser<number | string, number> => ({ arg, parse: positiveInt });

export const countOrZero = (arg = '<n>'): Parser<number | string, number> => ({ arg, parse: nonNegativeInt });

export const mark: Parser<number | string, number> = {
  arg: '<mark>',
  parse: parseMark,
  show: (n) => `0x${n.toString(16)}`,
};

export const choice = <T extends string>(allowed: readonly T[]): Parser<string, T> => ({
  arg: `<${allowed.join('|')}>`,
  parse: (v, where) => oneOf(v, allowed, where),
});

export const listen = (defaultHost: string): Parser<string | number, Listen> => ({
  arg: '<[host:]port>',
  parse: (v, where) => parseListen(v, defaultHost, where),
  show: (l) => (l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`),
});

export const portList: Parser<string | readonly number[], number[]> = {
  arg: '<port,...>',
  parse: parsePortList,
};

/** User names as useradd takes them (NAME_REGEX), or numeric uids. */
const USER = /^(\d+|[a-z_][a-z0-9_-]*\$?)$/;

export const userList: Parser<string | readonly (string | number)[], string[]> = {
  arg: '<user,...>',
  parse: (v, where) =>
    listOf(v, where).map((u) => {
      if (!USER.test(u))
        throw new ConfigError(`must list user names or uids, got ${JSON.stringify(u)}`, where);
      return u;
    }),
};

export const cidrList: Parser<string | readonly string[], string[]> = {
  arg: '<cidr,...>',
  parse: parseCidrList,
};

/** A value that dumps and logs print as `[redacted]` (an ACL token). */
export const secret = (arg: string): Parser<string, Secret> => ({
  arg,
  parse: (v) => new Secret(String(v).trim()),
});

/** A lower bound checked after parsing: a timer of 0 would cut everything at once, a typo, not a choice. */
export const atLeast = <I>(p: Parser<I, number>, min: number, shown: string): Parser<I, number> => ({
  ...p,
  parse: (v, where) => {
    const n = p.parse(v, where);
    if (n < min) throw new ConfigError(`must be at least ${shown}`, where);
    return n;
  },
});

/** A setting with no default: unset (or empty in a file) stays undefined. */
export const optional = <I, O>(p: Parser<I, O>): Parser<I | undefined, O | undefined> => ({
  arg: p.arg,
  parse: (v, where) => (v === undefined || v === '' ? undefined : p.parse(v, where)),
});
