// The instances behind one chain target: the subset's Filter (go-bexpr over the instance), health as a
// Consul health query gives it (passing and warning, or passing only with OnlyPassing; never critical),
// and the resolver's Failover: when the target has no healthy instance, the first failover target that
// has one, in the order the resolver lists them.

import type { ChainTarget, CompiledChain } from './chain.js';
import { type Filter, compileFilter } from './filter.js';

/** One instance of a service, as the data path maps its workloads. */
export interface Instance {
  id: string;
  address: string;
  port: number;
  tags: readonly string[];
  meta: Readonly<Record<string, string>>;
  nodeMeta: Readonly<Record<string, string>>;
  /** Every health check passing. */
  passing: boolean;
  /** Not passing, but no check worse than warning: usable unless OnlyPassing. */
  warning?: boolean;
  service?: string;
  node?: string;
  nodeAddress?: string;
  datacenter?: string;
  kind?: string;
  checks?: readonly { CheckID: string; Name: string; Status: string }[];
}

/** Every registered instance of a target's service (in its namespace, datacenter or peer), healthy or not. */
export type InstanceSource = (target: ChainTarget) => readonly Instance[];

const filters = new Map<string, Filter>();
function filterOf(source: string): Filter {
  let f = filters.get(source);
  if (!f) {
    const c = compileFilter(source);
    // validateEntry compiled every Filter already; one that fails here was never validated.
    if (typeof c === 'string') throw new Error(`subset filter ${JSON.stringify(source)}: ${c}`);
    f = c;
    // A bounded cache: filters come from config entries, so there are few, but never let it grow forever.
    if (filters.size > 1000) filters.clear();
    filters.set(source, f);
  }
  return f;
}

/** The instances of `target` that its subset selects and that are healthy enough to receive requests. */
export function targetInstances(target: ChainTarget, all: readonly Instance[]): Instance[] {
  const f = target.Subset.Filter ? filterOf(target.Subset.Filter) : undefined;
  const onlyPassing = target.Subset.OnlyPassing === true;
  return all.filter((i) => (i.passing || (!onlyPassing && i.warning === true)) && (!f || f.test(i)));
}

export interface Resolved {
  /** The target whose instances these are: the one asked for, or the failover target used. */
  target: ChainTarget;
  instances: Instance[];
  /** Whether a failover target stands in for the one asked for. */
  failover: boolean;
  /** The target IDs looked at, in order. */
  tried: string[];
}

/** The healthy instances for a chain target, failing over as its resolver says when it has none. */
export function resolveTarget(chain: CompiledChain, targetId: string, source: InstanceSource): Resolved {
  const primary = chain.Targets[targetId];
  if (!primary) throw new Error(`chain ${chain.ServiceName} has no target ${targetId}`);
  const tried = [targetId];
  const own = targetInstances(primary, source(primary));
  if (own.length > 0) return { target: primary, instances: own, failover: false, tried };
  const node = chain.Nodes[`resolver:${targetId}`];
  const failovers = node?.Type === 'resolver' ? (node.Resolver.Failover?.Targets ?? []) : [];
  for (const id of failovers) {
    const t = chain.Targets[id];
    if (!t) continue;
    tried.push(id);
    const got = targetInstances(t, source(t));
    if (got.length > 0) return { target: t, instances: got, failover: true, tried };
  }
  return { target: primary, instances: [], failover: false, tried };
}
