// The admin (15000), metrics (15020) and readiness (15021) ports with workers: served by the supervisor,
// which answers from its control plane and asks the workers for what only they know (their connections,
// their counters, whether they are ready). Workers serve none of these ports.
import { type DaemonConfig, configDump } from '../../lib/config.js';
import { LOG_LEVELS, type Logger } from '../../lib/log.js';
import { RELOAD_MODES, type ReloadMode, type ReloadOutcome, isReloadMode } from '../../lib/reload.js';
import type { DaemonStatus } from '../../lib/status.js';
import type { Handler, Reply } from '../admin/http.js';
import { certificateRows, certificateSummary, logLevelOf, statusHead } from '../admin/routes.js';
import { tapFilter } from '../admin/tap.js';
import { type Readiness, readinessOf, readinessStatus } from '../readiness.js';
import { missingCertificates } from '../reconcile.js';
import type { ControlPlane } from './control-plane.js';
import type { Workers } from './workers.js';

export interface SupervisorView {
  readonly config: DaemonConfig;
  readonly log: Logger;
  readonly plane: ControlPlane;
  readonly workers: Workers;
  /** Started, and not stopping. */
  readonly accepting: boolean;
  readonly ports: { readonly outbound: number; readonly plaintext: number };
  /** A reload or re-exec, answered once it is over (`POST /reload`). */
  reloadAs(mode: ReloadMode): Promise<ReloadOutcome>;
  /** After a re-exec: the supervisor that took over (it serves these same ports now). */
  readonly replacedBy?: number | undefined;
}

/** The host's readiness: the supervisor's control plane, and every worker of the generation in force. */
export async function readiness(s: SupervisorView): Promise<Readiness> {
  const { plane, workers } = s;
  const current = new Set(workers.current());
  const statuses = (await workers.askAll({ q: 'status' })).filter((x) => current.has(x.member));
  const failures: { listen: string; error: string }[] = [];
  for (const { member, answer } of statuses) {
    const l = answer.readiness.checks.listeners;
    if (l !== undefined && l !== 'ok') failures.push({ listen: `worker ${member.pid}`, error: l });
  }
  const r = readinessOf({
    started: s.accepting,
    meshError: plane.meshError,
    consul: plane.consul?.readiness(),
    missingCertificates: missingCertificates(
      plane.localWorkloads(),
      (w) => plane.identityOf(w),
      (id) => plane.certs.has(id),
    ),
    listenerFailures: failures,
  });
  const ready = statuses.filter((x) => x.answer.readiness.ready).length;
  r.checks.workers = `${ready}/${workers.count} ready`;
  return { ready: r.ready && ready === workers.count, checks: r.checks };
}

/** One row per worker: who it is, its generation, and what it carries now. */
async function workerRows(s: SupervisorView): Promise<unknown[]> {
  const answers = new Map((await s.workers.askAll({ q: 'status' })).map((x) => [x.member, x.answer]));
  return s.workers.list().map((m) => {
    const a = answers.get(m);
    return {
      pid: m.pid ?? null,
      index: m.index,
      generation: m.generation,
      state: m.state,
      started: new Date(m.started).toISOString(),
      connections: a?.open ?? null,
      pool: a?.pool ?? null,
      inbound: a?.inbound ?? null,
    };
  });
}

export function supervisorAdminRoutes(s: SupervisorView): Record<string, Handler> {
  const { config, plane } = s;
  const certRows = (): unknown[] =>
    certificateRows(plane.localWorkloads(), plane.certs.list(), (w) => plane.identityOf(w));
  return {
    'GET /config_dump': async () => ({
      json: {
        node: config.nodeName,
        config: configDump(config),
        mesh: plane.store.mesh,
        consul: plane.consul?.dump(),
        certificates: certRows(),
        workers: await workerRows(s),
        readiness: await readiness(s),
      },
    }),
    'GET /workers': async () => ({ json: await workerRows(s) }),
    'GET /status': async () => {
      const answers = await s.workers.askAll({ q: 'status' });
      const by = new Map(answers.map((a) => [a.member, a.answer]));
      const sum = (f: (a: (typeof answers)[number]['answer']) => number): number =>
        answers.reduce((n, a) => n + f(a.answer), 0);
      const status: DaemonStatus = {
        ...statusHead(config),
        mode: 'workers',
        workers: s.workers.list().map((m) => ({
          pid: m.pid ?? null,
          generation: m.generation,
          state: m.state,
          connections: by.get(m)?.open ?? null,
        })),
        readiness: await readiness(s),
        certificates: certificateSummary(plane.localWorkloads().length, plane.certs.list()),
        traffic: {
          connections: sum((a) => a.open),
          poolSessions: sum((a) => a.pool.sessions),
          poolStreams: sum((a) => a.pool.streams),
          inboundOpen: sum((a) => a.inbound.open),
        },
        capture: {
          enabled: config.capture.enabled,
          outbound: s.ports.outbound,
          plaintext: s.ports.plaintext,
        },
      };
      return { json: status };
    },
    'GET /workloads': () => ({ json: plane.localWorkloads() }),
    'GET /connections': async (_req, url): Promise<Reply> => {
      const filter = tapFilter(url.searchParams);
      if (typeof filter === 'string') return { status: 400, json: { error: filter } };
      const answers = await s.workers.askAll({ q: 'connections', filter });
      return {
        json: answers.flatMap((a) =>
          a.answer.map((row) => ({ ...row, id: a.member.hostId(row.id), worker: a.member.pid })),
        ),
      };
    },
    'GET /certs': () => ({ json: certRows() }),
    'GET /logging': () => ({ json: { level: s.log.level } }),
    'POST /reload': async (_req, url): Promise<Reply> => {
      const mode = url.searchParams.get('mode') ?? 'auto';
      if (!isReloadMode(mode)) {
        return { status: 400, json: { error: `mode must be one of ${RELOAD_MODES.join(', ')}` } };
      }
      // 200 either way: a failed reload is an answer (the old workers carry on), not an admin error.
      return { json: await s.reloadAs(mode) };
    },
    'POST /logging': (_req, url): Reply => {
      const level = logLevelOf(url.searchParams.get('level') ?? '');
      if (level === undefined) {
        return { status: 400, json: { error: `level must be one of ${LOG_LEVELS.join(', ')}` } };
      }
      s.log.level = level;
      s.workers.broadcast({ t: 'logLevel', level });
      return { json: { level } };
    },
  };
}

export const supervisorMetricsRoutes = (s: SupervisorView): Record<string, Handler> => ({
  'GET /metrics': async () => {
    const own = await s.plane.metrics.registry.getMetricsAsJSON();
    const summed = await s.workers.metrics(own);
    return { text: await summed.metrics(), contentType: summed.contentType };
  },
});

export const supervisorReadyRoutes = (s: SupervisorView): Record<string, Handler> => ({
  'GET /healthz/ready': async () => {
    // Both supervisors accept on the readiness socket while the old one lets go: a probe that lands on
    // the old one is answered for the host, which its successor serves.
    if (s.replacedBy !== undefined) {
      return { json: { ready: true, checks: { supervisor: `replaced by pid ${s.replacedBy}` } } };
    }
    const r = await readiness(s);
    return { status: readinessStatus(r), json: r };
  },
});
