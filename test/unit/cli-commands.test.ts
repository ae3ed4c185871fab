// The pure parts of the CLI's commands: what they build from their flags and what they print, without a
// process, a mesh file or a daemon.
import test from 'ava';
import { InvalidArgumentError } from 'commander';
import type { CertInfo } from '../../agent-cli/admin.js';
import { flag } from '../../agent-cli/args.js';
import { certsText } from '../../agent-cli/commands/certs.js';
import { type EnrollOpts, enrollWorkload, refuseEveryPort } from '../../agent-cli/commands/enroll.js';
import { workloadsText } from '../../agent-cli/commands/list.js';
import { nodesText } from '../../agent-cli/commands/node.js';
import {
  intentionsText,
  policiesText,
  policyName,
  policySources,
  unknownServices,
} from '../../agent-cli/commands/policy.js';
import { tapLine } from '../../agent-cli/commands/tap.js';
import { meshPath } from '../../agent-cli/context.js';
import { humanDuration, jsonText, table } from '../../agent-cli/output.js';
import type { ConsulIntention } from '../../lib/consul/intentions.js';
import { ConfigError } from '../../lib/errors.js';
import type { MeshNode, Policy, Workload } from '../../lib/mesh/model.js';

const enrollOpts = (o: Partial<EnrollOpts> = {}): EnrollOpts => ({
  service: 'web',
  namespace: 'default',
  node: 'n1',
  mode: 'strict',
  ...o,
});

const web: Workload = {
  name: 'web-1',
  service: 'web',
  namespace: 'default',
  node: 'n1',
  addresses: ['10.0.0.5'],
  ports: [80, 81],
  uid: undefined,
  mode: 'strict',
  upstreams: [],
};

const messageOf = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    return `${(e as Error).constructor.name}: ${(e as Error).message}`;
  }
  return 'no error';
};

test('table pads every column but the last, two spaces apart', (t) => {
  t.is(
    table(
      ['A', 'BB'],
      [
        ['xyz', 'q'],
        ['', 'long value'],
      ],
    ),
    'A    BB\nxyz  q\n     long value\n',
  );
  t.is(table(['ONLY'], []), 'ONLY\n');
});

test('humanDuration keeps the two largest units and names the past', (t) => {
  t.is(humanDuration(42_000), '42s');
  t.is(humanDuration(5 * 60_000 + 3_000), '5m 3s');
  t.is(humanDuration(5 * 3_600_000 + 12 * 60_000), '5h 12m');
  t.is(humanDuration(3 * 86_400_000 + 4 * 3_600_000 + 59_000), '3d 4h');
  t.is(humanDuration(-5 * 60_000), 'expired 5m 0s ago');
  t.is(humanDuration(999), '0s');
});

test('jsonText indents by two and ends the line', (t) => {
  t.is(jsonText({ a: [1] }), '{\n  "a": [\n    1\n  ]\n}\n');
});

test('meshPath: --mesh, else mesh.yaml in the state dir', (t) => {
  t.is(meshPath({ stateDir: '/s', mesh: undefined }), '/s/mesh.yaml');
  t.is(meshPath({ stateDir: '/s', mesh: '/m.json' }), '/m.json');
});

test('flag names the flag of a parser error and lets other errors through', (t) => {
  t.is(
    flag('x', () => 7),
    7,
  );
  t.is(
    messageOf(() =>
      flag('--port "0"', () => {
        throw new InvalidArgumentError('must be an integer.');
      }),
    ),
    'ConfigError: --port "0": must be an integer',
  );
  const other = new RangeError('boom');
  t.is(
    t.throws(() =>
      flag('x', () => {
        throw other;
      }),
    ),
    other,
  );
});

test('enrollWorkload merges --address and --ip, drops repeats, keeps the fail mode only when given', (t) => {
  const w = enrollWorkload(
    'web-1',
    enrollOpts({ address: ['10.0.0.5'], ip: ['10.0.0.5', '10.0.0.6'], port: [80, 80, 81], uid: 1000 }),
  );
  t.deepEqual(w, {
    ...web,
    addresses: ['10.0.0.5', '10.0.0.6'],
    ports: [80, 81],
    uid: 1000,
  });
  t.false('failMode' in w);
  t.is(enrollWorkload('web-1', enrollOpts({ ip: ['10.0.0.5'], failMode: 'open' })).failMode, 'open');
  // A --uid workload without an address: the node's address fills it in later.
  t.deepEqual(enrollWorkload('w', enrollOpts({ uid: 0 })).addresses, []);
});

test('enrollWorkload parses --upstream in the namespace of the workload', (t) => {
  const w = enrollWorkload(
    'w',
    enrollOpts({ namespace: 'prod', ip: ['10.0.0.5'], upstream: ['api:8080=15101'] }),
  );
  t.deepEqual(w.upstreams, [
    { service: 'api', namespace: 'prod', port: 8080, listenHost: '127.0.0.1', listenPort: 15101 },
  ]);
});

test('enrollWorkload refuses bad flags in the order they are checked, naming each', (t) => {
  t.is(
    messageOf(() => enrollWorkload('bad name', enrollOpts({ service: 'b@d' }))),
    'ConfigError: workload name "bad name": workload name must use only letters, digits, ".", "-" and "_"',
  );
  t.is(
    messageOf(() => enrollWorkload('w', enrollOpts({ service: 'b@d' }))),
    'ConfigError: give --ip (a workload with an address of its own) or --uid (a process on the host network)',
  );
  t.is(
    messageOf(() => enrollWorkload('w', enrollOpts({ service: 'b@d', ip: ['10.0.0.5'] }))),
    'ConfigError: --service "b@d": service name must use only letters, digits, "-" and "_"',
  );
  t.is(
    messageOf(() => enrollWorkload('w', enrollOpts({ namespace: 'a.b', ip: ['10.0.0.5'] }))),
    'ConfigError: --namespace "a.b": namespace must use only letters, digits, "-" and "_"',
  );
  t.is(
    messageOf(() => enrollWorkload('w', enrollOpts({ node: 'n 1', ip: ['10.0.0.5'] }))),
    'ConfigError: --node "n 1": node name must use only letters, digits, ".", "-" and "_"',
  );
  t.is(
    messageOf(() => enrollWorkload('w', enrollOpts({ ip: ['10.0.0.5'], upstream: ['bad'] }))),
    'ConfigError: --upstream "bad": must be svc[.ns][:port]=listen, e.g. api:8080=15101',
  );
});

test('refuseEveryPort: no ports at the node address or loopback is refused, a listed port is not', (t) => {
  const every = { ...web, ports: [] };
  t.notThrows(() => refuseEveryPort(every, '10.0.0.1'));
  t.notThrows(() => refuseEveryPort({ ...web, addresses: ['10.0.0.1'] }, '10.0.0.1'));
  const err = t.throws(() => refuseEveryPort({ ...every, addresses: ['10.0.0.1'] }, '10.0.0.1'), {
    instanceOf: ConfigError,
  });
  t.regex(err.message, /^workload web-1 at 10\.0\.0\.1, the address of its node "n1", must list the ports/);
  t.throws(() => refuseEveryPort({ ...every, addresses: ['127.0.0.1'] }, ''), {
    message: /a loopback address, must list the ports it serves: give --port/,
  });
});

test('policySources: services in the destination namespace or any, namespaces, principals, in that order', (t) => {
  t.deepEqual(
    policySources(
      {
        to: 'api',
        from: ['web', 'ops.*', 'db.data'],
        fromNamespace: ['mon'],
        fromPrincipal: ['spiffe://x/y'],
      },
      'prod',
    ),
    [
      { service: 'web', namespace: 'prod', principal: undefined },
      { service: 'ops', namespace: undefined, principal: undefined },
      { service: 'db', namespace: 'data', principal: undefined },
      { service: undefined, namespace: 'mon', principal: undefined },
      { service: undefined, namespace: undefined, principal: 'spiffe://x/y' },
    ],
  );
  t.deepEqual(policySources({ to: 'api' }, 'default'), []);
  t.is(
    messageOf(() => policySources({ to: 'api', fromNamespace: ['a.b'] }, 'default')),
    'ConfigError: --from-namespace "a.b": namespace must use only letters, digits, "-" and "_"',
  );
  t.regex(
    messageOf(() => policySources({ to: 'api', from: ['b@d'] }, 'default')),
    /^ConfigError: --from "b@d": /,
  );
});

test('policyName: action, distinct sources, destination (namespace unless default), ports', (t) => {
  const to = { service: 'api', namespace: 'default' };
  t.is(policyName('allow', to, [], []), 'allow-all-to-api');
  t.is(
    policyName(
      'deny',
      { service: 'db', namespace: 'prod' },
      [
        { service: 'web', namespace: 'prod', principal: undefined },
        { service: 'web', namespace: undefined, principal: undefined },
        { service: undefined, namespace: 'ops', principal: undefined },
        { service: undefined, namespace: undefined, principal: 'spiffe://x' },
      ],
      [5432, 5433],
    ),
    'deny-web-ns-ops-principal-to-db.prod-5432-5433',
  );
});

test('workloadsText: a table, JSON, or where none were found', (t) => {
  t.is(workloadsText([], false, '/m.yaml'), 'no workloads enrolled (/m.yaml)\n');
  t.is(workloadsText([web], true, '/m.yaml'), jsonText([web]));
  t.is(
    workloadsText([web, { ...web, name: 'w2', addresses: ['10.0.0.7', '10.0.0.8'], ports: [] }], false, ''),
    'NAME   SERVICE  NAMESPACE  NODE  ADDRESSES          PORTS  MODE\n' +
      'web-1  web      default    n1    10.0.0.5           80,81  strict\n' +
      'w2     web      default    n1    10.0.0.7,10.0.0.8  *      strict\n',
  );
});

test('nodesText counts the workloads of each node', (t) => {
  const nodes: MeshNode[] = [
    { name: 'n1', address: '10.0.0.1', tunnelPort: 15008 },
    { name: 'n2', address: 'fd00::2', tunnelPort: 15009 },
  ];
  t.is(nodesText({ nodes: [], workloads: [] }, false), 'no nodes in the mesh\n');
  t.is(nodesText({ nodes, workloads: [web] }, true), jsonText(nodes));
  t.is(
    nodesText({ nodes, workloads: [web, { ...web, name: 'w2' }] }, false),
    'NAME  ADDRESS   TUNNEL-PORT  WORKLOADS\nn1    10.0.0.1  15008        2\nn2    fd00::2   15009        0\n',
  );
});

test('policiesText: the policies, then the default; JSON holds both', (t) => {
  const p: Policy = {
    name: 'allow-web-to-api',
    action: 'allow',
    service: 'api',
    namespace: 'default',
    ports: [],
    from: [
      { service: 'web', namespace: 'default', principal: undefined },
      { service: undefined, namespace: 'ops', principal: undefined },
    ],
  };
  t.is(
    policiesText({ defaultPolicy: 'deny', policies: [] }, false),
    'no policies\ndefault: deny (when no policy matches)\n',
  );
  t.is(
    policiesText(
      { defaultPolicy: 'allow', policies: [p, { ...p, name: 'x', from: [], ports: [80] }] },
      false,
    ),
    'NAME              ACTION  TO           PORTS  FROM\n' +
      'allow-web-to-api  allow   api.default  *      web.default | namespace ops\n' +
      'x                 allow   api.default  80     any\n' +
      'default: allow (when no policy matches)\n',
  );
  t.is(
    policiesText({ defaultPolicy: 'allow', policies: [p] }, true),
    jsonText({ defaultPolicy: 'allow', policies: [p] }),
  );
});

test('intentionsText: L7 intentions read l7; the default is left to ambitd', (t) => {
  const intentions: ConsulIntention[] = [
    { SourceName: 'web', DestinationName: 'api', Action: 'allow', Precedence: 9 },
    { SourceName: '*', DestinationName: 'db', Permissions: [{}] },
  ];
  const dflt = "default: Consul's, or ambitd's defaultPolicy where set (when no intention matches)\n";
  t.is(intentionsText([], false, 'Consul at x'), `no intentions (Consul at x)\n${dflt}`);
  t.is(intentionsText(intentions, true, ''), jsonText(intentions));
  t.is(
    intentionsText(intentions, false, ''),
    'SOURCE  DESTINATION  ACTION  PRECEDENCE\nweb     api          allow   9\n*       db           l7\n' +
      dflt,
  );
});

test('certsText: time left and refresh counted from now; a past refresh is due', (t) => {
  const now = Date.parse('2025-01-01T00:00:00Z');
  const c: CertInfo = {
    workload: 'web-1',
    identity: 'spiffe://cluster.local/ns/default/sa/web',
    serial: '0a',
    notBefore: '2024-12-31T00:00:00Z',
    notAfter: '2025-01-01T12:00:00Z',
    refreshAt: '2025-01-01T06:30:00Z',
    rotations: 2,
  };
  t.is(certsText([], false, now), 'no certificates (no workloads enrolled on this node?)\n');
  t.is(certsText([c], true, now), jsonText([c]));
  const [header, row, due] = certsText([c, { ...c, refreshAt: '2024-12-31T23:00:00Z' }], false, now).split(
    '\n',
  );
  t.regex(header!, /^WORKLOAD\s+IDENTITY\s+SERIAL\s+EXPIRES\s+LEFT\s+REFRESH\s+ROTATIONS$/);
  t.regex(row!, /2025-01-01T12:00:00Z {2}12h 0m {2}in 6h 30m {2}2$/);
  t.regex(due!, /12h 0m {2}due {8}2$/);
});

test("policySources: a deny needs a source; --from '*' is every source, and stands alone", (t) => {
  t.deepEqual(policySources({ to: 'api', from: ['*'] }, 'default', 'deny'), []);
  t.deepEqual(policySources({ to: 'api', from: ['*'] }, 'default', 'allow'), []);
  t.deepEqual(policySources({ to: 'api' }, 'default', 'allow'), []);
  t.is(
    messageOf(() => policySources({ to: 'api' }, 'default', 'deny')),
    "ConfigError: policy deny needs a source: pass --from '*' to deny every source, or name them with " +
      '--from, --from-namespace or --from-principal',
  );
  t.is(
    messageOf(() => policySources({ to: 'api', from: ['*'], fromNamespace: ['ops'] }, 'default', 'deny')),
    "ConfigError: --from '*' is every source: give it alone, without other sources",
  );
});

test('unknownServices: the destination and source services no workload or services entry has', (t) => {
  const mesh = {
    services: [
      { name: 'api', namespace: 'default', vips: [], ports: [], waypoint: undefined },
      { name: 'web', namespace: 'prod', vips: [], ports: [], waypoint: undefined },
    ],
  };
  const policy = (service: string, namespace: string, from: Policy['from']): Policy => ({
    name: 'p',
    action: 'deny',
    service,
    namespace,
    ports: [],
    from,
  });
  const src = (service?: string, namespace?: string) => ({ service, namespace, principal: undefined });
  t.deepEqual(unknownServices(mesh, policy('api', 'default', [src('web', 'prod'), src('web')])), []);
  t.deepEqual(
    unknownServices(
      mesh,
      policy('api', 'prod', [src('web', 'default'), src('evil'), src(undefined, 'ops'), src('evil')]),
    ),
    ['api.prod', 'web.default', 'evil.*'],
  );
});

test('tapLine: a waypoint request event says the request, its answer and its route', (t) => {
  const line = tapLine({
    event: 'request',
    status: 'refused',
    time: '2026-12-02T10:11:12.345Z',
    id: undefined,
    direction: 'inbound',
    src: { principal: 'spiffe://ambit.local/ns/default/dc/dc1/svc/web', service: 'web' },
    dst: { service: 'api', workload: 'api-2' },
    security: 'mutual_tls',
    duration_ms: 3,
    response_flags: 'RBAC',
    request: {
      protocol: 'http',
      method: 'DELETE',
      path: '/admin',
      authority: 'api',
      response_code: 403,
      route: 'api#1',
      subset: 'v2',
    },
  });
  t.is(
    line,
    '10:11:12.345 refused inbound  unknown -> api-2 from spiffe://ambit.local/ns/default/dc/dc1/svc/web DELETE api/admin 403 [RBAC] (route api#1, subset v2), 3 ms',
  );
});
