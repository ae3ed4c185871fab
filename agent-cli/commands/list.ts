// `ambit list`: the enrolled workloads, from the mesh file or the Consul catalog.
import type { Command } from 'commander';
import type { Workload } from '../../lib/mesh/model.js';
import { consulClient, consulWorkloads } from '../consul.js';
import { type Io, globals, meshPath, readMesh } from '../context.js';
import { jsonText, table } from '../output.js';

/** `ambit list`'s output, whichever backend the workloads come from; `where` names it when there are none. */
export function workloadsText(
  workloads: readonly Workload[],
  json: boolean | undefined,
  where: string,
): string {
  if (json) return jsonText(workloads);
  if (!workloads.length) return `no workloads enrolled (${where})\n`;
  return table(
    ['NAME', 'SERVICE', 'NAMESPACE', 'NODE', 'ADDRESSES', 'PORTS', 'MODE'],
    workloads.map((w) => [
      w.name,
      w.service,
      w.namespace,
      w.node,
      w.addresses.join(','),
      w.ports.length ? w.ports.join(',') : '*',
      w.mode,
    ]),
  );
}

export function registerList(program: Command, io: Io): void {
  program
    .command('list')
    .description('List enrolled workloads.')
    .option('--json', 'print the workloads as JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const consul = consulClient(globals(cmd));
      if (consul) {
        const { workloads, skipped } = await consulWorkloads(consul);
        for (const s of skipped) io.err(`ambit: ignoring Consul service instance ${s}\n`);
        return io.out(workloadsText(workloads, o.json, `Consul at ${consul.address}`));
      }
      const file = meshPath(globals(cmd));
      io.out(workloadsText((await readMesh(globals(cmd))).workloads, o.json, file));
    });
}
