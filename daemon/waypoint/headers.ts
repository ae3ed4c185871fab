// Which header fields a waypoint hands on, each way (RFC 9110 7.6.1), and the client identity it sets.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import { XFCC, formatXfcc } from './xfcc.js';

/** Hop-by-hop fields (RFC 9110 7.6.1), and what the waypoint answers or sets itself. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'expect',
  XFCC,
]);

/** The request's fields as the endpoint gets them: hop-by-hop ones dropped, the client's identity set. */
export function forwardRequestHeaders(
  h: IncomingHttpHeaders,
  waypoint: string,
  client: string,
  upgrade: boolean,
  /** formatXfcc(waypoint, client), when the caller keeps it (it is the same for a whole connection). */
  xfcc = formatXfcc(waypoint, client),
): OutgoingHttpHeaders {
  const named = connectionTokens(h.connection);
  const out: OutgoingHttpHeaders = {};
  for (const k in h) {
    const v = h[k];
    if (v === undefined || HOP_BY_HOP.has(k) || named?.has(k)) continue;
    out[k] = v;
  }
  if (h['transfer-encoding'] !== undefined) out['transfer-encoding'] = 'chunked';
  if (upgrade && h.upgrade !== undefined) {
    out.connection = 'upgrade';
    out.upgrade = h.upgrade;
  }
  out[XFCC] = xfcc;
  return out;
}

/** The response's fields as the client gets them: hop-by-hop ones dropped (node:http frames the body). */
export function forwardResponseHeaders(h: IncomingHttpHeaders): OutgoingHttpHeaders {
  const named = connectionTokens(h.connection);
  const out: OutgoingHttpHeaders = {};
  for (const k in h) {
    const v = h[k];
    if (v === undefined || (HOP_BY_HOP.has(k) && k !== XFCC) || named?.has(k)) continue;
    out[k] = v;
  }
  return out;
}

/** The fields a Connection header names as hop-by-hop; undefined (the usual case) when it names none. */
function connectionTokens(v: string | undefined): Set<string> | undefined {
  if (v === undefined) return undefined;
  const named = new Set<string>();
  for (const t of v.split(',')) {
    const name = t.trim().toLowerCase();
    if (name) named.add(name);
  }
  return named;
}
