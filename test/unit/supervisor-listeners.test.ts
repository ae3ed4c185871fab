// The supervisor's held sockets (daemon/supervisor/listeners.ts): the AMBIT_LISTEN_FDS format, binding
// and its errors, explicit upstreams' sockets kept while some worker wants them, and what is relied on of
// Node's internals (net._createServerHandle): a bound socket handed to a child by descriptor accepts there.
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { type Server, connect, createServer } from 'node:net';
import test from 'ava';
import {
  HeldListeners,
  LISTEN_FDS_ENV,
  adoptHandle,
  formatListenFds,
  listenFd,
  parseListenFds,
  upstreamName,
} from '../../daemon/supervisor/listeners.js';
import { ListenError } from '../../lib/errors.js';

test('AMBIT_LISTEN_FDS: names and descriptors, upstreams by address, anything else refused', (t) => {
  const fds = parseListenFds('tunnel=4,admin=5,upstream@127.0.0.1:18001=6,upstream@[::1]:18002=7');
  t.deepEqual(
    [...fds],
    [
      ['tunnel', 4],
      ['admin', 5],
      ['upstream@127.0.0.1:18001', 6],
      ['upstream@[::1]:18002', 7],
    ],
  );
  t.is(formatListenFds(fds), 'tunnel=4,admin=5,upstream@127.0.0.1:18001=6,upstream@[::1]:18002=7');
  t.is(parseListenFds(undefined).size, 0);
  t.is(parseListenFds('').size, 0);
  t.throws(() => parseListenFds('tunnel=4,gossip=5'), { message: /"gossip=5" is not <listener>=<fd>/ });
  t.throws(() => parseListenFds('tunnel=x'), { message: /is not <listener>=<fd>/ });
  t.throws(() => parseListenFds('tunnel=4,tunnel=5'), { message: /tunnel given twice/ });
  t.is(upstreamName('::1', 80), 'upstream@[::1]:80');
});

test('a held socket has its port; a port in use is a ListenError naming the listener and a remedy', (t) => {
  const first = listenFd('tunnel', { host: '127.0.0.1', port: 0 });
  t.true(first.port > 0);
  const err = t.throws(() => listenFd('admin', { host: '127.0.0.1', port: first.port }), {
    instanceOf: ListenError,
  });
  t.is(err?.code, 'AMBIT_LISTEN_FAILED');
  t.is((err as ListenError).errno, 'EADDRINUSE');
  t.regex(
    err!.message,
    new RegExp(`cannot listen on 127.0.0.1:${first.port} \\(admin\\): the address is in use`),
  );
  t.regex(err!.message, /another ambitd running\?.*SIGHUP, or SIGUSR2/);
  closeSync(first.fd);
  const notHere = t.throws(() => listenFd('ready', { host: '198.18.0.1', port: 0 }), {
    instanceOf: ListenError,
  });
  t.is((notHere as ListenError).errno, 'EADDRNOTAVAIL');
  t.regex(notHere!.message, /no interface of this host has that address/);
  const v6 = listenFd('outbound6', { host: '::1', port: 0 }, true);
  t.true(v6.port > 0, 'IPv6 too');
  closeSync(v6.fd);
});

test('a descriptor that is not a TCP socket is not adopted', (t) => {
  const fd = openSync('/dev/null', 'r');
  t.is(adoptHandle(fd), undefined);
});

test('a held socket listened on by an http server of this process serves', async (t) => {
  const held = HeldListeners.open({ admin: { host: '127.0.0.1', port: 0 } });
  const port = held.port('admin')!;
  const server: Server = createServer((s) => s.end('served'));
  await new Promise<void>((resolve) => server.listen(held.take('admin')!, resolve));
  const got = await new Promise<string>((resolve, reject) => {
    const c = connect(port, '127.0.0.1');
    let text = '';
    c.on('data', (b) => {
      text += b;
    });
    c.on('end', () => resolve(text));
    c.on('error', reject);
  });
  t.is(got, 'served');
  await new Promise((r) => server.close(r));
});

test('a held socket handed to a child by descriptor accepts there, on the port the parent bound', async (t) => {
  const held = HeldListeners.open({ tunnel: { host: '127.0.0.1', port: 0 } });
  const port = held.port('tunnel')!;
  const { stdio, env } = held.forChild();
  t.is(env, 'tunnel=4', 'the first descriptor past stdio and the IPC channel');
  // The child does what a worker does: inheritedListener() and listen on the handle.
  const child = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { inheritedListener } from ${JSON.stringify(new URL('../../daemon/supervisor/listeners.js', import.meta.url).href)};
       import { createServer } from 'node:net';
       const s = createServer((c) => c.end('child ' + process.pid));
       s.listen(inheritedListener('tunnel'), () => process.send('listening'));`,
    ],
    { stdio, env: { ...process.env, [LISTEN_FDS_ENV]: env } },
  );
  try {
    await new Promise<void>((resolve, reject) => {
      child.once('message', () => resolve());
      child.once('exit', (code) => reject(new Error(`child exited ${code}`)));
    });
    const got = await new Promise<string>((resolve, reject) => {
      const c = connect(port, '127.0.0.1');
      let text = '';
      c.on('data', (b) => {
        text += b;
      });
      c.on('end', () => resolve(text));
      c.on('error', reject);
    });
    t.is(got, `child ${child.pid}`);
  } finally {
    child.kill('SIGKILL');
    held.close();
  }
});

test("an explicit upstream's socket stays while some worker wants it, and is closed once none does", async (t) => {
  const probe = listenFd('tunnel', { host: '127.0.0.1', port: 0 });
  closeSync(probe.fd);
  const port = probe.port;
  const held = HeldListeners.open({});
  const a = held.acquire('127.0.0.1', port, 101);
  t.is(held.acquire('127.0.0.1', port, 102), a, 'one socket per address, shared by the workers');
  held.release('127.0.0.1', port, 101);
  t.true(held.has(upstreamName('127.0.0.1', port)), 'worker 102 still listens there');
  t.throws(() => listenFd('tunnel', { host: '127.0.0.1', port }), { instanceOf: ListenError });
  held.forget(102);
  t.false(held.has(upstreamName('127.0.0.1', port)), 'nobody wants it: closed');
  const again = createServer();
  await new Promise<void>((resolve, reject) => {
    again.once('error', reject);
    again.listen(port, '127.0.0.1', resolve);
  });
  t.pass('the port is free again');
  await new Promise((r) => again.close(r));
  held.close();
});
