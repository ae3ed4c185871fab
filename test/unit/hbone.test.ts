import test from 'ava';
import { forwardedFor, parseAuthority, parseForwardedFor } from '../../daemon/proxy/hbone.js';

test('forwarded: what the outbound side writes, the inbound side reads back', (t) => {
  t.is(parseForwardedFor(forwardedFor('198.18.1.2', 40000)), '198.18.1.2');
  t.is(parseForwardedFor(forwardedFor('2001:db8::1', 40000)), '2001:db8::1');
  t.is(parseForwardedFor('for=198.18.1.2'), '198.18.1.2');
  t.is(parseForwardedFor('for="[2001:db8::1]"'), '2001:db8::1');
  t.is(parseForwardedFor('for="198.18.1.2:80";host=x, for=1.2.3.4'), '198.18.1.2');
  t.is(parseForwardedFor('for="unknown:0"'), undefined);
  t.is(parseForwardedFor('by=x'), undefined);
});

test(':authority must be an IP literal and a port', (t) => {
  t.deepEqual(parseAuthority('198.18.0.1:8080'), { ip: '198.18.0.1', port: 8080 });
  t.deepEqual(parseAuthority('[2001:db8::1]:443'), { ip: '2001:db8::1', port: 443 });
  for (const bad of [
    'example.com:80',
    '198.18.0.1',
    '198.18.0.1:0',
    '198.18.0.1:65536',
    '[::1]80',
    '',
    ':80',
  ]) {
    t.is(parseAuthority(bad), undefined, bad);
  }
});
