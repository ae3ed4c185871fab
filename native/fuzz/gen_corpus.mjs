// Writes the record target's seed corpus (corpus/record/), in record_fuzz.c's input format, sealed with its
// fixed secrets (0x11 x 32 the client's, 0x22 x 32 the server's; TLS_AES_128_GCM_SHA256): sealed records
// must be made with the key, so they are generated rather than hand-written. Run: node gen_corpus.mjs
import { createCipheriv, createHmac } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const out = join(dirname(fileURLToPath(import.meta.url)), 'corpus', 'record');
mkdirSync(out, { recursive: true });

function expandLabel(secret, label, len) {
  const full = Buffer.from(`tls13 ${label}`, 'latin1');
  const info = Buffer.concat([Buffer.from([len >> 8, len & 0xff, full.length]), full, Buffer.from([0, 1])]);
  return createHmac('sha256', secret).update(info).digest().subarray(0, len);
}

/** The peer's sending keys: the client's secret when the target is the server. */
class Tx {
  constructor(secret) {
    this.set(secret);
  }
  set(secret) {
    this.secret = secret;
    this.key = expandLabel(secret, 'key', 16);
    this.iv = expandLabel(secret, 'iv', 12);
    this.seq = 0n;
  }
  update() {
    this.set(expandLabel(this.secret, 'traffic upd', 32));
  }
  seal(type, content, padding = 0) {
    const inner = Buffer.concat([content, Buffer.from([type]), Buffer.alloc(padding)]);
    const header = Buffer.from([23, 3, 3, 0, 0]);
    header.writeUInt16BE(inner.length + 16, 3);
    const nonce = Buffer.from(this.iv);
    const s = Buffer.alloc(8);
    s.writeBigUInt64BE(this.seq++);
    for (let i = 0; i < 8; i++) nonce[4 + i] ^= s[i];
    const c = createCipheriv('aes-128-gcm', this.key, nonce);
    c.setAAD(header);
    return Buffer.concat([header, c.update(inner), c.final(), c.getAuthTag()]);
  }
}

const CLIENT = Buffer.alloc(32, 0x11);
const SERVER = Buffer.alloc(32, 0x22);
const ku = (r) => Buffer.from([24, 0, 0, 1, r]);
const FIN = 8;

/** A raw-mode seed: option byte (server, AES-128, raw, pieces of 61 * (n + 1) bytes), then the bytes. */
const raw = (opts, ...records) => Buffer.concat([Buffer.from([opts]), ...records]);
/** A sealed-mode seed: the harness seals each [type, content, padding] itself. */
const sealed = (opts, ...recs) =>
  Buffer.concat([
    Buffer.from([opts | 4]),
    ...recs.map(([type, content, pad = 0]) => {
      const h = Buffer.from([type, content.length >> 8, content.length & 0xff, pad]);
      return Buffer.concat([h, content]);
    }),
  ]);

const seeds = {};
{
  const tx = new Tx(CLIENT);
  seeds['raw-data'] = raw(0xf0, tx.seal(23, Buffer.from('hello')), tx.seal(23, Buffer.alloc(16384, 0x61)));
}
{
  const tx = new Tx(CLIENT);
  const a = tx.seal(23, Buffer.from('before'));
  const b = tx.seal(22, ku(1));
  tx.update();
  seeds['raw-keyupdate'] = raw(0x30, a, b, tx.seal(23, Buffer.from('after')));
}
{
  const tx = new Tx(CLIENT);
  seeds['raw-close-notify'] = raw(
    0x00 | FIN,
    tx.seal(23, Buffer.from('x')),
    tx.seal(21, Buffer.from([1, 0])),
  );
}
{
  const tx = new Tx(CLIENT);
  seeds['raw-fatal-alert'] = raw(0x00, tx.seal(21, Buffer.from([2, 40])));
}
{
  const tx = new Tx(CLIENT);
  seeds['raw-truncated'] = raw(
    0x10 | FIN,
    tx.seal(23, Buffer.from('whole')),
    tx.seal(23, Buffer.alloc(300, 1)).subarray(0, 100),
  );
}
{
  // The target as a client: a ticket (ignored), then data; the server's secret seals.
  const tx = new Tx(SERVER);
  const nst = Buffer.from([4, 0, 0, 13, 0, 0, 0, 60, 1, 2, 3, 4, 0, 1, 0xaa, 0, 0]);
  seeds['raw-client-ticket'] = raw(0x01, tx.seal(22, nst), tx.seal(23, Buffer.from('data')));
}
{
  const tx = new Tx(CLIENT);
  seeds['raw-padded'] = raw(0x20, tx.seal(23, Buffer.from('padded'), 200));
}
seeds['sealed-data-keyupdate'] = sealed(
  0x00,
  [23, Buffer.from('hello')],
  [22, ku(1)],
  [23, Buffer.from('after')],
);
seeds['sealed-split-keyupdate'] = sealed(
  0x00,
  [22, ku(0).subarray(0, 3)],
  [22, ku(0).subarray(3)],
  [23, Buffer.from('x')],
);
seeds['sealed-two-keyupdates'] = sealed(0x00, [22, Buffer.concat([ku(0), ku(0)])]);
seeds['sealed-alerts'] = sealed(0x00 | FIN, [21, Buffer.from([1, 90])], [21, Buffer.from([1, 0])]);
seeds['sealed-oversized'] = sealed(0x00, [23, Buffer.alloc(16385, 0x62)]);
seeds['sealed-no-type'] = sealed(0x00, [0, Buffer.alloc(4)]);
seeds['sealed-keyupdate-storm'] = sealed(0x00, ...Array.from({ length: 120 }, () => [22, ku(1)]));
seeds['sealed-client-ticket'] = sealed(
  0x01,
  [22, Buffer.from([4, 0, 0, 4, 0, 0, 0, 0])],
  [23, Buffer.from('d')],
);
seeds['sealed-aes256'] = sealed(0x02, [23, Buffer.from('aes-256')], [22, ku(1)], [23, Buffer.from('z')]);

for (const [name, bytes] of Object.entries(seeds)) writeFileSync(join(out, name), bytes);
console.log(`${Object.keys(seeds).length} seeds in ${out}`);
