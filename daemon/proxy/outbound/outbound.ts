import { randomBytes } from 'node:crypto';
import type { OutgoingHttpHeaders } from 'node:http2';
import { type Socket, connect as netConnect } from 'node:net';
import type { Duplex } from 'node:stream';
import { type ResponseFlag, TunnelError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { ConnectionLabels, Metrics, RefusalReason } from '../../metrics/metrics.js';
import type { Workload } from '../../state/model.js';
import type { StateStore } from '../../state/store.js';
import { formatAuthority, forwardedFor, newTraceparent } from '../hbone.js';
import { pipeBoth } from '../pipe.js';
import type { Pool } from '../pool/pool.js';
import type { Balancer } from './lb.js';

/** Where a captured or explicit connection wants to go, before the catalog is consulted. */
export type OutboundTarget =
  | {
      readonly kind: 'service';
      readonly namespace: string;
      readonly service: string;
      readonly port: number | undefined;
    }
  | { readonly kind: 'address'; readonly ip: string; readonly port: number };

interface Plan {
  readonly service: { readonly name: string; readonly namespace: string } | undefined;
  readonly endpoints: readonly Workload[];
  readonly port: (w: Workload) => number | undefined;
}

export interface OutboundDeps {
  readonly store: StateStore;
  readonly pool: Pool;
  readonly balancer: Balancer;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly identityOf: (w: Workload) => string;
  /** Endpoints tried per connection before giving up (one refusal moves on to the next endpoint). */
  readonly maxAttempts: number;
  readonly connectTimeoutMs: number;
}

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
  readonly #d: OutboundDeps;

  constructor(deps: OutboundDeps) {
    this.#d = deps;
  }

  handle(client: Socket, source: Workload, target: OutboundTarget): void {
    client.on('error', () => {});
    client.setNoDelay(true);
    this.#run(client, source, target).catch((err: Error) => {
      this.#d.log.error({ err }, 'outbound connection failed unexpectedly');
      if (!client.destroyed) client.resetAndDestroy();
    });
  }

  #plan(target: OutboundTarget): Plan | undefined {
    const { store } = this.#d;
    if (target.kind === 'service') {
      const svc = store.service(target.namespace, target.service);
      const mapped = target.port !== undefined ? svc?.ports.find((p) => p.port === target.port) : undefined;
      const port = mapped?.targetPort ?? target.port;
      return {
        service: { name: target.service, namespace: target.namespace },
        endpoints: store.endpoints(target.namespace, target.service),
        port: (w) => port ?? (w.ports.length === 1 ? w.ports[0] : undefined),
      };
    }
    const vip = store.vip(target.ip, target.port);
    if (vip) {
      return {
        service: { name: vip.service.name, namespace: vip.service.namespace },
        endpoints: store.endpoints(vip.service.namespace, vip.service.name),
        port: () => vip.targetPort,
      };
    }
    const w = store.workloadAt(target.ip, target.port);
    if (w)
      return {
        service: { name: w.service, namespace: w.namespace },
        endpoints: [w],
        port: () => target.port,
      };
    return undefined;
  }

  async #run(client: Socket, source: Workload, target: OutboundTarget): Promise<void> {
    const d = this.#d;
    const started = Date.now();
    const sourceId = d.identityOf(source);
    const plan = this.#plan(target);
    if (!plan) {
      if (target.kind === 'address') return this.#passthrough(client, source, target, started);
      return this.#refuse(
        client,
        source,
        sourceId,
        target,
        undefined,
        'no_endpoint',
        'UH',
        started,
        'no such service',
      );
    }
    if (plan.endpoints.length === 0) {
      return this.#refuse(
        client,
        source,
        sourceId,
        target,
        plan,
        'no_endpoint',
        'UH',
        started,
        'service has no endpoints',
      );
    }

    const tried = new Set<string>();
    let lastError = 'no endpoint could be tried';
    let lastFlag: ResponseFlag = 'UH';
    let reason: RefusalReason = 'no_endpoint';
    for (let attempt = 0; attempt < d.maxAttempts; attempt++) {
      const ep = d.balancer.pick(plan.endpoints, tried);
      if (!ep) break;
      tried.add(ep.name);
      const node = d.store.node(ep.node);
      const port = plan.port(ep);
      const ip = ep.addresses[0];
      if (!node || port === undefined || ip === undefined) {
        lastError = !node
          ? `endpoint ${ep.name} is on unknown node ${ep.node}`
          : `endpoint ${ep.name} has no port to reach`;
        continue;
      }
      const peerId = d.identityOf(ep);
      const headers: OutgoingHttpHeaders = {
        ':method': 'CONNECT',
        ':authority': formatAuthority(ip, port),
        forwarded: forwardedFor(client.remoteAddress, client.remotePort),
        traceparent: newTraceparent(randomBytes),
        baggage: baggageOf(source),
      };
      let answer: Awaited<ReturnType<Pool['connect']>>;
      try {
        answer = await d.pool.connect(
          { source: sourceId, peer: peerId, address: node.address, port: node.tunnelPort },
          headers,
        );
      } catch (err) {
        d.balancer.eject(ep.name);
        lastError = (err as Error).message;
        lastFlag = err instanceof TunnelError ? err.flag : 'TLS_FAILURE';
        reason = lastFlag === 'TLS_FAILURE' ? 'peer_identity' : 'upstream_failed';
        d.log.warn(
          { endpoint: ep.name, node: ep.node, err: lastError },
          'tunnel to endpoint failed, trying another',
        );
        continue;
      }
      const { stream, status } = answer;
      if (status === 200) {
        if (client.destroyed) {
          stream.close();
          return;
        }
        d.balancer.succeeded(ep.name);
        return this.#carry(client, stream, source, sourceId, plan, ep, peerId, started, 'mutual_tls');
      }
      stream.close();
      if (status === 401 || status === 400) {
        const flag: ResponseFlag = status === 401 ? 'DENY' : 'BAD_REQUEST';
        const why = status === 401 ? 'denied' : 'bad_request';
        return this.#refuse(
          client,
          source,
          sourceId,
          target,
          plan,
          why,
          flag,
          started,
          `peer answered ${status}`,
          ep,
          peerId,
        );
      }
      d.balancer.eject(ep.name);
      lastError = `peer answered ${status}`;
      lastFlag = 'UF';
      reason = 'upstream_failed';
    }
    return this.#refuse(client, source, sourceId, target, plan, reason, lastFlag, started, lastError);
  }

  #labels(
    source: Workload,
    sourceId: string,
    plan: Plan | undefined,
    dest: Workload | undefined,
    destId: string,
    security: ConnectionLabels['connection_security_policy'],
    flags: ResponseFlag,
  ): ConnectionLabels {
    const svcName = plan?.service?.name ?? 'unknown';
    const svcNs = plan?.service?.namespace ?? 'unknown';
    return {
      reporter: 'source',
      source_workload: source.name,
      source_workload_namespace: source.namespace,
      source_principal: sourceId,
      source_app: source.service,
      destination_service: plan?.service ? `${svcName}.${svcNs}` : 'unknown',
      destination_service_name: svcName,
      destination_service_namespace: svcNs,
      destination_workload: dest?.name ?? 'unknown',
      destination_principal: destId,
      request_protocol: 'tcp',
      connection_security_policy: security,
      response_flags: flags,
    };
  }

  #refuse(
    client: Socket,
    source: Workload,
    sourceId: string,
    target: OutboundTarget,
    plan: Plan | undefined,
    reason: RefusalReason,
    flag: ResponseFlag,
    started: number,
    why: string,
    dest?: Workload,
    destId = 'unknown',
  ): void {
    const d = this.#d;
    d.metrics.refusedConnection(
      this.#labels(source, sourceId, plan, dest, destId, 'mutual_tls', flag),
      'outbound',
      reason,
    );
    d.log.info(
      {
        access: 'outbound',
        src: {
          workload: source.name,
          identity: sourceId,
          addr: `${client.remoteAddress}:${client.remotePort}`,
        },
        dst: { target: targetText(target), workload: dest?.name, identity: destId },
        response_flags: flag,
        reason: why,
        duration_ms: Date.now() - started,
        bytes_sent: 0,
        bytes_received: 0,
      },
      'connection refused',
    );
    if (!client.destroyed) client.resetAndDestroy();
  }

  #carry(
    client: Socket,
    stream: Duplex,
    source: Workload,
    sourceId: string,
    plan: Plan | undefined,
    dest: Workload | undefined,
    destId: string,
    started: number,
    security: ConnectionLabels['connection_security_policy'],
  ): void {
    const d = this.#d;
    const labels = this.#labels(source, sourceId, plan, dest, destId, security, '-');
    d.metrics.opened.inc(labels);
    d.metrics.activeConnections.inc({ direction: 'outbound' });
    if (dest) d.balancer.opened(dest.name);
    pipeBoth(client, stream, (err) => {
      if (dest) d.balancer.closed(dest.name);
      d.metrics.activeConnections.dec({ direction: 'outbound' });
      const fromClient = client.bytesRead;
      const toClient = client.bytesWritten;
      d.metrics.connectionClosed(labels, fromClient, toClient);
      d.log.info(
        {
          access: 'outbound',
          src: {
            workload: source.name,
            identity: sourceId,
            addr: `${client.remoteAddress}:${client.remotePort}`,
          },
          dst: {
            service: labels.destination_service,
            workload: labels.destination_workload,
            identity: destId,
          },
          security,
          bytes_sent: fromClient,
          bytes_received: toClient,
          duration_ms: Date.now() - started,
          outcome: err ? 'reset' : 'closed',
          err: err?.message,
        },
        'connection closed',
      );
    });
    client.resume();
  }

  /** A destination outside the mesh: carried as it is, without a tunnel, and labelled so. */
  #passthrough(
    client: Socket,
    source: Workload,
    target: { ip: string; port: number },
    started: number,
  ): void {
    const d = this.#d;
    const upstream = netConnect({ host: target.ip, port: target.port, allowHalfOpen: true });
    upstream.setNoDelay(true);
    const timer = setTimeout(
      () => upstream.destroy(new Error('connect timeout')),
      d.connectTimeoutMs,
    ).unref();
    const sourceId = d.identityOf(source);
    upstream.once('error', (err) => {
      clearTimeout(timer);
      this.#refuse(
        client,
        source,
        sourceId,
        { kind: 'address', ...target },
        undefined,
        'upstream_failed',
        'UF',
        started,
        err.message,
      );
    });
    upstream.once('connect', () => {
      clearTimeout(timer);
      upstream.removeAllListeners('error');
      this.#carry(client, upstream, source, sourceId, undefined, undefined, 'unknown', started, 'unknown');
    });
  }
}

const targetText = (t: OutboundTarget): string =>
  t.kind === 'service'
    ? `${t.service}.${t.namespace}${t.port ? `:${t.port}` : ''}`
    : formatAuthority(t.ip, t.port);
