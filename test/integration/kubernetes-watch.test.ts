import test from 'ava';
import { Metrics } from '../../daemon/metrics/metrics.js';
import { KubeClient } from '../../daemon/state/kubernetes/client.js';
import { PodSource } from '../../daemon/state/kubernetes/source.js';
import { StateStore } from '../../daemon/state/store.js';
import { until } from '../helpers/cluster.js';
import { KubeApiDouble, pod } from '../helpers/kube-api.js';
import { captureLogs } from '../helpers/logs.js';
import { node, workload } from '../helpers/mesh.js';

// The pod watch against the Kubernetes API double (test/helpers/kube-api.ts, a real HTTPS server that
// speaks the LIST and WATCH protocol; not a Kubernetes): what the store holds is what a user would see
// in /config_dump's workloads, pod by pod.

const SELF = node('node-a', '198.18.0.1', 15008);

interface World {
  api: KubeApiDouble;
  store: StateStore;
  source: PodSource;
  metrics: Metrics;
  logs: ReturnType<typeof captureLogs>;
}

async function world(
  setup: (api: KubeApiDouble) => void,
  opts: {
    scope?: 'node' | 'cluster';
    maxLineBytes?: number;
    maxPods?: number;
    startTimeoutMs?: number;
    meshNamespace?: string;
    watchTimeoutS?: number;
    watchGraceMs?: number;
  } = {},
): Promise<World> {
  const api = await KubeApiDouble.start();
  setup(api);
  const store = new StateStore();
  const metrics = new Metrics({ processMetrics: false });
  const logs = captureLogs('debug');
  const client = new KubeClient(
    { server: api.url, tokenFile: api.tokenFile, caFile: api.caFile },
    { maxLineBytes: opts.maxLineBytes ?? 1 << 20, maxPageBytes: 16 << 20 },
  );
  const source = new PodSource({
    client,
    self: SELF,
    labelSelector: 'ambit.dev/mesh=enabled',
    scope: opts.scope ?? 'node',
    ...(opts.meshNamespace ? { meshNamespace: opts.meshNamespace } : {}),
    ...(opts.watchTimeoutS ? { watchTimeoutS: opts.watchTimeoutS } : {}),
    ...(opts.watchGraceMs ? { watchGraceMs: opts.watchGraceMs } : {}),
    maxPods: opts.maxPods ?? 10_000,
    log: logs.logger('node-a'),
    metrics,
    backoff: { initialMs: 20, maxMs: 100 },
    coalesceMs: 5,
    // start() waits for the first LIST (however slow the machine), except where it is to be refused.
    startTimeoutMs: opts.startTimeoutMs ?? 20_000,
  });
  await source.start(store);
  return { api, store, source, metrics, logs };
}

const done = async (w: World): Promise<void> => {
  await w.source.close();
  await w.api.close();
};

const addressesOf = (store: StateStore, name: string): readonly string[] | undefined =>
  store.workload(name)?.addresses;

const metricValue = async (
  m: Metrics,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> => {
  const json = await m.registry.getSingleMetric(name)?.get();
  return (json?.values ?? [])
    .filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))
    .reduce((s, v) => s + v.value, 0);
};

test('listed pods become workloads; added, modified (new IP) and deleted pods follow the watch', async (t) => {
  const w = await world((api) =>
    api.apply(pod({ name: 'web-1', node: 'node-a', ip: '10.244.0.5', ports: [8080], serviceAccount: 'web' })),
  );
  try {
    t.deepEqual(w.store.workload('web-1.default'), {
      ...workload({
        name: 'web-1.default',
        service: 'web',
        node: 'node-a',
        addresses: ['10.244.0.5'],
        ports: [8080],
      }),
    });
    // The label wins over the service account; the pod's namespace is the workload's.
    w.api.apply(
      pod({
        name: 'api-1',
        namespace: 'shop',
        node: 'node-a',
        ip: '10.244.0.6',
        labels: { 'ambit.dev/service': 'api' },
      }),
    );
    await until(() => w.store.workload('api-1.shop') !== undefined, 5000, 'api-1 enrolled');
    t.is(w.store.workload('api-1.shop')!.service, 'api');
    t.is(w.store.workload('api-1.shop')!.namespace, 'shop');
    t.is(w.store.endpoints('shop', 'api').length, 1);
    // A restarted pod keeps its name and gets a new IP: the old address no longer leads to it.
    w.api.apply(
      pod({ name: 'web-1', node: 'node-a', ip: '10.244.0.9', ports: [8080], serviceAccount: 'web' }),
    );
    await until(() => addressesOf(w.store, 'web-1.default')?.[0] === '10.244.0.9', 5000, 'new IP');
    t.is(w.store.workloadAt('10.244.0.5', 8080), undefined);
    t.is(w.store.workloadAt('10.244.0.9', 8080)?.name, 'web-1.default');
    w.api.delete('default', 'web-1');
    await until(() => w.store.workload('web-1.default') === undefined, 5000, 'web-1 unenrolled');
    t.truthy(w.store.workload('api-1.shop'));
    // This node is in the mesh as the pod watch knows it, whatever the control plane says.
    t.deepEqual(w.store.node('node-a'), SELF);
    t.is(await metricValue(w.metrics, 'ambit_kubernetes_pods'), 1);
    t.true((await metricValue(w.metrics, 'ambit_kubernetes_watch_events_total', { type: 'DELETED' })) >= 1);
    // The watch resumed from the LIST's version, asked for bookmarks, and kept to this node.
    const watch = w.api.requests.find((r) => r.query.get('watch') === '1')!;
    t.truthy(watch.query.get('resourceVersion'));
    t.is(watch.query.get('allowWatchBookmarks'), 'true');
    t.is(watch.query.get('fieldSelector'), 'spec.nodeName=node-a');
    t.is(watch.query.get('labelSelector'), 'ambit.dev/mesh=enabled');
  } finally {
    await done(w);
  }
});

test('pods not Running, without an IP, on the host network or unlabelled are not enrolled', async (t) => {
  const w = await world((api) => {
    api.apply(pod({ name: 'pending', node: 'node-a', phase: 'Pending' }));
    api.apply(pod({ name: 'no-ip', node: 'node-a' }));
    api.apply(pod({ name: 'host', node: 'node-a', ip: '198.18.0.1', hostNetwork: true }));
    api.apply(
      pod({ name: 'off', node: 'node-a', ip: '10.244.0.7', labels: { 'ambit.dev/mesh': 'disabled' } }),
    );
    api.apply(pod({ name: 'ok', node: 'node-a', ip: '10.244.0.8' }));
  });
  try {
    t.deepEqual(
      w.source.workloads().map((x) => x.name),
      ['ok.default'],
    );
    // A running pod that fails (or completes) leaves the mesh at once.
    w.api.apply(pod({ name: 'ok', node: 'node-a', ip: '10.244.0.8', phase: 'Failed' }));
    await until(() => w.store.workload('ok.default') === undefined, 5000, 'failed pod unenrolled');
    // And a pending pod that starts running joins.
    w.api.apply(pod({ name: 'pending', node: 'node-a', ip: '10.244.0.10' }));
    await until(() => w.store.workload('pending.default') !== undefined, 5000, 'pending pod running');
    t.pass();
  } finally {
    await done(w);
  }
});

test('annotations: a permissive pod, a strict one with plaintext ports for its probes, a bad value refused', async (t) => {
  const w = await world((api) => {
    api.apply(
      pod({ name: 'p', node: 'node-a', ip: '10.244.0.5', annotations: { 'ambit.dev/mode': 'permissive' } }),
    );
    api.apply(
      pod({
        name: 's',
        node: 'node-a',
        ip: '10.244.0.6',
        ports: [8080, 9090],
        annotations: { 'ambit.dev/plaintext-ports': '9090' },
      }),
    );
    api.apply(
      pod({
        name: 'bad',
        node: 'node-a',
        ip: '10.244.0.7',
        annotations: { 'ambit.dev/plaintext-ports': 'http' },
      }),
    );
  });
  try {
    t.is(w.store.workload('p.default')?.mode, 'permissive');
    t.is(w.store.workload('s.default')?.mode, 'strict');
    t.deepEqual(w.store.workload('s.default')?.plaintextPorts, [9090]);
    t.is(w.store.workload('bad.default'), undefined);
    const why = w.logs.lines.get('node-a')!.find((l) => l.pod === 'bad.default');
    t.regex(String(why?.why), /plaintext-ports/);
  } finally {
    await done(w);
  }
});

test("a pod of another node is not this node's: the field selector is sent, and honoured", async (t) => {
  const w = await world((api) => {
    api.apply(pod({ name: 'here', node: 'node-a', ip: '10.244.0.5' }));
    api.apply(pod({ name: 'there', node: 'node-b', ip: '10.244.1.5', hostIP: '198.18.0.2' }));
  });
  try {
    t.truthy(w.store.workload('here.default'));
    t.is(w.store.workload('there.default'), undefined);
    w.api.apply(pod({ name: 'there-2', node: 'node-b', ip: '10.244.1.6', hostIP: '198.18.0.2' }));
    w.api.apply(pod({ name: 'here-2', node: 'node-a', ip: '10.244.0.6' }));
    await until(() => w.store.workload('here-2.default') !== undefined, 5000, 'here-2');
    t.is(w.store.workload('there-2.default'), undefined);
    t.is(w.store.node('node-b'), undefined);
  } finally {
    await done(w);
  }
});

test('cluster scope: the pods of other nodes are their workloads, each node at its hostIP', async (t) => {
  const w = await world(
    (api) => {
      api.apply(pod({ name: 'here', node: 'node-a', ip: '10.244.0.5', hostIP: '198.18.0.1' }));
      api.apply(pod({ name: 'there', node: 'node-b', ip: '10.244.1.5', hostIP: '198.18.0.2' }));
    },
    { scope: 'cluster' },
  );
  try {
    t.is(w.store.workload('there.default')?.node, 'node-b');
    t.deepEqual(w.store.node('node-b'), node('node-b', '198.18.0.2', 15008));
    t.is(w.api.requests[0]!.query.get('fieldSelector'), null);
  } finally {
    await done(w);
  }
});

test("with Consul, every pod is in Consul's one namespace; its name keeps the pod's own", async (t) => {
  const w = await world(
    (api) =>
      api.apply(
        pod({ name: 'api-1', namespace: 'shop', node: 'node-a', ip: '10.244.0.6', serviceAccount: 'api' }),
      ),
    { meshNamespace: 'default' },
  );
  try {
    t.is(w.store.workload('api-1.shop')?.namespace, 'default');
    t.is(w.store.endpoints('default', 'api').length, 1);
  } finally {
    await done(w);
  }
});

test('410 Gone relists: a watch expired, or a version compacted away, and the pods changed meanwhile', async (t) => {
  const w = await world((api) => api.apply(pod({ name: 'a', node: 'node-a', ip: '10.244.0.5' })));
  try {
    await until(() => w.api.openWatches === 1, 5000, 'watching');
    const listsBefore = w.api.lists;
    w.api.expireWatches();
    // What changed while the client relists must be in the new list, not lost between the two.
    w.api.apply(pod({ name: 'b', node: 'node-a', ip: '10.244.0.6' }));
    w.api.delete('default', 'a');
    await until(
      () => w.store.workload('b.default') !== undefined && !w.store.workload('a.default'),
      5000,
      'relisted',
    );
    t.true(w.api.lists > listsBefore);
    t.true((await metricValue(w.metrics, 'ambit_kubernetes_relists_total', { reason: 'gone' })) >= 1);
    // A watch that ends cleanly (timeoutSeconds) resumes from the last version, without a LIST.
    await until(() => w.api.openWatches === 1, 5000, 'watching again');
    const lists = w.api.lists;
    w.api.bookmark();
    await until(() => w.source.resourceVersion === w.api.resourceVersion, 5000, 'bookmark version taken');
    w.api.endWatches();
    await until(() => w.api.openWatches === 1, 5000, 'resumed');
    t.is(w.api.lists, lists);
    const last = w.api.requests.at(-1)!;
    t.is(last.query.get('resourceVersion'), w.api.resourceVersion);
  } finally {
    await done(w);
  }
});

test('a watch that goes silent past its timeoutSeconds is ended here, and the pods listed again', async (t) => {
  const w = await world(
    (api) => {
      api.ignoreTimeouts = true;
      api.apply(pod({ name: 'a', node: 'node-a', ip: '10.244.0.5' }));
    },
    { watchTimeoutS: 1, watchGraceMs: 200 },
  );
  try {
    const lists = w.api.lists;
    await until(() => w.api.lists > lists, 10_000, 'listed again after the silent watch');
    t.true((await metricValue(w.metrics, 'ambit_kubernetes_relists_total', { reason: 'error' })) >= 1);
    t.truthy(w.store.workload('a.default'));
  } finally {
    await done(w);
  }
});

test('a rotated token is read from its file at the next request', async (t) => {
  const w = await world((api) => api.apply(pod({ name: 'a', node: 'node-a', ip: '10.244.0.5' })));
  try {
    await until(() => w.api.openWatches === 1, 5000, 'watching');
    w.api.rotateToken('token-2');
    w.api.endWatches();
    w.api.apply(pod({ name: 'b', node: 'node-a', ip: '10.244.0.6' }));
    await until(() => w.store.workload('b.default') !== undefined, 5000, 'b seen with the new token');
    const after = w.api.requests.filter((r) => r.token === 'token-2');
    t.true(after.length >= 1);
    t.true(after.every((r) => r.status === 200));
  } finally {
    await done(w);
  }
});

test('a watch line over kubernetesMaxLine is refused, counted and logged; the pods known stay', async (t) => {
  const w = await world((api) => api.apply(pod({ name: 'a', node: 'node-a', ip: '10.244.0.5' })), {
    maxLineBytes: 64 * 1024,
  });
  try {
    await until(() => w.api.openWatches === 1, 5000, 'watching');
    const lists = w.api.lists;
    // A line that never ends: refused once it passes the bound, not held whole.
    w.api.sendRaw(`{"type":"ADDED","object":{"metadata":{"name":"${'x'.repeat(100 * 1024)}`);
    await until(
      async () => (await metricValue(w.metrics, 'ambit_kubernetes_refused_total', { bound: 'line' })) === 1,
      5000,
      'refused',
    );
    t.truthy(w.store.workload('a.default'));
    const line = w.logs.lines.get('node-a')!.find((l) => String(l.msg).includes('over a bound'));
    t.truthy(line);
    t.regex(String(line!.err), /watch line over 65536 bytes/);
    t.is(line!.code, 'AMBIT_KUBERNETES_REQUEST');
    // It lists again and goes on.
    await until(() => w.api.lists > lists && w.api.openWatches === 1, 5000, 'relisted after the refusal');
    w.api.apply(pod({ name: 'b', node: 'node-a', ip: '10.244.0.6' }));
    await until(() => w.store.workload('b.default') !== undefined, 5000, 'b');
  } finally {
    await done(w);
  }
});

test('a LIST over kubernetesMaxPods is refused whole; the watch adds no pod past the bound', async (t) => {
  const w = await world(
    (api) => {
      for (let i = 0; i < 3; i++) api.apply(pod({ name: `p${i}`, node: 'node-a', ip: `10.244.0.${10 + i}` }));
    },
    { maxPods: 2, startTimeoutMs: 300 },
  );
  try {
    t.is(w.source.workloads().length, 0);
    await until(
      async () => (await metricValue(w.metrics, 'ambit_kubernetes_refused_total', { bound: 'pods' })) >= 1,
      5000,
      'the list refused',
    );
    t.is(w.source.workloads().length, 0);
    w.api.delete('default', 'p2');
    await until(() => w.source.workloads().length === 2, 5000, 'listed once under the bound');
    const before = await metricValue(w.metrics, 'ambit_kubernetes_refused_total', { bound: 'pods' });
    w.api.apply(pod({ name: 'p3', node: 'node-a', ip: '10.244.0.20' }));
    await until(
      async () =>
        (await metricValue(w.metrics, 'ambit_kubernetes_refused_total', { bound: 'pods' })) > before,
      5000,
      'p3 refused',
    );
    t.is(w.store.workload('p3.default'), undefined);
  } finally {
    await done(w);
  }
});
