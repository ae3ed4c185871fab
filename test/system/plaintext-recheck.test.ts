// Policy re-checks of plaintext (15006) connections, as root: a host namespace running ambitd with capture,
// a permissive workload's pod behind it, and an unenrolled client pod whose connections the capture rules
// redirect to 15006. A policy change closes a carried plaintext connection it denies, and refuses one whose
// upstream connect is still in flight (the pod drops the SYN, so the connect waits for its timeout).
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { addPolicy, editMeshFile, upsertWorkload } from '../../lib/mesh/edit.js';
import { workload } from '../helpers/mesh.js';
import { Netns, waitForOutput, whyNotRunnable } from '../helpers/netns.js';
import { ROOT } from '../helpers/paths.js';

const DAEMON = join(ROOT, 'dist', 'daemon', 'main.js');
const CLI = join(ROOT, 'dist', 'agent-cli', 'main.js');
const ADDON = join(ROOT, 'native', 'build', 'Release', 'ambit_native.node');

const why =
  whyNotRunnable(['ip', 'iptables', 'iptables-save']) ??
  ((await readFile(ADDON).then(
    () => undefined,
    () => `the native binding is not built (${ADDON}); run npm ci`,
  )) as string | undefined);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function eventually(f: () => boolean, tries = 40, gap = 250): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    if (f()) return true;
    await sleep(gap);
  }
  return false;
}

/** A child's output so far, from its start. */
function output(child: ChildProcess): () => string {
  let out = '';
  child.stdout?.on('data', (b: Buffer) => {
    out += b.toString();
  });
  child.stderr?.on('data', (b: Buffer) => {
    out += b.toString();
  });
  return () => out;
}

interface World {
  ns: Netns;
  dir: string;
  meshFile: string;
  px: string;
  log: () => string;
}

async function build(): Promise<World> {
  const ns = new Netns('ambit-rck');
  const dir = await mkdtemp(join(tmpdir(), 'ambit-recheck-'));
  const hb = ns.add('hb');
  const pb = ns.add('pb');
  const px = ns.add('px');
  ns.link(hb, 'vpb', '198.18.2.1/24', pb, 'eth0', '198.18.2.2/24');
  ns.link(hb, 'vpx', '198.18.3.1/24', px, 'eth0', '198.18.3.2/24');
  ns.route(pb, 'default', '198.18.2.1');
  ns.route(px, 'default', '198.18.3.1');
  ns.forward(hb);
  const meshFile = join(dir, 'mesh.yaml');
  await writeFile(meshFile, '');
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    AMBIT_NODE_NAME: 'node-b',
    AMBIT_STATE_DIR: join(dir, 'node-b'),
    AMBIT_MESH_FILE: meshFile,
    AMBIT_CA_DIR: join(dir, 'ca'),
    AMBIT_TUNNEL: '0.0.0.0:15008',
    AMBIT_ADVERTISE_ADDRESS: '198.18.2.1',
    AMBIT_CAPTURE: 'true',
    AMBIT_MESH_POLL: '200ms',
    AMBIT_CERT_TTL: '1h',
  };
  const daemon = ns.spawn(hb, [process.execPath, DAEMON], env);
  const log = output(daemon);
  await waitForOutput(daemon, 'ambitd ready', 15_000);
  // A permissive workload: plaintext is taken, and policy decides.
  await editMeshFile(meshFile, (doc) => {
    upsertWorkload(
      doc,
      workload({
        name: 'server',
        service: 'api',
        node: 'node-b',
        addresses: ['198.18.2.2'],
        ports: [8080, 8081],
        mode: 'permissive',
      }),
    );
  });
  ns.exec(hb, [process.execPath, CLI, '--mesh', meshFile, 'capture', 'install'], { env });
  // An echo server on 8080; 8081's SYNs are dropped, so a connect to it waits for its timeout (5 s).
  const server = ns.spawn(pb, [
    process.execPath,
    '-e',
    `require('net').createServer((s)=>{s.on('error',()=>{});s.pipe(s)}).listen(8080,'198.18.2.2',()=>console.log('listening'))`,
  ]);
  await waitForOutput(server, 'listening', 10_000);
  ns.exec(pb, ['iptables', '-A', 'INPUT', '-p', 'tcp', '--dport', '8081', '--syn', '-j', 'DROP']);
  return { ns, dir, meshFile, px, log };
}

/** A long-lived plaintext client in the unenrolled pod: prints what comes back, and CLOSED at the end. */
function client(w: World, port: number): () => string {
  const c = w.ns.spawn(w.px, [
    process.execPath,
    '-e',
    `const s=require('net').connect(${port},'198.18.2.2',()=>{console.log('CONNECTED');s.write('hello')});` +
      `s.on('data',(d)=>console.log('DATA '+d));s.on('error',(e)=>console.log('ERROR '+e.code));` +
      `s.on('close',()=>{console.log('CLOSED');process.exit(0)});setTimeout(()=>process.exit(1),20000)`,
  ]);
  return output(c);
}

const denyPort = (w: World, name: string, port: number): Promise<unknown> =>
  editMeshFile(w.meshFile, (doc) => {
    addPolicy(doc, { name, action: 'deny', service: 'api', namespace: 'default', ports: [port], from: [] });
  });

if (why) {
  console.log(`plaintext re-check namespace test skipped: ${why}`);
  test.skip('policy re-checks of plaintext connections in network namespaces', () => {});
} else {
  let w: World | undefined;
  test.before(async () => {
    w = await build();
  });
  test.after.always(async () => {
    if (!w) return;
    w.ns.cleanup();
    await rm(w.dir, { recursive: true, force: true });
  });

  test.serial('a carried plaintext connection is closed by a deny that covers it', async (t) => {
    const world = w!;
    // The daemon reads the mesh file on its own poll: until it has, a connection is refused; try again.
    let out = client(world, 8080);
    for (let i = 0; i < 20 && !out().includes('DATA hello'); i++) {
      await eventually(() => out().includes('DATA hello') || out().includes('CLOSED'), 20, 100);
      if (out().includes('CLOSED')) out = client(world, 8080);
    }
    t.true(out().includes('DATA hello'), `echoed through 15006: ${out()}`);
    await denyPort(world, 'deny-8080', 8080);
    t.true(await eventually(() => out().includes('CLOSED')), `closed by the deny: ${out()}`);
    t.true(
      await eventually(() => /"msg":"closing connection no longer allowed"/.test(world.log())),
      world.log().slice(-3000),
    );
    const closed = world
      .log()
      .split('\n')
      .find((l) => l.includes('"msg":"connection closed"'));
    t.truthy(closed, 'the access log line');
    t.regex(closed!, /"security":"none"/);
    t.regex(closed!, /"outcome":"reset"/);
    t.regex(closed!, /"err":"no longer allowed: /);
    t.regex(closed!, /"bytes_sent":5,/);
  });

  test.serial('a deny landing while the plaintext upstream connect is in flight refuses it', async (t) => {
    const world = w!;
    const out = client(world, 8081);
    t.true(await eventually(() => out().includes('CONNECTED')), `accepted by 15006: ${out()}`);
    // The daemon's connect to 8081 is waiting on a dropped SYN now.
    await sleep(300);
    const asked = Date.now();
    await denyPort(world, 'deny-8081', 8081);
    t.true(await eventually(() => out().includes('CLOSED'), 16, 250), `refused: ${out()}`);
    // Well before the 5 s connect timeout: the change did not wait for the connect.
    t.true(Date.now() - asked < 4000, `refused after ${Date.now() - asked} ms`);
    t.false(out().includes('DATA'));
    // The client may see its close before the daemon's log line has reached us through its pipe.
    const refused = (): string[] =>
      world
        .log()
        .split('\n')
        .filter((l) => l.includes('"msg":"connection refused"'));
    t.true(
      await eventually(() =>
        refused().some((l) => l.includes('"response_flags":"DENY"') && l.includes('no longer allowed')),
      ),
      `the refusal logged: ${refused().join('\n') || world.log().slice(-3000)}`,
    );
  });
}
