// The waypoint's router by Consul's discovery chain: per request, the target service's compiled chain
// (compiled once per mesh, kept), its first matching route, a weighted split, the resolver's target with
// its subset filter and failover, and the endpoint its LoadBalancer picks. L7 intentions decide first.
// Everything it decides comes from lib/l7; this module maps the mesh model onto it and keeps the state
// the decisions need (pickers, the compiled chains, the endpoints that failed lately).
import { type FaultPolicy, drawFault, routeFault } from '../../lib/l7/fault.js';
import {
  type ChainTarget,
  type CompiledChain,
  type ConfigEntry,
  type EntrySet,
  type Instance,
  type L7Request,
  Picker,
  type Random,
  type ServiceDefaults,
  authorizeRequest,
  compileChain,
  indexEntries,
  resolveTarget,
  routeRequest,
  targetInstances,
} from '../../lib/l7/index.js';
import { type MirrorPolicy, drawMirror, mirrorTarget, routeMirror } from '../../lib/l7/mirror.js';
import { keyOf } from '../../lib/l7/set.js';
import type { Logger } from '../../lib/log.js';
import type { Mesh, Service, ServiceProtocol, Workload } from '../../lib/mesh/model.js';
import { peerFromUris } from '../proxy/inbound/decide.js';
import type { OutboundPlan, RoutedService } from '../proxy/outbound/plan.js';
import type { StateStore } from '../state/store.js';
import { instanceOf } from './instance.js';
import {
  type GroupView,
  OutlierDetector,
  type OutlierMetrics,
  type OutlierSettings,
  type OutlierTicket,
  type UpstreamResult,
  passiveHealthCheck,
  settingsOf,
} from './outlier.js';
import { type RetryPolicy, retryPolicy } from './retry.js';
import type {
  Authorization,
  FaultRoute,
  LimitedRoute,
  MirrorTarget,
  NoRoute,
  RequestRoute,
  RouteLabels,
  RouteRequest,
  WaypointRouter,
} from './router.js';
import { type Lane, type ServiceRef, TrafficLimits } from './traffic-limits.js';

export interface ChainRouterDeps {
  readonly store: Pick<StateStore, 'mesh' | 'endpoints' | 'node' | 'service'>;
  readonly log: Logger;
  /** How long an endpoint that failed is passed over while another is left. */
  readonly ejectMs: number;
  readonly datacenter?: string;
  /** Draws in [0, 1) for splits, random picks, faults and EnforcingConsecutive5xx; Math.random unless a test injects one. */
  readonly random?: Random;
  /** Where outlier ejections are counted (ambit_waypoint_outlier_*). */
  readonly outlierMetrics?: OutlierMetrics;
  /** Outlier sweeps on timers (default); a test turns them off and sweeps with its own clock. */
  readonly outlierTimers?: boolean;
}

/** The instances of one chain target, and the workloads they stand for. */
interface TargetInstances {
  readonly list: Instance[];
  readonly byId: ReadonlyMap<string, Workload>;
}

/** What one mesh (one state of the control plane) compiles into; rebuilt when the store holds another. */
interface Generation {
  readonly mesh: Mesh;
  readonly set: EntrySet;
  readonly chains: Map<string, CompiledChain>;
  readonly instances: Map<string, TargetInstances>;
  readonly pickers: Map<string, Picker>;
  /** Each compiled chain's policies, per route and per (client, target): read from the entries once. */
  readonly policies: WeakMap<CompiledChain, ChainPolicies>;
}

/**
 * What a request's route and its (client, target) pair meet, as far as it depends only on the entry set:
 * kept per compiled chain (so per generation), so that a request reads no entry for them again.
 */
interface ChainPolicies {
  /** Per route index (undefined: the chain has no router). */
  readonly routes: Map<number | undefined, RoutePolicies>;
  /** Per client service (undefined: no client of this mesh), per chain target ID. */
  readonly pairs: Map<ServiceRef | undefined, Map<string, PairPolicies>>;
}

interface RoutePolicies {
  readonly retry: RetryPolicy | undefined;
  readonly fault: FaultPolicy | undefined;
  readonly mirror: MirrorPolicy | undefined;
}

interface PairPolicies {
  /** What TrafficLimits admits it by. */
  readonly lane: Lane;
  /** Its PassiveHealthCheck's settings; undefined: none. */
  readonly outliers: OutlierSettings | undefined;
}

/** What a retry of a request needs to pick again among the same target's endpoints. */
interface Repick {
  readonly instances: Instance[];
  readonly byId: ReadonlyMap<string, Workload>;
  readonly picker: Picker;
  readonly least: boolean;
  readonly hash: ReturnType<typeof hashInput>;
  /** The request's concurrency slot (MaxConcurrentRequests), whichever endpoint it is at. */
  readonly release: () => void;
  /** Its outlier group under a PassiveHealthCheck: a retry avoids the ejected and reports its own result. */
  readonly outliers: OutlierTicket | undefined;
}

/** What one route handed out holds until it is done, moved or reported. */
interface Held {
  /** What `done` undoes (least_request's count, the concurrency slot); undefined once done or moved. */
  end: (() => void) | undefined;
  /** Only for routes with a retry policy: how `reroute` picks again. */
  readonly repick: Repick | undefined;
  /** Under a PassiveHealthCheck: what its result is reported to (once); undefined once reported. */
  ticket: OutlierTicket | undefined;
}

/**
 * The entries the chain compiler reads, with a `service-defaults` Protocol for every service whose
 * protocol the model gives (services.<svc>.protocol in the mesh file) and no entry sets: the waypoint
 * parses a service as the model says, so its chain must be compiled for the same protocol.
 */
export function entrySetOf(mesh: Mesh): EntrySet {
  const entries: ConfigEntry[] = [...(mesh.configEntries ?? [])];
  const declared = new Set(
    entries.filter((e) => e.Kind === 'service-defaults').map((e) => keyOf(e.Name, e.Namespace)),
  );
  for (const s of mesh.services) {
    if (s.protocol === undefined || declared.has(keyOf(s.name, s.namespace))) continue;
    const d: ServiceDefaults = { Kind: 'service-defaults', Name: s.name, Protocol: s.protocol };
    if (s.namespace !== 'default') d.Namespace = s.namespace;
    entries.push(d);
  }
  return indexEntries(entries);
}

const serviceKey = (s: RoutedService): string => keyOf(s.name, s.namespace);

/** No endpoint excluded: the first pick of a request. */
const NO_ONE: ReadonlySet<string> = new Set();

const MAX_CLIENTS = 10_000;
/** Each client principal's service, parsed once: every request names one, and there are few. */
const clients = new Map<string, ServiceRef | null>();

/** The client's service as its SPIFFE ID names it (undefined: none of this mesh); shared, frozen. */
function clientOf(principal: string): ServiceRef | undefined {
  let c = clients.get(principal);
  if (c === undefined) {
    const peer = peerFromUris([principal]);
    c = peer?.service ? Object.freeze({ name: peer.service, namespace: peer.namespace ?? 'default' }) : null;
    if (clients.size >= MAX_CLIENTS) clients.clear();
    clients.set(principal, c);
  }
  return c ?? undefined;
}

export class ChainRouter implements WaypointRouter {
  readonly #d: ChainRouterDeps;
  readonly #random: Random;
  readonly #ejectedUntil = new Map<string, number>();
  /** The last chain that compiled, per service: a later mesh whose entries do not compile keeps it. */
  readonly #lastGood = new Map<string, CompiledChain>();
  /**
   * What each route handed out holds: one entry per route, one WeakMap insert per request (each insert
   * is an ephemeron the collector traces: the three things a route may hold share it).
   */
  readonly #held = new WeakMap<RequestRoute, Held>();
  readonly #limits = new TrafficLimits();
  readonly #outliers: OutlierDetector;
  #gen: Generation | undefined;

  constructor(d: ChainRouterDeps) {
    this.#d = d;
    this.#random = d.random ?? Math.random;
    this.#outliers = new OutlierDetector({
      log: d.log,
      metrics: d.outlierMetrics,
      random: this.#random,
      ...(d.outlierTimers === false ? { timers: false } : {}),
    });
  }

  /** The outlier detector's state (for /config_dump, and tests that sweep it with their own clock). */
  get outliers(): OutlierDetector {
    return this.#outliers;
  }

  /** Every (client service, target) under a PassiveHealthCheck, with its endpoints ejected and until when. */
  ejections(): GroupView[] {
    return this.#outliers.dump();
  }

  protocol(service: Service | undefined): ServiceProtocol {
    return service?.protocol ?? 'tcp';
  }

  /** The compiled chain of a service, as the waypoint routes by it now (for config_dump and explain). */
  chain(service: RoutedService): CompiledChain {
    return this.#chain(this.#generation(), service);
  }

  authorize(request: RouteRequest): Authorization {
    const g = this.#generation();
    const svc = request.plan.service;
    const entry = g.set.intentions.get(serviceKey(svc));
    const wildcard = g.set.intentions.get(keyOf('*', svc.namespace));
    // Without service-intentions, L4 policy alone applies, and the destination checks it for the client
    // the waypoint names; the waypoint has nothing of its own to add.
    if (!entry && !wildcard) return { allowed: true, reason: 'no service-intentions entry' };
    const peer = peerFromUris([request.client]);
    if (!peer?.service)
      return { allowed: false, reason: `client ${request.client} names no service of this mesh` };
    const decision = authorizeRequest(
      entry,
      wildcard,
      { service: peer.service, ...(peer.namespace ? { namespace: peer.namespace } : {}) },
      l7Request(request),
      g.mesh.defaultPolicy === 'allow',
    );
    return { allowed: decision.allowed, reason: decision.reason };
  }

  route(request: RouteRequest, now = Date.now()): RequestRoute | NoRoute | LimitedRoute | FaultRoute {
    const g = this.#generation();
    const chain = this.#chain(g, request.plan.service);
    const req = l7Request(request);
    const r = routeRequest(chain, req, this.#random);
    const resolved = resolveTarget(chain, r.target.id, (t) => this.#instances(g, t).list);
    const splitter = r.nodes.find((n) => n.startsWith('splitter:'));
    const labels: RouteLabels = {
      route:
        r.route === undefined
          ? undefined
          : r.implicit
            ? 'default'
            : `service-router/${chain.ServiceName}[${r.route}]`,
      split:
        r.split && splitter
          ? `service-splitter/${splitter.slice('splitter:'.length).split('.')[0]}[${r.split.index}] ${r.split.weight}%`
          : undefined,
      subset: resolved.target.ServiceSubset || undefined,
      target: resolved.target.ID,
      failover: resolved.failover,
    };
    const policies = this.#routePolicies(g, chain, r);
    // As Envoy's fault filter, ahead of its router: an abort needs no endpoint and takes no limit's slot.
    const fault = policies.fault && drawFault(policies.fault, request.headers ?? {}, this.#random);
    if (fault?.abort && fault.delayMs === undefined)
      return { kind: 'fault', abort: fault.abort, why: `fault injected: abort ${fault.abort.http}`, labels };
    if (resolved.instances.length === 0)
      return { kind: 'none', why: `no healthy endpoint for ${resolved.tried.join(', ')}`, labels };
    // Limits before the pick: a refused request moves no round robin, hash ring or least_request count.
    const client = clientOf(request.client);
    const pair = this.#pair(g, chain, client, request.plan.service, resolved.target);
    const admitted = this.#limits.admitLane(pair.lane, r.path, now);
    if (!admitted.ok) return { kind: 'limited', limit: admitted.refusal, why: admitted.why, labels };
    const target = this.#instances(g, resolved.target);
    let live = this.#live(resolved.instances, NO_ONE, now);
    const t = resolved.target;
    const outliers =
      pair.outliers && client
        ? this.#outliers.ticket(
            client,
            { id: t.ID, service: { name: t.Service, namespace: t.Namespace } },
            pair.outliers,
            resolved.instances.length,
            '',
          )
        : undefined;
    if (outliers) live = this.#outliers.live(outliers, live);
    const picker = this.#picker(g, resolved.target.ID, r.LoadBalancer);
    const hash = hashInput(request);
    const picked = picker.pick(live, hash, this.#random);
    const endpoint = picked.instance && target.byId.get(picked.instance.id);
    if (!endpoint) {
      admitted.release();
      return { kind: 'none', why: `no endpoint picked for ${resolved.target.ID}`, labels };
    }
    // As Envoy's router: a request it forwards is copied (never one refused or aborted before it).
    const mirror = policies.mirror && this.#mirror(g, chain, policies.mirror, request, now);
    const out: RequestRoute = {
      kind: 'route',
      plan: this.#planFor(resolved.target, request.plan),
      endpoint,
      path: r.path,
      requestHeaders: r.requestHeaders,
      responseHeaders: r.responseHeaders,
      labels,
      // Every field written, set or not: each route has the one shape.
      cookie: picked.cookie,
      timeouts: { requestMs: r.RequestTimeout, idleMs: r.IdleTimeout, connectMs: r.ConnectTimeout },
      retry: policies.retry,
      fault,
      mirror,
      connections: pair.lane.connections,
    };
    const least = r.LoadBalancer?.Policy === 'least_request';
    if (least) picker.least.begin(endpoint.name);
    this.#held.set(out, {
      end: least
        ? () => {
            picker.least.end(endpoint.name);
            admitted.release();
          }
        : admitted.release,
      repick: policies.retry && {
        instances: resolved.instances,
        byId: target.byId,
        picker,
        least,
        hash,
        release: admitted.release,
        outliers,
      },
      ticket: outliers && { group: outliers.group, host: endpoint.name },
    });
    return out;
  }

  done(route: RequestRoute): void {
    const h = this.#held.get(route);
    if (h === undefined) return;
    const end = h.end;
    h.end = undefined;
    end?.();
  }

  reroute(route: RequestRoute, exclude: ReadonlySet<string>, now = Date.now()): RequestRoute | undefined {
    const held = this.#held.get(route);
    const p = held?.repick;
    if (!held || !p) return undefined;
    const fresh = p.instances.filter((i) => !exclude.has(i.id));
    // Every endpoint tried: the retry goes to one of them again, as it must when there is one.
    let live = this.#live(fresh.length > 0 ? fresh : p.instances, NO_ONE, now);
    if (p.outliers) live = this.#outliers.live(p.outliers, live);
    const endpoint = p.byId.get(p.picker.pick(live, p.hash, this.#random).instance?.id ?? '');
    if (!endpoint) return undefined;
    // A fault (delay, abort) is met once, by the first attempt, as Envoy's fault filter runs before the router.
    // A copy too: the mirror gets the request once, not once per attempt.
    const next: RequestRoute = { ...route, endpoint, fault: undefined, mirror: undefined };
    // Each attempt's result counts for its own endpoint, as Envoy's outlier detection sees every try.
    const h: Held = {
      end: undefined,
      repick: p,
      ticket: p.outliers && { group: p.outliers.group, host: endpoint.name },
    };
    this.#held.set(next, h);
    // The request's hold (its concurrency slot) moves to the new route; least_request counts the new endpoint.
    if (held.end === undefined) return next;
    held.end = undefined;
    if (p.least) {
      p.picker.least.end(route.endpoint.name);
      p.picker.least.begin(endpoint.name);
      h.end = () => {
        p.picker.least.end(endpoint.name);
        p.release();
      };
    } else h.end = p.release;
    return next;
  }

  #chainPolicies(g: Generation, chain: CompiledChain): ChainPolicies {
    let p = g.policies.get(chain);
    if (!p) {
      p = { routes: new Map(), pairs: new Map() };
      g.policies.set(chain, p);
    }
    return p;
  }

  /** The retry, fault and mirror policies of the route `r` took, read once per compiled chain. */
  #routePolicies(g: Generation, chain: CompiledChain, r: ReturnType<typeof routeRequest>): RoutePolicies {
    const routes = this.#chainPolicies(g, chain).routes;
    let p = routes.get(r.route);
    if (p === undefined) {
      p = {
        retry:
          r.RetryOn === undefined && !r.RetryOnConnectFailure && r.RetryOnStatusCodes === undefined
            ? undefined
            : retryPolicy(r),
        fault: routeFault(g.set, chain, r.route, r.implicit)?.policy,
        mirror: routeMirror(g.set, chain, r.route, r.implicit)?.policy,
      };
      routes.set(r.route, p);
    }
    return p;
  }

  /** What the (client, target) pair is limited and watched by, read once per compiled chain. */
  #pair(
    g: Generation,
    chain: CompiledChain,
    client: ServiceRef | undefined,
    dialed: RoutedService,
    t: ChainTarget,
  ): PairPolicies {
    const pairs = this.#chainPolicies(g, chain).pairs;
    let byTarget = pairs.get(client);
    if (!byTarget) {
      // Clients are few, but bounded all the same (clientOf's own bound makes new refs past it).
      if (pairs.size >= MAX_CLIENTS) pairs.clear();
      byTarget = new Map();
      pairs.set(client, byTarget);
    }
    let p = byTarget.get(t.ID);
    if (!p) {
      const phc = client && passiveHealthCheck(g.set, client, dialed);
      p = {
        lane: this.#limits.lane(g.set, client, dialed, { name: t.Service, namespace: t.Namespace }),
        outliers: phc ? settingsOf(phc) : undefined,
      };
      byTarget.set(t.ID, p);
    }
    return p;
  }

  outcome(route: RequestRoute, result: UpstreamResult, now = Date.now()): void {
    const h = this.#held.get(route);
    const t = h?.ticket;
    if (!h || !t) return;
    // A request's first result is the one that counts (a reset after its answer adds nothing).
    h.ticket = undefined;
    this.#outliers.observe(t, result, now);
  }

  /**
   * The mirror the request's route draws, if its router's Meta sets one: the service (and subset, else its
   * resolver's DefaultSubset, as a route Destination's) and an endpoint of it, round robin among the
   * healthy ones its subset selects.
   */
  #mirror(
    g: Generation,
    chain: CompiledChain,
    policy: MirrorPolicy,
    request: RouteRequest,
    now: number,
  ): MirrorTarget | undefined {
    if (!drawMirror(policy, this.#random)) return undefined;
    const { service, target, why } = mirrorTarget(
      g.set,
      policy,
      chain.Namespace,
      this.#d.datacenter ?? 'dc1',
    );
    if (!target) return { service, why };
    const known = this.#instances(g, target);
    const live = this.#live(targetInstances(target, known.list), NO_ONE, now);
    const picked = this.#picker(g, `mirror:${target.ID}`, undefined).pick(
      live,
      hashInput(request),
      this.#random,
    );
    const endpoint = picked.instance && known.byId.get(picked.instance.id);
    if (!endpoint) return { service, why: `no healthy endpoint for ${target.ID}` };
    return { service, plan: this.#planFor(target, request.plan), endpoint };
  }

  /** tcp: the resolver's target of the service itself (subset, LoadBalancer), else its endpoints in turn. */
  pick(request: RouteRequest, exclude: ReadonlySet<string>, now = Date.now()): Workload | undefined {
    const g = this.#generation();
    const chain = this.#chain(g, request.plan.service);
    const r = routeRequest(chain, l7Request(request), this.#random);
    const resolved = resolveTarget(chain, r.target.id, (t) => this.#instances(g, t).list);
    const own = request.plan.service;
    // A tcp connection is carried with the plan it came with: a resolver that sends it to another
    // service is not followed here (the tcp path has one plan per connection).
    const sameService = resolved.target.Service === own.name && resolved.target.Namespace === own.namespace;
    const allowed = new Set(request.plan.endpoints.map((w) => w.name));
    const candidates = (
      sameService ? resolved.instances : request.plan.endpoints.map((w) => instanceOf(w, undefined))
    ).filter((i) => allowed.has(i.id) && !exclude.has(i.id));
    if (candidates.length === 0) return undefined;
    const live = this.#live(candidates, exclude, now);
    const picker = this.#picker(g, `tcp:${resolved.target.ID}`, r.LoadBalancer);
    const id = picker.pick(live, hashInput(request), this.#random).instance?.id;
    return request.plan.endpoints.find((w) => w.name === id);
  }

  failed(endpoint: Workload, now = Date.now()): void {
    this.#ejectedUntil.set(endpoint.name, now + this.#d.ejectMs);
  }

  succeeded(endpoint: Workload): void {
    this.#ejectedUntil.delete(endpoint.name);
  }

  /** The instances not ejected lately; all of them when every one is (a failed endpoint beats none). */
  #live(list: Instance[], exclude: ReadonlySet<string>, now: number): Instance[] {
    if (this.#ejectedUntil.size === 0) return list;
    const ok = list.filter((i) => !exclude.has(i.id) && (this.#ejectedUntil.get(i.id) ?? 0) <= now);
    return ok.length > 0 ? ok : list;
  }

  #generation(): Generation {
    const mesh = this.#d.store.mesh;
    if (this.#gen?.mesh === mesh) return this.#gen;
    const set = entrySetOf(mesh);
    this.#gen = {
      mesh,
      set,
      chains: new Map(),
      instances: new Map(),
      pickers: new Map(),
      policies: new WeakMap(),
    };
    // A client whose entries no longer set a PassiveHealthCheck ends its ejections.
    if (this.#outliers.size > 0)
      this.#outliers.prune((client) => {
        const uc = set.serviceDefaults.get(client)?.UpstreamConfig;
        return !!uc?.Defaults?.PassiveHealthCheck || !!uc?.Overrides?.some((o) => o.PassiveHealthCheck);
      });
    if (this.#outliers.size > 0)
      this.#outliers.forget(
        (svc) => new Set(this.#d.store.endpoints(svc.namespace, svc.name).map((w) => w.name)),
      );
    return this.#gen;
  }

  #chain(g: Generation, svc: RoutedService): CompiledChain {
    const key = serviceKey(svc);
    const known = g.chains.get(key);
    if (known) return known;
    let chain: CompiledChain;
    const options = {
      namespace: svc.namespace,
      datacenter: this.#d.datacenter ?? 'dc1',
      where: 'config entries',
    };
    try {
      chain = compileChain(g.set, svc.name, options);
      this.#lastGood.set(key, chain);
    } catch (err) {
      // Entries are validated where they are read; one that still does not compile must not take the
      // service down: its last good chain stays, else the service alone (the chain of no entries).
      const last = this.#lastGood.get(key);
      this.#d.log.warn(
        { service: key, err: (err as Error).message, kept: last ? 'last good chain' : 'default chain' },
        'discovery chain does not compile',
      );
      chain = last ?? compileChain(indexEntries(this.#protocolOnly(g, svc)), svc.name, options);
    }
    g.chains.set(key, chain);
    return chain;
  }

  #protocolOnly(g: Generation, svc: RoutedService): ConfigEntry[] {
    const p = g.set.serviceDefaults.get(serviceKey(svc))?.Protocol;
    return p ? [{ Kind: 'service-defaults', Name: svc.name, Namespace: svc.namespace, Protocol: p }] : [];
  }

  #instances(g: Generation, t: ChainTarget): TargetInstances {
    let got = g.instances.get(t.ID);
    if (got) return got;
    const byId = new Map<string, Workload>();
    const list: Instance[] = [];
    // Another datacenter or a peer is not this mesh's: it has no instances here.
    const local = !t.Peer && t.Datacenter === (this.#d.datacenter ?? 'dc1');
    for (const w of local ? this.#d.store.endpoints(t.Namespace, t.Service) : []) {
      byId.set(w.name, w);
      list.push(instanceOf(w, this.#d.store.node(w.node), t.Datacenter));
    }
    got = { list, byId };
    g.instances.set(t.ID, got);
    return got;
  }

  #picker(g: Generation, key: string, lb: Picker['lb']): Picker {
    let p = g.pickers.get(key);
    if (!p) {
      p = new Picker(lb);
      g.pickers.set(key, p);
    }
    return p;
  }

  /**
   * The plan of the service a target belongs to: the request's own when it is that service, else that
   * service's endpoints, at its one declared target port or each endpoint's only port.
   */
  #planFor(t: ChainTarget, from: OutboundPlan): OutboundPlan {
    if (t.Service === from.service.name && t.Namespace === from.service.namespace) return from;
    const svc = this.#d.store.service(t.Namespace, t.Service);
    return {
      kind: 'mesh',
      service: { name: t.Service, namespace: t.Namespace },
      endpoints: this.#d.store.endpoints(t.Namespace, t.Service),
      targetPort: svc?.ports.length === 1 ? svc.ports[0]!.targetPort : undefined,
      targeted: undefined,
    };
  }
}

const l7Request = (r: RouteRequest): L7Request => ({
  method: r.method ?? '',
  path: r.path ?? '/',
  headers: r.headers ?? {},
  sourceIp: r.sourceIp ?? '',
});

const hashInput = (r: RouteRequest): { path: string; headers: L7Request['headers']; sourceIp: string } => ({
  path: r.path ?? '/',
  headers: r.headers ?? {},
  sourceIp: r.sourceIp ?? '',
});
