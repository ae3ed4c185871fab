import type { DaemonConfig } from '../../../lib/config.js';
import type { ConsulClient } from '../../../lib/consul/client.js';
import type { Logger } from '../../../lib/log.js';
import type { Metrics } from '../../metrics/metrics.js';
import type { StateStore } from '../store.js';
import { PodCapture } from './capture.js';
import { KubeClient, inClusterEndpoint } from './client.js';
import { ConsulPodRegistry } from './consul.js';
import { PodSource } from './source.js';

export { type ConsulPodRegistry, PodSource };

/** The pod watch a daemon's settings ask for, or undefined when `kubernetes` is off. */
export function podSourceFor(
  config: DaemonConfig,
  tunnelPort: number,
  log: Logger,
  metrics: Metrics,
  env: NodeJS.ProcessEnv = process.env,
): PodSource | undefined {
  const k = config.kubernetes;
  if (!k) return undefined;
  const endpoint = inClusterEndpoint(env, { server: k.server, tokenFile: k.tokenFile, caFile: k.caFile });
  const client = new KubeClient(endpoint, { maxLineBytes: k.maxLineBytes, maxPageBytes: k.maxPageBytes });
  return new PodSource({
    client,
    self: { name: config.nodeName, address: config.advertiseAddress, tunnelPort },
    labelSelector: k.labelSelector,
    scope: k.scope,
    ...(config.consul ? { meshNamespace: 'default' } : {}),
    maxPods: k.maxPods,
    log,
    metrics,
  });
}

/** With capture on: the rules reinstalled at each change of the pods (see capture.ts), and once now. */
export async function captureFollowsPods(
  pods: PodSource | undefined,
  config: DaemonConfig,
  store: StateStore,
  log: Logger,
): Promise<PodCapture | undefined> {
  if (!pods || !config.capture.enabled) return undefined;
  const capture = new PodCapture(
    config,
    log,
    () => store.workloadsOn(config.nodeName),
    () => store.node(config.nodeName)?.address,
  );
  pods.on('update', () => void capture.sync());
  await capture.sync();
  return capture;
}

/** With Consul: this node's pods registered in its agent at each change (see consul.ts), and once now. */
export async function consulFollowsPods(
  pods: PodSource | undefined,
  config: DaemonConfig,
  client: ConsulClient | undefined,
  log: Logger,
): Promise<ConsulPodRegistry | undefined> {
  if (!pods || !client) return undefined;
  const registry = new ConsulPodRegistry(client, log, config.nodeName, () =>
    pods.workloads().filter((w) => w.node === config.nodeName),
  );
  pods.on('update', () => void registry.sync());
  await registry.sync();
  return registry;
}
