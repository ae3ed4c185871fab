// `ambit unenroll`: a workload out of the mesh file, or out of the Consul catalog.
import type { Command } from 'commander';
import { NotFoundError } from '../../lib/errors.js';
import { editMeshFile, removeWorkload } from '../../lib/mesh/edit.js';
import { consulClient, consulUnenroll } from '../consul.js';
import { type Io, globals, meshPath } from '../context.js';

export function registerUnenroll(program: Command, io: Io): void {
  program
    .command('unenroll')
    .description('Remove a workload from the mesh.')
    .argument('<name>', 'workload name')
    .action(async (name: string, _o: unknown, cmd: Command) => {
      const consul = consulClient(globals(cmd));
      if (consul) {
        await consulUnenroll(consul, name);
        return io.out(`deregistered workload ${name} from Consul at ${consul.address}\n`);
      }
      await editMeshFile(meshPath(globals(cmd)), (doc) => {
        if (!removeWorkload(doc, name)) throw new NotFoundError(`workload "${name}"`);
      });
      io.out(`unenrolled workload ${name}\n`);
    });
}
