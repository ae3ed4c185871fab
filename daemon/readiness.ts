// What /healthz/ready answers, decided from plain inputs so that every case is testable without a daemon.

/** The body of /healthz/ready (and the `readiness` of /config_dump): the verdict and each check's state. */
export interface Readiness {
  ready: boolean;
  checks: Record<string, string>;
}

export interface ReadinessInputs {
  /** Whether start() finished (and close() has not begun). */
  readonly started: boolean;
  /** The last mesh file edit that was rejected, if the current file is one. */
  readonly meshError?: { readonly message: string } | undefined;
  /** Consul mode only: the control plane's own line (undefined in mesh-file mode: no check at all). */
  readonly consul?: string | undefined;
  /** Local workloads whose certificate is not held yet, by name. */
  readonly missingCertificates: readonly string[];
  /** Upstream listeners that could not bind. */
  readonly listenerFailures: readonly { readonly listen: string; readonly error: string }[];
}

export function readinessOf(i: ReadinessInputs): Readiness {
  const checks: Record<string, string> = {};
  checks.started = i.started ? 'ok' : 'starting';
  checks.mesh = i.meshError ? `last edit rejected: ${i.meshError.message}` : 'ok';
  // Consul unreachable: reported here, but the last known state serves, so the node stays ready.
  if (i.consul !== undefined) checks.consul = i.consul;
  const missing = i.missingCertificates;
  checks.certificates = missing.length ? `missing for ${missing.join(', ')}` : 'ok';
  const failed = i.listenerFailures;
  checks.listeners = failed.length ? failed.map((f) => `${f.listen}: ${f.error}`).join('; ') : 'ok';
  // A rejected mesh edit is reported but does not make the node unready: the last good state still serves.
  const ready = i.started && missing.length === 0 && failed.length === 0;
  return { ready, checks };
}

/** /healthz/ready's status: 503 tells a load balancer or orchestrator to send nothing here yet. */
export const readinessStatus = (r: Readiness): number => (r.ready ? 200 : 503);
