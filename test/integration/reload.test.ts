// ambitd with workers, as a user runs it: real daemons as child processes on loopback, a supervisor each
// with two workers. A reload (SIGHUP) starts new workers before the old ones drain: nothing is refused,
// nothing open is cut, and the old workers leave once what they carry has ended (or their time is up).
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { Agent, type IncomingMessage, createServer, get, request } from 'node:http';
import { type Socket, connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import WebSocket from 'ws';
import { run as runCli } from '../../agent-cli/cli.js';
import { editMeshFile } from '../../lib/mesh/edit.js';
import { readMeshFile } from '../../lib/mesh/file/parse.js';
import type { DaemonStatus } from '../../lib/status.js';
import type { ConnectionRow, TapEvent } from '../../lib/tap.js';
import {
  clientWorkload,
  echoServer,
  enroll,
  freePort,
  metricSum,
  roundTrip,
  sha256,
  sleep,
  until,
  upstreamTo,
  workload,
} from '../helpers/cluster.js';
import type { LogLine } from '../helpers/logs.js';
import { AMBITD } from '../helpers/paths.js';

interface Daemon {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly lines: LogLine[];
  stderr(): string;
  ports: { admin: number; metrics: number; ready: number; tunnel: number };
  /** The log lines with this message. */
  logged(msg: string): LogLine[];
  admin<T>(path: string): Promise<T>;
  readonly token: string;
}

interface World {
  dir: string;
  meshFile: string;
  a: Daemon;
  b: Daemon;
  /** node-a's upstream listener to the echo service on node-b. */
  port: number;
  close(): Promise<void>;
}

async function spawnDaemon(dir: string, name: string, env: Record<string, string>): Promise<Daemon> {
  const proc = spawn(process.execPath, [AMBITD], {
    env: {
      PATH: process.env.PATH,
      AMBIT_NODE_NAME: name,
      AMBIT_STATE_DIR: join(dir, name),
      AMBIT_MESH_FILE: join(dir, 'mesh.yaml'),
      AMBIT_CA_DIR: join(dir, 'ca'),
      AMBIT_TUNNEL: '127.0.0.1:0',
      AMBIT_ADMIN: '127.0.0.1:0',
      AMBIT_METRICS: '127.0.0.1:0',
      AMBIT_READY: '127.0.0.1:0',
      AMBIT_MESH_POLL: '200ms',
      AMBIT_WORKERS: '2',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: LogLine[] = [];
  let rest = '';
  let stderr = '';
  proc.stdout!.on('data', (b: Buffer) => {
    const text = rest + b.toString();
    const parts = text.split('\n');
    rest = parts.pop() ?? '';
    for (const l of parts) if (l) lines.push(JSON.parse(l) as LogLine);
  });
  proc.stderr!.on('data', (b: Buffer) => {
    stderr += b.toString();
  });
  const logged = (msg: string): LogLine[] => lines.filter((l) => l.msg === msg);
  // The supervisor's line (each worker logs its own first, without the admin ports).
  const single = env.AMBIT_WORKERS === '0';
  const ready = (): LogLine | undefined =>
    logged('ambitd ready').find((l) => single || l.workers !== undefined);
  await until(() => ready() !== undefined || proc.exitCode !== null, 30_000, `${name} ready`);
  if (proc.exitCode !== null) throw new Error(`${name} exited: ${stderr}`);
  const ports = ready()!.ports as Daemon['ports'];
  const token = (await readFile(join(dir, name, 'admin.token'), 'utf8')).trim();
  return {
    name,
    proc,
    lines,
    stderr: () => stderr,
    token,
    ports,
    logged,
    admin: async <T>(path: string): Promise<T> => {
      const r = await fetch(`http://127.0.0.1:${ports.admin}${path}`, {
        headers: { authorization: `Bearer ${token}` },
      });
      return (await r.json()) as T;
    },
  };
}

/** A re-exec's successors: children of the first supervisor, not of this test, so not ended with it. */
function killSuccessors(d: Daemon): void {
  for (const l of d.logged('ambitd ready')) {
    if (l.tookOverFrom === undefined) continue;
    try {
      process.kill(l.pid as number, 'SIGKILL');
    } catch {
      // gone already
    }
  }
}

/** Two hosts, each a supervisor with two workers; node-a's client reaches node-b's echo service. */
async function startWorld(
  env: { a?: Record<string, string>; b?: Record<string, string> } = {},
): Promise<World> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-reload-'));
  const meshFile = join(dir, 'mesh.yaml');
  const echo = await echoServer();
  const procs: Daemon[] = [];
  const close = async (): Promise<void> => {
    for (const d of procs) {
      d.proc.kill('SIGKILL');
      killSuccessors(d);
    }
    if (process.env.AMBIT_TEST_LOG) {
      for (const d of procs)
        console.error(d.name, d.lines.map((l) => JSON.stringify(l)).join('\n'), d.stderr());
    }
    echo.server.close();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    // One at a time: the first creates the shared CA, the second loads it.
    const a = await spawnDaemon(dir, 'node-a', env.a ?? {});
    procs.push(a);
    const b = await spawnDaemon(dir, 'node-b', env.b ?? {});
    procs.push(b);
    const port = await freePort();
    await enroll(
      meshFile,
      clientWorkload(9, upstreamTo('echo', port)),
      workload({ name: 'echo-1', service: 'echo', node: 'node-b', ports: [echo.port] }),
    );
    // Until node-a binds the listener and node-b holds the certificate, a connection may be refused.
    await until(
      async () => (await roundTrip(port, Buffer.from('probe')).catch(() => ({ length: 0 }))).length === 5,
      15_000,
      'the echo service reachable through the tunnel',
    );
    return { dir, meshFile, a, b, port, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/** A connection that stays open, echoing what is written: `check` writes `n` bytes and verifies them. */
async function longLived(port: number): Promise<{ check(n: number): Promise<void>; socket: Socket }> {
  const socket = connect({ port, host: '127.0.0.1' });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let received = Buffer.alloc(0);
  socket.on('data', (b: Buffer) => {
    received = Buffer.concat([received, b]);
  });
  return {
    socket,
    async check(n: number) {
      received = Buffer.alloc(0);
      const sent = randomBytes(n);
      socket.write(sent);
      await until(() => received.length >= n || socket.destroyed, 15_000, `${n} bytes echoed`);
      if (sha256(received) !== sha256(sent))
        throw new Error(`got ${received.length} B back, not what was sent`);
    },
  };
}

/** New connections every 10 ms (at most `count`), each a verified round trip; resolves with the failures. */
async function steadyClients(port: number, count: number, stop: () => boolean): Promise<string[]> {
  const failures: string[] = [];
  const runs: Promise<void>[] = [];
  for (let i = 0; i < count && !stop(); i++) {
    const payload = randomBytes(1024);
    runs.push(
      roundTrip(port, payload).then(
        (r) => {
          if (r.sha256 !== sha256(payload)) failures.push(`#${i}: ${r.length} B back`);
        },
        (err: Error) => {
          failures.push(`#${i}: ${err.message}`);
        },
      ),
    );
    await sleep(10);
  }
  await Promise.all(runs);
  return failures;
}

const generations = async (d: Daemon): Promise<number[]> =>
  (await d.admin<{ generation: number }[]>('/workers')).map((w) => w.generation);

/** SIGHUP, then waits for the new workers to accept. */
async function reload(d: Daemon): Promise<void> {
  const before = d.logged('reload: new workers accept; the old ones drain').length;
  d.proc.kill('SIGHUP');
  await until(
    () => d.logged('reload: new workers accept; the old ones drain').length > before,
    60_000,
    `${d.name} reloaded`,
  );
}

test.serial('a reload of either end refuses no new connection and cuts no open one', async (t) => {
  const w = await startWorld();
  try {
    const long = await longLived(w.port);
    await long.check(64 * 1024);
    let done = false;
    const clients = steadyClients(w.port, 2000, () => done);
    // What a load balancer sees meanwhile: both hosts ready throughout.
    const unready: string[] = [];
    const probing = (async () => {
      for (let i = 0; i < 2000 && !done; i++) {
        for (const d of [w.a, w.b]) {
          const r = await fetch(`http://127.0.0.1:${d.ports.ready}/healthz/ready`);
          if (!r.ok) unready.push(`${d.name}: ${JSON.stringify(await r.json())}`);
        }
        await sleep(50);
      }
    })();
    await sleep(200);
    await reload(w.b); // the tunnel's end: new sessions from node-a go to node-b's new workers
    await sleep(200);
    await reload(w.a); // the client's end: the upstream listener, and node-a's pooled sessions
    await sleep(200);
    done = true;
    const failures = await clients;
    t.deepEqual(failures, [], 'every new connection during both reloads was carried');
    await probing;
    t.deepEqual(unready, [], 'readiness never failed during the reloads');
    await long.check(256 * 1024);
    t.pass('the connection opened before both reloads carries on, bytes intact');
    // The old workers carry the long-lived connection; once it ends, they leave.
    t.deepEqual((await generations(w.a)).sort(), [1, 2, 2], 'node-a: one old worker still carries it');
    long.socket.end();
    await until(
      async () => (await generations(w.a)).every((g) => g === 2),
      15_000,
      'node-a old workers gone',
    );
    await until(
      async () => (await generations(w.b)).every((g) => g === 2),
      15_000,
      'node-b old workers gone',
    );
    t.is(w.a.logged('worker exited').length, 2, 'both old workers of node-a exited');
    t.is(w.a.logged('drained: every connection ended').length, 2);
    t.is(w.a.logged('worker exited unexpectedly').length, 0);
  } finally {
    await w.close();
  }
});

test.serial(
  'after reloadDrainTimeout, an old worker closes what is still open, with a log line',
  async (t) => {
    const w = await startWorld({ b: { AMBIT_RELOAD_DRAIN_TIMEOUT: '1s' } });
    try {
      const long = await longLived(w.port);
      await long.check(1024);
      const closed = new Promise<void>((resolve) => long.socket.once('close', () => resolve()));
      await reload(w.b);
      await closed;
      t.pass('the connection was closed once the drain time was up');
      await until(
        () => w.b.logged('drain time is up: closing the connections still open').length === 1,
        10_000,
      );
      const line = w.b.logged('drain time is up: closing the connections still open')[0]!;
      t.true((line.remaining as number) >= 1, `${line.remaining} connection(s) closed`);
      await until(async () => (await generations(w.b)).every((g) => g === 2), 15_000, 'old workers gone');
      // What is opened now is carried by the new workers.
      t.is((await roundTrip(w.port, Buffer.from('after'))).length, 5);
    } finally {
      await w.close();
    }
  },
);

test.serial('with two workers, connections are spread over both and the scrape sums them', async (t) => {
  const w = await startWorld();
  try {
    const open: Socket[] = [];
    for (let i = 0; i < 40; i++) {
      const l = await longLived(w.port);
      await l.check(16);
      open.push(l.socket);
      await sleep(10);
    }
    const rows = await w.a.admin<(ConnectionRow & { worker: number })[]>('/connections');
    const outbound = rows.filter((r) => r.direction === 'outbound');
    t.is(outbound.length, 40, 'every open connection is listed');
    const byWorker = new Map<number, number>();
    for (const r of outbound) byWorker.set(r.worker, (byWorker.get(r.worker) ?? 0) + 1);
    t.log(`node-a: ${[...byWorker.values()].join(' and ')} connections per worker`);
    t.is(byWorker.size, 2, 'both workers carry some');
    t.is(new Set(outbound.map((r) => r.id)).size, 40, 'ids are unique on the host, whichever worker');
    const text = await (await fetch(`http://127.0.0.1:${w.a.ports.metrics}/metrics`)).text();
    // 40, and the probe round trips of startWorld.
    const opened = metricSum(text, 'istio_tcp_connections_opened_total', { reporter: 'source' });
    t.true(opened >= 40, `the scrape sums both workers: ${opened} opened`);
    const status = await w.a.admin<{ mode: string; workers: unknown[]; traffic: { connections: number } }>(
      '/status',
    );
    t.is(status.mode, 'workers');
    t.is(status.workers.length, 2);
    t.is(status.traffic.connections, 40, "GET /status sums the workers' open connections");
    for (const s of open) s.destroy();
  } finally {
    await w.close();
  }
});

test.serial('a stop fails readiness first, accepts through the grace period, then drains', async (t) => {
  const w = await startWorld({ b: { AMBIT_STOP_GRACE: '5s' } });
  try {
    const readyStatus = async (): Promise<number> =>
      (await fetch(`http://127.0.0.1:${w.b.ports.ready}/healthz/ready`)).status;
    t.is(await readyStatus(), 200);
    const long = await longLived(w.port);
    await long.check(1024);
    const exited = new Promise<number | null>((resolve) => w.b.proc.once('exit', (code) => resolve(code)));
    w.b.proc.kill('SIGTERM');
    await until(async () => (await readyStatus()) === 503, 5000, 'readiness failing');
    // Load balancers are told first; whoever has not noticed yet is still carried.
    t.is((await roundTrip(w.port, Buffer.from('still'))).length, 5, 'carried during the grace period');
    await until(() => w.b.logged('draining: no new connections here').length === 2, 15_000, 'the drain');
    await long.check(64 * 1024);
    t.pass('the open connection carries on through the drain');
    long.socket.end();
    t.is(await exited, 0, 'the supervisor exits once its workers have');
    t.is(w.b.logged('drained: every connection ended').length, 2);
  } finally {
    await w.close();
  }
});

test.serial(
  'one certificate issue per identity on the host, the same certificate in every worker',
  async (t) => {
    const w = await startWorld();
    try {
      const issued = w.b.logged('certificate issued');
      const bySupervisor = issued.filter((l) => l.worker === undefined);
      const byWorkers = issued.filter((l) => l.worker !== undefined);
      t.is(bySupervisor.length, 1, 'the supervisor issued the echo certificate once');
      t.is(byWorkers.length, 2, 'each worker received it');
      t.true(
        byWorkers.every((l) => l.serial === bySupervisor[0]!.serial),
        'the same certificate',
      );
    } finally {
      await w.close();
    }
  },
);

test.serial('a worker that dies is replaced, and the other carries on meanwhile', async (t) => {
  const w = await startWorld();
  try {
    const before = await w.a.admin<{ pid: number }[]>('/workers');
    process.kill(before[0]!.pid, 'SIGKILL');
    await until(() => w.a.logged('worker exited unexpectedly').length === 1, 10_000, 'the death noticed');
    t.is((await roundTrip(w.port, Buffer.from('meanwhile'))).length, 9, 'the other worker accepts');
    await until(
      async () => (await w.a.admin<{ pid: number }[]>('/workers')).length === 2,
      30_000,
      'a replacement',
    );
    const after = (await w.a.admin<{ pid: number }[]>('/workers')).map((m) => m.pid);
    t.false(after.includes(before[0]!.pid));
    await until(
      async () => (await fetch(`http://127.0.0.1:${w.a.ports.ready}/healthz/ready`)).status === 200,
      30_000,
      'ready again',
    );
    t.pass();
  } finally {
    await w.close();
  }
});

test.serial("the supervisor's /tap streams every worker's events", async (t) => {
  const w = await startWorld();
  try {
    const ws = new WebSocket(`ws://127.0.0.1:${w.b.ports.admin}/tap?direction=inbound`, {
      headers: { authorization: `Bearer ${w.b.token}` },
    });
    const events: (TapEvent & { worker?: number })[] = [];
    ws.on('message', (m) => events.push(JSON.parse(String(m)) as TapEvent));
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    // The workers are told to relay once the tap is registered; a connection before then is not seen.
    let sent = 0;
    await until(
      async () => {
        sent++;
        await roundTrip(w.port, Buffer.from('tapped'));
        return events.some((e) => e.event === 'closed');
      },
      10_000,
      'a closed event',
    );
    const closed = events.find((e) => e.event === 'closed')!;
    t.is(closed.dst.workload, 'echo-1');
    t.is(closed.bytes_sent, 6);
    t.is(typeof closed.worker, 'number', 'the event names the worker that carried it');
    t.true(
      events.every((e) => e.direction === 'inbound'),
      'the filter applies',
    );
    t.log(`${sent} round trip(s), ${events.length} event(s)`);
    ws.close();
  } finally {
    await w.close();
  }
});

/** SIGUSR2 to the supervisor now in charge, then waits for its successor to take over; returns its pid. */
async function reexec(d: Daemon, from: number): Promise<number> {
  process.kill(from, 'SIGUSR2');
  const took = (): LogLine | undefined =>
    d.logged('ambitd ready').find((l) => l.tookOverFrom === from && l.workers !== undefined);
  await until(() => took() !== undefined, 60_000, `${d.name} re-exec'd`);
  return took()!.pid as number;
}

test.serial(
  'a re-exec of the supervisor (SIGUSR2) refuses nothing, cuts nothing, keeps the admin token',
  async (t) => {
    const w = await startWorld();
    try {
      const long = await longLived(w.port);
      await long.check(64 * 1024);
      let done = false;
      const clients = steadyClients(w.port, 3000, () => done);
      const unready: string[] = [];
      const probing = (async () => {
        for (let i = 0; i < 3000 && !done; i++) {
          for (const d of [w.a, w.b]) {
            const r = await fetch(`http://127.0.0.1:${d.ports.ready}/healthz/ready`);
            if (!r.ok) unready.push(`${d.name}: ${r.status} ${await r.text()}`);
          }
          await sleep(50);
        }
      })();
      const exited = (p: ChildProcess) => new Promise<number | null>((r) => p.once('exit', (c) => r(c)));
      const bExit = exited(w.b.proc);
      const aExit = exited(w.a.proc);
      await sleep(200);
      const b2 = await reexec(w.b, w.b.proc.pid!);
      await sleep(300);
      const a2 = await reexec(w.a, w.a.proc.pid!);
      await sleep(300);
      done = true;
      const failures = await clients;
      t.deepEqual(failures, [], 'every new connection during both re-execs was carried');
      await probing;
      t.deepEqual(unready, [], 'readiness never failed');
      await long.check(256 * 1024);
      t.pass('the connection opened before both re-execs carries on, bytes intact');
      t.not(b2, w.b.proc.pid);
      // The old supervisors' workers carry the long-lived connection; once it ends they, and then their
      // supervisors, exit.
      long.socket.end();
      t.is(await bExit, 0, "node-b's old supervisor exits once drained");
      t.is(await aExit, 0, "node-a's old supervisor exits once drained");
      // The successors serve the same ports, with the token the scripts already read.
      const token = (await readFile(join(w.dir, 'node-b', 'admin.token'), 'utf8')).trim();
      t.is(token, w.b.token, 'the admin token on disk is the same');
      const workers = await w.b.admin<{ pid: number; generation: number }[]>('/workers');
      t.is(workers.length, 2, "the successor's two workers, on the same admin port, same token");
      t.is((await roundTrip(w.port, Buffer.from('after'))).length, 5, 'carried by the successors');
      // And a successor re-execs in turn.
      const b3 = await reexec(w.b, b2);
      t.not(b3, b2);
      t.is((await roundTrip(w.port, Buffer.from('again'))).length, 5);
      t.is(w.a.logged('re-exec failed: the new supervisor did not start; this one carries on').length, 0);
      t.truthy(a2);
    } finally {
      await w.close();
    }
  },
);

interface WaypointPath {
  wp: Daemon;
  /** A GET through node-a, the waypoint and node-b, on the client's one keep-alive agent. */
  get(path: string): Promise<string>;
  /** The client's TCP connections that carried an answer. */
  sockets: Set<unknown>;
  close(): Promise<void>;
}

/** The waypoint `wp` on its own host (`wpEnv`), and api on node-b behind it, reached from node-a's client. */
async function waypointPath(w: World, wpEnv: Record<string, string>): Promise<WaypointPath> {
  const wp = await spawnDaemon(w.dir, 'wp-node', {
    AMBIT_ROLE: 'waypoint',
    AMBIT_WAYPOINT_SERVICE: 'wp',
    ...wpEnv,
  });
  const api = createServer((req, res) => {
    req.resume();
    req.on('end', () => res.end(`${req.url}`));
  });
  await new Promise<void>((r) => api.listen(0, '127.0.0.1', r));
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const close = async (): Promise<void> => {
    agent.destroy();
    api.closeAllConnections();
    api.close();
    wp.proc.kill('SIGKILL');
    killSuccessors(wp);
  };
  try {
    const httpPort = await freePort();
    await enroll(
      w.meshFile,
      clientWorkload(9, upstreamTo('echo', w.port), upstreamTo('api', httpPort)),
      workload({
        name: 'api-1',
        service: 'api',
        node: 'node-b',
        ports: [(api.address() as AddressInfo).port],
      }),
    );
    await editMeshFile(w.meshFile, (doc) => {
      doc.setIn(['services', 'api'], doc.createNode({ waypoint: 'wp', protocol: 'http' }));
    });
    const sockets = new Set<unknown>();
    const get = (path: string): Promise<string> =>
      new Promise((resolve, reject) => {
        const req = request({ host: '127.0.0.1', port: httpPort, path, agent }, (res: IncomingMessage) => {
          sockets.add(res.socket);
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => {
            body += c;
          });
          res.on('end', () =>
            res.statusCode === 200 ? resolve(body) : reject(new Error(`${res.statusCode} ${body}`)),
          );
        });
        req.on('error', reject);
        req.end();
      });
    await until(
      async () => (await get('/probe').catch(() => '')) === '/probe',
      20_000,
      'api through the waypoint',
    );
    sockets.clear();
    return { wp, get, sockets, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/** A request every 20 ms until `stop`, each checked: the failures, and how many were served. */
function steadyRequests(
  get: (path: string) => Promise<string>,
  stop: () => boolean,
): Promise<{ failures: string[]; served: number }> {
  return (async () => {
    const failures: string[] = [];
    let served = 0;
    for (let i = 0; i < 3000 && !stop(); i++) {
      try {
        if ((await get(`/r${i}`)) === `/r${i}`) served++;
        else failures.push(`#${i}: wrong answer`);
      } catch (err) {
        failures.push(`#${i}: ${(err as Error).message}`);
      }
      await sleep(20);
    }
    return { failures, served };
  })();
}

test.serial(
  "a waypoint's keep-alive HTTP connection carries on through reloads and re-execs of both hosts",
  async (t) => {
    const w = await startWorld();
    const p = await waypointPath(w, { AMBIT_WORKERS: '0' }).catch(async (err: unknown) => {
      await w.close();
      throw err;
    });
    try {
      let done = false;
      const client = steadyRequests(p.get, () => done);
      await sleep(200);
      await reload(w.b);
      await reload(w.a);
      const b2 = await reexec(w.b, w.b.proc.pid!);
      const a2 = await reexec(w.a, w.a.proc.pid!);
      await sleep(300);
      done = true;
      const { failures, served } = await client;
      t.deepEqual(failures, [], `${served} requests through the waypoint, none failed`);
      t.is(p.sockets.size, 1, 'all of them on the one keep-alive connection the client opened before');
      t.true(served > 20);
      t.truthy(a2 && b2);
      t.is(p.wp.logged('request').length >= served, true, 'each went through the waypoint');
    } finally {
      await p.close();
      await w.close();
    }
  },
);

test.serial(
  'a waypoint under a supervisor: one worker, and its own reload and re-exec fail no request',
  async (t) => {
    const w = await startWorld({ a: { AMBIT_WORKERS: '0' }, b: { AMBIT_WORKERS: '0' } });
    // Two asked: a waypoint's limits are per instance, so it runs one, and says so.
    const p = await waypointPath(w, { AMBIT_WORKERS: '2' }).catch(async (err: unknown) => {
      await w.close();
      throw err;
    });
    try {
      t.is(
        p.wp.lines.filter((l) => String(l.msg).startsWith('a waypoint runs one worker')).length,
        1,
        'the warning, once',
      );
      t.is((await p.wp.admin<unknown[]>('/workers')).length, 1, 'one worker');
      const enrolled = (): LogLine[] => p.wp.logged('waypoint enrolled');
      t.is(enrolled().length, 1, 'the supervisor enrolled the waypoint instance');
      const exited = new Promise<number | null>((r) => p.wp.proc.once('exit', (c) => r(c)));
      let done = false;
      const client = steadyRequests(p.get, () => done);
      await sleep(300);
      await reload(p.wp);
      await sleep(300);
      const wp2 = await reexec(p.wp, p.wp.proc.pid!);
      await sleep(300);
      done = true;
      const { failures, served } = await client;
      t.deepEqual(failures, [], `${served} requests through the waypoint's reload and re-exec, none failed`);
      t.true(served > 20);
      // The old workers answered their last request with `connection: close`: the client went on anew.
      t.true(p.sockets.size >= 2, `the client was moved to new connections (${p.sockets.size} in all)`);
      t.is(await exited, 0, 'the old supervisor exits once drained');
      const instances = (await readMeshFile(w.meshFile)).workloads.filter((x) => x.service === 'wp');
      t.deepEqual(
        instances.map((x) => `${x.name} ${x.ports.join()}`),
        [`wp-wp-node ${p.wp.ports.tunnel}`],
        'the mesh file holds one waypoint instance, at the tunnel port the successor shares',
      );
      t.is((await p.get('/after')) === '/after', true, 'the successor serves');
      t.not(wp2, p.wp.proc.pid);
    } finally {
      await p.close();
      await w.close();
    }
  },
);

/** `ambit` in-process, asking this daemon's admin API with the token from its state directory. */
async function cli(
  dir: string,
  d: Daemon,
  ...args: string[]
): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runCli(
    ['--admin', `127.0.0.1:${d.ports.admin}`, '--state-dir', join(dir, d.name), ...args],
    {
      out: (s) => {
        out += s;
      },
      err: (s) => {
        err += s;
      },
    },
  );
  return { code, out, err };
}

test.serial(
  "`ambit reload` (the unit's ExecReload) returns once the new workers or supervisor serve",
  async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-reload-cli-'));
    const d = await spawnDaemon(dir, 'node-a', {});
    const single = await spawnDaemon(dir, 'node-s', { AMBIT_WORKERS: '0' });
    const successors: number[] = [];
    try {
      const reloaded = await cli(dir, d, 'reload');
      t.is(reloaded.code, 0, reloaded.err);
      t.is(reloaded.out, 'reloaded: generation 2 serves\n');
      // Asked at once, with nothing waited for: what systemctl (and Ansible after it) sees next.
      const status = await d.admin<DaemonStatus>('/status');
      t.true(status.readiness.ready, JSON.stringify(status.readiness));
      t.deepEqual(
        status.workers.filter((w) => w.state === 'ready').map((w) => w.generation),
        [2, 2],
        'both workers of the new generation serve',
      );
      const reexeced = await cli(dir, d, 'reload', '--reexec');
      t.is(reexeced.code, 0, reexeced.err);
      const m = /^re-exec'd: supervisor pid (\d+) serves\n$/.exec(reexeced.out);
      t.truthy(m, reexeced.out);
      const pid = Number(m![1]);
      successors.push(pid);
      t.not(pid, d.proc.pid);
      // On a new connection, as the next `ambit` or curl opens one (the old supervisor answers those
      // kept alive for a few seconds more, each with `connection: close`).
      const after = JSON.parse(
        await new Promise<string>((resolve, reject) =>
          get(
            {
              host: '127.0.0.1',
              port: d.ports.admin,
              path: '/status',
              agent: false,
              headers: { authorization: `Bearer ${d.token}` },
            },
            (res) => {
              let body = '';
              res.on('data', (c: Buffer) => {
                body += c;
              });
              res.on('end', () => resolve(body));
            },
          ).on('error', reject),
        ),
      ) as DaemonStatus;
      t.is(after.pid, pid, "the admin port is the successor's already");
      t.true(after.readiness.ready);
      // One process has no workers to start: a clear refusal, and it carries on.
      const refused = await cli(dir, single, 'reload');
      t.is(refused.code, 1);
      t.regex(refused.err, /^ambit: reload failed: a reload needs workers >= 1 .*restart it instead\n$/);
      t.is((await fetch(`http://127.0.0.1:${single.ports.ready}/healthz/ready`)).status, 200);
      // A reload is a change: without the token, 401.
      let err = '';
      const code = await runCli(
        ['--admin', `127.0.0.1:${d.ports.admin}`, '--state-dir', join(dir, 'nowhere'), 'reload'],
        {
          out: () => {},
          err: (s) => {
            err += s;
          },
        },
      );
      t.is(code, 1);
      t.regex(err, /answered 401/);
    } finally {
      for (const p of [d.proc, single.proc]) p.kill('SIGKILL');
      for (const p of successors) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          // gone already
        }
      }
      await rm(dir, { recursive: true, force: true });
    }
  },
);
