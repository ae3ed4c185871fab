// How Consul decodes, normalises and checks a config entry written with PUT /v1/config, for the emulator.
// Each rule names the hashicorp/consul file it follows (docs/consul.md, "Sources", lists them):
// - agent/config_endpoint.go `ConfigApply`: a decoding error is 400 "Request decoding failed: <err>".
// - agent/structs/config_entry.go `DecodeConfigEntry` (mapstructure, keys matched case-insensitively,
//   snake_case aliases) then agent/structs/config_entry_ce.go `validateUnusedKeys`: every key the kind
//   does not have is `invalid config key "<k>"` (CreateIndex, ModifyIndex and Kind excepted).
// - agent/structs/config_entry_discoverychain.go `ServiceRouterConfigEntry.Normalize` and
//   agent/structs/config_entry_intentions.go `Normalize`: HTTP `Methods` uppercased.
// - `ServiceRouteDestination.MarshalJSON` / resolver `MarshalJSON`: durations are Go time.Duration,
//   answered in Go's String() form ("5s", "1m30s", "500ms"), omitted when zero.
// - agent/consul/discoverychain/compile.go: a router or splitter on a service whose protocol is not
//   http, http2 or grpc is refused, 500 "discovery chain %q uses a protocol %q that does not permit
//   advanced routing or splitting behavior".
// Only the top level of an entry is checked for unknown keys; nested objects are kept as sent.

type Json = null | boolean | number | string | Json[] | { [k: string]: Json | undefined };
export type Entry = Record<string, Json | undefined>;

/** Top-level fields of each kind in Consul CE (the struct fields DecodeConfigEntry fills). */
const FIELDS: Record<string, readonly string[]> = {
  'service-defaults': [
    'Name',
    'Protocol',
    'Mode',
    'TransparentProxy',
    'MutualTLSMode',
    'MeshGateway',
    'Expose',
    'ExternalSNI',
    'UpstreamConfig',
    'Destination',
    'MaxInboundConnections',
    'LocalConnectTimeoutMs',
    'LocalRequestTimeoutMs',
    'BalanceInboundConnections',
    'RateLimits',
    'EnvoyExtensions',
    'Meta',
  ],
  'proxy-defaults': [
    'Name',
    'Config',
    'Mode',
    'TransparentProxy',
    'MutualTLSMode',
    'MeshGateway',
    'Expose',
    'AccessLogs',
    'EnvoyExtensions',
    'FailoverPolicy',
    'PrioritizeByLocality',
    'Meta',
  ],
  'service-router': ['Name', 'Routes', 'Meta'],
  'service-splitter': ['Name', 'Splits', 'Meta'],
  'service-resolver': [
    'Name',
    'DefaultSubset',
    'Subsets',
    'Redirect',
    'Failover',
    'ConnectTimeout',
    'RequestTimeout',
    'LoadBalancer',
    'PrioritizeByLocality',
    'Meta',
  ],
  'service-intentions': ['Name', 'Sources', 'JWT', 'Meta'],
};

/** Kinds Consul CE knows (structs.MakeConfigEntry) whose fields the emulator does not check. */
const OTHER_KINDS = new Set([
  'ingress-gateway',
  'terminating-gateway',
  'mesh',
  'exported-services',
  'sameness-group',
  'api-gateway',
  'bound-api-gateway',
  'file-system-certificate',
  'inline-certificate',
  'http-route',
  'tcp-route',
  'jwt-provider',
]);

export class ConfigEntryError extends Error {
  constructor(
    readonly status: 400 | 500,
    message: string,
  ) {
    super(message);
  }
}

const fold = (k: string): string => k.replace(/_/g, '').toLowerCase();

/**
 * The entry as Consul stores and answers it: keys in their struct spelling, Methods uppercased,
 * durations in Go's form. Throws ConfigEntryError (400) where Consul's decoding fails.
 */
export function decodeConfigEntry(body: Entry): Entry {
  const kindKey = Object.keys(body).find((k) => k === 'Kind' || k === 'kind');
  if (kindKey === undefined) throw decodeError('Payload does not contain a kind/Kind key at the top level');
  const kind = body[kindKey];
  if (typeof kind !== 'string') throw decodeError('Kind value in payload is not a string');
  const fields = FIELDS[kind];
  if (fields === undefined && !OTHER_KINDS.has(kind)) throw decodeError(`invalid config entry kind: ${kind}`);
  if (fields === undefined) return { ...body, Kind: kind };
  const byFold = new Map(fields.map((f) => [fold(f), f]));
  const out: Entry = { Kind: kind };
  const unused: string[] = [];
  for (const [k, v] of Object.entries(body)) {
    if (k === kindKey || k === 'CreateIndex' || k === 'ModifyIndex') continue;
    const field = byFold.get(fold(k));
    if (field === undefined) unused.push(k);
    else out[field] = v;
  }
  if (unused.length > 0) {
    const errs = unused
      .sort()
      .map((k) =>
        k.toLowerCase().endsWith('namespace')
          ? `invalid config key "${k}", namespaces are a consul enterprise feature`
          : `invalid config key "${k}"`,
      );
    // hashicorp/go-multierror's format.
    const n = errs.length;
    throw decodeError(
      `${n} error${n === 1 ? '' : 's'} occurred:\n${errs.map((e) => `\t* ${e}`).join('\n')}\n\n`,
    );
  }
  normalise(kind, out);
  return out;
}

function decodeError(message: string): ConfigEntryError {
  return new ConfigEntryError(400, `Request decoding failed: ${message}`);
}

function normalise(kind: string, e: Entry): void {
  if (kind === 'service-defaults' && typeof e.Protocol === 'string') e.Protocol = e.Protocol.toLowerCase();
  if (kind === 'service-router') {
    for (const route of objects(e.Routes)) {
      const http = object(object(route.Match)?.HTTP);
      if (http && Array.isArray(http.Methods))
        http.Methods = http.Methods.map((m) => String(m).toUpperCase());
      const dest = object(route.Destination);
      if (dest) durations(dest, ['RequestTimeout', 'IdleTimeout'], 'Routes.Destination');
    }
  }
  if (kind === 'service-resolver') durations(e, ['ConnectTimeout', 'RequestTimeout'], '');
  if (kind === 'service-intentions') {
    for (const src of objects(e.Sources))
      for (const perm of objects(src.Permissions)) {
        const http = object(perm.HTTP);
        if (http && Array.isArray(http.Methods))
          http.Methods = http.Methods.map((m) => String(m).toUpperCase());
      }
  }
}

function durations(o: Entry, keys: readonly string[], where: string): void {
  for (const k of keys) {
    const v = o[k];
    if (v === undefined || v === null) continue;
    const ns = typeof v === 'number' ? v : parseGoDuration(String(v));
    if (ns === undefined)
      throw decodeError(`error decoding '${where ? `${where}.` : ''}${k}': time: invalid duration "${v}"`);
    if (ns === 0) delete o[k];
    else o[k] = goDuration(ns);
  }
}

const UNIT_NS: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** Go's time.ParseDuration, in nanoseconds; undefined where Go returns an error. */
export function parseGoDuration(s: string): number | undefined {
  if (s === '0') return 0;
  const m = /^([-+]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+$/.exec(s);
  if (!m) return undefined;
  let ns = 0;
  for (const [, num, unit] of s.matchAll(/(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/g))
    ns += Number(num) * UNIT_NS[unit!]!;
  return Math.round(m[1] === '-' ? -ns : ns);
}

/** Go's time.Duration.String(). */
export function goDuration(ns: number): string {
  if (ns === 0) return '0s';
  const sign = ns < 0 ? '-' : '';
  const a = Math.abs(ns);
  if (a < 1e3) return `${sign}${a}ns`;
  if (a < 1e6) return `${sign}${trim(a / 1e3)}µs`;
  if (a < 1e9) return `${sign}${trim(a / 1e6)}ms`;
  const h = Math.floor(a / 3600e9);
  const min = Math.floor((a % 3600e9) / 60e9);
  const sec = trim((a % 60e9) / 1e9);
  if (h > 0) return `${sign}${h}h${min}m${sec}s`;
  if (min > 0) return `${sign}${min}m${sec}s`;
  return `${sign}${sec}s`;
}

const trim = (x: number): string => String(Number(x.toFixed(9)));

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

function object(v: Json | undefined): Entry | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Entry) : undefined;
}

function objects(v: Json | undefined): Entry[] {
  return Array.isArray(v) ? v.map(object).filter((x): x is Entry => x !== undefined) : [];
}
