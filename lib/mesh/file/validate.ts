// Document value -> Mesh: every field checked, defaults filled in, cross-references resolved. A refusal
// names the field path (`workloads.web-1.ports[1]`); parse.ts adds the line it is on.
import { isIP } from 'node:net';
import { MeshFileError } from '../../errors.js';
import { canonicalIp, canonicalV6, isLoopback } from '../../net/addresses.js';
import { joinHostPort, splitHostPort } from '../../net/hostport.js';
import type {
  FailMode,
  Mesh,
  MeshMode,
  MeshNode,
  Policy,
  PolicyAction,
  PolicySource,
  Service,
  ServicePort,
  Upstream,
  Workload,
  WorkloadMeta,
} from '../model.js';
import { SERVICE_PROTOCOLS, type ServiceProtocol, emptyMesh } from '../model.js';
import { withProtocols } from '../protocols.js';
import { configEntriesOf } from './entries.js';
import { Invalid } from './invalid.js';
import {
  DAEMON_PORTS,
  DEFAULT_NAMESPACE,
  DEFAULT_TUNNEL_PORT,
  LABEL_VALUE,
  META_KEYS,
  NODE_KEYS,
  OBJECT_NAME,
  POLICY_KEYS,
  POLICY_SOURCE_KEYS,
  type PathSeg,
  SERVICE_KEYS,
  SERVICE_NAME,
  SERVICE_PORT_KEYS,
  TOP_KEYS,
  UPSTREAM_KEYS,
  WORKLOAD_KEYS,
} from './schema.js';
import { withServiceMeta } from './service-meta.js';

/** `workloads.web-1.ports[1]`; keys that would be ambiguous in dotted form are bracketed. */
export function fieldPath(path: readonly PathSeg[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (/^[A-Za-z0-9_-]+$/.test(seg)) out += out ? `.${seg}` : seg;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out || '(root)';
}

const show = (v: unknown): string => {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return JSON.stringify(v);
};

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function expectObj(v: unknown, path: PathSeg[], keys: readonly string[]): Obj {
  if (!isObj(v)) throw new Invalid(path, `must be a mapping, got ${show(v)}`);
  for (const k of Object.keys(v)) {
    if (!keys.includes(k)) {
      throw new Invalid([...path, k], `unknown key "${k}" (expected one of: ${keys.join(', ')})`);
    }
  }
  return v;
}

/** A section that is a name -> entry mapping; absent or null means empty. */
function entries(v: unknown, path: PathSeg[]): [string, unknown][] {
  if (v === undefined || v === null) return [];
  if (!isObj(v)) throw new Invalid(path, `must be a mapping of name to entry, got ${show(v)}`);
  return Object.entries(v);
}

function list(v: unknown, path: PathSeg[]): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new Invalid(path, `must be a list, got ${show(v)}`);
  return v;
}

function str(v: unknown, path: PathSeg[]): string {
  if (typeof v !== 'string' || v === '')
    throw new Invalid(path, `must be a non-empty string, got ${show(v)}`);
  return v;
}

function name(v: unknown, path: PathSeg[], re: RegExp, what: string): string {
  const s = str(v, path);
  if (!re.test(s)) {
    const allowed =
      re === SERVICE_NAME ? 'letters, digits, "-" and "_"' : 'letters, digits, ".", "-" and "_"';
    throw new Invalid(
      path,
      `${what} "${s}" must use only ${allowed}, starting and ending with a letter or digit`,
    );
  }
  return s;
}

function oneOf<T extends string>(v: unknown, path: PathSeg[], values: readonly T[], dflt: T): T {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
    throw new Invalid(path, `must be one of ${values.join(', ')}, got ${show(v)}`);
  }
  return v as T;
}

export function isPort(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535;
}

function port(v: unknown, path: PathSeg[]): number {
  if (!isPort(v)) throw new Invalid(path, `must be an integer between 1 and 65535, got ${show(v)}`);
  return v;
}

function ip(v: unknown, path: PathSeg[]): string {
  if (typeof v !== 'string' || isIP(v) === 0) {
    throw new Invalid(path, `must be an IPv4 or IPv6 address literal, got ${show(v)}`);
  }
  // One spelling of an IPv6 address in the model: the store's lookups and the CONNECT authority compare
  // addresses as text, and a socket reports the canonical one.
  return canonicalV6(v);
}

function uniqueList<T>(
  v: unknown,
  path: PathSeg[],
  item: (x: unknown, p: PathSeg[]) => T,
  what: string,
): T[] {
  const out: T[] = [];
  list(v, path).forEach((x, i) => {
    const val = item(x, [...path, i]);
    if (out.includes(val)) throw new Invalid([...path, i], `duplicate ${what} ${show(val)}`);
    out.push(val);
  });
  return out;
}

/** `"127.0.0.1:15101"`, `"[::1]:15101"`, `15101` or `"15101"` (=> 127.0.0.1). */
export function parseListen(v: unknown): { host: string; port: number } | string {
  if (typeof v === 'number') return isPort(v) ? { host: '127.0.0.1', port: v } : 'port out of range';
  if (typeof v !== 'string' || v === '') return 'must be "ip:port" or a port';
  let host = '127.0.0.1';
  let portText = v;
  const hp = splitHostPort(v);
  if (hp && /^\d+$/.test(hp.port)) {
    host = hp.host;
    portText = hp.port;
  } else if (!/^\d+$/.test(v)) {
    return 'must be "ip:port", "[ipv6]:port" or a bare port';
  }
  const p = Number(portText);
  if (!isPort(p)) return `port ${portText} is not between 1 and 65535`;
  if (isIP(host) === 0) return `"${host}" is not an IP address literal`;
  return { host, port: p };
}

const WILDCARD = new Set(['0.0.0.0', '::']);

function parseNode(key: string, v: unknown, path: PathSeg[]): MeshNode {
  name(key, path, OBJECT_NAME, 'node name');
  const o = expectObj(v, path, NODE_KEYS);
  return {
    name: key,
    address: ip(o.address, [...path, 'address']),
    tunnelPort:
      o.tunnelPort === undefined ? DEFAULT_TUNNEL_PORT : port(o.tunnelPort, [...path, 'tunnelPort']),
  };
}

function parseUpstream(v: unknown, path: PathSeg[], workloadNs: string): Upstream {
  const o = expectObj(v, path, UPSTREAM_KEYS);
  const listen = parseListen(o.listen);
  if (typeof listen === 'string') {
    throw new Invalid([...path, 'listen'], `${listen}, got ${show(o.listen)}`);
  }
  return {
    service: name(o.service, [...path, 'service'], SERVICE_NAME, 'service name'),
    namespace:
      o.namespace === undefined
        ? workloadNs
        : name(o.namespace, [...path, 'namespace'], SERVICE_NAME, 'namespace'),
    port: o.port === undefined || o.port === null ? undefined : port(o.port, [...path, 'port']),
    listenHost: listen.host,
    listenPort: listen.port,
  };
}

/** The Istio labels a workload sets; absent ones stay absent so that their defaults follow the service. */
function parseMeta(o: Obj, path: PathSeg[]): WorkloadMeta {
  const out: { -readonly [K in keyof WorkloadMeta]: string } = {};
  for (const k of META_KEYS) {
    if (o[k] === undefined || o[k] === null) continue;
    out[k] = name(o[k], [...path, k], LABEL_VALUE, k);
  }
  return out;
}

function parseWorkload(key: string, v: unknown, path: PathSeg[]): Workload {
  name(key, path, OBJECT_NAME, 'workload name');
  const o = expectObj(v, path, WORKLOAD_KEYS);
  const namespace =
    o.namespace === undefined
      ? DEFAULT_NAMESPACE
      : name(o.namespace, [...path, 'namespace'], SERVICE_NAME, 'namespace');
  const addresses = uniqueList(o.addresses, [...path, 'addresses'], ip, 'address');
  if (addresses.length === 0) {
    throw new Invalid([...path, 'addresses'], 'must list at least one IP address of the workload');
  }
  let uid: number | undefined;
  if (o.uid !== undefined && o.uid !== null) {
    if (typeof o.uid !== 'number' || !Number.isInteger(o.uid) || o.uid < 0 || o.uid > 0xffffffff) {
      throw new Invalid([...path, 'uid'], `must be an integer >= 0, got ${show(o.uid)}`);
    }
    uid = o.uid;
  }
  return {
    name: key,
    service:
      o.service === undefined ? key : name(o.service, [...path, 'service'], SERVICE_NAME, 'service name'),
    namespace,
    node: str(o.node, [...path, 'node']),
    addresses,
    ports: uniqueList(o.ports, [...path, 'ports'], port, 'port'),
    ...plaintextPortsOf(o.plaintextPorts, [...path, 'plaintextPorts']),
    uid,
    mode: oneOf<MeshMode>(o.mode, [...path, 'mode'], ['strict', 'permissive'], 'strict'),
    ...(o.failMode === undefined || o.failMode === null
      ? {}
      : { failMode: oneOf<FailMode>(o.failMode, [...path, 'failMode'], ['open', 'closed'], 'closed') }),
    ...parseMeta(o, path),
    upstreams: list(o.upstreams, [...path, 'upstreams']).map((u, i) =>
      parseUpstream(u, [...path, 'upstreams', i], namespace),
    ),
  };
}

/** Absent when the file names none, so that a workload without them reads as before. */
function plaintextPortsOf(v: unknown, path: PathSeg[]): { plaintextPorts?: number[] } {
  const ports = uniqueList(v, path, port, 'port');
  return ports.length ? { plaintextPorts: ports } : {};
}

function parseServicePort(v: unknown, path: PathSeg[]): ServicePort {
  if (typeof v === 'number') {
    const p = port(v, path);
    return { port: p, targetPort: p };
  }
  const o = expectObj(v, path, SERVICE_PORT_KEYS);
  const p = port(o.port, [...path, 'port']);
  return {
    port: p,
    targetPort: o.targetPort === undefined ? p : port(o.targetPort, [...path, 'targetPort']),
  };
}

function parseService(key: string, v: unknown, path: PathSeg[]): Service {
  name(key, path, SERVICE_NAME, 'service name');
  // `api:` with nothing under it is a legitimate "this service exists" entry.
  const o = v === null ? {} : expectObj(v, path, SERVICE_KEYS);
  const ports: ServicePort[] = [];
  list(o.ports, [...path, 'ports']).forEach((x, i) => {
    const sp = parseServicePort(x, [...path, 'ports', i]);
    if (ports.some((q) => q.port === sp.port))
      throw new Invalid([...path, 'ports', i], `duplicate port ${sp.port}`);
    ports.push(sp);
  });
  const vips = uniqueList(o.vips, [...path, 'vips'], ip, 'address');
  if (vips.length > 0 && ports.length === 0) {
    throw new Invalid([...path, 'ports'], 'a service with vips must list the ports its vips accept');
  }
  return {
    name: key,
    namespace:
      o.namespace === undefined
        ? DEFAULT_NAMESPACE
        : name(o.namespace, [...path, 'namespace'], SERVICE_NAME, 'namespace'),
    vips,
    ports,
    waypoint:
      o.waypoint === undefined || o.waypoint === null
        ? undefined
        : name(o.waypoint, [...path, 'waypoint'], SERVICE_NAME, 'waypoint service name'),
    ...(o.protocol === undefined
      ? {}
      : { protocol: oneOf<ServiceProtocol>(o.protocol, [...path, 'protocol'], SERVICE_PROTOCOLS, 'tcp') }),
  };
}

function parseSource(v: unknown, path: PathSeg[]): PolicySource {
  const o = v === null ? {} : expectObj(v, path, POLICY_SOURCE_KEYS);
  let principal: string | undefined;
  if (o.principal !== undefined) {
    principal = str(o.principal, [...path, 'principal']);
    if (!principal.startsWith('spiffe://')) {
      throw new Invalid([...path, 'principal'], `must be a SPIFFE ID (spiffe://...), got ${show(principal)}`);
    }
  }
  return {
    service:
      o.service === undefined
        ? undefined
        : name(o.service, [...path, 'service'], SERVICE_NAME, 'service name'),
    namespace:
      o.namespace === undefined
        ? undefined
        : name(o.namespace, [...path, 'namespace'], SERVICE_NAME, 'namespace'),
    principal,
  };
}

function parsePolicy(key: string, v: unknown, path: PathSeg[]): Policy {
  name(key, path, OBJECT_NAME, 'policy name');
  const o = expectObj(v, path, POLICY_KEYS);
  if (o.action === undefined) throw new Invalid([...path, 'action'], 'is required (allow or deny)');
  return {
    name: key,
    action: oneOf<PolicyAction>(o.action, [...path, 'action'], ['allow', 'deny'], 'allow'),
    service: name(o.service, [...path, 'service'], SERVICE_NAME, 'service name'),
    namespace:
      o.namespace === undefined
        ? DEFAULT_NAMESPACE
        : name(o.namespace, [...path, 'namespace'], SERVICE_NAME, 'namespace'),
    ports: uniqueList(o.ports, [...path, 'ports'], port, 'port'),
    from: list(o.from, [...path, 'from']).map((s, i) => parseSource(s, [...path, 'from', i])),
  };
}

/** Validates a plain value (the parsed document) into the model; throws Invalid with a path. */
export function meshFromValue(value: unknown): Mesh {
  if (value === undefined || value === null) return emptyMesh();
  const top = expectObj(value, [], TOP_KEYS);
  const nodes = entries(top.nodes, ['nodes']).map(([k, v]) => parseNode(k, v, ['nodes', k]));
  const nodeNames = new Set(nodes.map((n) => n.name));
  const workloads = entries(top.workloads, ['workloads']).map(([k, v]) =>
    parseWorkload(k, v, ['workloads', k]),
  );

  const claims = new Map<string, Workload[]>(); // canonical ip -> the workloads claiming it
  const listeners = new Map<string, string>(); // "node|port" -> "host by workload"
  for (const w of workloads) {
    const wp: PathSeg[] = ['workloads', w.name];
    if (!nodeNames.has(w.node)) {
      const known = nodeNames.size ? `known nodes: ${[...nodeNames].join(', ')}` : 'no nodes are defined';
      throw new Invalid([...wp, 'node'], `node "${w.node}" is not defined in nodes (${known})`);
    }
    const clash = addressClash(w, claims);
    if (clash) throw new Invalid([...wp, 'addresses'], clash);
    const node = nodes.find((n) => n.name === w.node)!;
    if (w.ports.length === 0) {
      const own = ownAddress(w.addresses, node);
      if (own) throw new Invalid([...wp, 'ports'], everyPortRefused(own));
    }
    w.upstreams.forEach((u, i) => {
      const up: PathSeg[] = [...wp, 'upstreams', i, 'listen'];
      if (DAEMON_PORTS.has(u.listenPort) || u.listenPort === node.tunnelPort) {
        throw new Invalid(up, `port ${u.listenPort} is one of ambitd's own ports`);
      }
      // Upstream listeners are bound by the daemon of the workload's node; they only clash on one node.
      for (const [k, owner] of listeners) {
        const [n, p, h] = k.split('|');
        if (n !== w.node || Number(p) !== u.listenPort) continue;
        if (h === u.listenHost || WILDCARD.has(h!) || WILDCARD.has(u.listenHost)) {
          throw new Invalid(
            up,
            `listen address ${joinHostPort(u.listenHost, u.listenPort)} on node "${n}" is already used by ${owner}`,
          );
        }
      }
      listeners.set(`${w.node}|${u.listenPort}|${u.listenHost}`, `an upstream of workload "${w.name}"`);
    });
  }

  const explicit = entries(top.services, ['services']).map(([k, v]) => parseService(k, v, ['services', k]));
  // Entries come before the vip checks: a service-defaults' Meta may give a service its vips.
  const configEntries = configEntriesOf(top.configEntries, explicit);
  const declared = withServiceMeta(explicit, configEntries, top.configEntries);
  const vipOwners = new Map<string, string>();
  for (const s of declared) {
    for (const vip of s.vips) {
      for (const p of s.ports) {
        const k = `${vip}|${p.port}`;
        const other = vipOwners.get(k);
        if (other) {
          throw new Invalid(
            ['services', s.name, 'vips'],
            `${vip} port ${p.port} is already a vip of service "${other}"`,
          );
        }
        vipOwners.set(k, s.name);
      }
    }
  }
  // Services are implied by workloads: give every one a model entry so lookups need not special-case them.
  const services = [...declared];
  for (const w of workloads) {
    if (!services.some((s) => s.name === w.service && s.namespace === w.namespace)) {
      services.push({ name: w.service, namespace: w.namespace, vips: [], ports: [], waypoint: undefined });
    }
  }

  const defaultPolicy = oneOf<PolicyAction>(top.defaultPolicy, ['defaultPolicy'], ['allow', 'deny'], 'allow');
  const policies = entries(top.policies, ['policies']).map(([k, v]) => parsePolicy(k, v, ['policies', k]));
  return {
    defaultPolicy,
    nodes,
    workloads,
    services: withProtocols(services, configEntries),
    policies,
    ...(configEntries.length ? { configEntries } : {}),
  };
}

/** What `ports` claims at an address: the listed ports, or every port when the list is empty. */
const claimText = (ip: string, ports: readonly number[]): string =>
  ports.length ? `${ip} port ${ports.join(',')}` : `every port of ${ip}`;

/**
 * Why `w` cannot have its addresses, if another workload already claims one of them at a port `w` also
 * serves (every port counting as all of them). Two owners of one ip:port would make delivery ambiguous: a
 * peer's tunnel would be sent to one node and refused there as "not a workload enrolled on" it. Records
 * `w`'s claims when there is no clash; addresses compare in canonical form (`::ffff:a.b.c.d` is a.b.c.d).
 */
export function addressClash(w: Workload, claims: Map<string, Workload[]>): string | undefined {
  const mine = [...new Set(w.addresses.map(canonicalIp))];
  for (const ip of mine) {
    for (const other of claims.get(ip) ?? []) {
      // An empty list is every port: the overlap is then the other's list (or every port, both empty).
      const shared =
        other.ports.length === 0
          ? w.ports
          : w.ports.length === 0
            ? other.ports
            : w.ports.filter((p) => other.ports.includes(p));
      if (w.ports.length > 0 && other.ports.length > 0 && shared.length === 0) continue;
      const at = claimText(ip, shared);
      return (
        `workloads "${other.name}" and "${w.name}" both claim ${at}: an address (and port) may belong to ` +
        'one workload only, or traffic meant for one would be delivered to the other'
      );
    }
  }
  for (const ip of mine) claims.set(ip, [...(claims.get(ip) ?? []), w]);
  return undefined;
}

/**
 * The first of `addresses` that is this node's own: loopback, or the node's address in the mesh. The host's
 * other interface addresses are known only on the host: ambitd checks them when it loads the file.
 */
export function ownAddress(
  addresses: readonly string[],
  node: MeshNode,
  more: (ip: string) => boolean = () => false,
): { ip: string; what: string } | undefined {
  for (const ip of addresses) {
    if (isLoopback(ip)) return { ip, what: 'a loopback address' };
    if (canonicalIp(ip) === canonicalIp(node.address))
      return { ip, what: `the address of its node "${node.name}"` };
    if (more(ip)) return { ip, what: `an address of its node "${node.name}"` };
  }
  return undefined;
}

/** Why `ports: []` is refused for a workload at one of its node's own addresses. */
export const everyPortRefused = (own: { ip: string; what: string }): string =>
  `must list the ports the workload serves: ${own.ip} is ${own.what}, and every port of it would let ` +
  "any peer of the mesh reach every server of that host through the tunnel, ambitd's admin API included";

/**
 * Validates a document value into the model; a refusal is a MeshFileError naming `file` and the field path.
 * `locate` says where a field is in the text (`atKey`: the key that names it rather than its value), for
 * the reason; without it the reason has no line.
 */
export function validateMesh(
  value: unknown,
  file: string,
  locate?: (path: readonly PathSeg[], atKey: boolean) => string | undefined,
): Mesh {
  try {
    return meshFromValue(value);
  } catch (e) {
    if (!(e instanceof Invalid)) throw e;
    const at = locate?.(e.path, e.atKey || e.reason.startsWith('unknown key'));
    throw new MeshFileError(file, e.display ?? fieldPath(e.path), at ? `${e.reason} (${at})` : e.reason);
  }
}
