// The catalog model: what the control plane told us. Both backends (the embedded mesh file and Consul)
// produce exactly this, so the data path never knows which one is in use.
import type { ConfigEntry } from '../l7/entries.js';
import { canonicalIp } from '../net/addresses.js';

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
  /**
   * Ports the workload serves; empty means any port on its addresses. A workload with addresses of its own
   * (see {@link ownsEveryPort}) is reached through the tunnel on every port whatever it lists: the list
   * then maps service ports and names what the workload serves, it never lets plaintext through.
   */
  readonly ports: readonly number[];
  /**
   * Ports a strict workload takes plaintext on, on purpose (a health check or a metrics scrape from
   * outside the mesh): connections to them from sources outside the mesh are admitted as a permissive
   * workload's are. Absent or empty: none.
   */
  readonly plaintextPorts?: readonly number[];
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
 * Whether every port of `w`'s addresses is `w`'s own, so that a connection to any of them belongs to the
 * mesh: true when it lists no ports, or when its addresses are its own (a pod or a namespace). A workload
 * that shares its host's network (it has an owner uid, or it sits at its node's address) owns only the
 * ports it lists; the host's other ports are the host's.
 */
export function ownsEveryPort(w: Workload, nodeAddress: string | undefined): boolean {
  if (w.ports.length === 0) return true;
  if (w.uid !== undefined) return false;
  if (nodeAddress === undefined) return true;
  const node = canonicalIp(nodeAddress);
  return !w.addresses.some((a) => canonicalIp(a) === node);
}

/** Whether a plaintext connection to `port` of a strict workload is admitted anyway (see plaintextPorts). */
export const takesPlaintextOn = (w: Workload, port: number): boolean =>
  w.plaintextPorts?.includes(port) === true;

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
  /**
   * What its waypoint parses it as, derived from the config entries as Consul derives it (its
   * service-defaults `Protocol`, else proxy-defaults `Config.protocol`, else tcp; see protocols.ts).
   * Absent means tcp.
   */
  readonly protocol?: ServiceProtocol;
}

/** Consul's protocols that a waypoint may be asked to speak; any other value Consul holds is carried as tcp. */
export type ServiceProtocol = 'tcp' | 'http' | 'http2' | 'grpc';
export const SERVICE_PROTOCOLS: readonly ServiceProtocol[] = ['tcp', 'http', 'http2', 'grpc'];

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
  /**
   * Consul's L7 config entries (service-defaults, proxy-defaults, service-router, -splitter, -resolver,
   * -intentions), validated by lib/l7, in Consul's shape: from Consul, or from the mesh file's
   * `configEntries`. Optional so that a hand-built mesh needs none; absent is none.
   */
  readonly configEntries?: readonly ConfigEntry[];
}

export const emptyMesh = (): Mesh => ({
  defaultPolicy: 'allow',
  nodes: [],
  workloads: [],
  services: [],
  policies: [],
});
