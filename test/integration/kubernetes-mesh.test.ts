import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { Ambitd } from '../../daemon/daemon.js';
import { workloadRegistration } from '../../lib/consul/catalog.js';
import { ConsulClient } from '../../lib/consul/client.js';
import { silentLogger } from '../../lib/log.js';
import {
  clientWorkload,
  consulDaemonConfig,
  echoServer,
  enroll,
  freePort,
  metricSum,
  metricsText,
  roundTrip,
  sha256,
  startDaemon,
  until,
  upstreamTo,
} from '../helpers/cluster.js';
import { ConsulEmulator } from '../helpers/consul-emulator.js';
import { KubeApiDouble, pod } from '../helpers/kube-api.js';
import type { LogLine } from '../helpers/logs.js';
import { AMBITD } from '../helpers/paths.js';

// Two daemons, each with the pod watch on against one API double (test/helpers/kube-api.ts: an HTTPS
// server speaking LIST and WATCH, not a Kubernetes), as two nodes of one cluster on the embedded default:
// node-b enrolls the pod scheduled on it, node-a learns it from the same watch (cluster scope), and a
// connection from node-a's client goes through the tunnel to it. The client is in the shared mesh file:
// a pod declares no upstream listener, and explicit mode needs one (with capture, none is needed).

test('a pod enrolled from the API is reached through the tunnel from the other node', async (t) => {
  const api = await KubeApiDouble.start();
  const dir = await mkdtemp(join(tmpdir(), 'ambit-k8s-'));
  const echo = await echoServer();
  const daemons: Ambitd[] = [];
  try {
    const meshFile = join(dir, 'mesh.yaml');
    const flags = {
      kubernetes: true,
      kubernetesServer: api.url,
      kubernetesTokenFile: api.tokenFile,
      kubernetesCaFile: api.caFile,
    };
    const a = await startDaemon(dir, meshFile, 'node-a', flags);
    daemons.push(a);
    const b = await startDaemon(dir, meshFile, 'node-b', flags);
    daemons.push(b);
    const upstreamPort = await freePort();
    await enroll(meshFile, clientWorkload(9, upstreamTo('hello', upstreamPort)));
    // The server is a pod on node-b, labelled for the mesh, serving its container port.
    api.apply(
      pod({
        name: 'hello-7f9c',
        namespace: 'default',
        node: 'node-b',
        ip: '127.0.0.1',
        hostIP: '127.0.0.1',
        ports: [echo.port],
        labels: { 'ambit.dev/service': 'hello' },
      }),
    );
    await until(
      () => b.store.workload('hello-7f9c.default')?.node === 'node-b',
      5000,
      'node-b enrolled the pod',
    );
    await until(() => a.store.endpoints('default', 'hello').length === 1, 5000, 'node-a knows the endpoint');
    await until(() => a.listeners.listening().length === 1, 5000, 'upstream listener bound');
    await until(
      () => b.certs.list().some((c) => c.identity.endsWith('/svc/hello')),
      5000,
      "hello's certificate",
    );
    const payload = randomBytes(64 * 1024);
    const got = await roundTrip(upstreamPort, payload);
    t.is(got.length, payload.length);
    t.is(got.sha256, sha256(payload));
    t.is(echo.accepted(), 1);
    // node-b counts the connection as delivered to the pod's workload, from node-a's client.
    const text = await metricsText(b);
    t.true(
      metricSum(text, 'istio_tcp_connections_opened_total', { destination_workload: 'hello-7f9c.default' }) >=
        1,
    );
    t.is(metricSum(await metricsText(a), 'ambit_kubernetes_pods'), 1);
    // The pod is deleted: node-b unenrolls it and the tunnel no longer leads anywhere.
    api.delete('default', 'hello-7f9c');
    await until(() => a.store.endpoints('default', 'hello').length === 0, 5000, 'node-a forgot the endpoint');
    await until(() => b.store.workload('hello-7f9c.default') === undefined, 5000, 'node-b unenrolled');
    await t.throwsAsync(
      roundTrip(upstreamPort, payload).then((r) => {
        if (r.length === 0) throw new Error('closed without data');
        return r;
      }),
    );
    t.is(echo.accepted(), 1);
  } finally {
    await Promise.all(daemons.map((d) => d.close()));
    echo.server.close();
    await api.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('with workers: the supervisor watches the pods and its workers carry to them', async (t) => {
  const api = await KubeApiDouble.start();
  const dir = await mkdtemp(join(tmpdir(), 'ambit-k8s-'));
  const echo = await echoServer();
  const meshFile = join(dir, 'mesh.yaml');
  const a = await startDaemon(dir, meshFile, 'node-a', {
    kubernetes: true,
    kubernetesServer: api.url,
    kubernetesTokenFile: api.tokenFile,
    kubernetesCaFile: api.caFile,
  });
  // node-b as a user runs it: a process of its own, a supervisor with two workers.
  const b = spawn(process.execPath, [AMBITD], {
    env: {
      PATH: process.env.PATH,
      AMBIT_NODE_NAME: 'node-b',
      AMBIT_STATE_DIR: join(dir, 'node-b'),
      AMBIT_MESH_FILE: meshFile,
      AMBIT_CA_DIR: join(dir, 'ca'),
      AMBIT_TUNNEL: '127.0.0.1:0',
      AMBIT_ADMIN: '127.0.0.1:0',
      AMBIT_METRICS: '127.0.0.1:0',
      AMBIT_READY: '127.0.0.1:0',
      AMBIT_MESH_POLL: '200ms',
      AMBIT_WORKERS: '2',
      AMBIT_KUBERNETES: 'true',
      AMBIT_KUBERNETES_SERVER: api.url,
      AMBIT_KUBERNETES_TOKEN_FILE: api.tokenFile,
      AMBIT_KUBERNETES_CA_FILE: api.caFile,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: LogLine[] = [];
  let rest = '';
  let stderr = '';
  b.stdout!.on('data', (chunk: Buffer) => {
    const parts = (rest + chunk.toString()).split('\n');
    rest = parts.pop() ?? '';
    for (const l of parts) if (l) lines.push(JSON.parse(l) as LogLine);
  });
  b.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  try {
    const ready = (): LogLine | undefined =>
      lines.find((l) => l.msg === 'ambitd ready' && l.workers !== undefined);
    await until(() => ready() !== undefined || b.exitCode !== null, 30_000, 'node-b ready');
    t.is(b.exitCode, null, stderr);
    const upstreamPort = await freePort();
    await enroll(meshFile, clientWorkload(9, upstreamTo('hello', upstreamPort)));
    api.apply(
      pod({
        name: 'hello-1',
        node: 'node-b',
        ip: '127.0.0.1',
        ports: [echo.port],
        labels: { 'ambit.dev/service': 'hello' },
      }),
    );
    await until(() => a.store.endpoints('default', 'hello').length === 1, 5000, 'node-a knows the endpoint');
    await until(() => a.listeners.listening().length === 1, 5000, 'upstream listener bound');
    // node-b's supervisor issues hello's certificate once it enrolled the pod, and its workers serve it.
    await until(
      () => lines.some((l) => l.msg === 'pod enrolled' && l.workload === 'hello-1.default'),
      10_000,
      'enrolled',
    );
    const payload = randomBytes(32 * 1024);
    let got: { length: number; sha256: string } | undefined;
    await until(
      async () => {
        got = await roundTrip(upstreamPort, payload).catch(() => undefined);
        return got?.length === payload.length;
      },
      10_000,
      'a round trip through a worker of node-b',
    );
    t.is(got!.sha256, sha256(payload));
    t.true(echo.accepted() >= 1);
    // One watch, the supervisor's: the workers do not each watch the API.
    const watches = api.requests.filter((r) => r.query.get('watch') === '1' && r.status === 200);
    t.true(watches.length <= 3, `${watches.length} watches for two daemons`);
  } finally {
    b.kill('SIGTERM');
    await new Promise((r) => (b.exitCode !== null ? r(undefined) : b.once('exit', r)));
    await a.close();
    echo.server.close();
    await api.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test("with Consul (the emulator): a pod of another namespace holds Consul's leaf and is reached", async (t) => {
  const api = await KubeApiDouble.start();
  const consul = await ConsulEmulator.start();
  const dir = await mkdtemp(join(tmpdir(), 'ambit-k8s-consul-'));
  const echo = await echoServer();
  const daemons: Ambitd[] = [];
  const client = new ConsulClient({ address: consul.address });
  try {
    const kube = {
      kubernetes: true,
      kubernetesServer: api.url,
      kubernetesTokenFile: api.tokenFile,
      kubernetesCaFile: api.caFile,
    };
    for (const node of ['node-a', 'node-b'])
      daemons.push(
        await Ambitd.start(
          consulDaemonConfig(consul, dir, node, { ...kube, defaultPolicy: 'allow' }),
          silentLogger(),
        ),
      );
    const [a, b] = daemons as [Ambitd, Ambitd];
    // The client is in Consul's catalog, as `ambit enroll` puts it; the server is a pod of namespace shop.
    const upstreamPort = await freePort();
    await client.put('/v1/agent/service/register', {
      body: workloadRegistration(clientWorkload(9, upstreamTo('hello', upstreamPort))),
    });
    api.apply(
      pod({
        name: 'hello-1',
        namespace: 'shop',
        node: 'node-b',
        ip: '127.0.0.1',
        ports: [echo.port],
        serviceAccount: 'hello',
      }),
    );
    await until(() => a.store.endpoints('default', 'hello').length === 1, 10_000, 'node-a knows hello');
    await until(() => a.listeners.listening().length === 1, 10_000, 'upstream listener bound');
    await until(
      () => b.certs.list().some((c) => c.identity.endsWith('/ns/default/dc/dc1/svc/hello')),
      10_000,
      'leaf',
    );
    const payload = randomBytes(16 * 1024);
    const got = await roundTrip(upstreamPort, payload);
    t.is(got.sha256, sha256(payload));
    t.is(echo.accepted(), 1);
    t.is(b.store.workload('hello-1.shop')?.namespace, 'default');
  } finally {
    await Promise.all(daemons.map((d) => d.close()));
    client.close();
    echo.server.close();
    await consul.close();
    await api.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('with Consul and node scope: each daemon watches its own pods and Consul carries them to the others', async (t) => {
  const api = await KubeApiDouble.start();
  const consul = await ConsulEmulator.start();
  const dir = await mkdtemp(join(tmpdir(), 'ambit-k8s-consul-'));
  const echo = await echoServer();
  const daemons: Ambitd[] = [];
  const client = new ConsulClient({ address: consul.address });
  try {
    const kube = {
      kubernetes: true,
      kubernetesScope: 'node' as const,
      kubernetesServer: api.url,
      kubernetesTokenFile: api.tokenFile,
      kubernetesCaFile: api.caFile,
    };
    for (const node of ['node-a', 'node-b'])
      daemons.push(
        await Ambitd.start(
          consulDaemonConfig(consul, dir, node, { ...kube, defaultPolicy: 'allow' }),
          silentLogger(),
        ),
      );
    const [a, b] = daemons as [Ambitd, Ambitd];
    const upstreamPort = await freePort();
    await client.put('/v1/agent/service/register', {
      body: workloadRegistration(clientWorkload(9, upstreamTo('hello', upstreamPort))),
    });
    api.apply(
      pod({ name: 'hello-1', node: 'node-b', ip: '127.0.0.1', ports: [echo.port], serviceAccount: 'hello' }),
    );
    // node-a never sees the pod from the API (its watch is of node-a): Consul's catalog tells it.
    await until(() => a.store.endpoints('default', 'hello').length === 1, 10_000, 'node-a knows hello');
    t.truthy(a.store.base.workloads.find((w) => w.name === 'hello-1.default'));
    const services = await client.get<Record<string, { ID: string }>>('/v1/agent/services');
    t.truthy(services.body['hello-1.default']);
    await until(() => a.listeners.listening().length === 1, 10_000, 'upstream listener bound');
    await until(() => b.certs.list().some((c) => c.identity.endsWith('/svc/hello')), 10_000, 'leaf');
    const payload = randomBytes(16 * 1024);
    const got = await roundTrip(upstreamPort, payload);
    t.is(got.sha256, sha256(payload));
    // node-b stops (a rolling update): the pod stays registered, so node-a still knows it.
    await b.close();
    daemons.splice(1, 1);
    t.truthy((await client.get<Record<string, unknown>>('/v1/agent/services')).body['hello-1.default']);
    // Deleted while node-b is down: the next node-b's first sync finds it in the agent and deregisters it.
    api.delete('default', 'hello-1');
    daemons.push(
      await Ambitd.start(
        consulDaemonConfig(consul, dir, 'node-b', { ...kube, defaultPolicy: 'allow' }),
        silentLogger(),
      ),
    );
    await until(() => a.store.endpoints('default', 'hello').length === 0, 10_000, 'node-a forgot hello');
    t.falsy((await client.get<Record<string, unknown>>('/v1/agent/services')).body['hello-1.default']);
    // Each daemon's watch kept to its node.
    const selectors = new Set(api.requests.map((r) => r.query.get('fieldSelector')));
    t.deepEqual([...selectors].sort(), ['spec.nodeName=node-a', 'spec.nodeName=node-b']);
  } finally {
    await Promise.all(daemons.map((d) => d.close()));
    client.close();
    echo.server.close();
    await consul.close();
    await api.close();
    await rm(dir, { recursive: true, force: true });
  }
});
