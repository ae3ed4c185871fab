// How Ambit's catalog model is written into Consul's catalog and read back out: a workload is a Consul
// service instance whose Meta carries what Consul's own fields cannot (node, namespace, all addresses and
// ports, mode, uid, upstreams, waypoint); a node is an instance of the `ambit` service that its daemon
// registers, pointing at its tunnel listener. Encoding and decoding live together so they cannot drift.

import { isIP } from 'node:net';
import type { MeshMode, MeshNode, Upstream, Workload, WorkloadMeta } from '../mesh/model.js';
import { canonicalV6 } from '../net/addresses.js';
import { joinHostPort } from '../net/hostport.js';

/** The Consul service each ambitd registers for its node: Address:Port is its tunnel (HBONE) listener. */
export const NODE_SERVICE = 'ambit';
export const DEFAULT_TUNNEL_PORT = 15008;
/** Every workload Ambit registers carries this tag, and `ambit-node=<node>` naming its node. */
export const AMBIT_TAG = 'ambit';
export const nodeTag = (node: string): string => `ambit-node=${node}`;

export const META = {
  node: 'ambit-node',
  workload: 'ambit-workload',
  namespace: 'ambit-namespace',
  protocol: 'ambit-protocol',
  waypoint: 'ambit-waypoint',
  mode: 'ambit-mode',
  addresses: 'ambit-addresses',
  ports: 'ambit-ports',
  plaintextPorts: 'ambit-plaintext-ports',
  uid: 'ambit-uid',
  upstreams: 'ambit-upstreams',
  nodeAddress: 'ambit-node-address',
  tunnelPort: 'ambit-tunnel-port',
  vips: 'ambit-vips',
  servicePorts: 'ambit-service-ports',
  // Istio's labels for metrics. `app` and `version` are the keys Istio itself reads, and the ones instances
  // registered by other tools most often carry already; the canonical names have no common key.
  app: 'app',
  version: 'version',
  canonicalService: 'ambit-canonical-service',
  canonicalRevision: 'ambit-canonical-revision',
} as const;

/** Workload fields that travel as Meta of the same name (mesh model field -> Meta key). */
const META_FIELDS = ['app', 'version', 'canonicalService', 'canonicalRevision'] as const;

/** Consul caps Meta values at 512 characters. */
export const MAX_META_VALUE = 512;

// --- Consul's JSON, as much of it as Ambit reads -----------------------------------------------------------

export interface ConsulTaggedAddress {
  Address: string;
  Port: number;
}

export interface ConsulCheckDefinition {
  CheckID?: string;
  Name: string;
  TCP?: string;
  TTL?: string;
  Interval?: string;
  Timeout?: string;
  Status?: 'passing' | 'warning' | 'critical';
  DeregisterCriticalServiceAfter?: string;
}

export interface ConsulServiceRegistration {
  ID: string;
  Name: string;
  Tags: string[];
  Address: string;
  Port: number;
  Meta: Record<string, string>;
  TaggedAddresses: Record<string, ConsulTaggedAddress>;
  Checks: ConsulCheckDefinition[];
}

export interface ConsulHealthCheck {
  CheckID: string;
  Name?: string;
  Status: string;
  ServiceID?: string;
}

export interface ConsulHealthEntry {
  Node: { Node: string; Address: string; Datacenter?: string };
  Service: {
    ID: string;
    Service: string;
    Tags?: string[] | null;
    Address?: string;
    Port?: number;
    Meta?: Record<string, string> | null;
    TaggedAddresses?: Record<string, ConsulTaggedAddress> | null;
  };
  Checks?: ConsulHealthCheck[] | null;
}

// --- Encoding --------------------------------------------------------------------------------------------

/** `svc.ns[:port]=host:port`, comma-separated. */
export function encodeUpstreams(ups: readonly Upstream[]): string {
  return ups
    .map(
      (u) =>
        `${u.service}.${u.namespace}${u.port !== undefined ? `:${u.port}` : ''}=${joinHostPort(u.listenHost, u.listenPort)}`,
    )
    .join(',');
}

const UPSTREAM = /^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)(?::(\d+))?=(?:\[([^\]]+)\]|([^:]+)):(\d+)$/;

export function decodeUpstreams(text: string): Upstream[] {
  const out: Upstream[] = [];
  for (const part of text.split(',')) {
    if (!part.trim()) continue;
    const m = UPSTREAM.exec(part.trim());
    if (!m) throw new Error(`malformed upstream "${part}"`);
    const host = m[4] ?? m[5]!;
    if (isIP(host) === 0) throw new Error(`upstream "${part}": listen host must be an IP address`);
    out.push({
      service: m[1]!,
      namespace: m[2]!,
      port: m[3] !== undefined ? Number(m[3]) : undefined,
      listenHost: host,
      listenPort: Number(m[6]),
    });
  }
  return out;
}

export interface RegistrationOptions {
  protocol?: string;
  waypoint?: string | undefined;
  /** Health check interval for the TCP check; default 10s. */
  checkInterval?: string;
}

/** The `/v1/agent/service/register` body for a workload. Throws when a Meta value would exceed Consul's cap. */
export function workloadRegistration(w: Workload, opts: RegistrationOptions = {}): ConsulServiceRegistration {
  const address = w.addresses[0];
  if (address === undefined) throw new Error(`workload ${w.name} has no address`);
  const port = w.ports[0] ?? 0;
  const meta: Record<string, string> = {
    [META.node]: w.node,
    [META.workload]: w.name,
    [META.namespace]: w.namespace,
    [META.protocol]: opts.protocol ?? 'tcp',
    [META.mode]: w.mode,
    [META.ports]: w.ports.length ? w.ports.join(',') : '*',
  };
  if (w.addresses.length > 1) meta[META.addresses] = w.addresses.join(',');
  if (w.uid !== undefined) meta[META.uid] = String(w.uid);
  if (w.plaintextPorts?.length) meta[META.plaintextPorts] = w.plaintextPorts.join(',');
  if (w.upstreams.length) meta[META.upstreams] = encodeUpstreams(w.upstreams);
  if (opts.waypoint) meta[META.waypoint] = opts.waypoint;
  for (const f of META_FIELDS) if (w[f] !== undefined) meta[META[f]] = w[f]!;
  for (const [k, v] of Object.entries(meta)) {
    if (v.length > MAX_META_VALUE) {
      throw new Error(`Meta "${k}" would be ${v.length} characters; Consul allows ${MAX_META_VALUE}`);
    }
  }
  const lanKey = isIP(address) === 6 ? 'lan_ipv6' : 'lan_ipv4';
  const checks: ConsulCheckDefinition[] = [];
  if (port > 0) {
    checks.push({
      Name: `ambit: ${w.name} accepts TCP on ${joinHostPort(address, port)}`,
      TCP: joinHostPort(address, port),
      Interval: opts.checkInterval ?? '10s',
      Timeout: '2s',
      // Registered as passing: a new workload is routable at once, and the first probe corrects it.
      Status: 'passing',
    });
  }
  return {
    ID: w.name,
    Name: w.service,
    Tags: [AMBIT_TAG, nodeTag(w.node)],
    Address: address,
    Port: port,
    Meta: meta,
    TaggedAddresses: { lan: { Address: address, Port: port }, [lanKey]: { Address: address, Port: port } },
    Checks: checks,
  };
}

export const nodeServiceId = (node: string): string => `ambit-node-${node}`;
/** The node check: a TTL check the daemon itself keeps passing (`PUT /v1/agent/check/update/<id>`). */
export const nodeCheckId = (node: string): string => `ambit-node-${node}:alive`;
/** How long the node check stays passing without an update; the daemon updates it every third of it. */
export const NODE_CHECK_TTL_S = 30;

/**
 * The registration of a node's daemon: the `ambit` service at the node's tunnel address. Its check is a
 * TTL the daemon updates, not a TCP probe of the tunnel port: a probe that connects and closes without a
 * TLS handshake is, to the tunnel listener, a failed handshake every interval.
 */
export function nodeRegistration(node: MeshNode, opts: { role: string }): ConsulServiceRegistration {
  const hostPort = joinHostPort(node.address, node.tunnelPort);
  return {
    ID: nodeServiceId(node.name),
    Name: NODE_SERVICE,
    Tags: ['ambit-daemon', `role=${opts.role}`],
    Address: node.address,
    Port: node.tunnelPort,
    Meta: { [META.node]: node.name, 'ambit-role': opts.role, [META.protocol]: 'hbone' },
    TaggedAddresses: { lan: { Address: node.address, Port: node.tunnelPort } },
    Checks: [
      {
        CheckID: nodeCheckId(node.name),
        Name: `ambit: daemon of ${node.name} (tunnel ${hostPort})`,
        TTL: `${NODE_CHECK_TTL_S}s`,
        Status: 'passing',
      },
    ],
  };
}

// --- Decoding --------------------------------------------------------------------------------------------

/** Consul's `?passing`: every check of the entry (node checks included) is passing. */
export const isPassing = (e: ConsulHealthEntry): boolean =>
  (e.Checks ?? []).every((c) => c.Status === 'passing');

const MODES: readonly MeshMode[] = ['strict', 'permissive'];

/**
 * A workload from a health entry. Instances registered by other tools (no Ambit Meta) are read as well as
 * Consul's fields allow: the Consul node name stands for the Ambit node. Throws on malformed Ambit Meta.
 */
export function workloadFromEntry(e: ConsulHealthEntry): Workload {
  const s = e.Service;
  const meta = s.Meta ?? {};
  const node = meta[META.node] || e.Node.Node;
  const address = s.Address || e.Node.Address;
  const addresses = meta[META.addresses] ? meta[META.addresses]!.split(',') : [address];
  for (const a of addresses) if (isIP(a) === 0) throw new Error(`address "${a}" is not an IP address`);
  let ports: number[];
  const portsText = meta[META.ports];
  if (portsText === '*') ports = [];
  else if (portsText) ports = portsText.split(',').map(Number);
  else ports = s.Port ? [s.Port] : [];
  for (const p of ports)
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new Error(`bad port in "${portsText}"`);
  const plainText = meta[META.plaintextPorts];
  const plaintextPorts = plainText ? [...new Set(plainText.split(',').map((p) => Number(p.trim())))] : [];
  for (const p of plaintextPorts)
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new Error(`bad port in "${plainText}"`);
  const modeText = meta[META.mode] ?? 'strict';
  if (!(MODES as readonly string[]).includes(modeText)) throw new Error(`bad mode "${modeText}"`);
  const uidText = meta[META.uid];
  const uid = uidText !== undefined && uidText !== '' ? Number(uidText) : undefined;
  if (uid !== undefined && !(Number.isInteger(uid) && uid >= 0)) throw new Error(`bad uid "${uidText}"`);
  return {
    name: meta[META.workload] || s.ID,
    service: s.Service,
    namespace: meta[META.namespace] || 'default',
    node,
    addresses: [...new Set(addresses.map(canonicalV6))],
    ports: [...new Set(ports)],
    ...(plaintextPorts.length ? { plaintextPorts } : {}),
    uid,
    mode: modeText as MeshMode,
    upstreams: meta[META.upstreams] ? decodeUpstreams(meta[META.upstreams]!) : [],
    ...workloadMeta(meta),
  };
}

/** The Istio labels an instance's Meta sets; empty values count as absent, so defaults apply. */
function workloadMeta(meta: Record<string, string>): WorkloadMeta {
  const out: { -readonly [K in keyof WorkloadMeta]: string } = {};
  for (const f of META_FIELDS) {
    const v = meta[META[f]];
    if (v) out[f] = v;
  }
  return out;
}

/** A node from its daemon's `ambit` service instance. */
export function nodeFromEntry(e: ConsulHealthEntry): MeshNode | undefined {
  const name = e.Service.Meta?.[META.node];
  const address = e.Service.Address || e.Node.Address;
  const port = e.Service.Port;
  if (!name || isIP(address) === 0 || !port) return undefined;
  return { name, address, tunnelPort: port };
}

/**
 * Where a workload's node is when no daemon registered it: `ambit-node-address`/`ambit-tunnel-port` Meta
 * if the workload carries them, else the Consul node's address and the default tunnel port.
 */
export function fallbackNode(e: ConsulHealthEntry, name: string): MeshNode | undefined {
  const meta = e.Service.Meta ?? {};
  const address = meta[META.nodeAddress] || e.Node.Address;
  const port = Number(meta[META.tunnelPort] || DEFAULT_TUNNEL_PORT);
  if (isIP(address) === 0 || !Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  return { name, address, tunnelPort: port };
}

export const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** Keeps the entries of a health answer that have the fields Ambit reads. */
export function healthEntries(body: unknown): ConsulHealthEntry[] {
  if (!Array.isArray(body)) return [];
  return body.filter(
    (e): e is ConsulHealthEntry =>
      isRecord(e) &&
      isRecord(e.Node) &&
      isRecord(e.Service) &&
      typeof e.Service.Service === 'string' &&
      typeof e.Service.ID === 'string',
  );
}
