// What `ambit capture` and `ambit enroll` do to the iptables rules that send enrolled workloads' TCP to
// ambitd (15001 outbound, 15006 inbound plaintext): as root, on the host, before or after ambitd starts.
import {
  type Backend,
  detectBackend,
  installCapture,
  setGate,
  showCapture,
} from '../lib/capture/iptables.js';
import { installReplyRouting, removeReplyRouting } from '../lib/capture/reply-routing.js';
import { failModeOf } from '../lib/capture/rules.js';
import { captureSpec, replySpec } from '../lib/capture/spec.js';
import { checkersText, resolveUsers } from '../lib/capture/users.js';
import { type DaemonConfig, loadConfig } from '../lib/config.js';
import { CaptureError } from '../lib/errors.js';
import { type GlobalOpts, readMesh } from './context.js';

export interface CaptureOpts {
  config?: string;
  node?: string;
  backend?: 'auto' | Backend;
}

type Globals = Pick<GlobalOpts, 'stateDir' | 'mesh'>;

function settings(g: Globals, o: CaptureOpts): { config: DaemonConfig; node: string } {
  const config = daemonSettings(g, o.config);
  return { config, node: o.node ?? config.nodeName };
}

/** ambitd's configuration as the daemon on this host reads it: --config (else AMBIT_CONFIG), the state dir. */
export const daemonSettings = (g: Pick<GlobalOpts, 'stateDir'>, configFile?: string): DaemonConfig =>
  loadConfig({ configFile, flags: { stateDir: g.stateDir } });

/** Whether ambitd answers on its readiness port on this host (1 s at most). */
async function daemonAnswers(port: number): Promise<boolean> {
  try {
    await fetch(`http://127.0.0.1:${port}/healthz/ready`, { signal: AbortSignal.timeout(1000) });
    return true;
  } catch {
    return false;
  }
}

export function needRoot(what: string): void {
  if (process.platform !== 'linux')
    throw new CaptureError(
      `capture ${what}: transparent capture needs Linux iptables (this is ${process.platform})`,
    );
  if (process.getuid?.() !== 0)
    throw new CaptureError(`capture ${what}: must run as root (iptables needs CAP_NET_ADMIN)`);
}

/** Installs the rules for the workloads of `node` in the mesh file; returns a one-line summary. */
export async function installFor(g: Globals, o: CaptureOpts): Promise<string> {
  const { config, node } = settings(g, o);
  const mesh = await readMesh(g);
  const local = mesh.workloads.filter((w) => w.node === node);
  const backend = await detectBackend(o.backend ?? config.capture.backend);
  const checkers = await resolveUsers(config.capture.checkUsers);
  const nodeAddress = mesh.nodes.find((n) => n.name === node)?.address;
  const spec = captureSpec(config, local, { nodeAddress, checkUids: checkers.uids });
  const result = await installCapture(backend, spec);
  // The original source address: installed with the rest, or taken away when the setting is off.
  const replies = replySpec(config);
  if (replies) await installReplyRouting(backend, replies);
  else await removeReplyRouting(backend);
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
    `mark 0x${config.capture.mark.toString(16)}; health checks by ${checkersText(checkers)} not captured; ` +
    (replies
      ? `original source: replies marked 0x${replies.replyMark.toString(16)}, table ${replies.table}; `
      : 'original source off; ') +
    `ambitd ${up ? 'running' : 'not running'}\n`
  );
}

/** After an enrollment on this host: brings installed capture rules up to date (no-op when none are). */
export async function refreshCaptureAfterEnroll(
  g: Globals,
  node: string,
  configFile?: string,
): Promise<string | undefined> {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return undefined;
  let backend: Backend;
  try {
    const { config } = settings(g, { config: configFile });
    if (config.nodeName !== node) return undefined;
    backend = await detectBackend(config.capture.backend);
    const shown = await showCapture(backend);
    if (!shown.some((s) => s.lines.length > 0)) return undefined;
  } catch {
    return undefined;
  }
  return installFor(g, { node, backend, config: configFile });
}

/** --backend, else the one ambitd's config (--config, else AMBIT_CONFIG) names; auto-detected by default. */
export const backendFor = (g: Pick<GlobalOpts, 'stateDir'>, o: CaptureOpts): Promise<Backend> =>
  detectBackend(o.backend ?? daemonSettings(g, o.config).capture.backend);
