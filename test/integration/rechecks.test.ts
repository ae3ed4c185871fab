// Policy re-checks cover every accepted connection, registered before its decision: a deny that lands while
// the destination daemon's upstream connect is still in flight refuses the connection rather than letting
// it through under the policy it was admitted by.
import type { Socket } from 'node:net';
import { connect } from 'node:net';
import test from 'ava';
import { addPolicy, editMeshFile } from '../../lib/mesh/edit.js';
import {
  echoServer,
  metricSum,
  metricsText,
  startCluster,
  throughTunnel,
  until,
  workload,
} from '../helpers/cluster.js';
import { captureLogs } from '../helpers/logs.js';

test('a deny landing while the upstream connect is in flight refuses the connection', async (t) => {
  const logs = captureLogs();
  const cluster = await startCluster({ logger: logs.logger });
  const echo = await echoServer();
  try {
    const upstreamPort = await throughTunnel(
      cluster,
      workload({ name: 'echo-1', service: 'echo', node: 'node-b', ports: [echo.port] }),
    );
    // node-b's connect to the workload is held until the policy has changed: a connect that takes its time.
    const { sockets } = cluster.b;
    const connectWorkload = sockets.upstream.bind(sockets);
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    sockets.upstream = async (ip: string, port: number): Promise<Socket> => {
      await held;
      return connectWorkload(ip, port);
    };

    const client = connect({ port: upstreamPort, host: '127.0.0.1' });
    let received = 0;
    client.on('data', (c: Buffer) => {
      received += c.length;
    });
    client.on('error', () => {});
    client.write('hello');
    await until(() => cluster.b.inbound.connecting === 1, 5000, 'the upstream connect in flight');

    await editMeshFile(cluster.meshFile, (doc) => {
      addPolicy(doc, {
        name: 'only-admin',
        action: 'allow',
        service: 'echo',
        namespace: 'default',
        ports: [],
        from: [{ service: 'admin', namespace: undefined, principal: undefined }],
      });
    });
    // Refused while the connect is still held: the change did not wait for it.
    await until(() => client.closed, 4000, 'the client connection refused');
    t.is(received, 0, 'nothing came back through a connection the new policy denies');
    t.is(cluster.b.inbound.connecting, 1, 'the connect was still in flight when the connection was refused');
    release();
    await until(() => cluster.b.inbound.connecting === 0, 5000, 'the connect settled');
    // The connect that completed after the refusal is dropped, never carried.
    await until(() => echo.accepted() === 1, 5000, 'the held connect reached the workload');
    t.is(cluster.b.inbound.openConnections, 0);

    const lines = logs.lines.get('node-b')!;
    const revoked = lines.find((l) => l.msg === 'closing connection no longer allowed');
    t.like(revoked, { workload: 'echo-1', peer: cluster.a.identityOf(cluster.a.store.workload('client')!) });
    t.like(
      lines.find((l) => l.msg === 'connection refused'),
      { access: 'inbound', response_flags: 'DENY' },
    );
    t.false(
      lines.some((l) => l.msg === 'connection closed'),
      'never carried',
    );
    const m = await metricsText(cluster.b);
    t.is(
      metricSum(m, 'istio_tcp_connections_opened_total', { reporter: 'destination', response_flags: 'DENY' }),
      1,
    );
    t.is(
      metricSum(m, 'istio_tcp_connections_opened_total', { reporter: 'destination', response_flags: '-' }),
      0,
    );
  } finally {
    echo.server.close();
    await cluster.close();
  }
});
