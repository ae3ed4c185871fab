// What a waypoint would do with one request, step by step, for `ambit route explain`. Every decision is
// made by the code the daemon runs: the waypoint's own ChainRouter compiles the chain (falling back as it
// does when the entries do not compile) and decides L7 intentions; lib/l7 walks the routes (explainRoutes),
// routes the request down each split leg (routeRequest), resolves the target with its failover
// (resolveTarget) and selects the subset's endpoints (targetInstances); route-policies.ts finds the
// timeouts, retries, fault, limits and mirror the same way. Nothing here decides on its own.
import pino from 'pino';
import { StateStore } from '../daemon/state/store.js';
import { ChainRouter, entrySetOf } from '../daemon/waypoint/chain-router.js';
import { instanceOf } from '../daemon/waypoint/instance.js';
import {
  type ChainTarget,
  type CompiledChain,
  type HeaderOp,
  type Instance,
  type L7Request,
  type LoadBalancer,
  type RouteResult,
  type SplitterNode,
  compileFilter,
  explainRoutes,
  resolveTarget,
  routeRequest,
  targetInstances,
} from '../lib/l7/index.js';
import { mirrorsOf } from '../lib/l7/mirror.js';
import { keyOf } from '../lib/l7/set.js';
import type { Logger } from '../lib/log.js';
import type { Workload } from '../lib/mesh/model.js';
import { serviceProtocol } from '../lib/mesh/protocols.js';
import {
  type LegPolicies,
  type PolicyContext,
  type RoutePolicies,
  legPolicies,
  routePolicies,
} from './route-policies.js';
import type { RouteView } from './route-view.js';

export interface ExplainRequest {
  service: string;
  namespace: string;
  method: string;
  /** With the query string. */
  path: string;
  /** Names lower-case. */
  headers: Record<string, string | string[]>;
  /** The client as given (a SPIFFE ID or a service) and its SPIFFE ID; undefined: no authorization. */
  source: { given: string; id: string } | undefined;
}

export interface RouteStep {
  index: number;
  /** `Routes[i]` of the entry, or the catch-all the chain adds. */
  label: string;
  matched: boolean;
  reason: string;
}

export interface EndpointRow {
  name: string;
  address: string;
  port: number;
  /** The subset's Filter selects it (true without a Filter). */
  selected: boolean;
  healthy: boolean;
  /** Selected, healthy enough for the subset, and so a candidate for the load balancer. */
  used: boolean;
}

export interface TargetRow {
  id: string;
  service: string;
  namespace: string;
  subset: string;
  filter: string | undefined;
  onlyPassing: boolean;
  /** Why it has no instances here at all (another datacenter, a peer); undefined when it is local. */
  remote: string | undefined;
  endpoints: EndpointRow[];
}

export interface Leg {
  /** The split leg, when a splitter is met; undefined for a route without one. */
  split: { index: number; weight: number; drawn: boolean } | undefined;
  target: string;
  /** `service-resolver/<svc>`, or undefined for Consul's default resolver. */
  resolver: string | undefined;
  redirectedFrom: string | undefined;
  /** The primary target, then its failover targets in the order the resolver lists them. */
  targets: TargetRow[];
  /** The target whose endpoints serve, or undefined when none of them has one. */
  servedBy: string | undefined;
  failover: boolean;
  candidates: string[];
  loadBalancer: LoadBalancer;
  path: string;
  requestHeaders: HeaderOp[];
  responseHeaders: HeaderOp[];
  /** Its timeouts and the rate limit it meets; undefined for tcp. */
  policies: LegPolicies | undefined;
}

export interface Authorization {
  /** As given: a SPIFFE ID, or a service name. */
  source: string;
  client: string;
  allowed: boolean;
  reason: string;
}

export interface Explanation {
  service: string;
  namespace: string;
  where: string;
  protocol: string;
  waypoint: string | undefined;
  /** Set when the entries do not compile for this service: the waypoint then routes by the fallback. */
  chainError: string | undefined;
  request: { method: string; path: string; headers: Record<string, string | string[]> };
  /** The router's routes in order, up to the first that matches; undefined without a router (or tcp). */
  routes: { router: string; tried: RouteStep[]; chosen: string } | undefined;
  /** The splitter met, when there is one: every leg is listed, each request draws one by weight. */
  splitter: string | undefined;
  legs: Leg[];
  /** The route's fault, retries, mirror and the client's limits and outlier ejection; undefined for tcp. */
  policies: RoutePolicies | undefined;
  authorization: Authorization | undefined;
  defaultPolicy: { action: string; from: string };
  verdict: { routed: boolean; status: 200 | 403 | 503; reason: string };
  ignored: readonly string[];
}

/** A logger that keeps the router's warnings: a chain that does not compile is said, not hidden. */
function warningsLogger(into: string[]): Logger {
  return pino(
    { level: 'warn' },
    {
      write(line: string): void {
        const o = JSON.parse(line) as { msg?: string; err?: string };
        into.push(o.err ? `${o.msg}: ${o.err}` : String(o.msg));
      },
    },
  );
}

/** A draw that lands on split leg `i` in chooseSplit's walk (Envoy's 0.01% units), or undefined for weight 0. */
function drawFor(node: SplitterNode, i: number): (() => number) | undefined {
  const units = node.Splits.map((s) => Math.round(s.Weight * 100));
  const total = units.reduce((a, b) => a + b, 0);
  if (units[i] === 0 || total === 0) return undefined;
  const before = units.slice(0, i).reduce((a, b) => a + b, 0);
  return () => (before + 0.5) / total;
}

/** The waypoint's router over `mesh`, with what it warns about kept in `warnings`. */
function routerOf(store: StateStore, datacenter: string, warnings: string[]): ChainRouter {
  return new ChainRouter({ store, log: warningsLogger(warnings), ejectMs: 0, datacenter });
}

/**
 * The services whose instances an explanation of `service` shows: its chain's targets (failover ones too)
 * and the services its router mirrors to.
 * They follow from the config entries alone, so Consul mode reads them before it reads any instance.
 */
export function chainServices(
  mesh: RouteView['mesh'],
  service: string,
  namespace: string,
  datacenter: string,
): string[] {
  const store = new StateStore();
  store.replace(mesh);
  const chain = routerOf(store, datacenter, []).chain({ name: service, namespace });
  // The services its router's routes mirror to: their endpoints are where the copies go.
  const router = entrySetOf(mesh).routers.get(keyOf(chain.ServiceName, chain.Namespace));
  const mirrors = router && mirrorsOf(router);
  const mirrored = mirrors
    ? [mirrors.all, ...mirrors.routes.values()].flatMap((m) => (m ? [m.service] : []))
    : [];
  return [...new Set([...Object.values(chain.Targets).map((t) => t.Service), ...mirrored])];
}

export function explain(view: RouteView, req: ExplainRequest): Explanation {
  const { mesh, datacenter } = view;
  const store = new StateStore();
  store.replace(mesh);
  const warnings: string[] = [];
  const router = routerOf(store, datacenter, warnings);
  const svc = { name: req.service, namespace: req.namespace };
  const model = store.service(req.namespace, req.service);
  const chain = router.chain(svc);
  // A service the model does not know (no workload, no services entry) is parsed as its entries say.
  const protocol = model
    ? router.protocol(model)
    : serviceProtocol(entrySetOf(mesh), svc.name, svc.namespace);
  const l7: L7Request = { method: req.method, path: req.path, headers: req.headers, sourceIp: '' };

  // The waypoint's own view of a target's instances (ChainRouter keeps its copy private).
  const local = (t: ChainTarget): boolean => !t.Peer && t.Datacenter === datacenter;
  const instances = (t: ChainTarget): Instance[] =>
    local(t)
      ? store.endpoints(t.Namespace, t.Service).map((w) => instanceOf(w, store.node(w.node), t.Datacenter))
      : [];

  const start = chain.Nodes[chain.StartNode];
  const http = protocol !== 'tcp';
  let routes: Explanation['routes'];
  if (http && start?.Type === 'router') {
    const tried = explainRoutes(chain, l7).map((s) => ({
      index: s.index,
      label: s.index === start.Routes.length - 1 ? 'catch-all' : `Routes[${s.index}]`,
      matched: s.matched,
      reason: s.reason,
    }));
    const hit = tried.find((s) => s.matched) ?? tried[tried.length - 1]!;
    const d = start.Routes[hit.index]?.Definition.Destination;
    const to = `${d?.Service ?? chain.ServiceName}${d?.ServiceSubset ? ` subset ${d.ServiceSubset}` : ''}`;
    routes = {
      router: `service-router/${chain.ServiceName}`,
      tried,
      chosen:
        hit.label === 'catch-all'
          ? `the catch-all route to ${chain.ServiceName} itself`
          : `service-router/${chain.ServiceName} ${hit.label}, to ${to}`,
    };
  }

  const first = routeRequest(chain, l7, () => 0);
  const route = start?.Type === 'router' ? start.Routes[first.route ?? 0] : undefined;
  const ctx: PolicyContext | undefined = http
    ? {
        set: entrySetOf(mesh),
        chain,
        route: first.route,
        implicit: first.implicit,
        routeLabel: `service-router/${chain.ServiceName} ${first.implicit ? 'catch-all' : `Routes[${first.route}]`}`,
        dest: route?.Definition.Destination,
        datacenter,
        instances,
      }
    : undefined;
  const splitterName = first.nodes.find((n) => n.startsWith('splitter:'));
  const splitter = splitterName ? (chain.Nodes[splitterName] as SplitterNode) : undefined;
  const legs: Leg[] = [];
  if (splitter) {
    splitter.Splits.forEach((leg, i) => {
      const draw = drawFor(splitter, i);
      const r = draw ? routeRequest(chain, l7, draw) : undefined;
      // A leg of weight 0 is never drawn; its target is still the chain's.
      const target = r?.target.id ?? chain.Nodes[leg.NextNode]?.Name ?? leg.NextNode;
      legs.push(
        legOf(
          view,
          chain,
          r ?? first,
          target,
          instances,
          { index: i, weight: leg.Weight, drawn: r !== undefined },
          leg.Definition.Service ?? splitter.Name.split('.')[0]!,
          ctx,
        ),
      );
    });
  } else {
    const asked = route?.Definition.Destination?.Service ?? chain.ServiceName;
    legs.push(legOf(view, chain, first, first.target.id, instances, undefined, asked, ctx));
  }

  let authorization: Authorization | undefined;
  if (http && req.source !== undefined) {
    const a = router.authorize({
      plan: { kind: 'mesh', service: svc, endpoints: [], targetPort: undefined, targeted: undefined },
      client: req.source.id,
      method: req.method,
      path: req.path,
      headers: req.headers,
    });
    authorization = { source: req.source.given, client: req.source.id, allowed: a.allowed, reason: a.reason };
  }

  return {
    service: req.service,
    namespace: req.namespace,
    where: view.where,
    protocol,
    waypoint: model?.waypoint,
    chainError: warnings[0],
    request: { method: req.method, path: req.path, headers: req.headers },
    routes,
    splitter: splitter ? `service-splitter/${splitter.Name.split('.')[0]}` : undefined,
    legs,
    policies: ctx && routePolicies(ctx, svc, req.headers, req.source?.id),
    authorization,
    defaultPolicy: { action: mesh.defaultPolicy, from: view.defaultFrom },
    verdict: verdictOf(authorization, legs),
    ignored: view.ignored,
  };
}

function verdictOf(a: Authorization | undefined, legs: readonly Leg[]): Explanation['verdict'] {
  if (a && !a.allowed) return { routed: false, status: 403, reason: `denied: ${a.reason}` };
  const empty = legs.filter((l) => (l.split?.drawn ?? true) && l.servedBy === undefined);
  if (empty.length === 0) return { routed: true, status: 200, reason: 'routed' };
  const share = empty.reduce((s, l) => s + (l.split?.weight ?? 100), 0);
  const which = empty.map((l) => l.target).join(', ');
  return {
    routed: false,
    status: 503,
    reason:
      share >= 100
        ? `no healthy endpoint for ${which}`
        : `${round(share)}% of requests (the split legs to ${which}) find no healthy endpoint`,
  };
}

const round = (n: number): number => Math.round(n * 100) / 100;

function legOf(
  view: RouteView,
  chain: CompiledChain,
  r: RouteResult,
  targetId: string,
  instances: (t: ChainTarget) => Instance[],
  split: Leg['split'],
  asked: string,
  ctx: PolicyContext | undefined,
): Leg {
  const resolved = resolveTarget(chain, targetId, instances);
  const node = chain.Nodes[`resolver:${targetId}`];
  const resolverNode = node?.Type === 'resolver' ? node : undefined;
  const ids = [targetId, ...(resolverNode?.Resolver.Failover?.Targets ?? [])];
  const targets = ids.flatMap((id) => {
    const t = chain.Targets[id];
    return t ? [targetRow(view, t, instances(t))] : [];
  });
  const primary = chain.Targets[targetId];
  return {
    split,
    target: targetId,
    resolver:
      resolverNode && !resolverNode.Resolver.Default ? `service-resolver/${primary?.Service}` : undefined,
    redirectedFrom: redirectedFrom(view, asked, primary),
    targets,
    servedBy: resolved.instances.length ? resolved.target.ID : undefined,
    failover: resolved.failover,
    candidates: resolved.instances.map((i) => i.id),
    loadBalancer: r.LoadBalancer ?? { Policy: 'round_robin' },
    path: r.path,
    requestHeaders: r.requestHeaders,
    responseHeaders: r.responseHeaders,
    policies: ctx && legPolicies(ctx, targetId, resolved.target, r.path),
  };
}

/** The resolver whose Redirect sent a request for `asked` to `t`'s service, if one did. */
function redirectedFrom(view: RouteView, asked: string, t: ChainTarget | undefined): string | undefined {
  if (!t || asked === t.Service) return undefined;
  const redirect = entrySetOf(view.mesh).resolvers.get(keyOf(asked, t.Namespace))?.Redirect;
  return redirect ? `service-resolver/${asked}` : undefined;
}

function targetRow(view: RouteView, t: ChainTarget, passing: readonly Instance[]): TargetRow {
  const filter = t.Subset.Filter || undefined;
  const compiled = filter ? compileFilter(filter) : undefined;
  const used = new Set(targetInstances(t, passing).map((i) => i.id));
  const failing = (view.notPassing.get(keyOf(t.Service, t.Namespace)) ?? []).map((w: Workload) => ({
    ...instanceOf(w, undefined, t.Datacenter),
    passing: false,
  }));
  const rows = [...passing, ...failing].map((i) => ({
    name: i.id,
    address: i.address,
    port: i.port,
    selected: compiled === undefined || typeof compiled === 'string' || compiled.test(i),
    healthy: i.passing,
    used: used.has(i.id),
  }));
  return {
    id: t.ID,
    service: t.Service,
    namespace: t.Namespace,
    subset: t.ServiceSubset,
    filter,
    onlyPassing: t.Subset.OnlyPassing === true,
    remote: t.Peer
      ? `peer ${t.Peer}: its instances are not this mesh's`
      : t.Datacenter !== view.datacenter
        ? `datacenter ${t.Datacenter}: its instances are not this mesh's`
        : undefined,
    endpoints: rows.sort((a, b) => a.name.localeCompare(b.name)),
  };
}
