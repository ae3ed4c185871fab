// The native binding (native/src/ambit_native.c): SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST and SO_MARK, which
// Node has no API for. Loaded lazily, so that nothing but transparent capture depends on it.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { type Socket, isIPv6 } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CaptureUnavailableError } from '../errors.js';

export interface NativeBinding {
  originalDst(fd: number, family: 4 | 6): { address: string; port: number };
  setMark(fd: number, mark: number): void;
  markedSocket(family: 4 | 6, mark: number): number;
}

/** An error from the binding: `code` is the errno name (ENOENT when a connection was not redirected). */
export interface NativeError extends Error {
  code: string;
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

let cached: NativeBinding | CaptureUnavailableError | undefined;

/** The binding, or a CaptureUnavailableError that says why not (not Linux, not built). */
export function loadNative(): NativeBinding {
  if (cached === undefined) cached = tryLoad();
  if (cached instanceof Error) throw cached;
  return cached;
}

function tryLoad(): NativeBinding | CaptureUnavailableError {
  if (process.platform !== 'linux') {
    return new CaptureUnavailableError(
      `transparent capture needs Linux (iptables, SO_ORIGINAL_DST, SO_MARK); this is ${process.platform}`,
    );
  }
  const root = projectRoot();
  const file = process.env.AMBIT_NATIVE_ADDON ?? (root ? join(root, ADDON) : undefined);
  if (!file || !existsSync(file)) {
    return new CaptureUnavailableError(
      `the native capture binding is not built (${file ?? ADDON} is missing): run \`npm ci\` (or ` +
        '`node native/build.mjs`) on a host with python3, make and a C compiler',
    );
  }
  try {
    return createRequire(import.meta.url)(file) as NativeBinding;
  } catch (err) {
    return new CaptureUnavailableError(
      `cannot load the native capture binding ${file}: ${(err as Error).message}`,
    );
  }
}

/** The file descriptor under a connected net.Socket (Node keeps it on the internal handle). */
export function fdOf(socket: Socket): number {
  const handle = (socket as unknown as { _handle?: { fd?: unknown } })._handle;
  const fd = handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('socket has no file descriptor');
  return fd;
}

const unmap = (ip: string): string => (ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip);

/**
 * Where the client meant to go before iptables redirected it. Undefined when the connection was not
 * redirected (ENOENT: someone connected to the capture port directly).
 */
export function originalDestination(socket: Socket): { ip: string; port: number } | undefined {
  const family: 4 | 6 = socket.localAddress && isIPv6(unmap(socket.localAddress)) ? 6 : 4;
  try {
    const r = loadNative().originalDst(fdOf(socket), family);
    return { ip: unmap(r.address), port: r.port };
  } catch (err) {
    if ((err as NativeError).code === 'ENOENT') return undefined;
    throw err;
  }
}
