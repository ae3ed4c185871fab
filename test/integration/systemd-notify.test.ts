// systemd's notify protocol as systemd sees it: a Unix datagram socket bound by the test (with python3:
// Node has no AF_UNIX datagram socket, which is why the binding sends them), the binding's notify(), and
// ambitd with workers telling READY=1, RELOADING=1, WATCHDOG=1 and STOPPING=1 at the right moments.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { binding } from '../../daemon/native/index.js';
import { until } from '../helpers/cluster.js';
import { AMBITD } from '../helpers/paths.js';

const RECEIVER = `
import json, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('\\0' + path[1:] if path.startswith('@') else path)
print(json.dumps('bound'), flush=True)
while True:
    print(json.dumps(s.recv(8192).decode()), flush=True)
`;

const python = spawnSync('python3', ['-c', 'import socket; socket.AF_UNIX'], { stdio: 'ignore' });
const why =
  python.status === 0 ? undefined : 'python3 (to bind the datagram socket systemd would) is not here';

/** A datagram socket at `path`, and every message it received. */
async function receiver(path: string): Promise<{ messages: string[]; proc: ChildProcess }> {
  const proc = spawn('python3', ['-c', RECEIVER, path], { stdio: ['ignore', 'pipe', 'inherit'] });
  const messages: string[] = [];
  let rest = '';
  proc.stdout!.on('data', (b: Buffer) => {
    const parts = (rest + b.toString()).split('\n');
    rest = parts.pop() ?? '';
    for (const p of parts) if (p) messages.push(JSON.parse(p) as string);
  });
  await until(() => messages[0] === 'bound', 10_000, 'the receiver bound');
  messages.shift();
  return { messages, proc };
}

const maybe = why ? test.skip : test.serial;
if (why) test('systemd notify tests', (t) => t.log(`skipped: ${why}`));

/** ambitd with workers, its notify socket at `path`, on ports of its own. */
const notifying = (dir: string, path: string, env: NodeJS.ProcessEnv): ChildProcess =>
  spawn(process.execPath, [AMBITD], {
    env: {
      PATH: process.env.PATH,
      AMBIT_NODE_NAME: 'node-a',
      AMBIT_STATE_DIR: join(dir, 'state'),
      AMBIT_MESH_FILE: join(dir, 'mesh.yaml'),
      AMBIT_TUNNEL: '127.0.0.1:0',
      AMBIT_ADMIN: '127.0.0.1:0',
      AMBIT_METRICS: '127.0.0.1:0',
      AMBIT_READY: '127.0.0.1:0',
      AMBIT_STOP_GRACE: '0s',
      NOTIFY_SOCKET: path,
      ...env,
    },
    stdio: 'ignore',
  });

maybe('notify() sends one datagram, to a path or an abstract name, and names what went wrong', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-notify-'));
  const path = join(dir, 'notify');
  const abstract = `@ambit-test-${process.pid}`;
  const [r, ra] = [await receiver(path), await receiver(abstract)];
  try {
    binding().notify(path, 'READY=1\nSTATUS=hello');
    binding().notify(abstract, 'WATCHDOG=1');
    await until(() => r.messages.length === 1 && ra.messages.length === 1, 5000, 'both received');
    t.deepEqual(r.messages, ['READY=1\nSTATUS=hello']);
    t.deepEqual(ra.messages, ['WATCHDOG=1']);
    t.throws(() => binding().notify('relative', 'READY=1'), { message: /absolute or '@abstract'/ });
    t.throws(() => binding().notify(path, ''), { message: /1 to 4095 bytes/ });
    const gone = t.throws(() => binding().notify(join(dir, 'nobody'), 'READY=1'));
    t.is((gone as Error & { code?: string }).code, 'ENOENT');
  } finally {
    r.proc.kill();
    ra.proc.kill();
    await rm(dir, { recursive: true, force: true });
  }
});

maybe(
  'ambitd with workers: READY=1 with its pid, watchdog keep-alives, RELOADING=1 then READY=1, STOPPING=1',
  async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-notify-'));
    const path = join(dir, 'notify');
    const r = await receiver(path);
    const d = notifying(dir, path, { AMBIT_WORKERS: '2', WATCHDOG_USEC: '400000' });
    const has = (prefix: string): number => r.messages.filter((m) => m.startsWith(prefix)).length;
    try {
      await until(() => has('READY=1') === 1, 30_000, 'READY=1');
      const ready = r.messages.find((m) => m.startsWith('READY=1'))!;
      t.regex(ready, new RegExp(`^MAINPID=${d.pid}$`, 'm'), 'the supervisor is the main process');
      await until(() => has('WATCHDOG=1') >= 2, 5000, 'watchdog keep-alives');
      d.kill('SIGHUP');
      await until(() => has('READY=1') === 2, 30_000, 'READY=1 once the reload is done');
      const reloading = r.messages.find((m) => m.startsWith('RELOADING=1'));
      t.regex(reloading ?? '', /^MONOTONIC_USEC=\d+$/m, 'RELOADING=1 with the monotonic clock');
      const readies = r.messages.flatMap((m, i) => (m.startsWith('READY=1') ? [i] : []));
      const secondReady = readies[1] ?? -1;
      t.true(r.messages.indexOf(reloading!) < secondReady, 'READY=1 comes after RELOADING=1');
      const exited = new Promise((resolve) => d.once('exit', resolve));
      d.kill('SIGTERM');
      await until(() => has('STOPPING=1') === 1, 10_000, 'STOPPING=1');
      await exited;
      t.pass();
    } finally {
      d.kill('SIGKILL');
      r.proc.kill();
      await rm(dir, { recursive: true, force: true });
    }
  },
);

maybe(
  'a re-exec hands the service over: RELOADING=1, then MAINPID of the successor with READY=1',
  async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-notify-'));
    const path = join(dir, 'notify');
    const r = await receiver(path);
    const d = notifying(dir, path, { AMBIT_WORKERS: '1' });
    let successor: number | undefined;
    try {
      await until(() => r.messages.some((m) => m.startsWith('READY=1')), 30_000, 'READY=1');
      const exited = new Promise((resolve) => d.once('exit', resolve));
      d.kill('SIGUSR2');
      await until(() => r.messages.some((m) => m.startsWith('MAINPID=')), 30_000, 'the hand-over');
      const handOver = r.messages.find((m) => m.startsWith('MAINPID='))!;
      successor = Number(/^MAINPID=(\d+)$/m.exec(handOver)?.[1]);
      t.not(successor, d.pid, 'the main process is the new supervisor');
      t.regex(handOver, /^READY=1$/m, 'and it is ready');
      t.regex(handOver, new RegExp(`^STATUS=replaced by pid ${successor}$`, 'm'));
      t.true(
        r.messages.findIndex((m) => m.startsWith('RELOADING=1')) < r.messages.indexOf(handOver),
        'RELOADING=1 came first',
      );
      await exited;
      t.pass('the old supervisor exited once its workers drained');
      process.kill(successor, 'SIGTERM');
      await until(
        () => r.messages.some((m) => m.startsWith('STOPPING=1')),
        10_000,
        'STOPPING=1 from the successor',
      );
      t.pass();
    } finally {
      d.kill('SIGKILL');
      if (successor) {
        try {
          process.kill(successor, 'SIGKILL');
        } catch {
          // gone
        }
      }
      r.proc.kill();
      await rm(dir, { recursive: true, force: true });
    }
  },
);
