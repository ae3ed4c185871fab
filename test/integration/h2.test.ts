// The HBONE HTTP/2 stack (daemon/proxy/h2) on the tunnel's own TLS (daemon/tls, native) against node:http2
// over real TLS 1.3 on 127.0.0.1: our client against Node's server, Node's client against our server, a raw
// node:tls peer sending malformed frames, and streams spliced to real TCP workloads (native/src/h2.c).

import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http2 from 'node:http2';
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
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { PlainConnection } from '../../daemon/io/plain.js';
import { ErrorCode } from '../../daemon/proxy/h2/codes.js';
import { H2Session, type H2SessionOptions, nghttp2Version } from '../../daemon/proxy/h2/session.js';
import type { H2Headers, H2Stream } from '../../daemon/proxy/h2/stream.js';
import { pipeBoth, spliceBoth } from '../../daemon/proxy/pipe.js';
import { TlsConnection } from '../../daemon/tls/connection.js';
import { TlsContext } from '../../daemon/tls/context.js';
import { H2ProtocolError } from '../../lib/errors.js';
import {
  Flag,
  type Frame,
  FrameType,
  PREFACE,
  connectBlock,
  continuationFrame,
  frame,
  frameHeader,
  goawayCodes,
  headersFrame,
  indexed,
  literalIndexed,
  pingFrame,
  readFrames,
  rstStreamFrame,
  settingsFrame,
  windowUpdateFrame,
} from '../helpers/h2raw.js';
import { next, sleep, within } from '../helpers/net.js';

const HOST = '127.0.0.1';
const MiB = 1024 * 1024;

const OPTS: H2SessionOptions = {
  maxConcurrentStreams: 100,
  streamWindow: 256 * 1024,
  connectionWindow: MiB,
  maxFrameSize: 16_384,
};

// ---- a self-signed ECDSA P-256 certificate for 127.0.0.1, made once per run

let dir = '';
let key = '';
let cert = '';

test.before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ambit-h2-test-'));
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      join(dir, 'key.pem'),
      '-out',
      join(dir, 'cert.pem'),
      '-days',
      '1',
      '-subj',
      `/CN=${HOST}`,
      '-addext',
      `subjectAltName=IP:${HOST}`,
    ],
    { stdio: 'ignore' },
  );
  key = readFileSync(join(dir, 'key.pem'), 'utf8');
  cert = readFileSync(join(dir, 'cert.pem'), 'utf8');
});

test.after.always(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// ---- helpers

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function listen(server: Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, () => {
      server.removeListener('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

/** node:tls to our server, which requires a client certificate (the same self-signed one). */
function tlsConnect(port: number): tls.TLSSocket {
  return tls.connect({ host: HOST, port, ca: cert, key, cert, ALPNProtocols: ['h2'], minVersion: 'TLSv1.3' });
}

/** The certificate as our end presents it, trusting itself. */
const ourContext = (): TlsContext => new TlsContext({ roots: [cert], cert, key });

interface OurServer {
  port: number;
  sessions: H2Session[];
  /** Connection errors the sessions reported through 'error'. */
  errors: Error[];
}

/** A TLS server running our H2Session on every connection; `onStream` answers each stream. */
async function ourServer(
  t: ExecutionContext,
  onStream: (stream: H2Stream, headers: H2Headers, session: H2Session) => void,
  opts: H2SessionOptions = OPTS,
): Promise<OurServer> {
  const s: OurServer = { port: 0, sessions: [], errors: [] };
  const ctx = ourContext();
  const server = netServer({ pauseOnConnect: true }, (socket) => {
    const conn = new TlsConnection(socket, ctx, 'server', { handshakeTimeoutMs: 5000 });
    conn.on('error', () => {});
    conn.once('secure', () => {
      if (conn.alpnProtocol !== 'h2') {
        conn.destroy();
        return;
      }
      const session = new H2Session(conn, 'server', opts);
      s.sessions.push(session);
      session.on('error', (err: Error) => s.errors.push(err));
      session.on('stream', (stream: H2Stream, headers: H2Headers) => onStream(stream, headers, session));
    });
  });
  t.teardown(() => {
    for (const session of s.sessions) session.destroy();
    server.close();
  });
  s.port = await listen(server);
  return s;
}

/** Echoes a server stream back to its peer, with backpressure both ways. */
function echo(stream: H2Stream): void {
  stream.on('data', (chunk: Buffer) => {
    if (!stream.write(chunk)) {
      stream.pause();
      stream.once('drain', () => stream.resume());
    }
  });
  stream.on('end', () => stream.end());
  stream.resume();
}

interface NodeServer {
  port: number;
  /** The request headers of every stream it saw. */
  requests: http2.IncomingHttpHeaders[];
}

/** A node:http2 server that answers CONNECT with 200 and echoes the stream; a 64 KiB stream window. */
async function nodeServer(t: ExecutionContext): Promise<NodeServer> {
  const s: NodeServer = { port: 0, requests: [] };
  const server = http2.createSecureServer({
    key,
    cert,
    minVersion: 'TLSv1.3',
    settings: { initialWindowSize: 65_535 },
  });
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on('session', (session) => {
    sessions.add(session);
    session.on('error', () => {});
    session.once('close', () => sessions.delete(session));
  });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    s.requests.push(headers);
    if (headers[':method'] !== 'CONNECT') {
      stream.respond({ ':status': 405 }, { endStream: true });
      return;
    }
    stream.respond({ ':status': 200 });
    stream.pipe(stream);
  });
  t.teardown(() => {
    for (const session of sessions) session.destroy();
    server.close();
  });
  s.port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, () => resolve((server.address() as AddressInfo).port));
  });
  return s;
}

/** Our client session over TLS 1.3 + ALPN h2, once the server's SETTINGS have arrived. */
async function ourClient(t: ExecutionContext, port: number): Promise<H2Session> {
  const tcp = netConnect(port, HOST);
  await within(next(tcp, 'connect'), 5000, 'the TCP connection');
  const socket = new TlsConnection(tcp, ourContext(), 'client');
  socket.on('error', () => {});
  t.teardown(() => socket.destroy());
  await within(next(socket, 'secure'), 5000, 'the TLS handshake');
  t.is(socket.alpnProtocol, 'h2');
  const session = new H2Session(socket, 'client', OPTS);
  t.teardown(() => session.destroy());
  await within(next(session, 'connect'), 5000, "the server's SETTINGS");
  return session;
}

/** A node:http2 client whose connection is TLS 1.3 to 127.0.0.1 with ALPN h2. */
async function nodeClient(t: ExecutionContext, port: number): Promise<http2.ClientHttp2Session> {
  const client = http2.connect(`https://${HOST}:${port}`, { createConnection: () => tlsConnect(port) });
  client.on('error', () => {});
  t.teardown(() => client.destroy());
  await within(next(client, 'connect'), 5000, 'the node:http2 client to connect');
  return client;
}

/** Writes `data` to one of our streams in 64 KiB pieces, waiting for 'drain' whenever write() says so. */
async function writeAll(stream: H2Stream, data: Buffer): Promise<void> {
  const piece = 64 * 1024;
  for (let off = 0; off < data.length; off += piece) {
    if (!stream.write(data.subarray(off, off + piece)))
      await within(next(stream, 'drain'), 10_000, "'drain'");
  }
}

/** Everything a readable delivers until its 'end'. */
function collect(stream: NodeJS.EventEmitter & { resume(): unknown }): Promise<Buffer> {
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  const done = next(stream, 'end').then(() => Buffer.concat(chunks));
  stream.resume();
  return done;
}

/**
 * Writes `data` to a node:http2 stream in 64 KiB pieces with backpressure, then half-closes. (One big end(data)
 * per stream would hold it all in the session's outbound queue: 20 such MiB exceed node:http2's default
 * maxSessionMemory of 10 MB, and node:http2 then resets every stream with INTERNAL_ERROR whatever the server.)
 */
async function nodeWriteAll(req: http2.ClientHttp2Stream, data: Buffer): Promise<void> {
  const piece = 64 * 1024;
  for (let off = 0; off < data.length; off += piece) {
    if (!req.write(data.subarray(off, off + piece))) await within(next(req, 'drain'), 10_000, "'drain'");
  }
  req.end();
}

/** One CONNECT through a node:http2 client: sends `data`, half-closes, returns what came back. */
async function nodeEcho(
  client: http2.ClientHttp2Session,
  data: Buffer,
  extra: http2.OutgoingHttpHeaders = {},
): Promise<{ status: number | undefined; body: Buffer }> {
  const req = client.request({ ':method': 'CONNECT', ':authority': '198.18.0.1:8080', ...extra });
  req.on('error', () => {});
  const response = next(req, 'response');
  const body = collect(req);
  await nodeWriteAll(req, data);
  const [headers] = (await response) as [http2.IncomingHttpHeaders];
  return { status: Number(headers[':status']), body: await body };
}

// ---- raw frames, for the robustness tests

/** Sends `bytes` on a raw TLS (ALPN h2) connection and returns every frame received until the server closes. */
async function rawExchange(t: ExecutionContext, port: number, bytes: Buffer): Promise<Frame[]> {
  const socket = tlsConnect(port);
  socket.on('error', () => {});
  t.teardown(() => socket.destroy());
  await within(next(socket, 'secureConnect'), 5000, 'the TLS handshake');
  t.is(socket.alpnProtocol, 'h2');
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  const closed = next(socket, 'close');
  socket.write(bytes);
  await within(closed, 3000, 'the server to close the connection');
  return readFrames(Buffer.concat(chunks));
}

/** A valid client start: the preface and an empty SETTINGS. */
const hello = (): Buffer => Buffer.concat([PREFACE, settingsFrame([])]);

/**
 * The server answers `bytes` with GOAWAY(`code`) as its last frame, closes the connection, reports the error,
 * and still serves a well-behaved node:http2 client afterwards.
 */
async function rejectsWithGoaway(t: ExecutionContext, bytes: Buffer, code: number): Promise<void> {
  const server = await ourServer(t, (stream) => {
    stream.respond({ ':status': '200' });
    echo(stream);
  });
  const frames = await rawExchange(t, server.port, bytes);
  t.true(frames.length > 0 && frames[0]!.type === FrameType.SETTINGS, 'the server opened with SETTINGS');
  const goaways = frames.filter((f) => f.type === FrameType.GOAWAY);
  t.is(goaways.length, 1, 'exactly one GOAWAY');
  const last = frames[frames.length - 1]!;
  t.is(last.type, FrameType.GOAWAY, 'GOAWAY is the last frame');
  t.is(last.streamId, 0);
  t.true(last.payload.length >= 8);
  t.is(last.payload.readUInt32BE(4), code, 'GOAWAY error code');

  t.is(server.sessions.length, 1);
  const bad = server.sessions[0]!;
  if (!bad.destroyed) await within(next(bad, 'close'), 3000, "the server session's 'close'");
  t.true(bad.destroyed);
  t.is(server.errors.length, 1);
  t.true(server.errors[0] instanceof H2ProtocolError);
  t.is((server.errors[0] as H2ProtocolError).h2Code, code);
  t.is((server.errors[0] as H2ProtocolError).reason, 'h2_protocol');

  // The same server still works.
  const client = await nodeClient(t, server.port);
  const data = randomBytes(256 * 1024);
  const { status, body } = await within(nodeEcho(client, data), 10_000, 'an echo after the bad peer');
  t.is(status, 200);
  t.is(sha256(body), sha256(data));
}

// ---- 1. our client against node:http2

test('our client tunnels 8 MiB through a node:http2 CONNECT server with 64 KiB windows, intact', async (t) => {
  const server = await nodeServer(t);
  const session = await ourClient(t, server.port);
  const authority = `${HOST}:${server.port}`;
  const stream = session.request({ ':method': 'CONNECT', ':authority': authority });
  const events: string[] = [];
  stream.on('end', () => events.push('end'));
  const closed = next(stream, 'close').then(() => events.push('close'));
  const response = next(stream, 'response');
  const received = collect(stream);

  const data = randomBytes(8 * MiB);
  await within(writeAll(stream, data), 30_000, 'the 8 MiB to be written');
  const [headers] = (await within(response, 5000, 'the response')) as [H2Headers];
  t.is(headers[':status'], '200');
  stream.end();
  const body = await within(received, 30_000, 'the echo to end');
  await within(closed, 5000, "the stream's 'close'");

  t.is(body.length, data.length);
  t.is(sha256(body), sha256(data));
  t.deepEqual(events, ['end', 'close']);
  t.is(stream.rstCode, 0);
  t.true(stream.destroyed && stream.writableEnded && stream.readableEnded);
  t.is(server.requests.length, 1);
  t.is(server.requests[0]![':method'], 'CONNECT');
  t.is(server.requests[0]![':authority'], authority);
});

// ---- 2. node:http2 client against our server

test('a node:http2 client runs 20 concurrent 1 MiB CONNECT echoes through our server, headers forwarded', async (t) => {
  const seen: H2Headers[] = [];
  const server = await ourServer(t, (stream, headers) => {
    seen.push(headers);
    stream.respond({ ':status': '200' });
    echo(stream);
  });
  const client = await nodeClient(t, server.port);
  const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
  const runs = Array.from({ length: 20 }, async (_, i) => {
    const data = randomBytes(MiB);
    const result = await nodeEcho(client, data, {
      forwarded: `for="198.18.1.${i + 1}:40000"`,
      traceparent,
      baggage: `stream=${i},tenant=blue`,
    });
    return { i, data, ...result };
  });
  const results = await within(Promise.all(runs), 60_000, '20 echoes');
  for (const { i, data, status, body } of results) {
    t.is(status, 200, `stream ${i}`);
    t.is(body.length, data.length, `stream ${i}`);
    t.is(sha256(body), sha256(data), `stream ${i}`);
  }
  t.is(seen.length, 20);
  for (let i = 0; i < 20; i++) {
    const h = seen.find((x) => x.baggage === `stream=${i},tenant=blue`);
    t.truthy(h, `headers of stream ${i}`);
    t.is(h?.[':method'], 'CONNECT');
    t.is(h?.[':authority'], '198.18.0.1:8080');
    t.is(h?.forwarded, `for="198.18.1.${i + 1}:40000"`);
    t.is(h?.traceparent, traceparent);
  }
  t.is(server.errors.length, 0);
});

test('the stream window grows when the round trip needs it: 64 KiB to at least 1 MiB over a 40 ms path, data intact', async (t) => {
  const server = await ourServer(
    t,
    (stream) => {
      stream.respond({ ':status': '200' });
      const hash = createHash('sha256');
      stream.on('data', (c: Buffer) => hash.update(c));
      stream.resume();
      stream.on('end', () => {
        stream.write(Buffer.from(hash.digest('hex')));
        stream.end();
      });
    },
    { ...OPTS, streamWindow: 64 * 1024, maxStreamWindow: 4 * MiB, connectionWindow: 16 * MiB },
  );
  // A relay that holds every chunk 20 ms each way: a long path, on loopback.
  const relay = netServer((down) => {
    const up = netConnect(server.port, HOST);
    const delayed = (from: NodeJS.ReadableStream, to: NodeJS.WritableStream): void => {
      from.on('data', (c: Buffer) => setTimeout(() => to.write(c), 20));
      from.on('end', () => setTimeout(() => to.end(), 25));
    };
    up.on('error', () => down.destroy());
    down.on('error', () => up.destroy());
    delayed(down, up);
    delayed(up, down);
  });
  t.teardown(() => relay.close());
  const relayPort = await listen(relay);
  const client = await nodeClient(t, relayPort);
  const data = randomBytes(8 * MiB);
  const req = client.request({ ':method': 'CONNECT', ':authority': '198.18.0.1:8080' });
  req.on('error', () => {});
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  const ended = next(req, 'end');
  await nodeWriteAll(req, data);
  await within(ended, 30_000, 'the digest');
  t.is(Buffer.concat(chunks).toString(), sha256(data));
  const session = server.sessions[0]!;
  t.true(session.localStreamWindow >= MiB, `window ${session.localStreamWindow}`);
  t.true(session.localStreamWindow <= 4 * MiB);
  t.is(server.errors.length, 0);
});

// ---- 3. refusal

test('our server refuses a CONNECT with 401: the node:http2 client sees 401 and the stream ends', async (t) => {
  const server = await ourServer(t, (stream) => stream.respond({ ':status': '401' }, { endStream: true }));
  const client = await nodeClient(t, server.port);
  const req = client.request({ ':method': 'CONNECT', ':authority': '198.18.0.1:8080' });
  let error: Error | undefined;
  req.on('error', (err: Error) => {
    error = err;
  });
  const response = next(req, 'response');
  const ended = collect(req);
  const closed = next(req, 'close');
  const [headers] = (await within(response, 5000, 'the response')) as [http2.IncomingHttpHeaders];
  t.is(Number(headers[':status']), 401);
  const body = await within(ended, 5000, "the stream's 'end'");
  t.is(body.length, 0);
  await within(closed, 5000, "the stream's 'close'");
  t.is(error, undefined);
  t.is(req.rstCode, http2.constants.NGHTTP2_NO_ERROR);
  // The refusal ends the stream, not the connection.
  const again = await within(nodeEcho(client, Buffer.from('x')), 5000, 'a second request');
  t.is(again.status, 401);
});

// ---- 4. resets

test('a node:http2 client cancelling a stream closes our server stream with rstCode CANCEL (8)', async (t) => {
  const streams: H2Stream[] = [];
  const server = await ourServer(t, (stream) => {
    streams.push(stream);
    stream.respond({ ':status': '200' });
    // Echo, but keep our side open when the client's ends: node:http2's close(code) sends END_STREAM just
    // before RST_STREAM, and a stream closed cleanly in between would never see the reset.
    stream.on('data', (chunk: Buffer) => stream.write(chunk));
    stream.resume();
  });
  const client = await nodeClient(t, server.port);
  const req = client.request({ ':method': 'CONNECT', ':authority': '198.18.0.1:8080' });
  req.on('error', () => {});
  const firstEcho = next(req, 'data');
  req.write(Buffer.from('hello'));
  await within(firstEcho, 5000, 'the first echo');
  t.is(streams.length, 1);
  const ours = streams[0]!;
  let aborted = false;
  ours.on('aborted', () => {
    aborted = true;
  });
  const closed = next(ours, 'close');
  req.close(http2.constants.NGHTTP2_CANCEL);
  await within(closed, 5000, "our server stream's 'close'");
  t.is(ours.rstCode, ErrorCode.CANCEL);
  t.true(aborted);
  t.true(ours.destroyed);
  t.is(server.sessions[0]!.activeStreams, 0);
  t.false(server.sessions[0]!.destroyed, 'the session outlives the stream');
});

test('our server destroying a stream resets it at the node:http2 client with CANCEL (8)', async (t) => {
  const server = await ourServer(t, (stream) => {
    stream.respond({ ':status': '200' });
    stream.once('data', () => stream.destroy());
    stream.resume();
  });
  const client = await nodeClient(t, server.port);
  const req = client.request({ ':method': 'CONNECT', ':authority': '198.18.0.1:8080' });
  req.on('error', () => {});
  let aborted = false;
  req.on('aborted', () => {
    aborted = true;
  });
  const closed = next(req, 'close');
  const [headers] = (await within(next(req, 'response'), 5000, 'the response')) as [
    http2.IncomingHttpHeaders,
  ];
  t.is(Number(headers[':status']), 200);
  req.write(Buffer.from('hello'));
  await within(closed, 5000, "the client stream's 'close'");
  t.is(req.rstCode, http2.constants.NGHTTP2_CANCEL);
  t.true(aborted);
  t.false(client.destroyed, 'the connection outlives the stream');
});

// ---- 5. robustness

test('garbage instead of the client preface: GOAWAY PROTOCOL_ERROR, connection closed, server still serves', async (t) => {
  await rejectsWithGoaway(
    t,
    Buffer.from('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', 'latin1'),
    ErrorCode.PROTOCOL_ERROR,
  );
});

test('a frame longer than our max frame size: GOAWAY FRAME_SIZE_ERROR, connection closed, server still serves', async (t) => {
  // Only the header of a 16385-byte HEADERS frame: the length alone must be refused.
  await rejectsWithGoaway(
    t,
    Buffer.concat([hello(), frameHeader(OPTS.maxFrameSize + 1, FrameType.HEADERS, Flag.END_HEADERS, 1)]),
    ErrorCode.FRAME_SIZE_ERROR,
  );
});

test('HEADERS with a corrupt HPACK block: GOAWAY COMPRESSION_ERROR, connection closed, server still serves', async (t) => {
  // 0x82 is ':method: GET'; 0xbf is index 63, beyond the (empty) dynamic table.
  const block = Buffer.from([0x82, 0xbf]);
  await rejectsWithGoaway(t, Buffer.concat([hello(), headersFrame(1, block)]), ErrorCode.COMPRESSION_ERROR);
});

test('WINDOW_UPDATE of 0 on the connection: GOAWAY PROTOCOL_ERROR, connection closed, server still serves', async (t) => {
  await rejectsWithGoaway(t, Buffer.concat([hello(), windowUpdateFrame(0, 0)]), ErrorCode.PROTOCOL_ERROR);
});

// ---- 6. PING

test('our client PINGs a node:http2 server and gets the answer', async (t) => {
  const server = await nodeServer(t);
  const session = await ourClient(t, server.port);
  const [err, ms] = await within(
    new Promise<[Error | null, number]>((resolve) => {
      t.true(session.ping((e, rtt) => resolve([e, rtt])));
    }),
    5000,
    'the PING answer',
  );
  t.is(err, null);
  t.true(typeof ms === 'number' && ms >= 0 && ms < 5000);
});

// ---- 7. graceful close

test("our server's graceful close: GOAWAY to the node:http2 client, the open stream completes, then the connection closes", async (t) => {
  let closeCalled = false;
  const server = await ourServer(t, (stream, _headers, session) => {
    stream.respond({ ':status': '200' });
    echo(stream);
    stream.once('data', () => {
      closeCalled = true;
      session.close();
    });
  });
  const client = await nodeClient(t, server.port);
  const goaway = next(client, 'goaway');
  const clientClosed = next(client, 'close');
  const req = client.request({ ':method': 'CONNECT', ':authority': '198.18.0.1:8080' });
  req.on('error', () => {});
  const response = next(req, 'response');
  const body = collect(req);
  const closed = next(req, 'close');

  const first = randomBytes(64 * 1024);
  req.write(first);
  const [code, lastStreamId] = (await within(goaway, 5000, 'GOAWAY at the client')) as [number, number];
  t.true(closeCalled);
  t.is(code, http2.constants.NGHTTP2_NO_ERROR);
  t.is(lastStreamId, req.id ?? -1);
  t.false(req.destroyed, 'the open stream survives the GOAWAY');

  const rest = randomBytes(MiB);
  await within(nodeWriteAll(req, rest), 20_000, 'the rest to be written');
  const [headers] = (await within(response, 5000, 'the response')) as [http2.IncomingHttpHeaders];
  t.is(Number(headers[':status']), 200);
  const echoed = await within(body, 20_000, 'the echo to complete');
  const sent = Buffer.concat([first, rest]);
  t.is(echoed.length, sent.length);
  t.is(sha256(echoed), sha256(sent));
  await within(closed, 5000, "the stream's 'close'");
  t.is(req.rstCode, http2.constants.NGHTTP2_NO_ERROR);

  await within(clientClosed, 5000, 'the client connection to close');
  const session = server.sessions[0]!;
  if (!session.destroyed) await within(next(session, 'close'), 5000, "the server session's 'close'");
  t.true(session.destroyed);
  t.deepEqual(
    server.errors.map((e) => e.message),
    [],
  );
});

// ---- 6. spliced streams: the binding carries a stream's DATA to a real TCP workload and back

interface Spliced {
  /** Streams the binding took over (spliceBoth said yes). */
  spliced: number;
  /** How each carried connection ended (undefined: cleanly). */
  done: Array<Error | undefined>;
}

/**
 * Answers each CONNECT by connecting to the TCP server at `port` and splicing the stream to it, as the inbound
 * side does. With `delayMs`, the workload's first bytes are already in Node's socket when it is taken over.
 */
function spliceTo(port: number, out: Spliced, delayMs = 0): (stream: H2Stream) => void {
  return (stream) => {
    const tcp = netConnect({ port, host: HOST, allowHalfOpen: true });
    tcp.on('error', () => stream.destroy());
    tcp.once('connect', () =>
      setTimeout(() => {
        // As the inbound side does: a stream gone meanwhile takes the workload connection with it.
        if (stream.destroyed) {
          tcp.destroy();
          return;
        }
        stream.respond({ ':status': '200' });
        const plain = new PlainConnection(tcp);
        const done = (err: Error | undefined): void => {
          out.done.push(err);
        };
        if (spliceBoth(plain, stream, done)) out.spliced++;
        else {
          pipeBoth(plain, stream, done);
          plain.resume();
        }
      }, delayMs),
    );
  };
}

/** A TCP server; `onSocket` runs for each connection (half-open allowed, errors recorded). */
async function tcpServer(
  t: ExecutionContext,
  onSocket: (s: Socket) => void,
): Promise<{ port: number; errors: string[] }> {
  const errors: string[] = [];
  const server = netServer({ allowHalfOpen: true }, (s) => {
    s.on('error', (err: NodeJS.ErrnoException) => errors.push(err.code ?? err.message));
    onSocket(s);
  });
  t.teardown(() => server.close());
  return { port: await listen(server), errors };
}

const tcpEcho = (s: Socket): void => {
  s.pipe(s);
};

test('spliced: node:http2 clients run 20 concurrent 1 MiB echoes to a TCP workload, half of them with padded DATA; all intact', async (t) => {
  const workload = await tcpServer(t, tcpEcho);
  const out: Spliced = { spliced: 0, done: [] };
  const server = await ourServer(t, spliceTo(workload.port, out));
  const plainClient = await nodeClient(t, server.port);
  const padded = http2.connect(`https://${HOST}:${server.port}`, {
    createConnection: () => tlsConnect(server.port),
    paddingStrategy: http2.constants.PADDING_STRATEGY_MAX,
  });
  padded.on('error', () => {});
  t.teardown(() => padded.destroy());
  await within(next(padded, 'connect'), 5000, 'the padded client');
  const runs = Array.from({ length: 20 }, async (_, i) => {
    const data = randomBytes(MiB);
    return { i, data, ...(await nodeEcho(i % 2 === 0 ? plainClient : padded, data)) };
  });
  const results = await within(Promise.all(runs), 60_000, '20 echoes');
  for (const { i, data, status, body } of results) {
    t.is(status, 200, `stream ${i}`);
    t.is(sha256(body), sha256(data), `stream ${i}`);
  }
  await within(
    (async () => {
      while (out.done.length < 20) await new Promise((r) => setTimeout(r, 10));
    })(),
    5000,
    'every carried connection to end',
  );
  t.is(out.spliced, 20, 'every stream spliced');
  t.deepEqual(out.done, Array(20).fill(undefined), 'every one ended cleanly');
  t.is(server.errors.length, 0);
  t.is(
    server.sessions.reduce((n, s) => n + s.activeStreams, 0),
    0,
  );
});

test('spliced: a workload that stops reading holds the client to the windows; once it reads, all 48 MiB arrive intact', async (t) => {
  let release: () => void = () => {};
  const reading = new Promise<void>((r) => {
    release = r;
  });
  const workload = await tcpServer(t, (s) => {
    s.pause();
    const hash = createHash('sha256');
    void reading.then(() => {
      s.on('data', (c: Buffer) => hash.update(c));
      s.on('end', () => s.end(hash.digest('hex')));
      s.resume();
    });
  });
  const out: Spliced = { spliced: 0, done: [] };
  const server = await ourServer(t, spliceTo(workload.port, out));
  const client = await nodeClient(t, server.port);
  const data = randomBytes(48 * MiB);
  const req = client.request({ ':method': 'CONNECT', ':authority': '198.18.0.1:8080' });
  req.on('error', () => {});
  const reply = collect(req);
  let accepted = 0;
  const piece = 64 * 1024;
  const writing = (async () => {
    for (let off = 0; off < data.length; off += piece) {
      const chunk = data.subarray(off, off + piece);
      const more = req.write(chunk, () => {
        accepted += chunk.length;
      });
      if (!more) await next(req, 'drain');
    }
    req.end();
  })();
  await new Promise((r) => setTimeout(r, 1500));
  // What node:http2 managed to send is what the windows let through: the stream's (256 KiB), and what went
  // on to the workload's socket buffers; nothing like the whole 48 MiB waits in the daemon.
  t.log(`${(accepted / MiB).toFixed(1)} MiB of 48 accepted while the workload did not read`);
  t.true(accepted < 16 * MiB, `${accepted} bytes accepted while the workload did not read`);
  t.is(out.spliced, 1);
  release();
  await within(writing, 30_000, 'the client to finish writing');
  t.is((await within(reply, 30_000, 'the digest')).toString(), sha256(data));
  t.is(server.errors.length, 0);
});

test("spliced: half-close both ways: the workload's FIN reaches the client as END_STREAM while the client still sends, and the client's reaches the workload", async (t) => {
  const received: Buffer[] = [];
  let workloadSawEnd!: () => void;
  const sawEnd = new Promise<void>((r) => {
    workloadSawEnd = r;
  });
  const workload = await tcpServer(t, (s) => {
    // A banner and FIN at once: with the delay below it is in Node's socket before the takeover.
    s.end('hello, and goodbye');
    s.on('data', (c: Buffer) => received.push(c));
    s.on('end', () => workloadSawEnd());
  });
  const out: Spliced = { spliced: 0, done: [] };
  const server = await ourServer(t, spliceTo(workload.port, out, 100));
  const client = await nodeClient(t, server.port);
  const req = client.request({ ':method': 'CONNECT', ':authority': '198.18.0.1:8080' });
  req.on('error', () => {});
  const reply = collect(req);
  t.is((await within(reply, 5000, "the workload's banner and END_STREAM")).toString(), 'hello, and goodbye');
  const late = randomBytes(256 * 1024);
  const closed = next(req, 'close');
  await nodeWriteAll(req, late);
  await within(sawEnd, 5000, "the client's FIN at the workload");
  t.is(sha256(Buffer.concat(received)), sha256(late));
  await within(closed, 5000, 'the stream to close');
  t.is(req.rstCode, http2.constants.NGHTTP2_NO_ERROR);
  t.is(out.spliced, 1);
  t.deepEqual(workload.errors, []);
});

test('spliced: a workload that resets its connection resets the stream (CANCEL), and a client that resets its stream resets the workload', async (t) => {
  // One workload resets on its first bytes; the other echoes.
  let resetting = true;
  const workload = await tcpServer(t, (s) => {
    if (resetting) s.once('data', () => s.resetAndDestroy());
    else tcpEcho(s);
  });
  const out: Spliced = { spliced: 0, done: [] };
  const server = await ourServer(t, spliceTo(workload.port, out));
  const client = await nodeClient(t, server.port);

  const first = client.request({ ':method': 'CONNECT', ':authority': '198.18.0.1:8080' });
  first.on('error', () => {});
  const firstClosed = next(first, 'close');
  await within(next(first, 'response'), 5000, 'the first response');
  first.write(Buffer.from('reset me'));
  await within(firstClosed, 5000, 'the first stream to be reset');
  t.is(first.rstCode, http2.constants.NGHTTP2_CANCEL);

  // Our client: node:http2's close(code) sends END_STREAM before RST_STREAM, and the workload would see a
  // clean FIN first.
  resetting = false;
  const ours = await ourClient(t, server.port);
  const second = ours.request({ ':method': 'CONNECT', ':authority': '198.18.0.1:8080' });
  await within(next(second, 'response'), 5000, 'the second response');
  const echoed = next(second, 'data');
  second.resume();
  second.write(Buffer.from('hello'));
  await within(echoed, 5000, 'the echo');
  second.destroy();
  await within(
    (async () => {
      while (!workload.errors.includes('ECONNRESET')) await new Promise((r) => setTimeout(r, 10));
    })(),
    5000,
    'the workload to see a reset',
  );
  t.is(out.done.length, 2);
  t.regex(String(out.done[0]), /reset/, 'the first connection ended with the reason');
  t.is(out.spliced, 2);
  t.false(client.destroyed, 'the tunnel connection outlives the stream');
  t.false(ours.destroyed, 'the tunnel connection outlives the stream');
});

test('spliced: 40 connections of random frames around a spliced stream never take the server down', async (t) => {
  const workload = await tcpServer(t, tcpEcho);
  const out: Spliced = { spliced: 0, done: [] };
  const server = await ourServer(t, spliceTo(workload.port, out));
  // xorshift32 with a fixed seed: the same frames every run.
  let seed = 0x2545f491;
  const rand = (n: number): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  const connect = connectBlock('198.18.0.1:8080');
  for (let i = 0; i < 40; i++) {
    const socket = tlsConnect(server.port);
    socket.on('error', () => {});
    await within(next(socket, 'secureConnect'), 5000, 'the TLS handshake');
    socket.write(
      Buffer.concat([hello(), headersFrame(1, connect), frame(FrameType.DATA, 0, 1, randomBytes(100))]),
    );
    await sleep(20); // the workload connection is up and the stream spliced
    const frames: Buffer[] = [];
    for (let j = 0; j < 30; j++) {
      const sid = [0, 1, 1, 1, 3, rand(100)][rand(6)]!;
      const len = [0, 1, 4, 5, 8, 9, rand(2048)][rand(7)]!;
      frames.push(frame(rand(11), rand(256), sid, randomBytes(len)));
    }
    // Now and then a frame that claims more than anyone allows.
    if (rand(4) === 0) frames.push(Buffer.from([0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1]));
    socket.write(Buffer.concat(frames));
    await sleep(10);
    socket.destroy();
  }
  t.true(out.spliced >= 20, `${out.spliced} of 40 streams spliced before the noise`);
  // The noise is protocol errors for the most part: those sessions ended with GOAWAY and the reason.
  t.log(`${server.errors.length} of 40 sessions ended with a protocol error`);
  t.true(server.errors.length >= 20);
  t.true(server.errors.every((e) => e instanceof H2ProtocolError));
  const client = await nodeClient(t, server.port);
  const data = randomBytes(MiB);
  const { status, body } = await within(nodeEcho(client, data), 10_000, 'an echo after the noise');
  t.is(status, 200);
  t.is(sha256(body), sha256(data));
});

test('spliced: a client that ends its stream with trailers: the workload gets its FIN, and the answer comes back', async (t) => {
  const workload = await tcpServer(t, (s) => {
    const hash = createHash('sha256');
    s.on('data', (c: Buffer) => hash.update(c));
    s.on('end', () => s.end(hash.digest('hex')));
  });
  const out: Spliced = { spliced: 0, done: [] };
  const server = await ourServer(t, spliceTo(workload.port, out));
  const client = await nodeClient(t, server.port);
  const req = client.request(
    { ':method': 'CONNECT', ':authority': '198.18.0.1:8080' },
    { waitForTrailers: true },
  );
  req.on('error', () => {});
  req.on('wantTrailers', () => req.sendTrailers({ 'x-ambit-test': 'done' }));
  const reply = collect(req);
  await within(next(req, 'response'), 5000, 'the response');
  t.is(out.spliced, 1, 'spliced before the trailers');
  const data = randomBytes(256 * 1024);
  await nodeWriteAll(req, data);
  t.is((await within(reply, 5000, "the workload's answer to its FIN")).toString(), sha256(data));
  t.is(server.errors.length, 0);
});

// ---- 8. nghttp2 and the session's limits

test("the HTTP/2 under the session is nghttp2, Node's own copy", (t) => {
  const v = nghttp2Version();
  t.is(v.version, process.versions.nghttp2 ?? '');
  t.regex(v.from, /node/);
});

/** A raw TLS (ALPN h2) client to our server that has sent the preface, SETTINGS and our SETTINGS' ACK. */
async function rawPeer(
  t: ExecutionContext,
  port: number,
  ack = true,
): Promise<{ socket: tls.TLSSocket; received: () => Buffer }> {
  const socket = tlsConnect(port);
  socket.on('error', () => {});
  t.teardown(() => socket.destroy());
  await within(next(socket, 'secureConnect'), 5000, 'the TLS handshake');
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  socket.write(ack ? Buffer.concat([hello(), frame(FrameType.SETTINGS, Flag.ACK, 0)]) : hello());
  return { socket, received: () => Buffer.concat(chunks) };
}

const CONNECT_BLOCK = (): Buffer => connectBlock('198.18.0.1:8080');

/** The session's first 'error', as a user of the server would see it. */
function sessionError(server: OurServer, ms: number): Promise<H2ProtocolError> {
  return within(
    (async () => {
      for (let i = 0; i < ms / 10 && server.errors.length === 0; i++) await sleep(10);
      const err = server.errors[0];
      if (!(err instanceof H2ProtocolError)) throw new Error('no H2ProtocolError');
      return err;
    })(),
    ms + 1000,
    'the session error',
  );
}

test('CONTINUATION flood: HEADERS without END_HEADERS and endless CONTINUATION frames end the session with GOAWAY ENHANCE_YOUR_CALM (h2_header_flood)', async (t) => {
  const server = await ourServer(t, (stream) => stream.respond({ ':status': '200' }));
  const peer = await rawPeer(t, server.port);
  const closed = next(peer.socket, 'close');
  const flood = [headersFrame(1, CONNECT_BLOCK(), false)];
  for (let i = 0; i < 10_000; i++) flood.push(continuationFrame(1));
  peer.socket.write(Buffer.concat(flood));
  const err = await sessionError(server, 3000);
  t.is(err.reason, 'h2_header_flood');
  t.is(err.h2Code, ErrorCode.ENHANCE_YOUR_CALM);
  await within(closed, 6000, 'the server to close the connection');
  t.deepEqual(goawayCodes(peer.received()), [ErrorCode.ENHANCE_YOUR_CALM]);
});

test('a header block over maxHeaderListSize (an HPACK bomb: a 4 KiB field indexed once, referenced ten times) resets its stream; the fourth ends the session (h2_header_flood)', async (t) => {
  const streams: H2Headers[] = [];
  const server = await ourServer(t, (stream, headers) => {
    streams.push(headers);
    stream.respond({ ':status': '200' });
  });
  const peer = await rawPeer(t, server.port);
  // Literal with incremental indexing, new name: x-big, 4000 bytes, dynamic index 62 from then on.
  const big = literalIndexed('x-big', 'a'.repeat(4000));
  const refs = Buffer.concat(Array.from({ length: 10 }, () => indexed(62)));
  const bomb = (sid: number, first: boolean): Buffer =>
    headersFrame(sid, Buffer.concat([CONNECT_BLOCK(), first ? big : Buffer.alloc(0), refs]));
  peer.socket.write(bomb(1, true));
  // A small, legitimate CONNECT on the same connection still gets through.
  peer.socket.write(headersFrame(3, CONNECT_BLOCK()));
  for (let i = 0; i < 50 && streams.length < 1; i++) await sleep(20);
  t.is(streams.length, 1, 'only the small CONNECT reached the application');
  let rsts: number[] = [];
  for (let i = 0; i < 50 && rsts.length < 1; i++) {
    await sleep(20);
    rsts = readFrames(peer.received())
      .filter((f) => f.type === FrameType.RST_STREAM && f.streamId === 1)
      .map((f) => f.payload.readUInt32BE(0));
  }
  t.deepEqual(rsts, [ErrorCode.ENHANCE_YOUR_CALM]);
  t.is(server.errors.length, 0, 'one oversized block resets its stream, not the session');
  for (const sid of [5, 7, 9]) peer.socket.write(bomb(sid, false));
  const err = await sessionError(server, 3000);
  t.is(err.reason, 'h2_header_flood');
  t.is(err.h2Code, ErrorCode.ENHANCE_YOUR_CALM);
});

test('Rapid Reset: HEADERS + RST_STREAM pairs over streamResetRate (burst 10x) end the session with GOAWAY ENHANCE_YOUR_CALM (h2_reset_flood)', async (t) => {
  let opened = 0;
  const server = await ourServer(
    t,
    (stream) => {
      opened++;
      stream.respond({ ':status': '200' });
    },
    { ...OPTS, streamResetRate: 50 },
  );
  const peer = await rawPeer(t, server.port);
  const closed = next(peer.socket, 'close');
  const pairs: Buffer[] = [];
  for (let i = 0; i < 2000; i++) {
    const sid = 1 + 2 * i;
    pairs.push(headersFrame(sid, CONNECT_BLOCK()), rstStreamFrame(sid, ErrorCode.CANCEL));
  }
  peer.socket.write(Buffer.concat(pairs));
  const err = await sessionError(server, 3000);
  t.is(err.reason, 'h2_reset_flood');
  t.is(err.h2Code, ErrorCode.ENHANCE_YOUR_CALM);
  await within(closed, 6000, 'the server to close the connection');
  t.deepEqual(goawayCodes(peer.received()), [ErrorCode.ENHANCE_YOUR_CALM]);
  // The burst (10 x 50) went through, the flood did not.
  t.true(opened >= 500 && opened <= 520, `${opened} streams opened`);
});

for (const kind of ['PING', 'SETTINGS'] as const) {
  test.serial(
    `${kind} flood from a client that never reads: the answers stop at maxOutboundControl, GOAWAY ENHANCE_YOUR_CALM (h2_control_flood), memory stays bounded`,
    async (t) => {
      const server = await ourServer(t, () => {}, { ...OPTS, maxOutboundControl: 1000 });
      const peer = await rawPeer(t, server.port);
      await sleep(100);
      peer.socket.pause(); // never reads: the server's answers back up into its queue
      const before = process.memoryUsage().rss;
      const one = kind === 'PING' ? pingFrame(7) : settingsFrame([[0x4, 65_535]]);
      const batch = Buffer.concat(Array.from({ length: 1000 }, () => one));
      let sent = 0;
      for (let i = 0; i < 2000 && server.errors.length === 0; i++) {
        if (!peer.socket.write(batch)) await within(next(peer.socket, 'drain'), 5000, 'the flood to be read');
        sent += 1000;
      }
      const err = await sessionError(server, 3000);
      const grown = process.memoryUsage().rss - before;
      t.is(err.reason, 'h2_control_flood');
      t.is(err.h2Code, ErrorCode.ENHANCE_YOUR_CALM);
      t.log(`${sent} ${kind} frames sent; RSS grew by ${(grown / MiB).toFixed(1)} MiB`);
      t.true(grown < 64 * MiB, `RSS grew by ${grown} B`);
      // Once the client reads, it finds the GOAWAY after the answers that were queued, then the end.
      const closed = next(peer.socket, 'close');
      peer.socket.resume();
      await within(closed, 10_000, 'the server to close the connection');
      t.deepEqual(goawayCodes(peer.received()), [ErrorCode.ENHANCE_YOUR_CALM]);
    },
  );
}

for (const acked of [false, true]) {
  const what = acked
    ? 'after its ACK, a stream past it ends the session (GOAWAY PROTOCOL_ERROR, h2_protocol)'
    : 'before its ACK, the stream past it is refused (REFUSED_STREAM), the others open';
  test(`SETTINGS_MAX_CONCURRENT_STREAMS is nghttp2's to enforce: ${what}`, async (t) => {
    const open: H2Stream[] = [];
    const server = await ourServer(
      t,
      (stream) => {
        open.push(stream);
        stream.respond({ ':status': '200' });
      },
      { ...OPTS, maxConcurrentStreams: 10 },
    );
    const peer = await rawPeer(t, server.port, acked);
    await sleep(50);
    const frames: Buffer[] = [];
    for (let i = 0; i < 11; i++) frames.push(headersFrame(1 + 2 * i, CONNECT_BLOCK()));
    peer.socket.write(Buffer.concat(frames));
    if (acked) {
      const err = await sessionError(server, 3000);
      t.is(err.reason, 'h2_protocol');
      t.is(err.h2Code, ErrorCode.PROTOCOL_ERROR);
      return;
    }
    let rsts: Array<[number, number]> = [];
    for (let i = 0; i < 100 && rsts.length === 0; i++) {
      await sleep(20);
      rsts = readFrames(peer.received())
        .filter((f) => f.type === FrameType.RST_STREAM)
        .map((f) => [f.streamId, f.payload.readUInt32BE(0)]);
    }
    t.deepEqual(rsts, [[21, ErrorCode.REFUSED_STREAM]]);
    t.is(open.length, 10);
    t.is(server.sessions[0]!.activeStreams, 10);
    t.is(server.sessions[0]!.openStreams, 10);
    t.is(server.errors.length, 0);
  });
}
