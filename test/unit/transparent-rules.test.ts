// The reply routing for the original source address as data (lib/capture/transparent.ts), the settings that
// shape it, and the daemon's watch over it (daemon/capture/reply-watch.ts).
import test from 'ava';
import { pino } from 'pino';
import { ReplyWatch, type RoutingState } from '../../daemon/capture/reply-watch.js';
import {
  type IpRoute,
  type IpRule,
  REPLY_CHAIN,
  ROUTE_PROTO,
  type ReplyRoutingSpec,
  deleteRoute,
  deleteRule,
  mangleLines,
  mangleScript,
  missingRouting,
  parseIpJson,
  replyRules,
  routingLines,
  specError,
  staleRouting,
} from '../../lib/capture/transparent.js';
import { loadConfig } from '../../lib/config.js';
import { ConfigError } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';

const spec: ReplyRoutingSpec = { socketMark: 0x539, replyMark: 0x1000, table: 1339 };

test('the rule set: a mangle chain marking packets of transparent sockets, an ip rule, a local route', (t) => {
  const rs = replyRules(spec, 4);
  t.true(REPLY_CHAIN.startsWith('AMBIT_'), "an Ambit chain, which remove knows as Ambit's");
  t.deepEqual(rs.chains, [REPLY_CHAIN]);
  t.deepEqual(rs.jumps, [{ chain: 'PREROUTING', target: REPLY_CHAIN }]);
  t.is(rs.rules.length, 1);
  t.regex(
    rs.rules[0]!,
    /^-A AMBIT_REPLIES -p tcp -m socket --transparent .*-j MARK --set-xmark 0x1000\/0x1000$/,
  );
  t.deepEqual(rs.ipRule, [
    '-4',
    'rule',
    'add',
    'priority',
    '1339',
    'fwmark',
    '0x1000/0x1000',
    'lookup',
    '1339',
    'protocol',
    String(ROUTE_PROTO),
  ]);
  t.deepEqual(rs.ipRoute.slice(0, 8), ['-4', 'route', 'replace', 'local', 'default', 'dev', 'lo', 'table']);
  const v6 = replyRules(spec, 6);
  t.is(v6.ipRule[0], '-6');
  t.is(v6.ipRoute[0], '-6');
  t.deepEqual(v6.rules, rs.rules, 'the same mangle rule for ip6tables');
  t.is(
    mangleScript(rs),
    `*mangle\n:AMBIT_REPLIES - [0:0]\n${rs.rules[0]}\nCOMMIT\n`,
    'restore input that declares (and so flushes) only its own chain',
  );
  const created = replyRules(spec, 4, { createdTable: true });
  t.is(created.rules.length, 2);
  t.regex(created.rules[0]!, /ambit:created-mangle-table/);
});

test('a reply mark sharing a bit with the socket mark is refused: it would send all of ambitd to lo', (t) => {
  t.regex(specError({ ...spec, replyMark: 0x1 }) ?? '', /shares bits with captureMark 0x539/);
  t.is(specError(spec), undefined);
  t.throws(() => replyRules({ ...spec, replyMark: 0x539 }, 4), { message: /shares bits/ });
  const err = t.throws(
    () => loadConfig({ env: {}, flags: { captureMark: '0x539', captureReplyMark: '0x8' } }),
    {
      instanceOf: ConfigError,
    },
  );
  t.regex(err.message, /--capture-reply-mark/);
  t.regex(err.message, /must share no bit with captureMark/);
  t.throws(() => loadConfig({ env: {}, flags: { captureReplyTable: '254' } }), {
    instanceOf: ConfigError,
    message: /--capture-reply-table.*other than 253, 254, 255/,
  });
  t.is(loadConfig({ env: {}, flags: { captureReplyMark: '0x2000' } }).capture.replyMark, 0x2000);
});

const RULES: IpRule[] = parseIpJson<IpRule>(
  JSON.stringify([
    { priority: 0, src: 'all', table: 'local' },
    { priority: 1339, src: 'all', fwmark: '0x1000', fwmask: '0x1000', table: '1339', protocol: '153' },
    { priority: 1339, src: 'all', fwmark: '0x4000', fwmask: '0x4000', table: '77', protocol: '153' },
    { priority: 100, src: 'all', fwmark: '0x1000', fwmask: '0x1000', table: '1339' },
    { priority: 32766, src: 'all', table: 'main' },
  ]),
);
const ROUTES: IpRoute[] = [
  { type: 'local', dst: 'default', dev: 'lo', table: '1339' },
  { type: 'local', dst: 'default', dev: 'lo', table: '77' },
];
const MANGLE = [
  '*mangle',
  ':PREROUTING ACCEPT [0:0]',
  ':AMBIT_REPLIES - [0:0]',
  '-A PREROUTING -j AMBIT_REPLIES',
  '-A PREROUTING -j SOMEONE_ELSES',
  `${replyRules(spec, 4).rules[0]}`,
  'COMMIT',
].join('\n');

test('stale routing: Ambit’s rules and routes (by protocol) that the settings no longer name', (t) => {
  const stale = staleRouting(spec, RULES, ROUTES);
  t.deepEqual(
    stale.rules.map((r) => r.table),
    ['77'],
    'the older table goes, the rule without Ambit’s protocol is someone else’s',
  );
  t.deepEqual(
    stale.routes.map((r) => r.table),
    ['77'],
  );
  const all = staleRouting(undefined, RULES, ROUTES);
  t.is(all.rules.length, 2, 'remove: every rule of Ambit’s');
  t.is(all.routes.length, 2);
  t.deepEqual(deleteRule(4, stale.rules[0]!), [
    '-4',
    'rule',
    'del',
    'priority',
    '1339',
    'fwmark',
    '0x4000/0x4000',
    'lookup',
    '77',
    'protocol',
    '153',
  ]);
  t.deepEqual(deleteRoute(6, stale.routes[0]!), [
    '-6',
    'route',
    'del',
    'local',
    'default',
    'dev',
    'lo',
    'table',
    '77',
    'proto',
    '153',
  ]);
  t.deepEqual(parseIpJson('Object "rule" is unknown'), [], 'an iproute2 without -j: nothing');
});

test('what is missing is named; all three pieces present is nothing missing', (t) => {
  const now = { mangle: MANGLE, rules: RULES, routes: ROUTES };
  t.is(missingRouting(spec, 4, now), undefined);
  t.regex(missingRouting(spec, 4, { ...now, mangle: '' }) ?? '', /no jump to AMBIT_REPLIES/);
  t.regex(
    missingRouting(spec, 4, { ...now, mangle: MANGLE.replace(/-A AMBIT_REPLIES.*\n/, '') }) ?? '',
    /no rule in AMBIT_REPLIES that marks 0x1000\/0x1000/,
  );
  t.regex(
    missingRouting(spec, 6, { ...now, rules: RULES.filter((r) => r.table !== '1339') }) ?? '',
    /no `ip -6 rule` fwmark 0x1000\/0x1000 lookup 1339/,
  );
  t.regex(
    missingRouting(spec, 4, { ...now, rules: RULES.filter((r) => r.protocol === undefined) }) ?? '',
    /ip -4 rule/,
    'a rule of the same shape that is not Ambit’s does not count',
  );
  t.regex(
    missingRouting(spec, 4, { ...now, routes: [] }) ?? '',
    /no `ip -4 route` local default dev lo table 1339/,
  );
  t.regex(
    missingRouting({ ...spec, replyMark: 0x2000 }, 4, now) ?? '',
    /marks 0x2000/,
    'another mark: missing',
  );
  t.deepEqual(mangleLines(MANGLE), [
    ':AMBIT_REPLIES - [0:0]',
    '-A PREROUTING -j AMBIT_REPLIES',
    replyRules(spec, 4).rules[0]!,
  ]);
  t.deepEqual(routingLines(4, RULES.slice(0, 2), ROUTES.slice(0, 1)), [
    'ip -4 rule: 1339: from all fwmark 0x1000/0x1000 lookup 1339 proto 153',
    'ip -4 route: local default dev lo table 1339 proto 153',
  ]);
});

/** A logger whose lines land in `lines`, parsed (synchronously). */
function capture(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => lines.push(JSON.parse(s)) });
  return { log, lines };
}

test('the watch: missing routing turns a family off with one warning, and on again when installed', async (t) => {
  let state: RoutingState = { 4: undefined, 6: 'no `ip -6 rule` fwmark 0x1000/0x1000 lookup 1339' };
  let transparent: string | undefined;
  const { log, lines } = capture();
  const watch = new ReplyWatch({
    spec,
    backend: 'auto',
    log,
    transparentError: () => transparent,
    state: async () => state,
  });
  await watch.check();
  t.deepEqual([...watch.routed], [4]);
  await watch.check();
  t.is(lines.length, 1, 'one line while nothing changes');
  t.is(lines[0]!.level, 40);
  t.deepEqual(lines[0]!.off, { ipv6: state[6] });
  state = { 4: undefined, 6: undefined };
  await watch.check();
  t.deepEqual([...watch.routed], [4, 6]);
  transparent = 'setsockopt(IP_TRANSPARENT) failed: Operation not permitted';
  await watch.check();
  t.deepEqual([...watch.routed], [], 'no transparent sockets: off for both');
  state = {};
  transparent = undefined;
  await watch.check();
  t.deepEqual([...watch.routed], [], 'a host without the tools: nothing on');
  t.deepEqual(lines.at(-1)!.off, { ipv4: 'no iptables tools for any family' });
  t.deepEqual(
    lines.map((l) => l.level),
    [40, 30, 40, 40],
    'a line at each change',
  );
});
