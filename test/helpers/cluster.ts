import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { type AddressInfo, type Server, type Socket, connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ambitd } from '../../daemon/daemon.js';
import { type ConfigInput, type DaemonConfig, loadConfig } from '../../lib/config.js';
import { type Logger, createLogger, silentLogger } from '../../lib/log.js';
import { editMeshFile, upsertWorkload } from '../../lib/mesh/edit.js';
import type { Upstream, Workload } from '../../lib/mesh/model.js';
import { workload } from './mesh.js';
import { freePort, sleep } from './net.js';

export { freePort, sleep, waitForPort } from './net.js';
export { workload } from './mesh.js';

export interface Cluster {
  dir: string;
  meshFile: string;
  a: Ambitd;
  b: Ambitd;
  close(): Promise<void>;
}

/**
 * One in-process daemon on loopback (every port picked by the kernel) with its state in `<dir>/<node>`,
 * sharing `meshFile` and the CA directory `<dir>/ca` with the others started in `dir`.
 */
export const startDaemon = (
  dir: string,
  meshFile: string,
  node: string,
  flags: ConfigInput = {},
  logger?: Logger,
): Promise<Ambitd> =>
  Ambitd.start(
    loadConfig({
      env: {},
      flags: {
        nodeName: node,
        stateDir: join(dir, node),
        meshFile,
        caDir: join(dir, 'ca'),
        tunnel: '127.0.0.1:0',
        admin: '127.0.0.1:0',
        metrics: '127.0.0.1:0',
        ready: '127.0.0.1:0',
        meshPoll: '200ms',
        ...flags,
      },
    }),
    logger ?? (process.env.AMBIT_TEST_LOG ? createLogger('debug', 2) : silentLogger()),
  );

/**
 * A daemon's configuration with Consul as its control plane (`consul`: the emulator or a real agent), on
 * loopback with every port picked by the kernel and its state in `<dir>/<node>`; the management token when
 * ACLs are on. Retry and rate-limit intervals are short, so that tests of outages do not wait for
 * production backoffs.
 */
export function consulDaemonConfig(
  consul: { readonly address: string; readonly managementToken?: string | undefined },
  dir: string,
  node: string,
  flags: ConfigInput = {},
): DaemonConfig {
  const base = loadConfig({
    env: {},
    flags: {
      nodeName: node,
      stateDir: join(dir, node),
      tunnel: '127.0.0.1:0',
      admin: '127.0.0.1:0',
      metrics: '127.0.0.1:0',
      ready: '127.0.0.1:0',
      consul: consul.address,
      ...(consul.managementToken ? { consulToken: consul.managementToken } : {}),
      ...flags,
    },
  });
  return {
    ...base,
    consul: {
      ...base.consul!,
      minIntervalMs: 50,
      backoffInitialMs: 100,
      backoffMaxMs: 400,
      startTimeoutMs: 5000,
    },
  };
}

/** Two daemons on loopback sharing one mesh file and one CA directory, as two hosts would in embedded mode. */
export async function startCluster(
  opts: { certTtl?: string; flags?: ConfigInput; logger?: (node: string) => Logger } = {},
): Promise<Cluster> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-test-'));
  const meshFile = join(dir, 'mesh.yaml');
  const start = (node: string): Promise<Ambitd> =>
    startDaemon(dir, meshFile, node, { certTtl: opts.certTtl ?? '24h', ...opts.flags }, opts.logger?.(node));
  // One at a time: the first creates the shared CA, the second loads it.
  const a = await start('node-a');
  const b = await start('node-b');
  return {
    dir,
    meshFile,
    a,
    b,
    async close() {
      await Promise.all([a.close(), b.close()]);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** An explicit upstream listener on loopback leading to `service` (its only port). */
export const upstreamTo = (service: string, listenPort: number): Upstream => ({
  service,
  namespace: 'default',
  port: undefined,
  listenHost: '127.0.0.1',
  listenPort,
});

/**
 * The tests' client: workload `client` of service web on node-a, at loopback, with its upstreams. It lists
 * `port` (where nothing need listen): every port of a host address would make its node a relay.
 */
export const clientWorkload = (port: number, ...upstreams: Upstream[]): Workload =>
  workload({ name: 'client', service: 'web', node: 'node-a', ports: [port], upstreams });

export const enroll = (meshFile: string, ...ws: Workload[]): Promise<unknown> =>
  editMeshFile(meshFile, (doc) => {
    for (const w of ws) upsertWorkload(doc, w);
  });

/**
 * Node-a's client with an upstream listener to `server`'s service, and `server` on node-b: resolves with the
 * listener's port once it is bound and node-b holds the server's certificate, so the first connection is
 * carried (not by connecting to it: a probe would itself be tunneled and counted).
 */
export async function throughTunnel(cluster: Cluster, server: Workload): Promise<number> {
  const upstreamPort = await freePort();
  await enroll(cluster.meshFile, clientWorkload(9, upstreamTo(server.service, upstreamPort)), server);
  await until(() => cluster.a.listeners.listening().length === 1, 5000, 'upstream listener bound');
  await until(() => cluster.b.readiness().ready && cluster.b.certs.list().length === 1, 5000, 'node-b ready');
  return upstreamPort;
}

/** An echo server: writes back what it reads, and ends its side when the client ends its own. */
export async function echoServer(): Promise<{ server: Server; port: number; accepted: () => number }> {
  let accepted = 0;
  const server = createServer({ allowHalfOpen: true }, (s) => {
    accepted++;
    s.on('error', () => {});
    s.pipe(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port, accepted: () => accepted };
}

/**
 * libuv arms a timer from its loop's cached clock, which may be up to a millisecond behind the moment
 * the request was read: a delay of N ms can end N - 0.x ms after it by the client's clock. A test that
 * checks a delay was served in full allows this much.
 */
export const LOOP_CLOCK_SLACK_MS = 1;

/** Polls `check` until it holds (bounded in time). */
export async function until(
  check: () => boolean | Promise<boolean>,
  ms = 5000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}

/**
 * Sends `bytes` through a connection to port, half-closes, and collects everything that comes back.
 * Resolves with the digest and length of the reply, or rejects if the connection is reset.
 */
export function roundTrip(port: number, payload: Buffer): Promise<{ length: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    const hash = createHash('sha256');
    let length = 0;
    s.on('data', (chunk: Buffer) => {
      length += chunk.length;
      hash.update(chunk);
    });
    s.once('end', () => {
      s.end();
      resolve({ length, sha256: hash.digest('hex') });
    });
    s.once('error', reject);
    s.once('connect', () => s.end(payload));
  });
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Opens a connection and waits for the first reply to `hello`; the socket stays open. */
export function openEcho(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    s.once('error', reject);
    s.once('connect', () => s.write('hello'));
    s.once('data', () => resolve(s));
  });
}

/** Writes `text` on an open echo connection and waits for it to come back. */
export function echoOnce(s: Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (c: Buffer): void => {
      got += c.toString();
      if (got.length >= text.length) {
        s.removeListener('data', onData);
        s.removeListener('error', reject);
        resolve(got);
      }
    };
    s.on('data', onData);
    s.once('error', reject);
    s.write(text);
  });
}

export async function metricsText(d: Ambitd): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${d.ports.metrics}/metrics`);
  return res.text();
}

/** Sums a metric's samples whose label set includes every given label. */
export function metricSum(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const body = m[3] ?? '';
    if (Object.entries(labels).every(([k, v]) => body.includes(`${k}="${v}"`))) sum += Number(m[4]);
  }
  return sum;
}
