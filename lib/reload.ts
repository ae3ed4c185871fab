// What `POST /reload` on ambitd's admin port answers, and `ambit reload` (the unit's ExecReload) reports:
// it answers once the reload is over, so that `systemctl reload` returns when the new workers (or the new
// supervisor) serve, and fails when they did not start.

export type ReloadKind = 'reload' | 'reexec';

export interface ReloadOutcome {
  readonly ok: boolean;
  /** A reload starts new workers; a re-exec, a new supervisor (the code on disk changed, or asked). */
  readonly kind: ReloadKind;
  /** The supervisor that serves now: this one, or after a re-exec its successor. */
  readonly pid: number;
  /** The workers' generation serving now; null after a re-exec (the successor counts its own). */
  readonly generation: number | null;
  /** Why it failed; the workers (or supervisor) that served before carry on. */
  readonly error?: string;
}

/**
 * How long `ambit reload` waits for the answer: the supervisor gives new workers (or a new supervisor)
 * 120 s to start (WORKER_START_TIMEOUT_MS), then answers that they failed.
 */
export const RELOAD_ANSWER_TIMEOUT_MS = 130_000;

/** What `POST /reload?mode=` asks: `auto` is SIGHUP's choice (a re-exec if the code on disk changed). */
export const RELOAD_MODES = ['auto', 'reload', 'reexec'] as const;
export type ReloadMode = (typeof RELOAD_MODES)[number];

export const isReloadMode = (v: string): v is ReloadMode => (RELOAD_MODES as readonly string[]).includes(v);

/** Whether an admin answer has the shape of a ReloadOutcome (a different ambitd version may not). */
export function isReloadOutcome(v: unknown): v is ReloadOutcome {
  const o = v as Partial<ReloadOutcome> | null;
  return (
    typeof o === 'object' &&
    o !== null &&
    typeof o.ok === 'boolean' &&
    (o.kind === 'reload' || o.kind === 'reexec') &&
    typeof o.pid === 'number' &&
    (o.generation === null || typeof o.generation === 'number') &&
    (o.error === undefined || typeof o.error === 'string')
  );
}
