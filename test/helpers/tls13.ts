// A test-only TLS 1.3 peer whose records after the handshake are entirely the test's: node:tls does a real
// handshake over a stream we relay, hands out the traffic secrets through its 'keylog' event, and then steps
// aside; records are sealed and opened here with node:crypto's AES-GCM (RFC 8446 §5.2-5.3, §7.1-7.3). This is
// how a test sends what no well-behaved stack would: oversized records, packed KeyUpdates, forged MACs.
import { createCipheriv, createDecipheriv, createHmac } from 'node:crypto';
import { type Socket, connect as netConnect } from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { next, within } from './net.js';

export const REC_ALERT = 21;
export const REC_HANDSHAKE = 22;
export const REC_DATA = 23;

/** HKDF-Expand-Label(secret, label, "", len) for len <= the hash length: one HMAC block (RFC 8446 §7.1). */
function expandLabel(hash: string, secret: Buffer, label: string, len: number): Buffer {
  const full = Buffer.from(`tls13 ${label}`, 'latin1');
  const info = Buffer.concat([
    Buffer.from([len >> 8, len & 0xff, full.length]),
    full,
    Buffer.from([0]),
    Buffer.from([1]),
  ]);
  return createHmac(hash, secret).update(info).digest().subarray(0, len);
}

/** One direction's keys: the traffic secret, the key and IV derived from it, the record sequence number. */
class Direction {
  key: Buffer;
  iv: Buffer;
  seq = 0n;
  constructor(
    readonly hash: string,
    readonly keyLen: number,
    public secret: Buffer,
  ) {
    this.key = expandLabel(hash, secret, 'key', keyLen);
    this.iv = expandLabel(hash, secret, 'iv', 12);
  }

  /** The next generation of keys (RFC 8446 §7.2). */
  update(): void {
    this.secret = expandLabel(this.hash, this.secret, 'traffic upd', this.secret.length);
    this.key = expandLabel(this.hash, this.secret, 'key', this.keyLen);
    this.iv = expandLabel(this.hash, this.secret, 'iv', 12);
    this.seq = 0n;
  }

  nonce(): Buffer {
    const n = Buffer.from(this.iv);
    const s = Buffer.alloc(8);
    s.writeBigUInt64BE(this.seq);
    for (let i = 0; i < 8; i++) n[4 + i]! ^= s[i];
    return n;
  }

  get cipher(): 'aes-128-gcm' | 'aes-256-gcm' {
    return this.keyLen === 16 ? 'aes-128-gcm' : 'aes-256-gcm';
  }
}

export interface OpenedRecord {
  type: number;
  content: Buffer;
}

/** A KeyUpdate message (RFC 8446 §4.6.3): 1 asks the peer to update its keys too. */
export const keyUpdate = (request: 0 | 1 | number): Buffer => Buffer.from([24, 0, 0, 1, request]);

export class RawTls13Client {
  /** The records the server sent after the handshake, opened, in order. */
  readonly received: OpenedRecord[] = [];
  /** Set when a server record does not open: what we would have said about it. */
  openError: string | undefined;
  readonly closed: Promise<void>;
  #inbuf = Buffer.alloc(0);

  private constructor(
    readonly socket: Socket,
    readonly tx: Direction,
    readonly rx: Direction,
  ) {
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
  }

  /**
   * Connects to `port`, does the handshake with node:tls (`opts`: its certificate, roots, ALPN), and returns
   * once node:tls has finished it and `serverReady` (the server's own end of the handshake) resolved: from
   * then on node:tls neither reads nor writes, and the wire is the test's.
   */
  static async connect(
    host: string,
    port: number,
    opts: tls.ConnectionOptions,
    serverReady: () => Promise<unknown>,
  ): Promise<RawTls13Client> {
    const raw = netConnect(port, host);
    raw.on('error', () => {});
    await within(next(raw, 'connect'), 5000, 'the TCP connect');
    let relaying = true;
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
      pipe.push(chunk);
    };
    raw.on('data', onRaw);
    const secrets = new Map<string, Buffer>();
    const client = tls.connect({ ...opts, socket: pipe, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' });
    let failed: Error | undefined;
    client.on('error', (err: Error) => {
      failed ??= err;
      raw.destroy();
    });
    client.on('keylog', (line: Buffer) => {
      const [label, , hex] = line.toString('latin1').trim().split(' ');
      if (label && hex) secrets.set(label, Buffer.from(hex, 'hex'));
    });
    await within(Promise.race([next(client, 'secureConnect'), next(raw, 'close')]), 5000, 'the handshake');
    if (failed || raw.destroyed) throw new Error(`the handshake failed: ${failed?.message ?? 'closed'}`);
    await within(serverReady(), 5000, "the server's end of the handshake");
    relaying = false;
    raw.removeListener('data', onRaw);
    const suite = client.getCipher().standardName;
    const [hash, keyLen] = suite === 'TLS_AES_256_GCM_SHA384' ? ['sha384', 32] : ['sha256', 16];
    const cs = secrets.get('CLIENT_TRAFFIC_SECRET_0');
    const ss = secrets.get('SERVER_TRAFFIC_SECRET_0');
    if (!cs || !ss) throw new Error('node:tls did not log the traffic secrets');
    // node:tls is left as it is (not destroyed: that would write close_notify through the pipe, ignored).
    return new RawTls13Client(raw, new Direction(hash, keyLen, cs), new Direction(hash, keyLen, ss));
  }

  /** One record of inner `type` carrying `content` (and `padding` zeros), sealed under the current keys. */
  seal(type: number, content: Buffer, padding = 0): Buffer {
    const inner = Buffer.concat([content, Buffer.from([type]), Buffer.alloc(padding)]);
    const header = Buffer.from([REC_DATA, 3, 3, 0, 0]);
    header.writeUInt16BE(inner.length + 16, 3);
    const c = createCipheriv(this.tx.cipher, this.tx.key, this.tx.nonce());
    c.setAAD(header);
    const body = Buffer.concat([c.update(inner), c.final(), c.getAuthTag()]);
    this.tx.seq++;
    return Buffer.concat([header, body]);
  }

  /** A record carrying a KeyUpdate (or several, packed), after which our own keys move on. */
  sealKeyUpdates(requests: number[]): Buffer {
    const rec = this.seal(REC_HANDSHAKE, Buffer.concat(requests.map(keyUpdate)));
    this.tx.update();
    return rec;
  }

  write(...records: Buffer[]): void {
    this.socket.write(Buffer.concat(records));
  }

  /** The alerts the server sent: [level, description] of each. */
  get alerts(): number[][] {
    return this.received.filter((r) => r.type === REC_ALERT).map((r) => [...r.content]);
  }

  /** Application data received, concatenated. */
  get data(): Buffer {
    return Buffer.concat(this.received.filter((r) => r.type === REC_DATA).map((r) => r.content));
  }

  /** KeyUpdates the server sent. */
  get keyUpdates(): number {
    return this.received.filter((r) => r.type === REC_HANDSHAKE && r.content[0] === 24).length;
  }

  #onData(chunk: Buffer): void {
    this.#inbuf = Buffer.concat([this.#inbuf, chunk]);
    while (this.openError === undefined && this.#inbuf.length >= 5) {
      const len = this.#inbuf.readUInt16BE(3);
      if (this.#inbuf.length < 5 + len) return;
      const header = this.#inbuf.subarray(0, 5);
      const body = this.#inbuf.subarray(5, 5 + len);
      this.#inbuf = this.#inbuf.subarray(5 + len);
      try {
        const d = createDecipheriv(this.rx.cipher, this.rx.key, this.rx.nonce());
        d.setAAD(header);
        d.setAuthTag(body.subarray(len - 16));
        const inner = Buffer.concat([d.update(body.subarray(0, len - 16)), d.final()]);
        this.rx.seq++;
        let end = inner.length;
        while (end > 0 && inner[end - 1] === 0) end--;
        const rec = { type: inner[end - 1]!, content: Buffer.from(inner.subarray(0, end - 1)) };
        this.received.push(rec);
        // The server's KeyUpdate ends its record: the next one is under its new keys.
        if (rec.type === REC_HANDSHAKE && rec.content[0] === 24) this.rx.update();
      } catch (err) {
        this.openError = `a record from the server does not open: ${(err as Error).message}`;
      }
    }
  }
}
