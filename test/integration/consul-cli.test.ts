// `ambit list` and `ambit policy ...` in Consul mode: the CLI reads the catalog and reads and writes
// intentions instead of the mesh file. Driven in-process against the Consul API emulator, or a real
// `consul agent -dev` when one is available (emulator-only tests skip then).
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { run } from '../../agent-cli/cli.js';
import { ConsulClient } from '../../lib/consul/client.js';
import type { ConsulIntention } from '../../lib/consul/intentions.js';
import { Secret } from '../../lib/consul/secret.js';
import {
  ConsulEmulator,
  type ConsulUnderTest,
  consulBinary,
  startConsul,
} from '../helpers/consul-emulator.js';

const emulatorOnly = consulBinary() ? test.skip : test;

interface Cli {
  consul: ConsulUnderTest;
  /** A mesh file path that must never be created in Consul mode. */
  mesh: string;
  cli(...args: string[]): Promise<{ code: number; out: string; err: string }>;
  client(): ConsulClient;
}

async function runCli(args: string[]): Promise<{ code: number; out: string; err: string }> {
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

async function setup(t: ExecutionContext): Promise<Cli> {
  const consul = await startConsul({ acl: true });
  const dir = await mkdtemp(join(tmpdir(), 'ambit-consul-cli-'));
  const mesh = join(dir, 'mesh.yaml');
  const clients: ConsulClient[] = [];
  t.teardown(async () => {
    for (const c of clients) c.close();
    await consul.close();
    await rm(dir, { recursive: true, force: true });
  });
  const token = consul.managementToken ? ['--consul-token', consul.managementToken] : [];
  return {
    consul,
    mesh,
    cli: (...args) => runCli(['--mesh', mesh, '--consul', consul.address, ...token, ...args]),
    client() {
      const c = new ConsulClient({
        address: consul.address,
        token: consul.managementToken ? new Secret(consul.managementToken) : undefined,
      });
      clients.push(c);
      return c;
    },
  };
}

async function enrollTwo(t: ExecutionContext, c: Cli): Promise<void> {
  let r = await c.cli(
    'enroll',
    'echo-1',
    '--service',
    'echo',
    '--node',
    'node-b',
    '--address',
    '127.0.0.1',
    '--port',
    '9000',
  );
  t.is(r.code, 0, r.err);
  r = await c.cli(
    'enroll',
    'client',
    '--service',
    'web',
    '--node',
    'node-a',
    '--address',
    '127.0.0.2',
    // A client only, but at a loopback address it must list a port (nothing listens on discard).
    '--port',
    '9',
    '--mode',
    'permissive',
    '--upstream',
    'echo=15101',
  );
  t.is(r.code, 0, r.err);
}

test('list in Consul mode: the workloads registered through Ambit, across nodes', async (t) => {
  const c = await setup(t);
  let r = await c.cli('list');
  t.is(r.code, 0, r.err);
  t.regex(r.out, /^no workloads enrolled \(Consul at 127\.0\.0\.1:\d+\)\n$/);
  await enrollTwo(t, c);
  // A service registered by another tool (no `ambit` tag) is not a workload.
  await c.client().put('/v1/agent/service/register', {
    body: { ID: 'other-1', Name: 'other', Address: '127.0.0.9', Port: 80 },
  });

  r = await c.cli('list', '--json');
  t.is(r.code, 0, r.err);
  // JSON has no undefined: `uid` is absent.
  const got: unknown = JSON.parse(r.out);
  t.deepEqual(got, [
    {
      name: 'client',
      service: 'web',
      namespace: 'default',
      node: 'node-a',
      addresses: ['127.0.0.2'],
      ports: [9],
      mode: 'permissive',
      upstreams: [
        {
          service: 'echo',
          namespace: 'default',
          listenHost: '127.0.0.1',
          listenPort: 15101,
        },
      ],
    },
    {
      name: 'echo-1',
      service: 'echo',
      namespace: 'default',
      node: 'node-b',
      addresses: ['127.0.0.1'],
      ports: [9000],
      mode: 'strict',
      upstreams: [],
    },
  ]);

  r = await c.cli('list');
  t.is(r.code, 0, r.err);
  t.deepEqual(r.out.split('\n'), [
    'NAME    SERVICE  NAMESPACE  NODE    ADDRESSES  PORTS  MODE',
    'client  web      default    node-a  127.0.0.2  9      permissive',
    'echo-1  echo     default    node-b  127.0.0.1  9000   strict',
    '',
  ]);
  // Nothing went to a mesh file.
  await t.throwsAsync(stat(c.mesh));
});

test('policy in Consul mode: deny/allow write intentions, list and remove them', async (t) => {
  const c = await setup(t);
  await enrollTwo(t, c);
  const exact = (source: string, destination: string) =>
    c.client().get<ConsulIntention & { Description: string }>('/v1/connect/intentions/exact', {
      query: { source, destination },
      allow404: true,
    });

  let r = await c.cli('policy', 'deny', '--to', 'echo', '--from', 'web');
  t.is(r.code, 0, r.err);
  t.is(r.out, 'added intention web->echo: deny\n');
  const i = await exact('web', 'echo');
  t.is(i.status, 200);
  t.is(i.body.Action, 'deny');
  t.is(i.body.Description, 'ambit policy deny --to echo --from web');

  // Again with allow: the same intention, updated; two sources are two intentions; no source is `*`.
  r = await c.cli('policy', 'allow', '--to', 'echo', '--from', 'web', '--from', 'ops.*');
  t.is(r.code, 0, r.err);
  t.is(r.out, 'updated intention web->echo: allow\nadded intention ops->echo: allow\n');
  t.is((await exact('web', 'echo')).body.Action, 'allow');
  r = await c.cli('policy', 'deny', '--to', 'echo', '--from', '*');
  t.is(r.code, 0, r.err);
  t.is(r.out, 'added intention *->echo: deny\n');

  r = await c.cli('policy', 'list');
  t.is(r.code, 0, r.err);
  t.deepEqual(r.out.split('\n'), [
    'SOURCE  DESTINATION  ACTION  PRECEDENCE',
    'ops     echo         allow   9',
    'web     echo         allow   9',
    '*       echo         deny    8',
    "default: Consul's, or ambitd's defaultPolicy where set (when no intention matches)",
    '',
  ]);
  r = await c.cli('policy', 'list', '--json');
  t.is(r.code, 0, r.err);
  t.deepEqual(
    (JSON.parse(r.out) as ConsulIntention[]).map((x) => [x.SourceName, x.DestinationName, x.Action]),
    [
      ['ops', 'echo', 'allow'],
      ['web', 'echo', 'allow'],
      ['*', 'echo', 'deny'],
    ],
  );

  r = await c.cli('policy', 'remove', 'web->echo');
  t.is(r.code, 0, r.err);
  t.is(r.out, 'removed intention web->echo\n');
  t.is((await exact('web', 'echo')).status, 404);
  r = await c.cli('policy', 'remove', 'web->echo');
  t.is(r.code, 1);
  t.is(r.err, 'ambit: intention web->echo not found\n');
  r = await c.cli('policy', 'remove', 'deny-web-to-echo');
  t.is(r.code, 1);
  t.regex(
    r.err,
    /^ambit: policy "deny-web-to-echo": in Consul mode a policy is an intention, named <source>-><destination>/,
  );
  await t.throwsAsync(stat(c.mesh));
});

test('policy in Consul mode: what intentions cannot express is refused with the reason', async (t) => {
  const c = await setup(t);
  const refused: [string[], RegExp][] = [
    [['--port', '8080'], /^ambit: --port: in Consul mode policy is intentions, which have no ports/],
    [
      ['--name', 'deny-web'],
      /^ambit: --name: in Consul mode an intention is named by its source and destination/,
    ],
    [
      ['--from-principal', 'spiffe://x.consul/ns/default/dc/dc1/svc/web'],
      /^ambit: --from-principal "spiffe:\/\/x\.consul\/ns\/default\/dc\/dc1\/svc\/web": an intention's source is a Consul service name/,
    ],
    [['--from-namespace', 'ops'], /^ambit: --from-namespace "ops": Consul CE has no namespaces/],
    [['--from', 'web.prod'], /^ambit: --from "web\.prod": Consul CE has no namespaces/],
  ];
  for (const [extra, why] of refused) {
    const r = await c.cli('policy', 'deny', '--to', 'echo', '--from', 'web', ...extra);
    t.is(r.code, 1, extra.join(' '));
    t.regex(r.err, why);
    t.is(r.err.split('\n').length, 2, 'one line');
    t.is(r.out, '');
  }
  let r = await c.cli('policy', 'allow', '--to', 'echo.prod', '--from', 'web');
  t.is(r.code, 1);
  t.regex(r.err, /^ambit: --to "echo\.prod": Consul CE has no namespaces/);
  // Nothing was written.
  r = await c.cli('policy', 'list', '--json');
  t.deepEqual(JSON.parse(r.out), []);
  r = await c.cli('policy', 'default', 'deny');
  t.is(r.code, 1);
  t.is(
    r.err,
    "ambit: in Consul mode the default is Consul's (its default intention policy, else the ACL default), unless ambitd's defaultPolicy setting overrides it\n",
  );
  // `--from-namespace default` is every service: source `*`.
  r = await c.cli('policy', 'allow', '--to', 'echo', '--from-namespace', 'default');
  t.is(r.code, 0, r.err);
  t.is(r.out, 'added intention *->echo: allow\n');
  await t.throwsAsync(stat(c.mesh));
});

emulatorOnly('policy list shows L7 intentions as l7; a 403 names the missing permission', async (t) => {
  const emu = await ConsulEmulator.start({
    acl: {
      tokens: {
        admin: 'management',
        reader: { 'service:read': '*', 'intentions:read': '*' },
      },
    },
  });
  t.teardown(() => emu.close());
  const as = (token: string, ...args: string[]) =>
    runCli(['--consul', emu.address, '--consul-token', token, ...args]);
  const c = new ConsulClient({ address: emu.address, token: new Secret('admin') });
  t.teardown(() => c.close());
  await c.put('/v1/connect/intentions/exact', {
    query: { source: 'web', destination: 'api' },
    body: { Permissions: [{ Action: 'allow', HTTP: { PathPrefix: '/v1' } }] },
  });
  let r = await as('reader', 'policy', 'list');
  t.is(r.code, 0, r.err);
  t.is(r.out.split('\n')[1], 'web     api          l7      9');
  r = await as('reader', 'policy', 'deny', '--to', 'api', '--from', 'web');
  t.is(r.code, 1);
  t.regex(r.err, /403.*lacks intentions:write on "api"/);
  r = await as('nobody', 'list');
  t.is(r.code, 1);
  t.regex(r.err, /ACL not found/);
});
