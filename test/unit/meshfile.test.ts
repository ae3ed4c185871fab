import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { MeshFileSource } from '../../daemon/state/file-source.js';
import { StateStore } from '../../daemon/state/store.js';
import { MeshFileError, MeshLockedError, NotFoundError } from '../../lib/errors.js';
import { silentLogger } from '../../lib/log.js';
import {
  addPolicy,
  editMeshFile,
  removePolicy,
  removeWorkload,
  setDefaultPolicy,
  setNode,
  upsertWorkload,
} from '../../lib/mesh/edit.js';
import { parseMesh, readMeshFile } from '../../lib/mesh/file/parse.js';
import { meshToDoc } from '../../lib/mesh/file/serialise.js';
import { type Mesh, type Workload, emptyMesh } from '../../lib/mesh/model.js';

const FULL_YAML = `# the whole format
defaultPolicy: deny
nodes:
  node-a: { address: 127.0.0.1, tunnelPort: 15018 }
  node-b: { address: "::1" }
workloads:
  web-1:
    service: web
    node: node-a
    addresses: [127.0.0.1]
    ports: [8080]
    uid: 1001
    upstreams:
      - { service: api, port: 9090, listen: "127.0.0.1:15101" }
      - { service: api, namespace: prod, listen: 15102 }
      - { service: db, listen: "[::1]:15103" }
  api-1:
    service: api
    namespace: prod
    node: node-b
    addresses: ["2001:db8::3", 198.18.0.2]
    mode: permissive
services:
  api: { namespace: prod, vips: [198.18.10.1], ports: [{ port: 80, targetPort: 8080 }, 443], waypoint: wp }
policies:
  deny-evil:
    action: deny
    service: api
    namespace: prod
    ports: [8080]
    from: [{ service: evil }, { namespace: x }, { principal: "spiffe://ambit.local/ns/x/dc/dc1/svc/y" }, {}]
  allow-web: { action: allow, service: api, namespace: prod, from: [{ service: web, namespace: default }] }
`;

const FULL_MODEL: Mesh = {
  defaultPolicy: 'deny',
  nodes: [
    { name: 'node-a', address: '127.0.0.1', tunnelPort: 15018 },
    { name: 'node-b', address: '::1', tunnelPort: 15008 },
  ],
  workloads: [
    {
      name: 'web-1',
      service: 'web',
      namespace: 'default',
      node: 'node-a',
      addresses: ['127.0.0.1'],
      ports: [8080],
      uid: 1001,
      mode: 'strict',
      upstreams: [
        { service: 'api', namespace: 'default', port: 9090, listenHost: '127.0.0.1', listenPort: 15101 },
        { service: 'api', namespace: 'prod', port: undefined, listenHost: '127.0.0.1', listenPort: 15102 },
        { service: 'db', namespace: 'default', port: undefined, listenHost: '::1', listenPort: 15103 },
      ],
    },
    {
      name: 'api-1',
      service: 'api',
      namespace: 'prod',
      node: 'node-b',
      addresses: ['2001:db8::3', '198.18.0.2'],
      ports: [],
      uid: undefined,
      mode: 'permissive',
      upstreams: [],
    },
  ],
  services: [
    {
      name: 'api',
      namespace: 'prod',
      vips: ['198.18.10.1'],
      ports: [
        { port: 80, targetPort: 8080 },
        { port: 443, targetPort: 443 },
      ],
      waypoint: 'wp',
    },
    // Implied by workload web-1.
    { name: 'web', namespace: 'default', vips: [], ports: [], waypoint: undefined },
  ],
  policies: [
    {
      name: 'deny-evil',
      action: 'deny',
      service: 'api',
      namespace: 'prod',
      ports: [8080],
      from: [
        { service: 'evil', namespace: undefined, principal: undefined },
        { service: undefined, namespace: 'x', principal: undefined },
        { service: undefined, namespace: undefined, principal: 'spiffe://ambit.local/ns/x/dc/dc1/svc/y' },
        { service: undefined, namespace: undefined, principal: undefined },
      ],
    },
    {
      name: 'allow-web',
      action: 'allow',
      service: 'api',
      namespace: 'prod',
      ports: [],
      from: [{ service: 'web', namespace: 'default', principal: undefined }],
    },
  ],
};

const MINIMAL = 'nodes:\n  n1: { address: 127.0.0.1 }\n';

const withDir = async (t: { teardown: (fn: () => Promise<void>) => void }): Promise<string> => {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-meshfile-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
};

const workload = (name: string, extra: Partial<Workload> = {}): Workload => ({
  name,
  service: name,
  namespace: 'default',
  node: 'n1',
  addresses: ['127.0.0.1'],
  ports: [],
  uid: undefined,
  mode: 'strict',
  upstreams: [],
  ...extra,
});

test('a full YAML file parses to the model', (t) => {
  t.deepEqual(parseMesh(FULL_YAML, 'mesh.yaml'), FULL_MODEL);
});

test("every port is allowed at an address that is not the node's own; listed ports anywhere", (t) => {
  const mesh = parseMesh(
    'nodes:\n  n1: { address: 198.18.0.1 }\nworkloads:\n' +
      '  own: { node: n1, addresses: [198.18.0.7] }\n' +
      '  lo: { node: n1, addresses: [127.0.0.1, "::1"], ports: [8080] }\n' +
      '  host: { node: n1, addresses: [198.18.0.1], ports: [22] }\n',
    'mesh.yaml',
  );
  t.deepEqual(
    mesh.workloads.map((w) => [w.name, w.ports]),
    [
      ['own', []],
      ['lo', [8080]],
      ['host', [22]],
    ],
  );
});

test('the same mesh in JSON parses to the same model', (t) => {
  const json = JSON.stringify(meshToDoc(FULL_MODEL), null, 2);
  t.deepEqual(parseMesh(json, 'mesh.json'), FULL_MODEL);
});

test('an empty file, or empty sections, are an empty mesh', (t) => {
  t.deepEqual(parseMesh('', 'm.yaml'), emptyMesh());
  t.deepEqual(parseMesh('# nothing yet\n', 'm.yaml'), emptyMesh());
  t.deepEqual(parseMesh('nodes:\nworkloads:\npolicies: {}\n', 'm.yaml'), emptyMesh());
  t.deepEqual(parseMesh('', 'm.json'), emptyMesh());
});

const errorCases: [string, string, string, RegExp][] = [
  [
    'a port that is not a number',
    `${MINIMAL}workloads:\n  web-1:\n    node: n1\n    addresses: [127.0.0.1]\n    ports: [8080, http]\n`,
    'workloads.web-1.ports[1]',
    /must be an integer between 1 and 65535, got "http" \(line 7/,
  ],
  [
    'a port out of range',
    `${MINIMAL}workloads:\n  web-1: { node: n1, addresses: [127.0.0.1], ports: [70000] }\n`,
    'workloads.web-1.ports[0]',
    /between 1 and 65535, got 70000/,
  ],
  [
    'every port of a loopback address',
    `${MINIMAL}workloads:\n  web-1: { node: n1, addresses: [198.18.0.5, 127.0.0.1] }\n`,
    'workloads.web-1.ports',
    /must list the ports the workload serves: 127\.0\.0\.1 is a loopback address.*admin API/,
  ],
  [
    'every port of ::1',
    `${MINIMAL}workloads:\n  web-1: { node: n1, addresses: ["::1"], ports: [] }\n`,
    'workloads.web-1.ports',
    /::1 is a loopback address/,
  ],
  [
    'every port of an IPv4-mapped loopback address',
    `${MINIMAL}workloads:\n  web-1: { node: n1, addresses: ["::ffff:127.0.0.9"] }\n`,
    'workloads.web-1.ports',
    /::ffff:127\.0\.0\.9 is a loopback address/,
  ],
  [
    'every port of the unspecified address (it connects to the host)',
    `${MINIMAL}workloads:\n  web-1: { node: n1, addresses: [0.0.0.0] }\n`,
    'workloads.web-1.ports',
    /0\.0\.0\.0 is a loopback address/,
  ],
  [
    "every port of the node's own address",
    'nodes:\n  n1: { address: 198.18.0.1 }\nworkloads:\n  batch: { node: n1, addresses: ["198.18.0.1"] }\n',
    'workloads.batch.ports',
    /198\.18\.0\.1 is the address of its node "n1"/,
  ],
  ['an unknown key (a typo)', `${MINIMAL}polices: {}\n`, 'polices', /unknown key "polices".*policies/],
  [
    'an unknown nested key',
    'nodes:\n  n1: { address: 127.0.0.1, tunelPort: 1 }\n',
    'nodes.n1.tunelPort',
    /unknown key "tunelPort"/,
  ],
  [
    'a workload on an unknown node',
    `${MINIMAL}workloads:\n  web-1: { node: n2, addresses: [127.0.0.1] }\n`,
    'workloads.web-1.node',
    /node "n2" is not defined in nodes \(known nodes: n1\)/,
  ],
  [
    'a bad IP address',
    `${MINIMAL}workloads:\n  web-1: { node: n1, addresses: [127.0.0.300] }\n`,
    'workloads.web-1.addresses[0]',
    /IPv4 or IPv6 address literal, got "127.0.0.300"/,
  ],
  [
    'a workload without addresses',
    `${MINIMAL}workloads:\n  web-1: { node: n1 }\n`,
    'workloads.web-1.addresses',
    /at least one IP address/,
  ],
  [
    'two upstreams listening on one address',
    `${MINIMAL}workloads:\n  a: { node: n1, addresses: [127.0.0.1], ports: [1], upstreams: [{ service: x, listen: 15101 }] }\n` +
      `  b: { node: n1, addresses: [127.0.0.1], ports: [2], upstreams: [{ service: y, listen: "127.0.0.1:15101" }] }\n`,
    'workloads.b.upstreams[0].listen',
    /127\.0\.0\.1:15101 on node "n1" is already used by an upstream of workload "a"/,
  ],
  [
    'an invalid mode',
    `${MINIMAL}workloads:\n  w: { node: n1, addresses: [127.0.0.1], mode: strct }\n`,
    'workloads.w.mode',
    /must be one of strict, permissive, got "strct"/,
  ],
  ['a policy without an action', 'policies:\n  p: { service: api }\n', 'policies.p.action', /is required/],
  [
    'a bad YAML syntax',
    'nodes:\n  n1: { address: 127.0.0.1\nworkloads: {}\n',
    'line 3, column 1',
    /syntax error/,
  ],
  ['a duplicate key', 'nodes: {}\nnodes: {}\n', 'line 2, column 1', /keys must be unique/],
];

for (const [what, text, field, reason] of errorCases) {
  test(`${what} is an error naming the file and the field`, (t) => {
    const err = t.throws(() => parseMesh(text, '/etc/ambit/mesh.yaml'), { instanceOf: MeshFileError });
    t.is(err?.file, '/etc/ambit/mesh.yaml');
    t.is(err?.field, field);
    t.regex(err?.reason ?? '', reason);
    t.true(err?.message.startsWith(`/etc/ambit/mesh.yaml: ${field}: `));
  });
}

test('invalid JSON in a .json file names the line', (t) => {
  const err = t.throws(() => parseMesh('{\n  "nodes": {},\n}\n', 'mesh.json'), { instanceOf: MeshFileError });
  t.regex(err?.field ?? '', /^line 3, column 1$/);
  // YAML-only syntax is not JSON either, even though the YAML parser would take it.
  t.throws(() => parseMesh('{ nodes: {} }', 'mesh.json'), {
    instanceOf: MeshFileError,
    message: /invalid JSON/,
  });
});

test('readMeshFile: a missing file is an empty mesh; an unreadable one is a MeshFileError', async (t) => {
  const dir = await withDir(t);
  t.deepEqual(await readMeshFile(join(dir, 'none.yaml')), emptyMesh());
  await t.throwsAsync(readMeshFile(dir), { instanceOf: MeshFileError, message: /cannot read/ });
});

test('editMeshFile keeps comments and layout of what it did not change', async (t) => {
  const dir = await withDir(t);
  const file = join(dir, 'mesh.yaml');
  await writeFile(
    file,
    '# Production mesh, owned by the platform team\nnodes:\n  n1: { address: 127.0.0.1 } # rack 4\n' +
      'workloads:\n  web-1:\n    # the storefront\n    node: n1\n    addresses: [127.0.0.1] # loopback\n    ports: [8080]\n',
  );
  const mesh = await editMeshFile(file, (doc) => {
    upsertWorkload(doc, workload('web-1', { service: 'web-1', ports: [8081] }));
    upsertWorkload(doc, workload('api-1', { addresses: ['198.18.0.12'] }));
  });
  const text = await readFile(file, 'utf8');
  t.true(text.startsWith('# Production mesh, owned by the platform team\n'));
  t.regex(text, /# rack 4/);
  t.regex(text, /# the storefront/);
  t.regex(text, /# loopback/);
  t.regex(text, /ports: \[ 8081 \]/);
  t.deepEqual(
    mesh.workloads.map((w) => [w.name, w.ports]),
    [
      ['web-1', [8081]],
      ['api-1', []],
    ],
  );
  t.deepEqual(parseMesh(text, file), mesh);
});

test('editMeshFile writes atomically: a new inode, mode 0644, no temp files, readers never see a torso', async (t) => {
  const dir = await withDir(t);
  const file = join(dir, 'mesh.yaml');
  await writeFile(file, MINIMAL, { mode: 0o600 });
  const before = await stat(file);
  let reading = true;
  let reads = 0;
  const reader = (async () => {
    while (reading) {
      parseMesh(await readFile(file, 'utf8'), file); // throws on a half-written file
      reads++;
    }
  })();
  for (let i = 0; i < 30; i++) {
    await editMeshFile(file, (doc) => {
      upsertWorkload(doc, workload(`w-${i}`, { addresses: [`198.18.1.${i}`] }));
    });
  }
  reading = false;
  await reader;
  t.true(reads > 0);
  const after = await stat(file);
  t.not(after.ino, before.ino);
  t.is(after.mode & 0o777, 0o644);
  t.deepEqual(await readdir(dir), ['mesh.yaml']);
  t.is((await readMeshFile(file)).workloads.length, 30);
});

test('editMeshFile refuses an edit that would make the file invalid, and writes nothing', async (t) => {
  const dir = await withDir(t);
  const file = join(dir, 'mesh.yaml');
  await writeFile(file, `# keep me\n${MINIMAL}`);
  const original = await readFile(file, 'utf8');
  const err = await t.throwsAsync(
    editMeshFile(file, (doc) => {
      upsertWorkload(doc, workload('web-1', { node: 'nowhere' }));
    }),
    { instanceOf: MeshFileError },
  );
  t.is(err?.field, 'workloads.web-1.node');
  t.is(await readFile(file, 'utf8'), original);
  // An error thrown by the edit itself aborts it too, and the lock is released either way.
  await t.throwsAsync(
    editMeshFile(file, (doc) => {
      if (!removeWorkload(doc, 'ghost')) throw new NotFoundError('workload "ghost"');
    }),
    { instanceOf: NotFoundError },
  );
  t.deepEqual((await readdir(dir)).sort(), ['mesh.yaml']);
});

test('editMeshFile creates the file and its directory, and writes JSON files as JSON', async (t) => {
  const dir = await withDir(t);
  const file = join(dir, 'sub', 'mesh.json');
  await editMeshFile(file, (doc) => {
    setNode(doc, { name: 'n1', address: '10.0.0.1', tunnelPort: 15008 });
    setDefaultPolicy(doc, 'deny');
    addPolicy(doc, {
      name: 'p1',
      action: 'allow',
      service: 'api',
      namespace: 'default',
      ports: [80],
      from: [],
    });
    addPolicy(doc, {
      name: 'p2',
      action: 'allow',
      service: 'api',
      namespace: 'default',
      ports: [],
      from: [],
    });
  });
  await editMeshFile(file, (doc) => {
    t.true(removePolicy(doc, 'p2'));
    t.false(removePolicy(doc, 'p3'));
  });
  const text = await readFile(file, 'utf8');
  t.deepEqual(JSON.parse(text), {
    nodes: { n1: { address: '10.0.0.1' } },
    defaultPolicy: 'deny',
    policies: { p1: { action: 'allow', service: 'api', ports: [80] } },
  });
});

test('concurrent edits all land (the lock serializes them)', async (t) => {
  const dir = await withDir(t);
  const file = join(dir, 'mesh.yaml');
  await writeFile(file, MINIMAL);
  await Promise.all(
    Array.from({ length: 12 }, (_, i) =>
      editMeshFile(file, async (doc) => {
        // Yield inside the edit so that unserialized edits would interleave and lose each other's writes.
        await new Promise((r) => setTimeout(r, 2));
        upsertWorkload(doc, workload(`w-${i}`, { addresses: [`198.18.2.${i}`] }));
      }),
    ),
  );
  t.is((await readMeshFile(file)).workloads.length, 12);
});

test('a lock held by a live process times out with MeshLockedError; a dead holder is taken over', async (t) => {
  const dir = await withDir(t);
  const file = join(dir, 'mesh.yaml');
  await writeFile(file, MINIMAL);
  await writeFile(`${file}.lock`, `${process.pid}\n`);
  await t.throwsAsync(
    editMeshFile(file, () => {}, { lockWaitMs: 200 }),
    { instanceOf: MeshLockedError, message: /mesh\.yaml\.lock/ },
  );
  await writeFile(`${file}.lock`, '999999999\n'); // no such pid
  await editMeshFile(file, (doc) => setDefaultPolicy(doc, 'deny'), { lockWaitMs: 200 });
  t.is((await readMeshFile(file)).defaultPolicy, 'deny');
  t.deepEqual(await readdir(dir), ['mesh.yaml']);
});

const until = async (cond: () => boolean, ms: number, what: string): Promise<void> => {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

test('MeshFileSource applies live edits and keeps the last good state on a malformed one', async (t) => {
  const dir = await withDir(t);
  const file = join(dir, 'mesh.yaml');
  await writeFile(file, MINIMAL);
  const store = new StateStore();
  const source = new MeshFileSource(file, store, silentLogger(), { pollMs: 200 });
  t.teardown(() => source.close());
  const rejected: MeshFileError[] = [];
  source.on('rejected', (e: MeshFileError) => rejected.push(e));
  await source.start();
  t.truthy(store.node('n1'));
  t.truthy(source.lastLoadedAt);

  await editMeshFile(file, (doc) => {
    upsertWorkload(doc, workload('web-1', { ports: [8080] }));
  });
  await until(() => store.workload('web-1') !== undefined, 2000, 'the edit to be applied');
  t.is(store.workloadAt('127.0.0.1', 8080)?.name, 'web-1');

  await writeFile(file, `${MINIMAL}workloads:\n  web-1: { node: n1, addresses: [127.0.0.1], ports: [0] }\n`);
  await until(() => source.lastError !== undefined, 2000, 'the malformed edit to be rejected');
  t.is(source.lastError?.field, 'workloads.web-1.ports[0]');
  t.is(rejected.length, 1);
  t.deepEqual(store.workload('web-1')?.ports, [8080]); // last good state still in force

  await rm(file);
  await new Promise((r) => setTimeout(r, 400));
  t.truthy(store.workload('web-1'));

  await writeFile(file, MINIMAL);
  await until(() => store.workload('web-1') === undefined, 2000, 'the fixed file to be applied');
  t.is(source.lastError, undefined);
});

test('MeshFileSource keeps the last good state while the file is empty (an in-place save)', async (t) => {
  const dir = await withDir(t);
  const file = join(dir, 'mesh.yaml');
  const full = `${MINIMAL}workloads:\n  web-1: { node: n1, addresses: [127.0.0.1], ports: [8080] }\n`;
  await writeFile(file, full);
  const store = new StateStore();
  const source = new MeshFileSource(file, store, silentLogger(), { pollMs: 100, debounceMs: 10 });
  t.teardown(() => source.close());
  await source.start();
  t.truthy(store.workload('web-1'));
  // An editor's save, held at its first step (the file truncated) for longer than a reload takes.
  await writeFile(file, '');
  await new Promise((r) => setTimeout(r, 400));
  t.truthy(store.workload('web-1'), 'an empty file does not empty the mesh');
  t.is(source.lastError, undefined);
  await writeFile(file, full.replace('ports: [8080]', 'ports: [8081]'));
  await until(() => store.workload('web-1')?.ports[0] === 8081, 2000, 'the finished save to be applied');
});

test('MeshFileSource refuses to start on an invalid file, and starts empty without one', async (t) => {
  const dir = await withDir(t);
  const file = join(dir, 'mesh.yaml');
  const store = new StateStore();
  const empty = new MeshFileSource(file, store, silentLogger());
  await empty.start();
  empty.close();
  t.deepEqual(store.mesh, emptyMesh());
  await writeFile(file, 'nodes:\n  n1: { address: nope }\n');
  const bad = new MeshFileSource(file, new StateStore(), silentLogger());
  await t.throwsAsync(bad.start(), { instanceOf: MeshFileError, message: /nodes\.n1\.address/ });
  bad.close();
});
