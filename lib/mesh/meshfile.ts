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
 *                                 # refused at a loopback address or the node's own (list the ports)
 *     uid: 1001                   # optional owner uid (integer >= 0), for processes on the host network
 *     mode: strict                # strict | permissive; default strict
 *     failMode: closed            # open | closed: capture while ambitd is down; default closed if strict, else open
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
 * ```
 *
 * Every section may be absent or empty; an empty file is an empty mesh. Unknown keys are errors (a typo must
 * not silently turn a deny into nothing), and every error names the file, the field path
 * (`workloads.web-1.ports[1]`) and the line.
 */
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { extname } from 'node:path';
import { type Document, LineCounter, parseDocument } from 'yaml';
import { MeshFileError } from '../errors.js';
import { canonicalIp, isLoopback } from '../net/addresses.js';
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
} from './model.js';
import { emptyMesh } from './model.js';

export const DEFAULT_TUNNEL_PORT = 15008;
export const DEFAULT_NAMESPACE = 'default';
/** Ports ambitd binds itself (see DESIGN.md); an upstream listener there would fight the daemon. */
const DAEMON_PORTS: ReadonlySet<number> = new Set([15000, 15001, 15006, 15008, 15020, 15021]);

/** Service and namespace names end up in SPIFFE IDs and in `svc.ns` CLI arguments: no dots, no slashes. */
export const SERVICE_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$/;
/** Node, workload and policy names are only keys; host names (with dots) are common for nodes. */
export const OBJECT_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;

export type MeshFormat = 'yaml' | 'json';

export const meshFormat = (file: string): MeshFormat =>
  extname(file).toLowerCase() === '.json' ? 'json' : 'yaml';

type PathSeg = string | number;

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

/** Raised inside validation; converted to MeshFileError with the line number once the path is known. */
class Invalid extends Error {
  constructor(
    readonly path: readonly PathSeg[],
    readonly reason: string,
  ) {
    super(reason);
  }
}

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
  return v;
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
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(v) ?? /^([^:]+):(\d+)$/.exec(v);
  if (m) {
    host = m[1]!;
    portText = m[2]!;
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
  const o = expectObj(v, path, ['address', 'tunnelPort']);
  return {
    name: key,
    address: ip(o.address, [...path, 'address']),
    tunnelPort:
      o.tunnelPort === undefined ? DEFAULT_TUNNEL_PORT : port(o.tunnelPort, [...path, 'tunnelPort']),
  };
}

function parseUpstream(v: unknown, path: PathSeg[], workloadNs: string): Upstream {
  const o = expectObj(v, path, ['service', 'namespace', 'port', 'listen']);
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

const WORKLOAD_KEYS = [
  'service',
  'namespace',
  'node',
  'addresses',
  'ports',
  'uid',
  'mode',
  'failMode',
  'upstreams',
] as const;

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
    uid,
    mode: oneOf<MeshMode>(o.mode, [...path, 'mode'], ['strict', 'permissive'], 'strict'),
    ...(o.failMode === undefined || o.failMode === null
      ? {}
      : { failMode: oneOf<FailMode>(o.failMode, [...path, 'failMode'], ['open', 'closed'], 'closed') }),
    upstreams: list(o.upstreams, [...path, 'upstreams']).map((u, i) =>
      parseUpstream(u, [...path, 'upstreams', i], namespace),
    ),
  };
}

function parseServicePort(v: unknown, path: PathSeg[]): ServicePort {
  if (typeof v === 'number') {
    const p = port(v, path);
    return { port: p, targetPort: p };
  }
  const o = expectObj(v, path, ['port', 'targetPort']);
  const p = port(o.port, [...path, 'port']);
  return {
    port: p,
    targetPort: o.targetPort === undefined ? p : port(o.targetPort, [...path, 'targetPort']),
  };
}

function parseService(key: string, v: unknown, path: PathSeg[]): Service {
  name(key, path, SERVICE_NAME, 'service name');
  // `api:` with nothing under it is a legitimate "this service exists" entry.
  const o = v === null ? {} : expectObj(v, path, ['namespace', 'vips', 'ports', 'waypoint']);
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
  };
}

function parseSource(v: unknown, path: PathSeg[]): PolicySource {
  const o = v === null ? {} : expectObj(v, path, ['service', 'namespace', 'principal']);
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
  const o = expectObj(v, path, ['action', 'service', 'namespace', 'ports', 'from']);
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

const TOP_KEYS = ['defaultPolicy', 'nodes', 'workloads', 'services', 'policies'] as const;

/** Validates a plain value (the parsed document) into the model; throws Invalid with a path. */
export function meshFromValue(value: unknown): Mesh {
  if (value === undefined || value === null) return emptyMesh();
  const top = expectObj(value, [], TOP_KEYS);
  const nodes = entries(top.nodes, ['nodes']).map(([k, v]) => parseNode(k, v, ['nodes', k]));
  const nodeNames = new Set(nodes.map((n) => n.name));
  const workloads = entries(top.workloads, ['workloads']).map(([k, v]) =>
    parseWorkload(k, v, ['workloads', k]),
  );

  const servedBy = new Map<string, string>(); // "ip|port" (port '*' = every port) -> workload
  const listeners = new Map<string, string>(); // "node|port" -> "host by workload"
  for (const w of workloads) {
    const wp: PathSeg[] = ['workloads', w.name];
    if (!nodeNames.has(w.node)) {
      const known = nodeNames.size ? `known nodes: ${[...nodeNames].join(', ')}` : 'no nodes are defined';
      throw new Invalid([...wp, 'node'], `node "${w.node}" is not defined in nodes (${known})`);
    }
    // Two workloads at one ip:port would make inbound delivery ambiguous.
    for (const a of w.addresses) {
      for (const p of w.ports.length ? w.ports : ['*']) {
        const other = servedBy.get(`${a}|${p}`);
        if (other) {
          const at = p === '*' ? `every port of ${a}` : `${a} port ${p}`;
          throw new Invalid([...wp, 'addresses'], `${at} is already served by workload "${other}"`);
        }
        servedBy.set(`${a}|${p}`, w.name);
      }
    }
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
            `listen address ${fmtHostPort(u.listenHost, u.listenPort)} on node "${n}" is already used by ${owner}`,
          );
        }
      }
      listeners.set(`${w.node}|${u.listenPort}|${u.listenHost}`, `an upstream of workload "${w.name}"`);
    });
  }

  const explicit = entries(top.services, ['services']).map(([k, v]) => parseService(k, v, ['services', k]));
  const vipOwners = new Map<string, string>();
  for (const s of explicit) {
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
  const services = [...explicit];
  for (const w of workloads) {
    if (!services.some((s) => s.name === w.service && s.namespace === w.namespace)) {
      services.push({ name: w.service, namespace: w.namespace, vips: [], ports: [], waypoint: undefined });
    }
  }

  return {
    defaultPolicy: oneOf<PolicyAction>(top.defaultPolicy, ['defaultPolicy'], ['allow', 'deny'], 'allow'),
    nodes,
    workloads,
    services,
    policies: entries(top.policies, ['policies']).map(([k, v]) => parsePolicy(k, v, ['policies', k])),
  };
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

export const fmtHostPort = (host: string, p: number): string =>
  host.includes(':') ? `[${host}]:${p}` : `${host}:${p}`;

const lineOf = (lc: LineCounter, offset: number): string => {
  const { line, col } = lc.linePos(offset);
  return `line ${line}, column ${col}`;
};

/**
 * Parses the text as a YAML document (JSON files too: JSON is YAML, and this gives line numbers and
 * duplicate-key errors that JSON.parse would swallow). Syntax errors become MeshFileError.
 */
export function parseMeshDocument(text: string, file: string): { doc: Document; lineCounter: LineCounter } {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const err = doc.errors[0];
  if (err) {
    const msg = err.message.replace(/ at line \d+, column \d+[\s\S]*$/, '');
    throw new MeshFileError(file, lineOf(lineCounter, err.pos[0]), `syntax error: ${msg}`);
  }
  if (meshFormat(file) === 'json' && text.trim() !== '') {
    // YAML accepts far more than JSON (comments, bare strings); a .json file must be JSON for other tools.
    try {
      JSON.parse(text);
    } catch (e) {
      const m = /position (\d+)/.exec((e as Error).message);
      const where = m ? lineOf(lineCounter, Number(m[1])) : '(document)';
      throw new MeshFileError(
        file,
        where,
        `invalid JSON: ${(e as Error).message.replace(/ in JSON at position \d+.*$/, '')}`,
      );
    }
  }
  return { doc, lineCounter };
}

type Ranged = { range?: [number, number, number] | null };

/**
 * Where the field at `path` is in the text: its value (or its key, for an unknown key), else the deepest
 * enclosing entry that exists (a required field that is missing is reported at its parent).
 */
function locate(
  doc: Document,
  path: readonly PathSeg[],
  atKey: boolean,
  lc: LineCounter,
): string | undefined {
  for (let n = path.length; n >= 0; n--) {
    const sub = path.slice(0, n);
    const parent =
      n > 0 ? (doc.getIn(sub.slice(0, -1), true) as { items?: { key?: unknown }[] } | undefined) : undefined;
    const pair = parent?.items?.find(
      (it) => String((it.key as { value?: unknown })?.value) === String(path[n - 1]),
    );
    const key = (pair?.key as Ranged | undefined)?.range;
    const value = (doc.getIn(sub, true) as Ranged | undefined)?.range;
    // The field itself: its value. An unknown key, or the parent of a missing field: the key that names it.
    const range = n === path.length && !atKey ? (value ?? key) : (key ?? value);
    if (range) return lineOf(lc, range[0]);
  }
  return undefined;
}

/** Validates a parsed document; the error names the field path and the line it is on. */
export function meshFromDocument(doc: Document, file: string, lineCounter?: LineCounter): Mesh {
  try {
    return meshFromValue(doc.toJS({ maxAliasCount: 100 }));
  } catch (e) {
    if (!(e instanceof Invalid)) throw e;
    const at = lineCounter ? locate(doc, e.path, e.reason.startsWith('unknown key'), lineCounter) : undefined;
    const reason = at ? `${e.reason} (${at})` : e.reason;
    throw new MeshFileError(file, fieldPath(e.path), reason);
  }
}

/** Parses and validates the text of a mesh file; `file` names it in errors and picks the format. */
export function parseMesh(text: string, file: string): Mesh {
  const { doc, lineCounter } = parseMeshDocument(text, file);
  return meshFromDocument(doc, file, lineCounter);
}

/** The mesh in the file; a missing file is an empty mesh (nothing enrolled yet). */
export async function readMeshFile(path: string): Promise<Mesh> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return emptyMesh();
    throw new MeshFileError(path, '(file)', `cannot read: ${(e as Error).message}`);
  }
  return parseMesh(text, path);
}

// ---- model -> document: the plain values the editor writes, leaving out what equals the default, so that
// files stay as short as a human would write them.

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
  uid?: number;
  mode?: MeshMode;
  failMode?: FailMode;
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

export interface ServiceDoc {
  namespace?: string;
  vips?: string[];
  ports?: { port: number; targetPort?: number }[];
  waypoint?: string | null;
}

export interface MeshDoc {
  defaultPolicy?: PolicyAction;
  nodes?: Record<string, NodeDoc>;
  workloads?: Record<string, WorkloadDoc>;
  services?: Record<string, ServiceDoc>;
  policies?: Record<string, PolicyDoc>;
}

export const nodeToDoc = (n: MeshNode): NodeDoc =>
  n.tunnelPort === DEFAULT_TUNNEL_PORT
    ? { address: n.address }
    : { address: n.address, tunnelPort: n.tunnelPort };

export function upstreamToDoc(u: Upstream, workloadNs: string): UpstreamDoc {
  const d: Partial<UpstreamDoc> = { service: u.service };
  if (u.namespace !== workloadNs) d.namespace = u.namespace;
  if (u.port !== undefined) d.port = u.port;
  d.listen = fmtHostPort(u.listenHost, u.listenPort);
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
  if (w.uid !== undefined) d.uid = w.uid;
  if (w.mode !== 'strict') d.mode = w.mode;
  if (w.failMode !== undefined) d.failMode = w.failMode;
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

export function serviceToDoc(s: Service): ServiceDoc {
  const d: ServiceDoc = {};
  if (s.namespace !== DEFAULT_NAMESPACE) d.namespace = s.namespace;
  if (s.vips.length) d.vips = [...s.vips];
  if (s.ports.length) {
    d.ports = s.ports.map((p) =>
      p.port === p.targetPort ? { port: p.port } : { port: p.port, targetPort: p.targetPort },
    );
  }
  if (s.waypoint !== undefined) d.waypoint = s.waypoint;
  return d;
}

/** The whole mesh as a document; implied services (no vips, ports or waypoint) are left implied. */
export function meshToDoc(mesh: Mesh): MeshDoc {
  const d: MeshDoc = {};
  if (mesh.defaultPolicy !== 'allow') d.defaultPolicy = mesh.defaultPolicy;
  if (mesh.nodes.length) d.nodes = Object.fromEntries(mesh.nodes.map((n) => [n.name, nodeToDoc(n)]));
  if (mesh.workloads.length)
    d.workloads = Object.fromEntries(mesh.workloads.map((w) => [w.name, workloadToDoc(w)]));
  const services = mesh.services.filter((s) => s.vips.length || s.ports.length || s.waypoint !== undefined);
  if (services.length) d.services = Object.fromEntries(services.map((s) => [s.name, serviceToDoc(s)]));
  if (mesh.policies.length)
    d.policies = Object.fromEntries(mesh.policies.map((p) => [p.name, policyToDoc(p)]));
  return d;
}
