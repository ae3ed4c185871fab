import { homedir } from 'node:os';
import { join } from 'node:path';

// Where state lives when nothing overrides it: the FHS place for a root service, a per-user place otherwise,
// so that the quick start runs without root.
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.AMBIT_STATE_DIR) return env.AMBIT_STATE_DIR;
  if (process.getuid?.() === 0) return '/var/lib/ambit';
  const base = env.XDG_STATE_HOME || join(homedir(), '.local', 'state');
  return join(base, 'ambit');
}

export function defaultMeshFile(stateDir: string, env: NodeJS.ProcessEnv = process.env): string {
  return env.AMBIT_MESH_FILE || join(stateDir, 'mesh.yaml');
}

export const DEFAULT_ADMIN = '127.0.0.1:15000';

/** The admin API's bearer token, in the state directory (mode 0600, new at every start). */
export const ADMIN_TOKEN_FILE = 'admin.token';
