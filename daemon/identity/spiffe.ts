// SPIFFE IDs in Consul's form, and reading them back out of certificates.

import { X509Certificate } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';

export interface SpiffeParts {
  trustDomain: string;
  /**
   * Consul Enterprise admin partition; absent for the default one, which Consul leaves out of the ID
   * (`connect.SpiffeIDService.uriPath`).
   */
  partition?: string | undefined;
  namespace: string;
  datacenter: string;
  service: string;
}

const SCHEME = 'spiffe://';
// SPIFFE spec: trust domains are lowercase; path segments allow a few more characters. Both are ASCII,
// which also keeps them encodable as the IA5String a URI SAN requires.
const TRUST_DOMAIN = /^[a-z0-9._-]+$/;
const SEGMENT = /^[A-Za-z0-9._-]+$/;

export const isValidTrustDomain = (td: string): boolean => TRUST_DOMAIN.test(td);

export const isValidSegment = (segment: string): boolean =>
  SEGMENT.test(segment) && segment !== '.' && segment !== '..';

/**
 * `spiffe://<td>[/ap/<partition>]/ns/<ns>/dc/<dc>/svc/<service>`, `/ap/` only for a partition other than
 * `default`, as Consul writes them. Throws RangeError on parts that could not round-trip
 * through {@link parseSpiffeId}: names reach here already validated by configuration, so this is a bug.
 */
export function spiffeId(p: SpiffeParts): string {
  if (!isValidTrustDomain(p.trustDomain))
    throw new RangeError(`invalid SPIFFE trust domain: ${p.trustDomain}`);
  const partition = p.partition !== undefined && p.partition !== 'default' ? p.partition : undefined;
  for (const [name, value] of [
    ['partition', partition ?? 'default'],
    ['namespace', p.namespace],
    ['datacenter', p.datacenter],
    ['service', p.service],
  ] as const) {
    if (!isValidSegment(value)) throw new RangeError(`invalid SPIFFE ${name}: ${value}`);
  }
  const ap = partition ? `/ap/${partition}` : '';
  return `${SCHEME}${p.trustDomain}${ap}/ns/${p.namespace}/dc/${p.datacenter}/svc/${p.service}`;
}

/**
 * The parts of a Consul-form SPIFFE ID, or undefined for anything else (including other SPIFFE IDs). As
 * Consul's `^(?:/ap/([^/]+))?/ns/…/dc/…/svc/…$` (agent/connect/uri.go): `partition` is set only when the
 * ID names one.
 */
export function parseSpiffeId(uri: string): SpiffeParts | undefined {
  if (!uri.startsWith(SCHEME)) return undefined;
  const parts = uri.slice(SCHEME.length).split('/');
  let partition: string | undefined;
  if (parts.length === 9 && parts[1] === 'ap') {
    partition = parts[2]!;
    if (!isValidSegment(partition)) return undefined;
    parts.splice(1, 2);
  }
  if (parts.length !== 7) return undefined;
  const [trustDomain, ns, namespace, dc, datacenter, svc, service] = parts as [
    string,
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  if (ns !== 'ns' || dc !== 'dc' || svc !== 'svc') return undefined;
  if (!isValidTrustDomain(trustDomain)) return undefined;
  if (![namespace, datacenter, service].every(isValidSegment)) return undefined;
  return partition === undefined
    ? { trustDomain, namespace, datacenter, service }
    : { trustDomain, partition, namespace, datacenter, service };
}

/**
 * The trust domain of any SPIFFE ID (the authority part), Consul's form or not; undefined for anything that
 * is not a SPIFFE ID with a valid trust domain.
 */
export function trustDomainOf(uri: string): string | undefined {
  if (!uri.startsWith(SCHEME)) return undefined;
  const rest = uri.slice(SCHEME.length);
  const end = rest.indexOf('/');
  const td = end < 0 ? rest : rest.slice(0, end);
  return isValidTrustDomain(td) ? td : undefined;
}

/** The trust domain's own ID, carried by the root certificate. */
export const trustDomainId = (trustDomain: string): string => `${SCHEME}${trustDomain}`;

/** The `URI:` subject alternative names of a peer certificate (from a TLS socket) or a parsed certificate. */
export function uriSans(cert: PeerCertificate | X509Certificate): string[] {
  const text = cert instanceof X509Certificate ? cert.subjectAltName : cert.subjectaltname;
  if (!text) return [];
  return splitAltNames(text)
    .filter((entry) => entry.startsWith('URI:'))
    .map((entry) => entry.slice('URI:'.length));
}

/**
 * Splits Node's `subjectaltname` text. Node writes entries containing `,`, quotes, backslashes or control
 * characters as a JSON string *including* the prefix (`"URI:a,b"`), precisely so that a crafted SAN such
 * as `x, URI:spiffe://victim` cannot pose as a second entry; splitting naively on ", " would undo that.
 * A quote after the prefix (`URI:"a,b"`) is accepted too, in case another runtime formats it that way.
 * Malformed text ends the list rather than guessing.
 */
export function splitAltNames(text: string): string[] {
  const entries: string[] = [];
  let i = 0;
  while (i < text.length) {
    const prefixed = /^[A-Za-z ]+:"/.exec(text.slice(i, i + 40));
    const quoteAt = text[i] === '"' ? i : prefixed ? i + prefixed[0].length - 1 : -1;
    let end: number;
    if (quoteAt >= 0) {
      end = closingQuote(text, quoteAt);
      if (end < 0) break;
      let value: unknown;
      try {
        value = JSON.parse(text.slice(quoteAt, end + 1));
      } catch {
        break;
      }
      if (typeof value !== 'string') break;
      entries.push(text.slice(i, quoteAt) + value);
      end += 1;
    } else {
      end = text.indexOf(', ', i);
      if (end < 0) end = text.length;
      entries.push(text.slice(i, end));
    }
    if (end === text.length) break;
    if (!text.startsWith(', ', end)) break;
    i = end + 2;
  }
  return entries;
}

function closingQuote(text: string, open: number): number {
  for (let j = open + 1; j < text.length; j++) {
    if (text[j] === '\\') j++;
    else if (text[j] === '"') return j;
  }
  return -1;
}
