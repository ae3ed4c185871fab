import test from 'ava';
import { parseAuthority } from '../../daemon/proxy/hbone.js';
import { parseMesh } from '../../lib/mesh/file/parse.js';
import { canonicalV6, unmapIp } from '../../lib/net/addresses.js';
import { joinHostPort, splitHostPort } from '../../lib/net/hostport.js';

test('joinHostPort brackets IPv6 hosts only', (t) => {
  t.is(joinHostPort('198.18.0.1', 15008), '198.18.0.1:15008');
  t.is(joinHostPort('2001:2::1', 15008), '[2001:2::1]:15008');
  t.is(joinHostPort('::', 0), '[::]:0');
});

test('splitHostPort takes apart both spellings and what joinHostPort writes', (t) => {
  t.deepEqual(splitHostPort('198.18.0.1:80'), { host: '198.18.0.1', port: '80' });
  t.deepEqual(splitHostPort('[2001:2::1]:443'), { host: '2001:2::1', port: '443' });
  t.deepEqual(splitHostPort('localhost:15000'), { host: 'localhost', port: '15000' });
  for (const [h, p] of [
    ['2001:2::5', 8443],
    ['198.19.255.254', 1],
  ] as const)
    t.deepEqual(splitHostPort(joinHostPort(h, p)), { host: h, port: String(p) });
});

test('splitHostPort refuses what is ambiguous or incomplete', (t) => {
  t.is(splitHostPort('fd00::10:8443'), undefined, 'an unbracketed IPv6 address has no clear port');
  t.is(splitHostPort('15008'), undefined);
  t.is(splitHostPort('[2001:2::1]'), undefined);
  t.is(splitHostPort('[2001:2::1]8080'), undefined);
  t.is(splitHostPort('[2001:2::1:80'), undefined);
});

test('parseAuthority wants an IP literal and a port between 1 and 65535', (t) => {
  t.deepEqual(parseAuthority('198.18.2.2:8082'), { ip: '198.18.2.2', port: 8082 });
  t.deepEqual(parseAuthority('[2001:2::2]:8082'), { ip: '2001:2::2', port: 8082 });
  t.is(parseAuthority('2001:2::2:8082'), undefined);
  t.is(parseAuthority('api.default:8080'), undefined);
  t.is(parseAuthority('198.18.2.2:0'), undefined);
  t.is(parseAuthority('198.18.2.2:65536'), undefined);
  t.is(parseAuthority(undefined), undefined);
});

test('unmapIp gives an IPv4-mapped address as IPv4 and leaves the rest alone', (t) => {
  t.is(unmapIp('::ffff:198.18.0.7'), '198.18.0.7');
  t.is(unmapIp('198.18.0.7'), '198.18.0.7');
  t.is(unmapIp('2001:2::7'), '2001:2::7');
  t.is(unmapIp('::ffff:c612:7'), '::ffff:c612:7');
});

test('an IPv6 address has one spelling in the mesh, the one sockets report', (t) => {
  t.is(canonicalV6('2001:2:0:0::2'), '2001:2::2');
  t.is(canonicalV6('2001:0002::00AB'), '2001:2::ab');
  t.is(canonicalV6('198.18.0.2'), '198.18.0.2');
  t.is(canonicalV6('::ffff:127.0.0.9'), '::ffff:127.0.0.9', 'as written, so that a message names it');
  const mesh = parseMesh(
    'nodes:\n  n1: { address: 198.18.0.1 }\nworkloads:\n  w: { node: n1, addresses: ["2001:2:0:0::2"], ports: [80] }\n',
    'mesh.yaml',
  );
  t.deepEqual(mesh.workloads[0]?.addresses, ['2001:2::2']);
});
