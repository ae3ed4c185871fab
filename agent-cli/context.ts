// What every command gets from the program: where to write, and the global options (state dir, mesh file,
// admin API, Consul) resolved by commander from flags and the environment.
import { join } from 'node:path';
import type { Command } from 'commander';
import { type AdminTarget, readAdminToken } from './admin.js';
import type { ConsulCliOpts } from './consul.js';

/** Where the CLI writes; the tests drive it in-process with their own. */
export interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

export interface GlobalOpts extends ConsulCliOpts {
  stateDir: string;
  mesh: string | undefined;
  admin: string;
}

export const globals = (cmd: Command): GlobalOpts => cmd.optsWithGlobals<GlobalOpts>();

/** --mesh, else the mesh file ambitd keeps in its state directory. */
export const meshPath = (g: Pick<GlobalOpts, 'stateDir' | 'mesh'>): string =>
  g.mesh ?? join(g.stateDir, 'mesh.yaml');

export const adminTarget = async (g: GlobalOpts): Promise<AdminTarget> => ({
  admin: g.admin,
  token: await readAdminToken(g.stateDir),
});
