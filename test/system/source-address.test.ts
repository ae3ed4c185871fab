// The original source address reaches the workload, as root: two hosts as network namespaces joined by a
// veth pair, a pod namespace behind each, ambitd in each host, rules from `ambit capture install`, nginx in
// pod B logging $remote_addr. A curl in pod A, captured and tunneled, must show up in nginx's log as pod A's
// address (IPv4 and IPv6); a workload on host B's own network is still reached, from the daemon's address.
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { Netns, waitForOutput, whyNotRunnable } from '../helpers/netns.js';
import { ROOT } from '../helpers/paths.js';

const DAEMON = join(ROOT, 'dist', 'daemon', 'main.js');
const CLI = join(ROOT, 'dist', 'agent-cli', 'main.js');
const ADDON = join(ROOT, 'native', 'build', 'Release', 'ambit_native.node');
const TOOLS = ['ip', 'iptables', 'iptables-save', 'ip6tables-save', 'ss', 'curl', 'nginx'];

const why =
  whyNotRunnable(TOOLS) ??
  ((await readFile(ADDON).then(
    () => undefined,
    () => `the native binding is not built (${ADDON}); run npm ci`,
  )) as string | undefined);

const A4 = '198.18.1.2';
const B4 = '198.18.2.2';
const A6 = '2001:2:0:1::2';
const B6 = '2001:2:0:2::2';
/** Host B's address on the link to pod B: what pod B sees when the daemon connects from its own address. */
const HB_POD_LINK = '198.18.2.1';
/** Host B's own address, where the workload sharing its network listens. */
const HB = '198.18.0.2';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface World {
  ns: Netns;
  dir: string;
  ha: string;
  hb: string;
  pa: string;
  pb: string;
  env: (node: string) => NodeJS.ProcessEnv;
  /** iptables, ip6tables, ip rules and routes of each host before anything was installed. */
  before: Record<string, string>;
  logs: Record<string, () => string>;
  daemons: Record<string, ChildProcess>;
}

/** What a host's packet filter and routing policy hold, without timestamps and counters. */
function snapshot(ns: Netns, host: string): string {
  const clean = (cmd: string[]): string =>
    ns
      .run(host, cmd)
      .stdout.split('\n')
      // Link-local addresses come up when they please; nothing of Ambit's is among them.
      .filter((l) => !l.startsWith('#') && !/\bfe80:/.test(l))
      .map((l) => l.replace(/\[\d+:\d+\]/g, '[0:0]'))
      .join('\n');
  return [
    clean(['iptables-save']),
    clean(['ip6tables-save']),
    clean(['ip', '-4', 'rule', 'show']),
    clean(['ip', '-6', 'rule', 'show']),
    clean(['ip', '-4', 'route', 'show', 'table', 'all']),
    clean(['ip', '-6', 'route', 'show', 'table', 'all']),
  ].join('\n---\n');
}

/** nginx in a namespace, answering on `listens`, logging "$remote_addr $request_uri" to `<dir>/<name>.log`. */
async function nginx(ns: Netns, host: string, dir: string, name: string, listens: string[]): Promise<string> {
  const prefix = join(dir, name);
  await mkdir(join(prefix, 'logs'), { recursive: true });
  const log = join(prefix, 'access.log');
  await writeFile(log, '');
  const conf = join(prefix, 'nginx.conf');
  await writeFile(
    conf,
    [
      'worker_processes 1;',
      `pid ${join(prefix, 'nginx.pid')};`,
      `error_log ${join(prefix, 'error.log')};`,
      'events { worker_connections 64; }',
      'http {',
      "  log_format src '$remote_addr $request_uri';",
      `  access_log ${log} src;`,
      ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${prefix}/${t};`),
      '  server {',
      ...listens.map((l) => `    listen ${l};`),
      `    location / { return 200 "hello from ${name}\\n"; }`,
      '  }',
      '}',
      '',
    ].join('\n'),
  );
  ns.spawn(host, ['nginx', '-p', prefix, '-e', join(prefix, 'error.log'), '-c', conf, '-g', 'daemon off;']);
  return log;
}

async function build(): Promise<World & { nginxB: string; nginxHost: string }> {
  const ns = new Netns('ambit-src');
  const dir = await mkdtemp(join(tmpdir(), 'ambit-srcaddr-'));
  try {
    return await populate(ns, dir);
  } catch (err) {
    ns.cleanup();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

async function populate(ns: Netns, dir: string): Promise<World & { nginxB: string; nginxHost: string }> {
  const ha = ns.add('ha');
  const hb = ns.add('hb');
  const pa = ns.add('pa');
  const pb = ns.add('pb');
  ns.link(ha, 'link0', '198.18.0.1/24', hb, 'link0', `${HB}/24`);
  ns.link(ha, 'vpa', '198.18.1.1/24', pa, 'eth0', `${A4}/24`);
  ns.link(hb, 'vpb', `${HB_POD_LINK}/24`, pb, 'eth0', `${B4}/24`);
  ns.route(pa, 'default', '198.18.1.1');
  ns.route(pb, 'default', HB_POD_LINK);
  ns.route(ha, '198.18.2.0/24', HB);
  ns.route(hb, '198.18.1.0/24', '198.18.0.1');
  ns.link6(ha, 'link0', '2001:2:0:10::1/64', hb, 'link0', '2001:2:0:10::2/64');
  ns.link6(ha, 'vpa', '2001:2:0:1::1/64', pa, 'eth0', `${A6}/64`);
  ns.link6(hb, 'vpb', '2001:2:0:2::1/64', pb, 'eth0', `${B6}/64`);
  ns.route(pa, 'default', '2001:2:0:1::1');
  ns.route(pb, 'default', '2001:2:0:2::1');
  ns.route(ha, '2001:2:0:2::/64', '2001:2:0:10::2');
  ns.route(hb, '2001:2:0:1::/64', '2001:2:0:10::1');
  ns.forward(ha);
  ns.forward(hb);
  const before = { [ha]: snapshot(ns, ha), [hb]: snapshot(ns, hb) };

  const meshFile = join(dir, 'mesh.yaml');
  await writeFile(meshFile, '');
  const env = (node: string): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH,
    AMBIT_NODE_NAME: node,
    AMBIT_STATE_DIR: join(dir, node),
    AMBIT_MESH_FILE: meshFile,
    AMBIT_CA_DIR: join(dir, 'ca'),
    AMBIT_ADVERTISE_ADDRESS: node === 'node-a' ? '198.18.0.1' : HB,
    AMBIT_CAPTURE: 'true',
    AMBIT_MESH_POLL: '200ms',
    AMBIT_CERT_TTL: '1h',
  });
  const cli = (host: string, node: string, args: string[]): string =>
    ns.exec(host, [process.execPath, CLI, '--mesh', meshFile, ...args], { env: env(node) });
  // Nodes, workloads and capture first, so that each daemon finds its reply routing when it starts.
  cli(ha, 'node-a', ['node', 'set', 'node-a', '--address', '198.18.0.1']);
  cli(ha, 'node-a', ['node', 'set', 'node-b', '--address', HB]);
  cli(ha, 'node-a', `enroll client --service web --node node-a --ip ${A4} --ip ${A6}`.split(' '));
  cli(hb, 'node-b', `enroll server --service api --node node-b --ip ${B4} --ip ${B6} --port 8080`.split(' '));
  // Sharing host B's network (its address is the node's): replies from there never pass PREROUTING.
  cli(hb, 'node-b', 'enroll hostweb --service hostweb --node node-b --uid 65534 --port 8090'.split(' '));
  cli(ha, 'node-a', ['capture', 'install']);
  cli(hb, 'node-b', ['capture', 'install']);

  const logs: Record<string, () => string> = {};
  const daemons: Record<string, ChildProcess> = {};
  const world = { ns, dir, ha, hb, pa, pb, env, before, logs, daemons };
  for (const [host, node] of [
    [ha, 'node-a'],
    [hb, 'node-b'],
  ] as const)
    await startDaemon(world, host, node);
  const nginxB = await nginx(ns, pb, dir, 'pod-b', [`${B4}:8080`, `[${B6}]:8080`]);
  const nginxHost = await nginx(ns, hb, dir, 'host-b', [`${HB}:8090`]);
  // Listening, as ss sees it: a curl on host B itself would be captured as plaintext to a strict workload.
  const listening = (host: string, port: number): Promise<boolean> =>
    eventually(() => ns.run(host, ['ss', '-Hltn', `sport = :${port}`]).stdout.trim() !== '');
  if (!(await listening(pb, 8080)) || !(await listening(hb, 8090))) throw new Error('nginx did not start');
  return { ...world, nginxB, nginxHost };
}

/** ambitd on a host, its output kept; resolves once it is ready. */
async function startDaemon(w: World, host: string, node: string): Promise<void> {
  const d = w.ns.spawn(host, [process.execPath, DAEMON], w.env(node));
  let out = '';
  const keep = (b: Buffer): void => {
    out += b.toString();
  };
  d.stdout?.on('data', keep);
  d.stderr?.on('data', keep);
  w.logs[node] = () => out;
  w.daemons[node] = d;
  // One at a time: the first creates the shared CA, the second loads it.
  await waitForOutput(d, 'ambitd ready', 15_000);
}

async function stopDaemon(w: World, node: string): Promise<void> {
  const d = w.daemons[node]!;
  if (d.exitCode !== null || d.signalCode !== null) return;
  const exited = new Promise((r) => d.once('exit', r));
  d.kill('SIGTERM');
  await exited;
}

/** Retries `f` until it returns true (bounded: at most `tries` times, `gap` ms apart). */
async function eventually(f: () => boolean | Promise<boolean>, tries = 40, gap = 250): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    if (await f()) return true;
    await sleep(gap);
  }
  return false;
}

/** The address nginx logged for the request to `path`, once it has logged it. */
async function loggedSource(log: string, path: string): Promise<string | undefined> {
  let found: string | undefined;
  await eventually(async () => {
    const line = (await readFile(log, 'utf8')).split('\n').find((l) => l.endsWith(` ${path}`));
    found = line?.split(' ')[0];
    return found !== undefined;
  });
  return found;
}

if (why) {
  console.log(`source address namespace test skipped: ${why}`);
  test.skip('the original source address reaches the workload', () => {});
} else {
  let w: (World & { nginxB: string; nginxHost: string }) | undefined;
  test.before(async () => {
    w = await build();
  });
  test.after.always(async () => {
    if (!w) return;
    for (const host of [w.ha, w.hb]) w.ns.run(host, [process.execPath, CLI, 'capture', 'remove']);
    w.ns.cleanup();
    await rm(w.dir, { recursive: true, force: true });
  });

  const curl = (world: World, args: string[]) =>
    world.ns.run(world.pa, ['curl', '-sS', '--max-time', '5', ...args]);
  const cliIn = (world: World, host: string, node: string, args: string[]): string =>
    world.ns.exec(host, [process.execPath, CLI, '--mesh', join(world.dir, 'mesh.yaml'), ...args], {
      env: world.env(node),
    });

  test.serial('capture install routes replies to transparent sockets back, and show lists it', (t) => {
    const world = w!;
    const shown = cliIn(world, world.hb, 'node-b', ['capture', 'show']);
    for (const f of [4, 6]) {
      t.regex(shown, new RegExp(`# IPv${f} reply routing`));
      t.regex(shown, new RegExp(`ip -${f} rule: 1339: from all fwmark 0x1000/0x1000 lookup 1339`));
      t.regex(shown, new RegExp(`ip -${f} route: local default dev lo table 1339`));
    }
    t.regex(shown, /-A PREROUTING -j AMBIT_REPLIES/);
    t.regex(shown, /-A AMBIT_REPLIES -p tcp -m socket --transparent .*-j MARK --set-xmark 0x1000\/0x1000/);
    const once = snapshot(world.ns, world.hb);
    cliIn(world, world.hb, 'node-b', ['capture', 'install']);
    t.is(snapshot(world.ns, world.hb), once, 'installing again changes nothing');
    t.regex(world.logs['node-b']!(), /original source address on/);
  });

  test.serial("IPv4: nginx in pod B logs pod A's address", async (t) => {
    const world = w!;
    const path = `/v4-${randomBytes(6).toString('hex')}`;
    const r = curl(world, [`http://${B4}:8080${path}`]);
    t.is(r.code, 0, `curl failed: ${r.stderr}\n${world.logs['node-b']!().slice(-3000)}`);
    t.is(r.stdout, 'hello from pod-b\n');
    t.is(await loggedSource(world.nginxB, path), A4);
  });

  test.serial("IPv6: nginx in pod B logs pod A's IPv6 address", async (t) => {
    const world = w!;
    const path = `/v6-${randomBytes(6).toString('hex')}`;
    const r = curl(world, ['-6', `http://[${B6}]:8080${path}`]);
    t.is(r.code, 0, `curl -6 failed: ${r.stderr}\n${world.logs['node-b']!().slice(-3000)}`);
    t.is(r.stdout, 'hello from pod-b\n');
    t.is(await loggedSource(world.nginxB, path), A6);
  });

  test.serial("a workload on host B's own network is reached, from the daemon's address", async (t) => {
    const world = w!;
    const path = `/host-${randomBytes(6).toString('hex')}`;
    const r = curl(world, [`http://${HB}:8090${path}`]);
    t.is(r.code, 0, `curl failed: ${r.stderr}\n${world.logs['node-b']!().slice(-3000)}`);
    t.is(r.stdout, 'hello from host-b\n');
    t.is(await loggedSource(world.nginxHost, path), HB, "host B's own address, not pod A's");
    t.regex(
      world.logs['node-b']!(),
      /"dst":\{"addr":"198\.18\.0\.2:8090".*"msg":"connection closed"/,
      'it went through the tunnel',
    );
  });

  test.serial(
    "reply routing missing at start (capture of an older Ambit): one warning, the daemon's own address",
    async (t) => {
      const world = w!;
      await stopDaemon(world, 'node-b');
      // What an older `ambit capture install` left: the nat rules, not the reply routing.
      for (const f of ['-4', '-6'])
        world.ns.exec(world.hb, ['ip', f, 'rule', 'del', 'priority', '1339', 'lookup', '1339']);
      await startDaemon(world, world.hb, 'node-b');
      const warnings = world.logs['node-b']!()
        .split('\n')
        .filter((l) => l.includes('original source address off'));
      t.is(warnings.length, 1, 'one warning line');
      t.regex(warnings[0]!, /"level":"?(40|warn)/);
      t.regex(warnings[0]!, /ip -4 rule/);
      const path = `/fallback-${randomBytes(6).toString('hex')}`;
      const r = curl(world, [`http://${B4}:8080${path}`]);
      t.is(r.code, 0, `curl failed: ${r.stderr}\n${world.logs['node-b']!().slice(-3000)}`);
      t.is(await loggedSource(world.nginxB, path), HB_POD_LINK, "host B's address, as before");
      const path6 = `/fallback6-${randomBytes(6).toString('hex')}`;
      t.is(curl(world, ['-6', `http://[${B6}]:8080${path6}`]).code, 0, 'IPv6 works too');
      t.is(await loggedSource(world.nginxB, path6), '2001:2:0:2::1');
    },
  );

  test.serial('capture remove leaves iptables, ip rules and routes as they were', (t) => {
    const world = w!;
    for (const [host, node] of [
      [world.ha, 'node-a'],
      [world.hb, 'node-b'],
    ] as const) {
      t.regex(cliIn(world, host, node, ['capture', 'remove']), /capture removed/);
      t.is(snapshot(world.ns, host), world.before[host], `${node}: what it was`);
      t.regex(cliIn(world, host, node, ['capture', 'show']), /no capture rules installed/);
    }
  });
}
