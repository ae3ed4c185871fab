// What 15006 does with a plaintext connection, decided from the state in force: no socket here.
import test from 'ava';
import { decidePlaintext } from '../../daemon/proxy/inbound/plaintext.js';
import type { Policy } from '../../lib/mesh/model.js';
import { TRUST_DOMAIN, node, policy, storeOf, workload } from '../helpers/mesh.js';

const strict = workload({
  name: 'api-1',
  service: 'api',
  node: 'node-b',
  addresses: ['198.18.2.2'],
  ports: [8080],
  plaintextPorts: [9102],
});
const open = workload({
  name: 'legacy-1',
  service: 'legacy',
  node: 'node-b',
  addresses: ['198.18.2.3'],
  ports: [8080],
  mode: 'permissive',
});
const scopeOf = (policies: Policy[] = []) => ({
  store: storeOf({
    nodes: [node('node-b', '198.18.0.2')],
    workloads: [strict, open],
    policies,
  }),
  nodeName: 'node-b',
  trustDomain: TRUST_DOMAIN,
});

test('a strict workload refuses plaintext on every port, listed or not', (t) => {
  for (const port of [8080, 8081, 22]) {
    const d = decidePlaintext(scopeOf(), { ip: '198.18.2.2', port });
    t.false(d.ok, `port ${port}`);
    if (!d.ok) {
      t.is(d.kind, 'plaintext');
      t.is(d.workload?.name, 'api-1');
    }
  }
});

test('a strict workload takes plaintext on a port it names as plaintext', (t) => {
  const d = decidePlaintext(scopeOf(), { ip: '198.18.2.2', port: 9102 });
  t.true(d.ok);
});

test('a plaintext port is still subject to policy', (t) => {
  const deny = policy({ name: 'no-scrape', action: 'deny', service: 'api', ports: [9102] });
  const d = decidePlaintext(scopeOf([deny]), { ip: '198.18.2.2', port: 9102 });
  t.false(d.ok);
  if (!d.ok) t.is(d.kind, 'denied');
});

test('a permissive workload takes plaintext on a port it does not list', (t) => {
  t.true(decidePlaintext(scopeOf(), { ip: '198.18.2.3', port: 8081 }).ok);
});

test('an address of nobody here is an unknown workload', (t) => {
  const d = decidePlaintext(scopeOf(), { ip: '198.18.2.9', port: 8080 });
  t.false(d.ok);
  if (!d.ok) t.is(d.kind, 'unknown_workload');
});
