// The emulator's own behaviour (as Consul documents it), the client layer's blocking-query rules, and the
// intentions compiler. Emulator-only cases skip against a real agent.
import { X509Certificate } from 'node:crypto';
import { createServer as createHttpServer } from 'node:http';
import { type AddressInfo, type Socket, connect, createServer } from 'node:net';
import test, { type ExecutionContext } from 'ava';
import { authorize } from '../../daemon/rbac.js';
import { ConsulClient, Watch, describe403 } from '../../lib/consul/client.js';
import { type ConsulIntention, compileIntentions } from '../../lib/consul/intentions.js';
import { Secret } from '../../lib/consul/secret.js';
import { type ProbeDefinition, commandCheckRunner } from '../helpers/consul-checks.js';
import { ConsulEmulator, startConsul } from '../helpers/consul-emulator.js';
import { Netns, waitForOutput, whyNotRunnable } from '../helpers/netns.js';

const reg = (id: string, name: string, status = 'passing') => ({
  body: {
    ID: id,
    Name: name,
    Address: '127.0.0.1',
    Port: 8080,
    Tags: ['t'],
    Check: { Name: 'c', TTL: '30s', Status: status },
  },
});

test('registration shows in catalog and health; ?passing filters; blocking returns on change with a higher index', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const c = new ConsulClient({ address: consul.address });
  t.teardown(() => c.close());
  await c.put('/v1/agent/service/register', reg('api-1', 'api'));
  await c.put('/v1/agent/service/register', reg('api-2', 'api', 'critical'));
  const cat = await c.get<Record<string, string[]>>('/v1/catalog/services');
  t.deepEqual(cat.body.api, ['t']);
  t.true((cat.index ?? 0) >= 2);
  t.true(cat.knownLeader);
  const all = await c.get<unknown[]>('/v1/health/service/api');
  const passing = await c.get<unknown[]>('/v1/health/service/api', { query: { passing: true } });
  t.is(all.body.length, 2);
  t.is(passing.body.length, 1);
  const started = Date.now();
  const blocked = c.get<Record<string, string[]>>('/v1/catalog/services', {
    index: cat.index!,
    waitMs: 30_000,
  });
  setTimeout(() => void c.put('/v1/agent/service/register', reg('db-1', 'db')), 200);
  const next = await blocked;
  t.true(next.index! > cat.index!);
  t.truthy(next.body.db);
  t.true(Date.now() - started >= 150);
  // wait expires: same index back, no change.
  const idle = await c.get<unknown>('/v1/catalog/services', { index: next.index!, waitMs: 1000 });
  t.is(idle.index, next.index);
  await c.put('/v1/agent/service/deregister/db-1');
  t.falsy((await c.get<Record<string, string[]>>('/v1/catalog/services')).body.db);
});

test('Connect CA: roots, a leaf with the SPIFFE URI and validity, released on rotation', async (t) => {
  const emu = await ConsulEmulator.start({ leafTtlMs: 3600_000 });
  t.teardown(() => emu.close());
  const c = new ConsulClient({ address: emu.address });
  t.teardown(() => c.close());
  const roots = await c.get<{
    TrustDomain: string;
    ActiveRootID: string;
    Roots: { RootCert: string; Active: boolean }[];
  }>('/v1/agent/connect/ca/roots');
  t.is(roots.body.Roots.length, 1);
  const leaf = await c.get<{ CertPEM: string; ServiceURI: string; ValidAfter: string; ValidBefore: string }>(
    '/v1/agent/connect/ca/leaf/web',
  );
  t.is(leaf.body.ServiceURI, `spiffe://${roots.body.TrustDomain}/ns/default/dc/dc1/svc/web`);
  const cert = new X509Certificate(leaf.body.CertPEM);
  t.is(cert.subjectAltName, `URI:${leaf.body.ServiceURI}`);
  t.true(cert.checkIssued(new X509Certificate(roots.body.Roots[0]!.RootCert)));
  t.true(Date.parse(leaf.body.ValidBefore) - Date.parse(leaf.body.ValidAfter) >= 3600_000);
  const blockedLeaf = c.get<{ CertPEM: string }>('/v1/agent/connect/ca/leaf/web', {
    index: leaf.index!,
    waitMs: 30_000,
  });
  const blockedRoots = c.get<{ Roots: unknown[] }>('/v1/agent/connect/ca/roots', {
    index: roots.index!,
    waitMs: 30_000,
  });
  await emu.rotateRoots();
  const [l2, r2] = await Promise.all([blockedLeaf, blockedRoots]);
  t.is(r2.body.Roots.length, 2);
  t.not(l2.body.CertPEM, leaf.body.CertPEM);
});

test('intentions: exact and match in precedence order; config entries with cas; KV', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const c = new ConsulClient({ address: consul.address });
  t.teardown(() => c.close());
  await c.put('/v1/connect/intentions/exact', {
    query: { source: '*', destination: 'api' },
    body: { Action: 'deny' },
  });
  await c.put('/v1/connect/intentions/exact', {
    query: { source: 'web', destination: 'api' },
    body: { Action: 'allow' },
  });
  const m = await c.get<Record<string, ConsulIntention[]>>('/v1/connect/intentions/match', {
    query: { by: 'destination', name: 'api' },
  });
  t.deepEqual(
    m.body.api!.map((i) => [i.SourceName, i.Action]),
    [
      ['web', 'allow'],
      ['*', 'deny'],
    ],
  );
  const one = await c.get<ConsulIntention>('/v1/connect/intentions/exact', {
    query: { source: 'web', destination: 'api' },
  });
  t.is(one.body.Action, 'allow');
  // cas=0: create only if absent.
  const entry = { Kind: 'service-defaults', Name: 'api', Protocol: 'http' };
  t.true((await c.put<boolean>('/v1/config', { body: entry, query: { cas: 0 } })).body);
  t.false((await c.put<boolean>('/v1/config', { body: entry, query: { cas: 0 } })).body);
  const got = await c.get<{ ModifyIndex: number; Protocol: string }>('/v1/config/service-defaults/api');
  t.is(got.body.Protocol, 'http');
  t.true(
    (
      await c.put<boolean>('/v1/config', {
        body: { ...entry, Protocol: 'grpc' },
        query: { cas: got.body.ModifyIndex },
      })
    ).body,
  );
  t.false((await c.put<boolean>('/v1/config', { body: entry, query: { cas: got.body.ModifyIndex } })).body);
  const list = await c.get<{ Name: string }[]>('/v1/config/service-defaults');
  t.deepEqual(
    list.body.map((e) => e.Name),
    ['api'],
  );
  t.is((await c.get('/v1/config/service-router/none', { allow404: true })).status, 404);
  // KV: base64 values, 404 when missing.
  t.true((await c.put<boolean>('/v1/kv/a/b', { body: 'hello' })).body);
  const kv = await c.get<{ Value: string }[]>('/v1/kv/a/b');
  t.is(Buffer.from(kv.body[0]!.Value, 'base64').toString(), 'hello');
  t.is((await c.get('/v1/kv/missing', { allow404: true })).status, 404);
});

test('403 by token: unknown token and missing permission, named in the error; the token never in it', async (t) => {
  const emu = await ConsulEmulator.start({ acl: { tokens: { good: { 'service:read': '*' } } } });
  t.teardown(() => emu.close());
  const bad = new ConsulClient({ address: emu.address, token: new Secret('s3cr3t-value') });
  const limited = new ConsulClient({ address: emu.address, token: new Secret('good') });
  t.teardown(() => {
    bad.close();
    limited.close();
  });
  const e1 = await t.throwsAsync(bad.get('/v1/catalog/services'));
  t.regex(e1!.message, /not known to Consul \(ACL not found\)/);
  t.notRegex(e1!.message, /s3cr3t/);
  const e2 = await t.throwsAsync(limited.get('/v1/agent/connect/ca/leaf/web'));
  t.regex(e2!.message, /lacks service:write on "web"/);
  t.is(describe403('Permission denied', 'intentions:read'), 'lacks intentions:read');
  t.is(JSON.stringify({ token: new Secret('x') }), '{"token":"[redacted]"}');
});

test('a watch resets when the index goes backwards, never sends index 0 after a read, and does not spin', async (t) => {
  const emu = await ConsulEmulator.start();
  t.teardown(() => emu.close());
  const c = new ConsulClient({ address: emu.address });
  t.teardown(() => c.close());
  await c.put('/v1/agent/service/register', reg('a-1', 'a'));
  const w = new Watch<Record<string, string[]>>(c, '/v1/catalog/services', {
    minIntervalMs: 50,
    waitMs: 10_000,
  });
  const seen: string[][] = [];
  w.on('change', (body) => seen.push(Object.keys(body).sort()));
  w.start();
  t.teardown(() => w.stop());
  const until = async (f: () => boolean): Promise<void> => {
    for (let i = 0; i < 200 && !f(); i++) await new Promise((r) => setTimeout(r, 25));
  };
  await until(() => w.index > 1 && emu.requestLog.some((r) => r.blocking));
  await new Promise((r) => setTimeout(r, 50));
  const high = w.index;
  emu.setIndexBackwards();
  await until(() => w.resets === 1 && w.index >= 1 && w.index < high);
  t.is(w.resets, 1);
  t.true(w.index < high);
  await c.put('/v1/agent/service/register', reg('b-1', 'b'));
  await until(() => seen.some((s) => s.includes('b')));
  t.true(seen.some((s) => s.includes('b')));
  const blocking = emu.requestLog.filter((r) => r.path === '/v1/catalog/services');
  // Only the first read and the one right after the reset are non-blocking.
  t.is(blocking.filter((r) => !r.blocking).length, 2);
  const n = emu.requests;
  await new Promise((r) => setTimeout(r, 500));
  t.true(emu.requests - n <= 2, 'an idle watch makes no requests beyond its parked one');
});

test('a watch backs off with jitter while Consul is down and recovers when it is back', async (t) => {
  const emu = await ConsulEmulator.start();
  t.teardown(() => emu.close());
  const c = new ConsulClient({ address: emu.address });
  t.teardown(() => c.close());
  const w = new Watch<unknown>(c, '/v1/catalog/services', {
    minIntervalMs: 10,
    backoff: { initialMs: 50, maxMs: 200 },
  });
  let errors = 0;
  let oks = 0;
  w.on('error', () => errors++);
  w.on('ok', () => oks++);
  w.start();
  t.teardown(() => w.stop());
  for (let i = 0; i < 100 && oks === 0; i++) await new Promise((r) => setTimeout(r, 20));
  await emu.down();
  await new Promise((r) => setTimeout(r, 1000));
  // Backoff bounded at 200 ms (100–200 ms with equal jitter): at most ~10 attempts a second, not a spin.
  t.true(errors >= 2 && errors <= 12, `${errors} errors in 1 s`);
  const before = oks;
  await emu.up();
  for (let i = 0; i < 100 && oks === before; i++) await new Promise((r) => setTimeout(r, 20));
  t.true(oks > before);
});

test('intentions compile to policies that decide exactly as Consul would', (t) => {
  const i = (
    SourceName: string,
    Action: string,
    Precedence: number,
    Permissions?: unknown[],
  ): ConsulIntention => ({
    SourceName,
    DestinationName: 'api',
    Action,
    Precedence,
    Permissions: Permissions ?? null,
  });
  const peer = (service: string) => ({
    principal: `spiffe://td/ns/default/dc/dc1/svc/${service}`,
    trustDomain: 'td',
    namespace: 'default',
    service,
  });
  const decide = (list: ConsulIntention[], def: 'allow' | 'deny', who: string): boolean => {
    const { policies } = compileIntentions({ service: 'api', namespace: 'default' }, list, def);
    return authorize(policies, def, peer(who), 80, 'td').allowed;
  };
  for (const def of ['allow', 'deny'] as const) {
    // No intentions: the default.
    t.is(decide([], def, 'web'), def === 'allow');
    // Specific beats wildcard, both ways.
    const a = [i('web', 'allow', 9), i('*', 'deny', 8)];
    t.true(decide(a, def, 'web'));
    t.false(decide(a, def, 'db'));
    const b = [i('web', 'deny', 9), i('*', 'allow', 8)];
    t.false(decide(b, def, 'web'));
    t.true(decide(b, def, 'db'));
    // Only a named allow: others fall to the default.
    t.true(decide([i('web', 'allow', 9)], def, 'web'));
    t.is(decide([i('web', 'allow', 9)], def, 'db'), def === 'allow');
    t.is(decide([i('web', 'deny', 9)], def, 'db'), def === 'allow');
    // L7 (Permissions) denies at L4.
    t.false(decide([i('web', '', 9, [{ Action: 'allow' }])], def, 'web'));
  }
});

test('reads Consul filters by ACL answer 200 with X-Consul-Results-Filtered-By-ACLs, never 403', async (t) => {
  const consul = await startConsul({ acl: true });
  t.teardown(() => consul.close());
  const admin = new ConsulClient({ address: consul.address, token: new Secret(consul.managementToken!) });
  const noNode = new ConsulClient({
    address: consul.address,
    token: new Secret(
      await consul.createToken({
        hcl: 'service_prefix "" { policy = "read" }',
        emulator: { 'service:read': '*' },
      }),
    ),
  });
  const anonymous = new ConsulClient({ address: consul.address });
  t.teardown(() => {
    for (const c of [admin, noNode, anonymous]) c.close();
  });
  await admin.put('/v1/agent/service/register', reg('web-1', 'web'));
  const whole = await admin.get<unknown[]>('/v1/health/service/web');
  t.is(whole.body.length, 1);
  t.false(whole.filteredByAcls);
  t.is(whole.defaultAclPolicy, 'deny');
  // service:read without node:read: the instance is filtered out, and the answer says so.
  const filtered = await noNode.get<unknown[]>('/v1/health/service/web');
  t.is(filtered.status, 200);
  t.deepEqual(filtered.body, []);
  t.true(filtered.filteredByAcls);
  t.false((await noNode.get('/v1/catalog/services')).filteredByAcls);
  // The anonymous token is filtered too, but Consul never tells it (maskResultsFilteredByACLs).
  const anon = await anonymous.get<Record<string, unknown>>('/v1/catalog/services');
  t.is(anon.status, 200);
  t.false('web' in anon.body);
  t.false(anon.filteredByAcls);
  // Without ACLs every answer says the default is allow.
  const open = await startConsul();
  t.teardown(() => open.close());
  const c = new ConsulClient({ address: open.address });
  t.teardown(() => c.close());
  t.is((await c.get('/v1/catalog/services')).defaultAclPolicy, 'allow');
});

test('intentions and service-intentions config entries are one store, both ways', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const c = new ConsulClient({ address: consul.address });
  t.teardown(() => c.close());
  await c.put('/v1/connect/intentions/exact', {
    query: { source: 'web', destination: 'api' },
    body: { Action: 'allow' },
  });
  const entry = await c.get<{ Kind: string; Sources: { Name: string; Action: string }[] }>(
    '/v1/config/service-intentions/api',
  );
  t.is(entry.body.Kind, 'service-intentions');
  t.deepEqual(
    entry.body.Sources.map((s) => [s.Name, s.Action]),
    [['web', 'allow']],
  );
  t.true(
    (
      await c.put<boolean>('/v1/config', {
        body: { Kind: 'service-intentions', Name: 'db', Sources: [{ Name: 'web', Action: 'deny' }] },
      })
    ).body,
  );
  const match = await c.get<Record<string, { SourceName: string; Action: string; Precedence: number }[]>>(
    '/v1/connect/intentions/match',
    { query: { by: 'destination', name: 'db' } },
  );
  t.deepEqual(
    match.body.db!.map((i) => [i.SourceName, i.Action, i.Precedence]),
    [['web', 'deny', 9]],
  );
  const exact = await c.get<{ Action: string }>('/v1/connect/intentions/exact', {
    query: { source: 'web', destination: 'db' },
  });
  t.is(exact.body.Action, 'deny');
  // The last source deleted takes the config entry with it.
  await c.delete('/v1/connect/intentions/exact', { query: { source: 'web', destination: 'api' } });
  t.is((await c.get('/v1/config/service-intentions/api', { allow404: true })).status, 404);
});

test('a blocking query with an index ahead of the server waits for its wait, then answers', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const c = new ConsulClient({ address: consul.address });
  t.teardown(() => c.close());
  const now = await c.get('/v1/catalog/services');
  const started = Date.now();
  const ahead = await c.get('/v1/catalog/services', { index: now.index! + 1000, waitMs: 1000 });
  t.true(Date.now() - started >= 950, `answered after ${Date.now() - started} ms`);
  t.true(ahead.index! <= now.index! + 1, 'the server answers with its own index');
});

test('above limits.http_max_conns_per_client (200) a new connection is answered 429 and closed', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const [host, port] = consul.address.split(':') as [string, string];
  const socks: Socket[] = [];
  t.teardown(() => {
    for (const s of socks) s.destroy();
  });
  const ask = (s: Socket): Promise<string> =>
    new Promise((resolve) => {
      let text = '';
      const timer = setTimeout(() => resolve(text), 5000);
      s.on('data', (d: Buffer) => {
        text += d.toString('latin1');
        if (/\r\n\r\n/.test(text)) {
          clearTimeout(timer);
          resolve(text);
        }
      });
      s.on('close', () => resolve(text));
      s.write(`GET /v1/status/leader HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    });
  const open = async (): Promise<Socket> => {
    const s = connect(Number(port), host);
    s.on('error', () => {});
    socks.push(s);
    await new Promise((r) => s.once('connect', r));
    return s;
  };
  // 200 connections held open, each having had an answer (so the server has counted it).
  for (let i = 0; i < 200; i++) {
    const head = await ask(await open());
    if (!head.startsWith('HTTP/1.1 200')) return t.fail(`connection ${i + 1}: ${head.slice(0, 40)}`);
  }
  t.regex(await ask(await open()), /^HTTP\/1\.1 429/);
  // One closed makes room again.
  socks[0]!.destroy();
  await new Promise((r) => setTimeout(r, 100));
  t.regex(await ask(await open()), /^HTTP\/1\.1 200/);
  if (consul.emulator) t.is(consul.emulator.connectionsRefused, 1);
});

// Config entries as Consul decodes them (test/helpers/consul-config-entries.ts names the Consul source of
// each rule). Written with fetch so the status and Consul's own message are visible; run against a real
// agent as well when one is installed.
async function writeEntry(address: string, body: unknown, method = 'PUT', path = '/v1/config') {
  const res = await fetch(`http://${address}${path}`, { method, body: JSON.stringify(body) });
  return { status: res.status, text: await res.text() };
}

test('config entries: an unknown key is refused 400 with Consul message; key case is folded', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  // agent/structs/config_entry_ce.go validateUnusedKeys via agent/config_endpoint.go ConfigApply.
  const bad = await writeEntry(consul.address, { Kind: 'service-defaults', Name: 'api', Protocl: 'http' });
  t.is(bad.status, 400);
  t.regex(bad.text, /^Request decoding failed: /);
  t.true(bad.text.includes('invalid config key "Protocl"'), bad.text);
  const kind = await writeEntry(consul.address, { Kind: 'service-default', Name: 'api' });
  t.is(kind.status, 400);
  t.true(kind.text.includes('invalid config entry kind: service-default'), kind.text);
  // mapstructure matches field names regardless of case; the answer carries the struct spelling.
  const ok = await writeEntry(consul.address, { kind: 'service-defaults', name: 'api', protocol: 'HTTP' });
  t.is(ok.status, 200, ok.text);
  const got = (await (await fetch(`http://${consul.address}/v1/config/service-defaults/api`)).json()) as {
    Protocol: string;
    Name: string;
  };
  t.is(got.Name, 'api');
  t.is(got.Protocol, 'http'); // ServiceConfigEntry.Normalize lowercases the protocol.
});

test('config entries: a router or splitter needs an http, http2 or grpc protocol (500 otherwise)', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const router = {
    Kind: 'service-router',
    Name: 'web',
    Routes: [{ Match: { HTTP: { PathPrefix: '/admin' } }, Destination: { Service: 'admin' } }],
  };
  const splitter = {
    Kind: 'service-splitter',
    Name: 'web',
    Splits: [
      { Weight: 90, Service: 'web' },
      { Weight: 10, Service: 'canary' },
    ],
  };
  // agent/consul/discoverychain/compile.go: tcp by default.
  const refused = await writeEntry(consul.address, router);
  t.is(refused.status, 500);
  t.true(
    refused.text.includes(
      'discovery chain "web" uses a protocol "tcp" that does not permit advanced routing or splitting behavior',
    ),
    refused.text,
  );
  t.is((await writeEntry(consul.address, splitter)).status, 500);
  // An explicit tcp in service-defaults is refused the same way.
  for (const name of ['web', 'admin', 'canary'])
    t.is(
      (await writeEntry(consul.address, { Kind: 'service-defaults', Name: name, Protocol: 'tcp' })).status,
      200,
    );
  t.is((await writeEntry(consul.address, router)).status, 500);
  for (const name of ['web', 'admin', 'canary'])
    t.is(
      (await writeEntry(consul.address, { Kind: 'service-defaults', Name: name, Protocol: 'http' })).status,
      200,
    );
  t.is((await writeEntry(consul.address, router)).status, 200);
  t.is((await writeEntry(consul.address, splitter)).status, 200);
  // Taking the protocol away under a router is refused the same way.
  const back = await writeEntry(consul.address, { Kind: 'service-defaults', Name: 'web', Protocol: 'tcp' });
  t.is(back.status, 500);
  t.true(back.text.includes('does not permit advanced routing'), back.text);
});

test('config entries: Methods uppercased in routes and intention permissions; durations in Go form', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const a = consul.address;
  for (const name of ['web', 'admin'])
    t.is((await writeEntry(a, { Kind: 'service-defaults', Name: name, Protocol: 'http' })).status, 200);
  const put = await writeEntry(a, {
    Kind: 'service-router',
    Name: 'web',
    Routes: [
      {
        Match: { HTTP: { PathPrefix: '/admin', Methods: ['get', 'Post'] } },
        Destination: { Service: 'admin', RequestTimeout: '5s', IdleTimeout: '90000ms' },
      },
    ],
  });
  t.is(put.status, 200, put.text);
  const router = (await (await fetch(`http://${a}/v1/config/service-router/web`)).json()) as {
    Routes: {
      Match: { HTTP: { Methods: string[] } };
      Destination: { RequestTimeout: string; IdleTimeout: string };
    }[];
  };
  // ServiceRouterConfigEntry.Normalize; ServiceRouteDestination.MarshalJSON (time.Duration.String()).
  t.deepEqual(router.Routes[0]!.Match.HTTP.Methods, ['GET', 'POST']);
  t.is(router.Routes[0]!.Destination.RequestTimeout, '5s');
  t.is(router.Routes[0]!.Destination.IdleTimeout, '1m30s');
  const bad = await writeEntry(a, {
    Kind: 'service-router',
    Name: 'web',
    Routes: [{ Destination: { Service: 'admin', RequestTimeout: 'soon' } }],
  });
  t.is(bad.status, 400);
  const ixn = await writeEntry(a, {
    Kind: 'service-intentions',
    Name: 'web',
    Sources: [
      { Name: 'admin', Permissions: [{ Action: 'allow', HTTP: { PathPrefix: '/', Methods: ['delete'] } }] },
    ],
  });
  t.is(ixn.status, 200, ixn.text);
  const entry = (await (await fetch(`http://${a}/v1/config/service-intentions/web`)).json()) as {
    Sources: { Permissions: { HTTP: { Methods: string[] } }[] }[];
  };
  // agent/structs/config_entry_intentions.go Normalize.
  t.deepEqual(entry.Sources[0]!.Permissions[0]!.HTTP.Methods, ['DELETE']);
});

test('config entries: proxy-defaults global Config.protocol is the protocol of a service without its own', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const a = consul.address;
  const splitter = {
    Kind: 'service-splitter',
    Name: 'web',
    Splits: [
      { Weight: 50, Service: 'web' },
      { Weight: 50, Service: 'canary' },
    ],
  };
  t.is((await writeEntry(a, splitter)).status, 500);
  const pd = await writeEntry(a, { Kind: 'proxy-defaults', Name: 'global', Config: { protocol: 'http' } });
  t.is(pd.status, 200, pd.text);
  const ok = await writeEntry(a, splitter);
  t.is(ok.status, 200, ok.text);
  // Deleting the proxy-defaults would leave the splitter on tcp: refused.
  const del = await fetch(`http://${a}/v1/config/proxy-defaults/global`, { method: 'DELETE' });
  t.is(del.status, 500);
});

const readEntry = async <T>(address: string, kind: string, name: string): Promise<T> =>
  (await (await fetch(`http://${address}/v1/config/${kind}/${name}`)).json()) as T;

/** Writes service-defaults with this protocol for each name; the router and splitter tests need http. */
async function protocols(t: ExecutionContext, address: string, protocol: string, ...names: string[]) {
  for (const name of names) {
    const r = await writeEntry(address, { Kind: 'service-defaults', Name: name, Protocol: protocol });
    t.is(r.status, 200, r.text);
  }
}

test('config entries: an unknown key is refused at any depth, named by its path', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const a = consul.address;
  await protocols(t, a, 'http', 'web', 'admin');
  // mapstructure's Metadata.Unused paths, through validateUnusedKeys.
  const cases: [unknown, string][] = [
    [
      {
        Kind: 'service-router',
        Name: 'web',
        Routes: [{ Match: { HTTP: { PathPrefx: '/admin' } }, Destination: { Service: 'admin' } }],
      },
      'invalid config key "Routes[0].Match.HTTP.PathPrefx"',
    ],
    [
      { Kind: 'service-resolver', Name: 'web', Subsets: { v1: { Filtr: 'Service.Meta.version == v1' } } },
      'invalid config key "Subsets[v1].Filtr"',
    ],
    [
      { Kind: 'service-defaults', Name: 'web', TransparentProxy: { OutboundListenerPrt: 15001 } },
      'invalid config key "TransparentProxy.OutboundListenerPrt"',
    ],
    [
      {
        Kind: 'service-intentions',
        Name: 'web',
        Sources: [{ Name: 'admin', Action: 'allow', Namespace: 'x' }],
      },
      'invalid config key "Sources[0].Namespace", namespaces are a consul enterprise feature',
    ],
  ];
  for (const [body, message] of cases) {
    const r = await writeEntry(a, body);
    t.is(r.status, 400, r.text);
    t.regex(r.text, /^Request decoding failed: /);
    t.true(r.text.includes(message), r.text);
  }
  // A value of the wrong type is a decoding failure that names the field.
  const typed = await writeEntry(a, { Kind: 'service-defaults', Name: 'web', TransparentProxy: 'yes' });
  t.is(typed.status, 400, typed.text);
  t.true(typed.text.includes("'TransparentProxy'"), typed.text);
  // The snake_case aliases of nested fields are Consul's too, and come back in the struct spelling.
  const snake = await writeEntry(a, {
    Kind: 'service-router',
    Name: 'web',
    Routes: [
      { Match: { HTTP: { path_prefix: '/admin' } }, Destination: { service: 'admin', num_retries: 2 } },
    ],
  });
  t.is(snake.status, 200, snake.text);
  const got = await readEntry<{
    Routes: { Match: { HTTP: { PathPrefix: string } }; Destination: { NumRetries: number } }[];
  }>(a, 'service-router', 'web');
  t.is(got.Routes[0]!.Match.HTTP.PathPrefix, '/admin');
  t.is(got.Routes[0]!.Destination.NumRetries, 2);
});

test('config entries: splitter weights sum to 100, each rounded to 0.01', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const a = consul.address;
  await protocols(t, a, 'http', 'web', 'canary');
  const split = (...weights: number[]) => ({
    Kind: 'service-splitter',
    Name: 'web',
    Splits: weights.map((Weight, i) => ({
      Weight,
      Service: i === 0 ? 'web' : 'canary',
      ServiceSubset: i > 1 ? `s${i}` : '',
    })),
  });
  // ServiceSplitterConfigEntry.Validate: 500 with the sum it found.
  const short = await writeEntry(a, split(90, 5));
  t.is(short.status, 500);
  t.true(short.text.includes('the sum of all split weights must be 100, not 95.000000'), short.text);
  // 33.333 rounds to 33.33: three of them are 99.99, refused.
  t.is((await writeEntry(a, split(33.333, 33.333, 33.333))).status, 500);
  const dup = await writeEntry(a, {
    Kind: 'service-splitter',
    Name: 'web',
    Splits: [
      { Weight: 50, Service: 'canary' },
      { Weight: 50, Service: 'canary' },
    ],
  });
  t.is(dup.status, 500);
  t.true(dup.text.includes('split destination occurs more than once: service="canary"'), dup.text);
  // Within the rounding, accepted and stored rounded.
  const ok = await writeEntry(a, split(50.004, 49.996));
  t.is(ok.status, 200, ok.text);
  const got = await readEntry<{ Splits: { Weight: number }[] }>(a, 'service-splitter', 'web');
  t.deepEqual(
    got.Splits.map((s) => s.Weight),
    [50, 50],
  );
});

test('config entries: router routes are validated as Consul does (500 with its message)', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const a = consul.address;
  await protocols(t, a, 'http', 'web', 'admin');
  const route = (match: unknown, destination: unknown = { Service: 'admin' }) => ({
    Kind: 'service-router',
    Name: 'web',
    Routes: [{ Match: { HTTP: match }, Destination: destination }],
  });
  const cases: [unknown, string][] = [
    [route({ PathPrefix: 'admin' }), `Route[0] PathPrefix doesn't start with '/': "admin"`],
    [
      route({ PathExact: '/a', PathPrefix: '/b' }),
      'Route[0] should only contain at most one of PathExact, PathPrefix, or PathRegex',
    ],
    [
      route({ PathPrefix: '/', Methods: ['get', 'fetch'] }),
      'Route[0] Methods contains an invalid method "FETCH"',
    ],
    [route({ PathPrefix: '/', Methods: ['GET', 'get'] }), 'Route[0] Methods contains "GET" more than once'],
    [
      route({ Header: [{ Name: 'x-a', Exact: '1', Prefix: '1' }] }),
      'Route[0] Header[0] should only contain one of Present, Exact, Prefix, Suffix, or Regex',
    ],
    [
      route({ Methods: ['GET'] }, { Service: 'admin', PrefixRewrite: '/' }),
      'Route[0] cannot make use of PrefixRewrite without configuring either PathExact or PathPrefix',
    ],
  ];
  for (const [body, message] of cases) {
    const r = await writeEntry(a, body);
    t.is(r.status, 500, r.text);
    t.true(r.text.includes(message), `${message} / ${r.text}`);
  }
  t.is((await writeEntry(a, route({ PathPrefix: '/admin', Methods: ['get'] }))).status, 200);
});

test('config entries: resolver subsets, redirect and failover are validated as Consul does', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const a = consul.address;
  const resolver = (extra: Record<string, unknown>) => ({ Kind: 'service-resolver', Name: 'web', ...extra });
  const subsets = {
    v1: { Filter: 'Service.Meta.version == v1' },
    v2: { Filter: 'Service.Meta.version == "v2" and "canary" in Service.Tags' },
  };
  const cases: [unknown, string][] = [
    [
      resolver({ Redirect: { Service: 'api' }, Failover: { '*': { Service: 'api' } } }),
      'Redirect and Failover cannot both be set',
    ],
    [resolver({ Subsets: subsets, DefaultSubset: 'v3' }), 'DefaultSubset "v3" is not a valid subset'],
    [resolver({ Subsets: { V1: { Filter: 'Service.Meta.version == v1' } } }), 'Subset "V1" is invalid: '],
    [
      resolver({ Subsets: { v1: { Filter: 'Service.Meta.version ==' } } }),
      'Filter for subset "v1" is not a valid expression',
    ],
    [
      resolver({ Subsets: subsets, Failover: { v9: { Service: 'api' } } }),
      'Bad Failover["v9"]: not a valid subset',
    ],
    [resolver({ Redirect: {} }), 'Redirect is empty'],
    [
      resolver({ Redirect: { ServiceSubset: 'v1' } }),
      'Redirect.ServiceSubset defined without Redirect.Service',
    ],
    [resolver({ ConnectTimeout: '-1s' }), "Bad ConnectTimeout '-1s', must be >= 0"],
    [
      resolver({ LoadBalancer: { Policy: 'fastest' } }),
      'Bad LoadBalancer policy: "fastest" is not supported',
    ],
    [
      resolver({ LoadBalancer: { Policy: 'random', HashPolicies: [{ SourceIP: true }] } }),
      'HashPolicies specified for non-hash-based Policy: "random"',
    ],
  ];
  for (const [body, message] of cases) {
    const r = await writeEntry(a, body);
    t.is(r.status, 500, r.text);
    t.true(r.text.includes(message), `${message} / ${r.text}`);
  }
  // Filters in the forms Consul's documentation gives parse.
  const more = {
    tagged: { Filter: 'Service.Tags contains canary' },
    notv1: { Filter: 'not (Service.Meta.version == v1)' },
    hasver: { Filter: 'Service.Meta.version is not empty or Service.ID != "web-1"' },
    zone: { Filter: 'Node.Meta.zone matches "^us-" and Checks.Status == passing' },
  };
  const filters = await writeEntry(a, resolver({ Subsets: { ...subsets, ...more } }));
  t.is(filters.status, 200, filters.text);
  const ok = await writeEntry(
    a,
    resolver({
      Subsets: subsets,
      DefaultSubset: 'v1',
      ConnectTimeout: '90s',
      Failover: { '*': { Datacenters: ['dc2'] } },
    }),
  );
  t.is(ok.status, 200, ok.text);
  const got = await readEntry<{ ConnectTimeout: string; DefaultSubset: string }>(
    a,
    'service-resolver',
    'web',
  );
  t.is(got.ConnectTimeout, '1m30s');
  t.is(got.DefaultSubset, 'v1');
});

test('config entries: service-intentions sources are validated, normalised and sorted as Consul does', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const a = consul.address;
  const ixn = (Name: string, ...Sources: unknown[]) => ({ Kind: 'service-intentions', Name, Sources });
  const l7 = [{ Action: 'allow', HTTP: { PathPrefix: '/' } }];
  const cases: [unknown, string][] = [
    [ixn('api'), 'At least one source is required'],
    [ixn('api', { Name: 'web' }), "Sources[0].Action must be set to 'allow' or 'deny'"],
    [
      ixn('api', { Name: 'web', Action: 'allow', Permissions: l7 }),
      'Sources[0].Action must be omitted if Permissions are specified',
    ],
    [
      ixn('api', { Name: 'web', Action: 'allow' }, { Name: 'web', Action: 'deny' }),
      'Sources[1] defines "web" more than once',
    ],
    [
      ixn('*', { Name: 'web', Permissions: l7 }),
      'Sources[0].Permissions cannot be specified on intentions with wildcarded destinations',
    ],
    [
      ixn('api', { Name: 'we*', Action: 'allow' }),
      "Sources[0].Name: wildcard character '*' cannot be used with partial values",
    ],
    [
      ixn('api', { Name: 'web', Permissions: [{ Action: 'allow' }] }),
      'Sources[0].Permissions[0].HTTP is required',
    ],
    [
      ixn('api', { Name: 'web', Permissions: [{ Action: 'permit', HTTP: { PathPrefix: '/' } }] }),
      "Sources[0].Permissions[0].Action must be set to 'allow' or 'deny'",
    ],
    [
      ixn('api', { Name: 'web', Permissions: [{ Action: 'allow', HTTP: {} }] }),
      'Sources[0].Permissions[0].HTTP should not be empty',
    ],
  ];
  for (const [body, message] of cases) {
    const r = await writeEntry(a, body);
    t.is(r.status, 500, r.text);
    t.true(r.text.includes(message), `${message} / ${r.text}`);
  }
  // Normalize: Type defaults to consul, Precedence is computed, higher precedence first.
  const ok = await writeEntry(a, ixn('api', { Name: '*', Action: 'deny' }, { Name: 'web', Action: 'allow' }));
  t.is(ok.status, 200, ok.text);
  const got = await readEntry<{ Sources: { Name: string; Precedence: number; Type: string }[] }>(
    a,
    'service-intentions',
    'api',
  );
  t.deepEqual(
    got.Sources.map((s) => [s.Name, s.Precedence, s.Type]),
    [
      ['web', 9, 'consul'],
      ['*', 8, 'consul'],
    ],
  );
});

test('config entries: service-defaults, proxy-defaults and Meta rules (500 with Consul message)', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const a = consul.address;
  const meta = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v']));
  const cases: [unknown, string][] = [
    [
      { Kind: 'service-defaults', Name: 'web', MutualTLSMode: 'bogus' },
      'Invalid MutualTLSMode "bogus". Must be one of "", "strict", or "permissive".',
    ],
    [
      { Kind: 'service-defaults', Name: '*' },
      'service-defaults name must be the name of a service, and not a wildcard',
    ],
    [
      { Kind: 'service-defaults', Name: 'web', Destination: { Addresses: [], Port: 443 } },
      'Destination must contain at least one valid address',
    ],
    [{ Kind: 'service-defaults', Name: 'web', Meta: meta }, 'Meta exceeds maximum element count 64'],
    [{ Kind: 'proxy-defaults', Name: 'other' }, 'invalid name ("other"), only "global" is supported'],
  ];
  for (const [body, message] of cases) {
    const r = await writeEntry(a, body);
    t.is(r.status, 500, r.text);
    t.true(r.text.includes(message), `${message} / ${r.text}`);
  }
  // proxy-defaults without a name is the global one.
  t.is((await writeEntry(a, { Kind: 'proxy-defaults', Config: { protocol: 'http' } })).status, 200);
  t.is((await readEntry<{ Name: string }>(a, 'proxy-defaults', 'global')).Name, 'global');
});

// --- health checks that run -------------------------------------------------------------------------------

type HealthCheck = { CheckID: string; ServiceID: string; Status: string; Output: string };

async function serviceCheck(c: ConsulClient, service: string, id: string) {
  const r = await c.get<{ Checks: HealthCheck[] }[]>(`/v1/health/service/${service}`);
  return { index: r.index!, check: r.body.flatMap((e) => e.Checks).find((k) => k.ServiceID === id) };
}

/** Polls the check until `want` holds; bounded by count and time. */
async function checkUntil(c: ConsulClient, service: string, id: string, want: (k: HealthCheck) => boolean) {
  let last = await serviceCheck(c, service, id);
  for (let i = 0; i < 100 && !(last.check && want(last.check)); i++) {
    await new Promise((r) => setTimeout(r, 100));
    last = await serviceCheck(c, service, id);
  }
  return last;
}

test('a TCP check connects every Interval: passing while the workload listens, critical once it is gone', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const c = new ConsulClient({ address: consul.address });
  t.teardown(() => c.close());
  const server = createServer((s) => s.destroy());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  await c.put('/v1/agent/service/register', {
    body: {
      ID: 'tcp-1',
      Name: 'tcp',
      Address: '127.0.0.1',
      Port: port,
      Check: { Name: 'accepts', TCP: `127.0.0.1:${port}`, Interval: '1s', Timeout: '1s' },
    },
  });
  // Registered without a Status: critical until the first run, which comes within the interval.
  const up = await checkUntil(c, 'tcp', 'tcp-1', (k) => k.Status === 'passing');
  t.is(up.check?.Status, 'passing');
  t.is(up.check?.Output, `TCP connect 127.0.0.1:${port}: Success`);
  // The check keeps running, but nothing changes: a blocking query waits out its whole wait.
  const idle = await c.get<unknown>('/v1/health/service/tcp', { index: up.index, waitMs: 2500 });
  t.is(idle.index, up.index, 'the index moved while the check kept passing');
  // The workload dies: critical within the interval, with Go's dial error.
  await new Promise((r) => server.close(r));
  const down = await checkUntil(c, 'tcp', 'tcp-1', (k) => k.Status === 'critical');
  t.is(down.check?.Status, 'critical');
  t.regex(
    down.check?.Output ?? '',
    new RegExp(`^dial tcp 127\\.0\\.0\\.1:${port}: connect: connection refused$`),
  );
  t.true(down.index > up.index);
  const passing = await c.get<unknown[]>('/v1/health/service/tcp', { query: { passing: true } });
  t.deepEqual(passing.body, []);
});

test('an HTTP check: 2xx passing, 429 warning, anything else critical, worded as Consul words it', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const c = new ConsulClient({ address: consul.address });
  t.teardown(() => c.close());
  let code = 200;
  const agents = new Set<string>();
  const server = createHttpServer((req, res) => {
    agents.add(String(req.headers['user-agent']));
    res.writeHead(code).end('ok');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/health`;
  await c.put('/v1/agent/service/register', {
    body: { ID: 'http-1', Name: 'http', Check: { Name: 'health', HTTP: url, Interval: '1s' } },
  });
  const ok = await checkUntil(c, 'http', 'http-1', (k) => k.Status === 'passing');
  t.is(ok.check?.Output, `HTTP GET ${url}: 200 OK Output: ok`);
  code = 429;
  const busy = await checkUntil(c, 'http', 'http-1', (k) => k.Status === 'warning');
  t.is(busy.check?.Output, `HTTP GET ${url}: 429 Too Many Requests Output: ok`);
  code = 503;
  const failing = await checkUntil(c, 'http', 'http-1', (k) => k.Status === 'critical');
  t.is(failing.check?.Output, `HTTP GET ${url}: 503 Service Unavailable Output: ok`);
  t.deepEqual([...agents], ['Consul Health Check']);
  // A request that fails is critical with Go's url.Error. Registered passing, so the first run is a status
  // change and its Output is synced at once (an Output-only change would wait check_update_interval).
  // Port 9 (discard): nothing listens there, and no test's free port can be it.
  const closed = 'http://127.0.0.1:9/';
  await c.put('/v1/agent/service/register', {
    body: { ID: 'http-2', Name: 'http', Check: { HTTP: closed, Interval: '1s', Status: 'passing' } },
  });
  const refused = await checkUntil(c, 'http', 'http-2', (k) => k.Status === 'critical');
  t.regex(
    refused.check?.Output ?? '',
    /^Get "http:\/\/127\.0\.0\.1:9\/": dial tcp 127\.0\.0\.1:9: connect: connection refused$/,
  );
});

test('check definitions are validated on registration as the agent does (400)', async (t) => {
  const consul = await startConsul();
  t.teardown(() => consul.close());
  const register = async (check: unknown) => {
    const r = await fetch(`http://${consul.address}/v1/agent/service/register`, {
      method: 'PUT',
      body: JSON.stringify({ ID: 'v-1', Name: 'v', Check: check }),
    });
    return { status: r.status, text: await r.text() };
  };
  const cases: [unknown, RegExp][] = [
    [{ TCP: '127.0.0.1:1' }, /Interval must be > 0 for Script, HTTP/],
    [{ TTL: '10s', Interval: '10s' }, /Interval and TTL cannot both be specified/],
    [{ Name: 'nothing' }, /TTL must be > 0 for TTL checks/],
    [{ TTL: '10s', Status: 'up' }, /Status for checks must 'passing', 'warning', 'critical'/],
  ];
  for (const [check, message] of cases) {
    const r = await register(check);
    t.is(r.status, 400, r.text);
    t.regex(r.text, message);
  }
});

test('runCheck: a TCP check can reach its target another way (emulator hook)', async (t) => {
  const probes: ProbeDefinition[] = [];
  const emu = await ConsulEmulator.start({
    runCheck: async (p) => {
      probes.push(p);
      return { status: 'warning', output: 'probed from elsewhere' };
    },
  });
  t.teardown(() => emu.close());
  const c = new ConsulClient({ address: emu.address });
  t.teardown(() => c.close());
  await c.put('/v1/agent/service/register', {
    body: { ID: 'far-1', Name: 'far', Check: { TCP: '198.18.0.1:80', Interval: '1s', Status: 'passing' } },
  });
  const got = await checkUntil(c, 'far', 'far-1', (k) => k.Status === 'warning');
  t.is(got.check?.Output, 'probed from elsewhere');
  // Consul's defaults: Timeout 10 s.
  t.deepEqual(probes[0], { kind: 'tcp', tcp: '198.18.0.1:80', timeoutMs: 10_000 });
});

test('an Output-only change reaches the catalog check_update_interval later; a TTL runs out with the last output', async (t) => {
  const emu = await ConsulEmulator.start({ checkUpdateIntervalMs: 400 });
  t.teardown(() => emu.close());
  const c = new ConsulClient({ address: emu.address });
  t.teardown(() => c.close());
  await c.put('/v1/agent/service/register', {
    body: { ID: 'ttl-1', Name: 'ttl', Check: { CheckID: 'ttl-1', TTL: '1500ms' } },
  });
  const update = (Status: string, Output: string) =>
    c.put('/v1/agent/check/update/ttl-1', { body: { Status, Output } });
  await update('passing', 'a');
  const first = await serviceCheck(c, 'ttl', 'ttl-1');
  t.is(first.check?.Output, 'a');
  // Same status, new output: synced later (agent/local/state.go defers it), the index unchanged now.
  await update('passing', 'b');
  const now = await serviceCheck(c, 'ttl', 'ttl-1');
  t.is(now.check?.Output, 'a');
  t.is(now.index, first.index);
  const later = await checkUntil(c, 'ttl', 'ttl-1', (k) => k.Output === 'b');
  t.is(later.check?.Output, 'b');
  const expired = await checkUntil(c, 'ttl', 'ttl-1', (k) => k.Status === 'critical');
  t.is(expired.check?.Output, 'TTL expired (last output before timeout follows): b');
});

const whyNoNetns = whyNotRunnable(['ip']);
if (whyNoNetns) console.log(`consul check namespace test skipped: ${whyNoNetns}`);

(whyNoNetns ? test.skip : test)(
  'commandCheckRunner: a check run from the workload network namespace sees what an agent there would',
  async (t) => {
    const netns = new Netns('emuchk');
    t.teardown(() => netns.cleanup());
    const ns = netns.add('w');
    // The namespace is this test's alone: any port is free there, and nothing outside can take it.
    const port = 8080;
    const server = netns.spawn(ns, [
      process.execPath,
      '-e',
      `require('node:net').createServer((s) => s.destroy()).listen(${port}, '127.0.0.1', () => console.log('listening'))`,
    ]);
    await waitForOutput(server, 'listening', 10_000);
    const emu = await ConsulEmulator.start({ runCheck: commandCheckRunner(['ip', 'netns', 'exec', ns]) });
    t.teardown(() => emu.close());
    const c = new ConsulClient({ address: emu.address });
    t.teardown(() => c.close());
    const target = `127.0.0.1:${port}`;
    await c.put('/v1/agent/service/register', {
      body: { ID: 'ns-1', Name: 'ns', Check: { TCP: target, Interval: '1s', Timeout: '2s' } },
    });
    const got = await checkUntil(c, 'ns', 'ns-1', (k) => k.Status === 'passing');
    t.is(got.check?.Output, `TCP connect ${target}: Success`);
    // The same probe from another namespace (empty, so deterministic) finds nothing there.
    const elsewhere = commandCheckRunner(['ip', 'netns', 'exec', netns.add('e')]);
    const there = await elsewhere({ kind: 'tcp', tcp: target, timeoutMs: 2000 });
    t.deepEqual(there, { status: 'critical', output: `dial tcp ${target}: connect: connection refused` });
  },
);
