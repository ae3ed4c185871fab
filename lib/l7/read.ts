// A strict reader over the raw JSON/YAML of one config entry: every object is checked against the keys
// Consul knows at that level (Consul's decoder refuses the others), and every failure names the entry and
// the field path. Validation of meaning lives in the per-kind modules; this only knows shapes.

import { durationMs } from './duration.js';
import { L7ConfigError } from './errors.js';
import { compileRe2 } from './regex.js';

export type Obj = Record<string, unknown>;

export class Reader {
  constructor(
    readonly where: string,
    readonly entry: string,
  ) {}

  fail(path: string, reason: string): never {
    throw new L7ConfigError(this.where, this.entry, path, reason);
  }

  /**
   * An object whose keys are all among `known`, returned with Consul's spelling of each key: like Consul's
   * decoder (mapstructure, and its snake_case aliases), a key matches regardless of case and underscores.
   */
  obj(v: unknown, path: string, known: readonly string[]): Obj {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail(path, 'must be an object');
    const out: Obj = {};
    for (const [k, x] of Object.entries(v as Obj)) {
      const canon = known.includes(k) ? k : canonicalKey(k, known);
      if (canon === undefined) this.fail(join(path, k), `unknown field "${k}"`);
      if (Object.hasOwn(out, canon)) this.fail(join(path, k), `repeats the field ${canon}`);
      out[canon] = x;
    }
    return out;
  }

  /** An optional object field (absent or null is undefined). */
  optObj(o: Obj, key: string, path: string, known: readonly string[]): Obj | undefined {
    const v = o[key];
    return v === undefined || v === null ? undefined : this.obj(v, join(path, key), known);
  }

  str(o: Obj, key: string, path: string): string | undefined {
    const v = o[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') this.fail(join(path, key), 'must be a string');
    return v;
  }

  /** A string field where Consul's zero value (empty) means unset. */
  nonEmpty(o: Obj, key: string, path: string): string | undefined {
    const v = this.str(o, key, path);
    return v === '' ? undefined : v;
  }

  bool(o: Obj, key: string, path: string): boolean | undefined {
    const v = o[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'boolean') this.fail(join(path, key), 'must be true or false');
    return v;
  }

  num(o: Obj, key: string, path: string): number | undefined {
    const v = o[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(join(path, key), 'must be a number');
    return v;
  }

  /** A non-negative integer (Consul's uint fields). */
  uint(o: Obj, key: string, path: string): number | undefined {
    const v = this.num(o, key, path);
    if (v !== undefined && (!Number.isInteger(v) || v < 0))
      this.fail(join(path, key), 'must be a non-negative integer');
    return v;
  }

  /** A duration in milliseconds: a Go duration string or integer nanoseconds; never negative. */
  duration(o: Obj, key: string, path: string): number | undefined {
    const v = o[key];
    if (v === undefined || v === null || v === '') return undefined;
    const ms = durationMs(v);
    if (typeof ms === 'string') this.fail(join(path, key), ms);
    if (ms < 0) this.fail(join(path, key), 'must be >= 0');
    return ms;
  }

  arr(o: Obj, key: string, path: string): unknown[] | undefined {
    const v = o[key];
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v)) this.fail(join(path, key), 'must be a list');
    return v;
  }

  strArr(o: Obj, key: string, path: string): string[] | undefined {
    const a = this.arr(o, key, path);
    a?.forEach((x, i) => {
      if (typeof x !== 'string') this.fail(`${join(path, key)}[${i}]`, 'must be a string');
    });
    return a as string[] | undefined;
  }

  /** A map of string to string (Meta, header Add/Set). */
  strMap(o: Obj, key: string, path: string): Record<string, string> | undefined {
    const v = o[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'object' || Array.isArray(v)) this.fail(join(path, key), 'must be a map of strings');
    for (const [k, x] of Object.entries(v as Obj))
      if (typeof x !== 'string') this.fail(`${join(path, key)}.${k}`, 'must be a string');
    return { ...(v as Record<string, string>) };
  }

  /** A map of name to object (Subsets, Failover). */
  objMap(o: Obj, key: string, path: string): Record<string, unknown> | undefined {
    const v = o[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'object' || Array.isArray(v)) this.fail(join(path, key), 'must be a map');
    return v as Obj;
  }

  /** A regex field, checked as RE2 would check it. */
  regex(o: Obj, key: string, path: string): string | undefined {
    const v = this.nonEmpty(o, key, path);
    if (v !== undefined) {
      const re = compileRe2(v, true);
      if (typeof re === 'string') this.fail(join(path, key), re);
    }
    return v;
  }
}

const fold = (k: string): string => k.replaceAll('_', '').toLowerCase();
/** The known key that `k` spells, ignoring case and underscores (`path_prefix`, `pathprefix`: PathPrefix). */
export const canonicalKey = (k: string, known: readonly string[]): string | undefined =>
  known.find((c) => fold(c) === fold(k));

export const join = (path: string, key: string): string => (path === '' ? key : `${path}.${key}`);
/** A map key in a field path, as Consul prints it: `Failover["*"]`. */
export const keyed = (path: string, key: string): string => `${path}[${JSON.stringify(key)}]`;

/** Drops the fields that are undefined, so that entries print as Consul's JSON does (omitempty). */
export function compact<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) if (o[k] === undefined) delete o[k];
  return o;
}
