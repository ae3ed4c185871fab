// In-memory mesh values for unit tests of what reads the state: no file, no daemon, no sockets.
import { spiffeId } from '../../daemon/identity/spiffe.js';
import type { OutboundPlan } from '../../daemon/proxy/outbound/plan.js';
import { StateStore } from '../../daemon/state/store.js';
import type { RouteRequest } from '../../daemon/waypoint/router.js';
import type { Mesh, MeshNode, Policy, PolicySource, Service, Workload } from '../../lib/mesh/model.js';

export const TRUST_DOMAIN = 'ambit.local';

export function workload(p: Partial<Workload> & Pick<Workload, 'name' | 'service' | 'node'>): Workload {
  return {
    namespace: 'default',
    addresses: ['127.0.0.1'],
    ports: [],
    uid: undefined,
    mode: 'strict',
    upstreams: [],
    ...p,
  };
}

export const node = (name: string, address: string, tunnelPort = 15008): MeshNode => ({
  name,
  address,
  tunnelPort,
});

export const service = (p: Partial<Service> & Pick<Service, 'name'>): Service => ({
  namespace: 'default',
  vips: [],
  ports: [],
  waypoint: undefined,
  ...p,
});

export const from = (s: Partial<PolicySource>): PolicySource => ({
  service: undefined,
  namespace: undefined,
  principal: undefined,
  ...s,
});

export const policy = (p: Partial<Policy> & Pick<Policy, 'name' | 'action' | 'service'>): Policy => ({
  namespace: 'default',
  ports: [],
  from: [],
  ...p,
});

/** A state store holding `mesh` (default allow, nothing else, unless given). */
export function storeOf(mesh: Partial<Mesh>): StateStore {
  const store = new StateStore();
  store.replace({ defaultPolicy: 'allow', nodes: [], workloads: [], services: [], policies: [], ...mesh });
  return store;
}

/** The identity a daemon of this trust domain gives a workload (datacenter dc1). */
export const identityOf = (w: Pick<Workload, 'namespace' | 'service'>, trustDomain = TRUST_DOMAIN): string =>
  spiffeId({ trustDomain, namespace: w.namespace, datacenter: 'dc1', service: w.service });

/**
 * What a waypoint's router is asked for service `name` (port 8080) on `store`, from web's identity: a GET
 * of `path`. The unit tests of the router's policies all route this one request.
 */
export function meshRequests(store: StateStore, name = 'api'): (path: string) => RouteRequest {
  const plan: OutboundPlan = {
    kind: 'mesh',
    service: { name, namespace: 'default' },
    endpoints: store.endpoints('default', name),
    targetPort: 8080,
    targeted: undefined,
  };
  return (path) => ({
    plan,
    client: identityOf({ namespace: 'default', service: 'web' }),
    method: 'GET',
    path,
    headers: {},
  });
}
