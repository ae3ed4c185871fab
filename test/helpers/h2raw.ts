// Raw HTTP/2 frames for tests that must send what no well-behaved peer would (RFC 9113 §4, §6), and the
// simplest HPACK block (literal fields, never indexed, no Huffman: RFC 7541 §6.2.2).

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export const DATA = 0x0;
export const HEADERS = 0x1;
export const RST_STREAM = 0x3;
export const SETTINGS = 0x4;
export const PING = 0x6;
export const GOAWAY = 0x7;
export const WINDOW_UPDATE = 0x8;
export const CONTINUATION = 0x9;

export const FLAG_END_STREAM = 0x1;
export const FLAG_ACK = 0x1;
export const FLAG_END_HEADERS = 0x4;
export const FLAG_PADDED = 0x8;

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

export function settingsFrame(settings: ReadonlyArray<readonly [number, number]>): Buffer {
  const p = Buffer.alloc(6 * settings.length);
  settings.forEach(([id, value], i) => {
    p.writeUInt16BE(id, i * 6);
    p.writeUInt32BE(value, i * 6 + 2);
  });
  return frame(SETTINGS, 0, 0, p);
}

export function windowUpdateFrame(streamId: number, increment: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(increment & 0x7fffffff, 0);
  return frame(WINDOW_UPDATE, 0, streamId, p);
}

export function rstStreamFrame(streamId: number, code: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(code >>> 0, 0);
  return frame(RST_STREAM, 0, streamId, p);
}

export const pingFrame = (data: Uint8Array, ack = false): Buffer => frame(PING, ack ? FLAG_ACK : 0, 0, data);

/** An HPACK integer with an n-bit prefix (RFC 7541 §5.1). */
function hpackInt(value: number, prefixBits: number, first: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [first | value];
  const out = [first | max];
  let v = value - max;
  while (v >= 128) {
    out.push((v & 0x7f) | 0x80);
    v >>>= 7;
  }
  out.push(v);
  return out;
}

/** A header block of literal fields without indexing (new names), as HPACK allows any encoder to write. */
export function hpackLiteral(fields: ReadonlyArray<readonly [string, string]>): Buffer {
  const out: number[] = [];
  for (const [name, value] of fields) {
    out.push(0x00);
    const n = Buffer.from(name, 'latin1');
    const v = Buffer.from(value, 'latin1');
    out.push(...hpackInt(n.length, 7, 0), ...n);
    out.push(...hpackInt(v.length, 7, 0), ...v);
  }
  return Buffer.from(out);
}

/** GOAWAY frames in `bytes` (whole frames from the start of the server's bytes, after its SETTINGS). */
export function goawayCodes(bytes: Buffer): number[] {
  const codes: number[] = [];
  let off = 0;
  while (off + 9 <= bytes.length) {
    const len = bytes.readUIntBE(off, 3);
    const type = bytes[off + 3];
    if (off + 9 + len > bytes.length) break;
    if (type === GOAWAY && len >= 8) codes.push(bytes.readUInt32BE(off + 9 + 4));
    off += 9 + len;
  }
  return codes;
}
