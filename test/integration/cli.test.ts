import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import type { Policy, Workload } from '../../lib/mesh/model.js';
import { CLI } from '../helpers/paths.js';

/** dist/agent-cli/main.js, found from this file (dist/test/cli.test.js) wherever the checkout is. */

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function ambit(args: string[], env: Record<string, string> = {}): Promise<Result> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      // No AMBIT_* from the developer's shell may leak in and point the CLI at a real mesh.
      { env: { PATH: process.env.PATH ?? '', HOME: tmpdir(), ...env }, timeout: 20_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

async function tmp(t: { teardown: (fn: () => Promise<void>) => void }): Promise<{
  dir: string;
  mesh: string;
}> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-cli-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return { dir, mesh: join(dir, 'mesh.yaml') };
}

test('enroll, list, re-enroll, unenroll', async (t) => {
  const { mesh, dir } = await tmp(t);
  const m = ['--mesh', mesh];
  let r = await ambit([...m, 'node', 'set', 'node-a', '--address', '127.0.0.1']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^added node node-a at 127\.0\.0\.1:15008\n$/);

  r = await ambit([
    ...m,
    'enroll',
    'web-1',
    '--service',
    'web',
    '--node',
    'node-a',
    '--address',
    '127.0.0.1',
    '--port',
    '8080',
    '--uid',
    '1001',
    '--upstream',
    'api:9090=15101',
    '--upstream',
    'api.prod=127.0.0.1:15102',
  ]);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, 'enrolled workload web-1 (service web.default, 127.0.0.1 ports 8080) on node node-a\n');

  r = await ambit([...m, 'list', '--json']);
  t.is(r.code, 0, r.stderr);
  const [w] = JSON.parse(r.stdout) as Workload[];
  t.like(w, {
    name: 'web-1',
    service: 'web',
    namespace: 'default',
    node: 'node-a',
    uid: 1001,
    mode: 'strict',
  });
  t.deepEqual(w?.ports, [8080]);
  t.deepEqual(w?.upstreams, [
    { service: 'api', namespace: 'default', port: 9090, listenHost: '127.0.0.1', listenPort: 15101 },
    { service: 'api', namespace: 'prod', listenHost: '127.0.0.1', listenPort: 15102 },
  ]);

  // Every port of a loopback address (or of the node's) would make the node a relay: refused, nothing written.
  const before = await readFile(mesh, 'utf8');
  r = await ambit([
    ...m,
    'enroll',
    'web-1',
    '--service',
    'web',
    '--node',
    'node-a',
    '--address',
    '127.0.0.1',
  ]);
  t.is(r.code, 1);
  t.regex(
    r.stderr,
    /^ambit: workload web-1 at 127\.0\.0\.1, a loopback address, must list the ports it serves: give --port/,
  );
  r = await ambit([...m, 'enroll', 'batch', '--service', 'batch', '--node', 'node-a', '--uid', '1002']);
  t.is(r.code, 1);
  t.regex(r.stderr, /^ambit: workload batch at 127\.0\.0\.1, a loopback address, must list the ports/);
  t.is(await readFile(mesh, 'utf8'), before);

  // Re-enrolling updates in place; the state dir from the environment locates the mesh file.
  r = await ambit(
    [
      'enroll',
      'web-1',
      '--service',
      'web',
      '--node',
      'node-a',
      '--address',
      '198.18.1.10',
      '--mode',
      'permissive',
    ],
    { AMBIT_STATE_DIR: dir },
  );
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^updated workload web-1/);
  r = await ambit([...m, 'list']);
  t.is(
    r.stdout,
    'NAME   SERVICE  NAMESPACE  NODE    ADDRESSES    PORTS  MODE\n' +
      'web-1  web      default    node-a  198.18.1.10  *      permissive\n',
  );

  r = await ambit([...m, 'unenroll', 'web-1']);
  t.is(r.code, 0, r.stderr);
  r = await ambit([...m, 'list', '--json']);
  t.deepEqual(JSON.parse(r.stdout), []);
});

test('policy allow, list, remove, default', async (t) => {
  const { mesh } = await tmp(t);
  const m = ['--mesh', mesh];
  let r = await ambit([...m, 'policy', 'allow', '--to', 'api', '--from', 'web', '--port', '8080']);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, 'added policy allow-web-to-api-8080: allow web.default -> api.default port 8080\n');
  r = await ambit([
    ...m,
    'policy',
    'deny',
    '--to',
    'api.prod',
    '--from-namespace',
    'evil',
    '--name',
    'no-evil',
  ]);
  t.is(r.code, 0, r.stderr);

  r = await ambit([...m, 'policy', 'list', '--json']);
  const listed = JSON.parse(r.stdout) as { defaultPolicy: string; policies: Policy[] };
  t.is(listed.defaultPolicy, 'allow');
  t.deepEqual(
    listed.policies.map((p) => [p.name, p.action, p.service, p.namespace, p.ports, p.from]),
    [
      [
        'allow-web-to-api-8080',
        'allow',
        'api',
        'default',
        [8080],
        [{ service: 'web', namespace: 'default' }],
      ],
      ['no-evil', 'deny', 'api', 'prod', [], [{ namespace: 'evil' }]],
    ],
  );
  r = await ambit([...m, 'policy', 'list']);
  t.regex(r.stdout, /^NAME +ACTION +TO +PORTS +FROM\n/);
  t.regex(r.stdout, /no-evil +deny +api\.prod +\* +namespace evil\n/);

  r = await ambit([...m, 'policy', 'default', 'deny']);
  t.is(r.code, 0, r.stderr);
  r = await ambit([...m, 'policy', 'remove', 'no-evil']);
  t.is(r.code, 0, r.stderr);
  r = await ambit([...m, 'policy', 'list']);
  t.notRegex(r.stdout, /no-evil/);
  t.regex(r.stdout, /default: deny/);
});

test('user errors exit 1 with a one-line message and no stack trace', async (t) => {
  const { mesh } = await tmp(t);
  const m = ['--mesh', mesh];
  let r = await ambit([...m, 'unenroll', 'ghost']);
  t.is(r.code, 1);
  t.is(r.stderr, 'ambit: workload "ghost" not found\n');
  r = await ambit([...m, 'policy', 'remove', 'ghost']);
  t.is(r.code, 1);
  t.is(r.stderr, 'ambit: policy "ghost" not found\n');
  r = await ambit([
    ...m,
    'enroll',
    'web-1',
    '--service',
    'web',
    '--node',
    'nowhere',
    '--address',
    '127.0.0.1',
  ]);
  t.is(r.code, 1);
  t.regex(r.stderr, /^ambit: node "nowhere" is not in the mesh.*ambit node set nowhere/);
  r = await ambit([...m, 'enroll', 'web-1', '--service', 'web', '--address', '10.0.0.300']);
  t.is(r.code, 1);
  t.regex(r.stderr, /^ambit: option '--address <ip>' argument '10\.0\.0\.300' is invalid/);
  r = await ambit([
    ...m,
    'enroll',
    'web-1',
    '--service',
    'web',
    '--address',
    '10.0.0.3',
    '--upstream',
    'api',
  ]);
  t.is(r.code, 1);
  t.regex(r.stderr, /^ambit: --upstream "api": must be svc\[\.ns\]\[:port\]=listen/);
  r = await ambit([...m, 'policy', 'default', 'maybe']);
  t.is(r.code, 1);
  r = await ambit([...m, 'frobnicate']);
  t.is(r.code, 1);
  t.regex(r.stderr, /unknown command 'frobnicate'/);
  t.notRegex(r.stderr, /\n\s+at /);
});

test('an invalid mesh file exits 2 naming the file and the field', async (t) => {
  const { mesh } = await tmp(t);
  await writeFile(
    mesh,
    'nodes:\n  n1: { address: 127.0.0.1 }\nworkloads:\n  w: { node: n1, addresses: [127.0.0.1], ports: [http] }\n',
  );
  for (const args of [['list'], ['policy', 'default', 'deny'], ['policy', 'list']]) {
    const r = await ambit(['--mesh', mesh, ...args]);
    t.is(r.code, 2, args.join(' '));
    t.is(
      r.stderr,
      `ambit: ${mesh}: workloads.w.ports[0]: must be an integer between 1 and 65535, got "http" (line 4, column 50)\n`,
    );
  }
  t.regex(await readFile(mesh, 'utf8'), /\[http\]/); // untouched
  // An edit that removes the broken entry is the fix, so it is allowed.
  const fixed = await ambit(['--mesh', mesh, 'unenroll', 'w']);
  t.is(fixed.code, 0, fixed.stderr);
  t.is((await ambit(['--mesh', mesh, 'list'])).code, 0);
});

test('certs: no daemon exits 3; a daemon answer is shown as a table', async (t) => {
  // A loopback address no test binds (they all use 127.0.0.1): nothing running alongside can take it, as it
  // could a freed port.
  const port = 15000;
  let r = await ambit(['certs', '--admin', `127.0.0.9:${port}`]);
  t.is(r.code, 3);
  t.regex(
    r.stderr,
    new RegExp(
      `^ambit: cannot reach ambitd admin API at 127\\.0\\.0\\.9:${port}: ECONNREFUSED.*\\(is ambitd running\\?\\)\n$`,
    ),
  );

  const now = Date.now();
  const certs = [
    {
      workload: 'web-1',
      identity: 'spiffe://ambit.local/ns/default/dc/dc1/svc/web',
      serial: '0a1b',
      notBefore: new Date(now - 3_600_000).toISOString(),
      notAfter: new Date(now + 3 * 3_600_000 + 120_000).toISOString(),
      refreshAt: new Date(now + 3_600_000).toISOString(),
      rotations: 2,
    },
  ];
  const server: Server = createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(req.url === '/certs' ? JSON.stringify(certs) : '{}');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const admin = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  r = await ambit(['certs'], { AMBIT_ADMIN: admin });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^WORKLOAD +IDENTITY +SERIAL +EXPIRES +LEFT +REFRESH +ROTATIONS\n/);
  t.regex(
    r.stdout,
    /web-1 +spiffe:\/\/ambit\.local\/ns\/default\/dc\/dc1\/svc\/web +0a1b +\S+ +3h [12]m +in (59m \d+s|1h 0m) +2\n/,
  );
  r = await ambit(['certs', '--json', '--admin', admin]);
  t.deepEqual(JSON.parse(r.stdout), certs);
});

test('--help works on every command', async (t) => {
  const commands = [
    [],
    ['enroll'],
    ['unenroll'],
    ['list'],
    ['node'],
    ['node', 'set'],
    ['node', 'list'],
    ['policy'],
    ['policy', 'allow'],
    ['policy', 'deny'],
    ['policy', 'list'],
    ['policy', 'remove'],
    ['policy', 'default'],
    ['certs'],
  ];
  await Promise.all(
    commands.map(async (c) => {
      const r = await ambit([...c, '--help']);
      t.is(r.code, 0, c.join(' '));
      t.regex(r.stdout, new RegExp(`^Usage: ambit ${c.join(' ')}`.trimEnd()), c.join(' '));
    }),
  );
  const r = await ambit(['enroll', '--help']);
  t.regex(r.stdout, /--upstream <svc\[\.ns\]\[:port\]=listen>/);
});

test('enroll refuses an address and port already claimed by another workload, naming both', async (t) => {
  const { mesh } = await tmp(t);
  const m = ['--mesh', mesh];
  t.is((await ambit([...m, 'node', 'set', 'node-a', '--address', '198.18.0.1'])).code, 0);
  t.is((await ambit([...m, 'node', 'set', 'node-b', '--address', '198.18.0.2'])).code, 0);
  const enroll = (name: string, node: string, ...more: string[]) =>
    ambit([...m, 'enroll', name, '--service', name, '--node', node, '--address', '198.18.1.10', ...more]);
  let r = await enroll('web-1', 'node-a', '--port', '8080');
  t.is(r.code, 0, r.stderr);
  const before = await readFile(mesh, 'utf8');
  for (const more of [['--port', '8080'], []]) {
    r = await enroll('api-1', 'node-b', ...more);
    t.is(r.code, 2, more.join(' '));
    t.is(r.stdout, '');
    t.is(
      r.stderr,
      `ambit: ${mesh}: workloads.api-1.addresses: workloads "web-1" and "api-1" both claim 198.18.1.10 ` +
        'port 8080: an address (and port) may belong to one workload only, or traffic meant for one ' +
        'would be delivered to the other\n',
    );
  }
  t.is(await readFile(mesh, 'utf8'), before, 'nothing written');
  r = await enroll('api-1', 'node-b', '--port', '9090');
  t.is(r.code, 0, r.stderr);
});

test('policy: a warning for unknown services; a deny needs --from, and --from * is every source', async (t) => {
  const { mesh } = await tmp(t);
  const m = ['--mesh', mesh];
  t.is((await ambit([...m, 'node', 'set', 'node-a', '--address', '198.18.0.1'])).code, 0);
  const e = ['enroll', 'api-1', '--service', 'api', '--node', 'node-a', '--address', '198.18.1.10'];
  t.is((await ambit([...m, ...e, '--port', '80'])).code, 0);

  let r = await ambit([...m, 'policy', 'allow', '--to', 'api', '--from', 'wbe']);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, 'added policy allow-wbe-to-api: allow wbe.default -> api.default\n');
  t.is(
    r.stderr,
    'ambit: warning: policy allow-wbe-to-api names service wbe.default, which the mesh does not know ' +
      '(no workload or services entry has it); it takes effect once one does\n',
  );

  r = await ambit([...m, 'policy', 'deny', '--to', 'api']);
  t.is(r.code, 1);
  t.is(r.stdout, '');
  t.is(
    r.stderr,
    "ambit: policy deny needs a source: pass --from '*' to deny every source, or name them with --from, " +
      '--from-namespace or --from-principal\n',
  );
  t.notRegex(await readFile(mesh, 'utf8'), /deny/);

  r = await ambit([...m, 'policy', 'deny', '--to', 'api', '--from', '*']);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, 'added policy deny-all-to-api: deny any peer -> api.default\n');
  t.is(r.stderr, '', 'api is known: no warning');
  r = await ambit([...m, 'policy', 'list', '--json']);
  const { policies } = JSON.parse(r.stdout) as { policies: Policy[] };
  t.like(
    policies.find((p) => p.name === 'deny-all-to-api'),
    { action: 'deny', from: [] },
  );
});

test('--mesh naming a missing file is an error for the commands that read it', async (t) => {
  const { mesh } = await tmp(t);
  for (const args of [['list'], ['node', 'list'], ['policy', 'list']]) {
    const r = await ambit(['--mesh', mesh, ...args]);
    t.is(r.code, 1, args.join(' '));
    t.is(r.stdout, '');
    t.is(r.stderr, `ambit: mesh file ${mesh} does not exist (given by --mesh or AMBIT_MESH_FILE)\n`);
  }
  const env = await ambit(['list'], { AMBIT_MESH_FILE: mesh });
  t.is(env.code, 1);
  t.regex(env.stderr, /does not exist/);
  // The default file, missing, is a host with nothing enrolled yet.
  const { dir } = await tmp(t);
  const dflt = await ambit(['--state-dir', dir, 'list']);
  t.is(dflt.code, 0, dflt.stderr);
  t.is(dflt.stdout, `no workloads enrolled (${join(dir, 'mesh.yaml')})\n`);
  // Commands that write still create it.
  const r = await ambit(['--mesh', mesh, 'node', 'set', 'node-a', '--address', '198.18.0.1']);
  t.is(r.code, 0, r.stderr);
  t.is((await ambit(['--mesh', mesh, 'node', 'list'])).code, 0);
});

test('enroll --node defaults to the nodeName of the daemon config, not the host name', async (t) => {
  const { mesh, dir } = await tmp(t);
  const config = join(dir, 'ambitd.yaml');
  await writeFile(config, 'nodeName: node-x\n');
  const m = ['--mesh', mesh];
  t.is((await ambit([...m, 'node', 'set', 'node-x', '--address', '198.18.0.1'])).code, 0);
  const e = ['enroll', 'web-1', '--service', 'web', '--address', '198.18.1.10', '--port', '80'];
  let r = await ambit([...m, ...e, '--config', config, '--no-capture']);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, 'enrolled workload web-1 (service web.default, 198.18.1.10 ports 80) on node node-x\n');
  r = await ambit([...m, ...e, '--no-capture'], { AMBIT_CONFIG: config });
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, 'updated workload web-1 (service web.default, 198.18.1.10 ports 80) on node node-x\n');
  r = await ambit([...m, ...e, '--no-capture'], { AMBIT_NODE_NAME: 'node-y' });
  t.is(r.code, 1);
  t.regex(r.stderr, /^ambit: node "node-y" is not in the mesh/);
});

const asRoot = process.getuid?.() === 0 ? test : test.skip;
asRoot('capture show and remove read the --config they are given', async (t) => {
  const { dir } = await tmp(t);
  const config = join(dir, 'ambitd.yaml');
  await writeFile(config, 'captureBakend: nft\n');
  for (const cmd of ['show', 'remove']) {
    const r = await ambit(['capture', cmd, '--config', config]);
    t.is(r.code, 1, cmd);
    t.is(r.stdout, '');
    t.regex(r.stderr, new RegExp(`^ambit: ${config}: captureBakend: unknown setting`), cmd);
  }
});
