// Circuit breaking and rate limits at a real waypoint, from the same service-defaults entries in both
// backends (the mesh file's configEntries, and Consul's /v1/config through the emulator): web's
// UpstreamConfig override caps its requests in flight to api at 10, api's RateLimits give /paced/ 100/s.
// Node's HTTP client on node-a reaches api on node-b through client daemon -> waypoint -> destination.
import { Agent, request } from 'node:http';
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { metricSum, metricsText, until } from '../helpers/cluster.js';
import { type L7World, type L7Worlds, heldPosts, inBothWorlds, readAll } from '../helpers/l7-routing.js';
import type { LogLine } from '../helpers/logs.js';

const test = anyTest as TestFn<L7Worlds>;

const OVERFLOW = 'upstream connect error or disconnect/reset before headers. reason: overflow';

const ENTRIES: unknown[] = [
  {
    Kind: 'service-defaults',
    Name: 'api',
    Protocol: 'http',
    Meta: { 'ambit-waypoint': 'wp' },
    RateLimits: { InstanceLevel: { Routes: [{ PathPrefix: '/paced/', RequestsPerSecond: 100 }] } },
  },
  {
    Kind: 'service-defaults',
    Name: 'web',
    UpstreamConfig: { Overrides: [{ Name: 'api', Limits: { MaxConcurrentRequests: 10 } }] },
  },
  { Kind: 'service-intentions', Name: 'api', Sources: [{ Name: 'web', Action: 'allow' }] },
];

inBothWorlds(test, ENTRIES);

const lines = (w: L7World, prefix: string): LogLine[] =>
  (w.logs.get('wp-node') ?? []).filter(
    (l) => l.access === 'waypoint' && l.msg === 'request' && String(l.path).startsWith(prefix),
  );

const refused = async (w: L7World, reason: string): Promise<number> =>
  metricSum(await metricsText(w.wp), 'ambit_connections_refused_total', { direction: 'inbound', reason });

async function concurrency(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  const before = await refused(w, 'overflow');
  // The 10 the waypoint lets through stay in flight until 40 have been answered.
  const posts = heldPosts(
    w,
    50,
    (i) => `/slow/${i}`,
    (i) => `${mode}-c-${i}`,
  );
  await until(() => posts.answered() >= 40, 15_000, '40 requests answered at once');
  const got = await posts.release();
  const served = got.filter((a) => a.status === 200);
  const over = got.filter((a) => a.status === 503);
  t.log(`${mode}: ${served.length} served, ${over.length} overflow of 50 concurrent`);
  t.is(served.length, 10);
  t.is(over.length, 40);
  t.true(over.every((a) => a.early && a.body === OVERFLOW));
  t.true(served.every((a) => !a.early && /^api-[12] POST \/slow\/\d+\n$/.test(a.body)));
  await until(() => lines(w, '/slow/').length >= 50, 5000, 'an access-log line per request');
  const logged = lines(w, '/slow/').filter((l) => String(l.request_id).startsWith(`${mode}-c-`));
  t.is(logged.filter((l) => l.response_flags === 'UO' && l.status === 503).length, 40);
  t.is(logged.filter((l) => l.response_flags === '-' && l.status === 200).length, 10);
  t.is((await refused(w, 'overflow')) - before, 40);
}

async function rate(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  const before = await refused(w, 'rate_limited');
  const url = new URL(w.base);
  // Fewer sockets than web's MaxConcurrentRequests (10) to api: on a slow machine answers queue up, and with
  // more in flight the excess is rightly refused as overflow (503 UO), which is not what this test measures.
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  const total = 1000;
  const every = 5; // ms: 200 requests a second for 5 s
  const statuses: number[] = [];
  const bodies = new Map<number, number>();
  const one = (i: number): Promise<void> =>
    new Promise((resolve, reject) => {
      const req = request({ host: url.hostname, port: url.port, path: `/paced/${i}`, agent }, (res) => {
        readAll(res).then((body) => {
          statuses.push(res.statusCode ?? 0);
          if (res.statusCode === 429) bodies.set(i, body === 'local_rate_limited' ? 1 : 0);
          resolve();
        }, reject);
      });
      req.on('error', reject);
      req.end();
    });
  const start = Date.now();
  const pending: Promise<void>[] = [];
  for (let i = 0; i < total; i++) {
    // Paced by the clock, not by the answers: a slow moment does not slow the offered rate.
    const wait = start + i * every - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    pending.push(one(i));
  }
  const lastSent = Date.now();
  await Promise.race([
    Promise.all(pending),
    new Promise((_, reject) => setTimeout(() => reject(new Error('paced requests open after 20 s')), 20_000)),
  ]);
  const lastAnswered = Date.now();
  agent.destroy();
  const seconds = (lastSent - start) / 1000;
  const served = statuses.filter((s) => s === 200).length;
  const limited = statuses.filter((s) => s === 429).length;
  const other = statuses.filter((s) => s !== 200 && s !== 429);
  t.is(served + limited, total, `answers neither 200 nor 429: ${[...new Set(other)].join(', ')}`);
  // The bucket starts full (its burst, the rate when unset) and refills at 100/s while the load lasts. The
  // window is the waypoint's own, from the first request it decided to the last (its line's time less its
  // duration): on a busy machine requests wait in the client's pool, and the client's clock would stretch it.
  await until(() => lines(w, '/paced/').length >= total, 5000, 'an access-log line per paced request');
  const decided = lines(w, '/paced/').map((l) => Number(l.time) - Number(l.duration_ms));
  const window = (Math.max(...decided) - Math.min(...decided)) / 1000;
  const burst = 100;
  const rate = (served - burst) / window;
  t.log(
    `${mode}: ${total} requests over ${seconds.toFixed(2)} s (${(total / seconds).toFixed(0)}/s offered):` +
      ` ${served} served, ${limited} rate limited; after the burst of ${burst},` +
      ` ${rate.toFixed(1)}/s over the waypoint's ${window.toFixed(2)} s (answered by ${((lastAnswered - start) / 1000).toFixed(2)} s)`,
  );
  t.true(Math.abs(rate - 100) <= 10, `served ${served}: ${rate.toFixed(1)}/s, not 100 ± 10%`);
  t.true(
    [...bodies.values()].every((ok) => ok === 1),
    'every 429 says local_rate_limited',
  );
  const rl = lines(w, '/paced/').filter((l) => l.response_flags === 'RL' && l.status === 429).length;
  t.is(rl, limited);
  t.is((await refused(w, 'rate_limited')) - before, limited);
}

for (const mode of ['file', 'consul'] as const) {
  test.serial(`${mode}: MaxConcurrentRequests 10 of 50 in flight; the rest 503 overflow, UO`, (t) =>
    concurrency(t, t.context[mode], mode),
  );
  test.serial(`${mode}: RequestsPerSecond 100 under 200/s for 5 s; the rest 429, RL`, (t) =>
    rate(t, t.context[mode], mode),
  );
}
