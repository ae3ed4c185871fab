// Writes the CONNECT header target's seeds (corpus/connect/): header blocks as HBONE clients encode them, in
// connect_fuzz's input format (a first byte of options, then the block; see h2_fuzz.c). HPACK is spelled out
// here by hand because these are inputs to mutate, not a codec: literals with and without indexing, an
// indexed field, a table size update, a Huffman-coded value. Run: node gen_connect_corpus.mjs
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const out = join(dirname(fileURLToPath(import.meta.url)), 'corpus', 'connect');
mkdirSync(out, { recursive: true });

/** An HPACK integer with an n-bit prefix (RFC 7541 §5.1), the prefix's other bits in `high`. */
function int(value, n, high) {
  const max = (1 << n) - 1;
  if (value < max) return [high | value];
  const bytes = [high | max];
  let v = value - max;
  while (v >= 128) {
    bytes.push((v % 128) + 128);
    v = Math.floor(v / 128);
  }
  bytes.push(v);
  return bytes;
}
const str = (s) => [...int(Buffer.byteLength(s), 7, 0), ...Buffer.from(s, 'latin1')];
/** Literal without indexing, name from the static table (index) or new (0). */
const literal = (index, name, value) => [...int(index, 4, 0x00), ...(index ? [] : str(name)), ...str(value)];
/** Literal with incremental indexing: it enters the dynamic table. */
const indexed = (index, name, value) => [...int(index, 6, 0x40), ...(index ? [] : str(name)), ...str(value)];

const connect = (authority, extra = []) => [
  ...literal(2, '', 'CONNECT'), // :method
  ...literal(1, '', authority), // :authority
  ...extra,
];
const ztunnel = [
  ...literal(0, 'forwarded', 'for="198.18.1.10:40000"'),
  ...literal(0, 'traceparent', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00'),
  ...literal(0, 'baggage', 'k8s.namespace.name=default,service.name=web,k8s.deployment.name=web-1'),
];

const seeds = {
  // Options byte: bits 0-2 frames - 1, bit 3 END_STREAM, bit 4 one request only.
  'connect-v4': [0x10, ...connect('198.18.1.10:8080')],
  'connect-v6': [0x10, ...connect('[2001:2::10]:8080')],
  'connect-ztunnel-headers': [0x00, ...connect('198.18.1.10:8080', ztunnel)],
  'connect-continuations': [0x03, ...connect('198.18.1.10:8080', ztunnel)],
  'connect-end-stream': [0x18, ...connect('198.18.1.10:8080')],
  // Entered in the dynamic table on stream 1, referenced (index 62) on stream 3.
  'dynamic-table': [0x00, ...indexed(2, '', 'CONNECT'), ...literal(1, '', '198.18.1.10:8080'), 0x80 | 62],
  'table-size-update': [0x10, ...int(0, 5, 0x20), ...connect('198.18.1.10:8080')],
  'get-not-connect': [0x10, 0x82, 0x86, 0x84, ...literal(1, '', 'example')], // :method GET, :scheme http, :path /
  'uppercase-name': [0x10, ...connect('198.18.1.10:8080', literal(0, 'Forwarded', 'for=x'))],
  'pseudo-after-regular': [0x10, ...literal(0, 'x', 'y'), ...connect('198.18.1.10:8080')],
  'connection-header': [0x10, ...connect('198.18.1.10:8080', literal(0, 'connection', 'close'))],
  // A Huffman-coded :method value (the H bit set; whether these five bytes decode is for the mutator to vary).
  huffman: [
    0x10,
    ...int(2, 4, 0x00),
    0x85,
    0xb8,
    0x82,
    0x4e,
    0x5a,
    0x4b,
    ...literal(1, '', '198.18.1.10:80'),
  ],
  'oversized-value': [0x10, ...connect('198.18.1.10:8080', literal(0, 'baggage', 'x'.repeat(20000)))],
};
for (const [name, bytes] of Object.entries(seeds)) writeFileSync(join(out, name), Buffer.from(bytes));
console.log(`wrote ${Object.keys(seeds).length} seeds to ${out}`);
