import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import test from 'ava';
import ts from 'typescript';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { Metrics } from '../../daemon/metrics/metrics.js';
import { NODE_FLAGS } from '../../daemon/proxy/reclaim.js';
import { CONFIG_KEYS, envName, loadConfig } from '../../lib/config.js';
import { parseMesh } from '../../lib/mesh/file/parse.js';
import { ROOT } from '../helpers/paths.js';

// The Kubernetes manifests (deploy/kubernetes/) and the image (Dockerfile), checked offline: every YAML
// parses, each overlay builds (a resolver for the kustomize features they use, compared with
// `kubectl kustomize` where kubectl is on PATH), every object is valid against the Kubernetes and
// Prometheus Operator schemas of kubernetes-models, unknown fields included, and the properties that make
// a DaemonSet safe and a mesh hold: probes, seccomp, no escalation, the two capabilities, read-only RBAC,
// capture installed, one CA and one mesh for every node. No cluster runs here.

const DEPLOY = join(ROOT, 'deploy/kubernetes');

interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [k: string]: unknown;
}

const CLUSTER_SCOPED = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding']);

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) return yamlFiles(p);
    return /\.ya?ml$/.test(f) ? [p] : [];
  });
}

function parseFile(file: string): unknown[] {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'));
  for (const d of docs) if (d.errors.length) throw new Error(`${file}: ${d.errors[0]!.message}`);
  return docs.map((d) => d.toJS() as unknown).filter((d) => d !== null);
}

/** RFC 6902 add/replace/remove, the ops the overlays use; a path that does not resolve throws. */
function applyOps(
  target: unknown,
  ops: { op: string; path: string; value?: unknown }[],
  where: string,
): void {
  for (const { op, path, value } of ops) {
    const parts = path
      .split('/')
      .slice(1)
      .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
    const last = parts.pop()!;
    let parent = target as Record<string, unknown> | unknown[];
    for (const p of parts) {
      const next = Array.isArray(parent) ? parent[Number(p)] : parent[p];
      if (next === undefined || next === null) throw new Error(`${where}: ${path}: ${p} does not exist`);
      parent = next as Record<string, unknown>;
    }
    const copy = structuredClone(value);
    if (Array.isArray(parent)) {
      const i = last === '-' ? parent.length : Number(last);
      if (op === 'add') parent.splice(i, 0, copy);
      else if (op === 'replace') parent[i] = copy;
      else if (op === 'remove') parent.splice(i, 1);
      else throw new Error(`${where}: op ${op} not supported`);
    } else if (op === 'add' || op === 'replace') {
      if (op === 'replace' && !(last in parent)) throw new Error(`${where}: ${path} does not exist`);
      parent[last] = copy;
    } else if (op === 'remove') delete parent[last];
    else throw new Error(`${where}: op ${op} not supported`);
  }
}

interface Kustomization {
  resources?: string[];
  namespace?: string;
  patches?: { path: string; target: { kind: string; name?: string } }[];
  [k: string]: unknown;
}

/** A kustomization's output, for the fields the layout uses (any other field is refused). */
function build(dir: string): Obj[] {
  const k = parseYaml(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as Kustomization;
  for (const key of Object.keys(k))
    if (!['apiVersion', 'kind', 'resources', 'namespace', 'patches'].includes(key))
      throw new Error(`${dir}: the test's resolver does not know ${key}`);
  const out: Obj[] = [];
  for (const r of k.resources ?? []) {
    const p = join(dir, r);
    out.push(...(statSync(p).isDirectory() ? build(p) : (parseFile(p) as Obj[])));
  }
  if (k.namespace) for (const o of out) if (!CLUSTER_SCOPED.has(o.kind)) o.metadata.namespace = k.namespace;
  for (const p of k.patches ?? []) {
    const targets = out.filter(
      (o) => o.kind === p.target.kind && (p.target.name === undefined || o.metadata.name === p.target.name),
    );
    if (targets.length === 0) throw new Error(`${dir}: patch ${p.path} matches nothing`);
    const ops = parseYaml(readFileSync(join(dir, p.path), 'utf8')) as { op: string; path: string }[];
    for (const t of targets) applyOps(t, ops, `${dir}/${p.path}`);
  }
  return out;
}

const OVERLAYS = ['embedded', 'consul'] as const;
const built = Object.fromEntries(OVERLAYS.map((o) => [o, build(join(DEPLOY, 'overlays', o))])) as Record<
  (typeof OVERLAYS)[number],
  Obj[]
>;

const byKey = (objs: Obj[]): Obj[] =>
  [...objs].sort((a, b) => `${a.kind}/${a.metadata.name}`.localeCompare(`${b.kind}/${b.metadata.name}`));

const find = (objs: Obj[], kind: string, name?: string): Obj => {
  const o = objs.find((x) => x.kind === kind && (name === undefined || x.metadata.name === name));
  if (!o) throw new Error(`no ${kind} ${name ?? ''}`);
  return o;
};

// --- shapes the assertions read -------------------------------------------------------------------------

interface Container {
  name: string;
  command?: string[];
  env?: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
  ports?: { containerPort: number; name: string }[];
  startupProbe?: Probe;
  livenessProbe?: Probe;
  readinessProbe?: Probe;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: {
    runAsUser?: number;
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    capabilities?: { add?: string[]; drop?: string[] };
    seccompProfile?: { type: string };
  };
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}
interface Probe {
  httpGet?: { path: string; port: number };
  tcpSocket?: { port: number };
}
interface PodSpec {
  hostNetwork?: boolean;
  serviceAccountName?: string;
  terminationGracePeriodSeconds?: number;
  securityContext?: { seccompProfile?: { type: string } };
  initContainers?: Container[];
  containers: Container[];
  volumes: {
    name: string;
    hostPath?: { path: string };
    configMap?: { name: string };
    secret?: { secretName: string; defaultMode?: number };
  }[];
}

const podOf = (objs: Obj[]): PodSpec =>
  (find(objs, 'DaemonSet') as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec;

/** The env a container runs with: literal values, fieldRefs as `<fieldPath>`. */
const envOf = (c: Container): Record<string, string> =>
  Object.fromEntries(
    (c.env ?? []).map((e) => [e.name, e.value ?? `<${e.valueFrom?.fieldRef?.fieldPath ?? '?'}>`]),
  );

// --- parsing and building ---------------------------------------------------------------------------------

test('every YAML file under deploy/kubernetes parses', (t) => {
  const files = yamlFiles(DEPLOY);
  t.true(files.length >= 12);
  for (const f of files) t.notThrows(() => parseFile(f), relative(ROOT, f));
});

test('the overlays build, and as kubectl kustomize builds them', (t) => {
  for (const o of OVERLAYS) {
    t.deepEqual(
      byKey(built[o]).map((x) => x.kind),
      [
        'ClusterRole',
        'ClusterRoleBinding',
        'ConfigMap',
        ...(o === 'embedded' ? ['ConfigMap'] : []),
        'DaemonSet',
        'Namespace',
        'Service',
        'ServiceAccount',
        'ServiceMonitor',
      ],
    );
    t.true(built[o].every((x) => CLUSTER_SCOPED.has(x.kind) || x.metadata.namespace === 'ambit-system'));
  }
  let kubectl = true;
  try {
    execFileSync('kubectl', ['version', '--client'], { stdio: 'ignore' });
  } catch {
    kubectl = false;
  }
  if (!kubectl) {
    t.log('kubectl is not on PATH: the resolver above is the only build');
    return;
  }
  for (const o of OVERLAYS) {
    const text = execFileSync('kubectl', ['kustomize', join(DEPLOY, 'overlays', o)], { encoding: 'utf8' });
    const theirs = parseAllDocuments(text).map((d) => d.toJS() as Obj);
    t.deepEqual(byKey(built[o]), byKey(theirs), `overlay ${o}`);
  }
});

// --- schemas ------------------------------------------------------------------------------------------------

/** Where each kind's model lives: its validate() checks the schema, its interface the field names. */
const MODELS: Record<string, { module: string; name: string }> = {
  'v1/Namespace': { module: 'kubernetes-models/v1', name: 'Namespace' },
  'v1/ServiceAccount': { module: 'kubernetes-models/v1', name: 'ServiceAccount' },
  'v1/ConfigMap': { module: 'kubernetes-models/v1', name: 'ConfigMap' },
  'v1/Service': { module: 'kubernetes-models/v1', name: 'Service' },
  'apps/v1/DaemonSet': { module: 'kubernetes-models/apps/v1', name: 'DaemonSet' },
  'rbac.authorization.k8s.io/v1/ClusterRole': {
    module: 'kubernetes-models/rbac.authorization.k8s.io/v1',
    name: 'ClusterRole',
  },
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': {
    module: 'kubernetes-models/rbac.authorization.k8s.io/v1',
    name: 'ClusterRoleBinding',
  },
  'monitoring.coreos.com/v1/ServiceMonitor': {
    module: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1',
    name: 'ServiceMonitor',
  },
};

const modelOf = (o: Obj): { module: string; name: string } => {
  const m = MODELS[`${o.apiVersion}/${o.kind}`];
  if (!m) throw new Error(`no model for ${o.apiVersion} ${o.kind}`);
  return m;
};

test('every object is valid against its kubernetes-models schema', async (t) => {
  for (const o of OVERLAYS) {
    for (const obj of built[o]) {
      const m = modelOf(obj);
      const mod = (await import(m.module)) as Record<string, new (d: unknown) => { validate(): void }>;
      t.notThrows(() => new mod[m.name]!(obj).validate(), `${o}: ${obj.kind}/${obj.metadata.name}`);
    }
  }
  // The schema does refuse: a probe without a port, a Service port out of range.
  const { DaemonSet } = await import('kubernetes-models/apps/v1');
  const broken = structuredClone(find(built.embedded, 'DaemonSet')) as unknown as {
    spec: { template: { spec: { containers: { livenessProbe: unknown }[] } } };
  };
  broken.spec.template.spec.containers[0]!.livenessProbe = { tcpSocket: {} };
  t.throws(() => new DaemonSet(broken as never).validate());
});

/**
 * kubernetes-models' validate() lets unknown fields through (its schemas allow additional properties),
 * and so would an API server without --validate=strict. Each object is therefore also compiled as an
 * object literal of its model's TypeScript interface: the compiler refuses any property the interface
 * does not have, at every depth, and any value of the wrong type.
 */
test('no object has a field the Kubernetes schema does not know', (t) => {
  const dir = join(ROOT, 'dist', '.k8s-typecheck');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const check = (objs: { label: string; obj: Obj }[]): string[] => {
    const imports = new Map<string, Set<string>>();
    const lines: string[] = [];
    objs.forEach(({ obj }, i) => {
      const m = modelOf(obj);
      if (!imports.has(m.module)) imports.set(m.module, new Set());
      imports.get(m.module)!.add(`I${m.name}`);
      lines.push(`export const o${i}: I${m.name} = ${JSON.stringify(obj, null, 1)};`);
    });
    const head = [...imports].map(
      ([mod, names]) => `import type { ${[...names].join(', ')} } from '${mod}';`,
    );
    const file = join(dir, 'manifests.ts');
    writeFileSync(file, `${head.join('\n')}\n${lines.join('\n')}\n`);
    const program = ts.createProgram([file], {
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
    });
    return ts
      .getPreEmitDiagnostics(program)
      .map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n').split('\n')[0]!);
  };
  try {
    const all = OVERLAYS.flatMap((o) => built[o].map((obj) => ({ label: o, obj })));
    t.deepEqual(check(all), []);
    // And it does refuse one: a misspelt field deep in the pod spec.
    const ds = structuredClone(find(built.embedded, 'DaemonSet'));
    (podOf([ds]).containers[0] as unknown as Record<string, unknown>).livenesProbe = {
      tcpSocket: { port: 1 },
    };
    const errors = check([{ label: 'broken', obj: ds }]);
    t.is(errors.length, 1);
    t.regex(errors[0]!, /livenesProbe/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// --- what makes the DaemonSet safe and a mesh ---------------------------------------------------------------

test('the DaemonSet: probes on the ports ambitd serves, resources, no escalation, seccomp, two capabilities', (t) => {
  const config = loadConfig({ env: {}, flags: { stateDir: '/nonexistent' } });
  for (const o of OVERLAYS) {
    const pod = podOf(built[o]);
    t.true(pod.hostNetwork);
    t.is(pod.securityContext?.seccompProfile?.type, 'RuntimeDefault');
    const ambitd = pod.containers.find((c) => c.name === 'ambitd')!;
    t.deepEqual(
      ambitd.ports!.map((p) => p.containerPort).sort(),
      [config.tunnel.port, config.metrics.port, config.ready.port].sort(),
    );
    t.deepEqual(ambitd.startupProbe?.httpGet, { path: '/healthz/ready', port: config.ready.port });
    t.deepEqual(ambitd.readinessProbe?.httpGet, { path: '/healthz/ready', port: config.ready.port });
    // Liveness does not follow readiness: a control plane outage must not restart every node's ambitd.
    t.deepEqual(ambitd.livenessProbe?.tcpSocket, { port: config.ready.port });
    for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
      const sc = c.securityContext!;
      t.false(sc.allowPrivilegeEscalation, c.name);
      t.true(sc.readOnlyRootFilesystem, c.name);
      t.deepEqual(sc.capabilities?.drop, ['ALL'], c.name);
      t.deepEqual([...(sc.capabilities?.add ?? [])].sort(), ['NET_ADMIN', 'NET_RAW'], c.name);
      t.truthy(c.resources?.requests?.cpu && c.resources.requests.memory, `${c.name} requests`);
      t.truthy(c.resources?.limits?.cpu && c.resources.limits.memory, `${c.name} limits`);
    }
  }
});

test('capture: an init container installs the rules, the xtables lock is the host’s, ambitd runs with capture', (t) => {
  for (const o of OVERLAYS) {
    const pod = podOf(built[o]);
    const init = pod.initContainers?.find((c) => c.name === 'capture-install');
    t.deepEqual(init?.command?.slice(0, 3), ['ambit', 'capture', 'install']);
    const lock = pod.volumes.find((v) => v.hostPath?.path === '/run/xtables.lock');
    t.truthy(lock);
    for (const c of [init!, pod.containers.find((x) => x.name === 'ambitd')!])
      t.true(
        c.volumeMounts!.some((m) => m.name === lock!.name && m.mountPath === '/run/xtables.lock'),
        c.name,
      );
    const settings = parseYaml(
      (find(built[o], 'ConfigMap', 'ambitd') as unknown as { data: Record<string, string> }).data[
        'ambitd.yaml'
      ]!,
    ) as Record<string, unknown>;
    t.is(settings.capture, true);
    t.is(settings.kubernetes, true);
  }
});

test('the settings and variables each overlay gives are ones ambitd reads, and they load', (t) => {
  const known = new Set([...CONFIG_KEYS.map(envName), 'AMBIT_CONFIG', 'AMBIT_STATE_DIR', 'HOST_IP']);
  for (const o of OVERLAYS) {
    const pod = podOf(built[o]);
    const cm = find(built[o], 'ConfigMap', 'ambitd') as unknown as { data: Record<string, string> };
    const settings = parseYaml(cm.data['ambitd.yaml']!) as Record<string, string>;
    for (const k of Object.keys(settings)) t.true((CONFIG_KEYS as readonly string[]).includes(k), k);
    const ambitd = pod.containers.find((c) => c.name === 'ambitd')!;
    const env = envOf(ambitd);
    for (const name of Object.keys(env)) t.true(known.has(name), `${o}: ${name} is not a setting of ambitd`);
    t.is(env.AMBIT_NODE_NAME, '<spec.nodeName>');
    t.is(env.AMBIT_ADVERTISE_ADDRESS, '<status.hostIP>');
    // Loaded as ambitd would load them, the downward API's values stood in for.
    const literal = Object.fromEntries(
      Object.entries(env)
        .filter(([k, v]) => k.startsWith('AMBIT_') && !v.startsWith('<') && k !== 'AMBIT_CONFIG')
        .map(([k, v]) => [k, v.replace('$(HOST_IP)', '198.18.0.10')]),
    );
    const loaded = loadConfig({
      env: {
        ...literal,
        AMBIT_NODE_NAME: 'node-1',
        AMBIT_ADVERTISE_ADDRESS: '198.18.0.10',
        AMBIT_CONSUL_TOKEN_FILE: '',
      },
      flags: { ...settings, stateDir: '/nonexistent' },
    });
    t.truthy(loaded.kubernetes);
    // Embedded: every daemon knows every pod from the API; Consul: its own, the others' from Consul.
    t.is(loaded.kubernetes!.scope, o === 'consul' ? 'node' : 'cluster');
    t.true(loaded.capture.enabled);
    t.true(pod.terminationGracePeriodSeconds! * 1000 > loaded.drainMs);
    if (o === 'consul') t.is(loaded.consul?.address, '198.18.0.10:8500');
    else t.is(loaded.consul, undefined);
  }
});

test('embedded: one CA Secret (key mode 0400) and one mesh ConfigMap, mounted read-only on every node', (t) => {
  const objs = built.embedded;
  const pod = podOf(objs);
  const ambitd = pod.containers.find((c) => c.name === 'ambitd')!;
  const env = envOf(ambitd);
  const mount = (name: string): { mountPath: string; readOnly?: boolean } =>
    ambitd.volumeMounts!.find((m) => m.name === name)!;
  const ca = pod.volumes.find((v) => v.secret)!;
  t.is(ca.secret!.secretName, 'ambit-ca');
  t.is(ca.secret!.defaultMode, 0o400);
  t.is(env.AMBIT_CA_DIR, mount(ca.name).mountPath);
  t.true(mount(ca.name).readOnly);
  const mesh = pod.volumes.find((v) => v.configMap?.name === 'ambit-mesh')!;
  t.is(dirname(env.AMBIT_MESH_FILE!), mount(mesh.name).mountPath);
  t.true(mount(mesh.name).readOnly);
  const cm = find(objs, 'ConfigMap', 'ambit-mesh') as unknown as { data: Record<string, string> };
  const file = env.AMBIT_MESH_FILE!.split('/').pop()!;
  t.notThrows(() => parseMesh(cm.data[file]!, file));
  // The state directory is the node's own; no CA is made in it (the caDir is the Secret's).
  t.truthy(pod.volumes.find((v) => v.hostPath?.path === '/var/lib/ambit'));
});

test('consul: the agent at the node’s address, the ACL token from a Secret', (t) => {
  const pod = podOf(built.consul);
  const ambitd = pod.containers.find((c) => c.name === 'ambitd')!;
  const env = envOf(ambitd);
  t.is(env.HOST_IP, '<status.hostIP>');
  t.is(env.AMBIT_CONSUL, '$(HOST_IP):8500');
  // $(HOST_IP) is expanded by the kubelet only from a variable defined before it.
  const names = ambitd.env!.map((e) => e.name);
  t.true(names.indexOf('HOST_IP') < names.indexOf('AMBIT_CONSUL'));
  const token = pod.volumes.find((v) => v.secret?.secretName === 'ambit-consul-token')!;
  const m = ambitd.volumeMounts!.find((x) => x.name === token.name)!;
  t.is(env.AMBIT_CONSUL_TOKEN_FILE, `${m.mountPath}/token`);
  t.true(m.readOnly);
  t.false(pod.volumes.some((v) => v.secret?.secretName === 'ambit-ca'));
});

test('RBAC: get, list and watch on pods, nothing else, bound to the DaemonSet’s service account', (t) => {
  for (const o of OVERLAYS) {
    const role = find(built[o], 'ClusterRole') as unknown as {
      metadata: { name: string };
      rules: { apiGroups: string[]; resources: string[]; verbs: string[] }[];
    };
    t.deepEqual(role.rules, [{ apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch'] }]);
    const binding = find(built[o], 'ClusterRoleBinding') as unknown as {
      roleRef: { kind: string; name: string };
      subjects: { kind: string; name: string; namespace: string }[];
    };
    t.deepEqual(binding.roleRef, {
      apiGroup: 'rbac.authorization.k8s.io',
      kind: 'ClusterRole',
      name: role.metadata.name,
    } as never);
    const sa = find(built[o], 'ServiceAccount');
    t.deepEqual(binding.subjects, [
      { kind: 'ServiceAccount', name: sa.metadata.name, namespace: 'ambit-system' },
    ]);
    t.is(podOf(built[o]).serviceAccountName, sa.metadata.name);
    // Nothing else is granted: no Role, no other binding.
    t.false(built[o].some((x) => x.kind === 'Role' || x.kind === 'RoleBinding'));
  }
});

test('the ServiceMonitor scrapes the metrics port, and the dashboard asks only for metrics ambitd has', async (t) => {
  const objs = built.embedded;
  const sm = find(objs, 'ServiceMonitor') as unknown as {
    spec: { selector: { matchLabels: Record<string, string> }; endpoints: { port: string; path: string }[] };
  };
  const svc = find(objs, 'Service') as unknown as {
    spec: { selector: Record<string, string>; ports: { name: string; port: number }[] };
    metadata: { labels: Record<string, string> };
  };
  for (const [k, v] of Object.entries(sm.spec.selector.matchLabels)) t.is(svc.metadata.labels[k], v);
  const port = svc.spec.ports.find((p) => p.name === sm.spec.endpoints[0]!.port)!;
  t.is(port.port, loadConfig({ env: {}, flags: { stateDir: '/nonexistent' } }).metrics.port);
  t.is(sm.spec.endpoints[0]!.path, '/metrics');
  const ds = find(objs, 'DaemonSet') as unknown as {
    spec: { template: { metadata: { labels: Record<string, string> } } };
  };
  for (const [k, v] of Object.entries(svc.spec.selector)) t.is(ds.spec.template.metadata.labels[k], v);

  const dashboard = JSON.parse(readFileSync(join(DEPLOY, 'grafana/ambit.json'), 'utf8')) as {
    panels: { title: string; targets: { expr: string }[] }[];
  };
  const registered = new Set(
    (await new Metrics({ processMetrics: false }).registry.getMetricsAsJSON()).map((m) => m.name),
  );
  const used = new Set<string>();
  for (const p of dashboard.panels)
    for (const target of p.targets)
      for (const m of target.expr.matchAll(/\b((?:istio|ambit)_[a-z_]+)/g)) used.add(m[1]!);
  t.true(used.size >= 10);
  for (const name of used) t.true(registered.has(name), `${name} is not a metric of ambitd`);
  t.true(used.has('ambit_kubernetes_pods'));
});

// --- the image --------------------------------------------------------------------------------------------

test('the image: multi-stage, non-root by default, ambit on PATH, no tests or bench shipped', (t) => {
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  const stages = dockerfile.split(/^FROM /m).slice(1);
  t.true(stages.length >= 2);
  const runtime = stages.at(-1)!;
  t.regex(runtime, /^node:20-bookworm-slim/);
  // The last USER of the runtime stage is the default, and it is not root.
  const users = [...runtime.matchAll(/^USER (\S+)/gm)].map((m) => m[1]);
  t.is(users.at(-1), '65532:65532');
  t.regex(runtime, /ln -s \/opt\/ambit\/dist\/agent-cli\/main\.js \/usr\/local\/bin\/ambit /);
  t.regex(runtime, /ln -s \/opt\/ambit\/dist\/daemon\/main\.js \/usr\/local\/bin\/ambitd/);
  t.true(dockerfile.includes(`ENTRYPOINT ["node", ${NODE_FLAGS.map((f) => `"${f}"`).join(', ')}, `));
  // Built from npm ci's output: the lock file, not a resolution at build time.
  t.regex(stages[0]!, /npm ci /);
  t.regex(stages[0]!, /npm prune --omit=dev/);
  // What goes into the runtime: compiled code minus the tests, production modules, the binding.
  const copies = [...runtime.matchAll(/^COPY --from=build (\S+)/gm)].map((m) => m[1]!);
  t.true(copies.length > 0);
  for (const c of copies) t.false(/test|bench/.test(c), `${c} is copied into the image`);
  // Removed in the build stage, before the copy: a file deleted in a later layer still ships in an earlier one.
  t.regex(stages[0]!, /rm -rf dist\/test dist\/bench dist\/examples/);
  t.regex(runtime, /iptables/);
  const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim());
  for (const p of ['native/build', 'node_modules', 'dist', 'test', 'bench', '.git'])
    t.true(ignore.includes(p), p);
});

test('no file the image copies is missing from the build context', (t) => {
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  for (const m of dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm))
    for (const src of m[1]!.split(' ')) t.true(existsSync(join(ROOT, src)), src);
});
