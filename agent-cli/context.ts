// What every command gets from the program: where to write, and the global options (state dir, mesh file,
// admin API, Consul) resolved by commander from flags and the environment.
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { ConfigError } from '../lib/errors.js';
import { readMeshFile } from '../lib/mesh/file/parse.js';
import type { Mesh } from '../lib/mesh/model.js';
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

/**
 * The mesh, for commands that only read it. A missing default file is an empty mesh (nothing enrolled on
 * this host yet); a missing file named by --mesh or AMBIT_MESH_FILE is an error, as a typo in the path
 * would otherwise read as "nothing enrolled".
 */
export async function readMesh(g: Pick<GlobalOpts, 'stateDir' | 'mesh'>): Promise<Mesh> {
  const file = meshPath(g);
  if (g.mesh !== undefined) {
    try {
      await access(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT')
        throw new ConfigError(`mesh file ${file} does not exist (given by --mesh or AMBIT_MESH_FILE)`);
    }
  }
  return readMeshFile(file);
}
