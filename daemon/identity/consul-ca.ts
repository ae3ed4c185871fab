// Consul's Connect CA behind the CertificateAuthority interface: leaves from the local agent's
// `/v1/agent/connect/ca/leaf/:service`, roots from `/v1/agent/connect/ca/roots`, both watched as blocking
// queries. The agent renews a leaf (60–90% into its life, or on a root rotation) and the blocking query
// returns it: that is when the certificate manager is told to rotate. During a root rotation the roots
// answer lists the old and the new root and both stay trusted, so no connection drops.

import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { ConsulCache } from '../../lib/consul/cache.js';
import { isRecord } from '../../lib/consul/catalog.js';
import { type ConsulClient, Watch, type WatchOptions } from '../../lib/consul/client.js';
import { AmbitError, CaError, ConsulUnavailableError } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import type { CertificateAuthority, IssuedCertificate } from './ca.js';
import { parseSpiffeId } from './spiffe.js';

export interface ConsulRoots {
  ActiveRootID: string;
  TrustDomain: string;
  Roots: { ID: string; RootCert: string; IntermediateCerts?: string[] | null; Active: boolean }[];
}

export interface ConsulLeaf {
  SerialNumber: string;
  CertPEM: string;
  PrivateKeyPEM: string;
  Service: string;
  ServiceURI: string;
  ValidAfter: string;
  ValidBefore: string;
}

export interface ConsulCaEvents {
  /** The trust bundle changed (a root rotation started or ended). */
  roots: [roots: string[]];
  /** The agent has a new leaf for this SPIFFE identity. */
  leaf: [identity: string];
  /** A watch failed or recovered; the control plane tracks staleness from these. */
  watchError: [path: string, err: Error];
  watchOk: [path: string];
}

const ROOTS_PATH = '/v1/agent/connect/ca/roots';
const SELF_PATH = '/v1/agent/self';
const leafPath = (service: string): string => `/v1/agent/connect/ca/leaf/${encodeURIComponent(service)}`;

export function parseRoots(body: unknown): ConsulRoots | undefined {
  if (!isRecord(body) || typeof body.TrustDomain !== 'string' || !Array.isArray(body.Roots)) return undefined;
  const roots = body.Roots.filter(
    (r): r is ConsulRoots['Roots'][number] => isRecord(r) && typeof r.RootCert === 'string',
  );
  return { ActiveRootID: String(body.ActiveRootID ?? ''), TrustDomain: body.TrustDomain, Roots: roots };
}

export function parseLeaf(body: unknown): ConsulLeaf | undefined {
  if (!isRecord(body)) return undefined;
  const { CertPEM, PrivateKeyPEM, Service, ServiceURI } = body;
  if (typeof CertPEM !== 'string' || typeof PrivateKeyPEM !== 'string') return undefined;
  return {
    SerialNumber: String(body.SerialNumber ?? ''),
    CertPEM,
    PrivateKeyPEM,
    Service: typeof Service === 'string' ? Service : '',
    ServiceURI: typeof ServiceURI === 'string' ? ServiceURI : '',
    ValidAfter: String(body.ValidAfter ?? ''),
    ValidBefore: String(body.ValidBefore ?? ''),
  };
}

/** The trust bundle: every root Consul lists (old and new during a rotation). Intermediates are not anchors. */
const rootPems = (r: ConsulRoots): string[] =>
  r.Roots.map((x) => (x.RootCert.endsWith('\n') ? x.RootCert : `${x.RootCert}\n`));

function toIssued(leaf: ConsulLeaf): IssuedCertificate {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(leaf.CertPEM);
  } catch (err) {
    throw new CaError(`Consul's leaf for ${leaf.Service} is not a PEM certificate`, { cause: err });
  }
  // CertPEM may be the leaf followed by intermediates: it goes to TLS as the chain, whole.
  return {
    certPem: leaf.CertPEM.endsWith('\n') ? leaf.CertPEM : `${leaf.CertPEM}\n`,
    keyPem: leaf.PrivateKeyPEM,
    serial: cert.serialNumber.toUpperCase(),
    notBefore: new Date(leaf.ValidAfter || cert.validFrom),
    notAfter: new Date(leaf.ValidBefore || cert.validTo),
    identity: leaf.ServiceURI,
  };
}

export interface ConsulCaOptions {
  log: Logger;
  watch?: WatchOptions;
}

export class ConsulCa extends EventEmitter<ConsulCaEvents> implements CertificateAuthority {
  readonly kind = 'consul' as const;
  readonly #client: ConsulClient;
  readonly #cache: ConsulCache;
  readonly #log: Logger;
  readonly #watchOpts: WatchOptions;
  #roots: ConsulRoots;
  readonly datacenter: string;
  readonly #leaves = new Map<string, ConsulLeaf>();
  readonly #leafWatches = new Map<string, Watch<unknown>>();
  readonly #leafPolls = new Map<string, LeafPoll>();
  #rootsWatch: Watch<unknown> | undefined;

  private constructor(
    client: ConsulClient,
    cache: ConsulCache,
    roots: ConsulRoots,
    datacenter: string,
    opts: ConsulCaOptions,
  ) {
    super();
    this.#client = client;
    this.#cache = cache;
    this.#roots = roots;
    this.datacenter = datacenter;
    this.#log = opts.log.child({ component: 'consul-ca' });
    this.#watchOpts = opts.watch ?? {};
    for (const key of cache.keys()) {
      if (!key.startsWith('/v1/agent/connect/ca/leaf/')) continue;
      const leaf = parseLeaf(cache.get(key)?.body);
      if (leaf) this.#leaves.set(decodeURIComponent(key.slice('/v1/agent/connect/ca/leaf/'.length)), leaf);
    }
  }

  /**
   * The trust domain and datacenter from Consul (roots and agent/self), or from the cache when Consul does
   * not answer. Throws ConsulUnavailableError when neither has them: nothing can be issued without roots.
   */
  static async open(client: ConsulClient, cache: ConsulCache, opts: ConsulCaOptions): Promise<ConsulCa> {
    let roots: ConsulRoots | undefined;
    let datacenter: string | undefined;
    try {
      const [r, self] = await Promise.all([
        client.get<unknown>(ROOTS_PATH),
        client.get<unknown>(SELF_PATH, { permission: 'agent:read' }),
      ]);
      roots = parseRoots(r.body);
      if (!roots || roots.Roots.length === 0) {
        throw new CaError(`Consul at ${client.address} has no Connect CA roots: is Connect enabled?`);
      }
      const config = isRecord(self.body) && isRecord(self.body.Config) ? self.body.Config : undefined;
      datacenter = typeof config?.Datacenter === 'string' ? config.Datacenter : 'dc1';
      const debug = isRecord(self.body) && isRecord(self.body.DebugConfig) ? self.body.DebugConfig : {};
      const dip = debug.DefaultIntentionPolicy;
      cache.set(ROOTS_PATH, r.body);
      cache.set(SELF_PATH, {
        Config: { Datacenter: datacenter },
        DebugConfig: dip === 'allow' || dip === 'deny' ? { DefaultIntentionPolicy: dip } : {},
      });
    } catch (err) {
      if (!(err instanceof ConsulUnavailableError)) throw err;
      roots = parseRoots(cache.get(ROOTS_PATH)?.body);
      const self = cache.get(SELF_PATH)?.body;
      const config = isRecord(self) && isRecord(self.Config) ? self.Config : undefined;
      datacenter = typeof config?.Datacenter === 'string' ? config.Datacenter : undefined;
      if (!roots || roots.Roots.length === 0 || datacenter === undefined) {
        throw new ConsulUnavailableError(
          client.address,
          `${err.message}; and no state from an earlier contact is kept in ${cache.file}`,
          { cause: err },
        );
      }
      opts.log.warn(
        { consul: client.address, cachedAt: cache.get(ROOTS_PATH)?.at, err: err.message },
        'Consul is unreachable; starting from the state kept in the cache',
      );
    }
    return new ConsulCa(client, cache, roots, datacenter, opts);
  }

  get trustDomain(): string {
    return this.#roots.TrustDomain;
  }

  /** Starts the roots watch. */
  start(): void {
    if (this.#rootsWatch) return;
    this.#rootsWatch = this.#watch(ROOTS_PATH, (body) => {
      const roots = parseRoots(body);
      if (!roots || roots.Roots.length === 0) {
        this.#log.error('Consul answered the roots query without roots; keeping the current trust bundle');
        return;
      }
      const before = rootPems(this.#roots).join('');
      this.#roots = roots;
      this.#cache.set(ROOTS_PATH, body);
      if (rootPems(roots).join('') !== before) {
        this.#log.info({ roots: roots.Roots.length, active: roots.ActiveRootID }, 'Consul CA roots changed');
        this.emit('roots', rootPems(roots));
        // The agent re-signs every leaf after a rotation; polled leaves are read now and once more shortly.
        for (const p of this.#leafPolls.values()) p.refreshSoon();
      }
    });
  }

  async roots(): Promise<string[]> {
    return rootPems(this.#roots);
  }

  /**
   * The agent's current leaf for the identity's service: the one the leaf watch last delivered while it is
   * less than 90% through its life, else a fresh (non-blocking) read from the agent.
   */
  async issue(identity: string, _ttlMs: number): Promise<IssuedCertificate> {
    const parts = parseSpiffeId(identity);
    if (!parts) throw new CaError(`cannot issue for "${identity}": not a Consul SPIFFE ID`);
    if (parts.trustDomain !== this.trustDomain) {
      throw new CaError(`cannot issue for ${identity}: Consul's trust domain is ${this.trustDomain}`);
    }
    const held = this.#leaves.get(parts.service);
    if (held && fresh(held)) return toIssued(held);
    const res = await this.#client.get<unknown>(leafPath(parts.service));
    const leaf = parseLeaf(res.body);
    if (!leaf)
      throw new CaError(`Consul's answer for the leaf of ${parts.service} has no CertPEM/PrivateKeyPEM`);
    this.#leaves.set(parts.service, leaf);
    this.#cache.set(leafPath(parts.service), res.body);
    return toIssued(leaf);
  }

  /** Keeps one leaf watch per service in `services` (the local workloads' services), and no others. */
  /**
   * Follows the leaves of these services: the first `blocking` (sorted) with a blocking query each, which
   * returns the moment the agent renews; the rest read without blocking when the agent may have renewed
   * them (from 60% of their life, as the agent renews between 60% and 90%) and whenever the roots change,
   * so that a host with many services stays under the agent's per-client connection cap.
   */
  watchLeaves(services: Iterable<string>, blocking = Number.POSITIVE_INFINITY): void {
    const wanted = [...new Set(services)].sort();
    const isBlocking = new Set(wanted.slice(0, Math.max(0, blocking)));
    for (const [svc, w] of this.#leafWatches) {
      if (isBlocking.has(svc)) continue;
      w.stop();
      this.#leafWatches.delete(svc);
    }
    for (const [svc, p] of this.#leafPolls) {
      if (wanted.includes(svc) && !isBlocking.has(svc)) continue;
      p.stop();
      this.#leafPolls.delete(svc);
    }
    const keep = new Set(wanted);
    for (const svc of [...this.#leaves.keys()]) {
      if (keep.has(svc)) continue;
      this.#leaves.delete(svc);
      this.#cache.delete(leafPath(svc));
    }
    for (const svc of wanted) {
      const path = leafPath(svc);
      if (isBlocking.has(svc)) {
        if (!this.#leafWatches.has(svc)) this.#leafWatches.set(svc, this.#watch(path, this.#onLeaf(svc)));
      } else if (!this.#leafPolls.has(svc)) {
        const poll = new LeafPoll(this.#client, path, {
          change: this.#onLeaf(svc),
          ok: () => this.emit('watchOk', path),
          error: (err) => this.emit('watchError', path, err),
          next: () => nextLeafRead(this.#leaves.get(svc)),
        });
        this.#leafPolls.set(svc, poll.start());
      }
    }
  }

  #onLeaf(svc: string): (body: unknown) => void {
    const path = leafPath(svc);
    return (body) => {
      const leaf = parseLeaf(body);
      if (!leaf) return;
      const before = this.#leaves.get(svc);
      this.#leaves.set(svc, leaf);
      this.#cache.set(path, body);
      if (before && before.CertPEM !== leaf.CertPEM) {
        this.#log.info({ service: svc, serial: leaf.SerialNumber }, 'Consul renewed a leaf certificate');
        // Signed by a root this daemon does not trust yet (the leaf answer overtook the roots answer):
        // read the roots first, so the new chain is never presented against an old bundle.
        const announce = (): void => {
          this.emit('leaf', leaf.ServiceURI);
        };
        if (this.#signedByKnownRoot(leaf)) announce();
        else void this.#refreshRoots().finally(announce);
      }
    };
  }

  #signedByKnownRoot(leaf: ConsulLeaf): boolean {
    try {
      const pems = leaf.CertPEM.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
      const top = new X509Certificate(pems[pems.length - 1] ?? leaf.CertPEM);
      return this.#roots.Roots.some((r) => top.checkIssued(new X509Certificate(r.RootCert)));
    } catch {
      return true;
    }
  }

  async #refreshRoots(): Promise<void> {
    try {
      const res = await this.#client.get<unknown>(ROOTS_PATH);
      const roots = parseRoots(res.body);
      if (!roots || roots.Roots.length === 0) return;
      const before = rootPems(this.#roots).join('');
      this.#roots = roots;
      this.#cache.set(ROOTS_PATH, res.body);
      if (rootPems(roots).join('') !== before) this.emit('roots', rootPems(roots));
    } catch (err) {
      this.#log.warn({ err: (err as Error).message }, 'cannot read Consul CA roots');
    }
  }

  /**
   * The agent's `default_intention_policy` (agent/self DebugConfig), which Consul applies before the ACL
   * default when no intention matches; undefined when the agent does not set one.
   */
  get defaultIntentionPolicy(): 'allow' | 'deny' | undefined {
    const self = this.#cache.get(SELF_PATH)?.body;
    const debug = isRecord(self) && isRecord(self.DebugConfig) ? self.DebugConfig : undefined;
    const v = debug?.DefaultIntentionPolicy;
    return v === 'allow' || v === 'deny' ? v : undefined;
  }

  /** Active long polls (roots + blocking leaves). */
  get watches(): number {
    return this.#leafWatches.size + (this.#rootsWatch ? 1 : 0);
  }

  close(): void {
    this.#rootsWatch?.stop();
    for (const w of this.#leafWatches.values()) w.stop();
    this.#leafWatches.clear();
    for (const p of this.#leafPolls.values()) p.stop();
    this.#leafPolls.clear();
  }

  #watch(path: string, onChange: (body: unknown) => void): Watch<unknown> {
    const w = new Watch<unknown>(this.#client, path, this.#watchOpts);
    w.on('change', (body) => {
      try {
        onChange(body);
      } catch (err) {
        this.#log.error({ path, err: (err as Error).message }, 'applying a Consul CA answer failed');
      }
    });
    w.on('error', (err) => this.emit('watchError', path, err));
    w.on('ok', () => this.emit('watchOk', path));
    return w.start();
  }
}

/** Less than 90% through its life: past that the agent should have renewed it, so ask again. */
function fresh(leaf: ConsulLeaf): boolean {
  const start = Date.parse(leaf.ValidAfter);
  const end = Date.parse(leaf.ValidBefore);
  if (!Number.isFinite(start) || !Number.isFinite(end)) return false;
  return Date.now() < start + 0.9 * (end - start);
}

/** When to read a polled leaf again: at 60% of its life, then every 2% (at least 1 s, at most 1 h). */
export function nextLeafRead(leaf: ConsulLeaf | undefined, now = Date.now()): number {
  if (!leaf) return 1000;
  const start = Date.parse(leaf.ValidAfter);
  const end = Date.parse(leaf.ValidBefore);
  if (!Number.isFinite(start) || !Number.isFinite(end) || end <= start) return 60_000;
  const life = end - start;
  const renewFrom = start + 0.6 * life;
  const delay = now < renewFrom ? renewFrom - now : Math.min(Math.max(1000, 0.02 * life), 3_600_000);
  return Math.min(delay, 2 ** 31 - 1);
}

interface LeafPollHandlers {
  change: (body: unknown) => void;
  ok: () => void;
  error: (err: AmbitError) => void;
  /** How long until the next read. */
  next: () => number;
}

/** A leaf read without a blocking query, on a timer: it holds no connection between reads. */
class LeafPoll {
  readonly #client: ConsulClient;
  readonly #path: string;
  readonly #on: LeafPollHandlers;
  #timer: NodeJS.Timeout | undefined;
  #again: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(client: ConsulClient, path: string, on: LeafPollHandlers) {
    this.#client = client;
    this.#path = path;
    this.#on = on;
  }

  start(): this {
    void this.#read();
    return this;
  }

  /** Now, and again in 5 s (the agent may not have re-signed yet). */
  refreshSoon(): void {
    void this.#read();
    clearTimeout(this.#again);
    this.#again = setTimeout(() => void this.#read(), 5000).unref();
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#again);
  }

  async #read(): Promise<void> {
    if (this.#stopped) return;
    clearTimeout(this.#timer);
    let delay: number;
    try {
      const res = await this.#client.get<unknown>(this.#path);
      if (this.#stopped) return;
      this.#on.ok();
      this.#on.change(res.body);
      delay = this.#on.next();
    } catch (err) {
      if (this.#stopped) return;
      this.#on.error(
        err instanceof AmbitError
          ? err
          : new ConsulUnavailableError(this.#client.address, String(err), { cause: err }),
      );
      delay = 5000;
    }
    this.#timer = setTimeout(() => void this.#read(), delay).unref();
  }
}
