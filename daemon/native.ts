// The native binding (native/src): the socket options Node has no API for (capture), and the tunnel's TLS
// connection (tls.c). Loaded once, on first use; what is missing is said in one message.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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
  markedSocket(family: 4 | 6, mark: number): number;
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
  /**
   * The connection carries HTTP/2 (a tunnel): an nghttp2 session in the binding (h2.c) reads and writes its
   * frames. Before any data is read. `options`: maxConcurrentStreams, streamWindow, maxStreamWindow,
   * connectionWindow, maxFrameSize, maxHeaderListSize, maxHeaderFrames, streamResetRate, maxOutboundControl.
   */
  h2Enable(conn: NativeHandle, server: boolean, options: number[]): void;
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

const ADDON = join('native', 'build', 'Release', 'ambit_native.node');

/** The project root: the nearest directory above this file that holds native/binding.gyp. */
function projectRoot(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    if (existsSync(join(dir, 'native', 'binding.gyp'))) return dir;
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return undefined;
}

let cached: Addon | string | undefined;

/** The binding, or a sentence that says why there is none (not Linux, not built, does not load). */
export function addon(): Addon | string {
  if (cached === undefined) cached = tryLoad();
  return cached;
}

function tryLoad(): Addon | string {
  if (process.platform !== 'linux') return `the native binding needs Linux; this is ${process.platform}`;
  const root = projectRoot();
  const file = process.env.AMBIT_NATIVE_ADDON ?? (root ? join(root, ADDON) : undefined);
  if (!file || !existsSync(file)) {
    return (
      `the native binding is not built (${file ?? ADDON} is missing): run \`npm ci\` (or ` +
      '`node native/build.mjs`) on a host with python3, make and a C compiler'
    );
  }
  try {
    return createRequire(import.meta.url)(file) as Addon;
  } catch (err) {
    return `cannot load the native binding ${file}: ${(err as Error).message}`;
  }
}

/** The file descriptor under a connected net.Socket (Node keeps it on the internal handle). */
export function fdOf(socket: Socket): number {
  const handle = (socket as unknown as { _handle?: { fd?: unknown } })._handle;
  const fd = handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('socket has no file descriptor');
  return fd;
}
