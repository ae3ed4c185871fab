// One request through a compiled chain, as the Envoy config Consul derives from it (agent/xds/routes.go)
// routes it: the first route whose match holds wins (the implicit catch-all last), then the split, drawn
// from `random` in Envoy's 0.01% steps, then the resolver's target. Header changes come out as a list of
// operations in the order Envoy applies them: the most specific level first (the split's, then the
// route's), and within a level removals before additions, Add (append) before Set (overwrite).

import type { CompiledChain, ResolverNode, RouterNode, SplitterNode } from './chain.js';
import type { HTTPMatch, HeaderModifiers, LoadBalancer, RouteDestination } from './entries.js';
import type { Random } from './lb.js';
import { type L7Request, headerMatches, methodMatches, pathMatches, queryMatches } from './match.js';

export type HeaderOp =
  | { op: 'remove'; name: string }
  | { op: 'add'; name: string; value: string }
  | { op: 'set'; name: string; value: string };

export interface RouteResult {
  /** The index of the router's route that matched; the implicit catch-all is Routes.length. No router: undefined. */
  route: number | undefined;
  /** The catch-all route to the service itself matched (or the chain has no router). */
  implicit: boolean;
  /** The split leg chosen (index in the compiled splitter, its weight), when a splitter was met. */
  split: { index: number; weight: number } | undefined;
  target: { id: string; service: string; namespace: string; subset: string };
  /** The path to send upstream: PrefixRewrite applied, query kept. */
  path: string;
  prefixRewrite: string | undefined;
  requestHeaders: HeaderOp[];
  responseHeaders: HeaderOp[];
  /** Passed through for timeouts and retries: the route destination's, RequestTimeout else the resolver's. */
  RequestTimeout?: number;
  IdleTimeout?: number;
  NumRetries?: number;
  RetryOnConnectFailure?: boolean;
  /** The route destination's own lists (the compiled chain's, shared): read, never changed. */
  RetryOn?: readonly string[];
  RetryOnStatusCodes?: readonly number[];
  ConnectTimeout: number;
  LoadBalancer?: LoadBalancer;
  /** The chain nodes passed through, for `ambit route explain`. */
  nodes: string[];
}

export function routeMatches(m: HTTPMatch | undefined, req: L7Request): boolean {
  if (!m) return true;
  if (!pathMatches(m, req.path, m.CaseInsensitive === true)) return false;
  for (const h of m.Header ?? []) if (!headerMatches(h, req.headers)) return false;
  if (!methodMatches(m.Methods, req.method)) return false;
  for (const q of m.QueryParam ?? []) if (!queryMatches(q, req.path)) return false;
  return true;
}

/** The first condition of `m` that `req` fails, in the entry's words; undefined when the match holds. */
export function whyNot(m: HTTPMatch | undefined, req: L7Request): string | undefined {
  if (!m) return undefined;
  if (!pathMatches(m, req.path, m.CaseInsensitive === true)) {
    const [k, v] =
      m.PathExact !== undefined
        ? ['PathExact', m.PathExact]
        : m.PathPrefix !== undefined
          ? ['PathPrefix', m.PathPrefix]
          : ['PathRegex', m.PathRegex];
    return `path ${JSON.stringify(req.path)} does not match ${k} ${JSON.stringify(v)}${m.CaseInsensitive ? ' (case-insensitive)' : ''}`;
  }
  for (const [i, h] of (m.Header ?? []).entries())
    if (!headerMatches(h, req.headers)) return `Header[${i}] (${h.Name}) does not match`;
  if (!methodMatches(m.Methods, req.method))
    return `method ${req.method} is not one of ${m.Methods!.join(', ')}`;
  for (const [i, q] of (m.QueryParam ?? []).entries())
    if (!queryMatches(q, req.path)) return `QueryParam[${i}] (${q.Name}) does not match`;
  return undefined;
}

/** For `ambit route explain`: each route of the chain's router in order, whether it matched and why not. */
export function explainRoutes(
  chain: CompiledChain,
  req: L7Request,
): { index: number; matched: boolean; reason: string }[] {
  const start = chain.Nodes[chain.StartNode];
  if (start?.Type !== 'router') return [];
  const out: { index: number; matched: boolean; reason: string }[] = [];
  for (const [index, r] of start.Routes.entries()) {
    const why = whyNot(r.Definition.Match?.HTTP, req);
    out.push({
      index,
      matched: why === undefined,
      reason:
        why ?? (index === start.Routes.length - 1 ? 'the catch-all route to the service itself' : 'matched'),
    });
    // First match wins: the routes after it are never looked at.
    if (why === undefined) break;
  }
  return out;
}

function ops(m: HeaderModifiers | undefined): HeaderOp[] {
  if (!m) return [];
  const out: HeaderOp[] = [];
  for (const name of m.Remove ?? []) out.push({ op: 'remove', name });
  for (const [name, value] of Object.entries(m.Add ?? {})) out.push({ op: 'add', name, value });
  for (const [name, value] of Object.entries(m.Set ?? {})) out.push({ op: 'set', name, value });
  return out;
}

/** The split leg for a draw in [0, 1): Envoy's walk over cumulative weights in 0.01% units. */
export function chooseSplit(node: SplitterNode, random: Random): number {
  const total = node.Splits.reduce((s, x) => s + Math.round(x.Weight * 100), 0);
  const draw = Math.min(total - 1, Math.floor(random() * total));
  let acc = 0;
  for (let i = 0; i < node.Splits.length; i++) {
    acc += Math.round(node.Splits[i]!.Weight * 100);
    if (draw < acc) return i;
  }
  return node.Splits.length - 1;
}

/**
 * A request's RequestTimeout and where it is set: the route destination's, else its resolver's; undefined:
 * neither sets one (the waypoint then has no route timeout, only its own bounds).
 */
export function requestTimeoutOf(
  dest: RouteDestination | undefined,
  resolver: ResolverNode['Resolver'],
): { ms: number; from: 'route' | 'resolver' } | undefined {
  if (dest?.RequestTimeout !== undefined) return { ms: dest.RequestTimeout, from: 'route' };
  if (resolver.RequestTimeout !== undefined) return { ms: resolver.RequestTimeout, from: 'resolver' };
  return undefined;
}

function rewrite(path: string, match: HTTPMatch | undefined, to: string | undefined): string {
  if (to === undefined || !match) return path;
  const prefix = match.PathPrefix ?? match.PathExact;
  if (prefix === undefined) return path;
  return to + path.slice(prefix.length);
}

export function routeRequest(chain: CompiledChain, req: L7Request, random: Random): RouteResult {
  const nodes: string[] = [chain.StartNode];
  let node = chain.Nodes[chain.StartNode]!;
  let route: number | undefined;
  let implicit = true;
  let dest: RouteDestination | undefined;
  let match: HTTPMatch | undefined;
  if (node.Type === 'router') {
    const r = node as RouterNode;
    let i = 0;
    while (i < r.Routes.length && !routeMatches(r.Routes[i]!.Definition.Match?.HTTP, req)) i++;
    if (i === r.Routes.length) i = -1;
    // The catch-all (PathPrefix "/") is last, so a request whose path starts with "/" always meets a route.
    const hit = i < 0 ? r.Routes.length - 1 : i;
    route = hit;
    implicit = hit === r.Routes.length - 1;
    dest = r.Routes[hit]!.Definition.Destination;
    match = r.Routes[hit]!.Definition.Match?.HTTP;
    nodes.push(r.Routes[hit]!.NextNode);
    node = chain.Nodes[r.Routes[hit]!.NextNode]!;
  }
  const requestHeaders: HeaderOp[] = [];
  const responseHeaders: HeaderOp[] = [];
  let split: RouteResult['split'];
  let lb = node.Type === 'router' ? undefined : node.LoadBalancer;
  if (node.Type === 'splitter') {
    const s = node as SplitterNode;
    const i = chooseSplit(s, random);
    const leg = s.Splits[i]!;
    split = { index: i, weight: leg.Weight };
    requestHeaders.push(...ops(leg.Definition.RequestHeaders));
    responseHeaders.push(...ops(leg.Definition.ResponseHeaders));
    nodes.push(leg.NextNode);
    node = chain.Nodes[leg.NextNode]!;
  }
  if (dest?.RequestHeaders) requestHeaders.push(...ops(dest.RequestHeaders));
  if (dest?.ResponseHeaders) responseHeaders.push(...ops(dest.ResponseHeaders));
  const res = node as ResolverNode;
  lb ??= res.LoadBalancer;
  const t = chain.Targets[res.Resolver.Target]!;
  const out: RouteResult = {
    route,
    implicit,
    split,
    target: { id: t.ID, service: t.Service, namespace: t.Namespace, subset: t.ServiceSubset },
    path: rewrite(req.path, match, dest?.PrefixRewrite),
    prefixRewrite: dest?.PrefixRewrite,
    requestHeaders,
    responseHeaders,
    ConnectTimeout: res.Resolver.ConnectTimeout,
    nodes,
  };
  const timeout = requestTimeoutOf(dest, res.Resolver);
  if (timeout !== undefined) out.RequestTimeout = timeout.ms;
  if (dest?.IdleTimeout !== undefined) out.IdleTimeout = dest.IdleTimeout;
  if (dest?.NumRetries !== undefined) out.NumRetries = dest.NumRetries;
  if (dest?.RetryOnConnectFailure) out.RetryOnConnectFailure = true;
  if (dest?.RetryOn) out.RetryOn = dest.RetryOn;
  if (dest?.RetryOnStatusCodes) out.RetryOnStatusCodes = dest.RetryOnStatusCodes;
  if (lb) out.LoadBalancer = lb;
  return out;
}
