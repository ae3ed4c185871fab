// Raw HTTP/2 for tests that must send what no well-behaved peer would (RFC 9113 §4, §6): frame writers, a
// few lines of HPACK encoding (literals and indexed fields, never Huffman: RFC 7541 §6), and a frame reader
// for what comes back. Deliberately not the product's code: the daemon's own framing must not be what checks
// the daemon's own framing.

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export const FrameType = {
  DATA: 0x0,
  HEADERS: 0x1,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PING: 0x6,
  GOAWAY: 0x7,
  WINDOW_UPDATE: 0x8,
  CONTINUATION: 0x9,
} as const;

export const Flag = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;

export const H2Error = { NO_ERROR: 0, PROTOCOL_ERROR: 1, CANCEL: 8, ENHANCE_YOUR_CALM: 0xb } as const;

// --- writing frames (RFC 9113 §4.1) -------------------------------------------------------------------------

/** A frame header alone: with a `length` no payload follows, it is how a test claims more than it sends. */
export function frameHeader(length: number, type: number, flags: number, streamId: number): Buffer {
  const b = Buffer.alloc(9);
  b.writeUIntBE(length, 0, 3);
  b[3] = type;
  b[4] = flags;
  b.writeUInt32BE(streamId & 0x7fffffff, 5);
  return b;
}

export function frame(type: number, flags: number, streamId: number, payload?: Uint8Array): Buffer {
  const p = payload ?? Buffer.alloc(0);
  return Buffer.concat([frameHeader(p.length, type, flags, streamId), p]);
}

export function settingsFrame(entries: ReadonlyArray<readonly [number, number]> = []): Buffer {
  const p = Buffer.alloc(6 * entries.length);
  entries.forEach(([id, value], i) => {
    p.writeUInt16BE(id, i * 6);
    p.writeUInt32BE(value, i * 6 + 2);
  });
  return frame(FrameType.SETTINGS, 0, 0, p);
}

export function windowUpdateFrame(streamId: number, increment: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(increment & 0x7fffffff, 0);
  return frame(FrameType.WINDOW_UPDATE, 0, streamId, p);
}

export function rstStreamFrame(streamId: number, code: number = H2Error.CANCEL): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(code >>> 0, 0);
  return frame(FrameType.RST_STREAM, 0, streamId, p);
}

/** A PING (not an ACK) whose 8 opaque bytes carry `n`, so that its ACK can be told from another's. */
export function pingFrame(n = 0): Buffer {
  const p = Buffer.alloc(8);
  p.writeUInt32BE(n >>> 0, 4);
  return frame(FrameType.PING, 0, 0, p);
}

export const headersFrame = (streamId: number, block: Buffer, endHeaders = true): Buffer =>
  frame(FrameType.HEADERS, endHeaders ? Flag.END_HEADERS : 0, streamId, block);

export const continuationFrame = (
  streamId: number,
  block: Buffer = Buffer.alloc(0),
  endHeaders = false,
): Buffer => frame(FrameType.CONTINUATION, endHeaders ? Flag.END_HEADERS : 0, streamId, block);

// --- HPACK (RFC 7541), encoding only, never Huffman -----------------------------------------------------------

/** An integer with an N-bit prefix (§5.1); `first` carries the pattern bits above the prefix. */
function hpackInt(value: number, prefixBits: number, first = 0): Buffer {
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

/** Literal header field without indexing, new name (§6.2.2): what any encoder may write. */
export const literal = (name: string, value: string | Buffer): Buffer =>
  Buffer.concat([Buffer.from([0x00]), hpackString(name), hpackString(value)]);

/** Literal header field with incremental indexing, new name (§6.2.1): the decoder adds it to its table. */
export const literalIndexed = (name: string, value: string | Buffer): Buffer =>
  Buffer.concat([Buffer.from([0x40]), hpackString(name), hpackString(value)]);

/** Indexed header field (§6.1); the dynamic table starts at 62. */
export const indexed = (index: number): Buffer => hpackInt(index, 7, 0x80);

/** The header block of an HBONE CONNECT to `authority` (ip:port), plus any extra fields, all literals. */
export const connectBlock = (
  authority: string,
  extra: ReadonlyArray<readonly [string, string]> = [],
): Buffer =>
  Buffer.concat([
    literal(':method', 'CONNECT'),
    literal(':authority', authority),
    ...extra.map(([n, v]) => literal(n, v)),
  ]);

// --- reading what the peer says -------------------------------------------------------------------------------

export interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly streamId: number;
  readonly payload: Buffer;
}

/** Splits a byte stream into frames (a server's preface is a SETTINGS frame: no magic to skip). */
export class FrameReader {
  #buf: Buffer = Buffer.alloc(0);

  /** The frames that `chunk` completes; a partial frame at the end waits for the next chunk. */
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

/** The whole frames in `bytes`, from its start. */
export const readFrames = (bytes: Buffer): Frame[] => new FrameReader().push(bytes);

/** The error codes of the GOAWAY frames in `bytes` (whole frames from the start of a server's bytes). */
export const goawayCodes = (bytes: Buffer): number[] =>
  readFrames(bytes)
    .filter((f) => f.type === FrameType.GOAWAY && f.payload.length >= 8)
    .map((f) => f.payload.readUInt32BE(4));

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
