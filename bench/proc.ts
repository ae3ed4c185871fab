// Child processes of the bench (contenders, sink, load generator) and what /proc says about them. Every
// process started here is registered, and killAll() ends each one by its pid, on success, error or signal.

import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { constants, accessSync, createWriteStream, existsSync, readFileSync, readdirSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { sleep } from '../test/helpers/net.js';

export { freePort, sleep, waitForPort } from '../test/helpers/net.js';

const children = new Set<ChildProcess>();
let closing = false;

/** After this, startProcess refuses: the bench is shutting down (signal), and nothing new may start. */
export function refuseNewProcesses(): void {
  closing = true;
}

export interface Spawned {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** Last lines the process wrote to stderr/stdout, for error messages. */
  output(): string;
  /** Resolves with the exit code (or signal) once the process has exited. */
  readonly exited: Promise<string>;
}

/**
 * Spawns a long-running process, keeps the tail of its output (and a copy in `logFile` if given), and
 * registers it for killAll(). Throws at once if it cannot be started.
 */
export function startProcess(
  name: string,
  command: string,
  args: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; logFile?: string; ipc?: boolean } = {},
): Spawned {
  if (closing) throw new Error(`${name}: not started, the bench is stopping`);
  const child = spawn(command, args, {
    env: opts.env ?? process.env,
    stdio: opts.ipc ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'],
  });
  if (child.pid === undefined) throw new Error(`${name}: could not start ${command}`);
  children.add(child);
  let tail = '';
  const log = opts.logFile ? createWriteStream(opts.logFile) : undefined;
  const keep = (chunk: Buffer): void => {
    tail = (tail + chunk.toString()).slice(-4000);
    log?.write(chunk);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<string>((resolve) => {
    child.once('exit', (code, signal) => {
      children.delete(child);
      log?.end();
      resolve(signal ? `signal ${signal}` : `code ${code}`);
    });
    child.once('error', (err) => {
      children.delete(child);
      resolve(`error ${err.message}`);
    });
  });
  return { name, child, pid: child.pid, output: () => tail, exited };
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
export async function stopProcess(p: Spawned, graceMs = 3000): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill('SIGTERM');
  const timer = setTimeout(() => p.child.kill('SIGKILL'), graceMs);
  await p.exited;
  clearTimeout(timer);
}

/** Kills every process this bench started that is still running (by pid, one at a time). */
export async function killAll(): Promise<void> {
  const waits: Promise<unknown>[] = [];
  for (const child of [...children]) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    waits.push(
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          resolve();
        }, 3000);
        child.once('exit', () => {
          clearTimeout(timer);
          resolve();
        });
        child.kill('SIGTERM');
      }),
    );
  }
  await Promise.all(waits);
}

/** Synchronous last resort (process 'exit' handler): SIGKILL whatever is left. */
export function killAllSync(): void {
  for (const child of children) {
    try {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}

/**
 * On SIGINT or SIGTERM: nothing new starts and what runs is killed, so the current step fails fast and the
 * caller unwinds through its finally; a hard exit after 10 s in case something hangs. Every process left
 * at exit is killed too. Returns whether a signal came.
 */
export function stopOnSignals(log: (msg: string) => void): () => boolean {
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = true;
    process.exitCode = 130;
    log(`${sig}: stopping every process the bench started`);
    refuseNewProcesses();
    void killAll();
    setTimeout(() => {
      killAllSync();
      process.exit(130);
    }, 10_000).unref();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', killAllSync);
  return () => interrupted;
}

/** Peak resident set size of a process in bytes (VmHWM, over its whole life), or 0 if it is gone. */
export function peakRssBytes(pid: number): number {
  try {
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** A process and its descendants (from /proc/<pid>/task/<tid>/children), e.g. nginx's master and workers. */
export function processTree(pid: number): number[] {
  const out: number[] = [];
  const todo = [pid];
  // A bench's process trees are small; the bound only guards against a pid loop.
  while (todo.length > 0 && out.length < 256) {
    const p = todo.shift()!;
    out.push(p);
    try {
      const text = readFileSync(`/proc/${p}/task/${p}/children`, 'utf8').trim();
      if (text) todo.push(...text.split(/\s+/).map(Number));
    } catch {
      // gone
    }
  }
  return out;
}

/** Resident set size of a process in bytes (VmRSS), or 0 if it is gone. */
export function rssBytes(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

let clockTicks = 0;
function ticksPerSecond(): number {
  if (clockTicks === 0) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** User + system CPU seconds used so far by a process (all its threads), from /proc/<pid>/stat. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are fixed.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return (utime + stime) / ticksPerSecond();
  } catch {
    return 0;
  }
}

/**
 * CPU seconds used so far by a process's live threads, to the microsecond: the scheduler's
 * se.sum_exec_runtime from /proc/<pid>/task/<tid>/sched (CONFIG_SCHED_DEBUG), where /proc/<pid>/stat counts
 * in clock ticks (10 ms), too coarse for a short run. Falls back to cpuSeconds() where the file is absent.
 * Threads that exited are not counted: compare it over runs that start and end no threads.
 */
export function cpuSecondsFine(pid: number): number {
  if (!existsSync(`/proc/${pid}/sched`)) return cpuSeconds(pid);
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return 0;
  }
  let ms = 0;
  for (const tid of tids) {
    try {
      const sched = readFileSync(`/proc/${pid}/task/${tid}/sched`, 'utf8');
      ms += Number(/^se\.sum_exec_runtime\s*:\s*([\d.]+)/m.exec(sched)?.[1] ?? 0);
    } catch {
      // exited since the listing
    }
  }
  return ms / 1000;
}

export const sumCpuFine = (pids: readonly number[]): number =>
  pids.reduce((s, p) => s + cpuSecondsFine(p), 0);
/** RSS of `pids` and their descendants (a supervisor's workers, nginx's), each process once. */
export const sumRss = (pids: readonly number[]): number =>
  [...new Set(pids.flatMap((p) => processTree(p)))].reduce((s, p) => s + rssBytes(p), 0);
/** A process and every process below it (ambitd's workers under its supervisor), at most `depth` levels. */
export function withDescendants(pid: number, depth = 3): number[] {
  const out = [pid];
  if (depth === 0) return out;
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    let children = '';
    try {
      children = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8');
    } catch {
      // exited since the listing, or a kernel without CONFIG_PROC_CHILDREN: the process alone
    }
    for (const c of children.split(' ').filter(Boolean)) out.push(...withDescendants(Number(c), depth - 1));
  }
  return out;
}

/** CPU of `pids` and their descendants, so that a contender that forks workers is charged for them. */
export const sumCpu = (pids: readonly number[]): number =>
  pids.flatMap((p) => withDescendants(p)).reduce((s, p) => s + cpuSeconds(p), 0);

/**
 * Waits until `pids` together use under `belowCores` of a core over a 100 ms window (a contender still
 * tearing down the connections of the last step), at most `maxMs`; returns how long it waited. Applied to
 * every contender alike before each measured step.
 */
export async function quiesce(pids: readonly number[], maxMs = 5000, belowCores = 0.05): Promise<number> {
  const t0 = Date.now();
  for (let i = 0; i < Math.ceil(maxMs / 100); i++) {
    const c0 = sumCpu(pids);
    await sleep(100);
    if (sumCpu(pids) - c0 < belowCores * 0.1) break;
  }
  return Date.now() - t0;
}

/** Raises this process's open-file limit (children inherit it); returns the limit now in force. */
export function raiseFileLimit(wanted: number): number {
  try {
    execFileSync('prlimit', [`--pid=${process.pid}`, `--nofile=${wanted}:${wanted}`], { stdio: 'ignore' });
  } catch {
    // Not root, or no prlimit: keep what we have and report it.
  }
  try {
    const out = execFileSync('prlimit', [`--pid=${process.pid}`, '--nofile', '--raw', '--noheadings'], {
      encoding: 'utf8',
    });
    // RESOURCE DESCRIPTION SOFT HARD UNITS
    const soft = Number(out.trim().split(/\s+/)[3]);
    return Number.isFinite(soft) ? soft : 0;
  } catch {
    return 0;
  }
}

/** The first line a command prints (stdout or stderr, whatever its exit code) that matches `pattern`. */
export function commandLine(cmd: string, args: readonly string[], pattern: RegExp): string | undefined {
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 5000 });
  return `${r.stdout ?? ''}\n${r.stderr ?? ''}`
    .split('\n')
    .map((l) => l.trim())
    .find((l) => pattern.test(l));
}

/** Absolute path of an executable on PATH (plus the sbin directories), or undefined. */
export function which(name: string): string | undefined {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin', '/usr/local/sbin']);
  for (const d of dirs) {
    if (!d) continue;
    try {
      accessSync(`${d}/${name}`, constants.X_OK);
      return `${d}/${name}`;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Total and idle jiffies of all CPUs, from /proc/stat. */
function cpuTimes(): { total: number; idle: number } {
  const line = (readTrim('/proc/stat') ?? '').split('\n')[0] ?? '';
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const idle = (v[3] ?? 0) + (v[4] ?? 0); // idle + iowait
  return { total: v.reduce((a, b) => a + b, 0), idle };
}

/** How busy the machine is without the bench (percent of all cores, sampled over `ms`). */
export async function backgroundCpuPercent(ms: number): Promise<number> {
  const a = cpuTimes();
  await sleep(ms);
  const b = cpuTimes();
  const total = b.total - a.total;
  return total > 0 ? Math.round((1000 * (total - (b.idle - a.idle))) / total) / 10 : 0;
}

/** Linux PSI: the share of time some task waited for a CPU, over the last 60 s (percent), if available. */
export function cpuPressure60(): number | undefined {
  const m = /^some .*avg60=([\d.]+)/m.exec(readTrim('/proc/pressure/cpu') ?? '');
  return m ? Number(m[1]) : undefined;
}

export interface Machine {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  os: string;
  node: string;
  nodeOpenssl: string;
  openssl: string | undefined;
  tcpTwReuse: string | undefined;
  localPortRange: string | undefined;
  fileLimit: number;
  /** CPU busy (all cores, percent) before the bench started anything: other load skews every figure. */
  backgroundCpuPercent?: number;
  /** CPU pressure (PSI some avg60, percent) at the start and the end of the run. */
  cpuPressureAtStart?: number | undefined;
  cpuPressureAtEnd?: number | undefined;
}

const readTrim = (f: string): string | undefined => {
  try {
    return readFileSync(f, 'utf8').trim();
  } catch {
    return undefined;
  }
};

export function describeMachine(fileLimit: number): Machine {
  const cpuinfo = readTrim('/proc/cpuinfo') ?? '';
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? cpus()[0]?.model ?? 'unknown';
  const osRelease = readTrim('/etc/os-release') ?? '';
  const pretty = /^PRETTY_NAME="?([^"\n]+)"?/m.exec(osRelease)?.[1] ?? 'unknown';
  const debian = readTrim('/etc/debian_version');
  return {
    cpuModel: model,
    cores: cpus().length,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: release(),
    os: debian ? `${pretty} (${debian})` : pretty,
    node: process.version,
    nodeOpenssl: process.versions.openssl ?? 'unknown',
    openssl: commandLine('openssl', ['version'], /OpenSSL/),
    tcpTwReuse: readTrim('/proc/sys/net/ipv4/tcp_tw_reuse'),
    localPortRange: readTrim('/proc/sys/net/ipv4/ip_local_port_range')?.replace(/\s+/, '-'),
    fileLimit,
  };
}

export function gitCommit(cwd: string): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'daemon'], {
      cwd,
      encoding: 'utf8',
    }).trim();
    return dirty ? `${head} (daemon/ modified)` : head;
  } catch {
    return 'unknown';
  }
}
