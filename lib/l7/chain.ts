// The discovery chain of one service, compiled as Consul's agent/consul/discoverychain/compile.go does:
// router → splitter → resolver, with the implicit catch-all route to the service itself, splitters that
// split to another service's splitter flattened (weights multiplied, header changes merged as Consul's
// MergeParent merges them), resolver Redirects followed (loops refused) and DefaultSubset applied, and
// each resolver's Failover turned into a list of targets. Routers and splitters only count for http,
// http2 and grpc services; a tcp chain is its resolver alone. The result is plain JSON, for config_dump.

import { HTTP_LIKE } from './entries.js';
import type {
  HeaderModifiers,
  LoadBalancer,
  ResolverSubset,
  ServiceResolver,
  ServiceRoute,
  ServiceSplit,
} from './entries.js';
import { L7ConfigError } from './errors.js';
import { type EntrySet, keyOf, nsOf, protocolOf } from './set.js';

export interface ChainTarget {
  ID: string;
  Service: string;
  ServiceSubset: string;
  Namespace: string;
  Partition: string;
  Datacenter: string;
  Peer?: string;
  /** The subset's Filter and OnlyPassing (empty for the unnamed subset). */
  Subset: ResolverSubset;
}
export interface RouterNode {
  Type: 'router';
  Name: string;
  Routes: { Definition: ServiceRoute; NextNode: string }[];
}
export interface SplitterNode {
  Type: 'splitter';
  Name: string;
  Splits: { Weight: number; NextNode: string; Definition: ServiceSplit }[];
  LoadBalancer?: LoadBalancer;
}
export interface ResolverNode {
  Type: 'resolver';
  Name: string;
  Resolver: {
    /** No service-resolver entry: Consul's defaults. */
    Default: boolean;
    ConnectTimeout: number;
    RequestTimeout?: number;
    Target: string;
    Failover?: { Targets: string[] };
  };
  LoadBalancer?: LoadBalancer;
}
export type ChainNode = RouterNode | SplitterNode | ResolverNode;

export interface CompiledChain {
  ServiceName: string;
  Namespace: string;
  Partition: string;
  Datacenter: string;
  Protocol: string;
  StartNode: string;
  /** No router, splitter or resolver shaped this chain. */
  Default: boolean;
  Nodes: Record<string, ChainNode>;
  Targets: Record<string, ChainTarget>;
}

export interface ChainOptions {
  namespace?: string;
  partition?: string;
  datacenter?: string;
  /** Named in errors: the file or source the entries came from. */
  where?: string;
}

/** Consul's default connect timeout for a resolver that sets none. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5000;

interface Want {
  Service: string;
  ServiceSubset: string;
  Namespace: string;
  Partition: string;
  Datacenter: string;
  Peer?: string;
}

export const targetId = (t: Want): string =>
  t.Peer
    ? `${t.ServiceSubset ? `${t.ServiceSubset}.` : ''}${t.Service}.${t.Namespace}.${t.Partition}.external.${t.Peer}`
    : `${t.ServiceSubset ? `${t.ServiceSubset}.` : ''}${t.Service}.${t.Namespace}.${t.Partition}.${t.Datacenter}`;

/** Consul's MergeHTTPHeaderModifiers: `over` wins on collisions; removals are the union. */
export function mergeHeaderModifiers(
  base: HeaderModifiers | undefined,
  over: HeaderModifiers | undefined,
): HeaderModifiers | undefined {
  const empty = (m: HeaderModifiers | undefined): boolean =>
    !m || (!Object.keys(m.Add ?? {}).length && !Object.keys(m.Set ?? {}).length && !(m.Remove ?? []).length);
  if (empty(base)) return over && structuredClone(over);
  if (empty(over)) return structuredClone(base);
  const out: HeaderModifiers = {};
  const add = { ...base!.Add, ...over!.Add };
  const set = { ...base!.Set, ...over!.Set };
  const remove = [...new Set([...(base!.Remove ?? []), ...(over!.Remove ?? [])])];
  if (Object.keys(add).length) out.Add = add;
  if (Object.keys(set).length) out.Set = set;
  if (remove.length) out.Remove = remove;
  return out;
}

export function compileChain(set: EntrySet, service: string, options: ChainOptions = {}): CompiledChain {
  const namespace = nsOf(options.namespace);
  const partition = options.partition ?? 'default';
  const datacenter = options.datacenter ?? 'dc1';
  const where = options.where ?? 'chain';
  const protocol = protocolOf(set, service, namespace);
  const l7 = HTTP_LIKE.includes(protocol);
  const nodes: Record<string, ChainNode> = {};
  const targets: Record<string, ChainTarget> = {};
  const splitting = new Set<string>();
  // Resolver nodes whose Failover was worked out (a node first met as a failover target has none).
  const withFailover = new Set<string>();
  let shaped = false;

  const fail = (entry: string, field: string, reason: string): never => {
    throw new L7ConfigError(where, entry, field, reason);
  };
  const want = (svc: string, subset = '', ns = namespace, extra: Partial<Want> = {}): Want => ({
    Service: svc,
    ServiceSubset: subset,
    Namespace: ns,
    Partition: extra.Partition ?? partition,
    Datacenter: extra.Datacenter ?? datacenter,
    ...(extra.Peer ? { Peer: extra.Peer } : {}),
  });
  const resolverOf = (w: Want): ServiceResolver | undefined =>
    w.Peer ? undefined : set.resolvers.get(keyOf(w.Service, w.Namespace));

  /** Follows Redirects and applies DefaultSubset: the target a request for `w` really lands on. */
  const rewrite = (w: Want): { w: Want; resolver: ServiceResolver | undefined } => {
    const seen = new Set<string>();
    let cur = w;
    // Each step adds a target to `seen`; a repeat is a loop, so this ends within (resolvers + 1) steps.
    for (;;) {
      const id = targetId(cur);
      if (seen.has(id))
        fail(`service-resolver/${cur.Service}`, 'Redirect', `circular resolver redirect through ${id}`);
      seen.add(id);
      const res = resolverOf(cur);
      const r = res?.Redirect;
      if (r) {
        const next = want(
          r.Service ?? cur.Service,
          r.ServiceSubset ?? (r.Service && r.Service !== cur.Service ? '' : cur.ServiceSubset),
          r.Namespace ?? cur.Namespace,
          {
            Partition: r.Partition ?? cur.Partition,
            Datacenter: r.Datacenter ?? cur.Datacenter,
            Peer: r.Peer,
          },
        );
        // Consul applies a redirect only once: a resolver that redirects to itself is already applied.
        if (targetId(next) !== id) {
          cur = next;
          continue;
        }
      }
      if (cur.ServiceSubset === '' && res?.DefaultSubset) cur = { ...cur, ServiceSubset: res.DefaultSubset };
      return { w: cur, resolver: res };
    }
  };

  const resolverNode = (w0: Want, forFailover: boolean): ResolverNode => {
    const { w, resolver } = rewrite(w0);
    if (resolver) shaped = true;
    const id = targetId(w);
    const name = `resolver:${id}`;
    const known = nodes[name];
    if (known?.Type === 'resolver' && (forFailover || withFailover.has(name))) return known;
    if (!forFailover) withFailover.add(name);
    if (w.ServiceSubset !== '' && !w.Peer && resolver?.Subsets?.[w.ServiceSubset] === undefined)
      fail(
        `service-resolver/${w.Service}`,
        'Subsets',
        `service "${w.Service}" does not have a subset named "${w.ServiceSubset}"`,
      );
    if (!w.Peer) {
      const p = protocolOf(set, w.Service, w.Namespace);
      if (p !== protocol)
        fail(
          `service-defaults/${w.Service}`,
          'Protocol',
          `discovery chain "${service}" uses inconsistent protocols: "${service}" is ${protocol}, "${w.Service}" is ${p}`,
        );
    }
    targets[id] = {
      ID: id,
      Service: w.Service,
      ServiceSubset: w.ServiceSubset,
      Namespace: w.Namespace,
      Partition: w.Partition,
      Datacenter: w.Datacenter,
      ...(w.Peer ? { Peer: w.Peer } : {}),
      Subset: { ...(resolver?.Subsets?.[w.ServiceSubset] ?? {}) },
    };
    const node: ResolverNode = {
      Type: 'resolver',
      Name: id,
      Resolver: {
        Default: resolver === undefined,
        ConnectTimeout: resolver?.ConnectTimeout ?? DEFAULT_CONNECT_TIMEOUT_MS,
        ...(resolver?.RequestTimeout !== undefined ? { RequestTimeout: resolver.RequestTimeout } : {}),
        Target: id,
      },
      ...(resolver?.LoadBalancer ? { LoadBalancer: resolver.LoadBalancer } : {}),
    };
    nodes[name] = node;
    const f = forFailover ? undefined : (resolver?.Failover?.[w.ServiceSubset] ?? resolver?.Failover?.['*']);
    if (f) {
      const wants: Want[] = f.Targets?.length
        ? f.Targets.map((t) =>
            want(t.Service ?? w.Service, t.ServiceSubset ?? '', t.Namespace ?? w.Namespace, {
              Partition: t.Partition,
              Datacenter: t.Datacenter,
              Peer: t.Peer,
            }),
          )
        : f.Datacenters?.length
          ? f.Datacenters.map((dc) =>
              want(f.Service ?? w.Service, f.ServiceSubset ?? '', f.Namespace ?? w.Namespace, {
                Datacenter: dc,
              }),
            )
          : [want(f.Service ?? w.Service, f.ServiceSubset ?? '', f.Namespace ?? w.Namespace)];
      const ids: string[] = [];
      for (const fw of wants) {
        const fid = resolverNode(fw, true).Resolver.Target;
        if (fid !== id && !ids.includes(fid)) ids.push(fid);
      }
      if (ids.length) node.Resolver.Failover = { Targets: ids };
    }
    return node;
  };

  const splitterOrResolver = (svc: string, ns: string): ChainNode => {
    const splitter = l7 ? set.splitters.get(keyOf(svc, ns)) : undefined;
    if (!splitter) return resolverNode(want(svc, '', ns), false);
    shaped = true;
    const name = `splitter:${svc}.${ns}.${partition}`;
    const known = nodes[name];
    if (known) return known;
    if (splitting.has(name)) fail(`service-splitter/${svc}`, 'Splits', `circular split through "${svc}"`);
    splitting.add(name);
    const node: SplitterNode = { Type: 'splitter', Name: `${svc}.${ns}.${partition}`, Splits: [] };
    for (const split of splitter.Splits) {
      const s = split.Service ?? svc;
      const sns = split.Namespace ?? ns;
      if (split.ServiceSubset === undefined && (s !== svc || sns !== ns)) {
        const next = splitterOrResolver(s, sns);
        if (next.Type === 'splitter') {
          for (const child of next.Splits) {
            const def: ServiceSplit = { ...child.Definition };
            const req = mergeHeaderModifiers(split.RequestHeaders, child.Definition.RequestHeaders);
            const res = mergeHeaderModifiers(child.Definition.ResponseHeaders, split.ResponseHeaders);
            if (req) def.RequestHeaders = req;
            else def.RequestHeaders = undefined;
            if (res) def.ResponseHeaders = res;
            else def.ResponseHeaders = undefined;
            node.Splits.push({
              Weight: Math.round(split.Weight * child.Weight) / 100,
              NextNode: child.NextNode,
              Definition: def,
            });
          }
          continue;
        }
        node.Splits.push({
          Weight: split.Weight,
          NextNode: `resolver:${(next as ResolverNode).Name}`,
          Definition: split,
        });
        continue;
      }
      const r = resolverNode(want(s, split.ServiceSubset ?? '', sns), false);
      node.Splits.push({ Weight: split.Weight, NextNode: `resolver:${r.Name}`, Definition: split });
    }
    const lb = set.resolvers.get(keyOf(svc, ns))?.LoadBalancer;
    if (lb) node.LoadBalancer = lb;
    splitting.delete(name);
    nodes[name] = node;
    return node;
  };

  const nodeName = (n: ChainNode): string => `${n.Type}:${n.Name}`;
  let start: ChainNode;
  const router = l7 ? set.routers.get(keyOf(service, namespace)) : undefined;
  if (router) {
    shaped = true;
    const routes: ServiceRoute[] = [
      ...router.Routes,
      { Match: { HTTP: { PathPrefix: '/' } }, Destination: { Service: service } },
    ];
    const node: RouterNode = { Type: 'router', Name: `${service}.${namespace}.${partition}`, Routes: [] };
    for (const route of routes) {
      const d = route.Destination ?? {};
      const svc = d.Service ?? service;
      const ns = d.Namespace ?? namespace;
      const next =
        d.ServiceSubset !== undefined
          ? resolverNode(want(svc, d.ServiceSubset, ns, { Partition: d.Partition }), false)
          : splitterOrResolver(svc, ns);
      node.Routes.push({ Definition: route, NextNode: nodeName(next) });
    }
    nodes[nodeName(node)] = node;
    start = node;
  } else {
    start = splitterOrResolver(service, namespace);
  }
  return {
    ServiceName: service,
    Namespace: namespace,
    Partition: partition,
    Datacenter: datacenter,
    Protocol: protocol,
    StartNode: nodeName(start),
    Default: !shaped,
    Nodes: nodes,
    Targets: targets,
  };
}
