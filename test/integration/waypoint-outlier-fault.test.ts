// Outlier ejection and fault injection at a real waypoint, from the same entries in both backends (the
// mesh file's configEntries, and Consul's /v1/config through the emulator). web's UpstreamConfig override
// gives api a PassiveHealthCheck (3 consecutive 5xx, 1 s base ejection, 1 s sweeps, half the endpoints at
// most); api's service-router carries faults in its Meta: an abort of 10% on /abort/, a 100 ms delay for
// half of /delay/, and a 418 only for requests with `x-chaos: on` on /gated/. Node's HTTP client on
// node-a reaches api (api-1, api-2 on node-b) through client daemon -> waypoint -> destination.
import { readFile } from 'node:fs/promises';
import { Agent, type IncomingMessage, request } from 'node:http';
import { join } from 'node:path';
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import type { GroupView } from '../../daemon/waypoint/outlier.js';
import { ADMIN_TOKEN_FILE } from '../../lib/paths.js';
import { LOOP_CLOCK_SLACK_MS, metricSum, metricsText, until } from '../helpers/cluster.js';
import { type L7World, type L7Worlds, inBothWorlds, prefixRoute } from '../helpers/l7-routing.js';
import type { LogLine } from '../helpers/logs.js';

const test = anyTest as TestFn<L7Worlds>;

const ENTRIES: unknown[] = [
  { Kind: 'service-defaults', Name: 'api', Protocol: 'http', Meta: { 'ambit-waypoint': 'wp' } },
  {
    Kind: 'service-defaults',
    Name: 'web',
    UpstreamConfig: {
      Overrides: [
        {
          Name: 'api',
          PassiveHealthCheck: {
            MaxFailures: 3,
            Interval: '1s',
            BaseEjectionTime: '1s',
            MaxEjectionPercent: 50,
          },
        },
      ],
    },
  },
  {
    Kind: 'service-router',
    Name: 'api',
    Meta: {
      'ambit-fault-0': '{"Abort": {"HTTPStatus": 503, "Percent": 10}}',
      'ambit-fault-1': '{"Delay": {"Fixed": "100ms", "Percent": 50}}',
      'ambit-fault-2': '{"Abort": {"HTTPStatus": 418}, "Header": {"Name": "x-chaos", "Exact": "on"}}',
      'ambit-fault-3': '{"Delay": {"Fixed": "50ms"}, "Abort": {"HTTPStatus": 502}}',
    },
    Routes: [prefixRoute('/abort/'), prefixRoute('/delay/'), prefixRoute('/gated/'), prefixRoute('/both/')],
  },
  { Kind: 'service-intentions', Name: 'api', Sources: [{ Name: 'web', Action: 'allow' }] },
];

inBothWorlds(test, ENTRIES);

interface Answer {
  status: number;
  body: string;
  ms: number;
  id: string;
}

function get(
  w: L7World,
  agent: Agent,
  path: string,
  id: string,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const url = new URL(w.base);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(
      { host: url.hostname, port: url.port, path, agent, headers: { 'x-request-id': id, ...headers } },
      (res: IncomingMessage) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          body += c;
        });
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body, ms: performance.now() - started, id }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
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

const accessLines = (w: L7World, prefix: string): LogLine[] =>
  (w.logs.get('wp-node') ?? []).filter(
    (l) => l.access === 'waypoint' && l.msg === 'request' && String(l.path).startsWith(prefix),
  );

async function outliers(w: L7World): Promise<GroupView[]> {
  const token = (await readFile(join(w.wp.config.stateDir, ADMIN_TOKEN_FILE), 'utf8')).trim();
  const res = await fetch(`http://127.0.0.1:${w.wp.ports.admin}/config_dump`, {
    headers: { authorization: `Bearer ${token}` },
  });
  return ((await res.json()) as { outliers: GroupView[] }).outliers;
}

const ejections = async (w: L7World): Promise<number> =>
  metricSum(await metricsText(w.wp), 'ambit_waypoint_outlier_ejections_total', {
    destination_service: 'api.default',
    reason: 'consecutive_5xx',
  });
const ejected = async (w: L7World): Promise<number> =>
  metricSum(await metricsText(w.wp), 'ambit_waypoint_outlier_ejected', {
    destination_service: 'api.default',
  });

async function ejection(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const before = await ejections(w);
  // One at a time: round robin gives api-1 every other request until its third 500 in a row ejects it.
  const answers: Answer[] = [];
  let ejectedAt = 0;
  for (let i = 0; i < 20; i++) {
    const a = await get(w, agent, `/fail/api-1/${i}`, `${mode}-o-${i}`);
    answers.push(a);
    if (a.status === 500 && answers.filter((x) => x.status === 500).length === 3)
      ejectedAt = performance.now();
  }
  const failed = answers.filter((a) => a.status === 500);
  t.log(`${mode}: ${failed.length} answers 500 from api-1 before it was ejected, of ${answers.length}`);
  t.is(failed.length, 3);
  t.true(failed.every((a) => a.body.startsWith('api-1 ')));
  const lastFail = answers.lastIndexOf(failed[2]!);
  const afterwards = answers.slice(lastFail + 1);
  t.true(afterwards.length >= 10);
  t.true(
    afterwards.every((a) => a.status === 200 && a.body.startsWith('api-2 ')),
    'once ejected, api-2 takes every request',
  );
  t.is((await ejections(w)) - before, 1);
  t.is(await ejected(w), 1);
  const dump = await outliers(w);
  const group = dump.find((g) => g.client === 'default/web' && g.target === 'api.default.default.dc1');
  t.like(group, { endpoints: 2, settings: { maxFailures: 3, baseEjectionMs: 1000, intervalMs: 1000 } });
  t.is(group?.ejected.length, 1);
  t.is(group?.ejected[0]?.endpoint, 'api-1');
  const until_ = Date.parse(group!.ejected[0]!.until) - Date.parse(group!.ejected[0]!.ejectedAt);
  t.is(until_, 1000);
  t.true(
    (w.logs.get('wp-node') ?? []).some(
      (l) => l.msg === 'waypoint ejected an endpoint (outlier)' && l.endpoint === 'api-1',
    ),
  );
  // It comes back at the first sweep from BaseEjectionTime: api-1 answers again, and 200 now.
  let back: Answer | undefined;
  await until(
    async () => {
      const a = await get(w, agent, '/ok/', `${mode}-back`);
      if (a.body.startsWith('api-1 ')) back = a;
      return back !== undefined;
    },
    5000,
    'api-1 back in the rotation',
  );
  const out = performance.now() - ejectedAt;
  t.log(`${mode}: api-1 back ${out.toFixed(0)} ms after its ejection`);
  t.true(out >= 900, `back after ${out} ms, BaseEjectionTime is 1 s`);
  t.is(back?.status, 200);
  t.is(await ejected(w), 0);
  t.true(
    (w.logs.get('wp-node') ?? []).some(
      (l) => l.msg === 'waypoint returned an ejected endpoint' && l.endpoint === 'api-1',
    ),
  );
  t.like(await outliers(w), [{ ejected: [] }]);
}

async function abort(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  t.teardown(() => agent.destroy());
  const answers = await load(1000, 8, (i) => get(w, agent, `/abort/${i}`, `${mode}-a-${i}`));
  const aborted = answers.filter((a) => a.status === 503);
  const share = (aborted.length / answers.length) * 100;
  t.log(`${mode}: ${aborted.length} of ${answers.length} aborted (${share.toFixed(1)}%)`);
  t.true(share >= 7 && share <= 13, `${share}% aborted, 10 ± 3% wanted`);
  t.is(answers.filter((a) => a.status === 200).length + aborted.length, 1000);
  t.true(aborted.every((a) => a.body === 'fault filter abort'));
  await until(() => accessLines(w, '/abort/').length >= 1000, 5000, 'an access-log line per request');
  const lines = accessLines(w, '/abort/').filter((l) => String(l.request_id).startsWith(`${mode}-a-`));
  t.is(lines.filter((l) => l.response_flags === 'FI' && l.status === 503).length, aborted.length);
  // An aborted request never reached an endpoint.
  t.true(lines.filter((l) => l.response_flags === 'FI').every((l) => l.endpoint === undefined));
}

async function delay(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: 4 });
  t.teardown(() => agent.destroy());
  const answers = await load(60, 4, (i) => get(w, agent, `/delay/${i}`, `${mode}-d-${i}`));
  t.true(answers.every((a) => a.status === 200));
  await until(
    () => accessLines(w, '/delay/').filter((l) => String(l.request_id).startsWith(`${mode}-d-`)).length >= 60,
    5000,
    'lines',
  );
  const flags = new Map(
    accessLines(w, '/delay/')
      .filter((l) => String(l.request_id).startsWith(`${mode}-d-`))
      .map((l) => [String(l.request_id), String(l.response_flags)]),
  );
  const hit = answers.filter((a) => flags.get(a.id) === 'DI');
  const missed = answers.filter((a) => flags.get(a.id) === '-');
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
  t.log(
    `${mode}: ${hit.length} delayed (min ${Math.min(...hit.map((a) => a.ms)).toFixed(0)} ms, median ${median(hit.map((a) => a.ms)).toFixed(0)} ms),` +
      ` ${missed.length} not (median ${median(missed.map((a) => a.ms)).toFixed(0)} ms)`,
  );
  t.is(hit.length + missed.length, 60);
  // 50% of 60: at least 10 each way but for a 1-in-10^5 draw.
  t.true(hit.length >= 10 && missed.length >= 10);
  t.true(
    hit.every((a) => a.ms >= 100 - LOOP_CLOCK_SLACK_MS),
    "every delayed request took its 100 ms (to the loop clock's millisecond)",
  );
  // Not delayed: the typical one is well under the delay (no bound on any single one on a busy machine).
  t.true(median(missed.map((a) => a.ms)) < 100);
}

async function gated(t: ExecutionContext<L7Worlds>, w: L7World, mode: string): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: 4 });
  t.teardown(() => agent.destroy());
  const plain = await load(20, 4, (i) => get(w, agent, `/gated/${i}`, `${mode}-g-${i}`));
  const other = await load(10, 4, (i) =>
    get(w, agent, `/gated/o${i}`, `${mode}-go-${i}`, { 'x-chaos': 'off' }),
  );
  const chaos = await load(20, 4, (i) =>
    get(w, agent, `/gated/c${i}`, `${mode}-gc-${i}`, { 'x-chaos': 'on' }),
  );
  t.true(
    [...plain, ...other].every((a) => a.status === 200),
    'without x-chaos: on, no fault',
  );
  t.true(chaos.every((a) => a.status === 418 && a.body === 'fault filter abort'));
  // A delay and an abort both drawn: the abort comes after the delay.
  const both = await get(w, agent, '/both/1', `${mode}-b-1`);
  t.is(both.status, 502);
  t.is(both.body, 'fault filter abort');
  t.true(both.ms >= 50 - LOOP_CLOCK_SLACK_MS, `${both.ms} ms`);
  await until(() => accessLines(w, '/both/').length >= 1, 5000, 'its line');
  t.like(
    accessLines(w, '/both/').find((l) => l.request_id === `${mode}-b-1`),
    { status: 502, response_flags: 'DI,FI' },
  );
}

for (const mode of ['file', 'consul'] as const) {
  test.serial(
    `${mode}: an endpoint answering 500 is ejected, the other takes its traffic, it comes back`,
    (t) => ejection(t, t.context[mode], mode),
  );
  test.serial(`${mode}: an abort of 10% hits 10 ± 3% of 1,000 requests, 503 FI`, (t) =>
    abort(t, t.context[mode], mode),
  );
  test.serial(`${mode}: a 100 ms delay for half the requests: those take 100 ms more, DI`, (t) =>
    delay(t, t.context[mode], mode),
  );
  test.serial(`${mode}: a header-gated abort hits only the requests with the header; a delayed abort`, (t) =>
    gated(t, t.context[mode], mode),
  );
}
