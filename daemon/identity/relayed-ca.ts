import type { CertificateAuthority, IssuedCertificate } from './ca.js';

export interface RelayedCaAsk {
  issue(identity: string, ttlMs: number): Promise<IssuedCertificate>;
  roots(): Promise<string[]>;
}

/**
 * A worker's CA: the supervisor's certificate manager, asked over IPC. Only the supervisor talks to the
 * real CA (embedded or Consul), so a host makes one issue per identity however many workers it runs, and
 * every worker holds the same certificate.
 */
export class RelayedCa implements CertificateAuthority {
  readonly kind: 'embedded' | 'consul';
  readonly #ask: RelayedCaAsk;

  constructor(kind: 'embedded' | 'consul', ask: RelayedCaAsk) {
    this.kind = kind;
    this.#ask = ask;
  }

  roots(): Promise<string[]> {
    return this.#ask.roots();
  }

  issue(identity: string, ttlMs: number): Promise<IssuedCertificate> {
    return this.#ask.issue(identity, ttlMs);
  }
}
