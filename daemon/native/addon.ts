// What the native binding (native/src, ambit_native.c's table of exports) offers JavaScript: every call and
// its types. Its events and the numbers both sides share are in codes.ts, generated from native/src/codes.h.
import type { H2Options } from './codes.js';

/** An opaque handle owned by the binding (an SSL_CTX or a connection). */
export type NativeHandle = { readonly __native: unique symbol };

export interface TlsContextOptions {
  /** PEM: every certificate a peer's chain may end at. */
  readonly roots: string;
  /** TLS 1.3 suites, OpenSSL names separated by ':'. */
  readonly ciphersuites: string;
  /** PEM: leaf first, then intermediates. */
  readonly cert?: string;
  readonly key?: string;
  /** Server: the context for the name a client sent in SNI (its handle), undefined to refuse. */
  readonly sni?: (servername: string) => NativeHandle | undefined;
  /** KeyUpdates a second a peer may send (burst 10x); above it the connection fails. Default 10. */
  readonly keyUpdateRate?: number;
}

export interface Addon {
  originalDst(fd: number, family: 4 | 6): { address: string; port: number };
  setMark(fd: number, mark: number): void;
  /** transparent: IP_TRANSPARENT / IPV6_TRANSPARENT as well, so that it may bind an address not this host's. */
  markedSocket(family: 4 | 6, mark: number, transparent?: boolean): number;
  /** One datagram to a Unix socket: systemd's $NOTIFY_SOCKET (`@name` for the abstract namespace). */
  notify(path: string, message: string): void;
  /** A listening TCP socket nothing polls (the supervisor's, handed to the processes that accept). */
  listenSocket(host: string, port: number, ipv6Only: boolean, backlog: number): { fd: number; port: number };
  /** Once: `dispatch` gets every connection's events (codes.ts, EV_*), `allocSlab` a new read buffer. */
  tlsInit(
    dispatch: (owner: object, event: number, a: unknown, b: unknown, c: unknown, d: unknown) => void,
    allocSlab: () => Buffer,
  ): void;
  tlsContext(opts: TlsContextOptions): NativeHandle;
  tlsConnect(
    ctx: NativeHandle,
    fd: number,
    server: boolean,
    servername: string | null,
    owner: object,
  ): NativeHandle;
  tlsWrite(conn: NativeHandle, buffers: Buffer[]): number;
  tlsPause(conn: NativeHandle): void;
  tlsResume(conn: NativeHandle): boolean;
  tlsPump(conn: NativeHandle): void;
  tlsEnd(conn: NativeHandle): void;
  tlsDestroy(conn: NativeHandle): void;
  /** An abortive close: RST rather than FIN. */
  tlsReset(conn: NativeHandle): void;
  /** A plain TCP connection on a duplicate of fd; the tls* calls above work on it too. Starts paused. */
  plainConnect(fd: number, owner: object): NativeHandle;
  /** What the splice has carried so far, [read from the socket, written to it]; the totals come with close. */
  connSpliced(conn: NativeHandle): [number, number];
  /**
   * The connection carries HTTP/2 (a tunnel): an nghttp2 session in the binding (h2.c) reads and writes its
   * frames. Before any data is read. `options` in the order of codes.h's enum h2_option.
   */
  h2Enable(conn: NativeHandle, server: boolean, options: H2Options): void;
  /** Client: a request ([name, value, ...]); the new stream's id, or a negative nghttp2 error. */
  h2Request(conn: NativeHandle, headers: string[]): number;
  /** Server: the answer to a stream; with endStream it ends the stream (a refusal). 0 or an nghttp2 error. */
  h2Respond(conn: NativeHandle, streamId: number, headers: string[], endStream: boolean): number;
  /** Bytes for a stream (null: none), then END_STREAM if `end`: what waits in its buffer, or -1. */
  h2Write(conn: NativeHandle, streamId: number, data: Buffer | null, end: boolean): number;
  /** The stream's reader took `bytes`: the peer gets that much credit back. */
  h2Consume(conn: NativeHandle, streamId: number, bytes: number): void;
  h2Reset(conn: NativeHandle, streamId: number, code: number): void;
  /** GOAWAY: code 0 lets open streams finish; another ends the session. */
  h2Goaway(conn: NativeHandle, code: number, message: string): void;
  /** A keepalive PING; its ACK arrives as EV_H2_PING. */
  h2Ping(conn: NativeHandle): boolean;
  /** Sends what was submitted (once per turn, from a microtask). */
  h2Send(conn: NativeHandle): void;
  /** Our stream window grows to `window` (SETTINGS_INITIAL_WINDOW_SIZE). */
  h2SetWindow(conn: NativeHandle, window: number): void;
  /** Joins a workload connection to a stream: their bytes flow in the binding from now on. */
  h2Splice(conn: NativeHandle, streamId: number, plain: NativeHandle): boolean;
  /** [streams nghttp2 holds open, our stream window now]. */
  h2Info(conn: NativeHandle): [number, number];
  /** [nghttp2's version if the running copy exports it, the file its code was loaded from]. */
  h2Version(): [string | undefined, string | undefined];
}
