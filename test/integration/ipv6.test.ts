// IPv6 on loopback: a dual-stack tunnel listener reached by a peer over IPv6 and by a client over IPv4,
// a workload listening on ::1 alone reached through the tunnel, and IPv6 addresses bracketed in the
// access log. (Capture's choice of the address the client targeted needs namespaces: test/system.)
import { randomBytes } from 'node:crypto';
import { type AddressInfo, connect, createServer } from 'node:net';
import test from 'ava';
import {
  echoServer,
  roundTrip,
  sha256,
  startCluster,
  throughTunnel,
  until,
  workload,
} from '../helpers/cluster.js';
import { type LogLine, captureLogs } from '../helpers/logs.js';

/** Node-b's lines: the destination daemon's, which the tests read. */
const nodeB = (logs: { lines: Map<string, LogLine[]> }): LogLine[] => logs.lines.get('node-b') ?? [];

const reaches = (host: string, port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

test('a v6-only workload on ::1 is reached through a dual-stack tunnel, logged in brackets', async (t) => {
  const logs = captureLogs();
  const cluster = await startCluster({
    flags: { tunnel: '[::]:0', advertiseAddress: '::1' },
    logger: logs.logger,
  });
  // A server on its IPv6 address alone: nothing answers on 127.0.0.1 at this port.
  let accepted = 0;
  const server = createServer({ allowHalfOpen: true }, (s) => {
    accepted++;
    s.on('error', () => {});
    s.pipe(s);
  });
  await new Promise<void>((r) => server.listen({ port: 0, host: '::1', ipv6Only: true }, r));
  const port = (server.address() as AddressInfo).port;
  try {
    const tunnelPort = cluster.b.ports.tunnel;
    t.true(await reaches('::1', tunnelPort), 'the tunnel takes IPv6');
    t.true(await reaches('127.0.0.1', tunnelPort), 'and IPv4, on the same socket');
    t.false(await reaches('127.0.0.1', port), 'the workload does not listen on IPv4');

    const upstreamPort = await throughTunnel(
      cluster,
      workload({ name: 'v6-1', service: 'v6', node: 'node-b', addresses: ['::1'], ports: [port] }),
    );
    const payload = randomBytes(64 * 1024);
    const back = await roundTrip(upstreamPort, payload);
    t.is(back.sha256, sha256(payload));
    t.is(accepted, 1);

    await until(() => nodeB(logs).some((l) => l.msg === 'connection closed'), 5000, 'access log line');
    const line = nodeB(logs).find((l) => l.msg === 'connection closed') as {
      src: { addr: string };
      dst: { addr: string; workload: string };
    };
    t.regex(line.src.addr, /^\[::1\]:\d+$/, 'the tunnel peer, over IPv6, bracketed');
    t.is(line.dst.addr, `[::1]:${port}`);
    t.is(line.dst.workload, 'v6-1');
  } finally {
    server.close();
    await cluster.close();
  }
});

test('an IPv4 peer of the dual-stack tunnel is logged as IPv4, not ::ffff:', async (t) => {
  const logs = captureLogs();
  const cluster = await startCluster({ flags: { tunnel: '[::]:0' }, logger: logs.logger });
  const echo = await echoServer();
  try {
    const upstreamPort = await throughTunnel(
      cluster,
      workload({ name: 'echo-1', service: 'echo', node: 'node-b', ports: [echo.port] }),
    );
    const payload = randomBytes(1024);
    t.is((await roundTrip(upstreamPort, payload)).sha256, sha256(payload));
    // And a peer that never completes TLS: its refusal names it by its IPv4 address too.
    const junk = connect({ host: '127.0.0.1', port: cluster.b.ports.tunnel });
    junk.on('error', () => {});
    junk.end(Buffer.alloc(64, 1));
    await until(() => nodeB(logs).some((l) => l.msg === 'connection closed'), 5000, 'access log line');
    const line = nodeB(logs).find((l) => l.msg === 'connection closed') as { src: { addr: string } };
    t.regex(line.src.addr, /^127\.0\.0\.1:\d+$/);
    await until(() => nodeB(logs).some((l) => l.reason === 'tls_failure'), 5000, 'TLS refusal logged');
    const refusal = nodeB(logs).find((l) => l.reason === 'tls_failure') as { src: string };
    t.is(refusal.src, '127.0.0.1');
  } finally {
    echo.server.close();
    await cluster.close();
  }
});
