// An attacker's tools against an HBONE listener, for test/adversarial.test.ts: raw HTTP/2 frames over a real
// TLS 1.3 session (node:tls), a few lines of HPACK, and a TLS 1.3 record sealer for what node:tls will not
// send (KeyUpdate storms, bad MACs, oversized records, alerts). Deliberately not the product's code: the
// daemon's own framing must not be what checks the daemon's own framing.

import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  createPrivateKey,
  generateKeyPairSync,
} from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { type Socket, connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { type TLSSocket, connect as tlsConnect } from 'node:tls';
import {
  KeyUsage,
  authorityKeyIdentifier,
  basicConstraints,
  buildCertificate,
  extKeyUsageServerClient,
  issuerFields,
  keyIdentifier,
  keyUsage,
  name,
  randomSerial,
  subjectKeyIdentifier,
  toPem,
  uriSubjectAltName,
} from '../../daemon/identity/x509.js';

// --- certificates ------------------------------------------------------------------------------------------

export interface Credentials {
  readonly certPem: string;
  readonly keyPem: string;
}

/**
 * A leaf signed by the mesh CA kept in `caDir`, with exactly the URI SANs given (none: a certificate with no
 * SPIFFE ID at all; another trust domain's ID: what the embedded CA itself would refuse to issue). Anyone
 * holding the CA key, or a CA that signs more than it should, can make these.
 */
export async function forgeLeaf(caDir: string, uris: readonly string[]): Promise<Credentials> {
  const rootPem = await readFile(join(caDir, 'root-cert.pem'), 'utf8');
  const rootKey = createPrivateKey(await readFile(join(caDir, 'root-key.pem'), 'utf8'));
  const der = Buffer.from(rootPem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
  const issuer = issuerFields(der);
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const now = Date.now();
  const cert = await buildCertificate({
    serial: randomSerial(),
    issuer: issuer.subject,
    subject: name('attacker'),
    notBefore: new Date(Math.floor((now - 60_000) / 1000) * 1000),
    notAfter: new Date(Math.floor((now + 3_600_000) / 1000) * 1000),
    publicKey,
    signingKey: rootKey,
    extensions: [
      basicConstraints(false),
      keyUsage([KeyUsage.digitalSignature, KeyUsage.keyEncipherment]),
      extKeyUsageServerClient(),
      subjectKeyIdentifier(keyIdentifier(publicKey)),
      ...(issuer.keyId ? [authorityKeyIdentifier(issuer.keyId)] : []),
      ...(uris.length > 0 ? [uriSubjectAltName([...uris], false)] : []),
    ],
  });
  return { certPem: toPem(cert), keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

// --- HTTP/2 frames (RFC 9113 §4.1) ------------------------------------------------------------------------

export const FrameType = {
  DATA: 0,
  HEADERS: 1,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
  CONTINUATION: 9,
} as const;

export const Flag = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;

export const H2Error = { NO_ERROR: 0, PROTOCOL_ERROR: 1, CANCEL: 8, ENHANCE_YOUR_CALM: 0xb } as const;

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export function frame(
  type: number,
  flags: number,
  streamId: number,
  payload: Buffer = Buffer.alloc(0),
): Buffer {
  const out = Buffer.allocUnsafe(9 + payload.length);
  out.writeUIntBE(payload.length, 0, 3);
  out[3] = type;
  out[4] = flags;
  out.writeUInt32BE(streamId & 0x7fffffff, 5);
  payload.copy(out, 9);
  return out;
}

export const settingsFrame = (entries: readonly [number, number][] = []): Buffer => {
  const p = Buffer.alloc(entries.length * 6);
  entries.forEach(([id, value], i) => {
    p.writeUInt16BE(id, i * 6);
    p.writeUInt32BE(value, i * 6 + 2);
  });
  return frame(FrameType.SETTINGS, 0, 0, p);
};

export const pingFrame = (n = 0): Buffer => {
  const p = Buffer.alloc(8);
  p.writeUInt32BE(n >>> 0, 4);
  return frame(FrameType.PING, 0, 0, p);
};

export const rstStreamFrame = (streamId: number, code: number = H2Error.CANCEL): Buffer => {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(code, 0);
  return frame(FrameType.RST_STREAM, 0, streamId, p);
};

export const headersFrame = (streamId: number, block: Buffer, endHeaders = true): Buffer =>
  frame(FrameType.HEADERS, endHeaders ? Flag.END_HEADERS : 0, streamId, block);

export const continuationFrame = (
  streamId: number,
  block: Buffer = Buffer.alloc(0),
  endHeaders = false,
): Buffer => frame(FrameType.CONTINUATION, endHeaders ? Flag.END_HEADERS : 0, streamId, block);

// --- HPACK (RFC 7541), encoding only, never Huffman -------------------------------------------------------

/** An integer with an N-bit prefix (§5.1); `first` carries the pattern bits above the prefix. */
export function hpackInt(value: number, prefixBits: number, first = 0): Buffer {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([first | value]);
  const out = [first | max];
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return Buffer.from(out);
}

const hpackString = (s: string | Buffer): Buffer => {
  const b = typeof s === 'string' ? Buffer.from(s, 'latin1') : s;
  return Buffer.concat([hpackInt(b.length, 7), b]);
};

/** Literal header field without indexing, new name (§6.2.2). */
export const literal = (name: string, value: string | Buffer): Buffer =>
  Buffer.concat([Buffer.from([0x00]), hpackString(name), hpackString(value)]);

/** Literal header field with incremental indexing, new name (§6.2.1): the decoder adds it to its table. */
export const literalIndexed = (name: string, value: string | Buffer): Buffer =>
  Buffer.concat([Buffer.from([0x40]), hpackString(name), hpackString(value)]);

/** Indexed header field (§6.1); the dynamic table starts at 62. */
export const indexed = (index: number): Buffer => hpackInt(index, 7, 0x80);

/** The header block of an HBONE CONNECT to `authority` (ip:port), plus any extra fields. */
export const connectBlock = (authority: string, extra: readonly [string, string][] = []): Buffer =>
  Buffer.concat([
    literal(':method', 'CONNECT'),
    literal(':authority', authority),
    ...extra.map(([n, v]) => literal(n, v)),
  ]);

// --- reading what the victim says --------------------------------------------------------------------------

export interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly streamId: number;
  readonly payload: Buffer;
}

/** Splits a byte stream into frames (the victim's server preface is a SETTINGS frame: no magic to skip). */
export class FrameReader {
  #buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const out: Frame[] = [];
    while (this.#buf.length >= 9) {
      const len = this.#buf.readUIntBE(0, 3);
      if (this.#buf.length < 9 + len) break;
      out.push({
        type: this.#buf[3]!,
        flags: this.#buf[4]!,
        streamId: this.#buf.readUInt32BE(5) & 0x7fffffff,
        payload: this.#buf.subarray(9, 9 + len),
      });
      this.#buf = this.#buf.subarray(9 + len);
    }
    return out;
  }
}

// HPACK's Huffman codes of the ten digits (RFC 7541 Appendix B): all a :status value needs.
const DIGIT_CODES: readonly [number, number][] = [
  [0b00000, 5],
  [0b00001, 5],
  [0b00010, 5],
  [0b011001, 6],
  [0b011010, 6],
  [0b011011, 6],
  [0b011100, 6],
  [0b011101, 6],
  [0b011110, 6],
  [0b011111, 6],
];
const STATIC_STATUS: Record<number, number> = { 8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500 };

function huffmanDigits(b: Buffer): string | undefined {
  let bits = '';
  for (const byte of b) bits += byte.toString(2).padStart(8, '0');
  let out = '';
  let i = 0;
  outer: while (i < bits.length) {
    for (let d = 0; d < 10; d++) {
      const [code, len] = DIGIT_CODES[d]!;
      if (bits.slice(i, i + len) === code.toString(2).padStart(len, '0')) {
        out += String(d);
        i += len;
        continue outer;
      }
    }
    // What is left must be EOS padding: all ones, shorter than a byte.
    return /^1{0,7}$/.test(bits.slice(i)) ? out : undefined;
  }
  return out;
}

/**
 * The :status of a response header block, when it comes first (as servers send it): an indexed static entry
 * or a literal naming :status by its static index. Enough to tell a 200 (always static index 8) from a
 * refusal; undefined when it cannot tell (a status the encoder had put in its dynamic table).
 */
export function statusOf(block: Buffer): number | undefined {
  const b0 = block[0];
  if (b0 === undefined) return undefined;
  if (b0 & 0x80) return STATIC_STATUS[b0 & 0x7f];
  let nameIndex: number;
  if ((b0 & 0xc0) === 0x40) nameIndex = b0 & 0x3f;
  else if ((b0 & 0xf0) === 0x00 || (b0 & 0xf0) === 0x10) nameIndex = b0 & 0x0f;
  else return undefined;
  if (nameIndex < 8 || nameIndex > 14) return undefined;
  const lenByte = block[1];
  if (lenByte === undefined) return undefined;
  const len = lenByte & 0x7f;
  const value = block.subarray(2, 2 + len);
  const text = lenByte & 0x80 ? huffmanDigits(value) : value.toString('latin1');
  return text && /^\d{3}$/.test(text) ? Number(text) : undefined;
}

// --- a raw HTTP/2 client session over node:tls --------------------------------------------------------------

export interface TargetOptions {
  readonly port: number;
  readonly host?: string;
  /** Source address: loopback is all of 127.0.0.0/8, so an attacker can be "another host". */
  readonly localAddress?: string;
  readonly creds: Credentials;
  /** SNI: which local workload's certificate the victim should present. */
  readonly servername: string;
  readonly timeoutMs?: number;
}

export interface RawH2Options extends TargetOptions {
  /** False: never read from the socket (its kernel buffers fill, the victim's answers pile up at its end). */
  readonly read?: boolean;
  /** Send the client preface and an empty SETTINGS at once (default true). */
  readonly preface?: boolean;
}

/** An HTTP/2 client that writes whatever frames it is given and records what comes back. */
export class RawH2 {
  readonly socket: TLSSocket;
  /** GOAWAY's error code once the victim sent one. */
  goaway: number | undefined;
  /** RST_STREAM frames and response HEADERS seen, by stream. */
  readonly resets = new Map<number, number>();
  readonly responses = new Map<number, number | undefined>();
  framesIn = 0;
  closed = false;
  readonly whenClosed: Promise<void>;
  readonly #reader = new FrameReader();

  private constructor(socket: TLSSocket) {
    this.socket = socket;
    this.whenClosed = new Promise((resolve) =>
      socket.once('close', () => {
        this.closed = true;
        resolve();
      }),
    );
    socket.on('error', () => {});
  }

  static async open(opts: RawH2Options): Promise<RawH2> {
    const socket = await tlsSession(opts);
    const conn = new RawH2(socket);
    if (opts.read === false) socket.pause();
    socket.on('data', (chunk: Buffer) => {
      for (const f of conn.#reader.push(chunk)) {
        conn.framesIn++;
        if (f.type === FrameType.GOAWAY && f.payload.length >= 8) conn.goaway = f.payload.readUInt32BE(4);
        else if (f.type === FrameType.RST_STREAM && f.payload.length >= 4)
          conn.resets.set(f.streamId, f.payload.readUInt32BE(0));
        else if (f.type === FrameType.HEADERS) conn.responses.set(f.streamId, statusOf(f.payload));
      }
    });
    if (opts.preface !== false) socket.write(Buffer.concat([PREFACE, settingsFrame()]));
    return conn;
  }

  /** Whether the victim ended the session: GOAWAY or the connection closed. */
  get ended(): boolean {
    return this.closed || this.goaway !== undefined;
  }

  /** Starts reading again (a never-reading attacker, after its flood, looking for the GOAWAY). */
  resume(): void {
    this.socket.resume();
  }

  /** Resolves when the session ended, or after `ms` (whichever comes first). */
  waitEnded(ms: number): Promise<boolean> {
    return waitFor(() => this.ended, ms);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** A TLS 1.3 session with ALPN h2, presenting `creds`; resolves once the handshake is done. */
export function tlsSession(opts: TargetOptions, socket?: Duplex): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({
      ...(socket ? { socket } : { host: opts.host ?? '127.0.0.1', port: opts.port }),
      ...(opts.localAddress && !socket ? { localAddress: opts.localAddress } : {}),
      key: opts.creds.keyPem,
      cert: opts.creds.certPem,
      servername: opts.servername,
      ALPNProtocols: ['h2'],
      minVersion: 'TLSv1.3',
      rejectUnauthorized: false,
    });
    const timer = setTimeout(() => s.destroy(new Error('TLS handshake timed out')), opts.timeoutMs ?? 5000);
    s.once('secureConnect', () => {
      clearTimeout(timer);
      s.removeListener('error', reject);
      resolve(s);
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export interface FloodResult {
  /** Batches written in full. */
  readonly batches: number;
  readonly stoppedBy: 'count' | 'deadline' | 'ended';
}

/**
 * Writes `batch()` up to `maxBatches` times or until `deadlineMs` has passed, stopping early once `stop()`
 * holds (the victim ended the session). Waits for 'drain' when the socket's buffer is full, so the flood
 * goes at the victim's reading pace rather than into this process's memory.
 */
export async function flood(
  socket: Socket | TLSSocket,
  batch: (i: number) => Buffer,
  opts: { maxBatches: number; deadlineMs: number; stop?: () => boolean },
): Promise<FloodResult> {
  const deadline = Date.now() + opts.deadlineMs;
  let batches = 0;
  while (batches < opts.maxBatches) {
    if (socket.destroyed || opts.stop?.()) return { batches, stoppedBy: 'ended' };
    if (Date.now() > deadline) return { batches, stoppedBy: 'deadline' };
    const ok = socket.write(batch(batches));
    batches++;
    if (!ok) {
      const left = deadline - Date.now();
      if (left <= 0) return { batches, stoppedBy: 'deadline' };
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          socket.removeListener('drain', done);
          socket.removeListener('close', done);
          resolve();
        };
        const timer = setTimeout(done, left);
        socket.once('drain', done);
        socket.once('close', done);
      });
    } else if (batches % 16 === 0) {
      // Let the event loop run: reads (a GOAWAY) and the test's samplers.
      await new Promise((r) => setImmediate(r));
    }
  }
  return { batches, stoppedBy: 'count' };
}

// --- pre-authentication ---------------------------------------------------------------------------------

/**
 * The first half of a ClientHello: a handshake record header announcing 512 bytes and a ClientHello header,
 * then nothing. The server can only wait for the rest.
 */
export function halfClientHello(): Buffer {
  const body = Buffer.alloc(96);
  body[0] = 0x01; // ClientHello
  body.writeUIntBE(508, 1, 3);
  body.writeUInt16BE(0x0303, 4);
  return Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]), body]);
}

/** A TCP connection from `localAddress` that sends half a ClientHello and stalls. */
export function stalledHandshake(
  port: number,
  localAddress: string,
): Promise<{ socket: Socket; closed: () => boolean }> {
  return new Promise((resolve, reject) => {
    let closed = false;
    const s = tcpConnect({ host: '127.0.0.1', port, localAddress });
    s.on('error', () => {});
    s.on('close', () => {
      closed = true;
    });
    s.once('connect', () => {
      s.write(halfClientHello());
      resolve({ socket: s, closed: () => closed });
    });
    s.once('close', () => reject(new Error('closed before connecting')));
  });
}

// --- TLS 1.3 records (RFC 8446 §5, §7) ------------------------------------------------------------------------

export const ContentType = { ALERT: 21, HANDSHAKE: 22, APPLICATION_DATA: 23 } as const;

/** Alert descriptions (RFC 8446 §6) the victim owes us for what we send. */
export const Alert = {
  CLOSE_NOTIFY: 0,
  UNEXPECTED_MESSAGE: 10,
  BAD_RECORD_MAC: 20,
  RECORD_OVERFLOW: 22,
} as const;

interface Suite {
  readonly hash: 'sha256' | 'sha384';
  readonly hashLen: number;
  readonly cipher: 'aes-128-gcm' | 'aes-256-gcm';
  readonly keyLen: number;
}

const SUITES: Record<string, Suite> = {
  TLS_AES_128_GCM_SHA256: { hash: 'sha256', hashLen: 32, cipher: 'aes-128-gcm', keyLen: 16 },
  TLS_AES_256_GCM_SHA384: { hash: 'sha384', hashLen: 48, cipher: 'aes-256-gcm', keyLen: 32 },
};

function hkdfExpand(hash: string, prk: Buffer, info: Buffer, length: number): Buffer {
  const blocks: Buffer[] = [];
  let prev = Buffer.alloc(0);
  for (let i = 1; Buffer.concat(blocks).length < length; i++) {
    prev = createHmac(hash, prk)
      .update(Buffer.concat([prev, info, Buffer.from([i])]))
      .digest();
    blocks.push(prev);
  }
  return Buffer.concat(blocks).subarray(0, length);
}

/** HKDF-Expand-Label (RFC 8446 §7.1) with an empty context. */
export function hkdfExpandLabel(hash: string, secret: Buffer, label: string, length: number): Buffer {
  const full = Buffer.from(`tls13 ${label}`, 'latin1');
  const info = Buffer.concat([
    Buffer.from([length >> 8, length & 0xff, full.length]),
    full,
    Buffer.from([0]),
  ]);
  return hkdfExpand(hash, secret, info, length);
}

/** One direction's traffic keys: seals (or opens) records in order, and follows KeyUpdates. */
export class RecordKeys {
  readonly #suite: Suite;
  #secret: Buffer;
  #key: Buffer;
  #iv: Buffer;
  seq = 0n;

  constructor(suiteName: string, secret: Buffer) {
    const suite = SUITES[suiteName];
    if (!suite) throw new Error(`no record sealer for ${suiteName}`);
    this.#suite = suite;
    this.#secret = secret;
    this.#key = hkdfExpandLabel(suite.hash, secret, 'key', suite.keyLen);
    this.#iv = hkdfExpandLabel(suite.hash, secret, 'iv', 12);
  }

  /** application_traffic_secret_N+1 (§7.2), as after sending (or receiving) a KeyUpdate. */
  update(): void {
    this.#secret = hkdfExpandLabel(this.#suite.hash, this.#secret, 'traffic upd', this.#suite.hashLen);
    this.#key = hkdfExpandLabel(this.#suite.hash, this.#secret, 'key', this.#suite.keyLen);
    this.#iv = hkdfExpandLabel(this.#suite.hash, this.#secret, 'iv', 12);
    this.seq = 0n;
  }

  #nonce(seq: bigint): Buffer {
    const n = Buffer.from(this.#iv);
    const s = Buffer.alloc(8);
    s.writeBigUInt64BE(seq);
    for (let i = 0; i < 8; i++) n[4 + i]! ^= s[i];
    return n;
  }

  /** A TLSCiphertext carrying `content` of `type` (inner plaintext = content + type byte, §5.2). */
  seal(type: number, content: Buffer): Buffer {
    const inner = Buffer.concat([content, Buffer.from([type])]);
    const header = Buffer.from([ContentType.APPLICATION_DATA, 0x03, 0x03, 0, 0]);
    header.writeUInt16BE(inner.length + 16, 3);
    const c = createCipheriv(this.#suite.cipher, this.#key, this.#nonce(this.seq++));
    c.setAAD(header);
    const body = Buffer.concat([c.update(inner), c.final(), c.getAuthTag()]);
    return Buffer.concat([header, body]);
  }

  /**
   * Opens one record (header included), trying the next `window` sequence numbers: the records node:tls
   * read before we took over moved the counter by an amount we do not see. Undefined if none authenticates.
   */
  open(record: Buffer, window = 32): { type: number; content: Buffer } | undefined {
    const header = record.subarray(0, 5);
    const body = record.subarray(5);
    if (body.length < 17) return undefined;
    for (let k = 0n; k < BigInt(window); k++) {
      try {
        const d = createDecipheriv(this.#suite.cipher, this.#key, this.#nonce(this.seq + k));
        d.setAAD(header);
        d.setAuthTag(body.subarray(body.length - 16));
        const inner = Buffer.concat([d.update(body.subarray(0, body.length - 16)), d.final()]);
        this.seq += k + 1n;
        let end = inner.length - 1;
        while (end > 0 && inner[end] === 0) end--;
        return { type: inner[end]!, content: inner.subarray(0, end) };
      } catch {
        // not this sequence number
      }
    }
    return undefined;
  }
}

/** A KeyUpdate handshake message (§4.6.3); `requested` asks the peer to update its keys too. */
export const keyUpdate = (requested: boolean): Buffer => Buffer.from([24, 0, 0, 1, requested ? 1 : 0]);

/**
 * A real TLS 1.3 handshake by node:tls, after which this process writes the records itself: the traffic
 * secrets come from node:tls's 'keylog' event. What the victim sends afterwards is kept as raw records,
 * to be opened with `server` (its traffic keys) to see, say, the alert it sent before closing.
 */
export class RawTls {
  readonly tcp: Socket;
  readonly client: RecordKeys;
  readonly server: RecordKeys;
  /** Raw records the victim sent after we took over. */
  readonly recordsIn: Buffer[] = [];
  closed = false;
  readonly whenClosed: Promise<void>;
  #pending: Buffer = Buffer.alloc(0);
  readonly #opened: { type: number; content: Buffer }[] = [];
  #openedUpTo = 0;

  private constructor(tcp: Socket, client: RecordKeys, server: RecordKeys) {
    this.tcp = tcp;
    this.client = client;
    this.server = server;
    this.whenClosed = new Promise((resolve) =>
      tcp.once('close', () => {
        this.closed = true;
        resolve();
      }),
    );
  }

  static async open(opts: TargetOptions): Promise<RawTls> {
    const tcp = tcpConnect({ host: opts.host ?? '127.0.0.1', port: opts.port });
    tcp.on('error', () => {});
    await new Promise<void>((resolve, reject) => {
      tcp.once('connect', resolve);
      tcp.once('error', reject);
    });
    // node:tls talks through this pipe until the handshake is done; then the pipe is cut and we write.
    let ours = false;
    let onRaw: (b: Buffer) => void = () => {};
    const pipe = new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        if (ours) cb();
        else tcp.write(chunk, cb);
      },
    });
    tcp.on('data', (b: Buffer) => (ours ? onRaw(b) : pipe.push(b)));
    tcp.once('end', () => pipe.push(null));
    const secrets = new Map<string, Buffer>();
    const tls = tlsConnectWithKeylog(opts, pipe, secrets);
    const session = await tls.session;
    // The client's Finished is written before 'secureConnect'; a moment more lets it leave the pipe.
    await sleep(30);
    ours = true;
    const suite = session.getCipher().standardName;
    const cs = secrets.get('CLIENT_TRAFFIC_SECRET_0');
    const ss = secrets.get('SERVER_TRAFFIC_SECRET_0');
    if (!cs || !ss) throw new Error('node:tls did not log the traffic secrets');
    const raw = new RawTls(tcp, new RecordKeys(suite, cs), new RecordKeys(suite, ss));
    onRaw = (b) => raw.#received(b);
    // From here node:tls must not see the socket go away under it with an error we did not cause.
    session.on('error', () => {});
    return raw;
  }

  #received(b: Buffer): void {
    this.#pending = Buffer.concat([this.#pending, b]);
    while (this.#pending.length >= 5) {
      const len = this.#pending.readUInt16BE(3);
      if (this.#pending.length < 5 + len) break;
      if (this.recordsIn.length < 10_000) this.recordsIn.push(this.#pending.subarray(0, 5 + len));
      this.#pending = this.#pending.subarray(5 + len);
    }
  }

  /** Seals and writes one record under the client's current keys. */
  send(type: number, content: Buffer): boolean {
    return this.tcp.write(this.client.seal(type, content));
  }

  /**
   * The victim's records opened so far under its traffic keys (its KeyUpdates followed), in order; each
   * call opens what arrived since the last. After a refusal the last one is an alert (type 21).
   */
  opened(): { type: number; content: Buffer }[] {
    while (this.#openedUpTo < this.recordsIn.length) {
      const r = this.server.open(this.recordsIn[this.#openedUpTo]!);
      if (!r) break;
      this.#openedUpTo++;
      this.#opened.push(r);
      if (r.type === ContentType.HANDSHAKE && r.content[0] === 24) this.server.update();
    }
    return this.#opened;
  }

  /** The HTTP/2 frames in the application data the victim sent (records opened so far). */
  frames(): Frame[] {
    const reader = new FrameReader();
    const out: Frame[] = [];
    for (const r of this.opened())
      if (r.type === ContentType.APPLICATION_DATA) out.push(...reader.push(r.content));
    return out;
  }

  waitClosed(ms: number): Promise<boolean> {
    return waitFor(() => this.closed, ms);
  }

  destroy(): void {
    this.tcp.destroy();
  }
}

function tlsConnectWithKeylog(
  opts: TargetOptions,
  pipe: Duplex,
  secrets: Map<string, Buffer>,
): { session: Promise<TLSSocket> } {
  let keylog: ((line: Buffer) => void) | undefined = (line) => {
    const [label, , secret] = line.toString('latin1').trim().split(' ');
    if (label && secret) secrets.set(label, Buffer.from(secret, 'hex'));
  };
  const session = new Promise<TLSSocket>((resolve, reject) => {
    const s = tlsConnect({
      socket: pipe,
      key: opts.creds.keyPem,
      cert: opts.creds.certPem,
      servername: opts.servername,
      ALPNProtocols: ['h2'],
      minVersion: 'TLSv1.3',
      rejectUnauthorized: false,
    });
    s.on('keylog', (line: Buffer) => keylog?.(line));
    const timer = setTimeout(() => s.destroy(new Error('TLS handshake timed out')), opts.timeoutMs ?? 5000);
    s.once('secureConnect', () => {
      clearTimeout(timer);
      keylog = undefined;
      resolve(s);
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
  return { session };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `check` every `stepMs` until it holds: bounded in time (`ms`) and so in count (at most
 * ms / stepMs + 1 tries, also enforced). Resolves with the last answer.
 */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  ms: number,
  stepMs = 20,
): Promise<boolean> {
  const deadline = Date.now() + ms;
  const tries = Math.ceil(ms / stepMs) + 1;
  let last = false;
  for (let i = 0; i < tries; i++) {
    last = await check();
    if (last || Date.now() >= deadline) break;
    await sleep(stepMs);
  }
  return last;
}
