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
  w: { service: s, namespace: x, node: n, addresses: [10.0.0.2], ports: [1], uid: 7, mode: permissive,
       failMode: open, upstreams: [{ service: u, namespace: y, port: 2, listen: 15101 }] }
services: { s: { namespace: x, vips: [198.18.0.1], ports: [80], waypoint: wp } }
policies: { p: { action: deny, service: s, namespace: x, ports: [1], from: [{ service: a }] } }
`,
    'm.yaml',
  );
  const doc = meshToDoc(mesh);
  t.deepEqual(Object.keys(doc), [...TOP_KEYS]);
  t.deepEqual(Object.keys(doc.workloads?.w ?? {}), [...WORKLOAD_KEYS]);
  t.deepEqual(validateMesh(doc, 'm.yaml'), mesh);
});
