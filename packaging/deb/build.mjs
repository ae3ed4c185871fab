// Builds ambit_<version>_amd64.deb from this checkout, without the network: the compiled tree (dist/, run
// `npm run build` first; `npm run package:deb` does both), the production node_modules picked from the local
// ones, the native binding already built (native/build), and the Node.js runtime running this script, which
// must be 20 or later (Debian 12's own nodejs is 18: the package carries its runtime, docs/operations.md).
//   node packaging/deb/build.mjs [--out <dir>] [--fast]   (default: the checkout's root; --fast: gzip -1, for tests)
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const outIndex = process.argv.indexOf('--out');
const outDir = resolve(outIndex > 0 ? process.argv[outIndex + 1] : root);

/** Where the package puts Ambit; the unit, the wrappers and the drop-in name these paths. */
const PREFIX = '/usr/lib/ambit';
// The node flags the daemon is tuned for (daemon/proxy/reclaim.ts NODE_FLAGS; test/system/packaging checks).
const NODE_FLAGS = '--initial-old-space-size=64';

function fail(message) {
  console.error(`package:deb: ${message}`);
  process.exit(1);
}

if (process.platform !== 'linux' || process.arch !== 'x64')
  fail(`builds amd64 only, on Linux (this is ${process.platform}/${process.arch})`);
const nodeMajor = Number(process.versions.node.split('.')[0]);
if (nodeMajor < 20)
  fail(
    `the bundled runtime is the node running this script, and it is ${process.version}: Ambit needs 20 or later`,
  );
const addon = join(root, 'native', 'build', 'Release', 'ambit_native.node');
if (!existsSync(addon))
  fail('native/build/Release/ambit_native.node is missing: run `node native/build.mjs` (npm ci does)');
if (!existsSync(join(root, 'dist', 'daemon', 'main.js'))) fail('dist/ is missing: run `npm run build` first');

const stage = mkdtempSync(join(tmpdir(), 'ambit-deb-stage-'));
const lib = join(stage, PREFIX.slice(1));
try {
  build();
} finally {
  rmSync(stage, { recursive: true, force: true });
}

function build() {
  // The compiled tree without what only a developer runs (tests, benches, examples) and without source maps
  // (they point at TypeScript sources the package does not carry).
  for (const part of ['daemon', 'lib', 'agent-cli']) {
    cpSync(join(root, 'dist', part), join(lib, 'dist', part), {
      recursive: true,
      filter: (src) => statSync(src).isDirectory() || src.endsWith('.js'),
    });
  }
  // package.json: "type": "module" makes dist/ ESM, and `--version` reads the version from it.
  writeFileSync(
    join(lib, 'package.json'),
    `${JSON.stringify({ name: pkg.name, version: pkg.version, type: pkg.type, license: pkg.license, private: true }, null, 2)}\n`,
  );
  copyProductionModules();
  // The loader finds the project root by native/binding.gyp, then the binding under it.
  mkdirSync(join(lib, 'native', 'build', 'Release'), { recursive: true });
  copyFileSync(join(root, 'native', 'binding.gyp'), join(lib, 'native', 'binding.gyp'));
  copyFileSync(addon, join(lib, 'native', 'build', 'Release', 'ambit_native.node'));
  mkdirSync(join(lib, 'bin'), { recursive: true });
  copyFileSync(process.execPath, join(lib, 'bin', 'node'));
  chmodSync(join(lib, 'bin', 'node'), 0o755);

  // exec: the wrapper's pid becomes node's, so that under systemd the main pid is ambitd itself.
  const wrapper = (main, flags) =>
    `#!/bin/sh\n# Installed by the ambit package: Ambit runs on the Node.js it ships (${PREFIX}/bin/node).\nexec ${PREFIX}/bin/node ${flags}${PREFIX}/dist/${main} "$@"\n`;
  put('usr/bin/ambitd', wrapper('daemon/main.js', `${NODE_FLAGS} `), 0o755);
  put('usr/bin/ambit', wrapper('agent-cli/main.js', ''), 0o755);
  put('lib/systemd/system/ambitd.service', readFileSync(join(root, 'systemd', 'ambitd.service')), 0o644);
  put('usr/share/ambit/capture.conf', readFileSync(join(root, 'systemd', 'capture.conf')), 0o644);
  put('usr/share/ambit/waypoint.conf', readFileSync(join(root, 'systemd', 'waypoint.conf')), 0o644);
  put('etc/ambit/ambitd.yaml', readFileSync(join(here, 'ambitd.yaml')), 0o644);
  put('usr/share/doc/ambit/copyright', `Ambit\nLicense: ${pkg.license}\n`, 0o644);

  const installedKb = Math.ceil(du(stage) / 1024);
  put(
    'DEBIAN/control',
    [
      'Package: ambit',
      `Version: ${pkg.version}`,
      'Architecture: amd64',
      'Maintainer: Ambit maintainers <ambit@invalid>',
      `Installed-Size: ${installedKb}`,
      // The bundled node links these (ldd); passwd carries useradd, init-system-helpers deb-systemd-helper,
      // procps kill and ps, which a minimal Debian lacks and an admin reaches for (SIGUSR2: a re-exec).
      'Depends: libc6 (>= 2.28), libstdc++6, libgcc-s1, passwd, init-system-helpers, procps',
      // Capture (the drop-in) runs iptables and ip (the reply routing); without them, no capture.
      'Recommends: iptables, iproute2',
      'Section: net',
      'Priority: optional',
      'Homepage: https://github.com/ambit-mesh/ambit',
      `Description: ${pkg.description}`,
      ' ambitd carries the traffic of the workloads enrolled on this host inside mutual TLS',
      " to the destination host's ambitd; ambit enrolls workloads and edits policy.",
      ` Ships its own Node.js ${process.version} runtime in ${PREFIX}/bin/node.`,
      '',
    ].join('\n'),
    0o644,
  );
  put('DEBIAN/conffiles', '/etc/ambit/ambitd.yaml\n', 0o644);
  for (const script of ['postinst', 'prerm', 'postrm'])
    put(`DEBIAN/${script}`, readFileSync(join(here, script)), 0o755);

  mkdirSync(outDir, { recursive: true });
  const out = join(outDir, `ambit_${pkg.version}_amd64.deb`);
  // gzip: xz would take a minute over the 100 MB runtime, for a package a third smaller.
  execFileSync(
    'dpkg-deb',
    ['--root-owner-group', '-Zgzip', process.argv.includes('--fast') ? '-z1' : '-z6', '--build', stage, out],
    {
      stdio: 'inherit',
    },
  );
  console.log(`package:deb: ${out} (${(statSync(out).size / 1e6).toFixed(1)} MB)`);
}

function put(path, content, mode) {
  const file = join(stage, path);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, content);
  chmodSync(file, mode);
}

/**
 * The production closure of package.json's dependencies, resolved the way Node resolves them (the nearest
 * node_modules up from the package that requires it), each package copied without its own node_modules (its
 * production ones are in the closure too). Not `npm ls --omit=dev`: its answer depends on the npm environment
 * it runs in (under npx it reports the dependencies' own devDependencies missing).
 */
function copyProductionModules() {
  const modules = realpathSync(join(root, 'node_modules'));
  const seen = new Map();
  const visit = (name, from, optional) => {
    for (let dir = from; ; dir = dirname(dir)) {
      const candidate = join(dir, 'node_modules', name);
      if (existsSync(join(candidate, 'package.json'))) return add(candidate);
      if (dir === root) break;
    }
    if (!optional) fail(`${name}, a production dependency, is not installed: run npm ci`);
  };
  const add = (dir) => {
    if (seen.has(dir)) return;
    const meta = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    seen.set(dir, meta);
    for (const d of Object.keys(meta.dependencies ?? {})) visit(d, dir, false);
    for (const d of Object.keys(meta.optionalDependencies ?? {})) visit(d, dir, true);
  };
  for (const d of Object.keys(pkg.dependencies ?? {})) visit(d, root, false);
  for (const dir of seen.keys()) {
    const rel = relative(join(root, 'node_modules'), dir);
    const src = join(modules, rel);
    cpSync(src, join(lib, 'node_modules', rel), {
      recursive: true,
      dereference: true,
      filter: (p) => relative(src, p).split('/')[0] !== 'node_modules',
    });
  }
}

function du(dir) {
  let total = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    total += e.isDirectory() ? du(p) : statSync(p).size;
  }
  return total;
}
