// Each config entry kind's Validate rules, as Consul's ConfigEntry.Apply runs them after Normalize, with
// Consul's messages (the emulator answers them 500, as agent/http.go does an RPC error). Followed:
// agent/structs/config_entry.go (ServiceConfigEntry, ProxyConfigEntry, validateConfigEntryMeta),
// config_entry_discoverychain.go (router, splitter, resolver), config_entry_discoverychain_ce.go
// (ValidateEnterprise), config_entry_intentions.go (validate). Rules about partitions, peers' partitions
// and Enterprise-only fields beyond those named here are left out.

import { bexprError } from './consul-bexpr.js';
import { type Entry, type Json, object, objects } from './consul-config-schema.js';
import { multiError, parseGoDuration } from './consul-go.js';

/** float32(v) * 100, rounded: the splitter's weight in 0.01% units (scaleWeight). */
export const scaleWeight = (v: number): number => Math.round(Math.fround(Math.fround(v) * 100));

const q = (s: Json | undefined): string => JSON.stringify(String(s ?? ''));
const str = (v: Json | undefined): string => (typeof v === 'string' ? v : '');
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE']);

export function validate(kind: string, e: Entry): string | undefined {
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
