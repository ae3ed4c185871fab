// Fault injection from a service-router's Meta (lib/l7/fault.ts): the `ambit-fault` and
// `ambit-fault-<i>` keys, their JSON refused with the entry and the field named, the draws from an
// injected RNG (header gate, delay and abort each on its own), Envoy's HTTP <-> gRPC status mappings; and
// ChainRouter answering an abort before any limit or endpoint, and carrying a delay on the route.
import test from 'ava';
import { ChainRouter } from '../../daemon/waypoint/chain-router.js';
import { drawFault, faultFor, grpcToHttp, httpToGrpc, routerFaults } from '../../lib/l7/fault.js';
import { L7ConfigError, validateEntries } from '../../lib/l7/index.js';
import { Reader } from '../../lib/l7/read.js';
import { silentLogger } from '../../lib/log.js';
import { meshRequests, node, service, storeOf, workload } from '../helpers/mesh.js';

const router = (meta: Record<string, string>, routes = 2): unknown => ({
  Kind: 'service-router',
  Name: 'api',
  Meta: meta,
  Routes: Array.from({ length: routes }, (_, i) => ({
    Match: { HTTP: { PathPrefix: `/r${i}/` } },
    Destination: { Service: 'api' },
  })),
});
const API_HTTP = { Kind: 'service-defaults', Name: 'api', Protocol: 'http' };

const parse = (meta: Record<string, string>, routes = 2) =>
  routerFaults(new Reader('unit', 'service-router/api'), router(meta, routes) as never);

const refusal = (meta: Record<string, string>): string => {
  const err = (() => {
    try {
      validateEntries([API_HTTP, router(meta)], 'mesh.yaml');
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  if (!(err instanceof L7ConfigError)) throw new Error(`not refused: ${JSON.stringify(meta)}`);
  return err.message;
};

test('Meta keys: ambit-fault for every route, ambit-fault-<i> for Routes[i] in its place', (t) => {
  const f = parse({
    'ambit-fault': '{"Abort": {"HTTPStatus": 503, "Percent": 10}}',
    'ambit-fault-1': '{"Delay": {"Fixed": "100ms"}, "Header": {"Name": "X-Fault", "Exact": "on"}}',
    other: 'kept as it is',
  })!;
  t.deepEqual(f.all, { abort: { http: 503, grpc: 14, percent: 10 } });
  t.deepEqual(faultFor(f, 1, false), {
    delay: { ms: 100, percent: 100 },
    header: { name: 'x-fault', exact: 'on' },
  });
  t.is(faultFor(f, 0, false), f.all);
  // The catch-all (index Routes.length) has no key of its own.
  t.is(faultFor(f, 2, true), f.all);
  t.is(parse({ other: 'x' }), undefined);
  t.is(parse({}), undefined);
});

test('a gRPC abort by number or name; each status mapped as Envoy maps it', (t) => {
  t.deepEqual(parse({ 'ambit-fault': '{"Abort": {"GRPCStatus": "unavailable"}}' })!.all?.abort, {
    http: 503,
    grpc: 14,
    percent: 100,
  });
  t.deepEqual(parse({ 'ambit-fault': '{"Abort": {"GRPCStatus": 8, "Percent": 0.5}}' })!.all?.abort, {
    http: 429,
    grpc: 8,
    percent: 0.5,
  });
  t.is(httpToGrpc(500), 2);
  t.is(httpToGrpc(504), 14);
  t.is(httpToGrpc(403), 7);
  t.is(grpcToHttp(4), 504);
  t.is(grpcToHttp(13), 500);
  t.is(grpcToHttp(0), 200);
});

test('refusals name the entry, the Meta key and the field', (t) => {
  const cases: [Record<string, string>, string][] = [
    [{ 'ambit-fault': '{nope' }, 'Meta.ambit-fault: is not JSON'],
    [{ 'ambit-fault': '[]' }, 'Meta.ambit-fault: must be an object'],
    [{ 'ambit-fault': '{"Sleep": {}}' }, 'Meta.ambit-fault.Sleep: unknown field "Sleep"'],
    [{ 'ambit-fault': '{}' }, 'Meta.ambit-fault: needs a Delay or an Abort'],
    [{ 'ambit-fault': '{"Delay": {"Percent": 5}}' }, 'Meta.ambit-fault.Delay.Fixed: is required'],
    [
      { 'ambit-fault': '{"Delay": {"Fixed": 100}}' },
      'Meta.ambit-fault.Delay.Fixed: must be a Go duration string',
    ],
    [
      { 'ambit-fault': '{"Delay": {"Fixed": "5 parsecs"}}' },
      'Meta.ambit-fault.Delay.Fixed: invalid duration',
    ],
    [{ 'ambit-fault': '{"Delay": {"Fixed": "0s"}}' }, 'Meta.ambit-fault.Delay.Fixed: must be more than 0'],
    [
      { 'ambit-fault': '{"Delay": {"Fixed": "1s", "Percent": 101}}' },
      'Meta.ambit-fault.Delay.Percent: must be a percentage from 0 to 100',
    ],
    [
      { 'ambit-fault': '{"Abort": {}}' },
      'Meta.ambit-fault.Abort: needs exactly one of HTTPStatus or GRPCStatus',
    ],
    [
      { 'ambit-fault': '{"Abort": {"HTTPStatus": 503, "GRPCStatus": 14}}' },
      'Meta.ambit-fault.Abort: needs exactly one of HTTPStatus or GRPCStatus',
    ],
    [
      { 'ambit-fault': '{"Abort": {"HTTPStatus": 99}}' },
      'Meta.ambit-fault.Abort.HTTPStatus: must be an HTTP status',
    ],
    [
      { 'ambit-fault': '{"Abort": {"GRPCStatus": "OK"}}' },
      'Meta.ambit-fault.Abort.GRPCStatus: must be a gRPC status',
    ],
    [
      { 'ambit-fault': '{"Abort": {"GRPCStatus": 17}}' },
      'Meta.ambit-fault.Abort.GRPCStatus: must be a gRPC status',
    ],
    [
      { 'ambit-fault': '{"Abort": {"HTTPStatus": 500}, "Header": {"Exact": "x"}}' },
      'Meta.ambit-fault.Header.Name: is required',
    ],
    [
      { 'ambit-fault-2': '{"Abort": {"HTTPStatus": 500}}' },
      'Meta.ambit-fault-2: names Routes[2], and the router has 2',
    ],
    [
      { 'ambit-fault-01': '{"Abort": {"HTTPStatus": 500}}' },
      'Meta.ambit-fault-01: route index must be written',
    ],
    [{ 'ambit-faults': '{}' }, 'Meta.ambit-faults: is not a fault key'],
  ];
  for (const [meta, want] of cases) {
    const msg = refusal(meta);
    t.true(msg.startsWith('mesh.yaml: service-router/api: '), msg);
    t.true(msg.includes(want), `${msg}\n  wants: ${want}`);
  }
});

test('draws: the header gate first, then the delay and the abort each at its percent', (t) => {
  const f = parse({
    'ambit-fault':
      '{"Delay": {"Fixed": "50ms", "Percent": 30}, "Abort": {"HTTPStatus": 500, "Percent": 10}, "Header": {"Name": "x-chaos", "Exact": "1"}}',
  })!.all!;
  const seq = (...xs: number[]) => {
    let i = 0;
    return () => xs[i++ % xs.length]!;
  };
  t.is(drawFault(f, {}, seq(0)), undefined, 'no header: no fault, whatever the draw');
  t.is(drawFault(f, { 'x-chaos': '2' }, seq(0)), undefined);
  const h = { 'x-chaos': '1' };
  t.deepEqual(drawFault(f, h, seq(0.29, 0.5)), { delayMs: 50 });
  t.deepEqual(drawFault(f, h, seq(0.5, 0.09)), { abort: { http: 500, grpc: 2 } });
  t.deepEqual(drawFault(f, h, seq(0.1, 0.05)), { delayMs: 50, abort: { http: 500, grpc: 2 } });
  t.is(drawFault(f, h, seq(0.3, 0.1)), undefined, 'a draw at the percent misses: below it hits');
  // 100 always, 0 never, whatever the RNG says.
  const always = parse({ 'ambit-fault': '{"Abort": {"HTTPStatus": 500}}' })!.all!;
  t.truthy(drawFault(always, {}, () => 0.999999));
  const never = parse({ 'ambit-fault': '{"Abort": {"HTTPStatus": 500, "Percent": 0}}' })!.all!;
  t.is(
    drawFault(never, {}, () => 0),
    undefined,
  );
});

test('a draw at 10% over many requests with a seeded RNG is near 10%', (t) => {
  const f = parse({ 'ambit-fault': '{"Abort": {"HTTPStatus": 503, "Percent": 10}}' })!.all!;
  let x = 12345;
  // A small LCG: the same numbers on every run.
  const rng = () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
  let hit = 0;
  for (let i = 0; i < 10_000; i++) if (drawFault(f, {}, rng)) hit++;
  t.true(hit > 900 && hit < 1100, `${hit} of 10000`);
});

function routed(meta: Record<string, string>, random: () => number) {
  const api1 = workload({
    name: 'api-1',
    service: 'api',
    node: 'n1',
    addresses: ['10.1.0.10'],
    ports: [8080],
  });
  const store = storeOf({
    nodes: [node('n1', '10.0.0.1')],
    workloads: [api1],
    services: [service({ name: 'api', waypoint: 'wp', protocol: 'http' })],
    configEntries: validateEntries(
      [
        API_HTTP,
        {
          Kind: 'service-defaults',
          Name: 'web',
          UpstreamConfig: { Overrides: [{ Name: 'api', Limits: { MaxConcurrentRequests: 1 } }] },
        },
        router(meta),
      ],
      'unit',
    ),
  });
  const r = new ChainRouter({ store, log: silentLogger(), ejectMs: 1000, random });
  const req = meshRequests(store);
  return { r, req };
}

test('ChainRouter: an abort is answered before limits and endpoints; a delay rides on the route', (t) => {
  const { r, req } = routed(
    {
      'ambit-fault-0': '{"Abort": {"HTTPStatus": 418}}',
      'ambit-fault-1': '{"Delay": {"Fixed": "1s"}}',
    },
    () => 0,
  );
  const held = r.route(req('/r1/x'));
  t.like(held, { kind: 'route', fault: { delayMs: 1000 } });
  // web holds its one slot to api (MaxConcurrentRequests 1): an abort still answers, it takes none.
  t.like(r.route(req('/r0/x')), {
    kind: 'fault',
    abort: { http: 418, grpc: 2 },
    labels: { route: 'service-router/api[0]' },
  });
  t.like(r.route(req('/r1/y')), { kind: 'limited', limit: 'overflow' });
  // The catch-all has no fault: no ambit-fault key.
  if (held.kind === 'route') r.done(held);
  const plain = r.route(req('/other'));
  t.is(plain.kind, 'route');
  t.is(plain.kind === 'route' ? plain.fault : 'none', undefined);
});
