// Which IP addresses reach this host itself. A workload that serves "every port" of such an address would
// make its node a relay to every local server (ambitd's admin API included), so the mesh file refuses it
// and the data path never delivers to it.

import { SocketAddress, isIP } from 'node:net';
import { networkInterfaces } from 'node:os';

/**
 * One spelling per address: IPv6 in its canonical text, an IPv4-mapped IPv6 address as the IPv4 address it
 * reaches (`::ffff:127.0.0.1` is 127.0.0.1 to connect(2)). Anything else is returned as given.
 */
export function canonicalIp(ip: string): string {
  if (isIP(ip) !== 6) return ip;
  let text: string;
  try {
    text = new SocketAddress({ address: ip, family: 'ipv6' }).address;
  } catch {
    return ip.toLowerCase();
  }
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  return mapped ? mapped[1]! : text;
}

/**
 * An IPv4-mapped IPv6 address (`::ffff:198.18.0.1`, as a dual-stack socket reports an IPv4 peer) as the IPv4
 * address it is; anything else as given. Cheaper than canonicalIp, for once per connection.
 */
export const unmapIp = (ip: string): string =>
  ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;

/**
 * An IPv6 address in its one canonical text (2001:2:0:0::2 is 2001:2::2), as sockets report it; IPv4 and an
 * IPv4-mapped address written with its dots are returned as given, so that messages name what was written.
 */
export const canonicalV6 = (ip: string): string =>
  isIP(ip) === 6 && !ip.includes('.') ? canonicalIp(ip) : ip;

/** 0.0.0.0 and :: as a destination reach the host itself on Linux, like loopback. */
export const isUnspecified = (ip: string): boolean => {
  const c = canonicalIp(ip);
  return c === '0.0.0.0' || c === '::';
};

/** 127.0.0.0/8, ::1, their IPv4-mapped forms, and the unspecified addresses (which connect to the host). */
export function isLoopback(ip: string): boolean {
  const c = canonicalIp(ip);
  return c === '::1' || (isIP(c) === 4 && c.startsWith('127.')) || isUnspecified(c);
}

/** The host's interface addresses, canonical. */
export function interfaceAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces()))
    for (const i of list ?? []) out.add(canonicalIp(i.address.replace(/%.*$/, '')));
  return out;
}

const INTERFACES_TTL_MS = 5_000;

/**
 * The addresses of this host: loopback, the interfaces (read again at most every few seconds, since
 * getifaddrs is a system call and addresses change rarely) and any the caller adds (the node's address in
 * the mesh, its advertise address).
 */
export class LocalAddresses {
  readonly #extra: () => Iterable<string>;
  #interfaces = new Set<string>();
  #readAt = Number.NEGATIVE_INFINITY;

  constructor(extra: () => Iterable<string> = () => []) {
    this.#extra = extra;
  }

  has(ip: string): boolean {
    const c = canonicalIp(ip);
    if (isLoopback(c)) return true;
    const now = Date.now();
    if (now - this.#readAt > INTERFACES_TTL_MS) {
      this.#interfaces = interfaceAddresses();
      this.#readAt = now;
    }
    if (this.#interfaces.has(c)) return true;
    for (const e of this.#extra()) if (canonicalIp(e) === c) return true;
    return false;
  }
}

/**
 * Whether the host can listen on IPv6: some interface (loopback included) holds an IPv6 address. A kernel
 * booted with `ipv6.disable=1` lists none, and a socket bound to `::` would fail there.
 */
export function hostHasIpv6(): boolean {
  for (const list of Object.values(networkInterfaces()))
    for (const i of list ?? []) if (i.family === 'IPv6') return true;
  return false;
}

/**
 * Whether a listener bound to `bindHost` accepts connections to `ip`. Counted wide, since a wrong "yes" only
 * refuses a CONNECT: a wildcard bind (`::`, which Node opens dual-stack, or `0.0.0.0`) every local address of
 * either family (the capture listeners add `[::]` to a `0.0.0.0` bind), a loopback bind (`localhost` included) every loopback address (the kernel routes all of
 * 127/8 to the host), any other bind its own address, in any spelling.
 */
export function bindAccepts(bindHost: string, ip: string, local: LocalAddresses): boolean {
  if (isUnspecified(bindHost) || bindHost === '') return local.has(ip);
  if (isLoopback(bindHost) || bindHost === 'localhost') return isLoopback(ip);
  return canonicalIp(bindHost) === canonicalIp(ip);
}
