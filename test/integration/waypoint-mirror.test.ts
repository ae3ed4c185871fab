// Request mirroring at a real waypoint (issue 16 item 7), from the same service-router entry in both
// backends (the mesh file's configEntries, and Consul's /v1/config through the emulator): api's router
// carries `ambit-mirror-<i>` Meta sending copies to legacy. Node's HTTP client on node-a reaches api
// (api-1, api-2 on node-b) through client daemon -> waypoint -> destination daemon; the copies go from
// the waypoint to legacy-1, which holds those on /held/ 2 s before it answers.
import { Agent, type IncomingMessage, request } from 'node:http';
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { metricSum, metricsText, until } from '../helpers/cluster.js';
import { type L7World, type L7Worlds, inBothWorlds, prefixRoute } from '../helpers/l7-routing.js';

const test = anyTest as TestFn<L7Worlds>;

const ENTRIES: unknown[] = [
  { Kind: 'service-defaults', Name: 'api', Protocol: 'http', Meta: { 'ambit-waypoint': 'wp' } },
  { Kind: 'service-defaults', Name: 'legacy', Protocol: 'http' },
  {
    Kind: 'service-router',
    Name: 'api',
    Meta: {
      'ambit-mirror-0': '{"Service": "legacy"}',
      'ambit-mirror-1': '{"Service": "legacy"}',
      'ambit-mirror-2': '{"Service": "legacy", "Percent": 50}',
    },
    Routes: [prefixRoute('/mirror/'), prefixRoute('/held/'), prefixRoute('/half/'), prefixRoute('/plain/')],
  },
  { Kind: 'service-intentions', Name: 'api', Sources: [{ Name: 'web', Action: 'allow' }] },
];

const SLOW = { server: 'legacy-1', prefix: '/held/', ms: 2000 };

inBothWorlds(test, ENTRIES, { slow: SLOW });

interface Answer {
  status: number;
  body: string;
  ms: number;
  id: string;
}

function send(
  w: L7World,
  agent: Agent,
  method: string,
  path: string,
  id: string,
  body?: Buffer,
): Promise<Answer> {
  const url = new URL(w.base);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(
      { host: url.hostname, port: url.port, method, path, agent, headers: { 'x-request-id': id } },
      (res: IncomingMessage) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          text += c;
        });
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: text, ms: performance.now() - started, id }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** `n` requests, `width` at a time. */
async function load(n: number, width: number, one: (i: number) => Promise<Answer>): Promise<Answer[]> {
  const out: Answer[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < n) out.push(await one(next++));
    }),
  );
  return out;
}

const mirrored = async (w: L7World, outcome: string): Promise<number> =>
  metricSum(await metricsText(w.wp), 'ambit_waypoint_mirrored_requests_total', {
    destination_service: 'api.default',
    mirror_service: 'legacy.default',
    outcome,
  });

const seenBy = (w: L7World, server: string, rid: string): L7World['seen'] =>
  w.seen.filter((s) => s.server === server && String(s.headers['x-request-id']).startsWith(rid));

/** `-shadow` after the host, ahead of its port. */
const shadowed = (host: string): string => host.replace(/(:\d+)?$/, '-shadow$1');

async function every(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: 4 });
  t.teardown(() => agent.destroy());
  const before = await mirrored(w, 'sent');
  const rid = `${mode}-m-`;
  const gets = await load(50, 4, (i) => send(w, agent, 'GET', `/mirror/${i}`, `${rid}${i}`));
  const body = Buffer.alloc(20_000, 'b');
  const posts = await load(5, 4, (i) => send(w, agent, 'POST', `/mirror/p${i}`, `${rid}p${i}`, body));
  const answers = [...gets, ...posts];
  // The client sees only the primary's answers, every one of them.
  t.true(answers.every((a) => a.status === 200 && /^api-[12] /.test(a.body)));
  await until(() => seenBy(w, 'legacy-1', rid).length >= 55, 5000, 'a copy of each request at the mirror');
  const copies = seenBy(w, 'legacy-1', rid);
  t.is(copies.length, 55);
  const primaries = [...seenBy(w, 'api-1', rid), ...seenBy(w, 'api-2', rid)];
  t.is(primaries.length, 55);
  for (const p of primaries) {
    const copy = copies.find((c) => c.headers['x-request-id'] === p.headers['x-request-id']);
    t.like(copy, { method: p.method, url: p.url, bytes: p.bytes });
    t.is(copy?.headers.host, shadowed(String(p.headers.host)));
  }
  t.log(`${mode}: primary Host ${primaries[0]?.headers.host}, the copy's ${copies[0]?.headers.host}`);
  t.true(String(copies[0]?.headers.host).includes('-shadow'));
  t.true(copies.filter((c) => c.method === 'POST').every((c) => c.bytes === 20_000));
  await until(async () => (await mirrored(w, 'sent')) - before >= 55, 5000, 'every copy answered');
  t.is((await mirrored(w, 'sent')) - before, 55);
}

async function slow(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: 20 });
  t.teardown(() => agent.destroy());
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
  const plain = await load(20, 20, (i) => send(w, agent, 'GET', `/plain/${i}`, `${mode}-n-${i}`));
  const before = await mirrored(w, 'sent');
  const rid = `${mode}-h-`;
  const held = await load(20, 20, (i) => send(w, agent, 'GET', `/held/${i}`, `${rid}${i}`));
  t.true(held.every((a) => a.status === 200 && /^api-[12] /.test(a.body)));
  // Every client answer is in, and the mirror has all 20 copies and has answered none of them.
  await until(() => seenBy(w, 'legacy-1', rid).length >= 20, 1500, 'the copies at the mirror');
  t.is(w.holding(), 20, 'the mirror still holds every copy');
  t.is((await mirrored(w, 'sent')) - before, 0);
  t.log(
    `${mode}: 20 concurrent requests, median ${median(plain.map((a) => a.ms)).toFixed(0)} ms without a mirror, ` +
      `${median(held.map((a) => a.ms)).toFixed(0)} ms (max ${Math.max(...held.map((a) => a.ms)).toFixed(0)}) ` +
      `with a mirror answering after ${SLOW.ms} ms`,
  );
  // Then the mirror answers, and its answers go nowhere but the count.
  await until(() => w.holding() === 0, 5000, 'the mirror answered');
  await until(async () => (await mirrored(w, 'sent')) - before >= 20, 3000, 'counted sent');
  t.is((await mirrored(w, 'sent')) - before, 20);
}

async function percent(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  t.teardown(() => agent.destroy());
  const before = await mirrored(w, 'sent');
  const rid = `${mode}-p-`;
  const answers = await load(400, 8, (i) => send(w, agent, 'GET', `/half/${i}`, `${rid}${i}`));
  t.true(answers.every((a) => a.status === 200 && /^api-[12] /.test(a.body)));
  await until(async () => (await mirrored(w, 'sent')) - before >= 1, 3000, 'some copies');
  // The copies still on their way when the last answer came.
  await until(
    async () => (await mirrored(w, 'sent')) - before === seenBy(w, 'legacy-1', rid).length,
    3000,
    'the copies answered',
  );
  const copies = seenBy(w, 'legacy-1', rid).length;
  const share = (copies / 400) * 100;
  t.log(`${mode}: ${copies} of 400 requests mirrored (${share.toFixed(1)}%, Percent 50)`);
  // 400 draws at 50%: one standard deviation is 2.5 points; 8 points is over three.
  t.true(share >= 42 && share <= 58, `${share}% mirrored`);
  t.is((await mirrored(w, 'sent')) - before, copies);
}

async function bigBody(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const before = await mirrored(w, 'skipped-body');
  const rid = `${mode}-b-`;
  // Over waypointMirrorBufferBytes (64 KiB by default): the primary gets it whole, the mirror nothing.
  const body = Buffer.alloc(100_000, 'x');
  const answers = await load(3, 1, (i) => send(w, agent, 'POST', `/mirror/big${i}`, `${rid}${i}`, body));
  t.true(answers.every((a) => a.status === 200 && /^api-[12] POST/.test(a.body)));
  const primaries = [...seenBy(w, 'api-1', rid), ...seenBy(w, 'api-2', rid)];
  t.deepEqual(
    primaries.map((p) => p.bytes),
    [100_000, 100_000, 100_000],
  );
  t.is((await mirrored(w, 'skipped-body')) - before, 3);
  t.is(seenBy(w, 'legacy-1', rid).length, 0);
  const logged = (w.logs.get('wp-node') ?? []).filter(
    (l) =>
      l.msg ===
      'waypoint gave up a mirror copy: the request body is over 65536 bytes (waypointMirrorBufferBytes)',
  );
  t.is(logged.length, 1, 'logged once for the three');
  t.like(logged[0], { reason: 'mirror_buffer', mirror_service: 'legacy.default' });
}

for (const mode of ['file', 'consul'] as const) {
  test.serial(
    `${mode}: the mirror gets a copy of every request, -shadow Host; the client only the primary's`,
    (t) => every(t, t.context[mode], mode),
  );
  test.serial(`${mode}: a mirror that answers after 2 s does not hold the client`, (t) =>
    slow(t, t.context[mode], mode),
  );
  test.serial(`${mode}: Percent 50 mirrors 50 ± 8% of 400 requests`, (t) =>
    percent(t, t.context[mode], mode),
  );
  test.serial(
    `${mode}: a body over waypointMirrorBufferBytes is not mirrored, counted and logged once`,
    (t) => bigBody(t, t.context[mode], mode),
  );
}
