// The one spelling of an address and a port, and the one way to take it apart, for listen addresses,
// CONNECT authorities, catalog entries and the mesh file alike.
import { unmapIp } from './addresses.js';

/** `[v6]:port` for an IPv6 host (any host with a colon), `host:port` otherwise. */
export const joinHostPort = (host: string, port: number): string =>
  host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;

/**
 * `host:port` or `[host]:port` into its two halves, the port still text, as Go's `net.SplitHostPort`
 * does. An unbracketed host holding a colon is refused: in `fd00::1:80` nobody can tell where the address
 * ends. No colon at all is undefined too: callers that accept a bare port test for it first.
 */
export function splitHostPort(text: string): { host: string; port: string } | undefined {
  if (text.startsWith('[')) {
    const end = text.indexOf(']');
    if (end < 0 || text[end + 1] !== ':') return undefined;
    return { host: text.slice(1, end), port: text.slice(end + 2) };
  }
  const colon = text.lastIndexOf(':');
  if (colon < 0 || text.lastIndexOf(':', colon - 1) >= 0) return undefined;
  return { host: text.slice(0, colon), port: text.slice(colon + 1) };
}

/**
 * One end of a socket as logs and the access log print it: IPv6 bracketed, an IPv4-mapped address (a
 * dual-stack listener's IPv4 peer) as the IPv4 address it is; undefined when the socket has no address.
 */
export const socketAddress = (ip: string | undefined, port: number | undefined): string | undefined =>
  ip ? joinHostPort(unmapIp(ip), port ?? 0) : undefined;
