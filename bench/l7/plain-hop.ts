// The waypoint's HTTP/1.1 engine as a plaintext hop, for the L7 bench's `hop` contender: the same
// daemon/waypoint/http.ts and h1/ code the waypoint runs (llhttp, the route decision with a router, the
// header rewriting, the kept upstream connections, Istio's request metrics), over plain sockets instead
// of tunnel streams, so that it stands beside nginx and HAProxy as they run (one process, plaintext)
// and the figure is the L7 work alone, without TLS and HTTP/2 on either side. It is a bench harness, not a
// way to run a waypoint: the client's identity is a fixed one and nothing is authenticated.
//
//   node dist/bench/l7/plain-hop.js <listen port> <upstream port>

import { connect, createServer } from 'node:net';
import { Refusals } from '../../daemon/limits/refusal.js';
import { Metrics } from '../../daemon/metrics/metrics.js';
import type { OutboundPlan } from '../../daemon/proxy/outbound/plan.js';
import { SocketStream } from '../../daemon/waypoint/h1/socket-stream.js';
import { HopFailure } from '../../daemon/waypoint/h1/upstream.js';
import type { HopDeps } from '../../daemon/waypoint/hop.js';
import { DEFAULT_HTTP1_LIMITS, WaypointHttp } from '../../daemon/waypoint/http.js';
import { ServiceRouter } from '../../daemon/waypoint/router.js';
import { silentLogger } from '../../lib/log.js';
import { workload } from '../../test/helpers/mesh.js';

const [listenPort, upstreamPort] = process.argv.slice(2).map(Number);
if (!listenPort || !upstreamPort) {
  process.stderr.write('usage: node dist/bench/l7/plain-hop.js <listen port> <upstream port>\n');
  process.exit(2);
}
const metrics = new Metrics();
const log = silentLogger();
const principal = (svc: string): string => `spiffe://ambit.local/ns/default/dc/dc1/svc/${svc}`;
const upstream = workload({
  name: 'l7-upstream-1',
  service: 'l7-upstream',
  node: 'bench',
  ports: [upstreamPort],
});
const plan: OutboundPlan = {
  kind: 'mesh',
  service: { name: 'l7-upstream', namespace: 'default' },
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
const http = new WaypointHttp({
  hop,
  router: new ServiceRouter(5_000),
  log,
  refusals: new Refusals(metrics, log),
  metrics,
  limits: DEFAULT_HTTP1_LIMITS,
  open: (_plan, _ep) =>
    new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port: upstreamPort, noDelay: true, allowHalfOpen: true });
      s.once('error', (err) => reject(new HopFailure(503, err.message)));
      s.once('connect', () =>
        resolve({ stream: new SocketStream(s), authority: `127.0.0.1:${upstreamPort}` }),
      );
    }),
});
const client = { principal: principal('l7-client'), forwarded: undefined, traceparent: undefined };
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
