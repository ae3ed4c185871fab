import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { type ClientHttp2Session, type ClientHttp2Stream, connect as h2connect } from 'node:http2';
import { type Socket, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { promisify } from 'node:util';
import test from 'ava';
import type { Ambitd } from '../../daemon/daemon.js';
import { FdReserve, readNofileLimit } from '../../daemon/limits/fds.js';
import { Refusals, peerAbuseReason } from '../../daemon/limits/refusal.js';
import { Metrics } from '../../daemon/metrics/metrics.js';
import { sniForIdentity } from '../../daemon/proxy/hbone.js';
import { ExplicitListeners } from '../../daemon/proxy/outbound/explicit.js';
import type { Outbound } from '../../daemon/proxy/outbound/outbound.js';
import { NODE_FLAGS } from '../../daemon/proxy/reclaim.js';
import {
  CONFIG_KEYS,
  type ConfigInput,
  DEFAULT_LIMITS,
  LIMIT_KEYS,
  envName,
  loadConfig,
} from '../../lib/config.js';
import { silentLogger } from '../../lib/log.js';
import {
  type Cluster,
  clientWorkload,
  echoOnce,
  echoServer,
  enroll,
  freePort,
  metricSum,
  openEcho,
  roundTrip,
  sha256,
  sleep,
  startCluster,
  until,
  upstreamTo,
  workload,
} from '../helpers/cluster.js';
import { within } from '../helpers/net.js';
import { ROOT } from '../helpers/paths.js';

// Each limit of docs/limits.md on real daemons over loopback: it refuses, the refusal is counted in /metrics
// with its reason, and a legitimate connection works during the attack and after it.

const root = ROOT;
const run = promisify(execFile);

// One cluster at a time: the machine is small and every test starts two daemons.
const serial = test.serial;

interface Setup {
  cluster: Cluster;
  upstreamPort: number;
  echoPort: number;
  /** A workload whose connects never complete (see blackhole()); 0 when not asked for. */
  holePort: number;
  close(): Promise<void>;
}

/**
 * A listener that never accepts, with a backlog of 0 filled by one connection of our own: every further
 * connect to it waits for its SYN to be answered, which is how an upstream connect stays in flight.
 */
async function blackhole(): Promise<{ port: number; close: () => void }> {
  const child = spawn(
    'python3',
    [
      '-c',
      'import socket,sys,time\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(0)\n' +
        'print(s.getsockname()[1],flush=True)\nsys.stdin.read()',
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    child.once('error', reject);
  });
  const fillers: Socket[] = [];
  // The accept queue holds backlog + 1; a second filler makes sure, and waits itself (never mind it).
  for (let i = 0; i < 2; i++) {
    const s = connect({ port, host: '127.0.0.1' });
    s.on('error', () => {});
    fillers.push(s);
  }
  await sleep(100);
  return {
    port,
    close: () => {
      for (const s of fillers) s.destroy();
      child.stdin.end();
      child.kill();
    },
  };
}

async function setup(flags: ConfigInput, opts: { hole?: boolean } = {}): Promise<Setup> {
  const cluster = await startCluster({ flags });
  const echo = await echoServer();
  const hole = opts.hole ? await blackhole() : undefined;
  const upstreamPort = await freePort();
  await enroll(
    cluster.meshFile,
    clientWorkload(9, upstreamTo('echo', upstreamPort)),
    workload({ name: 'echo-1', service: 'echo', node: 'node-b', ports: [echo.port] }),
    ...(hole ? [workload({ name: 'hole-1', service: 'hole', node: 'node-b', ports: [hole.port] })] : []),
  );
  await until(() => cluster.a.listeners.listening().length === 1, 5000, 'upstream listener bound');
  await until(
    () => cluster.b.readiness().ready && cluster.b.certs.list().length === (hole ? 2 : 1),
    5000,
    'node-b ready',
  );
  return {
    cluster,
    upstreamPort,
    echoPort: echo.port,
    holePort: hole?.port ?? 0,
    async close() {
      echo.server.close();
      hole?.close();
      await cluster.close();
    },
  };
}

async function refused(d: Ambitd | number, reason: string): Promise<number> {
  const port = typeof d === 'number' ? d : d.ports.metrics;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return metricSum(text, 'ambit_connections_refused_total', { direction: 'inbound', reason });
}

const counted = (d: Ambitd | number, reason: string, atLeast = 1): Promise<void> =>
  until(async () => (await refused(d, reason)) >= atLeast, 5000, `${reason} counted ${atLeast} times`);

/** A fresh tunneled connection works end to end. */
async function works(s: Setup): Promise<boolean> {
  const payload = Buffer.from(`legitimate ${Math.random()}`);
  const back = await roundTrip(s.upstreamPort, payload);
  return back.sha256 === sha256(payload);
}

/** A TCP connection to the tunnel port that sends nothing: a handshake that never progresses. */
function rawTcp(port: number, localAddress: string): Promise<Socket & { gone: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', localAddress }) as Socket & { gone: Promise<void> };
    s.gone = new Promise((r) => s.once('close', () => r()));
    s.on('error', () => {});
    s.once('connect', () => resolve(s));
    setTimeout(() => reject(new Error('connect timed out')), 3000).unref();
  });
}

/** Resolves true if `s` is closed by the other side within `ms`. */
const closedWithin = (s: { gone: Promise<void> }, ms: number): Promise<boolean> =>
  Promise.race([s.gone.then(() => true), sleep(ms).then(() => false)]);

/** An HTTP/2 session on node-b's tunnel with node-a's `client` credentials, as another daemon would open. */
function peerSession(s: Setup, service: 'echo' | 'hole'): ClientHttp2Session {
  const { a, b } = s.cluster;
  const target = b.store.workload(`${service}-1`)!;
  const { certPem, keyPem } = a.certs.credentials(a.identityOf(a.store.workload('client')!));
  const session = h2connect(`https://127.0.0.1:${b.ports.tunnel}`, {
    createConnection: () =>
      tlsConnect({
        host: '127.0.0.1',
        port: b.ports.tunnel,
        cert: certPem,
        key: keyPem,
        ca: a.certs.trustBundle(),
        servername: sniForIdentity(b.identityOf(target)),
        ALPNProtocols: ['h2'],
        checkServerIdentity: () => undefined,
      }),
  });
  session.on('error', () => {});
  return session;
}

/** The status a CONNECT gets, or `rst <code>` when the stream is reset instead, or `pending`. */
function outcome(req: ClientHttp2Stream, ms: number): Promise<string> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve('pending'), ms);
    req.on('response', (h) => {
      clearTimeout(timer);
      resolve(`status ${h[':status']}`);
    });
    req.on('error', () => {});
    req.on('close', () => {
      clearTimeout(timer);
      resolve(`rst ${req.rstCode}`);
    });
  });
}

// ---- configuration: one schema

test('every limit is a file key, an AMBIT_ variable and a flag, and a bad value names where it came from', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-limits-'));
  try {
    const base = { stateDir: join(dir, 'state') };
    t.deepEqual(loadConfig({ env: {}, flags: base }).limits, DEFAULT_LIMITS);
    const file = join(dir, 'ambitd.yaml');
    await writeFile(file, 'maxHandshakes: 7\nhandshakeTimeout: 3s\nfdReserve: 0\n');
    const env = { AMBIT_MAX_CONNECTS_PER_NODE: '9', AMBIT_TUNNEL_IDLE_TIMEOUT: '2m' };
    const flags: ConfigInput = { ...base, maxHeaderFrames: '4', keyUpdateRate: 5 };
    const l = loadConfig({ env, flags, configFile: file }).limits;
    t.like(l, {
      maxHandshakes: 7,
      handshakeTimeoutMs: 3000,
      fdReserve: 0,
      maxConnectsPerNode: 9,
      tunnelIdleTimeoutMs: 120_000,
      maxHeaderFrames: 4,
      keyUpdateRate: 5,
    });
    await writeFile(file, 'maxInboundStreams: -3\n');
    const fromFile = t.throws(() => loadConfig({ env: {}, flags: base, configFile: file }));
    t.regex(fromFile?.message ?? '', /ambitd\.yaml/);
    t.regex(fromFile?.message ?? '', /maxInboundStreams/);
    const fromEnv = t.throws(() => loadConfig({ env: { AMBIT_MAX_HANDSHAKES: 'lots' }, flags: base }));
    t.regex(fromEnv?.message ?? '', /AMBIT_MAX_HANDSHAKES/);
    const fromFlag = t.throws(() => loadConfig({ env: {}, flags: { ...base, handshakeTimeout: 'soon' } }));
    t.regex(fromFlag?.message ?? '', /--handshake-timeout/);
    // Every setting ambitd knows, limits included, has its flag in --help and its variable.
    const { stdout } = await run(process.execPath, [join(root, 'dist/daemon/main.js'), '--help']);
    t.is(LIMIT_KEYS.length, Object.keys(DEFAULT_LIMITS).length);
    for (const k of LIMIT_KEYS) {
      t.true(CONFIG_KEYS.includes(k));
      t.true(stdout.includes(`--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} `), `--flag for ${k}`);
      t.regex(envName(k), /^AMBIT_[A-Z_]+$/);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a peer-abuse reason on a session or connection error is taken as given, anything else is not', (t) => {
  t.is(peerAbuseReason(Object.assign(new Error('x'), { reason: 'h2_reset_flood' })), 'h2_reset_flood');
  t.is(
    peerAbuseReason(Object.assign(new Error('x'), { reason: 'tls_keyupdate_flood' })),
    'tls_keyupdate_flood',
  );
  t.is(peerAbuseReason(Object.assign(new Error('x'), { reason: 'made_up' })), undefined);
  t.is(peerAbuseReason(new Error('plain')), undefined);
  t.is(peerAbuseReason(undefined), undefined);
});

test('the descriptor estimate reads RLIMIT_NOFILE and refuses before the reserve', async (t) => {
  t.is(
    readNofileLimit(
      'Limit Soft Hard Units\nMax open files            200                  4096                 files\n',
    ),
    200,
  );
  t.is(
    readNofileLimit('Max open files            unlimited            unlimited            files\n'),
    undefined,
  );
  t.true((readNofileLimit() ?? 1) > 0);
  const metrics = new Metrics({ processMetrics: false });
  let now = 0;
  let open = 89;
  const fds = new FdReserve(10, new Refusals(metrics, silentLogger()), {
    limit: 100,
    now: () => now,
    count: () => open,
  });
  t.true(fds.admit('inbound', 'x'));
  t.is(fds.open, 90);
  t.false(fds.admit('inbound', 'x'), '90 open + 1 + a reserve of 10 is over 100');
  // Opens between two counts are added; closes wait for the next count.
  t.is(
    metricSum(await metrics.registry.metrics(), 'ambit_connections_refused_total', { reason: 'fd_reserve' }),
    1,
  );
  open = 50;
  now += 300;
  t.true(fds.available());
  t.is(fds.open, 50);
});

test('an outbound listener short of descriptors resets the connection at once and counts it', async (t) => {
  const metrics = new Metrics({ processMetrics: false });
  let open = 1000;
  const fds = new FdReserve(64, new Refusals(metrics, silentLogger()), {
    limit: 1024,
    count: () => open,
    sampleMs: 0,
  });
  let handled = 0;
  const outbound = {
    handle: (sock: Socket) => {
      handled++;
      sock.end('carried');
    },
  } as unknown as Outbound;
  const listeners = new ExplicitListeners(outbound, silentLogger());
  listeners.gate = fds.gate('outbound', 'upstream listener');
  const port = await freePort();
  await listeners.reconcile([
    workload({
      name: 'web-1',
      service: 'web',
      node: 'node-a',
      upstreams: [
        { service: 'api', namespace: 'default', port: undefined, listenHost: '127.0.0.1', listenPort: port },
      ],
    }),
  ]);
  try {
    const attempt = (): Promise<string> =>
      new Promise((resolve) => {
        const sock = connect({ port, host: '127.0.0.1' });
        let got = '';
        sock.on('data', (d: Buffer) => {
          got += d.toString();
        });
        sock.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
        sock.once('end', () => resolve(got));
      });
    t.is(await attempt(), 'ECONNRESET', 'reset while fewer than 64 descriptors would remain');
    t.is(handled, 0);
    const text = await metrics.registry.metrics();
    t.is(
      metricSum(text, 'ambit_connections_refused_total', { direction: 'outbound', reason: 'fd_reserve' }),
      1,
    );
    open = 100;
    t.is(await attempt(), 'carried', 'carried once descriptors are free');
  } finally {
    listeners.close();
  }
});

// ---- handshakes and connections

serial(
  'handshakes in progress per source address: over the bound the socket is closed at once',
  async (t) => {
    const s = await setup({ maxHandshakesPerSource: 2, handshakeTimeout: '30s' });
    const held: Socket[] = [];
    try {
      const { a, b } = s.cluster;
      for (let i = 0; i < 2; i++) held.push(await rawTcp(b.ports.tunnel, '127.0.0.2'));
      await until(() => b.tunnel.stats().handshaking === 2, 3000, 'two handshakes in progress');
      const third = await rawTcp(b.ports.tunnel, '127.0.0.2');
      held.push(third);
      t.true(await closedWithin(third, 2000), 'the third handshake from that source is closed');
      await counted(b, 'handshake_limit');
      // Another source is not held back: a new session from 127.0.0.1 carries a connection during the attack.
      a.pool.drainAll();
      t.true(await works(s));
      for (const h of held) h.destroy();
      await until(() => b.tunnel.stats().handshaking === 0, 3000, 'handshakes gone');
      const again = await rawTcp(b.ports.tunnel, '127.0.0.2');
      held.push(again);
      t.false(await closedWithin(again, 300), 'the source may handshake again');
    } finally {
      for (const h of held) h.destroy();
      await s.close();
    }
  },
);

serial(
  'handshakes in progress in all, and connections in all: refused at accept, open sessions carry on',
  async (t) => {
    const s = await setup({ maxHandshakes: 3, maxConnections: 5, handshakeTimeout: '30s' });
    const held: Socket[] = [];
    try {
      const { a, b } = s.cluster;
      const open = await openEcho(s.upstreamPort);
      // node-a's pooled session is one connection; three handshakes fill maxHandshakes.
      for (let i = 0; i < 3; i++) held.push(await rawTcp(b.ports.tunnel, '127.0.0.2'));
      await until(() => b.tunnel.stats().handshaking === 3, 3000, 'three handshakes in progress');
      const fourth = await rawTcp(b.ports.tunnel, '127.0.0.3');
      held.push(fourth);
      t.true(await closedWithin(fourth, 2000));
      await counted(b, 'handshake_limit');
      t.is(await echoOnce(open, 'during'), 'during');
      // Sessions count too: one handshake gone, a second session up and one more handshake make five.
      held.shift()?.destroy();
      await until(() => b.tunnel.stats().handshaking === 2, 3000, 'two handshakes in progress');
      const second = peerSession(s, 'echo');
      await within(new Promise<void>((r) => second.once('connect', () => r())), 3000, 'a second session');
      // TLS 1.3: the client is done before the server has read its Finished.
      await until(() => b.tunnel.stats().sessions === 2, 3000, 'the second session up on node-b');
      held.push(await rawTcp(b.ports.tunnel, '127.0.0.4'));
      await until(
        () => b.tunnel.stats().connections === 5,
        3000,
        `five connections: ${JSON.stringify(b.tunnel.stats())}`,
      );
      const sixth = await rawTcp(b.ports.tunnel, '127.0.0.4');
      held.push(sixth);
      t.true(await closedWithin(sixth, 2000));
      await counted(b, 'connection_limit');
      t.is(await echoOnce(open, 'still'), 'still');
      second.destroy();
      for (const h of held) h.destroy();
      open.destroy();
      await until(() => b.tunnel.stats().handshaking === 0, 3000, 'handshakes gone');
      a.pool.drainAll();
      t.true(await works(s), 'a new session after the attack');
    } finally {
      for (const h of held) h.destroy();
      await s.close();
    }
  },
);

serial('a handshake not done within handshakeTimeout is cut off and counted', async (t) => {
  const s = await setup({ handshakeTimeout: '500ms' });
  try {
    const { b } = s.cluster;
    const slow = await rawTcp(b.ports.tunnel, '127.0.0.2');
    t.true(await closedWithin(slow, 4000));
    await counted(b, 'handshake_timeout');
    t.is(b.tunnel.stats().handshaking, 0);
    t.true(await works(s));
  } finally {
    await s.close();
  }
});

serial(
  'sessions per peer identity: one more than maxConnectionsPerIdentity is closed after its handshake',
  async (t) => {
    const s = await setup({ maxConnectionsPerIdentity: 1 });
    try {
      const { a, b } = s.cluster;
      const open = await openEcho(s.upstreamPort);
      const extra = peerSession(s, 'echo');
      const closed = await Promise.race([
        new Promise<boolean>((r) => extra.once('close', () => r(true))),
        sleep(3000).then(() => false),
      ]);
      t.true(closed, 'the second session of the same identity is closed');
      await counted(b, 'identity_limit');
      t.is(await echoOnce(open, 'during'), 'during');
      open.destroy();
      a.pool.drainAll();
      await until(() => b.tunnel.stats().sessions === 0, 5000, 'sessions gone');
      t.true(await works(s), 'the identity gets a session again once it holds none');
    } finally {
      await s.close();
    }
  },
);

serial(
  'an inbound session with no open stream for tunnelIdleTimeout gets GOAWAY and is closed',
  async (t) => {
    const s = await setup({ tunnelIdleTimeout: '1s' });
    try {
      const { b } = s.cluster;
      const busy = await openEcho(s.upstreamPort);
      const idle = peerSession(s, 'echo');
      const goaway = new Promise<boolean>((r) => idle.once('goaway', () => r(true)));
      const closed = new Promise<boolean>((r) => idle.once('close', () => r(true)));
      t.true(await Promise.race([goaway, sleep(5000).then(() => false)]), 'GOAWAY');
      t.true(await Promise.race([closed, sleep(5000).then(() => false)]), 'closed');
      await counted(b, 'idle_timeout');
      // The session carrying a connection is not idle, however long it lasts.
      t.is(await echoOnce(busy, 'still here'), 'still here');
      busy.destroy();
      // Once it carries nothing, node-a's pooled session is closed too, and node-a opens a new one.
      await until(() => b.tunnel.stats().sessions === 0, 5000, 'idle sessions closed');
      t.true(await works(s));
    } finally {
      await s.close();
    }
  },
);

// ---- streams and upstream connects

serial('Rapid Reset: a reset stream whose upstream connect is in flight still holds its slot', async (t) => {
  const s = await setup({ maxInboundStreams: 4, connectTimeout: '3s' }, { hole: true });
  try {
    const { b } = s.cluster;
    const open = await openEcho(s.upstreamPort);
    const session = peerSession(s, 'hole');
    await within(new Promise<void>((r) => session.once('connect', () => r())), 3000, 'a session');
    const first = Array.from({ length: 4 }, () =>
      session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${s.holePort}` }),
    );
    for (const r of first) r.on('error', () => {});
    await until(() => b.inbound.connecting === 4, 3000, 'four connects in flight');
    // Reset them all: HTTP/2 frees the four slots, the connects they started do not stop.
    for (const r of first) r.close();
    const next = Array.from({ length: 8 }, () =>
      session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${s.holePort}` }),
    );
    const outcomes = await Promise.all(next.map((r) => outcome(r, 2000)));
    t.true(
      outcomes.every((o) => o === 'rst 7'),
      `every new stream is refused with REFUSED_STREAM: ${outcomes}`,
    );
    await counted(b, 'stream_limit', 8);
    t.true(b.inbound.connecting <= 4, 'never more connects in flight than the stream limit');
    t.is(await echoOnce(open, 'during'), 'during');
    session.destroy();
    // The connects time out (connectTimeout), the slots come back: the node serves new connections.
    await until(() => b.inbound.connecting === 0, 6000, 'connects settled');
    open.destroy();
    t.true(await works(s));
  } finally {
    await s.close();
  }
});

serial(
  'upstream connects in flight, per session and per node: over either the CONNECT gets 503',
  async (t) => {
    const s = await setup(
      { maxConnectsPerSession: 2, maxConnectsPerNode: 3, connectTimeout: '3s' },
      { hole: true },
    );
    try {
      const { b } = s.cluster;
      const open = await openEcho(s.upstreamPort);
      const one = peerSession(s, 'hole');
      const reqs = Array.from({ length: 3 }, () =>
        one.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${s.holePort}` }),
      );
      const outcomes = await Promise.all(reqs.map((r) => outcome(r, 1000)));
      t.deepEqual(outcomes.sort(), ['pending', 'pending', 'status 503']);
      await counted(b, 'connect_limit');
      t.is(b.inbound.connecting, 2);
      // A second session may start one more; then the node is at its bound.
      const two = peerSession(s, 'hole');
      const more = Array.from({ length: 2 }, () =>
        two.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${s.holePort}` }),
      );
      const moreOutcomes = await Promise.all(more.map((r) => outcome(r, 1000)));
      t.deepEqual(moreOutcomes.sort(), ['pending', 'status 503']);
      await counted(b, 'node_connect_limit');
      t.is(b.inbound.connecting, 3);
      t.is(await echoOnce(open, 'during'), 'during');
      one.destroy();
      two.destroy();
      await until(() => b.inbound.connecting === 0, 6000, 'connects settled');
      t.true(await works(s), 'a new connection once the connects have settled');
      open.destroy();
    } finally {
      await s.close();
    }
  },
);

// ---- descriptor exhaustion: a daemon with 200 descriptors

interface Spawned {
  child: ChildProcess;
  ports: { tunnel: number; metrics: number; ready: number; admin: number };
  exited: Promise<number | null>;
  stop(): Promise<void>;
}

async function spawnDaemon(
  cluster: Cluster,
  nofile: number,
  flags: Record<string, string>,
): Promise<Spawned> {
  const ports = {
    tunnel: await freePort(),
    metrics: await freePort(),
    ready: await freePort(),
    admin: await freePort(),
  };
  const args = [
    `--nofile=${nofile}:${nofile}`,
    process.execPath,
    ...NODE_FLAGS,
    join(root, 'dist/daemon/main.js'),
    '--node-name',
    'node-c',
    '--state-dir',
    join(cluster.dir, 'node-c'),
    '--mesh-file',
    cluster.meshFile,
    '--ca-dir',
    join(cluster.dir, 'ca'),
    '--tunnel',
    `127.0.0.1:${ports.tunnel}`,
    '--admin',
    `127.0.0.1:${ports.admin}`,
    '--metrics',
    `127.0.0.1:${ports.metrics}`,
    '--ready',
    `127.0.0.1:${ports.ready}`,
    '--log-level',
    'warn',
    ...Object.entries(flags).flat(),
  ];
  const child = spawn('prlimit', args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, AMBIT_MESH_POLL: '200ms' },
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  await until(
    async () => {
      if (child.exitCode !== null) throw new Error(`ambitd exited: ${stderr}`);
      const res = await fetch(`http://127.0.0.1:${ports.ready}/healthz/ready`).catch(() => undefined);
      return res?.status === 200;
    },
    15_000,
    'the spawned daemon ready',
  );
  return {
    child,
    ports,
    exited,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}

serial(
  'out of descriptors: new work is refused with fd_reserve, the daemon stays up and serves again',
  async (t) => {
    const s = await setup({});
    const held: Socket[] = [];
    let c: Spawned | undefined;
    try {
      const { a } = s.cluster;
      // node-c carries echo-2: an echo server of its own, reached through node-a's second upstream.
      const echo = await echoServer();
      const upstreamPort = await freePort();
      c = await spawnDaemon(s.cluster, 200, {
        '--max-handshakes': '1000',
        '--max-handshakes-per-source': '1000',
        '--handshake-timeout': '60s',
        '--fd-reserve': '64',
      });
      await enroll(
        s.cluster.meshFile,
        clientWorkload(9, upstreamTo('echo', s.upstreamPort), upstreamTo('far', upstreamPort)),
        workload({ name: 'far-1', service: 'far', node: 'node-c', ports: [echo.port] }),
      );
      await until(() => a.listeners.listening().length === 2, 5000, 'second upstream listener bound');
      await until(
        async () =>
          (await roundTrip(upstreamPort, Buffer.from('first')).catch(() => undefined))?.length === 5,
        10_000,
        'node-c carries far-1',
      );
      const open = await openEcho(upstreamPort);
      // Bounded: 300 connections are more than 200 descriptors can hold.
      for (let i = 0; i < 300; i++) {
        const sock = await rawTcp(c.ports.tunnel, `127.0.0.${2 + (i % 50)}`).catch(() => undefined);
        if (sock) held.push(sock);
      }
      await counted(c.ports.metrics, 'fd_reserve');
      // The reserve held: what the daemon has open stayed clear of its last 64 descriptors (a little slack
      // for what it opens without counting between two samples: /metrics, its own files).
      const openNow = readdirSync(`/proc/${c.child.pid}/fd`).length;
      t.true(openNow <= 200 - 32, `${openNow} descriptors open of 200`);
      t.true(
        held.some((h) => !h.destroyed && h.readyState === 'open'),
        'some connections were admitted',
      );
      // The open connection carries on, and the daemon answers.
      t.is(await echoOnce(open, 'during'), 'during');
      t.is(c.child.exitCode, null, 'still running');
      for (const h of held) h.destroy();
      held.length = 0;
      // Descriptors come back: a new connection is carried again.
      await until(
        async () => {
          const back = await roundTrip(upstreamPort, Buffer.from('after')).catch(() => undefined);
          return back?.length === 5;
        },
        8000,
        'a new connection through node-c',
      );
      t.is(c.child.exitCode, null);
      open.destroy();
      echo.server.close();
    } finally {
      for (const h of held) h.destroy();
      await c?.stop();
      await s.close();
    }
  },
);

serial('with no reserve at all, EMFILE itself never crashes the daemon', async (t) => {
  const s = await setup({});
  const held: Socket[] = [];
  let c: Spawned | undefined;
  try {
    c = await spawnDaemon(s.cluster, 120, {
      '--max-handshakes': '1000',
      '--max-handshakes-per-source': '1000',
      '--handshake-timeout': '60s',
      '--fd-reserve': '0',
    });
    for (let i = 0; i < 200; i++) {
      const sock = await rawTcp(c.ports.tunnel, `127.0.0.${2 + (i % 50)}`).catch(() => undefined);
      if (sock) held.push(sock);
    }
    await sleep(500);
    t.is(c.child.exitCode, null, 'still running with every descriptor taken');
    for (const h of held) h.destroy();
    held.length = 0;
    await until(
      async () =>
        (await fetch(`http://127.0.0.1:${c!.ports.ready}/healthz/ready`).catch(() => undefined))?.status ===
        200,
      8000,
      'serving again',
    );
    t.true((await refused(c.ports.metrics, 'fd_reserve')) >= 1);
    t.is(c.child.exitCode, null);
  } finally {
    for (const h of held) h.destroy();
    await c?.stop();
    await s.close();
  }
});
