// How hard one ambitd leans on Consul, measured against the Consul API emulator (test/helpers):
// 1,000 services with 10 instances each (10,000 endpoints) spread over 100 nodes; one daemon whose node runs
// LOCAL services, each with UPSTREAMS upstreams. Prints requests per minute in steady state (no changes),
// with unrelated churn (a health flap on an unwatched service every second), and how long an intention
// change takes to be in force on the daemon. Production settings: wait=5m, at most one request per watch
// per second. Bounded: about 2 × STEADY_S + 20 s.
//
//   npx tsc -p . && node dist/bench/consul-load.js            # STEADY_S=60 by default
//   STEADY_S=20 node dist/bench/consul-load.js

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ambitd } from '../daemon/daemon.js';
import { loadConfig } from '../lib/config.js';
import { workloadRegistration } from '../lib/consul/catalog.js';
import { ConsulClient } from '../lib/consul/client.js';
import { silentLogger } from '../lib/log.js';
import { ADMIN_TOKEN_FILE } from '../lib/paths.js';
import { ConsulEmulator } from '../test/helpers/consul-emulator.js';

const SERVICES = 1000;
const INSTANCES = 10;
const NODES = 100;
const LOCAL = Number(process.env.LOCAL ?? 5);
const UPSTREAMS = Number(process.env.UPSTREAMS ?? 2);
const STEADY_S = Math.min(Number(process.env.STEADY_S ?? 60), 900);
const INTENTION_ROUNDS = 10;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const svc = (i: number): string => `svc-${String(i).padStart(4, '0')}`;

async function main(): Promise<void> {
  // Nothing listens at the 10,000 instances' ports: their TCP checks stand in as passing (the emulator
  // runs checks as an agent does), so that only the health flaps below change anything.
  const emu = await ConsulEmulator.start({
    runCheck: async () => ({ status: 'passing', output: 'bench: the instance stands in as healthy' }),
  });
  const dir = await mkdtemp(join(tmpdir(), 'ambit-consul-load-'));
  let daemon: Ambitd | undefined;
  try {
    for (let n = 0; n < NODES; n++) {
      emu.register({
        ID: `ambit-node-host-${n}`,
        Name: 'ambit',
        Address: '127.0.0.1',
        Port: 20000 + n,
        Meta: { 'ambit-node': `host-${n}` },
      });
    }
    for (let s = 0; s < SERVICES; s++) {
      for (let i = 0; i < INSTANCES; i++) {
        const node = `host-${(s * INSTANCES + i) % NODES}`;
        const reg = workloadRegistration({
          name: `${svc(s)}-${i}`,
          service: svc(s),
          namespace: 'default',
          node,
          addresses: ['127.0.0.1'],
          ports: [30000 + i],
          uid: undefined,
          mode: 'strict',
          upstreams: [],
        });
        emu.register(reg as unknown as Record<string, never>);
      }
    }
    // The daemon's own node runs LOCAL services, each reaching UPSTREAMS others.
    for (let l = 0; l < LOCAL; l++) {
      const upstreams = Array.from({ length: UPSTREAMS }, (_, u) => ({
        service: svc((l * UPSTREAMS + u + 100) % SERVICES),
        namespace: 'default',
        port: undefined,
        listenHost: '127.0.0.1',
        listenPort: 0,
      }));
      const reg = workloadRegistration({
        name: `local-${l}`,
        service: svc(l),
        namespace: 'default',
        node: 'bench-node',
        addresses: ['127.0.0.1'],
        ports: [31000 + l],
        uid: undefined,
        mode: 'strict',
        upstreams,
      });
      emu.register(reg as unknown as Record<string, never>);
    }
    const config = loadConfig({
      env: {},
      flags: {
        nodeName: 'bench-node',
        stateDir: join(dir, 'state'),
        tunnel: '127.0.0.1:0',
        admin: '127.0.0.1:0',
        metrics: '127.0.0.1:0',
        ready: '127.0.0.1:0',
        consul: emu.address,
      },
    });
    const startAt = Date.now();
    daemon = await Ambitd.start(config, silentLogger());
    await sleep(3000);
    const startup = emu.requests;
    console.log(
      `setup: ${SERVICES} services x ${INSTANCES} instances = ${SERVICES * INSTANCES} endpoints on ${NODES} nodes; ` +
        `daemon node runs ${LOCAL} services with ${UPSTREAMS} upstreams each; workloads in its view: ` +
        `${daemon.store.mesh.workloads.length}; started in ${Date.now() - startAt} ms with ${startup} requests`,
    );
    const token = (await readFile(join(dir, 'state', ADMIN_TOKEN_FILE), 'utf8')).trim();
    const dump = (await (
      await fetch(`http://127.0.0.1:${daemon.ports.admin}/config_dump`, {
        headers: { authorization: `Bearer ${token}` },
      })
    ).json()) as {
      consul: { status: { watches: number } };
    };
    console.log(`long polls open: ${dump.consul.status.watches}`);

    // Steady state: nothing changes.
    let n0 = emu.requests;
    await sleep(STEADY_S * 1000);
    const steady = emu.requests - n0;
    console.log(
      `steady state, no changes: ${steady} requests in ${STEADY_S} s = ${((steady * 60) / STEADY_S).toFixed(1)} req/min`,
    );

    // Unrelated churn: an unwatched service's health flaps every second.
    n0 = emu.requests;
    const churnEnd = Date.now() + STEADY_S * 1000;
    let flip = false;
    while (Date.now() < churnEnd) {
      flip = !flip;
      emu.setCheckStatus(`${svc(999)}-0`, flip ? 'critical' : 'passing');
      await sleep(1000);
    }
    const churn = emu.requests - n0;
    console.log(
      `unrelated churn (1 health flap/s elsewhere): ${churn} requests in ${STEADY_S} s = ${((churn * 60) / STEADY_S).toFixed(1)} req/min`,
    );

    // Intention enforcement: PUT / DELETE an intention on a local destination; time until it is in force.
    const client = new ConsulClient({ address: emu.address });
    const lat: number[] = [];
    for (let r = 0; r < INTENTION_ROUNDS; r++) {
      const deny = r % 2 === 0;
      const t0 = performance.now();
      if (deny)
        await client.put('/v1/connect/intentions/exact', {
          query: { source: 'web', destination: svc(0) },
          body: { Action: 'deny' },
        });
      else
        await client.delete('/v1/connect/intentions/exact', {
          query: { source: 'web', destination: svc(0) },
        });
      const deadline = Date.now() + 10_000;
      while (daemon.store.policiesFor('default', svc(0)).length > 0 !== deny && Date.now() < deadline)
        await sleep(1);
      lat.push(performance.now() - t0);
      await sleep(1500);
    }
    client.close();
    lat.sort((a, b) => a - b);
    const pct = (p: number): string => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))]!.toFixed(1);
    console.log(
      `intention change -> in force on the daemon: median ${pct(0.5)} ms, max ${pct(1)} ms over ${lat.length} changes`,
    );
  } finally {
    await daemon?.close();
    await emu.close();
    await rm(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
