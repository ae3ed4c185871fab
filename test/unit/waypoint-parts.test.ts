// The waypoint's pure parts: which target an authority names, which service it may serve, what headers go
// on, and the trivial router's choice.
import test from 'ava';
import { forwardRequestHeaders, forwardResponseHeaders } from '../../daemon/waypoint/headers.js';
import { resolveForWaypoint, targetOfAuthority } from '../../daemon/waypoint/resolve.js';
import { ServiceRouter } from '../../daemon/waypoint/router.js';
import { node, service, storeOf, workload } from '../helpers/mesh.js';

const api1 = workload({ name: 'api-1', service: 'api', node: 'n', addresses: ['10.1.0.10'], ports: [8080] });
const api2 = workload({ name: 'api-2', service: 'api', node: 'n', addresses: ['10.1.0.11'], ports: [8080] });
const db = workload({ name: 'db-1', service: 'db', node: 'n', addresses: ['10.1.0.20'], ports: [5432] });
const store = storeOf({
  nodes: [node('n', '10.0.0.1')],
  workloads: [api1, api2, db],
  services: [
    service({ name: 'api', vips: ['10.96.0.10'], ports: [{ port: 80, targetPort: 8080 }], waypoint: 'wp' }),
    service({ name: 'db', waypoint: 'other-wp' }),
    service({ name: 'empty', waypoint: 'wp' }),
  ],
});
const self = { name: 'wp', namespace: 'default' };

test('an authority is an ip:port, or <service>.<namespace> with or without a port', (t) => {
  t.deepEqual(targetOfAuthority('10.96.0.10:80'), { kind: 'address', ip: '10.96.0.10', port: 80 });
  t.deepEqual(targetOfAuthority('[fd00::1]:443'), { kind: 'address', ip: 'fd00::1', port: 443 });
  t.deepEqual(targetOfAuthority('api.default:80'), {
    kind: 'service',
    service: 'api',
    namespace: 'default',
    port: 80,
  });
  t.deepEqual(targetOfAuthority('api.prod'), {
    kind: 'service',
    service: 'api',
    namespace: 'prod',
    port: undefined,
  });
  for (const bad of [undefined, '', 'api', 'a.b.c:80', 'api.default:0', 'api.default:x', '10.0.0.1:99999'])
    t.is(targetOfAuthority(bad), undefined, String(bad));
});

test('the waypoint serves its own services only, by VIP, workload address or name', (t) => {
  for (const authority of ['10.96.0.10:80', '10.1.0.11:8080', 'api.default:80', 'api.default']) {
    const r = resolveForWaypoint(store, self, authority);
    if (!r.ok) return t.fail(`${authority}: ${r.refusal.message}`);
    t.is(r.plan.service.name, 'api', authority);
  }
  const vip = resolveForWaypoint(store, self, '10.96.0.10:80');
  t.is(vip.ok ? vip.plan.targetPort : 0, 8080);
  const refusals = {
    '10.1.0.20:5432': 'unknown_workload', // db has another waypoint
    '192.0.2.1:80': 'unknown_workload', // nobody's
    'empty.default:80': 'no_endpoint',
    'not an authority': 'bad_request',
  };
  for (const [authority, kind] of Object.entries(refusals)) {
    const r = resolveForWaypoint(store, self, authority);
    t.is(r.ok ? 'ok' : r.refusal.kind, kind, authority);
  }
  t.regex(
    (() => {
      const r = resolveForWaypoint(store, self, 'db.default');
      return r.ok ? '' : r.refusal.message;
    })(),
    /service db does not have waypoint wp/,
  );
});

test("request headers: hop-by-hop and the client's x-forwarded-client-cert gone, the waypoint's set", (t) => {
  const out = forwardRequestHeaders(
    {
      host: 'api',
      connection: 'keep-alive, x-secret',
      'x-secret': '1',
      'keep-alive': 'timeout=5',
      expect: '100-continue',
      te: 'trailers',
      'transfer-encoding': 'chunked',
      'x-forwarded-client-cert': 'By=evil;URI=spiffe://evil/x',
      'x-app': 'kept',
    },
    'spiffe://wp',
    'spiffe://web',
    false,
  );
  t.deepEqual(out, {
    host: 'api',
    'transfer-encoding': 'chunked',
    'x-app': 'kept',
    'x-forwarded-client-cert': 'By=spiffe://wp;URI=spiffe://web',
  });
  const up = forwardRequestHeaders({ connection: 'Upgrade', upgrade: 'websocket' }, 'w', 'c', true);
  t.like(up, { connection: 'upgrade', upgrade: 'websocket' });
  t.is(forwardRequestHeaders({ upgrade: 'websocket' }, 'w', 'c', false).upgrade, undefined);
});

test('response headers: hop-by-hop gone, the rest as the endpoint sent it', (t) => {
  t.deepEqual(
    forwardResponseHeaders({
      'content-type': 'text/plain',
      'set-cookie': ['a=1', 'b=2'],
      connection: 'close',
      'transfer-encoding': 'chunked',
    }),
    { 'content-type': 'text/plain', 'set-cookie': ['a=1', 'b=2'] },
  );
});

test('the trivial router: round robin over the service, a failed endpoint passed over while another is left', (t) => {
  const r = new ServiceRouter(1000);
  const plan = {
    kind: 'mesh',
    service: { name: 'api', namespace: 'default' },
    endpoints: [api1, api2],
    targetPort: 8080,
    targeted: undefined,
  } as const;
  const req = { plan, client: 'spiffe://web' };
  const picks = Array.from({ length: 4 }, () => r.pick(req, new Set())?.name);
  t.deepEqual(picks, ['api-1', 'api-2', 'api-1', 'api-2']);
  r.failed(api1);
  t.deepEqual(
    Array.from({ length: 3 }, () => r.pick(req, new Set())?.name),
    ['api-2', 'api-2', 'api-2'],
  );
  t.is(r.pick(req, new Set(['api-2']))?.name, 'api-1', 'the last one left, failed or not');
  t.is(r.pick(req, new Set(['api-1', 'api-2'])), undefined);
  r.succeeded(api1);
  t.true(['api-1', 'api-2'].includes(r.pick(req, new Set())!.name));
  t.is(r.protocol(undefined), 'tcp');
  t.is(r.protocol(service({ name: 'api', protocol: 'http' })), 'http');
});
