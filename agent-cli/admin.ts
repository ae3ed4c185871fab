// The CLI's side of ambitd's admin API (127.0.0.1:15000 by default).
import { AmbitError } from '../daemon/errors.js';

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

function reasonOf(err: unknown): string {
  // fetch wraps the socket error (ECONNREFUSED, ENOTFOUND, ...) in a generic "fetch failed".
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  if (cause?.code)
    return `${cause.code}${cause.message && !cause.message.includes(cause.code) ? ` ${cause.message}` : ''}`;
  if ((err as Error).name === 'TimeoutError') return `no answer within ${REQUEST_TIMEOUT_MS / 1000} s`;
  return cause?.message ?? (err as Error).message;
}

export async function adminGet(admin: string, path: string): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(`http://${admin}${path}`, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  } catch (err) {
    throw new AdminUnreachableError(admin, reasonOf(err));
  }
  const body = await res.text().catch(() => '');
  if (!res.ok) {
    throw new AdminUnreachableError(
      admin,
      `GET ${path} answered ${res.status} ${body.slice(0, 200).trim()}`.trim(),
    );
  }
  try {
    return JSON.parse(body);
  } catch {
    throw new AdminUnreachableError(admin, `GET ${path} did not answer JSON`);
  }
}

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

export async function fetchCerts(admin: string): Promise<CertInfo[]> {
  const body = await adminGet(admin, '/certs');
  if (!Array.isArray(body) || !body.every(isCert)) {
    throw new AdminUnreachableError(
      admin,
      'GET /certs answered an unexpected shape (a different ambitd version?)',
    );
  }
  return body;
}
