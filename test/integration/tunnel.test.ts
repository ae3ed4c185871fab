import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect as h2connect } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import test from 'ava';
import { EmbeddedCa } from '../../daemon/identity/ca.js';
import { sniForIdentity } from '../../daemon/proxy/hbone.js';
import { addPolicy, editMeshFile } from '../../lib/mesh/edit.js';
import {
  type Cluster,
  clientWorkload,
  echoOnce,
  echoServer,
  enroll,
  freePort,
  metricSum,
  metricsText,
  openEcho,
  roundTrip,
  sha256,
  sleep,
  startCluster,
  until,
  upstreamTo,
  waitForPort,
  workload,
} from '../helpers/cluster.js';

/**
 * The port the client workload lists. It serves none, but a workload at a loopback address must list its
 * ports (every port of loopback would include the daemon's own listeners); nothing listens on discard.
 */
const CLIENT_PORT = 9;

interface Echo {
  port: number;
  accepted: () => number;
}

interface Setup {
  cluster: Cluster;
  echoPort: number;
  upstreamPort: number;
  echoAccepted: () => number;
  /** Every echo endpoint: echo-1, echo-2, ... */
  echoes: Echo[];
  closeEcho: () => void;
}

/**
 * Workload "client" (service web) on node-a with an upstream to service echo; workloads echo-1..echo-N on
 * node-b, each an echo server of its own.
 */
async function setup(opts: { certTtl?: string; echoes?: number } = {}): Promise<Setup> {
  const cluster = await startCluster(opts);
  const servers = await Promise.all(Array.from({ length: opts.echoes ?? 1 }, () => echoServer()));
  const upstreamPort = await freePort();
  await enroll(
    cluster.meshFile,
    clientWorkload(CLIENT_PORT, upstreamTo('echo', upstreamPort)),
    ...servers.map((e, i) =>
      workload({ name: `echo-${i + 1}`, service: 'echo', node: 'node-b', ports: [e.port] }),
    ),
  );
  // Not by connecting to it: a probe connection would itself be tunneled and counted.
  await until(() => cluster.a.listeners.listening().length === 1, 5000, 'upstream listener bound');
  await until(() => cluster.b.readiness().ready && cluster.b.certs.list().length === 1, 5000, 'node-b ready');
  const first = servers[0]!;
  return {
    cluster,
    echoPort: first.port,
    upstreamPort,
    echoAccepted: first.accepted,
    echoes: servers.map((e) => ({ port: e.port, accepted: e.accepted })),
    closeEcho: () => {
      for (const e of servers) e.server.close();
    },
  };
}

const teardown = async (s: Setup): Promise<void> => {
  s.closeEcho();
  await s.cluster.close();
};

test('bytes arrive intact both ways through the tunnel: 1 B, 64 KiB, 64 MiB', async (t) => {
  const s = await setup();
  try {
    for (const size of [1, 64 * 1024, 64 * 1024 * 1024]) {
      const payload = randomBytes(size);
      const back = await roundTrip(s.upstreamPort, payload);
      t.is(back.length, size, `length for ${size} B`);
      t.is(back.sha256, sha256(payload), `content for ${size} B`);
    }
    const m = await metricsText(s.cluster.b);
    t.true(
      metricSum(m, 'istio_tcp_received_bytes_total', {
        reporter: 'destination',
        destination_workload: 'echo-1',
      }) >=
        64 * 1024 * 1024,
    );
    t.is(
      metricSum(m, 'istio_tcp_connections_opened_total', {
        reporter: 'destination',
        connection_security_policy: 'mutual_tls',
        response_flags: '-',
      }),
      3,
    );
    // The destination names the source workload: its forwarded address matched to the identity it proved.
    t.is(
      metricSum(m, 'istio_tcp_connections_opened_total', {
        reporter: 'destination',
        source_workload: 'client',
      }),
      3,
    );
    const ma = await metricsText(s.cluster.a);
    t.is(
      metricSum(ma, 'istio_tcp_connections_closed_total', {
        reporter: 'source',
        source_workload: 'client',
        destination_service: 'echo.default',
      }),
      3,
    );
  } finally {
    await teardown(s);
  }
});

test('a client that stops writing still gets the whole reply (half-close)', async (t) => {
  const s = await setup();
  try {
    const payload = Buffer.from('request then FIN');
    const back = await roundTrip(s.upstreamPort, payload);
    t.is(back.sha256, sha256(payload));
  } finally {
    await teardown(s);
  }
});

test('50 connections from one workload share one TLS handshake', async (t) => {
  const s = await setup();
  try {
    const before = metricSum(await metricsText(s.cluster.b), 'ambit_tls_handshakes_total', {
      direction: 'inbound',
    });
    const sockets = await Promise.all(Array.from({ length: 50 }, () => openEcho(s.upstreamPort)));
    const replies = await Promise.all(sockets.map((sock, i) => echoOnce(sock, `n${i}`)));
    t.deepEqual(
      replies,
      sockets.map((_, i) => `n${i}`),
    );
    for (const sock of sockets) sock.destroy();
    const after = metricSum(await metricsText(s.cluster.b), 'ambit_tls_handshakes_total', {
      direction: 'inbound',
    });
    t.is(after - before, 1);
    t.is(
      metricSum(await metricsText(s.cluster.a), 'ambit_tls_handshakes_total', { direction: 'outbound' }),
      1,
    );
    t.is(s.echoAccepted(), 50);
  } finally {
    await teardown(s);
  }
});

test('a client certificate from another CA is refused', async (t) => {
  const s = await setup();
  const dir = await mkdtemp(join(tmpdir(), 'ambit-rogue-'));
  try {
    const rogue = await EmbeddedCa.loadOrCreate(join(dir, 'ca'), 'ambit.local');
    const echoId = s.cluster.b.identityOf(s.cluster.b.store.workload('echo-1')!);
    const leaf = await rogue.issue('spiffe://ambit.local/ns/default/dc/dc1/svc/web', 3_600_000);
    const outcome = await new Promise<string>((resolve) => {
      const session = h2connect(`https://127.0.0.1:${s.cluster.b.ports.tunnel}`, {
        createConnection: () =>
          tlsConnect({
            host: '127.0.0.1',
            port: s.cluster.b.ports.tunnel,
            key: leaf.keyPem,
            cert: leaf.certPem,
            ALPNProtocols: ['h2'],
            servername: sniForIdentity(echoId),
            rejectUnauthorized: false,
          }),
      });
      session.on('error', (err) => resolve(`error: ${err.message}`));
      const req = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${s.echoPort}` });
      req.on('response', (h) => resolve(`status ${h[':status']}`));
      req.on('error', (err) => resolve(`error: ${err.message}`));
      req.on('close', () => resolve('closed'));
    });
    t.notRegex(outcome, /status 200/);
    t.is(s.echoAccepted(), 0);
    await until(
      async () =>
        metricSum(await metricsText(s.cluster.b), 'ambit_connections_refused_total', {
          reason: 'tls_failure',
        }) >= 1,
      3000,
      'tls_failure counted',
    );
    t.pass();
  } finally {
    await rm(dir, { recursive: true, force: true });
    await teardown(s);
  }
});

test('CONNECT to a target that is not enrolled on the node, or to the daemon itself, is refused', async (t) => {
  const s = await setup();
  try {
    const { a, b } = s.cluster;
    const key = {
      source: a.identityOf(a.store.workload('client')!),
      peer: b.identityOf(b.store.workload('echo-1')!),
      address: '127.0.0.1',
      port: b.ports.tunnel,
    };
    const notEnrolled = await a.pool.connect(key, {
      ':method': 'CONNECT',
      ':authority': `127.0.0.1:${await freePort()}`,
    });
    t.is(notEnrolled.status, 503);
    notEnrolled.stream.close();
    const self = await a.pool.connect(key, {
      ':method': 'CONNECT',
      ':authority': `127.0.0.1:${b.ports.admin}`,
    });
    t.is(self.status, 400);
    self.stream.close();
    const malformed = await a.pool.connect(key, { ':method': 'CONNECT', ':authority': 'example.com:80' });
    t.is(malformed.status, 400);
    malformed.stream.close();
    const m = await metricsText(b);
    t.is(
      metricSum(m, 'ambit_connections_refused_total', { direction: 'inbound', reason: 'unknown_workload' }),
      1,
    );
    t.is(metricSum(m, 'ambit_connections_refused_total', { direction: 'inbound', reason: 'bad_request' }), 2);
    t.is(s.echoAccepted(), 0);
  } finally {
    await teardown(s);
  }
});

test('a deny rule gives 401, resets the client, and shows response_flags="DENY"', async (t) => {
  const s = await setup();
  try {
    const { a, b } = s.cluster;
    await editMeshFile(s.cluster.meshFile, (doc) => {
      addPolicy(doc, {
        name: 'deny-web',
        action: 'deny',
        service: 'echo',
        namespace: 'default',
        ports: [],
        from: [{ service: 'web', namespace: undefined, principal: undefined }],
      });
    });
    await until(() => b.store.policiesFor('default', 'echo').length === 1, 5000, 'policy applied on node-b');
    await t.throwsAsync(roundTrip(s.upstreamPort, Buffer.from('x')));
    const key = {
      source: a.identityOf(a.store.workload('client')!),
      peer: b.identityOf(b.store.workload('echo-1')!),
      address: '127.0.0.1',
      port: b.ports.tunnel,
    };
    const raw = await a.pool.connect(key, { ':method': 'CONNECT', ':authority': `127.0.0.1:${s.echoPort}` });
    t.is(raw.status, 401);
    raw.stream.close();
    const m = await metricsText(b);
    t.is(
      metricSum(m, 'istio_tcp_connections_opened_total', { reporter: 'destination', response_flags: 'DENY' }),
      2,
    );
    const ma = await metricsText(a);
    t.is(
      metricSum(ma, 'istio_tcp_connections_opened_total', { reporter: 'source', response_flags: 'DENY' }),
      1,
    );
    t.is(s.echoAccepted(), 0);
  } finally {
    await teardown(s);
  }
});

test('a policy change closes open connections it no longer allows', async (t) => {
  const s = await setup();
  try {
    const sock = await openEcho(s.upstreamPort);
    const closed = new Promise<void>((r) => sock.once('close', () => r()));
    sock.on('error', () => {});
    await editMeshFile(s.cluster.meshFile, (doc) => {
      addPolicy(doc, {
        name: 'only-admin',
        action: 'allow',
        service: 'echo',
        namespace: 'default',
        ports: [],
        from: [{ service: 'admin', namespace: undefined, principal: undefined }],
      });
    });
    await closed;
    t.pass();
  } finally {
    await teardown(s);
  }
});

test('an edit of the mesh file takes effect live; a malformed edit keeps the last good state', async (t) => {
  const s = await setup();
  try {
    const { a } = s.cluster;
    // Live: a second upstream listener appears without a restart.
    const second = await freePort();
    await enroll(
      s.cluster.meshFile,
      clientWorkload(CLIENT_PORT, upstreamTo('echo', s.upstreamPort), upstreamTo('echo', second)),
    );
    await waitForPort(second);
    t.is((await roundTrip(second, Buffer.from('live'))).length, 4);

    // Malformed: the file is broken by hand; the daemons keep serving with what they had.
    await writeFile(
      s.cluster.meshFile,
      'workloads:\n  client:\n    node: node-a\n    addresses: [not-an-ip]\n',
    );
    await until(() => a.readiness().checks.mesh !== 'ok', 5000, 'rejection reported');
    t.regex(a.readiness().checks.mesh!, /workloads\.client\.addresses\[0\]/);
    t.true(a.readiness().ready);
    t.is((await roundTrip(s.upstreamPort, Buffer.from('still'))).length, 5);
    const ready = await fetch(`http://127.0.0.1:${a.ports.ready}/healthz/ready`);
    t.is(ready.status, 200);
  } finally {
    await teardown(s);
  }
});

test('a certificate rotation during an open connection leaves it open', async (t) => {
  const s = await setup({ certTtl: '3s' });
  try {
    const { a, b } = s.cluster;
    const sock = await openEcho(s.upstreamPort);
    const serials = () => [...a.certs.list(), ...b.certs.list()].map((c) => c.serial).join();
    const before = serials();
    await until(
      () => a.certs.list()[0]!.rotations >= 1 && b.certs.list()[0]!.rotations >= 1,
      8000,
      'both rotated',
    );
    t.not(serials(), before);
    t.is(await echoOnce(sock, 'after rotation'), 'after rotation');
    // New connections handshake with the new certificates.
    t.is((await roundTrip(s.upstreamPort, Buffer.from('new'))).length, 3);
    sock.destroy();
    await sleep(10);
  } finally {
    await teardown(s);
  }
});

test('stopping with a drain lets an open connection finish, and refuses new ones', async (t) => {
  const s = await setup();
  try {
    const { b } = s.cluster;
    const sock = await openEcho(s.upstreamPort);
    const stopping = b.close(20_000);
    await sleep(200);
    t.false(b.readiness().ready);
    t.is(await echoOnce(sock, 'still here'), 'still here');
    // The pooled session got GOAWAY: a new connection cannot reach node-b any more.
    await t.throwsAsync(roundTrip(s.upstreamPort, Buffer.from('new')));
    sock.end();
    await stopping;
    t.is(b.inbound.openConnections, 0);
  } finally {
    await teardown(s);
  }
});

test('the tunnel speaks TLS 1.3 with AES-128-GCM and ALPN h2, and presents the workload identity asked for', async (t) => {
  const s = await setup();
  try {
    const { a, b } = s.cluster;
    const echoId = b.identityOf(b.store.workload('echo-1')!);
    // node:tls as an independent client: what the daemon's own TLS negotiates, seen from outside.
    const { certPem, keyPem } = a.certs.credentials(a.identityOf(a.store.workload('client')!));
    const sock = tlsConnect({
      host: '127.0.0.1',
      port: b.ports.tunnel,
      cert: certPem,
      key: keyPem,
      ca: a.certs.trustBundle(),
      servername: sniForIdentity(echoId),
      ALPNProtocols: ['h2'],
      checkServerIdentity: () => undefined,
    });
    await new Promise<void>((resolve, reject) => {
      sock.once('secureConnect', resolve);
      setTimeout(() => reject(new Error('no secureConnect')), 3000);
      sock.once('error', reject);
    });
    const seen = {
      protocol: sock.getProtocol(),
      cipher: sock.getCipher().standardName,
      alpn: sock.alpnProtocol,
      authorized: sock.authorized,
      san: sock.getPeerX509Certificate()?.subjectAltName,
    };
    // Closed before asserting: an open socket would keep the daemon from stopping.
    sock.destroy();
    t.deepEqual(seen, {
      protocol: 'TLSv1.3',
      cipher: 'TLS_AES_128_GCM_SHA256',
      alpn: 'h2',
      authorized: true,
      san: `URI:${echoId}`,
    });
  } finally {
    await teardown(s);
  }
});

test('connections spread over a service endpoints; an endpoint that refuses is retried elsewhere and skipped', async (t) => {
  const s = await setup({ echoes: 2 });
  const { cluster, upstreamPort } = s;
  const [one, two] = s.echoes as [Echo, Echo];
  const deadPort = await freePort();
  try {
    // Least connections: ten connections held open at once land five and five.
    const held = await Promise.all(Array.from({ length: 10 }, () => openEcho(upstreamPort)));
    t.is(one.accepted(), 5);
    t.is(two.accepted(), 5);
    for (const sock of held) sock.destroy();

    // A third endpoint whose workload refuses: node-b answers 503, node-a moves on to a live endpoint
    // without losing the client's bytes, and passes the refusing one over for the following connections.
    await enroll(
      cluster.meshFile,
      workload({ name: 'echo-dead', service: 'echo', node: 'node-b', ports: [deadPort] }),
    );
    // Both daemons must know it: node-b to try it (and fail), node-a to pick it.
    await until(
      () =>
        cluster.a.store.endpoints('default', 'echo').length === 3 && !!cluster.b.store.workload('echo-dead'),
      5000,
      'third endpoint',
    );
    for (let i = 0; i < 9; i++) {
      const payload = Buffer.from(`attempt ${i}`);
      t.is((await roundTrip(upstreamPort, payload)).sha256, sha256(payload));
    }
    const m = await metricsText(cluster.b);
    t.is(
      metricSum(m, 'ambit_connections_refused_total', { direction: 'inbound', reason: 'upstream_failed' }),
      1,
    );
    t.is(one.accepted() + two.accepted(), 10 + 9);
  } finally {
    await teardown(s);
  }
});
