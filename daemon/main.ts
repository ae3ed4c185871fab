#!/usr/bin/env -S node --initial-old-space-size=64
import cluster from 'node:cluster';
import { Command } from 'commander';
import { CONFIG_KEYS, type ConfigInput, loadConfig, optionOf } from '../lib/config.js';
import { flagHelp } from '../lib/config/docs.js';
import { AmbitError } from '../lib/errors.js';
import { createLogger } from '../lib/log.js';
import { ambitVersion } from '../lib/version.js';
import { Ambitd } from './daemon.js';
import { NODE_FLAGS, initialOldSpaceMb } from './proxy/reclaim.js';
import { runSupervisor } from './supervisor/supervisor.js';
import { Systemd } from './supervisor/systemd.js';
import { runWorker } from './supervisor/worker.js';
import { workerCount } from './supervisor/workers.js';
import { missingWaypointRuntime, waypointRuntime } from './waypoint/runtime.js';

const program = new Command()
  .name('ambitd')
  .version(ambitVersion(), '-V, --version', 'print the version of Ambit')
  .description(
    'Ambit node daemon: carries the traffic of the workloads enrolled on this host inside mutual TLS ' +
      "to the destination host's daemon; with --role waypoint, the L7 hop of the services that name it " +
      '(docs/waypoints.md). Settings come from --config (YAML/JSON), AMBIT_* variables and ' +
      'these flags, flags winning. Each flag is also a variable (--node-name: AMBIT_NODE_NAME) and a file ' +
      'key (nodeName); every setting: docs/configuration.md.',
  )
  .option('-c, --config <file>', 'config file (YAML or JSON); env AMBIT_CONFIG')
  .showHelpAfterError();
// One flag per setting of the schema (lib/config/schema.ts), so that none can be missing here.
for (const k of CONFIG_KEYS) program.option(optionOf(k), flagHelp(k));

async function main(): Promise<void> {
  program.parse();
  const opts = program.opts<Record<string, unknown>>();
  const configFile = opts.config as string | undefined;
  const flags: Record<string, unknown> = {};
  for (const k of CONFIG_KEYS) {
    // Only what was given: commander also fills in the `true` of a --no- switch that was not.
    if (program.getOptionValueSource(k) === 'cli') flags[k] = opts[k];
  }
  const config = loadConfig({ flags: flags as ConfigInput, configFile });
  const log = createLogger(config.logLevel);
  if (config.role === 'waypoint') {
    const missing = missingWaypointRuntime();
    if (missing.length > 0 || initialOldSpaceMb() !== undefined) {
      log.info(
        { want: waypointRuntime(), missing },
        'node was not started as a waypoint is tuned (systemd/waypoint.conf): expect a larger footprint',
      );
    }
  } else if ((initialOldSpaceMb() ?? 0) < 64) {
    log.info(
      { want: NODE_FLAGS.join(' ') },
      'node was started without the flags ambitd is tuned for: expect more garbage collection under load',
    );
  }
  // With workers, this process is the supervisor, or one of its workers (forked with this same argv).
  if (cluster.isWorker) return runWorker(config, log.child({ worker: process.pid }));
  const workers = workerCount(config);
  if (workers > 0) return runSupervisor(config, log, workers);
  const daemon = await Ambitd.start(config, log);
  // One unit (Type=notify) for both ways of running: the single process says it is ready too.
  const systemd = new Systemd(log);
  systemd.ready('serving in one process');
  process.on('SIGHUP', () => log.warn('reload (SIGHUP) needs workers >= 1: ignored; restart instead'));
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    systemd.stopping();
    daemon.close(config.drainMs).then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: unknown) => {
  const message =
    err instanceof AmbitError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err);
  process.stderr.write(`ambitd: ${message}\n`);
  process.exit(err instanceof AmbitError && err.code === 'AMBIT_CONFIG_INVALID' ? 2 : 1);
});
