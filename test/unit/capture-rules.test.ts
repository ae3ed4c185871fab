// The nat rules `ambit capture install` writes, as data: which connections go to 15001 and 15006, and
// which are left alone. The namespace test (test/system/capture.test.ts) runs them for real.
import test from 'ava';
import { type CaptureSpec, buildRules } from '../../lib/capture/rules.js';
import type { Workload } from '../../lib/mesh/model.js';
import { workload } from '../helpers/mesh.js';

const pod = workload({
  name: 'pod',
  service: 'api',
  node: 'node-b',
  addresses: ['198.18.2.2', '2001:2:0:2::2'],
  ports: [8080],
});
const vm = workload({ name: 'vm', service: 'vm', node: 'node-b', addresses: ['198.18.0.2'], ports: [8080] });
const proc = workload({
  name: 'proc',
  service: 'proc',
  node: 'node-b',
  addresses: ['198.18.0.2'],
  ports: [9090, 9091],
  uid: 1001,
});

const spec = (workloads: Workload[], more: Partial<CaptureSpec> = {}): CaptureSpec => ({
  workloads,
  mark: 0x539,
  outboundPort: 15001,
  inboundPort: 15006,
  tunnelPort: 15008,
  daemonPorts: [15000, 15020, 15021],
  excludePorts: [22],
  excludeCidrs: [],
  daemonUid: undefined,
  nodeAddress: '198.18.0.2',
  checkUids: [],
  ...more,
});

const inbound = (rules: readonly string[]): string[] =>
  rules.filter((r) => r.startsWith('-A AMBIT_INBOUND -d'));

test('every port of a pod’s own address goes to 15006, whatever ports it lists', (t) => {
  const rs = buildRules(spec([pod]), 4);
  t.deepEqual(inbound(rs.rules), [
    '-A AMBIT_INBOUND -d 198.18.2.2/32 -p tcp -m comment --comment "ambit: workload pod" -j AMBIT_IN_REDIRECT',
  ]);
  t.deepEqual(inbound(buildRules(spec([pod]), 6).rules), [
    '-A AMBIT_INBOUND -d 2001:2:0:2::2/128 -p tcp -m comment --comment "ambit: workload pod" -j AMBIT_IN_REDIRECT',
  ]);
});

test('a workload on the host’s network is captured on its listed ports alone', (t) => {
  const rules = inbound(buildRules(spec([vm, proc]), 4).rules);
  t.deepEqual(rules, [
    '-A AMBIT_INBOUND -d 198.18.0.2/32 -p tcp -m multiport --dports 8080 -m comment --comment "ambit: workload vm" -j AMBIT_IN_REDIRECT',
    '-A AMBIT_INBOUND -d 198.18.0.2/32 -p tcp -m multiport --dports 9090,9091 -m comment --comment "ambit: workload proc" -j AMBIT_IN_REDIRECT',
  ]);
});

test('the tunnel and the daemon’s own ports come before any workload rule', (t) => {
  const rules = buildRules(spec([pod]), 4).rules.filter((r) => r.startsWith('-A AMBIT_INBOUND'));
  t.regex(rules[0]!, /--dport 15008 .*-j RETURN/);
  t.regex(rules[1]!, /--dports 15000,15001,15006,15020,15021 .*-j RETURN/);
});

test('the health checkers’ connections are left alone, before the plaintext jump and after workload uids', (t) => {
  const rules = buildRules(spec([proc], { checkUids: [998, 998, 42] }), 4).rules.filter((r) =>
    r.startsWith('-A AMBIT_OUTPUT'),
  );
  const at = (re: RegExp): number => rules.findIndex((r) => re.test(r));
  const workloadUid = at(/--uid-owner 1001 .*-j AMBIT_OUT_REDIRECT/);
  const checkers = rules.filter((r) => /health checks/.test(r));
  t.deepEqual(checkers, [
    '-A AMBIT_OUTPUT -p tcp -m owner --uid-owner 42 -m comment --comment "ambit: health checks, uid 42" -j RETURN',
    '-A AMBIT_OUTPUT -p tcp -m owner --uid-owner 998 -m comment --comment "ambit: health checks, uid 998" -j RETURN',
  ]);
  t.true(workloadUid >= 0 && workloadUid < at(/uid 42/), 'a workload uid is redirected first');
  t.is(rules.at(-1), '-A AMBIT_OUTPUT -p tcp -j AMBIT_INBOUND');
  t.true(at(/uid 998/) < rules.length - 1);
});

test('no health checker configured: no owner RETURN beyond the daemon’s', (t) => {
  const rules = buildRules(spec([pod], { daemonUid: 990 }), 4).rules;
  t.deepEqual(
    rules.filter((r) => r.includes('--uid-owner')),
    ['-A AMBIT_OUTPUT -m owner --uid-owner 990 -j RETURN'],
  );
});
