// Run as root inside a network namespace of its own (test/system/kubernetes-capture.test.ts): the pod watch
// against the API double with capture on, printing the iptables nat rules after each pod change as JSON
// lines, so that the test reads what iptables holds, not what the code meant to install.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PodCapture } from '../../daemon/state/kubernetes/capture.js';
import { KubeClient } from '../../daemon/state/kubernetes/client.js';
import { PodSource } from '../../daemon/state/kubernetes/source.js';
import { StateStore } from '../../daemon/state/store.js';
import { loadConfig } from '../../lib/config.js';
import { silentLogger } from '../../lib/log.js';
import { KubeApiDouble, pod } from './kube-api.js';

const save = (): string => execFileSync('iptables-save', ['-t', 'nat'], { encoding: 'utf8' });

async function main(): Promise<void> {
  const api = await KubeApiDouble.start();
  const stateDir = mkdtempSync(join(tmpdir(), 'ambit-kcap-'));
  const config = loadConfig({
    env: {},
    flags: { nodeName: 'node-a', stateDir, capture: true, kubernetes: true, captureCheckUsers: [] },
  });
  const store = new StateStore();
  const source = new PodSource({
    client: new KubeClient(
      { server: api.url, tokenFile: api.tokenFile, caFile: api.caFile },
      { maxLineBytes: 1 << 20, maxPageBytes: 16 << 20 },
    ),
    self: { name: 'node-a', address: '198.18.0.1', tunnelPort: 15008 },
    labelSelector: 'ambit.dev/mesh=enabled',
    scope: 'node',
    maxPods: 100,
    log: silentLogger(),
    coalesceMs: 5,
  });
  const capture = new PodCapture(
    config,
    silentLogger(),
    () => store.workloadsOn('node-a'),
    () => '198.18.0.1',
  );
  const step = async (name: string, change: () => void): Promise<void> => {
    const updated = new Promise((r) => source.once('update', r));
    change();
    await updated;
    await capture.sync();
    console.log(
      JSON.stringify({ step: name, rules: save(), runs: capture.runs, failures: capture.failures }),
    );
  };
  await source.start(store);
  await capture.sync();
  console.log(
    JSON.stringify({ step: 'start', rules: save(), runs: capture.runs, failures: capture.failures }),
  );
  await step('added', () =>
    api.apply(pod({ name: 'web-1', node: 'node-a', ip: '10.244.0.5', ports: [8080] })),
  );
  await step('moved', () =>
    api.apply(pod({ name: 'web-1', node: 'node-a', ip: '10.244.0.9', ports: [8080] })),
  );
  await step('deleted', () => api.delete('default', 'web-1'));
  await source.close();
  await api.close();
}

await main();
