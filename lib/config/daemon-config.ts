import type { Secret } from '../consul/secret.js';
import type { LogLevel } from '../log.js';
import type { Listen } from './parse.js';
import {
  LIMIT_KEYS,
  type LimitKey,
  type Limits,
  type SettingValues,
  defaultValue,
  limitField,
} from './schema.js';

/**
 * What ambitd runs with, shaped for the code that uses it; each field is filled from the setting named in
 * schema.ts (`certTtlMs` from `certTtl`, `pool.maxStreams` from `maxStreams`), whose help says what it means.
 */
export interface DaemonConfig {
  readonly nodeName: string;
  readonly stateDir: string;
  readonly meshFile: string;
  /** What this ambitd is: a node daemon, or a waypoint (docs/waypoints.md). */
  readonly role: 'node' | 'waypoint';
  /** With role waypoint: the waypoint service it enrols under. */
  readonly waypointService: string;
  readonly registerNode: boolean;
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
  readonly ejectMs: number;
  readonly maxAttempts: number;
  readonly meshPollMs: number;
  /** Consul mode: undefined leaves unmatched sources to Consul's default. */
  readonly defaultPolicy: 'allow' | 'deny' | undefined;
  /** Consul as the control plane and CA; undefined runs the embedded mesh file and CA. */
  readonly consul: ConsulSettings | undefined;
  /** The pod watch (daemon/state/kubernetes/); undefined when off. */
  readonly kubernetes: KubernetesSettings | undefined;
  readonly drainMs: number;
  /** Worker processes behind a supervisor (daemon/supervisor/); 0 runs the daemon in this one process. */
  readonly workers: number | 'auto';
  readonly workersMax: number;
  readonly reloadDrainMs: number;
  readonly stopGraceMs: number;
  readonly capture: {
    readonly enabled: boolean;
    readonly mark: number;
    /** The client's address as the workload's source (daemon/proxy/inbound/original-source.ts). */
    readonly originalSource: boolean;
    /** The mark and table that route a workload's replies to that address back here (lib/capture/transparent.ts). */
    readonly replyMark: number;
    readonly replyTable: number;
    readonly unenrolledSource: 'passthrough' | 'refuse';
    readonly excludePorts: readonly number[];
    readonly excludeCidrs: readonly string[];
    readonly daemonUid: number | undefined;
    readonly checkUsers: readonly string[];
    readonly backend: 'auto' | 'nft' | 'legacy';
  };
  readonly limits: Limits;
}

export interface KubernetesSettings {
  readonly scope: 'node' | 'cluster';
  readonly labelSelector: string;
  /** Undefined: the in-cluster variables (KUBERNETES_SERVICE_HOST/PORT), read at start. */
  readonly server: string | undefined;
  readonly tokenFile: string;
  readonly caFile: string;
  readonly maxLineBytes: number;
  readonly maxPageBytes: number;
  readonly maxPods: number;
}

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

export function limitsOf(v: Pick<SettingValues, LimitKey>): Limits {
  const out: Record<string, number> = {};
  for (const k of LIMIT_KEYS) out[limitField(k)] = v[k];
  return out as unknown as Limits;
}

/** The parsed settings in the shape of DaemonConfig; the compiler checks each field against its setting. */
export function daemonConfig(v: SettingValues, consul: ConsulSettings | undefined): DaemonConfig {
  return {
    nodeName: v.nodeName,
    stateDir: v.stateDir,
    meshFile: v.meshFile,
    role: v.role,
    waypointService: v.waypointService,
    registerNode: v.registerNode,
    advertiseAddress: v.advertiseAddress,
    trustDomain: v.trustDomain,
    datacenter: v.datacenter,
    caDir: v.caDir,
    certTtlMs: v.certTtl,
    logLevel: v.logLevel,
    outbound: v.outbound,
    inboundPlaintext: v.inboundPlaintext,
    tunnel: v.tunnel,
    admin: v.admin,
    metrics: v.metrics,
    ready: v.ready,
    pool: {
      maxStreams: v.maxStreams,
      idleTimeoutMs: v.idleTimeout,
      pingIntervalMs: v.pingInterval,
    },
    connectTimeoutMs: v.connectTimeout,
    ejectMs: v.ejectTime,
    maxAttempts: v.maxAttempts,
    meshPollMs: v.meshPoll,
    defaultPolicy: v.defaultPolicy,
    consul,
    kubernetes: v.kubernetes
      ? {
          scope: v.kubernetesScope,
          labelSelector: v.kubernetesLabelSelector,
          server: v.kubernetesServer,
          tokenFile: v.kubernetesTokenFile,
          caFile: v.kubernetesCaFile,
          maxLineBytes: v.kubernetesMaxLine,
          maxPageBytes: v.kubernetesMaxPage,
          maxPods: v.kubernetesMaxPods,
        }
      : undefined,
    drainMs: v.drainTimeout,
    workers: v.workers,
    workersMax: v.workersMax,
    reloadDrainMs: v.reloadDrainTimeout,
    stopGraceMs: v.stopGrace,
    capture: {
      enabled: v.capture,
      mark: v.captureMark,
      originalSource: v.captureOriginalSource,
      replyMark: v.captureReplyMark,
      replyTable: v.captureReplyTable,
      unenrolledSource: v.unenrolledSource,
      excludePorts: v.captureExcludePorts,
      excludeCidrs: v.captureExcludeCidrs,
      daemonUid: v.captureDaemonUid,
      checkUsers: v.captureCheckUsers,
      backend: v.iptablesBackend,
    },
    limits: limitsOf(v),
  };
}

/** The defaults of docs/limits.md (CONTRACT.md's table), parsed from the schema's. */
export const DEFAULT_LIMITS: Limits = limitsOf(
  Object.fromEntries(LIMIT_KEYS.map((k) => [k, defaultValue(k)])) as Pick<SettingValues, LimitKey>,
);
