// The catalog model: what the control plane told us. Both backends (the embedded mesh file and Consul)
// produce exactly this, so the data path never knows which one is in use.

export type MeshMode = 'strict' | 'permissive';
export type FailMode = 'open' | 'closed';
export type PolicyAction = 'allow' | 'deny';

/** A host running ambitd. The tunnel (HBONE) listener of its daemon is at address:tunnelPort. */
export interface MeshNode {
  readonly name: string;
  readonly address: string;
  readonly tunnelPort: number;
}

/** An explicit upstream: a local listener that leads to a named service (as Consul's explicit upstreams). */
export interface Upstream {
  readonly service: string;
  readonly namespace: string;
  /** Target port at the service's endpoints; when absent, the endpoint's only port. */
  readonly port: number | undefined;
  readonly listenHost: string;
  readonly listenPort: number;
}

export interface Workload extends WorkloadMeta {
  readonly name: string;
  readonly service: string;
  readonly namespace: string;
  readonly node: string;
  readonly addresses: readonly string[];
  /** Ports the workload serves; empty means any port on its addresses. */
  readonly ports: readonly number[];
  /** Owner uid, for processes that share the host's network (transparent capture). */
  readonly uid: number | undefined;
  readonly mode: MeshMode;
  /**
   * What transparent capture does with this workload's traffic while ambitd is down: `closed` refuses it,
   * `open` lets it pass untouched. Absent: closed for strict workloads, open for permissive ones.
   */
  readonly failMode?: FailMode;
  readonly upstreams: readonly Upstream[];
}

/**
 * What Istio reads from a pod's labels for its metrics (`app`, `version`, `service.istio.io/canonical-name`,
 * `service.istio.io/canonical-revision`). Optional: metrics.ts's `workloadLabels` says what stands in for
 * each one that is absent.
 */
export interface WorkloadMeta {
  readonly app?: string;
  readonly version?: string;
  readonly canonicalService?: string;
  readonly canonicalRevision?: string;
}

export interface ServicePort {
  readonly port: number;
  readonly targetPort: number;
}

export interface Service {
  readonly name: string;
  readonly namespace: string;
  /** Virtual addresses that stand for the service as a whole; connections to them are load balanced. */
  readonly vips: readonly string[];
  readonly ports: readonly ServicePort[];
  readonly waypoint: string | undefined;
}

/**
 * A source clause matches when every field it sets matches the peer: service and namespace compare with the
 * peer's SPIFFE identity, principal with the whole SPIFFE ID. Service and namespace are of this mesh's trust
 * domain: a peer of another one matches only a clause naming its principal (see rbac.ts). An empty clause
 * matches every authenticated peer of this trust domain (any peer, in a deny).
 */
export interface PolicySource {
  readonly service: string | undefined;
  readonly namespace: string | undefined;
  readonly principal: string | undefined;
}

export interface Policy {
  readonly name: string;
  readonly action: PolicyAction;
  /** Destination service the rule protects. */
  readonly service: string;
  readonly namespace: string;
  /** Destination ports; empty means all. */
  readonly ports: readonly number[];
  /** Any clause matching is a match; empty means every source. */
  readonly from: readonly PolicySource[];
}

export interface Mesh {
  readonly defaultPolicy: PolicyAction;
  readonly nodes: readonly MeshNode[];
  readonly workloads: readonly Workload[];
  readonly services: readonly Service[];
  readonly policies: readonly Policy[];
}

export const emptyMesh = (): Mesh => ({
  defaultPolicy: 'allow',
  nodes: [],
  workloads: [],
  services: [],
  policies: [],
});
