import http2 from 'node:http2';
import net from 'node:net';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { H2ProtocolError } from '../daemon/errors.js';
import { type HeaderField, HpackDecoder, HpackEncoder } from '../daemon/proxy/h2/hpack.js';
import {
  HUFFMAN_CODES,
  HUFFMAN_EOS,
  HUFFMAN_LENGTHS,
  huffmanDecode,
  huffmanEncode,
  huffmanEncodedLength,
} from '../daemon/proxy/h2/huffman.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const latin1 = (s: string): Buffer => Buffer.from(s, 'latin1');

/** RFC 7541 §5.1 integer: `pattern` holds the representation's high bits of the first octet. */
function integer(pattern: number, prefixBits: number, value: number): Buffer {
  const prefixMax = (1 << prefixBits) - 1;
  if (value < prefixMax) return Buffer.from([pattern | value]);
  const octets = [pattern | prefixMax];
  let rest = value - prefixMax;
  for (; rest >= 128; rest = Math.floor(rest / 128)) octets.push((rest % 128) | 0x80);
  octets.push(rest);
  return Buffer.from(octets);
}

const indexed = (index: number): Buffer => integer(0x80, 7, index);
const rawString = (s: string): Buffer => Buffer.concat([integer(0x00, 7, s.length), latin1(s)]);
/** Literal with incremental indexing and a new name. */
const indexedLiteral = (name: string, value: string): Buffer =>
  Buffer.concat([Buffer.from([0x40]), rawString(name), rawString(value)]);

function decodeHuffman(bytes: Uint8Array): string {
  return huffmanDecode(bytes, 0, bytes.length);
}

function assertCompressionError(t: ExecutionContext, fn: () => unknown, message?: string): void {
  const err = t.throws(fn, { instanceOf: H2ProtocolError }, message);
  t.is(err?.h2Code, 9, message);
  t.regex(err?.message ?? '', /^hpack: /, message);
}

/** Deterministic PRNG (mulberry32), so a failing fuzz case is reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

// --- Huffman (RFC 7541 Appendix B) ---

test('huffman table: 257 symbols forming the canonical, complete code of Appendix B', (t) => {
  t.is(HUFFMAN_CODES.length, 257);
  t.is(HUFFMAN_LENGTHS.length, 257);
  // Appendix B is a canonical code: ordered by (length, symbol), each code is the previous one plus one,
  // shifted left when the length grows. Checking that catches a mistyped code or length.
  const order = [...HUFFMAN_CODES.keys()].sort((a, b) => HUFFMAN_LENGTHS[a] - HUFFMAN_LENGTHS[b] || a - b);
  let code = 0;
  let length = HUFFMAN_LENGTHS[order[0]];
  let kraft = 0;
  for (const sym of order) {
    code *= 2 ** (HUFFMAN_LENGTHS[sym] - length);
    length = HUFFMAN_LENGTHS[sym];
    t.is(HUFFMAN_CODES[sym], code, `symbol ${sym}`);
    code++;
    kraft += 2 ** -length;
  }
  t.is(kraft, 1);
  t.is(Math.min(...HUFFMAN_LENGTHS), 5);
  t.is(Math.max(...HUFFMAN_LENGTHS), 30);
  // A few rows as printed in the RFC.
  t.deepEqual([HUFFMAN_CODES[0x30], HUFFMAN_LENGTHS[0x30]], [0x0, 5]); // '0' |00000
  t.deepEqual([HUFFMAN_CODES[0x61], HUFFMAN_LENGTHS[0x61]], [0x3, 5]); // 'a' |00011
  t.deepEqual([HUFFMAN_CODES[0x20], HUFFMAN_LENGTHS[0x20]], [0x14, 6]); // ' ' |010100
  t.deepEqual([HUFFMAN_CODES[0x00], HUFFMAN_LENGTHS[0x00]], [0x1ff8, 13]);
  t.deepEqual([HUFFMAN_CODES[0x0a], HUFFMAN_LENGTHS[0x0a]], [0x3ffffffc, 30]);
  t.deepEqual([HUFFMAN_CODES[0xff], HUFFMAN_LENGTHS[0xff]], [0x3ffffee, 26]);
  t.deepEqual([HUFFMAN_CODES[HUFFMAN_EOS], HUFFMAN_LENGTHS[HUFFMAN_EOS]], [0x3fffffff, 30]);
});

const HUFFMAN_VECTORS: readonly (readonly [string, string])[] = [
  // RFC 7541 C.4 and C.6
  ['www.example.com', 'f1e3 c2e5 f23a 6ba0 ab90 f4ff'],
  ['no-cache', 'a8eb 1064 9cbf'],
  ['custom-key', '25a8 49e9 5ba9 7d7f'],
  ['custom-value', '25a8 49e9 5bb8 e8b4 bf'],
  ['302', '6402'],
  ['307', '640e ff'],
  ['private', 'aec3 771a 4b'],
  ['Mon, 21 Oct 2013 20:13:21 GMT', 'd07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff'],
  ['https://www.example.com', '9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3'],
  ['gzip', '9bd9 ab'],
  [
    'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1',
    '94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07',
  ],
];

test('huffman: RFC 7541 Appendix C strings decode and encode', (t) => {
  for (const [text, coded] of HUFFMAN_VECTORS) {
    t.is(decodeHuffman(hex(coded)), text);
    t.is(huffmanEncode(latin1(text)).toString('hex'), hex(coded).toString('hex'), text);
    t.is(huffmanEncodedLength(latin1(text)), hex(coded).length);
  }
  t.is(decodeHuffman(Buffer.alloc(0)), '');
});

test('huffman: every octet round-trips, alone and in random strings', (t) => {
  for (let octet = 0; octet < 256; octet++) {
    const one = Buffer.from([octet]);
    t.deepEqual(latin1(decodeHuffman(huffmanEncode(one))), one, `octet ${octet}`);
  }
  const random = prng(7);
  for (let i = 0; i < 300; i++) {
    const bytes = Buffer.alloc(Math.floor(random() * 200));
    for (let j = 0; j < bytes.length; j++) bytes[j] = Math.floor(random() * 256);
    t.deepEqual(latin1(decodeHuffman(huffmanEncode(bytes))), bytes);
  }
  // Decoding a slice in the middle of a larger buffer.
  const framed = Buffer.concat([Buffer.from([0xaa, 0xbb]), hex('9bd9 ab'), Buffer.from([0xcc])]);
  t.is(huffmanDecode(framed, 2, 5), 'gzip');
});

test('huffman: rejects EOS, padding over 7 bits and padding that is not all ones', (t) => {
  const bad: readonly (readonly [string, string])[] = [
    ['ff', 'padding of 8 bits'],
    ['1fff', '"a" then 11 bits of padding'],
    ['1fffff', '"a" then 19 bits of padding'],
    ['1fffffff', '"a" then 27 bits of padding'],
    ['ff9fffffff', 'EOS then "a"'],
    ['ffffffffff', 'EOS then padding'],
    ['fffffffffc', 'EOS then "?"'],
    ['52bc30ffffffff', 'padding ends on a partial symbol'],
    ['00', '"0" then padding 000'],
    ['1e', '"a" then padding 110'],
    ['f1e3c2e5f23a6ba0ab90f4fe', '"www.example.com" with a zero in the padding'],
  ];
  for (const [coded, why] of bad) assertCompressionError(t, () => decodeHuffman(hex(coded)), why);
  // The same EOS, but as the 7-bit prefix allowed as padding, is fine.
  t.is(decodeHuffman(hex('1f')), 'a');
});

// --- RFC 7541 Appendix C ---

interface Step {
  readonly wire: string;
  readonly headers: readonly HeaderField[];
  /** Dynamic table after the block, newest first. */
  readonly table: readonly HeaderField[];
  readonly tableSize: number;
}

function runSeries(t: ExecutionContext, maxTableSize: number, steps: readonly Step[]): void {
  const decoder = new HpackDecoder(maxTableSize);
  for (const [i, step] of steps.entries()) {
    t.deepEqual(decoder.decode(hex(step.wire)), step.headers, `block ${i + 1}`);
    t.deepEqual(decoder.dynamicTable(), step.table, `table after block ${i + 1}`);
    t.is(decoder.dynamicTableSize, step.tableSize, `table size after block ${i + 1}`);
  }
}

/** Appendix C.3-C.6: the same expectations, once for the plain encoding and once for the Huffman one. */
function appendixSeries(
  t: ExecutionContext,
  maxTableSize: number,
  wires: readonly string[],
  headers: readonly (readonly HeaderField[])[],
  tables: readonly (readonly HeaderField[])[],
  sizes: readonly number[],
): void {
  runSeries(
    t,
    maxTableSize,
    wires.map((wire, i) => ({ wire, headers: headers[i]!, table: tables[i]!, tableSize: sizes[i]! })),
  );
}

test('C.2: one representation of each kind', (t) => {
  const cases: readonly (readonly [string, HeaderField, number])[] = [
    ['400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572', ['custom-key', 'custom-header'], 55],
    ['040c 2f73 616d 706c 652f 7061 7468', [':path', '/sample/path'], 0],
    ['1008 7061 7373 776f 7264 0673 6563 7265 74', ['password', 'secret'], 0],
    ['82', [':method', 'GET'], 0],
  ];
  for (const [wire, field, tableSize] of cases) {
    const decoder = new HpackDecoder();
    t.deepEqual(decoder.decode(hex(wire)), [field]);
    t.is(decoder.dynamicTableSize, tableSize);
  }
});

const C3_C4_HEADERS: readonly (readonly HeaderField[])[] = [
  [
    [':method', 'GET'],
    [':scheme', 'http'],
    [':path', '/'],
    [':authority', 'www.example.com'],
  ],
  [
    [':method', 'GET'],
    [':scheme', 'http'],
    [':path', '/'],
    [':authority', 'www.example.com'],
    ['cache-control', 'no-cache'],
  ],
  [
    [':method', 'GET'],
    [':scheme', 'https'],
    [':path', '/index.html'],
    [':authority', 'www.example.com'],
    ['custom-key', 'custom-value'],
  ],
];
const C3_C4_TABLES: readonly (readonly HeaderField[])[] = [
  [[':authority', 'www.example.com']],
  [
    ['cache-control', 'no-cache'],
    [':authority', 'www.example.com'],
  ],
  [
    ['custom-key', 'custom-value'],
    ['cache-control', 'no-cache'],
    [':authority', 'www.example.com'],
  ],
];
const C3_C4_SIZES = [57, 110, 164];

test('C.3: requests without Huffman coding share one decoder', (t) => {
  const wires = [
    '8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d',
    '8286 84be 5808 6e6f 2d63 6163 6865',
    '8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65',
  ];
  appendixSeries(t, 4096, wires, C3_C4_HEADERS, C3_C4_TABLES, C3_C4_SIZES);
});

test('C.4: requests with Huffman coding share one decoder', (t) => {
  const wires = [
    '8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff',
    '8286 84be 5886 a8eb 1064 9cbf',
    '8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf',
  ];
  appendixSeries(t, 4096, wires, C3_C4_HEADERS, C3_C4_TABLES, C3_C4_SIZES);
});

const DATE_21 = 'Mon, 21 Oct 2013 20:13:21 GMT';
const DATE_22 = 'Mon, 21 Oct 2013 20:13:22 GMT';
const LOCATION = 'https://www.example.com';
const COOKIE = 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1';
const C5_C6_HEADERS: readonly (readonly HeaderField[])[] = [
  [
    [':status', '302'],
    ['cache-control', 'private'],
    ['date', DATE_21],
    ['location', LOCATION],
  ],
  [
    [':status', '307'],
    ['cache-control', 'private'],
    ['date', DATE_21],
    ['location', LOCATION],
  ],
  [
    [':status', '200'],
    ['cache-control', 'private'],
    ['date', DATE_22],
    ['location', LOCATION],
    ['content-encoding', 'gzip'],
    ['set-cookie', COOKIE],
  ],
];
const C5_C6_TABLES: readonly (readonly HeaderField[])[] = [
  [
    ['location', LOCATION],
    ['date', DATE_21],
    ['cache-control', 'private'],
    [':status', '302'],
  ],
  [
    [':status', '307'],
    ['location', LOCATION],
    ['date', DATE_21],
    ['cache-control', 'private'],
  ],
  [
    ['set-cookie', COOKIE],
    ['content-encoding', 'gzip'],
    ['date', DATE_22],
  ],
];
const C5_C6_SIZES = [222, 222, 215];

test('C.5: responses without Huffman coding evict from a 256-octet table', (t) => {
  const wires = [
    `4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
     2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
     6c65 2e63 6f6d`,
    '4803 3330 37c1 c0bf',
    `88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
     54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
     5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
     3d31`,
  ];
  appendixSeries(t, 256, wires, C5_C6_HEADERS, C5_C6_TABLES, C5_C6_SIZES);
});

test('C.6: responses with Huffman coding evict from a 256-octet table', (t) => {
  const wires = [
    `4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
     2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3`,
    '4883 640e ffc1 c0bf',
    `88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
     77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
     9587 3160 65c0 03ed 4ee5 b106 3d50 07`,
  ];
  appendixSeries(t, 256, wires, C5_C6_HEADERS, C5_C6_TABLES, C5_C6_SIZES);
});

// --- dynamic table mechanics ---

test('size updates at the start of a block shrink the table and evict; the maximum itself is allowed', (t) => {
  const decoder = new HpackDecoder(4096);
  // Two literal-with-indexing fields: "aaaa: 1" (37 octets), then "bbbb: 2" (37 octets).
  decoder.decode(hex('4004 6161 6161 0131 4004 6262 6262 0132'));
  t.is(decoder.dynamicTableSize, 74);
  // Size update to 40 (5-bit prefix: 0x3f, then 40 - 31 = 9) keeps only the newest entry.
  t.deepEqual(decoder.decode(hex('3f09 be')), [['bbbb', '2']]);
  t.deepEqual(decoder.dynamicTable(), [['bbbb', '2']]);
  // Two updates in a row (0, then 4096 = 0x3f e1 1f) empty the table and restore the full size.
  t.deepEqual(decoder.decode(hex('20 3fe11f 82')), [[':method', 'GET']]);
  t.is(decoder.dynamicTableSize, 0);
  decoder.decode(hex('4004 6161 6161 0131'));
  t.is(decoder.dynamicTableSize, 37);
  // An entry larger than the whole table empties it without being added.
  const big = 'x'.repeat(4100);
  t.deepEqual(decoder.decode(indexedLiteral('x', big)), [['x', big]]);
  t.deepEqual(decoder.dynamicTable(), []);
  // An indexed name from the dynamic table survives the eviction its own insertion causes (§4.4).
  const small = new HpackDecoder(40);
  small.decode(hex('4004 6161 6161 0131')); // "aaaa: 1", 37 octets
  t.deepEqual(small.decode(hex('7e 0132')), [['aaaa', '2']]); // name from index 62
  t.deepEqual(small.dynamicTable(), [['aaaa', '2']]);
});

test('many insertions wrap the ring and keep indices right', (t) => {
  const decoder = new HpackDecoder(4096);
  const inserted: HeaderField[] = [];
  for (let i = 0; i < 500; i++) {
    const field: HeaderField = [`h${i % 37}`, `v${i}`.padEnd(20 + (i % 50), '-')];
    inserted.push(field);
    decoder.decode(indexedLiteral(field[0], field[1]));
    const table = decoder.dynamicTable();
    t.true(decoder.dynamicTableSize <= 4096);
    t.deepEqual(table, inserted.slice(-table.length).reverse());
    // Newest and oldest entries by index.
    t.deepEqual(decoder.decode(indexed(62)), [field]);
    t.deepEqual(decoder.decode(indexed(61 + table.length)), [table[table.length - 1]]);
  }
  t.true(inserted.length > decoder.dynamicTable().length, 'entries were evicted');
  assertCompressionError(t, () => decoder.decode(indexed(62 + decoder.dynamicTable().length)));
});

// --- encoder ---

test('encoder: static pairs become one octet, other fields literal without indexing', (t) => {
  const encoder = new HpackEncoder();
  t.deepEqual(encoder.encode([[':status', '200']]), hex('88'));
  t.deepEqual(encoder.encode([[':method', 'GET']]), hex('82'));
  // ':status: 503' uses name index 8 (4-bit prefix), value "503".
  t.deepEqual(encoder.encode([[':status', '503']]), hex('08 03 353033'));
  // 'www-authenticate' is static index 61: 0x0f then 61 - 15 = 46.
  t.deepEqual(encoder.encode([['www-authenticate', 'x']]), hex('0f2e 0178'));
  // A new name.
  t.deepEqual(encoder.encode([['baggage', '']]), hex('00 07 62616767616765 00'));
  t.deepEqual(encoder.encode([]), Buffer.alloc(0));
});

test('encoder output round-trips through the decoder without touching the dynamic table', (t) => {
  const encoder = new HpackEncoder();
  const decoder = new HpackDecoder();
  const headers: HeaderField[] = [
    [':status', '200'],
    [':status', '401'],
    [':method', 'CONNECT'],
    [':authority', '198.18.0.7:8080'],
    ['forwarded', 'for="198.18.0.1:4000"'],
    ['traceparent', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'],
    ['baggage', 'k8s.namespace=default,service.name=web'],
    ['content-length', '0'],
    ['x-empty', ''],
    ['x-long', 'L'.repeat(200)],
    ['x-longer', 'M'.repeat(70_000 - 200)],
    ['x-latin1', 'caf\u00e9 \u00ff\u0080\t'],
    ['x-'.padEnd(300, 'n'), 'long name'],
  ];
  for (let round = 0; round < 3; round++) {
    const block = encoder.encode(headers);
    t.deepEqual(new HpackDecoder(4096, 1 << 20).decode(block), headers);
    t.throws(() => decoder.decode(block), { instanceOf: H2ProtocolError }, 'beyond 64 KiB');
    t.is(decoder.dynamicTableSize, 0);
  }
  const small = headers.filter(([name]) => name !== 'x-longer');
  t.deepEqual(decoder.decode(encoder.encode(small)), small);
  t.deepEqual(decoder.dynamicTable(), []);
});

// --- interop with an independent encoder: node:http2 (nghttp2) ---

interface CapturedBlock {
  readonly streamId: number;
  readonly block: Buffer;
}

type OutgoingHeaders = http2.OutgoingHttpHeaders;

/**
 * Lets node:http2 (nghttp2's HPACK encoder: Huffman coding, dynamic table, never-indexed fields) send the
 * requests to a raw TCP server, and returns each request's header block as it was on the wire.
 */
async function captureNodeRequests(
  requests: readonly OutgoingHeaders[],
): Promise<{ blocks: CapturedBlock[]; streamIds: number[]; continuations: number }> {
  const blocks: CapturedBlock[] = [];
  let continuations = 0;
  let finish: () => void = () => {};
  let fail: (err: Error) => void = () => {};
  const done = new Promise<void>((resolve, reject) => {
    finish = resolve;
    fail = reject;
  });
  const server = net.createServer((socket) => {
    // An empty SETTINGS frame: keep every default, in particular a 4096-octet header table.
    socket.write(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]));
    let pending = Buffer.alloc(0);
    let prefaceSeen = false;
    let fragments: Buffer[] = [];
    let fragmentStream = 0;
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      if (!prefaceSeen) {
        if (pending.length < 24) return;
        if (pending.subarray(0, 24).toString('latin1') !== 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n') {
          fail(new Error('bad client preface'));
          return;
        }
        prefaceSeen = true;
        pending = pending.subarray(24);
      }
      while (pending.length >= 9) {
        const length = pending.readUIntBE(0, 3);
        if (pending.length < 9 + length) break;
        const type = pending[3];
        const flags = pending[4];
        const streamId = pending.readUInt32BE(5) & 0x7fffffff;
        let payload = pending.subarray(9, 9 + length);
        pending = pending.subarray(9 + length);
        if (type === 1) {
          let padding = 0;
          if (flags & 0x08) {
            padding = payload[0];
            payload = payload.subarray(1);
          }
          if (flags & 0x20) payload = payload.subarray(5);
          payload = payload.subarray(0, payload.length - padding);
          fragments = [payload];
          fragmentStream = streamId;
        } else if (type === 9) {
          continuations++;
          if (streamId !== fragmentStream) fail(new Error('CONTINUATION on another stream'));
          fragments.push(payload);
        } else {
          continue;
        }
        if (flags & 0x04) {
          blocks.push({ streamId, block: Buffer.concat(fragments) });
          fragments = [];
          if (blocks.length === requests.length) finish();
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  const client = http2.connect(`http://127.0.0.1:${port}`);
  client.on('error', (err) => fail(err));
  const timer = setTimeout(() => fail(new Error('timed out waiting for header blocks')), 20_000);
  try {
    const streams = requests.map((headers) => {
      const stream = client.request(headers, { endStream: headers[':method'] !== 'CONNECT' });
      stream.on('error', () => {});
      return stream;
    });
    const streamIds = await Promise.all(
      streams.map(
        (stream) => new Promise<number>((resolve) => stream.once('ready', () => resolve(stream.id!))),
      ),
    );
    await done;
    return { blocks, streamIds, continuations };
  } finally {
    clearTimeout(timer);
    client.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** The fields a headers object stands for, sorted by name; stable, so repeated names keep their order. */
function expectedFields(headers: OutgoingHeaders): HeaderField[] {
  const fields: HeaderField[] = [];
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    for (const one of Array.isArray(value) ? value : [value]) fields.push([name, String(one)]);
  }
  return sortFields(fields);
}

const sortFields = (fields: readonly HeaderField[]): HeaderField[] =>
  [...fields].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));

test('interop: decodes what node:http2 (nghttp2) sends, Huffman and dynamic table included', async (t) => {
  const random = prng(42);
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  const randomText = (length: number): string =>
    Array.from({ length }, () => alphabet[Math.floor(random() * alphabet.length)]).join('');
  // Every octet node:http2 accepts in a value, each among cheap letters so nghttp2 still picks Huffman.
  const allowed: string[] = ['\t'];
  for (let c = 0x20; c <= 0x7e; c++) allowed.push(String.fromCharCode(c));
  for (let c = 0x80; c <= 0xff; c++) allowed.push(String.fromCharCode(c));
  const everyOctet = allowed.map((c) => `eeeeeeeeee${c}`).join('');

  const connect = (n: number): OutgoingHeaders => ({
    ':method': 'CONNECT',
    ':authority': '198.18.0.9:8080',
    forwarded: 'for="198.18.0.1:4000"',
    traceparent: `00-${randomText(32)}-${randomText(16)}-01`,
    baggage: 'k8s.cluster.name=Kubernetes,k8s.namespace.name=default,service.name=web,service.version=v1',
    'x-request-number': String(n),
  });
  const get = (path: string, extra: OutgoingHeaders): OutgoingHeaders => ({
    ':method': 'GET',
    ':scheme': 'http',
    ':authority': 'web.default.svc.cluster.local',
    ':path': path,
    ...extra,
  });
  const fill: OutgoingHeaders = {};
  for (let i = 0; i < 40; i++) fill[`x-fill-${i}`] = randomText(100);
  const refill: OutgoingHeaders = {};
  for (let i = 25; i < 40; i++) refill[`x-fill-${i}`] = fill[`x-fill-${i}`];
  const custom: OutgoingHeaders = {
    'x-repeated': ['one', 'two', 'three'],
    'x-long': randomText(600),
    'user-agent': 'ambit-test/1.0',
    authorization: 'Bearer secret-token-value',
    cookie: 'a=1; b=2',
    [http2.sensitiveHeaders]: ['authorization'],
  };

  const requests: OutgoingHeaders[] = [
    connect(1),
    connect(2),
    get('/first', custom),
    get('/second', custom),
    get('/octets', { 'x-every-octet': everyOctet, 'x-huge': randomText(24_000) }),
    get('/fill', fill),
    get('/refill', refill),
    connect(3),
    get('/third', custom),
  ];
  const { blocks, streamIds, continuations } = await captureNodeRequests(requests);

  t.is(blocks.length, requests.length);
  t.true(continuations > 0, 'the 24 kB header needs CONTINUATION frames');
  const decoder = new HpackDecoder();
  const expectedByStream = new Map(streamIds.map((id, i) => [id, requests[i]]));
  let tableWasUsed = false;
  for (const { streamId, block } of blocks) {
    const sent = expectedByStream.get(streamId);
    if (!sent) return t.fail(`unexpected stream ${streamId}`);
    t.deepEqual(sortFields(decoder.decode(block)), expectedFields(sent), `stream ${streamId}`);
    tableWasUsed ||= decoder.dynamicTable().length > 0;
  }
  t.true(tableWasUsed, 'nghttp2 indexed fields into the dynamic table');

  const byStream = new Map(blocks.map(({ streamId, block }) => [streamId, block]));
  const blockOf = (i: number): Buffer => byStream.get(streamIds[i])!;
  // A repeated request is mostly indexed references.
  t.true(blockOf(3).length * 3 < blockOf(2).length, 'second GET reuses the dynamic table');
  // Values went out Huffman-coded: their plain text is not on the wire.
  t.is(blockOf(0).indexOf('k8s.cluster.name'), -1, 'baggage is Huffman-coded');
  t.is(blockOf(4).indexOf('eeeeeeeeee'), -1, 'the every-octet value is Huffman-coded');
  // The fill request overflows the 4096-octet table, so both sides must have evicted in step.
  t.true(decoder.dynamicTableSize <= 4096);
});

// --- malformed input ---

test('malformed blocks throw H2ProtocolError(9)', (t) => {
  const cases: readonly (readonly [string, string, number?])[] = [
    ['ff', 'truncated integer after a full prefix'],
    ['ff80', 'truncated integer in the continuation'],
    ['ff ffffffff0f', 'integer above 2^31'],
    ['ff 8080808080 00', 'too many continuation octets'],
    ['80', 'index 0'],
    ['be', 'index 62 with an empty dynamic table'],
    ['ff 8001', 'index far beyond the tables'],
    ['7f 00 0161', 'literal with an indexed name beyond the tables'],
    ['40', 'literal without a name'],
    ['40 05 6162', 'truncated name'],
    ['00 0161', 'literal without a value'],
    ['00 0161 0568656c6c', 'truncated value'],
    ['00 0161 7f ff', 'value length truncated'],
    ['00 0161 7f e1ff ff07', 'value length beyond the block'],
    ['00 0161 81ff', 'Huffman padding over 7 bits'],
    ['00 0161 8100', 'Huffman padding not all ones'],
    ['00 0161 85fffffffffc', 'Huffman EOS inside the string'],
    ['00 81ff 0161', 'Huffman padding in a name'],
    ['3fe21f', 'table size update to 4097 above the 4096 maximum'],
    ['3f e1ff ff07', 'table size update to a huge value'],
    ['82 20', 'table size update after a header field'],
    ['82 3f09', 'table size update at the end of a block'],
    ['21', 'table size update to 1 above a maximum of 0', 0],
  ];
  for (const [wire, why, maxTableSize] of cases) {
    const decoder = new HpackDecoder(maxTableSize ?? 4096);
    assertCompressionError(t, () => decoder.decode(hex(wire)), why);
    // After a compression error the table state is unknown: the decoder must not be reused.
    assertCompressionError(t, () => decoder.decode(hex('82')), `${why}: reuse`);
  }
  t.deepEqual(new HpackDecoder(4096).decode(hex('3fe11f')), [], 'an update to exactly 4096 is fine');
  t.deepEqual(new HpackDecoder(0).decode(hex('20 82')), [[':method', 'GET']]);
});

test('the decoded header list is bounded; the decoder stays in step and usable afterwards', (t) => {
  const decoder = new HpackDecoder();
  // "x" = 4000 octets, indexed (4033 octets of table), then referenced 20 times: 80 kB from 30 octets.
  const value = 'v'.repeat(4000);
  const insert = indexedLiteral('x', value);
  t.is(decoder.decode(insert).length, 1);
  const bomb = Buffer.alloc(20, 0xbe);
  assertCompressionError(t, () => decoder.decode(bomb));
  t.deepEqual(decoder.decode(hex('be')), [['x', value]]);
  // A larger limit lets the same block through.
  const roomy = new HpackDecoder(4096, 100_000);
  roomy.decode(insert);
  t.is(roomy.decode(bomb).length, 20);
});

test('decodes a Uint8Array view with an offset into a larger buffer', (t) => {
  const backing = new Uint8Array(64).fill(0xee);
  const wire = hex('8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff');
  backing.set(wire, 10);
  const view = new Uint8Array(backing.buffer, 10, wire.length);
  t.deepEqual(new HpackDecoder().decode(view), C3_C4_HEADERS[0]);
});

test('fuzz: random and mutated blocks only ever throw H2ProtocolError', (t) => {
  const random = prng(1234);
  const seeds = [
    hex('8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff'),
    hex('8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf'),
    hex('4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6'),
    hex('3fe11f 4004 6161 6161 0131 be 1008 7061 7373 776f 7264 0673 6563 7265 74'),
  ];
  let decoded = 0;
  let rejected = 0;
  for (let i = 0; i < 20_000; i++) {
    let block: Buffer;
    if (i % 2 === 0) {
      block = Buffer.alloc(Math.floor(random() * 48));
      for (let j = 0; j < block.length; j++) block[j] = Math.floor(random() * 256);
    } else {
      block = Buffer.from(seeds[i % seeds.length]);
      const edits = 1 + Math.floor(random() * 3);
      for (let e = 0; e < edits; e++) block[Math.floor(random() * block.length)] = Math.floor(random() * 256);
      if (random() < 0.3) block = block.subarray(0, Math.floor(random() * block.length));
    }
    const decoder = new HpackDecoder(random() < 0.5 ? 4096 : 64);
    try {
      for (const [name, value] of decoder.decode(block)) {
        if (typeof name !== 'string' || typeof value !== 'string') return t.fail('non-string field');
      }
      t.true(decoder.dynamicTableSize <= 4096);
      decoded++;
    } catch (err) {
      if (!(err instanceof H2ProtocolError) || err.h2Code !== 9) {
        return t.fail(`unexpected ${String(err)} for ${block.toString('hex')}`);
      }
      rejected++;
    }
  }
  t.true(decoded > 0 && rejected > 0);
});
