import { joinHostPort } from '../../net/hostport.js';
// Model -> document: the plain values the editor writes, leaving out what equals the default, so that files
// stay as short as a human would write them.
import type { Mesh, MeshNode, Policy, PolicySource, Service, Upstream, Workload } from '../model.js';
import { isShorthand } from './entries.js';
import {
  DEFAULT_NAMESPACE,
  DEFAULT_TUNNEL_PORT,
  META_KEYS,
  type MeshDoc,
  type NodeDoc,
  type PolicyDoc,
  type PolicySourceDoc,
  type ServiceDoc,
  type UpstreamDoc,
  type WorkloadDoc,
} from './schema.js';

export const nodeToDoc = (n: MeshNode): NodeDoc =>
  n.tunnelPort === DEFAULT_TUNNEL_PORT
    ? { address: n.address }
    : { address: n.address, tunnelPort: n.tunnelPort };

export function upstreamToDoc(u: Upstream, workloadNs: string): UpstreamDoc {
  const d: Partial<UpstreamDoc> = { service: u.service };
  if (u.namespace !== workloadNs) d.namespace = u.namespace;
  if (u.port !== undefined) d.port = u.port;
  d.listen = joinHostPort(u.listenHost, u.listenPort);
  return d as UpstreamDoc;
}

export function workloadToDoc(w: Workload): WorkloadDoc {
  // Key order follows the documented format so that written files read like the docs.
  const d: Partial<WorkloadDoc> = {};
  if (w.service !== w.name) d.service = w.service;
  if (w.namespace !== DEFAULT_NAMESPACE) d.namespace = w.namespace;
  d.node = w.node;
  d.addresses = [...w.addresses];
  if (w.ports.length) d.ports = [...w.ports];
  if (w.plaintextPorts?.length) d.plaintextPorts = [...w.plaintextPorts];
  if (w.uid !== undefined) d.uid = w.uid;
  if (w.mode !== 'strict') d.mode = w.mode;
  if (w.failMode !== undefined) d.failMode = w.failMode;
  for (const k of META_KEYS) if (w[k] !== undefined) d[k] = w[k];
  if (w.upstreams.length) d.upstreams = w.upstreams.map((u) => upstreamToDoc(u, w.namespace));
  return d as WorkloadDoc;
}

export function policySourceToDoc(s: PolicySource): PolicySourceDoc {
  const d: PolicySourceDoc = {};
  if (s.service !== undefined) d.service = s.service;
  if (s.namespace !== undefined) d.namespace = s.namespace;
  if (s.principal !== undefined) d.principal = s.principal;
  return d;
}

export function policyToDoc(p: Policy): PolicyDoc {
  const d: PolicyDoc = { action: p.action, service: p.service };
  if (p.namespace !== DEFAULT_NAMESPACE) d.namespace = p.namespace;
  if (p.ports.length) d.ports = [...p.ports];
  if (p.from.length) d.from = p.from.map(policySourceToDoc);
  return d;
}

/** A service's entry; `protocol` only when the shorthand stood for it (it is otherwise the entries'). */
export function serviceToDoc(s: Service, shorthand = false): ServiceDoc {
  const d: ServiceDoc = {};
  if (s.namespace !== DEFAULT_NAMESPACE) d.namespace = s.namespace;
  if (s.vips.length) d.vips = [...s.vips];
  if (s.ports.length) {
    d.ports = s.ports.map((p) =>
      p.port === p.targetPort ? { port: p.port } : { port: p.port, targetPort: p.targetPort },
    );
  }
  if (s.waypoint !== undefined) d.waypoint = s.waypoint;
  if (shorthand && s.protocol !== undefined) d.protocol = s.protocol;
  return d;
}

/**
 * The whole mesh as a document; implied services (no vips, ports, waypoint or shorthand) are left implied.
 * Config entries go back as written, except those that stand for a `protocol` shorthand, which go back as it.
 * (Entries hold durations in milliseconds: an entry with durations does not survive this trip.)
 */
export function meshToDoc(mesh: Mesh): MeshDoc {
  const d: MeshDoc = {};
  if (mesh.defaultPolicy !== 'allow') d.defaultPolicy = mesh.defaultPolicy;
  if (mesh.nodes.length) d.nodes = Object.fromEntries(mesh.nodes.map((n) => [n.name, nodeToDoc(n)]));
  if (mesh.workloads.length)
    d.workloads = Object.fromEntries(mesh.workloads.map((w) => [w.name, workloadToDoc(w)]));
  const entries = mesh.configEntries ?? [];
  const short = new Set(
    entries.filter(isShorthand).map((e) => `${e.Namespace ?? DEFAULT_NAMESPACE}/${e.Name}`),
  );
  const isShort = (s: Service): boolean => short.has(`${s.namespace}/${s.name}`);
  const services = mesh.services.filter(
    (s) => s.vips.length || s.ports.length || s.waypoint !== undefined || isShort(s),
  );
  if (services.length)
    d.services = Object.fromEntries(services.map((s) => [s.name, serviceToDoc(s, isShort(s))]));
  if (mesh.policies.length)
    d.policies = Object.fromEntries(mesh.policies.map((p) => [p.name, policyToDoc(p)]));
  const own = entries.filter((e) => !isShorthand(e));
  if (own.length) d.configEntries = own.map((e) => structuredClone(e) as Record<string, unknown>);
  return d;
}
