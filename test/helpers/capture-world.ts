// Two hosts running ambitd with transparent capture, as root: host namespaces A and B joined by a veth pair
// (the only link between them), a dual-stack pod namespace behind each, routed and forwarding. The capture
// system tests build on it; what each one serves, enrolls and asserts stays in the test.
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { Netns, output, stop, waitForOutput, whyNotRunnable } from './netns.js';
import { AMBITD, CLI, ROOT } from './paths.js';

/** Host A's and host B's addresses on the link between them (each is its node's advertised address). */
export const HA = '198.18.0.1';
export const HB = '198.18.0.2';
export const HA6 = '2001:2:0:10::1';
export const HB6 = '2001:2:0:10::2';
/** Pod A's and pod B's addresses: the workloads are dual-stack. */
export const PA = '198.18.1.2';
export const PB = '198.18.2.2';
export const PA6 = '2001:2:0:1::2';
export const PB6 = '2001:2:0:2::2';

export type Node = 'node-a' | 'node-b';

const ADDON = join(ROOT, 'native', 'build', 'Release', 'ambit_native.node');
/** What the world itself runs: namespaces, the snapshots, the CLI's capture rules, the metrics fetch. */
const TOOLS = ['ip', 'iptables', 'iptables-save', 'ip6tables-save', 'curl'];

/** Why a capture world cannot be built here (with `tools` on top of its own), or undefined when it can. */
export async function whyNotReady(tools: readonly string[]): Promise<string | undefined> {
  return (
    whyNotRunnable([...new Set([...TOOLS, ...tools])]) ??
    readFile(ADDON).then(
      () => undefined,
      () => `the native binding is not built (${ADDON}); run npm ci`,
    )
  );
}

/** A pod beyond A's and B's: IPv4 only, 198.18.<subnet>.2/24 behind interface `v<short>` of its host. */
export interface ExtraPod {
  short: string;
  host: 'a' | 'b';
  subnet: number;
}

export interface WorldOptions {
  /** Namespaces are named `<prefix>-<pid>-<short>`, the temporary folder `<prefix>-XXXXXX`. */
  prefix: string;
  /** Pods beyond A's and B's, such as an unenrolled intruder. */
  pods?: readonly ExtraPod[];
  /** Daemon environment on top of the common one. */
  env?: NodeJS.ProcessEnv;
  /** What `snapshot` holds: iptables and ip6tables (the default), or those and the ip rules and routes too. */
  snapshot?: 'iptables' | 'routing';
  /** The ambitd to run (an installed copy of the build, say); the repository's build by default. */
  ambitd?: string;
}

export interface World {
  ns: Netns;
  dir: string;
  meshFile: string;
  ha: string;
  hb: string;
  pa: string;
  pb: string;
  /** The extra pods' namespaces, by short name. */
  pods: Record<string, string>;
  env: (node: Node) => NodeJS.ProcessEnv;
  /** Each host's snapshot before anything was enrolled or installed. */
  before: Record<string, string>;
  /** Each node's daemon output so far (of its latest start). */
  logs: Record<string, () => string>;
  daemons: Record<string, ChildProcess>;
  /** A host's packet filter (and routing policy, by the option), without timestamps and counters. */
  snapshot: (host: string) => string;
  /** The CLI in a host, as that node, on the shared mesh file; throws on a non-zero exit. */
  cli: (host: string, node: Node, args: readonly string[]) => string;
  /** A host's ambitd metrics. */
  metrics: (host: string) => string;
  /** ambitd in a host, its output kept in `logs`; resolves once it is ready. */
  startDaemon: (host: string, node: Node) => Promise<void>;
  /** ambitd in host A, then in host B. */
  startDaemons: () => Promise<void>;
  stopDaemon: (node: Node) => Promise<void>;
  /** Removes the capture rules, the namespaces and the folder. */
  close: () => Promise<void>;
}

const IPTABLES = [['iptables-save'], ['ip6tables-save']];
const ROUTING = [
  ['ip', '-4', 'rule', 'show'],
  ['ip', '-6', 'rule', 'show'],
  ['ip', '-4', 'route', 'show', 'table', 'all'],
  ['ip', '-6', 'route', 'show', 'table', 'all'],
];

function snapshot(ns: Netns, host: string, extent: 'iptables' | 'routing'): string {
  const clean = (cmd: string[]): string =>
    ns
      .run(host, cmd)
      .stdout.split('\n')
      // Comments carry a timestamp. Link-local routes come up when they please; nothing of Ambit's is among them.
      .filter((l) => !l.startsWith('#') && !(cmd[0] === 'ip' && /\bfe80:/.test(l)))
      .map((l) => l.replace(/\[\d+:\d+\]/g, '[0:0]'))
      .join('\n');
  return [...IPTABLES, ...(extent === 'routing' ? ROUTING : [])].map(clean).join('\n---\n');
}

function checkPods(pods: readonly ExtraPod[]): void {
  const seen = new Set(['ha', 'hb', 'pa', 'pb']);
  const subnets = new Set<number>();
  for (const p of pods) {
    if (!/^[a-z0-9]{1,8}$/.test(p.short) || seen.has(p.short))
      throw new Error(`pods: short name "${p.short}" must be 1-8 of [a-z0-9] and unused`);
    if (!Number.isInteger(p.subnet) || p.subnet < 3 || p.subnet > 255 || subnets.has(p.subnet))
      throw new Error(`pods: subnet ${p.subnet} of "${p.short}" must be a free integer from 3 to 255`);
    seen.add(p.short);
    subnets.add(p.subnet);
  }
}

/** The hosts, their link, the pods behind them and the routes between, all forwarding. */
function wire(ns: Netns, extra: readonly ExtraPod[]): Pick<World, 'ha' | 'hb' | 'pa' | 'pb' | 'pods'> {
  const ha = ns.add('ha');
  const hb = ns.add('hb');
  ns.link(ha, 'link0', `${HA}/24`, hb, 'link0', `${HB}/24`);
  ns.link6(ha, 'link0', `${HA6}/64`, hb, 'link0', `${HB6}/64`);
  const pod = (host: 'a' | 'b', short: string, subnet: number, v6: boolean): string => {
    const [near, far, via, via6] = host === 'a' ? [ha, hb, HA, HA6] : [hb, ha, HB, HB6];
    const name = ns.add(short);
    ns.link(near, `v${short}`, `198.18.${subnet}.1/24`, name, 'eth0', `198.18.${subnet}.2/24`);
    ns.route(name, 'default', `198.18.${subnet}.1`);
    ns.route(far, `198.18.${subnet}.0/24`, via);
    if (v6) {
      ns.link6(near, `v${short}`, `2001:2:0:${subnet}::1/64`, name, 'eth0', `2001:2:0:${subnet}::2/64`);
      ns.route(name, 'default', `2001:2:0:${subnet}::1`);
      ns.route(far, `2001:2:0:${subnet}::/64`, via6);
    }
    return name;
  };
  const pa = pod('a', 'pa', 1, true);
  const pb = pod('b', 'pb', 2, true);
  const pods = Object.fromEntries(extra.map((p) => [p.short, pod(p.host, p.short, p.subnet, false)]));
  ns.forward(ha);
  ns.forward(hb);
  return { ha, hb, pa, pb, pods };
}

/**
 * Builds the world, no daemon running yet, then `setup` (servers, enrollments, daemons: the test's own),
 * and returns both together. When either fails, the namespaces and the folder are removed again.
 */
export async function captureWorld<T extends object>(
  options: WorldOptions,
  setup: (w: World) => Promise<T>,
): Promise<World & T> {
  checkPods(options.pods ?? []);
  const ns = new Netns(options.prefix);
  const dir = await mkdtemp(join(tmpdir(), `${options.prefix}-`));
  const meshFile = join(dir, 'mesh.yaml');
  const discard = async (): Promise<void> => {
    ns.cleanup();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const hosts = wire(ns, options.pods ?? []);
    await writeFile(meshFile, '');
    const extent = options.snapshot ?? 'iptables';
    const env = (node: Node): NodeJS.ProcessEnv => ({
      PATH: process.env.PATH,
      AMBIT_NODE_NAME: node,
      AMBIT_STATE_DIR: join(dir, node),
      AMBIT_MESH_FILE: meshFile,
      AMBIT_CA_DIR: join(dir, 'ca'),
      // No AMBIT_TUNNEL: the default bind, dual-stack here. The capture listeners take both families anyway.
      AMBIT_ADVERTISE_ADDRESS: node === 'node-a' ? HA : HB,
      AMBIT_CAPTURE: 'true',
      AMBIT_MESH_POLL: '200ms',
      AMBIT_CERT_TTL: '1h',
      ...options.env,
    });
    const logs: Record<string, () => string> = {};
    const daemons: Record<string, ChildProcess> = {};
    const startDaemon = async (host: string, node: Node): Promise<void> => {
      const d = ns.spawn(host, [process.execPath, options.ambitd ?? AMBITD], env(node));
      logs[node] = output(d);
      daemons[node] = d;
      await waitForOutput(d, 'ambitd ready', 15_000);
    };
    const world: World = {
      ns,
      dir,
      meshFile,
      ...hosts,
      env,
      before: {
        [hosts.ha]: snapshot(ns, hosts.ha, extent),
        [hosts.hb]: snapshot(ns, hosts.hb, extent),
      },
      logs,
      daemons,
      snapshot: (host) => snapshot(ns, host, extent),
      cli: (host, node, args) =>
        ns.exec(host, [process.execPath, CLI, '--mesh', meshFile, ...args], { env: env(node) }),
      metrics: (host) => ns.exec(host, ['curl', '-sS', '--max-time', '5', 'http://127.0.0.1:15020/metrics']),
      startDaemon,
      async startDaemons() {
        // One at a time: the first creates the shared CA, the second loads it.
        await startDaemon(hosts.ha, 'node-a');
        await startDaemon(hosts.hb, 'node-b');
      },
      async stopDaemon(node) {
        const d = daemons[node];
        if (d) await stop(d);
      },
      async close() {
        for (const host of [hosts.ha, hosts.hb]) ns.run(host, [process.execPath, CLI, 'capture', 'remove']);
        await discard();
      },
    };
    return { ...world, ...(await setup(world)) };
  } catch (err) {
    await discard();
    throw err;
  }
}

/**
 * Registers hooks that build the world before the file's tests and close it after them, even when one
 * fails. The getter returns it; it throws when the build did not complete.
 */
export function worldHooks<W extends World>(build: () => Promise<W>): () => W {
  let w: W | undefined;
  test.before(async () => {
    w = await build();
  });
  test.after.always(async () => {
    await w?.close();
  });
  return () => {
    if (!w) throw new Error('the capture world was not built');
    return w;
  };
}

/** `capture remove` on each host: it says so, the host's snapshot is as before, and show lists nothing. */
export function removeRestores(t: ExecutionContext, w: World, what: string): void {
  for (const [host, node] of [
    [w.ha, 'node-a'],
    [w.hb, 'node-b'],
  ] as const) {
    t.regex(w.cli(host, node, ['capture', 'remove']), /capture removed/);
    t.is(w.snapshot(host), w.before[host], `${what} on ${node} is what it was`);
    t.regex(w.cli(host, node, ['capture', 'show']), /no capture rules installed/);
  }
}
