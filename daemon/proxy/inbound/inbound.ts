import type { Socket } from 'node:net';
import { DEFAULT_LIMITS, type Limits } from '../../../lib/config.js';
import { ConnectionRefusal, denied } from '../../../lib/errors.js';
import type { Logger } from '../../../lib/log.js';
import type { Workload } from '../../../lib/mesh/model.js';
import { joinHostPort, socketAddress } from '../../../lib/net/hostport.js';
import { type FdReserve, isFdExhaustion } from '../../limits/fds.js';
import type { Refusals } from '../../limits/refusal.js';
import type { Metrics } from '../../metrics/metrics.js';
import type { Peer } from '../../rbac.js';
import type { StateStore } from '../../state/store.js';
import { XFCC } from '../../waypoint/xfcc.js';
import { ConnectionAccount, type Party } from '../account.js';
import { carry } from '../carry.js';
import type { H2Session } from '../h2/session.js';
import type { H2Headers, H2Stream } from '../h2/stream.js';
import { type HostPort, parseForwardedFor } from '../hbone.js';
import { ignoreError } from '../pipe.js';
import type { SocketFactory } from '../sockets.js';
import { decideInbound, stillAdmits } from './decide.js';
import { type Catalog, type Family, chooseSource, provenSource } from './original-source.js';
import { sessionPeer } from './peer.js';
import { OpenConnections, type Recheckable, type Verdict } from './rechecks.js';

export interface InboundDeps {
  readonly store: StateStore;
  readonly nodeName: string;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly identityOf: (w: Pick<Workload, 'namespace' | 'service'>) => string;
  /** True when the target is one of the daemon's own listeners: such a CONNECT is a self-call and refused. */
  readonly isSelf: (target: HostPort) => boolean;
  /** True for an address of this host (loopback, an interface, the node's own address). */
  readonly isLocalAddress: (ip: string) => boolean;
  /** This mesh's trust domain: policies name its services and namespaces. */
  readonly trustDomain: string;
  /** Opens the connection to the workload (marked, so that capture does not take it for plaintext). */
  readonly sockets: SocketFactory;
  /** Streams and connects in flight (docs/limits.md); the defaults when absent. */
  readonly limits?: Limits;
  /** Where refusals are counted and logged (a limit's rate-limited). */
  readonly refusals: Refusals;
  /** The descriptor reserve: an upstream connect is refused before it would eat into it. */
  readonly fds?: FdReserve | undefined;
  /**
   * captureOriginalSource, and the families whose reply routing is installed now: with both, the workload
   * sees the client's address (original-source.ts decides when). Off when absent.
   */
  readonly originalSource?: { readonly enabled: boolean; readonly routed: () => ReadonlySet<Family> };
}

/** What one inbound session holds now: its streams (connects in flight included) and its connects. */
interface SessionLoad {
  streams: number;
  connects: number;
}

/** RST_STREAM REFUSED_STREAM: "not processed, safe to retry" (RFC 9113 section 8.7). */
const REFUSED_STREAM = 7;

const loadOf = new WeakMap<H2Session, SessionLoad>();

/**
 * Where a CONNECT came from: `addr` is the tunnel connection's TCP peer, the only address the daemon saw;
 * `forwarded` is what the client claims in its `forwarded` header (its workload's address), kept apart.
 */
interface Source {
  readonly addr: string | undefined;
  readonly forwarded: string | undefined;
}

/**
 * The inbound half of the data path: one CONNECT stream on an authenticated HBONE session becomes one TCP
 * connection to a workload enrolled on this node, if policy admits it. Never an open relay: any other
 * target is refused before a socket is opened.
 */
export class Inbound {
  readonly #d: InboundDeps;
  /**
   * Every connection accepted for a workload here, tunneled or plaintext (the 15006 listener registers its
   * own), from before its decision to its close: what a policy change re-checks.
   */
  readonly rechecks = new OpenConnections();
  /** Tunneled connections being carried (what a drain waits for). */
  #carried = 0;
  readonly #limits: Limits;
  readonly #refusals: Refusals;
  /** Upstream connects in flight on this node. */
  #connecting = 0;

  constructor(deps: InboundDeps) {
    this.#d = deps;
    this.#limits = deps.limits ?? DEFAULT_LIMITS;
    this.#refusals = deps.refusals;
  }

  /** Upstream connects in flight on this node now. */
  get connecting(): number {
    return this.#connecting;
  }

  /**
   * Re-checks every accepted connection (tunneled, plaintext; connecting or carried) against the policies now
   * in force, and closes those no longer allowed.
   */
  recheck(): number {
    return this.rechecks.recheck(this.#d.log);
  }

  get openConnections(): number {
    return this.#carried;
  }

  /** Whether the state in force still admits `c` (decided: it has its workload and peer). */
  readonly #check = (c: Tunneled): Verdict =>
    stillAdmits(this.#d, c.target!.name, c.proven!, c.port, c.client);

  /** `c` is no longer allowed: refused now if its upstream connect is in flight, reset if it is carried. */
  readonly #revoke = (c: Tunneled, reason: string): void => {
    const why = `no longer allowed: ${reason}`;
    if (c.phase === 'carried') {
      c.stream.destroy(new Error(why));
      return;
    }
    c.phase = 'done';
    this.#refuse(c.stream, denied(why), c.proven, c.target, c.authority, c.src, c.started, c.client);
  };

  handleStream(stream: H2Stream, headers: H2Headers, session: H2Session): void {
    stream.on('error', ignoreError);
    // Counted before anything else is done for it, and held until both the stream has closed and its
    // upstream connect (if any) has settled: a peer's RST_STREAM must not free the slot of a connect that
    // is still using a descriptor (Rapid Reset, CVE-2023-44487).
    const load = this.#load(session);
    if (load.streams >= this.#limits.maxInboundStreams) {
      this.#refusals.refuse('inbound', 'stream_limit', 'tunnel stream refused: session stream limit', {
        src: session.socket.remoteAddress,
        streams: load.streams,
        limit: this.#limits.maxInboundStreams,
      });
      // REFUSED_STREAM rather than a status: the session's own concurrency bound was passed, which HTTP/2
      // answers at the framing level (RFC 9113 5.1.2); the peer sees at once the stream was not processed
      // and may retry it elsewhere, and refusing costs no HEADERS to encode.
      stream.close(REFUSED_STREAM);
      return;
    }
    load.streams++;
    const hold = new Hold(() => load.streams--);
    const started = Date.now();
    const peer = sessionPeer(session);
    const authority = headers[':authority'];
    const src = this.#source(session, headers);
    // Registered before the decision: a policy change from here on re-checks it, whatever phase it is in.
    const entry = new Tunneled(stream, src, started, this.#check, this.#revoke);
    this.rechecks.add(entry);
    stream.once('close', () => {
      hold.release();
      this.rechecks.delete(entry);
    });
    const to = decideInbound(this.#d, headers[':method'], authority, peer, headers[XFCC]);
    if (!to.ok) {
      entry.phase = 'done';
      this.#refuse(stream, to.refusal, peer, to.workload, authority, src, started);
      return;
    }
    entry.admitted(to.peer, to.workload, to.target.port, authority, to.client);
    void this.#connect(entry, to.target, load, hold);
  }

  #load(session: H2Session): SessionLoad {
    let load = loadOf.get(session);
    if (load === undefined) {
      load = { streams: 0, connects: 0 };
      loadOf.set(session, load);
    }
    return load;
  }

  /**
   * A CONNECT refused by a limit on upstream connects (per session, per node) or the descriptor reserve:
   * 503, which the client daemon takes as "this endpoint is overloaded" (it ejects it for a while and tries
   * another); counted and logged through Refusals, rate-limited, rather than as one access-log line each.
   */
  #overloaded(
    stream: H2Stream,
    reason: 'connect_limit' | 'node_connect_limit' | 'fd_reserve',
    message: string,
    fields: Record<string, unknown>,
  ): void {
    if (reason === 'fd_reserve' && this.#d.fds) this.#d.fds.refuse('inbound', message, fields);
    else this.#refusals.refuse('inbound', reason, message, fields);
    if (!stream.destroyed && !stream.headersSent) stream.respond({ ':status': '503' }, { endStream: true });
  }

  #source(session: H2Session, headers: H2Headers): Source {
    const { remoteAddress, remotePort } = session.socket;
    return {
      addr: socketAddress(remoteAddress, remotePort),
      forwarded: parseForwardedFor(headers.forwarded),
    };
  }

  /**
   * The source workload, when the address in `forwarded` belongs to a workload whose identity is the
   * one the peer proved; the header alone is never trusted.
   */
  #sourceWorkload(peer: Peer, claimed: string | undefined): Workload | undefined {
    return provenSource(this.#catalog, peer.principal, claimed);
  }

  readonly #catalog: Catalog = {
    workloadsByIp: (ip) => this.#d.store.workloadsByIp(ip),
    identityOf: (w) => this.#d.identityOf(w),
  };

  /**
   * Through a waypoint, the source is the client it vouched for (`client`), the waypoint (`peer`) named as
   * `via`: a client's own x-forwarded-client-cert never gets here (decide.ts reads it from a waypoint only).
   */
  #account(
    proven: Peer | undefined,
    w: Workload | undefined,
    authority: string | undefined,
    src: Source,
    started: number,
    client?: Peer,
  ): ConnectionAccount {
    const peer = client ?? proven;
    const sw = peer ? this.#sourceWorkload(peer, src.forwarded) : undefined;
    const from: Party = peer
      ? {
          addr: src.addr,
          forwarded: src.forwarded,
          workload: sw?.name ?? peer.service,
          meta: sw,
          namespace: peer.namespace,
          service: peer.service,
          principal: peer.principal,
          ...(client ? { via: proven?.principal } : {}),
        }
      : { addr: src.addr, forwarded: src.forwarded };
    const to: Party = {
      addr: authority,
      workload: w?.name,
      namespace: w?.namespace,
      service: w?.service,
      principal: w ? this.#d.identityOf(w) : undefined,
      meta: w,
    };
    return new ConnectionAccount(this.#d, 'inbound', from, to, 'mutual_tls', started);
  }

  #refuse(
    stream: H2Stream,
    refusal: ConnectionRefusal,
    peer: Peer | undefined,
    w: Workload | undefined,
    authority: string | undefined,
    src: Source,
    started: number,
    client?: Peer,
  ): void {
    this.#account(peer, w, authority, src, started, client).refused(refusal, { status: refusal.status });
    if (!stream.destroyed && !stream.headersSent)
      stream.respond({ ':status': String(refusal.status) }, { endStream: true });
  }

  async #connect(entry: Tunneled, target: HostPort, load: SessionLoad, hold: Hold): Promise<void> {
    const { stream, src, started } = entry;
    const peer = entry.proven!;
    const workload = entry.target!;
    const authority = joinHostPort(target.ip, target.port);
    // The limits refuse it (503) before it connects: nothing for a re-check to close any more.
    entry.phase = 'done';
    const l = this.#limits;
    const fields = { peer: peer.principal, dst: authority };
    if (load.connects >= l.maxConnectsPerSession) {
      const message = `tunnel stream refused: ${load.connects} upstream connects in flight on this session`;
      return this.#overloaded(stream, 'connect_limit', message, fields);
    }
    if (this.#connecting >= l.maxConnectsPerNode) {
      const message = `tunnel stream refused: ${this.#connecting} upstream connects in flight on this node`;
      return this.#overloaded(stream, 'node_connect_limit', message, fields);
    }
    const fds = this.#d.fds;
    if (fds && !fds.admit('inbound', 'upstream connect refused: descriptor reserve reached', fields)) {
      if (!stream.destroyed && !stream.headersSent) stream.respond({ ':status': '503' }, { endStream: true });
      return;
    }
    load.connects++;
    this.#connecting++;
    hold.take();
    entry.phase = 'connecting';
    let upstream: Socket;
    try {
      const os = this.#d.originalSource;
      const mark = this.#d.sockets.mark;
      // Without capture (no mark) or with the setting off, the choice is the daemon's own address: not
      // worth an object per connection.
      const from =
        mark !== undefined && os?.enabled
          ? chooseSource({
              claimed: src.forwarded,
              principal: peer.principal,
              catalog: this.#catalog,
              target: target.ip,
              destination: workload,
              mark,
              enabled: true,
              routed: os.routed(),
            }).from
          : undefined;
      // Marked (when capture is on) so that the capture rules do not take it for plaintext inbound; from the
      // client's address when the choice says so.
      upstream = await this.#d.sockets.upstream(target.ip, target.port, from);
    } catch (err) {
      // Revoked while connecting: refused already.
      if (entry.phase !== 'connecting') return;
      entry.phase = 'done';
      if (isFdExhaustion(err)) {
        const message = 'upstream connect refused: out of descriptors';
        return this.#overloaded(stream, 'fd_reserve', message, { ...fields, err: (err as Error).message });
      }
      const why = `connect to ${authority} failed: ${(err as Error).message}`;
      const failed = new ConnectionRefusal('connect_failed', why);
      return this.#refuse(stream, failed, peer, workload, authority, src, started, entry.client);
    } finally {
      load.connects--;
      this.#connecting--;
      hold.release();
    }
    // Revoked by a policy change while connecting (refused then), or the peer gave up on it.
    if (entry.phase !== 'connecting' || stream.destroyed) {
      entry.phase = 'done';
      upstream.destroy();
      return;
    }
    stream.respond({ ':status': '200' });
    entry.phase = 'carried';
    this.#carried++;
    // The TCP side here faces the workload: what it wrote came from the client.
    const account = this.#account(peer, workload, authority, src, started, entry.client);
    carry(account, upstream, stream, false, () => {
      this.#carried--;
      entry.phase = 'done';
      this.rechecks.delete(entry);
    });
  }
}

type Phase = 'deciding' | 'connecting' | 'carried' | 'done';

/** One CONNECT from its arrival to its close, as a policy change re-checks it. */
class Tunneled implements Recheckable {
  phase: Phase = 'deciding';
  /** Set once policy admitted it: the peer it proved, the workload and port it reaches. */
  proven: Peer | undefined;
  /** Through the service's waypoint: the client it vouched for. */
  client: Peer | undefined;
  target: Workload | undefined;
  port = 0;
  authority: string | undefined;
  readonly stream: H2Stream;
  readonly src: Source;
  readonly started: number;
  readonly #check: (c: Tunneled) => Verdict;
  readonly #revoke: (c: Tunneled, reason: string) => void;

  constructor(
    stream: H2Stream,
    src: Source,
    started: number,
    check: (c: Tunneled) => Verdict,
    revoke: (c: Tunneled, reason: string) => void,
  ) {
    this.stream = stream;
    this.src = src;
    this.started = started;
    this.#check = check;
    this.#revoke = revoke;
  }

  admitted(peer: Peer, w: Workload, port: number, authority: string | undefined, client?: Peer): void {
    this.proven = peer;
    this.client = client;
    this.target = w;
    this.port = port;
    this.authority = authority;
  }

  get workload(): string | undefined {
    return this.target?.name;
  }

  get peer(): string | undefined {
    return this.proven?.principal;
  }

  check(): Verdict | undefined {
    return this.phase === 'connecting' || this.phase === 'carried' ? this.#check(this) : undefined;
  }

  revoke(reason: string): void {
    this.#revoke(this, reason);
  }
}

/** Releases a stream's slot once every holder (the stream itself, its upstream connect) has let go. */
class Hold {
  #holders = 1;
  readonly #free: () => void;

  constructor(free: () => void) {
    this.#free = free;
  }

  take(): void {
    this.#holders++;
  }

  release(): void {
    if (this.#holders <= 0) return;
    if (--this.#holders === 0) this.#free();
  }
}
