// The Debian package and the Ansible role, as root, in a Debian 12 tree made by debootstrap: the package is
// built from this checkout, installed there with dpkg, and the tree booted with systemd-nspawn so that
// `systemctl enable --now ambitd`'s unit runs for real (hardening, Type=notify, reload); the role is applied
// twice to a second tree over Ansible's chroot connection and must change nothing the second time.
import { execFile } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statfsSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { loadConfig } from '../../lib/config.js';
import { which } from '../helpers/netns.js';
import { ROOT } from '../helpers/paths.js';

const execFileAsync = promisify(execFile);
const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };

/**
 * The Debian 12 tree, installed, as a tarball: debootstrap needs the Debian mirror and a minute or two, so a
 * rerun unpacks this instead (about two seconds). The .include file beside it says what it was made with.
 */
const CACHE = '/var/cache/ambit-test/bookworm-minbase.tar';
/**
 * Beyond minbase: python3 (Ansible's modules run on the target), systemd (booted), curl (the readiness
 * check an admin would run), procps (the unit's ExecReload kill), iptables and iproute2 (capture).
 */
const INCLUDE = 'python3,python3-apt,adduser,systemd,systemd-sysv,curl,procps,iptables,iproute2';
const MIRROR = 'http://deb.debian.org/debian';
/** systemd-nspawn's own: it runs a booted tree's init under a cgroup hierarchy it can mount. */
const CGROUP2_SUPER_MAGIC = 0x63677270;

const TOOLS = [
  'debootstrap',
  'dpkg-deb',
  'chroot',
  'tar',
  'ip',
  'curl',
  'systemd-nspawn',
  'ansible-playbook',
];

function whyNot(): string | undefined {
  if (process.platform !== 'linux') return `needs Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0)
    return 'needs root (debootstrap, chroot, dpkg into a tree); CI runs it as root';
  const missing = TOOLS.filter((t) => !which(t));
  if (missing.length)
    return `missing ${missing.join(', ')} (apt-get install -y debootstrap systemd-container ansible)`;
  if (!existsSync(join(ROOT, 'native/build/Release/ambit_native.node')))
    return 'the native binding is not built; run npm ci';
  return undefined;
}

/** A clean environment: the host's (NODE_OPTIONS, NODE_EXTRA_CA_CERTS, ...) must not leak into the tree. */
const CLEAN_ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8' };

async function sh(
  cmd: string,
  args: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; timeout?: number; cwd?: string } = {},
): Promise<string> {
  try {
    const { stdout } = await execFileAsync(cmd, [...args], {
      env: opts.env ?? CLEAN_ENV,
      timeout: opts.timeout ?? 60_000,
      cwd: opts.cwd,
      maxBuffer: 64 << 20,
    });
    return stdout;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
  }
}

let base: Promise<void> | undefined;
/** The cached tree, made once (debootstrap) when missing or made with another package list. */
function ensureBase(): Promise<void> {
  base ??= (async () => {
    const made = existsSync(`${CACHE}.include`) ? readFileSync(`${CACHE}.include`, 'utf8').trim() : '';
    if (existsSync(CACHE) && made === INCLUDE) return;
    mkdirSync('/var/cache/ambit-test', { recursive: true });
    const dir = mkdtempSync(join(tmpdir(), 'ambit-debootstrap-'));
    try {
      await sh('debootstrap', ['--variant=minbase', `--include=${INCLUDE}`, 'bookworm', dir, MIRROR], {
        timeout: 600_000,
      });
      await sh('tar', ['-C', dir, '-cf', `${CACHE}.tmp`, '.'], { timeout: 120_000 });
      renameSync(`${CACHE}.tmp`, CACHE);
      writeFileSync(`${CACHE}.include`, `${INCLUDE}\n`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  })();
  return base;
}

/** How to shut down each tree booted in the background, by its directory. */
const stops = new Map<string, () => Promise<void>>();

/** A fresh copy of the Debian 12 tree, removed when the test ends. */
async function tree(t: { teardown: (fn: () => Promise<void>) => void }, name: string): Promise<string> {
  await ensureBase();
  const dir = mkdtempSync(join(tmpdir(), `ambit-tree-${name}-`));
  // A tree booted in the test is shut down before it is removed, whatever order teardowns run in.
  t.teardown(async () => {
    await stops.get(dir)?.();
    rmSync(dir, { recursive: true, force: true });
  });
  await sh('tar', ['-C', dir, '-xf', CACHE], { timeout: 120_000 });
  // mkdtemp's 0700 would keep the tree's own users (ambit) out of its root directory.
  await sh('chmod', ['0755', dir]);
  return dir;
}

let built: Promise<string> | undefined;
/** ambit_<version>_amd64.deb, built from this checkout by the command `npm run package:deb` runs. */
function deb(): Promise<string> {
  built ??= (async () => {
    const out = mkdtempSync(join(tmpdir(), 'ambit-deb-out-'));
    await sh(process.execPath, [join(ROOT, 'packaging/deb/build.mjs'), '--out', out, '--fast'], {
      env: process.env,
      timeout: 120_000,
    });
    return join(out, `ambit_${version}_amd64.deb`);
  })();
  return built;
}
test.after.always(async () => {
  if (built) rmSync(join(await built, '..'), { recursive: true, force: true });
});

/** Both, each finished before either's failure is thrown: a tree's teardown must not race its tar. */
async function both<A, B>(a: Promise<A>, b: Promise<B>): Promise<[A, B]> {
  const [x, y] = await Promise.allSettled([a, b]);
  if (x.status === 'rejected') throw x.reason;
  if (y.status === 'rejected') throw y.reason;
  return [x.value, y.value];
}

/** Why systemd-nspawn cannot run a command in the tree here, or undefined when it can. */
async function whyNoNspawn(dir: string): Promise<string | undefined> {
  try {
    await sh('systemd-nspawn', [...nspawnArgs(dir), '--pipe', '/bin/true'], {
      env: nspawnEnv(),
      timeout: 30_000,
    });
    return undefined;
  } catch (err) {
    return (err as Error).message.split('\n').filter(Boolean).slice(-3).join(' / ');
  }
}

// Without systemd as PID 1 on the host there is no machined to register with, nor a unit to make a scope in:
// --register=no --keep-unit. A private network: the tree's ambitd binds 15000-15021 without meeting the host's.
const nspawnArgs = (dir: string): string[] => [
  '--quiet',
  '--register=no',
  '--keep-unit',
  '--private-network',
  '-D',
  dir,
];
/** On a host with cgroup v1 (or hybrid) mounted, the container's systemd gets the legacy hierarchy too. */
function nspawnEnv(): NodeJS.ProcessEnv {
  const unified = statfsSync('/sys/fs/cgroup').type === CGROUP2_SUPER_MAGIC;
  return unified ? CLEAN_ENV : { ...CLEAN_ENV, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY: '0' };
}

// What an admin checks after `systemctl enable --now ambitd`, run in the booted tree by a unit ordered after
// ambitd's start (Type=notify: after its READY=1), written to /var/tmp/ambit-check/<boot>, then power off.
// The plain boot also reloads; the capture boot shows the rules (ambitd opens their gate itself, as ambit).
const CHECK_SCRIPT = `#!/bin/sh
r=/var/tmp/ambit-check/$1
mkdir -p $r
ready() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:15021/healthz/ready; }
code=000
for i in $(seq 100); do code=$(ready); [ "$code" = 200 ] && break; sleep 0.2; done
echo "$code" > $r/ready
systemctl show ambitd -p ActiveState -p MainPID -p NRestarts -p User > $r/show
cat /proc/$(systemctl show -p MainPID --value ambitd)/status > $r/status
systemd-analyze security ambitd > $r/security 2>&1
if [ "$1" = capture ]; then
  ambit capture show > $r/capture 2>&1
else
  systemctl reload ambitd; echo $? > $r/reload-exit
  code=000
  for i in $(seq 100); do code=$(ready); [ "$code" = 200 ] && break; sleep 0.2; done
  echo "$code" > $r/ready-after-reload
  systemctl show ambitd -p ActiveState -p MainPID > $r/show-after-reload
fi
journalctl -u ambitd --no-pager -o cat > $r/journal
# At once: the results are written (the host's page cache holds them), and a clean stop would wait for
# ambitd's drain.
systemctl poweroff --force --force
`;
const checkUnit = (boot: string): string => `[Unit]
Description=test: check ambitd as an admin would, then power off
Wants=ambitd.service
After=ambitd.service
[Service]
Type=oneshot
ExecStart=/bin/sh /usr/local/sbin/ambit-check ${boot}
[Install]
WantedBy=multi-user.target
`;

/** Boots the tree until the check unit powers it off; returns a reader of what the check wrote. */
async function boot(dir: string, name: string): Promise<{ file: (f: string) => string; ms: number }> {
  writeFileSync(join(dir, 'usr/local/sbin/ambit-check'), CHECK_SCRIPT, { mode: 0o755 });
  writeFileSync(join(dir, 'etc/systemd/system/ambit-check.service'), checkUnit(name));
  await sh('chroot', [dir, 'systemctl', 'enable', 'ambit-check']);
  const started = Date.now();
  await sh('systemd-nspawn', [...nspawnArgs(dir), '-b'], { env: nspawnEnv(), timeout: 120_000 });
  const ms = Date.now() - started;
  return { file: (f) => readFileSync(join(dir, 'var/tmp/ambit-check', name, f), 'utf8'), ms };
}

/** `systemd-analyze security`'s overall exposure of ambitd in a check's output. */
function exposure(text: string): number {
  const m = /Overall exposure level for ambitd.service: (\d+\.\d+)/.exec(text);
  if (!m) throw new Error(`no exposure level in:\n${text}`);
  return Number(m[1]);
}

/**
 * The tree booted with systemd-nspawn until the test ends, and a command that runs a command in it (the
 * container's namespaces and root, by nsenter into its init): what Ansible's chroot connection runs as its
 * `chroot_exe`, so that the role's systemd tasks and handlers act on a real systemd.
 */
async function bootInBackground(
  dir: string,
): Promise<{ exe: string; run: (args: string[]) => Promise<string> }> {
  const nspawn = execFile('systemd-nspawn', [...nspawnArgs(dir), '-b'], {
    env: nspawnEnv(),
    maxBuffer: 64 << 20,
  });
  const exited = new Promise<void>((resolve) => nspawn.on('exit', () => resolve()));
  const stopped = (ms: number): Promise<unknown> =>
    Promise.race([exited, new Promise((r) => setTimeout(r, ms).unref())]);
  const bin = mkdtempSync(join(tmpdir(), 'ambit-nsenter-'));
  const exe = join(bin, 'nsenter-chroot');
  stops.set(dir, async () => {
    // --force twice: at once, without stopping units or killing processes first (ambitd would drain for
    // tens of seconds; the tree is thrown away), then the SIGTERM by which nspawn shuts a container down,
    // then SIGKILL.
    if (existsSync(exe))
      await execFileAsync(exe, [dir, 'systemctl', 'poweroff', '--force', '--force']).catch(() => {});
    await stopped(10_000);
    nspawn.kill('SIGTERM');
    await stopped(30_000);
    nspawn.kill('SIGKILL');
    rmSync(bin, { recursive: true, force: true });
  });
  // The container's init: nspawn's child whose pid in its own namespace is 1.
  let leader: string | undefined;
  for (let i = 0; i < 200 && !leader; i++) {
    for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
      const status = (() => {
        try {
          return readFileSync(`/proc/${pid}/status`, 'utf8');
        } catch {
          return '';
        }
      })();
      if (new RegExp(`^PPid:\\s+${nspawn.pid}$`, 'm').test(status) && /^NSpid:\s+\d+\s+1$/m.test(status))
        leader = pid;
    }
    if (!leader) await new Promise((r) => setTimeout(r, 100));
  }
  if (!leader) throw new Error('systemd-nspawn started no container init');
  // Called as `chroot_exe <dir> <shell> -c <cmd>`: the dir is the container's root already.
  writeFileSync(
    exe,
    `#!/bin/sh\nshift\nexec nsenter --target ${leader} --mount --uts --ipc --net --pid --root --wd -- "$@"\n`,
    { mode: 0o755 },
  );
  const run = (args: string[]): Promise<string> => sh(exe, [dir, ...args], { timeout: 120_000 });
  await run(['systemctl', 'is-system-running', '--wait']).catch(() => '');
  return { exe, run };
}

/**
 * Where systemd-nspawn cannot run: ambitd started in the tree by hand with what of the unit setpriv and a
 * network namespace can apply (its user, no capability, no_new_privs), its readiness asked with curl.
 */
async function startBySetpriv(
  t: { teardown: (fn: () => void) => void },
  dir: string,
): Promise<{ ready: string; status: string }> {
  const ns = `ambit-pkg-${process.pid}`;
  await sh('ip', ['netns', 'add', ns]);
  t.teardown(() => void execFileAsync('ip', ['netns', 'delete', ns]).catch(() => {}));
  await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  const daemon = execFile(
    'ip',
    [
      ...['netns', 'exec', ns, 'chroot', dir, 'setpriv', '--reuid=ambit', '--regid=ambit', '--init-groups'],
      ...['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--no-new-privs', '--'],
      ...[
        'env',
        '-i',
        'AMBIT_CONFIG=/etc/ambit/ambitd.yaml',
        'AMBIT_STATE_DIR=/var/lib/ambit',
        '/usr/bin/ambitd',
      ],
    ],
    { env: CLEAN_ENV },
  );
  t.teardown(() => daemon.kill('SIGKILL'));
  let ready = '000';
  for (let i = 0; i < 100 && ready !== '200'; i++) {
    ready = await sh('ip', [
      ...['netns', 'exec', ns, 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '2'],
      'http://127.0.0.1:15021/healthz/ready',
    ]).catch(() => '000');
    if (ready !== '200') await new Promise((r) => setTimeout(r, 200));
  }
  const pid = (await sh('ip', ['netns', 'pids', ns])).trim().split('\n').pop() ?? '';
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return { ready, status };
}

const showOf = (text: string): Record<string, string> =>
  Object.fromEntries(
    text
      .trim()
      .split('\n')
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );

const why = whyNot();
if (why) {
  console.log(`packaging test skipped: ${why}`);
  test.skip('the Debian package installs and runs in Debian 12', () => {});
  test.skip('the Ansible role applies to Debian 12 and changes nothing the second time', () => {});
} else {
  test('the Debian package installs and runs in Debian 12', async (t) => {
    t.timeout(600_000, 'a first run makes the Debian 12 tree with debootstrap');
    const [dir, pkg] = await both(tree(t, 'deb'), deb());
    copyFileSync(pkg, join(dir, 'tmp', 'ambit.deb'));
    await sh('chroot', [dir, 'dpkg', '-i', '/tmp/ambit.deb']);
    const inTree = (args: string[]): Promise<string> => sh('chroot', [dir, ...args]);
    t.is((await inTree(['ambit', '--version'])).trim(), version);
    t.is((await inTree(['ambitd', '--version'])).trim(), version);
    t.regex(
      await inTree(['getent', 'passwd', 'ambit']),
      /^ambit:x:\d+:\d+:.*:\/var\/lib\/ambit:\/usr\/sbin\/nologin$/m,
    );
    t.is(
      (await inTree(['dpkg-query', '--control-show', 'ambit', 'conffiles'])).trim(),
      '/etc/ambit/ambitd.yaml',
    );
    // Not enabled by the install: enabling is the admin's step.
    t.false(existsSync(join(dir, 'etc/systemd/system/multi-user.target.wants/ambitd.service')));
    // The unit as installed, and with the capture drop-in linked the way docs/operations.md says.
    const dropIns = join(dir, 'etc/systemd/system/ambitd.service.d');
    mkdirSync(dropIns);
    symlinkSync('/usr/share/ambit/capture.conf', join(dropIns, 'capture.conf'));
    const verify = await execFileAsync('systemd-analyze', ['verify', `--root=${dir}`, 'ambitd.service'], {
      env: CLEAN_ENV,
    }).catch((err: { stderr: string }) => ({ stderr: err.stderr }));
    t.is(verify.stderr.trim(), '', 'systemd-analyze verify, the drop-in linked');
    rmSync(dropIns, { recursive: true });

    await inTree(['systemctl', 'enable', 'ambitd']);
    // AMBIT_TEST_NO_NSPAWN=1 takes the other path on a machine that could boot (to test the test).
    const noBoot = process.env.AMBIT_TEST_NO_NSPAWN ? 'AMBIT_TEST_NO_NSPAWN is set' : await whyNoNspawn(dir);
    if (noBoot) {
      t.log(`systemd-nspawn cannot run here (${noBoot}): ambitd started with setpriv instead`);
      const { ready, status } = await startBySetpriv(t, dir);
      t.is(ready, '200');
      t.regex(status, /^CapEff:\s+0+$/m);
      t.regex(status, /^NoNewPrivs:\s+1$/m);
      return;
    }
    const plain = await boot(dir, 'plain');
    t.log(`booted Debian 12 with systemd-nspawn, checked ambitd and powered off in ${plain.ms} ms`);
    const journal = plain.file('journal');
    const show = showOf(plain.file('show'));
    t.is(plain.file('ready').trim(), '200', journal);
    t.is(show.ActiveState, 'active');
    t.is(show.NRestarts, '0');
    t.is(show.User, 'ambit');
    // The unit's hardening, as the kernel applies it to the running daemon.
    const status = plain.file('status');
    t.regex(status, /^CapEff:\s+0+$/m);
    t.regex(status, /^CapBnd:\s+0+$/m);
    t.regex(status, /^NoNewPrivs:\s+1$/m);
    t.regex(status, /^Seccomp:\s+2$/m);
    const score = exposure(plain.file('security'));
    t.true(score <= 3.0);
    // A reload (workers: 1, the package's default) keeps the supervisor, so the main pid, and readiness.
    t.is(plain.file('reload-exit').trim(), '0');
    t.is(plain.file('ready-after-reload').trim(), '200');
    const after = showOf(plain.file('show-after-reload'));
    t.is(after.ActiveState, 'active');
    t.is(after.MainPID, show.MainPID);
    t.regex(journal, /"generation":2,"msg":"worker ready"/);

    // Capture, as docs/operations.md enables it: the drop-in linked, then the same boot.
    mkdirSync(dropIns);
    symlinkSync('/usr/share/ambit/capture.conf', join(dropIns, 'capture.conf'));
    const capture = await boot(dir, 'capture');
    const captureJournal = capture.file('journal');
    t.is(capture.file('ready').trim(), '200', captureJournal);
    const captureShow = showOf(capture.file('show'));
    t.is(captureShow.ActiveState, 'active');
    t.is(captureShow.NRestarts, '0');
    t.is(captureShow.User, 'ambit');
    // CAP_NET_ADMIN (12) and CAP_NET_RAW (13), and nothing else.
    t.regex(capture.file('status'), /^CapEff:\s+0+3000$/m);
    t.regex(capture.file('status'), /^CapBnd:\s+0+3000$/m);
    t.regex(capture.file('status'), /^NoNewPrivs:\s+1$/m);
    // The rules from ExecStartPre (as root), and their gate opened by ambitd itself once it listened.
    const rules = capture.file('capture');
    t.regex(rules, /^-A PREROUTING -j AMBIT_PREROUTING$/m, rules);
    t.regex(rules, /^-A AMBIT_GATE_OUT -p tcp -j REDIRECT --to-ports 15001$/m, rules);
    const captureScore = exposure(capture.file('security'));
    t.true(captureScore <= 3.0);
    t.log(
      `systemd-analyze security ambitd, booted: ${score} without capture, ${captureScore} with the drop-in (boot ${capture.ms} ms)`,
    );
  });

  test('the Ansible role applies to Debian 12 and changes nothing the second time', async (t) => {
    t.timeout(600_000, 'a first run makes the Debian 12 tree with debootstrap');
    const began = Date.now();
    const dir = await tree(t, 'ansible');
    const work = mkdtempSync(join(tmpdir(), 'ambit-ansible-'));
    t.teardown(() => rmSync(work, { recursive: true, force: true }));
    // Booted where nspawn runs, so that the role also starts, reloads and restarts ambitd; a plain chroot
    // (ambit_manage_service: false) otherwise. The boot needs no package: it runs while the package builds.
    const noBoot = process.env.AMBIT_TEST_NO_NSPAWN ? 'AMBIT_TEST_NO_NSPAWN is set' : await whyNoNspawn(dir);
    const [booted, pkg] = await both(noBoot ? Promise.resolve(undefined) : bootInBackground(dir), deb());
    t.log(`tree, boot and package: ${Date.now() - began} ms`);
    t.log(
      booted
        ? 'the role applied to the tree booted with systemd-nspawn'
        : `the role applied to a chroot (${noBoot})`,
    );
    writeFileSync(
      join(work, 'inventory.ini'),
      `[mesh]\ndebian12 ansible_connection=community.general.chroot ansible_host=${dir} ansible_python_interpreter=/usr/bin/python3${booted ? ` ansible_chroot_exe=${booted.exe}` : ''}\n`,
    );
    const vars = (logLevel: string): string => {
      const file = join(work, `vars-${logLevel}.json`);
      writeFileSync(
        file,
        JSON.stringify({
          ambit_deb_src: pkg,
          // No systemd in a chroot: everything but starting and reloading.
          ambit_manage_service: booted !== undefined,
          ambit_node_name: 'debian12',
          ambit_advertise_address: '198.18.0.1',
          ambit_log_level: logLevel,
          ambit_capture: true,
          ambit_workloads: [{ name: 'web-1', service: 'web', ip: ['198.18.5.2'], port: [8080] }],
        }),
      );
      return file;
    };
    // Facts are not gathered (the advertise address is given): a second less per run.
    const env = {
      ...CLEAN_ENV,
      HOME: work,
      ANSIBLE_NOCOLOR: '1',
      ANSIBLE_PIPELINING: '1',
      ANSIBLE_GATHERING: 'explicit',
    };
    const play = async (logLevel: string): Promise<{ out: string; changed: number }> => {
      const out = await sh(
        'ansible-playbook',
        ['-i', join(work, 'inventory.ini'), '-e', `@${vars(logLevel)}`, join(ROOT, 'ansible/site.yml')],
        { env, timeout: 180_000 },
      );
      const recap = /debian12\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0/.exec(out);
      if (!recap) throw new Error(`no clean recap in:\n${out}`);
      return { out, changed: Number(recap[1]) };
    };
    // In the booted tree: ambitd's main pid and readiness, as systemctl and curl there say.
    const service = async (): Promise<{ pid: string; ready: string }> => {
      if (!booted) return { pid: '', ready: '' };
      const pid = (await booted.run(['systemctl', 'show', '-p', 'MainPID', '--value', 'ambitd'])).trim();
      let ready = '000';
      for (let i = 0; i < 100 && ready !== '200'; i++) {
        ready = await booted
          .run([
            ...'curl -s -o /dev/null -w %{http_code} --max-time 2'.split(' '),
            'http://127.0.0.1:15021/healthz/ready',
          ])
          .catch(() => '000');
        if (ready !== '200') await new Promise((r) => setTimeout(r, 200));
      }
      return { pid, ready };
    };
    const t0 = Date.now();
    const first = await play('info');
    const t1 = Date.now();
    t.true(first.changed > 0);
    t.regex(first.out, /RUNNING HANDLER \[ambit : Restart ambitd\]/);
    const afterFirst = await service();
    const second = await play('info');
    const t2 = Date.now();
    t.is(second.changed, 0, second.out);
    t.notRegex(second.out, /RUNNING HANDLER/);
    const afterSecond = await service();
    // A settings change reloads: a restart would drop what the host carries.
    const third = await play('debug');
    t.log(`ansible-playbook runs: ${t1 - t0}, ${t2 - t1} and ${Date.now() - t2} ms`);
    // The settings, and in the booted tree the reload handler, which reports a change of its own.
    t.is(third.changed, booted ? 2 : 1, third.out);
    t.regex(third.out, /RUNNING HANDLER \[ambit : Reload ambitd\]/);
    t.notRegex(third.out, /RUNNING HANDLER \[ambit : Restart ambitd\]/);
    if (booted) {
      const afterThird = await service();
      t.is(afterFirst.ready, '200');
      t.not(afterFirst.pid, '0');
      // Nothing restarted by the second run, nor by the reload of the third.
      t.is(afterSecond.pid, afterFirst.pid);
      t.is(afterThird.pid, afterFirst.pid);
      t.is(afterThird.ready, '200');
      const journal = await booted.run(['journalctl', '-u', 'ambitd', '--no-pager', '-o', 'cat']);
      t.regex(journal, /"generation":2,"msg":"worker ready"/, journal);
      t.is((await booted.run(['systemctl', 'show', '-p', 'NRestarts', '--value', 'ambitd'])).trim(), '0');
    }
    t.log(
      `ansible-playbook: changed=${first.changed}, then ${second.changed}, then ${third.changed} (logLevel)`,
    );

    // What the runs left: the package, settings ambitd loads, the drop-in, the workload in the mesh file.
    t.regex(await sh('chroot', [dir, 'dpkg-query', '-W', 'ambit']), new RegExp(`^ambit\t${version}$`, 'm'));
    const config = loadConfig({
      env: {},
      configFile: join(dir, 'etc/ambit/ambitd.yaml'),
      flags: { stateDir: '/nonexistent' },
    });
    t.is(config.logLevel, 'debug');
    t.is(config.nodeName, 'debian12');
    t.true(config.capture.enabled);
    t.is(
      await sh('chroot', [dir, 'readlink', '/etc/systemd/system/ambitd.service.d/capture.conf']),
      '/usr/share/ambit/capture.conf\n',
    );
    const listed = JSON.parse(
      await sh('chroot', [dir, 'ambit', '--state-dir', '/var/lib/ambit', 'list', '--json']),
    ) as {
      name: string;
      node: string;
      addresses: string[];
    }[];
    t.deepEqual(
      listed.map((w) => [w.name, w.node, w.addresses]),
      [['web-1', 'debian12', ['198.18.5.2']]],
    );
  });
}
