// The tunnel's TLS (daemon/tls on native/src/tls.c, tls_records.c + record.c) against independent TLS 1.3 stacks: node:tls
// and the openssl command line, over real sockets on 127.0.0.1. OpenSSL does our handshake, but every record
// after it is sealed and opened by Ambit's own code, so these peers are what proves the records right.

import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import {
  type AddressInfo,
  type Server,
  type Socket,
  connect as netConnect,
  createServer as netServer,
} from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import test, { type ExecutionContext } from 'ava';
import { TlsConnection, tlsFailureReason } from '../../daemon/tls/connection.js';
import { TlsContext } from '../../daemon/tls/context.js';
import { freePort, next, within } from '../helpers/net.js';
import { Alert, ContentType, RawTls13Client, keyUpdate } from '../helpers/tls13.js';

const HOST = '127.0.0.1';
const MiB = 1024 * 1024;
const SPIFFE = 'spiffe://tls.test/ns/default/sa/peer';

let dir = '';
let caPem = '';
let certPem = '';
let keyPem = '';

/** A CA and one leaf signed by it (SAN: the SPIFFE ID and 127.0.0.1), both usages, made once per run. */
test.before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ambit-tls-test-'));
  const run = (args: string[]): void => {
    execFileSync('openssl', args, { stdio: 'ignore', cwd: dir });
  };
  run(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'ca.key']);
  run(['req', '-x509', '-new', '-key', 'ca.key', '-subj', '/CN=tls-test-ca', '-days', '1', '-out', 'ca.pem']);
  run(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'leaf.key']);
  run(['req', '-new', '-key', 'leaf.key', '-subj', '/CN=peer', '-out', 'leaf.csr']);
  writeFileSync(
    join(dir, 'ext'),
    `subjectAltName=URI:${SPIFFE},IP:${HOST}\nextendedKeyUsage=serverAuth,clientAuth\n`,
  );
  run([
    'x509',
    '-req',
    '-in',
    'leaf.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-days',
    '1',
    '-extfile',
    'ext',
    '-out',
    'leaf.pem',
  ]);
  caPem = readFileSync(join(dir, 'ca.pem'), 'utf8');
  certPem = readFileSync(join(dir, 'leaf.pem'), 'utf8');
  keyPem = readFileSync(join(dir, 'leaf.key'), 'utf8');
});

test.after.always(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// ---- helpers

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

const ourContext = (keyUpdateRate?: number): TlsContext =>
  new TlsContext({ roots: [caPem], cert: certPem, key: keyPem, keyUpdateRate });

function listen(server: Server): Promise<number> {
  return new Promise((resolve) =>
    server.listen(0, HOST, () => resolve((server.address() as AddressInfo).port)),
  );
}

interface OurServer {
  port: number;
  conns: TlsConnection[];
  /** Every error a connection reported, in order. */
  errors: Error[];
}

/** Our TLS server; `onSecure` gets each connection once its handshake is done. */
async function ourServer(
  t: ExecutionContext,
  onSecure: (conn: TlsConnection) => void,
  handshakeTimeoutMs = 5000,
  keyUpdateRate?: number,
): Promise<OurServer> {
  const s: OurServer = { port: 0, conns: [], errors: [] };
  const ctx = ourContext(keyUpdateRate);
  const server = netServer({ pauseOnConnect: true }, (socket) => {
    const conn = new TlsConnection(socket, ctx, 'server', { handshakeTimeoutMs });
    s.conns.push(conn);
    conn.on('error', (err: Error) => s.errors.push(err));
    conn.once('secure', () => onSecure(conn));
  });
  t.teardown(() => {
    for (const c of s.conns) c.destroy();
    server.close();
  });
  s.port = await listen(server);
  return s;
}

/** Echoes everything back. */
const echo = (conn: TlsConnection): void => {
  conn.on('data', (chunk: Buffer) => conn.write(Buffer.from(chunk)));
};

function nodeClient(port: number, extra: tls.ConnectionOptions = {}): tls.TLSSocket {
  return tls.connect({
    host: HOST,
    port,
    ca: caPem,
    cert: certPem,
    key: keyPem,
    ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.3',
    ...extra,
  });
}

async function ourClient(t: ExecutionContext, port: number): Promise<TlsConnection> {
  const tcp = netConnect(port, HOST);
  await within(next(tcp, 'connect'), 5000, 'TCP connect');
  const conn = new TlsConnection(tcp, ourContext(), 'client', { servername: 'peer.tls.test' });
  t.teardown(() => conn.destroy());
  await within(next(conn, 'secure'), 5000, 'the handshake');
  return conn;
}

/** Writes `data` in pieces of the given sizes (cycled), several per turn, as the tunnel does. */
function writeInPieces(write: (b: Buffer) => void, data: Buffer, sizes: number[]): void {
  let off = 0;
  let i = 0;
  while (off < data.length) {
    const n = Math.min(sizes[i++ % sizes.length]!, data.length - off);
    write(data.subarray(off, off + n));
    off += n;
  }
}

function collect(e: NodeJS.EventEmitter, bytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let got = 0;
    e.on('data', (c: Buffer) => {
      parts.push(Buffer.from(c));
      got += c.length;
      if (got >= bytes) resolve(Buffer.concat(parts));
    });
    e.once('error', reject);
    e.once('close', () => reject(new Error(`closed after ${got} of ${bytes} bytes`)));
  });
}

// ---- tests

test('node:tls client ↔ our server: 24 MiB echoed intact, mixed write sizes, TLS 1.3 with the client identity seen', async (t) => {
  let peerSan: string | undefined;
  const server = await ourServer(t, (conn) => {
    peerSan = conn.peerCertificate?.subjectAltName;
    echo(conn);
  });
  const client = nodeClient(server.port);
  t.teardown(() => client.destroy());
  await within(next(client, 'secureConnect'), 5000, 'the handshake');
  t.is(client.getProtocol(), 'TLSv1.3');
  t.is(client.alpnProtocol, 'h2');
  t.true(client.authorized);
  const data = randomBytes(24 * MiB);
  const back = collect(client, data.length);
  writeInPieces((b) => client.write(b), data, [9, 65_536, 1, 16_384, 16_385, 100_000, 3, 32_767]);
  t.is(sha256(await within(back, 30_000, 'the echo')), sha256(data));
  t.is(peerSan, `URI:${SPIFFE}, IP Address:${HOST}`);
  t.deepEqual(server.errors, []);
});

test('our client ↔ node:tls server: 24 MiB both ways at once, intact', async (t) => {
  const server = tls.createServer({
    key: keyPem,
    cert: certPem,
    ca: caPem,
    requestCert: true,
    rejectUnauthorized: true,
    ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.3',
  });
  const toClient = randomBytes(24 * MiB);
  let fromClient: Promise<Buffer> | undefined;
  server.on('secureConnection', (socket: tls.TLSSocket) => {
    fromClient = collect(socket, toClient.length);
    writeInPieces((b) => socket.write(b), toClient, [1_000_000, 7, 16_384]);
  });
  t.teardown(() => server.close());
  const port = await listen(server as unknown as Server);
  const conn = await ourClient(t, port);
  t.is(conn.alpnProtocol, 'h2');
  t.is(conn.peerCertificate?.subjectAltName, `URI:${SPIFFE}, IP Address:${HOST}`);
  const got = collect(conn, toClient.length);
  const sent = randomBytes(24 * MiB);
  writeInPieces((b) => conn.write(b), sent, [16_384 * 3 + 1, 5, 250_000]);
  t.is(sha256(await within(got, 30_000, 'the server data')), sha256(toClient));
  t.is(sha256(await within(fromClient!, 30_000, 'the client data')), sha256(sent));
});

test('the openssl client sends KeyUpdate (update requested) mid-stream: both sides move to new keys and keep talking', async (t) => {
  const server = await ourServer(t, echo);
  const certFile = join(dir, 'leaf.pem');
  const keyFile = join(dir, 'leaf.key');
  const child = spawn(
    'openssl',
    [
      's_client',
      '-connect',
      `${HOST}:${server.port}`,
      '-tls1_3',
      '-alpn',
      'h2',
      '-servername',
      'peer.tls.test',
      '-CAfile',
      join(dir, 'ca.pem'),
      '-verify_return_error',
      '-cert',
      certFile,
      '-key',
      keyFile,
      // Not -quiet: that also turns off s_client's command letters.
    ],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  t.teardown(() => child.kill());
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
  });
  child.stderr.on('data', (c: Buffer) => {
    err += c.toString();
  });
  const until = (text: string): Promise<void> =>
    within(
      new Promise<void>((resolve) => {
        const tick = setInterval(() => {
          if (out.includes(text) || err.includes(text)) {
            clearInterval(tick);
            resolve();
          }
        }, 20);
      }),
      10_000,
      `"${text}" from s_client (stderr: ${err})`,
    );
  child.stdin.write('before-update\n');
  await until('before-update');
  // s_client's interactive command: a line "K" sends KeyUpdate with update_requested.
  child.stdin.write('K\n');
  // s_client reads a line per command: the data goes once the update is out.
  await until('KEYUPDATE');
  child.stdin.write('after-update\n');
  // The echo proves both directions' new keys: the server was asked to update its own too.
  await until('after-update');
  t.false(out.includes('\nK\n'), 'the K line was a command, not data');
  t.deepEqual(server.errors, []);
});

test('openssl s_server sends tickets and KeyUpdates (one asking for ours) to our client: it follows them and keeps talking', async (t) => {
  const port = await freePort();
  const child = spawn(
    'openssl',
    [
      's_server',
      '-accept',
      `${HOST}:${port}`,
      '-tls1_3',
      '-alpn',
      'h2',
      '-cert',
      join(dir, 'leaf.pem'),
      '-key',
      join(dir, 'leaf.key'),
      '-CAfile',
      join(dir, 'ca.pem'),
      '-Verify',
      '1',
      '-num_tickets',
      '2',
    ],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  t.teardown(() => child.kill());
  let out = '';
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
  });
  child.stderr.on('data', (c: Buffer) => {
    out += c.toString();
  });
  const seen = (text: string): Promise<void> =>
    until(() => out.includes(text), 10_000, `"${text}" from s_server (output: ${out})`);
  await seen('ACCEPT');
  const conn = await ourClient(t, port);
  const errors: Error[] = [];
  conn.on('error', (err: Error) => errors.push(err));
  let got = '';
  conn.on('data', (c: Buffer) => {
    got += c.toString();
  });
  conn.write(Buffer.from('hello-server\n'));
  await seen('hello-server');
  // s_server's commands: "k" sends KeyUpdate, "K" one with update_requested.
  // One line per read: s_server takes a line as a command only if it is alone in its read.
  for (const line of ['k', 'K', 'from-server']) {
    child.stdin.write(`${line}\n`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await until(
    () => got.includes('from-server'),
    10_000,
    `the data after the KeyUpdates (got ${got}, s_server: ${out})`,
  );
  // s_server reports each command's SSL_do_handshake, which sends the KeyUpdate.
  t.is(out.match(/SSL_do_handshake -> 1/g)?.length, 2, 's_server took both lines as commands');
  t.false(/^[kK]$/m.test(got), 'no command line arrived as data');
  // Our answer to "K" goes before this record, under our old keys, and this one under the new: s_server
  // reading it proves the answer well formed (that one is sent at all, the raw-peer tests below count).
  conn.write(Buffer.from('after-updates\n'));
  await seen('after-updates');
  t.deepEqual(errors, []);
});

test('bytes that are not TLS end the connection with the reason; the server keeps serving', async (t) => {
  const server = await ourServer(t, echo);
  const raw = netConnect(server.port, HOST);
  raw.on('error', () => {});
  raw.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await within(next(raw, 'close'), 5000, 'the connection to close');
  t.is(server.errors.length, 1);
  t.regex(server.errors[0]!.message, /TLS handshake failed: .*(wrong version number|http request|record)/i);
  // And a proper client still gets through.
  const client = nodeClient(server.port);
  t.teardown(() => client.destroy());
  const back = collect(client, 5);
  client.write('hello');
  t.is((await within(back, 5000, 'the echo')).toString(), 'hello');
});

test('a client without a certificate, or offering no h2, is refused in the handshake', async (t) => {
  const server = await ourServer(t, echo);
  for (const extra of [{ cert: undefined, key: undefined }, { ALPNProtocols: ['http/1.1'] }]) {
    const client = nodeClient(server.port, extra);
    client.on('error', () => {});
    // TLS 1.3: the client may finish before the server rejects it; either way no data comes back.
    client.write('x');
    await within(next(client, 'close'), 5000, 'the refusal');
  }
  await within(
    (async () => {
      while (server.errors.length < 2) await new Promise((r) => setTimeout(r, 20));
    })(),
    5000,
    'two refusals',
  );
  t.regex(server.errors[0]!.message, /peer did not return a certificate|certificate required/i);
  t.regex(server.errors[1]!.message, /no application protocol|no_application_protocol/i);
});

test('a client that never finishes its handshake is cut off after the timeout', async (t) => {
  const server = await ourServer(t, echo, 300);
  const raw = netConnect(server.port, HOST);
  raw.on('error', () => {});
  const started = Date.now();
  await within(next(raw, 'close'), 5000, 'the cut-off');
  t.true(Date.now() - started >= 250);
  t.regex(server.errors[0]?.message ?? '', /handshake timed out/);
});

test('a record altered on the wire fails authentication: the connection ends with bad_record_mac, nothing forged is delivered', async (t) => {
  const received: Buffer[] = [];
  const server = await ourServer(t, (conn) => conn.on('data', (c: Buffer) => received.push(Buffer.from(c))));
  // A TCP relay that flips one bit of the client's 3rd application record.
  let flipped = false;
  const relay = netServer((down: Socket) => {
    const up = netConnect(server.port, HOST);
    up.on('error', () => down.destroy());
    down.on('error', () => up.destroy());
    up.pipe(down);
    let seen = 0;
    down.on('data', (chunk: Buffer) => {
      const copy = Buffer.from(chunk);
      seen += copy.length;
      if (!flipped && seen > 4000) {
        copy[copy.length - 20]! ^= 1;
        flipped = true;
      }
      up.write(copy);
    });
  });
  t.teardown(() => relay.close());
  const relayPort = await listen(relay);
  const client = nodeClient(relayPort);
  client.on('error', () => {});
  t.teardown(() => client.destroy());
  await within(next(client, 'secureConnect'), 5000, 'the handshake');
  for (let i = 0; i < 10; i++) client.write(Buffer.alloc(1000, i));
  await within(next(client, 'close'), 5000, 'the server to close the connection');
  t.true(flipped);
  t.regex(server.errors[0]?.message ?? '', /bad_record_mac/);
  const total = Buffer.concat(received);
  t.true(total.length < 10_000);
  // What was delivered is exactly what was sent, in order, up to the altered record.
  for (let i = 0; i < total.length; i++) if (total[i] !== Math.floor(i / 1000)) t.fail(`byte ${i} altered`);
});

test('pause() stops data until resume(); records already buffered arrive after resume, intact', async (t) => {
  const data = randomBytes(8 * MiB);
  let conn: TlsConnection | undefined;
  const parts: Buffer[] = [];
  const server = await ourServer(t, (c) => {
    conn = c;
    c.on('data', (chunk: Buffer) => parts.push(Buffer.from(chunk)));
  });
  const client = nodeClient(server.port);
  t.teardown(() => client.destroy());
  await within(next(client, 'secureConnect'), 5000, 'the handshake');
  client.write(data.subarray(0, MiB));
  await within(
    (async () => {
      while (parts.length === 0) await new Promise((r) => setTimeout(r, 5));
    })(),
    5000,
    'the first data',
  );
  conn!.pause();
  client.write(data.subarray(MiB));
  await new Promise((r) => setTimeout(r, 200));
  const whilePaused = Buffer.concat(parts).length;
  await new Promise((r) => setTimeout(r, 200));
  t.is(Buffer.concat(parts).length, whilePaused, 'no data while paused');
  t.true(whilePaused < data.length);
  conn!.resume();
  await within(
    (async () => {
      while (Buffer.concat(parts).length < data.length) await new Promise((r) => setTimeout(r, 10));
    })(),
    10_000,
    'the rest after resume',
  );
  t.is(sha256(Buffer.concat(parts)), sha256(data));
});

test('end() sends close_notify and FIN after queued data; the peer ending closes ours', async (t) => {
  const data = randomBytes(3 * MiB);
  const server = await ourServer(t, (conn) => {
    conn.write(data);
    conn.end();
  });
  const client = nodeClient(server.port);
  t.teardown(() => client.destroy());
  const parts: Buffer[] = [];
  client.on('data', (c: Buffer) => parts.push(c));
  await within(next(client, 'end'), 10_000, "the server's end");
  t.is(sha256(Buffer.concat(parts)), sha256(data));
  client.end();
  await within(next(server.conns[0]!, 'close'), 5000, 'our side to close');
  t.true(server.conns[0]!.destroyed);
  t.deepEqual(server.errors, []);
});

// ---- a peer whose records the test writes (test/helpers/tls13.ts): what RFC 8446 says a server must refuse

/** Resolves once `cond` holds, polling; bounded by `ms`. */
async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  await within(
    (async () => {
      while (!cond()) await new Promise((r) => setTimeout(r, 10));
    })(),
    ms,
    what,
  );
}

/** Our echo server, and a raw peer connected to it with the handshake done. */
async function rawSession(
  t: ExecutionContext,
  keyUpdateRate?: number,
): Promise<{ server: OurServer; peer: RawTls13Client; got: Buffer[] }> {
  const secured: TlsConnection[] = [];
  const got: Buffer[] = [];
  const server = await ourServer(
    t,
    (conn) => {
      secured.push(conn);
      conn.on('data', (c: Buffer) => got.push(Buffer.from(c)));
      echo(conn);
    },
    5000,
    keyUpdateRate,
  );
  const peer = await RawTls13Client.connect({
    host: HOST,
    port: server.port,
    tls: {
      ca: caPem,
      cert: certPem,
      key: keyPem,
      ALPNProtocols: ['h2'],
      servername: 'peer.tls.test',
      // The certificate names 127.0.0.1 and a SPIFFE ID, not the SNI name; the chain is still verified.
      checkServerIdentity: () => undefined,
    },
    serverReady: () => until(() => secured.length > 0, 5000, 'the server handshake'),
  });
  t.teardown(() => peer.destroy());
  return { server, peer, got };
}

/** The server still serves a well-behaved client after whatever came before. */
async function stillServes(t: ExecutionContext, port: number): Promise<void> {
  const client = nodeClient(port);
  t.teardown(() => client.destroy());
  const back = collect(client, 5);
  client.write('hello');
  t.is((await within(back, 5000, 'the echo from a good client')).toString(), 'hello');
}

interface Refused {
  name: string;
  records: (peer: RawTls13Client) => Buffer[];
  alert: number | undefined;
  reason: 'tls_record' | 'tls_alert';
  message: RegExp;
}

const refused: Refused[] = [
  {
    name: 'inner plaintext over 2^14 bytes (content 16385): record_overflow',
    records: (p) => [p.seal(ContentType.APPLICATION_DATA, Buffer.alloc(16385, 1))],
    alert: Alert.RECORD_OVERFLOW,
    reason: 'tls_record',
    message: /over 2\^14 bytes of plaintext \(sent record_overflow\)/,
  },
  {
    name: 'inner plaintext over 2^14 + 1 bytes by its padding alone: record_overflow',
    records: (p) => [p.seal(ContentType.APPLICATION_DATA, Buffer.alloc(16000, 1), 400)],
    alert: Alert.RECORD_OVERFLOW,
    reason: 'tls_record',
    message: /record_overflow/,
  },
  {
    name: 'a ciphertext over 2^14 + 256 bytes: record_overflow, from its header alone',
    records: () => {
      const r = Buffer.alloc(5 + 16641, 7);
      r.set([ContentType.APPLICATION_DATA, 3, 3], 0);
      r.writeUInt16BE(16641, 3);
      return [r];
    },
    alert: Alert.RECORD_OVERFLOW,
    reason: 'tls_record',
    message: /16641 bytes .*record_overflow/,
  },
  {
    name: 'a record whose tag does not verify: bad_record_mac',
    records: (p) => {
      const r = p.seal(ContentType.APPLICATION_DATA, Buffer.from('forged'));
      r[8]! ^= 0x40;
      return [r];
    },
    alert: Alert.BAD_RECORD_MAC,
    reason: 'tls_record',
    message: /does not authenticate \(sent bad_record_mac\)/,
  },
  {
    name: 'two KeyUpdates in one record: unexpected_message',
    records: (p) => [p.sealKeyUpdates([0, 0])],
    alert: Alert.UNEXPECTED_MESSAGE,
    reason: 'tls_record',
    message: /more after a KeyUpdate in the same record/,
  },
  {
    name: 'a thousand KeyUpdates packed in one record: unexpected_message, none answered',
    records: (p) => [p.sealKeyUpdates(new Array<number>(1000).fill(1))],
    alert: Alert.UNEXPECTED_MESSAGE,
    reason: 'tls_record',
    message: /more after a KeyUpdate/,
  },
  {
    name: 'a handshake message that spans the key change (a KeyUpdate, then the start of another): unexpected_message',
    records: (p) => [p.seal(ContentType.HANDSHAKE, Buffer.concat([keyUpdate(0), Buffer.from([24, 0])]))],
    alert: Alert.UNEXPECTED_MESSAGE,
    reason: 'tls_record',
    message: /spans the key change/,
  },
  {
    name: 'a KeyUpdate asking for 2: illegal_parameter',
    records: (p) => [p.seal(ContentType.HANDSHAKE, keyUpdate(2))],
    alert: Alert.ILLEGAL_PARAMETER,
    reason: 'tls_record',
    message: /request is not 0 or 1 \(sent illegal_parameter\)/,
  },
  {
    name: 'a KeyUpdate of 2 bytes: decode_error',
    records: (p) => [p.seal(ContentType.HANDSHAKE, Buffer.from([24, 0, 0, 2, 0, 0]))],
    alert: Alert.DECODE_ERROR,
    reason: 'tls_record',
    message: /length is not 1 \(sent decode_error\)/,
  },
  {
    name: 'a NewSessionTicket from a client: unexpected_message',
    records: (p) => [p.seal(ContentType.HANDSHAKE, Buffer.from([4, 0, 0, 4, 0, 0, 0, 0]))],
    alert: Alert.UNEXPECTED_MESSAGE,
    reason: 'tls_record',
    message: /unexpected post-handshake message \(type 4\)/,
  },
  {
    name: 'application data between the two halves of a handshake message: unexpected_message',
    records: (p) => [
      p.seal(ContentType.HANDSHAKE, Buffer.from([24, 0])),
      p.seal(ContentType.APPLICATION_DATA, Buffer.from('x')),
    ],
    alert: Alert.UNEXPECTED_MESSAGE,
    reason: 'tls_record',
    message: /interleaved/,
  },
  {
    name: 'an alert record of 3 bytes: decode_error',
    records: (p) => [p.seal(ContentType.ALERT, Buffer.from([2, 40, 0x55]))],
    alert: Alert.DECODE_ERROR,
    reason: 'tls_record',
    message: /alert record that is not 2 bytes/,
  },
  {
    name: "the peer's fatal alert: closed, and nothing sent back",
    records: (p) => [p.seal(ContentType.ALERT, Buffer.from([2, 40]))],
    alert: undefined,
    reason: 'tls_alert',
    message: /the peer sent TLS alert 40 \(handshake_failure\)/,
  },
];

for (const c of refused) {
  test(`after the handshake, ${c.name}; the server keeps serving`, async (t) => {
    const { server, peer, got } = await rawSession(t);
    // What came before the bad record is delivered: the record layer was fine until then.
    peer.write(peer.seal(ContentType.APPLICATION_DATA, Buffer.from('before')), ...c.records(peer));
    await within(peer.whenClosed, 5000, 'the server to close the connection');
    t.is(peer.openError, undefined);
    t.is(Buffer.concat(got).toString(), 'before');
    t.deepEqual(peer.alerts, c.alert === undefined ? [] : [[2, c.alert]]);
    t.is(peer.keyUpdates, 0);
    await until(() => server.errors.length > 0, 5000, "the server connection's error");
    t.is(server.errors.length, 1);
    t.regex(server.errors[0]!.message, c.message);
    t.is(tlsFailureReason(server.errors[0]), c.reason);
    await stillServes(t, server.port);
  });
}

test('a KeyUpdate split over two records, and KeyUpdates asking for ours: each followed, one answer per request', async (t) => {
  const { server, peer } = await rawSession(t);
  // A message split across records is fine, as long as the KeyUpdate ends the second one.
  const ku = keyUpdate(1);
  peer.write(peer.seal(ContentType.HANDSHAKE, ku.subarray(0, 2)));
  peer.write(peer.seal(ContentType.HANDSHAKE, ku.subarray(2)));
  peer.tx.update();
  peer.write(peer.seal(ContentType.APPLICATION_DATA, Buffer.from('one')));
  await until(() => peer.data.toString() === 'one', 5000, 'the echo under new keys');
  // Three requests in three records, with data after: the server was silent meanwhile, so it may answer
  // once (RFC 8446 §4.6.3), and at most once per record.
  const recs: Buffer[] = [];
  for (let i = 0; i < 3; i++) recs.push(peer.sealKeyUpdates([1]));
  recs.push(peer.seal(ContentType.APPLICATION_DATA, Buffer.from('two')));
  peer.write(...recs);
  await until(() => peer.data.toString() === 'onetwo', 5000, 'the second echo');
  t.true(peer.keyUpdates >= 2 && peer.keyUpdates <= 4, `${peer.keyUpdates} answers`);
  // Each answer comes before the data it precedes, so the echo opened under the server's new keys.
  const types = peer.received.map((r) => r.type);
  t.is(types[0], ContentType.HANDSHAKE);
  t.is(peer.openError, undefined);
  t.deepEqual(server.errors, []);
});

test('data and KeyUpdates interleaved in one write: every byte delivered in order, under each generation of keys', async (t) => {
  const { server, peer, got } = await rawSession(t);
  const sent: Buffer[] = [];
  const recs: Buffer[] = [];
  for (let i = 0; i < 20; i++) {
    const chunk = randomBytes(1000 + i * 700);
    sent.push(chunk);
    recs.push(peer.seal(ContentType.APPLICATION_DATA, chunk));
    recs.push(peer.sealKeyUpdates([i % 2]));
  }
  peer.write(...recs);
  const want = Buffer.concat(sent);
  await until(() => Buffer.concat(got).length >= want.length, 5000, 'all the data');
  t.is(sha256(Buffer.concat(got)), sha256(want));
  t.deepEqual(server.errors, []);
});

test('a KeyUpdate storm (thousands, one per record, each asking for ours): closed with tls_keyupdate_flood, answers bounded', async (t) => {
  const { server, peer } = await rawSession(t, 10);
  const records = 3000;
  const batch: Buffer[] = [];
  for (let i = 0; i < records; i++) batch.push(peer.sealKeyUpdates([1]));
  peer.write(...batch);
  await within(peer.whenClosed, 10_000, 'the server to close the flooding connection');
  t.is(peer.openError, undefined);
  // A burst of 10 x 10 a second is admitted; the rest is refused at the first over the rate.
  t.true(peer.keyUpdates <= 101, `${peer.keyUpdates} answers to ${records} records`);
  t.deepEqual(peer.alerts, [[2, Alert.UNEXPECTED_MESSAGE]]);
  await until(() => server.errors.length > 0, 5000, "the server connection's error");
  t.is(tlsFailureReason(server.errors[0]), 'tls_keyupdate_flood');
  t.regex(server.errors[0]!.message, /KeyUpdates faster than 10 a second/);
  await stillServes(t, server.port);
});

test('keyUpdateRate 0 refuses the first KeyUpdate with tls_keyupdate_flood', async (t) => {
  const { server, peer } = await rawSession(t, 0);
  peer.write(peer.sealKeyUpdates([0]));
  await within(peer.whenClosed, 5000, 'the close');
  t.deepEqual(peer.alerts, [[2, Alert.UNEXPECTED_MESSAGE]]);
  await until(() => server.errors.length > 0, 5000, "the server connection's error");
  t.is(tlsFailureReason(server.errors[0]), 'tls_keyupdate_flood');
});
