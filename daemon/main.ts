#!/usr/bin/env -S node --initial-old-space-size=64
import { Command } from 'commander';
import { type ConfigInput, loadConfig } from '../lib/config.js';
import { AmbitError } from '../lib/errors.js';
import { createLogger } from '../lib/log.js';
import { Ambitd } from './daemon.js';
import { NODE_FLAGS, initialOldSpaceMb } from './proxy/reclaim.js';

const program = new Command()
  .name('ambitd')
  .description(
    'Ambit node daemon: carries the traffic of the workloads enrolled on this host inside mutual TLS\n' +
      "to the destination host's daemon. Settings come from --config (YAML/JSON), AMBIT_* variables and\n" +
      'these flags, flags winning.',
  )
  .option('-c, --config <file>', 'config file (YAML or JSON); env AMBIT_CONFIG')
  .option('--node-name <name>', "this node's name in the mesh (default: host name)")
  .option(
    '--state-dir <dir>',
    'state directory (default: /var/lib/ambit as root, ~/.local/state/ambit otherwise)',
  )
  .option('--mesh-file <file>', 'embedded mesh file (default: <state-dir>/mesh.yaml)')
  .option('--advertise-address <ip>', "address other daemons reach this node's tunnel at")
  .option('--no-register-node', "do not write this node's address into the mesh file")
  .option('--trust-domain <domain>', 'SPIFFE trust domain (default: ambit.local)')
  .option('--datacenter <dc>', 'datacenter in SPIFFE IDs (default: dc1)')
  .option('--ca-dir <dir>', 'embedded CA directory (default: <state-dir>/ca)')
  .option('--cert-ttl <duration>', 'workload certificate lifetime, rotated at half (default: 24h)')
  .option('--log-level <level>', 'trace|debug|info|warn|error|fatal|silent (default: info)')
  .option('--tunnel <[host:]port>', 'HBONE listener (default: 0.0.0.0:15008)')
  .option('--admin <[host:]port>', 'admin API (default: 127.0.0.1:15000)')
  .option('--metrics <[host:]port>', 'Prometheus /metrics (default: 0.0.0.0:15020)')
  .option('--ready <[host:]port>', '/healthz/ready (default: 0.0.0.0:15021)')
  .option('--consul <addr>', 'run from the Consul agent at addr (env CONSUL_HTTP_ADDR)')
  .option('--consul-token <token>', 'Consul ACL token (env CONSUL_HTTP_TOKEN; prefer the file)')
  .option('--consul-token-file <file>', 'file with the Consul ACL token (env CONSUL_HTTP_TOKEN_FILE)')
  .option('--default-policy <allow|deny>', 'Consul mode: when no intention matches (default: allow)')
  .option('--connect-timeout <duration>', 'upstream and tunnel connect timeout (default: 5s)')
  .option('--drain-timeout <duration>', 'on SIGTERM, how long open connections may finish (default: 30s)')
  // Limits (docs/limits.md).
  .option('--max-handshakes <n>', 'TLS handshakes in progress on the tunnel at once (default: 256)')
  .option('--max-handshakes-per-source <n>', 'the same, per source IP (default: 32)')
  .option('--handshake-timeout <duration>', 'a tunnel handshake not done by then is cut off (default: 10s)')
  .option(
    '--tunnel-idle-timeout <duration>',
    'an inbound session with no stream this long is closed (default: 10m)',
  )
  .option('--max-connections <n>', 'inbound tunnel connections in all (default: 10000)')
  .option('--max-connections-per-identity <n>', 'inbound tunnel sessions per peer SPIFFE ID (default: 1000)')
  .option(
    '--max-inbound-streams <n>',
    'streams per inbound session, connects in flight included (default: 200)',
  )
  .option('--max-connects-per-session <n>', 'upstream connects in flight per inbound session (default: 100)')
  .option('--max-connects-per-node <n>', 'upstream connects in flight on this node (default: 1000)')
  .option('--stream-reset-rate <n>', 'RST_STREAM per second a peer may send, burst 10x (default: 100)')
  .option('--max-outbound-control <n>', 'PING/SETTINGS answers queued for a peer (default: 1000)')
  .option('--max-header-list-size <bytes>', 'decoded header bytes per header block (default: 16384)')
  .option('--max-header-frames <n>', 'HEADERS + CONTINUATION frames per header block (default: 8)')
  .option('--key-update-rate <n>', 'TLS KeyUpdates per second a peer may send, burst 10x (default: 10)')
  .option('--fd-reserve <n>', 'descriptors kept free below RLIMIT_NOFILE (default: 64)')
  .showHelpAfterError();

async function main(): Promise<void> {
  program.parse();
  const opts = program.opts<ConfigInput & { config?: string }>();
  const { config: configFile, ...rest } = opts;
  const flags: ConfigInput = {};
  for (const [k, v] of Object.entries(rest)) {
    // commander sets registerNode=true by default for --no-register-node; only an explicit flag overrides.
    if (k === 'registerNode' && v === true) continue;
    if (v !== undefined) (flags as Record<string, unknown>)[k] = v;
  }
  const config = loadConfig({ flags, configFile });
  const log = createLogger(config.logLevel);
  if ((initialOldSpaceMb() ?? 0) < 64) {
    log.info(
      { want: NODE_FLAGS.join(' ') },
      'node was started without the flags ambitd is tuned for: expect more garbage collection under load',
    );
  }
  const daemon = await Ambitd.start(config, log);
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
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
