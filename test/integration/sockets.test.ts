import { type AddressInfo, type Server, type Socket, connect, createServer } from 'node:net';
import test from 'ava';
import { pino } from 'pino';
import { Refusals } from '../../daemon/limits/refusal.js';
import { Metrics } from '../../daemon/metrics/metrics.js';
import { ConnectionAccount } from '../../daemon/proxy/account.js';
import { carry } from '../../daemon/proxy/carry.js';
import { SocketFactory } from '../../daemon/proxy/sockets.js';

const listen = (server: Server): Promise<number> =>
  new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)),
  );

/** An echo server that answers "hello" first, so both directions carry bytes. */
async function echo(): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    s.write('hello');
    s.pipe(s);
  });
  return { server, port: await listen(server) };
}

test('without a mark the factory connects as net.connect does, and needs nothing to check', async (t) => {
  const { server, port } = await echo();
  const sockets = new SocketFactory({ mark: undefined, connectTimeoutMs: 2000 });
  t.notThrows(() => sockets.check());
  const s = await sockets.upstream('127.0.0.1', port);
  t.is(s.remotePort, port);
  t.true(s.allowHalfOpen, 'an upstream connection is half-closable');
  s.destroy();
  server.close();
});

test('an upstream connect that is refused rejects with the error', async (t) => {
  const { server, port } = await echo();
  server.close();
  await new Promise((r) => server.once('close', r));
  const sockets = new SocketFactory({ mark: undefined, connectTimeoutMs: 2000 });
  await t.throwsAsync(sockets.upstream('127.0.0.1', port), { code: 'ECONNREFUSED' });
});

test('a marked factory opens its sockets marked (root: SO_MARK), and another factory is unmarked', async (t) => {
  const { server, port } = await echo();
  const marked = new SocketFactory({ mark: 0x539, connectTimeoutMs: 2000 });
  const plain = new SocketFactory({ mark: undefined, connectTimeoutMs: 2000 });
  if (process.getuid?.() !== 0) {
    t.throws(() => marked.check(), undefined, 'without CAP_NET_ADMIN the mark is refused at start');
  } else {
    t.notThrows(() => marked.check());
    const s = await marked.upstream('127.0.0.1', port);
    t.is(s.remotePort, port, 'a marked socket connects');
    t.true(s.allowHalfOpen);
    s.destroy();
  }
  t.is(plain.mark, undefined, "the mark is the factory's, not the process's");
  server.close();
});

test('carry pipes a passthrough both ways, then the account counts its bytes and logs it closed', async (t) => {
  const { server: upstreamServer, port: upstreamPort } = await echo();
  const metrics = new Metrics({ processMetrics: false });
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => lines.push(JSON.parse(s)) });
  const sockets = new SocketFactory({ mark: undefined, connectTimeoutMs: 2000 });
  // The daemon's side: accepts the client, dials the upstream, carries one to the other.
  const front = createServer({ allowHalfOpen: true, pauseOnConnect: true }, async (client: Socket) => {
    const upstream = await sockets.upstream('127.0.0.1', upstreamPort);
    const account = new ConnectionAccount(
      { metrics, log, refusals: new Refusals(metrics, log) },
      'outbound',
      { addr: 'client' },
      { addr: 'upstream' },
      'unknown',
    );
    carry(account, client, upstream, true);
  });
  const frontPort = await listen(front);
  const client = connect({ host: '127.0.0.1', port: frontPort, allowHalfOpen: true });
  const got: Buffer[] = [];
  client.on('data', (c: Buffer) => got.push(c));
  await new Promise((r) => client.once('connect', r));
  client.end('ping');
  await new Promise((r) => client.once('end', r));
  client.destroy();
  t.is(Buffer.concat(got).toString(), 'helloping');
  for (let i = 0; i < 100 && !lines.some((l) => l.msg === 'connection closed'); i++)
    await new Promise((r) => setTimeout(r, 20));
  t.like(
    lines.find((l) => l.msg === 'connection closed'),
    { access: 'outbound', bytes_sent: 4, bytes_received: 9, outcome: 'closed' },
    'bytes_sent counts what came from the client, bytes_received what went back to it',
  );
  const opened = (await metrics.opened.get()).values.reduce((n, v) => n + v.value, 0);
  t.is(opened, 1);
  t.is((await metrics.activeConnections.get()).values[0]?.value, 0);
  front.close();
  upstreamServer.close();
});
