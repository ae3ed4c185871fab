// `ambit capture install|remove|show`: the iptables rules that send enrolled workloads' TCP to ambitd
// (15001 outbound, 15006 inbound plaintext). Run as root, on the host, before or after ambitd starts.
import { join } from 'node:path';
import { type Command, Option } from 'commander';
import {
  type Backend,
  detectBackend,
  installCapture,
  removeCapture,
  setGate,
  showCapture,
} from '../lib/capture/iptables.js';
import { type CaptureSpec, failModeOf } from '../lib/capture/rules.js';
import { type DaemonConfig, loadConfig } from '../lib/config.js';
import { CaptureError } from '../lib/errors.js';
import { readMeshFile } from '../lib/mesh/file/parse.js';
import type { Workload } from '../lib/mesh/model.js';

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

interface CaptureOpts {
  config?: string;
  node?: string;
  backend?: 'auto' | Backend;
}

interface Globals {
  stateDir: string;
  mesh: string | undefined;
}

function settings(g: Globals, o: CaptureOpts): { config: DaemonConfig; meshFile: string; node: string } {
  const config = loadConfig({ configFile: o.config, flags: { stateDir: g.stateDir } });
  return {
    config,
    meshFile: g.mesh ?? join(g.stateDir, 'mesh.yaml'),
    node: o.node ?? config.nodeName,
  };
}

export function captureSpec(config: DaemonConfig, workloads: readonly Workload[]): CaptureSpec {
  return {
    workloads,
    mark: config.capture.mark,
    outboundPort: config.outbound.port,
    inboundPort: config.inboundPlaintext.port,
    tunnelPort: config.tunnel.port,
    daemonPorts: [config.admin.port, config.metrics.port, config.ready.port].filter((p) => p > 0),
    excludePorts: config.capture.excludePorts,
    excludeCidrs: config.capture.excludeCidrs,
    daemonUid: config.capture.daemonUid,
  };
}

/** Whether ambitd answers on its readiness port on this host (1 s at most). */
async function daemonAnswers(port: number): Promise<boolean> {
  try {
    await fetch(`http://127.0.0.1:${port}/healthz/ready`, { signal: AbortSignal.timeout(1000) });
    return true;
  } catch {
    return false;
  }
}

function needRoot(what: string): void {
  if (process.platform !== 'linux')
    throw new CaptureError(
      `capture ${what}: transparent capture needs Linux iptables (this is ${process.platform})`,
    );
  if (process.getuid?.() !== 0)
    throw new CaptureError(`capture ${what}: must run as root (iptables needs CAP_NET_ADMIN)`);
}

/** Installs the rules for the workloads of `node` in the mesh file; returns a one-line summary. */
export async function installFor(g: Globals, o: CaptureOpts): Promise<string> {
  const { config, meshFile, node } = settings(g, o);
  const mesh = await readMeshFile(meshFile);
  const local = mesh.workloads.filter((w) => w.node === node);
  const backend = await detectBackend(o.backend ?? config.capture.backend);
  const spec = captureSpec(config, local);
  const result = await installCapture(backend, spec);
  // ambitd opens the fail-open gate when it starts; if it is already running, open it now.
  const up = await daemonAnswers(config.ready.port);
  // Not answering: close the gate, in case ambitd died without closing it (fail-open workloads then pass).
  await setGate(backend, spec, up);
  const byUid = local.filter((w) => w.uid !== undefined).length;
  const open = local.filter((w) => failModeOf(w) === 'open').length;
  return (
    `capture installed (iptables ${backend}, ${result.map((r) => `IPv${r.family}`).join(' and ')}) for ` +
    `${local.length} workload(s) on node ${node} (${local.length - byUid} by address, ${byUid} by uid; ` +
    `${open} fail open): outbound -> ${config.outbound.port}, inbound plaintext -> ${config.inboundPlaintext.port}, ` +
    `mark 0x${config.capture.mark.toString(16)}; ambitd ${up ? 'running' : 'not running'}\n`
  );
}

/** After an enrollment on this host: brings installed capture rules up to date (no-op when none are). */
export async function refreshCaptureAfterEnroll(g: Globals, node: string): Promise<string | undefined> {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return undefined;
  let backend: Backend;
  try {
    const { config } = settings(g, {});
    if (config.nodeName !== node) return undefined;
    backend = await detectBackend(config.capture.backend);
    const shown = await showCapture(backend);
    if (!shown.some((s) => s.lines.length > 0)) return undefined;
  } catch {
    return undefined;
  }
  return installFor(g, { node, backend });
}

export function registerCapture(program: Command, io: Io): void {
  const globals = (cmd: Command): Globals => cmd.optsWithGlobals<Globals>();
  const capture = program
    .command('capture')
    .description(
      'Transparent capture: iptables rules (chains AMBIT_*) that send the TCP of the workloads enrolled on\n' +
        'this node to ambitd (outbound to 15001, plaintext inbound to 15006). Needs root.',
    );
  const common = (c: Command): Command =>
    c
      .option('--config <file>', "ambitd's config file (ports, mark, exclusions); env AMBIT_CONFIG")
      .addOption(
        new Option('--backend <backend>', 'iptables backend [default: auto-detected]').choices([
          'auto',
          'nft',
          'legacy',
        ]),
      );
  common(capture.command('install'))
    .description(
      "Install (or bring up to date) the rules for this node's workloads, from the mesh file. Idempotent.",
    )
    .option('--node <name>', 'node whose workloads to capture [default: ambitd node name, the host name]')
    .action(async (o: CaptureOpts, cmd: Command) => {
      needRoot('install');
      io.out(await installFor(globals(cmd), o));
    });
  common(capture.command('remove'))
    .description('Remove every AMBIT_* chain and every jump to one (IPv4 and IPv6).')
    .action(async (o: CaptureOpts) => {
      needRoot('remove');
      const backend = await detectBackend(o.backend ?? loadConfig({}).capture.backend);
      const n = await removeCapture(backend);
      io.out(
        n
          ? `capture removed (iptables ${backend}): ${n} chain(s) and jump(s)\n`
          : 'no capture rules installed\n',
      );
    });
  common(capture.command('show'))
    .description('Print the capture rules installed now (the AMBIT_* part of iptables-save -t nat).')
    .option('--json', 'print {backend, families: [{family, lines}]} as JSON')
    .action(async (o: CaptureOpts & { json?: boolean }) => {
      needRoot('show');
      const backend = await detectBackend(o.backend ?? loadConfig({}).capture.backend);
      const shown = await showCapture(backend);
      if (o.json) return io.out(`${JSON.stringify({ backend, families: shown }, null, 2)}\n`);
      if (!shown.some((s) => s.lines.length))
        return io.out(`no capture rules installed (iptables ${backend})\n`);
      for (const s of shown) {
        io.out(`# IPv${s.family} (iptables ${backend}, table nat)\n`);
        io.out(s.lines.length ? `${s.lines.join('\n')}\n` : '# none\n');
      }
    });
}
