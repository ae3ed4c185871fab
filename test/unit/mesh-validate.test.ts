import test from 'ava';
import { MeshFileError } from '../../lib/errors.js';
import { parseMesh } from '../../lib/mesh/file/parse.js';
import { TOP_KEYS, WORKLOAD_KEYS } from '../../lib/mesh/file/schema.js';
import type { PathSeg } from '../../lib/mesh/file/schema.js';
import { meshToDoc } from '../../lib/mesh/file/serialise.js';
import { fieldPath, validateMesh } from '../../lib/mesh/file/validate.js';

const VALID = {
  nodes: { 'node-a': { address: '10.0.0.1' } },
  workloads: { 'web-1': { service: 'web', node: 'node-a', addresses: ['10.0.0.2'], ports: [8080] } },
};

test('validateMesh: a document value becomes the model, defaults filled in, with no YAML involved', (t) => {
  const mesh = validateMesh(VALID, 'mesh.yaml');
  t.is(mesh.defaultPolicy, 'allow');
  t.deepEqual(mesh.nodes, [{ name: 'node-a', address: '10.0.0.1', tunnelPort: 15008 }]);
  t.is(mesh.workloads[0]?.namespace, 'default');
  t.deepEqual(
    mesh.services.map((s) => `${s.namespace}/${s.name}`),
    ['default/web'],
  );
  t.deepEqual(validateMesh(null, 'mesh.yaml'), validateMesh({}, 'mesh.yaml'));
});

test('validateMesh: a refusal is a MeshFileError with the field path; without locate there is no line', (t) => {
  const bad = { ...VALID, workloads: { 'web-1': { ...VALID.workloads['web-1'], ports: [8080, 0] } } };
  const err = t.throws(() => validateMesh(bad, 'mesh.yaml'), { instanceOf: MeshFileError });
  t.is(err?.file, 'mesh.yaml');
  t.is(err?.field, 'workloads.web-1.ports[1]');
  t.is(err?.reason, 'must be an integer between 1 and 65535, got 0');
});

test('validateMesh: locate is asked for the path, at the key for an unknown key, and its answer is appended', (t) => {
  const asked: [readonly PathSeg[], boolean][] = [];
  const locate = (path: readonly PathSeg[], atKey: boolean): string => {
    asked.push([path, atKey]);
    return 'line 7, column 3';
  };
  const err = t.throws(() => validateMesh({ ...VALID, polices: {} }, 'm.yaml', locate), {
    instanceOf: MeshFileError,
  });
  t.deepEqual(asked, [[['polices'], true]]);
  t.is(err?.field, 'polices');
  t.regex(err?.reason ?? '', /^unknown key "polices" .*\(line 7, column 3\)$/);

  asked.length = 0;
  t.throws(() => validateMesh({ defaultPolicy: 'maybe' }, 'm.yaml', locate), { instanceOf: MeshFileError });
  t.deepEqual(asked, [[['defaultPolicy'], false]]);
});

test('validateMesh: errors that are not refusals pass through unchanged', (t) => {
  const boom = new Error('boom');
  const hostile = {
    get nodes(): never {
      throw boom;
    },
  };
  t.is(
    t.throws(() => validateMesh(hostile, 'm.yaml')),
    boom,
  );
});

test('fieldPath: dotted keys, bracketed indexes, quoted keys that would be ambiguous', (t) => {
  t.is(fieldPath([]), '(root)');
  t.is(fieldPath(['workloads', 'web-1', 'ports', 1]), 'workloads.web-1.ports[1]');
  t.is(fieldPath(['nodes', 'host.example']), 'nodes["host.example"]');
});

test('schema key lists: every key the serialiser writes is one the validator accepts', (t) => {
  const mesh = parseMesh(
    `defaultPolicy: deny
nodes: { n: { address: 10.0.0.1, tunnelPort: 15018 } }
workloads:
  w: { service: s, namespace: x, node: n, addresses: [10.0.0.2], ports: [1], plaintextPorts: [2], uid: 7, mode: permissive,
       failMode: open, app: a1, version: v1, canonicalService: cs, canonicalRevision: cr,
       upstreams: [{ service: u, namespace: y, port: 2, listen: 15101 }] }
services: { s: { namespace: x, vips: [198.18.0.1], ports: [80], waypoint: wp } }
policies: { p: { action: deny, service: s, namespace: x, ports: [1], from: [{ service: a }] } }
configEntries: [{ Kind: service-defaults, Name: s, Namespace: x, Protocol: http }]
`,
    'm.yaml',
  );
  const doc = meshToDoc(mesh);
  t.deepEqual(Object.keys(doc), [...TOP_KEYS]);
  t.deepEqual(Object.keys(doc.workloads?.w ?? {}), [...WORKLOAD_KEYS]);
  t.deepEqual(validateMesh(doc, 'm.yaml'), mesh);
});

const twoOn = (a: Record<string, unknown>, b: Record<string, unknown>) => ({
  nodes: { 'node-a': { address: '10.0.0.1' }, 'node-b': { address: '10.0.0.9' } },
  workloads: {
    'web-1': { service: 'web', node: 'node-a', addresses: ['10.0.0.2'], ...a },
    'api-1': { service: 'api', node: 'node-b', ...b },
  },
});

test('validateMesh: an address and port claimed by two workloads is refused, naming both', (t) => {
  const cases: [Record<string, unknown>, Record<string, unknown>, string][] = [
    [{ ports: [8080] }, { addresses: ['10.0.0.2'], ports: [9090, 8080] }, '10.0.0.2 port 8080'],
    [{ ports: [] }, { addresses: ['10.0.0.2'], ports: [9090] }, '10.0.0.2 port 9090'],
    [{ ports: [8080, 8081] }, { addresses: ['10.0.0.2'] }, '10.0.0.2 port 8080,8081'],
    [{ ports: [] }, { addresses: ['10.0.0.2'] }, 'every port of 10.0.0.2'],
    // The same address in another spelling is the same address.
    [
      { addresses: ['2001:2::5'], ports: [80] },
      { addresses: ['2001:0002:0:0::0005'], ports: [80] },
      '2001:2::5 port 80',
    ],
    [{ ports: [80] }, { addresses: ['::ffff:10.0.0.2'], ports: [80] }, '10.0.0.2 port 80'],
  ];
  for (const [a, b, at] of cases) {
    const err = t.throws(() => validateMesh(twoOn(a, b), 'mesh.yaml'), { instanceOf: MeshFileError });
    t.is(err?.field, 'workloads.api-1.addresses');
    t.is(
      err?.reason,
      `workloads "web-1" and "api-1" both claim ${at}: an address (and port) may belong to one workload ` +
        'only, or traffic meant for one would be delivered to the other',
    );
  }
});

test('validateMesh: one address with disjoint ports is two workloads, as processes sharing a host', (t) => {
  const mesh = validateMesh(twoOn({ ports: [8080] }, { addresses: ['10.0.0.2'], ports: [9090] }), 'm.yaml');
  t.deepEqual(
    mesh.workloads.map((w) => `${w.name} ${w.addresses.join()} ${w.ports.join()}`),
    ['web-1 10.0.0.2 8080', 'api-1 10.0.0.2 9090'],
  );
});
