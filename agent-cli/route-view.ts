// What `ambit route explain` reads: the mesh as a waypoint's daemon would hold it, from the mesh file or
// from Consul, plus what the daemon leaves out but a person asking "why not this endpoint" wants to see
// (Consul instances that are not passing). The decisions themselves are lib/l7's and the waypoint's.
import {
  type ConsulHealthEntry,
  META,
  fallbackNode,
  healthEntries,
  isPassing,
  isRecord,
  workloadFromEntry,
} from '../lib/consul/catalog.js';
import type { ConsulClient } from '../lib/consul/client.js';
import { validateLeniently } from '../lib/consul/config-entries.js';
import type { ConfigEntry } from '../lib/l7/entries.js';
import { keyOf } from '../lib/l7/set.js';
import type { Mesh, MeshNode, PolicyAction, Service, Workload } from '../lib/mesh/model.js';
import { withProtocols } from '../lib/mesh/protocols.js';
import { ConsulEntries } from './config-backends.js';
import { type GlobalOpts, meshPath, readMesh } from './context.js';

export interface RouteView {
  /** Where it came from, for the output: the mesh file, or `Consul at <addr>`. */
  readonly where: string;
  /** The model a waypoint's daemon builds: in Consul mode, only instances that are passing. */
  readonly mesh: Mesh;
  /** Instances registered but not passing (Consul), which the daemon leaves out; by `<ns>/<service>`. */
  readonly notPassing: ReadonlyMap<string, readonly Workload[]>;
  readonly datacenter: string;
  /** Where the default policy comes from, in words. */
  readonly defaultFrom: string;
  /** What was read but left out, as the daemon leaves it out (one line each). */
  readonly ignored: readonly string[];
}

export async function meshFileView(g: GlobalOpts, datacenter: string): Promise<RouteView> {
  const mesh = await readMesh(g);
  return {
    where: meshPath(g),
    mesh,
    notPassing: new Map(),
    datacenter,
    defaultFrom: 'the mesh file',
    ignored: [],
  };
}

export interface ConsulViewOptions {
  /** ambitd's own `defaultPolicy`, which overrides Consul's defaults when set. */
  defaultPolicy: PolicyAction | undefined;
  datacenter: string | undefined;
}

/**
 * The view from Consul for the services `servicesOf(entries)` names (the targets of one chain): the config
 * entries as the daemon validates them, those services' instances, and the default policy in Consul's
 * order (ambitd's own, the agent's default_intention_policy, the ACL default, allow).
 */
export async function consulView(
  client: ConsulClient,
  service: string,
  servicesOf: (mesh: Mesh) => readonly string[],
  o: ConsulViewOptions,
): Promise<RouteView> {
  const self = await client.get<unknown>('/v1/agent/self', { permission: 'agent:read' });
  const body = isRecord(self.body) ? self.body : {};
  const config = isRecord(body.Config) ? body.Config : {};
  const debug = isRecord(body.DebugConfig) ? body.DebugConfig : {};
  const dip = debug.DefaultIntentionPolicy;
  const [action, defaultFrom]: [PolicyAction, string] = o.defaultPolicy
    ? [o.defaultPolicy, "ambitd's defaultPolicy (--default-policy)"]
    : dip === 'allow' || dip === 'deny'
      ? [dip, "the Consul agent's default_intention_policy"]
      : self.defaultAclPolicy
        ? [self.defaultAclPolicy, "Consul's ACL default policy"]
        : ['allow', "Consul's default (ACLs off)"];
  const datacenter = o.datacenter ?? (typeof config.Datacenter === 'string' ? config.Datacenter : 'dc1');

  const ignored: string[] = [];
  const lenient = validateLeniently(await new ConsulEntries(client).list(), 'consul');
  for (const err of lenient.refused) ignored.push(`config entry ${err.message}`);
  const configEntries = lenient.entries;
  const skeleton: Mesh = {
    defaultPolicy: action,
    nodes: [],
    workloads: [],
    services: withProtocols([serviceOf(service, configEntries, [])], configEntries),
    policies: [],
    configEntries,
  };

  const workloads: Workload[] = [];
  const nodes = new Map<string, MeshNode>();
  const notPassing = new Map<string, Workload[]>();
  const own: ConsulHealthEntry[] = [];
  for (const name of new Set([service, ...servicesOf(skeleton)])) {
    const res = await client.get<unknown>(`/v1/health/service/${encodeURIComponent(name)}`, {
      permission: `service:read on "${name}"`,
    });
    for (const e of healthEntries(res.body)) {
      if (name === service) own.push(e);
      let w: Workload;
      try {
        w = workloadFromEntry(e);
      } catch (err) {
        ignored.push(
          `Consul service instance ${e.Service.Service}/${e.Service.ID}: ${(err as Error).message}`,
        );
        continue;
      }
      if (!nodes.has(w.node)) {
        const n = fallbackNode(e, w.node);
        if (n) nodes.set(n.name, n);
      }
      // A waypoint routes to remote instances only while they pass (daemon/state/consul-source.ts).
      if (isPassing(e)) workloads.push(w);
      else {
        const k = keyOf(w.service, w.namespace);
        notPassing.set(k, [...(notPassing.get(k) ?? []), w]);
      }
    }
  }
  return {
    where: `Consul at ${client.address}`,
    mesh: {
      ...skeleton,
      nodes: [...nodes.values()],
      workloads,
      services: withProtocols([serviceOf(service, configEntries, own)], configEntries),
    },
    notPassing,
    datacenter,
    defaultFrom,
    ignored,
  };
}

/** The service's waypoint as Consul mode reads it: its service-defaults' Meta, else an instance's Meta. */
function serviceOf(
  name: string,
  entries: readonly ConfigEntry[],
  instances: readonly ConsulHealthEntry[],
): Service {
  const defaults = entries.find((e) => e.Kind === 'service-defaults' && e.Name === name);
  const waypoint =
    defaults?.Meta?.[META.waypoint] || instances.map((e) => e.Service.Meta?.[META.waypoint]).find(Boolean);
  return { name, namespace: 'default', vips: [], ports: [], waypoint: waypoint || undefined };
}
