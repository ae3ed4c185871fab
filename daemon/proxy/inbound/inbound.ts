import type { IncomingHttpHeaders, ServerHttp2Session, ServerHttp2Stream } from 'node:http2';
import { connect as netConnect } from 'node:net';
import type { TLSSocket } from 'node:tls';
import {
  type ConnectionRefusal,
  type ResponseFlag,
  badRequest,
  denied,
  unknownWorkload,
  upstreamFailed,
} from '../../errors.js';
import { parseSpiffeId, uriSans } from '../../identity/spiffe.js';
import type { Logger } from '../../log.js';
import type { ConnectionLabels, Metrics, RefusalReason } from '../../metrics/metrics.js';
import { type Peer, authorize } from '../../rbac.js';
import type { Workload } from '../../state/model.js';
import type { StateStore } from '../../state/store.js';
import { type HostPort, parseAuthority, parseForwardedFor } from '../hbone.js';
import { pipeBoth } from '../pipe.js';

export interface InboundDeps {
  readonly store: StateStore;
  readonly nodeName: string;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly identityOf: (w: Workload) => string;
  /** True when the target is one of the daemon's own listeners: such a CONNECT is a self-call and refused. */
  readonly isSelf: (target: HostPort) => boolean;
  readonly connectTimeoutMs: number;
}

interface OpenConnection {
  readonly peer: Peer;
  readonly workload: Workload;
  readonly port: number;
  readonly stream: ServerHttp2Stream;
}

const peerOf = new WeakMap<ServerHttp2Session, Peer | null>();

const REFUSAL_REASON: Record<string, RefusalReason> = {
  AMBIT_BAD_REQUEST: 'bad_request',
  AMBIT_DENIED: 'denied',
  AMBIT_UNKNOWN_WORKLOAD: 'unknown_workload',
  AMBIT_UPSTREAM_FAILED: 'upstream_failed',
};

/**
 * The inbound half of the data path: one CONNECT stream on an authenticated HBONE session becomes one TCP
 * connection to a workload enrolled on this node, if policy admits it. Never an open relay: any other
 * target is refused before a socket is opened.
 */
export class Inbound {
  readonly #d: InboundDeps;
  readonly #open = new Set<OpenConnection>();

  constructor(deps: InboundDeps) {
    this.#d = deps;
  }

  /** Re-checks open connections against the policies now in force and closes those no longer allowed. */
  recheck(): number {
    let closed = 0;
    for (const c of this.#open) {
      const current = this.#d.store.workload(c.workload.name);
      const decision = current
        ? authorize(
            this.#d.store.policiesFor(current.namespace, current.service),
            this.#d.store.mesh.defaultPolicy,
            c.peer,
            c.port,
          )
        : { allowed: false, reason: 'workload no longer enrolled' };
      if (!decision.allowed) {
        closed++;
        this.#d.log.info(
          { workload: c.workload.name, peer: c.peer.principal, reason: decision.reason },
          'closing connection no longer allowed',
        );
        c.stream.destroy(new Error(`no longer allowed: ${decision.reason}`));
      }
    }
    return closed;
  }

  get openConnections(): number {
    return this.#open.size;
  }

  handleStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    stream.on('error', () => {});
    const started = Date.now();
    const peer = this.#peer(stream.session as ServerHttp2Session);
    const authority = headers[':authority'];
    const target = parseAuthority(authority);
    const src = parseForwardedFor(headers.forwarded as string | undefined);
    let workload: Workload | undefined;
    try {
      if (headers[':method'] !== 'CONNECT') throw badRequest(`method ${headers[':method']} is not CONNECT`);
      if (!target) throw badRequest(`malformed :authority ${JSON.stringify(authority)}`);
      if (!peer) throw denied('peer certificate carries no SPIFFE identity');
      workload = this.#localWorkload(target);
      const decision = authorize(
        this.#d.store.policiesFor(workload.namespace, workload.service),
        this.#d.store.mesh.defaultPolicy,
        peer,
        target.port,
      );
      if (!decision.allowed) throw denied(decision.reason);
    } catch (err) {
      const refusal = err as ConnectionRefusal;
      this.#refuse(stream, refusal, peer, workload, authority, src, started);
      return;
    }
    this.#connect(stream, peer, workload, target, src, started);
  }

  #peer(session: ServerHttp2Session): Peer | undefined {
    let peer = peerOf.get(session);
    if (peer === undefined) {
      const cert = (session.socket as TLSSocket).getPeerCertificate();
      const principal = uriSans(cert).find((u) => u.startsWith('spiffe://'));
      const parsed = principal ? parseSpiffeId(principal) : undefined;
      peer = principal ? { principal, namespace: parsed?.namespace, service: parsed?.service } : null;
      peerOf.set(session, peer);
    }
    return peer ?? undefined;
  }

  #localWorkload(target: HostPort): Workload {
    if (this.#d.isSelf(target)) throw badRequest(`${target.ip}:${target.port} is this daemon's own listener`);
    const w = this.#d.store.workloadAt(target.ip, target.port);
    if (!w || w.node !== this.#d.nodeName) {
      throw unknownWorkload(
        `${target.ip}:${target.port} is not a workload enrolled on node ${this.#d.nodeName}`,
      );
    }
    return w;
  }

  /**
   * The source workload's name, when the address in `forwarded` belongs to a workload whose identity is the
   * one the peer proved; the header alone is never trusted.
   */
  #sourceWorkload(peer: Peer | undefined, src: string | undefined): string {
    if (!peer) return 'unknown';
    if (src) {
      for (const w of this.#d.store.workloadsByIp(src))
        if (this.#d.identityOf(w) === peer.principal) return w.name;
    }
    return peer.service ?? 'unknown';
  }

  #labels(
    peer: Peer | undefined,
    w: Workload | undefined,
    flags: ResponseFlag,
    src?: string,
  ): ConnectionLabels {
    return {
      reporter: 'destination',
      source_workload: this.#sourceWorkload(peer, src),
      source_workload_namespace: peer?.namespace ?? 'unknown',
      source_principal: peer?.principal ?? 'unknown',
      source_app: peer?.service ?? 'unknown',
      destination_service: w ? `${w.service}.${w.namespace}` : 'unknown',
      destination_service_name: w?.service ?? 'unknown',
      destination_service_namespace: w?.namespace ?? 'unknown',
      destination_workload: w?.name ?? 'unknown',
      destination_principal: w ? this.#d.identityOf(w) : 'unknown',
      request_protocol: 'tcp',
      connection_security_policy: 'mutual_tls',
      response_flags: flags,
    };
  }

  #refuse(
    stream: ServerHttp2Stream,
    refusal: ConnectionRefusal,
    peer: Peer | undefined,
    w: Workload | undefined,
    authority: string | undefined,
    src: string | undefined,
    started: number,
  ): void {
    const status = refusal.status ?? 503;
    const flag = refusal.flag ?? 'UF';
    const reason = REFUSAL_REASON[refusal.code] ?? 'upstream_failed';
    this.#d.metrics.refusedConnection(this.#labels(peer, w, flag, src), 'inbound', reason);
    this.#d.log.info(
      {
        access: 'inbound',
        src: { addr: src, identity: peer?.principal },
        dst: { authority, workload: w?.name },
        status,
        response_flags: flag,
        reason: refusal.message,
        duration_ms: Date.now() - started,
      },
      'connection refused',
    );
    if (!stream.destroyed && !stream.headersSent) stream.respond({ ':status': status }, { endStream: true });
  }

  #connect(
    stream: ServerHttp2Stream,
    peer: Peer,
    workload: Workload,
    target: HostPort,
    src: string | undefined,
    started: number,
  ): void {
    const upstream = netConnect({ host: target.ip, port: target.port, allowHalfOpen: true });
    upstream.setNoDelay(true);
    const timer = setTimeout(
      () => upstream.destroy(new Error('connect timed out')),
      this.#d.connectTimeoutMs,
    );
    const onStreamGone = (): void => {
      clearTimeout(timer);
      upstream.destroy();
    };
    stream.once('close', onStreamGone);
    upstream.once('error', (err) => {
      clearTimeout(timer);
      stream.removeListener('close', onStreamGone);
      this.#refuse(
        stream,
        upstreamFailed(`connect to ${target.ip}:${target.port} failed: ${err.message}`),
        peer,
        workload,
        `${target.ip}:${target.port}`,
        src,
        started,
      );
    });
    upstream.once('connect', () => {
      clearTimeout(timer);
      stream.removeListener('close', onStreamGone);
      upstream.removeAllListeners('error');
      if (stream.destroyed) {
        upstream.destroy();
        return;
      }
      stream.respond({ ':status': 200 });
      const labels = this.#labels(peer, workload, '-', src);
      const d = this.#d;
      d.metrics.opened.inc(labels);
      d.metrics.activeConnections.inc({ direction: 'inbound' });
      const entry: OpenConnection = { peer, workload, port: target.port, stream };
      this.#open.add(entry);
      pipeBoth(upstream, stream, (err) => {
        this.#open.delete(entry);
        d.metrics.activeConnections.dec({ direction: 'inbound' });
        // Seen from the workload's socket: what it wrote went to the client, what it read came from it.
        const fromClient = upstream.bytesWritten;
        const toClient = upstream.bytesRead;
        d.metrics.connectionClosed(labels, fromClient, toClient);
        d.log.info(
          {
            access: 'inbound',
            src: { addr: src, identity: peer.principal },
            dst: {
              workload: workload.name,
              addr: `${target.ip}:${target.port}`,
              identity: labels.destination_principal,
            },
            bytes_sent: toClient,
            bytes_received: fromClient,
            duration_ms: Date.now() - started,
            outcome: err ? 'reset' : 'closed',
            err: err?.message,
          },
          'connection closed',
        );
      });
    });
  }
}
