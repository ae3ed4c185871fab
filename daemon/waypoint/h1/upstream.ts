import type { Workload } from '../../../lib/mesh/model.js';
import type { OutboundPlan } from '../../proxy/outbound/plan.js';
// The waypoint's HTTP/1.1 connections to endpoints: tunnel streams opened to the endpoint's node as the
// waypoint's own hop, each with a response parser, kept between requests. A kept connection belongs to one
// client identity: the destination checks and logs the client its CONNECT names, so two clients never
// share one.
import { ConnectionGate, type ConnectionLimit } from '../conn-gate.js';
import { type HopClient, type HopDeps, openHop } from '../hop.js';
import type { ByteStream } from './byte-stream.js';
import { Http1Parser, type ParsedHead } from './parser.js';

/** How long a kept connection waits for the next request of its client to that endpoint. */
export const IDLE_UPSTREAM_MS = 60_000;
/** Kept connections per (endpoint, port, client); more are closed when their request is over. */
export const MAX_FREE_PER_KEY = 64;

/** A hop that gave no stream: the status the endpoint's daemon answered (401: the client's intentions), or 503. */
export class HopFailure extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

/** What hears one response (the exchange the connection is lent to). */
export interface ResponseHandler {
  /** The response's head; true: it has no body whatever its fields say (a response to HEAD). */
  head(h: ParsedHead): boolean;
  body(chunk: Buffer): void;
  end(): void;
  /** Bytes after a 101's head: the upgraded connection's. */
  raw(chunk: Buffer): void;
  /** The endpoint ended its side after an upgrade. */
  rawEnd(): void;
  /** The connection failed (reset, ended early, or not HTTP): it is closed already. */
  lost(why: string): void;
  /** The connection can take more of the request body. */
  drain(): void;
  /** A read of the response is parsed: what was held to go out with the next part can go now. */
  parsed?(): void;
}

export const upstreamKey = (ep: Workload, plan: OutboundPlan, client: HopClient): string =>
  `${ep.name}|${plan.targetPort}|${client.principal}`;

export class UpstreamConnection {
  readonly key: string;
  readonly stream: ByteStream;
  readonly endpoint: Workload;
  /** The `ip:port` the hop's CONNECT named, for the access log. */
  readonly authority: string;
  #handler: ResponseHandler | undefined;
  readonly #parser: Http1Parser;
  readonly #pool: UpstreamPool;
  /** False once the connection must not carry another request (closed, `Connection: close`, upgraded). */
  reusable = true;
  /** The MaxConnections pair whose slot it holds (conn-gate.ts), until it is forgotten. */
  pair: string | undefined;
  #upgraded = false;
  #timer: NodeJS.Timeout;

  constructor(
    pool: UpstreamPool,
    key: string,
    endpoint: Workload,
    authority: string,
    stream: ByteStream,
    maxHeadBytes: number,
  ) {
    this.#pool = pool;
    this.key = key;
    this.endpoint = endpoint;
    this.authority = authority;
    this.stream = stream;
    this.#parser = new Http1Parser(
      'response',
      {
        head: (h) => {
          if (!h.keepAlive) this.reusable = false;
          if (h.upgrade && h.status === 101) {
            this.#upgraded = true;
            this.reusable = false;
          }
          return this.#handler?.head(h) ?? true;
        },
        body: (c) => this.#handler?.body(c),
        end: () => this.#handler?.end(),
      },
      maxHeadBytes,
    );
    stream.on('data', (c: Buffer) => this.#data(c));
    stream.on('end', () => this.#end());
    stream.on('close', () => this.#closed());
    stream.on('drain', () => this.#handler?.drain());
    stream.on('error', () => {});
    this.#timer = setTimeout(() => this.#idle(), IDLE_UPSTREAM_MS);
    this.#timer.unref();
    stream.resume();
  }

  get busy(): boolean {
    return this.#handler !== undefined;
  }

  /** Lends the connection to one exchange until `release`. */
  lend(h: ResponseHandler): void {
    this.#handler = h;
  }

  /** The exchange is over: kept for the next request if it can be, else closed. */
  release(): void {
    this.#handler = undefined;
    if (!this.reusable || this.stream.destroyed || !this.#pool.keep(this)) {
      this.destroy();
      return;
    }
    // Whoever paused it for a slow reader is done with it; a kept connection reads (to see it close).
    this.stream.resume();
    this.#timer.refresh();
  }

  destroy(): void {
    this.reusable = false;
    this.#handler = undefined;
    clearTimeout(this.#timer);
    this.#pool.forget(this);
    this.#parser.close();
    if (!this.stream.destroyed) this.stream.destroy();
  }

  #data(c: Buffer): void {
    if (this.#upgraded) {
      this.#handler?.raw(c);
      return;
    }
    if (this.#handler === undefined) {
      // An endpoint that speaks between requests is out of step with us: never reuse it.
      this.destroy();
      return;
    }
    const h = this.#handler;
    const r = this.#parser.execute(c);
    // Still lent to it: an exchange that ended inside the read has written all it held.
    if (r.ok && this.#handler === h) h.parsed?.();
    if (!r.ok) {
      this.#fail(`endpoint sent an invalid response: ${r.failure.code} ${r.failure.reason}`);
      return;
    }
    if (this.#upgraded && r.consumed < c.length) this.#handler?.raw(c.subarray(r.consumed));
  }

  #end(): void {
    this.reusable = false;
    if (this.#upgraded) {
      this.#handler?.rawEnd();
      return;
    }
    const h = this.#handler;
    if (h === undefined) {
      this.destroy();
      return;
    }
    // A body that runs to the close ends here; anything else unfinished is lost.
    const f = this.#parser.finish();
    if (this.#handler === h) this.#fail(f ? `${f.code} ${f.reason}` : 'endpoint closed the connection');
  }

  #closed(): void {
    const h = this.#handler;
    this.destroy();
    h?.lost(
      this.#upgraded ? 'upgraded connection closed' : `tunnel stream reset (code ${this.stream.rstCode})`,
    );
  }

  #fail(why: string): void {
    const h = this.#handler;
    this.destroy();
    h?.lost(why);
  }

  #idle(): void {
    if (this.#handler === undefined) this.destroy();
  }
}

/** How a connection to an endpoint is had: the waypoint's own HBONE hop (hbone below), in a bench a socket. */
export type Opener = (
  plan: OutboundPlan,
  ep: Workload,
  client: HopClient,
) => Promise<{ readonly stream: ByteStream; readonly authority: string }>;

/** The waypoint's hop: a CONNECT to the endpoint's node; anything but 200 is a HopFailure. */
export const hboneOpener =
  (hop: HopDeps): Opener =>
  async (plan, ep, client) => {
    let r: Awaited<ReturnType<typeof openHop>>;
    try {
      r = await openHop(hop, plan, ep, client);
    } catch (err) {
      throw new HopFailure(503, (err as Error).message);
    }
    if (r.kind === 'skip') throw new HopFailure(503, r.why);
    const { stream, status } = r.response;
    if (status !== 200) {
      stream.close();
      throw new HopFailure(status, `endpoint ${ep.name} answered ${status}`);
    }
    return { stream, authority: r.authority };
  };

/**
 * The route's ConnectTimeout (Consul's resolver field), for both engines: what a hop gives within `ms`,
 * else a HopFailure (503, flag UF). What arrives late is handed to `late` (a stream to close), never used.
 */
export function withConnectTimeout<T>(
  opening: Promise<T>,
  ms: number | undefined,
  late?: (value: T) => void,
): Promise<T> {
  if (ms === undefined || ms <= 0) return opening;
  return new Promise((resolve, reject) => {
    let expired = false;
    const timer = setTimeout(() => {
      expired = true;
      reject(new HopFailure(503, `connect timeout: no hop within ${ms} ms`));
    }, ms);
    timer.unref();
    opening.then(
      (v) => {
        clearTimeout(timer);
        if (!expired) resolve(v);
        else late?.(v);
      },
      (err: unknown) => {
        clearTimeout(timer);
        if (!expired) reject(err);
      },
    );
  });
}

/** Kept connections by (endpoint, port, client), most recently used last. */
export class UpstreamPool {
  readonly #opener: Opener;
  readonly #free = new Map<string, UpstreamConnection[]>();
  readonly #all = new Set<UpstreamConnection>();
  readonly #maxHeadBytes: number;
  readonly #gate = new ConnectionGate();

  constructor(opener: Opener, maxHeadBytes: number) {
    this.#opener = opener;
    this.#maxHeadBytes = maxHeadBytes;
  }

  /** Closes a kept, idle connection of the pair, giving its slot back; false when there is none. */
  #evictIdle(pair: string): boolean {
    for (const c of this.#all) {
      if (c.pair === pair && !c.busy) {
        c.destroy();
        return true;
      }
    }
    return false;
  }

  /** A kept connection for `key`, if one is free. */
  take(key: string): UpstreamConnection | undefined {
    const list = this.#free.get(key);
    const c = list?.pop();
    if (list?.length === 0) this.#free.delete(key);
    return c;
  }

  /** Opens a new connection to `ep`; rejects with a HopFailure when there is none to have. */
  async open(
    plan: OutboundPlan,
    ep: Workload,
    client: HopClient,
    timeoutMs?: number,
    limit?: ConnectionLimit,
  ): Promise<UpstreamConnection> {
    if (limit) await this.#gate.take(limit, () => this.#evictIdle(limit.key));
    let c: UpstreamConnection | undefined;
    try {
      const opening = this.#opener(plan, ep, client);
      const { stream, authority } = await withConnectTimeout(opening, timeoutMs, (r) => r.stream.destroy());
      const key = upstreamKey(ep, plan, client);
      c = new UpstreamConnection(this, key, ep, authority, stream, this.#maxHeadBytes);
      c.pair = limit?.key;
      this.#all.add(c);
      return c;
    } finally {
      // A hop that failed gives its slot back at once.
      if (limit && !c) this.#gate.release(limit.key);
    }
  }

  /** Puts `c` back among the free; false when its key has enough kept already. */
  keep(c: UpstreamConnection): boolean {
    // A request waits for a connection of the pair: this one closes, and its slot goes to that request.
    if (c.pair !== undefined && this.#gate.waiting(c.pair) > 0) return false;
    let list = this.#free.get(c.key);
    if (!list) {
      list = [];
      this.#free.set(c.key, list);
    }
    if (list.length >= MAX_FREE_PER_KEY) return false;
    list.push(c);
    return true;
  }

  forget(c: UpstreamConnection): void {
    this.#all.delete(c);
    if (c.pair !== undefined) {
      const pair = c.pair;
      c.pair = undefined;
      this.#gate.release(pair);
    }
    const list = this.#free.get(c.key);
    if (!list) return;
    const i = list.indexOf(c);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.#free.delete(c.key);
  }

  destroy(): void {
    for (const c of [...this.#all]) c.destroy();
  }
}
