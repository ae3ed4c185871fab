// A test-only TLS 1.3 peer whose records after the handshake are entirely the test's: node:tls does a real
// handshake over a stream we relay, hands out the traffic secrets through its 'keylog' event, and then steps
// aside; records are sealed and opened here with node:crypto's AES-GCM (RFC 8446 §5.2-5.3, §7.1-7.3), and
// both directions follow KeyUpdates. This is how a test sends what no well-behaved stack would: oversized
// records, packed KeyUpdates, forged MACs, KeyUpdate storms. Deliberately not the product's record layer.
import { createCipheriv, createDecipheriv, createHmac } from 'node:crypto';
import { type Socket, connect as netConnect } from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { next, sleep, within } from './net.js';

/** TLSInnerPlaintext content types (RFC 8446 §5.1). */
export const ContentType = { ALERT: 21, HANDSHAKE: 22, APPLICATION_DATA: 23 } as const;

/** Alert descriptions (RFC 8446 §6) a server owes a peer for what it sends. */
export const Alert = {
  CLOSE_NOTIFY: 0,
  UNEXPECTED_MESSAGE: 10,
  BAD_RECORD_MAC: 20,
  RECORD_OVERFLOW: 22,
  HANDSHAKE_FAILURE: 40,
  ILLEGAL_PARAMETER: 47,
  DECODE_ERROR: 50,
} as const;

const KEY_UPDATE = 24;

/** A KeyUpdate message (RFC 8446 §4.6.3): 1 asks the peer to update its keys too; anything else is illegal. */
export const keyUpdate = (request: number): Buffer => Buffer.from([KEY_UPDATE, 0, 0, 1, request]);

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

/**
 * HKDF-Expand-Label(secret, label, "", length) (RFC 8446 §7.1). Every length TLS 1.3 asks for here (key,
 * IV, next secret) fits in one HMAC block, so HKDF-Expand is its first block (RFC 5869 §2.3).
 */
function hkdfExpandLabel(suite: Suite, secret: Buffer, label: string, length: number): Buffer {
  if (length > suite.hashLen) throw new Error(`HKDF-Expand-Label of ${length} bytes: longer than one block`);
  const full = Buffer.from(`tls13 ${label}`, 'latin1');
  const info = Buffer.concat([
    Buffer.from([length >> 8, length & 0xff, full.length]),
    full,
    Buffer.from([0]),
  ]);
  return createHmac(suite.hash, secret)
    .update(Buffer.concat([info, Buffer.from([1])]))
    .digest()
    .subarray(0, length);
}

export interface OpenedRecord {
  readonly type: number;
  readonly content: Buffer;
}

/** One direction's traffic keys: seals (or opens) records in order, and moves on at a KeyUpdate. */
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
    this.#key = hkdfExpandLabel(suite, secret, 'key', suite.keyLen);
    this.#iv = hkdfExpandLabel(suite, secret, 'iv', 12);
  }

  /** application_traffic_secret_N+1 (§7.2), as after sending (or receiving) a KeyUpdate. */
  update(): void {
    this.#secret = hkdfExpandLabel(this.#suite, this.#secret, 'traffic upd', this.#suite.hashLen);
    this.#key = hkdfExpandLabel(this.#suite, this.#secret, 'key', this.#suite.keyLen);
    this.#iv = hkdfExpandLabel(this.#suite, this.#secret, 'iv', 12);
    this.seq = 0n;
  }

  #nonce(): Buffer {
    const n = Buffer.from(this.#iv);
    const s = Buffer.alloc(8);
    s.writeBigUInt64BE(this.seq);
    for (let i = 0; i < 8; i++) n[4 + i]! ^= s[i];
    return n;
  }

  /** A TLSCiphertext of inner `type` carrying `content` and `padding` zeros (§5.2). */
  seal(type: number, content: Buffer, padding = 0): Buffer {
    const inner = Buffer.concat([content, Buffer.from([type]), Buffer.alloc(padding)]);
    const header = Buffer.from([ContentType.APPLICATION_DATA, 0x03, 0x03, 0, 0]);
    header.writeUInt16BE(inner.length + 16, 3);
    const c = createCipheriv(this.#suite.cipher, this.#key, this.#nonce());
    c.setAAD(header);
    const body = Buffer.concat([c.update(inner), c.final(), c.getAuthTag()]);
    this.seq++;
    return Buffer.concat([header, body]);
  }

  /** Opens the next record (header included); throws if it does not authenticate under these keys. */
  open(record: Buffer): OpenedRecord {
    const header = record.subarray(0, 5);
    const body = record.subarray(5);
    if (body.length < 17) throw new Error(`a record of ${body.length} bytes cannot hold a tag and a type`);
    const d = createDecipheriv(this.#suite.cipher, this.#key, this.#nonce());
    d.setAAD(header);
    d.setAuthTag(body.subarray(body.length - 16));
    const inner = Buffer.concat([d.update(body.subarray(0, body.length - 16)), d.final()]);
    this.seq++;
    let end = inner.length;
    while (end > 0 && inner[end - 1] === 0) end--;
    if (end === 0) throw new Error('a record of padding alone, with no content type');
    return { type: inner[end - 1]!, content: Buffer.from(inner.subarray(0, end - 1)) };
  }
}

export interface RawTls13Options {
  readonly host?: string;
  readonly port: number;
  /** node:tls's side of the handshake: certificate, roots, SNI, ALPN (TLS 1.3 is forced). */
  readonly tls: tls.ConnectionOptions;
  /**
   * Resolves once the server's end of the handshake is done too: until then node:tls may still write (its
   * Finished). Without it, the handshake is taken as done 30 ms after node:tls's own end.
   */
  readonly serverReady?: () => Promise<unknown>;
  readonly timeoutMs?: number;
}

// What the peer keeps of the server's records: far more than any test reads, and a bound all the same.
const MAX_RECORDS = 10_000;

export class RawTls13Client {
  /** The records the server sent after the handshake, opened, in order. */
  readonly received: OpenedRecord[] = [];
  /** Set when a server record does not open (nothing is read after it): what we would have said about it. */
  openError: string | undefined;
  closed = false;
  readonly whenClosed: Promise<void>;
  #inbuf = Buffer.alloc(0);

  private constructor(
    readonly socket: Socket,
    /** Our keys (the client's traffic secret) and the server's. */
    readonly tx: RecordKeys,
    readonly rx: RecordKeys,
  ) {
    this.whenClosed = new Promise((resolve) =>
      socket.once('close', () => {
        this.closed = true;
        resolve();
      }),
    );
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
  }

  /**
   * Connects, does the handshake with node:tls, and returns once it is done at both ends: from then on
   * node:tls neither reads nor writes, and the wire is the test's.
   */
  static async connect(opts: RawTls13Options): Promise<RawTls13Client> {
    const ms = opts.timeoutMs ?? 5000;
    const raw = netConnect(opts.port, opts.host ?? '127.0.0.1');
    raw.on('error', () => {});
    await within(Promise.race([next(raw, 'connect'), next(raw, 'close')]), ms, 'the TCP connect');
    if (raw.destroyed) throw new Error(`no TCP connection to port ${opts.port}`);
    let relaying = true;
    // Every byte node:tls was given: the server's first application records may be among them, already
    // read by node:tls, and they are ours to open (and count) all the same.
    const relayed: Buffer[] = [];
    // node:tls's transport: what it writes goes to the socket, what the socket reads goes to it, until the
    // handshake is done.
    const pipe = new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        if (relaying) raw.write(chunk, cb);
        else cb();
      },
    });
    const onRaw = (chunk: Buffer): void => {
      relayed.push(chunk);
      pipe.push(chunk);
    };
    raw.on('data', onRaw);
    const secrets = new Map<string, Buffer>();
    const client = tls.connect({ ...opts.tls, socket: pipe, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' });
    let failed: Error | undefined;
    client.on('error', (err: Error) => {
      if (!relaying) return; // node:tls is out of the conversation: nothing it says matters now
      failed ??= err;
      raw.destroy();
    });
    client.on('keylog', (line: Buffer) => {
      const [label, , hex] = line.toString('latin1').trim().split(' ');
      if (label && hex) secrets.set(label, Buffer.from(hex, 'hex'));
    });
    const done = Promise.race([next(client, 'secureConnect'), next(raw, 'close')]);
    await within(done, ms, 'the handshake').catch((err: Error) => {
      raw.destroy();
      throw err;
    });
    if (failed || raw.destroyed) throw new Error(`the handshake failed: ${failed?.message ?? 'closed'}`);
    await within(opts.serverReady?.() ?? sleep(30), ms, "the server's end of the handshake");
    relaying = false;
    raw.removeListener('data', onRaw);
    const suite = client.getCipher().standardName;
    const cs = secrets.get('CLIENT_TRAFFIC_SECRET_0');
    const ss = secrets.get('SERVER_TRAFFIC_SECRET_0');
    if (!cs || !ss) throw new Error('node:tls did not log the traffic secrets');
    // node:tls is left as it is (not destroyed: that would write close_notify through the pipe, ignored).
    const peer = new RawTls13Client(raw, new RecordKeys(suite, cs), new RecordKeys(suite, ss));
    peer.#takeOver(Buffer.concat(relayed));
    return peer;
  }

  /** One record of inner `type` carrying `content` (and `padding` zeros), sealed under our current keys. */
  seal(type: number, content: Buffer, padding = 0): Buffer {
    return this.tx.seal(type, content, padding);
  }

  /** A record carrying a KeyUpdate (or several, packed), after which our own keys move on. */
  sealKeyUpdates(requests: number[]): Buffer {
    const rec = this.seal(ContentType.HANDSHAKE, Buffer.concat(requests.map(keyUpdate)));
    this.tx.update();
    return rec;
  }

  /** Writes records as they are; false once the socket's buffer is full (as `socket.write`). */
  write(...records: Buffer[]): boolean {
    return this.socket.write(Buffer.concat(records));
  }

  /** Seals and writes one record. */
  send(type: number, content: Buffer): boolean {
    return this.write(this.seal(type, content));
  }

  /** Resolves true once the server closed the connection, false if it had not after `ms`. */
  async waitClosed(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    });
    await Promise.race([this.whenClosed, timeout]).finally(() => clearTimeout(timer));
    return this.closed;
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** The alerts the server sent: [level, description] of each. */
  get alerts(): number[][] {
    return this.received.filter((r) => r.type === ContentType.ALERT).map((r) => [...r.content]);
  }

  /** Application data received, concatenated. */
  get data(): Buffer {
    return Buffer.concat(
      this.received.filter((r) => r.type === ContentType.APPLICATION_DATA).map((r) => r.content),
    );
  }

  /** KeyUpdates the server sent. */
  get keyUpdates(): number {
    return this.received.filter((r) => r.type === ContentType.HANDSHAKE && r.content[0] === KEY_UPDATE)
      .length;
  }

  /**
   * The bytes node:tls was given: its handshake records (plaintext, or under handshake keys: they do not
   * open under the traffic keys) and then any the server sent under its traffic keys, which node:tls read
   * and counted and so must we. A record node:tls had only part of is read whole from here on.
   */
  #takeOver(relayed: Buffer): void {
    let off = 0;
    let traffic = false;
    while (this.openError === undefined && off + 5 <= relayed.length) {
      const len = relayed.readUInt16BE(off + 3);
      if (off + 5 + len > relayed.length) break;
      const record = relayed.subarray(off, off + 5 + len);
      off += 5 + len;
      if (record[0] !== ContentType.APPLICATION_DATA) continue; // ServerHello, change_cipher_spec
      if (traffic) this.#open(record);
      else {
        try {
          this.#accept(this.rx.open(record));
          traffic = true;
        } catch {
          // a handshake record, under the handshake keys
        }
      }
    }
    this.#inbuf = Buffer.from(relayed.subarray(off));
  }

  #onData(chunk: Buffer): void {
    this.#inbuf = Buffer.concat([this.#inbuf, chunk]);
    while (this.openError === undefined && this.#inbuf.length >= 5) {
      const len = this.#inbuf.readUInt16BE(3);
      if (this.#inbuf.length < 5 + len) return;
      const record = this.#inbuf.subarray(0, 5 + len);
      this.#inbuf = this.#inbuf.subarray(5 + len);
      this.#open(record);
    }
  }

  #open(record: Buffer): void {
    if (this.received.length >= MAX_RECORDS) {
      this.openError = `the server sent more than ${MAX_RECORDS} records; the rest is not read`;
      return;
    }
    try {
      this.#accept(this.rx.open(record));
    } catch (err) {
      this.openError = `a record from the server does not open: ${(err as Error).message}`;
    }
  }

  #accept(rec: OpenedRecord): void {
    this.received.push(rec);
    // The server's KeyUpdate ends its record: the next one is under its new keys.
    if (rec.type === ContentType.HANDSHAKE && rec.content[0] === KEY_UPDATE) this.rx.update();
  }
}
