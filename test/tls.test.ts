// The tunnel's TLS (daemon/tls on native/src/tls.c + record.c) against independent TLS 1.3 stacks: node:tls
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
import { TlsConnection } from '../daemon/tls/connection.js';
import { TlsContext } from '../daemon/tls/context.js';
import { next, within } from './helpers/net.js';

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

const ourContext = (): TlsContext => new TlsContext({ roots: [caPem], cert: certPem, key: keyPem });

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
): Promise<OurServer> {
  const s: OurServer = { port: 0, conns: [], errors: [] };
  const ctx = ourContext();
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
