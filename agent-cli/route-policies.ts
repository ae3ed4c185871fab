// The resilience policies one request meets at the waypoint, for `ambit route explain`: its timeouts,
// retries, fault, rate limit, circuit breaker, outlier ejection and mirror. Each is looked up and decided
// by the function the waypoint's router calls (lib/l7's route, fault and mirror modules; the waypoint's
// retry, traffic-limits and outlier modules), so what is shown is what the waypoint would do.
import { peerFromUris } from '../daemon/proxy/inbound/decide.js';
import { type OutlierSettings, passiveHealthCheck, settingsOf } from '../daemon/waypoint/outlier.js';
import {
  BACKOFF_BASE_MS,
  BACKOFF_MAX_MS,
  BUDGET_PERCENT,
  MIN_RETRY_CONCURRENCY,
  type RetryFields,
  retryPolicy,
} from '../daemon/waypoint/retry.js';
import {
  type ServiceRef,
  concurrencyLimit,
  rateRules,
  ruleFor,
  upstreamFields,
} from '../daemon/waypoint/traffic-limits.js';
import { faultHeaderMatches, routeFault } from '../lib/l7/fault.js';
import {
  type ChainTarget,
  type CompiledChain,
  type EntrySet,
  type Instance,
  type ResolverNode,
  type RouteDestination,
  requestTimeoutOf,
  targetInstances,
} from '../lib/l7/index.js';
import { mirrorTarget, routeMirror } from '../lib/l7/mirror.js';
import { keyOf } from '../lib/l7/set.js';

/** A timeout in ms (undefined: none) and where it is set: an entry, `default`, or `unset`. */
export interface TimeoutView {
  ms: number | undefined;
  from: string;
}

export interface RateLimitView {
  /** `service-defaults/<svc>`: the service whose endpoint takes the request. */
  entry: string;
  /** `Routes[i]` of RateLimits.InstanceLevel, `service` for its own rate, undefined: no rate for this path. */
  rule: string | undefined;
  /** The Routes entry's path match, in the entry's words (`PathPrefix "/search/"`). */
  match: string | undefined;
  /** The path the rule is matched against: the one the endpoint gets. */
  path: string;
  perSecond: number | undefined;
  burst: number | undefined;
}

/** What depends on the leg: its resolver's timeouts, and the rate of the service it lands on. */
export interface LegPolicies {
  timeouts: { request: TimeoutView; idle: TimeoutView; connect: TimeoutView };
  rateLimit: RateLimitView | undefined;
}

export interface RetryView {
  /** `service-router/<svc> Routes[i]`: the route destination that sets it. */
  from: string;
  numRetries: number;
  /** NumRetries as written; undefined (or 0): Envoy's default of 1. */
  numRetriesSet: number | undefined;
  /** Envoy's retry_on conditions (RetryOn, plus connect-failure and retriable-status-codes). */
  on: string[];
  statusCodes: number[];
  backoffMs: { base: number; max: number };
  budget: { percent: number; min: number };
}

export interface FaultView {
  /** `service-router/<svc> Meta.ambit-fault[-<i>]`. */
  from: string;
  header: { name: string; exact: string; matches: boolean } | undefined;
  /** The request passes the header gate: it is drawn for the delay and the abort. */
  applies: boolean;
  delay: { ms: number; percent: number } | undefined;
  abort: { http: number; grpc: number; percent: number } | undefined;
}

export interface MirrorView {
  /** `service-router/<svc> Meta.ambit-mirror[-<i>]`. */
  from: string;
  service: string;
  namespace: string;
  percent: number;
  /** The chain target the copies go to; undefined: `why`. */
  target: string | undefined;
  why: string | undefined;
  /** The endpoints a copy may go to (healthy, selected by the subset). */
  endpoints: string[];
}

/** UpstreamConfig of the client's service-defaults for the dialled service. */
export interface ClientEntry {
  /** `service-defaults/<client> UpstreamConfig.Overrides[i]` or `... UpstreamConfig.Defaults`. */
  from: string;
}

export interface LimitsView extends ClientEntry {
  /** Enforced: requests in flight from the client's service; undefined (or 0): no limit. */
  maxConcurrentRequests: number | undefined;
  /** Enforced: connections from the client's service; undefined (or 0): no limit. */
  maxConnections: number | undefined;
  /** Requests that may wait for one of those connections; undefined: Envoy's default. */
  maxPendingRequests: number | undefined;
}

export type OutlierView = ClientEntry & OutlierSettings;

/** What depends on the route (the same for every leg) and on the client. */
export interface RoutePolicies {
  /** The client's service (from --source); undefined: limits and outlier ejection are not looked up. */
  client: string | undefined;
  /** Some service-defaults sets UpstreamConfig Limits or a PassiveHealthCheck, which only a client's applies. */
  clientEntries: boolean;
  fault: FaultView | undefined;
  limits: LimitsView | undefined;
  outlier: OutlierView | undefined;
  retry: RetryView | undefined;
  mirror: MirrorView | undefined;
}

export interface PolicyContext {
  set: EntrySet;
  chain: CompiledChain;
  /** The route taken: its index (undefined: no router) and whether it is the catch-all. */
  route: number | undefined;
  implicit: boolean;
  /** `service-router/<svc> Routes[i]` or `... catch-all`. */
  routeLabel: string;
  dest: (RouteDestination & RetryFields) | undefined;
  datacenter: string;
  instances: (t: ChainTarget) => Instance[];
}

export function routePolicies(
  c: PolicyContext,
  dialed: ServiceRef,
  headers: Record<string, string | string[]>,
  sourceId: string | undefined,
): RoutePolicies {
  const router = `service-router/${c.chain.ServiceName}`;
  const f = routeFault(c.set, c.chain, c.route, c.implicit);
  const fault: FaultView | undefined = f && {
    from: `${router} Meta.${f.key}`,
    header: f.policy.header && { ...f.policy.header, matches: faultHeaderMatches(f.policy, headers) },
    applies: faultHeaderMatches(f.policy, headers),
    delay: f.policy.delay,
    abort: f.policy.abort,
  };

  const m = routeMirror(c.set, c.chain, c.route, c.implicit);
  let mirror: MirrorView | undefined;
  if (m) {
    const t = mirrorTarget(c.set, m.policy, c.chain.Namespace, c.datacenter);
    mirror = {
      from: `${router} Meta.${m.key}`,
      service: t.service.name,
      namespace: t.service.namespace,
      percent: m.policy.percent,
      target: t.target?.ID,
      why: t.why,
      endpoints: t.target ? targetInstances(t.target, c.instances(t.target)).map((i) => i.id) : [],
    };
  }

  const p = c.dest ? retryPolicy(c.dest) : undefined;
  const retry: RetryView | undefined = p && {
    from: c.routeLabel,
    numRetries: p.numRetries,
    numRetriesSet: c.dest?.NumRetries || undefined,
    on: [...p.on],
    statusCodes: [...p.statusCodes],
    backoffMs: { base: BACKOFF_BASE_MS, max: BACKOFF_MAX_MS },
    budget: { percent: BUDGET_PERCENT, min: MIN_RETRY_CONCURRENCY },
  };

  // As the router: the client is the service its certificate names.
  const peer = sourceId === undefined ? undefined : peerFromUris([sourceId]);
  const client: ServiceRef | undefined = peer?.service
    ? { name: peer.service, namespace: peer.namespace ?? 'default' }
    : undefined;
  let limits: LimitsView | undefined;
  let outlier: OutlierView | undefined;
  if (client) {
    const lf = upstreamFields(c.set, client, dialed, (x) => x.Limits !== undefined);
    const l = lf?.Limits;
    const max = concurrencyLimit(c.set, client, dialed);
    if (l && (max || l.MaxConnections || l.MaxPendingRequests !== undefined))
      limits = {
        from: upstreamFrom(c.set, client, lf),
        maxConcurrentRequests: max,
        maxConnections: l.MaxConnections || undefined,
        // 0 is kept: with MaxConnections, nothing waits.
        maxPendingRequests: l.MaxPendingRequests,
      };
    const phc = passiveHealthCheck(c.set, client, dialed);
    if (phc) {
      const pf = upstreamFields(c.set, client, dialed, (x) => x.PassiveHealthCheck !== undefined);
      outlier = { from: upstreamFrom(c.set, client, pf), ...settingsOf(phc) };
    }
  }
  const clientEntries = [...c.set.serviceDefaults.values()].some((sd) =>
    [sd.UpstreamConfig?.Defaults, ...(sd.UpstreamConfig?.Overrides ?? [])].some(
      (x) => x?.Limits !== undefined || x?.PassiveHealthCheck !== undefined,
    ),
  );
  return {
    client: client && (client.namespace === 'default' ? client.name : `${client.name}.${client.namespace}`),
    clientEntries,
    fault,
    limits,
    outlier,
    retry,
    mirror,
  };
}

/** Where upstreamFields found the fields it answered: the override naming the service, or Defaults. */
function upstreamFrom(set: EntrySet, client: ServiceRef, fields: object | undefined): string {
  const uc = set.serviceDefaults.get(keyOf(client.name, client.namespace))?.UpstreamConfig;
  const i = uc?.Overrides?.findIndex((o) => o === fields) ?? -1;
  return `service-defaults/${client.name} UpstreamConfig.${i >= 0 ? `Overrides[${i}]` : 'Defaults'}`;
}

/**
 * The leg's timeouts (RequestTimeout and IdleTimeout of the route destination, else the resolver's
 * RequestTimeout; ConnectTimeout of the resolver of the leg's target), and the rate of `lands` (the target
 * that serves, failover followed) for `path`, the path its endpoint gets.
 */
export function legPolicies(
  c: PolicyContext,
  targetId: string,
  lands: ChainTarget,
  path: string,
): LegPolicies {
  const node = c.chain.Nodes[`resolver:${targetId}`] as ResolverNode | undefined;
  const target = c.chain.Targets[targetId];
  const resolverName = `service-resolver/${target?.Service ?? c.chain.ServiceName}`;
  const rt = node ? requestTimeoutOf(c.dest, node.Resolver) : undefined;
  const request: TimeoutView = rt
    ? { ms: rt.ms, from: rt.from === 'route' ? c.routeLabel : resolverName }
    : { ms: undefined, from: 'unset' };
  const idle: TimeoutView =
    c.dest?.IdleTimeout !== undefined
      ? { ms: c.dest.IdleTimeout, from: c.routeLabel }
      : { ms: undefined, from: 'unset' };
  const entry = target && c.set.resolvers.get(keyOf(target.Service, target.Namespace));
  const connect: TimeoutView = {
    ms: node?.Resolver.ConnectTimeout,
    from: entry?.ConnectTimeout !== undefined ? resolverName : 'default',
  };

  const sd = c.set.serviceDefaults.get(keyOf(lands.Service, lands.Namespace));
  const rules = rateRules(sd);
  let rateLimit: RateLimitView | undefined;
  if (rules.length > 0) {
    const rule = ruleFor(rules, path);
    const i = rule ? rules.indexOf(rule) : -1;
    const match = rule?.match;
    rateLimit = {
      entry: `service-defaults/${lands.Service}`,
      rule: rule === undefined ? undefined : match ? `Routes[${i}]` : 'service',
      match: match && matchText(match),
      path,
      perSecond: rule?.perSecond,
      burst: rule?.burst,
    };
  }
  return { timeouts: { request, idle, connect }, rateLimit };
}

function matchText(m: { PathExact?: string; PathPrefix?: string; PathRegex?: string }): string {
  if (m.PathExact !== undefined) return `PathExact ${JSON.stringify(m.PathExact)}`;
  if (m.PathPrefix !== undefined) return `PathPrefix ${JSON.stringify(m.PathPrefix)}`;
  return `PathRegex ${JSON.stringify(m.PathRegex)}`;
}
