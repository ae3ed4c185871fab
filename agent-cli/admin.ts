// The CLI's side of ambitd's admin API (127.0.0.1:15000 by default).
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AmbitError } from '../lib/errors.js';
import { ADMIN_TOKEN_FILE } from '../lib/paths.js';
import {
  RELOAD_ANSWER_TIMEOUT_MS,
  type ReloadMode,
  type ReloadOutcome,
  isReloadOutcome,
} from '../lib/reload.js';

/** The daemon could not be asked: not running, wrong address, or it answered nonsense. Exit code 3. */
export class AdminUnreachableError extends AmbitError {
  readonly admin: string;
  constructor(admin: string, reason: string) {
    super(
      'AMBIT_ADMIN_UNREACHABLE',
      `cannot reach ambitd admin API at ${admin}: ${reason} (is ambitd running?)`,
    );
    this.admin = admin;
  }
}

/** The daemon refused the request: the admin token is missing or wrong. Exit code 1. */
export class AdminUnauthorizedError extends AmbitError {
  constructor(admin: string, reason: string) {
    super('AMBIT_ADMIN_UNAUTHORIZED', `ambitd admin API at ${admin} answered 401: ${reason}`);
  }
}

/** ambitd answered that the reload did not happen or failed; what served before carries on. Exit code 1. */
export class ReloadFailedError extends AmbitError {
  constructor(kind: string, reason: string) {
    super('AMBIT_RELOAD_FAILED', `${kind === 'reexec' ? 're-exec' : 'reload'} failed: ${reason}`);
  }
}

export interface CertInfo {
  workload: string;
  identity: string;
  serial: string;
  notBefore: string;
  notAfter: string;
  refreshAt: string;
  rotations: number;
}

const REQUEST_TIMEOUT_MS = 5_000;

function reasonOf(err: unknown, timeoutMs: number): string {
  // fetch wraps the socket error (ECONNREFUSED, ENOTFOUND, ...) in a generic "fetch failed".
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  if (cause?.code)
    return `${cause.code}${cause.message && !cause.message.includes(cause.code) ? ` ${cause.message}` : ''}`;
  if ((err as Error).name === 'TimeoutError') return `no answer within ${timeoutMs / 1000} s`;
  return cause?.message ?? (err as Error).message;
}

/** How to ask ambitd: its admin address, and the token it wrote in its state directory (if readable). */
export interface AdminTarget {
  readonly admin: string;
  readonly token: string | undefined;
}

/**
 * The admin token ambitd wrote at start; undefined when the file cannot be read (not the daemon's user):
 * read-only routes answer without it, changes then get 401.
 */
export async function readAdminToken(stateDir: string): Promise<string | undefined> {
  try {
    return (await readFile(join(stateDir, ADMIN_TOKEN_FILE), 'utf8')).trim() || undefined;
  } catch {
    return undefined;
  }
}

export async function adminRequest(
  target: AdminTarget,
  method: 'GET' | 'POST',
  path: string,
  timeoutMs = REQUEST_TIMEOUT_MS,
): Promise<unknown> {
  const { admin, token } = target;
  let res: Response;
  try {
    res = await fetch(`http://${admin}${path}`, {
      method,
      headers: token ? { authorization: `Bearer ${token}` } : {},
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    throw new AdminUnreachableError(admin, reasonOf(err, timeoutMs));
  }
  const body = await res.text().catch(() => '');
  if (res.status === 401) {
    throw new AdminUnauthorizedError(
      admin,
      token
        ? 'the admin token was refused (ambitd restarted since it was read, or another state directory: --state-dir)'
        : "no admin token: run as the daemon's user, or point --state-dir at its state directory",
    );
  }
  if (!res.ok) {
    throw new AdminUnreachableError(
      admin,
      `${method} ${path} answered ${res.status} ${body.slice(0, 200).trim()}`.trim(),
    );
  }
  try {
    return JSON.parse(body);
  } catch {
    throw new AdminUnreachableError(admin, `${method} ${path} did not answer JSON`);
  }
}

export const adminGet = (target: AdminTarget, path: string): Promise<unknown> =>
  adminRequest(target, 'GET', path);

const isCert = (v: unknown): v is CertInfo => {
  const c = v as Record<string, unknown>;
  return (
    typeof v === 'object' &&
    v !== null &&
    ['workload', 'identity', 'serial', 'notBefore', 'notAfter', 'refreshAt'].every(
      (k) => typeof c[k] === 'string',
    ) &&
    typeof c.rotations === 'number'
  );
};

export async function fetchCerts(target: AdminTarget): Promise<CertInfo[]> {
  const body = await adminGet(target, '/certs');
  if (!Array.isArray(body) || !body.every(isCert)) {
    throw new AdminUnreachableError(
      target.admin,
      'GET /certs answered an unexpected shape (a different ambitd version?)',
    );
  }
  return body;
}

/**
 * A reload (or re-exec), answered once it is over: what `systemctl reload` waits for. Past the time the
 * supervisor gives new workers to start, the answer cannot be a success any more.
 */
export async function reload(target: AdminTarget, mode: ReloadMode): Promise<ReloadOutcome> {
  const body = await adminRequest(target, 'POST', `/reload?mode=${mode}`, RELOAD_ANSWER_TIMEOUT_MS);
  if (!isReloadOutcome(body)) {
    throw new AdminUnreachableError(target.admin, 'POST /reload answered an unexpected shape');
  }
  if (!body.ok) throw new ReloadFailedError(body.kind, body.error ?? 'no reason given');
  return body;
}

/** The daemon's log level; with `level`, sets it first (a change: needs the admin token). */
export async function logLevel(target: AdminTarget, level?: string): Promise<string> {
  const body = level
    ? await adminRequest(target, 'POST', `/logging?level=${encodeURIComponent(level)}`)
    : await adminGet(target, '/logging');
  const got = (body as { level?: unknown } | null)?.level;
  if (typeof got !== 'string')
    throw new AdminUnreachableError(target.admin, 'GET /logging answered an unexpected shape');
  return got;
}
