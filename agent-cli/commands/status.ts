// `ambit status`: the local ambitd at a glance (its admin API's GET /status): the daemon and its workers,
// readiness, the control plane, certificates, traffic and capture.
import type { Command } from 'commander';
import { type DaemonStatus, isDaemonStatus } from '../../lib/status.js';
import { AdminUnreachableError, adminGet } from '../admin.js';
import { type Io, adminTarget, globals } from '../context.js';
import { humanDuration, jsonText } from '../output.js';

/** `ambit status`'s output; `now` (ms since the epoch) is when the certificates' time left is counted from. */
export function statusText(s: DaemonStatus, json: boolean | undefined, now: number): string {
  if (json) return jsonText(s);
  const workers =
    s.mode === 'single'
      ? 'one process'
      : `${s.workers.filter((w) => w.state === 'ready').length} worker(s) ready` +
        (s.workers.some((w) => w.state === 'draining')
          ? `, ${s.workers.filter((w) => w.state === 'draining').length} draining`
          : '');
  const failing = Object.entries(s.readiness.checks).filter(([, v]) => v !== 'ok' && !/ready$/.test(v));
  const expiry = s.certificates.nextExpiry
    ? `, next expiry in ${humanDuration(Date.parse(s.certificates.nextExpiry) - now)}`
    : '';
  const rows: [string, string][] = [
    [
      'ambitd',
      `${s.node} (${s.role}), pid ${s.pid}, up ${humanDuration(s.uptimeSeconds * 1000)}, ${workers}`,
    ],
    [
      'ready',
      s.readiness.ready
        ? 'yes'
        : `no: ${failing.map(([k, v]) => `${k}: ${v}`).join('; ') || 'starting or stopping'}`,
    ],
    ['control', `${s.controlPlane.kind === 'consul' ? 'Consul at' : 'mesh file'} ${s.controlPlane.source}`],
    ['certs', `${s.certificates.held} held for ${s.certificates.workloads} local workload(s)${expiry}`],
    [
      'traffic',
      `${s.traffic.connections} connection(s) open; pool ${s.traffic.poolSessions} session(s), ` +
        `${s.traffic.poolStreams} stream(s); ${s.traffic.inboundOpen} inbound`,
    ],
    [
      'capture',
      s.capture.enabled ? `on (outbound ${s.capture.outbound}, plaintext ${s.capture.plaintext})` : 'off',
    ],
  ];
  if (s.mode === 'workers') {
    for (const w of s.workers) {
      rows.push([
        'worker',
        `pid ${w.pid ?? '-'}, generation ${w.generation}, ${w.state}, ${w.connections ?? '?'} connection(s)`,
      ]);
    }
  }
  return rows.map(([k, v]) => `${k.padEnd(8)} ${v}`).join('\n') + '\n';
}

export function registerStatus(program: Command, io: Io): void {
  program
    .command('status')
    .description(
      'Show the local ambitd at a glance: workers, readiness, control plane, certificates, traffic, capture.',
    )
    .option('--json', 'print the admin API answer as JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const target = await adminTarget(globals(cmd));
      const body = await adminGet(target, '/status');
      if (!isDaemonStatus(body)) {
        throw new AdminUnreachableError(
          target.admin,
          'GET /status answered an unexpected shape (a different ambitd version?)',
        );
      }
      io.out(statusText(body, o.json, Date.now()));
    });
}
