import test from 'ava';
import { Refusals } from '../../daemon/limits/refusal.js';
import { DEFAULT_CLUSTER, Metrics, workloadLabels } from '../../daemon/metrics/metrics.js';
import { ConnectionAccount } from '../../daemon/proxy/account.js';
import { type ConsulHealthEntry, workloadFromEntry, workloadRegistration } from '../../lib/consul/catalog.js';
import { silentLogger } from '../../lib/log.js';
import { parseMesh } from '../../lib/mesh/file/parse.js';
import { workloadToDoc } from '../../lib/mesh/file/serialise.js';
import { workload } from '../helpers/mesh.js';

// Istio's conventions (Standard Metrics): app and version from the workload's labels, else "unknown";
// canonical service from its canonical name, else app, else the workload; canonical revision from its
// canonical revision, else version, else "latest"; an end nothing is known of is "unknown" throughout.

test('every label set: the workload metadata wins', (t) => {
  const meta = { app: 'shop', version: 'v2', canonicalService: 'storefront', canonicalRevision: 'r9' };
  t.deepEqual(workloadLabels({ workload: 'web-1', service: 'web', meta }, 'dc7'), {
    app: 'shop',
    version: 'v2',
    canonical_service: 'storefront',
    canonical_revision: 'r9',
    cluster: 'dc7',
  });
});

test('nothing set: app is the service, version unknown, revision latest', (t) => {
  t.deepEqual(workloadLabels({ workload: 'web-1', service: 'web' }, 'dc1'), {
    app: 'web',
    version: 'unknown',
    canonical_service: 'web',
    canonical_revision: 'latest',
    cluster: 'dc1',
  });
});

test('canonical names fall back to app and version, not to the service', (t) => {
  t.deepEqual(
    workloadLabels({ workload: 'web-1', service: 'web', meta: { app: 'shop', version: 'v3' } }, 'x'),
    {
      app: 'shop',
      version: 'v3',
      canonical_service: 'shop',
      canonical_revision: 'v3',
      cluster: 'x',
    },
  );
});

test('an end the daemon knows nothing of is unknown throughout', (t) => {
  t.deepEqual(workloadLabels({}, 'dc1'), {
    app: 'unknown',
    version: 'unknown',
    canonical_service: 'unknown',
    canonical_revision: 'unknown',
    cluster: 'unknown',
  });
});

test('the cluster is the one the metrics were made with, else Istio default', (t) => {
  t.is(new Metrics({ processMetrics: false }).cluster, DEFAULT_CLUSTER);
  t.is(DEFAULT_CLUSTER, 'Kubernetes');
  t.is(new Metrics({ processMetrics: false, cluster: 'dc9' }).cluster, 'dc9');
});

test("a connection's labels carry both ends' metadata and the workload namespace", (t) => {
  const metrics = new Metrics({ processMetrics: false, cluster: 'east' });
  const log = silentLogger();
  const deps = { metrics, log, refusals: new Refusals(metrics, log) };
  const src = {
    workload: 'client',
    namespace: 'shop',
    service: 'web',
    principal: 'p-src',
    meta: { version: 'v1' },
  };
  const dst = {
    workload: 'api-1',
    namespace: 'backend',
    service: 'api',
    principal: 'p-dst',
    meta: { app: 'api-app', canonicalRevision: 'canary' },
  };
  const l = new ConnectionAccount(deps, 'inbound', src, dst, 'mutual_tls').labels('-');
  t.like(l, {
    reporter: 'destination',
    source_workload: 'client',
    source_workload_namespace: 'shop',
    source_app: 'web',
    source_version: 'v1',
    source_canonical_service: 'web',
    source_canonical_revision: 'v1',
    source_cluster: 'east',
    destination_workload: 'api-1',
    destination_workload_namespace: 'backend',
    destination_app: 'api-app',
    destination_version: 'unknown',
    destination_canonical_service: 'api-app',
    destination_canonical_revision: 'canary',
    destination_cluster: 'east',
  });
  // Another version of the same pair is another series, not the cached one.
  const other = new ConnectionAccount(
    deps,
    'inbound',
    { ...src, meta: { version: 'v2' } },
    dst,
    'mutual_tls',
  );
  t.is(other.labels('-').source_version, 'v2');
  // A service whose endpoint is not resolved has no workload namespace.
  const toService = new ConnectionAccount(
    deps,
    'outbound',
    src,
    { service: 'api', namespace: 'backend' },
    'unknown',
  );
  t.like(toService.labels('UH'), {
    destination_workload_namespace: 'unknown',
    destination_service_namespace: 'backend',
  });
});

test('the mesh file reads, checks and writes the label fields', (t) => {
  const text = `
nodes: { node-a: { address: 198.18.0.1 } }
workloads:
  web-1:
    service: web
    node: node-a
    addresses: [198.18.1.1]
    app: shop
    version: v1.2
    canonicalService: storefront
    canonicalRevision: r_3
  api-1: { node: node-a, addresses: [198.18.1.2] }
`;
  const mesh = parseMesh(text, 'mesh.yaml');
  const web = mesh.workloads.find((w) => w.name === 'web-1')!;
  t.like(web, { app: 'shop', version: 'v1.2', canonicalService: 'storefront', canonicalRevision: 'r_3' });
  t.like(workloadToDoc(web), {
    app: 'shop',
    version: 'v1.2',
    canonicalService: 'storefront',
    canonicalRevision: 'r_3',
  });
  const api = mesh.workloads.find((w) => w.name === 'api-1')!;
  t.is(api.app, undefined);
  t.false('version' in workloadToDoc(api));
  const bad = text.replace('version: v1.2', 'version: "v 1"');
  t.throws(() => parseMesh(bad, 'mesh.yaml'), { message: /version/ });
});

test('Consul Meta carries the label fields both ways, under documented keys', (t) => {
  const w = workload({
    name: 'web-1',
    service: 'web',
    node: 'node-a',
    addresses: ['198.18.1.1'],
    ports: [8080],
    app: 'shop',
    version: 'v1',
    canonicalService: 'storefront',
    canonicalRevision: 'r3',
  });
  const reg = workloadRegistration(w);
  t.like(reg.Meta, {
    app: 'shop',
    version: 'v1',
    'ambit-canonical-service': 'storefront',
    'ambit-canonical-revision': 'r3',
  });
  const entry = (meta: Record<string, string>): ConsulHealthEntry => ({
    Node: { Node: 'n1', Address: '198.18.0.1' },
    Service: { ID: reg.ID, Service: 'web', Address: '198.18.1.1', Port: 8080, Meta: meta },
  });
  t.like(workloadFromEntry(entry(reg.Meta)), {
    app: 'shop',
    version: 'v1',
    canonicalService: 'storefront',
    canonicalRevision: 'r3',
  });
  // Another tool's instance with a `version` Meta only; an empty value counts as absent.
  const foreign = workloadFromEntry(entry({ version: 'v7', app: '' }));
  t.is(foreign.version, 'v7');
  t.is(foreign.app, undefined);
  t.false('app' in workloadRegistration(workload({ name: 'x', service: 'x', node: 'n' })).Meta);
});
