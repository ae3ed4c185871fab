// Builds the native binding (native/build/Release/ambit_native.node) from `npm ci` / `npm install`.
// Linux only: elsewhere it says so and succeeds, and capture reports a clear error at run time.
// Uses the node-gyp that npm ships, and this Node's own headers when they are installed beside it,
// so a fresh install downloads nothing.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
// daemon/native/codes.ts from src/codes.h first: the TypeScript compiles against it on any platform.
const gen = spawnSync(process.execPath, [join(here, 'gen-codes.mjs')], { stdio: 'inherit' });
if (gen.status !== 0) process.exit(1);
if (process.platform !== 'linux') {
  console.log(
    `ambit: skipping the native capture binding: ${process.platform} is not Linux (capture needs Linux)`,
  );
  process.exit(0);
}
const args = ['rebuild', `--directory=${here}`];
const prefix = dirname(dirname(process.execPath));
const envDir = process.env.npm_config_nodedir;
if (!envDir && existsSync(join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);
// npm puts its own node-gyp on PATH for lifecycle scripts; npm_config_node_gyp names it too.
const bundled = join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const gypJs = process.env.npm_config_node_gyp || (existsSync(bundled) ? bundled : undefined);
const cmd = gypJs ? process.execPath : 'node-gyp';
const r = spawnSync(cmd, gypJs ? [gypJs, ...args] : args, { stdio: 'inherit' });
if (r.status !== 0) {
  console.error(
    'ambit: building the native capture binding failed. A target host needs: Linux, python3, make, a C\n' +
      "compiler and nghttp2's header (Debian: apt-get install -y python3 make gcc libnghttp2-dev), and the\n" +
      'Node headers (installed with Node, or\n' +
      'set npm_config_nodedir). Set AMBIT_NATIVE_OPTIONAL=1 to install without it (capture is then unavailable).',
  );
  process.exit(process.env.AMBIT_NATIVE_OPTIONAL === '1' ? 0 : 1);
}
