// Users named in the configuration (captureCheckUsers), as the uids the owner match of iptables takes.
// Resolved through NSS (getent), as `id` would, so that a user from LDAP or systemd's dynamic users counts.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface ResolvedUsers {
  /** name (or uid as given) -> uid, in the order given. */
  readonly found: readonly { readonly name: string; readonly uid: number }[];
  /** Names no user answers to on this host: skipped (the Consul agent may not be installed here). */
  readonly missing: readonly string[];
  readonly uids: readonly number[];
}

/** A uid from `getent passwd <name>`, or undefined when there is no such user. */
async function uidOf(name: string): Promise<number | undefined> {
  if (/^\d+$/.test(name)) return Number(name);
  try {
    const { stdout } = await run('getent', ['passwd', name], { timeout: 5000 });
    const uid = Number(stdout.split(':')[2]);
    return Number.isInteger(uid) ? uid : undefined;
  } catch {
    // getent exits 2 for a name it does not know.
    return undefined;
  }
}

export async function resolveUsers(names: readonly string[]): Promise<ResolvedUsers> {
  const found: { name: string; uid: number }[] = [];
  const missing: string[] = [];
  for (const name of names) {
    const uid = await uidOf(name);
    if (uid === undefined) missing.push(name);
    else found.push({ name, uid });
  }
  return { found, missing, uids: found.map((f) => f.uid) };
}

/** For the install summary: `consul (uid 998)`, `nobody (no user consul)`. */
export function checkersText(r: ResolvedUsers): string {
  const parts = r.found.map((f) => (String(f.uid) === f.name ? `uid ${f.uid}` : `${f.name} (uid ${f.uid})`));
  const none = r.missing.length ? ` (no user ${r.missing.join(', ')} here)` : '';
  return `${parts.length ? parts.join(', ') : 'nobody'}${none}`;
}
