// What a bind accepts: the own-listener check refuses a CONNECT to any address one of the daemon's
// listeners would take, whichever family the bind and the target are in (the tunnel's default bind is
// dual-stack where the host has IPv6).
import test from 'ava';
import { LocalAddresses, bindAccepts } from '../../lib/net/addresses.js';
import { socketAddress } from '../../lib/net/hostport.js';

// Interfaces are read from the host; the extra addresses stand for this node's own, of both families.
const local = new LocalAddresses(() => ['198.18.7.7', '2001:2::7']);

test('a dual-stack bind (::) accepts the local addresses of both families, and nothing else', (t) => {
  for (const ip of [
    '198.18.7.7',
    '2001:2::7',
    '2001:2:0::7',
    '::ffff:198.18.7.7',
    '127.0.0.1',
    '::1',
    '0.0.0.0',
  ])
    t.true(bindAccepts('::', ip, local), ip);
  for (const ip of ['198.18.7.8', '2001:2::8']) t.false(bindAccepts('::', ip, local), ip);
});

test('an IPv4 wildcard bind is counted as wide as a dual-stack one: a wrong yes only refuses', (t) => {
  for (const ip of ['198.18.7.7', '::ffff:198.18.7.7', '2001:2::7', '::1'])
    t.true(bindAccepts('0.0.0.0', ip, local), ip);
  t.false(bindAccepts('0.0.0.0', '2001:2::8', local));
});

test('a loopback bind accepts every loopback address; localhost is a loopback bind', (t) => {
  for (const bind of ['127.0.0.1', '::1', 'localhost'])
    for (const ip of ['127.0.0.2', '::1', '::ffff:127.0.0.1', '0.0.0.0', '::'])
      t.true(bindAccepts(bind, ip, local), `${bind} ${ip}`);
  for (const bind of ['127.0.0.1', '::1', 'localhost']) t.false(bindAccepts(bind, '198.18.7.7', local), bind);
});

test('a bind to one address accepts that address in any spelling', (t) => {
  t.true(bindAccepts('2001:2::7', '2001:2:0:0::7', local));
  t.false(bindAccepts('2001:2::7', '198.18.7.7', local));
  t.true(bindAccepts('198.18.7.7', '::ffff:198.18.7.7', local));
});

test('a socket end is printed bracketed when IPv6, unmapped when an IPv4-mapped peer', (t) => {
  t.is(socketAddress('2001:2::7', 8443), '[2001:2::7]:8443');
  t.is(socketAddress('::ffff:198.18.0.1', 40000), '198.18.0.1:40000');
  t.is(socketAddress('198.18.0.1', 80), '198.18.0.1:80');
  t.is(socketAddress(undefined, 80), undefined);
});
