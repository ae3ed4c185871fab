// `ambit certs`: the workload certificates the local ambitd holds, from its admin API.
import type { Command } from 'commander';
import { type CertInfo, fetchCerts } from '../admin.js';
import { type Io, adminTarget, globals } from '../context.js';
import { humanDuration, jsonText, table } from '../output.js';

/** `ambit certs`'s output; `now` (ms since the epoch) is when the time left and the refresh are counted from. */
export function certsText(certs: readonly CertInfo[], json: boolean | undefined, now: number): string {
  if (json) return jsonText(certs);
  if (!certs.length) return 'no certificates (no workloads enrolled on this node?)\n';
  return table(
    ['WORKLOAD', 'IDENTITY', 'SERIAL', 'EXPIRES', 'LEFT', 'REFRESH', 'ROTATIONS'],
    certs.map((c) => [
      c.workload,
      c.identity,
      c.serial,
      c.notAfter,
      humanDuration(Date.parse(c.notAfter) - now),
      Date.parse(c.refreshAt) > now ? `in ${humanDuration(Date.parse(c.refreshAt) - now)}` : 'due',
      String(c.rotations),
    ]),
  );
}

export function registerCerts(program: Command, io: Io): void {
  program
    .command('certs')
    .description('Show the workload certificates held by the local ambitd (asks its admin API).')
    .option('--json', 'print the admin API answer as JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const certs = await fetchCerts(await adminTarget(globals(cmd)));
      io.out(certsText(certs, o.json, Date.now()));
    });
}
