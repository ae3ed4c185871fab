/**
 * The mesh file: the embedded control plane. Without Consul, the catalog (nodes, workloads, services,
 * policies) lives in one local file that `ambit` edits and `ambitd` watches. YAML (`.yaml`, `.yml`) or
 * JSON (`.json`), chosen by extension; any other extension is read as YAML.
 *
 * ```yaml
 * defaultPolicy: allow            # allow | deny (what happens when no policy matches); default allow
 * nodes:                          # hosts running ambitd; name -> where its tunnel listener is
 *   node-a: { address: 127.0.0.1, tunnelPort: 15008 }   # address: IP literal; tunnelPort default 15008
 * workloads:
 *   web-1:
 *     service: web                # default: the key
 *     namespace: default          # default "default"
 *     node: node-a                # required; must name a node in `nodes`
 *     addresses: [127.0.0.1]      # required, >= 1 IPv4/IPv6 literal, no duplicates
 *     ports: [8080]               # optional; integers 1..65535, no duplicates; empty = every port,
 *                                 # refused at a loopback address or the node's own (list the ports);
 *                                 # at addresses of its own, every port goes through the tunnel anyway
 *     plaintextPorts: [9102]      # optional; ports a strict workload takes plaintext on, on purpose
 *                                 # (a metrics scrape or health check from outside the mesh)
 *     uid: 1001                   # optional owner uid (integer >= 0), for processes on the host network
 *     mode: strict                # strict | permissive; default strict
 *     failMode: closed            # open | closed: capture while ambitd is down; default closed if strict, else open
 *     app: web                    # optional Istio labels for metrics (label values: <= 63 letters, digits,
 *     version: v1                 #   ".", "-", "_"): app defaults to the service, version to "unknown",
 *     canonicalService: web       #   canonicalService to app, canonicalRevision to version, else "latest"
 *     canonicalRevision: v1
 *     upstreams:                  # optional explicit upstreams: local listeners leading to a service
 *       - { service: api, namespace: default, port: 9090, listen: "127.0.0.1:15101" }
 *         # namespace defaults to the workload's; port is optional; listen is "ip:port",
 *         # "[ipv6]:port" or a bare port (=> 127.0.0.1:<port>); unique per node
 * services:                       # optional: services exist because workloads name them; an entry adds
 *   api:                          # virtual IPs, a port map or a waypoint
 *     namespace: default          # default "default"
 *     vips: [198.18.10.1]         # optional IP literals; a service with vips must list ports
 *     ports: [{ port: 80, targetPort: 8080 }]   # or a bare 80 (targetPort = port)
 *     waypoint: null              # name of the waypoint service, or null
 *     protocol: http              # deprecated shorthand for a service-defaults entry with this Protocol
 * policies:                       # L4 authorization, evaluated at the destination's daemon
 *   deny-evil:
 *     action: deny                # allow | deny; required
 *     service: api                # destination service; required
 *     namespace: default          # default "default"
 *     ports: [8080]               # optional destination ports; empty = all
 *     from:                       # optional; any clause matching is a match; empty = every source
 *                                 # (service/namespace: of this trust domain; principal: any)
 *       - { service: evil }                     # every field a clause sets must match the peer
 *       - { namespace: x }
 *       - { principal: "spiffe://ambit.local/ns/x/dc/dc1/svc/y" }
 * configEntries:                  # Consul's config entries in Consul's own shape, validated as Consul does
 *   - Kind: service-defaults      # service-defaults, proxy-defaults, service-router, service-splitter,
 *     Name: api                   # service-resolver, service-intentions (docs/l7-routing.md)
 *     Protocol: http
 * ```
 *
 * Every section may be absent or empty; an empty file is an empty mesh. Unknown keys are errors (a typo must
 * not silently turn a deny into nothing), and every error names the file, the field path
 * (`workloads.web-1.ports[1]`) and the line.
 */
// This module says what the file may hold (its document types, keys, names and defaults); parse.ts reads
// the text, validate.ts turns a document into the model, serialise.ts turns the model back into a document.
import { extname } from 'node:path';
import type { FailMode, MeshMode, PolicyAction, ServiceProtocol } from '../model.js';

export const DEFAULT_TUNNEL_PORT = 15008;
export const DEFAULT_NAMESPACE = 'default';
/** Ports ambitd binds itself (see DESIGN.md); an upstream listener there would fight the daemon. */
export const DAEMON_PORTS: ReadonlySet<number> = new Set([15000, 15001, 15006, 15008, 15020, 15021]);

/** Service and namespace names end up in SPIFFE IDs and in `svc.ns` CLI arguments: no dots, no slashes. */
export const SERVICE_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$/;
/** Node, workload and policy names are only keys; host names (with dots) are common for nodes. */
export const OBJECT_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;
/** Istio's label values (app, version, canonical names) are Kubernetes label values. */
export const LABEL_VALUE = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;
/** The workload fields that are Istio labels, in the order the docs list them. */
export const META_KEYS = ['app', 'version', 'canonicalService', 'canonicalRevision'] as const;

export type MeshFormat = 'yaml' | 'json';

export const meshFormat = (file: string): MeshFormat =>
  extname(file).toLowerCase() === '.json' ? 'json' : 'yaml';

/** A step of a field path: a mapping key or a list index. */
export type PathSeg = string | number;

// The keys each mapping may have; anything else is an error (a typo must not silently drop a setting).
export const TOP_KEYS = [
  'defaultPolicy',
  'nodes',
  'workloads',
  'services',
  'policies',
  'configEntries',
] as const satisfies readonly (keyof MeshDoc)[];
export const NODE_KEYS = ['address', 'tunnelPort'] as const satisfies readonly (keyof NodeDoc)[];
export const WORKLOAD_KEYS = [
  'service',
  'namespace',
  'node',
  'addresses',
  'ports',
  'plaintextPorts',
  'uid',
  'mode',
  'failMode',
  'app',
  'version',
  'canonicalService',
  'canonicalRevision',
  'upstreams',
] as const satisfies readonly (keyof WorkloadDoc)[];
export const UPSTREAM_KEYS = [
  'service',
  'namespace',
  'port',
  'listen',
] as const satisfies readonly (keyof UpstreamDoc)[];
export const SERVICE_KEYS = [
  'namespace',
  'vips',
  'ports',
  'waypoint',
  'protocol',
] as const satisfies readonly (keyof ServiceDoc)[];
export const SERVICE_PORT_KEYS = ['port', 'targetPort'] as const satisfies readonly (keyof ServicePortDoc)[];
export const POLICY_KEYS = [
  'action',
  'service',
  'namespace',
  'ports',
  'from',
] as const satisfies readonly (keyof PolicyDoc)[];
export const POLICY_SOURCE_KEYS = [
  'service',
  'namespace',
  'principal',
] as const satisfies readonly (keyof PolicySourceDoc)[];

// ---- the document: the plain values the file holds, as the editor writes them.

export interface NodeDoc {
  address: string;
  tunnelPort?: number;
}

export interface UpstreamDoc {
  service: string;
  namespace?: string;
  port?: number;
  listen: string;
}

export interface WorkloadDoc {
  service?: string;
  namespace?: string;
  node: string;
  addresses: string[];
  ports?: number[];
  plaintextPorts?: number[];
  uid?: number;
  mode?: MeshMode;
  failMode?: FailMode;
  app?: string;
  version?: string;
  canonicalService?: string;
  canonicalRevision?: string;
  upstreams?: UpstreamDoc[];
}

export interface PolicySourceDoc {
  service?: string;
  namespace?: string;
  principal?: string;
}

export interface PolicyDoc {
  action: PolicyAction;
  service: string;
  namespace?: string;
  ports?: number[];
  from?: PolicySourceDoc[];
}

export interface ServicePortDoc {
  port: number;
  targetPort?: number;
}

export interface ServiceDoc {
  namespace?: string;
  vips?: string[];
  ports?: ServicePortDoc[];
  waypoint?: string | null;
  /** Deprecated shorthand for a service-defaults entry with this Protocol. */
  protocol?: ServiceProtocol;
}

export interface MeshDoc {
  defaultPolicy?: PolicyAction;
  nodes?: Record<string, NodeDoc>;
  workloads?: Record<string, WorkloadDoc>;
  services?: Record<string, ServiceDoc>;
  policies?: Record<string, PolicyDoc>;
  /** Consul's config entries in Consul's own shape (Kind, Name, Consul's field names). */
  configEntries?: Record<string, unknown>[];
}
