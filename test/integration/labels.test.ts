import { randomBytes } from 'node:crypto';
import test from 'ava';
import {
  clientWorkload,
  echoServer,
  enroll,
  freePort,
  metricsText,
  roundTrip,
  startCluster,
  until,
  upstreamTo,
  workload,
} from '../helpers/cluster.js';

/**
 * Every label of Istio's TCP metrics, as Kiali and Istio's dashboards read them. Written out, not imported
 * from metrics.ts: a label dropped there must fail here.
 */
const ISTIO_LABELS = [
  'reporter',
  'source_workload',
  'source_workload_namespace',
  'source_principal',
  'source_app',
  'source_version',
  'source_canonical_service',
  'source_canonical_revision',
  'source_cluster',
  'destination_service',
  'destination_service_name',
  'destination_service_namespace',
  'destination_workload',
  'destination_workload_namespace',
  'destination_principal',
  'destination_app',
  'destination_version',
  'destination_canonical_service',
  'destination_canonical_revision',
  'destination_cluster',
  'request_protocol',
  'connection_security_policy',
  'response_flags',
].sort();

/** The label sets of a metric's samples, parsed from the exposition text. */
function series(text: string, name: string): Record<string, string>[] {
  const out: Record<string, string>[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)\{(.*)\} \S+$/.exec(line);
    if (!m || m[1] !== name) continue;
    const labels: Record<string, string> = {};
    for (const l of m[2]!.matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push(labels);
  }
  return out;
}

test("a tunneled connection's metrics carry every Istio label, from the workloads' metadata", async (t) => {
  const cluster = await startCluster({ flags: { datacenter: 'dc-east' } });
  const echo = await echoServer();
  try {
    const upstreamPort = await freePort();
    await enroll(
      cluster.meshFile,
      { ...clientWorkload(9, upstreamTo('echo', upstreamPort)), app: 'shop', version: 'v2' },
      workload({
        name: 'echo-1',
        service: 'echo',
        node: 'node-b',
        ports: [echo.port],
        version: 'v1',
        canonicalService: 'echo-svc',
        canonicalRevision: 'canary',
      }),
    );
    await until(() => cluster.a.listeners.listening().length === 1, 5000, 'upstream listener bound');
    await until(
      () => cluster.b.readiness().ready && cluster.b.certs.list().length === 1,
      5000,
      'node-b ready',
    );
    const payload = randomBytes(4096);
    t.is((await roundTrip(upstreamPort, payload)).length, payload.length);

    const expected = {
      source_workload: 'client',
      source_workload_namespace: 'default',
      source_app: 'shop',
      source_version: 'v2',
      source_canonical_service: 'shop',
      source_canonical_revision: 'v2',
      source_cluster: 'dc-east',
      destination_service: 'echo.default',
      destination_service_name: 'echo',
      destination_service_namespace: 'default',
      destination_workload: 'echo-1',
      destination_workload_namespace: 'default',
      destination_app: 'echo',
      destination_version: 'v1',
      destination_canonical_service: 'echo-svc',
      destination_canonical_revision: 'canary',
      destination_cluster: 'dc-east',
      request_protocol: 'tcp',
      connection_security_policy: 'mutual_tls',
      response_flags: '-',
    };
    for (const [d, reporter] of [
      [cluster.a, 'source'],
      [cluster.b, 'destination'],
    ] as const) {
      // The close is counted when both sides have ended; the source may see it a little after the echo.
      await until(
        async () => series(await metricsText(d), 'istio_tcp_connections_closed_total').length > 0,
        5000,
        `${reporter} counted the close`,
      );
      const text = await metricsText(d);
      for (const metric of [
        'istio_tcp_connections_opened_total',
        'istio_tcp_connections_closed_total',
        'istio_tcp_sent_bytes_total',
        'istio_tcp_received_bytes_total',
      ]) {
        const all = series(text, metric);
        t.is(all.length, 1, `${reporter}: one ${metric} series`);
        const labels = all[0]!;
        t.deepEqual(Object.keys(labels).sort(), ISTIO_LABELS, `${reporter}: ${metric} has every label`);
        t.like(labels, { ...expected, reporter }, `${reporter}: ${metric}`);
        t.regex(labels.source_principal!, /^spiffe:\/\/.*\/dc\/dc-east\/svc\/web$/);
        t.regex(labels.destination_principal!, /^spiffe:\/\/.*\/dc\/dc-east\/svc\/echo$/);
      }
    }
  } finally {
    echo.server.close();
    await cluster.close();
  }
});
