// What the waypoint changes in a request's and a response's fields beyond hop-by-hop ones: the route's and
// split's RequestHeaders/ResponseHeaders (Consul's Add appends, Set overwrites, Remove drops), and the
// tracing fields, propagated as they came and created when missing, so that every request the endpoint
// sees carries a trace id and a request id. The waypoint reports no spans of its own, so it leaves a valid
// traceparent as it is: a new parent-id would name a span nobody recorded.
import { randomUUID } from 'node:crypto';
import type { OutgoingHttpHeaders } from 'node:http';
import { isIP } from 'node:net';
import type { GeneratedCookie } from '../../lib/l7/lb.js';
import type { HeaderOp } from '../../lib/l7/route.js';
import { splitHostPort } from '../../lib/net/hostport.js';
import { newTraceparent } from '../proxy/hbone.js';

/** Applies `ops` in order to `h` (names compared lower-case, as node:http gives them). */
export function applyHeaderOps(h: OutgoingHttpHeaders, ops: readonly HeaderOp[]): void {
  for (const o of ops) {
    const name = o.name.toLowerCase();
    if (o.op === 'remove') Reflect.deleteProperty(h, name);
    else if (o.op === 'set') h[name] = o.value;
    else {
      const cur = h[name];
      h[name] = cur === undefined ? o.value : [...(Array.isArray(cur) ? cur : [String(cur)]), o.value];
    }
  }
}

/** W3C trace context: version 00, a non-zero trace id and parent id. */
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

export interface Trace {
  readonly traceparent: string;
  readonly traceId: string;
  readonly requestId: string;
  /** Whether the waypoint made them (the client sent none, or none valid). */
  readonly createdTrace: boolean;
  readonly createdRequestId: boolean;
}

const one = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

/** The request's trace context and id: the client's when valid, else new ones. */
export function traceOf(headers: Readonly<Record<string, string | string[] | undefined>>): Trace {
  const sent = one(headers.traceparent)?.trim().toLowerCase();
  const m = sent ? TRACEPARENT.exec(sent) : null;
  const valid = m !== null && m[1] !== 'ff' && !/^0+$/.test(m[2]!) && !/^0+$/.test(m[3]!);
  const traceparent = valid ? sent! : newTraceparent();
  const rid = one(headers['x-request-id'])?.trim();
  return {
    traceparent,
    traceId: traceparent.slice(3, 35),
    requestId: rid || randomUUID(),
    createdTrace: !valid,
    createdRequestId: !rid,
  };
}

/** Sets the trace fields on a request going upstream; tracestate and baggage pass as the client sent them. */
export function setTraceHeaders(h: OutgoingHttpHeaders, t: Trace): void {
  h.traceparent = t.traceparent;
  // A tracestate belongs to the traceparent it came with: dropped with one the waypoint replaced.
  if (t.createdTrace) Reflect.deleteProperty(h, 'tracestate');
  h['x-request-id'] = t.requestId;
}

/** The Set-Cookie value for a cookie a hash policy generated (Envoy's shape: Max-Age in seconds, HttpOnly). */
export function setCookieValue(c: GeneratedCookie): string {
  let v = `${c.name}=${c.value}`;
  if (c.path) v += `; Path=${c.path}`;
  if (c.ttl !== undefined) v += `; Max-Age=${Math.floor(c.ttl / 1000)}`;
  return `${v}; HttpOnly`;
}

/** Adds a Set-Cookie to response fields, beside any the endpoint set. */
export function addSetCookie(h: OutgoingHttpHeaders, c: GeneratedCookie): void {
  const cur = h['set-cookie'];
  const v = setCookieValue(c);
  h['set-cookie'] = cur === undefined ? [v] : [...(Array.isArray(cur) ? cur : [String(cur)]), v];
}

/** The IP of an `ip:port` (or a bare IP), for SourceIP hash policies; '' when it is neither. */
export function ipOf(addr: string | undefined): string {
  if (!addr) return '';
  if (isIP(addr) !== 0) return addr;
  const hp = splitHostPort(addr);
  return hp && isIP(hp.host) !== 0 ? hp.host : '';
}
