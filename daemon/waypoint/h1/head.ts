// HTTP/1.1 heads as the waypoint reads and writes them: llhttp's raw fields as node:http's header object
// (the shape the router, the intentions and the header operations take), and that object back on the wire.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import type { HeaderOp } from '../../../lib/l7/route.js';

/**
 * Fields of which a second copy is dropped rather than joined, as node:http does: their grammar has no list
 * form, so a joined value would be wrong (and a second Host is how some smuggling probes start).
 */
const FIRST_WINS = new Set([
  'host',
  'content-type',
  'content-length',
  'user-agent',
  'referer',
  'authorization',
  'proxy-authorization',
  'if-modified-since',
  'if-unmodified-since',
  'from',
  'location',
  'max-forwards',
  'retry-after',
  'etag',
  'last-modified',
  'server',
  'age',
  'expires',
]);

/** Raw (name, value, ...) as an object with lower-case names: repeats joined with ", ", Set-Cookie a list. */
export function headersOf(fields: readonly string[]): IncomingHttpHeaders {
  const h: IncomingHttpHeaders = {};
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = fields[i]!.toLowerCase();
    const value = fields[i + 1]!;
    const cur = h[name];
    if (cur === undefined) h[name] = name === 'set-cookie' ? [value] : value;
    else if (name === 'set-cookie') (cur as string[]).push(value);
    else if (!FIRST_WINS.has(name)) h[name] = `${cur}, ${value}`;
  }
  return h;
}

/** A value that would end the field or the head early (CR, LF, NUL). */
const UNSAFE = /[\r\n\0]/;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** Whether a field may be written as it is: a token for a name, no CR, LF or NUL in the value. */
export const safeField = (name: string, value: string): boolean => TOKEN.test(name) && !UNSAFE.test(value);

/**
 * `fields` as field lines, each ended with CRLF. Names and values are written as they are: what llhttp read
 * is valid already, and what configuration adds is checked once, where it is compiled (safeOps below).
 */
export function fieldLines(fields: OutgoingHttpHeaders): string {
  let out = '';
  for (const name in fields) {
    const v = fields[name];
    if (v === undefined) continue;
    if (Array.isArray(v)) for (const one of v) out += `${name}: ${one}\r\n`;
    else out += `${name}: ${v}\r\n`;
  }
  return out;
}

const checked = new WeakMap<readonly HeaderOp[], readonly HeaderOp[]>();

/**
 * A route's header operations without any that would break the head (a name that is not a token, a value
 * with CR, LF or NUL), worked out once per compiled list: a route's lists live as long as its chain.
 */
export function safeOps(ops: readonly HeaderOp[]): readonly HeaderOp[] {
  if (ops.length === 0) return ops;
  let ok = checked.get(ops);
  if (ok === undefined) {
    ok = ops.filter((o) => TOKEN.test(o.name) && (o.op === 'remove' || !UNSAFE.test(o.value)));
    checked.set(ops, ok);
  }
  return ok;
}

/** How a body is framed on the wire: by a length, in chunks, to the close, or not at all. */
export type Framing = 'length' | 'chunked' | 'close' | 'none';

/** The framing of a message from its fields (llhttp has checked they agree). */
export function framingOf(h: IncomingHttpHeaders, mayHaveBody: boolean): Framing {
  if (!mayHaveBody) return 'none';
  if (h['transfer-encoding'] !== undefined) return 'chunked';
  if (h['content-length'] !== undefined) return 'length';
  return 'close';
}

/** A request line and its fields. */
export const requestHead = (method: string, path: string, fields: OutgoingHttpHeaders): string =>
  `${method} ${path} HTTP/1.1\r\n${fieldLines(fields)}\r\n`;

/** A status line and its fields. */
export const responseHead = (status: number, reason: string, fields: OutgoingHttpHeaders): string =>
  `HTTP/1.1 ${status} ${reason}\r\n${fieldLines(fields)}\r\n`;

const CRLF = Buffer.from('\r\n');
/** The last chunk of a chunked body, with no trailers. */
export const LAST_CHUNK = Buffer.from('0\r\n\r\n');

/** One chunk of a chunked body, framed, as one buffer (one write). */
export const chunkOf = (data: Buffer): Buffer =>
  Buffer.concat([Buffer.from(`${data.length.toString(16)}\r\n`), data, CRLF]);

/** Whether a response to `method` with `status` may carry a body (RFC 9112 6.3). */
export const responseMayHaveBody = (method: string | undefined, status: number): boolean =>
  method !== 'HEAD' && status >= 200 && status !== 204 && status !== 304;
