// Issue 12, items 3, 5 and 6: a node is never a relay (every port refused at the host's own addresses, the
// daemon's listeners never a target, the admin API's changes behind a token), policies compare the trust
// domain, and the access log's source is the TCP peer.
import { execFile } from 'node:child_process';
import { readFile, stat } from 'node:fs/promises';
import { connect as h2connect } from 'node:http2';
import { type AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import test from 'ava';
import { sniForIdentity } from '../../daemon/proxy/hbone.js';
import { type Peer, authorize } from '../../daemon/rbac.js';
import { type ConsulIntention, compileIntentions } from '../../lib/consul/intentions.js';
import { addPolicy, editMeshFile } from '../../lib/mesh/edit.js';
import type { Policy, PolicySource } from '../../lib/mesh/model.js';
import {
  LocalAddresses,
  bindAccepts,
  canonicalIp,
  interfaceAddresses,
  isLoopback,
} from '../../lib/net/addresses.js';
import { ADMIN_TOKEN_FILE } from '../../lib/paths.js';
import { type Credentials, forgeLeaf } from '../helpers/attacker.js';
import {
  type Cluster,
  echoServer,
  enroll,
  freePort,
  metricSum,
  metricsText,
  startCluster,
  until,
  workload,
} from '../helpers/cluster.js';
import { captureLogs } from '../helpers/logs.js';
import { CLI } from '../helpers/paths.js';

const TD = 'ambit.local';
const id = (service: string, td = TD, ns = 'default'): string =>
  `spiffe://${td}/ns/${ns}/dc/dc1/svc/${service}`;

// --- pure functions -----------------------------------------------------------------------------------

const peer = (principal: string): Peer => {
  const m = /^spiffe:\/\/([^/]+)\/ns\/([^/]+)\/dc\/[^/]+\/svc\/([^/]+)$/.exec(principal);
  const td = /^spiffe:\/\/([^/]+)/.exec(principal)?.[1];
  return { principal, trustDomain: td, namespace: m?.[2], service: m?.[3] };
};
const src = (s: Partial<PolicySource>): PolicySource => ({
  service: undefined,
  namespace: undefined,
  principal: undefined,
  ...s,
});
const rule = (action: 'allow' | 'deny', from: PolicySource[], ports: number[] = []): Policy => ({
  name: `${action}-rule`,
  action,
  service: 'api',
  namespace: 'default',
  ports,
  from,
});

// [what, policies, default, peer, allowed]
const rbacCases: [string, Policy[], 'allow' | 'deny', string, boolean][] = [
  ['service rule, local peer', [rule('allow', [src({ service: 'friend' })])], 'deny', id('friend'), true],
  [
    'service rule, same service name in another trust domain',
    [rule('allow', [src({ service: 'friend' })])],
    'deny',
    id('friend', 'other.td'),
    false,
  ],
  [
    'namespace rule, another trust domain',
    [rule('allow', [src({ namespace: 'default' })])],
    'deny',
    id('friend', 'other.td'),
    false,
  ],
  [
    'service + namespace rule, another trust domain',
    [rule('allow', [src({ service: 'friend', namespace: 'default' })])],
    'allow',
    id('friend', 'other.td'),
    false,
  ],
  [
    'a principal rule admits its foreign principal',
    [rule('allow', [src({ principal: id('friend', 'other.td') })])],
    'deny',
    id('friend', 'other.td'),
    true,
  ],
  [
    'a principal rule admits only that principal',
    [rule('allow', [src({ principal: id('friend', 'other.td') })])],
    'deny',
    id('friend'),
    false,
  ],
  [
    'principal + service: both must match',
    [rule('allow', [src({ principal: id('friend', 'other.td'), service: 'other' })])],
    'deny',
    id('friend', 'other.td'),
    false,
  ],
  ['allow from every source, local peer', [rule('allow', [])], 'deny', id('x'), true],
  ['allow from every source: not another trust domain', [rule('allow', [])], 'deny', id('x', 'o.td'), false],
  [
    'an empty clause allows: not another trust domain',
    [rule('allow', [src({})])],
    'deny',
    id('x', 'o.td'),
    false,
  ],
  ['deny from every source denies another trust domain', [rule('deny', [])], 'allow', id('x', 'o.td'), false],
  [
    'an empty deny clause denies another trust domain',
    [rule('deny', [src({})])],
    'allow',
    id('x', 'o.td'),
    false,
  ],
  [
    'a service deny does not name a foreign peer (it falls to the default)',
    [rule('deny', [src({ service: 'evil' })])],
    'allow',
    id('evil', 'o.td'),
    true,
  ],
  [
    'a service deny still denies the local service',
    [rule('deny', [src({ service: 'evil' })])],
    'allow',
    id('evil'),
    false,
  ],
  [
    'a principal deny denies its foreign principal',
    [
      rule('deny', [src({ principal: id('evil', 'o.td') })]),
      rule('allow', [src({ principal: id('evil', 'o.td') })]),
    ],
    'allow',
    id('evil', 'o.td'),
    false,
  ],
  [
    'a foreign peer is not admitted where allows exist but name other sources',
    [rule('allow', [src({ service: 'friend' })])],
    'allow',
    id('friend', 'other.td'),
    false,
  ],
  ['no policies: the default admits', [], 'allow', id('friend', 'other.td'), true],
  ['no policies: the default refuses', [], 'deny', id('friend'), false],
  [
    'a non-Consul SPIFFE ID of this trust domain matches no service rule',
    [rule('allow', [src({ service: 'friend' })])],
    'deny',
    `spiffe://${TD}/friend`,
    false,
  ],
  [
    'a non-Consul SPIFFE ID of this trust domain matches allow-all',
    [rule('allow', [])],
    'deny',
    `spiffe://${TD}/friend`,
    true,
  ],
  [
    'a look-alike trust domain is another trust domain',
    [rule('allow', [src({ service: 'friend' })])],
    'deny',
    id('friend', `${TD}.evil`),
    false,
  ],
  [
    'a port rule does not match another port',
    [rule('allow', [src({ service: 'friend' })], [9090])],
    'deny',
    id('friend'),
    false,
  ],
];

for (const [what, policies, dflt, who, allowed] of rbacCases) {
  test(`rbac: ${what}`, (t) => {
    t.is(authorize(policies, dflt, peer(who), 8080, TD).allowed, allowed);
  });
}

test('rbac: a peer whose trust domain could not be read is never local', (t) => {
  const p: Peer = {
    principal: 'spiffe://UPPER/ns/default/dc/dc1/svc/friend',
    trustDomain: undefined,
    namespace: 'default',
    service: 'friend',
  };
  t.false(authorize([rule('allow', [src({ service: 'friend' })])], 'deny', p, 8080, TD).allowed);
  t.false(authorize([rule('allow', [])], 'deny', p, 8080, TD).allowed);
});

test('rbac: Consul intentions compile to policies that keep other trust domains out', (t) => {
  const i = (SourceName: string, Action: 'allow' | 'deny', Precedence: number): ConsulIntention => ({
    SourceName,
    DestinationName: 'api',
    Action,
    Precedence,
  });
  const decide = (list: ConsulIntention[], dflt: 'allow' | 'deny', who: string): boolean => {
    const { policies } = compileIntentions({ service: 'api', namespace: 'default' }, list, dflt);
    return authorize(policies, dflt, peer(who), 8080, TD).allowed;
  };
  for (const dflt of ['allow', 'deny'] as const) {
    t.true(decide([i('web', 'allow', 9)], dflt, id('web')), dflt);
    t.false(decide([i('web', 'allow', 9)], dflt, id('web', 'other.td')), dflt);
    t.true(decide([i('*', 'allow', 8)], dflt, id('web')), dflt);
    t.false(decide([i('*', 'allow', 8)], dflt, id('web', 'other.td')), dflt);
    t.false(decide([i('*', 'deny', 8)], dflt, id('web', 'other.td')), dflt);
    t.false(decide([i('web', 'allow', 9), i('*', 'deny', 8)], dflt, id('web', 'other.td')), dflt);
  }
});

test('addresses: canonical forms, loopback, and what a bind accepts', (t) => {
  t.is(canonicalIp('::FFFF:7f00:1'), '127.0.0.1');
  t.is(canonicalIp('0:0:0:0:0:0:0:1'), '::1');
  t.is(canonicalIp('198.18.0.1'), '198.18.0.1');
  for (const ip of ['127.0.0.1', '127.9.9.9', '::1', '::ffff:127.0.0.2', '0.0.0.0', '::', '0:0::0:1'])
    t.true(isLoopback(ip), ip);
  for (const ip of ['198.18.0.1', '128.0.0.1', '::2', 'fe80::1', '10.127.0.1']) t.false(isLoopback(ip), ip);
  const local = new LocalAddresses(() => ['198.18.7.7']);
  t.true(local.has('198.18.7.7'));
  t.true(local.has('127.0.0.5'));
  for (const ip of interfaceAddresses()) t.true(local.has(ip), ip);
  t.false(local.has('198.18.7.8'));
  t.true(bindAccepts('0.0.0.0', '198.18.7.7', local));
  t.true(bindAccepts('::', '127.0.0.1', local));
  t.false(bindAccepts('0.0.0.0', '198.18.7.8', local));
  t.true(bindAccepts('127.0.0.1', '127.0.0.2', local));
  t.true(bindAccepts('127.0.0.1', '::ffff:127.0.0.1', local));
  t.false(bindAccepts('127.0.0.1', '198.18.7.7', local));
  t.true(bindAccepts('198.18.7.7', '198.18.7.7', local));
  t.false(bindAccepts('198.18.7.7', '127.0.0.1', local));
});

// --- real daemons -------------------------------------------------------------------------------------

/** Access-log lines of node-b (JSON objects), in order. */
interface Setup {
  cluster: Cluster;
  echoPort: number;
  accepted: () => number;
  lines: Record<string, unknown>[];
  /** A leaf for any URI, signed by the mesh's CA. */
  issue: (uri: string) => Promise<Credentials>;
  close: () => Promise<void>;
}

/** node-a: client "web" (port 9, nothing listens); node-b: echo-1 on an echo server. */
async function setup(): Promise<Setup> {
  const logs = captureLogs();
  const cluster = await startCluster({ logger: logs.logger });
  const echo = await echoServer();
  await enroll(
    cluster.meshFile,
    workload({ name: 'client', service: 'web', node: 'node-a', ports: [9] }),
    workload({ name: 'echo-1', service: 'echo', node: 'node-b', ports: [echo.port] }),
  );
  await until(() => cluster.b.readiness().ready && cluster.b.certs.list().length === 1, 5000, 'node-b ready');
  // Both daemons poll the file on their own: node-a's view (its client, its certificate) is awaited too.
  await until(
    () => cluster.a.store.workload('client') !== undefined && cluster.a.certs.list().length === 1,
    5000,
    'node-a ready',
  );
  // The daemons' own CA key: it signs any URI it is given, as a CA shared by two meshes would.
  const caDir = join(cluster.dir, 'ca');
  const issue = (uri: string): Promise<Credentials> => forgeLeaf(caDir, [uri]);
  return {
    cluster,
    echoPort: echo.port,
    accepted: echo.accepted,
    lines: logs.lines.get('node-b') ?? [],
    issue,
    close: async () => {
      echo.server.close();
      await cluster.close();
    },
  };
}

/**
 * One CONNECT to node-b's tunnel with a certificate for `identity` signed by the mesh CA: the status, and
 * the local port of the TLS connection (the address node-b sees).
 */
async function rawConnect(
  s: Setup,
  identity: string,
  headers: Record<string, string>,
): Promise<{ status: string; localPort: number | undefined }> {
  const leaf = await s.issue(identity);
  const b = s.cluster.b;
  const echoId = b.identityOf(b.store.workload('echo-1')!);
  let localPort: number | undefined;
  const status = await new Promise<string>((resolve) => {
    const session = h2connect(`https://127.0.0.1:${b.ports.tunnel}`, {
      createConnection: () => {
        const sock = tlsConnect({
          host: '127.0.0.1',
          port: b.ports.tunnel,
          key: leaf.keyPem,
          cert: leaf.certPem,
          ALPNProtocols: ['h2'],
          servername: sniForIdentity(echoId),
          rejectUnauthorized: false,
        });
        sock.once('secureConnect', () => {
          localPort = sock.localPort;
        });
        return sock;
      },
    });
    const timer = setTimeout(() => resolve('timeout'), 5000);
    const done = (v: string): void => {
      clearTimeout(timer);
      session.close();
      resolve(v);
    };
    session.on('error', (err) => done(`error: ${err.message}`));
    const req = session.request({ ':method': 'CONNECT', ...headers });
    req.on('response', (h) => {
      const st = String(h[':status']);
      if (st !== '200') return done(st);
      // Carry one round trip, so the connection was really delivered, then end it.
      req.once('data', () => {
        req.end();
        done(st);
      });
      req.write('ping');
    });
    req.on('error', (err) => done(`error: ${err.message}`));
    req.on('close', () => done('closed'));
  });
  return { status, localPort };
}

test("the daemon's own listeners are never a target, whatever the mesh says, on any spelling of a local address", async (t) => {
  const s = await setup();
  try {
    const { a, b } = s.cluster;
    // The mesh claims node-b's admin port is a workload: still not deliverable.
    await enroll(
      s.cluster.meshFile,
      workload({ name: 'liar', service: 'liar', node: 'node-b', ports: [b.ports.admin, b.ports.metrics] }),
    );
    await until(() => b.store.workload('liar') !== undefined, 5000, 'liar applied on node-b');
    const key = {
      source: a.identityOf(a.store.workload('client')!),
      peer: b.identityOf(b.store.workload('echo-1')!),
      address: '127.0.0.1',
      port: b.ports.tunnel,
    };
    const targets = [
      `127.0.0.1:${b.ports.admin}`,
      `127.0.0.1:${b.ports.metrics}`,
      `127.0.0.1:${b.ports.ready}`,
      `127.0.0.1:${b.ports.tunnel}`,
      `127.0.0.2:${b.ports.admin}`,
      `[::ffff:127.0.0.1]:${b.ports.admin}`,
      `0.0.0.0:${b.ports.admin}`,
      `[::1]:${b.ports.admin}`,
    ];
    for (const authority of targets) {
      const r = await a.pool.connect(key, { ':method': 'CONNECT', ':authority': authority });
      t.is(r.status, 400, authority);
      r.stream.close();
    }
    const m = await metricsText(b);
    t.is(
      metricSum(m, 'ambit_connections_refused_total', { direction: 'inbound', reason: 'bad_request' }),
      targets.length,
    );
    // The admin API saw none of them: its level is unchanged and no request reached it unauthenticated.
    t.is(metricSum(m, 'ambit_admin_unauthorized_total'), 0);
  } finally {
    await s.close();
  }
});

test('a workload with every port at a local address (as Consul may register it) matches nothing', async (t) => {
  const s = await setup();
  // A server nobody enrolled, on the same host.
  let reached = 0;
  const stranger = createServer((c) => {
    reached++;
    c.destroy();
  });
  await new Promise<void>((r) => stranger.listen(0, '127.0.0.1', r));
  try {
    const { a, b } = s.cluster;
    // Straight into node-b's state, past the mesh file's validation, as another control plane would.
    b.store.replace({
      ...b.store.mesh,
      workloads: [
        ...b.store.mesh.workloads,
        workload({ name: 'wide', service: 'echo', node: 'node-b', addresses: ['127.0.0.1'], ports: [] }),
      ],
    });
    const key = {
      source: a.identityOf(a.store.workload('client')!),
      peer: b.identityOf(b.store.workload('echo-1')!),
      address: '127.0.0.1',
      port: b.ports.tunnel,
    };
    const port = (stranger.address() as AddressInfo).port;
    const r = await a.pool.connect(key, { ':method': 'CONNECT', ':authority': `127.0.0.1:${port}` });
    t.is(r.status, 503);
    r.stream.close();
    t.is(reached, 0);
    // A listed port is still delivered.
    const ok = await a.pool.connect(key, { ':method': 'CONNECT', ':authority': `127.0.0.1:${s.echoPort}` });
    t.is(ok.status, 200);
    ok.stream.close();
  } finally {
    stranger.close();
    await s.close();
  }
});

test("every port at one of the host's interface addresses: the daemon refuses the file and keeps the last good state", async (t) => {
  const ip = [...interfaceAddresses()].find((a) => !isLoopback(a) && !a.startsWith('fe80:'));
  if (!ip) {
    t.pass('no non-loopback interface address on this host');
    return;
  }
  const s = await setup();
  try {
    const { a, b } = s.cluster;
    await enroll(
      s.cluster.meshFile,
      workload({ name: 'host', service: 'h', node: 'node-b', addresses: [ip], ports: [] }),
    );
    // node-a has no such check to make (the workload is not its own) and applies the file.
    await until(() => a.store.workload('host') !== undefined, 5000, 'node-a applies the file');
    await until(() => b.readiness().checks.mesh !== 'ok', 5000, 'node-b rejects the file');
    t.regex(
      b.readiness().checks.mesh!,
      new RegExp(
        `workloads\\.host\\.ports: must list the ports the workload serves: ${ip.replace(/\./g, '\\.')} is an address of its node "node-b"`,
      ),
    );
    t.is(b.store.workload('host'), undefined);
    t.truthy(b.store.workload('echo-1'));
  } finally {
    await s.close();
  }
});

test('the admin API: changes and the dump need the token in <stateDir>/admin.token (0600); reads do not', async (t) => {
  const s = await setup();
  try {
    const b = s.cluster.b;
    const file = join(b.config.stateDir, ADMIN_TOKEN_FILE);
    t.is((await stat(file)).mode & 0o777, 0o600);
    const token = (await readFile(file, 'utf8')).trim();
    t.regex(token, /^[A-Za-z0-9_-]{43}$/);
    const admin = `http://127.0.0.1:${b.ports.admin}`;
    const bearer = (tk: string) => ({ authorization: `Bearer ${tk}` });

    let res = await fetch(`${admin}/logging?level=debug`, { method: 'POST' });
    t.is(res.status, 401);
    t.regex(await res.text(), /needs the admin token/);
    res = await fetch(`${admin}/logging?level=debug`, {
      method: 'POST',
      headers: bearer(`${token.slice(1)}x`),
    });
    t.is(res.status, 401);
    res = await fetch(`${admin}/logging?level=debug`, { method: 'POST', headers: bearer('') });
    t.is(res.status, 401);
    t.is(b.log.level, 'info');
    res = await fetch(`${admin}/config_dump`);
    t.is(res.status, 401);
    await res.text();
    const m = await metricsText(b);
    t.is(metricSum(m, 'ambit_admin_unauthorized_total', { route: 'POST /logging' }), 3);
    t.is(metricSum(m, 'ambit_admin_unauthorized_total', { route: 'GET /config_dump' }), 1);
    t.true(s.lines.some((l) => l.msg === 'admin API request refused: no or wrong admin token'));

    res = await fetch(`${admin}/logging?level=debug`, { method: 'POST', headers: bearer(token) });
    t.is(res.status, 200);
    t.is(b.log.level, 'debug');
    res = await fetch(`${admin}/config_dump`, { headers: bearer(token) });
    t.is(res.status, 200);
    t.is(((await res.json()) as { node: string }).node, 'node-b');
    for (const path of ['/certs', '/workloads', '/logging']) {
      res = await fetch(`${admin}${path}`);
      t.is(res.status, 200, path);
      await res.text();
    }

    // The CLI reads the token from the state directory; without it, a clear 401.
    const cli = (args: string[]) =>
      new Promise<{ code: number; out: string; err: string }>((resolve) => {
        execFile(
          process.execPath,
          [CLI, '--admin', `127.0.0.1:${b.ports.admin}`, ...args],
          { timeout: 20_000 },
          (e, out, err) => resolve({ code: e ? (typeof e.code === 'number' ? e.code : -1) : 0, out, err }),
        );
      });
    let r = await cli(['--state-dir', b.config.stateDir, 'log-level', 'warn']);
    t.is(r.code, 0, r.err);
    t.is(r.out, 'warn\n');
    t.is(b.log.level, 'warn');
    r = await cli(['--state-dir', join(s.cluster.dir, 'elsewhere'), 'log-level', 'error']);
    t.is(r.code, 1);
    t.regex(r.err, /answered 401: no admin token: run as the daemon's user, or point --state-dir/);
    t.is(b.log.level, 'warn');
    r = await cli(['--state-dir', join(s.cluster.dir, 'elsewhere'), 'log-level']);
    t.is(r.code, 0, r.err);
    t.is(r.out, 'warn\n');
  } finally {
    await s.close();
  }
});

test("a certificate of another trust domain from the same CA does not match a rule for this one's service", async (t) => {
  const s = await setup();
  try {
    const b = s.cluster.b;
    await editMeshFile(s.cluster.meshFile, (doc) => {
      addPolicy(doc, { ...rule('allow', [src({ service: 'web' })]), name: 'allow-web', service: 'echo' });
    });
    await until(() => b.store.policiesFor('default', 'echo').length === 1, 5000, 'policy on node-b');
    const authority = `127.0.0.1:${s.echoPort}`;
    t.is((await rawConnect(s, id('web'), { ':authority': authority })).status, '200');
    t.is((await rawConnect(s, id('web', 'other.td'), { ':authority': authority })).status, '401');
    t.is(s.accepted(), 1);
    const refused = s.lines.find((l) => l.msg === 'connection refused');
    t.like(refused, { response_flags: 'DENY', src: { principal: id('web', 'other.td') } });
    t.regex(String(refused?.reason), /is not of trust domain ambit\.local: only a rule naming its principal/);
    // Naming the principal is the way to let it in.
    await editMeshFile(s.cluster.meshFile, (doc) => {
      addPolicy(doc, {
        ...rule('allow', [src({ principal: id('web', 'other.td') })]),
        name: 'allow-other-web',
        service: 'echo',
      });
    });
    await until(() => b.store.policiesFor('default', 'echo').length === 2, 5000, 'second policy on node-b');
    t.is((await rawConnect(s, id('web', 'other.td'), { ':authority': authority })).status, '200');
    t.is(s.accepted(), 2);
  } finally {
    await s.close();
  }
});

test('the access log names the TCP peer as src.addr; the forwarded claim is src.forwarded', async (t) => {
  const s = await setup();
  try {
    const claim = { forwarded: 'for="198.18.9.9:1"' };
    const ok = await rawConnect(s, id('web'), { ':authority': `127.0.0.1:${s.echoPort}`, ...claim });
    t.is(ok.status, '200');
    const refused = await rawConnect(s, id('web'), {
      ':authority': `127.0.0.1:${await freePort()}`,
      ...claim,
    });
    t.is(refused.status, '503');
    await until(() => s.lines.some((l) => l.msg === 'connection closed'), 5000, 'the access log line');
    const closed = s.lines.find((l) => l.msg === 'connection closed')!;
    const denied = s.lines.find((l) => l.msg === 'connection refused')!;
    t.like(closed, {
      access: 'inbound',
      src: { addr: `127.0.0.1:${ok.localPort}`, forwarded: '198.18.9.9' },
    });
    t.like(denied, {
      access: 'inbound',
      src: { addr: `127.0.0.1:${refused.localPort}`, forwarded: '198.18.9.9' },
    });
    // The claim names no workload: the source workload is the peer's service, not anything it claimed.
    t.is((closed.src as { workload?: string }).workload, 'web');

    // The claim picks the source workload only among those of the identity the peer proved.
    await enroll(
      s.cluster.meshFile,
      workload({ name: 'web-2', service: 'web', node: 'node-a', addresses: ['198.18.9.9'] }),
      workload({ name: 'db-1', service: 'db', node: 'node-a', addresses: ['198.18.9.8'] }),
    );
    await until(() => s.cluster.b.store.workload('db-1') !== undefined, 5000, 'workloads on node-b');
    const authority = `127.0.0.1:${s.echoPort}`;
    t.is((await rawConnect(s, id('web'), { ':authority': authority, ...claim })).status, '200');
    t.is(
      (await rawConnect(s, id('web'), { ':authority': authority, forwarded: 'for="198.18.9.8:1"' })).status,
      '200',
    );
    await until(
      () => s.lines.filter((l) => l.msg === 'connection closed').length === 3,
      5000,
      'two more access log lines',
    );
    const [, second, third] = s.lines.filter((l) => l.msg === 'connection closed');
    t.like(second, { src: { workload: 'web-2', forwarded: '198.18.9.9', principal: id('web') } });
    t.like(third, { src: { workload: 'web', forwarded: '198.18.9.8', principal: id('web') } });
  } finally {
    await s.close();
  }
});
