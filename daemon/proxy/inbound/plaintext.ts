// 15006: plaintext connections to a workload enrolled here that did not come through a tunnel (iptables
// redirected them). Strict workloads refuse them (counted, logged with the reason); permissive ones take
// them, labelled connection_security_policy="none". The source has no identity here: an ALLOW policy that
// names identities therefore refuses plaintext, as ztunnel's does.
import type { Socket } from 'node:net';
import { ConnectionRefusal, type RefusalKind } from '../../../lib/errors.js';
import type { Logger } from '../../../lib/log.js';
import type { Workload } from '../../../lib/mesh/model.js';
import { unmapIp } from '../../../lib/net/addresses.js';
import { joinHostPort, socketAddress } from '../../../lib/net/hostport.js';
import { originalDestination } from '../../capture/native.js';
import type { Refusals } from '../../limits/refusal.js';
import type { Metrics } from '../../metrics/metrics.js';
import { authorize } from '../../rbac.js';
import type { StateStore } from '../../state/store.js';
import { ConnectionAccount } from '../account.js';
import { carry } from '../carry.js';
import { ignoreError } from '../pipe.js';
import { RedirectListener } from '../redirect-listener.js';
import type { SocketFactory } from '../sockets.js';

export interface PlaintextDeps {
  readonly store: StateStore;
  readonly nodeName: string;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly refusals: Refusals;
  readonly identityOf: (w: Workload) => string;
  /** Opens the connection to the workload (marked, so that capture does not take it again). */
  readonly sockets: SocketFactory;
  /** This mesh's trust domain (see authorize). */
  readonly trustDomain: string;
}

export class PlaintextListener extends RedirectListener {
  readonly #d: PlaintextDeps;

  constructor(deps: PlaintextDeps) {
    super();
    this.#d = deps;
  }

  /** For labels only: a workload known by the client's address (it is not authenticated). */
  #account(client: Socket, w: Workload | undefined, dst: string, started: number): ConnectionAccount {
    const ip = unmapIp(client.remoteAddress ?? '');
    const ws = this.#d.store.workloadsByIp(ip);
    const source = ws.length === 1 ? ws[0] : undefined;
    return new ConnectionAccount(
      this.#d,
      'inbound',
      {
        addr: socketAddress(ip, client.remotePort),
        workload: source?.name,
        namespace: source?.namespace,
        service: source?.service,
      },
      {
        addr: dst,
        workload: w?.name,
        namespace: w?.namespace,
        service: w?.service,
        principal: w ? this.#d.identityOf(w) : undefined,
      },
      'none',
      started,
    );
  }

  protected override accept(client: Socket): void {
    client.on('error', ignoreError);
    void this.#serve(client).catch((err: Error) => {
      this.#d.log.error({ err: err.message }, 'plaintext connection failed unexpectedly');
      if (!client.destroyed) client.resetAndDestroy();
    });
  }

  async #serve(client: Socket): Promise<void> {
    const d = this.#d;
    const started = Date.now();
    let dst: { ip: string; port: number } | undefined;
    try {
      dst = originalDestination(client);
    } catch (err) {
      d.log.error({ err: (err as Error).message }, 'cannot read the original destination');
    }
    if (!dst) {
      const here = socketAddress(client.localAddress, client.localPort) ?? 'unknown';
      const why = 'connection was not redirected by the capture rules';
      return this.#refuse(client, undefined, here, started, 'not_redirected', why);
    }
    const authority = joinHostPort(dst.ip, dst.port);
    const w = d.store.workloadAt(dst.ip, dst.port);
    if (!w || w.node !== d.nodeName) {
      const why = `${authority} is not a workload enrolled on node ${d.nodeName}`;
      return this.#refuse(client, undefined, authority, started, 'unknown_workload', why);
    }
    if (w.mode === 'strict') {
      const why = `plaintext connection to strict workload ${w.name} (mTLS required)`;
      return this.#refuse(client, w, authority, started, 'plaintext', why);
    }
    const decision = authorize(
      d.store.policiesFor(w.namespace, w.service),
      d.store.mesh.defaultPolicy,
      // No identity, but captured on this host, not sent by another mesh: rules for every source apply.
      { principal: '', trustDomain: d.trustDomain, namespace: undefined, service: undefined },
      dst.port,
      d.trustDomain,
    );
    if (!decision.allowed) {
      return this.#refuse(client, w, authority, started, 'denied', `plaintext: ${decision.reason}`);
    }
    let upstream: Socket;
    try {
      upstream = await d.sockets.upstream(dst.ip, dst.port);
    } catch (err) {
      const why = `connect to ${authority} failed: ${(err as Error).message}`;
      return this.#refuse(client, w, authority, started, 'upstream_failed', why);
    }
    carry(this.#account(client, w, authority, started), client, upstream, true);
  }

  #refuse(
    client: Socket,
    w: Workload | undefined,
    dst: string,
    started: number,
    kind: RefusalKind,
    why: string,
  ): void {
    this.#account(client, w, dst, started).refused(new ConnectionRefusal(kind, why));
    if (!client.destroyed) client.resetAndDestroy();
  }
}
