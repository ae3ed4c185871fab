// The original source address reaches the workload, as root: two hosts as network namespaces joined by a
// veth pair, a pod namespace behind each, ambitd in each host, rules from `ambit capture install`, nginx in
// pod B logging $remote_addr. A curl in pod A, captured and tunneled, must show up in nginx's log as pod A's
// address (IPv4 and IPv6); a workload on host B's own network is still reached, from the daemon's address.
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import {
  PA as A4,
  PA6 as A6,
  PB as B4,
  PB6 as B6,
  HA,
  HB,
  type World as Hosts,
  captureWorld,
  removeRestores,
  whyNotReady,
  worldHooks,
} from '../helpers/capture-world.js';
import { type Netns, eventually } from '../helpers/netns.js';

const why = await whyNotReady(['ss', 'nginx']);

/** Host B's address on the link to pod B: what pod B sees when the daemon connects from its own address. */
const HB_POD_LINK = '198.18.2.1';

/** The hosts, and the access logs of nginx in pod B and of nginx on host B's own network (at HB). */
type World = Hosts & { nginxB: string; nginxHost: string };

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

const build = (): Promise<World> =>
  captureWorld({ prefix: 'ambit-src', snapshot: 'routing' }, async (w) => {
    const { cli, ha, hb } = w;
    // Nodes, workloads and capture first, so that each daemon finds its reply routing when it starts.
    cli(ha, 'node-a', ['node', 'set', 'node-a', '--address', HA]);
    cli(ha, 'node-a', ['node', 'set', 'node-b', '--address', HB]);
    cli(ha, 'node-a', `enroll client --service web --node node-a --ip ${A4} --ip ${A6}`.split(' '));
    cli(
      hb,
      'node-b',
      `enroll server --service api --node node-b --ip ${B4} --ip ${B6} --port 8080`.split(' '),
    );
    // Sharing host B's network (its address is the node's): replies from there never pass PREROUTING.
    cli(hb, 'node-b', 'enroll hostweb --service hostweb --node node-b --uid 65534 --port 8090'.split(' '));
    cli(ha, 'node-a', ['capture', 'install']);
    cli(hb, 'node-b', ['capture', 'install']);
    await w.startDaemons();
    const nginxB = await nginx(w.ns, w.pb, w.dir, 'pod-b', [`${B4}:8080`, `[${B6}]:8080`]);
    const nginxHost = await nginx(w.ns, hb, w.dir, 'host-b', [`${HB}:8090`]);
    // Listening, as ss sees it: a curl on host B itself would be captured as plaintext to a strict workload.
    const listening = (host: string, port: number): Promise<boolean> =>
      eventually(() => w.ns.run(host, ['ss', '-Hltn', `sport = :${port}`]).stdout.trim() !== '');
    if (!(await listening(w.pb, 8080)) || !(await listening(hb, 8090)))
      throw new Error('nginx did not start');
    return { nginxB, nginxHost };
  });

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
  const built = worldHooks(build);

  const curl = (world: World, args: string[]) =>
    world.ns.run(world.pa, ['curl', '-sS', '--max-time', '5', ...args]);

  test.serial('capture install routes replies to transparent sockets back, and show lists it', (t) => {
    const world = built();
    const shown = world.cli(world.hb, 'node-b', ['capture', 'show']);
    for (const f of [4, 6]) {
      t.regex(shown, new RegExp(`# IPv${f} reply routing`));
      t.regex(shown, new RegExp(`ip -${f} rule: 1339: from all fwmark 0x1000/0x1000 lookup 1339`));
      t.regex(shown, new RegExp(`ip -${f} route: local default dev lo table 1339`));
    }
    t.regex(shown, /-A PREROUTING -j AMBIT_REPLIES/);
    t.regex(shown, /-A AMBIT_REPLIES -p tcp -m socket --transparent .*-j MARK --set-xmark 0x1000\/0x1000/);
    const once = world.snapshot(world.hb);
    world.cli(world.hb, 'node-b', ['capture', 'install']);
    t.is(world.snapshot(world.hb), once, 'installing again changes nothing');
    t.regex(world.logs['node-b']!(), /original source address on/);
  });

  test.serial("IPv4: nginx in pod B logs pod A's address", async (t) => {
    const world = built();
    const path = `/v4-${randomBytes(6).toString('hex')}`;
    const r = curl(world, [`http://${B4}:8080${path}`]);
    t.is(r.code, 0, `curl failed: ${r.stderr}\n${world.logs['node-b']!().slice(-3000)}`);
    t.is(r.stdout, 'hello from pod-b\n');
    t.is(await loggedSource(world.nginxB, path), A4);
  });

  test.serial("IPv6: nginx in pod B logs pod A's IPv6 address", async (t) => {
    const world = built();
    const path = `/v6-${randomBytes(6).toString('hex')}`;
    const r = curl(world, ['-6', `http://[${B6}]:8080${path}`]);
    t.is(r.code, 0, `curl -6 failed: ${r.stderr}\n${world.logs['node-b']!().slice(-3000)}`);
    t.is(r.stdout, 'hello from pod-b\n');
    t.is(await loggedSource(world.nginxB, path), A6);
  });

  test.serial("a workload on host B's own network is reached, from the daemon's address", async (t) => {
    const world = built();
    const path = `/host-${randomBytes(6).toString('hex')}`;
    const r = curl(world, [`http://${HB}:8090${path}`]);
    t.is(r.code, 0, `curl failed: ${r.stderr}\n${world.logs['node-b']!().slice(-3000)}`);
    t.is(r.stdout, 'hello from host-b\n');
    t.is(await loggedSource(world.nginxHost, path), HB, "host B's own address, not pod A's");
    // The access line is written when the daemon sees the close, which may come after curl has exited.
    const closed = /"dst":\{"addr":"198\.18\.0\.2:8090".*"msg":"connection closed"/;
    t.true(
      await eventually(() => closed.test(world.logs['node-b']!())),
      `it went through the tunnel:\n${world.logs['node-b']!().slice(-2000)}`,
    );
  });

  test.serial(
    "reply routing missing at start (capture of an older Ambit): one warning, the daemon's own address",
    async (t) => {
      const world = built();
      await world.stopDaemon('node-b');
      // What an older `ambit capture install` left: the nat rules, not the reply routing.
      for (const f of ['-4', '-6'])
        world.ns.exec(world.hb, ['ip', f, 'rule', 'del', 'priority', '1339', 'lookup', '1339']);
      await world.startDaemon(world.hb, 'node-b');
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

  test.serial('capture remove leaves iptables, ip rules and routes as they were', (t) =>
    removeRestores(t, built(), 'iptables, ip rules and routes'),
  );
}
