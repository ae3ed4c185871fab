// `npm run demo`: two ambitd daemons ("hosts" node-a and node-b) on loopback, an HTTP workload on node-b,
// a client workload on node-a with an explicit upstream, and curl reaching the workload through the tunnel.
// Everything goes through the real binaries (ambitd, ambit) as a user would run them.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { NODE_FLAGS } from '../daemon/proxy/reclaim.js';

const execFileAsync = promisify(execFile);

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const ambitd = join(root, 'daemon', 'main.js');
const ambit = join(root, 'agent-cli', 'main.js');
const keep = process.argv.includes('--keep');
const dir = mkdtempSync(join(tmpdir(), 'ambit-demo-'));
const mesh = join(dir, 'mesh.yaml');
const children: ChildProcess[] = [];

const PORTS = {
  'node-a': { tunnel: 16008, admin: 16000, metrics: 16020, ready: 16021 },
  'node-b': { tunnel: 17008, admin: 17000, metrics: 17020, ready: 17021 },
};
const APP_PORT = 18080;
const UPSTREAM_PORT = 18001;
/** web-1's port: it serves nothing there, see its enrollment. */
const CLIENT_PORT = 18081;

function say(text: string): void {
  process.stdout.write(`\n\x1b[1m== ${text}\x1b[0m\n`);
}

function startDaemon(node: keyof typeof PORTS): ChildProcess {
  const p = PORTS[node];
  const child = spawn(
    process.execPath,
    [
      ...NODE_FLAGS,
      ambitd,
      '--node-name',
      node,
      '--state-dir',
      join(dir, node),
      '--ca-dir',
      join(dir, 'ca'),
      '--mesh-file',
      mesh,
      '--tunnel',
      `127.0.0.1:${p.tunnel}`,
      '--admin',
      `127.0.0.1:${p.admin}`,
      '--metrics',
      `127.0.0.1:${p.metrics}`,
      '--ready',
      `127.0.0.1:${p.ready}`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  child.stdout?.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) {
      if (line.includes('"access"')) process.stdout.write(`  [${node} access log] ${line}\n`);
    }
  });
  children.push(child);
  return child;
}

async function waitReady(node: keyof typeof PORTS): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`http://127.0.0.1:${PORTS[node].ready}/healthz/ready`);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${node} did not become ready within 15 s`);
}

// Asynchronous on purpose: the demo's HTTP workload lives in this process and must keep answering.
async function run(cmd: string, args: string[]): Promise<string> {
  process.stdout.write(
    `$ ${[cmd === process.execPath ? 'ambit' : cmd, ...args.slice(cmd === process.execPath ? 1 : 0)].join(' ')}\n`,
  );
  const { stdout: out } = await execFileAsync(cmd, args, { encoding: 'utf8' });
  process.stdout.write(out);
  return out;
}

async function main(): Promise<void> {
  say(`state in ${dir}`);
  // node-a first: it creates the shared CA that node-b then loads (embedded mode shares one CA directory).
  startDaemon('node-a');
  await waitReady('node-a');
  startDaemon('node-b');
  await waitReady('node-b');

  say('a workload on node-b: an HTTP server on 127.0.0.1:18080');
  const app = createServer((req, res) => {
    res.end(`hello from workload hello-1 on node-b; you asked for ${req.url}\n`);
  });
  await new Promise<void>((r) => app.listen(APP_PORT, '127.0.0.1', r));

  say('enroll both workloads');
  const cli = ['--mesh', mesh];
  await run(process.execPath, [
    ambit,
    ...cli,
    'enroll',
    'hello-1',
    '--service',
    'hello',
    '--node',
    'node-b',
    '--address',
    '127.0.0.1',
    '--port',
    String(APP_PORT),
  ]);
  await run(process.execPath, [
    ambit,
    ...cli,
    'enroll',
    'web-1',
    '--service',
    'web',
    '--node',
    'node-a',
    '--address',
    '127.0.0.1',
    // web-1 is only a client, but a workload at a loopback address must list the ports it serves: every
    // port of 127.0.0.1 would reach every server on the host, ambitd's admin API included.
    '--port',
    String(CLIENT_PORT),
    '--upstream',
    `hello=${UPSTREAM_PORT}`,
  ]);
  await run(process.execPath, [ambit, ...cli, 'list']);
  await waitReady('node-a');
  await waitReady('node-b');
  await new Promise((r) => setTimeout(r, 500));

  say(
    `curl through the tunnel: web-1's upstream 127.0.0.1:${UPSTREAM_PORT} -> node-a -> mTLS -> node-b -> hello-1`,
  );
  await run('curl', ['-sS', '--max-time', '5', `http://127.0.0.1:${UPSTREAM_PORT}/demo`]);
  await new Promise((r) => setTimeout(r, 300));

  say('certificates held by node-b');
  await run(process.execPath, [ambit, '--admin', `127.0.0.1:${PORTS['node-b'].admin}`, 'certs']);

  say("node-b's metrics (reporter=destination)");
  const metrics = await (await fetch(`http://127.0.0.1:${PORTS['node-b'].metrics}/metrics`)).text();
  for (const line of metrics.split('\n'))
    if (line.startsWith('istio_tcp_connections_opened_total')) process.stdout.write(`${line}\n`);

  say('deny web -> hello, and try again');
  await run(process.execPath, [ambit, ...cli, 'policy', 'deny', '--to', 'hello', '--from', 'web']);
  await new Promise((r) => setTimeout(r, 1500));
  try {
    await run('curl', ['-sS', '--max-time', '5', `http://127.0.0.1:${UPSTREAM_PORT}/denied`]);
  } catch {
    process.stdout.write(
      'curl failed, as it should: the connection was reset by node-a after node-b answered 401\n',
    );
  }
  await new Promise((r) => setTimeout(r, 300));
  app.close();
  if (keep) {
    say('--keep: daemons keep running; Ctrl-C to stop');
    await new Promise(() => {});
  }
}

function cleanup(): void {
  for (const c of children) c.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
}

process.on('SIGINT', () => {
  cleanup();
  process.exit(130);
});
main().then(
  () => {
    cleanup();
    process.exit(0);
  },
  (err: Error) => {
    process.stderr.write(`demo failed: ${err.message}\n`);
    cleanup();
    process.exit(1);
  },
);
