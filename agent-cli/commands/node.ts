// `ambit node set|list`: the hosts running ambitd, as the mesh file lists them.
import type { Command } from 'commander';
import { editMeshFile, setNode } from '../../lib/mesh/edit.js';
import { DEFAULT_TUNNEL_PORT } from '../../lib/mesh/file/schema.js';
import type { Mesh } from '../../lib/mesh/model.js';
import { joinHostPort } from '../../lib/net/hostport.js';
import { checkObjectName, flag, parseIp, parsePort } from '../args.js';
import { type Io, globals, meshPath, readMesh } from '../context.js';
import { jsonText, table } from '../output.js';

/** `ambit node list`'s output: each node with the number of workloads enrolled on it. */
export function nodesText(mesh: Pick<Mesh, 'nodes' | 'workloads'>, json: boolean | undefined): string {
  if (json) return jsonText(mesh.nodes);
  if (!mesh.nodes.length) return 'no nodes in the mesh\n';
  return table(
    ['NAME', 'ADDRESS', 'TUNNEL-PORT', 'WORKLOADS'],
    mesh.nodes.map((n) => [
      n.name,
      n.address,
      String(n.tunnelPort),
      String(mesh.workloads.filter((w) => w.node === n.name).length),
    ]),
  );
}

export function registerNode(program: Command, io: Io): void {
  const node = program.command('node').description('Manage the nodes (hosts running ambitd) of the mesh.');
  node
    .command('set')
    .description('Add a node, or change its address or tunnel port.')
    .argument('<name>', 'node name (ambitd uses the host name)')
    .requiredOption('--address <ip>', "address other nodes reach this node's tunnel at", parseIp)
    .option(
      '--tunnel-port <port>',
      `tunnel (HBONE) port [default: ${DEFAULT_TUNNEL_PORT}, or the current one]`,
      parsePort,
    )
    .action(async (name: string, o: { address: string; tunnelPort?: number }, cmd: Command) => {
      flag(`node name "${name}"`, () => checkObjectName(name, 'node name'));
      let existed = false;
      let tunnelPort = DEFAULT_TUNNEL_PORT;
      await editMeshFile(meshPath(globals(cmd)), (doc) => {
        existed = doc.hasIn(['nodes', name]);
        const current = doc.getIn(['nodes', name, 'tunnelPort']);
        tunnelPort = o.tunnelPort ?? (typeof current === 'number' ? current : DEFAULT_TUNNEL_PORT);
        setNode(doc, { name, address: o.address, tunnelPort });
      });
      io.out(`${existed ? 'updated' : 'added'} node ${name} at ${joinHostPort(o.address, tunnelPort)}\n`);
    });
  node
    .command('list')
    .description('List the nodes of the mesh.')
    .option('--json', 'print the nodes as JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      io.out(nodesText(await readMesh(globals(cmd)), o.json));
    });
}
