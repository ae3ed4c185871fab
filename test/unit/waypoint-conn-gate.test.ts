// MaxConnections and MaxPendingRequests (daemon/waypoint/conn-gate.ts, read by traffic-limits.ts): slots
// for a pair's connections taken up to the cap, requests waiting up to the pending bound in order, a
// closed connection's slot handed to the first waiting, and the limit read from the client's entry.
import test from 'ava';
import {
  ConnectionGate,
  type ConnectionLimit,
  DEFAULT_MAX_PENDING,
  PendingOverflow,
} from '../../daemon/waypoint/conn-gate.js';
import { connectionLimit } from '../../daemon/waypoint/traffic-limits.js';
import { type EntrySet, indexEntries, validateEntries } from '../../lib/l7/index.js';

const API = { name: 'api', namespace: 'default' };
const WEB = { name: 'web', namespace: 'default' };
const setOf = (entries: unknown[]): EntrySet => indexEntries(validateEntries(entries, 'unit'));
const webLimits = (upstreamConfig: Record<string, unknown>): unknown => ({
  Kind: 'service-defaults',
  Name: 'web',
  Protocol: 'http',
  UpstreamConfig: upstreamConfig,
});

const limit = (maxConnections: number, maxPending: number, key = 'web>api'): ConnectionLimit => ({
  key,
  maxConnections,
  maxPending,
  names: 'web to api',
});

test('slots are taken up to MaxConnections, per pair, and given back', (t) => {
  const g = new ConnectionGate();
  const l = limit(2, 0);
  t.deepEqual([g.tryAcquire(l), g.tryAcquire(l), g.tryAcquire(l)], [true, true, false]);
  t.true(g.tryAcquire(limit(2, 0, 'web>legacy')), 'another pair has its own');
  t.is(g.open(l.key), 2);
  g.release(l.key);
  t.is(g.open(l.key), 1);
  t.true(g.tryAcquire(l));
  g.release(l.key);
  g.release(l.key);
  g.release(l.key);
  t.is(g.open(l.key), 0, 'never below zero');
});

test('at the cap, up to MaxPendingRequests wait; each closed connection hands its slot to the first', async (t) => {
  const g = new ConnectionGate();
  const l = limit(1, 2);
  t.true(g.tryAcquire(l));
  const order: number[] = [];
  const w1 = g.wait(l);
  const w2 = g.wait(l);
  t.truthy(w1);
  t.truthy(w2);
  t.is(g.wait(l), undefined, 'a third waiting is over MaxPendingRequests');
  t.is(g.waiting(l.key), 2);
  void w1?.then(() => order.push(1));
  void w2?.then(() => order.push(2));
  g.release(l.key);
  await w1;
  t.deepEqual(order, [1]);
  t.is(g.open(l.key), 1, 'the slot was handed over, not given back');
  t.false(g.tryAcquire(l), 'and so nobody else gets it');
  g.release(l.key);
  await w2;
  t.deepEqual(order, [1, 2]);
  g.release(l.key);
  t.is(g.open(l.key), 0);
  t.is(g.waiting(l.key), 0);
});

test('MaxPendingRequests 0: nothing waits, the next is refused', (t) => {
  const g = new ConnectionGate();
  const l = limit(1, 0);
  t.true(g.tryAcquire(l));
  t.is(g.wait(l), undefined);
  t.regex(
    new PendingOverflow(l).message,
    /^1 connections from web to api open \(MaxConnections\) and 0 requests waiting/,
  );
});

test("the limit: the client entry's override for the destination, else Defaults; 0 is none", (t) => {
  const set = setOf([
    webLimits({
      Defaults: { Limits: { MaxConnections: 8 } },
      Overrides: [{ Name: 'api', Limits: { MaxConnections: 2, MaxPendingRequests: 3 } }],
    }),
  ]);
  t.like(connectionLimit(set, WEB, API, API), { maxConnections: 2, maxPending: 3, names: 'web to api' });
  const legacy = { name: 'legacy', namespace: 'default' };
  t.like(connectionLimit(set, WEB, legacy, legacy), { maxConnections: 8, maxPending: DEFAULT_MAX_PENDING });
  t.is(connectionLimit(set, { name: 'other', namespace: 'default' }, API, API), undefined);
  t.is(
    connectionLimit(setOf([webLimits({ Defaults: { Limits: { MaxConnections: 0 } } })]), WEB, API, API),
    undefined,
  );
  t.is(
    connectionLimit(setOf([webLimits({ Defaults: { Limits: { MaxPendingRequests: 4 } } })]), WEB, API, API),
    undefined,
    'MaxPendingRequests alone caps nothing: no request waits without a connection cap',
  );
  t.like(
    connectionLimit(
      setOf([webLimits({ Defaults: { Limits: { MaxConnections: 1, MaxPendingRequests: 0 } } })]),
      WEB,
      API,
      API,
    ),
    { maxPending: 0 },
  );
  // Counted per destination service: a split's or a redirect's target is its own pair.
  t.not(connectionLimit(set, WEB, API, API)?.key, connectionLimit(set, WEB, API, legacy)?.key);
});

test('take: a free slot, else an idle connection closed for it, else a wait, else PendingOverflow', async (t) => {
  const g = new ConnectionGate();
  const l = limit(1, 1);
  let evicted = 0;
  const none = (): boolean => false;
  await g.take(l, none);
  // An idle connection of the pair is closed, and its slot taken.
  await g.take(l, () => {
    evicted++;
    g.release(l.key);
    return true;
  });
  t.is(evicted, 1);
  t.is(g.open(l.key), 1);
  // None idle: the next waits, and the one after is refused.
  const waiting = g.take(l, none);
  await t.throwsAsync(g.take(l, none), { instanceOf: PendingOverflow });
  g.release(l.key);
  await waiting;
  t.is(g.open(l.key), 1);
});
