// Thin DER helpers over forge.asn1, so certificate code reads as structure and deals in Buffers rather
// than forge's binary strings.

import { createRequire } from 'node:module';
import type forge from 'node-forge';

// Only forge's ASN.1 module (with its util and OIDs), not the package's index: that one loads all of
// forge (its TLS, PKCS#7/#12, ciphers, RSA, SSH), about 9 MB of RSS in every process that signs or reads
// a certificate, a waypoint's 60 MB included (issue 15). Certificates are signed by node:crypto.
const load = createRequire(import.meta.url);
const asn1 = load('node-forge/lib/asn1.js') as typeof forge.asn1;
const util = load('node-forge/lib/util.js') as typeof forge.util;
export type Asn1 = forge.asn1.Asn1;

const U = asn1.Class.UNIVERSAL;
const T = asn1.Type;

const bin = (bytes: Buffer): string => bytes.toString('binary');

export const seq = (...items: Asn1[]): Asn1 => asn1.create(U, T.SEQUENCE, true, items);
export const set = (...items: Asn1[]): Asn1 => asn1.create(U, T.SET, true, items);
export const oid = (dotted: string): Asn1 => asn1.create(U, T.OID, false, asn1.oidToDer(dotted).getBytes());
export const bool = (value: boolean): Asn1 => asn1.create(U, T.BOOLEAN, false, value ? '\xff' : '\x00');
export const smallInt = (n: number): Asn1 =>
  asn1.create(U, T.INTEGER, false, asn1.integerToDer(n).getBytes());
/** A non-negative INTEGER from its big-endian magnitude; the caller keeps the top bit clear. */
export const int = (magnitude: Buffer): Asn1 => asn1.create(U, T.INTEGER, false, bin(magnitude));
export const octets = (bytes: Buffer): Asn1 => asn1.create(U, T.OCTETSTRING, false, bin(bytes));
export const utf8 = (text: string): Asn1 => asn1.create(U, T.UTF8, false, util.encodeUtf8(text));
export const bits = (bytes: Buffer, unusedBits = 0): Asn1 =>
  asn1.create(U, T.BITSTRING, false, String.fromCharCode(unusedBits) + bin(bytes));

/** X.509 (RFC 5280 §4.1.2.5): UTCTime through 2049, GeneralizedTime from 2050 on. */
export const time = (date: Date): Asn1 =>
  date.getUTCFullYear() < 2050
    ? asn1.create(U, T.UTCTIME, false, asn1.dateToUtcTime(date))
    : asn1.create(U, T.GENERALIZEDTIME, false, asn1.dateToGeneralizedTime(date));

/** `[tag] EXPLICIT`: a constructed context-specific wrapper. */
export const explicit = (tag: number, inner: Asn1): Asn1 =>
  asn1.create(asn1.Class.CONTEXT_SPECIFIC, tag as forge.asn1.Type, true, [inner]);

/** `[tag] IMPLICIT` over a primitive type: the context tag replaces the universal one. */
export const implicit = (tag: number, bytes: Buffer | string): Asn1 =>
  asn1.create(
    asn1.Class.CONTEXT_SPECIFIC,
    tag as forge.asn1.Type,
    false,
    typeof bytes === 'string' ? bytes : bin(bytes),
  );

export const encode = (node: Asn1): Buffer => Buffer.from(asn1.toDer(node).getBytes(), 'binary');

// forge's typings only admit a boolean, but the runtime takes options; decodeBitStrings must be off so a
// BIT STRING (a public key, a signature) stays the opaque bytes it is and re-encodes unchanged.
type FromDer = (
  bytes: string,
  options: { strict: boolean; parseAllBytes: boolean; decodeBitStrings: boolean },
) => Asn1;

export const decode = (der: Buffer): Asn1 =>
  (asn1.fromDer as unknown as FromDer)(bin(der), {
    strict: true,
    parseAllBytes: true,
    decodeBitStrings: false,
  });

export const isContext = (node: Asn1, tag: number): boolean =>
  node.tagClass === asn1.Class.CONTEXT_SPECIFIC && node.type === (tag as forge.asn1.Type);

export const children = (node: Asn1 | undefined): Asn1[] =>
  node && Array.isArray(node.value) ? node.value : [];

/** The bytes of a primitive node (for a BIT STRING, including the leading unused-bits octet). */
export const bytesOf = (node: Asn1 | undefined): Buffer =>
  node && typeof node.value === 'string' ? Buffer.from(node.value, 'binary') : Buffer.alloc(0);

export const oidOf = (node: Asn1 | undefined): string | undefined =>
  node && node.type === T.OID && typeof node.value === 'string' ? asn1.derToOid(node.value) : undefined;
