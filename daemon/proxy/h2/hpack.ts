// HPACK header compression (RFC 7541) for the HBONE HTTP/2 stack.
//
// The decoder reads bytes from untrusted peers (ztunnel, via the Rust `h2` crate, uses Huffman coding and the
// dynamic table), so it implements the whole format and treats every malformed block as a connection-level
// COMPRESSION_ERROR. The encoder deliberately never touches the dynamic table: that keeps it stateless, so
// it never has to send table size updates and a lost or reordered block can never desynchronize peers.

import { H2ProtocolError } from '../../errors.js';
import { huffmanDecode } from './huffman.js';

export type HeaderField = readonly [name: string, value: string];

/** RFC 9113 default for SETTINGS_HEADER_TABLE_SIZE, and what Ambit advertises. */
export const DEFAULT_HEADER_TABLE_SIZE = 4096;
/** Bound on one decoded header list, counted like SETTINGS_MAX_HEADER_LIST_SIZE (name + value + 32). */
export const DEFAULT_MAX_HEADER_LIST_SIZE = 64 * 1024;

/** RFC 7541 §4.1: per-entry overhead in the table size accounting. */
const ENTRY_OVERHEAD = 32;
/** Integers above this are rejected: no legitimate index, length or table size comes near it. */
const MAX_INTEGER = 0x7fffffff;
/** 5 continuation octets carry 35 bits, enough for MAX_INTEGER after any prefix; more is padding abuse. */
const MAX_CONTINUATION_OCTETS = 5;
const COMPRESSION_ERROR = 9;

/** RFC 7541 Appendix A; HPACK index i is STATIC_TABLE[i - 1]. */
const STATIC_TABLE: readonly HeaderField[] = [
  [':authority', ''],
  [':method', 'GET'],
  [':method', 'POST'],
  [':path', '/'],
  [':path', '/index.html'],
  [':scheme', 'http'],
  [':scheme', 'https'],
  [':status', '200'],
  [':status', '204'],
  [':status', '206'],
  [':status', '304'],
  [':status', '400'],
  [':status', '404'],
  [':status', '500'],
  ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'],
  ['accept-language', ''],
  ['accept-ranges', ''],
  ['accept', ''],
  ['access-control-allow-origin', ''],
  ['age', ''],
  ['allow', ''],
  ['authorization', ''],
  ['cache-control', ''],
  ['content-disposition', ''],
  ['content-encoding', ''],
  ['content-language', ''],
  ['content-length', ''],
  ['content-location', ''],
  ['content-range', ''],
  ['content-type', ''],
  ['cookie', ''],
  ['date', ''],
  ['etag', ''],
  ['expect', ''],
  ['expires', ''],
  ['from', ''],
  ['host', ''],
  ['if-match', ''],
  ['if-modified-since', ''],
  ['if-none-match', ''],
  ['if-range', ''],
  ['if-unmodified-since', ''],
  ['last-modified', ''],
  ['link', ''],
  ['location', ''],
  ['max-forwards', ''],
  ['proxy-authenticate', ''],
  ['proxy-authorization', ''],
  ['range', ''],
  ['referer', ''],
  ['refresh', ''],
  ['retry-after', ''],
  ['server', ''],
  ['set-cookie', ''],
  ['strict-transport-security', ''],
  ['transfer-encoding', ''],
  ['user-agent', ''],
  ['vary', ''],
  ['via', ''],
  ['www-authenticate', ''],
];
const STATIC_COUNT = STATIC_TABLE.length;

/** For the encoder: lowest static index per name, and the index of each name/value pair with a value. */
const STATIC_NAME_INDEX = new Map<string, number>();
const STATIC_PAIR_INDEX = new Map<string, Map<string, number>>();
for (let i = STATIC_COUNT - 1; i >= 0; i--) {
  const [name, value] = STATIC_TABLE[i];
  STATIC_NAME_INDEX.set(name, i + 1);
  if (value === '') continue;
  let byValue = STATIC_PAIR_INDEX.get(name);
  if (!byValue) {
    byValue = new Map();
    STATIC_PAIR_INDEX.set(name, byValue);
  }
  byValue.set(value, i + 1);
}

function compressionError(message: string): H2ProtocolError {
  return new H2ProtocolError(COMPRESSION_ERROR, `hpack: ${message}`);
}

const fieldSize = (field: HeaderField): number => field[0].length + field[1].length + ENTRY_OVERHEAD;

const EMPTY = Buffer.alloc(0);

export class HpackDecoder {
  /** The SETTINGS_HEADER_TABLE_SIZE we advertise: the ceiling for the peer's size updates. */
  private readonly maxTableSize: number;
  private readonly maxHeaderListSize: number;
  /** The table size the peer's encoder currently uses (last size update, initially the ceiling). */
  private capacity: number;
  private used = 0;
  // Ring buffer of entries, oldest at `oldest`; its length is a power of two so wrapping is a mask.
  private ring: (HeaderField | undefined)[] = new Array(16);
  private oldest = 0;
  private count = 0;
  // Cursor over the block being decoded; fields rather than locals so the helpers can share it cheaply.
  private buf: Buffer = EMPTY;
  private pos = 0;
  private end = 0;
  /** Set once a malformed block leaves the dynamic table in an unknown state. */
  private failed = false;

  constructor(maxTableSize = DEFAULT_HEADER_TABLE_SIZE, maxHeaderListSize = DEFAULT_MAX_HEADER_LIST_SIZE) {
    if (!Number.isSafeInteger(maxTableSize) || maxTableSize < 0 || maxTableSize > MAX_INTEGER) {
      throw new RangeError(`hpack: invalid maximum table size ${maxTableSize}`);
    }
    this.maxTableSize = maxTableSize;
    this.maxHeaderListSize = maxHeaderListSize;
    this.capacity = maxTableSize;
  }

  /** Octets the dynamic table currently holds, by the RFC 7541 §4.1 accounting. */
  get dynamicTableSize(): number {
    return this.used;
  }

  /** The dynamic table, newest entry first (index 62 first): for tests and diagnostics. */
  dynamicTable(): HeaderField[] {
    const entries: HeaderField[] = [];
    for (let i = 0; i < this.count; i++) entries.push(this.dynamicEntry(i));
    return entries;
  }

  /**
   * Decodes one complete header block (HEADERS + CONTINUATION payloads already joined). Throws
   * H2ProtocolError(9, message) on anything malformed; the connection must then be closed, and this
   * decoder refuses further blocks. A list beyond the size bound is decoded to the end (keeping the table
   * in step with the peer) and then rejected. Indexed fields are returned as the table's own tuples, shared
   * and never copied: that is why HeaderField is readonly.
   */
  decode(block: Uint8Array): HeaderField[] {
    if (this.failed) throw compressionError('decoder already failed on an earlier header block');
    this.buf = Buffer.isBuffer(block) ? block : Buffer.from(block.buffer, block.byteOffset, block.byteLength);
    this.pos = 0;
    this.end = this.buf.length;
    let fields: HeaderField[] | undefined;
    try {
      fields = this.decodeBlock();
    } catch (err) {
      this.failed = true;
      throw err instanceof H2ProtocolError
        ? err
        : compressionError(`malformed header block (${String(err)})`);
    } finally {
      this.buf = EMPTY;
    }
    if (!fields) {
      throw compressionError(`header list larger than ${this.maxHeaderListSize} octets`);
    }
    return fields;
  }

  /** Returns undefined when the list exceeds maxHeaderListSize. */
  private decodeBlock(): HeaderField[] | undefined {
    const buf = this.buf;
    const fields: HeaderField[] = [];
    let listSize = 0;
    let tooLarge = false;
    let atStart = true;
    while (this.pos < this.end) {
      const first = buf[this.pos];
      let field: HeaderField;
      if (first & 0x80) {
        // §6.1 indexed header field
        field = this.lookup(this.readInteger(7));
      } else if (first & 0x40) {
        // §6.2.1 literal with incremental indexing
        field = this.readLiteral(6);
        this.insert(field);
      } else if (first & 0x20) {
        // §6.3 dynamic table size update; §4.2 only allows it before the first field of a block
        if (!atStart) throw compressionError('dynamic table size update after a header field');
        const size = this.readInteger(5);
        if (size > this.maxTableSize) {
          throw compressionError(`dynamic table size update to ${size} exceeds ${this.maxTableSize}`);
        }
        this.capacity = size;
        this.evictUntilFits(0);
        continue;
      } else {
        // §6.2.2 without indexing (0000) and §6.2.3 never indexed (0001) decode the same way; the
        // distinction only matters when re-encoding for another hop, which Ambit never does.
        field = this.readLiteral(4);
      }
      atStart = false;
      listSize += fieldSize(field);
      if (listSize > this.maxHeaderListSize) tooLarge = true;
      else fields.push(field);
    }
    return tooLarge ? undefined : fields;
  }

  /** §5.1; the caller has checked that the first octet exists. */
  private readInteger(prefixBits: number): number {
    const buf = this.buf;
    const prefixMax = (1 << prefixBits) - 1;
    let value = buf[this.pos++] & prefixMax;
    if (value < prefixMax) return value;
    let scale = 1;
    for (let i = 0; i < MAX_CONTINUATION_OCTETS; i++) {
      if (this.pos >= this.end) throw compressionError('truncated integer');
      const octet = buf[this.pos++];
      value += (octet & 0x7f) * scale;
      if (value > MAX_INTEGER) throw compressionError('integer overflow');
      if ((octet & 0x80) === 0) return value;
      scale *= 128;
    }
    throw compressionError('integer has too many continuation octets');
  }

  /** §5.2 */
  private readString(): string {
    if (this.pos >= this.end) throw compressionError('truncated header block (string expected)');
    const huffman = (this.buf[this.pos] & 0x80) !== 0;
    const length = this.readInteger(7);
    if (length > this.end - this.pos) throw compressionError('string literal longer than the header block');
    const start = this.pos;
    this.pos += length;
    return huffman ? huffmanDecode(this.buf, start, this.pos) : this.buf.toString('latin1', start, this.pos);
  }

  private readLiteral(prefixBits: number): HeaderField {
    const nameIndex = this.readInteger(prefixBits);
    const name = nameIndex === 0 ? this.readString() : this.lookup(nameIndex)[0];
    return [name, this.readString()];
  }

  /** §2.3.3: 1-61 static, then the dynamic table newest first. */
  private lookup(index: number): HeaderField {
    if (index === 0) throw compressionError('index 0');
    if (index <= STATIC_COUNT) return STATIC_TABLE[index - 1];
    const dynamicIndex = index - STATIC_COUNT - 1;
    if (dynamicIndex >= this.count) {
      throw compressionError(`index ${index} beyond the ${this.count}-entry dynamic table`);
    }
    return this.dynamicEntry(dynamicIndex);
  }

  private dynamicEntry(newestFirst: number): HeaderField {
    return this.ring[(this.oldest + this.count - 1 - newestFirst) & (this.ring.length - 1)]!;
  }

  /** §4.4: an entry larger than the whole table empties it and is not added (not an error). */
  private insert(field: HeaderField): void {
    const size = fieldSize(field);
    if (size > this.capacity) {
      this.evictUntilFits(this.capacity + 1);
      return;
    }
    this.evictUntilFits(size);
    if (this.count === this.ring.length) this.growRing();
    this.ring[(this.oldest + this.count) & (this.ring.length - 1)] = field;
    this.count++;
    this.used += size;
  }

  /** §4.3, §4.4: drops the oldest entries until `incoming` more octets fit within capacity. */
  private evictUntilFits(incoming: number): void {
    const mask = this.ring.length - 1;
    while (this.count > 0 && this.used + incoming > this.capacity) {
      const entry = this.ring[this.oldest]!;
      this.ring[this.oldest] = undefined;
      this.used -= fieldSize(entry);
      this.oldest = (this.oldest + 1) & mask;
      this.count--;
    }
  }

  private growRing(): void {
    const bigger: (HeaderField | undefined)[] = new Array(this.ring.length * 2);
    for (let i = 0; i < this.count; i++) bigger[i] = this.ring[(this.oldest + i) & (this.ring.length - 1)];
    this.ring = bigger;
    this.oldest = 0;
  }
}

export class HpackEncoder {
  /**
   * Encodes a header block without ever using the dynamic table, so no table size update is ever needed:
   * a name/value pair that is in the static table as a whole becomes an indexed field (one octet, e.g.
   * `:status: 200`); everything else is a literal header field without indexing, with the static index of
   * the name when the name is in the static table, else a literal name. No Huffman coding. Names must
   * already be lowercase; names and values are written as latin1, one octet per character.
   */
  encode(headers: readonly HeaderField[]): Buffer {
    let total = 0;
    for (const [name, value] of headers) {
      if (STATIC_PAIR_INDEX.get(name)?.get(value) !== undefined) {
        total += 1;
        continue;
      }
      const nameIndex = STATIC_NAME_INDEX.get(name);
      total += nameIndex === undefined ? 1 + stringLength(name) : integerLength(nameIndex, 4);
      total += stringLength(value);
    }
    const out = Buffer.allocUnsafe(total);
    let pos = 0;
    for (const [name, value] of headers) {
      const pairIndex = STATIC_PAIR_INDEX.get(name)?.get(value);
      if (pairIndex !== undefined) {
        out[pos++] = 0x80 | pairIndex;
        continue;
      }
      const nameIndex = STATIC_NAME_INDEX.get(name);
      if (nameIndex === undefined) {
        out[pos++] = 0x00;
        pos = writeString(out, pos, name);
      } else {
        pos = writeInteger(out, pos, 0x00, nameIndex, 4);
      }
      pos = writeString(out, pos, value);
    }
    return out;
  }
}

function integerLength(value: number, prefixBits: number): number {
  const prefixMax = (1 << prefixBits) - 1;
  if (value < prefixMax) return 1;
  let length = 2;
  for (let rest = value - prefixMax; rest >= 0x80; rest = Math.floor(rest / 128)) length++;
  return length;
}

function writeInteger(
  out: Buffer,
  start: number,
  pattern: number,
  value: number,
  prefixBits: number,
): number {
  const prefixMax = (1 << prefixBits) - 1;
  let pos = start;
  if (value < prefixMax) {
    out[pos++] = pattern | value;
    return pos;
  }
  out[pos++] = pattern | prefixMax;
  let rest = value - prefixMax;
  while (rest >= 0x80) {
    out[pos++] = (rest % 128) | 0x80;
    rest = Math.floor(rest / 128);
  }
  out[pos++] = rest;
  return pos;
}

const stringLength = (s: string): number => integerLength(s.length, 7) + s.length;

function writeString(out: Buffer, start: number, s: string): number {
  const pos = writeInteger(out, start, 0x00, s.length, 7);
  return pos + out.write(s, pos, 'latin1');
}
