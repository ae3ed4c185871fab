// The listening sockets that outlive any one process: the supervisor binds them once and hands their
// descriptors to its workers and, on a re-exec (SIGUSR2), to the supervisor that replaces it, so that no
// port is ever closed while one ambitd gives way to the next. A socket held here is bound and, once some
// process listens on it, stays listening for as long as any process holds it: connections that arrive
// while one generation gives way to the next wait in its backlog instead of being refused.
//
// The sockets are made by the binding (listenSocket: socket, bind, listen, and nothing polls them):
// libuv reports a port in use only at its listen, and its listen starts accepting in this process. To
// listen on a descriptor, a process wraps it in a TCP handle with `net._createServerHandle`, the function
// cluster itself uses for its shared handles, as Node has no public API for a handle that a server listens
// on exclusively in a cluster worker; test/unit/supervisor-listeners.test.ts pins what is relied on, so
// that a Node upgrade that changes it fails there, not in production.
import { closeSync } from 'node:fs';
import net from 'node:net';
import type { Listen } from '../../lib/config.js';
import { ListenError } from '../../lib/errors.js';
import { joinHostPort } from '../../lib/net/hostport.js';
import { binding } from '../native/index.js';

/** Every socket the supervisor may hold: the workers' data path, and its own admin, metrics and readiness. */
export const LISTENER_NAMES = [
  'tunnel',
  'outbound',
  'outbound6',
  'plaintext',
  'plaintext6',
  'admin',
  'metrics',
  'ready',
] as const;
export type ListenerName = (typeof LISTENER_NAMES)[number];
/** A listener of the fixed set, or an explicit upstream's (`upstream@127.0.0.1:18001`). */
export type HeldName = ListenerName | `upstream@${string}`;
const UPSTREAM = 'upstream@';
export const upstreamName = (host: string, port: number): HeldName =>
  `${UPSTREAM}${joinHostPort(host, port)}`;

/** Names the descriptors a child inherited: `tunnel=4,admin=5,...`. */
export const LISTEN_FDS_ENV = 'AMBIT_LISTEN_FDS';
/** The first descriptor a child gets past stdin, stdout, stderr and the IPC channel (fork's stdio 0–3). */
const FIRST_CHILD_FD = 4;

/** A libuv TCP handle, as net's internals make it (the part of it used here). */
export interface TcpHandle {
  readonly fd: number;
  close(cb?: () => void): void;
  /** Fills `out` with the bound address; returns a libuv error code, 0 on success. */
  getsockname(out: { port?: number }): number;
}

interface NetInternals {
  _createServerHandle(
    address: string | null,
    port: number,
    addressType: number,
    fd?: number,
    flags?: number,
  ): TcpHandle | number;
}

const internals = net as unknown as NetInternals;

/** Parses AMBIT_LISTEN_FDS; a malformed one is a bug between two ambitd processes, so it throws. */
export function parseListenFds(text: string | undefined): Map<HeldName, number> {
  const out = new Map<HeldName, number>();
  if (!text) return out;
  for (const part of text.split(',')) {
    const m = /^([a-z0-9]+|upstream@[^=,]+)=(\d+)$/.exec(part);
    if (!m || !(m[1]!.startsWith(UPSTREAM) || (LISTENER_NAMES as readonly string[]).includes(m[1]!))) {
      throw new Error(`${LISTEN_FDS_ENV}: "${part}" is not <listener>=<fd> of a known listener`);
    }
    const name = m[1] as HeldName;
    if (out.has(name)) throw new Error(`${LISTEN_FDS_ENV}: ${name} given twice`);
    out.set(name, Number(m[2]));
  }
  return out;
}

export function formatListenFds(fds: ReadonlyMap<HeldName, number>): string {
  return [...fds].map(([name, fd]) => `${name}=${fd}`).join(',');
}

/** The kernel's backlog of each held socket (connections wait there while one process gives way). */
const BACKLOG = 511;

/** A listening socket's descriptor, nothing accepting on it yet. Throws a ListenError. */
export function listenFd(
  name: HeldName,
  at: Listen,
  ipv6Only = at.host === '::',
): { fd: number; port: number } {
  const host = at.host === 'localhost' ? '127.0.0.1' : at.host;
  try {
    return binding().listenSocket(host, at.port, ipv6Only, BACKLOG);
  } catch (err) {
    const errno = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new ListenError(name, joinHostPort(at.host, at.port), errno, describe(errno));
  }
}

/** The handle for a descriptor, to listen on; undefined when it is not a TCP socket. */
export function adoptHandle(fd: number): TcpHandle | undefined {
  const h = internals._createServerHandle(null, 0, 0, fd);
  return typeof h === 'number' ? undefined : h;
}

/** The handle of a descriptor another ambitd passed down; it not being a TCP socket is a bug: throws. */
function inheritedHandle(name: HeldName, fd: number): TcpHandle {
  const h = adoptHandle(fd);
  if (!h) throw new Error(`${LISTEN_FDS_ENV}: descriptor ${fd} (${name}) is not a TCP socket`);
  return h;
}

function describe(errno: string): string {
  switch (errno) {
    case 'EADDRINUSE':
      return 'the address is in use';
    case 'EADDRNOTAVAIL':
      return 'no interface of this host has that address';
    case 'EACCES':
      return 'a port below 1024 needs CAP_NET_BIND_SERVICE';
    default:
      return 'bind failed';
  }
}

/**
 * The sockets the supervisor holds for the life of the host's ambitd, passed down to each worker and to
 * a successor. A name may be missing (capture off: no outbound or plaintext listener).
 */
interface Held {
  readonly fd: number;
  readonly port: number;
  /** Once this process listens on it (its own servers) or sends it (to a worker, over IPC). */
  handle?: TcpHandle;
}

export class HeldListeners {
  readonly #held = new Map<HeldName, Held>();
  /** Who wants each explicit upstream's socket (worker pids): it is closed once nobody does. */
  readonly #users = new Map<HeldName, Set<number>>();
  /** Inherited from a predecessor (a re-exec), rather than bound by this process. */
  readonly inherited: boolean;

  private constructor(inherited: boolean) {
    this.inherited = inherited;
  }

  /**
   * Binds what the configuration asks for. The capture listeners get an IPv6 twin on [::] when bound on
   * 0.0.0.0 (twin()), as RedirectListener does in one process.
   */
  static open(want: Partial<Record<ListenerName, Listen>>): HeldListeners {
    const held = new HeldListeners(false);
    try {
      for (const name of LISTENER_NAMES) {
        const at = want[name];
        // As in one process: [::] is dual-stack (Node's default), but the capture listeners' is IPv6 only
        // (RedirectListener: their IPv4 half is a twin on 0.0.0.0 when asked).
        const v6only = (name === 'outbound' || name === 'plaintext') && at?.host === '::';
        if (at) held.#held.set(name, listenFd(name, at, v6only));
      }
    } catch (err) {
      held.close();
      throw err;
    }
    return held;
  }

  /** What a predecessor passed down (AMBIT_LISTEN_FDS), or undefined when it passed nothing. */
  static adopt(env: NodeJS.ProcessEnv = process.env): HeldListeners | undefined {
    const fds = parseListenFds(env[LISTEN_FDS_ENV]);
    if (fds.size === 0) return undefined;
    const held = new HeldListeners(true);
    for (const [name, fd] of fds) {
      let handle: TcpHandle;
      try {
        handle = inheritedHandle(name, fd);
      } catch (err) {
        held.close();
        throw err;
      }
      const out: { port?: number } = {};
      handle.getsockname(out);
      held.#held.set(name, { fd, port: out.port ?? 0, handle });
      if (name.startsWith(UPSTREAM)) held.#users.set(name, new Set());
    }
    return held;
  }

  /** Binds the IPv6 twin of a capture listener on the port its IPv4 one got; quietly none without IPv6. */
  twin(name: 'outbound6' | 'plaintext6', port: number): void {
    if (this.#held.has(name)) return;
    try {
      this.#held.set(name, listenFd(name, { host: '::', port }, true));
    } catch {
      // As in one process: IPv6 capture lands only where the host has IPv6.
    }
  }

  has(name: HeldName): boolean {
    return this.#held.has(name);
  }

  port(name: HeldName): number | undefined {
    return this.#held.get(name)?.port;
  }

  /**
   * A handle for a server of this process to listen on (it then closes with that server); the descriptor
   * is still passed on to children while the server is open.
   */
  take(name: HeldName): TcpHandle | undefined {
    const h = this.#held.get(name);
    if (!h) return undefined;
    h.handle ??= adoptHandle(h.fd);
    return h.handle;
  }

  /**
   * An explicit upstream's socket for worker `user`, as a handle to send it: the one held (bound by this
   * supervisor or a predecessor, so that a reload or re-exec never closes the port), or a new one.
   * Throws a ListenError.
   */
  acquire(host: string, port: number, user: number): TcpHandle {
    const name = upstreamName(host, port);
    if (!this.#held.has(name)) this.#held.set(name, listenFd(name, { host, port }));
    const users = this.#users.get(name) ?? new Set<number>();
    this.#users.set(name, users);
    users.add(user);
    return this.take(name)!;
  }

  /** Worker `user` no longer listens there (the upstream was removed); the port closes once nobody does. */
  release(host: string, port: number, user: number): void {
    const name = upstreamName(host, port);
    const users = this.#users.get(name);
    if (!users) return;
    users.delete(user);
    if (users.size === 0) this.#drop(name);
  }

  /** A worker exited: what only it wanted closes (a drained worker's successors have acquired theirs). */
  forget(user: number): void {
    for (const [name, users] of this.#users) {
      if (users.delete(user) && users.size === 0) this.#drop(name);
    }
  }

  /** Inherited upstream sockets that no worker of this supervisor wanted (the mesh changed meanwhile). */
  sweep(): void {
    for (const [name, users] of this.#users) if (users.size === 0) this.#drop(name);
  }

  #drop(name: HeldName): void {
    const h = this.#held.get(name);
    if (h) release(h);
    this.#held.delete(name);
    this.#users.delete(name);
  }

  /** The stdio array of a child (fork's: 'ipc' at 3) and the AMBIT_LISTEN_FDS that names where each went. */
  forChild(only?: readonly HeldName[]): { stdio: (number | 'inherit' | 'ipc')[]; env: string } {
    const stdio: (number | 'inherit' | 'ipc')[] = ['inherit', 'inherit', 'inherit', 'ipc'];
    const fds = new Map<HeldName, number>();
    for (const [name, h] of this.#held) {
      if (only && !only.includes(name)) continue;
      fds.set(name, FIRST_CHILD_FD + stdio.length - 4);
      stdio.push(h.fd);
    }
    return { stdio, env: formatListenFds(fds) };
  }

  close(): void {
    for (const h of this.#held.values()) release(h);
    this.#held.clear();
    this.#users.clear();
  }
}

/** Closes this process's copy: through its handle when it has one (libuv owns the descriptor then). */
function release(h: Held): void {
  if (h.handle) {
    h.handle.close();
    return;
  }
  try {
    closeSync(h.fd);
  } catch {
    // closed already
  }
}

/** AMBIT_LISTEN_FDS as last parsed: a worker asks once per listener, from the same environment. */
let parsed: { text: string | undefined; fds: Map<HeldName, number> } | undefined;

/** In a child: the handle of an inherited listener (AMBIT_LISTEN_FDS), to listen on; undefined if none. */
export function inheritedListener(
  name: ListenerName,
  env: NodeJS.ProcessEnv = process.env,
): TcpHandle | undefined {
  const text = env[LISTEN_FDS_ENV];
  if (parsed === undefined || parsed.text !== text) parsed = { text, fds: parseListenFds(text) };
  const fd = parsed.fds.get(name);
  return fd === undefined ? undefined : inheritedHandle(name, fd);
}
