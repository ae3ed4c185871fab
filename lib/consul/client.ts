// The one small HTTP client layer between Ambit and the local Consul agent: base URL, token header, errors
// that name what went wrong (a 403 names the missing ACL permission), and the blocking-query loop every
// watch runs on. Plain node:http rather than the `consul` npm package: that package lacks the Connect,
// intention and config-entry endpoints, so one layer here serves every endpoint the same way; and rather
// than fetch, whose default 300 s headers timeout would cut a 5-minute blocking query short.

import { EventEmitter } from 'node:events';
import { Agent as HttpAgent, type IncomingMessage, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { type BackoffOptions, backoffDelay } from '../backoff.js';
import {
  AmbitError,
  ConfigError,
  ConsulPermissionError,
  ConsulRequestError,
  ConsulUnavailableError,
} from '../errors.js';
import type { Secret } from './secret.js';

export const DEFAULT_CONSUL_ADDRESS = '127.0.0.1:8500';

/**
 * Connections the client holds to the agent at most, far under Consul's `limits.http_max_conns_per_client`
 * (default 200; 429 above it). Requests beyond it queue for a free connection.
 */
export const MAX_CONNECTIONS = 32;
/** Of those, kept free of long polls, so that registrations and plain reads never wait behind them. */
export const RESERVED_CONNECTIONS = 8;

export interface ConsulClientOptions {
  /** `host:port`, `http://host:port` or `https://host:port` (as CONSUL_HTTP_ADDR). */
  address: string;
  token?: Secret | undefined;
  /** Timeout of a non-blocking request; default 10 s. */
  timeoutMs?: number;
  /** Called once per request sent (for metrics and load measurements). */
  onRequest?: (endpoint: string, outcome: string) => void;
}

export interface ConsulResponse<T> {
  body: T;
  /** X-Consul-Index; undefined when the endpoint does not send one. */
  index: number | undefined;
  knownLeader: boolean | undefined;
  status: number;
  /**
   * X-Consul-Results-Filtered-By-ACLs: the token could not read some of the results and Consul left them
   * out. Consul sends it only to a request that carries a token (never to anonymous ones).
   */
  filteredByAcls: boolean;
  /** X-Consul-Default-ACL-Policy: the agent's `acl.default_policy` (`allow` when ACLs are off). */
  defaultAclPolicy: 'allow' | 'deny' | undefined;
}

/** What a response says about the ACL system besides its body. */
export type ResponseMeta = Pick<ConsulResponse<unknown>, 'filteredByAcls' | 'defaultAclPolicy'>;

export interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  /** Blocking query: the index to wait past, and for how long (ms). */
  index?: number;
  waitMs?: number;
  signal?: AbortSignal;
  /** 404 is an answer (undefined body), not an error. */
  allow404?: boolean;
  /** What the token needs for this request, to name in a 403 error when Consul does not say. */
  permission?: string;
}

/** Parses CONSUL_HTTP_ADDR's forms into a base URL; throws ConfigError for anything else. */
export function consulBaseUrl(address: string, field = 'consul'): URL {
  const text = address.trim();
  const withScheme = /^[a-z]+:\/\//i.test(text) ? text : `http://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new ConfigError(`must be host:port or http(s)://host:port, got ${JSON.stringify(address)}`, {
      field,
    });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(`only http:// and https:// Consul addresses are supported, got ${address}`, {
      field,
    });
  }
  if (!url.port) url.port = url.protocol === 'https:' ? '8501' : '8500';
  return url;
}

/** The ACL rule an endpoint needs, for the 403 message when Consul's own answer does not name it. */
export function permissionFor(method: string, path: string): string {
  const tail = (prefix: string): string => decodeURIComponent(path.slice(prefix.length).split('?')[0] ?? '');
  if (path.startsWith('/v1/agent/service/register')) return 'service:write';
  if (path.startsWith('/v1/agent/service/deregister/'))
    return `service:write on the service ${tail('/v1/agent/service/deregister/')}`;
  if (path.startsWith('/v1/agent/connect/ca/leaf/'))
    return `service:write on "${tail('/v1/agent/connect/ca/leaf/')}"`;
  if (path.startsWith('/v1/health/service/'))
    return `service:read on "${tail('/v1/health/service/')}" and node:read`;
  if (path.startsWith('/v1/catalog/')) return 'service:read and node:read';
  if (path.startsWith('/v1/connect/intentions'))
    return method === 'GET' ? 'intentions:read' : 'intentions:write';
  if (path.startsWith('/v1/config'))
    return method === 'GET' ? 'service:read' : 'service:write (or operator:write)';
  if (path.startsWith('/v1/kv/')) return method === 'GET' ? 'key:read' : 'key:write';
  if (path.startsWith('/v1/agent/')) return 'agent:read';
  return 'the needed permission';
}

/** Reads Consul's 403 text: `ACL not found`, or `Permission denied: token ... lacks permission 'x' on "y"`. */
export function describe403(body: string, fallback: string): string {
  if (/acl not found/i.test(body)) {
    return 'is not known to Consul (ACL not found): check --consul-token, CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE';
  }
  const m = /lacks permission '([^']+)'(?: on "([^"]*)")?/.exec(body);
  if (m) return `lacks ${m[1]}${m[2] !== undefined ? ` on "${m[2]}"` : ''}`;
  return `lacks ${fallback}`;
}

/** An HTTP client for the local Consul agent. Every request carries the token in X-Consul-Token. */
export class ConsulClient {
  readonly base: URL;
  readonly #token: Secret | undefined;
  readonly #timeoutMs: number;
  readonly #agent: HttpAgent;
  /** Called once per request sent (metrics, load measurements). */
  onRequest: ((endpoint: string, outcome: string) => void) | undefined;
  #requests = 0;

  constructor(opts: ConsulClientOptions) {
    this.base = consulBaseUrl(opts.address);
    this.#token = opts.token;
    this.#timeoutMs = opts.timeoutMs ?? 10_000;
    const agentOpts = { keepAlive: true, maxFreeSockets: 16, maxSockets: MAX_CONNECTIONS };
    this.#agent = this.base.protocol === 'https:' ? new HttpsAgent(agentOpts) : new HttpAgent(agentOpts);
    this.onRequest = opts.onRequest;
  }

  /** Requests sent since the client was made. */
  get requests(): number {
    return this.#requests;
  }

  /** `host:port` as shown in messages (never with credentials). */
  get address(): string {
    return this.base.host;
  }

  close(): void {
    this.#agent.destroy();
  }

  get<T>(path: string, opts: RequestOptions = {}): Promise<ConsulResponse<T>> {
    return this.request<T>('GET', path, opts);
  }

  put<T>(path: string, opts: RequestOptions = {}): Promise<ConsulResponse<T>> {
    return this.request<T>('PUT', path, opts);
  }

  delete<T>(path: string, opts: RequestOptions = {}): Promise<ConsulResponse<T>> {
    return this.request<T>('DELETE', path, opts);
  }

  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<ConsulResponse<T>> {
    const url = new URL(path, this.base);
    for (const [k, v] of Object.entries(opts.query ?? {})) {
      if (v === undefined || v === false) continue;
      url.searchParams.set(k, v === true ? '' : String(v));
    }
    const blocking = opts.index !== undefined && opts.index > 0;
    if (blocking) {
      url.searchParams.set('index', String(opts.index));
      url.searchParams.set('wait', `${Math.max(1, Math.round((opts.waitMs ?? 300_000) / 1000))}s`);
    }
    // Consul adds up to wait/16 of jitter before it answers a blocking query; allow that and some slack.
    const timeoutMs = blocking ? (opts.waitMs ?? 300_000) * (17 / 16) + 15_000 : this.#timeoutMs;
    const what = `${method} ${url.pathname}`;
    const endpoint = endpointOf(url.pathname);
    this.#requests++;
    let res: { status: number; headers: IncomingMessage['headers']; text: string };
    try {
      res = await this.#send(method, url, opts.body, timeoutMs, opts.signal);
    } catch (err) {
      this.onRequest?.(endpoint, 'error');
      if (err instanceof AmbitError) throw err;
      throw new ConsulUnavailableError(this.address, `${what}: ${reasonOf(err)}`, { cause: err });
    }
    this.onRequest?.(endpoint, String(res.status));
    const index = headerNumber(res.headers['x-consul-index']);
    const leader = res.headers['x-consul-knownleader'];
    const knownLeader = leader === undefined ? undefined : leader === 'true';
    const filteredByAcls = res.headers['x-consul-results-filtered-by-acls'] === 'true';
    const policy = res.headers['x-consul-default-acl-policy'];
    const defaultAclPolicy: ResponseMeta['defaultAclPolicy'] =
      policy === 'allow' || policy === 'deny' ? policy : undefined;
    const meta = { index, knownLeader, filteredByAcls, defaultAclPolicy };
    if (res.status === 404 && opts.allow404) {
      return { body: undefined as T, ...meta, status: 404 };
    }
    if (res.status === 403) {
      const permission = describe403(res.text, opts.permission ?? permissionFor(method, url.pathname));
      throw new ConsulPermissionError(what, permission, res.text.trim().slice(0, 200));
    }
    if (res.status >= 500 || res.status === 429) {
      throw new ConsulUnavailableError(
        this.address,
        `${what}: ${res.status} ${res.text.trim().slice(0, 200)}`,
      );
    }
    if (res.status >= 400) throw new ConsulRequestError(what, res.status, res.text.trim().slice(0, 300));
    let body: unknown;
    if (res.text.length > 0) {
      try {
        body = JSON.parse(res.text);
      } catch {
        body = res.text;
      }
    }
    return { body: body as T, ...meta, status: res.status };
  }

  #send(
    method: string,
    url: URL,
    body: unknown,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<{ status: number; headers: IncomingMessage['headers']; text: string }> {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const headers: Record<string, string> = { accept: 'application/json' };
    const token = this.#token?.reveal();
    if (token) headers['x-consul-token'] = token;
    if (payload !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(payload));
    }
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = send(url, { method, headers, agent: this.#agent, signal }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            text: Buffer.concat(chunks).toString('utf8'),
          }),
        );
      });
      req.setTimeout(timeoutMs, () =>
        req.destroy(new Error(`no answer within ${Math.round(timeoutMs / 1000)} s`)),
      );
      req.on('error', reject);
      req.end(payload);
    });
  }
}

/** The endpoint family of a path, for metric labels: `/v1/health/service/web` → `/v1/health/service`. */
export function endpointOf(pathname: string): string {
  const families = [
    '/v1/health/service',
    '/v1/catalog/services',
    '/v1/catalog/service',
    '/v1/agent/connect/ca/leaf',
    '/v1/agent/connect/ca/roots',
    '/v1/connect/intentions/match',
    '/v1/connect/intentions/exact',
    '/v1/agent/service/register',
    '/v1/agent/service/deregister',
    '/v1/config',
    '/v1/kv',
    '/v1/agent/self',
  ];
  return families.find((f) => pathname.startsWith(f)) ?? 'other';
}

function headerNumber(v: string | string[] | undefined): number | undefined {
  const text = Array.isArray(v) ? v[0] : v;
  if (text === undefined || !/^\d+$/.test(text)) return undefined;
  return Number(text);
}

function reasonOf(err: unknown): string {
  if (err instanceof Error) {
    if (err.name === 'AbortError') return 'request aborted';
    const code = (err as NodeJS.ErrnoException).code;
    return code && !err.message.includes(code) ? `${code} ${err.message}` : err.message;
  }
  return String(err);
}

// ---------------------------------------------------------------------------------------------------------
// Blocking queries

export interface WatchOptions {
  /** Query parameters besides index and wait (e.g. `{ passing: true }`). */
  query?: Record<string, string | number | boolean | undefined>;
  /** `wait` of each blocking query; default 5 min (Consul caps it at 10 min). */
  waitMs?: number;
  /** At most one request per this interval, however fast Consul answers; default 1 s. */
  minIntervalMs?: number;
  /** Jittered exponential backoff after errors; default 1 s doubling to 60 s. */
  backoff?: Partial<BackoffOptions>;
  allow404?: boolean;
}

export interface WatchEvents<T> {
  /** The result changed (or is the first one): the body Consul sent and its index. */
  change: [body: T, index: number];
  /** A request succeeded (whether or not the result changed), with what it said about ACLs. */
  ok: [meta: ResponseMeta];
  /** A request failed; the watch retries after `retryInMs`. */
  error: [err: AmbitError, retryInMs: number];
}

/**
 * One blocking query, repeated: `?index=<last X-Consul-Index>&wait=…`. Follows Consul's rules: an index
 * that goes backwards resets to 0 (one non-blocking read, then blocking again from the new index); an
 * index is never sent as 0 after the first read (clamped to 1), which would turn the loop into a spin; at
 * most one request per `minIntervalMs`; jittered exponential backoff on errors. A return is not a change:
 * 'change' fires only when the body differs from the last one delivered.
 */
export class Watch<T> extends EventEmitter<WatchEvents<T>> {
  readonly path: string;
  readonly #client: ConsulClient;
  readonly #opts: Required<Omit<WatchOptions, 'query' | 'backoff'>> & {
    query: WatchOptions['query'];
    backoff: BackoffOptions;
  };
  #index = 0;
  #lastText: string | undefined;
  #abort = new AbortController();
  #stopped = false;
  #running: Promise<void> | undefined;
  #failures = 0;
  #resets = 0;
  #wake: (() => void) | undefined;
  #succeeded = false;

  constructor(client: ConsulClient, path: string, opts: WatchOptions = {}) {
    super();
    this.path = path;
    this.#client = client;
    this.#opts = {
      query: opts.query,
      waitMs: Math.min(opts.waitMs ?? 300_000, 600_000),
      minIntervalMs: opts.minIntervalMs ?? 1000,
      allow404: opts.allow404 ?? false,
      backoff: { initialMs: 1000, maxMs: 60_000, ...opts.backoff },
    };
  }

  /** The index the next request blocks on (0: the next request does not block). */
  get index(): number {
    return this.#index;
  }

  /** How many times the index went backwards and was reset. */
  get resets(): number {
    return this.#resets;
  }

  /** Whether at least one request has succeeded. */
  get synced(): boolean {
    return this.#succeeded;
  }

  get failing(): boolean {
    return this.#failures > 0;
  }

  start(): this {
    this.#running ??= this.#loop();
    return this;
  }

  stop(): void {
    this.#stopped = true;
    this.#abort.abort();
    this.#wake?.();
  }

  async #loop(): Promise<void> {
    let lastStart = 0;
    // Bounded by stop(): each turn either waits on Consul (up to wait + jitter), sleeps for the rate limit
    // or the backoff, and stop() cuts all three short.
    while (!this.#stopped) {
      const gap = lastStart + this.#opts.minIntervalMs - Date.now();
      if (gap > 0) await this.#sleep(gap);
      if (this.#stopped) return;
      lastStart = Date.now();
      try {
        const res = await this.#client.get<T>(this.path, {
          query: this.#opts.query,
          index: this.#index,
          waitMs: this.#opts.waitMs,
          signal: this.#abort.signal,
          allow404: this.#opts.allow404,
        });
        if (this.#stopped) return;
        this.#failures = 0;
        this.#succeeded = true;
        const previous = this.#index;
        const next = res.index ?? 0;
        if (previous > 0 && next < previous) {
          // The index went backwards (a snapshot restore, a new cluster): start over from a fresh read.
          this.#index = 0;
          this.#resets++;
        } else {
          this.#index = Math.max(1, next);
        }
        this.emit('ok', { filteredByAcls: res.filteredByAcls, defaultAclPolicy: res.defaultAclPolicy });
        const text = JSON.stringify(res.body ?? null);
        if (text !== this.#lastText) {
          this.#lastText = text;
          this.emit('change', res.body, this.#index);
        }
      } catch (err) {
        if (this.#stopped) return;
        this.#failures++;
        const delay = backoffDelay(this.#failures, this.#opts.backoff);
        const error =
          err instanceof AmbitError
            ? err
            : new ConsulUnavailableError(this.#client.address, String(err), { cause: err });
        // Whatever the answer was, the next read starts over: the data behind an old index may be gone.
        this.#index = 0;
        this.emit('error', error, delay);
        await this.#sleep(delay);
      }
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.#wake = done;
    });
  }
}
