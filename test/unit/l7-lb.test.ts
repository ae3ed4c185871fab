import test from 'ava';
import {
  type ChainTarget,
  type Instance,
  LeastRequestState,
  Picker,
  buildMaglev,
  buildRing,
  compileChain,
  hash32,
  indexEntries,
  maglevPick,
  pickLeastRequest,
  requestHash,
  resolveTarget,
  ringPick,
  targetInstances,
  validateEntries,
} from '../../lib/l7/index.js';

const mk = (n: number, extra: Partial<Instance> = {}): Instance => ({
  id: `i${n}`,
  address: `198.18.1.${n}`,
  port: 80,
  tags: [],
  meta: {},
  nodeMeta: {},
  passing: true,
  ...extra,
});
const many = (n: number) => Array.from({ length: n }, (_, i) => mk(i + 1));
const seq = (xs: number[]) => {
  let i = 0;
  return () => xs[i++ % xs.length]!;
};

test('targetInstances: subset filter, OnlyPassing, warning and critical', (t) => {
  const target: ChainTarget = {
    ID: 'v2.api',
    Service: 'api',
    ServiceSubset: 'v2',
    Namespace: 'default',
    Partition: 'default',
    Datacenter: 'dc1',
    Subset: { Filter: 'Service.Meta.version == "v2"' },
  };
  const all = [
    mk(1, { meta: { version: 'v2' } }),
    mk(2, { meta: { version: 'v1' } }),
    mk(3, { meta: { version: 'v2' }, passing: false, warning: true }),
    mk(4, { meta: { version: 'v2' }, passing: false }),
  ];
  t.deepEqual(
    targetInstances(target, all).map((i) => i.id),
    ['i1', 'i3'],
  );
  t.deepEqual(
    targetInstances({ ...target, Subset: { ...target.Subset, OnlyPassing: true } }, all).map((i) => i.id),
    ['i1'],
  );
});

test('failover when the target has no healthy instance', (t) => {
  const chain = compileChain(
    indexEntries(
      validateEntries(
        [
          {
            Kind: 'service-resolver',
            Name: 'api',
            Failover: { '*': { Targets: [{ Service: 'backup' }, { Service: 'last' }] } },
          },
        ],
        'test',
      ),
    ),
    'api',
  );
  const pool: Record<string, Instance[]> = { api: [mk(1, { passing: false })], backup: [], last: [mk(9)] };
  const r = resolveTarget(chain, 'api.default.default.dc1', (t) => pool[t.Service] ?? []);
  t.like(r, { failover: true, target: { Service: 'last' } });
  t.deepEqual(r.tried, ['api.default.default.dc1', 'backup.default.default.dc1', 'last.default.default.dc1']);
  pool.api = [mk(1)];
  t.like(
    resolveTarget(chain, 'api.default.default.dc1', (t) => pool[t.Service] ?? []),
    { failover: false, target: { Service: 'api' } },
  );
  pool.api = [];
  pool.last = [];
  t.is(resolveTarget(chain, 'api.default.default.dc1', (t) => pool[t.Service] ?? []).instances.length, 0);
});

test('round robin cycles through the instances', (t) => {
  const p = new Picker({ Policy: 'round_robin' });
  const xs = many(3);
  const got = Array.from(
    { length: 6 },
    () => p.pick(xs, { path: '/', headers: {}, sourceIp: '' }, Math.random).instance!.id,
  );
  t.deepEqual(got, ['i1', 'i2', 'i3', 'i1', 'i2', 'i3']);
});

test('least_request picks the less loaded of ChoiceCount random picks', (t) => {
  const xs = many(3);
  const st = new LeastRequestState();
  st.begin('i1');
  st.begin('i1');
  st.begin('i2');
  t.is(pickLeastRequest(xs, st, 2, seq([0, 0.5]))!.id, 'i2');
  t.is(pickLeastRequest(xs, st, 2, seq([0.5, 0.9]))!.id, 'i3');
  t.is(pickLeastRequest(xs, st, 3, seq([0, 0.4, 0.1]))!.id, 'i2');
  st.end('i1');
  st.end('i1');
  t.is(st.of('i1'), 0);
});

test('random uses the injected draw', (t) => {
  const p = new Picker({ Policy: 'random' });
  t.is(p.pick(many(4), { path: '/', headers: {}, sourceIp: '' }, () => 0.6).instance!.id, 'i3');
});

test('hash policies: header, cookie, query, source IP, Terminal', (t) => {
  const base = {
    path: '/?user=7',
    headers: { 'x-user': 'alice', cookie: 'a=1; sid=xyz' },
    sourceIp: '198.18.0.5',
  };
  t.is(requestHash([{ Field: 'header', FieldValue: 'X-User' }], base).hash, hash32('alice'));
  t.is(requestHash([{ Field: 'cookie', FieldValue: 'sid' }], base).hash, hash32('xyz'));
  t.is(requestHash([{ Field: 'query_parameter', FieldValue: 'user' }], base).hash, hash32('7'));
  t.is(requestHash([{ SourceIP: true }], base).hash, hash32('198.18.0.5'));
  t.is(requestHash([{ Field: 'header', FieldValue: 'absent' }], base).hash, undefined);
  const terminal = requestHash(
    [{ Field: 'header', FieldValue: 'x-user', Terminal: true }, { SourceIP: true }],
    base,
  ).hash;
  t.is(terminal, hash32('alice'));
  t.not(requestHash([{ Field: 'header', FieldValue: 'x-user' }, { SourceIP: true }], base).hash, terminal);
  const gen = requestHash(
    [{ Field: 'cookie', FieldValue: 'route', CookieConfig: { TTL: 60_000, Path: '/' } }],
    base,
  );
  t.like(gen.cookie, { name: 'route', path: '/', ttl: 60_000 });
  t.is(gen.hash, hash32(gen.cookie!.value));
});

const keys = Array.from({ length: 2000 }, (_, i) => hash32(`key-${i}`));

for (const [name, build, pick] of [
  ['ring_hash', (xs: Instance[]) => buildRing(xs), ringPick],
  ['maglev', (xs: Instance[]) => buildMaglev(xs), maglevPick],
] as const) {
  test(`${name}: same key same endpoint; removing one of n moves about 1/n of keys`, (t) => {
    const xs = many(10);
    const a = build(xs);
    const b = build([...xs].reverse());
    const before = keys.map((k) => (pick as (x: unknown, h: number) => Instance | undefined)(a, k)!.id);
    t.deepEqual(
      keys.map((k) => (pick as (x: unknown, h: number) => Instance | undefined)(b, k)!.id),
      before,
      'order of instances does not matter',
    );
    const counts = new Map<string, number>();
    for (const id of before) counts.set(id, (counts.get(id) ?? 0) + 1);
    t.is(counts.size, 10);
    for (const n of counts.values()) t.true(n > 100 && n < 320, `share ${n} of 2000`);
    const gone = xs.filter((x) => x.id !== 'i4');
    const c = build(gone);
    const after = keys.map((k) => (pick as (x: unknown, h: number) => Instance | undefined)(c, k)!.id);
    let moved = 0;
    for (let i = 0; i < keys.length; i++) if (before[i] !== after[i]) moved++;
    const onRemoved = before.filter((id) => id === 'i4').length;
    t.true(moved >= onRemoved);
    t.true(moved <= onRemoved * 1.5 + 40, `moved ${moved}, ${onRemoved} were on the removed endpoint`);
  });
}

test('Picker with a hash policy is sticky and falls back to random without a hash', (t) => {
  const p = new Picker({ Policy: 'maglev', HashPolicies: [{ Field: 'header', FieldValue: 'x-user' }] });
  const xs = many(5);
  const r = { path: '/', headers: { 'x-user': 'bob' }, sourceIp: '' };
  const first = p.pick(xs, r, Math.random).instance!.id;
  for (let i = 0; i < 20; i++) t.is(p.pick(xs, r, Math.random).instance!.id, first);
  t.is(p.pick(xs, { path: '/', headers: {}, sourceIp: '' }, () => 0).instance!.id, 'i1');
});

test('a session cookie is generated without a TTL; an existing cookie is hashed as sent', (t) => {
  const base = { path: '/', headers: {}, sourceIp: '198.18.0.9' };
  const gen = requestHash([{ Field: 'cookie', FieldValue: 'route', CookieConfig: { Session: true } }], base);
  t.is(gen.cookie!.ttl, undefined);
  t.is(gen.cookie!.name, 'route');
  const again = requestHash([{ Field: 'cookie', FieldValue: 'route', CookieConfig: { Session: true } }], {
    ...base,
    headers: { cookie: `route=${gen.cookie!.value}` },
  });
  t.is(again.cookie, undefined);
  t.is(again.hash, gen.hash, 'the next request, carrying the cookie, hashes as the first');
});
