// Bytes carried are counted and logged whatever way a connection ends: a reset of the tunnel on either side
// mid-download still reaches the access log and istio_tcp_*_bytes_total with what was delivered.
import { spawn } from 'node:child_process';
import { type AddressInfo, type Server, connect, createServer } from 'node:net';
import { join } from 'node:path';
import test from 'ava';
import type { Ambitd } from '../../daemon/daemon.js';
import {
  type Cluster,
  clientWorkload,
  enroll,
  freePort,
  metricSum,
  metricsText,
  startCluster,
  throughTunnel,
  until,
  upstreamTo,
  workload,
} from '../helpers/cluster.js';
import { type LogLine, captureLogs } from '../helpers/logs.js';
import { ROOT } from '../helpers/paths.js';

type Line = LogLine;

/** A server that sends 64 KiB chunks as fast as it may, up to `limit` bytes, until the connection goes. */
async function firehose(limit: number): Promise<{ server: Server; port: number }> {
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  const server = createServer((s) => {
    s.on('error', () => {});
    let sent = 0;
    const pump = (): void => {
      while (sent < limit && !s.destroyed) {
        sent += chunk.length;
        if (!s.write(chunk)) return void s.once('drain', pump);
      }
      if (!s.destroyed) s.end();
    };
    pump();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

interface Setup {
  cluster: Cluster;
  lines: Map<string, Line[]>;
  upstreamPort: number;
  close(): Promise<void>;
}

async function setup(): Promise<Setup> {
  const logs = captureLogs();
  const cluster = await startCluster({ logger: logs.logger });
  const hose = await firehose(2 * 1024 * 1024 * 1024);
  const upstreamPort = await throughTunnel(
    cluster,
    workload({ name: 'bulk-1', service: 'bulk', node: 'node-b', ports: [hose.port] }),
  );
  return {
    cluster,
    lines: logs.lines,
    upstreamPort,
    async close() {
      hose.server.close();
      await cluster.close();
    },
  };
}

/** Downloads through the tunnel; once `after` bytes have arrived, `cut` runs. Resolves with what arrived. */
function download(
  port: number,
  after: number,
  cut: () => void,
): Promise<{ received: number; reset: boolean }> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' });
    let received = 0;
    let cutDone = false;
    let reset = false;
    s.on('data', (c: Buffer) => {
      received += c.length;
      if (!cutDone && received >= after) {
        cutDone = true;
        cut();
      }
    });
    s.on('error', () => {
      reset = true;
    });
    s.on('close', () => resolve({ received, reset }));
    // Bounded: a transfer that nothing cuts ends at the test's own timeout.
    setTimeout(() => s.destroy(), 20_000).unref();
  });
}

const closedLine = (lines: Line[] | undefined): Line | undefined =>
  lines?.find((l) => l.msg === 'connection closed');

async function bytesMetric(d: Ambitd, name: string, reporter: string): Promise<number> {
  return metricSum(await metricsText(d), name, { reporter });
}

/** Kernel buffers in flight between the daemon's write and the client's read, lost to the reset. */
const SLACK = 16 * 1024 * 1024;

for (const [side, cut] of [
  ['the destination daemon destroys its tunnel sessions', (c: Cluster) => void c.b.tunnel.close(false)],
  ['the source daemon destroys its pooled sessions', (c: Cluster) => c.a.pool.close()],
] as const) {
  test.serial(`a download cut mid-transfer is counted and logged with its bytes: ${side}`, async (t) => {
    const s = await setup();
    try {
      const got = await download(s.upstreamPort, 30 * 1024 * 1024, () => cut(s.cluster));
      t.true(got.received >= 30 * 1024 * 1024, `the client received ${got.received} B`);
      await until(() => closedLine(s.lines.get('node-a')) !== undefined, 5000, 'node-a access log line');
      await until(() => closedLine(s.lines.get('node-b')) !== undefined, 5000, 'node-b access log line');
      const a = closedLine(s.lines.get('node-a'))!;
      const b = closedLine(s.lines.get('node-b'))!;
      t.is(a.outcome, 'reset');
      t.is(b.outcome, 'reset');
      // Source side: what it wrote to the client, at least what the client read.
      const toClient = a.bytes_received as number;
      t.true(toClient >= got.received, `node-a logged ${toClient} B, the client read ${got.received} B`);
      t.true(
        toClient <= got.received + SLACK,
        `node-a logged ${toClient} B, the client read ${got.received} B`,
      );
      // Destination side: what it read from the workload, at least what reached the source.
      const fromWorkload = b.bytes_received as number;
      t.true(fromWorkload >= toClient, `node-b logged ${fromWorkload} B, node-a ${toClient} B`);
      t.true(fromWorkload <= toClient + SLACK, `node-b logged ${fromWorkload} B, node-a ${toClient} B`);
      t.is(await bytesMetric(s.cluster.a, 'istio_tcp_sent_bytes_total', 'source'), toClient);
      t.is(await bytesMetric(s.cluster.b, 'istio_tcp_sent_bytes_total', 'destination'), fromWorkload);
      t.log(
        `client read ${got.received} B; logged and counted: node-a ${toClient} B, node-b ${fromWorkload} B`,
      );
    } finally {
      await s.close();
    }
  });
}

test.serial(
  'a download whose destination daemon is killed (SIGKILL) is counted and logged with its bytes',
  async (t) => {
    const logs = captureLogs();
    const cluster = await startCluster({ logger: logs.logger });
    const hose = await firehose(2 * 1024 * 1024 * 1024);
    // node-c: a third daemon, as a child process, so that it can be killed.
    const child = spawn(process.execPath, [join(ROOT, 'dist', 'daemon', 'main.js')], {
      env: {
        PATH: process.env.PATH,
        AMBIT_NODE_NAME: 'node-c',
        AMBIT_STATE_DIR: join(cluster.dir, 'node-c'),
        AMBIT_MESH_FILE: cluster.meshFile,
        AMBIT_CA_DIR: join(cluster.dir, 'ca'),
        AMBIT_TUNNEL: '127.0.0.1:0',
        AMBIT_ADMIN: '127.0.0.1:0',
        AMBIT_METRICS: '127.0.0.1:0',
        AMBIT_READY: '127.0.0.1:0',
        AMBIT_MESH_POLL: '200ms',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString();
    });
    child.stderr.on('data', (b: Buffer) => {
      out += b.toString();
    });
    try {
      await until(() => out.includes('ambitd ready'), 15_000, `node-c ready: ${out}`);
      const upstreamPort = await freePort();
      await enroll(
        cluster.meshFile,
        clientWorkload(9, upstreamTo('bulk', upstreamPort)),
        workload({ name: 'bulk-1', service: 'bulk', node: 'node-c', ports: [hose.port] }),
      );
      await until(() => cluster.a.listeners.listening().length === 1, 5000, 'upstream listener bound');
      const kill = (): void => void child.kill('SIGKILL');
      // Until node-c has read the mesh and holds its certificate, a connection is refused; try again.
      let got = { received: 0, reset: false };
      for (let i = 0; i < 40 && got.received === 0; i++) {
        got = await download(upstreamPort, 30 * 1024 * 1024, kill);
        if (got.received === 0) await new Promise((r) => setTimeout(r, 250));
      }
      t.true(got.received >= 30 * 1024 * 1024, `the client received ${got.received} B`);
      const lines = logs.lines.get('node-a')!;
      await until(() => closedLine(lines) !== undefined, 5000, 'node-a access log line');
      const a = closedLine(lines)!;
      t.is(a.outcome, 'reset');
      const toClient = a.bytes_received as number;
      t.true(toClient >= got.received, `node-a logged ${toClient} B, the client read ${got.received} B`);
      t.true(
        toClient <= got.received + SLACK,
        `node-a logged ${toClient} B, the client read ${got.received} B`,
      );
      t.is(await bytesMetric(cluster.a, 'istio_tcp_sent_bytes_total', 'source'), toClient);
      t.log(`client read ${got.received} B; node-a logged and counted ${toClient} B`);
    } finally {
      child.kill('SIGKILL');
      hose.server.close();
      await cluster.close();
    }
  },
);
