// How Consul decodes, normalises and checks a config entry written with PUT /v1/config, for the emulator.
// Each rule names the hashicorp/consul file it follows (docs/consul.md, "Sources", lists them):
// - agent/config_endpoint.go `ConfigApply`: a decoding error is 400 "Request decoding failed: <err>".
// - agent/structs/config_entry.go `DecodeConfigEntry`: mapstructure into the kind's struct (the structs
//   are in consul-config-schema.ts; field names matched case-insensitively, snake_case `alias` tags
//   translated by lib/decode HookTranslateKeys, weak typing, "5s" strings into time.Duration). Type errors come back in mapstructure's form
//   ("1 error(s) decoding:\n\n* ..."); then agent/structs/config_entry_ce.go `validateUnusedKeys` refuses
//   every key no struct has, at any depth, by its mapstructure path (`Routes[0].Match.HTTP.PathPrefx`,
//   `Subsets[v1].Filtr`): `invalid config key "<path>"`, with ", namespaces are a consul enterprise
//   feature" for a key ending in namespace (the squashed acl.EnterpriseMeta is empty in CE). CreateIndex
//   and ModifyIndex are let through, as there.
// - agent/consul/config_endpoint.go `ConfigEntry.Apply`: Normalize then Validate of the kind; a Validate
//   error is an RPC error, which agent/http.go answers 500 with the error text.
//   Normalize: agent/structs/config_entry.go (service-defaults Protocol lowercased; proxy-defaults Name
//   "global"), config_entry_discoverychain.go (router Methods uppercased; splitter weights rounded to
//   0.01), config_entry_intentions.go (Methods uppercased, Type "consul", Precedence computed, Sources
//   sorted by precedence). Validate: consul-config-validate.ts, rule by rule with Consul's messages.
// - `ServiceRouteDestination.MarshalJSON` / resolver `MarshalJSON`: durations are Go time.Duration,
//   answered in Go's String() form ("5s", "1m30s", "500ms"), omitted when zero.
// - agent/consul/discoverychain/compile.go: a router or splitter on a service whose protocol is not
//   http, http2 or grpc is refused, 500 "discovery chain %q uses a protocol %q that does not permit
//   advanced routing or splitting behavior".
// Not followed: the JSON answers keep the entry as written (canonical key spelling), without the zero
// values of fields Go would print (`"TransparentProxy": {}`); kinds other than the six below are stored
// unchecked; key aliases are derived from the field name (snake_case) rather than read from each tag.

import {
  type Entry,
  type Json,
  KINDS,
  OTHER_KINDS,
  type Shape,
  type Struct,
  object,
  objects,
} from './consul-config-schema.js';
import { scaleWeight, validate } from './consul-config-validate.js';
import { goDuration, multiError, parseGoDuration } from './consul-go.js';

export type { Entry } from './consul-config-schema.js';

export class ConfigEntryError extends Error {
  constructor(
    readonly status: 400 | 500,
    message: string,
  ) {
    super(message);
  }
}

// --- decoding ----------------------------------------------------------------------------------------------

/** The snake_case alias Consul's `alias` tags give a multi-word field (MutualTLSMode → mutual_tls_mode). */
const snake = (field: string): string =>
  field
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1_$2')
    .replace(/([A-Za-z])(\d)/g, '$1_$2')
    .toLowerCase();

const goKind = (v: Json | undefined): string => {
  if (Array.isArray(v)) return 'slice';
  if (v === null || v === undefined) return 'invalid';
  if (typeof v === 'object') return 'map';
  if (typeof v === 'number') return 'float64';
  return typeof v;
};

interface Decoding {
  unused: string[];
  errors: string[];
}

/** mapstructure's decode of `v` into `shape` at `path`; the value as Consul keeps it (canonical keys). */
function decode(v: Json | undefined, shape: Shape, path: string, d: Decoding): Json | undefined {
  if (v === null || v === undefined) return v;
  if (shape === 'any') return v;
  if (shape === 'string') {
    if (typeof v === 'string') return v;
    if (typeof v === 'number') return String(v);
    if (typeof v === 'boolean') return v ? '1' : '0';
    d.errors.push(`'${path}' expected type 'string', got unconvertible type '${goKind(v)}'`);
    return v;
  }
  if (shape === 'bool') {
    if (typeof v === 'boolean') return v;
    if (typeof v === 'number') return v !== 0;
    if (typeof v === 'string') {
      const b = {
        '1': true,
        t: true,
        T: true,
        true: true,
        TRUE: true,
        True: true,
        '': false,
        '0': false,
        f: false,
        F: false,
        false: false,
        FALSE: false,
        False: false,
      }[v];
      if (b !== undefined) return b;
      d.errors.push(
        `cannot parse '${path}' as bool: strconv.ParseBool: parsing ${JSON.stringify(v)}: invalid syntax`,
      );
      return v;
    }
    d.errors.push(`'${path}' expected type 'bool', got unconvertible type '${goKind(v)}'`);
    return v;
  }
  if (shape === 'int' || shape === 'float') {
    if (typeof v === 'number') return shape === 'int' ? Math.trunc(v) : v;
    if (typeof v === 'boolean') return v ? 1 : 0;
    if (typeof v === 'string') {
      const n = v === '' ? 0 : Number(v);
      if (Number.isFinite(n) && (shape === 'float' || Number.isInteger(n))) return n;
      const fn = shape === 'int' ? 'ParseInt' : 'ParseFloat';
      d.errors.push(
        `cannot parse '${path}' as ${shape}: strconv.${fn}: parsing ${JSON.stringify(v)}: invalid syntax`,
      );
      return v;
    }
    d.errors.push(
      `'${path}' expected type '${shape === 'int' ? 'int' : 'float32'}', got unconvertible type '${goKind(v)}'`,
    );
    return v;
  }
  if (shape === 'duration' || shape === 'nanos') {
    // StringToTimeDurationHookFunc; a JSON number is nanoseconds. Zero is omitted (omitempty).
    const ns = typeof v === 'number' ? v : typeof v === 'string' ? parseGoDuration(v) : undefined;
    if (ns === undefined) {
      d.errors.push(`error decoding '${path}': time: invalid duration ${JSON.stringify(String(v))}`);
      return v;
    }
    if (ns === 0) return undefined;
    return shape === 'duration' ? goDuration(ns) : ns;
  }
  if (shape === 'time') {
    if (typeof v === 'string' && !Number.isNaN(Date.parse(v))) return v;
    d.errors.push(`error decoding '${path}': parsing time ${JSON.stringify(String(v))} as RFC3339`);
    return v;
  }
  if ('list' in shape) {
    // WeaklyTypedInput: a single value where a slice is wanted becomes a one-element slice.
    const items = Array.isArray(v) ? v : [v];
    return items.map((x, i) => decode(x, shape.list, `${path}[${i}]`, d) ?? null);
  }
  if ('map' in shape) {
    if (typeof v !== 'object' || Array.isArray(v)) {
      d.errors.push(`'${path}' expected a map, got '${goKind(v)}'`);
      return v;
    }
    const out: Entry = {};
    for (const [k, x] of Object.entries(v)) out[k] = decode(x, shape.map, `${path}[${k}]`, d);
    return out;
  }
  // HookWeakDecodeFromSlice: a one-element list of objects decodes as the object (HCL's blocks).
  const one = Array.isArray(v) && v.length === 1 ? v[0] : v;
  if (one === null || one === undefined || typeof one !== 'object' || Array.isArray(one)) {
    d.errors.push(`'${path}' expected a map, got '${goKind(one)}'`);
    return v;
  }
  return decodeStruct(one as Entry, shape, path, d);
}

function decodeStruct(o: Entry, shape: Struct, path: string, d: Decoding, skip?: Set<string>): Entry {
  const byKey = new Map<string, string>();
  for (const f of Object.keys(shape.fields)) {
    byKey.set(f.toLowerCase(), f);
    byKey.set(snake(f), f);
  }
  const out: Entry = {};
  for (const [k, x] of Object.entries(o)) {
    if (skip?.has(k)) continue;
    const field = byKey.get(k.toLowerCase());
    if (field === undefined) {
      d.unused.push(path ? `${path}.${k}` : k);
      continue;
    }
    const decoded = decode(x, shape.fields[field]!, path ? `${path}.${field}` : field, d);
    if (decoded !== undefined) out[field] = decoded;
  }
  return out;
}

/**
 * The entry as Consul stores and answers it: decoded (unknown keys and type errors refused, 400),
 * normalised, validated (500), as ConfigApply and ConfigEntry.Apply do. Throws ConfigEntryError.
 */
export function decodeConfigEntry(body: Entry): Entry {
  const kindKey = 'Kind' in body ? 'Kind' : 'kind' in body ? 'kind' : undefined;
  if (kindKey === undefined) throw decodeError('Payload does not contain a kind/Kind key at the top level');
  const kind = body[kindKey];
  if (typeof kind !== 'string') throw decodeError('Kind value in payload is not a string');
  const shape = KINDS[kind];
  if (shape === undefined && !OTHER_KINDS.has(kind)) throw decodeError(`invalid config entry kind: ${kind}`);
  if (shape === undefined) {
    const { [kindKey]: _, ...rest } = body;
    return { Kind: kind, ...rest };
  }
  const d: Decoding = { unused: [], errors: [] };
  // Kind is a field of every kind's struct; the RaftIndex fields are refused by name only.
  const e: Entry = {
    Kind: kind,
    ...decodeStruct(body, shape, '', d, new Set([kindKey, 'CreateIndex', 'ModifyIndex'])),
  };
  if (d.errors.length > 0) {
    // mapstructure.Error: its points sorted.
    const points = d.errors.map((x) => `* ${x}`).sort();
    throw decodeError(`${points.length} error(s) decoding:\n\n${points.join('\n')}`);
  }
  if (d.unused.length > 0) {
    const errs = d.unused
      .sort()
      .map((k) =>
        k.toLowerCase().endsWith('namespace')
          ? `invalid config key "${k}", namespaces are a consul enterprise feature`
          : `invalid config key "${k}"`,
      );
    throw decodeError(multiError(errs));
  }
  normalise(kind, e);
  const invalid = validate(kind, e);
  if (invalid !== undefined) throw new ConfigEntryError(500, invalid);
  return e;
}

function decodeError(message: string): ConfigEntryError {
  return new ConfigEntryError(400, `Request decoding failed: ${message}`);
}

// --- Normalize ---------------------------------------------------------------------------------------------

function normalise(kind: string, e: Entry): void {
  if (kind === 'service-defaults' && typeof e.Protocol === 'string') e.Protocol = e.Protocol.toLowerCase();
  if (kind === 'proxy-defaults' && (e.Name === undefined || e.Name === '')) e.Name = 'global';
  if (kind === 'service-router') {
    for (const route of objects(e.Routes)) upperMethods(object(object(route.Match)?.HTTP));
  }
  if (kind === 'service-splitter') {
    // NormalizeServiceSplitWeight: the smallest weight is 0.01%.
    for (const split of objects(e.Splits))
      if (typeof split.Weight === 'number') split.Weight = scaleWeight(split.Weight) / 100;
  }
  if (kind === 'service-intentions') {
    const name = String(e.Name ?? '');
    const sources = objects(e.Sources);
    for (const src of sources) {
      if (src.Type === undefined || src.Type === '') src.Type = 'consul';
      // A write that is not a legacy one drops the legacy fields (LegacyMeta stays, for Validate to refuse).
      for (const k of ['LegacyID', 'LegacyCreateTime', 'LegacyUpdateTime']) delete src[k];
      src.Precedence = precedence(String(src.Name ?? ''), name);
      for (const perm of objects(src.Permissions)) upperMethods(object(perm.HTTP));
    }
    // Stable: equal precedence keeps the order written.
    if (Array.isArray(e.Sources))
      e.Sources = sources.sort((a, b) => Number(b.Precedence) - Number(a.Precedence));
  }
}

function upperMethods(http: Entry | undefined): void {
  if (http && Array.isArray(http.Methods)) http.Methods = http.Methods.map((m) => String(m).toUpperCase());
}

/**
 * computeIntentionPrecedence without namespaces (CE): exact/exact 9, * → exact 8, exact → * 6, * → * 5.
 */
export function precedence(source: string, destination: string): number {
  if (destination !== '*') return source !== '*' ? 9 : 8;
  return source !== '*' ? 6 : 5;
}

// --- the discovery chain -----------------------------------------------------------------------------------

/** The protocol Consul compiles a service's chain with: service-defaults, else proxy-defaults global, else tcp. */
export function serviceProtocol(entries: ReadonlyMap<string, Entry>, service: string): string {
  const sd = entries.get(`service-defaults/${service}`);
  if (typeof sd?.Protocol === 'string' && sd.Protocol !== '') return sd.Protocol;
  const pd = object(entries.get('proxy-defaults/global')?.Config);
  const p = pd?.protocol ?? pd?.Protocol;
  return typeof p === 'string' && p !== '' ? p.toLowerCase() : 'tcp';
}

/**
 * The discovery-chain error Consul answers when the entries, as they would be after a write, leave a
 * router or splitter on a service whose protocol is not http-like. Any route or split counts as advanced
 * routing here (Consul exempts a few degenerate ones).
 */
export function chainError(entries: ReadonlyMap<string, Entry>): ConfigEntryError | undefined {
  for (const e of entries.values()) {
    const uses =
      (e.Kind === 'service-router' && objects(e.Routes).length > 0) ||
      (e.Kind === 'service-splitter' && objects(e.Splits).length > 0);
    if (!uses) continue;
    const name = String(e.Name);
    const protocol = serviceProtocol(entries, name);
    if (!['http', 'http2', 'grpc'].includes(protocol))
      return new ConfigEntryError(
        500,
        `discovery chain "${name}" uses a protocol "${protocol}" that does not permit advanced routing or splitting behavior`,
      );
  }
  return undefined;
}
