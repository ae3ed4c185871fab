// How Consul decodes, normalises and checks a config entry written with PUT /v1/config, for the emulator.
// Each rule names the hashicorp/consul file it follows (docs/consul.md, "Sources", lists them):
// - agent/config_endpoint.go `ConfigApply`: a decoding error is 400 "Request decoding failed: <err>".
// - agent/structs/config_entry.go `DecodeConfigEntry`: mapstructure into the kind's struct (field names
//   matched case-insensitively, snake_case `alias` tags translated by lib/decode HookTranslateKeys, weak
//   typing, "5s" strings into time.Duration). Type errors come back in mapstructure's form
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
//   sorted by precedence). Validate: the same files, rule by rule below, with their messages.
// - `ServiceRouteDestination.MarshalJSON` / resolver `MarshalJSON`: durations are Go time.Duration,
//   answered in Go's String() form ("5s", "1m30s", "500ms"), omitted when zero.
// - agent/consul/discoverychain/compile.go: a router or splitter on a service whose protocol is not
//   http, http2 or grpc is refused, 500 "discovery chain %q uses a protocol %q that does not permit
//   advanced routing or splitting behavior".
// Not followed: the JSON answers keep the entry as written (canonical key spelling), without the zero
// values of fields Go would print (`"TransparentProxy": {}`); kinds other than the six below are stored
// unchecked; key aliases are derived from the field name (snake_case) rather than read from each tag.

import { bexprError } from './consul-bexpr.js';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json | undefined };
export type Entry = Record<string, Json | undefined>;

// --- the structs, as mapstructure sees them ----------------------------------------------------------------

type Shape =
  | 'string'
  | 'bool'
  | 'int'
  | 'float'
  | 'duration'
  | 'time'
  /** interface{} or map[string]interface{}: anything, unchecked. */
  | 'any'
  | { list: Shape }
  | { map: Shape }
  | Struct;

interface Struct {
  fields: Record<string, Shape>;
}

const S = (fields: Record<string, Shape>): Struct => ({ fields });
const L = (of: Shape): Shape => ({ list: of });
const M = (of: Shape): Shape => ({ map: of });

const META = M('string');
const HEADER_MODIFIERS = S({ Add: M('string'), Set: M('string'), Remove: L('string') });
const MESH_GATEWAY = S({ Mode: 'string' });
const TRANSPARENT_PROXY = S({ OutboundListenerPort: 'int', DialedDirectly: 'bool' });
const EXPOSE = S({
  Checks: 'bool',
  Paths: L(
    S({
      ListenerPort: 'int',
      Path: 'string',
      LocalPathPort: 'int',
      Protocol: 'string',
      ParsedFromCheck: 'bool',
    }),
  ),
});
const UPSTREAM_CONFIG = S({
  Name: 'string',
  Peer: 'string',
  EnvoyListenerJSON: 'string',
  EnvoyClusterJSON: 'string',
  Protocol: 'string',
  ConnectTimeoutMs: 'int',
  Limits: S({ MaxConnections: 'int', MaxPendingRequests: 'int', MaxConcurrentRequests: 'int' }),
  PassiveHealthCheck: S({
    Interval: 'duration',
    MaxFailures: 'int',
    EnforcingConsecutive5xx: 'int',
    MaxEjectionPercent: 'int',
    BaseEjectionTime: 'duration',
  }),
  MeshGateway: MESH_GATEWAY,
  BalanceOutboundConnections: 'string',
});
const ENVOY_EXTENSIONS = L(
  S({ Name: 'string', Required: 'bool', Arguments: 'any', ConsulVersion: 'string', EnvoyVersion: 'string' }),
);
const FAILOVER_POLICY = S({ Mode: 'string', Regions: L('string') });
const PRIORITIZE_BY_LOCALITY = S({ Mode: 'string' });
const JWT_REQUIREMENT = S({
  Providers: L(S({ Name: 'string', VerifyClaims: L(S({ Path: L('string'), Value: 'string' })) })),
});

const KINDS: Record<string, Struct> = {
  'service-defaults': S({
    Name: 'string',
    Protocol: 'string',
    Mode: 'string',
    TransparentProxy: TRANSPARENT_PROXY,
    MutualTLSMode: 'string',
    MeshGateway: MESH_GATEWAY,
    Expose: EXPOSE,
    ExternalSNI: 'string',
    UpstreamConfig: S({ Overrides: L(UPSTREAM_CONFIG), Defaults: UPSTREAM_CONFIG }),
    Destination: S({ Addresses: L('string'), Port: 'int' }),
    MaxInboundConnections: 'int',
    LocalConnectTimeoutMs: 'int',
    LocalRequestTimeoutMs: 'int',
    BalanceInboundConnections: 'string',
    RateLimits: S({
      InstanceLevel: S({
        RequestsPerSecond: 'int',
        RequestsMaxBurst: 'int',
        Routes: L(
          S({
            PathExact: 'string',
            PathPrefix: 'string',
            PathRegex: 'string',
            RequestsPerSecond: 'int',
            RequestsMaxBurst: 'int',
          }),
        ),
      }),
    }),
    EnvoyExtensions: ENVOY_EXTENSIONS,
    Meta: META,
    Hash: 'int',
  }),
  'proxy-defaults': S({
    Name: 'string',
    Config: 'any',
    // json:"-", but mapstructure still fills it; Normalize overwrites it from Config.
    Protocol: 'string',
    Mode: 'string',
    TransparentProxy: TRANSPARENT_PROXY,
    MutualTLSMode: 'string',
    MeshGateway: MESH_GATEWAY,
    Expose: EXPOSE,
    AccessLogs: S({
      Enabled: 'bool',
      DisableListenerLogs: 'bool',
      Type: 'string',
      Path: 'string',
      JSONFormat: 'string',
      TextFormat: 'string',
    }),
    EnvoyExtensions: ENVOY_EXTENSIONS,
    FailoverPolicy: FAILOVER_POLICY,
    PrioritizeByLocality: PRIORITIZE_BY_LOCALITY,
    Meta: META,
    Hash: 'int',
  }),
  'service-router': S({
    Name: 'string',
    Routes: L(
      S({
        Match: S({
          HTTP: S({
            PathExact: 'string',
            PathPrefix: 'string',
            PathRegex: 'string',
            CaseInsensitive: 'bool',
            Header: L(
              S({
                Name: 'string',
                Present: 'bool',
                Exact: 'string',
                Prefix: 'string',
                Suffix: 'string',
                Regex: 'string',
                Invert: 'bool',
              }),
            ),
            QueryParam: L(S({ Name: 'string', Present: 'bool', Exact: 'string', Regex: 'string' })),
            Methods: L('string'),
          }),
        }),
        Destination: S({
          Service: 'string',
          ServiceSubset: 'string',
          Namespace: 'string',
          Partition: 'string',
          PrefixRewrite: 'string',
          RequestTimeout: 'duration',
          IdleTimeout: 'duration',
          NumRetries: 'int',
          RetryOnConnectFailure: 'bool',
          RetryOn: L('string'),
          RetryOnStatusCodes: L('int'),
          RequestHeaders: HEADER_MODIFIERS,
          ResponseHeaders: HEADER_MODIFIERS,
        }),
      }),
    ),
    Meta: META,
  }),
  'service-splitter': S({
    Name: 'string',
    Splits: L(
      S({
        Weight: 'float',
        Service: 'string',
        ServiceSubset: 'string',
        Namespace: 'string',
        Partition: 'string',
        RequestHeaders: HEADER_MODIFIERS,
        ResponseHeaders: HEADER_MODIFIERS,
      }),
    ),
    Meta: META,
  }),
  'service-resolver': S({
    Name: 'string',
    DefaultSubset: 'string',
    Subsets: M(S({ Filter: 'string', OnlyPassing: 'bool' })),
    Redirect: S({
      Service: 'string',
      ServiceSubset: 'string',
      Namespace: 'string',
      Partition: 'string',
      Datacenter: 'string',
      Peer: 'string',
      SamenessGroup: 'string',
    }),
    Failover: M(
      S({
        Service: 'string',
        ServiceSubset: 'string',
        Namespace: 'string',
        SamenessGroup: 'string',
        Datacenters: L('string'),
        Targets: L(
          S({
            Service: 'string',
            ServiceSubset: 'string',
            Partition: 'string',
            Namespace: 'string',
            Datacenter: 'string',
            Peer: 'string',
          }),
        ),
        Policy: FAILOVER_POLICY,
      }),
    ),
    ConnectTimeout: 'duration',
    RequestTimeout: 'duration',
    LoadBalancer: S({
      Policy: 'string',
      RingHashConfig: S({ MinimumRingSize: 'int', MaximumRingSize: 'int' }),
      LeastRequestConfig: S({ ChoiceCount: 'int' }),
      HashPolicies: L(
        S({
          Field: 'string',
          FieldValue: 'string',
          CookieConfig: S({ Session: 'bool', TTL: 'duration', Path: 'string' }),
          SourceIP: 'bool',
          Terminal: 'bool',
        }),
      ),
    }),
    PrioritizeByLocality: PRIORITIZE_BY_LOCALITY,
    Meta: META,
  }),
  'service-intentions': S({
    Name: 'string',
    Sources: L(
      S({
        Name: 'string',
        Action: 'string',
        Permissions: L(
          S({
            Action: 'string',
            HTTP: S({
              PathExact: 'string',
              PathPrefix: 'string',
              PathRegex: 'string',
              Header: L(
                S({
                  Name: 'string',
                  Present: 'bool',
                  Exact: 'string',
                  Prefix: 'string',
                  Suffix: 'string',
                  Contains: 'string',
                  Regex: 'string',
                  Invert: 'bool',
                  IgnoreCase: 'bool',
                }),
              ),
              Methods: L('string'),
            }),
            JWT: JWT_REQUIREMENT,
          }),
        ),
        Precedence: 'int',
        LegacyID: 'string',
        Type: 'string',
        Description: 'string',
        LegacyMeta: M('string'),
        LegacyCreateTime: 'time',
        LegacyUpdateTime: 'time',
        Peer: 'string',
        SamenessGroup: 'string',
      }),
    ),
    JWT: JWT_REQUIREMENT,
    Meta: META,
  }),
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
  if (shape === 'duration') {
    // StringToTimeDurationHookFunc; a JSON number is nanoseconds. Answered in Go's String() form.
    const ns = typeof v === 'number' ? v : typeof v === 'string' ? parseGoDuration(v) : undefined;
    if (ns === undefined) {
      d.errors.push(`error decoding '${path}': time: invalid duration ${JSON.stringify(String(v))}`);
      return v;
    }
    return ns === 0 ? undefined : goDuration(ns);
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

/** hashicorp/go-multierror's format. */
function multiError(errs: readonly string[]): string {
  const n = errs.length;
  return `${n} error${n === 1 ? '' : 's'} occurred:\n${errs.map((e) => `\t* ${e}`).join('\n')}\n\n`;
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

/** float32(v) * 100, rounded, as scaleWeight does. */
const scaleWeight = (v: number): number => Math.round(Math.fround(Math.fround(v) * 100));

/**
 * computeIntentionPrecedence without namespaces (CE): exact/exact 9, * → exact 8, exact → * 6, * → * 5.
 */
export function precedence(source: string, destination: string): number {
  if (destination !== '*') return source !== '*' ? 9 : 8;
  return source !== '*' ? 6 : 5;
}

// --- Validate ----------------------------------------------------------------------------------------------

const q = (s: Json | undefined): string => JSON.stringify(String(s ?? ''));
const str = (v: Json | undefined): string => (typeof v === 'string' ? v : '');
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE']);

function validate(kind: string, e: Entry): string | undefined {
  switch (kind) {
    case 'service-defaults':
      return validateServiceDefaults(e);
    case 'proxy-defaults':
      return validateProxyDefaults(e);
    case 'service-router':
      return validateRouter(e);
    case 'service-splitter':
      return validateSplitter(e);
    case 'service-resolver':
      return validateResolver(e);
    case 'service-intentions':
      return validateIntentions(e);
    default:
      return undefined;
  }
}

/** validateConfigEntryMeta: at most 64 pairs, keys of 128 characters, values of 512. */
function metaErrors(meta: Json | undefined): string[] {
  const m = object(meta) ?? {};
  const errs: string[] = [];
  if (Object.keys(m).length > 64) errs.push('Meta exceeds maximum element count 64');
  for (const [k, v] of Object.entries(m)) {
    if (k.length > 128) errs.push(`Meta key ${q(k)} exceeds maximum length 128`);
    if (String(v ?? '').length > 512) errs.push(`Meta value for key ${q(k)} exceeds maximum length 512`);
  }
  return errs;
}

function metaError(meta: Json | undefined): string | undefined {
  const errs = metaErrors(meta);
  return errs.length > 0 ? multiError(errs) : undefined;
}

function mutualTlsError(mode: Json | undefined): string | undefined {
  const m = str(mode);
  return ['', 'strict', 'permissive'].includes(m)
    ? undefined
    : `Invalid MutualTLSMode ${q(m)}. Must be one of "", "strict", or "permissive".`;
}

/** ServiceConfigEntry.Validate: most rules collected into one multierror. */
function validateServiceDefaults(e: Entry): string | undefined {
  if (str(e.Name) === '') return 'Name is required';
  if (e.Name === '*') return 'service-defaults name must be the name of a service, and not a wildcard';
  const errs = metaErrors(e.Meta);
  const balance = str(e.BalanceInboundConnections);
  if (balance !== '' && balance !== 'exact_balance')
    errs.push(`invalid value for balance_inbound_connections: ${balance}`);
  const dest = object(e.Destination);
  if (object(e.UpstreamConfig) && dest) {
    errs.push('UpstreamConfig and Destination are mutually exclusive for service defaults');
    return multiError(errs);
  }
  if (dest) {
    const addresses = Array.isArray(dest.Addresses) ? dest.Addresses.map(String) : [];
    if (addresses.length === 0) errs.push('Destination must contain at least one valid address');
    const seen = new Set<string>();
    for (const a of addresses) {
      if (seen.has(a)) {
        errs.push(`Duplicate address '${a}' is not allowed`);
        continue;
      }
      seen.add(a);
      if (!isIpOrHostname(a))
        errs.push(
          `Destination address '${a}' is invalid Could not validate address ${a} as an IP or Hostname`,
        );
    }
    const port = Number(dest.Port ?? 0);
    if (port < 1 || port > 65535) errs.push(`Invalid Port number ${port}`);
  }
  const mtls = mutualTlsError(e.MutualTLSMode);
  if (mtls) return mtls;
  return errs.length > 0 ? multiError(errs) : undefined;
}

function isIpOrHostname(a: string): boolean {
  if (/^(\d{1,3}\.){3}\d{1,3}$/.test(a) || (a.includes(':') && /^[0-9a-fA-F:.]+$/.test(a))) return true;
  return !a.includes('*') && /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$/.test(a) && a.length <= 253;
}

/** ProxyConfigEntry.Validate (Normalize refuses any name but global the same way). */
function validateProxyDefaults(e: Entry): string | undefined {
  if (e.Name !== 'global') return `invalid name (${q(e.Name)}), only "global" is supported`;
  return metaError(e.Meta) ?? mutualTlsError(e.MutualTLSMode);
}

/** ServiceRouterConfigEntry.Validate. */
function validateRouter(e: Entry): string | undefined {
  if (str(e.Name) === '') return 'Name is required';
  const meta = metaError(e.Meta);
  if (meta) return meta;
  const routes = Array.isArray(e.Routes) ? e.Routes : [];
  for (let i = 0; i < routes.length; i++) {
    const route = object(routes[i]) ?? {};
    const http = object(object(route.Match)?.HTTP);
    let rewritable = false;
    if (http) {
      let parts = 0;
      for (const k of ['PathExact', 'PathPrefix'] as const) {
        const p = str(http[k]);
        if (p === '') continue;
        rewritable = true;
        parts++;
        if (!p.startsWith('/')) return `Route[${i}] ${k} doesn't start with '/': ${q(p)}`;
      }
      if (str(http.PathRegex) !== '') parts++;
      if (parts > 1)
        return `Route[${i}] should only contain at most one of PathExact, PathPrefix, or PathRegex`;
      const headers = objects(http.Header);
      for (let j = 0; j < headers.length; j++) {
        const h = headers[j]!;
        if (str(h.Name) === '') return `Route[${i}] Header[${j}] missing required Name field`;
        const n = [
          h.Present === true,
          ...['Exact', 'Regex', 'Prefix', 'Suffix'].map((k) => str(h[k]) !== ''),
        ].filter(Boolean).length;
        if (n !== 1)
          return `Route[${i}] Header[${j}] should only contain one of Present, Exact, Prefix, Suffix, or Regex`;
      }
      const params = objects(http.QueryParam);
      for (let j = 0; j < params.length; j++) {
        const p = params[j]!;
        if (str(p.Name) === '') return `Route[${i}] QueryParam[${j}] missing required Name field`;
        const n = [p.Present === true, str(p.Exact) !== '', str(p.Regex) !== ''].filter(Boolean).length;
        if (n !== 1)
          return `Route[${i}] QueryParam[${j}] should only contain one of Present, Exact, or Regex`;
      }
      const methods = methodError(http.Methods, `Route[${i}] Methods`);
      if (methods) return methods;
    }
    const dest = object(route.Destination);
    if (dest) {
      if (str(dest.PrefixRewrite) !== '' && !rewritable)
        return `Route[${i}] cannot make use of PrefixRewrite without configuring either PathExact or PathPrefix`;
      const retryOn = Array.isArray(dest.RetryOn) ? dest.RetryOn.map(String) : [];
      for (const r of retryOn)
        if (!RETRY_ON.has(r)) return `Route[${i}] contains an invalid retry condition: ${q(r)}`;
    }
  }
  return undefined;
}

const RETRY_ON = new Set([
  '5xx',
  'gateway-error',
  'reset',
  'connect-failure',
  'envoy-ratelimited',
  'retriable-4xx',
  'refused-stream',
  'cancelled',
  'deadline-exceeded',
  'internal',
  'resource-exhausted',
  'unavailable',
]);

function methodError(methods: Json | undefined, prefix: string): string | undefined {
  const seen = new Set<string>();
  for (const m of Array.isArray(methods) ? methods.map(String) : []) {
    if (!METHODS.has(m)) return `${prefix} contains an invalid method ${q(m)}`;
    if (seen.has(m)) return `${prefix} contains ${q(m)} more than once`;
    seen.add(m);
  }
  return undefined;
}

/** ServiceSplitterConfigEntry.Validate: weights (scaled to 0.01%) sum to exactly 100. */
function validateSplitter(e: Entry): string | undefined {
  if (str(e.Name) === '') return 'Name is required';
  const splits = objects(e.Splits);
  if (splits.length === 0) return 'no splits configured';
  const meta = metaError(e.Meta);
  if (meta) return meta;
  const seen = new Set<string>();
  for (const s of splits) {
    const service = str(s.Service) || str(e.Name);
    const key = JSON.stringify([service, str(s.ServiceSubset), str(s.Namespace), str(s.Partition)]);
    if (seen.has(key))
      return `split destination occurs more than once: service=${q(service)}, subset=${q(s.ServiceSubset)}, namespace=${q(s.Namespace)}, partition=${q(s.Partition)}`;
    seen.add(key);
  }
  const sum = splits.reduce((n, s) => n + scaleWeight(Number(s.Weight ?? 0)), 0);
  if (sum !== 10000)
    return `the sum of all split weights must be 100, not ${(Math.fround(sum) / 100).toFixed(6)}`;
  return undefined;
}

/** ServiceResolverConfigEntry.Validate, without the partition and peering rules of Enterprise. */
function validateResolver(e: Entry): string | undefined {
  if (str(e.Name) === '') return 'Name is required';
  const meta = metaError(e.Meta);
  if (meta) return meta;
  const subsets = object(e.Subsets) ?? {};
  for (const [name, raw] of Object.entries(subsets)) {
    if (name === '') return 'Subset defined with empty name';
    const bad = subsetNameError(name);
    if (bad) return `Subset ${q(name)} is invalid: ${bad}`;
    const filter = str(object(raw)?.Filter);
    if (filter !== '') {
      const why = bexprError(filter);
      if (why) return `Filter for subset ${q(name)} is not a valid expression: ${why}`;
    }
  }
  const isSubset = (s: string): boolean => Object.hasOwn(subsets, s);
  const def = str(e.DefaultSubset);
  if (def !== '' && !isSubset(def)) return `DefaultSubset ${q(def)} is not a valid subset`;
  const failover = object(e.Failover) ?? {};
  const r = object(e.Redirect);
  if (r) {
    // config_entry_discoverychain_ce.go ValidateEnterprise.
    if (str(r.Partition) !== '') return 'Redirect: Setting Partition requires Consul Enterprise';
    if (str(r.Namespace) !== '') return 'Redirect: Setting Namespace requires Consul Enterprise';
    if (str(r.SamenessGroup) !== '') return 'Redirect: Setting SamenessGroup requires Consul Enterprise';
    if (Object.keys(failover).length > 0) return 'Redirect and Failover cannot both be set';
    const fields = [
      'Service',
      'ServiceSubset',
      'Namespace',
      'Partition',
      'Datacenter',
      'Peer',
      'SamenessGroup',
    ];
    if (fields.every((k) => str(r[k]) === '')) return 'Redirect is empty';
    const [svc, sub, peer] = [str(r.Service), str(r.ServiceSubset), str(r.Peer)];
    if (peer !== '' && sub !== '') return 'Redirect.Peer cannot be set with Redirect.ServiceSubset';
    if (peer !== '' && str(r.Datacenter) !== '')
      return 'Redirect.Peer cannot be set with Redirect.Datacenter';
    if (svc === '') {
      if (sub !== '') return 'Redirect.ServiceSubset defined without Redirect.Service';
      if (peer !== '') return 'Redirect.Peer defined without Redirect.Service';
    } else if (sub !== '' && svc === e.Name && !isSubset(sub))
      return `Redirect.ServiceSubset ${q(sub)} is not a valid subset of ${q(e.Name)}`;
  }
  for (const [subset, raw] of Object.entries(failover)) {
    const f = object(raw) ?? {};
    const prefix = `Bad Failover[${q(subset)}]: `;
    // config_entry_discoverychain_ce.go ValidateEnterprise.
    if (str(f.Namespace) !== '') return `${prefix}Setting Namespace requires Consul Enterprise`;
    if (str(f.SamenessGroup) !== '') return `${prefix}Setting SamenessGroup requires Consul Enterprise`;
    if (str(object(f.Policy)?.Mode) !== '')
      return `${prefix}Setting failover policies requires Consul Enterprise`;
    if (subset !== '*' && !isSubset(subset)) return `${prefix}not a valid subset subset`;
    const targets = objects(f.Targets);
    const dcs = Array.isArray(f.Datacenters) ? f.Datacenters.map(String) : [];
    if (
      str(f.Service) === '' &&
      str(f.ServiceSubset) === '' &&
      dcs.length === 0 &&
      targets.length === 0 &&
      str(f.SamenessGroup) === ''
    )
      return `${prefix}one of Service, ServiceSubset, Namespace, Targets, SamenessGroup, or Datacenters is required`;
    const sub = str(f.ServiceSubset);
    if (sub !== '' && (str(f.Service) === '' || f.Service === e.Name) && !isSubset(sub))
      return `${prefix}ServiceSubset ${q(sub)} is not a valid subset of ${q(f.Service)}`;
    if (dcs.length > 0 && targets.length > 0) return `${prefix}Targets cannot be set with Datacenters`;
    if (sub !== '' && targets.length > 0) return `${prefix}Targets cannot be set with ServiceSubset`;
    if (str(f.Service) !== '' && targets.length > 0) return `${prefix}Targets cannot be set with Service`;
    for (let i = 0; i < targets.length; i++) {
      const t = targets[i]!;
      const tp = `Bad Failover[${q(subset)}].Targets[${i}]: `;
      if (str(t.Partition) !== '') return `${tp}Setting Partition requires Consul Enterprise`;
      if (str(t.Namespace) !== '') return `${tp}Setting Namespace requires Consul Enterprise`;
      if (str(t.Peer) !== '' && str(t.ServiceSubset) !== '')
        return `${tp}Peer cannot be set with ServiceSubset`;
      if (str(t.Peer) !== '' && str(t.Datacenter) !== '') return `${tp}Peer cannot be set with Datacenter`;
      const ts = str(t.ServiceSubset);
      if (ts !== '' && (str(t.Service) === '' || t.Service === e.Name) && !isSubset(ts))
        return `${tp}ServiceSubset ${q(ts)} is not a valid subset of ${q(e.Name)}`;
    }
    if (dcs.some((dc) => dc === '')) return `Bad Failover[${q(subset)}].Datacenters: found empty datacenter`;
  }
  for (const k of ['ConnectTimeout', 'RequestTimeout'] as const) {
    const ns = typeof e[k] === 'string' ? parseGoDuration(e[k] as string) : undefined;
    if (ns !== undefined && ns < 0) return `Bad ${k} '${e[k]}', must be >= 0`;
  }
  const lb = loadBalancerError(object(e.LoadBalancer));
  if (lb) return lb;
  const pbl = object(e.PrioritizeByLocality);
  if (pbl && str(pbl.Mode) !== '') return 'Prioritize-by-locality requires Consul Enterprise ';
  return undefined;
}

function subsetNameError(name: string): string | undefined {
  if (name.length > 63) return 'must be non-empty and 63 characters or fewer';
  if (!/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(name))
    return "must be 63 characters or fewer, begin or end with lower case alphanumeric characters, and contain lower case alphanumeric characters or '-' in between";
  return undefined;
}

function loadBalancerError(lb: Entry | undefined): string | undefined {
  if (!lb) return undefined;
  const policy = str(lb.Policy);
  if (!['', 'random', 'round_robin', 'least_request', 'ring_hash', 'maglev'].includes(policy))
    return `Bad LoadBalancer policy: ${q(policy)} is not supported`;
  if (policy !== 'ring_hash' && object(lb.RingHashConfig))
    return `Bad LoadBalancer configuration. RingHashConfig specified for incompatible load balancing policy ${q(policy)}`;
  if (policy !== 'least_request' && object(lb.LeastRequestConfig))
    return `Bad LoadBalancer configuration. LeastRequestConfig specified for incompatible load balancing policy ${q(policy)}`;
  const hps = objects(lb.HashPolicies);
  if (!['ring_hash', 'maglev'].includes(policy) && hps.length > 0)
    return `Bad LoadBalancer configuration: HashPolicies specified for non-hash-based Policy: ${q(policy)}`;
  for (let i = 0; i < hps.length; i++) {
    const hp = hps[i]!;
    const [field, value] = [str(hp.Field), str(hp.FieldValue)];
    const p = `Bad LoadBalancer HashPolicy[${i}]: `;
    if (field !== '' && !['header', 'cookie', 'query_parameter'].includes(field))
      return `${p}${q(field)} is not a supported field`;
    if (hp.SourceIP === true && field !== '')
      return `${p}A single hash policy cannot hash both a source address and a ${q(field)}`;
    if (hp.SourceIP === true && value !== '')
      return `${p}A FieldValue cannot be specified when hashing SourceIP`;
    if (field !== '' && value === '') return `${p}Field ${q(field)} was specified without a FieldValue`;
    if (value !== '' && field === '') return `${p}FieldValue requires a Field to apply to`;
    const cookie = object(hp.CookieConfig);
    if (cookie) {
      if (field !== 'cookie') return `${p}cookie_config provided for ${q(field)}`;
      if (cookie.Session === true && cookie.TTL !== undefined)
        return `${p}a session cookie cannot have an associated TTL`;
    }
  }
  return undefined;
}

/** ServiceIntentionsConfigEntry.validate (not a legacy write). */
function validateIntentions(e: Entry): string | undefined {
  const name = str(e.Name);
  if (name === '') return 'Name is required';
  if (name !== '*' && name.includes('*'))
    return "Name: wildcard character '*' cannot be used with partial values";
  for (const p of objects(object(e.JWT)?.Providers))
    if (str(p.Name) === '') return 'JWT provider name is required';
  const meta = metaError(e.Meta);
  if (meta) return meta;
  const sources = objects(e.Sources);
  if (sources.length === 0) return 'At least one source is required';
  const seen = new Set<string>();
  for (let i = 0; i < sources.length; i++) {
    const src = sources[i]!;
    const sname = str(src.Name);
    if (sname === '') return `Sources[${i}].Name is required`;
    if (sname !== '*' && sname.includes('*'))
      return `Sources[${i}].Name: wildcard character '*' cannot be used with partial values`;
    if (str(src.Peer).includes('*')) return `Sources[${i}].Peer: cannot use wildcard '*' in peer`;
    if (str(src.SamenessGroup) !== '' && str(src.Peer) !== '')
      return `Sources[${i}].SamenessGroup: cannot set SamenessGroup and Peer at the same time`;
    if (str(src.Description).length > 512) return `Sources[${i}].Description exceeds maximum length 512`;
    if (Object.keys(object(src.LegacyMeta) ?? {}).length > 0)
      return `Sources[${i}].LegacyMeta must be omitted`;
    if (src.LegacyCreateTime !== undefined && src.LegacyCreateTime !== null)
      return `Sources[${i}].LegacyCreateTime must be omitted`;
    if (src.LegacyUpdateTime !== undefined && src.LegacyUpdateTime !== null)
      return `Sources[${i}].LegacyUpdateTime must be omitted`;
    if (str(src.LegacyID) !== '') return `Sources[${i}].LegacyID must be omitted`;
    const perms = Array.isArray(src.Permissions) ? src.Permissions : [];
    const action = str(src.Action);
    if (perms.length === 0 && action !== 'allow' && action !== 'deny')
      return `Sources[${i}].Action must be set to 'allow' or 'deny'`;
    if (perms.length > 0 && action !== '')
      return `Sources[${i}].Action must be omitted if Permissions are specified`;
    if (name === '*' && perms.length > 0)
      return `Sources[${i}].Permissions cannot be specified on intentions with wildcarded destinations`;
    if (src.Type !== 'consul') return `Sources[${i}].Type must be set to 'consul'`;
    for (let j = 0; j < perms.length; j++) {
      const perm = object(perms[j]) ?? {};
      const pa = str(perm.Action);
      if (pa !== 'allow' && pa !== 'deny')
        return `Sources[${i}].Permissions[${j}].Action must be set to 'allow' or 'deny'`;
      const prefix = `Sources[${i}].Permissions[${j}].HTTP`;
      const http = object(perm.HTTP);
      if (!http) return `${prefix} is required`;
      let parts = 0;
      for (const k of ['PathExact', 'PathPrefix'] as const) {
        const p = str(http[k]);
        if (p === '') continue;
        parts++;
        if (!p.startsWith('/')) return `${prefix}.${k} doesn't start with '/': ${q(p)}`;
      }
      if (str(http.PathRegex) !== '') parts++;
      if (parts > 1)
        return `${prefix} should only contain at most one of PathExact, PathPrefix, or PathRegex`;
      const headers = objects(http.Header);
      for (let k = 0; k < headers.length; k++) {
        const h = headers[k]!;
        if (str(h.Name) === '') return `${prefix}.Header[${k}] missing required Name field`;
        const n = [
          h.Present === true,
          ...['Exact', 'Regex', 'Prefix', 'Suffix', 'Contains'].map((x) => str(h[x]) !== ''),
        ].filter(Boolean).length;
        if (n !== 1)
          return `${prefix}.Header[${k}] should only contain one of Present, Exact, Prefix, Suffix, or Regex`;
        parts++;
      }
      const methods = methodError(http.Methods, `${prefix}.Methods`);
      if (methods) return methods;
      if (Array.isArray(http.Methods) && http.Methods.length > 0) parts++;
      if (parts === 0) return `${prefix} should not be empty`;
      for (const p of objects(object(perm.JWT)?.Providers))
        if (str(p.Name) === '') return 'JWT provider name is required';
    }
    const key = JSON.stringify([sname, str(src.Peer), str(src.SamenessGroup)]);
    if (seen.has(key)) {
      if (str(src.Peer) !== '')
        return `Sources[${i}] defines peer(${q(src.Peer)}) ${q(sname)} more than once`;
      if (str(src.SamenessGroup) !== '')
        return `Sources[${i}] defines sameness-group(${q(src.SamenessGroup)}) ${q(sname)} more than once`;
      return `Sources[${i}] defines ${q(sname)} more than once`;
    }
    seen.add(key);
  }
  return undefined;
}

// --- durations ---------------------------------------------------------------------------------------------

const UNIT_NS: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** Go's time.ParseDuration, in nanoseconds; undefined where Go returns an error. */
export function parseGoDuration(s: string): number | undefined {
  if (s === '0' || s === '+0' || s === '-0') return 0;
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

function object(v: Json | undefined): Entry | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Entry) : undefined;
}

function objects(v: Json | undefined): Entry[] {
  return Array.isArray(v) ? v.map(object).filter((x): x is Entry => x !== undefined) : [];
}
