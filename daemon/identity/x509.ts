// Encodes and signs X.509 v3 certificates with ECDSA P-256. node-forge's pki signs only RSA, so the
// structure is written with forge.asn1 and signed by node:crypto.

import { type KeyObject, createHash, randomBytes, sign } from 'node:crypto';
import {
  type Asn1,
  bits,
  bool,
  bytesOf,
  children,
  decode,
  encode,
  explicit,
  implicit,
  int,
  isContext,
  octets,
  oid,
  oidOf,
  seq,
  set,
  smallInt,
  time,
  utf8,
} from './der.js';

const OID = {
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  commonName: '2.5.4.3',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

/** KeyUsage bit positions (RFC 5280 §4.2.1.3). */
export const KeyUsage = {
  digitalSignature: 0,
  keyEncipherment: 2,
  keyCertSign: 5,
  cRLSign: 6,
} as const;

export interface CertificateSpec {
  serial: Buffer;
  /** DER of the issuer's Name, copied byte for byte from the issuer certificate so chains match. */
  issuer: Buffer;
  subject: Buffer;
  notBefore: Date;
  notAfter: Date;
  publicKey: KeyObject;
  /** Who signs: the subject's own key for a root, the issuer's otherwise. */
  signingKey: KeyObject;
  extensions: Asn1[];
}

// ecdsa-with-SHA256 takes no parameters: RFC 5758 §3.2 says the field MUST be absent (not NULL).
const signatureAlgorithm = (): Asn1 => seq(oid(OID.ecdsaWithSha256));

export async function buildCertificate(spec: CertificateSpec): Promise<Buffer> {
  const tbs = seq(
    explicit(0, smallInt(2)), // v3
    int(spec.serial),
    signatureAlgorithm(),
    decode(spec.issuer),
    seq(time(spec.notBefore), time(spec.notAfter)),
    decode(spec.subject),
    decode(spki(spec.publicKey)),
    explicit(3, seq(...spec.extensions)),
  );
  const tbsDer = encode(tbs);
  const signature = await signAsync(tbsDer, spec.signingKey);
  return encode(seq(decode(tbsDer), signatureAlgorithm(), bits(signature)));
}

export const toPem = (der: Buffer, label = 'CERTIFICATE'): string => {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
};

/** 16 random bytes as a positive INTEGER that DER encodes in exactly 16 octets. */
export function randomSerial(): Buffer {
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40;
  return serial;
}

/** A Name with a single CN, or the empty Name (a SEQUENCE of no RDNs). */
export function name(commonName?: string): Buffer {
  if (commonName === undefined) return encode(seq());
  return encode(seq(set(seq(oid(OID.commonName), utf8(commonName)))));
}

const spki = (key: KeyObject): Buffer => key.export({ type: 'spki', format: 'der' });

/** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits. */
export function keyIdentifier(key: KeyObject): Buffer {
  const subjectPublicKey = children(decode(spki(key)))[1];
  return createHash('sha1').update(bytesOf(subjectPublicKey).subarray(1)).digest();
}

const extension = (id: string, critical: boolean, value: Asn1): Asn1 =>
  critical ? seq(oid(id), bool(true), octets(encode(value))) : seq(oid(id), octets(encode(value)));

export const basicConstraints = (ca: boolean): Asn1 =>
  // cA defaults to FALSE and DER omits defaults, so a leaf's value is the empty SEQUENCE.
  extension(OID.basicConstraints, true, ca ? seq(bool(true)) : seq());

export function keyUsage(positions: number[]): Asn1 {
  const highest = Math.max(...positions);
  const bytes = Buffer.alloc(Math.floor(highest / 8) + 1);
  for (const p of positions) bytes[p >> 3]! |= 0x80 >> (p & 7);
  // DER drops trailing zero bits of a named bit list; the first octet says how many were dropped.
  return extension(OID.keyUsage, true, bits(bytes, 7 - (highest & 7)));
}

export const extKeyUsageServerClient = (): Asn1 =>
  extension(OID.extKeyUsage, false, seq(oid(OID.serverAuth), oid(OID.clientAuth)));

export const subjectKeyIdentifier = (keyId: Buffer): Asn1 =>
  extension(OID.subjectKeyIdentifier, false, octets(keyId));

export const authorityKeyIdentifier = (keyId: Buffer): Asn1 =>
  extension(OID.authorityKeyIdentifier, false, seq(implicit(0, keyId)));

/** URI SANs (ASCII: IA5String); critical when the subject is empty (RFC 5280 §4.2.1.6). */
export const uriSubjectAltName = (uris: string[], critical: boolean): Asn1 =>
  extension(OID.subjectAltName, critical, seq(...uris.map((uri) => implicit(6, uri))));

export interface IssuerFields {
  /** DER of the certificate's subject Name, to become the issuer of what it signs. */
  subject: Buffer;
  /** Its subjectKeyIdentifier, if it has one, to become the authorityKeyIdentifier of what it signs. */
  keyId: Buffer | undefined;
}

/** What a certificate contributes to the certificates it signs. */
export function issuerFields(certDer: Buffer): IssuerFields {
  const tbs = children(children(decode(certDer))[0]);
  const fields = tbs[0] && isContext(tbs[0], 0) ? tbs.slice(1) : tbs;
  const subject = fields[4];
  if (!subject) throw new Error('certificate has no subject');
  const extensions = children(children(fields.find((f) => isContext(f, 3)))[0]);
  let keyId: Buffer | undefined;
  for (const ext of extensions) {
    const parts = children(ext);
    if (oidOf(parts[0]) === OID.subjectKeyIdentifier)
      keyId = bytesOf(decode(bytesOf(parts[parts.length - 1])));
  }
  return { subject: encode(subject), keyId };
}

function signAsync(data: Buffer, key: KeyObject): Promise<Buffer> {
  // The callback form runs in libuv's pool, keeping signing off the event loop.
  return new Promise((resolve, reject) => {
    sign('sha256', data, key, (err, signature) => (err ? reject(err) : resolve(signature)));
  });
}
