// llhttp, the HTTP/1.1 parser node:http itself runs, driven directly. node:http's server and client wrap
// each message in IncomingMessage/ServerResponse/ClientRequest streams over a socket; for a proxy that only
// reads heads and hands bodies on, that machinery cost the waypoint most of its CPU per request (see
// bench/NOTES.md, 2026-12-02). The parser is the same C code with the same strictness: Node exposes it to
// its own modules as `_http_common`'s HTTPParser, which is not documented, so this file is the one place
// that knows its shape, and test/unit/h1-parser.test.ts pins what the waypoint relies on.
import { createRequire } from 'node:module';

/** What a parser calls while it reads; every callback runs synchronously inside `execute`. */
export interface ParserEvents {
  /** A message's first byte. */
  begin?(): void;
  /**
   * A message's head, complete. `fields` is raw (name, value, name, value, ...), names as sent. `method`
   * is set for requests, `status`/`reason` for responses. Return true to say the message has no body
   * whatever its fields say (a response to HEAD).
   */
  head(h: ParsedHead): boolean;
  /**
   * Part of the message's body, de-chunked: llhttp's binding hands each one over as its own copy (never a
   * view of the buffer being executed), so it may be kept as it is (test/unit/waypoint-h1.test.ts pins it).
   */
  body(chunk: Buffer): void;
  /** The message is over (its trailers, if any, are dropped). */
  end(): void;
}

export interface ParsedHead {
  readonly versionMajor: number;
  readonly versionMinor: number;
  readonly fields: string[];
  readonly method: string | undefined;
  readonly url: string;
  readonly status: number;
  readonly reason: string;
  /** Upgrade (or CONNECT): after this head the bytes are no longer HTTP. */
  readonly upgrade: boolean;
  /** Whether the connection may carry another message after this one (version and Connection). */
  readonly keepAlive: boolean;
}

/** A refusal by llhttp: its code (HPE_*) and reason, and how far it read. */
export interface ParseFailure {
  readonly code: string;
  readonly reason: string;
}

interface NativeParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(data: Buffer): number | (Error & { code?: string; reason?: string; bytesParsed?: number });
  finish(): undefined | (Error & { code?: string; reason?: string });
  close(): void;
  [k: number]: unknown;
}

interface NativeParserClass {
  new (): NativeParser;
  readonly REQUEST: number;
  readonly RESPONSE: number;
  readonly kOnMessageBegin: number;
  readonly kOnHeaders: number;
  readonly kOnHeadersComplete: number;
  readonly kOnBody: number;
  readonly kOnMessageComplete: number;
  readonly kOnExecute: number;
  readonly kLenientNone: number;
}

const common = createRequire(import.meta.url)('_http_common') as {
  HTTPParser: NativeParserClass;
  methods: readonly string[];
};
const { HTTPParser, methods } = common;
const RESOURCE = Object.freeze({});

/** Default cap of a head's bytes, as node:http's (--max-http-header-size). */
export const MAX_HEAD_BYTES = 16 * 1024;

export type ParseResult =
  | { readonly ok: true; readonly consumed: number }
  | { readonly ok: false; readonly failure: ParseFailure };

/**
 * One connection's parser, for requests or for responses. Strict (no lenient flags): both Content-Length
 * and Transfer-Encoding, a duplicate Content-Length, bare LF and the other smuggling shapes are refused.
 */
export class Http1Parser {
  readonly #p: NativeParser;
  #events: ParserEvents;
  /** A head longer than llhttp's field batch arrives in parts before it is complete. */
  #fields: string[] = [];
  #url = '';
  #inHead = true;
  #executing = false;
  #closeAfter = false;

  constructor(kind: 'request' | 'response', events: ParserEvents, maxHeadBytes = MAX_HEAD_BYTES) {
    this.#events = events;
    const p = new HTTPParser();
    p.initialize(kind === 'request' ? HTTPParser.REQUEST : HTTPParser.RESPONSE, RESOURCE, maxHeadBytes, 0);
    p[HTTPParser.kOnMessageBegin] = () => {
      this.#inHead = true;
      this.#events.begin?.();
    };
    p[HTTPParser.kOnHeaders] = (fields: string[], url: string) => {
      // After the head: trailers, which the waypoint does not hand on.
      if (!this.#inHead) return;
      for (let i = 0; i < fields.length; i++) this.#fields.push(fields[i]!);
      this.#url += url;
    };
    p[HTTPParser.kOnHeadersComplete] = (
      versionMajor: number,
      versionMinor: number,
      fields: string[] | undefined,
      method: number | undefined,
      url: string | undefined,
      status: number | undefined,
      reason: string | undefined,
      upgrade: boolean,
      keepAlive: boolean,
    ): number => {
      this.#inHead = false;
      let all = fields ?? [];
      if (this.#fields.length > 0) {
        all = this.#fields.concat(all);
        this.#fields = [];
      }
      const u = this.#url + (url ?? '');
      this.#url = '';
      const noBody = this.#events.head({
        versionMajor,
        versionMinor,
        fields: all,
        method: method === undefined ? undefined : methods[method],
        url: u,
        status: status ?? 0,
        reason: reason ?? '',
        upgrade,
        keepAlive,
      });
      return noBody ? 1 : 0;
    };
    p[HTTPParser.kOnBody] = (chunk: Buffer) => this.#events.body(chunk);
    p[HTTPParser.kOnMessageComplete] = () => this.#events.end();
    this.#p = p;
  }

  /** Reads `data`; on an upgrade, `consumed` stops at the end of the head and the rest is not HTTP. */
  execute(data: Buffer): ParseResult {
    if (this.closed) return { ok: true, consumed: 0 };
    this.#executing = true;
    let r: ReturnType<NativeParser['execute']>;
    try {
      r = this.#p.execute(data);
    } finally {
      this.#executing = false;
      if (this.#closeAfter) this.#p.close();
    }
    if (typeof r === 'number') return { ok: true, consumed: r };
    return { ok: false, failure: { code: r.code ?? 'HPE_UNKNOWN', reason: r.reason ?? r.message } };
  }

  /** The peer ended its side: ends a body that runs to the close (a response without a length). */
  finish(): ParseFailure | undefined {
    if (this.closed) return undefined;
    this.#executing = true;
    let r: ReturnType<NativeParser['finish']>;
    try {
      r = this.#p.finish();
    } finally {
      this.#executing = false;
      if (this.#closeAfter) this.#p.close();
    }
    return r === undefined ? undefined : { code: r.code ?? 'HPE_UNKNOWN', reason: r.reason ?? r.message };
  }

  /** Frees the native parser (after the execute under way, if any); nothing may be executed after. */
  close(): void {
    if (this.#events === DEAD) return;
    this.#events = DEAD;
    if (this.#executing) this.#closeAfter = true;
    else this.#p.close();
  }

  get closed(): boolean {
    return this.#events === DEAD;
  }
}

const DEAD: ParserEvents = { head: () => true, body: () => {}, end: () => {} };
