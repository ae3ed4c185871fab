import type { Socket } from 'node:net';
import { ConnectionRefusal, type RefusalKind, TunnelError } from '../../../lib/errors.js';
import type { Logger } from '../../../lib/log.js';
import type { Workload } from '../../../lib/mesh/model.js';
import { joinHostPort, socketAddress } from '../../../lib/net/hostport.js';
import type { Refusals } from '../../limits/refusal.js';
import type { Metrics } from '../../metrics/metrics.js';
import type { StateStore } from '../../state/store.js';
import { ConnectionAccount, type Party } from '../account.js';
import { carry } from '../carry.js';
import type { H2Headers } from '../h2/stream.js';
import { forwardedFor, newTraceparent } from '../hbone.js';
import { ignoreError } from '../pipe.js';
import type { Pool } from '../pool/pool.js';
import type { SocketFactory } from '../sockets.js';
import type { Balancer } from './lb.js';
import {
  type OutboundTarget,
  type RoutedService,
  type WaypointRoute,
  planHop,
  planOutbound,
  planWaypoint,
  planWaypointHop,
} from './plan.js';

export type { OutboundTarget } from './plan.js';

/** What the access log needs of a route: the service it reached, when it reached one. */
type Plan = { readonly service: RoutedService };

export interface OutboundDeps {
  readonly store: StateStore;
  readonly pool: Pool;
  readonly balancer: Balancer;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly refusals: Refusals;
  readonly identityOf: (w: Workload) => string;
  /** Endpoints tried per connection before giving up (one refusal moves on to the next endpoint). */
  readonly maxAttempts: number;
  /** Opens the connection to a destination outside the mesh (passthrough). */
  readonly sockets: SocketFactory;
}

/** How one kind of destination is tunneled to: a service's endpoints, or its waypoint's instances. */
interface TunnelKind {
  /** The route, as the access log names what a refusal was for. */
  readonly plan: Plan;
  readonly hop: (candidate: Workload) => ReturnType<typeof planHop>;
  readonly forwarded: string;
  readonly baggage: string;
  readonly dst: (candidate: Workload) => Party;
  readonly firstFailure: RefusalKind;
  readonly noneTried: string;
  readonly named: (candidate: Workload) => string;
  readonly failedMessage: string;
  readonly logFields: (candidate: Workload) => Record<string, string>;
  readonly answeredFor: (status: number) => string;
  /**
   * Endpoints: a refusal names the endpoint, and a failed connect says whether the peer's identity was
   * the cause. Waypoint instances: the refusal is the service's.
   */
  readonly refusalEndpoint: boolean;
}

/** `forwarded` with the service the client meant (`;host=`), as ztunnel sends it to a waypoint. */
const forwardedForHost = (ip: string | undefined, port: number | undefined, host: string): string =>
  `${forwardedFor(ip, port)};host=${host}`;

const baggageCache = new WeakMap<Workload, string>();
const baggageOf = (w: Workload): string => {
  let b = baggageCache.get(w);
  if (b === undefined) {
    b = `k8s.namespace.name=${w.namespace},service.name=${w.service},k8s.deployment.name=${w.name}`;
    baggageCache.set(w, b);
  }
  return b;
};

/**
 * The outbound half of the data path: one entry for every way a connection reaches us (an explicit upstream
 * listener, or transparent capture), taking (source workload, target) and carrying it to a peer daemon.
 * The client's bytes are not read until the tunnel is up, so nothing is lost when an endpoint is retried.
 */
export class Outbound {
  #starting = 0;
  readonly #d: OutboundDeps;

  constructor(deps: OutboundDeps) {
    this.#d = deps;
  }

  handle(client: Socket, source: Workload, target: OutboundTarget): void {
    client.on('error', ignoreError);
    client.setNoDelay(true);
    this.#starting++;
    this.#run(client, source, target)
      .catch((err: Error) => {
        this.#d.log.error({ err }, 'outbound connection failed unexpectedly');
        if (!client.destroyed) client.resetAndDestroy();
      })
      .finally(() => {
        this.#starting--;
      });
  }

  /**
   * Connections accepted whose way through is still being decided or opened (no stream yet): a drain
   * waits for them as for the carried ones, or a connection accepted just before it would be cut.
   */
  get starting(): number {
    return this.#starting;
  }

  async #run(client: Socket, source: Workload, target: OutboundTarget): Promise<void> {
    const d = this.#d;
    const sourceId = d.identityOf(source);
    const src: Party = {
      addr: socketAddress(client.remoteAddress, client.remotePort),
      workload: source.name,
      namespace: source.namespace,
      service: source.service,
      principal: sourceId,
      meta: source,
    };
    // Helpers are methods and module functions, not closures: a closure here would keep this whole frame
    // alive for as long as the connection lasts.
    const plan = planOutbound(d.store, target);
    if (plan.kind === 'passthrough') return this.passthrough(client, src, plan);
    if (plan.kind === 'no_endpoint') {
      return this.#refuse(client, src, target, plan, 'no_endpoint', plan.why);
    }
    const via = planWaypoint(d.store, plan, target, source);
    if (via?.kind === 'waypoint_unavailable') {
      return this.#refuse(client, src, target, via, 'waypoint_unavailable', via.why);
    }
    if (via) return this.#viaWaypoint(client, src, source, target, via);

    return this.#tunnel(client, src, target, plan.endpoints, {
      plan,
      hop: (ep) => planHop(d.store, plan, ep, sourceId, d.identityOf),
      forwarded: forwardedFor(client.remoteAddress, client.remotePort),
      baggage: baggageOf(source),
      dst: (ep) => toService(d, target, plan, ep),
      firstFailure: 'no_endpoint',
      noneTried: 'no endpoint could be tried',
      named: (ep) => ep.name,
      failedMessage: 'tunnel to endpoint failed, trying another',
      logFields: (ep) => ({ endpoint: ep.name, node: ep.node }),
      answeredFor: (status) => `peer answered ${status}`,
      refusalEndpoint: true,
    });
  }

  /**
   * A service with a waypoint: to one of its instances (balanced, the ones that failed lately last), and to
   * nothing else. No instance answers: refused as waypoint_unavailable, never sent around it.
   */
  #viaWaypoint(
    client: Socket,
    src: Party,
    source: Workload,
    target: OutboundTarget,
    via: WaypointRoute,
  ): Promise<void> {
    const d = this.#d;
    const sourceId = d.identityOf(source);
    return this.#tunnel(client, src, target, via.instances, {
      plan: via,
      hop: (instance) => planWaypointHop(via, instance, sourceId, d.identityOf),
      forwarded: forwardedForHost(client.remoteAddress, client.remotePort, via.host),
      baggage: baggageOf(source),
      dst: (instance) => ({
        ...toService(d, target, via),
        workload: instance.name,
        principal: d.identityOf(instance),
      }),
      // An instance that answered (503: it could not reach the service) is up: the failure is the service's.
      firstFailure: 'waypoint_unavailable',
      noneTried: 'no waypoint instance could be tried',
      named: (instance) => `waypoint ${instance.name}`,
      failedMessage: 'waypoint instance failed, trying another',
      logFields: (instance) => ({ waypoint: instance.name }),
      answeredFor: (status) => `waypoint answered ${status}`,
      refusalEndpoint: false,
    });
  }

  /**
   * The one connect loop: a candidate at a time (balanced, those that failed lately last), up to
   * maxAttempts, until one answers 200 and is carried. 401 and 400 are the destination's answer for the
   * service, not a reason to try another; anything else ejects the candidate and moves on.
   */
  async #tunnel(
    client: Socket,
    src: Party,
    target: OutboundTarget,
    candidates: readonly Workload[],
    k: TunnelKind,
  ): Promise<void> {
    const d = this.#d;
    const tried = new Set<string>();
    let lastError = k.noneTried;
    let failure: RefusalKind = k.firstFailure;
    for (let attempt = 0; attempt < d.maxAttempts; attempt++) {
      const ep = d.balancer.pick(candidates, tried);
      if (!ep) break;
      tried.add(ep.name);
      const hop = k.hop(ep);
      if (hop.kind === 'skip') {
        lastError = hop.why;
        continue;
      }
      const headers: H2Headers = {
        ':method': 'CONNECT',
        ':authority': hop.authority,
        forwarded: k.forwarded,
        traceparent: newTraceparent(),
        baggage: k.baggage,
      };
      // Counted from the pick, so that connections still being set up weigh in the next choice.
      d.balancer.opened(ep.name);
      let answer: Awaited<ReturnType<Pool['connect']>>;
      try {
        answer = await d.pool.connect(hop.session, headers);
      } catch (err) {
        d.balancer.closed(ep.name);
        d.balancer.eject(ep.name);
        lastError = k.refusalEndpoint ? (err as Error).message : `${k.named(ep)}: ${(err as Error).message}`;
        if (k.refusalEndpoint) failure = err instanceof TunnelError ? 'upstream_failed' : 'peer_identity';
        d.log.warn({ ...k.logFields(ep), err: lastError }, k.failedMessage);
        continue;
      }
      const { stream, status } = answer;
      if (status === 200) {
        if (client.destroyed) {
          d.balancer.closed(ep.name);
          stream.close();
          return;
        }
        d.balancer.succeeded(ep.name);
        const account = new ConnectionAccount(d, 'outbound', src, k.dst(ep), 'mutual_tls');
        carry(account, client, stream, true, () => d.balancer.closed(ep.name));
        return;
      }
      stream.close();
      d.balancer.closed(ep.name);
      const at = k.refusalEndpoint ? ep : undefined;
      if (status === 401) return this.#refuse(client, src, target, k.plan, 'denied', k.answeredFor(401), at);
      if (status === 400)
        return this.#refuse(client, src, target, k.plan, 'bad_request', k.answeredFor(400), at);
      d.balancer.eject(ep.name);
      lastError = k.refusalEndpoint ? k.answeredFor(status) : `${k.named(ep)} answered ${status}`;
      failure = 'upstream_failed';
    }
    return this.#refuse(client, src, target, k.plan, failure, lastError);
  }

  #refuse(
    client: Socket,
    src: Party,
    target: OutboundTarget,
    plan: Plan | undefined,
    kind: RefusalKind,
    why: string,
    ep?: Workload,
  ): void {
    const d = this.#d;
    new ConnectionAccount(d, 'outbound', src, toService(d, target, plan, ep), 'mutual_tls').refused(
      new ConnectionRefusal(kind, why),
    );
    if (!client.destroyed) client.resetAndDestroy();
  }

  /** A destination outside the mesh, or a source that is not enrolled: carried as it is, without a tunnel. */
  async passthrough(client: Socket, src: Party, target: { ip: string; port: number }): Promise<void> {
    const d = this.#d;
    const account = new ConnectionAccount(
      d,
      'outbound',
      src,
      { addr: joinHostPort(target.ip, target.port) },
      'unknown',
    );
    let upstream: Socket;
    try {
      upstream = await d.sockets.upstream(target.ip, target.port);
    } catch (err) {
      account.refused(new ConnectionRefusal('upstream_failed', (err as Error).message));
      if (!client.destroyed) client.resetAndDestroy();
      return;
    }
    carry(account, client, upstream, true);
  }
}

const toService = (
  d: OutboundDeps,
  target: OutboundTarget,
  plan: Plan | undefined,
  ep?: Workload,
): Party => ({
  addr: targetText(target),
  service: plan?.service?.name,
  namespace: plan?.service?.namespace,
  workload: ep?.name,
  principal: ep ? d.identityOf(ep) : undefined,
  meta: ep,
});

const targetText = (t: OutboundTarget): string =>
  t.kind === 'service'
    ? `${t.service}.${t.namespace}${t.port ? `:${t.port}` : ''}`
    : joinHostPort(t.ip, t.port);
