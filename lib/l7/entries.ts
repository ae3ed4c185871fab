// Consul's config entries in Consul's own shape and field names, and Consul's rules on writing them
// (agent/structs/config_entry*.go: Normalize then Validate), so that an entry written for Consul works
// unchanged in the mesh file and the other way round. What differs, on purpose:
// - durations are read as Go durations or integer nanoseconds and held as milliseconds;
// - regexes and subset filters are compiled here, at write, not first met by Envoy or a catalog query;
// Fields Consul knows but the waypoint does not use (Mode, TransparentProxy, MeshGateway, ...) are
// accepted and kept untouched, so that an entry read back from Consul validates.

import { routerFaults } from './fault.js';
import { compileFilter } from './filter.js';
import { checkGraph } from './graph.js';
import { routerMirrors } from './mirror.js';
import { type Obj, Reader, canonicalKey, compact, join, keyed } from './read.js';

export type Protocol = 'tcp' | 'http' | 'http2' | 'grpc';
export const HTTP_LIKE: readonly string[] = ['http', 'http2', 'grpc'];

export const KINDS = [
  'service-defaults',
  'proxy-defaults',
  'service-router',
  'service-splitter',
  'service-resolver',
  'service-intentions',
] as const;
export type Kind = (typeof KINDS)[number];

interface Base {
  Name: string;
  Namespace?: string;
  Partition?: string;
  Meta?: Record<string, string>;
  CreateIndex?: number;
  ModifyIndex?: number;
}
const BASE_KEYS = ['Kind', 'Name', 'Namespace', 'Partition', 'Meta', 'CreateIndex', 'ModifyIndex', 'Hash'];

export interface HeaderModifiers {
  Add?: Record<string, string>;
  Set?: Record<string, string>;
  Remove?: string[];
}

// --- service-defaults / proxy-defaults -----------------------------------------------------------------

export interface Limits {
  MaxConnections?: number;
  MaxPendingRequests?: number;
  MaxConcurrentRequests?: number;
}
/** Outlier detection; its durations come back from Consul's API as integer nanoseconds. */
export interface PassiveHealthCheck {
  Interval?: number;
  MaxFailures?: number;
  EnforcingConsecutive5xx?: number;
  MaxEjectionPercent?: number;
  BaseEjectionTime?: number;
}
export interface UpstreamConfigFields {
  Protocol?: string;
  ConnectTimeoutMs?: number;
  Limits?: Limits;
  PassiveHealthCheck?: PassiveHealthCheck;
  MeshGateway?: unknown;
  BalanceOutboundConnections?: string;
  EnvoyListenerJSON?: string;
  EnvoyClusterJSON?: string;
}
export interface UpstreamOverride extends UpstreamConfigFields {
  Name: string;
  Namespace?: string;
  Partition?: string;
  Peer?: string;
}
export interface InstanceLevelRoute {
  PathExact?: string;
  PathPrefix?: string;
  PathRegex?: string;
  RequestsPerSecond: number;
  RequestsMaxBurst?: number;
}
export interface RateLimits {
  InstanceLevel?: { RequestsPerSecond?: number; RequestsMaxBurst?: number; Routes?: InstanceLevelRoute[] };
}
export interface ServiceDefaults extends Base {
  Kind: 'service-defaults';
  Protocol?: string;
  UpstreamConfig?: { Defaults?: UpstreamConfigFields; Overrides?: UpstreamOverride[] };
  RateLimits?: RateLimits;
  MaxInboundConnections?: number;
  LocalConnectTimeoutMs?: number;
  LocalRequestTimeoutMs?: number;
  /** Fields Consul knows and the waypoint leaves alone, kept as read. */
  [passthrough: string]: unknown;
}
export interface ProxyDefaults extends Base {
  Kind: 'proxy-defaults';
  /** Free-form proxy config; `protocol` is the one key read. */
  Config?: Record<string, unknown>;
  [passthrough: string]: unknown;
}

// --- service-router ---------------------------------------------------------------------------------------

export interface HeaderMatch {
  Name: string;
  Present?: boolean;
  Exact?: string;
  Prefix?: string;
  Suffix?: string;
  Regex?: string;
  Invert?: boolean;
}
export interface QueryParamMatch {
  Name: string;
  Present?: boolean;
  Exact?: string;
  Regex?: string;
}
export interface HTTPMatch {
  PathExact?: string;
  PathPrefix?: string;
  PathRegex?: string;
  CaseInsensitive?: boolean;
  Header?: HeaderMatch[];
  QueryParam?: QueryParamMatch[];
  Methods?: string[];
}
export interface RouteDestination {
  Service?: string;
  ServiceSubset?: string;
  Namespace?: string;
  Partition?: string;
  PrefixRewrite?: string;
  RequestTimeout?: number;
  IdleTimeout?: number;
  NumRetries?: number;
  RetryOnConnectFailure?: boolean;
  RetryOn?: string[];
  RetryOnStatusCodes?: number[];
  RequestHeaders?: HeaderModifiers;
  ResponseHeaders?: HeaderModifiers;
}
export interface ServiceRoute {
  Match?: { HTTP?: HTTPMatch };
  Destination?: RouteDestination;
}
export interface ServiceRouter extends Base {
  Kind: 'service-router';
  Routes: ServiceRoute[];
}

// --- service-splitter -------------------------------------------------------------------------------------

export interface ServiceSplit {
  /** Percent, rounded to 0.01 as Consul's Normalize does. */
  Weight: number;
  Service?: string;
  ServiceSubset?: string;
  Namespace?: string;
  Partition?: string;
  RequestHeaders?: HeaderModifiers;
  ResponseHeaders?: HeaderModifiers;
}
export interface ServiceSplitter extends Base {
  Kind: 'service-splitter';
  Splits: ServiceSplit[];
}

// --- service-resolver -------------------------------------------------------------------------------------

export interface ResolverSubset {
  Filter?: string;
  OnlyPassing?: boolean;
}
export interface ResolverRedirect {
  Service?: string;
  ServiceSubset?: string;
  Namespace?: string;
  Partition?: string;
  Datacenter?: string;
  Peer?: string;
  SamenessGroup?: string;
}
export interface FailoverTarget {
  Service?: string;
  ServiceSubset?: string;
  Partition?: string;
  Namespace?: string;
  Datacenter?: string;
  Peer?: string;
}
export interface ResolverFailover {
  Service?: string;
  ServiceSubset?: string;
  Namespace?: string;
  Datacenters?: string[];
  Targets?: FailoverTarget[];
  Policy?: { Mode?: string; Regions?: string[] };
  SamenessGroup?: string;
}
export interface HashPolicy {
  Field?: 'header' | 'cookie' | 'query_parameter';
  FieldValue?: string;
  CookieConfig?: { Session?: boolean; TTL?: number; Path?: string };
  SourceIP?: boolean;
  Terminal?: boolean;
}
export type LBPolicy = 'round_robin' | 'least_request' | 'random' | 'ring_hash' | 'maglev';
export interface LoadBalancer {
  Policy?: LBPolicy;
  RingHashConfig?: { MinimumRingSize?: number; MaximumRingSize?: number };
  LeastRequestConfig?: { ChoiceCount?: number };
  HashPolicies?: HashPolicy[];
}
export interface ServiceResolver extends Base {
  Kind: 'service-resolver';
  DefaultSubset?: string;
  Subsets?: Record<string, ResolverSubset>;
  Redirect?: ResolverRedirect;
  Failover?: Record<string, ResolverFailover>;
  ConnectTimeout?: number;
  RequestTimeout?: number;
  LoadBalancer?: LoadBalancer;
  PrioritizeByLocality?: unknown;
}

// --- service-intentions -----------------------------------------------------------------------------------

export interface PermissionHeader {
  Name: string;
  Present?: boolean;
  Exact?: string;
  Prefix?: string;
  Suffix?: string;
  Contains?: string;
  Regex?: string;
  Invert?: boolean;
  IgnoreCase?: boolean;
}
export interface HTTPPermission {
  PathExact?: string;
  PathPrefix?: string;
  PathRegex?: string;
  Header?: PermissionHeader[];
  Methods?: string[];
}
export interface IntentionPermission {
  Action: 'allow' | 'deny';
  HTTP?: HTTPPermission;
  JWT?: unknown;
}
export interface SourceIntention {
  Name: string;
  Namespace?: string;
  Partition?: string;
  Peer?: string;
  SamenessGroup?: string;
  Action?: 'allow' | 'deny';
  Permissions?: IntentionPermission[];
  Precedence?: number;
  Type?: string;
  Description?: string;
  LegacyID?: string;
  LegacyMeta?: Record<string, string>;
  LegacyCreateTime?: unknown;
  LegacyUpdateTime?: unknown;
}
export interface ServiceIntentions extends Base {
  Kind: 'service-intentions';
  Sources: SourceIntention[];
  JWT?: unknown;
}

export type ConfigEntry =
  | ServiceDefaults
  | ProxyDefaults
  | ServiceRouter
  | ServiceSplitter
  | ServiceResolver
  | ServiceIntentions;

/** `<Kind>/<Name>`, the way errors and `ambit config read` name an entry. */
export const entryLabel = (e: { Kind: string; Name: string }): string => `${e.Kind}/${e.Name}`;

// --- validation -------------------------------------------------------------------------------------------

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE'];
const RETRY_ON = [
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
];
const SUBSET_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

/** One entry, checked alone; cross-entry rules (protocols, subsets of other services) need validateEntries. */
export function validateEntry(raw: unknown, where: string): ConfigEntry {
  const head: Reader = new Reader(where, '');
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    head.fail('', 'a config entry must be an object');
  const top = raw as Obj;
  // Kind and Name first, matched as Consul's decoder matches every key (case folded).
  const kindKey = Object.keys(top).find((k) => canonicalKey(k, ['Kind']) !== undefined) ?? 'Kind';
  const kind = head.str(top, kindKey, '');
  if (!kind) head.fail('Kind', 'is required');
  if (!(KINDS as readonly string[]).includes(kind))
    head.fail('Kind', `invalid config entry kind "${kind}" (one of ${KINDS.join(', ')})`);
  const named: Reader = new Reader(where, kind);
  const nameKey = Object.keys(top).find((k) => canonicalKey(k, ['Name']) !== undefined) ?? 'Name';
  const name = named.str(top, nameKey, '');
  if (!name) named.fail('Name', 'is required');
  const r = new Reader(where, `${kind}/${name}`);
  switch (kind as Kind) {
    case 'service-defaults':
      return serviceDefaults(r, top, name);
    case 'proxy-defaults':
      return proxyDefaults(r, top, name);
    case 'service-router':
      return serviceRouter(r, top, name);
    case 'service-splitter':
      return serviceSplitter(r, top, name);
    case 'service-resolver':
      return serviceResolver(r, top, name);
    case 'service-intentions':
      return serviceIntentions(r, top, name);
  }
}

/**
 * A set of entries, checked alone and together as Consul checks a write against the entries it already
 * holds: no entry twice, routers and splitters (and L7 intentions) only on http/http2/grpc services, every
 * subset named by a route, split, redirect or failover defined by that service's resolver, and every
 * chain compiling (no redirect loop, one protocol per chain). Throws the first L7ConfigError.
 */
export function validateEntries(raw: readonly unknown[], where: string): ConfigEntry[] {
  if (!Array.isArray(raw)) throw new Reader(where, '').fail('', 'config entries must be a list');
  const entries = raw.map((e) => validateEntry(e, where));
  checkGraph(entries, where);
  return entries;
}

function base(r: Reader, o: Obj, name: string): Base {
  const meta = r.strMap(o, 'Meta', '');
  if (meta) {
    if (Object.keys(meta).length > 64) r.fail('Meta', 'may hold at most 64 keys');
    for (const [k, v] of Object.entries(meta)) {
      if (k.length > 128) r.fail(`Meta.${k}`, 'key is longer than 128 characters');
      if (v.length > 512) r.fail(`Meta.${k}`, 'value is longer than 512 characters');
    }
  }
  return compact({
    Name: name,
    Namespace: r.nonEmpty(o, 'Namespace', ''),
    Partition: r.nonEmpty(o, 'Partition', ''),
    Meta: meta,
    CreateIndex: r.uint(o, 'CreateIndex', ''),
    ModifyIndex: r.uint(o, 'ModifyIndex', ''),
  });
}

const SD_PASSTHROUGH = [
  'Mode',
  'TransparentProxy',
  'MutualTLSMode',
  'MeshGateway',
  'Expose',
  'ExternalSNI',
  'Destination',
  'BalanceInboundConnections',
  'EnvoyExtensions',
  'JWTProvider',
];
const UPSTREAM_KEYS = [
  'Protocol',
  'ConnectTimeoutMs',
  'Limits',
  'PassiveHealthCheck',
  'MeshGateway',
  'BalanceOutboundConnections',
  'EnvoyListenerJSON',
  'EnvoyClusterJSON',
];

function serviceDefaults(r: Reader, raw: Obj, name: string): ServiceDefaults {
  const o = r.obj(raw, '', [
    ...BASE_KEYS,
    'Protocol',
    'UpstreamConfig',
    'RateLimits',
    'MaxInboundConnections',
    'LocalConnectTimeoutMs',
    'LocalRequestTimeoutMs',
    ...SD_PASSTHROUGH,
  ]);
  const out: ServiceDefaults = { Kind: 'service-defaults', ...base(r, o, name) };
  const protocol = r.nonEmpty(o, 'Protocol', '');
  if (protocol !== undefined) out.Protocol = protocol.toLowerCase();
  const uc = r.optObj(o, 'UpstreamConfig', '', ['Defaults', 'Overrides']);
  if (uc) {
    const defaults = r.optObj(uc, 'Defaults', 'UpstreamConfig', UPSTREAM_KEYS);
    const overrides = r.arr(uc, 'Overrides', 'UpstreamConfig');
    out.UpstreamConfig = compact({
      Defaults: defaults && upstreamFields(r, defaults, 'UpstreamConfig.Defaults'),
      Overrides: overrides?.map((x, i) => {
        const p = `UpstreamConfig.Overrides[${i}]`;
        const ov = r.obj(x, p, [...UPSTREAM_KEYS, 'Name', 'Namespace', 'Partition', 'Peer']);
        const n = r.nonEmpty(ov, 'Name', p);
        if (!n) r.fail(join(p, 'Name'), 'is required');
        return compact({
          Name: n,
          Namespace: r.nonEmpty(ov, 'Namespace', p),
          Partition: r.nonEmpty(ov, 'Partition', p),
          Peer: r.nonEmpty(ov, 'Peer', p),
          ...upstreamFields(r, ov, p),
        });
      }),
    });
  }
  const rl = r.optObj(o, 'RateLimits', '', ['InstanceLevel']);
  if (rl) {
    const p = 'RateLimits.InstanceLevel';
    const il = r.optObj(rl, 'InstanceLevel', 'RateLimits', [
      'RequestsPerSecond',
      'RequestsMaxBurst',
      'Routes',
    ]);
    out.RateLimits = {};
    if (il) {
      const routes = r.arr(il, 'Routes', p)?.map((x, i) => {
        const rp = `${p}.Routes[${i}]`;
        const ro = r.obj(x, rp, [
          'PathExact',
          'PathPrefix',
          'PathRegex',
          'RequestsPerSecond',
          'RequestsMaxBurst',
        ]);
        const route = compact({
          PathExact: r.nonEmpty(ro, 'PathExact', rp),
          PathPrefix: r.nonEmpty(ro, 'PathPrefix', rp),
          PathRegex: r.regex(ro, 'PathRegex', rp),
          RequestsPerSecond: r.uint(ro, 'RequestsPerSecond', rp) ?? 0,
          RequestsMaxBurst: r.uint(ro, 'RequestsMaxBurst', rp),
        });
        const paths = [route.PathExact, route.PathPrefix, route.PathRegex].filter((v) => v !== undefined);
        if (paths.length !== 1)
          r.fail(rp, 'exactly one of PathExact, PathPrefix, or PathRegex must be specified');
        if (route.RequestsPerSecond <= 0) r.fail(join(rp, 'RequestsPerSecond'), 'must be greater than 0');
        return route;
      });
      out.RateLimits.InstanceLevel = compact({
        RequestsPerSecond: r.uint(il, 'RequestsPerSecond', p),
        RequestsMaxBurst: r.uint(il, 'RequestsMaxBurst', p),
        Routes: routes,
      });
    }
  }
  for (const k of ['MaxInboundConnections', 'LocalConnectTimeoutMs', 'LocalRequestTimeoutMs'] as const) {
    const v = r.uint(o, k, '');
    if (v !== undefined) out[k] = v;
  }
  for (const k of SD_PASSTHROUGH) if (o[k] !== undefined) out[k] = o[k];
  return out;
}

function upstreamFields(r: Reader, o: Obj, p: string): UpstreamConfigFields {
  const limits = r.optObj(o, 'Limits', p, ['MaxConnections', 'MaxPendingRequests', 'MaxConcurrentRequests']);
  const phc = r.optObj(o, 'PassiveHealthCheck', p, [
    'Interval',
    'MaxFailures',
    'EnforcingConsecutive5xx',
    'MaxEjectionPercent',
    'BaseEjectionTime',
  ]);
  const lp = join(p, 'Limits');
  const hp = join(p, 'PassiveHealthCheck');
  const percent = (x: Obj, k: string): number | undefined => {
    const v = r.uint(x, k, hp);
    if (v !== undefined && v > 100) r.fail(join(hp, k), 'must be a percentage between 0 and 100');
    return v;
  };
  return compact({
    Protocol: r.nonEmpty(o, 'Protocol', p)?.toLowerCase(),
    ConnectTimeoutMs: r.uint(o, 'ConnectTimeoutMs', p),
    Limits:
      limits &&
      compact({
        MaxConnections: r.uint(limits, 'MaxConnections', lp),
        MaxPendingRequests: r.uint(limits, 'MaxPendingRequests', lp),
        MaxConcurrentRequests: r.uint(limits, 'MaxConcurrentRequests', lp),
      }),
    PassiveHealthCheck:
      phc &&
      compact({
        Interval: r.duration(phc, 'Interval', hp),
        MaxFailures: r.uint(phc, 'MaxFailures', hp),
        EnforcingConsecutive5xx: percent(phc, 'EnforcingConsecutive5xx'),
        MaxEjectionPercent: percent(phc, 'MaxEjectionPercent'),
        BaseEjectionTime: r.duration(phc, 'BaseEjectionTime', hp),
      }),
    MeshGateway: o.MeshGateway ?? undefined,
    BalanceOutboundConnections: r.nonEmpty(o, 'BalanceOutboundConnections', p),
    EnvoyListenerJSON: r.nonEmpty(o, 'EnvoyListenerJSON', p),
    EnvoyClusterJSON: r.nonEmpty(o, 'EnvoyClusterJSON', p),
  });
}

const PD_PASSTHROUGH = [
  'Mode',
  'TransparentProxy',
  'MutualTLSMode',
  'MeshGateway',
  'Expose',
  'AccessLogs',
  'EnvoyExtensions',
  'FailoverPolicy',
  'PrioritizeByLocality',
];

function proxyDefaults(r: Reader, raw: Obj, name: string): ProxyDefaults {
  const o = r.obj(raw, '', [...BASE_KEYS, 'Config', ...PD_PASSTHROUGH]);
  if (name !== 'global') r.fail('Name', `invalid name "${name}", only "global" is supported`);
  const out: ProxyDefaults = { Kind: 'proxy-defaults', ...base(r, o, name) };
  const config = r.objMap(o, 'Config', '');
  if (config) {
    const protocol = config.protocol;
    if (protocol !== undefined && typeof protocol !== 'string') r.fail('Config.protocol', 'must be a string');
    out.Config = { ...config };
    if (typeof protocol === 'string') out.Config.protocol = protocol.toLowerCase();
  }
  for (const k of PD_PASSTHROUGH) if (o[k] !== undefined) out[k] = o[k];
  return out;
}

function headerModifiers(r: Reader, o: Obj, key: string, p: string): HeaderModifiers | undefined {
  const m = r.optObj(o, key, p, ['Add', 'Set', 'Remove']);
  if (!m) return undefined;
  const mp = join(p, key);
  return compact({
    Add: r.strMap(m, 'Add', mp),
    Set: r.strMap(m, 'Set', mp),
    Remove: r.strArr(m, 'Remove', mp),
  });
}

/** Consul's method rules: uppercased (its Normalize), each a known method, none twice. */
function methods(r: Reader, o: Obj, p: string): string[] | undefined {
  const list = r.strArr(o, 'Methods', p)?.map((m) => m.toUpperCase());
  if (!list || list.length === 0) return undefined;
  const seen = new Set<string>();
  list.forEach((m, i) => {
    if (!METHODS.includes(m)) r.fail(`${join(p, 'Methods')}[${i}]`, `invalid method "${m}"`);
    if (seen.has(m)) r.fail(`${join(p, 'Methods')}[${i}]`, `"${m}" appears more than once`);
    seen.add(m);
  });
  return list;
}

function pathFields(
  r: Reader,
  o: Obj,
  p: string,
): { PathExact?: string; PathPrefix?: string; PathRegex?: string } {
  const out = compact({
    PathExact: r.nonEmpty(o, 'PathExact', p),
    PathPrefix: r.nonEmpty(o, 'PathPrefix', p),
    PathRegex: r.regex(o, 'PathRegex', p),
  });
  if (Object.keys(out).length > 1)
    r.fail(p, 'should only contain at most one of PathExact, PathPrefix, or PathRegex');
  for (const k of ['PathExact', 'PathPrefix'] as const) {
    const v = out[k];
    if (v !== undefined && !v.startsWith('/'))
      r.fail(join(p, k), `doesn't start with '/': ${JSON.stringify(v)}`);
  }
  return out;
}

function serviceRouter(r: Reader, raw: Obj, name: string): ServiceRouter {
  const o = r.obj(raw, '', [...BASE_KEYS, 'Routes']);
  const routes = (r.arr(o, 'Routes', '') ?? []).map((x, i): ServiceRoute => {
    const p = `Routes[${i}]`;
    const ro = r.obj(x, p, ['Match', 'Destination']);
    const route: ServiceRoute = {};
    let rewritable = false;
    const match = r.optObj(ro, 'Match', p, ['HTTP']);
    const http =
      match &&
      r.optObj(match, 'HTTP', `${p}.Match`, [
        'PathExact',
        'PathPrefix',
        'PathRegex',
        'CaseInsensitive',
        'Header',
        'QueryParam',
        'Methods',
      ]);
    if (match) route.Match = {};
    if (http) {
      const hp = `${p}.Match.HTTP`;
      const paths = pathFields(r, http, hp);
      rewritable = paths.PathExact !== undefined || paths.PathPrefix !== undefined;
      const headers = r.arr(http, 'Header', hp)?.map((h, j) => {
        const q = `${hp}.Header[${j}]`;
        const ho = r.obj(h, q, ['Name', 'Present', 'Exact', 'Prefix', 'Suffix', 'Regex', 'Invert']);
        const hm: HeaderMatch = compact({
          Name: r.nonEmpty(ho, 'Name', q) ?? r.fail(join(q, 'Name'), 'is required'),
          Present: r.bool(ho, 'Present', q) || undefined,
          Exact: r.nonEmpty(ho, 'Exact', q),
          Prefix: r.nonEmpty(ho, 'Prefix', q),
          Suffix: r.nonEmpty(ho, 'Suffix', q),
          Regex: r.regex(ho, 'Regex', q),
          Invert: r.bool(ho, 'Invert', q) || undefined,
        });
        const kinds = [hm.Present, hm.Exact, hm.Prefix, hm.Suffix, hm.Regex].filter((v) => v !== undefined);
        if (kinds.length !== 1)
          r.fail(q, 'should only contain one of Present, Exact, Prefix, Suffix, or Regex');
        return hm;
      });
      const query = r.arr(http, 'QueryParam', hp)?.map((h, j) => {
        const q = `${hp}.QueryParam[${j}]`;
        const qo = r.obj(h, q, ['Name', 'Present', 'Exact', 'Regex']);
        const qm: QueryParamMatch = compact({
          Name: r.nonEmpty(qo, 'Name', q) ?? r.fail(join(q, 'Name'), 'is required'),
          Present: r.bool(qo, 'Present', q) || undefined,
          Exact: r.nonEmpty(qo, 'Exact', q),
          Regex: r.regex(qo, 'Regex', q),
        });
        const kinds = [qm.Present, qm.Exact, qm.Regex].filter((v) => v !== undefined);
        if (kinds.length !== 1) r.fail(q, 'should only contain one of Present, Exact, or Regex');
        return qm;
      });
      route.Match = {
        HTTP: compact({
          ...paths,
          CaseInsensitive: r.bool(http, 'CaseInsensitive', hp) || undefined,
          Header: headers?.length ? headers : undefined,
          QueryParam: query?.length ? query : undefined,
          Methods: methods(r, http, hp),
        }),
      };
    }
    const d = r.optObj(ro, 'Destination', p, [
      'Service',
      'ServiceSubset',
      'Namespace',
      'Partition',
      'PrefixRewrite',
      'RequestTimeout',
      'IdleTimeout',
      'NumRetries',
      'RetryOnConnectFailure',
      'RetryOn',
      'RetryOnStatusCodes',
      'RequestHeaders',
      'ResponseHeaders',
    ]);
    if (d) {
      const dp = `${p}.Destination`;
      const codes = r.arr(d, 'RetryOnStatusCodes', dp);
      // Consul's []uint32: any such number is accepted (Envoy's retriable_status_codes is no stricter).
      codes?.forEach((c, j) => {
        if (typeof c !== 'number' || !Number.isInteger(c) || c < 0 || c > 0xffff_ffff)
          r.fail(`${dp}.RetryOnStatusCodes[${j}]`, 'must be an unsigned 32-bit integer');
      });
      const dest: RouteDestination = compact({
        Service: r.nonEmpty(d, 'Service', dp),
        ServiceSubset: r.nonEmpty(d, 'ServiceSubset', dp),
        Namespace: r.nonEmpty(d, 'Namespace', dp),
        Partition: r.nonEmpty(d, 'Partition', dp),
        PrefixRewrite: r.nonEmpty(d, 'PrefixRewrite', dp),
        RequestTimeout: r.duration(d, 'RequestTimeout', dp),
        IdleTimeout: r.duration(d, 'IdleTimeout', dp),
        NumRetries: r.uint(d, 'NumRetries', dp),
        RetryOnConnectFailure: r.bool(d, 'RetryOnConnectFailure', dp) || undefined,
        RetryOn: r.strArr(d, 'RetryOn', dp),
        RetryOnStatusCodes: codes as number[] | undefined,
        RequestHeaders: headerModifiers(r, d, 'RequestHeaders', dp),
        ResponseHeaders: headerModifiers(r, d, 'ResponseHeaders', dp),
      });
      if (dest.PrefixRewrite !== undefined && !rewritable)
        r.fail(
          join(dp, 'PrefixRewrite'),
          'cannot be used without configuring either PathExact or PathPrefix',
        );
      dest.RetryOn?.forEach((c, j) => {
        if (!RETRY_ON.includes(c)) r.fail(`${dp}.RetryOn[${j}]`, `invalid retry condition "${c}"`);
      });
      route.Destination = dest;
    }
    return route;
  });
  const router: ServiceRouter = { Kind: 'service-router', ...base(r, o, name), Routes: routes };
  // Fault injection and mirroring live in Meta (Consul has no field for them): refused here, as a field
  // would be.
  routerFaults(r, router);
  routerMirrors(r, router);
  return router;
}

/** Consul's scaleWeight: percent to 0.01 units, rounded. */
export const scaleWeight = (w: number): number => Math.round(Math.fround(Math.fround(w) * 100));

function serviceSplitter(r: Reader, raw: Obj, name: string): ServiceSplitter {
  const o = r.obj(raw, '', [...BASE_KEYS, 'Splits']);
  const list = r.arr(o, 'Splits', '') ?? [];
  if (list.length === 0) r.fail('Splits', 'no splits configured');
  const seen = new Set<string>();
  const splits = list.map((x, i): ServiceSplit => {
    const p = `Splits[${i}]`;
    const so = r.obj(x, p, [
      'Weight',
      'Service',
      'ServiceSubset',
      'Namespace',
      'Partition',
      'RequestHeaders',
      'ResponseHeaders',
    ]);
    const weight = r.num(so, 'Weight', p) ?? 0;
    if (weight < 0 || weight > 100) r.fail(join(p, 'Weight'), 'must be between 0 and 100');
    const split: ServiceSplit = compact({
      Weight: scaleWeight(weight) / 100,
      Service: r.nonEmpty(so, 'Service', p),
      ServiceSubset: r.nonEmpty(so, 'ServiceSubset', p),
      Namespace: r.nonEmpty(so, 'Namespace', p),
      Partition: r.nonEmpty(so, 'Partition', p),
      RequestHeaders: headerModifiers(r, so, 'RequestHeaders', p),
      ResponseHeaders: headerModifiers(r, so, 'ResponseHeaders', p),
    });
    const key = JSON.stringify([
      split.Service ?? name,
      split.ServiceSubset,
      split.Namespace,
      split.Partition,
    ]);
    if (seen.has(key)) r.fail(p, `split destination occurs more than once: service=${split.Service ?? name}`);
    seen.add(key);
    return split;
  });
  const sum = splits.reduce((s, x) => s + scaleWeight(x.Weight), 0);
  if (sum !== 10000)
    r.fail('Splits', `the sum of all split weights must be 100, not ${(sum / 100).toFixed(2)}`);
  return { Kind: 'service-splitter', ...base(r, o, name), Splits: splits };
}

function serviceResolver(r: Reader, raw: Obj, name: string): ServiceResolver {
  const o = r.obj(raw, '', [
    ...BASE_KEYS,
    'DefaultSubset',
    'Subsets',
    'Redirect',
    'Failover',
    'ConnectTimeout',
    'RequestTimeout',
    'LoadBalancer',
    'PrioritizeByLocality',
  ]);
  const out: ServiceResolver = { Kind: 'service-resolver', ...base(r, o, name) };
  const subsets = r.objMap(o, 'Subsets', '');
  if (subsets) {
    out.Subsets = {};
    for (const [sn, sv] of Object.entries(subsets)) {
      const p = keyed('Subsets', sn);
      if (!SUBSET_NAME.test(sn) || sn.length > 63)
        r.fail(p, 'a subset name must be 63 characters or fewer, lower case alphanumerics or "-" between');
      const so = r.obj(sv ?? {}, p, ['Filter', 'OnlyPassing']);
      const filter = r.nonEmpty(so, 'Filter', p);
      if (filter !== undefined) {
        const f = compileFilter(filter);
        if (typeof f === 'string') r.fail(join(p, 'Filter'), `not a valid filter expression: ${f}`);
      }
      out.Subsets[sn] = compact({ Filter: filter, OnlyPassing: r.bool(so, 'OnlyPassing', p) || undefined });
    }
  }
  const isSubset = (s: string): boolean => out.Subsets?.[s] !== undefined;
  const ds = r.nonEmpty(o, 'DefaultSubset', '');
  if (ds !== undefined) {
    if (!isSubset(ds)) r.fail('DefaultSubset', `"${ds}" is not a valid subset`);
    out.DefaultSubset = ds;
  }
  const red = r.optObj(o, 'Redirect', '', [
    'Service',
    'ServiceSubset',
    'Namespace',
    'Partition',
    'Datacenter',
    'Peer',
    'SamenessGroup',
  ]);
  const failover = r.objMap(o, 'Failover', '');
  if (red) {
    const p = 'Redirect';
    const rd: ResolverRedirect = compact({
      Service: r.nonEmpty(red, 'Service', p),
      ServiceSubset: r.nonEmpty(red, 'ServiceSubset', p),
      Namespace: r.nonEmpty(red, 'Namespace', p),
      Partition: r.nonEmpty(red, 'Partition', p),
      Datacenter: r.nonEmpty(red, 'Datacenter', p),
      Peer: r.nonEmpty(red, 'Peer', p),
      SamenessGroup: r.nonEmpty(red, 'SamenessGroup', p),
    });
    if (failover && Object.keys(failover).length > 0) r.fail('', 'Redirect and Failover cannot both be set');
    if (Object.keys(rd).length === 0) r.fail(p, 'Redirect is empty');
    if (rd.Peer && rd.ServiceSubset) r.fail(p, 'Redirect.Peer cannot be set with Redirect.ServiceSubset');
    if (rd.Peer && rd.Partition) r.fail(p, 'Redirect.Partition cannot be set with Redirect.Peer');
    if (rd.Peer && rd.Datacenter) r.fail(p, 'Redirect.Peer cannot be set with Redirect.Datacenter');
    if (rd.Service === undefined) {
      for (const k of ['ServiceSubset', 'Namespace', 'Partition', 'Peer'] as const)
        if (rd[k] !== undefined) r.fail(join(p, k), 'defined without Redirect.Service');
    } else if (rd.ServiceSubset !== undefined && rd.Service === name && !isSubset(rd.ServiceSubset)) {
      r.fail(join(p, 'ServiceSubset'), `"${rd.ServiceSubset}" is not a valid subset of "${name}"`);
    }
    out.Redirect = rd;
  }
  if (failover) {
    out.Failover = {};
    for (const [sub, fv] of Object.entries(failover)) {
      const p = keyed('Failover', sub);
      const fo = r.obj(fv, p, [
        'Service',
        'ServiceSubset',
        'Namespace',
        'Datacenters',
        'Targets',
        'Policy',
        'SamenessGroup',
      ]);
      if (sub !== '*' && !isSubset(sub)) r.fail(p, 'not a valid subset');
      const targets = r.arr(fo, 'Targets', p)?.map((t, i) => {
        const tp = `${p}.Targets[${i}]`;
        const to = r.obj(t, tp, ['Service', 'ServiceSubset', 'Partition', 'Namespace', 'Datacenter', 'Peer']);
        const ft: FailoverTarget = compact({
          Service: r.nonEmpty(to, 'Service', tp),
          ServiceSubset: r.nonEmpty(to, 'ServiceSubset', tp),
          Partition: r.nonEmpty(to, 'Partition', tp),
          Namespace: r.nonEmpty(to, 'Namespace', tp),
          Datacenter: r.nonEmpty(to, 'Datacenter', tp),
          Peer: r.nonEmpty(to, 'Peer', tp),
        });
        if (ft.Peer && ft.ServiceSubset) r.fail(tp, 'Peer cannot be set with ServiceSubset');
        if (ft.Peer && ft.Partition) r.fail(tp, 'Partition cannot be set with Peer');
        if (ft.Peer && ft.Datacenter) r.fail(tp, 'Peer cannot be set with Datacenter');
        if (ft.Partition && ft.Datacenter) r.fail(tp, 'Partition cannot be set with Datacenter');
        if (
          ft.ServiceSubset &&
          (ft.Service === undefined || ft.Service === name) &&
          !isSubset(ft.ServiceSubset)
        )
          r.fail(join(tp, 'ServiceSubset'), `"${ft.ServiceSubset}" is not a valid subset of "${name}"`);
        return ft;
      });
      const policy = r.optObj(fo, 'Policy', p, ['Mode', 'Regions']);
      const mode = policy && r.nonEmpty(policy, 'Mode', join(p, 'Policy'));
      if (mode !== undefined && mode !== 'default' && mode !== 'order-by-locality')
        r.fail(`${p}.Policy.Mode`, "must be one of '', 'default', or 'order-by-locality'");
      const f: ResolverFailover = compact({
        Service: r.nonEmpty(fo, 'Service', p),
        ServiceSubset: r.nonEmpty(fo, 'ServiceSubset', p),
        Namespace: r.nonEmpty(fo, 'Namespace', p),
        Datacenters: r.strArr(fo, 'Datacenters', p),
        Targets: targets,
        Policy: policy && compact({ Mode: mode, Regions: r.strArr(policy, 'Regions', join(p, 'Policy')) }),
        SamenessGroup: r.nonEmpty(fo, 'SamenessGroup', p),
      });
      f.Datacenters?.forEach((dc, i) => {
        if (dc === '') r.fail(`${p}.Datacenters[${i}]`, 'found empty datacenter');
      });
      if (
        f.Service === undefined &&
        f.ServiceSubset === undefined &&
        f.Namespace === undefined &&
        !f.Datacenters?.length &&
        !f.Targets?.length &&
        f.SamenessGroup === undefined
      )
        r.fail(p, 'one of Service, ServiceSubset, Namespace, Targets, or Datacenters is required');
      if (f.Datacenters?.length && f.Targets?.length) r.fail(p, 'Targets cannot be set with Datacenters');
      if (f.ServiceSubset && f.Targets?.length) r.fail(p, 'Targets cannot be set with ServiceSubset');
      if (f.Service && f.Targets?.length) r.fail(p, 'Targets cannot be set with Service');
      if (f.ServiceSubset && (f.Service === undefined || f.Service === name) && !isSubset(f.ServiceSubset))
        r.fail(join(p, 'ServiceSubset'), `"${f.ServiceSubset}" is not a valid subset of "${name}"`);
      out.Failover[sub] = f;
    }
  }
  const ct = r.duration(o, 'ConnectTimeout', '');
  if (ct !== undefined) out.ConnectTimeout = ct;
  const rt = r.duration(o, 'RequestTimeout', '');
  if (rt !== undefined) out.RequestTimeout = rt;
  const lb = r.optObj(o, 'LoadBalancer', '', [
    'Policy',
    'RingHashConfig',
    'LeastRequestConfig',
    'HashPolicies',
  ]);
  if (lb) out.LoadBalancer = loadBalancer(r, lb);
  if (o.PrioritizeByLocality !== undefined) out.PrioritizeByLocality = o.PrioritizeByLocality;
  return out;
}

function loadBalancer(r: Reader, lb: Obj): LoadBalancer {
  const p = 'LoadBalancer';
  const policy = r.nonEmpty(lb, 'Policy', p);
  const policies: readonly string[] = ['round_robin', 'least_request', 'random', 'ring_hash', 'maglev'];
  if (policy !== undefined && !policies.includes(policy))
    r.fail(join(p, 'Policy'), `"${policy}" is not supported`);
  const ring = r.optObj(lb, 'RingHashConfig', p, ['MinimumRingSize', 'MaximumRingSize']);
  const least = r.optObj(lb, 'LeastRequestConfig', p, ['ChoiceCount']);
  if (ring && policy !== 'ring_hash')
    r.fail(join(p, 'RingHashConfig'), `specified for incompatible load balancing policy "${policy ?? ''}"`);
  if (least && policy !== 'least_request')
    r.fail(
      join(p, 'LeastRequestConfig'),
      `specified for incompatible load balancing policy "${policy ?? ''}"`,
    );
  const hashBased = policy === 'ring_hash' || policy === 'maglev';
  const hps = r.arr(lb, 'HashPolicies', p);
  if (hps?.length && !hashBased)
    r.fail(join(p, 'HashPolicies'), `specified for non-hash-based Policy "${policy ?? ''}"`);
  const rp = `${p}.RingHashConfig`;
  const minRing = ring && r.uint(ring, 'MinimumRingSize', rp);
  const maxRing = ring && r.uint(ring, 'MaximumRingSize', rp);
  // Envoy refuses these; Consul would pass them on and the proxy would reject its whole config.
  if (maxRing !== undefined && maxRing > 8_388_608)
    r.fail(`${rp}.MaximumRingSize`, 'must be at most 8388608');
  if (minRing && maxRing && minRing > maxRing)
    r.fail(`${rp}.MinimumRingSize`, 'must not exceed MaximumRingSize');
  const choices = least && r.uint(least, 'ChoiceCount', `${p}.LeastRequestConfig`);
  if (choices === 1)
    r.fail(`${p}.LeastRequestConfig.ChoiceCount`, 'must be at least 2 (0 means the default, 2)');
  const out: LoadBalancer = compact({
    Policy: policy as LBPolicy | undefined,
    RingHashConfig: ring && compact({ MinimumRingSize: minRing, MaximumRingSize: maxRing }),
    LeastRequestConfig: least && compact({ ChoiceCount: choices }),
    HashPolicies: hps?.map((h, i) => {
      const hp = `${p}.HashPolicies[${i}]`;
      const ho = r.obj(h, hp, ['Field', 'FieldValue', 'CookieConfig', 'SourceIP', 'Terminal']);
      const field = r.nonEmpty(ho, 'Field', hp);
      if (field !== undefined && !['header', 'cookie', 'query_parameter'].includes(field))
        r.fail(join(hp, 'Field'), `"${field}" is not a supported field`);
      const cc = r.optObj(ho, 'CookieConfig', hp, ['Session', 'TTL', 'Path']);
      const out: HashPolicy = compact({
        Field: field as HashPolicy['Field'],
        FieldValue: r.nonEmpty(ho, 'FieldValue', hp),
        CookieConfig:
          cc &&
          compact({
            Session: r.bool(cc, 'Session', `${hp}.CookieConfig`) || undefined,
            TTL: r.duration(cc, 'TTL', `${hp}.CookieConfig`),
            Path: r.nonEmpty(cc, 'Path', `${hp}.CookieConfig`),
          }),
        SourceIP: r.bool(ho, 'SourceIP', hp) || undefined,
        Terminal: r.bool(ho, 'Terminal', hp) || undefined,
      });
      if (out.SourceIP && out.Field)
        r.fail(hp, `a single hash policy cannot hash both a source address and a "${out.Field}"`);
      if (out.SourceIP && out.FieldValue)
        r.fail(hp, 'a FieldValue cannot be specified when hashing SourceIP');
      if (out.Field && !out.FieldValue) r.fail(hp, `Field "${out.Field}" was specified without a FieldValue`);
      if (out.FieldValue && !out.Field) r.fail(hp, 'FieldValue requires a Field to apply to');
      if (!out.Field && !out.SourceIP) r.fail(hp, 'one of Field or SourceIP is required');
      if (out.CookieConfig) {
        if (out.Field !== 'cookie') r.fail(join(hp, 'CookieConfig'), `provided for "${out.Field ?? ''}"`);
        if (out.CookieConfig.Session && out.CookieConfig.TTL)
          r.fail(join(hp, 'CookieConfig'), 'a session cookie cannot have an associated TTL');
      }
      return out;
    }),
  });
  return out;
}

function serviceIntentions(r: Reader, raw: Obj, name: string): ServiceIntentions {
  const o = r.obj(raw, '', [...BASE_KEYS, 'Sources', 'JWT']);
  const seen = new Set<string>();
  const sources = (r.arr(o, 'Sources', '') ?? []).map((x, i): SourceIntention => {
    const p = `Sources[${i}]`;
    const so = r.obj(x, p, [
      'Name',
      'Namespace',
      'Partition',
      'Peer',
      'SamenessGroup',
      'Action',
      'Permissions',
      'Precedence',
      'Type',
      'Description',
      'LegacyID',
      'LegacyMeta',
      'LegacyCreateTime',
      'LegacyUpdateTime',
    ]);
    const src: SourceIntention = compact({
      Name: r.nonEmpty(so, 'Name', p) ?? r.fail(join(p, 'Name'), 'is required'),
      Namespace: r.nonEmpty(so, 'Namespace', p),
      Partition: r.nonEmpty(so, 'Partition', p),
      Peer: r.nonEmpty(so, 'Peer', p),
      SamenessGroup: r.nonEmpty(so, 'SamenessGroup', p),
      Action: r.nonEmpty(so, 'Action', p) as SourceIntention['Action'],
      Precedence: r.uint(so, 'Precedence', p),
      Type: r.nonEmpty(so, 'Type', p),
      Description: r.nonEmpty(so, 'Description', p),
      LegacyID: r.nonEmpty(so, 'LegacyID', p),
      LegacyMeta: r.strMap(so, 'LegacyMeta', p),
      LegacyCreateTime: so.LegacyCreateTime ?? undefined,
      LegacyUpdateTime: so.LegacyUpdateTime ?? undefined,
    });
    if (src.Namespace === '*' && src.Name !== '*')
      r.fail(join(p, 'Name'), 'a wildcard namespace with a non-wildcard name is not supported');
    if (src.Peer && src.Partition) r.fail(p, 'cannot set both Peer and Partition');
    if (src.SamenessGroup && (src.Peer || src.Partition))
      r.fail(p, 'cannot set SamenessGroup with Peer or Partition');
    if (src.Type !== undefined && src.Type !== 'consul')
      r.fail(join(p, 'Type'), `must be "consul", not "${src.Type}"`);
    const perms = r.arr(so, 'Permissions', p);
    if (perms?.length) {
      if (src.Action !== undefined) r.fail(join(p, 'Action'), 'must be omitted if Permissions are specified');
      src.Permissions = perms.map((pm, j) => permission(r, pm, `${p}.Permissions[${j}]`));
    } else if (src.Action !== 'allow' && src.Action !== 'deny') {
      r.fail(join(p, 'Action'), 'must be set to "allow" or "deny"');
    }
    const key = JSON.stringify([
      src.Name,
      src.Namespace ?? 'default',
      src.Partition,
      src.Peer,
      src.SamenessGroup,
    ]);
    if (seen.has(key)) r.fail(p, `source "${src.Name}" is defined more than once`);
    seen.add(key);
    return src;
  });
  const out: ServiceIntentions = { Kind: 'service-intentions', ...base(r, o, name), Sources: sources };
  if (o.JWT !== undefined) out.JWT = o.JWT;
  return out;
}

function permission(r: Reader, raw: unknown, p: string): IntentionPermission {
  const o = r.obj(raw, p, ['Action', 'HTTP', 'JWT']);
  const action = r.nonEmpty(o, 'Action', p);
  if (action !== 'allow' && action !== 'deny') r.fail(join(p, 'Action'), 'must be set to "allow" or "deny"');
  const http = r.optObj(o, 'HTTP', p, ['PathExact', 'PathPrefix', 'PathRegex', 'Header', 'Methods']);
  if (!http && o.JWT === undefined) r.fail(join(p, 'HTTP'), 'is required');
  const out: IntentionPermission = { Action: action };
  if (http) {
    const hp = join(p, 'HTTP');
    const header = r.arr(http, 'Header', hp)?.map((h, j) => {
      const q = `${hp}.Header[${j}]`;
      const ho = r.obj(h, q, [
        'Name',
        'Present',
        'Exact',
        'Prefix',
        'Suffix',
        'Contains',
        'Regex',
        'Invert',
        'IgnoreCase',
      ]);
      const hm: PermissionHeader = compact({
        Name: r.nonEmpty(ho, 'Name', q) ?? r.fail(join(q, 'Name'), 'is required'),
        Present: r.bool(ho, 'Present', q) || undefined,
        Exact: r.nonEmpty(ho, 'Exact', q),
        Prefix: r.nonEmpty(ho, 'Prefix', q),
        Suffix: r.nonEmpty(ho, 'Suffix', q),
        Contains: r.nonEmpty(ho, 'Contains', q),
        Regex: r.regex(ho, 'Regex', q),
        Invert: r.bool(ho, 'Invert', q) || undefined,
        IgnoreCase: r.bool(ho, 'IgnoreCase', q) || undefined,
      });
      const kinds = [hm.Present, hm.Exact, hm.Prefix, hm.Suffix, hm.Contains, hm.Regex].filter(
        (v) => v !== undefined,
      );
      if (kinds.length !== 1)
        r.fail(q, 'should only contain one of Present, Exact, Prefix, Suffix, Contains, or Regex');
      if (hm.IgnoreCase && (hm.Present || hm.Regex))
        r.fail(join(q, 'IgnoreCase'), 'applies to Exact, Prefix, Suffix and Contains only');
      return hm;
    });
    const perm: HTTPPermission = compact({
      ...pathFields(r, http, hp),
      Header: header?.length ? header : undefined,
      Methods: methods(r, http, hp),
    });
    if (Object.keys(perm).length === 0) r.fail(hp, 'should not be empty');
    out.HTTP = perm;
  }
  if (o.JWT !== undefined) out.JWT = o.JWT;
  return out;
}
