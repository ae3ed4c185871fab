// The CA abstraction the certificate manager works against, and the built-in (embedded) CA.

import { type KeyObject, X509Certificate, createPrivateKey, generateKeyPair } from 'node:crypto';
import { promisify } from 'node:util';
import { CaError } from '../../lib/errors.js';
import { type Logger, silentLogger } from '../../lib/log.js';
import { type RootFiles, type RootPems, loadOrCreateRootFiles } from './ca-store.js';
import { isValidTrustDomain, parseSpiffeId, trustDomainId, uriSans } from './spiffe.js';
import {
  type IssuerFields,
  KeyUsage,
  authorityKeyIdentifier,
  basicConstraints,
  buildCertificate,
  extKeyUsageServerClient,
  issuerFields,
  keyIdentifier,
  keyUsage,
  name,
  randomSerial,
  subjectKeyIdentifier,
  toPem,
  uriSubjectAltName,
} from './x509.js';

export interface IssuedCertificate {
  /** The leaf followed by any intermediates, PEM. */
  certPem: string;
  keyPem: string;
  /** Upper-case hex, as `X509Certificate.serialNumber` prints it. */
  serial: string;
  notBefore: Date;
  notAfter: Date;
  /** The SPIFFE ID the certificate was issued for. */
  identity: string;
}

export interface CertificateAuthority {
  readonly kind: 'embedded' | 'consul';
  /** PEM roots to trust (more than one during a root rotation). */
  roots(): Promise<string[]>;
  issue(identity: string /* SPIFFE ID */, ttlMs: number): Promise<IssuedCertificate>;
}

const generateEcKeyPair = promisify(generateKeyPair);
const newKeyPair = () => generateEcKeyPair('ec', { namedCurve: 'prime256v1' });

const ROOT_YEARS = 10;
// Leaves start a minute in the past so a peer whose clock runs slightly behind still accepts them.
const CLOCK_SKEW_MS = 60_000;
const ROOT_EXPIRY_WARNING_MS = 90 * 24 * 3600_000;

interface Root {
  cert: X509Certificate;
  certPem: string;
  key: KeyObject;
  issuer: IssuerFields;
}

export class EmbeddedCa implements CertificateAuthority {
  readonly kind = 'embedded' as const;
  readonly trustDomain: string;
  private readonly root: Root;

  private constructor(trustDomain: string, root: Root) {
    this.trustDomain = trustDomain;
    this.root = root;
  }

  /**
   * The CA kept in `dir` (`root-cert.pem`, `root-key.pem`), created there on first use. Copying the
   * directory to another host makes that host's daemon part of the same CA.
   */
  static async loadOrCreate(
    dir: string,
    trustDomain: string,
    logger: Logger = silentLogger(),
  ): Promise<EmbeddedCa> {
    if (!isValidTrustDomain(trustDomain)) {
      throw new CaError(
        `invalid trust domain "${trustDomain}": use lowercase letters, digits, '.', '-' and '_'`,
      );
    }
    const stored = await loadOrCreateRootFiles(dir, () => createRoot(trustDomain), logger);
    const root = parseRoot(stored, trustDomain);
    const fields = {
      dir,
      trustDomain,
      fingerprint: root.cert.fingerprint256,
      notAfter: new Date(root.cert.validTo).toISOString(),
    };
    logger.info(fields, stored.created ? 'created embedded CA' : 'loaded embedded CA');
    if (new Date(root.cert.validTo).getTime() - Date.now() < ROOT_EXPIRY_WARNING_MS) {
      logger.warn(fields, 'embedded CA root expires soon; create a new CA and distribute it');
    }
    return new EmbeddedCa(trustDomain, root);
  }

  async roots(): Promise<string[]> {
    return [this.root.certPem];
  }

  async issue(identity: string, ttlMs: number): Promise<IssuedCertificate> {
    const parts = parseSpiffeId(identity);
    if (!parts) {
      throw new CaError(
        `cannot issue for "${identity}": not a SPIFFE ID of the form spiffe://<td>/ns/<ns>/dc/<dc>/svc/<svc>`,
      );
    }
    if (parts.trustDomain !== this.trustDomain) {
      throw new CaError(`cannot issue for ${identity}: outside this CA's trust domain ${this.trustDomain}`);
    }
    if (!(ttlMs > 0) || !Number.isFinite(ttlMs)) throw new CaError(`invalid certificate TTL ${ttlMs} ms`);

    const now = Date.now();
    const notBefore = wholeSeconds(now - CLOCK_SKEW_MS);
    // Never outlive the root: a leaf it no longer vouches for would fail anyway, and later, confusingly.
    const rootNotAfter = new Date(this.root.cert.validTo).getTime();
    const notAfter = new Date(Math.min(Math.ceil((now + ttlMs) / 1000) * 1000, rootNotAfter));
    if (notAfter.getTime() <= now)
      throw new CaError(`the embedded CA root expired at ${notAfter.toISOString()}`);

    const { publicKey, privateKey } = await newKeyPair();
    const serial = randomSerial();
    const der = await signLeaf({
      serial,
      issuer: this.root.issuer,
      signingKey: this.root.key,
      // A readable subject; the identity that counts is the URI SAN, so CN is cut to X.520's 64 chars.
      commonName: parts.service.slice(0, 64),
      publicKey,
      uris: [identity],
      notBefore,
      notAfter,
    });
    return {
      certPem: toPem(der),
      keyPem: pkcs8Pem(privateKey),
      serial: serial.toString('hex').toUpperCase(),
      notBefore,
      notAfter,
      identity,
    };
  }
}

export interface LeafSpec {
  readonly serial: Buffer;
  readonly issuer: IssuerFields;
  readonly signingKey: KeyObject;
  readonly commonName: string;
  readonly publicKey: KeyObject;
  /** The URI SANs: the one SPIFFE ID for anything this CA issues (none: no SAN extension at all). */
  readonly uris: readonly string[];
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/**
 * A mesh leaf certificate (DER) as the embedded CA issues it. `issue` is the only caller that checks what
 * it signs; tests call this directly to forge what a CA that signs more than it should would hand out.
 */
export function signLeaf(leaf: LeafSpec): Promise<Buffer> {
  return buildCertificate({
    serial: leaf.serial,
    issuer: leaf.issuer.subject,
    subject: name(leaf.commonName),
    notBefore: leaf.notBefore,
    notAfter: leaf.notAfter,
    publicKey: leaf.publicKey,
    signingKey: leaf.signingKey,
    extensions: [
      basicConstraints(false),
      keyUsage([KeyUsage.digitalSignature, KeyUsage.keyEncipherment]),
      extKeyUsageServerClient(),
      subjectKeyIdentifier(keyIdentifier(leaf.publicKey)),
      ...(leaf.issuer.keyId ? [authorityKeyIdentifier(leaf.issuer.keyId)] : []),
      ...(leaf.uris.length > 0 ? [uriSubjectAltName([...leaf.uris], false)] : []),
    ],
  });
}

async function createRoot(trustDomain: string): Promise<RootPems> {
  const { publicKey, privateKey } = await newKeyPair();
  const now = Date.now();
  const notAfter = new Date(wholeSeconds(now));
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + ROOT_YEARS);
  const subject = name(`Ambit CA ${trustDomain}`);
  const der = await buildCertificate({
    serial: randomSerial(),
    issuer: subject,
    subject,
    notBefore: wholeSeconds(now - CLOCK_SKEW_MS),
    notAfter,
    publicKey,
    signingKey: privateKey,
    extensions: [
      basicConstraints(true),
      keyUsage([KeyUsage.keyCertSign, KeyUsage.cRLSign]),
      subjectKeyIdentifier(keyIdentifier(publicKey)),
      uriSubjectAltName([trustDomainId(trustDomain)], false),
    ],
  });
  return { certPem: toPem(der), keyPem: pkcs8Pem(privateKey) };
}

/** Checks a stored root is usable by this daemon before anything is issued from it. */
function parseRoot(files: RootPems & RootFiles, trustDomain: string): Root {
  const pems = files;
  let key: KeyObject;
  try {
    key = createPrivateKey(pems.keyPem);
  } catch (err) {
    throw new CaError(`${files.keyFile} does not hold a PEM private key`, { cause: err });
  }
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pems.certPem);
  } catch (err) {
    throw new CaError(`${files.certFile} does not hold a PEM certificate`, { cause: err });
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new CaError(`${files.keyFile} is not an ECDSA P-256 key; the embedded CA signs only with P-256`);
  }
  if (!cert.checkPrivateKey(key)) {
    throw new CaError(`${files.keyFile} is not the key of ${files.certFile}`);
  }
  if (!cert.ca) throw new CaError(`${files.certFile} is not a CA certificate`);
  if (!uriSans(cert).includes(trustDomainId(trustDomain))) {
    const found = uriSans(cert).join(', ') || 'no trust domain';
    throw new CaError(
      `${files.certFile} is the root of ${found}, but this daemon's trust domain is ${trustDomain}`,
    );
  }
  if (new Date(cert.validTo).getTime() <= Date.now()) {
    throw new CaError(`${files.certFile} expired at ${new Date(cert.validTo).toISOString()}`);
  }
  return { cert, certPem: pems.certPem, key, issuer: issuerFields(cert.raw) };
}

// X.509 times have whole seconds; rounding here keeps the Dates we report equal to the certificate's.
const wholeSeconds = (ms: number): Date => new Date(Math.floor(ms / 1000) * 1000);

const pkcs8Pem = (key: KeyObject): string => key.export({ type: 'pkcs8', format: 'pem' }).toString();
