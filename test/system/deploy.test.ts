import { execFile } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { NODE_FLAGS } from '../../daemon/proxy/reclaim.js';
import { CONFIG_KEYS } from '../../lib/config.js';
import { which } from '../helpers/netns.js';
import { AMBITD, CLI, ROOT } from '../helpers/paths.js';

// The deployment artifacts are checked against the daemon they deploy: the settings they pass must load,
// and the ports and paths they name must be the ones ambitd serves.

const root = ROOT;
const run = promisify(execFile);
const ANALYZE = '/usr/bin/systemd-analyze';
/** Where the Debian package installs Ambit (packaging/deb/build.mjs), which the unit names. */
const PREFIX = '/usr/lib/ambit';

// The Kubernetes manifests and the image: test/unit/deploy-kubernetes.test.ts.

test('the systemd unit passes systemd-analyze verify and starts the built daemon', async (t) => {
  const unit = readFileSync(join(root, 'systemd/ambitd.service'), 'utf8');
  // The node flags the daemon is tuned for (daemon/proxy/reclaim.ts), in every launcher.
  const flags = NODE_FLAGS.join(' ');
  t.true(unit.includes(`\nExecStart=${PREFIX}/bin/node ${flags} ${PREFIX}/dist/daemon/main.js\n`));
  const dockerfile = readFileSync(join(root, 'Dockerfile'), 'utf8');
  t.true(dockerfile.includes(`ENTRYPOINT ["node", ${NODE_FLAGS.map((f) => `"${f}"`).join(', ')}, `));
  // The daemon cannot run without its native binding: the image carries it where the loader looks.
  t.true(dockerfile.includes('./native/build/Release/ambit_native.node'));
  t.true(dockerfile.includes('./native/binding.gyp'));
  t.true(readFileSync(join(root, 'daemon/main.ts'), 'utf8').startsWith(`#!/usr/bin/env -S node ${flags}\n`));
  t.true(existsSync(join(root, 'dist/daemon/main.js')));
  // The package's wrapper runs the daemon with the same flags, by exec (so that it is the unit's main pid).
  t.true(
    readFileSync(join(root, 'packaging/deb/build.mjs'), 'utf8').includes(`const NODE_FLAGS = '${flags}';`),
  );
  if (!existsSync(ANALYZE)) {
    t.log(`${ANALYZE} missing (apt-get install -y systemd): only the static checks ran`);
    return;
  }
  // verify checks that the commands exist: the unit is verified with the package's prefix mapped onto this
  // checkout (its node, its dist/); test/system/packaging verifies it unchanged, installed in Debian 12.
  const dir = mkdtempSync(join(tmpdir(), 'ambit-unit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(
    join(dir, 'ambitd.service'),
    unit.replaceAll(`${PREFIX}/bin/node`, process.execPath).replaceAll(`${PREFIX}/dist`, join(root, 'dist')),
  );
  mkdirSync(join(dir, 'ambitd.service.d'));
  writeFileSync(
    join(dir, 'ambitd.service.d', 'capture.conf'),
    readFileSync(join(root, 'systemd/capture.conf'), 'utf8')
      .replaceAll(`${PREFIX}/bin/node`, process.execPath)
      .replaceAll(`${PREFIX}/dist`, join(root, 'dist')),
  );
  const { stderr } = await run(ANALYZE, ['verify', join(dir, 'ambitd.service')]).catch(
    (err: { stderr: string }) => ({ stderr: err.stderr }),
  );
  t.is(stderr.trim(), '');
});

/** `systemd-analyze security --offline`'s overall exposure, 0 (locked down) to 10 ("UNSAFE"). */
async function exposure(unitFile: string): Promise<number> {
  const { stdout } = await run(ANALYZE, ['security', '--offline=yes', '--no-pager', unitFile]);
  const m = /Overall exposure level for \S+: (\d+\.\d+) (\w+)/.exec(stdout);
  if (!m) throw new Error(`no exposure level in:\n${stdout}`);
  return Number(m[1]);
}

test('the unit scores OK (3.0 or less) in systemd-analyze security, with and without the capture drop-in', async (t) => {
  if (!existsSync(ANALYZE)) {
    t.log(`${ANALYZE} missing (apt-get install -y systemd): the security score was not measured`);
    t.pass();
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'ambit-unit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  copyFileSync(join(root, 'systemd/ambitd.service'), join(dir, 'ambitd.service'));
  const plain = await exposure(join(dir, 'ambitd.service'));
  // The drop-in is read from ambitd.service.d beside the unit, as in /etc/systemd/system.
  mkdirSync(join(dir, 'ambitd.service.d'));
  copyFileSync(join(root, 'systemd/capture.conf'), join(dir, 'ambitd.service.d', 'capture.conf'));
  const capture = await exposure(join(dir, 'ambitd.service'));
  t.log(`systemd-analyze security: ${plain} without capture, ${capture} with the capture drop-in`);
  t.true(plain <= 3.0, `exposure ${plain} without capture`);
  t.true(capture <= 3.0, `exposure ${capture} with the capture drop-in`);
  // The drop-in adds capabilities, so it must cost something: a drop-in that was not read would not.
  t.true(capture > plain);
  const dropIn = readFileSync(join(root, 'systemd/capture.conf'), 'utf8');
  t.regex(dropIn, /^AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW$/m);
  t.regex(dropIn, /^CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW$/m);
  t.regex(readFileSync(join(root, 'systemd/ambitd.service'), 'utf8'), /^CapabilityBoundingSet=$/m);
});

test('ambit --version and ambitd --version print the version of package.json', async (t) => {
  const { version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
  for (const main of [CLI, AMBITD]) {
    const { stdout } = await run(process.execPath, [main, '--version']);
    t.is(stdout.trim(), version);
  }
});

test('the Ansible role templates only settings that ambitd knows', (t) => {
  const template = readFileSync(join(root, 'ansible/roles/ambit/templates/ambitd.yaml.j2'), 'utf8');
  const keys = [...template.matchAll(/^([a-zA-Z]+):/gm)].map((m) => m[1]!);
  t.true(keys.length >= 4);
  for (const k of keys)
    t.true((CONFIG_KEYS as readonly string[]).includes(k), `${k} is not a setting of ambitd`);
});

test('the Ansible role passes ansible-lint and the playbook its syntax check', async (t) => {
  const missing = ['ansible-playbook', 'ansible-lint'].filter((c) => !which(c));
  if (missing.length) {
    t.log(`${missing.join(' and ')} missing (apt-get install -y ansible ansible-lint): not checked`);
    t.pass();
    return;
  }
  const env = { PATH: process.env.PATH, HOME: tmpdir(), ANSIBLE_NOCOLOR: '1', NO_COLOR: '1' };
  await run('ansible-playbook', ['--syntax-check', '-i', 'localhost,', join(root, 'ansible/site.yml')], {
    env,
  });
  // --offline: the check must not depend on Galaxy. Exit 0 is "Passed" under the production profile.
  const { stdout, stderr } = await run('ansible-lint', ['--offline', '--nocolor', 'ansible/'], {
    cwd: root,
    env,
  }).catch((err: { stdout: string; stderr: string }) => ({
    stdout: `FAILED ${err.stdout}`,
    stderr: err.stderr,
  }));
  t.false(stdout.startsWith('FAILED'), `${stdout}\n${stderr}`);
  t.notRegex(readFileSync(join(root, 'ansible/roles/ambit/tasks/main.yml'), 'utf8'), /failed_when: false/);
});
