// `ambit`: enrolls workloads and edits policy in the mesh file (which ambitd watches and applies live), and
// asks the running daemon about its certificates. The global options live here; each command in commands/.
import { Command, CommanderError, Option } from 'commander';
import { AmbitError, MeshFileError } from '../lib/errors.js';
import { DEFAULT_ADMIN, defaultStateDir } from '../lib/paths.js';
import { ambitVersion } from '../lib/version.js';
import { AdminUnreachableError } from './admin.js';
import { parseAdmin } from './args.js';
import { registerCapture } from './commands/capture.js';
import { registerCerts } from './commands/certs.js';
import { registerCompletion } from './commands/completion.js';
import { registerConfig } from './commands/config.js';
import { registerEnroll } from './commands/enroll.js';
import { registerList } from './commands/list.js';
import { registerLogLevel } from './commands/log-level.js';
import { registerNode } from './commands/node.js';
import { registerPolicy } from './commands/policy.js';
import { registerReload } from './commands/reload.js';
import { registerRoute } from './commands/route.js';
import { registerStatus } from './commands/status.js';
import { registerTap } from './commands/tap.js';
import { registerUnenroll } from './commands/unenroll.js';
import type { Io } from './context.js';

export const EXIT_OK = 0;
export const EXIT_USER = 1;
export const EXIT_MESH_INVALID = 2;
export const EXIT_UNREACHABLE = 3;

/** The commands, in the order `ambit --help` lists them. */
const COMMANDS: readonly ((program: Command, io: Io) => void)[] = [
  registerEnroll,
  registerUnenroll,
  registerList,
  registerNode,
  registerPolicy,
  registerConfig,
  registerRoute,
  registerStatus,
  registerCerts,
  registerTap,
  registerLogLevel,
  registerCapture,
  registerReload,
  registerCompletion,
];

export function buildProgram(io: Io): Command {
  const program = new Command('ambit')
    .version(ambitVersion(), '-V, --version', 'print the version of Ambit')
    .description(
      'Enroll workloads in the Ambit mesh and manage its policy.\n\n' +
        'Changes are written to the mesh file, which ambitd watches and applies within a second;\n' +
        'an edit that would make the file invalid is refused and nothing is written.\n' +
        'With --consul (or CONSUL_HTTP_ADDR), enroll, unenroll and list use the Consul catalog and\n' +
        'policy uses Consul intentions and config uses Consul config entries instead.\n\n' +
        'Exit codes: 0 ok, 1 usage error or not found, 2 invalid mesh file, 3 ambitd unreachable.',
    )
    .addOption(
      new Option('--state-dir <dir>', 'ambitd state directory')
        .env('AMBIT_STATE_DIR')
        .default(defaultStateDir(), 'per-user state dir, /var/lib/ambit as root'),
    )
    .addOption(
      new Option('--mesh <file>', 'mesh file (.yaml, .yml or .json)  [default: <state-dir>/mesh.yaml]').env(
        'AMBIT_MESH_FILE',
      ),
    )
    .addOption(
      new Option('--admin <host:port>', 'ambitd admin API address')
        .env('AMBIT_ADMIN')
        .default(DEFAULT_ADMIN)
        .argParser(parseAdmin),
    )
    .addOption(
      new Option(
        '--consul <addr>',
        'use the Consul agent at addr instead of the mesh file (enroll, unenroll, list, policy, config, route)',
      ).env('CONSUL_HTTP_ADDR'),
    )
    .addOption(new Option('--consul-token <token>', 'Consul ACL token').env('CONSUL_HTTP_TOKEN'))
    .addOption(
      new Option('--consul-token-file <file>', 'file holding the Consul ACL token').env(
        'CONSUL_HTTP_TOKEN_FILE',
      ),
    )
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({
      writeOut: io.out,
      writeErr: io.err,
      outputError: (s, write) => write(s.replace(/^error: /, 'ambit: ')),
    })
    .exitOverride();
  for (const register of COMMANDS) register(program, io);
  return program;
}

export function exitCodeOf(err: unknown): number {
  if (err instanceof MeshFileError) return EXIT_MESH_INVALID;
  if (err instanceof AdminUnreachableError) return EXIT_UNREACHABLE;
  return EXIT_USER;
}

/** Runs the CLI; returns the exit code instead of exiting, so that it can be driven in-process. */
export async function run(argv: readonly string[], io: Io): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return EXIT_OK;
  } catch (err) {
    // Commander has already printed its own message (or the help).
    if (err instanceof CommanderError) return err.exitCode;
    if (err instanceof AmbitError) {
      io.err(`ambit: ${err.message}\n`);
      return exitCodeOf(err);
    }
    io.err(`ambit: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return EXIT_USER;
  }
}
