// The waypoint's HTTP/1.1 engine as a plaintext hop, for the L7 bench's `hop` contender: the same
// daemon/waypoint/http.ts and h1/ code the waypoint runs (llhttp, the route decision with a router, the
// header rewriting, the kept upstream connections, Istio's request metrics), over plain sockets instead
// of tunnel streams, so that it stands beside nginx and HAProxy as they run (one process, plaintext)
// and the figure is the L7 work alone, without TLS and HTTP/2 on either side. It is a bench harness, not a
// way to run a waypoint: the client's identity is a fixed one and nothing is authenticated.
//
//   node dist/bench/l7/plain-hop.js <listen port> <upstream port> [plain|chain|policies]
//
// `plain` (the `hop` contender) routes with ServiceRouter, the service itself; `chain` with the
// ChainRouter a waypoint runs, over config entries that configure nothing but the protocol; `policies`
// with the same router over entries with a retry policy and limits (policies.ts), as the real waypoint
// has its retries and mirrors then (hop-chain and hop-policies, whose difference is the policies' cost).

import { connect, createServer } from 'node:net';
import { Refusals } from '../../daemon/limits/refusal.js';
import { Metrics } from '../../daemon/metrics/metrics.js';
import type { OutboundPlan } from '../../daemon/proxy/outbound/plan.js';
import { ChainRouter } from '../../daemon/waypoint/chain-router.js';
import { SocketStream } from '../../daemon/waypoint/h1/socket-stream.js';
import { HopFailure } from '../../daemon/waypoint/h1/upstream.js';
import type { HopDeps } from '../../daemon/waypoint/hop.js';
import { DEFAULT_HTTP1_LIMITS, WaypointHttp } from '../../daemon/waypoint/http.js';
import { DEFAULT_MIRROR_LIMITS, Mirrors } from '../../daemon/waypoint/mirror.js';
import { DEFAULT_RETRY_BUFFER_BYTES, Retries } from '../../daemon/waypoint/retry.js';
import { ServiceRouter, type WaypointRouter } from '../../daemon/waypoint/router.js';
import { validateEntries } from '../../lib/l7/index.js';
import { silentLogger } from '../../lib/log.js';
import { node, service, storeOf, workload } from '../../test/helpers/mesh.js';
import { CHAIN_ENTRIES, CLIENT_SERVICE, POLICY_ENTRIES, SERVICE } from './policies.js';

const [listenPort, upstreamPort] = process.argv.slice(2, 4).map(Number);
const mode = process.argv[4] ?? 'plain';
if (!listenPort || !upstreamPort || !['plain', 'chain', 'policies'].includes(mode)) {
  process.stderr.write(
    'usage: node dist/bench/l7/plain-hop.js <listen port> <upstream port> [plain|chain|policies]\n',
  );
  process.exit(2);
}
const metrics = new Metrics();
const log = silentLogger();
const principal = (svc: string): string => `spiffe://ambit.local/ns/default/dc/dc1/svc/${svc}`;
const upstream = workload({
  name: `${SERVICE}-1`,
  service: SERVICE,
  node: 'bench',
  addresses: ['127.0.0.1'],
  ports: [upstreamPort],
});
/** The chain router's view of the mesh: the upstream, its node, the service and the entries. */
const chainRouter = (entries: readonly Record<string, unknown>[]): ChainRouter =>
  new ChainRouter({
    store: storeOf({
      nodes: [node('bench', '127.0.0.1')],
      workloads: [upstream],
      services: [service({ name: SERVICE, waypoint: 'l7-wp', protocol: 'http' })],
      configEntries: validateEntries(entries, 'bench'),
    }),
    log,
    ejectMs: 5_000,
  });
const router: WaypointRouter =
  mode === 'plain'
    ? new ServiceRouter(5_000)
    : chainRouter(mode === 'policies' ? POLICY_ENTRIES : CHAIN_ENTRIES);
const plan: OutboundPlan = {
  kind: 'mesh',
  service: { name: SERVICE, namespace: 'default' },
  endpoints: [upstream],
  targetPort: upstreamPort,
  targeted: undefined,
};
// With an opener of its own the engine never reaches the store or the pool of a HopDeps.
const hop: HopDeps = {
  store: undefined as never,
  pool: undefined as never,
  identityOf: (w) => principal(w.service),
  self: principal('l7-wp'),
};
const refusals = new Refusals(metrics, log);
// As the waypoint has them (waypoint.ts), for the chain router's modes; `plain` is the engine alone.
const policies =
  mode === 'plain'
    ? {}
    : {
        retries: new Retries({ router, metrics, refusals, bufferBytes: DEFAULT_RETRY_BUFFER_BYTES }),
        mirrors: new Mirrors({ metrics, refusals, ...DEFAULT_MIRROR_LIMITS }),
      };
const http = new WaypointHttp({
  hop,
  router,
  log,
  refusals,
  metrics,
  limits: DEFAULT_HTTP1_LIMITS,
  ...policies,
  open: (_plan, _ep) =>
    new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port: upstreamPort, noDelay: true, allowHalfOpen: true });
      s.once('error', (err) => reject(new HopFailure(503, err.message)));
      s.once('connect', () =>
        resolve({ stream: new SocketStream(s), authority: `127.0.0.1:${upstreamPort}` }),
      );
    }),
});
// The figure is only the policies' if they are in force: the route must carry the retry policy.
if (mode === 'policies') {
  const r = router.route({ plan, client: principal(CLIENT_SERVICE), method: 'GET', path: '/', headers: {} });
  if (r.kind !== 'route' || r.retry === undefined) {
    process.stderr.write(`plain hop: the policies are not in force (${r.kind})\n`);
    process.exit(1);
  }
  router.done(r);
}
const client = { principal: principal(CLIENT_SERVICE), forwarded: undefined, traceparent: undefined };
const server = createServer({ allowHalfOpen: true, noDelay: true }, (s) => {
  s.on('error', () => {});
  http.serve(new SocketStream(s), { plan, client, clientAddr: `${s.remoteAddress}:${s.remotePort}` });
});
server.listen({ host: '127.0.0.1', port: listenPort, backlog: 4096 });
process.on('SIGTERM', () => {
  http.close();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
});
