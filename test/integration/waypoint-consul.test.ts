// A waypoint with Consul as the control plane (the emulator, or a real agent when one is on PATH): it
// registers itself as an instance of its waypoint service, services opt in by Meta, service-defaults
// Protocol makes one http, and it deregisters when it stops.
import { mkdtemp, rm } from 'node:fs/promises';
import { type IncomingHttpHeaders, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { consulEnroll } from '../../agent-cli/consul.js';
import { Ambitd } from '../../daemon/daemon.js';
import type { ConfigInput } from '../../lib/config.js';
import { ConsulClient } from '../../lib/consul/client.js';
import { silentLogger } from '../../lib/log.js';
import {
  consulDaemonConfig,
  echoServer,
  freePort,
  roundTrip,
  sha256,
  until,
  workload,
} from '../helpers/cluster.js';
import { startConsul } from '../helpers/consul-emulator.js';

test('through Consul: the waypoint enrols itself, carries http and tcp, and leaves when it stops', async (t) => {
  const consul = await startConsul();
  const dir = await mkdtemp(join(tmpdir(), 'ambit-wp-consul-'));
  const daemons: Ambitd[] = [];
  const seen: IncomingHttpHeaders[] = [];
  const server = createServer((req, res) => {
    seen.push(req.headers);
    res.end('ok');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const echo = await echoServer();
  t.teardown(async () => {
    server.close();
    echo.server.close();
    await Promise.all(daemons.map((d) => d.close()));
    await consul.close();
    await rm(dir, { recursive: true, force: true });
  });
  const start = async (node: string, extra: ConfigInput = {}): Promise<Ambitd> => {
    const config = consulDaemonConfig(consul, dir, node, { defaultPolicy: 'allow', ...extra });
    const d = await Ambitd.start(config, silentLogger());
    daemons.push(d);
    return d;
  };
  const client = new ConsulClient({ address: consul.address, token: undefined });
  const a = await start('node-a');
  const b = await start('node-b');
  const wp = await start('wp-node', { role: 'waypoint', waypointService: 'wp' });
  const httpPort = await freePort();
  const tcpPort = await freePort();
  const apiPort = (server.address() as AddressInfo).port;
  await client.put('/v1/config', {
    body: { Kind: 'service-defaults', Name: 'api', Protocol: 'http', Meta: { 'ambit-waypoint': 'wp' } },
    permission: 'service:write on "api"',
  });
  await consulEnroll(client, workload({ name: 'api-1', service: 'api', node: 'node-b', ports: [apiPort] }));
  await consulEnroll(
    client,
    workload({ name: 'echo-1', service: 'echo', node: 'node-b', ports: [echo.port] }),
    'wp',
  );
  await consulEnroll(
    client,
    workload({
      name: 'client',
      service: 'web',
      node: 'node-a',
      ports: [9],
      upstreams: [
        {
          service: 'api',
          namespace: 'default',
          port: undefined,
          listenHost: '127.0.0.1',
          listenPort: httpPort,
        },
        {
          service: 'echo',
          namespace: 'default',
          port: undefined,
          listenHost: '127.0.0.1',
          listenPort: tcpPort,
        },
      ],
    }),
  );
  await until(() => a.listeners.listening().length === 2, 20_000, 'upstream listeners on node-a');
  await until(() => a.store.endpoints('default', 'wp').length === 1, 10_000, 'node-a sees the waypoint');
  await until(
    () =>
      a.store.service('default', 'api')?.protocol === 'http' &&
      a.store.service('default', 'echo')?.waypoint === 'wp' &&
      wp.store.service('default', 'api')?.protocol === 'http',
    10_000,
    'the services opted in',
  );
  await until(() => wp.readiness().ready && b.readiness().ready, 10_000, 'waypoint and node-b ready');
  await until(() => a.store.endpoints('default', 'api').length === 1, 10_000, 'node-a knows api');

  const res = await fetch(`http://127.0.0.1:${httpPort}/hello`);
  t.is(res.status, 200);
  t.is(await res.text(), 'ok');
  const wpId = wp.identityOf({ namespace: 'default', service: 'wp' });
  const webId = a.identityOf({ namespace: 'default', service: 'web' });
  t.is(seen[0]?.['x-forwarded-client-cert'], `By=${wpId};URI=${webId}`);
  const payload = Buffer.from('tcp through the waypoint');
  t.is((await roundTrip(tcpPort, payload)).sha256, sha256(payload));
  // The emulator's TCP check of the echo workload connects too (it runs, as an agent's does): at least one.
  t.true(echo.accepted() >= 1);

  await wp.close();
  daemons.splice(daemons.indexOf(wp), 1);
  await until(() => a.store.endpoints('default', 'wp').length === 0, 10_000, 'the waypoint deregistered');
  // Refused, never sent around the waypoint: the round trip fails rather than reaching echo.
  await t.throwsAsync(roundTrip(tcpPort, payload));
});
