// With workers, Consul sees one daemon per host: the supervisor runs the one set of watches and the one
// certificate manager, whatever the number of workers. The same catalog, served by the Consul API
// emulator, to ambitd in one process and to ambitd with two workers: the same watches, the same single
// leaf request per local service, no more connections.
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { workloadRegistration } from '../../lib/consul/catalog.js';
import { MAX_CONNECTIONS } from '../../lib/consul/client.js';
import { sleep, until } from '../helpers/cluster.js';
import { ConsulEmulator } from '../helpers/consul-emulator.js';
import { AMBITD } from '../helpers/paths.js';

interface Seen {
  /** Every path the daemon long-polled (a blocking query), sorted. */
  watched: string[];
  /** Requests for the local service's leaf certificate that were not long polls: issues. */
  leafIssues: number;
  peakConnections: number;
  ready: boolean;
}

/** ambitd (workers: `workers`) against a fresh emulator holding one local service with one upstream. */
async function observe(workers: number): Promise<Seen> {
  const emu = await ConsulEmulator.start({
    runCheck: async () => ({ status: 'passing', output: 'test: stands in as healthy' }),
  });
  const dir = await mkdtemp(join(tmpdir(), 'ambit-workers-consul-'));
  const reg = (name: string, service: string, node: string, port: number, upstream?: string) =>
    workloadRegistration({
      name,
      service,
      namespace: 'default',
      node,
      addresses: ['127.0.0.1'],
      ports: [port],
      uid: undefined,
      mode: 'strict',
      upstreams: upstream
        ? [
            {
              service: upstream,
              namespace: 'default',
              port: undefined,
              listenHost: '127.0.0.1',
              listenPort: 0,
            },
          ]
        : [],
    }) as unknown as Record<string, never>;
  emu.register(reg('api-1', 'api', 'host-x', 31001));
  emu.register({
    ID: 'ambit-node-host-x',
    Name: 'ambit',
    Address: '127.0.0.1',
    Port: 20001,
    Meta: { 'ambit-node': 'host-x' },
  });
  emu.register(reg('web-1', 'web', 'node-a', 31000, 'api'));
  const d = spawn(process.execPath, [AMBITD], {
    env: {
      PATH: process.env.PATH,
      AMBIT_NODE_NAME: 'node-a',
      AMBIT_STATE_DIR: join(dir, 'state'),
      AMBIT_CONSUL: emu.address,
      AMBIT_TUNNEL: '127.0.0.1:0',
      AMBIT_ADMIN: '127.0.0.1:0',
      AMBIT_METRICS: '127.0.0.1:0',
      AMBIT_READY: '127.0.0.1:0',
      AMBIT_WORKERS: String(workers),
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  d.stdout!.on('data', (b: Buffer) => {
    out += b.toString();
  });
  try {
    const readyLine = (): { ports: { ready: number } } | undefined =>
      out
        .split('\n')
        .filter((l) => l.includes('"ambitd ready"'))
        .map((l) => JSON.parse(l) as { ports: { ready: number; admin: number }; workers?: number })
        .find((l) => workers === 0 || l.workers !== undefined);
    await until(() => readyLine() !== undefined, 30_000, `ambitd (workers: ${workers}) ready`);
    const readyPort = readyLine()!.ports.ready;
    let ready = false;
    await until(
      async () => {
        ready = (await fetch(`http://127.0.0.1:${readyPort}/healthz/ready`)).ok;
        return ready;
      },
      15_000,
      'readiness',
    );
    // Past the start, into the steady state: every watch has been opened.
    await sleep(1500);
    const log = emu.requestLog;
    return {
      watched: [...new Set(log.filter((r) => r.blocking).map((r) => r.path))].sort(),
      leafIssues: log.filter((r) => !r.blocking && r.path === '/v1/agent/connect/ca/leaf/web').length,
      peakConnections: emu.peakConnections,
      ready,
    };
  } finally {
    d.kill('SIGKILL');
    await emu.close();
    await rm(dir, { recursive: true, force: true });
  }
}

test.serial('two workers cost Consul what one process does: the same watches, one leaf issue', async (t) => {
  const one = await observe(0);
  const two = await observe(2);
  t.true(one.ready && two.ready);
  t.true(one.watched.length >= 3, `watches: ${one.watched.join(', ')}`);
  t.deepEqual(two.watched, one.watched, 'the same blocking queries');
  // A single daemon may ask twice under load (a first read, then its watch's first, non-blocking read);
  // what matters is that workers add no leaf request of their own.
  t.true(one.leafIssues >= 1);
  t.true(
    two.leafIssues <= one.leafIssues,
    `leaf requests: ${two.leafIssues} with workers, ${one.leafIssues} without: the supervisor asks alone`,
  );
  // One client's budget for the host: workers with clients of their own would each add theirs.
  t.true(
    two.peakConnections <= MAX_CONNECTIONS,
    `connections to Consul at once: ${two.peakConnections} with workers (one daemon's budget: ${MAX_CONNECTIONS})`,
  );
  t.log(
    `watches: ${one.watched.length}; peak connections: ${one.peakConnections} and ${two.peakConnections}`,
  );
});
