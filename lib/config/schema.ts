import { hostname } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '../errors.js';
import { LOG_LEVELS } from '../log.js';
import { hostHasIpv6 } from '../net/addresses.js';
import { defaultMeshFile, defaultStateDir } from '../paths.js';
import {
  type Listen,
  type Parser,
  atLeast,
  bool,
  choice,
  cidrList,
  count,
  countOrZero,
  duration,
  ip,
  listen,
  mark,
  nonNegativeInt,
  optional,
  pattern,
  portList,
  positiveInt,
  secret,
  text,
  userList,
} from './parse.js';

/** What a default computed from other settings may look at. */
export interface DefaultContext {
  readonly env: NodeJS.ProcessEnv;
  readonly stateDir: string;
  readonly tunnel: Listen;
}

/**
 * One setting: its key is the file key; its variable is `AMBIT_` + the key in capitals (`envName`) and
 * its flag `--` + the key in dashes (`optionOf`). `default` is a raw value, parsed like any given one.
 */
export interface Setting<I, O> {
  readonly parser: Parser<I, O>;
  readonly default: NoInfer<I> | ((ctx: DefaultContext) => NoInfer<I>);
  /** The default as --help and the docs print it, when it is computed. */
  readonly shown?: string;
  readonly help: string;
  /** Overrides the parser's name for the flag's argument. */
  readonly arg?: string;
  /** Consul's own variable, read as Consul's CLI reads it, below the AMBIT_ one. */
  readonly consulEnv?: string;
  /** Redacted in /config_dump and logs (the parser makes it a Secret). */
  readonly secret?: true;
}

// Types come from `parser` alone (NoInfer above), so that a default of the wrong type is an error.
const setting = <I, O>(s: Setting<I, O>): Setting<I, O> => s;

/** SSH, DNS and Consul's ports (server RPC, Serf, HTTP/HTTPS/gRPC, DNS): never captured by default. */
export const DEFAULT_EXCLUDE_PORTS: readonly number[] = [
  22, 53, 8300, 8301, 8302, 8500, 8501, 8502, 8503, 8600,
];

const node = {
  nodeName: setting({
    parser: text('<name>'),
    default: () => hostname(),
    shown: 'the host name',
    help: "this node's name in the mesh",
  }),
  stateDir: setting({
    parser: text('<dir>'),
    default: ({ env }) => defaultStateDir(env),
    shown: '/var/lib/ambit as root, ~/.local/state/ambit otherwise',
    help: 'state directory: admin token, embedded mesh file and CA',
  }),
  meshFile: setting({
    parser: text('<file>'),
    default: ({ env, stateDir }) => defaultMeshFile(stateDir, env),
    shown: '<stateDir>/mesh.yaml',
    help: 'embedded mesh file',
  }),
  role: setting({
    parser: choice(['node', 'waypoint'] as const),
    arg: '<role>',
    default: 'node',
    help:
      'node: carry the traffic of the workloads on this host; waypoint: an L7 hop for the services that name ' +
      'waypointService as their waypoint (docs/waypoints.md); no capture, no upstream listeners',
  }),
  waypointService: setting({
    parser: pattern('<name>', /^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$/, 'must be a service name'),
    default: 'waypoint',
    help:
      'with role waypoint: the waypoint service this instance enrols under (namespace default), which ' +
      'services name in services.<svc>.waypoint or their ambit-waypoint Meta',
  }),
  registerNode: setting({
    parser: bool,
    default: true,
    help: "write this node's tunnel address into the mesh file at start (off where the file is distributed read-only)",
  }),
  advertiseAddress: setting({
    parser: ip('<ip>'),
    default: ({ tunnel }) => (tunnel.host === '0.0.0.0' || tunnel.host === '::' ? '127.0.0.1' : tunnel.host),
    shown: "the tunnel's host, or 127.0.0.1 when it is bound to all addresses",
    help: "address other daemons reach this node's tunnel at",
  }),
  trustDomain: setting({
    parser: pattern(
      '<domain>',
      /^[a-z0-9.\-_]+$/,
      'must be lowercase letters, digits, dots, dashes and underscores',
    ),
    default: 'ambit.local',
    help: 'SPIFFE trust domain',
  }),
  datacenter: setting({ parser: text('<dc>'), default: 'dc1', help: 'datacenter in SPIFFE IDs' }),
  caDir: setting({
    parser: text('<dir>'),
    default: ({ stateDir }) => join(stateDir, 'ca'),
    shown: '<stateDir>/ca',
    help: 'embedded CA directory',
  }),
  certTtl: setting({
    parser: atLeast(duration, 1000, '1s'),
    default: '24h',
    help: 'workload certificate lifetime, rotated at half; at least 1s',
  }),
  logLevel: setting({
    parser: choice(LOG_LEVELS),
    arg: '<level>',
    default: 'info',
    help: `log level: ${LOG_LEVELS.join(', ')}`,
  }),
};

// Bound on every address: iptables REDIRECT in PREROUTING sends a workload's connection to the address of the
// interface it arrived on. Connections that were not redirected there are refused (no original dst).
const listeners = {
  outbound: setting({
    parser: listen('0.0.0.0'),
    default: 15001,
    help: 'outbound capture listener (iptables REDIRECT); open only with capture',
  }),
  inboundPlaintext: setting({
    parser: listen('0.0.0.0'),
    default: 15006,
    help: 'inbound plaintext capture: connections to workloads that did not come through a tunnel',
  }),
  // Dual-stack where the host has IPv6: a peer daemon or a workload may reach this node on either family.
  tunnel: setting({
    parser: listen('0.0.0.0'),
    default: () => (hostHasIpv6() ? '[::]:15008' : 15008),
    shown: '[::]:15008 (IPv6 and IPv4) where the host has IPv6, 0.0.0.0:15008 otherwise',
    help: 'HBONE listener (mutual TLS); a bare port binds 0.0.0.0 (IPv4 only)',
  }),
  admin: setting({ parser: listen('127.0.0.1'), default: 15000, help: 'admin API' }),
  metrics: setting({ parser: listen('0.0.0.0'), default: 15020, help: 'Prometheus /metrics' }),
  ready: setting({ parser: listen('0.0.0.0'), default: 15021, help: '/healthz/ready' }),
};

const connections = {
  maxStreams: setting({
    parser: count(),
    default: 100,
    help: 'tunneled connections carried at once by one pooled connection to a peer daemon',
  }),
  idleTimeout: setting({
    parser: duration,
    default: '5m',
    help: 'a pooled connection to a peer daemon idle this long is closed',
  }),
  pingInterval: setting({
    parser: duration,
    default: '10s',
    help: 'HTTP/2 PING interval on pooled connections',
  }),
  connectTimeout: setting({ parser: duration, default: '5s', help: 'upstream and tunnel connect timeout' }),
  ejectTime: setting({
    parser: duration,
    default: '30s',
    help: 'how long an endpoint whose daemon refused us is passed over',
  }),
  maxAttempts: setting({
    parser: count(),
    default: 3,
    help: 'endpoints tried for one outbound connection',
  }),
  meshPoll: setting({ parser: duration, default: '1s', help: 'how often the embedded mesh file is read' }),
};

const consul = {
  consul: setting({
    parser: optional(text('<addr>')),
    default: undefined,
    shown: 'none: the embedded mesh file and CA',
    consulEnv: 'CONSUL_HTTP_ADDR',
    help: 'run from the Consul agent at this address (host:port or http(s)://host:port)',
  }),
  consulToken: setting({
    parser: optional(secret('<token>')),
    default: undefined,
    shown: 'none',
    consulEnv: 'CONSUL_HTTP_TOKEN',
    secret: true,
    help: 'Consul ACL token (prefer the file)',
  }),
  consulTokenFile: setting({
    parser: optional(text('<file>')),
    default: undefined,
    shown: 'none',
    consulEnv: 'CONSUL_HTTP_TOKEN_FILE',
    help: 'file with the Consul ACL token',
  }),
  defaultPolicy: setting({
    parser: optional(choice(['allow', 'deny'] as const)),
    default: undefined,
    shown: 'unset',
    help: "Consul mode: what happens when no intention matches; unset, Consul's default decides",
  }),
};

const kubernetes = {
  kubernetes: setting({
    parser: bool,
    default: false,
    help: 'enroll the pods labelled kubernetesLabelSelector as workloads, from a watch of the API server (docs/kubernetes.md)',
  }),
  kubernetesScope: setting({
    parser: choice(['node', 'cluster'] as const),
    default: 'cluster',
    help:
      "cluster: every enrolled pod of the cluster, so that this daemon knows the other nodes' workloads; " +
      'node: only the pods of this node (fieldSelector spec.nodeName), for a control plane that carries the others',
  }),
  kubernetesLabelSelector: setting({
    parser: text('<selector>'),
    default: 'ambit.dev/mesh=enabled',
    help: 'the pods enrolled: a Kubernetes label selector',
  }),
  kubernetesServer: setting({
    parser: optional(text('<url>')),
    default: undefined,
    shown: 'https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT',
    help: 'the API server',
  }),
  kubernetesTokenFile: setting({
    parser: text('<file>'),
    default: '/var/run/secrets/kubernetes.io/serviceaccount/token',
    help: 'bearer token of the service account; read at every request, so a rotated token is used',
  }),
  kubernetesCaFile: setting({
    parser: text('<file>'),
    default: '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt',
    help: "CA bundle of the API server's certificate",
  }),
  kubernetesMaxLine: setting({
    parser: count('<bytes>'),
    default: 1_048_576,
    help: 'longest pod watch event taken, in bytes; a longer one ends the watch and the pods are listed again',
  }),
  kubernetesMaxPage: setting({
    parser: count('<bytes>'),
    default: 16_777_216,
    help: 'largest LIST page taken, in bytes; a larger one is refused and the list retried with backoff',
  }),
  kubernetesMaxPods: setting({
    parser: count(),
    default: 10_000,
    help: 'most pods held from the watch; a LIST with more is refused whole, extra watched pods one by one',
  }),
};

const shutdown = {
  drainTimeout: setting({
    parser: duration,
    default: '30s',
    help: 'on SIGTERM, how long open connections may run to their end before they are reset',
  }),
};

/** `auto` (the cores available, at most workersMax) or a count; 0 is today's single process. */
const workerCount: Parser<number | string, number | 'auto'> = {
  arg: '<n|auto>',
  parse: (v, where) => (v === 'auto' ? 'auto' : nonNegativeInt(v, where)),
};

const workers = {
  workers: setting({
    parser: workerCount,
    default: 0,
    help: 'worker processes behind a supervisor that holds the listeners and the control plane (auto: the cores available; a waypoint runs 1 at most); 0: one process, no supervisor',
  }),
  workersMax: setting({
    parser: count(),
    default: 8,
    help: 'most workers `workers: auto` starts',
  }),
  reloadDrainTimeout: setting({
    parser: duration,
    default: '1h',
    help: 'on SIGHUP (reload), how long the old workers carry their open connections before the rest are closed',
  }),
  stopGrace: setting({
    parser: duration,
    default: '5s',
    help: 'with workers, on SIGTERM: how long readiness fails while the listeners still accept, before the drain',
  }),
};

/** A routing table of Ambit's own: not unspec (0), nor default, main or local (253, 254, 255). */
const routeTable: Parser<number | string, number> = {
  arg: '<table>',
  parse: (v, where) => {
    const n = positiveInt(v, where);
    if (n > 0xffffffff || (n >= 253 && n <= 255))
      throw new ConfigError(
        `must be a routing table 1..0xffffffff other than 253, 254, 255, got ${n}`,
        where,
      );
    return n;
  },
};

const capture = {
  capture: setting({
    parser: bool,
    default: false,
    help: 'transparent capture: the outbound and inboundPlaintext listeners and socket marks (rules: ambit capture install)',
  }),
  captureMark: setting({
    parser: mark,
    default: 0x539,
    help: 'SO_MARK on every socket ambitd opens; the capture rules RETURN on it',
  }),
  captureOriginalSource: setting({
    parser: bool,
    default: true,
    help:
      "with capture: a workload sees the client workload's address as the source, not this host's " +
      '(transparent sockets; needs the reply routing of ambit capture install, else off with a warning)',
  }),
  captureReplyMark: setting({
    parser: mark,
    default: 0x1000,
    help: "with captureOriginalSource: the mark that routes a workload's replies back to ambitd; no bit of captureMark",
  }),
  captureReplyTable: setting({
    parser: routeTable,
    default: 1339,
    help: 'with captureOriginalSource: the routing table (ip rule fwmark <captureReplyMark> lookup it) Ambit owns',
  }),
  unenrolledSource: setting({
    parser: choice(['passthrough', 'refuse'] as const),
    default: 'passthrough',
    help: 'a captured connection whose source is not enrolled: carried untouched, or refused',
  }),
  captureExcludePorts: setting({
    parser: portList,
    default: DEFAULT_EXCLUDE_PORTS,
    help: "destination ports never captured (SSH, DNS and Consul's); a list, or comma-separated",
  }),
  captureExcludeCidrs: setting({
    parser: cidrList,
    default: [],
    shown: 'none',
    help: 'destinations never captured; a list, or comma-separated',
  }),
  captureDaemonUid: setting({
    parser: optional(countOrZero('<uid>')),
    default: undefined,
    shown: 'none',
    help: 'connections made by this user are not captured (when ambitd runs as a user of its own)',
  }),
  captureCheckUsers: setting({
    parser: userList,
    default: ['consul'],
    help: "users whose connections to workloads on this host are not captured: the Consul agent's, so that its health checks reach the workload itself (a user missing on the host is skipped)",
  }),
  iptablesBackend: setting({
    parser: choice(['auto', 'nft', 'legacy'] as const),
    default: 'auto',
    help: 'iptables flavour the capture rules are written with',
  }),
};

// docs/limits.md: what a peer (or a flood of them) may make the daemon hold. Each refuses with its own reason.
const limits = {
  maxHandshakes: setting({
    parser: count(),
    default: 256,
    help: 'TLS handshakes in progress on the tunnel listener at once',
  }),
  maxHandshakesPerSource: setting({ parser: count(), default: 32, help: 'the same, per source IP address' }),
  maxConnections: setting({
    parser: count(),
    default: 10_000,
    help: 'inbound tunnel connections, handshaking or up, in all',
  }),
  maxConnectionsPerIdentity: setting({
    parser: count(),
    default: 1000,
    help: 'authenticated tunnel sessions per peer SPIFFE identity',
  }),
  maxInboundStreams: setting({
    parser: count(),
    default: 200,
    help: 'streams per inbound session, counting CONNECTs whose upstream connect is still in flight',
  }),
  maxConnectsPerSession: setting({
    parser: count(),
    default: 100,
    help: 'upstream connects in flight per inbound session',
  }),
  maxConnectsPerNode: setting({
    parser: count(),
    default: 1000,
    help: 'upstream connects in flight on this node',
  }),
  streamResetRate: setting({
    parser: count(),
    default: 100,
    help: 'RST_STREAM per second a peer may send (burst 10x); above: GOAWAY ENHANCE_YOUR_CALM',
  }),
  maxOutboundControl: setting({
    parser: count(),
    default: 1000,
    help: 'control answers (PING/SETTINGS ACKs) queued for a peer that does not read; above: GOAWAY',
  }),
  // nghttp2 needs room for the pseudo-headers: a list of a few bytes would refuse every CONNECT.
  maxHeaderListSize: setting({
    parser: atLeast(count('<bytes>'), 1024, '1024'),
    default: 16_384,
    help: 'decoded header list bytes per header block (at the waypoint: an HTTP/1.1 head too); at least 1024',
  }),
  maxHeaderFrames: setting({
    parser: count(),
    default: 8,
    help: 'HEADERS + CONTINUATION frames in one header block',
  }),
  keyUpdateRate: setting({
    parser: count(),
    default: 10,
    help: 'TLS KeyUpdates per second a peer may send (burst 10x); above: alert and close',
  }),
  handshakeTimeout: setting({
    parser: atLeast(duration, 100, '100ms'),
    default: '10s',
    help: 'a tunnel handshake not done by then is cut off; at least 100ms',
  }),
  tunnelIdleTimeout: setting({
    parser: atLeast(duration, 1000, '1s'),
    default: '10m',
    help: 'an inbound session with no open stream this long gets GOAWAY and is closed; at least 1s',
  }),
  httpHeadTimeout: setting({
    parser: atLeast(duration, 100, '100ms'),
    default: '60s',
    help:
      'waypoint, HTTP/1.1: a client connection idle this long is closed, and one whose next request head is ' +
      'not whole by then (slowloris) is answered 408 first; at least 100ms',
  }),
  // 0 is allowed: no request body is kept, so only bodiless requests are retried.
  waypointRetryBufferBytes: setting({
    parser: countOrZero('<bytes>'),
    default: 65_536,
    help:
      'waypoint: request-body bytes kept per request for a retry (service-router RetryOn); a larger body is ' +
      'not retried',
  }),
  // 0 is allowed: only bodiless requests are mirrored.
  waypointMirrorBufferBytes: setting({
    parser: countOrZero('<bytes>'),
    default: 65_536,
    help:
      'waypoint: request-body bytes kept per request for its mirror copy (service-router ambit-mirror Meta); ' +
      'a larger body is not mirrored',
  }),
  waypointMirrorMaxInFlight: setting({
    parser: count(),
    default: 256,
    help: 'waypoint: mirror copies in flight at once; a request past it is not mirrored',
  }),
  waypointMirrorTimeout: setting({
    parser: atLeast(duration, 100, '100ms'),
    default: '10s',
    help: 'waypoint: a mirror copy not answered by then is cancelled (the client never waits for it); at least 100ms',
  }),
  // 0 is allowed: no reserve, refusals only when the kernel says EMFILE.
  fdReserve: setting({
    parser: countOrZero(),
    default: 64,
    help: 'descriptors kept free below RLIMIT_NOFILE: new work is refused before them',
  }),
};

/** The sections of docs/configuration.md, in the order of the file keys. */
export const SECTIONS = [
  { title: 'Node and identity', settings: node },
  { title: 'Listeners', settings: listeners },
  { title: 'Connections to peers and upstreams', settings: connections },
  { title: 'Consul', settings: consul },
  { title: 'Kubernetes ([kubernetes.md](kubernetes.md))', settings: kubernetes },
  { title: 'Shutdown', settings: shutdown },
  { title: 'Workers and reloads ([operations.md](operations.md#workers-and-reloads))', settings: workers },
  { title: 'Transparent capture', settings: capture },
  { title: 'Limits ([limits.md](limits.md))', settings: limits },
] as const;

/** Every setting of ambitd: the one table the loader, the flags, the dump and the docs come from. */
export const SETTINGS = {
  ...node,
  ...listeners,
  ...connections,
  ...consul,
  ...kubernetes,
  ...shutdown,
  ...workers,
  ...capture,
  ...limits,
};

type Settings = typeof SETTINGS;
export type SettingKey = keyof Settings;
export type LimitKey = keyof typeof limits;
type InputOf<S> = S extends Setting<infer I, unknown> ? I : never;
type ValueOf<S> = S extends Setting<unknown, infer O> ? O : never;

/** Every setting a file, the environment or a flag may give; all optional, validated field by field. */
export type ConfigInput = { [K in SettingKey]?: InputOf<Settings[K]> };

/** Every setting parsed, a default filling what was not given. */
export type SettingValues = { readonly [K in SettingKey]: ValueOf<Settings[K]> };

export const CONFIG_KEYS = Object.keys(SETTINGS) as readonly SettingKey[];

/** The keys of the limits (docs/limits.md). */
export const LIMIT_KEYS = Object.keys(limits) as readonly LimitKey[];

/** The limits that are durations: their fields in `Limits` end in Ms. */
const DURATION_LIMITS = [
  'handshakeTimeout',
  'tunnelIdleTimeout',
  'httpHeadTimeout',
  'waypointMirrorTimeout',
] as const satisfies readonly LimitKey[];
type DurationLimit = (typeof DURATION_LIMITS)[number];
type LimitField<K extends LimitKey> = K extends DurationLimit ? `${K}Ms` : K;

/** Every bound of docs/limits.md, named as its setting (durations in ms: handshakeTimeoutMs). */
export type Limits = { readonly [K in LimitKey as LimitField<K>]: SettingValues[K] };

export const limitField = <K extends LimitKey>(k: K): LimitField<K> =>
  ((DURATION_LIMITS as readonly string[]).includes(k) ? `${k}Ms` : k) as LimitField<K>;

/** Environment variables, one per setting: AMBIT_NODE_NAME, AMBIT_TRUST_DOMAIN, AMBIT_TUNNEL, ... */
export const envName = (k: SettingKey): string =>
  `AMBIT_${k.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;

/** The flag that sets `k`, as an error names it: --node-name. */
export const flagName = (k: SettingKey): string => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

/** The flag as ambitd declares it: a switch on by default is turned off (--no-register-node). */
export function optionOf(k: SettingKey): string {
  const s: Setting<unknown, unknown> = SETTINGS[k];
  const arg = s.arg ?? s.parser.arg;
  if (arg !== '') return `${flagName(k)} ${arg}`;
  return s.default === true ? `--no-${flagName(k).slice(2)}` : flagName(k);
}

/** A default that needs no other setting, parsed; undefined for the computed ones and those with none. */
export function defaultValue<K extends SettingKey>(k: K): SettingValues[K] | undefined {
  const s: Setting<unknown, unknown> = SETTINGS[k];
  if (typeof s.default === 'function' || s.default === undefined) return undefined;
  return s.parser.parse(s.default, { field: k }) as SettingValues[K];
}

/** The default as --help and the docs print it; undefined when there is none. */
export function shownDefault(k: SettingKey): string | undefined {
  const s: Setting<unknown, unknown> = SETTINGS[k];
  if (s.shown !== undefined) return s.shown;
  const v = defaultValue(k);
  if (v === undefined) return undefined;
  if (s.parser.show) return s.parser.show(v);
  return Array.isArray(s.default) ? s.default.join(',') : String(s.default);
}
