import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { consulBaseUrl } from './consul/client.js';
import { Secret } from './consul/secret.js';
import { ConfigError } from './errors.js';
import { LOG_LEVELS, type LogLevel } from './log.js';
import { defaultMeshFile, defaultStateDir } from './paths.js';

export interface Listen {
  readonly host: string;
  readonly port: number;
}

export interface DaemonConfig {
  readonly nodeName: string;
  readonly stateDir: string;
  readonly meshFile: string;
  /** Write this node's tunnel address into the mesh file at start (off where the file is distributed read-only). */
  readonly registerNode: boolean;
  /** Address other daemons reach this node's tunnel listener at. */
  readonly advertiseAddress: string;
  readonly trustDomain: string;
  readonly datacenter: string;
  readonly caDir: string;
  readonly certTtlMs: number;
  readonly logLevel: LogLevel;
  readonly outbound: Listen;
  readonly inboundPlaintext: Listen;
  readonly tunnel: Listen;
  readonly admin: Listen;
  readonly metrics: Listen;
  readonly ready: Listen;
  readonly pool: {
    readonly maxStreams: number;
    readonly idleTimeoutMs: number;
    readonly pingIntervalMs: number;
  };
  readonly connectTimeoutMs: number;
  /** How long an endpoint whose daemon refused us is passed over. */
  readonly ejectMs: number;
  readonly maxAttempts: number;
  readonly meshPollMs: number;
  /** Consul mode: what happens when no intention matches (as Consul's ACL default policy). */
  readonly defaultPolicy: 'allow' | 'deny';
  /** Consul as the control plane and CA; undefined runs the embedded mesh file and CA. */
  readonly consul: ConsulSettings | undefined;
  /** On SIGTERM, how long open connections may run to their end before they are reset. */
  readonly drainMs: number;
  /** Transparent capture (15001/15006 listeners, socket marks); rules come from `ambit capture install`. */
  readonly capture: {
    readonly enabled: boolean;
    /** SO_MARK on every socket ambitd opens; the capture rules RETURN on it. */
    readonly mark: number;
    /** A captured connection whose source is not enrolled: carried untouched, or refused. */
    readonly unenrolledSource: 'passthrough' | 'refuse';
    readonly excludePorts: readonly number[];
    readonly excludeCidrs: readonly string[];
    readonly daemonUid: number | undefined;
    readonly backend: 'auto' | 'nft' | 'legacy';
  };
  /** What a peer (or a flood of them) may make the daemon hold: docs/limits.md. */
  readonly limits: Limits;
}

/** Every bound of docs/limits.md; each has a safe default and refuses with its own reason when reached. */
export interface Limits {
  /** TLS handshakes in progress on the tunnel listener at once. */
  readonly maxHandshakes: number;
  /** The same, per source IP address. */
  readonly maxHandshakesPerSource: number;
  /** A handshake not done by then is cut off. */
  readonly handshakeTimeoutMs: number;
  /** A server session with no open stream for this long gets GOAWAY and is closed. */
  readonly tunnelIdleTimeoutMs: number;
  /** Inbound tunnel connections, handshaking or up, in all. */
  readonly maxConnections: number;
  /** Authenticated tunnel sessions per peer SPIFFE identity. */
  readonly maxConnectionsPerIdentity: number;
  /** Streams per inbound session, counting CONNECTs whose upstream connect is still in flight. */
  readonly maxInboundStreams: number;
  /** Upstream connects in flight per inbound session. */
  readonly maxConnectsPerSession: number;
  /** Upstream connects in flight on this node. */
  readonly maxConnectsPerNode: number;
  /** RST_STREAM per second a peer may send (burst 10x); above: GOAWAY ENHANCE_YOUR_CALM. */
  readonly streamResetRate: number;
  /** Control answers (PING/SETTINGS ACKs) queued for a peer that does not read; above: GOAWAY. */
  readonly maxOutboundControl: number;
  /** Decoded header list bytes per header block. */
  readonly maxHeaderListSize: number;
  /** HEADERS + CONTINUATION frames in one header block. */
  readonly maxHeaderFrames: number;
  /** KeyUpdates per second a peer may send (burst 10x); above: alert and close. */
  readonly keyUpdateRate: number;
  /** Descriptors kept free below RLIMIT_NOFILE: new work is refused before them. */
  readonly fdReserve: number;
}

/** The defaults of docs/limits.md (CONTRACT.md's table). */
export const DEFAULT_LIMITS: Limits = {
  maxHandshakes: 256,
  maxHandshakesPerSource: 32,
  handshakeTimeoutMs: 10_000,
  tunnelIdleTimeoutMs: 600_000,
  maxConnections: 10_000,
  maxConnectionsPerIdentity: 1000,
  maxInboundStreams: 200,
  maxConnectsPerSession: 100,
  maxConnectsPerNode: 1000,
  streamResetRate: 100,
  maxOutboundControl: 1000,
  maxHeaderListSize: 16_384,
  maxHeaderFrames: 8,
  keyUpdateRate: 10,
  fdReserve: 64,
};

/** Every setting a file, the environment or a flag may give; all optional, validated field by field. */
export type ConfigInput = Partial<{
  nodeName: string;
  stateDir: string;
  meshFile: string;
  registerNode: boolean | string;
  advertiseAddress: string;
  trustDomain: string;
  datacenter: string;
  caDir: string;
  certTtl: string | number;
  logLevel: string;
  outbound: string | number;
  inboundPlaintext: string | number;
  tunnel: string | number;
  admin: string | number;
  metrics: string | number;
  ready: string | number;
  maxStreams: number | string;
  idleTimeout: string | number;
  pingInterval: string | number;
  connectTimeout: string | number;
  ejectTime: string | number;
  maxAttempts: number | string;
  meshPoll: string | number;
  consul: string;
  consulToken: string;
  consulTokenFile: string;
  defaultPolicy: string;
  drainTimeout: string | number;
  capture: boolean | string;
  captureMark: number | string;
  unenrolledSource: string;
  captureExcludePorts: string | readonly number[];
  captureExcludeCidrs: string | readonly string[];
  captureDaemonUid: number | string;
  iptablesBackend: string;
  maxHandshakes: number | string;
  maxHandshakesPerSource: number | string;
  handshakeTimeout: string | number;
  tunnelIdleTimeout: string | number;
  maxConnections: number | string;
  maxConnectionsPerIdentity: number | string;
  maxInboundStreams: number | string;
  maxConnectsPerSession: number | string;
  maxConnectsPerNode: number | string;
  streamResetRate: number | string;
  maxOutboundControl: number | string;
  maxHeaderListSize: number | string;
  maxHeaderFrames: number | string;
  keyUpdateRate: number | string;
  fdReserve: number | string;
}>;

/** The integer limits: a file key, AMBIT_* variable and --flag each, named as the field they fill. */
const INT_LIMITS = [
  'maxHandshakes',
  'maxHandshakesPerSource',
  'maxConnections',
  'maxConnectionsPerIdentity',
  'maxInboundStreams',
  'maxConnectsPerSession',
  'maxConnectsPerNode',
  'streamResetRate',
  'maxOutboundControl',
  'maxHeaderListSize',
  'maxHeaderFrames',
  'keyUpdateRate',
] as const satisfies readonly (keyof ConfigInput & keyof Limits)[];

/** The keys of the limits (docs/limits.md): the integers above, the two durations (their fields end in Ms) and
 * the descriptor reserve (which may be 0). */
export const LIMIT_KEYS: readonly (keyof ConfigInput)[] = [
  ...INT_LIMITS,
  'handshakeTimeout',
  'tunnelIdleTimeout',
  'fdReserve',
];

export const CONFIG_KEYS: readonly (keyof ConfigInput)[] = [
  'nodeName',
  'stateDir',
  'meshFile',
  'registerNode',
  'advertiseAddress',
  'trustDomain',
  'datacenter',
  'caDir',
  'certTtl',
  'logLevel',
  'outbound',
  'inboundPlaintext',
  'tunnel',
  'admin',
  'metrics',
  'ready',
  'maxStreams',
  'idleTimeout',
  'pingInterval',
  'connectTimeout',
  'ejectTime',
  'maxAttempts',
  'meshPoll',
  'consul',
  'consulToken',
  'consulTokenFile',
  'defaultPolicy',
  'drainTimeout',
  'capture',
  'captureMark',
  'unenrolledSource',
  'captureExcludePorts',
  'captureExcludeCidrs',
  'captureDaemonUid',
  'iptablesBackend',
  ...LIMIT_KEYS,
];

/** Environment variables, one per setting: AMBIT_NODE_NAME, AMBIT_TRUST_DOMAIN, AMBIT_TUNNEL, ... */
export const envName = (k: keyof ConfigInput): string =>
  `AMBIT_${k.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `500ms`, `30s`, `5m`, `24h`, `7d`, or a bare number of milliseconds. */
export function parseDuration(v: string | number, where: { file?: string; field: string }): number {
  if (typeof v === 'number' && Number.isFinite(v) && v >= 0) return v;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(String(v).trim());
  if (!m) throw new ConfigError(`must be a duration such as 30s, 5m or 24h, got ${JSON.stringify(v)}`, where);
  return Math.round(Number(m[1]) * UNITS[m[2] ?? 'ms']!);
}

/** `host:port`, `[v6]:port` or a bare port (bound on the default host). Port 0 picks a free port. */
export function parseListen(
  v: string | number,
  defaultHost: string,
  where: { file?: string; field: string },
): Listen {
  const text = String(v).trim();
  let host = defaultHost;
  let portText = text;
  const bracket = /^\[([^\]]+)\]:(\d+)$/.exec(text);
  if (bracket) {
    host = bracket[1]!;
    portText = bracket[2]!;
  } else if (text.includes(':')) {
    const i = text.lastIndexOf(':');
    host = text.slice(0, i);
    portText = text.slice(i + 1);
  }
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port > 65535) {
    throw new ConfigError(`must be host:port or a port number, got ${JSON.stringify(v)}`, where);
  }
  if (isIP(host) === 0 && host !== 'localhost')
    throw new ConfigError(`host must be an IP address, got ${JSON.stringify(host)}`, where);
  return { host, port };
}

function oneOf<T extends string>(
  v: string,
  allowed: readonly T[],
  where: { file?: string; field: string },
): T {
  if ((allowed as readonly string[]).includes(v)) return v as T;
  throw new ConfigError(`must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`, where);
}

function positiveInt(v: number | string, where: { file?: string; field: string }): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1)
    throw new ConfigError(`must be a positive integer, got ${JSON.stringify(v)}`, where);
  return n;
}

/** SSH, DNS and Consul's ports (server RPC, Serf, HTTP/HTTPS/gRPC, DNS): never captured by default. */
export const DEFAULT_EXCLUDE_PORTS: readonly number[] = [
  22, 53, 8300, 8301, 8302, 8500, 8501, 8502, 8503, 8600,
];

/** A list from a file (a YAML list) or the environment / a flag (comma-separated). */
function listOf(v: string | readonly (string | number)[], where: { file?: string; field: string }): string[] {
  if (Array.isArray(v)) return v.map(String);
  if (typeof v === 'string')
    return v
      .split(',')
      .map((x) => x.trim())
      .filter((x) => x !== '');
  throw new ConfigError(`must be a list or a comma-separated string, got ${JSON.stringify(v)}`, where);
}

function nonNegativeInt(v: number | string, where: { file?: string; field: string }): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0)
    throw new ConfigError(`must be an integer >= 0, got ${JSON.stringify(v)}`, where);
  return n;
}

/** A socket mark: 1..0xffffffff, decimal or 0x hex. */
function captureMark(v: number | string, where: { file?: string; field: string }): number {
  const n = typeof v === 'number' ? v : Number(String(v).trim());
  if (!Number.isInteger(n) || n < 1 || n > 0xffffffff)
    throw new ConfigError(`must be a mark between 1 and 0xffffffff, got ${JSON.stringify(v)}`, where);
  return n;
}

function bool(v: boolean | string, where: { file?: string; field: string }): boolean {
  if (typeof v === 'boolean') return v;
  if (['true', '1', 'yes'].includes(v)) return true;
  if (['false', '0', 'no'].includes(v)) return false;
  throw new ConfigError(`must be true or false, got ${JSON.stringify(v)}`, where);
}

/** Reads a config file (YAML or JSON); unknown keys are errors so that a typo never passes silently. */
export function readConfigFile(file: string): ConfigInput {
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ConfigError(`cannot read: ${(err as Error).message}`, { file });
  }
  if (raw === null || raw === undefined) return {};
  if (typeof raw !== 'object' || Array.isArray(raw))
    throw new ConfigError('must be a mapping of settings', { file });
  for (const k of Object.keys(raw)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(k)) {
      throw new ConfigError(`unknown setting (known: ${CONFIG_KEYS.join(', ')})`, { file, field: k });
    }
  }
  return raw as ConfigInput;
}

export function readEnv(env: NodeJS.ProcessEnv): ConfigInput {
  const out: Record<string, string> = {};
  for (const k of CONFIG_KEYS) {
    const v = env[envName(k)];
    if (v !== undefined && v !== '') out[k] = v;
  }
  return out as ConfigInput;
}

/**
 * The one config loader: defaults, then the config file, then the environment, then flags. Each value is
 * checked where it came from, so an error names the file (or variable, or flag) and the field.
 */
export function loadConfig(opts: {
  flags?: ConfigInput;
  env?: NodeJS.ProcessEnv;
  configFile?: string | undefined;
}): DaemonConfig {
  const env = opts.env ?? process.env;
  const layers: { source: string | undefined; input: ConfigInput }[] = [];
  const file = opts.configFile ?? env.AMBIT_CONFIG;
  if (file) layers.push({ source: file, input: readConfigFile(file) });
  // Consul's own variables, as its CLI reads them; AMBIT_CONSUL* and flags override them.
  layers.push({ source: 'consul-environment', input: readConsulEnv(env) });
  layers.push({ source: 'environment', input: readEnv(env) });
  layers.push({ source: 'flags', input: opts.flags ?? {} });

  const merged: ConfigInput = {};
  const origin = new Map<string, string | undefined>();
  for (const { source, input } of layers) {
    for (const k of CONFIG_KEYS) {
      const v = input[k];
      if (v !== undefined) {
        (merged as Record<string, unknown>)[k] = v;
        origin.set(k, source);
      }
    }
  }
  const at = (field: keyof ConfigInput): { file?: string; field: string } => {
    const src = origin.get(field);
    const name =
      src === 'environment'
        ? envName(field)
        : src === 'consul-environment'
          ? (CONSUL_ENV[field] ?? envName(field))
          : src === 'flags'
            ? `--${field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`
            : field;
    return src && src !== 'environment' && src !== 'consul-environment' && src !== 'flags'
      ? { file: src, field: name }
      : { field: name };
  };

  const stateDir = merged.stateDir ?? defaultStateDir(env);
  const hostListen = (k: keyof ConfigInput, def: number): Listen =>
    parseListen((merged[k] as string | number | undefined) ?? def, '0.0.0.0', at(k));
  const localListen = (k: keyof ConfigInput, def: number): Listen =>
    parseListen((merged[k] as string | number | undefined) ?? def, '127.0.0.1', at(k));
  const tunnel = hostListen('tunnel', 15008);
  const advertise =
    merged.advertiseAddress ??
    (tunnel.host === '0.0.0.0' || tunnel.host === '::' ? '127.0.0.1' : tunnel.host);
  if (isIP(advertise) === 0)
    throw new ConfigError(`must be an IP address, got ${JSON.stringify(advertise)}`, at('advertiseAddress'));
  const trustDomain = merged.trustDomain ?? 'ambit.local';
  if (!/^[a-z0-9.\-_]+$/.test(trustDomain)) {
    throw new ConfigError(
      'must be lowercase letters, digits, dots, dashes and underscores',
      at('trustDomain'),
    );
  }
  const certTtlMs = parseDuration(merged.certTtl ?? '24h', at('certTtl'));
  if (certTtlMs < 1000) throw new ConfigError('must be at least 1s', at('certTtl'));

  return {
    nodeName: merged.nodeName ?? hostname(),
    stateDir,
    meshFile: merged.meshFile ?? defaultMeshFile(stateDir, env),
    registerNode: bool(merged.registerNode ?? true, at('registerNode')),
    advertiseAddress: advertise,
    trustDomain,
    datacenter: merged.datacenter ?? 'dc1',
    caDir: merged.caDir ?? join(stateDir, 'ca'),
    certTtlMs,
    logLevel: oneOf(merged.logLevel ?? 'info', LOG_LEVELS, at('logLevel')),
    // Bound on every address: iptables REDIRECT in PREROUTING sends a workload's connection to the address of
    // the interface it arrived on. Connections that were not redirected there are refused (no original dst).
    outbound: hostListen('outbound', 15001),
    inboundPlaintext: hostListen('inboundPlaintext', 15006),
    tunnel,
    admin: localListen('admin', 15000),
    metrics: hostListen('metrics', 15020),
    ready: hostListen('ready', 15021),
    pool: {
      maxStreams: positiveInt(merged.maxStreams ?? 100, at('maxStreams')),
      idleTimeoutMs: parseDuration(merged.idleTimeout ?? '5m', at('idleTimeout')),
      pingIntervalMs: parseDuration(merged.pingInterval ?? '10s', at('pingInterval')),
    },
    connectTimeoutMs: parseDuration(merged.connectTimeout ?? '5s', at('connectTimeout')),
    ejectMs: parseDuration(merged.ejectTime ?? '30s', at('ejectTime')),
    maxAttempts: positiveInt(merged.maxAttempts ?? 3, at('maxAttempts')),
    meshPollMs: parseDuration(merged.meshPoll ?? '1s', at('meshPoll')),
    defaultPolicy: oneOf(merged.defaultPolicy ?? 'allow', ['allow', 'deny'] as const, at('defaultPolicy')),
    consul: consulSettings(merged, at),
    drainMs: parseDuration(merged.drainTimeout ?? '30s', at('drainTimeout')),
    capture: {
      enabled: bool(merged.capture ?? false, at('capture')),
      mark: captureMark(merged.captureMark ?? 0x539, at('captureMark')),
      unenrolledSource: oneOf(
        merged.unenrolledSource ?? 'passthrough',
        ['passthrough', 'refuse'] as const,
        at('unenrolledSource'),
      ),
      excludePorts: listOf(
        merged.captureExcludePorts ?? DEFAULT_EXCLUDE_PORTS,
        at('captureExcludePorts'),
      ).map((p) => {
        const n = Number(p);
        if (!Number.isInteger(n) || n < 1 || n > 65535)
          throw new ConfigError(
            `must list ports 1..65535, got ${JSON.stringify(p)}`,
            at('captureExcludePorts'),
          );
        return n;
      }),
      excludeCidrs: listOf(merged.captureExcludeCidrs ?? [], at('captureExcludeCidrs')).map((c) => {
        const [ip, bits, extra] = String(c).split('/');
        const fam = isIP(ip ?? '');
        const max = fam === 6 ? 128 : 32;
        if (
          fam === 0 ||
          extra !== undefined ||
          (bits !== undefined && !(Number(bits) >= 0 && Number(bits) <= max))
        )
          throw new ConfigError(
            `must list CIDRs such as 10.0.0.0/8, got ${JSON.stringify(c)}`,
            at('captureExcludeCidrs'),
          );
        return String(c);
      }),
      daemonUid:
        merged.captureDaemonUid === undefined || merged.captureDaemonUid === ''
          ? undefined
          : nonNegativeInt(merged.captureDaemonUid, at('captureDaemonUid')),
      backend: oneOf(
        merged.iptablesBackend ?? 'auto',
        ['auto', 'nft', 'legacy'] as const,
        at('iptablesBackend'),
      ),
    },
    limits: limitsOf(merged, at),
  };
}

function limitsOf(
  merged: ConfigInput,
  at: (field: keyof ConfigInput) => { file?: string; field: string },
): Limits {
  const ints = {} as Record<(typeof INT_LIMITS)[number], number>;
  for (const k of INT_LIMITS) ints[k] = positiveInt(merged[k] ?? DEFAULT_LIMITS[k], at(k));
  const limits: Limits = {
    ...ints,
    handshakeTimeoutMs: parseDuration(
      merged.handshakeTimeout ?? DEFAULT_LIMITS.handshakeTimeoutMs,
      at('handshakeTimeout'),
    ),
    tunnelIdleTimeoutMs: parseDuration(
      merged.tunnelIdleTimeout ?? DEFAULT_LIMITS.tunnelIdleTimeoutMs,
      at('tunnelIdleTimeout'),
    ),
    // 0 is allowed: no reserve, refusals only when the kernel says EMFILE.
    fdReserve: nonNegativeInt(merged.fdReserve ?? DEFAULT_LIMITS.fdReserve, at('fdReserve')),
  };
  // A timer of 0 would cut every handshake (or session) at once: a typo, not a choice.
  if (limits.handshakeTimeoutMs < 100)
    throw new ConfigError('must be at least 100ms', at('handshakeTimeout'));
  if (limits.tunnelIdleTimeoutMs < 1000)
    throw new ConfigError('must be at least 1s', at('tunnelIdleTimeout'));
  // A header list of a few bytes would refuse every CONNECT; nghttp2 needs room for the pseudo-headers.
  if (limits.maxHeaderListSize < 1024)
    throw new ConfigError('must be at least 1024', at('maxHeaderListSize'));
  return limits;
}

// --- Consul ----------------------------------------------------------------------------------------------

export interface ConsulSettings {
  /** The local agent: `host:port` or `http(s)://host:port`. */
  readonly address: string;
  /** ACL token; a Secret, so config dumps and logs print `[redacted]`. */
  readonly token: Secret | undefined;
  /** `wait` of each blocking query. */
  readonly waitMs: number;
  /** At most one request per watch per this interval. */
  readonly minIntervalMs: number;
  readonly backoffInitialMs: number;
  readonly backoffMaxMs: number;
  /** How long start waits for the first full view of the mesh. */
  readonly startTimeoutMs: number;
}

const CONSUL_ENV: Partial<Record<keyof ConfigInput, string>> = {
  consul: 'CONSUL_HTTP_ADDR',
  consulToken: 'CONSUL_HTTP_TOKEN',
  consulTokenFile: 'CONSUL_HTTP_TOKEN_FILE',
};

function readConsulEnv(env: NodeJS.ProcessEnv): ConfigInput {
  const out: Record<string, string> = {};
  for (const [k, name] of Object.entries(CONSUL_ENV)) {
    const v = env[name];
    if (v !== undefined && v !== '') out[k] = v;
  }
  return out as ConfigInput;
}

function consulSettings(
  merged: ConfigInput,
  at: (field: keyof ConfigInput) => { file?: string; field: string },
): ConsulSettings | undefined {
  if (merged.consul === undefined || merged.consul === '') {
    if (merged.consulToken || merged.consulTokenFile) {
      throw new ConfigError(
        'a Consul token is set but no Consul address (--consul or CONSUL_HTTP_ADDR)',
        at('consulToken'),
      );
    }
    return undefined;
  }
  consulBaseUrl(merged.consul, at('consul').field);
  let token: Secret | undefined;
  if (merged.consulToken) token = new Secret(merged.consulToken.trim());
  else if (merged.consulTokenFile) {
    let text: string;
    try {
      text = readFileSync(merged.consulTokenFile, 'utf8');
    } catch (err) {
      throw new ConfigError(
        `cannot read the token file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        at('consulTokenFile'),
      );
    }
    if (!text.trim()) throw new ConfigError('the token file is empty', at('consulTokenFile'));
    token = new Secret(text.trim());
  }
  return {
    address: merged.consul,
    token,
    waitMs: 300_000,
    minIntervalMs: 1000,
    backoffInitialMs: 1000,
    backoffMaxMs: 30_000,
    startTimeoutMs: 10_000,
  };
}
