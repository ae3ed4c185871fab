// The static Huffman code of HPACK (RFC 7541 §5.2, Appendix B).
//
// Decoding is a finite-state machine that consumes one nibble per step: a state is an internal node of the
// code tree (256 of them for 257 leaves), and every (state, nibble) pair has a precomputed outcome. Since no
// code is shorter than 5 bits, a nibble completes at most one symbol, so each outcome is one 32-bit word and
// decoding allocates nothing but the resulting string.

import { H2ProtocolError } from '../../errors.js';

/** Symbol 256, the end-of-string marker: never valid inside a string, only its prefix as padding. */
export const HUFFMAN_EOS = 256;

/** RFC 7541 Appendix B codes, right-aligned, indexed by symbol (octets 0-255, then EOS). */
export const HUFFMAN_CODES: readonly number[] = [
  // 0-15
  0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8, 0xffffea,
  0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
  // 16-31
  0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
  0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
  // 32-47: ' ' ! " # $ % & ' ( ) * + , - . /
  0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
  // 48-63: 0-9 : ; < = > ?
  0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
  // 64-79: @ A-O
  0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
  // 80-95: P-Z [ \ ] ^ _
  0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22,
  // 96-111: ` a-o
  0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7,
  // 112-127: p-z { | } ~ DEL
  0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc,
  // 128-143
  0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb,
  0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
  // 144-159
  0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3, 0x7fffe4, 0x1fffdc,
  0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
  // 160-175
  0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd, 0x3fffde,
  0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
  // 176-191
  0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3,
  0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
  // 192-207
  0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3,
  0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
  // 208-223
  0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5,
  0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5,
  // 224-239
  0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3, 0x3fffea, 0x3fffeb, 0x1ffffee,
  0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
  // 240-255
  0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
  0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
  // 256: EOS
  0x3fffffff,
];

/** RFC 7541 Appendix B code lengths in bits, indexed like HUFFMAN_CODES. */
// biome-ignore format: rows of 16 symbols, as in the RFC, make the table checkable by eye
export const HUFFMAN_LENGTHS: readonly number[] = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0-15
  28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16-31
  6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 32-47
  5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 48-63
  13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 64-79
  7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 80-95
  15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 96-111
  6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 112-127
  20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128-143
  24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144-159
  22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160-175
  21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176-191
  26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192-207
  19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208-223
  20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224-239
  26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240-255
  30, // 256: EOS
];

// Layout of a transition word: bits 0-7 next state, bits 8-15 emitted symbol, then two flags.
const EMITS = 0x10000;
const HITS_EOS = 0x20000;

const transitions = new Uint32Array(256 * 16);
/** States in which the string may end: the bits since the last symbol are at most 7 ones (a prefix of EOS). */
const accepting = new Uint8Array(256);

(function buildDecoder(): void {
  // Code tree: tree[node * 2 + bit] is 0 while unset (the root is never a child), a positive internal node
  // id, or ~symbol for a leaf. The checks turn a transcription mistake into a load-time failure instead of
  // silently wrong headers.
  const tree = new Int32Array(512);
  let nodes = 1;
  for (let sym = 0; sym <= HUFFMAN_EOS; sym++) {
    const code = HUFFMAN_CODES[sym];
    const len = HUFFMAN_LENGTHS[sym];
    let node = 0;
    for (let bit = len - 1; bit > 0; bit--) {
      const slot = node * 2 + ((code >>> bit) & 1);
      if (tree[slot] === 0) {
        if (nodes === 256) throw new Error('huffman: table is not a prefix code');
        tree[slot] = nodes++;
      } else if (tree[slot] < 0) {
        throw new Error(`huffman: code of symbol ${sym} extends another code`);
      }
      node = tree[slot];
    }
    const slot = node * 2 + (code & 1);
    if (tree[slot] !== 0) throw new Error(`huffman: code of symbol ${sym} is a prefix of another`);
    tree[slot] = ~sym;
  }
  if (nodes !== 256 || tree.includes(0)) throw new Error('huffman: table is not a complete code');

  let onesPath = 0;
  accepting[0] = 1;
  for (let depth = 1; depth <= 7; depth++) {
    onesPath = tree[onesPath * 2 + 1];
    accepting[onesPath] = 1;
  }

  for (let state = 0; state < 256; state++) {
    for (let nibble = 0; nibble < 16; nibble++) {
      let node = state;
      let outcome = 0;
      for (let bit = 3; bit >= 0; bit--) {
        const next = tree[node * 2 + ((nibble >>> bit) & 1)];
        if (next > 0) {
          node = next;
          continue;
        }
        const sym = ~next;
        if (sym === HUFFMAN_EOS) {
          outcome = HITS_EOS;
          break;
        }
        outcome = EMITS | (sym << 8);
        node = 0;
      }
      transitions[state * 16 + nibble] = outcome | node;
    }
  }
})();

// Decoded strings are assembled here and then copied once into a string; large inputs get a throwaway
// buffer so one huge header does not pin memory for the life of the process.
const SCRATCH_KEEP = 16 * 1024;
let scratch = Buffer.allocUnsafe(1024);

/**
 * Decodes the Huffman-coded octets src[start, end) to a latin1 string. Throws H2ProtocolError(9) on an EOS
 * symbol in the data, on padding longer than 7 bits, or on padding that is not all ones (RFC 7541 §5.2).
 */
export function huffmanDecode(src: Uint8Array, start: number, end: number): string {
  const maxOut = Math.floor(((end - start) * 8) / 5);
  let out = scratch;
  if (out.length < maxOut) {
    out = Buffer.allocUnsafe(maxOut);
    if (maxOut <= SCRATCH_KEEP) scratch = out;
  }
  let n = 0;
  let state = 0;
  for (let i = start; i < end; i++) {
    const octet = src[i];
    let t = transitions[(state << 4) | (octet >>> 4)];
    if (t & HITS_EOS) throw eosError();
    if (t & EMITS) out[n++] = (t >>> 8) & 0xff;
    t = transitions[((t & 0xff) << 4) | (octet & 0x0f)];
    if (t & HITS_EOS) throw eosError();
    if (t & EMITS) out[n++] = (t >>> 8) & 0xff;
    state = t & 0xff;
  }
  if (accepting[state] === 0) {
    throw new H2ProtocolError(9, 'hpack: invalid Huffman padding (longer than 7 bits or not all ones)');
  }
  return out.toString('latin1', 0, n);
}

function eosError(): H2ProtocolError {
  return new H2ProtocolError(9, 'hpack: Huffman-coded string contains EOS');
}

/** Octets that huffmanEncode(bytes) produces. */
export function huffmanEncodedLength(bytes: Uint8Array): number {
  let bits = 0;
  for (let i = 0; i < bytes.length; i++) bits += HUFFMAN_LENGTHS[bytes[i]];
  return (bits + 7) >>> 3;
}

/** Huffman-codes the octets, padding the last octet with the most significant bits of EOS (ones). */
export function huffmanEncode(bytes: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(huffmanEncodedLength(bytes));
  let o = 0;
  // Pending bits stay below 8 after every flush, and codes longer than 24 bits are fed in two parts, so the
  // accumulator never needs more than 31 bits and plain int32 arithmetic is exact.
  let acc = 0;
  let pending = 0;
  for (let i = 0; i < bytes.length; i++) {
    let code = HUFFMAN_CODES[bytes[i]];
    let len = HUFFMAN_LENGTHS[bytes[i]];
    if (len > 24) {
      const high = len - 24;
      acc = (acc << high) | (code >>> 24);
      pending += high;
      code &= 0xffffff;
      len = 24;
      while (pending >= 8) {
        pending -= 8;
        out[o++] = (acc >>> pending) & 0xff;
      }
      acc &= (1 << pending) - 1;
    }
    acc = (acc << len) | code;
    pending += len;
    while (pending >= 8) {
      pending -= 8;
      out[o++] = (acc >>> pending) & 0xff;
    }
    acc &= (1 << pending) - 1;
  }
  if (pending > 0) out[o++] = ((acc << (8 - pending)) | (0xff >>> pending)) & 0xff;
  return out;
}
