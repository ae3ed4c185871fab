import { spawnSync } from 'node:child_process';
import { X509Certificate, createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import {
  type AddressInfo,
  type Server,
  createServer as createNetServer,
  connect as netConnect,
} from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type PeerCertificate, connect } from 'node:tls';
import test, { type ExecutionContext } from 'ava';
import { pino } from 'pino';
import { type CertificateAuthority, EmbeddedCa, type IssuedCertificate } from '../../daemon/identity/ca.js';
import { CertificateManager } from '../../daemon/identity/manager.js';
import { parseSpiffeId, spiffeId, splitAltNames, uriSans } from '../../daemon/identity/spiffe.js';
import {
  buildCertificate,
  name,
  randomSerial,
  toPem,
  uriSubjectAltName,
} from '../../daemon/identity/x509.js';
import { TlsConnection } from '../../daemon/tls/connection.js';
import { TlsContext } from '../../daemon/tls/context.js';
import { backoffDelay } from '../../lib/backoff.js';
import { CaError, CertUnavailableError } from '../../lib/errors.js';

const TD = 'ambit.test';
const WEB = spiffeId({ trustDomain: TD, namespace: 'default', datacenter: 'dc1', service: 'web' });
const API = spiffeId({ trustDomain: TD, namespace: 'default', datacenter: 'dc1', service: 'api' });

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-identity-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function caIn(t: ExecutionContext, trustDomain = TD): Promise<{ ca: EmbeddedCa; dir: string }> {
  const dir = join(await tempDir(t), 'ca');
  return { ca: await EmbeddedCa.loadOrCreate(dir, trustDomain), dir };
}

function manager(
  t: ExecutionContext,
  ca: CertificateAuthority,
  opts: Partial<ConstructorParameters<typeof CertificateManager>[1]> = {},
): CertificateManager {
  const m = new CertificateManager(ca, { ttlMs: 3600_000, ...opts });
  t.teardown(() => m.close());
  return m;
}

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

/** Resolves on the first `event` whose first argument is `identity`; rejects after `ms`. */
function next(
  m: CertificateManager,
  event: 'rotated' | 'refreshFailed',
  identity: string,
  ms = 10_000,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      m.off(event, listener);
      reject(new Error(`no ${event} for ${identity} within ${ms} ms`));
    }, ms);
    const listener = (id: string): void => {
      if (id !== identity) return;
      clearTimeout(timer);
      m.off(event, listener);
      resolve();
    };
    m.on(event, listener);
  });
}

const serialOf = (m: CertificateManager, identity: string): string | undefined =>
  m.list().find((c) => c.identity === identity)?.serial;

// --- SPIFFE IDs ---------------------------------------------------------------------------------------

test('spiffeId and parseSpiffeId round-trip Consul form', (t) => {
  t.is(WEB, 'spiffe://ambit.test/ns/default/dc/dc1/svc/web');
  t.deepEqual(parseSpiffeId(WEB), {
    trustDomain: TD,
    namespace: 'default',
    datacenter: 'dc1',
    service: 'web',
  });
  for (const bad of [
    'spiffe://ambit.test',
    'spiffe://ambit.test/ns/default/dc/dc1/svc/',
    'spiffe://ambit.test/ns/default/dc/dc1/svc/web/extra',
    'spiffe://ambit.test/ns/default/dc/dc1/svcs/web',
    'spiffe://Ambit.Test/ns/default/dc/dc1/svc/web',
    'spiffe://ambit.test/ns/../dc/dc1/svc/web',
    'https://ambit.test/ns/default/dc/dc1/svc/web',
  ]) {
    t.is(parseSpiffeId(bad), undefined, bad);
  }
  t.throws(() => spiffeId({ trustDomain: TD, namespace: 'a/b', datacenter: 'dc1', service: 'web' }), {
    instanceOf: RangeError,
  });
});

test('uriSans reads plain and JSON-quoted subjectaltname entries', (t) => {
  const peer = (subjectaltname: string) => ({ subjectaltname }) as PeerCertificate;
  t.deepEqual(uriSans(peer(`DNS:web, URI:${WEB}, URI:${API}`)), [WEB, API]);
  t.deepEqual(uriSans(peer(`"URI:spiffe://x/a, URI:spiffe://x/b", DNS:x`)), [
    'spiffe://x/a, URI:spiffe://x/b',
  ]);
  t.deepEqual(uriSans(peer(`URI:"spiffe://x/\\"q\\"", URI:${WEB}`)), ['spiffe://x/"q"', WEB]);
  t.deepEqual(uriSans(peer('')), []);
  t.deepEqual(splitAltNames('"URI:unterminated'), []);
});

test('uriSans is not fooled by a SAN that imitates a second entry', async (t) => {
  // Node quotes the entry itself; a naive split on ", " would yield the forged identity.
  const forged = `spiffe://evil/x, URI:${WEB}`;
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const der = await buildCertificate({
    serial: randomSerial(),
    issuer: name('self'),
    subject: name(),
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 60_000),
    publicKey,
    signingKey: privateKey,
    extensions: [uriSubjectAltName([forged], true)],
  });
  const cert = new X509Certificate(toPem(der));
  t.deepEqual(uriSans(cert), [forged]);
});

// --- Embedded CA ----------------------------------------------------------------------------------------

test('first start creates a private root; a second start reuses it', async (t) => {
  const dir = join(await tempDir(t), 'ca');
  const first = await EmbeddedCa.loadOrCreate(dir, TD);
  t.is(((await stat(dir)).mode & 0o777).toString(8), '700');
  t.is(((await stat(join(dir, 'root-key.pem'))).mode & 0o777).toString(8), '600');

  const root = new X509Certificate(await readFile(join(dir, 'root-cert.pem'), 'utf8'));
  t.true(root.ca);
  t.is(root.subject, `CN=Ambit CA ${TD}`);
  t.deepEqual(uriSans(root), [`spiffe://${TD}`]);
  t.true(root.verify(root.publicKey));
  const years = (Date.parse(root.validTo) - Date.parse(root.validFrom)) / (365.25 * 24 * 3600_000);
  t.true(years > 9.9 && years < 10.1);

  const second = await EmbeddedCa.loadOrCreate(dir, TD);
  t.deepEqual(await second.roots(), await first.roots());
  // A leaf from the reloaded CA chains to the original root.
  const leaf = new X509Certificate((await second.issue(WEB, 60_000)).certPem);
  t.true(leaf.verify(root.publicKey));
});

test('daemons starting together on one directory end up with one root', async (t) => {
  const dir = join(await tempDir(t), 'ca');
  const cas = await Promise.all([1, 2, 3, 4].map(() => EmbeddedCa.loadOrCreate(dir, TD)));
  const roots = await Promise.all(cas.map((ca) => ca.roots()));
  for (const r of roots) t.deepEqual(r, roots[0]);
  t.is((await readFile(join(dir, 'root-cert.pem'), 'utf8')).trim(), roots[0]![0]!.trim());
});

test('a leaf is ECDSA P-256, carries its SPIFFE ID and verifies against the root', async (t) => {
  const { ca, dir } = await caIn(t);
  const before = Date.now();
  const issued = await ca.issue(WEB, 3600_000);
  const leaf = new X509Certificate(issued.certPem);
  const root = new X509Certificate((await ca.roots())[0]!);

  t.true(leaf.verify(root.publicKey));
  t.true(leaf.checkIssued(root));
  t.false(leaf.ca);
  t.deepEqual(uriSans(leaf), [WEB]);
  t.is(leaf.subject, 'CN=web');
  t.is(leaf.publicKey.asymmetricKeyType, 'ec');
  t.is(leaf.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  t.true(leaf.checkPrivateKey(createPrivateKey(issued.keyPem)));
  t.is(issued.serial, leaf.serialNumber.toUpperCase());
  t.is(issued.identity, WEB);
  t.is(issued.notBefore.getTime(), Date.parse(leaf.validFrom));
  t.is(issued.notAfter.getTime(), Date.parse(leaf.validTo));
  t.true(before - Date.parse(leaf.validFrom) >= 59_000, 'backdated for clock skew');
  t.true(Math.abs(Date.parse(leaf.validTo) - (before + 3600_000)) < 3000);

  if (!hasOpenssl) {
    t.log('openssl not found; skipping openssl verify');
    return;
  }
  const leafFile = join(dir, 'leaf.pem');
  await writeFile(leafFile, issued.certPem);
  const verify = spawnSync(
    'openssl',
    ['verify', '-x509_strict', '-CAfile', join(dir, 'root-cert.pem'), leafFile],
    {
      encoding: 'utf8',
    },
  );
  t.is(verify.status, 0, verify.stderr + verify.stdout);
  const text = spawnSync('openssl', ['x509', '-in', leafFile, '-noout', '-text'], {
    encoding: 'utf8',
  }).stdout;
  t.regex(text, /Signature Algorithm: ecdsa-with-SHA256/);
  t.regex(text, /NIST CURVE: P-256/);
  t.regex(text, /Basic Constraints: critical\s+CA:FALSE/);
  t.regex(text, /Key Usage: critical\s+Digital Signature, Key Encipherment/);
  t.regex(text, /TLS Web Server Authentication, TLS Web Client Authentication/);
  t.regex(text, /Subject Key Identifier/);
  t.regex(text, /Authority Key Identifier/);
  t.true(text.includes(`URI:${WEB}`));
  const rootText = spawnSync('openssl', ['x509', '-in', join(dir, 'root-cert.pem'), '-noout', '-text'], {
    encoding: 'utf8',
  }).stdout;
  t.regex(rootText, /Basic Constraints: critical\s+CA:TRUE/);
  t.regex(rootText, /Key Usage: critical\s+Certificate Sign, CRL Sign/);
});

test('the CA refuses identities outside its trust domain and non-SPIFFE names', async (t) => {
  const { ca } = await caIn(t);
  const foreign = spiffeId({
    trustDomain: 'other.test',
    namespace: 'default',
    datacenter: 'dc1',
    service: 'web',
  });
  const err = await t.throwsAsync(ca.issue(foreign, 60_000), { instanceOf: CaError });
  t.regex(err!.message, /outside this CA's trust domain ambit\.test/);
  await t.throwsAsync(ca.issue('spiffe://ambit.test/web', 60_000), { instanceOf: CaError });
  await t.throwsAsync(ca.issue(WEB, 0), { instanceOf: CaError });
});

test('a root key readable by others is refused, naming the file', async (t) => {
  const { dir } = await caIn(t);
  const keyFile = join(dir, 'root-key.pem');
  await chmod(keyFile, 0o644);
  const err = await t.throwsAsync(EmbeddedCa.loadOrCreate(dir, TD), { instanceOf: CaError });
  t.true(err!.message.includes(keyFile), err!.message);
  t.regex(err!.message, /0644/);
});

test('half a CA directory is an error, not a new CA', async (t) => {
  const { dir } = await caIn(t);
  const certFile = join(dir, 'root-cert.pem');
  const original = await readFile(certFile, 'utf8');
  await unlink(certFile);
  // An old lone key is not a pair still being written by another daemon, so this fails at once.
  const anHourAgo = new Date(Date.now() - 3600_000);
  await utimes(join(dir, 'root-key.pem'), anHourAgo, anHourAgo);
  const err = await t.throwsAsync(EmbeddedCa.loadOrCreate(dir, TD), { instanceOf: CaError });
  t.true(err!.message.includes(certFile), err!.message);
  // The surviving key was not replaced.
  await writeFile(certFile, original);
  await t.notThrowsAsync(EmbeddedCa.loadOrCreate(dir, TD));
});

test('a CA directory from another trust domain is refused', async (t) => {
  const { dir } = await caIn(t);
  const err = await t.throwsAsync(EmbeddedCa.loadOrCreate(dir, 'other.test'), { instanceOf: CaError });
  t.regex(err!.message, /trust domain is other\.test/);
});

// --- Certificate manager ------------------------------------------------------------------------------

interface Echo {
  server: Server;
  port: number;
  peers: X509Certificate[];
  refusals: Error[];
}

/** An echo server on the tunnel's TLS for `identity`, demanding a client certificate from the manager's bundle. */
async function echoServer(t: ExecutionContext, m: CertificateManager, identity: string): Promise<Echo> {
  const peers: X509Certificate[] = [];
  const refusals: Error[] = [];
  const open = new Set<TlsConnection>();
  // Resolved per handshake (SNI), so every new connection gets the current certificate.
  const ctx = new TlsContext({ roots: m.trustBundle(), sni: () => m.tlsContext(identity) });
  const server = createNetServer({ pauseOnConnect: true }, (socket) => {
    const conn = new TlsConnection(socket, ctx, 'server', { handshakeTimeoutMs: 5000 });
    open.add(conn);
    conn.once('close', () => open.delete(conn));
    conn.once('error', (err: Error) => {
      if (!conn.secure) refusals.push(err);
    });
    conn.once('secure', () => {
      if (conn.peerCertificate) peers.push(conn.peerCertificate);
      conn.on('data', (chunk: Buffer) => conn.write(Buffer.from(chunk)));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const conn of open) conn.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { server, port: (server.address() as AddressInfo).port, peers, refusals };
}

/** What both kinds of client below can do. */
interface Dialed extends NodeJS.EventEmitter {
  write(chunk: Buffer): unknown;
}

/**
 * A client as `identity`: on the tunnel's TLS (which always verifies the server), or with `verifyServer: false`
 * on node:tls with the same certificate, so that a refusal seen is the server's.
 */
function dial(
  t: ExecutionContext,
  port: number,
  m: CertificateManager,
  identity: string,
  opts: { verifyServer?: boolean } = {},
): Promise<Dialed> {
  return new Promise((resolve, reject) => {
    if (opts.verifyServer === false) {
      const { certPem, keyPem } = m.credentials(identity);
      const socket = connect({
        host: '127.0.0.1',
        port,
        servername: 'ambit.test',
        cert: certPem,
        key: keyPem,
        rejectUnauthorized: false,
        minVersion: 'TLSv1.3',
      });
      t.teardown(() => socket.destroy());
      socket.once('secureConnect', () => resolve(socket));
      socket.once('error', reject);
      return;
    }
    const tcp = netConnect(port, '127.0.0.1');
    tcp.once('error', reject);
    tcp.once('connect', () => {
      const conn = new TlsConnection(tcp, m.tlsContext(identity), 'client', { servername: 'ambit.test' });
      t.teardown(() => conn.destroy());
      conn.once('secure', () => resolve(conn));
      conn.once('error', reject);
    });
  });
}

function roundTrip(socket: Dialed, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (chunk: Buffer): void => {
      got += chunk.toString();
      if (got.length >= text.length) {
        socket.off('data', onData);
        socket.off('error', reject);
        socket.off('close', onClose);
        resolve(got);
      }
    };
    const onClose = (): void => reject(new Error(`connection closed after ${JSON.stringify(got)}`));
    socket.on('data', onData);
    socket.once('error', reject);
    socket.once('close', onClose);
    socket.write(Buffer.from(text));
  });
}

test('mutual TLS 1.3 between two identities; each side sees the other', async (t) => {
  const { ca } = await caIn(t);
  const m = manager(t, ca);
  await Promise.all([m.ensure(WEB), m.ensure(API)]);
  const echo = await echoServer(t, m, API);
  const socket = (await dial(t, echo.port, m, WEB)) as TlsConnection;
  t.is(socket.alpnProtocol, 'h2');
  t.deepEqual(uriSans(socket.peerCertificate!), [API]);
  t.is(await roundTrip(socket, 'hello'), 'hello');
  t.deepEqual(uriSans(echo.peers[0]!), [WEB]);
});

test('a server refuses a client certificate from another CA', async (t) => {
  const { ca } = await caIn(t);
  const { ca: otherCa } = await caIn(t);
  const m = manager(t, ca);
  const other = manager(t, otherCa);
  await m.ensure(API);
  await other.ensure(WEB);
  const echo = await echoServer(t, m, API);
  // The client skips checking the server so that the refusal seen is the server's.
  // Under TLS 1.3 the client may finish its side before the server judges its certificate, so the
  // refusal can surface on the first read rather than in the handshake.
  const outcome = await dial(t, echo.port, other, WEB, { verifyServer: false })
    .then((socket) => roundTrip(socket, 'x'))
    .catch((err: Error) => err);
  t.true(outcome instanceof Error, `expected a refusal, got ${String(outcome)}`);
  await sleep(50);
  t.is(echo.peers.length, 0);
  t.true(echo.refusals.length > 0);
  t.regex(echo.refusals[0]!.message, /certificate verify failed|unknown ca/i);

  // And a client of this CA does not accept the foreign CA's server either.
  const foreign = await echoServer(t, other, WEB);
  await t.throwsAsync(dial(t, foreign.port, m, API));
});

test('tlsContext for an unknown identity throws CertUnavailableError', async (t) => {
  const { ca } = await caIn(t);
  const m = manager(t, ca);
  await m.start();
  t.throws(() => m.tlsContext(WEB), { instanceOf: CertUnavailableError });
  t.false(m.has(WEB));
  await t.throwsAsync(m.rotate(WEB), { instanceOf: CertUnavailableError });
});

test('short-lived certificates rotate; a connection opened before keeps carrying data', async (t) => {
  const { ca } = await caIn(t);
  const m = manager(t, ca, { ttlMs: 2000 });
  await Promise.all([m.ensure(WEB), m.ensure(API)]);
  const echo = await echoServer(t, m, API);
  const before = serialOf(m, WEB)!;
  const expiresAt = Date.parse(m.list().find((c) => c.identity === WEB)!.notAfter);
  const socket = await dial(t, echo.port, m, WEB);
  t.is(await roundTrip(socket, 'before'), 'before');

  await next(m, 'rotated', WEB);
  const after = serialOf(m, WEB)!;
  t.not(after, before);
  t.true(m.list().find((c) => c.identity === WEB)!.rotations >= 1);

  // Even once the certificate it was opened with has expired, the old connection works.
  await sleep(Math.max(0, expiresAt - Date.now() + 200));
  t.is(await roundTrip(socket, 'after'), 'after');

  // New handshakes present the current certificate.
  const fresh = await dial(t, echo.port, m, WEB);
  t.is(await roundTrip(fresh, 'new'), 'new');
  t.is(echo.peers.at(-1)!.serialNumber.toUpperCase(), serialOf(m, WEB)!);
  t.not(echo.peers.at(-1)!.serialNumber.toUpperCase(), before);
});

test('rotate() issues a new certificate now and emits rotated', async (t) => {
  const { ca } = await caIn(t);
  const m = manager(t, ca);
  await m.ensure(WEB);
  const context = m.tlsContext(WEB);
  const before = serialOf(m, WEB);
  const rotated = next(m, 'rotated', WEB);
  await m.rotate(WEB);
  await rotated;
  t.not(serialOf(m, WEB), before);
  t.not(m.tlsContext(WEB), context);
});

test('retry delays double from 1 s to a 60 s cap, with jitter in the upper half', (t) => {
  const opts = { initialMs: 1000, maxMs: 60_000 };
  t.is(
    backoffDelay(1, opts, () => 0),
    500,
  );
  t.is(
    backoffDelay(1, opts, () => 1),
    1000,
  );
  t.is(
    backoffDelay(3, opts, () => 1),
    4000,
  );
  t.is(
    backoffDelay(30, opts, () => 1),
    60_000,
  );
  t.is(
    backoffDelay(30, opts, () => 0),
    30_000,
  );
});

/** Delegates to a real CA, but can be told to fail; counts calls and concurrency. */
class ControlledCa implements CertificateAuthority {
  readonly kind = 'embedded' as const;
  failing = false;
  delayMs = 0;
  calls = 0;
  active = 0;
  maxActive = 0;
  readonly inner: CertificateAuthority;
  constructor(inner: CertificateAuthority) {
    this.inner = inner;
  }
  roots(): Promise<string[]> {
    return this.inner.roots();
  }
  async issue(identity: string, ttlMs: number): Promise<IssuedCertificate> {
    this.calls++;
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      if (this.delayMs) await sleep(this.delayMs);
      if (this.failing) throw new Error('CA unavailable');
      return await this.inner.issue(identity, ttlMs);
    } finally {
      this.active--;
    }
  }
}

test('a failing CA leaves the current certificate in place and is retried', async (t) => {
  const { ca } = await caIn(t);
  const flaky = new ControlledCa(ca);
  const m = manager(t, flaky, { ttlMs: 4000, retry: { initialMs: 50, maxMs: 200 } });
  await m.ensure(WEB);
  const context = m.tlsContext(WEB);
  const serial = serialOf(m, WEB);
  flaky.failing = true;
  const failures: string[] = [];
  m.on('refreshFailed', (id, err) => {
    t.true(err instanceof CaError);
    failures.push(id);
  });

  await next(m, 'refreshFailed', WEB);
  await next(m, 'refreshFailed', WEB);
  t.true(failures.length >= 2);
  t.true(m.has(WEB));
  t.is(m.tlsContext(WEB), context);
  t.is(serialOf(m, WEB), serial);
  t.true(Date.parse(m.list()[0]!.refreshAt) > Date.now() - 50, 'a retry is scheduled');

  flaky.failing = false;
  await next(m, 'rotated', WEB);
  t.not(serialOf(m, WEB), serial);
  t.is(m.list()[0]!.rotations, 1);
});

test('a certificate the CA cannot renew before expiry is reported and then unavailable', async (t) => {
  const { ca } = await caIn(t);
  const flaky = new ControlledCa(ca);
  const lines: Array<{ level: number; msg: string }> = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const m = manager(t, flaky, { ttlMs: 1500, logger, retry: { initialMs: 2000, maxMs: 2000 } });
  await m.ensure(WEB);
  flaky.failing = true;
  const expiresAt = Date.parse(m.list()[0]!.notAfter);
  await sleep(expiresAt - Date.now() + 100);
  t.false(m.has(WEB));
  t.throws(() => m.tlsContext(WEB), { instanceOf: CertUnavailableError });
  t.true(
    lines.some((l) => l.level === 50 && l.msg.includes('expires before the CA recovers')),
    JSON.stringify(lines),
  );
  // No key material in the logs.
  t.false(lines.some((l) => JSON.stringify(l).includes('PRIVATE KEY')));
});

test('concurrent ensure() calls share one issue, and at most maxInFlight run at once', async (t) => {
  const { ca } = await caIn(t);
  const counted = new ControlledCa(ca);
  counted.delayMs = 30;
  const m = manager(t, counted, { maxInFlight: 2 });
  const ids = ['a', 'b', 'c', 'd', 'e', 'f'].map((service) =>
    spiffeId({ trustDomain: TD, namespace: 'default', datacenter: 'dc1', service }),
  );
  await Promise.all([...ids, ...ids].map((id) => m.ensure(id)));
  t.is(counted.calls, ids.length);
  t.is(counted.maxActive, 2);
  t.deepEqual(
    m.list().map((c) => c.identity),
    [...ids].sort(),
  );
});

test('a failed first issue rejects every waiter and keeps nothing', async (t) => {
  const { ca } = await caIn(t);
  const broken = new ControlledCa(ca);
  broken.failing = true;
  const m = manager(t, broken);
  const results = await Promise.allSettled([m.ensure(WEB), m.ensure(WEB)]);
  t.deepEqual(
    results.map((r) => r.status),
    ['rejected', 'rejected'],
  );
  t.is(broken.calls, 1);
  t.false(m.has(WEB));
  broken.failing = false;
  await m.ensure(WEB);
  t.true(m.has(WEB));
});

test('forget() drops a certificate and stops its refresh', async (t) => {
  const { ca } = await caIn(t);
  const counted = new ControlledCa(ca);
  const m = manager(t, counted, { ttlMs: 1000 });
  await m.ensure(WEB);
  m.forget(WEB);
  t.false(m.has(WEB));
  t.deepEqual(m.list(), []);
  await sleep(800);
  t.is(counted.calls, 1);
});

test('setRoots() replaces the trust bundle for new handshakes and emits roots', async (t) => {
  const { ca } = await caIn(t);
  const { ca: successor } = await caIn(t);
  const m = manager(t, ca);
  await m.ensure(WEB);
  const oldContext = m.tlsContext(WEB);
  const emitted: string[][] = [];
  m.on('roots', (roots) => emitted.push(roots));
  const bundle = [...(await ca.roots()), ...(await successor.roots())];
  m.setRoots(bundle);
  t.deepEqual(m.trustBundle(), bundle);
  t.deepEqual(emitted, [bundle]);
  t.not(m.tlsContext(WEB), oldContext);
  m.setRoots(bundle); // unchanged: no event
  t.is(emitted.length, 1);
  t.throws(() => m.setRoots(['not a certificate']), { instanceOf: CaError });
  t.throws(() => m.setRoots([]), { instanceOf: CaError });
  t.deepEqual(m.trustBundle(), bundle);
});

test('a failed start() can be retried', async (t) => {
  const { ca } = await caIn(t);
  let fail = true;
  const m = manager(t, {
    kind: 'embedded',
    roots: async () => (fail ? ['garbage'] : ca.roots()),
    issue: (identity, ttlMs) => ca.issue(identity, ttlMs),
  });
  await t.throwsAsync(m.start(), { instanceOf: CaError });
  fail = false;
  await m.start();
  t.deepEqual(m.trustBundle(), await ca.roots());
});
