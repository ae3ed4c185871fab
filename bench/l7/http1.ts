// The HTTP/1.1 the L7 bench speaks: one fixed POST with a 1 KiB body, and a reader for the responses on a
// keep-alive connection (Content-Length or chunked bodies), enough to time each one and check it.

import { connect } from 'node:net';

export const BODY_SIZE = 1024;

/** The request every load sends: POST / with `size` bytes, keep-alive (HTTP/1.1's default). */
export function postRequest(size = BODY_SIZE, host = 'bench.l7'): Buffer {
  const head =
    `POST / HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/octet-stream\r\n` +
    `Content-Length: ${size}\r\n\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), Buffer.alloc(size, 0x78)]);
}

export interface Response {
  status: number;
  bodyBytes: number;
  /** The server said it will close the connection after this response. */
  close: boolean;
}

const MAX_HEAD = 16 * 1024;
const CRLFCRLF = Buffer.from('\r\n\r\n');
const CRLF = Buffer.from('\r\n');

/**
 * Turns the bytes of one connection into responses, in order. Throws on anything it cannot parse (the
 * caller counts it as an error and drops the connection).
 */
export class ResponseReader {
  #buf: Buffer = Buffer.alloc(0);
  #head: { status: number; close: boolean } | undefined;
  /** Bytes of body still to come (Content-Length), or -1 while reading chunked framing. */
  #left = 0;
  #chunked = false;
  #body = 0;

  push(chunk: Buffer, onResponse: (r: Response) => void): void {
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : chunk;
    // Each turn consumes a head, some body or a chunk line; bounded by the bytes at hand.
    for (let guard = 0; guard < 100_000; guard++) {
      if (!this.#head) {
        const end = this.#buf.indexOf(CRLFCRLF);
        if (end < 0) {
          if (this.#buf.length > MAX_HEAD) throw new Error('response head over 16 KiB');
          return;
        }
        this.#parseHead(this.#buf.subarray(0, end).toString('latin1'));
        this.#buf = this.#buf.subarray(end + 4);
        this.#body = 0;
      }
      const head = this.#head!;
      if (!this.#chunked) {
        const take = Math.min(this.#left, this.#buf.length);
        this.#left -= take;
        this.#body += take;
        this.#buf = this.#buf.subarray(take);
        if (this.#left > 0) return;
        this.#head = undefined;
        onResponse({ status: head.status, bodyBytes: this.#body, close: head.close });
        continue;
      }
      if (this.#left > 0) {
        // Chunk data, then its CRLF.
        if (this.#buf.length < this.#left + 2) return;
        this.#body += this.#left;
        this.#buf = this.#buf.subarray(this.#left + 2);
        this.#left = 0;
        continue;
      }
      const eol = this.#buf.indexOf(CRLF);
      if (eol < 0) return;
      const size = Number.parseInt(this.#buf.subarray(0, eol).toString('latin1'), 16);
      if (!Number.isFinite(size) || size < 0) throw new Error('bad chunk size');
      if (size === 0) {
        // Last chunk: no trailers expected, just the final CRLF.
        if (this.#buf.length < eol + 4) return;
        this.#buf = this.#buf.subarray(eol + 4);
        this.#head = undefined;
        onResponse({ status: head.status, bodyBytes: this.#body, close: head.close });
        continue;
      }
      this.#buf = this.#buf.subarray(eol + 2);
      this.#left = size;
    }
    throw new Error('response reader made no progress');
  }

  #parseHead(text: string): void {
    const lines = text.split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
    if (!m) throw new Error(`not an HTTP/1.1 status line: ${JSON.stringify((lines[0] ?? '').slice(0, 80))}`);
    let length: number | undefined;
    let chunked = false;
    let close = lines[0]!.startsWith('HTTP/1.0');
    for (const line of lines.slice(1)) {
      const i = line.indexOf(':');
      if (i < 0) continue;
      const name = line.slice(0, i).trim().toLowerCase();
      const value = line
        .slice(i + 1)
        .trim()
        .toLowerCase();
      if (name === 'content-length') length = Number(value);
      else if (name === 'transfer-encoding') chunked = value.includes('chunked');
      else if (name === 'connection') close = value.includes('close');
    }
    if (!chunked && (length === undefined || !Number.isInteger(length) || length < 0)) {
      throw new Error('response without Content-Length or chunked encoding');
    }
    this.#head = { status: Number(m[1]), close };
    this.#chunked = chunked;
    this.#left = chunked ? 0 : length!;
  }
}

/** One POST to 127.0.0.1:`port` on a fresh connection, within `ms`. */
export function postOnce(port: number, ms: number): Promise<Response> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', noDelay: true });
    const reader = new ResponseReader();
    const fail = (e: Error): void => {
      clearTimeout(timer);
      s.destroy();
      reject(e);
    };
    const timer = setTimeout(() => fail(new Error(`no response within ${ms} ms`)), ms);
    s.once('error', fail);
    s.once('close', () => fail(new Error('connection closed before a response')));
    s.once('connect', () => s.write(postRequest()));
    s.on('data', (chunk: Buffer) => {
      try {
        reader.push(chunk, (r) => {
          clearTimeout(timer);
          s.removeAllListeners('close');
          s.destroy();
          resolve(r);
        });
      } catch (e) {
        fail(e as Error);
      }
    });
  });
}
