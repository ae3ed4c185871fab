// A Consul HTTP API emulator for tests: a real HTTP server on 127.0.0.1 that follows Consul's documented
// behaviour for the endpoints Ambit uses. It is NOT Consul: no Raft, no gossip, one datacenter, one node,
// no namespaces, no peers or partitions, and only TCP, HTTP and TTL health checks run (gRPC, script, UDP,
// H2PING and alias checks are accepted and keep their registered status).
//
// What it covers: one monotonic index (X-Consul-Index) with per-table indexes; blocking queries with
// `index` and `wait` (default 5m, max 10m, plus up to wait/16 jitter); X-Consul-KnownLeader and
// X-Consul-LastContact; agent service registration mirrored into the catalog and health (with `passing`),
// check definitions validated as the agent does (400 "Invalid check: ..."); health checks that run as the
// agent runs them (consul-checks.ts: TCP connects and HTTP requests every Interval, first after a random
// stagger, Timeout 10 s by default, Consul's status and Output wording; TTL checks run out to critical and
// /v1/agent/check/update renews them), the checks index moving only when a status changes, or when a
// changed Output is synced check_update_interval (5 m) later, as agent/local/state.go defers it;
// Connect CA roots and leaf signing (SPIFFE URI SAN, ValidAfter/ValidBefore; leaf renewal at 60–90% of its
// lifetime) with blocking roots and leaf queries released on a rotation; intentions (list, `exact`,
// `match`, precedence) kept as the Sources of `service-intentions` config entries, one store as in Consul
// 1.9+; config entries (`cas`) decoded, normalised and validated as Consul does (consul-config-entries.ts:
// unknown keys at any depth 400, each kind's Validate rules 500, routers and splitters refused on a
// non-HTTP protocol, Methods uppercased, durations in Go's form); KV; ACL tokens (403 "ACL not found" /
// "Permission denied: ... lacks permission" where Consul refuses; catalog and health reads filtered
// instead, with X-Consul-Results-Filtered-By-ACLs unless anonymous; X-Consul-Default-ACL-Policy on every
// answer); an index ahead of the server blocks for the wait, as any other;
// `limits.http_max_conns_per_client` (429 and close above it, default 200). Hooks for tests:
// setIndexBackwards(), down(), up(), rotateRoots(), rotateLeaf(service), setCheckStatus(id, status) (a TCP
// or HTTP check's next run overrides it), and the `runCheck` option: how a TCP or HTTP check reaches its
// target (by default a connection from this process).
//
// startConsul() gives a real `consul agent -dev` instead whenever a consul binary is on PATH or CONSUL_BIN
// names one, so the same suite runs against the real thing; hook-dependent tests then skip.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { X509Certificate, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EmbeddedCa } from '../../daemon/identity/ca.js';
import { spiffeId } from '../../daemon/identity/spiffe.js';
import {
  type CheckRunner,
  type CheckStatus,
  DEFAULT_TIMEOUT_MS,
  MIN_INTERVAL_MS,
  type ProbeDefinition,
  runCheckHere,
} from './consul-checks.js';
import { ConfigEntryError, chainError, decodeConfigEntry, precedence } from './consul-config-entries.js';
import { parseGoDuration } from './consul-go.js';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json | undefined };

/** Permission name (`service:read`, `service:write`, `key:read`, ...) → resources, or '*' for all. */
export type TokenRules = 'management' | Record<string, readonly string[] | '*'>;

export interface EmulatorOptions {
  datacenter?: string;
  nodeName?: string;
  leafTtlMs?: number;
  /**
   * `limits.http_max_conns_per_client` (default 200): connections one client address may hold open; above
   * it a new connection gets a 429 and is closed, as Consul's connlimit handler does.
   */
  maxConnsPerClient?: number;
  /**
   * ACLs on: only these tokens are known, besides the anonymous token (no token), which has no rules.
   * `defaultPolicy` is `acl.default_policy` (default deny): what a token gets where its rules say nothing.
   */
  acl?: { tokens: Record<string, TokenRules>; defaultPolicy?: 'allow' | 'deny' };
  /**
   * How one run of a TCP or HTTP check reaches its target (default: a connection from this process), e.g.
   * from another network namespace or as another uid.
   */
  runCheck?: CheckRunner;
  /**
   * `check_update_interval` (default 5 m): a run that changes only a check's Output reaches the catalog
   * (and moves the index) this long later, at a random point between half and one and a half of it; 0
   * syncs every change at once.
   */
  checkUpdateIntervalMs?: number;
}

interface Check {
  CheckID: string;
  Name: string;
  /** Status and Output as the catalog has them (what health reads answer). */
  Status: string;
  Output: string;
  ServiceID: string;
  ServiceName: string;
  ModifyIndex: number;
  /** The agent's own copy; the catalog's differs while an Output-only change waits to be synced. */
  local: { status: string; output: string };
  /** A TTL check: when it runs out without an update, the check goes critical. */
  ttlMs?: number;
  expiry?: NodeJS.Timeout;
  lastTtlOutput?: string;
  /** A TCP or HTTP check the emulator runs every intervalMs. */
  probe?: ProbeDefinition;
  intervalMs?: number;
  timer?: NodeJS.Timeout;
  deferred?: NodeJS.Timeout;
  stopped: boolean;
}

interface Registered {
  reg: Record<string, Json | undefined>;
  checks: Check[];
}

interface Root {
  id: string;
  ca: EmbeddedCa;
  dir: string;
  pem: string;
  active: boolean;
  createIndex: number;
  notBefore: string;
  notAfter: string;
}

interface Leaf {
  body: Record<string, Json>;
  index: number;
  timer: NodeJS.Timeout | undefined;
}

interface Waiter {
  wake: () => void;
}

const MAX_WAIT_MS = 600_000;
const DEFAULT_WAIT_MS = 300_000;

export class ConsulEmulator {
  readonly datacenter: string;
  readonly nodeName: string;
  readonly trustDomain = `${randomUUID()}.consul`;
  readonly #opts: EmulatorOptions;
  #server: Server | undefined;
  #port = 0;
  #index = 1;
  #epoch = 0;
  readonly #tables = new Map<string, number>();
  readonly #services = new Map<string, Registered>();
  readonly #config = new Map<string, Record<string, Json>>();
  readonly #kv = new Map<
    string,
    { Value: string | null; Flags: number; CreateIndex: number; ModifyIndex: number }
  >();
  readonly #roots: Root[] = [];
  readonly #leaves = new Map<string, Leaf>();
  readonly #waiters = new Set<Waiter>();
  readonly #conns = new Map<string, number>();
  readonly #refused = new WeakSet<Socket>();
  /** Connections refused with 429 for going over the per-client cap. */
  connectionsRefused = 0;
  /** The most connections one client address held at once. */
  peakConnections = 0;
  /** Every request received, by `METHOD /path`. */
  readonly requestLog: { at: number; method: string; path: string; blocking: boolean }[] = [];

  private constructor(opts: EmulatorOptions) {
    this.#opts = opts;
    this.datacenter = opts.datacenter ?? 'dc1';
    this.nodeName = opts.nodeName ?? 'emulator-node';
  }

  static async start(opts: EmulatorOptions = {}): Promise<ConsulEmulator> {
    const e = new ConsulEmulator(opts);
    await e.#newRoot();
    await e.up();
    return e;
  }

  get port(): number {
    return this.#port;
  }

  get address(): string {
    return `127.0.0.1:${this.#port}`;
  }

  get index(): number {
    return this.#index;
  }

  get requests(): number {
    return this.requestLog.length;
  }

  // --- hooks ---------------------------------------------------------------------------------------------

  /** Stops answering: closes the listener and every connection (blocking queries included). */
  async down(): Promise<void> {
    const s = this.#server;
    if (!s) return;
    this.#server = undefined;
    for (const w of this.#waiters) w.wake();
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }

  /** Listens again, on the same port as before. */
  async up(): Promise<void> {
    if (this.#server) return;
    const server = createServer((req, res) => {
      if (this.#refused.has(req.socket)) return;
      this.#handle(req, res);
    });
    server.keepAliveTimeout = 60_000;
    server.on('connection', (sock: Socket) => this.#limit(sock));
    // While it was down, another test's outgoing connection may have been given the port as its ephemeral
    // local port, and held it past any wait (CI saw it). So the first port is drawn below the ephemeral
    // range, where no outgoing connection is given one; a port taken by another listener, or one that went
    // anyway, is waited for (bounded) or drawn again.
    const first = this.#port === 0;
    for (let attempt = 0; ; attempt++) {
      const port = first ? belowEphemeral() : this.#port;
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(port, '127.0.0.1', () => {
            server.removeListener('error', reject);
            resolve();
          });
        });
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 100) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    this.#port = (server.address() as AddressInfo).port;
    this.#server = server;
  }

  /** As after a snapshot restore: every index drops to 1, and blocked queries are released with it. */
  setIndexBackwards(): void {
    this.#index = 1;
    for (const k of this.#tables.keys()) this.#tables.set(k, 1);
    for (const leaf of this.#leaves.values()) leaf.index = 1;
    this.#epoch++;
    this.#notify();
  }

  /** A CA rotation: a new active root (the old one stays listed, inactive) and every leaf re-signed by it. */
  async rotateRoots(): Promise<void> {
    const old = this.#roots.filter((r) => r.active);
    await this.#newRoot();
    for (const r of old) r.active = false;
    this.#touch('roots');
    for (const svc of this.#leaves.keys()) await this.#sign(svc);
  }

  /** The agent renews the leaf of `service` now (as it does 60–90% into its lifetime). */
  async rotateLeaf(service: string): Promise<void> {
    await this.#sign(service);
  }

  /** Sets every check of the service; a TCP or HTTP check's next run overrides it, as in Consul. */
  setCheckStatus(serviceId: string, status: CheckStatus): void {
    const s = this.#services.get(serviceId);
    if (!s) throw new Error(`no service ${serviceId}`);
    // Health lives in the checks table: the catalog's service list (and its index) does not change.
    const idx = this.#touch(`svc:${String(s.reg.Service)}`, 'checks');
    for (const c of s.checks) {
      c.Status = status;
      c.local.status = status;
      c.ModifyIndex = idx;
    }
  }

  /** A new token with these rules (ACLs must be on). */
  addToken(secret: string, rules: TokenRules): void {
    if (!this.#opts.acl) throw new Error('addToken: ACLs are off');
    this.#opts.acl.tokens[secret] = rules;
  }

  /** A TTL check goes critical when its TTL runs out without an update (CheckTTL.getExpiredOutput). */
  #arm(c: Check): void {
    clearTimeout(c.expiry);
    if (c.ttlMs === undefined || c.stopped) return;
    c.expiry = setTimeout(() => {
      const last = c.lastTtlOutput ?? '';
      this.#updateCheck(
        c,
        'critical',
        last === '' ? 'TTL expired' : `TTL expired (last output before timeout follows): ${last}`,
      );
    }, c.ttlMs).unref();
  }

  /** A TCP or HTTP check: first run after a random stagger within the interval, then every interval. */
  #schedule(c: Check): void {
    const probe = c.probe;
    const interval = c.intervalMs;
    if (!probe || interval === undefined) return;
    const runner = this.#opts.runCheck ?? runCheckHere;
    const run = async (): Promise<void> => {
      if (c.stopped) return;
      let r: { status: CheckStatus; output: string };
      try {
        r = await runner(probe);
      } catch (err) {
        r = { status: 'critical', output: (err as Error).message };
      }
      if (c.stopped) return;
      this.#updateCheck(c, r.status, r.output);
      c.timer = setTimeout(() => void run(), interval).unref();
    };
    c.timer = setTimeout(() => void run(), Math.random() * interval).unref();
  }

  #stopCheck(c: Check): void {
    c.stopped = true;
    clearTimeout(c.timer);
    clearTimeout(c.expiry);
    clearTimeout(c.deferred);
  }

  /**
   * agent/local/state.go UpdateCheck: nothing when status and output are as they were; a changed status is
   * synced to the catalog at once; a changed output alone waits for check_update_interval.
   */
  #updateCheck(c: Check, status: string, output: string): void {
    if (c.stopped || (c.local.status === status && c.local.output === output)) return;
    const d = this.#opts.checkUpdateIntervalMs ?? 300_000;
    if (d > 0 && c.local.status === status) {
      c.local.output = output;
      if (c.deferred === undefined)
        c.deferred = setTimeout(
          () => {
            c.deferred = undefined;
            this.#sync(c);
          },
          d / 2 + Math.random() * d,
        ).unref();
      return;
    }
    c.local = { status, output };
    this.#sync(c);
  }

  #sync(c: Check): void {
    if (c.stopped || (c.Status === c.local.status && c.Output === c.local.output)) return;
    c.Status = c.local.status;
    c.Output = c.local.output;
    c.ModifyIndex = this.#touch(`svc:${c.ServiceName}`, 'checks');
  }

  /** Registers a service without going through HTTP (bench setup). Same effect as the register endpoint. */
  register(body: Record<string, Json | undefined>): void {
    const invalid = this.#register(body);
    if (invalid) throw new Error(invalid);
  }

  async close(): Promise<void> {
    for (const s of this.#services.values()) for (const c of s.checks) this.#stopCheck(c);
    await this.down();
    for (const l of this.#leaves.values()) clearTimeout(l.timer);
    await Promise.all(this.#roots.map((r) => rm(r.dir, { recursive: true, force: true })));
  }

  /** go-connlimit's HTTP handler: over the cap, answer 429 on the raw connection and close it. */
  #limit(sock: Socket): void {
    const ip = sock.remoteAddress ?? '';
    const cap = this.#opts.maxConnsPerClient ?? 200;
    const open = this.#conns.get(ip) ?? 0;
    if (open >= cap) {
      this.#refused.add(sock);
      this.connectionsRefused++;
      const text = 'Your IP is issuing too many concurrent connections, please rate limit your calls\n';
      sock.end(
        `HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: ${text.length}\r\nConnection: close\r\n\r\n${text}`,
      );
      setTimeout(() => sock.destroy(), 10).unref();
      return;
    }
    this.#conns.set(ip, open + 1);
    this.peakConnections = Math.max(this.peakConnections, open + 1);
    sock.once('close', () => {
      const n = (this.#conns.get(ip) ?? 1) - 1;
      if (n > 0) this.#conns.set(ip, n);
      else this.#conns.delete(ip);
    });
  }

  /** Connections open now from one client address (127.0.0.1 by default). */
  connections(ip = '127.0.0.1'): number {
    return this.#conns.get(ip) ?? 0;
  }

  // --- state ---------------------------------------------------------------------------------------------

  #touch(...tables: string[]): number {
    const idx = ++this.#index;
    for (const t of tables) this.#tables.set(t, idx);
    this.#notify();
    return idx;
  }

  #table(name: string, fallback = 'services'): number {
    return this.#tables.get(name) ?? this.#tables.get(fallback) ?? 1;
  }

  #notify(): void {
    for (const w of [...this.#waiters]) w.wake();
  }

  async #newRoot(): Promise<void> {
    const dir = await mkdtemp(join(tmpdir(), 'consul-emu-ca-'));
    const ca = await EmbeddedCa.loadOrCreate(dir, this.trustDomain);
    const pem = (await ca.roots())[0]!;
    const cert = new X509Certificate(pem);
    // Pushed active; rotateRoots() retires the previous one right after, in the same turn.
    this.#roots.push({
      id: cert.fingerprint256.toLowerCase(),
      ca,
      dir,
      pem,
      active: true,
      createIndex: this.#index,
      notBefore: new Date(cert.validFrom).toISOString(),
      notAfter: new Date(cert.validTo).toISOString(),
    });
  }

  async #sign(service: string): Promise<Leaf> {
    const root = this.#roots.find((r) => r.active)!;
    const uri = spiffeId({
      trustDomain: this.trustDomain,
      namespace: 'default',
      datacenter: this.datacenter,
      service,
    });
    const ttl = this.#opts.leafTtlMs ?? 72 * 3600_000;
    const issued = await root.ca.issue(uri, ttl);
    const index = this.#touch(`leaf:${service}`);
    const previous = this.#leaves.get(service);
    clearTimeout(previous?.timer);
    const leaf: Leaf = {
      index,
      timer: undefined,
      body: {
        SerialNumber: issued.serial.match(/../g)!.join(':').toLowerCase(),
        CertPEM: issued.certPem,
        PrivateKeyPEM: issued.keyPem,
        Service: service,
        ServiceURI: uri,
        ValidAfter: issued.notBefore.toISOString(),
        ValidBefore: issued.notAfter.toISOString(),
        CreateIndex: index,
        ModifyIndex: index,
      },
    };
    // The agent renews at a random point between 60% and 90% of the lifetime.
    const life = issued.notAfter.getTime() - Date.now();
    const renewIn = life * (0.6 + Math.random() * 0.3);
    if (renewIn < 2 ** 31 - 1) leaf.timer = setTimeout(() => void this.#sign(service), renewIn).unref();
    this.#leaves.set(service, leaf);
    this.#notify();
    return leaf;
  }

  /** The check definitions of a registration, as Consul validates them; a string says why not. */
  #checks(body: Record<string, Json | undefined>, id: string, name: string): Check[] | string {
    // ServiceDefinition.CheckTypes: Check first, then Checks, numbered in that order.
    const defs = [...(body.Check ? [body.Check] : []), ...(Array.isArray(body.Checks) ? body.Checks : [])];
    const checks: Check[] = [];
    const ms = (v: Json | undefined): number | undefined => {
      if (typeof v === 'number') return v / 1e6;
      if (typeof v !== 'string' || v === '') return undefined;
      const ns = parseGoDuration(v);
      return ns === undefined ? Number.NaN : ns / 1e6;
    };
    for (const [i, c] of defs.entries()) {
      const def = (c ?? {}) as Record<string, Json | undefined>;
      for (const k of ['Interval', 'Timeout', 'TTL'] as const)
        if (Number.isNaN(ms(def[k])))
          return `Request decoding failed: time: invalid duration ${JSON.stringify(def[k])}`;
      // agent/structs/check_type.go CheckType.Validate.
      const interval = ms(def.Interval) ?? 0;
      const ttl = ms(def.TTL) ?? 0;
      const intervalCheck =
        ['TCP', 'HTTP', 'GRPC', 'H2PING', 'UDP', 'OSService'].some(
          (k) => typeof def[k] === 'string' && def[k] !== '',
        ) ||
        (Array.isArray(def.Args) && def.Args.length > 0) ||
        (Array.isArray(def.ScriptArgs) && def.ScriptArgs.length > 0);
      const alias = Boolean(def.AliasNode || def.AliasService);
      if (interval > 0 && ttl > 0) return 'Invalid check: Interval and TTL cannot both be specified';
      if (intervalCheck && interval <= 0)
        return 'Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks';
      if (intervalCheck && alias) return 'Invalid check: Interval cannot be set for Alias checks';
      if (alias && ttl > 0) return 'Invalid check: TTL must be not be set for Alias checks';
      if (!intervalCheck && !alias && ttl <= 0) return 'Invalid check: TTL must be > 0 for TTL checks';
      const status = def.Status === undefined || def.Status === '' ? 'critical' : String(def.Status);
      if (!['passing', 'warning', 'critical'].includes(status))
        return "Status for checks must 'passing', 'warning', 'critical'";
      // agent/agent.go addCheck: an interval under checks.MinInterval is raised to it.
      const every = Math.max(interval, MIN_INTERVAL_MS);
      const timeoutMs = (ms(def.Timeout) ?? 0) > 0 ? ms(def.Timeout)! : DEFAULT_TIMEOUT_MS;
      let probe: ProbeDefinition | undefined;
      if (typeof def.TCP === 'string' && def.TCP !== '') probe = { kind: 'tcp', tcp: def.TCP, timeoutMs };
      else if (typeof def.HTTP === 'string' && def.HTTP !== '') {
        const header: Record<string, string[]> = {};
        for (const [k, v] of Object.entries((def.Header ?? {}) as Record<string, Json>))
          header[k] = Array.isArray(v) ? v.map(String) : [String(v)];
        probe = {
          kind: 'http',
          url: def.HTTP,
          method: String(def.Method ?? '') || 'GET',
          header,
          body: String(def.Body ?? ''),
          tlsSkipVerify: def.TLSSkipVerify === true,
          disableRedirects: def.DisableRedirects === true,
          timeoutMs,
        };
      }
      checks.push({
        CheckID: String(def.CheckID ?? `service:${id}${defs.length > 1 ? `:${i + 1}` : ''}`),
        Name: String(def.Name ?? `Service '${name}' check`),
        // Consul starts a check as critical unless Status says otherwise.
        Status: status,
        Output: '',
        local: { status, output: '' },
        ServiceID: id,
        ServiceName: name,
        ModifyIndex: this.#index + 1,
        ttlMs: ttl > 0 ? ttl : undefined,
        probe,
        intervalMs: probe ? every : undefined,
        stopped: false,
      });
    }
    return checks;
  }

  /** undefined once registered, else why the registration is refused (a 400). */
  #register(body: Record<string, Json | undefined>): string | undefined {
    const name = String(body.Name ?? '');
    const id = String(body.ID ?? name);
    const checks = this.#checks(body, id, name);
    if (typeof checks === 'string') return checks;
    const previous = this.#services.get(id);
    for (const c of previous?.checks ?? []) {
      this.#stopCheck(c);
      // agent.addServiceInternal restores a re-registered check's status and output from its snapshot.
      const again = checks.find((x) => x.CheckID === c.CheckID);
      if (again) {
        again.local = { ...c.local };
        again.Status = c.Status;
        again.Output = c.Output;
      }
    }
    this.#services.set(id, {
      reg: {
        ID: id,
        Service: name,
        Tags: (body.Tags as Json[]) ?? [],
        Address: String(body.Address ?? ''),
        Port: Number(body.Port ?? 0),
        Meta: (body.Meta as Json) ?? {},
        TaggedAddresses: (body.TaggedAddresses as Json) ?? {},
        Kind: (body.Kind as Json) ?? '',
      },
      checks,
    });
    const tables = ['services', 'checks', `svc:${name}`];
    if (previous && previous.reg.Service !== name) tables.push(`svc:${String(previous.reg.Service)}`);
    const idx = this.#touch(...tables);
    for (const c of checks) {
      c.ModifyIndex = idx;
      this.#arm(c);
      this.#schedule(c);
    }
    return undefined;
  }

  /**
   * Every intention, as /v1/connect/intentions shows them: one per source of each service-intentions
   * config entry. Precedence highest first; ties by source, then destination name, as Consul sorts them.
   */
  #intentionList(): Record<string, Json>[] {
    const out: Record<string, Json>[] = [];
    for (const e of this.#config.values()) {
      if (e.Kind !== 'service-intentions') continue;
      const destination = String(e.Name);
      for (const x of (e.Sources as Record<string, Json>[] | undefined) ?? []) {
        out.push({
          ID: (x.LegacyID as string | undefined) ?? '',
          Description: String(x.Description ?? ''),
          SourceNS: String(x.Namespace ?? 'default'),
          SourceName: String(x.Name),
          SourcePartition: String(x.Partition ?? ''),
          SourcePeer: String(x.Peer ?? ''),
          SourceSamenessGroup: String(x.SamenessGroup ?? ''),
          DestinationNS: 'default',
          DestinationName: destination,
          SourceType: String(x.Type ?? 'consul'),
          Action: String(x.Action ?? ''),
          Permissions: (x.Permissions as Json[] | undefined) ?? [],
          Precedence: Number(x.Precedence ?? precedence(String(x.Name), destination)),
          CreateIndex: e.CreateIndex as number,
          ModifyIndex: e.ModifyIndex as number,
        });
      }
    }
    return out.sort(
      (a, b) =>
        Number(b.Precedence) - Number(a.Precedence) ||
        String(a.SourceName).localeCompare(String(b.SourceName)) ||
        String(a.DestinationName).localeCompare(String(b.DestinationName)),
    );
  }

  // --- HTTP ----------------------------------------------------------------------------------------------

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://emulator');
      this.requestLog.push({
        at: Date.now(),
        method: req.method ?? 'GET',
        path: url.pathname,
        blocking: Number(url.searchParams.get('index') ?? 0) > 0,
      });
      Promise.resolve()
        .then(() => this.#route(req.method ?? 'GET', url, Buffer.concat(chunks), req, res))
        .catch((err: Error) => {
          if (!res.headersSent) this.#send(res, 500, err.message);
        });
    });
  }

  #send(res: ServerResponse, status: number, body: Json | string, index?: number, filtered = false): void {
    if (res.destroyed) return;
    const headers: Record<string, string> = {
      'X-Consul-KnownLeader': 'true',
      'X-Consul-LastContact': '0',
      'X-Consul-Effective-Consistency': 'leader',
      // As every answer of Consul's HTTP handlers: acl.default_policy, `allow` with ACLs off.
      'X-Consul-Default-ACL-Policy': this.#opts.acl ? (this.#opts.acl.defaultPolicy ?? 'deny') : 'allow',
    };
    if (index !== undefined) headers['X-Consul-Index'] = String(index);
    if (filtered) headers['X-Consul-Results-Filtered-By-ACLs'] = 'true';
    if (typeof body === 'string' && status >= 400) {
      headers['Content-Type'] = 'text/plain; charset=utf-8';
      res.writeHead(status, headers).end(body);
      return;
    }
    headers['Content-Type'] = 'application/json';
    res.writeHead(status, headers).end(JSON.stringify(body));
  }

  /**
   * Answers now if the result's index is past `index`, else when it is (or the wait ends, or a reset).
   * `filtered` results carry X-Consul-Results-Filtered-By-ACLs, but only to a request with a token: Consul
   * masks it for anonymous ones (maskResultsFilteredByACLs).
   */
  async #blocking(
    url: URL,
    res: ServerResponse,
    compute: () => { index: number; body: Json; status?: number; filtered?: boolean },
  ): Promise<void> {
    const want = Number(url.searchParams.get('index') ?? 0);
    let r = compute();
    // As Consul's blockingQuery: any index at or past the result's blocks, one the server never issued
    // included (it is only a number to wait past); the wait ends it, or a snapshot restore (AbandonCh).
    if (want > 0 && r.index <= want) {
      const waitMs = Math.min(parseWait(url.searchParams.get('wait')), MAX_WAIT_MS);
      const deadline = Date.now() + waitMs + Math.random() * (waitMs / 16);
      const epoch = this.#epoch;
      // Bounded by the deadline; wakes on every change and re-evaluates.
      while (
        r.index <= want &&
        Date.now() < deadline &&
        this.#epoch === epoch &&
        !res.destroyed &&
        this.#server
      ) {
        await new Promise<void>((resolve) => {
          const w: Waiter = { wake: () => done() };
          const done = (): void => {
            clearTimeout(timer);
            this.#waiters.delete(w);
            res.removeListener('close', done);
            resolve();
          };
          const timer = setTimeout(done, Math.max(0, deadline - Date.now()));
          this.#waiters.add(w);
          res.once('close', done);
        });
        r = compute();
      }
      if (!this.#server) {
        res.destroy();
        return;
      }
    }
    const token = res.req.headers['x-consul-token'] ?? url.searchParams.get('token') ?? '';
    this.#send(res, r.status ?? 200, r.body, r.index, r.filtered === true && token !== '');
  }

  #authorize(req: IncomingMessage, url: URL, perm: string | undefined, resource: string): string | undefined {
    const acl = this.#opts.acl;
    if (!acl) return undefined;
    const token =
      (req.headers['x-consul-token'] as string | undefined) ?? url.searchParams.get('token') ?? '';
    // The anonymous token is always known; with no policy of its own it has only the default.
    const rules = acl.tokens[token] ?? (token === '' ? {} : undefined);
    if (rules === undefined) return 'ACL not found';
    if (perm === undefined || rules === 'management') return undefined;
    const granted = (p: string): boolean => {
      const r = rules[p];
      if (r === undefined && acl.defaultPolicy === 'allow') return true;
      return (
        r === '*' ||
        r?.some((x) => x === resource || (x.endsWith('*') && resource.startsWith(x.slice(0, -1))))
      );
    };
    // write implies read, as in Consul's policy language; service:read grants intentions:read on the service.
    const read = (p: string): boolean => granted(p) || granted(p.replace(/:read$/, ':write'));
    if (granted(perm) || (perm.endsWith(':read') && read(perm))) return undefined;
    if (perm === 'intentions:read' && read('service:read')) return undefined;
    return this.#denied(perm, resource, token);
  }

  #denied(perm: string | undefined, resource: string, accessor: string): string {
    return `Permission denied: token with AccessorID '${accessor === 'anonymous' ? '00000000-0000-0000-0000-000000000002' : 'emulator'}' lacks permission '${perm ?? 'read'}' on "${resource}"`;
  }

  #checkJson(c: Check): Record<string, Json> {
    return {
      Node: this.nodeName,
      CheckID: c.CheckID,
      Name: c.Name,
      Status: c.Status,
      Output: c.Output,
      ServiceID: c.ServiceID,
      ServiceName: c.ServiceName,
      ModifyIndex: c.ModifyIndex,
    };
  }

  /** The node's Serf check, always passing: the emulator is one healthy node. */
  #serf(): Record<string, Json> {
    return {
      Node: this.nodeName,
      CheckID: 'serfHealth',
      Name: 'Serf Health Status',
      Status: 'passing',
      ServiceID: '',
      ServiceName: '',
      ModifyIndex: 1,
    };
  }

  #can(req: IncomingMessage, url: URL, perm: string, resource: string): boolean {
    return this.#authorize(req, url, perm, resource) === undefined;
  }

  async #route(
    method: string,
    url: URL,
    raw: Buffer,
    req: IncomingMessage,
    res: ServerResponse,
  ): Promise<void> {
    const p = url.pathname;
    const q = url.searchParams;
    const json = (): Record<string, Json | undefined> => (raw.length ? JSON.parse(raw.toString('utf8')) : {});
    const deny = (perm: string | undefined, resource: string): boolean => {
      const why = this.#authorize(req, url, perm, resource);
      if (why === undefined) return false;
      this.#send(res, 403, why);
      return true;
    };
    let m = [] as unknown as RegExpExecArray;
    const hit = (re: RegExp): boolean => {
      const r = re.exec(p);
      if (r) m = r;
      return r !== null;
    };

    if (p === '/v1/status/leader') return this.#send(res, 200, '127.0.0.1:8300');
    if (p === '/v1/agent/self' && method === 'GET') {
      if (deny('agent:read', this.nodeName)) return;
      return this.#send(res, 200, {
        Config: { Datacenter: this.datacenter, NodeName: this.nodeName, Server: true, Version: 'emulator' },
        Member: { Name: this.nodeName, Addr: '127.0.0.1' },
      });
    }
    if (p === '/v1/agent/service/register' && method === 'PUT') {
      const body = json();
      if (typeof body.Name !== 'string' || !body.Name) return this.#send(res, 400, 'Missing service name');
      if (deny('service:write', body.Name)) return;
      const invalid = this.#register(body);
      if (invalid) return this.#send(res, 400, invalid);
      return this.#send(res, 200, null);
    }
    if (hit(/^\/v1\/agent\/service\/deregister\/(.+)$/) && method === 'PUT') {
      const id = decodeURIComponent(m[1]!);
      const s = this.#services.get(id);
      if (!s)
        return this.#send(
          res,
          404,
          `Unknown service ID "${id}". Ensure that the service ID is passed, not the service name.`,
        );
      if (deny('service:write', String(s.reg.Service))) return;
      for (const c of s.checks) this.#stopCheck(c);
      this.#services.delete(id);
      this.#touch('services', 'checks', `svc:${String(s.reg.Service)}`);
      return this.#send(res, 200, null);
    }
    if (hit(/^\/v1\/agent\/check\/update\/(.+)$/) && method === 'PUT') {
      const id = decodeURIComponent(m[1]!);
      const owner = [...this.#services.values()].find((s) => s.checks.some((c) => c.CheckID === id));
      const check = owner?.checks.find((c) => c.CheckID === id);
      if (!owner || !check) return this.#send(res, 404, `Unknown check ID "${id}"`);
      if (deny('service:write', String(owner.reg.Service))) return;
      if (check.ttlMs === undefined)
        return this.#send(res, 500, `CheckID "${id}" does not have associated TTL`);
      const body = json();
      const status = String(body.Status ?? '');
      if (!['passing', 'warning', 'critical'].includes(status))
        return this.#send(res, 400, 'Request body must contain a valid Status');
      // CheckTTL.SetStatus: the output capped at checks.DefaultBufSize, kept for the expiry message.
      let output = String(body.Output ?? '');
      if (output.length > 4096)
        output = `${output.slice(0, 4096)} ... (captured 4096 of ${output.length} bytes)`;
      check.lastTtlOutput = output;
      this.#updateCheck(check, status, output);
      this.#arm(check);
      return this.#send(res, 200, null);
    }
    if (p === '/v1/agent/services' && method === 'GET') {
      if (deny(undefined, '')) return;
      const out: Record<string, Json> = {};
      for (const [id, s] of this.#services)
        if (this.#can(req, url, 'service:read', String(s.reg.Service))) out[id] = s.reg as Json;
      return this.#send(res, 200, out);
    }
    if (p === '/v1/catalog/services' && method === 'GET') {
      if (deny(undefined, '')) return;
      return this.#blocking(url, res, () => {
        // Consul filters the list by service:read (the `consul` service included) rather than refusing it.
        let filtered = !this.#can(req, url, 'service:read', 'consul');
        const out: Record<string, Json> = filtered ? {} : { consul: [] };
        for (const s of this.#services.values()) {
          const name = String(s.reg.Service);
          if (!this.#can(req, url, 'service:read', name)) {
            filtered = true;
            continue;
          }
          const tags = new Set([
            ...((out[name] as string[] | undefined) ?? []),
            ...((s.reg.Tags as string[]) ?? []),
          ]);
          out[name] = [...tags];
        }
        return { index: this.#table('services'), body: out, filtered };
      });
    }
    if (hit(/^\/v1\/(health|catalog)\/service\/(.+)$/) && method === 'GET') {
      const name = decodeURIComponent(m[2]!);
      const health = m[1] === 'health';
      if (deny(undefined, '')) return;
      return this.#blocking(url, res, () => {
        const out: Json[] = [];
        // An instance needs service:read on its service and node:read on its node (filterCheckServiceNodes).
        const readable =
          this.#can(req, url, 'service:read', name) && this.#can(req, url, 'node:read', this.nodeName);
        let filtered = false;
        for (const s of this.#services.values()) {
          if (s.reg.Service !== name) continue;
          if (!readable) {
            filtered = true;
            continue;
          }
          const checks = [this.#serf(), ...s.checks.map((c) => this.#checkJson(c))];
          if (health && q.has('passing') && checks.some((c) => c.Status !== 'passing')) continue;
          if (health) {
            out.push({
              Node: { Node: this.nodeName, Address: '127.0.0.1', Datacenter: this.datacenter },
              Service: s.reg as Json,
              Checks: checks,
            });
          } else {
            out.push({
              Node: this.nodeName,
              Address: '127.0.0.1',
              ServiceID: s.reg.ID as Json,
              ServiceName: name,
              ServiceAddress: s.reg.Address as Json,
              ServicePort: s.reg.Port as Json,
              ServiceTags: s.reg.Tags as Json,
              ServiceMeta: s.reg.Meta as Json,
            });
          }
        }
        return { index: this.#table(`svc:${name}`), body: out, filtered };
      });
    }
    if (hit(/^\/v1\/health\/state\/([a-z]+)$/) && method === 'GET') {
      // Every check in the given state (`any` for all), the node's Serf check included, filtered by
      // node:read and service:read as Consul filters health answers.
      const state = m[1]!;
      if (deny(undefined, '')) return;
      return this.#blocking(url, res, () => {
        const out: Json[] = [];
        let filtered = false;
        const nodeReadable = this.#can(req, url, 'node:read', this.nodeName);
        if (nodeReadable) out.push(this.#serf());
        else filtered = true;
        for (const s of this.#services.values()) {
          for (const c of s.checks) {
            if (!nodeReadable || !this.#can(req, url, 'service:read', c.ServiceName)) {
              filtered = true;
              continue;
            }
            out.push(this.#checkJson(c));
          }
        }
        const body = state === 'any' ? out : out.filter((c) => (c as { Status: string }).Status === state);
        return { index: this.#table('checks'), body, filtered };
      });
    }
    if ((p === '/v1/agent/connect/ca/roots' || p === '/v1/connect/ca/roots') && method === 'GET') {
      if (deny(undefined, '')) return;
      return this.#blocking(url, res, () => ({
        index: this.#table('roots', 'roots'),
        body: {
          ActiveRootID: this.#roots.find((r) => r.active)!.id,
          TrustDomain: this.trustDomain,
          Roots: this.#roots.map((r) => ({
            ID: r.id,
            Name: 'Consul CA Primary Cert',
            RootCert: r.pem,
            IntermediateCerts: [],
            Active: r.active,
            NotBefore: r.notBefore,
            NotAfter: r.notAfter,
            CreateIndex: r.createIndex,
            ModifyIndex: r.createIndex,
          })),
        },
      }));
    }
    if (hit(/^\/v1\/agent\/connect\/ca\/leaf\/(.+)$/) && method === 'GET') {
      const service = decodeURIComponent(m[1]!);
      if (deny('service:write', service)) return;
      if (!this.#leaves.has(service)) await this.#sign(service);
      return this.#blocking(url, res, () => {
        const leaf = this.#leaves.get(service)!;
        return { index: leaf.index, body: leaf.body };
      });
    }
    if (p === '/v1/connect/intentions' && method === 'GET') {
      // Every intention the token may read (intentions:read on its destination), in Consul's order.
      if (deny(undefined, '')) return;
      return this.#blocking(url, res, () => ({
        index: this.#table(IXN_TABLE, 'config'),
        body: this.#intentionList().filter((i) =>
          this.#can(req, url, 'intentions:read', String(i.DestinationName)),
        ),
      }));
    }
    if (p === '/v1/connect/intentions/match' && method === 'GET') {
      const by = q.get('by');
      const names = q.getAll('name');
      if (by !== 'source' && by !== 'destination')
        return this.#send(res, 400, "'by' must be 'source' or 'destination'");
      if (names.length === 0) return this.#send(res, 400, 'required query parameter "name" not set');
      for (const n of names) if (deny('intentions:read', n)) return;
      return this.#blocking(url, res, () => {
        const out: Record<string, Json> = {};
        for (const n of names) {
          out[n] = this.#intentionList()
            .filter((i) =>
              by === 'destination'
                ? [n, '*'].includes(String(i.DestinationName))
                : [n, '*'].includes(String(i.SourceName)),
            )
            .sort((a, b) => Number(b.Precedence) - Number(a.Precedence));
        }
        return { index: this.#table(IXN_TABLE, 'config'), body: out };
      });
    }
    if (p === '/v1/connect/intentions/exact') {
      const source = q.get('source');
      const destination = q.get('destination');
      if (!source || !destination)
        return this.#send(res, 400, 'required query parameters "source" and "destination" not set');
      const entryKey = `service-intentions/${destination}`;
      const entry = this.#config.get(entryKey);
      const sources = (entry?.Sources as Record<string, Json>[] | undefined) ?? [];
      if (method === 'GET') {
        if (deny('intentions:read', destination)) return;
        const i = this.#intentionList().find(
          (x) => x.SourceName === source && x.DestinationName === destination,
        );
        return i
          ? this.#send(res, 200, i, this.#table(IXN_TABLE, 'config'))
          : this.#send(res, 404, 'Intention not found');
      }
      if (deny('intentions:write', destination)) return;
      if (method === 'DELETE') {
        // The source leaves the destination's service-intentions entry; the last one takes the entry along.
        const rest = sources.filter((x) => x.Name !== source);
        const idx = this.#touch(IXN_TABLE);
        if (entry && rest.length === 0) this.#config.delete(entryKey);
        else if (entry) this.#config.set(entryKey, { ...entry, Sources: rest, ModifyIndex: idx });
        return this.#send(res, 200, true);
      }
      if (method === 'PUT') {
        const body = json();
        const perms = Array.isArray(body.Permissions) ? body.Permissions : [];
        if (body.Action && perms.length)
          return this.#send(res, 400, 'Action and Permissions cannot both be set');
        if (!body.Action && !perms.length)
          return this.#send(res, 400, 'Action must be set to "allow" or "deny"');
        if (body.Action && body.Action !== 'allow' && body.Action !== 'deny')
          return this.#send(res, 400, 'Action must be set to "allow" or "deny"');
        // Consul keeps intentions as the Sources of one service-intentions config entry per destination.
        const idx = this.#touch(IXN_TABLE);
        const src: Record<string, Json> = {
          Name: source,
          Action: (body.Action as string) ?? '',
          Permissions: perms,
          Precedence: precedence(source, destination),
          Type: 'consul',
          Description: String(body.Description ?? ''),
        };
        this.#config.set(entryKey, {
          Kind: 'service-intentions',
          Name: destination,
          ...(entry ?? {}),
          // UpsertSourceByName replaces in place or appends; Normalize keeps them by precedence (stable).
          Sources: (sources.some((x) => x.Name === source)
            ? sources.map((x) => (x.Name === source ? src : x))
            : [...sources, src]
          ).sort((a, b) => Number(b.Precedence) - Number(a.Precedence)),
          CreateIndex: (entry?.CreateIndex as number) ?? idx,
          ModifyIndex: idx,
        } as Record<string, Json>);
        return this.#send(res, 200, true);
      }
    }
    if (p === '/v1/config' && method === 'PUT') {
      let body: Record<string, Json | undefined>;
      try {
        body = decodeConfigEntry(json() as Record<string, Json | undefined>);
      } catch (err) {
        if (err instanceof ConfigEntryError) return this.#send(res, err.status, err.message);
        // decodeBody: a body that is not JSON is a decoding failure too.
        if (err instanceof SyntaxError)
          return this.#send(res, 400, `Request decoding failed: ${err.message}`);
        throw err;
      }
      const kind = String(body.Kind ?? '');
      // Kinds the emulator stores unchecked still need a name to be kept under (mesh has a fixed one).
      const name = String(body.Name ?? (kind === 'mesh' ? 'mesh' : ''));
      if (name === '') return this.#send(res, 500, 'Name is required');
      if (deny(writePermission(kind), name)) return;
      const key = `${kind}/${name}`;
      const prev = this.#config.get(key);
      if (q.has('cas')) {
        const cas = Number(q.get('cas'));
        if (cas === 0 ? prev !== undefined : prev?.ModifyIndex !== cas) return this.#send(res, 200, false);
      }
      const broken = chainError(new Map([...this.#config, [key, body]]));
      if (broken) return this.#send(res, broken.status, broken.message);
      const idx = this.#touch(`config:${kind}`);
      const stored = { ...(body as Record<string, Json>) };
      this.#config.set(key, {
        ...stored,
        CreateIndex: (prev?.CreateIndex as number) ?? idx,
        ModifyIndex: idx,
      });
      return this.#send(res, 200, true);
    }
    if (hit(/^\/v1\/config\/([^/]+)(?:\/(.+))?$/)) {
      const kind = decodeURIComponent(m[1]!);
      const name = m[2] !== undefined ? decodeURIComponent(m[2]) : undefined;
      const perm = writePermission(kind).replace(':write', ':read');
      if (method === 'GET' && name === undefined) {
        if (deny(undefined, '')) return;
        return this.#blocking(url, res, () => ({
          index: this.#table(`config:${kind}`, 'config'),
          body: [...this.#config.values()].filter(
            (e) => e.Kind === kind && this.#can(req, url, perm, String(e.Name)),
          ),
        }));
      }
      if (method === 'GET' && name !== undefined) {
        if (deny(perm, name)) return;
        return this.#blocking(url, res, () => {
          const e = this.#config.get(`${kind}/${name}`);
          return e
            ? { index: this.#table(`config:${kind}`, 'config'), body: e }
            : {
                index: this.#table(`config:${kind}`, 'config'),
                body: `Config entry not found for "${kind}" / "${name}"`,
                status: 404,
              };
        });
      }
      if (method === 'DELETE' && name !== undefined) {
        if (deny(perm.replace(':read', ':write'), name)) return;
        const key = `${kind}/${name}`;
        const prev = this.#config.get(key);
        if (q.has('cas') && prev?.ModifyIndex !== Number(q.get('cas'))) return this.#send(res, 200, false);
        const rest = new Map(this.#config);
        rest.delete(key);
        const broken = chainError(rest);
        if (broken) return this.#send(res, broken.status, broken.message);
        this.#config.delete(key);
        this.#touch(`config:${kind}`);
        return this.#send(res, 200, true);
      }
    }
    if (hit(/^\/v1\/kv\/(.*)$/)) {
      const key = decodeURIComponent(m[1]!);
      if (method === 'GET') {
        if (deny('key:read', key)) return;
        return this.#blocking(url, res, () => {
          const hits = [...this.#kv.entries()]
            .filter(([k]) => (q.has('recurse') ? k.startsWith(key) : k === key))
            .map(([k, v]) => ({ Key: k, LockIndex: 0, ...v }));
          const index = this.#table('kv', 'kv');
          if (hits.length === 0) return { index, body: '', status: 404 };
          if (q.has('raw') && !q.has('recurse'))
            return { index, body: Buffer.from(hits[0]!.Value ?? '', 'base64').toString('utf8') };
          return { index, body: hits };
        });
      }
      if (deny('key:write', key)) return;
      if (method === 'PUT') {
        const prev = this.#kv.get(key);
        if (q.has('cas')) {
          const cas = Number(q.get('cas'));
          if (cas === 0 ? prev !== undefined : prev?.ModifyIndex !== cas) return this.#send(res, 200, false);
        }
        const idx = this.#touch('kv');
        this.#kv.set(key, {
          Value: raw.length ? raw.toString('base64') : null,
          Flags: Number(q.get('flags') ?? 0),
          CreateIndex: prev?.CreateIndex ?? idx,
          ModifyIndex: idx,
        });
        return this.#send(res, 200, true);
      }
      if (method === 'DELETE') {
        for (const k of [...this.#kv.keys()])
          if (q.has('recurse') ? k.startsWith(key) : k === key) this.#kv.delete(k);
        this.#touch('kv');
        return this.#send(res, 200, true);
      }
    }
    this.#send(res, 404, `no such endpoint: ${method} ${p}`);
  }
}

/** Intentions and service-intentions config entries are one table, as in Consul 1.9 and later. */
const IXN_TABLE = 'config:service-intentions';

/** What writing a config entry of this kind needs (service-intentions: intentions:write on its Name). */
function writePermission(kind: string): string {
  if (kind === 'service-intentions') return 'intentions:write';
  return kind.startsWith('service-') ? 'service:write' : 'operator:write';
}

function parseWait(v: string | null): number {
  if (!v) return DEFAULT_WAIT_MS;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v);
  if (!m) return DEFAULT_WAIT_MS;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  return Number(m[1]) * unit;
}

// --- the same suite against a real agent ------------------------------------------------------------------

export interface ConsulUnderTest {
  readonly kind: 'emulator' | 'real';
  readonly address: string;
  /** The emulator, for hooks; undefined against a real agent (hook-dependent tests skip). */
  readonly emulator: ConsulEmulator | undefined;
  /** The management token when ACLs are on. */
  readonly managementToken: string | undefined;
  /**
   * A token with exactly these rules (ACLs on): `hcl` for a real agent (an ACL policy), `emulator` for the
   * emulator's permission map; the two must say the same.
   */
  createToken(rules: { hcl: string; emulator: TokenRules }): Promise<string>;
  close(): Promise<void>;
}

/** The consul binary to test against: CONSUL_BIN, or `consul` on PATH; undefined if neither. */
export function consulBinary(): string | undefined {
  if (process.env.CONSUL_BIN) return process.env.CONSUL_BIN;
  const r = spawnSync('consul', ['version'], { stdio: 'ignore', timeout: 5000 });
  return r.status === 0 ? 'consul' : undefined;
}

/**
 * A Consul to test against: a real `consul agent -dev` on loopback when a binary is available, else the
 * emulator. With `acl`, ACLs are on (default deny) and `managementToken` is the only token known.
 */
export async function startConsul(
  opts: { acl?: boolean; leafTtlMs?: number } = {},
): Promise<ConsulUnderTest> {
  const bin = consulBinary();
  const managementToken = opts.acl ? randomUUID() : undefined;
  if (!bin) {
    const emulator = await ConsulEmulator.start({
      leafTtlMs: opts.leafTtlMs,
      acl: managementToken ? { tokens: { [managementToken]: 'management' } } : undefined,
    });
    return {
      kind: 'emulator',
      address: emulator.address,
      emulator,
      managementToken,
      async createToken(rules) {
        const secret = randomUUID();
        emulator.addToken(secret, rules.emulator);
        return secret;
      },
      close: () => emulator.close(),
    };
  }
  return startRealAgent(bin, managementToken);
}

async function freeLoopbackPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

async function startRealAgent(bin: string, managementToken: string | undefined): Promise<ConsulUnderTest> {
  const [http, serfLan, serfWan, server] = [
    await freeLoopbackPort(),
    await freeLoopbackPort(),
    await freeLoopbackPort(),
    await freeLoopbackPort(),
  ];
  const dir = await mkdtemp(join(tmpdir(), 'consul-dev-'));
  const args = [
    'agent',
    '-dev',
    '-bind',
    '127.0.0.1',
    '-client',
    '127.0.0.1',
    '-http-port',
    String(http),
    '-dns-port',
    '-1',
    '-grpc-port',
    '-1',
    '-serf-lan-port',
    String(serfLan),
    '-serf-wan-port',
    String(serfWan),
    '-server-port',
    String(server),
    '-data-dir',
    dir,
  ];
  if (managementToken) {
    args.push(
      '-hcl',
      `acl { enabled = true default_policy = "deny" tokens { initial_management = "${managementToken}" } }`,
    );
  }
  const child: ChildProcess = spawn(bin, args, { stdio: 'ignore' });
  const address = `127.0.0.1:${http}`;
  const close = async (): Promise<void> => {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => {
        const t = setTimeout(() => {
          child.kill('SIGKILL');
          r(undefined);
        }, 5000);
        child.once('exit', () => {
          clearTimeout(t);
          r(undefined);
        });
      });
    }
    await rm(dir, { recursive: true, force: true });
  };
  // As Consul's own tests do: a leader, an index of at least 2, and an active CA root. Bounded: 30 s.
  const headers: Record<string, string> = managementToken ? { 'x-consul-token': managementToken } : {};
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const leader = await (await fetch(`http://${address}/v1/status/leader`, { headers })).json();
      const cat = await fetch(`http://${address}/v1/catalog/services`, { headers });
      const idx = Number(cat.headers.get('x-consul-index') ?? 0);
      const roots = (await (
        await fetch(`http://${address}/v1/agent/connect/ca/roots`, { headers })
      ).json()) as {
        Roots?: { Active: boolean }[];
      };
      if (leader && idx >= 2 && roots.Roots?.some((r) => r.Active)) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline || child.exitCode !== null) {
      await close();
      throw new Error(`consul agent -dev did not become ready at ${address}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const createToken = async (rules: { hcl: string }): Promise<string> => {
    const put = async (path: string, body: unknown): Promise<Record<string, string>> => {
      const r = await fetch(`http://${address}${path}`, {
        method: 'PUT',
        headers: { ...headers, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      if (!r.ok) throw new Error(`PUT ${path}: ${r.status} ${await r.text()}`);
      return (await r.json()) as Record<string, string>;
    };
    const policy = await put('/v1/acl/policy', { Name: `p-${randomUUID()}`, Rules: rules.hcl });
    return (await put('/v1/acl/token', { Policies: [{ ID: policy.ID }] })).SecretID!;
  };
  return { kind: 'real', address, emulator: undefined, managementToken, createToken, close };
}

/**
 * A port below the kernel's ephemeral range (ip_local_port_range; Linux's default starts at 32768), drawn
 * at random so that the emulators of tests running at once seldom meet.
 */
function belowEphemeral(): number {
  let low = 32768;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
  } catch {
    // Not Linux: its default range starts at 49152, above this one.
  }
  if (!Number.isFinite(low)) low = 32768;
  const top = Math.max(11_000, Math.min(low, 65_536));
  return 10_000 + Math.floor(Math.random() * (top - 10_000));
}
