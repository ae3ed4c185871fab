// MaxConnections and MaxPendingRequests at a real waypoint over HTTP/1.1, from the same entries in both
// backends (the mesh file's configEntries, and Consul's /v1/config through the emulator): web's override
// for api allows 2 connections and 3 requests waiting for one. Ten requests at once, each holding its body
// back: 2 go to the endpoints, 3 wait, 5 are refused at once (503 overflow, UO); with the bodies sent, the
// 5 are served on no more than 2 connections. (HTTP/2: waypoint-h2.test.ts.)
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { OVERFLOW_BODY } from '../../daemon/waypoint/conn-gate.js';
import { metricSum, metricsText, until } from '../helpers/cluster.js';
import { type L7World, type L7Worlds, heldPosts, inBothWorlds } from '../helpers/l7-routing.js';
import type { LogLine } from '../helpers/logs.js';

const test = anyTest as TestFn<L7Worlds>;

const ENTRIES: unknown[] = [
  { Kind: 'service-defaults', Name: 'api', Protocol: 'http', Meta: { 'ambit-waypoint': 'wp' } },
  {
    Kind: 'service-defaults',
    Name: 'web',
    UpstreamConfig: { Overrides: [{ Name: 'api', Limits: { MaxConnections: 2, MaxPendingRequests: 3 } }] },
  },
  { Kind: 'service-intentions', Name: 'api', Sources: [{ Name: 'web', Action: 'allow' }] },
];

inBothWorlds(test, ENTRIES);

const lines = (w: L7World, mode: string): LogLine[] =>
  (w.logs.get('wp-node') ?? []).filter(
    (l) => l.access === 'waypoint' && l.msg === 'request' && String(l.request_id).startsWith(`${mode}-m-`),
  );

const overflowed = async (w: L7World): Promise<number> =>
  metricSum(await metricsText(w.wp), 'ambit_connections_refused_total', {
    direction: 'inbound',
    reason: 'overflow',
  });

async function capped(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  const before = await overflowed(w);
  w.serving.peak = w.serving.open;
  // The two with connections stay on them, and the three waiting stay waiting, until the bodies go.
  const posts = heldPosts(
    w,
    10,
    (i) => `/held/${i}`,
    (i) => `${mode}-m-${i}`,
  );
  await until(() => posts.answered() >= 5, 15_000, '5 requests refused at once');
  // The two are on their connections (the servers have their heads), the three still wait for one.
  await until(() => w.serving.open >= 2, 5000, 'two requests at the servers');
  const peakHeld = w.serving.peak;
  const got = await posts.release();
  const served = got.filter((a) => a.status === 200);
  const over = got.filter((a) => a.status === 503);
  t.log(
    `${mode}: ${served.length} served, ${over.length} overflow of 10 at once;` +
      ` at most ${w.serving.peak} requests at the servers at once (${peakHeld} while the bodies were held)`,
  );
  t.is(over.length, 5);
  t.true(
    over.every((a) => a.early && a.body === OVERFLOW_BODY),
    'refused at once, with Envoy overflow text',
  );
  t.is(served.length, 5);
  t.true(served.every((a) => !a.early && /^api-[12] POST \/held\/\d+\n$/.test(a.body)));
  // Over HTTP/1.1 a connection carries one request at a time: the servers never had more than 2 at once.
  // (Their TCP connections can briefly number more: one the waypoint closed for a waiting request's slot
  // is closed at the far end a moment later.)
  t.is(peakHeld, 2, 'two at the servers while the bodies were held');
  t.true(w.serving.peak <= 2, `${w.serving.peak} requests at the servers at once, MaxConnections 2`);
  await until(() => lines(w, mode).length >= 10, 5000, 'an access-log line per request');
  const refused = lines(w, mode).filter((l) => l.response_flags === 'UO');
  t.is(refused.length, 5);
  t.true(
    refused.every(
      (l) =>
        l.status === 503 && /2 connections from web to api open \(MaxConnections\)/.test(String(l.reason)),
    ),
  );
  t.is(lines(w, mode).filter((l) => l.response_flags === '-' && l.status === 200).length, 5);
  t.is((await overflowed(w)) - before, 5);
}

for (const mode of ['file', 'consul'] as const) {
  test.serial(`${mode}: MaxConnections 2, MaxPendingRequests 3: of 10 at once, 5 served on 2, 5 UO`, (t) =>
    capped(t, t.context[mode], mode),
  );
}
