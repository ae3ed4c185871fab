// Two daemons with Consul as the control plane: against the Consul API emulator, or against a real
// `consul agent -dev` when a consul binary is on PATH or CONSUL_BIN names one (hook-dependent tests skip).
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { type AddressInfo, type Socket, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { run } from '../../agent-cli/cli.js';
import { consulEnroll } from '../../agent-cli/consul.js';
import { Ambitd } from '../../daemon/daemon.js';
import { nodeCheckId, workloadRegistration } from '../../lib/consul/catalog.js';
import { ConsulClient } from '../../lib/consul/client.js';
import { Secret } from '../../lib/consul/secret.js';
import { ConsulPermissionError } from '../../lib/errors.js';
import { createLogger, silentLogger } from '../../lib/log.js';
import {
  consulDaemonConfig,
  echoOnce,
  echoServer,
  freePort,
  openEcho,
  roundTrip,
  sha256,
  until,
} from '../helpers/cluster.js';
import {
  ConsulEmulator,
  type ConsulUnderTest,
  consulBinary,
  startConsul,
} from '../helpers/consul-emulator.js';

// Against a real agent, the tests that drive the emulator's hooks (outage, index reset, rotations) are
// registered as skipped, with this one line saying why.
const realConsul = consulBinary();
if (realConsul)
  console.log(
    `consul tests run against ${realConsul}: outage, index and rotation tests skipped (they need the emulator's hooks)`,
  );
const withHooks = realConsul ? test.skip : test;

const log = () => (process.env.AMBIT_TEST_LOG ? createLogger('debug', 2) : silentLogger());

interface Env {
  consul: ConsulUnderTest;
  dir: string;
  daemons: Ambitd[];
  start(
    node: string,
    /** `defaultPolicy: null` leaves it unset (Consul's default decides); omitted, it is allow. */
    extra?: Partial<{ tunnel: string; token: string; defaultPolicy: 'allow' | 'deny' | null }>,
  ): Promise<Ambitd>;
  cli(...args: string[]): Promise<{ code: number; out: string; err: string }>;
  client(): ConsulClient;
}

async function env(t: ExecutionContext, opts: { acl?: boolean } = {}): Promise<Env> {
  const consul = await startConsul(opts);
  const dir = await mkdtemp(join(tmpdir(), 'ambit-consul-'));
  const daemons: Ambitd[] = [];
  t.teardown(async () => {
    await Promise.all(daemons.map((d) => d.close()));
    await consul.close();
    await rm(dir, { recursive: true, force: true });
  });
  const e: Env = {
    consul,
    dir,
    daemons,
    async start(node, extra = {}) {
      const config = consulDaemonConfig(consul, dir, node, {
        ...(extra.tunnel ? { tunnel: extra.tunnel } : {}),
        ...(extra.token ? { consulToken: extra.token } : {}),
        ...(extra.defaultPolicy === null ? {} : { defaultPolicy: extra.defaultPolicy ?? 'allow' }),
      });
      const d = await Ambitd.start(config, log());
      daemons.push(d);
      return d;
    },
    async cli(...args) {
      let out = '';
      let err = '';
      const token = consul.managementToken ? ['--consul-token', consul.managementToken] : [];
      const code = await run(['--consul', consul.address, ...token, ...args], {
        out: (s) => {
          out += s;
        },
        err: (s) => {
          err += s;
        },
      });
      return { code, out, err };
    },
    client: () => new ConsulClient({ address: consul.address }),
  };
  return e;
}

interface Mesh {
  e: Env;
  a: Ambitd;
  b: Ambitd;
  upstreamPort: number;
  echoPort: number;
  bTunnel: number;
  closeEcho(): void;
}

/** node-a runs `client` (service web) with an upstream to echo; node-b runs `echo-1` (service echo). */
async function mesh(
  t: ExecutionContext,
  opts: { acl?: boolean; defaultPolicy?: 'allow' | 'deny' | null } = {},
): Promise<Mesh> {
  const e = await env(t, opts);
  const echo = await echoServer();
  t.teardown(() => echo.server.close());
  const upstreamPort = await freePort();
  const bTunnel = await freePort();
  const a = await e.start('node-a', { defaultPolicy: opts.defaultPolicy });
  const b = await e.start('node-b', { tunnel: `127.0.0.1:${bTunnel}`, defaultPolicy: opts.defaultPolicy });
  let r = await e.cli(
    'enroll',
    'echo-1',
    '--service',
    'echo',
    '--node',
    'node-b',
    '--address',
    '127.0.0.1',
    '--port',
    String(echo.port),
  );
  t.is(r.code, 0, r.err);
  r = await e.cli(
    'enroll',
    'client',
    '--service',
    'web',
    '--node',
    'node-a',
    '--address',
    '127.0.0.1',
    // A client only: at a loopback address it must still list a port (nothing listens on discard). Its
    // TCP check goes critical once it runs, as in Consul: node-a enrolls its own workloads whatever their
    // health, and nothing here needs web as an endpoint.
    '--port',
    '9',
    '--upstream',
    `echo=${upstreamPort}`,
  );
  t.is(r.code, 0, r.err);
  await until(() => a.listeners.listening().length === 1, 20_000, 'upstream listener on node-a');
  await until(() => b.readiness().ready && b.certs.list().length === 1, 10_000, 'echo certificate on node-b');
  await until(
    () => a.store.endpoints('default', 'echo').length === 1 && a.store.node('node-b') !== undefined,
    10_000,
    'node-a knows echo',
  );
  return { e, a, b, upstreamPort, echoPort: echo.port, bTunnel, closeEcho: () => echo.server.close() };
}

const closedPromise = (s: Socket): Promise<void> => new Promise((r) => s.once('close', () => r()));

test('two daemons enrolled through Consul carry traffic with Consul-issued certificates', async (t) => {
  const m = await mesh(t);
  const payload = Buffer.from('through consul '.repeat(1000));
  const back = await roundTrip(m.upstreamPort, payload);
  t.is(back.sha256, sha256(payload));
  // Identities are Consul's: its trust domain, and a chain to its root.
  const roots = await m.e
    .client()
    .get<{ TrustDomain: string; Roots: { RootCert: string }[] }>('/v1/agent/connect/ca/roots');
  const id = m.b.certs.list()[0]!.identity;
  t.is(id, `spiffe://${roots.body.TrustDomain}/ns/default/dc/dc1/svc/echo`);
  t.deepEqual(
    m.a.certs.trustBundle().map((p) => new X509Certificate(p).fingerprint256),
    roots.body.Roots.map((r) => new X509Certificate(r.RootCert).fingerprint256),
  );
  // The node registered itself, the workloads carry their Meta, and the state is kept on disk, private.
  const nodes = await m.e
    .client()
    .get<{ Service: { Meta: Record<string, string> } }[]>('/v1/health/service/ambit');
  t.deepEqual(nodes.body.map((n) => n.Service.Meta['ambit-node']).sort(), ['node-a', 'node-b']);
  t.is(m.b.readiness().checks.consul, 'ok');
  await until(
    async () =>
      (await stat(join(m.e.dir, 'node-a', 'consul-cache.json')).catch(() => undefined)) !== undefined,
    5000,
    'cache written',
  );
  t.is((await stat(join(m.e.dir, 'node-a', 'consul-cache.json'))).mode & 0o777, 0o600);
  // Unenroll: the workload leaves every daemon's view.
  const r = await m.e.cli('unenroll', 'echo-1');
  t.is(r.code, 0, r.err);
  await until(() => m.a.store.endpoints('default', 'echo').length === 0, 10_000, 'echo gone from node-a');
});

test('a deny intention refuses new connections and closes an open one; deleting it allows again', async (t) => {
  const m = await mesh(t);
  const sock = await openEcho(m.upstreamPort);
  sock.on('error', () => {});
  const closed = closedPromise(sock);
  const c = m.e.client();
  await c.put('/v1/connect/intentions/exact', {
    query: { source: 'web', destination: 'echo' },
    body: { Action: 'deny' },
  });
  await closed;
  await t.throwsAsync(roundTrip(m.upstreamPort, Buffer.from('x')));
  t.true(m.b.store.policiesFor('default', 'echo').some((p) => p.action === 'deny'));
  await c.delete('/v1/connect/intentions/exact', { query: { source: 'web', destination: 'echo' } });
  await until(() => m.b.store.policiesFor('default', 'echo').length === 0, 10_000, 'intention removed');
  const back = await roundTrip(m.upstreamPort, Buffer.from('again'));
  t.is(back.length, 5);
});

test('intentions: precedence, the configured default, and L7 intentions deny at L4', async (t) => {
  const e = await env(t);
  const echo = await echoServer();
  t.teardown(() => echo.server.close());
  const upstreamPort = await freePort();
  const a = await e.start('node-a');
  const b = await e.start('node-b', { defaultPolicy: 'deny' });
  t.is(
    (
      await e.cli(
        'enroll',
        'echo-1',
        '--service',
        'echo',
        '--node',
        'node-b',
        '--address',
        '127.0.0.1',
        '--port',
        String(echo.port),
      )
    ).code,
    0,
  );
  t.is(
    (
      await e.cli(
        'enroll',
        'client',
        '--service',
        'web',
        '--node',
        'node-a',
        '--address',
        '127.0.0.1',
        '--port',
        '9',
        '--upstream',
        `echo=${upstreamPort}`,
      )
    ).code,
    0,
  );
  await until(
    () =>
      a.listeners.listening().length === 1 &&
      b.certs.list().length === 1 &&
      a.store.endpoints('default', 'echo').length === 1,
    10_000,
    'mesh up',
  );
  // default deny (the daemon's config, as Consul's ACL default policy): refused.
  await t.throwsAsync(roundTrip(upstreamPort, Buffer.from('x')));
  const c = e.client();
  // `* -> echo deny` (precedence 8) loses to `web -> echo allow` (precedence 9).
  await c.put('/v1/connect/intentions/exact', {
    query: { source: '*', destination: 'echo' },
    body: { Action: 'deny' },
  });
  await c.put('/v1/connect/intentions/exact', {
    query: { source: 'web', destination: 'echo' },
    body: { Action: 'allow' },
  });
  await until(
    () =>
      b.store.policiesFor('default', 'echo').length > 0 &&
      b.store.mesh.policies.some((p) => p.action === 'allow'),
    10_000,
    'intentions applied',
  );
  t.is((await roundTrip(upstreamPort, Buffer.from('ok'))).length, 2);
  // An L7 intention (Permissions) for web: denied at L4 until a waypoint enforces it.
  await c.put('/v1/connect/intentions/exact', {
    query: { source: 'web', destination: 'echo' },
    body: { Permissions: [{ Action: 'allow', HTTP: { PathPrefix: '/api' } }] },
  });
  await until(() => !b.store.mesh.policies.some((p) => p.action === 'allow'), 10_000, 'L7 intention applied');
  await t.throwsAsync(roundTrip(upstreamPort, Buffer.from('x')));
});

withHooks(
  'with Consul down traffic goes on, staleness is reported, a restarted daemon serves, and it recovers',
  async (t) => {
    const m0 = await mesh(t);
    const emu = m0.e.consul.emulator!;
    const { e } = m0;
    let { a, b } = m0;
    const open = await openEcho(m0.upstreamPort);
    await emu.down();
    await until(
      () => a.readiness().checks.consul !== 'ok' && b.readiness().checks.consul !== 'ok',
      10_000,
      'staleness noticed',
    );
    t.regex(a.readiness().checks.consul!, /stale since .*serving the last known state/);
    t.true(a.readiness().ready);
    const metrics = await (await fetch(`http://127.0.0.1:${a.ports.metrics}/metrics`)).text();
    t.regex(metrics, /ambit_consul_stale 1/);
    t.is(await echoOnce(open, 'still'), 'still');
    t.is((await roundTrip(m0.upstreamPort, Buffer.from('new conn'))).length, 8);
    // Restart both daemons while Consul is down: they start from the cached state and serve.
    await Promise.all([a.close(), b.close()]);
    open.destroy();
    e.daemons.length = 0;
    a = await e.start('node-a');
    b = await e.start('node-b', { tunnel: `127.0.0.1:${m0.bTunnel}` });
    t.not(a.readiness().checks.consul, 'ok');
    await until(
      () => a.listeners.listening().length === 1 && b.certs.list().length === 1,
      10_000,
      'restarted from cache',
    );
    t.is((await roundTrip(m0.upstreamPort, Buffer.from('after restart'))).length, 13);
    // Consul comes back: the daemons catch up by themselves, and see changes again.
    await emu.up();
    await until(
      () => a.readiness().checks.consul === 'ok' && b.readiness().checks.consul === 'ok',
      15_000,
      'recovered',
    );
    await e.client().put('/v1/connect/intentions/exact', {
      query: { source: 'web', destination: 'echo' },
      body: { Action: 'deny' },
    });
    await until(
      () => b.store.mesh.policies.some((p) => p.action === 'deny'),
      10_000,
      'change after recovery',
    );
    await t.throwsAsync(roundTrip(m0.upstreamPort, Buffer.from('x')));
  },
);

withHooks('an index that goes backwards is reset and later changes are still seen', async (t) => {
  const m = await mesh(t);
  const emu = m.e.consul.emulator!;
  const before = emu.index;
  const logged = emu.requestLog.length;
  emu.setIndexBackwards();
  t.true(emu.index < before);
  // The released queries come back with the low index; each watch starts over with a non-blocking read.
  const rereads = (): Set<string> =>
    new Set(
      emu.requestLog
        .slice(logged)
        .filter((r) => !r.blocking)
        .map((r) => r.path),
    );
  await until(
    // The health of services comes through the one /v1/health/state/any long poll (the health feed).
    () => rereads().has('/v1/catalog/services') && rereads().has('/v1/health/state/any'),
    5000,
    're-reads',
  );
  await new Promise((r) => setTimeout(r, 300));
  await m.e.client().put('/v1/connect/intentions/exact', {
    query: { source: 'web', destination: 'echo' },
    body: { Action: 'deny' },
  });
  await until(
    () => m.b.store.mesh.policies.some((p) => p.action === 'deny'),
    10_000,
    'change after the reset',
  );
  await t.throwsAsync(roundTrip(m.upstreamPort, Buffer.from('x')));
  // No spin: the request rate stays bounded after the reset.
  const n = emu.requests;
  await new Promise((r) => setTimeout(r, 1000));
  t.true(emu.requests - n < 40, `${emu.requests - n} requests in 1 s`);
});

withHooks('leaf and root rotations mid-connection drop nothing', async (t) => {
  const m = await mesh(t);
  const emu = m.e.consul.emulator!;
  const sock = await openEcho(m.upstreamPort);
  let dropped = false;
  sock.on('close', () => {
    dropped = true;
  });
  const serialB = m.b.certs.list()[0]!.serial;
  const serialA = m.a.certs.list()[0]!.serial;
  await emu.rotateLeaf('echo');
  await emu.rotateLeaf('web');
  await until(
    () => m.b.certs.list()[0]!.serial !== serialB && m.a.certs.list()[0]!.serial !== serialA,
    10_000,
    'leaves rotated',
  );
  t.is(await echoOnce(sock, 'after leaf rotation'), 'after leaf rotation');
  t.is((await roundTrip(m.upstreamPort, Buffer.from('new'))).length, 3);
  // A root rotation: both roots trusted while it lasts; leaves re-signed by the new root.
  await emu.rotateRoots();
  await until(
    () => m.a.certs.trustBundle().length === 2 && m.b.certs.trustBundle().length === 2,
    10_000,
    'both roots trusted',
  );
  await until(
    () => m.b.certs.list()[0]!.rotations >= 2 && m.a.certs.list()[0]!.rotations >= 2,
    10_000,
    'leaves re-signed',
  );
  t.is(await echoOnce(sock, 'after root rotation'), 'after root rotation');
  t.is((await roundTrip(m.upstreamPort, Buffer.from('new root'))).length, 8);
  t.false(dropped);
  sock.destroy();
});

test('a bad token gives an error naming the problem; a token without a permission names the permission', async (t) => {
  const e = await env(t, { acl: true });
  const err = await t.throwsAsync(e.start('node-a', { token: 'not-a-token' }));
  t.true(err instanceof ConsulPermissionError, String(err));
  t.regex(err!.message, /ACL not found/);
  t.notRegex(err!.message, /not-a-token/);
  if (e.consul.emulator) {
    // The emulator can make a token with exactly one permission; a real agent would need an ACL policy.
    const limited = await ConsulEmulator.start({ acl: { tokens: { reader: { 'service:read': '*' } } } });
    let msg = '';
    t.teardown(() => limited.close());
    const r = await run(
      [
        '--consul',
        limited.address,
        '--consul-token',
        'reader',
        'enroll',
        'w1',
        '--service',
        'web',
        '--node',
        'n',
        '--address',
        '127.0.0.1',
        '--port',
        '8080',
      ],
      {
        out: () => {},
        err: (s) => {
          msg += s;
        },
      },
    );
    t.is(r, 1);
    t.regex(msg, /lacks service:write on "web"/);
    t.notRegex(msg, /reader/);
  }
});

test('a workload Consul registers with every port at 127.0.0.1 serves nothing through the tunnel', async (t) => {
  const m = await mesh(t);
  // A server nobody enrolled, on the same host as node-b.
  let reached = 0;
  const stranger = createServer((c) => {
    reached++;
    c.destroy();
  });
  await new Promise<void>((r) => stranger.listen(0, '127.0.0.1', r));
  t.teardown(() => stranger.close());
  // Registered by another tool (the CLI refuses it): every port of node-b's loopback.
  const token = m.e.consul.managementToken;
  const client = new ConsulClient({
    address: m.e.consul.address,
    ...(token ? { token: new Secret(token) } : {}),
  });
  try {
    await consulEnroll(client, {
      name: 'wide',
      service: 'echo',
      namespace: 'default',
      node: 'node-b',
      addresses: ['127.0.0.1'],
      ports: [],
      uid: undefined,
      mode: 'strict',
      upstreams: [],
    });
  } finally {
    client.close();
  }
  await until(() => m.b.store.workload('wide') !== undefined, 10_000, 'node-b sees the registration');
  const key = {
    source: m.a.identityOf(m.a.store.workload('client')!),
    peer: m.b.identityOf(m.b.store.workload('echo-1')!),
    address: '127.0.0.1',
    port: m.bTunnel,
  };
  const port = (stranger.address() as AddressInfo).port;
  for (const authority of [`127.0.0.1:${port}`, `127.0.0.1:${m.b.ports.admin}`]) {
    const r = await m.a.pool.connect(key, { ':method': 'CONNECT', ':authority': authority });
    t.not(r.status, 200, authority);
    r.stream.close();
  }
  t.is(reached, 0);
  const ok = await m.a.pool.connect(key, { ':method': 'CONNECT', ':authority': `127.0.0.1:${m.echoPort}` });
  t.is(ok.status, 200);
  ok.stream.close();
});

test('answers Consul filters by ACLs are noticed: a readiness detail, a metric, and the node stays ready', async (t) => {
  const e = await env(t, { acl: true });
  // All a daemon needs except node:read: Consul then filters health answers instead of refusing them.
  const token = await e.consul.createToken({
    hcl: 'service_prefix "" { policy = "write" }\nagent_prefix "" { policy = "read" }',
    emulator: { 'service:write': '*', 'agent:read': '*' },
  });
  const a = await e.start('node-a', { token });
  await until(
    () => /filtered by ACLs/.test(a.readiness().checks.consul ?? ''),
    10_000,
    'readiness names the filtered answers',
  );
  t.regex(a.readiness().checks.consul!, /\/v1\/health\/service\/ambit/);
  t.notRegex(a.readiness().checks.consul!, /\/v1\/catalog\/services/);
  t.true(a.readiness().ready);
  t.regex(await a.metrics.registry.metrics(), /^ambit_consul_filtered_queries [1-9]/m);
  // The same reads with the management token are whole: nothing is said.
  const b = await e.start('node-b');
  await until(() => b.store.node('node-a') !== undefined, 10_000, 'node-b sees node-a');
  t.is(b.readiness().checks.consul, 'ok');
  t.regex(await b.metrics.registry.metrics(), /^ambit_consul_filtered_queries 0/m);
});

test('defaultPolicy unset: Consul decides unmatched sources (X-Consul-Default-ACL-Policy)', async (t) => {
  // ACLs on with default deny: no intention, no connection.
  const closed = await mesh(t, { acl: true, defaultPolicy: null });
  t.is(closed.b.store.mesh.defaultPolicy, 'deny');
  await t.throwsAsync(roundTrip(closed.upstreamPort, Buffer.from('x')));
  // ACLs off: Consul allows what no intention denies.
  const open = await mesh(t, { defaultPolicy: null });
  t.is(open.b.store.mesh.defaultPolicy, 'allow');
  t.is((await roundTrip(open.upstreamPort, Buffer.from('open'))).length, 4);
  // An allow intention still admits under a deny default.
  const c = new ConsulClient({
    address: closed.e.consul.address,
    token: new Secret(closed.e.consul.managementToken!),
  });
  t.teardown(() => c.close());
  await c.put('/v1/connect/intentions/exact', {
    query: { source: 'web', destination: 'echo' },
    body: { Action: 'allow' },
  });
  await until(
    () => closed.b.store.policiesFor('default', 'echo').some((p) => p.action === 'allow'),
    10_000,
    'allow intention applied',
  );
  t.is((await roundTrip(closed.upstreamPort, Buffer.from('allowed'))).length, 7);
});

withHooks(
  '200 local and 400 upstream services: at most 32 connections to the agent, never a 429',
  async (t) => {
    const e = await env(t);
    const emu = e.consul.emulator!;
    const svc = (i: number): string => `svc-${String(i).padStart(3, '0')}`;
    // Each upstream instance listens, so its TCP check (run by the emulator as Consul runs it) passes and
    // the instance stays an endpoint. Ports the OS picks (the ephemeral range) stay clear of freePort's,
    // which the other tests in this process listen on. The checks run every 30 s (the first within it),
    // svc-007's every second, for the change below.
    const servers = await Promise.all(
      Array.from({ length: 400 }, async () => {
        const s = createServer((c) => c.destroy());
        await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
        return s;
      }),
    );
    t.teardown(() => {
      for (const s of servers) s.close();
    });
    for (let u = 0; u < 400; u++) {
      emu.register(
        workloadRegistration(
          {
            name: `${svc(u)}-1`,
            service: svc(u),
            namespace: 'default',
            node: 'node-b',
            addresses: ['127.0.0.1'],
            ports: [(servers[u]!.address() as AddressInfo).port],
            uid: undefined,
            mode: 'strict',
            upstreams: [],
          },
          { checkInterval: u === 7 ? '1s' : '30s' },
        ) as unknown as Record<string, never>,
      );
    }
    // Local workloads are enrolled whatever their health: nothing listens behind these, and their checks
    // going critical changes nothing here.
    for (let l = 0; l < 200; l++) {
      emu.register(
        workloadRegistration(
          {
            name: `local-${l}`,
            service: `local-${String(l).padStart(3, '0')}`,
            namespace: 'default',
            node: 'node-a',
            addresses: ['127.0.0.1'],
            ports: [20000 + l],
            uid: undefined,
            mode: 'strict',
            upstreams: [0, 1].map((k) => ({
              service: svc((2 * l + k) % 400),
              namespace: 'default',
              port: undefined,
              listenHost: '127.0.0.1',
              listenPort: 0,
            })),
          },
          { checkInterval: '60s' },
        ) as unknown as Record<string, never>,
      );
    }
    const a = await e.start('node-a');
    await until(() => a.store.mesh.workloads.length === 600, 60_000, 'node-a sees all 600 workloads');
    await until(() => a.certs.list().length === 200, 60_000, 'a certificate for every local service');
    t.true(emu.peakConnections <= 32, `peak ${emu.peakConnections} connections`);
    t.is(emu.connectionsRefused, 0);
    // A change to one upstream still arrives through the feed: its workload dies, its check goes critical.
    await new Promise((r) => servers[7]!.close(r));
    await until(
      () => !a.store.mesh.workloads.some((w) => w.name === `${svc(7)}-1`),
      10_000,
      'a critical upstream instance leaves the endpoints',
    );
    t.true(emu.peakConnections <= 32, `peak ${emu.peakConnections} connections`);
    t.log(`600 workloads, 200 local: peak ${emu.peakConnections} connections to the agent, 0 refused`);
  },
);

test('the node check is a TTL the daemon keeps passing, never a probe of the tunnel port', async (t) => {
  const e = await env(t);
  const a = await e.start('node-a');
  const c = e.client();
  t.teardown(() => c.close());
  type Entry = { Checks: { CheckID: string; Status: string; Output: string }[] };
  const nodeCheck = async () =>
    (await c.get<Entry[]>('/v1/health/service/ambit')).body
      .flatMap((x) => x.Checks)
      .find((k) => k.CheckID === nodeCheckId('node-a'));
  t.is((await nodeCheck())?.Status, 'passing');
  // As if the TTL had run out: the daemon's next update (every 10 s) makes it passing again.
  await c.put(`/v1/agent/check/update/${encodeURIComponent(nodeCheckId('node-a'))}`, {
    body: { Status: 'critical', Output: 'test' },
  });
  t.is((await nodeCheck())?.Status, 'critical');
  const deadline = Date.now() + 15_000;
  let check = await nodeCheck();
  while (check?.Status !== 'passing' && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250));
    check = await nodeCheck();
  }
  t.is(check?.Status, 'passing');
  t.regex(check!.Output, /^ambitd: consul ok/);
  t.true(a.readiness().ready);
});
