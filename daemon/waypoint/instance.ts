// A mesh workload as lib/l7 sees a Consul service instance, so that a resolver's subset Filter
// (`Service.Meta.version == v2`, `ambit in Service.Tags`) reads the same fields in embedded mode as Consul's
// health query gives it in Consul mode: the tags and Meta keys Ambit registers its workloads with
// (lib/consul/catalog.ts), and the node they run on.
import { AMBIT_TAG, META, nodeTag } from '../../lib/consul/catalog.js';
import type { Instance } from '../../lib/l7/endpoints.js';
import type { MeshNode, Workload } from '../../lib/mesh/model.js';

/** Consul Meta keys for the workload's Istio labels, as the catalog registers them. */
const META_KEYS = {
  app: META.app,
  version: META.version,
  canonicalService: META.canonicalService,
  canonicalRevision: META.canonicalRevision,
} as const;

/**
 * The instance for `w`, on `node` when the model knows it. The model holds the workloads that may take
 * traffic (Consul mode leaves out remote instances that are not passing), so every one is passing.
 */
export function instanceOf(w: Workload, node: MeshNode | undefined, datacenter = 'dc1'): Instance {
  const meta: Record<string, string> = { [META.workload]: w.name, [META.node]: w.node };
  for (const [field, key] of Object.entries(META_KEYS)) {
    const v = w[field as keyof typeof META_KEYS];
    if (v !== undefined) meta[key] = v;
  }
  return {
    id: w.name,
    address: w.addresses[0] ?? '',
    port: w.ports[0] ?? 0,
    tags: [AMBIT_TAG, nodeTag(w.node)],
    meta,
    nodeMeta: {},
    passing: true,
    service: w.service,
    node: w.node,
    ...(node ? { nodeAddress: node.address } : {}),
    datacenter,
    kind: '',
  };
}
