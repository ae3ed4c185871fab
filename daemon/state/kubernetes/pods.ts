// What a pod becomes in the mesh: a workload of the node it is scheduled on, or a reason it is left out.
import { isIP } from 'node:net';
import type { MeshMode, Workload } from '../../../lib/mesh/model.js';

/** The label (or annotation) naming a pod's service; without it, the service account's name is the service. */
export const SERVICE_KEY = 'ambit.dev/service';
/** Annotation: `strict` (default) or `permissive` (plaintext from outside the mesh admitted). */
export const MODE_KEY = 'ambit.dev/mode';
/**
 * Annotation: ports of a strict pod that take plaintext from outside the mesh ("8080,9090"): the kubelet's
 * probes come from the node, not through a tunnel, and would be refused on any other port.
 */
export const PLAINTEXT_PORTS_KEY = 'ambit.dev/plaintext-ports';
export const DEFAULT_LABEL_SELECTOR = 'ambit.dev/mesh=enabled';

/** The fields of a v1 Pod the watch reads; everything else the server sends is ignored. */
export interface Pod {
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    deletionTimestamp?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  spec?: {
    nodeName?: string;
    serviceAccountName?: string;
    hostNetwork?: boolean;
    containers?: { name?: string; ports?: { containerPort?: number; protocol?: string }[] }[];
  };
  status?: { phase?: string; podIP?: string; podIPs?: { ip?: string }[]; hostIP?: string };
}

// A DNS-1123 label, as Kubernetes names services and service accounts.
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** The workload's name: pod names are unique per namespace only, mesh workload names are global. */
export const workloadName = (namespace: string, pod: string): string => `${pod}.${namespace}`;

export interface PodView {
  readonly workload: Workload;
  /** The node's address as the pod reports it (status.hostIP), where its node's ambitd listens. */
  readonly hostIP: string | undefined;
}

/**
 * `pod` as a workload; a string says why it is not one (not running, no IP, host network, ...).
 * `meshNamespace`: the mesh namespace of every pod instead of its own (Consul CE has one namespace).
 */
export function podWorkload(pod: Pod, meshNamespace?: string): PodView | string {
  const m = pod.metadata ?? {};
  const spec = pod.spec ?? {};
  const status = pod.status ?? {};
  if (!m.name || !m.namespace) return 'no name or namespace';
  if (m.deletionTimestamp) return 'terminating';
  if (status.phase !== 'Running') return `phase ${status.phase ?? 'unknown'}`;
  if (!spec.nodeName) return 'not scheduled';
  // A host-network pod's address is its node's: as a workload it would claim the host's ports.
  if (spec.hostNetwork) return 'host network';
  const ips = [...new Set([status.podIP, ...(status.podIPs ?? []).map((p) => p.ip)])].filter(
    (ip): ip is string => typeof ip === 'string' && isIP(ip) !== 0,
  );
  if (ips.length === 0) return 'no pod IP';
  const labels = m.labels ?? {};
  const annotations = m.annotations ?? {};
  const service = labels[SERVICE_KEY] ?? annotations[SERVICE_KEY] ?? spec.serviceAccountName ?? 'default';
  if (!DNS_LABEL.test(service)) return `service name "${service.slice(0, 80)}" is not a DNS label`;
  const modeGiven = annotations[MODE_KEY] ?? 'strict';
  if (modeGiven !== 'strict' && modeGiven !== 'permissive') return `${MODE_KEY} "${modeGiven.slice(0, 20)}"`;
  const mode: MeshMode = modeGiven;
  const ports = new Set<number>();
  for (const c of spec.containers ?? [])
    for (const p of c.ports ?? [])
      if ((p.protocol ?? 'TCP') === 'TCP' && Number.isInteger(p.containerPort) && p.containerPort! > 0)
        ports.add(p.containerPort!);
  const plaintextPorts: number[] = [];
  for (const p of (annotations[PLAINTEXT_PORTS_KEY] ?? '').split(',')) {
    if (p.trim() === '') continue;
    const n = Number(p.trim());
    if (!Number.isInteger(n) || n < 1 || n > 65535) return `${PLAINTEXT_PORTS_KEY} "${p.slice(0, 20)}"`;
    plaintextPorts.push(n);
  }
  const workload: Workload = {
    name: workloadName(m.namespace, m.name),
    service,
    namespace: meshNamespace ?? m.namespace,
    node: spec.nodeName,
    addresses: ips,
    ports: [...ports].sort((a, b) => a - b),
    uid: undefined,
    mode,
    ...(plaintextPorts.length ? { plaintextPorts } : {}),
    upstreams: [],
    ...meta(labels),
  };
  return { workload, hostIP: status.hostIP && isIP(status.hostIP) ? status.hostIP : undefined };
}

/** The labels Istio reads for its metrics, from a pod's labels. */
function meta(labels: Record<string, string>): Partial<Workload> {
  const out: { app?: string; version?: string; canonicalService?: string; canonicalRevision?: string } = {};
  const app = labels['app.kubernetes.io/name'] ?? labels.app;
  const version = labels['app.kubernetes.io/version'] ?? labels.version;
  if (app) out.app = app;
  if (version) out.version = version;
  if (labels['service.istio.io/canonical-name'])
    out.canonicalService = labels['service.istio.io/canonical-name'];
  if (labels['service.istio.io/canonical-revision'])
    out.canonicalRevision = labels['service.istio.io/canonical-revision'];
  return out;
}
