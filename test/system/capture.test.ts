// Transparent capture end to end, as root: two hosts as network namespaces joined by a veth pair, a
// workload "pod" namespace behind each, ambitd in each host, rules from `ambit capture install`.
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { Netns, waitForOutput, whyNotRunnable } from '../helpers/netns.js';
import { ROOT } from '../helpers/paths.js';

const DAEMON = join(ROOT, 'dist', 'daemon', 'main.js');
const CLI = join(ROOT, 'dist', 'agent-cli', 'main.js');
const ADDON = join(ROOT, 'native', 'build', 'Release', 'ambit_native.node');
const TOOLS = ['ip', 'iptables', 'iptables-save', 'tcpdump', 'curl'];

const why =
  whyNotRunnable(TOOLS) ??
  ((await readFile(ADDON).then(
    () => undefined,
    () => `the native binding is not built (${ADDON}); run npm ci`,
  )) as string | undefined);

/** Pod A's and pod B's IPv6 addresses (the workloads are dual-stack). */
const V6_A = '2001:2:0:1::2';
const V6_B = '2001:2:0:2::2';
/** Service api's IPv6 virtual address, routed by nobody: capture on host A takes it. */
const VIP6 = '2001:2:0:99::1';

/** The uid host B's health checks run as, standing for Consul's agent (captureCheckUsers). */
const CHECKER_UID = 4242;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface World {
  ns: Netns;
  dir: string;
  ha: string;
  hb: string;
  pa: string;
  pb: string;
  px: string;
  env: (node: string) => NodeJS.ProcessEnv;
  before: Record<string, string>;
  serverSeen: () => string;
  logs: Record<string, () => string>;
  daemons: Record<string, ChildProcess>;
}

/** iptables-save without its comment lines (which carry a timestamp) and counters. */
const saved = (ns: Netns, host: string): string =>
  ['iptables-save', 'ip6tables-save']
    .map((cmd) =>
      ns
        .run(host, [cmd])
        .stdout.split('\n')
        .filter((l) => !l.startsWith('#'))
        .map((l) => l.replace(/\[\d+:\d+\]/g, '[0:0]'))
        .join('\n'),
    )
    .join('\n---\n');

async function build(): Promise<World> {
  const ns = new Netns('ambit');
  const dir = await mkdtemp(join(tmpdir(), 'ambit-capture-'));
  const ha = ns.add('ha');
  const hb = ns.add('hb');
  const pa = ns.add('pa');
  const pb = ns.add('pb');
  const px = ns.add('px');
  // host A <-> host B: the only link between the hosts; the capture looks at it.
  ns.link(ha, 'link0', '198.18.0.1/24', hb, 'link0', '198.18.0.2/24');
  // pods: client (enrolled) and intruder (not enrolled) on A, server (enrolled) on B.
  ns.link(ha, 'vpa', '198.18.1.1/24', pa, 'eth0', '198.18.1.2/24');
  ns.link(ha, 'vpx', '198.18.3.1/24', px, 'eth0', '198.18.3.2/24');
  ns.link(hb, 'vpb', '198.18.2.1/24', pb, 'eth0', '198.18.2.2/24');
  ns.route(pa, 'default', '198.18.1.1');
  ns.route(px, 'default', '198.18.3.1');
  ns.route(pb, 'default', '198.18.2.1');
  ns.route(ha, '198.18.2.0/24', '198.18.0.2');
  ns.route(hb, '198.18.1.0/24', '198.18.0.1');
  ns.route(hb, '198.18.3.0/24', '198.18.0.1');
  // IPv6 beside IPv4 on the hosts' link and pods A and B (dual-stack workloads), from 2001:2::/48.
  ns.link6(ha, 'link0', '2001:2:0:10::1/64', hb, 'link0', '2001:2:0:10::2/64');
  ns.link6(ha, 'vpa', '2001:2:0:1::1/64', pa, 'eth0', '2001:2:0:1::2/64');
  ns.link6(hb, 'vpb', '2001:2:0:2::1/64', pb, 'eth0', '2001:2:0:2::2/64');
  ns.route(pa, 'default', '2001:2:0:1::1');
  ns.route(pb, 'default', '2001:2:0:2::1');
  ns.route(ha, '2001:2:0:2::/64', '2001:2:0:10::2');
  ns.route(hb, '2001:2:0:1::/64', '2001:2:0:10::1');
  ns.forward(ha);
  ns.forward(hb);

  const meshFile = join(dir, 'mesh.yaml');
  await writeFile(meshFile, '');
  const env = (node: string): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH,
    AMBIT_NODE_NAME: node,
    AMBIT_STATE_DIR: join(dir, node),
    AMBIT_MESH_FILE: meshFile,
    AMBIT_CA_DIR: join(dir, 'ca'),
    // No AMBIT_TUNNEL: the default bind, dual-stack here. The capture listeners take both families anyway.
    AMBIT_ADVERTISE_ADDRESS: node === 'node-a' ? '198.18.0.1' : '198.18.0.2',
    AMBIT_CAPTURE: 'true',
    AMBIT_MESH_POLL: '200ms',
    AMBIT_CERT_TTL: '1h',
    // The health checker of these tests (Consul's agent runs as a user of its own the same way).
    AMBIT_CAPTURE_CHECK_USERS: `consul,${CHECKER_UID}`,
  });
  const before = { [ha]: saved(ns, ha), [hb]: saved(ns, hb) };

  const logs: Record<string, () => string> = {};
  const daemons: Record<string, ChildProcess> = {};
  for (const [host, node] of [
    [ha, 'node-a'],
    [hb, 'node-b'],
  ] as const) {
    const d = ns.spawn(host, [process.execPath, DAEMON], env(node));
    let out = '';
    d.stdout?.on('data', (b: Buffer) => {
      out += b.toString();
    });
    d.stderr?.on('data', (b: Buffer) => {
      out += b.toString();
    });
    logs[node] = () => out;
    daemons[node] = d;
    // One at a time: the first creates the shared CA, the second loads it.
    await waitForOutput(d, 'ambitd ready', 15_000);
  }
  const cli = (args: string[]): string =>
    ns.exec(ha, [process.execPath, CLI, '--mesh', meshFile, ...args], { env: env('node-a') });
  cli(['enroll', 'client', '--service', 'web', '--node', 'node-a', '--ip', '198.18.1.2', '--ip', V6_A]);
  cli(
    `enroll server --service api --node node-b --ip 198.18.2.2 --ip ${V6_B} --port 8080 --port 8082`.split(
      ' ',
    ),
  );

  // The real server: a Node HTTP server in the pod on B, printing each request it sees.
  const server = ns.spawn(pb, [
    process.execPath,
    '-e',
    `require('http').createServer((q,s)=>{console.log('SEEN '+q.method+' '+q.url);s.end('hello from b\\n')}).listen(8080,'198.18.2.2',()=>console.log('listening'))`,
  ]);
  let seen = '';
  server.stdout?.on('data', (b: Buffer) => {
    seen += b.toString();
  });
  await waitForOutput(server, 'listening', 10_000);
  // A second server in the same pod, on its IPv6 address alone: 198.18.2.2:8082 is refused.
  const server6 = ns.spawn(pb, [
    process.execPath,
    '-e',
    `require('http').createServer((q,s)=>{console.log('SEEN6 '+q.url+' from '+q.socket.remoteAddress);s.end('hello over ipv6\\n')}).listen(8082,'${V6_B}',()=>console.log('listening'))`,
  ]);
  server6.stdout?.on('data', (b: Buffer) => {
    seen += b.toString();
  });
  await waitForOutput(server6, 'listening', 10_000);
  // A third, on a port the workload does not list: every port of a pod is the mesh's all the same.
  const unlisted = ns.spawn(pb, [
    process.execPath,
    '-e',
    `require('http').createServer((q,s)=>{console.log('SEEN8081 '+q.url);s.end('hello on 8081\\n')}).listen(8081,'198.18.2.2',()=>console.log('listening'))`,
  ]);
  unlisted.stdout?.on('data', (b: Buffer) => {
    seen += b.toString();
  });
  await waitForOutput(unlisted, 'listening', 10_000);
  return { ns, dir, ha, hb, pa, pb, px, env, before, serverSeen: () => seen, logs, daemons };
}

const curl = (w: World, from: string, path: string): { code: number; stdout: string; stderr: string } =>
  w.ns.run(from, ['curl', '-sS', '--max-time', '5', `http://198.18.2.2:8080${path}`]);

const cliIn = (w: World, host: string, node: string, args: string[]): string =>
  w.ns.exec(host, [process.execPath, CLI, '--mesh', join(w.dir, 'mesh.yaml'), ...args], { env: w.env(node) });

const metrics = (w: World, host: string): string =>
  w.ns.exec(host, ['curl', '-sS', '--max-time', '5', 'http://127.0.0.1:15020/metrics']);

/** ambit_connections_refused_total{reason="plaintext"} on host B. */
const plaintextRefusals = (w: World): number =>
  Number(
    /ambit_connections_refused_total\{direction="inbound",reason="plaintext"\} (\d+)/.exec(
      metrics(w, w.hb),
    )?.[1] ?? 0,
  );

/**
 * tcpdump on host A's link to host B, from now until `stop`: what crossed it, and how many packets of it
 * match a filter.
 */
async function watchLink(
  w: World,
  name: string,
): Promise<{ stop: () => Promise<Buffer>; count: (filter: string) => number }> {
  const pcap = join(w.dir, name);
  const args = ['-i', 'link0', '-n', '-U', '--immediate-mode', '-s', '0', '-w', pcap, 'tcp'];
  const dump = w.ns.spawn(w.ha, ['tcpdump', ...args]);
  await waitForOutput(dump, 'listening on', 10_000);
  return {
    async stop() {
      await sleep(300);
      dump.kill('SIGINT');
      await new Promise((r) => dump.once('exit', r));
      return readFile(pcap);
    },
    count: (filter) =>
      w.ns.exec(w.ha, ['tcpdump', '-r', pcap, '-n', filter]).split('\n').filter(Boolean).length,
  };
}

/** Retries `f` until it returns true (bounded: at most `tries` times, `gap` ms apart). */
async function eventually(f: () => boolean, tries = 40, gap = 250): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    if (f()) return true;
    await sleep(gap);
  }
  return false;
}

if (why) {
  console.log(`capture namespace test skipped: ${why}`);
  test.skip('transparent capture across hosts in network namespaces', () => {});
} else {
  let w: World | undefined;
  test.before(async () => {
    w = await build();
  });
  test.after.always(async () => {
    if (!w) return;
    for (const host of [w.ha, w.hb]) w.ns.run(host, [process.execPath, CLI, 'capture', 'remove']);
    w.ns.cleanup();
    await rm(w.dir, { recursive: true, force: true });
  });

  test.serial('capture install is idempotent and owns its chains', (t) => {
    const world = w!;
    const out = cliIn(world, world.ha, 'node-a', ['capture', 'install']);
    t.regex(out, /capture installed/);
    const first = saved(world.ns, world.ha);
    cliIn(world, world.ha, 'node-a', ['capture', 'install']);
    t.is(saved(world.ns, world.ha), first, 'installing twice gives the same rules');
    cliIn(world, world.hb, 'node-b', ['capture', 'install']);
    const shown = cliIn(world, world.ha, 'node-a', ['capture', 'show']);
    t.regex(shown, /-A PREROUTING -j AMBIT_PREROUTING/);
    t.regex(shown, /-A AMBIT_OUTBOUND -s 198\.18\.1\.2\/32 .*-j AMBIT_OUT_REDIRECT/);
    t.regex(shown, /-A AMBIT_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001/);
    const shownB = cliIn(world, world.hb, 'node-b', ['capture', 'show']);
    t.regex(
      shownB,
      /-A AMBIT_INBOUND -d 198\.18\.2\.2\/32 -p tcp -m comment --comment "ambit: workload server" -j AMBIT_IN_REDIRECT/,
    );
    // Every rule of Ambit's is in an AMBIT_ chain or jumps to one.
    for (const line of shown.split('\n').filter((l) => l.startsWith('-A'))) t.regex(line, /AMBIT_/);
  });

  test.serial(
    'a real curl in pod A reaches the server in pod B through the mTLS tunnel, no plaintext on the link',
    async (t) => {
      const world = w!;
      const secret = `ambit-secret-${randomBytes(8).toString('hex')}`;
      const link = await watchLink(world, 'link.pcap');
      const r = curl(world, world.pa, `/${secret}`);
      t.is(r.code, 0, `curl failed: ${r.stderr}\n${world.logs['node-a']!().slice(-3000)}`);
      t.is(r.stdout, 'hello from b\n');
      t.true(await eventually(() => world.serverSeen().includes(`SEEN GET /${secret}`)), 'B saw the request');
      const raw = await link.stop();
      t.false(raw.includes(Buffer.from(secret)), 'the request path never crossed the link in plaintext');
      t.false(raw.includes(Buffer.from('hello from b')), 'nor did the response');
      const { count } = link;
      t.true(count('tcp dst port 15008') > 0, 'the connection went to port 15008');
      // A TLS handshake record (content type 22) in a segment to 15008.
      t.true(count('tcp dst port 15008 and (tcp[((tcp[12:1] & 0xf0) >> 2):1] = 0x16)') > 0, 'TLS on 15008');
      t.is(count('tcp port 8080'), 0, 'nothing went to the server port directly');
      const m = metrics(world, world.hb);
      t.regex(
        m,
        /istio_tcp_connections_opened_total\{[^}]*reporter="destination"[^}]*source_workload="client"[^}]*connection_security_policy="mutual_tls"/,
      );
    },
  );

  test.serial(
    'IPv6: curl -6 in pod A reaches a v6-only server in pod B at the address it targeted, through the tunnel',
    async (t) => {
      const world = w!;
      t.false(
        world.ns.run(world.hb, ['curl', '-sS', '--max-time', '2', 'http://198.18.2.2:8082/']).code === 0,
        'the server does not listen on its IPv4 address',
      );
      t.regex(
        world.ns.exec(world.hb, ['ss', '-Hltn', 'sport = :15008']),
        /(\*|\[::\]):15008/,
        'the tunnel listens on both families by default',
      );
      const link = await watchLink(world, 'link6.pcap');
      const secret = `ambit-v6-${randomBytes(8).toString('hex')}`;
      const r = world.ns.run(world.pa, [
        'curl',
        '-6',
        '-sS',
        '--max-time',
        '5',
        `http://[${V6_B}]:8082/${secret}`,
      ]);
      t.is(r.code, 0, `curl -6 failed: ${r.stderr}\n${world.logs['node-b']!().slice(-3000)}`);
      t.is(r.stdout, 'hello over ipv6\n');
      t.true(await eventually(() => world.serverSeen().includes(`SEEN6 /${secret}`)), 'B saw the request');
      const raw = await link.stop();
      t.false(raw.includes(Buffer.from(secret)), 'the request path never crossed the link in plaintext');
      const { count } = link;
      t.true(count('tcp dst port 15008') > 0, 'the connection went to port 15008');
      t.is(count('tcp port 8082'), 0, 'nothing went to the server port directly');
      // Both access logs spell the IPv6 ends in brackets: the client pod's address, the address targeted.
      const line = (node: string): string | undefined =>
        world.logs[node]!()
          .split('\n')
          .find((l) => l.includes('"connection closed"') && l.includes(':8082'));
      t.true(
        await eventually(() => line('node-a') !== undefined && line('node-b') !== undefined),
        'access logs',
      );
      t.regex(line('node-a')!, new RegExp(`"src":\\{"addr":"\\[${V6_A}\\]:\\d+"`));
      t.regex(line('node-a')!, new RegExp(`"dst":\\{"addr":"\\[${V6_B}\\]:8082"`));
      t.regex(line('node-b')!, new RegExp(`"dst":\\{"addr":"\\[${V6_B}\\]:8082"`));
    },
  );

  test.serial(
    'IPv6: a service VIP of each family reaches the endpoint at its address in that family',
    async (t) => {
      const world = w!;
      const meshFile = join(world.dir, 'mesh.yaml');
      const was = await readFile(meshFile, 'utf8');
      // Port 80 leads to the v6-only server (8082), port 81 to the IPv4 one (8080).
      const vips = `services:\n  api:\n    vips: [198.18.10.1, ${VIP6}]\n    ports: [{ port: 80, targetPort: 8082 }, { port: 81, targetPort: 8080 }]\n`;
      await writeFile(meshFile, `${was}${vips}`);
      try {
        const get = (args: string[]) => world.ns.run(world.pa, ['curl', '-sS', '--max-time', '5', ...args]);
        const v6 = () => get(['-6', `http://[${VIP6}]:80/vip6`]);
        t.true(await eventually(() => v6().code === 0), `VIP ${VIP6}: ${v6().stderr}`);
        t.is(v6().stdout, 'hello over ipv6\n', 'delivered to the endpoint’s IPv6 address');
        const v4 = get(['-4', 'http://198.18.10.1:81/vip4']);
        t.is(v4.code, 0, `VIP 198.18.10.1: ${v4.stderr}`);
        t.is(v4.stdout, 'hello from b\n', 'delivered to the endpoint’s IPv4 address');
        t.true(
          await eventually(
            () => world.serverSeen().includes('SEEN6 /vip6') && world.serverSeen().includes('SEEN GET /vip4'),
          ),
        );
      } finally {
        await writeFile(meshFile, was);
      }
    },
  );

  test.serial(
    'a port the workload does not list goes through the tunnel too: no plaintext on the link',
    async (t) => {
      const world = w!;
      const secret = `ambit-unlisted-${randomBytes(8).toString('hex')}`;
      const link = await watchLink(world, 'unlisted.pcap');
      const r = world.ns.run(world.pa, [
        'curl',
        '-sS',
        '--max-time',
        '5',
        `http://198.18.2.2:8081/${secret}`,
      ]);
      t.is(r.code, 0, `curl failed: ${r.stderr}\n${world.logs['node-b']!().slice(-3000)}`);
      t.is(r.stdout, 'hello on 8081\n');
      t.true(await eventually(() => world.serverSeen().includes(`SEEN8081 /${secret}`)), 'B saw the request');
      const raw = await link.stop();
      t.false(raw.includes(Buffer.from(secret)), 'the request path never crossed the link in plaintext');
      t.false(raw.includes(Buffer.from('hello on 8081')), 'nor did the response');
      const tunnel = link.count('tcp dst port 15008');
      t.true(tunnel > 0, 'the connection went to port 15008');
      t.is(link.count('tcp port 8081'), 0, 'nothing went to the server port directly');
      t.log(
        `on the link: ${tunnel} packets to 15008, 0 to 8081, the secret in none of ${raw.length} B captured`,
      );
    },
  );

  test.serial('a strict workload refuses plaintext on a port it does not list', async (t) => {
    const world = w!;
    const refusedBefore = plaintextRefusals(world);
    const r = world.ns.run(world.px, [
      'curl',
      '-sS',
      '--max-time',
      '5',
      'http://198.18.2.2:8081/intruder-8081',
    ]);
    t.not(r.code, 0, 'the intruder got through on 8081');
    t.false(world.serverSeen().includes('/intruder-8081'), 'B never saw it');
    t.true(await eventually(() => plaintextRefusals(world) > refusedBefore), 'refusal counted');
  });

  test.serial('a port named as plaintext takes plaintext, labelled none; the rest stay strict', async (t) => {
    const world = w!;
    const enroll = (extra: string[]): string =>
      cliIn(world, world.hb, 'node-b', [
        ...`enroll server --service api --node node-b --ip 198.18.2.2 --ip ${V6_B} --port 8080 --port 8082`.split(
          ' ',
        ),
        ...extra,
      ]);
    enroll(['--plaintext-port', '8081']);
    try {
      const get = (port: number, path: string) =>
        world.ns.run(world.px, ['curl', '-sS', '--max-time', '5', `http://198.18.2.2:${port}${path}`]);
      t.true(await eventually(() => get(8081, '/scrape').code === 0), 'the plaintext port answers');
      t.true(await eventually(() => world.serverSeen().includes('SEEN8081 /scrape')));
      t.not(get(8080, '/still-strict').code, 0, 'the service port still refuses plaintext');
      t.false(world.serverSeen().includes('/still-strict'));
      t.regex(
        metrics(world, world.hb),
        /istio_tcp_connections_opened_total\{[^}]*destination_workload="server"[^}]*connection_security_policy="none"[^}]*\} [1-9]/,
      );
    } finally {
      enroll([]);
    }
    t.true(
      await eventually(
        () =>
          world.ns.run(world.px, ['curl', '-sS', '--max-time', '2', 'http://198.18.2.2:8081/']).code !== 0,
      ),
      'strict again on 8081',
    );
  });

  test.serial(
    'health checks by the checker user reach the workload itself: a dead port fails, no refusal counted',
    async (t) => {
      const world = w!;
      const shown = cliIn(world, world.hb, 'node-b', ['capture', 'show']);
      t.regex(shown, new RegExp(`--uid-owner ${CHECKER_UID} .*health checks.* -j RETURN`));
      const refusedBefore = plaintextRefusals(world);
      const check = (uid: number, port: number) =>
        world.ns.run(world.hb, [
          'setpriv',
          `--reuid=${uid}`,
          `--regid=${uid}`,
          '--clear-groups',
          'curl',
          '-sS',
          '--max-time',
          '3',
          `http://198.18.2.2:${port}/healthz`,
        ]);
      const live = check(CHECKER_UID, 8080);
      t.is(live.code, 0, `the check of a live server failed: ${live.stderr}`);
      t.true(
        await eventually(() => world.serverSeen().includes('SEEN GET /healthz')),
        'the server itself answered',
      );
      // Nothing listens on 8084: the checker is refused by the workload's kernel (curl exit 7), as it would
      // be without Ambit, rather than accepted by 15006 and passing.
      const dead = check(CHECKER_UID, 8084);
      t.is(dead.code, 7, `a check of a dead port must fail to connect: ${dead.stderr}`);
      t.is(plaintextRefusals(world), refusedBefore, 'no plaintext refusal counted for the checks');
      // Anyone else on the host is still inbound plaintext to a strict workload: refused.
      t.not(check(CHECKER_UID + 1, 8080).code, 0);
      t.true(await eventually(() => plaintextRefusals(world) > refusedBefore));
    },
  );

  test.serial('strict mode refuses a direct plaintext connection from an unenrolled namespace', async (t) => {
    const world = w!;
    const r = curl(world, world.px, '/from-intruder');
    t.not(r.code, 0, 'the intruder got through');
    t.false(world.serverSeen().includes('/from-intruder'), 'B never saw it');
    t.true(
      await eventually(() =>
        world.logs['node-b']!().includes('plaintext connection to strict workload server'),
      ),
      'refusal logged with its reason',
    );
    t.regex(
      metrics(world, world.hb),
      /ambit_connections_refused_total\{direction="inbound",reason="plaintext"\} [1-9]/,
    );
  });

  test.serial('permissive mode admits plaintext, labelled connection_security_policy="none"', async (t) => {
    const world = w!;
    cliIn(world, world.hb, 'node-b', [
      'enroll',
      'server',
      '--service',
      'api',
      '--node',
      'node-b',
      '--ip',
      '198.18.2.2',
      '--port',
      '8080',
      '--mode',
      'permissive',
    ]);
    const ok = await eventually(() => curl(world, world.px, '/plain-ok').code === 0);
    t.true(ok, 'permissive workload reachable in plaintext');
    t.true(await eventually(() => world.serverSeen().includes('/plain-ok')));
    t.regex(
      metrics(world, world.hb),
      /istio_tcp_connections_opened_total\{[^}]*connection_security_policy="none"[^}]*\} [1-9]/,
    );
    // Back to strict for what follows.
    cliIn(world, world.hb, 'node-b', [
      'enroll',
      'server',
      '--service',
      'api',
      '--node',
      'node-b',
      '--ip',
      '198.18.2.2',
      '--port',
      '8080',
    ]);
    t.true(await eventually(() => curl(world, world.px, '/strict-again').code !== 0), 'strict again');
  });

  test.serial('a deny policy blocks the captured connection', async (t) => {
    const world = w!;
    cliIn(world, world.ha, 'node-a', ['policy', 'deny', '--to', 'api', '--from', 'web']);
    const blocked = await eventually(() => curl(world, world.pa, '/before-deny-applied').code !== 0);
    t.true(blocked, 'the deny policy took effect');
    t.not(curl(world, world.pa, '/after-deny').code, 0, 'denied');
    await sleep(300);
    t.false(world.serverSeen().includes('/after-deny'), 'B never saw the denied request');
    cliIn(world, world.ha, 'node-a', ['policy', 'remove', 'deny-web-to-api']);
    t.true(await eventually(() => curl(world, world.pa, '/allowed-again').code === 0), 'allowed again');
  });

  test.serial('enroll on a host with capture installed updates its rules', (t) => {
    const world = w!;
    const out = cliIn(world, world.hb, 'node-b', [
      'enroll',
      'extra',
      '--service',
      'extra',
      '--node',
      'node-b',
      '--ip',
      '198.18.2.9',
    ]);
    t.regex(out, /capture installed/);
    t.regex(cliIn(world, world.hb, 'node-b', ['capture', 'show']), /-s 198\.18\.2\.9\/32/);
  });

  test.serial(
    'with ambitd down: a fail-closed workload is unreachable, a fail-open one is reached directly',
    async (t) => {
      const world = w!;
      const b = world.daemons['node-b']!;
      b.kill('SIGTERM');
      await new Promise((r) => (b.exitCode !== null ? r(undefined) : b.once('exit', r)));
      t.not(curl(world, world.px, '/while-down-closed').code, 0, 'strict (fail closed by default): refused');
      const out = cliIn(world, world.hb, 'node-b', [
        'enroll',
        'server',
        '--service',
        'api',
        '--node',
        'node-b',
        '--ip',
        '198.18.2.2',
        '--port',
        '8080',
        '--fail-mode',
        'open',
      ]);
      t.regex(out, /1 fail open.*ambitd not running/);
      const r = curl(world, world.px, '/while-down-open');
      t.is(r.code, 0, `fail open: passes untouched (${r.stderr})`);
      t.true(await eventually(() => world.serverSeen().includes('/while-down-open')));
    },
  );

  test.serial('capture remove restores iptables-save exactly', (t) => {
    const world = w!;
    for (const [host, node] of [
      [world.ha, 'node-a'],
      [world.hb, 'node-b'],
    ] as const) {
      t.regex(cliIn(world, host, node, ['capture', 'remove']), /capture removed/);
      t.is(saved(world.ns, host), world.before[host], `iptables-save on ${node} is what it was`);
      t.regex(cliIn(world, host, node, ['capture', 'show']), /no capture rules installed/);
    }
  });
}
