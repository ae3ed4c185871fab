// Loading the native binding (native/build/Release/ambit_native.node): once, on first use; what is missing
// (not Linux, not built, does not load) is said in one sentence.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Addon } from './addon.js';

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
