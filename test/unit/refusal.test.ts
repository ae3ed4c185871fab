import test from 'ava';
import { pino } from 'pino';
import { Refusals } from '../../daemon/limits/refusal.js';
import { Metrics } from '../../daemon/metrics/metrics.js';
import { ConnectionAccount } from '../../daemon/proxy/account.js';
import {
  AmbitError,
  ConnectionRefusal,
  REFUSALS,
  type RefusalKind,
  badRequest,
  denied,
  unknownWorkload,
} from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';

/** The sum of a counter's samples whose labels include every given one. */
async function sum(
  counter: { get(): Promise<{ values: { value: number; labels: Record<string, unknown> }[] }> },
  labels: Record<string, string>,
): Promise<number> {
  let n = 0;
  for (const v of (await counter.get()).values)
    if (Object.entries(labels).every(([k, want]) => v.labels[k] === want)) n += v.value;
  return n;
}

/** A logger whose lines land in `lines`, parsed. */
function capture(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => lines.push(JSON.parse(s)) });
  return { log, lines };
}

test('the refusal table: every kind keeps the reason, flag, status and code it had', (t) => {
  // Dashboards, tests and peers read these: a change here is a change of behaviour.
  const want: Record<RefusalKind, [string, string, number, string]> = {
    bad_request: ['bad_request', 'BAD_REQUEST', 400, 'AMBIT_BAD_REQUEST'],
    denied: ['denied', 'DENY', 401, 'AMBIT_DENIED'],
    plaintext: ['plaintext', 'DENY', 401, 'AMBIT_DENIED'],
    unknown_workload: ['unknown_workload', 'NR', 503, 'AMBIT_UNKNOWN_WORKLOAD'],
    not_redirected: ['not_redirected', 'NR', 503, 'AMBIT_NOT_REDIRECTED'],
    no_endpoint: ['no_endpoint', 'UH', 503, 'AMBIT_NO_ENDPOINT'],
    upstream_failed: ['upstream_failed', 'UF', 503, 'AMBIT_UPSTREAM_FAILED'],
    connect_failed: ['upstream_failed', 'CONNECT', 503, 'AMBIT_UPSTREAM_FAILED'],
    peer_identity: ['peer_identity', 'TLS_FAILURE', 503, 'AMBIT_PEER_IDENTITY'],
    waypoint_unavailable: ['waypoint_unavailable', 'UH', 503, 'AMBIT_WAYPOINT_UNAVAILABLE'],
    waypoint_bypass: ['waypoint_bypass', 'DENY', 401, 'AMBIT_DENIED'],
    l7_denied: ['l7_denied', 'RBAC', 401, 'AMBIT_DENIED'],
  };
  t.deepEqual(Object.keys(REFUSALS).sort(), Object.keys(want).sort());
  for (const [kind, [reason, flag, status, code]] of Object.entries(want)) {
    const r = new ConnectionRefusal(kind as RefusalKind, `why ${kind}`);
    t.like(r, { kind, reason, flag, status, code, message: `why ${kind}` }, kind);
    t.true(r instanceof AmbitError);
  }
});

test('the shorthands the inbound decision uses are rows of the table', (t) => {
  t.like(badRequest('x'), {
    kind: 'bad_request',
    status: 400,
    flag: 'BAD_REQUEST',
    code: 'AMBIT_BAD_REQUEST',
  });
  t.like(denied('x'), { kind: 'denied', status: 401, flag: 'DENY', code: 'AMBIT_DENIED' });
  t.like(unknownWorkload('x'), { kind: 'unknown_workload', status: 503, flag: 'NR' });
});

test('a refused connection is counted opened, closed and refused, and logged once as its access line', async (t) => {
  const metrics = new Metrics({ processMetrics: false });
  const { log, lines } = capture();
  const refusals = new Refusals(metrics, log);
  const account = new ConnectionAccount(
    { metrics, log, refusals },
    'inbound',
    { addr: '10.0.0.1:4000', principal: 'spiffe://td/ns/a/sa/web' },
    { addr: '10.0.0.2:80', workload: 'api', namespace: 'a', service: 'api' },
    'mutual_tls',
  );
  const refusal = denied('denied by policy p');
  account.refused(refusal, { status: refusal.status });
  account.refused(refusal, { status: refusal.status });
  const labels = { reporter: 'destination', response_flags: 'DENY', destination_workload: 'api' };
  t.is(await sum(metrics.opened, labels), 2);
  t.is(await sum(metrics.closed, labels), 2);
  t.is(await sum(metrics.refused, { direction: 'inbound', reason: 'denied' }), 2);
  // Not rate-limited as a limit's refusal is: each connection keeps its access-log line.
  t.is(lines.length, 2);
  t.like(lines[0], {
    level: 30,
    msg: 'connection refused',
    access: 'inbound',
    response_flags: 'DENY',
    reason: 'denied by policy p',
    status: 401,
    bytes_sent: 0,
    bytes_received: 0,
    security: 'mutual_tls',
  });
});
