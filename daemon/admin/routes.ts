// The routes of the admin (15000), metrics (15020) and readiness (15021) ports, and which of them want the
// admin token. The servers themselves are started by Ambitd (admin/http.ts serves a route table).
import type { IncomingMessage } from 'node:http';
import { type DaemonConfig, configDump } from '../../lib/config.js';
import { LOG_LEVELS, type LogLevel, type Logger } from '../../lib/log.js';
import { waypointChains } from '../../lib/mesh/chains.js';
import type { Workload } from '../../lib/mesh/model.js';
import type { ReloadOutcome } from '../../lib/reload.js';
import { type DaemonStatus, soonest } from '../../lib/status.js';
import type { CertificateInfo, CertificateManager } from '../identity/manager.js';
import type { FdReserve } from '../limits/fds.js';
import { REFUSAL_LOG_INTERVAL_MS } from '../limits/refusal.js';
import { LogThrottle } from '../limits/throttle.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Inbound } from '../proxy/inbound/inbound.js';
import type { TunnelServer } from '../proxy/inbound/server.js';
import type { ExplicitListeners } from '../proxy/outbound/explicit.js';
import type { Pool } from '../proxy/pool/pool.js';
import { type Readiness, readinessStatus } from '../readiness.js';
import type { StateStore } from '../state/store.js';
import type { AdminAuth, AdminToken, Handler, Reply } from './http.js';
import { tapFilter } from './tap.js';

/**
 * Every change, and the dump (the whole mesh and configuration), wants the admin token; the other reads
 * stay open on the admin address, as ztunnel's do, for `curl` and probes. `route` is `METHOD /path`.
 */
export const tokenRequired = (route: string): boolean =>
  !route.startsWith('GET ') || TRAFFIC_READS.has(route);

/** Reads that show who talks to whom (identities, addresses): the admin token's, like the dump. */
const TRAFFIC_READS: ReadonlySet<string> = new Set(['GET /config_dump', 'GET /connections', 'GET /tap']);

/** The level `POST /logging?level=` names, or undefined when it names none. */
export const logLevelOf = (value: string): LogLevel | undefined =>
  (LOG_LEVELS as readonly string[]).includes(value) ? (value as LogLevel) : undefined;

/** One row per local workload: its certificate, or its identity with nulls while none is held. */
export function certificateRows(
  local: readonly Workload[],
  held: readonly CertificateInfo[],
  identityOf: (w: Workload) => string,
): unknown[] {
  const byId = new Map(held.map((c) => [c.identity, c]));
  return local.map((w) => {
    const c = byId.get(identityOf(w));
    return { workload: w.name, ...(c ?? { identity: identityOf(w), serial: null, notAfter: null }) };
  });
}

/** What the admin routes read: Ambitd, seen through the parts they show. */
export interface AdminView {
  readonly config: DaemonConfig;
  readonly log: Logger;
  readonly store: StateStore;
  readonly certs: CertificateManager;
  readonly listeners: ExplicitListeners;
  readonly pool: Pool;
  readonly inbound: Inbound;
  readonly tunnel: TunnelServer;
  readonly fds: FdReserve;
  readonly metrics: Metrics;
  readonly ports: { readonly outbound: number; readonly plaintext: number };
  /** With role waypoint: its outlier ejections in force. */
  readonly waypoint?: { ejections(): unknown } | undefined;
  localWorkloads(): Workload[];
  identityOf(w: Workload): string;
  readiness(): Readiness;
}

/** The admin port's routes (15000); `consul` is the control plane in Consul mode. */
export function adminRoutes(d: AdminView, consul: { dump(): unknown } | undefined): Record<string, Handler> {
  const { config } = d;
  const certRows = (): unknown[] =>
    certificateRows(d.localWorkloads(), d.certs.list(), (w) => d.identityOf(w));
  return {
    'GET /config_dump': () => ({
      json: {
        node: config.nodeName,
        config: configDump(config),
        mesh: d.store.mesh,
        chains: waypointChains(d.store.mesh, config.datacenter),
        ...(d.waypoint ? { outliers: d.waypoint.ejections() } : {}),
        consul: consul?.dump(),
        certificates: certRows(),
        listeners: d.listeners.listening(),
        pool: d.pool.stats(),
        inbound: {
          open: d.inbound.openConnections,
          connecting: d.inbound.connecting,
          tunnel: d.tunnel.stats(),
        },
        fds: { open: d.fds.open, limit: d.fds.limit ?? null, reserve: d.fds.reserve },
        readiness: d.readiness(),
      },
    }),
    'GET /workloads': () => ({ json: d.localWorkloads() }),
    'GET /status': () => {
      const pool = d.pool.stats();
      const status: DaemonStatus = {
        ...statusHead(config),
        mode: 'single',
        workers: [],
        readiness: d.readiness(),
        certificates: certificateSummary(d.localWorkloads().length, d.certs.list()),
        traffic: {
          connections: d.metrics.connections.size,
          poolSessions: pool.sessions,
          poolStreams: pool.streams,
          inboundOpen: d.inbound.openConnections,
        },
        capture: {
          enabled: config.capture.enabled,
          outbound: d.ports.outbound,
          plaintext: d.ports.plaintext,
        },
      };
      return { json: status };
    },
    'GET /connections': (_req, url): Reply => {
      const filter = tapFilter(url.searchParams);
      if (typeof filter === 'string') return { status: 400, json: { error: filter } };
      return { json: d.metrics.connections.list(filter) };
    },
    'GET /certs': () => ({ json: certRows() }),
    'GET /logging': () => ({ json: { level: d.log.level } }),
    'POST /reload': (): Reply => {
      const outcome: ReloadOutcome = {
        ok: false,
        kind: 'reload',
        pid: process.pid,
        generation: null,
        error: 'a reload needs workers >= 1 (this ambitd runs as one process): restart it instead',
      };
      return { json: outcome };
    },
    'POST /logging': (_req, url): Reply => {
      const level = logLevelOf(url.searchParams.get('level') ?? '');
      if (level === undefined) {
        return { status: 400, json: { error: `level must be one of ${LOG_LEVELS.join(', ')}` } };
      }
      d.log.level = level;
      return { json: { level } };
    },
  };
}

/** `GET /status`'s certificates: how many local workloads, how many certificates held, the next expiry. */
export const certificateSummary = (
  workloads: number,
  held: readonly CertificateInfo[],
): DaemonStatus['certificates'] => ({
  workloads,
  held: held.length,
  nextExpiry: soonest(held.map((c) => c.notAfter)),
});

/** What `GET /status` says of this process whichever way it runs: who, since when, from which control plane. */
export function statusHead(
  config: DaemonConfig,
): Pick<DaemonStatus, 'node' | 'role' | 'pid' | 'uptimeSeconds' | 'controlPlane'> {
  return {
    node: config.nodeName,
    role: config.role,
    pid: process.pid,
    uptimeSeconds: Math.round(process.uptime()),
    controlPlane: config.consul
      ? { kind: 'consul', source: config.consul.address }
      : { kind: 'embedded', source: config.meshFile },
  };
}

/** The metrics port's one route (15020). */
export const metricsRoutes = (metrics: Metrics): Record<string, Handler> => ({
  'GET /metrics': async () => ({
    text: await metrics.registry.metrics(),
    contentType: metrics.registry.contentType,
  }),
});

/** The readiness port's one route (15021). */
export const readyRoutes = (readiness: () => Readiness): Record<string, Handler> => ({
  'GET /healthz/ready': () => {
    const r = readiness();
    return { status: readinessStatus(r), json: r };
  },
});

/** The token check of the admin port: every refusal counted by route, and logged at most once per interval. */
export function adminAuth(token: AdminToken, metrics: Metrics, log: Logger): AdminAuth {
  const throttle = new LogThrottle(REFUSAL_LOG_INTERVAL_MS);
  return {
    token,
    required: tokenRequired,
    denied: (route: string, req: IncomingMessage) => {
      metrics.adminUnauthorized.inc({ route });
      const suppressed = throttle.take();
      if (suppressed === undefined) return;
      log.warn(
        { route, from: req.socket.remoteAddress, ...(suppressed > 0 ? { suppressed } : {}) },
        'admin API request refused: no or wrong admin token',
      );
    },
  };
}
