// The live table behind GET /connections and /tap, without sockets: what it lists, which events reach
// which tap, and a tap that cannot keep up dropped rather than fed.
import test from 'ava';
import { ConnectionTable, type Tracked, matchesFilter } from '../../daemon/observe/connections.js';
import type { TapEvent } from '../../lib/tap.js';

const conn = (over: Partial<Tracked> = {}): Tracked => ({
  direction: 'inbound',
  src: {
    addr: '198.18.1.2:40000',
    workload: 'web-1',
    service: 'web',
    principal: 'spiffe://td/ns/default/sa/web',
  },
  dst: {
    addr: '198.18.2.2:8080',
    workload: 'api-1',
    service: 'api',
    principal: 'spiffe://td/ns/default/sa/api',
  },
  security: 'mutual_tls',
  started: 1_000,
  bytes: () => ({ fromClient: 10, toClient: 20 }),
  ...over,
});

test('lists what is open, with its bytes and age, until it closes', (t) => {
  const table = new ConnectionTable();
  const a = conn();
  table.opened(a);
  const [row] = table.list({}, 3_500);
  t.is(row?.id, 1);
  t.is(row?.age_ms, 2_500);
  t.is(row?.bytes_sent, 10);
  t.is(row?.bytes_received, 20);
  t.is(row?.started, new Date(1_000).toISOString());
  table.closed(a, 10, 20, false);
  t.deepEqual(table.list(), []);
});

test('filters: every field set must match; workload, service and identity match either end', (t) => {
  const c = conn();
  t.true(matchesFilter({}, c));
  t.true(matchesFilter({ workload: 'web-1' }, c));
  t.true(matchesFilter({ workload: 'api-1' }, c));
  t.true(matchesFilter({ service: 'web', direction: 'inbound' }, c));
  t.false(matchesFilter({ service: 'web', direction: 'outbound' }, c));
  t.true(matchesFilter({ to: 'api' }, c));
  t.false(matchesFilter({ to: 'web' }, c), '--to is the destination alone');
  t.true(matchesFilter({ identity: 'spiffe://td/ns/default/sa/api' }, c));
  t.false(matchesFilter({ identity: 'spiffe://td/ns/default/sa/db' }, c));
  t.false(matchesFilter({ status: 'refused' }, c, 'closed'));
  t.true(matchesFilter({ status: 'reset' }, c, 'reset'));
});

test('a tap gets the events it asked for, in order', (t) => {
  const table = new ConnectionTable();
  const got: TapEvent[] = [];
  const refusals: TapEvent[] = [];
  table.tap(
    {},
    (e) => got.push(e) > 0,
    () => {},
  );
  table.tap(
    { status: 'refused' },
    (e) => refusals.push(e) > 0,
    () => {},
  );
  const a = conn();
  table.opened(a);
  table.closed(a, 5, 7, true);
  table.refused(conn({ src: { addr: '198.18.3.2:1' } }), 'denied by policy x', 'UAEX');
  t.deepEqual(
    got.map((e) => [e.event, e.status]),
    [
      ['opened', 'open'],
      ['closed', 'reset'],
      ['refused', 'refused'],
    ],
  );
  t.is(got[1]?.bytes_sent, 5);
  t.is(got[1]?.bytes_received, 7);
  t.deepEqual(
    refusals.map((e) => e.reason),
    ['denied by policy x'],
  );
});

test('a tap that cannot keep up is dropped, counted, and told; the others go on', (t) => {
  const table = new ConnectionTable();
  let dropped = 0;
  let fast = 0;
  let room = 2;
  table.tap(
    {},
    () => room-- > 0,
    () => dropped++,
  );
  table.tap(
    {},
    () => ++fast > 0,
    () => t.fail('the fast tap was dropped'),
  );
  for (let i = 0; i < 5; i++) table.opened(conn());
  t.is(dropped, 1, 'told once');
  t.is(table.dropped, 1);
  t.is(table.taps, 1);
  t.is(fast, 5);
});
