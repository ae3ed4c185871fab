// ambitd restarted while the mesh file is broken: it starts from the last good copy in its state directory,
// says so (readiness, metric) and applies the file once it is fixed.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { Ambitd } from '../../daemon/daemon.js';
import { loadConfig } from '../../lib/config.js';
import { silentLogger } from '../../lib/log.js';
import { metricSum, metricsText, until } from '../helpers/cluster.js';

const GOOD = `nodes:
  node-a: { address: 127.0.0.1 }
workloads:
  web-1: { service: web, node: node-a, addresses: [198.18.0.10], ports: [8080] }
`;

test('a daemon started on a broken mesh file serves the last good state and goes on watching', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-lastgood-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const meshFile = join(dir, 'mesh.yaml');
  const stateDir = join(dir, 'state');
  const start = (): Promise<Ambitd> =>
    Ambitd.start(
      loadConfig({
        env: {},
        flags: {
          nodeName: 'node-a',
          stateDir,
          meshFile,
          tunnel: '127.0.0.1:0',
          admin: '127.0.0.1:0',
          metrics: '127.0.0.1:0',
          ready: '127.0.0.1:0',
          meshPoll: '100ms',
          registerNode: false,
        },
      }),
      silentLogger(),
    );
  await writeFile(meshFile, GOOD);
  const first = await start();
  await first.close();
  t.is(await readFile(join(stateDir, 'mesh.last-good.yaml'), 'utf8'), GOOD);

  await writeFile(meshFile, GOOD.replace('ports: [8080]', 'ports: [8080, 0]'));
  const d = await start();
  t.teardown(() => d.close());
  t.is(d.store.workload('web-1')?.node, 'node-a');
  const r = d.readiness();
  t.true(r.ready, 'a rejected file does not make the node unready: the last good state serves');
  t.regex(r.checks.mesh ?? '', /^last edit rejected: .*mesh\.yaml: workloads\.web-1\.ports\[1\]: /);
  t.is(metricSum(await metricsText(d), 'ambit_mesh_reloads_total', { result: 'rejected' }), 1);

  await writeFile(meshFile, GOOD.replace('ports: [8080]', 'ports: [8081]'));
  await until(() => d.store.workload('web-1')?.ports[0] === 8081, 3000);
  t.is(d.readiness().checks.mesh, 'ok');
});
