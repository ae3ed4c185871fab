// `npm run bench:restart`: what a client sees while one host's ambitd is reloaded, re-exec'd or
// restarted. Two hosts as child processes on loopback (each a supervisor with two workers), node-a's
// client reaching node-b's echo service through its upstream listener; a client opens a new connection
// every 5 ms (bounded in count and time), each a 64-byte verified round trip, while one action runs on
// one host. Per case: new connections that failed (target 0), the longest gap between two successful
// completions, and the slowest connection. A restart (SIGTERM, then a new ambitd) is measured alongside,
// as what a reload replaces. Prints a table; --json prints the figures as JSON. --repeat N runs the
// destination reload alone N times (at most 100), with both hosts' warnings when a connection fails, and
// with --timeline (daemons at debug) what each host logged around the longest gap.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  clientWorkload,
  echoServer,
  enroll,
  freePort,
  roundTrip,
  sha256,
  sleep,
  until,
  upstreamTo,
  workload,
} from '../test/helpers/cluster.js';
import { AMBITD } from '../test/helpers/paths.js';

const OPTIONS = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    timeline: { type: 'boolean', default: false },
    repeat: { type: 'string' },
  },
}).values;

const EVERY_MS = 5;
/** Each case's client: at most this many connections, for at most this long. */
const MAX_CONNECTIONS = 1200;
const MAX_MS = 8_000;

interface Host {
  name: string;
  proc: ChildProcess;
  out: string[];
  /** The supervisor in charge now (a re-exec replaces it). */
  pid: number;
  ports: { tunnel: number; admin: number; ready: number };
}

interface Figures {
  case: string;
  connections: number;
  failed: number;
  /** The first few failures' messages. */
  why: string[];
  longestGapMs: number;
  /** When the longest gap began (ms since the epoch, as the daemons' log lines' time). */
  gapStartedAt: number;
  slowestMs: number;
  p99Ms: number;
}

function env(dir: string, name: string, fixed?: Host['ports']): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    AMBIT_NODE_NAME: name,
    AMBIT_STATE_DIR: join(dir, name),
    AMBIT_MESH_FILE: join(dir, 'mesh.yaml'),
    AMBIT_CA_DIR: join(dir, 'ca'),
    AMBIT_TUNNEL: `127.0.0.1:${fixed?.tunnel ?? 0}`,
    AMBIT_ADMIN: `127.0.0.1:${fixed?.admin ?? 0}`,
    AMBIT_METRICS: '127.0.0.1:0',
    AMBIT_READY: `127.0.0.1:${fixed?.ready ?? 0}`,
    AMBIT_MESH_POLL: '200ms',
    AMBIT_WORKERS: '2',
    AMBIT_STOP_GRACE: '0s',
    AMBIT_DRAIN_TIMEOUT: '2s',
    AMBIT_LOG_LEVEL: OPTIONS.timeline ? 'debug' : 'info',
  };
}

async function start(dir: string, name: string, fixed?: Host['ports']): Promise<Host> {
  const proc = spawn(process.execPath, [AMBITD], {
    env: env(dir, name, fixed),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out: string[] = [];
  let rest = '';
  proc.stdout!.on('data', (b: Buffer) => {
    const parts = (rest + b.toString()).split('\n');
    rest = parts.pop() ?? '';
    out.push(...parts.filter(Boolean));
  });
  proc.stderr!.resume();
  const ready = (): { pid: number; ports: Host['ports'] } | undefined => {
    for (const l of out) {
      if (!l.includes('"ambitd ready"') || !l.includes('"workers"')) continue;
      return JSON.parse(l) as { pid: number; ports: Host['ports'] };
    }
    return undefined;
  };
  await until(() => ready() !== undefined || proc.exitCode !== null, 30_000, `${name} ready`);
  if (proc.exitCode !== null) throw new Error(`${name} exited`);
  const r = ready()!;
  return { name, proc, out, pid: r.pid, ports: r.ports };
}

/** New connections every EVERY_MS while `action` runs, then 300 ms more. */
async function measure(label: string, port: number, action: () => Promise<void>): Promise<Figures> {
  const done: number[] = [];
  const latencies: number[] = [];
  let failed = 0;
  const why: string[] = [];
  let stop = false;
  const began = Date.now();
  const runs: Promise<void>[] = [];
  const client = (async () => {
    for (let i = 0; i < MAX_CONNECTIONS && !stop && Date.now() - began < MAX_MS; i++) {
      const payload = randomBytes(64);
      const t0 = performance.now();
      runs.push(
        roundTrip(port, payload).then(
          (r) => {
            if (r.sha256 !== sha256(payload)) {
              failed++;
              if (why.length < 3) why.push(`${r.length} B back`);
            } else {
              done.push(performance.now());
              latencies.push(performance.now() - t0);
            }
          },
          (err: Error) => {
            failed++;
            if (why.length < 3) why.push(err.message);
          },
        ),
      );
      await sleep(EVERY_MS);
    }
  })();
  await sleep(300);
  await action();
  await sleep(300);
  stop = true;
  await client;
  await Promise.all(runs);
  done.sort((a, b) => a - b);
  let gap = 0;
  let gapAt = 0;
  for (let i = 1; i < done.length; i++) {
    if (done[i]! - done[i - 1]! > gap) {
      gap = done[i]! - done[i - 1]!;
      gapAt = done[i - 1]!;
    }
  }
  latencies.sort((a, b) => a - b);
  return {
    case: label,
    connections: runs.length,
    failed,
    why,
    longestGapMs: Math.round(gap * 10) / 10,
    gapStartedAt: Math.round(performance.timeOrigin + gapAt),
    slowestMs: Math.round((latencies.at(-1) ?? 0) * 10) / 10,
    p99Ms: Math.round((latencies[Math.floor(latencies.length * 0.99)] ?? 0) * 10) / 10,
  };
}

function logged(h: Host, msg: string): number {
  return h.out.filter((l) => l.includes(`"msg":"${msg}"`)).length;
}

async function main(): Promise<void> {
  const { json, timeline, repeat: repeatArg } = OPTIONS;
  const dir = await mkdtemp(join(tmpdir(), 'ambit-bench-restart-'));
  const echo = await echoServer();
  const hosts: Host[] = [];
  try {
    const a = await start(dir, 'node-a');
    hosts.push(a);
    let b = await start(dir, 'node-b');
    hosts.push(b);
    const port = await freePort();
    await enroll(
      join(dir, 'mesh.yaml'),
      clientWorkload(9, upstreamTo('echo', port)),
      workload({ name: 'echo-1', service: 'echo', node: 'node-b', ports: [echo.port] }),
    );
    await until(
      async () => (await roundTrip(port, Buffer.from('probe')).catch(() => ({ length: 0 }))).length === 5,
      15_000,
      'the echo service through the tunnel',
    );
    const results: Figures[] = [];
    const reload = async (h: Host): Promise<void> => {
      const before = logged(h, 'reload: new workers accept; the old ones drain');
      process.kill(h.pid, 'SIGHUP');
      await until(
        () => logged(h, 'reload: new workers accept; the old ones drain') > before,
        60_000,
        'reload',
      );
    };
    const reexec = async (h: Host): Promise<void> => {
      const from = h.pid;
      process.kill(from, 'SIGUSR2');
      let next: number | undefined;
      await until(
        () => {
          const line = h.out.find(
            (l) => l.includes(`"tookOverFrom":${from}`) && l.includes('"ambitd ready"'),
          );
          next = line ? (JSON.parse(line) as { pid: number }).pid : undefined;
          return next !== undefined;
        },
        60_000,
        're-exec',
      );
      h.pid = next!;
    };
    const repeat = Number(repeatArg ?? 0);
    if (repeat > 0) {
      // The destination reload alone, again and again: a rare failure, with both hosts' warnings at the
      // time, and (--timeline) what each host logged around the longest gap.
      for (let n = 0; n < Math.min(repeat, 100); n++) {
        const mark = [a.out.length, b.out.length] as const;
        const r = await measure('reload (SIGHUP) of the destination host', port, () => reload(b));
        console.log(
          `#${n}: ${r.connections} connections, ${r.failed} failed, longest gap ${r.longestGapMs} ms ${r.why.join('; ')}`,
        );
        for (const [h, from] of [
          [a, mark[0]],
          [b, mark[1]],
        ] as const) {
          for (const l of h.out.slice(from)) {
            const j = JSON.parse(l) as { time?: string; msg?: string; level?: number; worker?: number };
            const t = Date.parse(String(j.time)) - r.gapStartedAt;
            if ((r.failed > 0 && (j.level ?? 0) >= 40) || (timeline && t > -60 && t < r.longestGapMs + 10))
              console.log(`  ${h.name} ${t >= 0 ? '+' : ''}${t} ms ${j.worker ?? 'supervisor'}: ${j.msg}`);
          }
        }
      }
      return;
    }
    results.push(await measure('reload (SIGHUP) of the destination host', port, () => reload(b)));
    results.push(await measure('reload (SIGHUP) of the source host', port, () => reload(a)));
    results.push(await measure('re-exec (SIGUSR2) of the destination host', port, () => reexec(b)));
    results.push(await measure('re-exec (SIGUSR2) of the source host', port, () => reexec(a)));
    // A restart, as before reloads: the old ambitd stops (drain 2 s), then a new one starts on the same ports.
    results.push(
      await measure('restart (SIGTERM, then start) of the destination host', port, async () => {
        const ports = b.ports;
        process.kill(b.pid, 'SIGTERM');
        await until(() => logged(b, 'stopped') > 0, 30_000, 'stopped');
        await sleep(200);
        b = await start(dir, 'node-b', ports);
        hosts.push(b);
      }),
    );
    if (json) {
      console.log(JSON.stringify(results, null, 2));
      return;
    }
    console.log(
      `restart bench: a new connection every ${EVERY_MS} ms, each a 64 B round trip; two workers a host\n`,
    );
    console.log('| case | connections | failed | longest gap (ms) | slowest (ms) | p99 (ms) |');
    console.log('| --- | --- | --- | --- | --- | --- |');
    for (const r of results) {
      console.log(
        `| ${r.case} | ${r.connections} | ${r.failed} | ${r.longestGapMs} | ${r.slowestMs} | ${r.p99Ms} |`,
      );
    }
  } finally {
    for (const h of hosts) {
      for (const pid of [h.proc.pid, h.pid]) {
        try {
          if (pid) process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
    echo.server.close();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  console.error(err.stack ?? err.message);
  process.exit(1);
});
