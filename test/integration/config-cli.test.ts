// `ambit config write|read|list|delete` on both backends, from the same entry files: the mesh file
// (embedded) and Consul (the emulator, or a real `consul agent -dev` when one is available). What a user
// checks: what is listed and read back, that a refused write or delete names the entry and the field and
// changes nothing, and that the daemon's model (Mesh.configEntries, Service.protocol) is the same from both.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { run } from '../../agent-cli/cli.js';
import { ConsulSource } from '../../daemon/state/consul-source.js';
import { StateStore } from '../../daemon/state/store.js';
import { ConsulCache } from '../../lib/consul/cache.js';
import { ConsulClient } from '../../lib/consul/client.js';
import { validateLeniently } from '../../lib/consul/config-entries.js';
import { Secret } from '../../lib/consul/secret.js';
import { type ConfigEntry, KINDS } from '../../lib/l7/entries.js';
import { readMeshFile } from '../../lib/mesh/file/parse.js';
import type { Mesh } from '../../lib/mesh/model.js';
import { startConsul } from '../helpers/consul-emulator.js';
import { captureLogs } from '../helpers/logs.js';

interface Result {
  code: number;
  out: string;
  err: string;
}

interface Backend {
  name: 'embedded' | 'consul';
  dir: string;
  cli(...args: string[]): Promise<Result>;
  /** The model the daemon builds from this backend now. */
  model(): Promise<Mesh>;
}

async function runCli(args: string[]): Promise<Result> {
  let out = '';
  let err = '';
  const code = await run(args, {
    out: (s) => {
      out += s;
    },
    err: (s) => {
      err += s;
    },
  });
  return { code, out, err };
}

async function tmp(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-config-cli-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The mesh file holds the waypoint opt-in; the entries come from `ambit config`. */
async function embedded(t: ExecutionContext): Promise<Backend> {
  const dir = await tmp(t);
  const mesh = join(dir, 'mesh.yaml');
  await writeFile(mesh, "# the waypoint opt-in stays the file's own\nservices:\n  api: { waypoint: wp }\n");
  return {
    name: 'embedded',
    dir,
    cli: (...args) => runCli(['--mesh', mesh, ...args]),
    model: () => readMeshFile(mesh),
  };
}

/**
 * Consul, with a ConsulSource building the model as a daemon does; the waypoint opt-in is the
 * service-defaults' ambit-waypoint Meta (written by the same `ambit config write`).
 */
async function consul(
  t: ExecutionContext,
): Promise<Backend & { logs: Record<string, unknown>[]; put(entry: unknown): Promise<void> }> {
  const dir = await tmp(t);
  const c = await startConsul({ acl: true });
  const token = c.managementToken ? ['--consul-token', c.managementToken] : [];
  const client = new ConsulClient({
    address: c.address,
    token: c.managementToken ? new Secret(c.managementToken) : undefined,
  });
  const store = new StateStore();
  const logs = captureLogs('info');
  const log = logs.logger('node-a');
  const cache = new ConsulCache(dir, log);
  const source = new ConsulSource(client, store, {
    nodeName: 'node-a',
    defaultPolicy: 'allow',
    log,
    cache,
    watch: { waitMs: 2000, minIntervalMs: 10 },
  });
  t.teardown(async () => {
    source.close();
    client.close();
    // The cache writes its file a moment after the last change: done before the folder is removed.
    await cache.flush();
    await c.close();
  });
  await source.start();
  return {
    name: 'consul',
    dir,
    logs: logs.lines.get('node-a')!,
    cli: (...args) => runCli(['--consul', c.address, ...token, ...args]),
    /** Straight to Consul, past `ambit config`'s own check. */
    async put(entry) {
      await client.put('/v1/config', { body: entry });
    },
    async model() {
      // The watches answer within their wait; a changed model is applied within a few of them.
      const want = JSON.stringify(await consulEntries(client));
      for (let i = 0; i < 100; i++) {
        if (JSON.stringify(stripIndexes(store.mesh.configEntries ?? [])) === want) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      return store.mesh;
    },
  };
}

/** What Consul holds now, as lib/l7 reads it (what the model must hold). */
async function consulEntries(client: ConsulClient): Promise<ConfigEntry[]> {
  const raw: unknown[] = [];
  for (const k of KINDS) {
    const res = await client.get<unknown[]>(`/v1/config/${k}`, { allow404: true });
    if (Array.isArray(res.body)) raw.push(...res.body);
  }
  return stripIndexes(validateLeniently(raw, 'consul').entries);
}

/** Consul's bookkeeping (its indexes) is not part of what the entries say. */
function stripIndexes(entries: readonly ConfigEntry[]): ConfigEntry[] {
  return entries.map((e) => {
    const { CreateIndex: _c, ModifyIndex: _m, ...rest } = e;
    return rest as ConfigEntry;
  });
}

const ENTRIES = `# api: HTTP, v1 and v2 subsets, /v2 to v2, the rest split 90/10
Kind: service-defaults
Name: api
Protocol: http
---
- Kind: service-resolver
  Name: api
  DefaultSubset: v1
  Subsets:
    v1: { Filter: 'Service.Meta.version == v1' }
    v2: { Filter: 'Service.Meta.version == v2' }
- Kind: service-splitter
  Name: api
  Splits:
    - { Weight: 90, ServiceSubset: v1 }
    - { Weight: 10, ServiceSubset: v2 }
- Kind: service-router
  Name: api
  Routes:
    - Match: { HTTP: { PathPrefix: /v2, Methods: [GET] } }
      Destination: { ServiceSubset: v2, PrefixRewrite: /, RequestTimeout: 5s }
`;

const backends = [embedded, consul] as const;

for (const make of backends) {
  test(`${make.name}: write, list, read, delete, and the model built from them`, async (t) => {
    const b = await make(t);
    const file = join(b.dir, 'api.yaml');
    await writeFile(file, ENTRIES);
    let r = await b.cli('config', 'write', file);
    t.is(r.code, 0, r.err);
    t.is(
      r.out,
      'Config entry written: service-defaults/api\nConfig entry written: service-resolver/api\n' +
        'Config entry written: service-splitter/api\nConfig entry written: service-router/api\n',
    );

    r = await b.cli('config', 'list');
    t.is(r.code, 0, r.err);
    t.is(r.out, 'service-defaults/api\nservice-resolver/api\nservice-router/api\nservice-splitter/api\n');
    r = await b.cli('config', 'list', 'service-router');
    t.is(r.out, 'api\n');
    r = await b.cli('config', 'list', 'proxy-defaults');
    t.is(r.code, 0, r.err);
    t.is(r.out, '');

    r = await b.cli('config', 'read', 'service-router', 'api');
    t.is(r.code, 0, r.err);
    const router = JSON.parse(r.out) as Record<string, unknown>;
    t.is(router.Kind, 'service-router');
    t.is(router.Name, 'api');
    t.like(router, {
      Routes: [
        {
          Match: { HTTP: { PathPrefix: '/v2', Methods: ['GET'] } },
          Destination: { ServiceSubset: 'v2', PrefixRewrite: '/', RequestTimeout: '5s' },
        },
      ],
    });

    // The opt-in, so that the model gives api a protocol (only services with a waypoint are modelled).
    if (b.name === 'consul') {
      await writeFile(
        join(b.dir, 'opt-in.json'),
        JSON.stringify({
          Kind: 'service-defaults',
          Name: 'api',
          Protocol: 'http',
          Meta: { 'ambit-waypoint': 'wp' },
        }),
      );
      r = await b.cli('config', 'write', join(b.dir, 'opt-in.json'));
      t.is(r.code, 0, r.err);
    }
    const mesh = await b.model();
    t.is(mesh.services.find((s) => s.name === 'api')?.protocol, 'http');
    t.deepEqual((mesh.configEntries ?? []).map((e) => `${e.Kind}/${e.Name}`).sort(), [
      'service-defaults/api',
      'service-resolver/api',
      'service-router/api',
      'service-splitter/api',
    ]);
    const route = mesh.configEntries?.find((e) => e.Kind === 'service-router');
    // lib/l7 holds durations in milliseconds, whatever backend they came from.
    t.like(route, { Routes: [{ Destination: { RequestTimeout: 5000 } }] });

    r = await b.cli('config', 'delete', 'service-defaults', 'api');
    t.is(r.code, 1);
    t.regex(r.err, /deleting service-defaults\/api: service-(router|splitter)\/api: .*protocol "tcp"/);
    r = await b.cli('config', 'read', 'service-defaults', 'api');
    t.is(r.code, 0, 'a refused delete leaves the entry');

    for (const kind of ['service-router', 'service-splitter', 'service-resolver']) {
      r = await b.cli('config', 'delete', kind, 'api');
      t.is(r.code, 0, r.err);
      t.is(r.out, `Config entry deleted: ${kind}/api\n`);
    }
    r = await b.cli('config', 'delete', 'service-router', 'api');
    t.is(r.code, 1);
    t.is(r.err, 'ambit: config entry service-router/api not found\n');
    r = await b.cli('config', 'read', 'service-router', 'api');
    t.is(r.code, 1);
    r = await b.cli('config', 'list');
    t.is(r.out, 'service-defaults/api\n');
  });

  test(`${make.name}: a refused write names the entry and the field, and writes nothing`, async (t) => {
    const b = await make(t);
    const write = async (name: string, text: string): Promise<Result> => {
      const f = join(b.dir, name);
      await writeFile(f, text);
      return b.cli('config', 'write', f);
    };
    // A router on a tcp service, after a valid entry in the same file: neither is written.
    let r = await write(
      'tcp.yaml',
      '- { Kind: service-resolver, Name: web, Subsets: { v1: { Filter: "Service.Meta.version == v1" } } }\n' +
        '- Kind: service-router\n  Name: web\n  Routes: [{ Match: { HTTP: { PathPrefix: /a } } }]\n',
    );
    t.is(r.code, 1);
    t.regex(r.err, /tcp\.yaml: service-router\/web: .*protocol "tcp" that does not permit advanced routing/);

    // An unknown key: the field and its line.
    r = await write('typo.yaml', 'Kind: service-defaults\nName: web\nProtocl: http\n');
    t.is(r.code, 1);
    t.is(
      r.err,
      `ambit: ${join(b.dir, 'typo.yaml')}: service-defaults/web: Protocl: unknown field "Protocl" (line 3, column 1)\n`,
    );

    // Weights that do not sum to 100.
    r = await write(
      'weights.yaml',
      'Kind: service-defaults\nName: web\nProtocol: http\n---\n' +
        'Kind: service-splitter\nName: web\nSplits: [{ Weight: 90 }, { Weight: 5, Service: other }]\n',
    );
    t.is(r.code, 1);
    t.regex(r.err, /service-splitter\/web: Splits: .*100/);

    // A subset the resolver does not define.
    r = await write(
      'subset.json',
      JSON.stringify([
        { Kind: 'service-defaults', Name: 'web', Protocol: 'http' },
        {
          Kind: 'service-router',
          Name: 'web',
          Routes: [{ Match: { HTTP: { PathExact: '/x' } }, Destination: { ServiceSubset: 'v9' } }],
        },
      ]),
    );
    t.is(r.code, 1);
    t.regex(r.err, /service-router\/web: Routes\[0\]\.Destination\.ServiceSubset: .*"v9"/);

    r = await b.cli('config', 'list');
    t.is(r.code, 0, r.err);
    t.is(r.out, '', 'nothing was written');
    r = await b.cli('config', 'read', 'nonsense', 'x');
    t.is(r.code, 1);
    t.regex(r.err, /unknown config entry kind "nonsense"/);
  });
}

test('the same entry files give the same entries in the model from both backends', async (t) => {
  const [e, c] = [await embedded(t), await consul(t)];
  for (const b of [e, c]) {
    const file = join(b.dir, 'api.yaml');
    await writeFile(file, ENTRIES);
    const r = await b.cli('config', 'write', file);
    t.is(r.code, 0, r.err);
  }
  const order = (x: readonly ConfigEntry[]): ConfigEntry[] =>
    stripIndexes(x).sort((a, b) => `${a.Kind}/${a.Name}`.localeCompare(`${b.Kind}/${b.Name}`));
  const fromFile = order((await e.model()).configEntries ?? []);
  const fromConsul = order((await c.model()).configEntries ?? []);
  t.is(fromFile.length, 4);
  t.deepEqual(fromConsul, fromFile);
  // The embedded write kept the file's comment.
  t.regex(await readFile(join(e.dir, 'mesh.yaml'), 'utf8'), /^# the waypoint opt-in stays the file's own\n/);
});

test('consul: an entry Consul holds that lib/l7 refuses is logged once and left out, the rest kept', async (t) => {
  const c = await consul(t);
  const file = join(c.dir, 'api.yaml');
  await writeFile(file, ENTRIES);
  t.is((await c.cli('config', 'write', file)).code, 0);
  // Consul leaves regexes to Envoy; RE2 (and so lib/l7) has no lookahead.
  await c.put({
    Kind: 'service-router',
    Name: 'api',
    Routes: [{ Match: { HTTP: { PathRegex: '/(?=v3)' } } }],
  });
  const mesh = await c.model();
  t.deepEqual((mesh.configEntries ?? []).map((e) => `${e.Kind}/${e.Name}`).sort(), [
    'service-defaults/api',
    'service-resolver/api',
    'service-splitter/api',
  ]);
  // More changes rebuild the model; the refusal is not said again.
  await c.put({ Kind: 'service-defaults', Name: 'web', Protocol: 'http' });
  await c.model();
  const said = c.logs.filter((l) => l.entry === 'service-router/api');
  t.is(said.length, 1);
  t.like(said[0], {
    level: 40,
    field: 'Routes[0].Match.HTTP.PathRegex',
    msg: 'a config entry Consul holds is not valid for Ambit; leaving it out and keeping the others',
  });
  // `ambit config` refuses to write it at all.
  await writeFile(
    file,
    'Kind: service-router\nName: api\nRoutes: [{ Match: { HTTP: { PathRegex: "/(?=v3)" } } }]\n',
  );
  const r = await c.cli('config', 'write', file);
  t.is(r.code, 1);
  t.regex(r.err, /service-router\/api: Routes\[0\]\.Match\.HTTP\.PathRegex: .*\(line 3, column \d+\)/);
});
