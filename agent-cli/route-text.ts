// `ambit route explain` in words: the routes tried, the route, the split, each leg's target and endpoints,
// its load balancer, then the L7 intention decision (which the waypoint takes first: a denied request is
// never routed, but what it would have met is still worth seeing).
import { DEFAULT_MAX_PENDING } from '../daemon/waypoint/conn-gate.js';
import type { HeaderOp, LoadBalancer } from '../lib/l7/index.js';
import type { EndpointRow, Explanation, Leg, TargetRow } from './route-explain.js';
import type { LegPolicies, RoutePolicies, TimeoutView } from './route-policies.js';

const ops = (list: readonly HeaderOp[]): string =>
  list.map((o) => (o.op === 'remove' ? `remove ${o.name}` : `${o.op} ${o.name}: ${o.value}`)).join('; ');

function lbText(lb: LoadBalancer): string {
  const policy = lb.Policy ?? 'round_robin';
  const hashes = (lb.HashPolicies ?? []).map((h) =>
    h.SourceIP ? 'source IP' : `${h.Field} ${JSON.stringify(h.FieldValue)}`,
  );
  if ((policy === 'ring_hash' || policy === 'maglev') && hashes.length)
    return `${policy}, hashing ${hashes.join(', then ')}`;
  return policy;
}

function endpointText(e: EndpointRow): string {
  const at = e.port ? `${e.address}:${e.port}` : e.address;
  const why = !e.selected
    ? "not selected by the subset's Filter"
    : e.healthy
      ? 'selected, healthy'
      : 'selected, but not passing: left out';
  return `${e.name}  ${at}  ${why}`;
}

function targetLines(t: TargetRow, role: string): string[] {
  const subset = t.subset
    ? `subset ${t.subset}${t.filter ? ` (Filter ${JSON.stringify(t.filter)}${t.onlyPassing ? ', OnlyPassing' : ''})` : ''}`
    : 'every instance (no subset)';
  const out = [`  ${role} ${t.id}: ${t.service}, ${subset}`];
  if (t.remote) out.push(`    no endpoints here: ${t.remote}`);
  else if (t.endpoints.length === 0) out.push(`    no instances of ${t.service} in ${t.namespace}`);
  else for (const e of t.endpoints) out.push(`    ${endpointText(e)}`);
  return out;
}

function legLines(leg: Leg, heading: string, x: Explanation): string[] {
  const out = [heading];
  const resolver = leg.resolver ?? "no service-resolver: Consul's default";
  const service = leg.targets[0]?.service;
  if (leg.redirectedFrom)
    out.push(
      `  resolver: ${leg.redirectedFrom} redirects to ${service}, whose resolver is ${leg.resolver ?? "Consul's default"}`,
    );
  else out.push(`  resolver: ${resolver}`);
  const [primary, ...failovers] = leg.targets;
  if (primary) out.push(...targetLines(primary, 'target'));
  for (const f of failovers) out.push(...targetLines(f, 'failover'));
  if (leg.servedBy === undefined)
    out.push(
      `  endpoints: none healthy: the waypoint ${x.protocol === 'tcp' ? 'refuses the connection' : 'answers 503'}`,
    );
  else {
    const via = leg.failover ? ` (failover to ${leg.servedBy})` : '';
    out.push(`  endpoints: ${leg.candidates.join(', ')}${via}`);
    out.push(`  load balancer: ${lbText(leg.loadBalancer)} picks one`);
  }
  if (x.protocol !== 'tcp' && leg.path !== x.request.path) out.push(`  path rewritten to ${leg.path}`);
  if (leg.requestHeaders.length) out.push(`  request headers: ${ops(leg.requestHeaders)}`);
  if (leg.responseHeaders.length) out.push(`  response headers: ${ops(leg.responseHeaders)}`);
  return out;
}

/** A duration as Consul's entries write it: 250ms, 2s, 1.5s, 5m. */
function dur(ms: number): string {
  if (ms >= 60_000 && ms % 60_000 === 0) return `${ms / 60_000}m`;
  return ms >= 1000 ? `${ms / 1000}s` : `${ms}ms`;
}

const pct = (p: number): string => `${p}%`;

function timeoutText(name: string, t: TimeoutView): string {
  if (t.ms === undefined) return `${name} none`;
  return `${name} ${dur(t.ms)} (${t.from})`;
}

/** The leg's lines: its timeouts, and its rate limit when its service sets one. */
function legPolicyLines(p: LegPolicies, prefix: string): string[] {
  const t = p.timeouts;
  const out = [
    `  ${prefix}timeouts: ${timeoutText('RequestTimeout', t.request)}, ${timeoutText('IdleTimeout', t.idle)}, ${timeoutText('ConnectTimeout', t.connect)}`,
  ];
  const r = p.rateLimit;
  if (r) {
    const what =
      r.rule === undefined
        ? `no rate for ${r.path}: no Routes entry matches it and the service sets no RequestsPerSecond`
        : `${r.rule === 'service' ? `the service's own rate (no Routes entry matches ${r.path})` : `${r.rule} ${r.match} matches ${r.path}`}: ${r.perSecond}/s, burst ${r.burst}, per waypoint instance; over it 429`;
    out.push(`  ${prefix}rate limit (${r.entry} RateLimits.InstanceLevel): ${what}`);
  }
  return out;
}

function routePolicyLines(p: RoutePolicies): string[] {
  const out: string[] = [];
  const f = p.fault;
  if (f) {
    const gate = f.header
      ? `header ${f.header.name} ${JSON.stringify(f.header.exact)} ${f.header.matches ? 'matches' : 'does not match: no fault'}`
      : 'every request';
    const parts: string[] = [];
    if (f.delay) parts.push(`delay ${dur(f.delay.ms)} for ${pct(f.delay.percent)}`);
    if (f.abort) parts.push(`abort ${f.abort.http} (gRPC ${f.abort.grpc}) for ${pct(f.abort.percent)}`);
    out.push(`  fault (${f.from}): ${gate}${f.applies ? `: ${parts.join(', ')} of requests` : ''}`);
  }
  const l = p.limits;
  if (l) {
    const parts: string[] = [];
    if (l.maxConcurrentRequests)
      parts.push(
        `MaxConcurrentRequests ${l.maxConcurrentRequests} in flight from ${p.client}, then 503 (UO)`,
      );
    if (l.maxConnections)
      parts.push(
        `MaxConnections ${l.maxConnections} open from ${p.client}, then up to ` +
          `MaxPendingRequests ${l.maxPendingRequests ?? DEFAULT_MAX_PENDING} wait, then 503 (UO)`,
      );
    else if (l.maxPendingRequests !== undefined)
      parts.push(`MaxPendingRequests ${l.maxPendingRequests} read, without MaxConnections nothing waits`);
    out.push(`  limits (${l.from}): ${parts.join('; ')}`);
  }
  const o = p.outlier;
  if (o)
    out.push(
      `  outlier ejection (${o.from} PassiveHealthCheck): after ${o.maxFailures} consecutive 5xx, ` +
        `EnforcingConsecutive5xx ${pct(o.enforcingPercent)}, MaxEjectionPercent ${pct(o.maxEjectionPercent)}, ` +
        `BaseEjectionTime ${dur(o.baseEjectionMs)} (at most ${dur(o.maxEjectionMs)}), Interval ${dur(o.intervalMs)}`,
    );
  if (!p.client && p.clientEntries)
    out.push(
      "  limits, outlier ejection: set by the client's service-defaults UpstreamConfig: not checked (no --source)",
    );
  const r = p.retry;
  if (r) {
    const n = r.numRetriesSet ? `${r.numRetries} (NumRetries)` : `${r.numRetries} (NumRetries unset: 1)`;
    const on = r.on.map((c) =>
      c === 'retriable-status-codes' ? `retriable-status-codes ${r.statusCodes.join(', ')}` : c,
    );
    out.push(
      `  retries (${r.from}): up to ${n}, on ${on.join(', ')}; backoff jittered, ${r.backoffMs.base}ms base, ` +
        `${r.backoffMs.max}ms cap; budget ${r.budget.percent}% of requests in flight (at least ${r.budget.min})`,
    );
  }
  const m = p.mirror;
  if (m) {
    const to = m.target ?? `${m.service} (${m.namespace})`;
    const where = m.why
      ? `: ${m.why}, so no copy is sent`
      : m.endpoints.length
        ? `, endpoints ${m.endpoints.join(', ')}`
        : ': no healthy endpoint, so copies fail';
    out.push(`  mirror (${m.from}): ${pct(m.percent)} of requests copied to ${to}${where}`);
  }
  return out;
}

/** The policies the request meets, in the order the waypoint applies them; "none" for what sets none. */
function policyLines(x: Explanation): string[] {
  if (!x.policies) return [];
  const lines = ['', 'policies:'];
  const legs = x.legs.flatMap((l) => (l.policies ? [{ l, text: legPolicyLines(l.policies, '') }] : []));
  // Legs that meet the same policies are said once; else each leg's are named by its index.
  const same = legs.every((g) => g.text.join('\n') === legs[0]?.text.join('\n'));
  if (same) lines.push(...(legs[0]?.text ?? []));
  else for (const g of legs) lines.push(...legPolicyLines(g.l.policies!, `leg [${g.l.split!.index}] `));
  const route = routePolicyLines(x.policies);
  lines.push(...route);
  const rated = x.legs.some((l) => l.policies?.rateLimit);
  if (route.length === 0 && !rated)
    lines.push(
      `  nothing else: no fault, rate limit, ${x.policies.client ? 'limits, outlier ejection, ' : ''}retries or mirror`,
    );
  return lines;
}

export function explanationText(x: Explanation): string {
  const lines: string[] = [];
  const ns = x.namespace === 'default' ? '' : ` (namespace ${x.namespace})`;
  lines.push(`${x.request.method} ${x.request.path} to ${x.service}${ns} (read from ${x.where})`);
  for (const [k, v] of Object.entries(x.request.headers)) lines.push(`  header ${k}: ${v}`);
  lines.push(
    x.waypoint
      ? `waypoint: ${x.waypoint}; protocol ${x.protocol}`
      : `waypoint: none (${x.service} opts into none): these rules apply only once it has one; protocol ${x.protocol}`,
  );
  for (const i of x.ignored) lines.push(`ignored, as the daemon ignores it: ${i}`);
  if (x.chainError)
    lines.push(
      `warning: ${x.chainError}; the waypoint routes by its last good chain, else the service alone`,
    );
  if (x.protocol === 'tcp')
    lines.push(
      `no L7 routing: ${x.service} is tcp, so no route, split or L7 intention applies; the waypoint ` +
        "carries each connection to the resolver's target",
    );

  if (x.routes) {
    lines.push('', `routes of ${x.routes.router}, the first that matches wins:`);
    for (const s of x.routes.tried) lines.push(`  ${s.label}: ${s.matched ? 'matches' : `no: ${s.reason}`}`);
    lines.push(`route: ${x.routes.chosen}`);
  } else if (x.protocol !== 'tcp')
    lines.push('', `route: no service-router: every request goes to ${x.service}`);

  if (x.splitter) {
    lines.push('', `split by ${x.splitter}: weighted random, each request draws one leg:`);
    for (const l of x.legs)
      lines.push(
        `  [${l.split!.index}] ${l.split!.weight}% to ${l.target}${l.split!.drawn ? '' : ' (never drawn)'}`,
      );
  }
  for (const l of x.legs) {
    const heading = l.split ? `leg [${l.split.index}] ${l.split.weight}%:` : 'destination:';
    lines.push('', ...legLines(l, heading, x));
  }
  lines.push(...policyLines(x));
  if (x.authorization) {
    const a = x.authorization;
    const verdict = a.allowed ? 'allowed' : 'denied: the waypoint answers 403, before any routing';
    const who = a.source === a.client ? a.client : `${a.source} (${a.client})`;
    lines.push('', `authorization of ${who}: ${verdict}`, `  ${a.reason}`);
    if (/default (allow|deny)$/.test(a.reason))
      lines.push(`  (the default policy is from ${x.defaultPolicy.from})`);
  } else if (x.protocol !== 'tcp') lines.push('', 'authorization: not checked (no --source)');

  lines.push('', `result: ${x.verdict.status} ${x.verdict.reason}`);
  return `${lines.join('\n')}\n`;
}
