// Holds one certificate per enrolled workload identity, whichever CA issues them, and keeps each fresh.
//
// A rotation swaps the TlsContext that *new* handshakes get from tlsContext(); a TLS connection
// keeps the context it was established with, so live connections never notice.

import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { type BackoffOptions, backoffDelay } from '../../lib/backoff.js';
import { AmbitError, CaError, CertUnavailableError } from '../../lib/errors.js';
import { type Logger, silentLogger } from '../../lib/log.js';
import { TlsContext } from '../tls/context.js';
import type { CertificateAuthority, IssuedCertificate } from './ca.js';
import { Limiter } from './limiter.js';
import { uriSans } from './spiffe.js';

export interface CertificateInfo {
  identity: string;
  serial: string;
  notBefore: string;
  notAfter: string;
  rotations: number;
  /** When the next refresh (or retry after a failed one) is due. */
  refreshAt: string;
}

export interface CertificateManagerOptions {
  ttlMs: number;
  /** Fraction of a certificate's lifetime after which it is replaced. */
  refreshFraction?: number;
  logger?: Logger;
  /** Most issue() calls outstanding at the CA at once; a mass enrollment queues behind these. */
  maxInFlight?: number;
  /** Retry schedule after a failed refresh; tests shorten it. */
  retry?: Partial<BackoffOptions>;
  /** KeyUpdates a second a tunnel peer may send on connections made with these certificates. */
  keyUpdateRate?: number;
}

export interface CertificateManagerEvents {
  /** A held certificate was replaced by a newly issued one. */
  rotated: [identity: string];
  /** The trust bundle changed. */
  roots: [roots: string[]];
  /** A refresh failed; the previous certificate stays in use and a retry is scheduled. */
  refreshFailed: [identity: string, error: AmbitError];
}

interface Held {
  readonly identity: string;
  cert: IssuedCertificate | undefined;
  context: TlsContext | undefined;
  rotations: number;
  failures: number;
  nextAttemptAt: number | undefined;
  timer: NodeJS.Timeout | undefined;
  inflight: Promise<void> | undefined;
  expiryReported: boolean;
}

const DEFAULT_RETRY: BackoffOptions = { initialMs: 1000, maxMs: 60_000 };
// Embedded and Consul CAs backdate notBefore by about this much; it is not part of the useful lifetime.
const BACKDATE_MS = 60_000;
// setTimeout fires at once for longer delays; longer waits are taken in steps.
const MAX_TIMER_MS = 2 ** 31 - 1;
const MIN_RETRY_MS = 100;

export class CertificateManager extends EventEmitter<CertificateManagerEvents> {
  private readonly ca: CertificateAuthority;
  private readonly ttlMs: number;
  private readonly refreshFraction: number;
  private readonly logger: Logger;
  private readonly limiter: Limiter;
  private readonly retry: BackoffOptions;
  private readonly keyUpdateRate: number | undefined;
  private readonly held = new Map<string, Held>();
  private roots: string[] = [];
  private started: Promise<void> | undefined;
  private closed = false;

  constructor(ca: CertificateAuthority, opts: CertificateManagerOptions) {
    super();
    if (!(opts.ttlMs > 0)) throw new RangeError(`ttlMs must be positive, got ${opts.ttlMs}`);
    const fraction = opts.refreshFraction ?? 0.5;
    if (!(fraction > 0 && fraction < 1))
      throw new RangeError(`refreshFraction must be in (0, 1), got ${fraction}`);
    this.ca = ca;
    this.ttlMs = opts.ttlMs;
    this.refreshFraction = fraction;
    this.logger = opts.logger ?? silentLogger();
    this.limiter = new Limiter(opts.maxInFlight ?? 8);
    this.retry = { ...DEFAULT_RETRY, ...opts.retry };
    this.keyUpdateRate = opts.keyUpdateRate;
  }

  /** Loads the trust bundle from the CA. Safe to call more than once; a failed start can be retried. */
  start(): Promise<void> {
    this.started ??= this.loadRoots().catch((err: unknown) => {
      this.started = undefined;
      throw err;
    });
    return this.started;
  }

  /**
   * Makes sure a certificate for `identity` is held and kept fresh. Concurrent calls share one issue();
   * if that first issue fails, every caller sees the error and nothing is kept, so a later call retries.
   */
  async ensure(identity: string): Promise<void> {
    this.assertOpen();
    await this.start();
    const existing = this.held.get(identity);
    if (existing) {
      if (this.usable(existing)) return;
      if (existing.inflight || existing.cert) return this.issueNow(existing);
    }
    const entry: Held = {
      identity,
      cert: undefined,
      context: undefined,
      rotations: 0,
      failures: 0,
      nextAttemptAt: undefined,
      timer: undefined,
      inflight: undefined,
      expiryReported: false,
    };
    this.held.set(identity, entry);
    try {
      await this.issueNow(entry);
    } catch (err) {
      if (this.held.get(identity) === entry && !entry.cert) this.held.delete(identity);
      throw err;
    }
  }

  /** Whether a valid certificate is held, i.e. whether tlsContext() will succeed. */
  has(identity: string): boolean {
    const entry = this.held.get(identity);
    return entry !== undefined && this.usable(entry);
  }

  /** The context for new TLS connections as `identity`: its key and chain, trusting the current bundle. */
  tlsContext(identity: string): TlsContext {
    const entry = this.held.get(identity);
    if (!entry?.context || !this.usable(entry)) throw new CertUnavailableError(identity);
    return entry.context;
  }

  /**
   * The PEM certificate chain and key behind tlsContext(identity), for a TLS stack other than the tunnel's
   * (node:tls as an independent peer in the tests). Never served over any API.
   */
  credentials(identity: string): { certPem: string; keyPem: string } {
    const entry = this.held.get(identity);
    if (!entry?.cert || !this.usable(entry)) throw new CertUnavailableError(identity);
    return { certPem: entry.cert.certPem, keyPem: entry.cert.keyPem };
  }

  trustBundle(): string[] {
    return [...this.roots];
  }

  /** Stops refreshing `identity` and drops its certificate (the workload left). */
  forget(identity: string): void {
    const entry = this.held.get(identity);
    if (!entry) return;
    clearTimeout(entry.timer);
    this.held.delete(identity);
    this.logger.debug({ identity }, 'certificate dropped');
  }

  /** Issues a replacement now instead of at the scheduled time. */
  async rotate(identity: string): Promise<void> {
    this.assertOpen();
    const entry = this.held.get(identity);
    if (!entry) throw new CertUnavailableError(identity);
    return this.issueNow(entry);
  }

  /**
   * Replaces the trust bundle (a root rotation) and rebuilds every context so new handshakes trust it.
   * Throws CaError, changing nothing, if a root does not parse or a certificate no longer fits.
   */
  setRoots(roots: string[]): void {
    if (roots.length === 0) throw new CaError(`the ${this.ca.kind} CA returned no roots`);
    for (const pem of roots) {
      try {
        new X509Certificate(pem);
      } catch (err) {
        throw new CaError(`the ${this.ca.kind} CA returned a root that is not a PEM certificate`, {
          cause: err,
        });
      }
    }
    if (roots.length === this.roots.length && roots.every((r, i) => r === this.roots[i])) return;
    const rebuilt = new Map<Held, TlsContext>();
    for (const entry of this.held.values()) {
      if (entry.cert) rebuilt.set(entry, this.buildContext(entry.identity, entry.cert, roots));
    }
    this.roots = [...roots];
    for (const [entry, context] of rebuilt) entry.context = context;
    this.logger.info({ roots: roots.length, certificates: rebuilt.size }, 'trust bundle updated');
    this.emit('roots', this.trustBundle());
  }

  list(): CertificateInfo[] {
    const infos: CertificateInfo[] = [];
    for (const entry of this.held.values()) {
      if (!entry.cert) continue;
      infos.push({
        identity: entry.identity,
        serial: entry.cert.serial,
        notBefore: entry.cert.notBefore.toISOString(),
        notAfter: entry.cert.notAfter.toISOString(),
        rotations: entry.rotations,
        refreshAt: new Date(entry.nextAttemptAt ?? Date.now()).toISOString(),
      });
    }
    return infos.sort((a, b) => a.identity.localeCompare(b.identity));
  }

  /** Stops all refreshes. Held contexts stay readable so draining connections can finish. */
  close(): void {
    this.closed = true;
    for (const entry of this.held.values()) clearTimeout(entry.timer);
  }

  private async loadRoots(): Promise<void> {
    let roots: string[];
    try {
      roots = await this.ca.roots();
    } catch (err) {
      throw asCaError(err, `cannot load roots from the ${this.ca.kind} CA`);
    }
    this.setRoots(roots);
  }

  private assertOpen(): void {
    if (this.closed) throw new CaError('the certificate manager is closed');
  }

  private usable(entry: Held): boolean {
    return (
      entry.context !== undefined && entry.cert !== undefined && entry.cert.notAfter.getTime() > Date.now()
    );
  }

  private isCurrent(entry: Held): boolean {
    return !this.closed && this.held.get(entry.identity) === entry;
  }

  /** One issue() per identity at a time: a caller arriving meanwhile shares the one under way. */
  private issueNow(entry: Held): Promise<void> {
    if (entry.inflight) return entry.inflight;
    clearTimeout(entry.timer);
    entry.timer = undefined;
    const attempt = this.issueInto(entry);
    entry.inflight = attempt;
    const settle = (): void => {
      if (entry.inflight === attempt) entry.inflight = undefined;
    };
    attempt.then(settle, settle);
    return attempt;
  }

  private async issueInto(entry: Held): Promise<void> {
    try {
      const cert = await this.limiter.run(() => this.ca.issue(entry.identity, this.ttlMs));
      if (!this.isCurrent(entry)) return; // forgotten or closed while the CA worked
      this.install(entry, cert);
    } catch (err) {
      const error = asCaError(
        err,
        `the ${this.ca.kind} CA could not issue a certificate for ${entry.identity}`,
      );
      if (this.isCurrent(entry) && entry.cert) this.retryLater(entry, error);
      throw error;
    }
  }

  private install(entry: Held, cert: IssuedCertificate): void {
    const now = Date.now();
    const { identity } = entry;
    if (cert.notAfter.getTime() <= now) {
      throw new CaError(
        `the CA issued ${identity} a certificate that expired at ${cert.notAfter.toISOString()}`,
      );
    }
    const sans = uriSans(parseLeaf(identity, cert.certPem));
    if (!sans.includes(identity)) {
      throw new CaError(
        `asked for ${identity}, the CA issued a certificate for ${sans.join(', ') || 'no URI'}`,
      );
    }
    const context = this.buildContext(identity, cert, this.roots);
    // A caching CA (Consul's agent) may hand back the certificate already held: not a rotation.
    const renewed = entry.cert !== undefined && entry.cert.serial !== cert.serial;
    entry.cert = cert;
    entry.context = context;
    entry.failures = 0;
    entry.expiryReported = false;
    if (renewed) entry.rotations++;
    const refreshAt = this.refreshTime(cert, now);
    this.scheduleAt(entry, refreshAt);
    this.logger.info(
      {
        identity,
        serial: cert.serial,
        notAfter: cert.notAfter.toISOString(),
        refreshAt: new Date(refreshAt).toISOString(),
      },
      renewed ? 'certificate rotated' : 'certificate issued',
    );
    if (renewed) this.emit('rotated', identity);
  }

  /**
   * `refreshFraction` into the certificate's useful life (its backdated first minute excluded). A cert
   * already past that point, as a caching CA may return, is refreshed that fraction into what remains,
   * which converges on expiry without spinning.
   */
  private refreshTime(cert: IssuedCertificate, now: number): number {
    const notAfter = cert.notAfter.getTime();
    const start = Math.min(cert.notBefore.getTime() + BACKDATE_MS, now);
    const planned = start + this.refreshFraction * (notAfter - start);
    return planned > now ? planned : now + this.refreshFraction * (notAfter - now);
  }

  /**
   * Keeps the current certificate and tries again with backoff. Retries are pulled in so that one still
   * happens before expiry; once the next attempt cannot beat expiry, that is logged as an error.
   */
  private retryLater(entry: Held, error: AmbitError): void {
    const { identity } = entry;
    const now = Date.now();
    const expiresAt = entry.cert!.notAfter.getTime();
    entry.failures++;
    const remaining = expiresAt - now;
    let delay = backoffDelay(entry.failures, this.retry);
    // Once expired there is nothing left to beat, so the ordinary backoff applies again.
    if (remaining > 0 && delay >= remaining) delay = Math.max(MIN_RETRY_MS, remaining / 2);
    const fields = { identity, attempt: entry.failures, retryInMs: Math.round(delay), err: error.message };
    if (delay >= remaining && !entry.expiryReported) {
      entry.expiryReported = true;
      this.logger.error(
        { ...fields, notAfter: entry.cert!.notAfter.toISOString() },
        'certificate expires before the CA recovers; new connections for this identity will fail',
      );
    } else {
      this.logger.warn(fields, 'certificate refresh failed; keeping the current certificate');
    }
    this.scheduleAt(entry, now + delay);
    this.emit('refreshFailed', identity, error);
  }

  private scheduleAt(entry: Held, at: number): void {
    clearTimeout(entry.timer);
    entry.nextAttemptAt = at;
    const wait = Math.min(Math.max(0, at - Date.now()), MAX_TIMER_MS);
    // unref: a pending refresh must not keep the process alive on shutdown.
    entry.timer = setTimeout(() => this.onTimer(entry), wait).unref();
  }

  private onTimer(entry: Held): void {
    entry.timer = undefined;
    if (!this.isCurrent(entry)) return;
    if (entry.nextAttemptAt !== undefined && entry.nextAttemptAt - Date.now() > 1) {
      this.scheduleAt(entry, entry.nextAttemptAt);
      return;
    }
    // Failures were logged and rescheduled in issueInto; nobody else awaits this attempt.
    this.issueNow(entry).catch(() => undefined);
  }

  private buildContext(identity: string, cert: IssuedCertificate, roots: string[]): TlsContext {
    try {
      return new TlsContext({
        key: cert.keyPem,
        cert: cert.certPem,
        roots,
        keyUpdateRate: this.keyUpdateRate,
      });
    } catch (err) {
      throw new CaError(`the certificate for ${identity} cannot be used: ${messageOf(err)}`, { cause: err });
    }
  }
}

function parseLeaf(identity: string, certPem: string): X509Certificate {
  try {
    return new X509Certificate(certPem);
  } catch (err) {
    throw new CaError(`the CA issued ${identity} something that is not a PEM certificate`, { cause: err });
  }
}

const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

const asCaError = (err: unknown, context: string): AmbitError =>
  err instanceof AmbitError ? err : new CaError(`${context}: ${messageOf(err)}`, { cause: err });
