// The mesh file's configEntries and the `protocol` shorthand: what the model holds, how a refusal names
// the entry, the field and the line, how the editor changes one entry and keeps the rest; and how the
// Consul side leaves out an entry lib/l7 refuses and keeps the others.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { parseEntries } from '../../agent-cli/entries-file.js';
import { MeshFileSource } from '../../daemon/state/file-source.js';
import { StateStore } from '../../daemon/state/store.js';
import { validateLeniently } from '../../lib/consul/config-entries.js';
import { MeshFileError } from '../../lib/errors.js';
import { L7ConfigError } from '../../lib/l7/errors.js';
import { silentLogger } from '../../lib/log.js';
import { waypointChains } from '../../lib/mesh/chains.js';
import { editMeshFile, removeConfigEntry, setConfigEntry } from '../../lib/mesh/edit.js';
import { fieldSteps } from '../../lib/mesh/file/entries.js';
import { parseMesh } from '../../lib/mesh/file/parse.js';
import { meshToDoc } from '../../lib/mesh/file/serialise.js';
import { validateMesh } from '../../lib/mesh/file/validate.js';

const refusal = (text: string, file = 'mesh.yaml'): string => {
  const err = (() => {
    try {
      parseMesh(text, file);
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  if (!(err instanceof MeshFileError)) throw new Error(`not refused: ${String(err)}`);
  return err.message;
};

test('configEntries: the model holds them, and each service its protocol from them', (t) => {
  const mesh = parseMesh(
    `services:
  api: { waypoint: wp }
  grpc-svc: { waypoint: wp }
  other: {}
configEntries:
  - { Kind: proxy-defaults, Name: global, Config: { protocol: http2 } }
  - { Kind: service-defaults, Name: api, Protocol: HTTP }
  - { Kind: service-defaults, Name: other, Protocol: tcp }
  - { kind: service-defaults, name: grpc-svc, protocol: grpc }
`,
    'mesh.yaml',
  );
  const proto = Object.fromEntries(mesh.services.map((s) => [s.name, s.protocol ?? 'tcp']));
  // Consul lowercases Protocol; proxy-defaults decides for a service without its own.
  t.deepEqual(proto, { api: 'http', 'grpc-svc': 'grpc', other: 'tcp' });
  t.is(mesh.configEntries?.length, 4);
  t.like(mesh.configEntries?.[3], { Kind: 'service-defaults', Name: 'grpc-svc', Protocol: 'grpc' });
  // A service no entry names, under an http2 proxy-defaults.
  const implied = parseMesh(
    'services: { x: {} }\nconfigEntries: [{ Kind: proxy-defaults, Name: global, Config: { protocol: http2 } }]\n',
    'm.yaml',
  );
  t.is(implied.services[0]?.protocol, 'http2');
});

test('configEntries: refusals name the position, the entry, the field and the line', (t) => {
  t.is(
    refusal(`configEntries:
  - Kind: service-defaults
    Name: api
    Protocol: http
  - Kind: service-router
    Name: api
    Routes:
      - Match:
          HTTP:
            path_prefix: v2
`),
    "mesh.yaml: configEntries[1] service-router/api: Routes[0].Match.HTTP.PathPrefix: doesn't start with '/': \"v2\" (line 10, column 26)",
  );
  t.is(
    refusal('configEntries:\n  - Kind: service-defaults\n    Name: api\n    Protocl: http\n'),
    'mesh.yaml: configEntries[0] service-defaults/api: Protocl: unknown field "Protocl" (line 4, column 5)',
  );
  // Cross-entry rules: a router on a tcp service names the router.
  t.regex(
    refusal('configEntries:\n  - { Kind: service-router, Name: web, Routes: [] }\n'),
    /^mesh\.yaml: configEntries\[0\] service-router\/web: discovery chain "web" uses a protocol "tcp" .*\(line 2, column 5\)$/,
  );
  t.regex(refusal('configEntries:\n  - { Name: x }\n'), /^mesh\.yaml: configEntries\[0\]: Kind: is required/);
  t.regex(
    refusal('configEntries: { Kind: service-defaults }\n'),
    /^mesh\.yaml: configEntries: must be a list/,
  );
  t.regex(
    refusal(
      'configEntries:\n  - { Kind: service-defaults, Name: a }\n  - { Kind: service-defaults, Name: a }\n',
    ),
    /configEntries\[0\] service-defaults\/a: defined more than once/,
  );
  // JSON files too, with their lines.
  t.regex(
    refusal(
      '{\n  "configEntries": [\n    { "Kind": "service-resolver", "Name": "a", "Redirect": { "Service": "b" }, "Failover": { "*": { "Service": "c" } } }\n  ]\n}\n',
      'mesh.json',
    ),
    /^mesh\.json: configEntries\[0\] service-resolver\/a: .*\(line 3, column \d+\)$/,
  );
});

test('fieldSteps: lib/l7 field paths as the keys the file spells', (t) => {
  const raw = { routes: [{ match: { http: { path_prefix: 'x' } } }], Subsets: { V1: { filter: 'y' } } };
  t.deepEqual(fieldSteps(raw, 'Routes[0].Match.HTTP.PathPrefix'), [
    'routes',
    0,
    'match',
    'http',
    'path_prefix',
  ]);
  // Map keys are the user's: never folded.
  t.deepEqual(fieldSteps(raw, 'Subsets["V1"].Filter'), ['Subsets', 'V1', 'filter']);
  t.deepEqual(fieldSteps(raw, 'Subsets["v1"].Filter'), ['Subsets', 'v1', 'Filter']);
  t.deepEqual(fieldSteps(raw, ''), []);
});

test('the protocol shorthand: a service-defaults entry in the model, refused when an entry says otherwise', (t) => {
  const mesh = parseMesh(
    `services:
  api: { waypoint: wp, protocol: http }
configEntries:
  - Kind: service-router
    Name: api
    Routes: [{ Match: { HTTP: { PathPrefix: /v2 } } }]
`,
    'mesh.yaml',
  );
  t.is(mesh.services[0]?.protocol, 'http');
  t.deepEqual(mesh.configEntries?.[1], {
    Kind: 'service-defaults',
    Name: 'api',
    Protocol: 'http',
    Meta: { 'ambit-from': 'services.api.protocol' },
  });
  // Written back: the shorthand as it was, the file's own entries as they were.
  const doc = meshToDoc(mesh);
  t.deepEqual(doc.services, { api: { waypoint: 'wp', protocol: 'http' } });
  t.is(doc.configEntries?.length, 1);
  t.deepEqual(validateMesh(doc, 'm.yaml'), mesh);

  t.is(
    refusal(
      'services:\n  api: { protocol: http }\nconfigEntries:\n  - { Kind: service-defaults, Name: api, Protocol: grpc }\n',
    ),
    'mesh.yaml: services.api.protocol: says http but service-defaults/api in configEntries says grpc: remove ' +
      'this deprecated shorthand and set Protocol there (line 2, column 20)',
  );
  // The same protocol twice is only redundant.
  t.is(
    parseMesh(
      'services:\n  api: { protocol: grpc }\nconfigEntries:\n  - { Kind: service-defaults, Name: api, Protocol: grpc }\n',
      'm.yaml',
    ).services[0]?.protocol,
    'grpc',
  );
  t.regex(
    refusal('services:\n  api: { protocol: udp }\n'),
    /services\.api\.protocol: must be one of tcp, http, http2, grpc/,
  );
});

test('editor: an entry replaced in place with the comments around it kept, then removed', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-entries-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'mesh.yaml');
  await writeFile(
    file,
    `# the mesh
configEntries:
  # api is HTTP
  - Kind: service-defaults
    Name: api
    Protocol: http
  # web too
  - { Kind: service-defaults, Name: web, Protocol: http }
`,
  );
  await editMeshFile(file, (doc) => {
    t.true(setConfigEntry(doc, { Kind: 'service-defaults', Name: 'api', Protocol: 'grpc' }));
    t.false(setConfigEntry(doc, { Kind: 'service-router', Name: 'web', Routes: [] }));
  });
  const text = await readFile(file, 'utf8');
  t.is(
    text,
    `# the mesh
configEntries:
  # api is HTTP
  - Kind: service-defaults
    Name: api
    Protocol: grpc
  # web too
  - { Kind: service-defaults, Name: web, Protocol: http }
  - Kind: service-router
    Name: web
    Routes: []
`,
  );
  // Matched as lib/l7 reads keys: `kind`/`name` in any case.
  await editMeshFile(file, (doc) => {
    t.true(removeConfigEntry(doc, { kind: 'service-router', name: 'web' }));
    t.false(removeConfigEntry(doc, { kind: 'service-router', name: 'web' }));
    t.false(removeConfigEntry(doc, { kind: 'service-defaults', name: 'api', namespace: 'other' }));
  });
  t.false((await readFile(file, 'utf8')).includes('service-router'));
  // An edit that would make the file invalid writes nothing.
  await t.throwsAsync(
    editMeshFile(file, (doc) => {
      setConfigEntry(doc, { Kind: 'service-defaults', Name: 'web', Protocol: 'tcp' });
      setConfigEntry(doc, { Kind: 'service-splitter', Name: 'web', Splits: [{ Weight: 100 }] });
    }),
    { instanceOf: MeshFileError, message: /configEntries\[2\] service-splitter\/web: .*protocol "tcp"/ },
  );
  t.true((await readFile(file, 'utf8')).includes('Name: web, Protocol: http }'));
});

test('the daemon keeps the last good entries when an edit makes one invalid', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-entries-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'mesh.yaml');
  await writeFile(
    file,
    'services: { api: { waypoint: wp } }\nconfigEntries:\n  - { Kind: service-defaults, Name: api, Protocol: http }\n',
  );
  const store = new StateStore();
  const src = new MeshFileSource(file, store, silentLogger(), { pollMs: 50, debounceMs: 10 });
  await src.start();
  t.teardown(() => src.close());
  t.is(store.service('default', 'api')?.protocol, 'http');
  const rejected = new Promise<MeshFileError>((r) => src.once('rejected', r));
  await writeFile(
    file,
    'services: { api: { waypoint: wp } }\nconfigEntries:\n  - { Kind: service-defaults, Name: api, Protocol: http, Bogus: 1 }\n',
  );
  const err = await rejected;
  t.is(err.field, 'configEntries[0] service-defaults/api: Bogus');
  t.is(store.service('default', 'api')?.protocol, 'http');
  t.is(store.mesh.configEntries?.length, 1);
});

test('Consul side: an entry lib/l7 refuses is left out, the others kept', (t) => {
  const { entries, refused } = validateLeniently(
    [
      { Kind: 'service-defaults', Name: 'api', Protocol: 'http', CreateIndex: 5, ModifyIndex: 7 },
      // RE2 has no lookahead: Consul leaves the regex to Envoy, lib/l7 refuses it at once.
      { Kind: 'service-router', Name: 'api', Routes: [{ Match: { HTTP: { PathRegex: '/(?=x)' } } }] },
      { Kind: 'service-resolver', Name: 'api', Subsets: { v1: { Filter: 'Service.Meta.version == v1' } } },
      // Valid alone, not with the rest: a subset that no resolver defines.
      { Kind: 'service-splitter', Name: 'api', Splits: [{ Weight: 100, ServiceSubset: 'v9' }] },
      { Kind: 'service-newkind', Name: 'x' },
    ],
    'consul',
  );
  t.deepEqual(
    entries.map((e) => `${e.Kind}/${e.Name}`),
    ['service-defaults/api', 'service-resolver/api'],
  );
  t.deepEqual(
    refused.map((e) => e.entry),
    ['service-router/api', '', 'service-splitter/api'],
  );
  t.regex(refused[1]?.message ?? '', /invalid config entry kind "service-newkind"/);
  t.true(refused.every((e) => e instanceof L7ConfigError && e.message.startsWith('consul: ')));
});

test('Consul side: a router whose fault Meta lib/l7 refuses keeps its routes, without the faults', (t) => {
  const { entries, refused } = validateLeniently(
    [
      { Kind: 'service-defaults', Name: 'api', Protocol: 'http' },
      {
        Kind: 'service-router',
        Name: 'api',
        Meta: { owner: 'team-a', 'ambit-fault-0': '{"Abort": {"HTTPStatus": 5003}}' },
        Routes: [{ Match: { HTTP: { PathPrefix: '/v2/' } } }],
      },
    ],
    'consul',
  );
  t.is(refused.length, 1);
  t.is(refused[0]?.field, 'Meta.ambit-fault-0.Abort.HTTPStatus');
  const router = entries.find((e) => e.Kind === 'service-router') as {
    Meta?: Record<string, string>;
    Routes: unknown[];
  };
  t.deepEqual(router.Meta, { owner: 'team-a' });
  t.is(router.Routes.length, 1);
});

test('waypointChains: one chain per service with a waypoint, tcp ones their resolver alone', (t) => {
  const mesh = parseMesh(
    `services:
  api: { waypoint: wp }
  db: { waypoint: wp }
  web: {}
configEntries:
  - { Kind: service-defaults, Name: api, Protocol: http }
  - { Kind: service-router, Name: api, Routes: [{ Match: { HTTP: { PathPrefix: /a } }, Destination: { Service: web } }] }
  - { Kind: service-defaults, Name: web, Protocol: http }
`,
    'mesh.yaml',
  );
  const chains = waypointChains(mesh);
  t.deepEqual(Object.keys(chains), ['default/api', 'default/db']);
  t.like(chains['default/api'], { Protocol: 'http', StartNode: 'router:api.default.default' });
  t.like(chains['default/db'], { Protocol: 'tcp', StartNode: 'resolver:db.default.default.dc1' });
});

test('ambit config write FILE: entries from a list or several documents, refusals with the line', (t) => {
  const two = parseEntries(
    'Kind: service-defaults\nName: a\nProtocol: http\n---\n- { Kind: service-defaults, Name: b }\n',
    'e.yaml',
  );
  t.deepEqual(
    two.map((e) => e.raw),
    [
      { Kind: 'service-defaults', Name: 'a', Protocol: 'http' },
      { Kind: 'service-defaults', Name: 'b' },
    ],
  );
  const err = t.throws(
    () =>
      parseEntries(
        '- { Kind: service-defaults, Name: a }\n- Kind: service-router\n  Name: b\n  Routes: [{ Match: { HTTP: { PathExact: x } } }]\n',
        'e.yaml',
      ),
    { instanceOf: L7ConfigError },
  );
  t.is(err?.entry, 'service-router/b');
  t.regex(
    err?.message ?? '',
    /^e\.yaml: service-router\/b: Routes\[0\]\.Match\.HTTP\.PathExact: .*\(line 4, column \d+\)$/,
  );
  t.throws(() => parseEntries('# nothing\n', 'e.yaml'), { message: /holds no config entry/ });
});

test('service-defaults Meta: ambit-waypoint opts the service in as services.<svc>.waypoint does', (t) => {
  const mesh = parseMesh(
    `services:
  web: { waypoint: wp }
configEntries:
  - { Kind: service-defaults, Name: api, Protocol: http, Meta: { ambit-waypoint: wp } }
  - { Kind: service-defaults, Name: web, Protocol: http, Meta: { ambit-waypoint: wp } }
  - { Kind: service-defaults, Name: db, Meta: { owner: team-a } }
`,
    'mesh.yaml',
  );
  const byName = Object.fromEntries(mesh.services.map((s) => [s.name, s]));
  // api is named by its entry alone; web says it twice, the same way; db's Meta opts into nothing.
  t.like(byName.api, { namespace: 'default', waypoint: 'wp', protocol: 'http', vips: [], ports: [] });
  t.like(byName.web, { waypoint: 'wp', protocol: 'http' });
  t.false('db' in byName);
  // The daemon's config_dump shows a chain for every service with a waypoint, whichever way it opted in.
  t.deepEqual(Object.keys(waypointChains(mesh)).sort(), ['default/api', 'default/web']);
});

test('service-defaults Meta: ambit-vips and ambit-service-ports as services.<svc>.vips and ports', (t) => {
  const mesh = parseMesh(
    `configEntries:
  - Kind: service-defaults
    Name: api
    Meta: { ambit-vips: "198.18.0.10, 2001:2:0:0::10", ambit-service-ports: "80:8080,443" }
`,
    'mesh.yaml',
  );
  t.like(mesh.services[0], {
    name: 'api',
    vips: ['198.18.0.10', '2001:2::10'],
    ports: [
      { port: 80, targetPort: 8080 },
      { port: 443, targetPort: 443 },
    ],
    waypoint: undefined,
  });
  t.is(
    refusal(
      'configEntries:\n  - Kind: service-defaults\n    Name: api\n    Meta: { ambit-vips: 198.18.0.10 }\n',
    ),
    'mesh.yaml: configEntries[0] service-defaults/api: Meta["ambit-vips"]: a service with vips must list ' +
      'the ports its vips accept (ambit-service-ports, or services.api.ports) (line 4, column 25)',
  );
  t.regex(
    refusal(
      'configEntries:\n  - { Kind: service-defaults, Name: api, Meta: { ambit-service-ports: "80:x" } }\n',
    ),
    /configEntries\[0\] service-defaults\/api: Meta\["ambit-service-ports"\]: "80:x" is not port or port:targetPort/,
  );
  t.regex(
    refusal('configEntries:\n  - { Kind: service-defaults, Name: api, Meta: { ambit-waypoint: "w p" } }\n'),
    /Meta\["ambit-waypoint"\]: waypoint service name "w p" must use only/,
  );
  // A vip another service holds at the same port is refused wherever each one says it.
  t.regex(
    refusal(
      'services:\n  web: { vips: [198.18.0.10], ports: [80] }\nconfigEntries:\n' +
        '  - { Kind: service-defaults, Name: api, Meta: { ambit-vips: 198.18.0.10, ambit-service-ports: "80" } }\n',
    ),
    /198\.18\.0\.10 port 80 is already a vip of service "web"/,
  );
});

test('service-defaults Meta: a value services.<svc> contradicts is refused, naming both fields', (t) => {
  t.is(
    refusal(
      'services:\n  api: { waypoint: wp-a }\nconfigEntries:\n' +
        '  - { Kind: service-defaults, Name: api, Meta: { ambit-waypoint: wp-b } }\n',
    ),
    'mesh.yaml: services.api.waypoint: says wp-a but configEntries[0] service-defaults/api: ' +
      'Meta["ambit-waypoint"] says wp-b: set it in one place (line 2, column 20)',
  );
  t.regex(
    refusal(
      'services:\n  api: { vips: [198.18.0.1], ports: [80] }\nconfigEntries:\n' +
        '  - { Kind: service-defaults, Name: api, Meta: { ambit-vips: 198.18.0.2 } }\n',
      'other.yaml',
    ),
    /^other\.yaml: services\.api\.vips: says 198\.18\.0\.1 but configEntries\[0\] service-defaults\/api: Meta\["ambit-vips"\] says 198\.18\.0\.2/,
  );
  t.regex(
    refusal(
      'services:\n  api: { ports: [80] }\nconfigEntries:\n' +
        '  - { Kind: service-defaults, Name: api, Meta: { ambit-service-ports: "80:8080" } }\n',
    ),
    /services\.api\.ports: says 80 but .*Meta\["ambit-service-ports"\] says 80:8080/,
  );
});
