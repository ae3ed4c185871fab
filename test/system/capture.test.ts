// Transparent capture end to end, as root: two hosts as network namespaces joined by a veth pair, a
// workload "pod" namespace behind each, ambitd in each host, rules from `ambit capture install`.
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import {
  type World as Hosts,
  PA6 as V6_A,
  PB6 as V6_B,
  captureWorld,
  removeRestores,
  whyNotReady,
  worldHooks,
} from '../helpers/capture-world.js';
import type { CheckRunner } from '../helpers/consul-checks.js';
import { ConsulEmulator } from '../helpers/consul-emulator.js';
import { sleep } from '../helpers/net.js';
import { eventually, waitForOutput } from '../helpers/netns.js';

const why = await whyNotReady(['tcpdump']);

/** Service api's IPv6 virtual address, routed by nobody: capture on host A takes it. */
const VIP6 = '2001:2:0:99::1';

/** The uid host B's health checks run as, standing for Consul's agent (captureCheckUsers). */
const CHECKER_UID = 4242;

type World = Hosts & { px: string; serverSeen: () => string };

const build = (): Promise<World> =>
  captureWorld(
    {
      prefix: 'ambit',
      // The intruder: a pod on A that is not enrolled.
      pods: [{ short: 'px', host: 'a', subnet: 3 }],
      // The health checker of these tests (Consul's agent runs as a user of its own the same way).
      env: { AMBIT_CAPTURE_CHECK_USERS: `consul,${CHECKER_UID}` },
    },
    async (w) => {
      await w.startDaemons();
      const cli = (args: string[]): string => w.cli(w.ha, 'node-a', args);
      cli(['enroll', 'client', '--service', 'web', '--node', 'node-a', '--ip', '198.18.1.2', '--ip', V6_A]);
      cli(
        `enroll server --service api --node node-b --ip 198.18.2.2 --ip ${V6_B} --port 8080 --port 8082`.split(
          ' ',
        ),
      );
      // The real server: a Node HTTP server in the pod on B, printing each request it sees.
      const server = w.ns.spawn(w.pb, [
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
      const server6 = w.ns.spawn(w.pb, [
        process.execPath,
        '-e',
        `require('http').createServer((q,s)=>{console.log('SEEN6 '+q.url+' from '+q.socket.remoteAddress);s.end('hello over ipv6\\n')}).listen(8082,'${V6_B}',()=>console.log('listening'))`,
      ]);
      server6.stdout?.on('data', (b: Buffer) => {
        seen += b.toString();
      });
      await waitForOutput(server6, 'listening', 10_000);
      // A third, on a port the workload does not list: every port of a pod is the mesh's all the same.
      const unlisted = w.ns.spawn(w.pb, [
        process.execPath,
        '-e',
        `require('http').createServer((q,s)=>{console.log('SEEN8081 '+q.url);s.end('hello on 8081\\n')}).listen(8081,'198.18.2.2',()=>console.log('listening'))`,
      ]);
      unlisted.stdout?.on('data', (b: Buffer) => {
        seen += b.toString();
      });
      await waitForOutput(unlisted, 'listening', 10_000);
      return { px: w.pods.px!, serverSeen: () => seen };
    },
  );

const curl = (w: World, from: string, path: string): { code: number; stdout: string; stderr: string } =>
  w.ns.run(from, ['curl', '-sS', '--max-time', '5', `http://198.18.2.2:8080${path}`]);

/** ambit_connections_refused_total{reason="plaintext"} on host B. */
const plaintextRefusals = (w: World): number =>
  Number(
    /ambit_connections_refused_total\{direction="inbound",reason="plaintext"\} (\d+)/.exec(
      w.metrics(w.hb),
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

if (why) {
  console.log(`capture namespace test skipped: ${why}`);
  test.skip('transparent capture across hosts in network namespaces', () => {});
} else {
  const built = worldHooks(build);

  test.serial('capture install is idempotent and owns its chains', (t) => {
    const world = built();
    const out = world.cli(world.ha, 'node-a', ['capture', 'install']);
    t.regex(out, /capture installed/);
    const first = world.snapshot(world.ha);
    world.cli(world.ha, 'node-a', ['capture', 'install']);
    t.is(world.snapshot(world.ha), first, 'installing twice gives the same rules');
    world.cli(world.hb, 'node-b', ['capture', 'install']);
    const shown = world.cli(world.ha, 'node-a', ['capture', 'show']);
    t.regex(shown, /-A PREROUTING -j AMBIT_PREROUTING/);
    t.regex(shown, /-A AMBIT_OUTBOUND -s 198\.18\.1\.2\/32 .*-j AMBIT_OUT_REDIRECT/);
    t.regex(shown, /-A AMBIT_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001/);
    const shownB = world.cli(world.hb, 'node-b', ['capture', 'show']);
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
      const world = built();
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
      const m = world.metrics(world.hb);
      t.regex(
        m,
        /istio_tcp_connections_opened_total\{[^}]*reporter="destination"[^}]*source_workload="client"[^}]*connection_security_policy="mutual_tls"/,
      );
    },
  );

  test.serial(
    'IPv6: curl -6 in pod A reaches a v6-only server in pod B at the address it targeted, through the tunnel',
    async (t) => {
      const world = built();
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
      const world = built();
      const { meshFile } = world;
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
      const world = built();
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
    const world = built();
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
    const world = built();
    const enroll = (extra: string[]): string =>
      world.cli(world.hb, 'node-b', [
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
        world.metrics(world.hb),
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
      const world = built();
      const shown = world.cli(world.hb, 'node-b', ['capture', 'show']);
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

  test.serial(
    "Consul's checks with capture on: passing while the workload serves, critical once it dies, no refusal",
    async (t) => {
      const world = built();
      // The emulator stands in for host B's agent: its checks run in host B as the agent's user, as a real
      // agent's would (a TCP connect, bash's /dev/tcp, bounded by the check's Timeout).
      const runCheck: CheckRunner = async (probe) => {
        if (probe.kind !== 'tcp') return { status: 'critical', output: 'only TCP checks here' };
        const [host, port] = probe.tcp.split(':');
        const r = world.ns.run(world.hb, [
          'setpriv',
          `--reuid=${CHECKER_UID}`,
          `--regid=${CHECKER_UID}`,
          '--clear-groups',
          'timeout',
          String(Math.max(1, Math.ceil(probe.timeoutMs / 1000))),
          'bash',
          '-c',
          `exec 3<>/dev/tcp/${host}/${port}`,
        ]);
        return r.code === 0
          ? { status: 'passing', output: `TCP connect ${probe.tcp}: Success` }
          : { status: 'critical', output: `dial tcp ${probe.tcp}: ${r.stderr.trim() || `exit ${r.code}`}` };
      };
      const emu = await ConsulEmulator.start({ runCheck, checkUpdateIntervalMs: 0 });
      const server = world.ns.spawn(world.pb, [
        process.execPath,
        '-e',
        "require('net').createServer((c)=>c.end()).listen(8085,'198.18.2.2',()=>console.log('listening'))",
      ]);
      try {
        await waitForOutput(server, 'listening', 10_000);
        const refusedBefore = plaintextRefusals(world);
        const put = await fetch(`http://${emu.address}/v1/agent/service/register`, {
          method: 'PUT',
          body: JSON.stringify({
            ID: 'server-check',
            Name: 'api',
            Address: '198.18.2.2',
            Port: 8085,
            Check: { TCP: '198.18.2.2:8085', Interval: '1s', Timeout: '1s' },
          }),
        });
        t.is(put.status, 200, await put.text());
        const status = async (): Promise<string | undefined> => {
          const r = await fetch(`http://${emu.address}/v1/health/service/api`);
          const entries = (await r.json()) as { Checks: { ServiceID: string; Status: string }[] }[];
          return entries.flatMap((e) => e.Checks).find((c) => c.ServiceID === 'server-check')?.Status;
        };
        t.true(
          await eventually(async () => (await status()) === 'passing', 40, 250),
          'passing while it serves',
        );
        server.kill('SIGKILL');
        const died = Date.now();
        t.true(
          await eventually(async () => (await status()) === 'critical', 40, 250),
          'critical once it died',
        );
        t.log(`critical ${Date.now() - died} ms after the workload died (Interval 1s, Timeout 1s)`);
        t.is(plaintextRefusals(world), refusedBefore, 'the checks raised no plaintext refusal');
      } finally {
        server.kill('SIGKILL');
        await emu.close();
      }
    },
  );

  test.serial('strict mode refuses a direct plaintext connection from an unenrolled namespace', async (t) => {
    const world = built();
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
      world.metrics(world.hb),
      /ambit_connections_refused_total\{direction="inbound",reason="plaintext"\} [1-9]/,
    );
  });

  test.serial('permissive mode admits plaintext, labelled connection_security_policy="none"', async (t) => {
    const world = built();
    world.cli(world.hb, 'node-b', [
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
      world.metrics(world.hb),
      /istio_tcp_connections_opened_total\{[^}]*connection_security_policy="none"[^}]*\} [1-9]/,
    );
    // Back to strict for what follows.
    world.cli(world.hb, 'node-b', [
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
    const world = built();
    world.cli(world.ha, 'node-a', ['policy', 'deny', '--to', 'api', '--from', 'web']);
    const blocked = await eventually(() => curl(world, world.pa, '/before-deny-applied').code !== 0);
    t.true(blocked, 'the deny policy took effect');
    t.not(curl(world, world.pa, '/after-deny').code, 0, 'denied');
    await sleep(300);
    t.false(world.serverSeen().includes('/after-deny'), 'B never saw the denied request');
    world.cli(world.ha, 'node-a', ['policy', 'remove', 'deny-web-to-api']);
    t.true(await eventually(() => curl(world, world.pa, '/allowed-again').code === 0), 'allowed again');
  });

  test.serial('enroll on a host with capture installed updates its rules', (t) => {
    const world = built();
    const out = world.cli(world.hb, 'node-b', [
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
    t.regex(world.cli(world.hb, 'node-b', ['capture', 'show']), /-s 198\.18\.2\.9\/32/);
  });

  test.serial(
    'with ambitd down: a fail-closed workload is unreachable, a fail-open one is reached directly',
    async (t) => {
      const world = built();
      await world.stopDaemon('node-b');
      t.not(curl(world, world.px, '/while-down-closed').code, 0, 'strict (fail closed by default): refused');
      const out = world.cli(world.hb, 'node-b', [
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

  test.serial('capture remove restores iptables-save exactly', (t) =>
    removeRestores(t, built(), 'iptables-save'),
  );
}
