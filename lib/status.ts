// What `GET /status` on ambitd's admin port answers and `ambit status` shows: the daemon at a glance, in
// one shape whether it runs as one process or as a supervisor with workers.

export interface WorkerSummary {
  readonly pid: number | null;
  readonly generation: number;
  readonly state: string;
  readonly connections: number | null;
}

export interface DaemonStatus {
  readonly node: string;
  readonly role: 'node' | 'waypoint';
  /** The main process: the supervisor with workers. */
  readonly pid: number;
  readonly uptimeSeconds: number;
  /** `single`: one process; `workers`: a supervisor and the workers listed. */
  readonly mode: 'single' | 'workers';
  readonly workers: readonly WorkerSummary[];
  readonly readiness: { readonly ready: boolean; readonly checks: Readonly<Record<string, string>> };
  readonly controlPlane: { readonly kind: 'embedded' | 'consul'; readonly source: string };
  readonly certificates: {
    readonly workloads: number;
    readonly held: number;
    /** The soonest notAfter of the certificates held, ISO 8601; null when none is held. */
    readonly nextExpiry: string | null;
  };
  readonly traffic: {
    readonly connections: number;
    readonly poolSessions: number;
    readonly poolStreams: number;
    readonly inboundOpen: number;
  };
  readonly capture: { readonly enabled: boolean; readonly outbound: number; readonly plaintext: number };
}

/** The soonest of the certificates' notAfter, as ISO 8601. */
export function soonest(notAfter: readonly (string | number | Date)[]): string | null {
  let min = Number.POSITIVE_INFINITY;
  for (const v of notAfter) min = Math.min(min, new Date(v).getTime());
  return Number.isFinite(min) ? new Date(min).toISOString() : null;
}

/** Whether an admin answer has the shape of a DaemonStatus (a different ambitd version may not). */
export function isDaemonStatus(v: unknown): v is DaemonStatus {
  const s = v as Partial<DaemonStatus> | null;
  return (
    typeof s === 'object' &&
    s !== null &&
    typeof s.node === 'string' &&
    typeof s.pid === 'number' &&
    Array.isArray(s.workers) &&
    typeof s.readiness?.ready === 'boolean' &&
    typeof s.certificates?.held === 'number' &&
    typeof s.traffic?.connections === 'number' &&
    typeof s.capture?.enabled === 'boolean'
  );
}
