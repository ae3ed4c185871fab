// An attacker's tools against an HBONE listener, for test/adversarial.test.ts: certificates forged with the
// mesh CA's key, a raw HTTP/2 client over a real TLS 1.3 session (node:tls) that writes whatever frames it is
// given (./h2raw.ts), floods at the victim's reading pace, stalled handshakes, and a TLS 1.3 peer for what
// node:tls will not send (./tls13.ts).

import { X509Certificate, createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { type Socket, connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import { type ConnectionOptions, type TLSSocket, connect as tlsConnect } from 'node:tls';
import { signLeaf } from '../../daemon/identity/ca.js';
import { issuerFields, randomSerial, toPem } from '../../daemon/identity/x509.js';
import { FrameReader, FrameType, PREFACE, settingsFrame, statusOf } from './h2raw.js';
import { sleep } from './net.js';
import { RawTls13Client } from './tls13.js';

// --- certificates ------------------------------------------------------------------------------------------

export interface Credentials {
  readonly certPem: string;
  readonly keyPem: string;
}

/**
 * A leaf signed by the mesh CA kept in `caDir`, shaped as the CA's own (daemon/identity/ca.ts) but with
 * exactly the URI SANs given (none: a certificate with no SPIFFE ID at all; another trust domain's ID: what
 * the embedded CA itself would refuse to issue). Anyone holding the CA key, or a CA that signs more than it
 * should, can make these.
 */
export async function forgeLeaf(caDir: string, uris: readonly string[]): Promise<Credentials> {
  const root = new X509Certificate(await readFile(join(caDir, 'root-cert.pem'), 'utf8'));
  const signingKey = createPrivateKey(await readFile(join(caDir, 'root-key.pem'), 'utf8'));
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const now = Date.now();
  const der = await signLeaf({
    serial: randomSerial(),
    issuer: issuerFields(root.raw),
    signingKey,
    commonName: 'attacker',
    publicKey,
    uris,
    notBefore: new Date(Math.floor((now - 60_000) / 1000) * 1000),
    notAfter: new Date(Math.floor((now + 3_600_000) / 1000) * 1000),
  });
  return { certPem: toPem(der), keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
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

/** node:tls's options for a TLS 1.3 client with ALPN h2 presenting `creds` (the victim's chain unchecked). */
const tlsOptions = (opts: TargetOptions): ConnectionOptions => ({
  key: opts.creds.keyPem,
  cert: opts.creds.certPem,
  servername: opts.servername,
  ALPNProtocols: ['h2'],
  minVersion: 'TLSv1.3',
  rejectUnauthorized: false,
});

/** A TLS 1.3 session with ALPN h2, presenting `creds`; resolves once the handshake is done. */
export function tlsSession(opts: TargetOptions): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({
      ...tlsOptions(opts),
      host: opts.host ?? '127.0.0.1',
      port: opts.port,
      ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
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

/** The same handshake, after which the attacker seals its own TLS records (tls13.ts). */
export const rawTls13 = (opts: TargetOptions): Promise<RawTls13Client> =>
  RawTls13Client.connect({
    port: opts.port,
    ...(opts.host ? { host: opts.host } : {}),
    ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
    tls: tlsOptions(opts),
  });

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
