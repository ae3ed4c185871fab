// Network namespaces as test hosts: created with unique names, joined by veth pairs, given addresses from
// 198.18.0.0/15 and 2001:2::/48 only, and removed again even when a test fails (cleanup is idempotent and also runs on exit).
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { sleep } from './net.js';

const SEARCH = ['/usr/sbin', '/sbin', '/usr/bin', '/bin', '/usr/local/bin'];
export const which = (name: string): string | undefined =>
  SEARCH.map((d) => `${d}/${name}`).find((p) => existsSync(p));

/** Why the namespace tests cannot run here, or undefined when they can. */
export function whyNotRunnable(tools: readonly string[]): string | undefined {
  if (process.platform !== 'linux') return `needs Linux network namespaces (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return 'needs root (network namespaces and iptables); CI runs it as root';
  const missing = tools.filter((t) => !which(t));
  if (missing.length)
    return `missing ${missing.join(', ')} (apt-get install -y iptables iproute2 tcpdump curl)`;
  return undefined;
}

export function sh(
  cmd: string,
  args: readonly string[],
  opts: { input?: string; env?: NodeJS.ProcessEnv } = {},
): string {
  return execFileSync(cmd, [...args], {
    encoding: 'utf8',
    timeout: 20_000,
    input: opts.input,
    env: opts.env ?? process.env,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
}

export class Netns {
  readonly prefix: string;
  readonly names: string[] = [];
  readonly children: ChildProcess[] = [];
  #onExit = (): void => this.cleanup();

  constructor(tag = 'ambit') {
    this.prefix = `${tag}-${process.pid}`;
    process.once('exit', this.#onExit);
  }

  /** A new namespace `<tag>-<pid>-<short>` with loopback up. */
  add(short: string): string {
    const name = `${this.prefix}-${short}`;
    sh('ip', ['netns', 'add', name]);
    this.names.push(name);
    sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    return name;
  }

  /** A veth pair between two namespaces, each end with an address (CIDR) from 198.18.0.0/15. */
  link(a: string, aIf: string, aAddr: string, b: string, bIf: string, bAddr: string): void {
    for (const addr of [aAddr, bAddr])
      if (!/^198\.1[89]\.\d+\.\d+\/\d+$/.test(addr)) throw new Error(`${addr} is outside 198.18.0.0/15`);
    sh('ip', ['-n', a, 'link', 'add', aIf, 'type', 'veth', 'peer', 'name', bIf, 'netns', b]);
    sh('ip', ['-n', a, 'addr', 'add', aAddr, 'dev', aIf]);
    sh('ip', ['-n', b, 'addr', 'add', bAddr, 'dev', bIf]);
    sh('ip', ['-n', a, 'link', 'set', aIf, 'up']);
    sh('ip', ['-n', b, 'link', 'set', bIf, 'up']);
  }

  /**
   * IPv6 addresses (CIDR, from 2001:2::/48, spelled `2001:2:0:<subnet>::<host>/<len>`) on both ends of a
   * link made by `link`. `nodad`: usable at once, not tentative for the seconds duplicate detection takes.
   */
  link6(a: string, aIf: string, aAddr: string, b: string, bIf: string, bAddr: string): void {
    for (const addr of [aAddr, bAddr])
      if (!/^2001:2:0:[0-9a-f]{1,4}::[0-9a-f]{1,4}\/\d+$/.test(addr))
        throw new Error(`${addr} is outside 2001:2::/48`);
    sh('ip', ['-n', a, '-6', 'addr', 'add', aAddr, 'dev', aIf, 'nodad']);
    sh('ip', ['-n', b, '-6', 'addr', 'add', bAddr, 'dev', bIf, 'nodad']);
  }

  /** A route; IPv6 when the gateway is (`default` alone does not say which family). */
  route(ns: string, dest: string, via: string): void {
    sh('ip', ['-n', ns, ...(via.includes(':') ? ['-6'] : []), 'route', 'add', dest, 'via', via]);
  }

  forward(ns: string): void {
    sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.all.forwarding=1']);
  }

  /** Runs a command inside a namespace and returns its stdout (throws on a non-zero exit). */
  exec(ns: string, args: readonly string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): string {
    return sh('ip', ['netns', 'exec', ns, ...args], opts);
  }

  /** Like exec, but resolves with the exit code and output instead of throwing. */
  run(
    ns: string,
    args: readonly string[],
    env?: NodeJS.ProcessEnv,
  ): { code: number; stdout: string; stderr: string } {
    try {
      return { code: 0, stdout: this.exec(ns, args, { env }), stderr: '' };
    } catch (err) {
      const e = err as { status?: number; stdout?: string; stderr?: string };
      return { code: e.status ?? 1, stdout: String(e.stdout ?? ''), stderr: String(e.stderr ?? '') };
    }
  }

  /** A long-running process inside a namespace; killed at cleanup. */
  spawn(ns: string, args: readonly string[], env?: NodeJS.ProcessEnv): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', ns, ...args], {
      env: env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.children.push(child);
    return child;
  }

  /** Kills what it started (by pid) and deletes its namespaces; safe to call more than once. */
  cleanup(): void {
    for (const c of this.children) {
      if (c.exitCode === null && c.signalCode === null && c.pid !== undefined) {
        try {
          process.kill(c.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    for (const name of this.names.splice(0).reverse()) {
      try {
        // Kill anything still inside (by the pids the kernel reports for this namespace), then delete it.
        const pids = sh('ip', ['netns', 'pids', name]).split(/\s+/).filter(Boolean);
        for (const pid of pids) {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {
            // already gone
          }
        }
      } catch {
        // namespace already gone
      }
      try {
        sh('ip', ['netns', 'del', name]);
      } catch {
        // already gone
      }
    }
    process.removeListener('exit', this.#onExit);
  }
}

/** Resolves when `text` appears in a child's output (bounded in time). */
export function waitForOutput(child: ChildProcess, text: string, ms: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => {
      cleanup();
      reject(
        new Error(`timed out after ${ms} ms waiting for "${text}"; output so far:\n${seen.slice(-2000)}`),
      );
    }, ms);
    const onData = (b: Buffer): void => {
      seen += b.toString();
      if (seen.includes(text)) {
        cleanup();
        resolve(seen);
      }
    };
    const onExit = (code: number | null): void => {
      cleanup();
      reject(new Error(`exited (${code}) before "${text}"; output:\n${seen.slice(-2000)}`));
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.stderr?.off('data', onData);
      child.off('exit', onExit);
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', onExit);
  });
}

/** What a child has written to stdout and stderr so far, from the moment this is called. */
export function output(child: ChildProcess): () => string {
  let out = '';
  const keep = (b: Buffer): void => {
    out += b.toString();
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  return () => out;
}

/** SIGTERM to a child, resolving once it has exited (at once if it already has). */
export async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

/** Retries `f` until it returns true (bounded: at most `tries` times, `gap` ms apart). */
export async function eventually(
  f: () => boolean | Promise<boolean>,
  tries = 40,
  gap = 250,
): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    if (await f()) return true;
    await sleep(gap);
  }
  return false;
}
