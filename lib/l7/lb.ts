// Endpoint choice by the resolver's LoadBalancer, as Envoy carries out the policies Consul configures:
// round_robin (a cursor), random, least_request (the fewest in-flight among ChoiceCount random picks,
// default 2), ring_hash (a consistent-hash ring of MinimumRingSize..MaximumRingSize points, default
// 1024..8M) and maglev (a 65537-entry lookup table). The hash of a request comes from HashPolicies in
// order (header, cookie, query_parameter, SourceIP), combined as Envoy combines them, stopping at the first
// Terminal policy that yields a value; with none, a hash-based policy picks at random. Pickers are pure:
// the caller owns the state objects and injects `random`.

import type { Instance } from './endpoints.js';
import type { HashPolicy, LoadBalancer } from './entries.js';
import { hash32 } from './hash.js';
import { queryParam } from './match.js';

export type Random = () => number;

/** What the hash policies read from a request. Header names lower-case. */
export interface HashInput {
  path: string;
  headers: Readonly<Record<string, string | readonly string[] | undefined>>;
  sourceIp: string;
}

/** A cookie the data path must set on the response, as Envoy generates one for a cookie hash policy. */
export interface GeneratedCookie {
  name: string;
  value: string;
  path?: string;
  /** Milliseconds; absent for a session cookie. */
  ttl?: number;
}

export function cookieValue(
  header: string | readonly string[] | undefined,
  name: string,
): string | undefined {
  const all = header === undefined ? [] : typeof header === 'string' ? [header] : header;
  for (const line of all)
    for (const part of line.split(';')) {
      const eq = part.indexOf('=');
      if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
    }
  return undefined;
}

/** The request's hash under `policies`, or undefined when none applies; and any cookie to generate. */
export function requestHash(
  policies: readonly HashPolicy[] | undefined,
  req: HashInput,
): { hash: number | undefined; cookie?: GeneratedCookie } {
  let hash: number | undefined;
  let cookie: GeneratedCookie | undefined;
  for (const p of policies ?? []) {
    let value: string | undefined;
    if (p.SourceIP) value = req.sourceIp || undefined;
    else if (p.Field === 'header') {
      const v = req.headers[p.FieldValue!.toLowerCase()];
      value = v === undefined ? undefined : typeof v === 'string' ? v : v.join(',');
    } else if (p.Field === 'query_parameter') value = queryParam(req.path, p.FieldValue!);
    else if (p.Field === 'cookie') {
      value = cookieValue(req.headers.cookie, p.FieldValue!);
      const cc = p.CookieConfig;
      if (value === undefined && cc && (cc.Session || cc.TTL !== undefined)) {
        // As Envoy: a value derived from the client's address, so that its first request hashes as its next.
        value = hash32(`${req.sourceIp}/${p.FieldValue}`).toString(16).padStart(8, '0');
        cookie = {
          name: p.FieldValue!,
          value,
          ...(cc.Path ? { path: cc.Path } : {}),
          ...(cc.Session ? {} : { ttl: cc.TTL }),
        };
      }
    }
    if (value !== undefined) {
      const h = hash32(value);
      hash = hash === undefined ? h : (((hash << 1) | (hash >>> 31)) ^ h) >>> 0;
    }
    if (p.Terminal && hash !== undefined) break;
  }
  return cookie ? { hash, cookie } : { hash };
}

const keyOf = (i: Instance): string => `${i.address}:${i.port}`;

// --- stateless and stateful pickers ----------------------------------------------------------------------

export function pickRandom(instances: readonly Instance[], random: Random): Instance | undefined {
  if (instances.length === 0) return undefined;
  return instances[Math.min(instances.length - 1, Math.floor(random() * instances.length))];
}

export interface RoundRobinState {
  cursor: number;
}
export function pickRoundRobin(instances: readonly Instance[], state: RoundRobinState): Instance | undefined {
  if (instances.length === 0) return undefined;
  const i = instances[state.cursor % instances.length];
  state.cursor = (state.cursor + 1) % Number.MAX_SAFE_INTEGER;
  return i;
}

/** In-flight requests per instance id; the data path calls begin when it sends and end when it is done. */
export class LeastRequestState {
  readonly inflight = new Map<string, number>();
  begin(id: string): void {
    this.inflight.set(id, (this.inflight.get(id) ?? 0) + 1);
  }
  end(id: string): void {
    const n = (this.inflight.get(id) ?? 0) - 1;
    if (n <= 0) this.inflight.delete(id);
    else this.inflight.set(id, n);
  }
  of(id: string): number {
    return this.inflight.get(id) ?? 0;
  }
}

export function pickLeastRequest(
  instances: readonly Instance[],
  state: LeastRequestState,
  choiceCount: number,
  random: Random,
): Instance | undefined {
  if (instances.length === 0) return undefined;
  let best: Instance | undefined;
  for (let n = 0; n < Math.max(1, choiceCount); n++) {
    const c = pickRandom(instances, random)!;
    if (!best || state.of(c.id) < state.of(best.id)) best = c;
  }
  return best;
}

// --- ring hash --------------------------------------------------------------------------------------------

export interface Ring {
  hashes: Uint32Array;
  owners: Instance[];
}

export function buildRing(instances: readonly Instance[], min = 1024, max = 8 * 1024 * 1024): Ring {
  if (instances.length === 0) return { hashes: new Uint32Array(0), owners: [] };
  const size = Math.min(Math.max(min, instances.length), max);
  const per = Math.max(1, Math.ceil(size / instances.length));
  const points: { h: number; i: Instance }[] = [];
  for (const inst of instances)
    for (let r = 0; r < per; r++) points.push({ h: hash32(`${keyOf(inst)}_${r}`), i: inst });
  points.sort((a, b) => a.h - b.h || (keyOf(a.i) < keyOf(b.i) ? -1 : 1));
  return { hashes: Uint32Array.from(points, (p) => p.h), owners: points.map((p) => p.i) };
}

export function ringPick(ring: Ring, hash: number): Instance | undefined {
  const n = ring.hashes.length;
  if (n === 0) return undefined;
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ring.hashes[mid]! < hash) lo = mid + 1;
    else hi = mid;
  }
  return ring.owners[lo === n ? 0 : lo];
}

// --- maglev -----------------------------------------------------------------------------------------------

export const MAGLEV_TABLE_SIZE = 65537;

export function buildMaglev(instances: readonly Instance[], size = MAGLEV_TABLE_SIZE): Instance[] {
  const n = instances.length;
  if (n === 0) return [];
  const sorted = [...instances].sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : 1));
  const offset = sorted.map((i) => hash32(keyOf(i), 1) % size);
  const skip = sorted.map((i) => (hash32(keyOf(i), 2) % (size - 1)) + 1);
  const next = new Array<number>(n).fill(0);
  const table = new Array<Instance | undefined>(size);
  let filled = 0;
  // Each pass over the instances fills n entries; a slot search is bounded by the table size because skip
  // is coprime with the prime size, so the permutation visits every slot.
  while (filled < size) {
    for (let k = 0; k < n && filled < size; k++) {
      let c = (offset[k]! + next[k]! * skip[k]!) % size;
      while (table[c] !== undefined) {
        next[k]!++;
        c = (offset[k]! + next[k]! * skip[k]!) % size;
      }
      table[c] = sorted[k];
      next[k]!++;
      filled++;
    }
  }
  return table as Instance[];
}

export const maglevPick = (table: readonly Instance[], hash: number): Instance | undefined =>
  table.length === 0 ? undefined : table[hash % table.length];

// --- one picker per target --------------------------------------------------------------------------------

export interface Picked {
  instance: Instance | undefined;
  /** The request's hash, when a hash policy produced one. */
  hash?: number;
  cookie?: GeneratedCookie;
}

/**
 * A target's balancer: the policy's state (cursor, in-flight counts, ring or table, rebuilt only when the
 * instance set changes). One per target per waypoint.
 */
export class Picker {
  readonly rr: RoundRobinState = { cursor: 0 };
  readonly least = new LeastRequestState();
  #built = '';
  #from: readonly Instance[] | undefined;
  #ring: Ring | undefined;
  #table: Instance[] | undefined;
  constructor(readonly lb: LoadBalancer | undefined) {}

  /** `instances` is read, never kept changing: pass a new list when the instances change (resolveTarget does). */
  pick(instances: readonly Instance[], req: HashInput, random: Random): Picked {
    const policy = this.lb?.Policy ?? 'round_robin';
    if (policy === 'random') return { instance: pickRandom(instances, random) };
    if (policy === 'least_request')
      return {
        instance: pickLeastRequest(
          instances,
          this.least,
          this.lb?.LeastRequestConfig?.ChoiceCount ?? 2,
          random,
        ),
      };
    if (policy === 'round_robin') return { instance: pickRoundRobin(instances, this.rr) };
    const { hash, cookie } = requestHash(this.lb?.HashPolicies, req);
    const extra = cookie ? { cookie } : {};
    if (hash === undefined) return { instance: pickRandom(instances, random), ...extra };
    // The same list as last time (the usual case) is recognised without building its key.
    if (instances !== this.#from) {
      const key = instances.map(keyOf).join(',');
      this.#from = instances;
      if (key !== this.#built) {
        this.#built = key;
        this.#ring = undefined;
        this.#table = undefined;
      }
    }
    if (policy === 'ring_hash') {
      const rc = this.lb?.RingHashConfig;
      this.#ring ??= buildRing(
        instances,
        rc?.MinimumRingSize || 1024,
        rc?.MaximumRingSize || 8 * 1024 * 1024,
      );
      return { instance: ringPick(this.#ring, hash), hash, ...extra };
    }
    this.#table ??= buildMaglev(instances);
    return { instance: maglevPick(this.#table, hash), hash, ...extra };
  }
}
