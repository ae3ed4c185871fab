// The waypoint's HTTP/1.1 parts alone: what it relies on of llhttp through Node's undocumented HTTPParser
// (pinned here, so that a Node upgrade that changes it fails a test rather than a proxy), its heads, and
// the request metrics it keeps for prom-client's registry. The last test drives the engine over fake streams:
// a reader that is full at one exact moment cannot be made on a real socket.
import { EventEmitter } from 'node:events';
import test from 'ava';
import { AggregatorRegistry, Registry } from 'prom-client';
import { Refusals } from '../../daemon/limits/refusal.js';
import { Metrics } from '../../daemon/metrics/metrics.js';
import { RequestMetrics } from '../../daemon/metrics/request-metrics.js';
import type { OutboundPlan } from '../../daemon/proxy/outbound/plan.js';
import type { ByteStream } from '../../daemon/waypoint/h1/byte-stream.js';
import {
  LAST_CHUNK,
  chunkOf,
  fieldLines,
  framingOf,
  headersOf,
  requestHead,
  responseMayHaveBody,
  safeOps,
} from '../../daemon/waypoint/h1/head.js';
import { Http1Parser, type ParsedHead } from '../../daemon/waypoint/h1/parser.js';
import { DEFAULT_HTTP1_LIMITS, WaypointHttp } from '../../daemon/waypoint/http.js';
import { ServiceRouter } from '../../daemon/waypoint/router.js';
import type { HeaderOp } from '../../lib/l7/route.js';
import { silentLogger } from '../../lib/log.js';
import { randomHex } from '../../lib/random.js';
import { workload } from '../helpers/mesh.js';

interface Message {
  head: ParsedHead;
  body: string;
  ended: boolean;
}

function parse(kind: 'request' | 'response', chunks: string[], noBody = false) {
  const msgs: Message[] = [];
  let begins = 0;
  const p = new Http1Parser('request' === kind ? 'request' : 'response', {
    begin: () => {
      begins++;
    },
    head: (head) => {
      msgs.push({ head, body: '', ended: false });
      return noBody;
    },
    body: (c) => {
      msgs[msgs.length - 1]!.body += c.toString('latin1');
    },
    end: () => {
      msgs[msgs.length - 1]!.ended = true;
    },
  });
  const results = chunks.map((c) => p.execute(Buffer.from(c, 'latin1')));
  return { msgs, results, p, begins: () => begins };
}

test('a body chunk is a copy of its own: the read it came in may be reused at once', (t) => {
  // The engine keeps body chunks as they are (held for a connection, kept for a retry or a mirror):
  // that is only sound while llhttp's binding hands each one over as a copy, never a view of the read.
  const chunks: Buffer[] = [];
  const p = new Http1Parser('request', { head: () => false, body: (c) => chunks.push(c), end: () => {} });
  const read = Buffer.from('POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 10\r\n\r\nhello', 'latin1');
  const rest = Buffer.from('world', 'latin1');
  p.execute(read);
  p.execute(rest);
  read.fill(0x2a);
  rest.fill(0x2a);
  t.is(Buffer.concat(chunks).toString('latin1'), 'helloworld');
  for (const c of chunks) t.false(c.buffer === read.buffer || c.buffer === rest.buffer);
});

test('a request head: method, url, raw fields, keep-alive, and a chunked body de-chunked', (t) => {
  const raw =
    'POST /a?b=1 HTTP/1.1\r\nHost: api\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nTrailer-A: x\r\n\r\n';
  const { msgs, results, begins } = parse('request', [raw]);
  t.deepEqual(results, [{ ok: true, consumed: raw.length }]);
  t.is(msgs.length, 1);
  const m = msgs[0]!;
  t.is(m.head.method, 'POST');
  t.is(m.head.url, '/a?b=1');
  t.deepEqual(m.head.fields, ['Host', 'api', 'X-A', '1', 'Transfer-Encoding', 'chunked']);
  t.true(m.head.keepAlive);
  t.false(m.head.upgrade);
  t.is(m.body, 'abcde', 'the body without its chunk framing, the trailer dropped');
  t.true(m.ended);
  t.is(begins(), 1);
});

test('a head split across reads, and one with more fields than llhttp batches at once', (t) => {
  const many = Array.from({ length: 60 }, (_, i) => `X-F${i}: v${i}\r\n`).join('');
  const raw = `GET /long HTTP/1.1\r\nHost: api\r\n${many}\r\n`;
  const { msgs } = parse('request', [raw.slice(0, 7), raw.slice(7, 300), raw.slice(300)]);
  t.is(msgs.length, 1);
  t.is(msgs[0]!.head.url, '/long');
  t.is(msgs[0]!.head.fields.length, 2 * 61);
  t.is(msgs[0]!.head.fields[121], 'v59');
});

test('llhttp refuses the smuggling shapes with their codes', (t) => {
  const probes: Record<string, string> = {
    HPE_UNEXPECTED_CONTENT_LENGTH: 'POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n',
    'both framings': 'POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    'space before colon': 'POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n',
    'bare LF in a field': 'GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n',
  };
  for (const [what, raw] of Object.entries(probes)) {
    const { results, msgs } = parse('request', [raw]);
    const r = results[0]!;
    t.false(r.ok, what);
    if (!r.ok) t.regex(r.failure.code, /^HPE_/, what);
    t.true(
      msgs.every((m) => !m.ended),
      `${what}: no message completed`,
    );
  }
});

test('a head over the cap is HPE_HEADER_OVERFLOW', (t) => {
  const p = new Http1Parser('request', { head: () => false, body: () => {}, end: () => {} }, 1024);
  const r = p.execute(Buffer.from(`GET / HTTP/1.1\r\nX: ${'a'.repeat(2000)}\r\n\r\n`));
  t.false(r.ok);
  if (!r.ok) t.is(r.failure.code, 'HPE_HEADER_OVERFLOW');
});

test('responses: 1xx before the final one; a 101 stops at its head; HEAD has no body', (t) => {
  const raw =
    'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nFRAME';
  const { msgs, results } = parse('response', [raw]);
  t.deepEqual(
    msgs.map((m) => [m.head.status, m.body, m.ended]),
    [
      [100, '', true],
      [200, 'ok', true],
      [101, '', true],
    ],
  );
  t.true(msgs[2]!.head.upgrade);
  const r = results[0]!;
  t.true(r.ok);
  if (r.ok) t.is(raw.slice(r.consumed), 'FRAME', 'what follows the 101 is left unread');
  const head = parse(
    'response',
    ['HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n'],
    true,
  );
  t.deepEqual(
    head.msgs.map((m) => [m.head.status, m.body]),
    [
      [200, ''],
      [204, ''],
    ],
    'told there is no body, the parser reads the next response at once',
  );
});

test('a response without a length ends at finish(); Connection: close says not to keep it', (t) => {
  const { msgs, p } = parse('response', [
    'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ',
    'part two',
  ]);
  t.false(msgs[0]!.head.keepAlive);
  t.false(msgs[0]!.ended);
  t.is(p.finish(), undefined);
  t.true(msgs[0]!.ended);
  t.is(msgs[0]!.body, 'part one, part two');
});

test('a parser closed from inside its own callback frees itself after the call', (t) => {
  const holder: { p?: Http1Parser } = {};
  const p = new Http1Parser('request', {
    head: () => {
      holder.p!.close();
      return false;
    },
    body: () => {},
    end: () => {},
  });
  holder.p = p;
  t.true(p.execute(Buffer.from('GET / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n')).ok);
  t.true(p.closed);
  t.deepEqual(p.execute(Buffer.from('GET / HTTP/1.1\r\n\r\n')), { ok: true, consumed: 0 });
});

test('headersOf: names lower-cased, repeats joined, first Host wins, Set-Cookie a list', (t) => {
  t.deepEqual(
    headersOf([
      'Host',
      'a',
      'HOST',
      'b',
      'Accept',
      'x',
      'accept',
      'y',
      'Set-Cookie',
      'c=1',
      'set-cookie',
      'd=2',
    ]),
    { host: 'a', accept: 'x, y', 'set-cookie': ['c=1', 'd=2'] },
  );
});

test('heads on the wire: fields in order, lists as lines; configured operations that would break a head dropped', (t) => {
  t.is(
    requestHead('GET', '/x', { host: 'api', 'x-list': ['1', '2'] }),
    'GET /x HTTP/1.1\r\nhost: api\r\nx-list: 1\r\nx-list: 2\r\n\r\n',
  );
  t.is(fieldLines({ 'content-length': 12 }), 'content-length: 12\r\n');
  const ops: HeaderOp[] = [
    { op: 'set', name: 'x-ok', value: 'fine' },
    { op: 'set', name: 'bad name', value: 'v' },
    { op: 'add', name: 'x-inj', value: 'a\r\nX-Evil: 1' },
    { op: 'remove', name: 'x-gone' },
  ];
  const safe = safeOps(ops);
  t.deepEqual(
    safe.map((o) => o.name),
    ['x-ok', 'x-gone'],
  );
  t.is(safeOps(ops), safe, 'worked out once per compiled list');
});

test('framing and bodies: chunk frames, and which responses carry a body', (t) => {
  t.is(chunkOf(Buffer.from('hello world!')).toString(), 'c\r\nhello world!\r\n');
  t.is(LAST_CHUNK.toString(), '0\r\n\r\n');
  t.is(framingOf({ 'transfer-encoding': 'chunked' }, true), 'chunked');
  t.is(framingOf({ 'content-length': '3' }, true), 'length');
  t.is(framingOf({}, true), 'close');
  t.is(framingOf({ 'content-length': '3' }, false), 'none');
  t.false(responseMayHaveBody('HEAD', 200));
  t.false(responseMayHaveBody('GET', 204));
  t.false(responseMayHaveBody('GET', 304));
  t.true(responseMayHaveBody('GET', 200));
});

test('request metrics: counts and cumulative buckets as prom-client shows them, one series per label set', async (t) => {
  const registry = new Registry();
  const m = new RequestMetrics<{ a: string; b: string }>(
    {
      total: { name: 't_requests_total', help: 'requests' },
      histograms: [
        { name: 't_duration', help: 'd' },
        { name: 't_req_bytes', help: 'q' },
        { name: 't_res_bytes', help: 'r' },
      ],
    },
    [1, 10, 100],
    [registry],
  );
  const l1 = Object.freeze({ a: 'x', b: 'y' });
  m.record(l1, 0.5, 5, 500);
  m.record(l1, 50, 5, 5);
  // The same values in another object (an emptied label cache): still one series.
  m.record(Object.freeze({ a: 'x', b: 'y' }), 5, 0, 0);
  m.record(Object.freeze({ a: 'z', b: 'y' }), 1, 1, 1);
  const text = await registry.metrics();
  t.regex(text, /^t_requests_total\{a="x",b="y"\} 3$/m);
  t.regex(text, /^t_requests_total\{a="z",b="y"\} 1$/m);
  t.regex(text, /^t_duration_bucket\{le="1",a="x",b="y"\} 1$/m);
  t.regex(text, /^t_duration_bucket\{le="10",a="x",b="y"\} 2$/m);
  t.regex(text, /^t_duration_bucket\{le="100",a="x",b="y"\} 3$/m);
  t.regex(text, /^t_duration_bucket\{le="\+Inf",a="x",b="y"\} 3$/m);
  t.regex(text, /^t_duration_sum\{a="x",b="y"\} 55.5$/m);
  t.regex(text, /^t_duration_count\{a="x",b="y"\} 3$/m);
  t.regex(text, /^t_res_bytes_bucket\{le="100",a="x",b="y"\} 2$/m);
  t.regex(text, /^t_res_bytes_bucket\{le="\+Inf",a="x",b="y"\} 3$/m);
  t.regex(text, /^# TYPE t_duration histogram$/m);
  // Workers' registries are merged by summing, as prom-client's own metrics are.
  const json = await registry.getMetricsAsJSON();
  const merged = await AggregatorRegistry.aggregate([json, json]).metrics();
  t.regex(merged, /^t_requests_total\{a="x",b="y"\} 6$/m);
  t.regex(merged, /^t_duration_bucket\{le="10",a="x",b="y"\} 4$/m);
});

test('randomHex: the length asked, hex, and not the same twice', (t) => {
  const seen = new Set<string>();
  for (let i = 0; i < 1000; i++) {
    const h = randomHex(16);
    t.regex(h, /^[0-9a-f]{32}$/);
    seen.add(h);
  }
  t.is(seen.size, 1000);
  t.throws(() => randomHex(5000), { instanceOf: RangeError });
});

/** A ByteStream whose reader can be made full (write says wait): the state a slow client leaves. */
class FakeStream extends EventEmitter implements ByteStream {
  written = '';
  /** Each write as it was made: what is one syscall (one tunnel frame) on a real stream. */
  writes: string[] = [];
  full = false;
  paused = false;
  destroyed = false;
  rstCode: number | undefined;
  write(chunk: Buffer): boolean {
    this.written += chunk.toString('latin1');
    this.writes.push(chunk.toString('latin1'));
    return !this.full;
  }
  end(): void {}
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.rstCode = 8;
    this.emit('close');
  }
  push(s: string): void {
    this.emit('data', Buffer.from(s, 'latin1'));
  }
}

/** The engine over fake streams, one endpoint: `upstreams` are the connections it opened to it. */
function fakeEngine() {
  const upstreams: FakeStream[] = [];
  const metrics = new Metrics({ processMetrics: false });
  const log = silentLogger();
  const plan: OutboundPlan = {
    kind: 'mesh',
    service: { name: 'api', namespace: 'default' },
    endpoints: [workload({ name: 'api-1', service: 'api', node: 'n', ports: [8080] })],
    targetPort: 8080,
    targeted: undefined,
  };
  const http = new WaypointHttp({
    hop: {
      store: undefined as never,
      pool: undefined as never,
      identityOf: () => 'spiffe://x/api',
      self: 'spiffe://x/wp',
    },
    router: new ServiceRouter(1000),
    log,
    refusals: new Refusals(metrics, log),
    metrics,
    limits: DEFAULT_HTTP1_LIMITS,
    open: async () => {
      const s = new FakeStream();
      upstreams.push(s);
      return { stream: s, authority: '198.18.0.2:8080' };
    },
  });
  const ctx = {
    plan,
    client: { principal: 'spiffe://x/web', forwarded: undefined, traceparent: undefined },
    clientAddr: undefined,
  };
  return { http, ctx, upstreams };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

test('an endpoint connection paused for a slow client is not kept paused for the next one', async (t) => {
  const { http, ctx, upstreams } = fakeEngine();
  const slow = new FakeStream();
  http.serve(slow, ctx);
  slow.push('GET /one HTTP/1.1\r\nHost: api\r\n\r\n');
  await tick();
  t.is(upstreams.length, 1);
  t.regex(upstreams[0]!.written, /^GET \/one HTTP\/1\.1\r\n/);
  // The client's stream is full when the whole answer arrives in one read: its endpoint is paused...
  slow.full = true;
  upstreams[0]!.push('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
  t.true(slow.written.endsWith('ok'));
  // ...yet the exchange is over and the connection is kept: it must read again for whoever takes it.
  t.false(upstreams[0]!.paused);
  const next = new FakeStream();
  http.serve(next, ctx);
  next.push('GET /two HTTP/1.1\r\nHost: api\r\n\r\n');
  await tick();
  t.is(upstreams.length, 1, 'the kept connection was reused');
  upstreams[0]!.push('HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo');
  t.regex(next.written, /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\ntwo$/);
  http.close();
});

test('a head and the body of the same read go on in one write; a head whose body comes later goes alone', async (t) => {
  const { http, ctx, upstreams } = fakeEngine();
  const client = new FakeStream();
  http.serve(client, ctx);
  // The first request opens the endpoint's connection; the next ones find it kept.
  client.push('GET /open HTTP/1.1\r\nHost: api\r\n\r\n');
  await tick();
  const up = upstreams[0]!;
  up.push('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
  await tick();
  up.writes = [];
  client.writes = [];

  client.push('POST /one HTTP/1.1\r\nHost: api\r\ncontent-length: 5\r\n\r\nhello');
  t.is(up.writes.length, 1);
  t.regex(up.writes[0]!, /^POST \/one HTTP\/1\.1\r\n[\s\S]*content-length: 5\r\n[\s\S]*\r\n\r\nhello$/);
  up.push('HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none');
  t.is(client.writes.length, 1);
  t.regex(client.writes[0]!, /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\none$/);
  await tick();

  // The body a read behind its head: the head is not held for it.
  up.writes = [];
  client.writes = [];
  client.push('POST /two HTTP/1.1\r\nHost: api\r\ncontent-length: 5\r\n\r\n');
  t.is(up.writes.length, 1);
  t.regex(up.writes[0]!, /^POST \/two HTTP\/1\.1\r\n[\s\S]*\r\n\r\n$/);
  client.push('world');
  t.deepEqual(up.writes.slice(1), ['world']);
  up.push('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n');
  t.is(client.writes.length, 1);
  t.regex(client.writes[0]!, /^HTTP\/1\.1 200 OK\r\n[\s\S]*transfer-encoding: chunked\r\n\r\n$/);
  up.push('3\r\ntwo\r\n0\r\n\r\n');
  t.is(client.writes.slice(1).join(''), '3\r\ntwo\r\n0\r\n\r\n');
  await tick();

  // A response whose head, body and end come in one read: the end of a chunked body follows its head.
  client.writes = [];
  client.push('GET /three HTTP/1.1\r\nHost: api\r\n\r\n');
  up.push('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n');
  t.is(client.writes.length, 1);
  t.regex(client.writes[0]!, /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\n0\r\n\r\n$/);
  t.is(upstreams.length, 1, 'one kept connection carried them all');
  http.close();
});
