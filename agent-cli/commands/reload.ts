// `ambit reload`: the local ambitd reloads (new workers, then the old ones drain) or, when its code on disk
// changed or with --reexec, replaces its supervisor; it returns once that is over, and fails when the new
// workers did not start. The unit's ExecReload, so that `systemctl reload` waits for it too: a bare
// SIGHUP would return at once and leave the unit "reloading" after it.
import type { Command } from 'commander';
import { joinHostPort } from '../../lib/net/hostport.js';
import { reload } from '../admin.js';
import { daemonSettings } from '../capture.js';
import { type Io, adminTarget, globals } from '../context.js';

export function registerReload(program: Command, io: Io): void {
  program
    .command('reload')
    .description(
      'Reload the local ambitd without dropping a connection, and wait until it serves again (needs\n' +
        "workers >= 1 and the admin token). Without --admin, the admin address is the daemon's: from\n" +
        '--config (else AMBIT_CONFIG), else 127.0.0.1:15000.',
    )
    .option('--reexec', 'replace the supervisor too (as SIGUSR2), even if its code on disk is unchanged')
    .option('--config <file>', "ambitd's config file, for its admin address; env AMBIT_CONFIG")
    .action(async (o: { reexec?: boolean; config?: string }, cmd: Command) => {
      const g = globals(cmd);
      const explicit = cmd.getOptionValueSourceWithGlobals('admin') !== 'default';
      const named = o.config ?? process.env.AMBIT_CONFIG;
      let admin = g.admin;
      if (!explicit && named) {
        const { host, port } = daemonSettings(g, o.config).admin;
        admin = joinHostPort(host, port);
      }
      const outcome = await reload(await adminTarget({ ...g, admin }), o.reexec ? 'reexec' : 'auto');
      io.out(
        outcome.kind === 'reexec'
          ? `re-exec'd: supervisor pid ${outcome.pid} serves\n`
          : `reloaded: generation ${outcome.generation} serves\n`,
      );
    });
}
