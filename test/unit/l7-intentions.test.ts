import test from 'ava';
import { inPrecedenceOrder, precedenceOf } from '../../lib/consul/intentions.js';
import {
  type L7Request,
  type ServiceIntentions,
  authorizeRequest,
  validateEntries,
} from '../../lib/l7/index.js';

const entries = (sources: unknown[], name = 'api') =>
  validateEntries(
    [
      { Kind: 'service-defaults', Name: name, Protocol: 'http' },
      { Kind: 'service-intentions', Name: name, Sources: sources },
    ],
    'test',
  )[1] as ServiceIntentions;
const req = (path: string, method = 'GET', headers: Record<string, string> = {}): L7Request => ({
  method,
  path,
  headers,
  sourceIp: '198.18.0.1',
});
const web = { service: 'web' };

test('the first matching permission decides', (t) => {
  const e = entries([
    {
      Name: 'web',
      Permissions: [
        { Action: 'deny', HTTP: { PathPrefix: '/admin' } },
        { Action: 'allow', HTTP: { PathPrefix: '/' } },
      ],
    },
  ]);
  t.like(authorizeRequest(e, undefined, web, req('/admin/x'), true), {
    allowed: false,
    by: 'permission',
    permission: 0,
  });
  t.like(authorizeRequest(e, undefined, web, req('/x'), false), {
    allowed: true,
    by: 'permission',
    permission: 1,
  });
});

test('no matching permission falls to the default, not to a lower intention', (t) => {
  const e = entries([
    { Name: 'web', Permissions: [{ Action: 'allow', HTTP: { PathExact: '/ok', Methods: ['GET'] } }] },
    { Name: '*', Action: 'allow' },
  ]);
  t.like(authorizeRequest(e, undefined, web, req('/ok', 'POST'), false), {
    allowed: false,
    by: 'default',
    intention: { name: 'web', precedence: 9 },
  });
  t.like(authorizeRequest(e, undefined, { service: 'other' }, req('/ok', 'POST'), false), {
    allowed: true,
    by: 'intention',
    intention: { name: '*', precedence: 8 },
  });
});

test('precedence: an exact source beats a wildcard whatever the order written', (t) => {
  const e = entries([
    { Name: '*', Action: 'deny' },
    { Name: 'web', Action: 'allow' },
  ]);
  t.like(authorizeRequest(e, undefined, web, req('/'), false), {
    allowed: true,
    intention: { name: 'web', source: 1 },
  });
  t.like(authorizeRequest(e, undefined, { service: 'x' }, req('/'), true), {
    allowed: false,
    intention: { name: '*' },
  });
});

test('the wildcard destination entry applies below the service own', (t) => {
  const own = entries([{ Name: 'web', Action: 'allow' }]);
  const star = validateEntries(
    [
      {
        Kind: 'service-intentions',
        Name: '*',
        Sources: [
          { Name: '*', Action: 'deny' },
          { Name: 'web', Action: 'deny' },
        ],
      },
    ],
    'test',
  )[0] as ServiceIntentions;
  t.like(authorizeRequest(own, star, web, req('/'), true), {
    allowed: true,
    intention: { entry: 'service-intentions/api' },
  });
  t.like(authorizeRequest(own, star, { service: 'x' }, req('/'), true), {
    allowed: false,
    intention: { entry: 'service-intentions/*', precedence: 5 },
  });
});

test('peer, partition and sameness-group sources never match a local client', (t) => {
  const e = entries([
    { Name: 'web', Peer: 'other', Action: 'allow' },
    { Name: 'web', Partition: 'p2', Action: 'allow' },
    { Name: 'web', SamenessGroup: 'g', Action: 'allow' },
  ]);
  t.like(authorizeRequest(e, undefined, web, req('/'), false), { allowed: false, by: 'default' });
});

test('permission headers: exact, prefix, suffix, contains, regex, present, inverted, ignore case; methods', (t) => {
  const hp = (h: unknown) =>
    entries([{ Name: 'web', Permissions: [{ Action: 'allow', HTTP: { Header: [h] } }] }]);
  const allowed = (h: unknown, headers: Record<string, string>, method = 'GET') =>
    authorizeRequest(hp(h), undefined, web, req('/', method, headers), false).allowed;
  t.true(allowed({ Name: 'x-role', Exact: 'admin' }, { 'x-role': 'admin' }));
  t.false(allowed({ Name: 'x-role', Exact: 'admin' }, { 'x-role': 'Admin' }));
  t.true(allowed({ Name: 'x-role', Exact: 'admin', IgnoreCase: true }, { 'x-role': 'ADMIN' }));
  t.true(allowed({ Name: 'x-role', Prefix: 'ad' }, { 'x-role': 'admin' }));
  t.true(allowed({ Name: 'x-role', Suffix: 'in' }, { 'x-role': 'admin' }));
  t.true(allowed({ Name: 'x-role', Contains: 'dm' }, { 'x-role': 'admin' }));
  t.true(allowed({ Name: 'x-role', Regex: 'a.*n' }, { 'x-role': 'admin' }));
  t.true(allowed({ Name: 'x-role', Present: true }, { 'x-role': '' }));
  t.false(allowed({ Name: 'x-role', Present: true }, {}));
  t.true(allowed({ Name: 'x-role', Exact: 'guest', Invert: true }, { 'x-role': 'admin' }));
  t.true(allowed({ Name: 'x-role', Exact: 'guest', Invert: true }, {}));
  const m = entries([
    {
      Name: 'web',
      Permissions: [{ Action: 'deny', HTTP: { PathRegex: '/secret/.*', Methods: ['delete'] } }],
    },
  ]);
  t.false(authorizeRequest(m, undefined, web, req('/secret/1', 'DELETE'), true).allowed);
  t.true(authorizeRequest(m, undefined, web, req('/secret/1', 'GET'), true).allowed);
});

test('no intention at all: the default decides', (t) => {
  t.like(authorizeRequest(undefined, undefined, web, req('/'), false), { allowed: false, by: 'default' });
  t.like(authorizeRequest(undefined, undefined, web, req('/'), true), { allowed: true, by: 'default' });
});

test('Consul precedence computed when an intention carries none, kept when it does', (t) => {
  const i = (SourceName: string, SourceNS?: string, DestinationName = 'api', Precedence?: number) => ({
    SourceName,
    SourceNS,
    DestinationName,
    Precedence,
  });
  t.is(precedenceOf(i('web')), 9);
  t.is(precedenceOf(i('*')), 8);
  t.is(precedenceOf(i('*', '*')), 7);
  t.is(precedenceOf(i('web', undefined, '*')), 6);
  t.is(precedenceOf(i('*', undefined, '*')), 5);
  t.is(precedenceOf(i('*', '*', '*')), 4);
  t.is(precedenceOf(i('web', undefined, 'api', 3)), 3);
  t.deepEqual(
    inPrecedenceOrder([i('*', '*'), i('web', undefined, '*'), i('*'), i('web')]).map((x) => precedenceOf(x)),
    [9, 8, 7, 6],
  );
});

test('actions are Consul spelling only: "Allow" is refused', (t) => {
  t.throws(() => entries([{ Name: 'web', Action: 'Allow' }]), {
    message: /Sources\[0\]\.Action: must be set to "allow" or "deny"/,
  });
  t.throws(() => entries([{ Name: 'web', Permissions: [{ Action: 'DENY', HTTP: { PathPrefix: '/' } }] }]), {
    message: /Permissions\[0\]\.Action/,
  });
});

test('JWT requirements are not verified, so they fail closed', (t) => {
  const allowJwt = entries([
    { Name: 'web', Permissions: [{ Action: 'allow', JWT: { Providers: [{ Name: 'okta' }] } }] },
  ]);
  t.like(
    authorizeRequest(allowJwt, undefined, web, req('/'), true),
    { allowed: true, by: 'default' },
    'an allow needing a token never matches',
  );
  t.like(authorizeRequest(allowJwt, undefined, web, req('/'), false), { allowed: false });
  const denyJwt = entries([
    {
      Name: 'web',
      Permissions: [
        { Action: 'deny', JWT: { Providers: [{ Name: 'okta' }] } },
        { Action: 'allow', HTTP: { PathPrefix: '/' } },
      ],
    },
  ]);
  t.like(authorizeRequest(denyJwt, undefined, web, req('/'), true), {
    allowed: false,
    by: 'permission',
    permission: 0,
  });
  const top = validateEntries(
    [
      { Kind: 'service-defaults', Name: 'api', Protocol: 'http' },
      {
        Kind: 'service-intentions',
        Name: 'api',
        JWT: { Providers: [{ Name: 'okta' }] },
        Sources: [{ Name: 'web', Action: 'allow' }],
      },
    ],
    'test',
  )[1] as ServiceIntentions;
  const d = authorizeRequest(top, undefined, web, req('/'), true);
  t.false(d.allowed);
  t.regex(d.reason, /requires a JWT/);
  t.false(
    authorizeRequest(top, undefined, { service: 'nobody' }, req('/'), true).allowed,
    'even where the default allows',
  );
});
