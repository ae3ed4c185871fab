// `ambit log-level`: the local ambitd's log level, read or set through its admin API.
import { Argument, type Command } from 'commander';
import { LOG_LEVELS } from '../../lib/log.js';
import { logLevel } from '../admin.js';
import { type Io, adminTarget, globals } from '../context.js';

export function registerLogLevel(program: Command, io: Io): void {
  program
    .command('log-level')
    .description(
      "Show the local ambitd's log level, or set it (asks its admin API; setting needs the admin token,\n" +
        "<state-dir>/admin.token, readable only by the daemon's user).",
    )
    .addArgument(new Argument('[level]', 'new level').choices([...LOG_LEVELS]))
    .action(async (level: string | undefined, _o: unknown, cmd: Command) => {
      io.out(`${await logLevel(await adminTarget(globals(cmd)), level)}\n`);
    });
}
