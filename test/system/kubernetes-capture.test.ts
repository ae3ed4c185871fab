// The capture rules follow the pods, on real iptables: the pod watch (against the API double of
// test/helpers/kube-api.ts) and the daemon's rule sync run as root in a network namespace of their own
// (unshare -n), and the nat table is read back after each pod change.
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import test from 'ava';
import { ROOT } from '../helpers/paths.js';

function whyNot(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root';
  for (const tool of ['unshare', 'iptables-save', 'openssl'])
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} is not on PATH`;
  return undefined;
}

const why = whyNot();

if (why) {
  console.log(`kubernetes capture test skipped: ${why}`);
  test.skip('the capture rules follow the pods of the node', () => {});
} else {
  test('the capture rules follow the pods of the node', (t) => {
    const child = join(ROOT, 'dist/test/helpers/kube-capture-child.js');
    const out = execFileSync(
      'unshare',
      ['-n', 'sh', '-c', `ip link set lo up && exec ${process.execPath} ${child}`],
      {
        encoding: 'utf8',
        timeout: 60_000,
      },
    );
    const steps = Object.fromEntries(
      out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { step: string; rules: string; runs: number; failures: number })
        .map((s) => [s.step, s]),
    );
    const rulesFor = (step: string, ip: string): string[] =>
      steps[step]!.rules.split('\n').filter((l) => l.includes(` ${ip}/32 `) || l.includes(` ${ip} `));
    t.true(steps.start!.rules.includes(':AMBIT_OUTBOUND'));
    t.deepEqual(rulesFor('start', '10.244.0.5'), []);
    // The pod's own address: outbound from it to 15001, and plaintext to it to 15006.
    t.true(rulesFor('added', '10.244.0.5').some((l) => l.includes('-s 10.244.0.5/32')));
    t.true(rulesFor('added', '10.244.0.5').some((l) => l.includes('-d 10.244.0.5/32')));
    // Restarted with a new IP: the rules move with it.
    t.deepEqual(rulesFor('moved', '10.244.0.5'), []);
    t.true(rulesFor('moved', '10.244.0.9').length >= 2);
    t.deepEqual(rulesFor('deleted', '10.244.0.9'), []);
    t.true(steps.deleted!.rules.includes(':AMBIT_OUTBOUND'));
    t.is(steps.deleted!.failures, 0);
    t.is(steps.deleted!.runs, 4);
  });
}
