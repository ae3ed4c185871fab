import type { Socket } from 'node:net';
import test from 'ava';
import { ExplicitListeners } from '../../daemon/proxy/outbound/explicit.js';
import type { Outbound } from '../../daemon/proxy/outbound/outbound.js';
import { silentLogger } from '../../lib/log.js';
import { freePort, waitForPort, workload } from '../helpers/cluster.js';

// These tests are about binding, not tunnelling: a probe connection that is accepted is simply closed.
const noOutbound = { handle: (s: Socket) => s.destroy() } as unknown as Outbound;

const withUpstream = (port: number) =>
  workload({
    name: 'web-1',
    service: 'web',
    node: 'node-a',
    upstreams: [
      { service: 'api', namespace: 'default', port: undefined, listenHost: '127.0.0.1', listenPort: port },
    ],
  });

test('upstream listeners bind on reconcile and are gone after close', async (t) => {
  const port = await freePort();
  const listeners = new ExplicitListeners(noOutbound, silentLogger());
  await listeners.reconcile([withUpstream(port)]);
  t.deepEqual(
    listeners.listening().map((l) => l.listen),
    [`127.0.0.1:${port}`],
  );
  await waitForPort(port, 2000, 'upstream listener');
  listeners.close();
  await t.throwsAsync(waitForPort(port, 300, 'closed listener'));
});

test('a reconcile that arrives after close binds nothing (a stopped daemon keeps no port open)', async (t) => {
  const port = await freePort();
  const listeners = new ExplicitListeners(noOutbound, silentLogger());
  listeners.close();
  await listeners.reconcile([withUpstream(port)]);
  t.deepEqual(listeners.listening(), []);
  await t.throwsAsync(waitForPort(port, 300, 'listener after close'));
});

test('a close while a bind is in flight leaves the port closed', async (t) => {
  const port = await freePort();
  const listeners = new ExplicitListeners(noOutbound, silentLogger());
  const binding = listeners.reconcile([withUpstream(port)]);
  listeners.close();
  await binding;
  await t.throwsAsync(waitForPort(port, 300, 'listener bound during close'));
});
