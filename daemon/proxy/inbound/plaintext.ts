// 15006: plaintext connections to a workload enrolled here that did not come through a tunnel (iptables
// redirected them). Strict workloads refuse them (counted, logged with the reason) on every port but those
// they name as plaintext; permissive ones take them, labelled connection_security_policy="none". The
// source has no identity here: an ALLOW policy that names identities therefore refuses plaintext, as
// ztunnel's does.
import type { Socket } from 'node:net';
import { ConnectionRefusal, type RefusalKind } from '../../../lib/errors.js';
import type { Logger } from '../../../lib/log.js';
import { type Workload, takesPlaintextOn } from '../../../lib/mesh/model.js';
import { unmapIp } from '../../../lib/net/addresses.js';
import { joinHostPort, socketAddress } from '../../../lib/net/hostport.js';
import { originalDestination } from '../../capture/native.js';
import type { PlainConnection } from '../../io/plain.js';
import type { Refusals } from '../../limits/refusal.js';
import type { Metrics } from '../../metrics/metrics.js';
import { authorize } from '../../rbac.js';
import type { StateStore } from '../../state/store.js';
import { ConnectionAccount } from '../account.js';
import { carry } from '../carry.js';
import { abortPair, ignoreError } from '../pipe.js';
import { RedirectListener } from '../redirect-listener.js';
import type { SocketFactory } from '../sockets.js';
import { OpenConnections, type Recheckable, type Verdict } from './rechecks.js';

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
  /** Where accepted connections are registered for policy re-checks (the tunnel's, Inbound.rechecks). */
  readonly rechecks?: OpenConnections | undefined;
}

/** What decides a plaintext connection: the state in force and this node's names. */
export type PlaintextScope = Pick<PlaintextDeps, 'store' | 'nodeName' | 'trustDomain'>;

export type PlaintextDecision =
  | { readonly ok: true; readonly workload: Workload }
  | {
      readonly ok: false;
      readonly workload: Workload | undefined;
      readonly kind: RefusalKind;
      readonly why: string;
    };

/**
 * Whether a plaintext connection to `dst` is taken, under the state in force: a workload enrolled here, not
 * strict, that policy admits an unauthenticated source to. Asked at accept and again at each re-check.
 */
export function decidePlaintext(d: PlaintextScope, dst: { ip: string; port: number }): PlaintextDecision {
  const authority = joinHostPort(dst.ip, dst.port);
  const w = d.store.workloadAt(dst.ip, dst.port);
  if (!w || w.node !== d.nodeName) {
    const why = `${authority} is not a workload enrolled on node ${d.nodeName}`;
    return { ok: false, workload: undefined, kind: 'unknown_workload', why };
  }
  if (w.mode === 'strict' && !takesPlaintextOn(w, dst.port)) {
    const why = `plaintext connection to strict workload ${w.name} (mTLS required)`;
    return { ok: false, workload: w, kind: 'plaintext', why };
  }
  // A waypoint service is reached through its waypoint only (docs/waypoints.md), permissive or not; the
  // ports it takes plaintext on on purpose stay open.
  const waypoint = d.store.service(w.namespace, w.service)?.waypoint;
  if (waypoint !== undefined && !takesPlaintextOn(w, dst.port)) {
    const why = `plaintext connection to ${w.name}: service ${w.service} is reached through waypoint ${waypoint} only`;
    return { ok: false, workload: w, kind: 'waypoint_bypass', why };
  }
  const decision = authorize(
    d.store.policiesFor(w.namespace, w.service),
    d.store.mesh.defaultPolicy,
    // No identity, but captured on this host, not sent by another mesh: rules for every source apply.
    { principal: '', trustDomain: d.trustDomain, namespace: undefined, service: undefined },
    dst.port,
    d.trustDomain,
  );
  if (!decision.allowed)
    return { ok: false, workload: w, kind: 'denied', why: `plaintext: ${decision.reason}` };
  return { ok: true, workload: w };
}

type Phase = 'deciding' | 'connecting' | 'carried' | 'done';

/** One plaintext connection from its accept to its close, as a policy change re-checks it. */
class Plaintext implements Recheckable {
  phase: Phase = 'deciding';
  dst: { ip: string; port: number } | undefined;
  target: Workload | undefined;
  /** The client's side once carried: abortPair resets the pair through it. */
  carried: PlainConnection | undefined;
  readonly client: Socket;
  readonly started: number;
  /** The unauthenticated client, as the log names it (read now: a carried socket no longer has it). */
  readonly peer: string;
  readonly #listener: PlaintextListener;

  constructor(listener: PlaintextListener, client: Socket, started: number) {
    this.#listener = listener;
    this.client = client;
    this.started = started;
    this.peer = `plaintext ${socketAddress(client.remoteAddress, client.remotePort) ?? 'unknown'}`;
  }

  get workload(): string | undefined {
    return this.target?.name;
  }

  check(): Verdict | undefined {
    if ((this.phase !== 'connecting' && this.phase !== 'carried') || !this.dst) return undefined;
    const to = this.#listener.decide(this.dst);
    return to.ok ? { allowed: true, reason: '' } : { allowed: false, reason: to.why };
  }

  revoke(reason: string): void {
    this.#listener.revoke(this, reason);
  }
}

export class PlaintextListener extends RedirectListener {
  readonly #d: PlaintextDeps;
  readonly #rechecks: OpenConnections;

  constructor(deps: PlaintextDeps) {
    super();
    this.#d = deps;
    this.#rechecks = deps.rechecks ?? new OpenConnections();
  }

  decide(dst: { ip: string; port: number }): PlaintextDecision {
    return decidePlaintext(this.#d, dst);
  }

  /** `c` is no longer allowed: refused now if its upstream connect is in flight, reset if it is carried. */
  revoke(c: Plaintext, reason: string): void {
    const why = `no longer allowed: ${reason}`;
    if (c.phase === 'carried' && c.carried) {
      abortPair(c.carried, new Error(why));
      return;
    }
    const authority = c.dst ? joinHostPort(c.dst.ip, c.dst.port) : '';
    this.#refuse(c, c.target, authority, 'denied', why);
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
        meta: source,
      },
      {
        addr: dst,
        workload: w?.name,
        namespace: w?.namespace,
        service: w?.service,
        principal: w ? this.#d.identityOf(w) : undefined,
        meta: w,
      },
      'none',
      started,
    );
  }

  protected override accept(client: Socket): void {
    client.on('error', ignoreError);
    // Registered before the decision: a policy change from here on re-checks it, whatever phase it is in.
    const entry = new Plaintext(this, client, Date.now());
    this.#rechecks.add(entry);
    void this.#serve(entry).catch((err: Error) => {
      this.#d.log.error({ err: err.message }, 'plaintext connection failed unexpectedly');
      entry.phase = 'done';
      this.#rechecks.delete(entry);
      if (!client.destroyed) client.resetAndDestroy();
    });
  }

  async #serve(entry: Plaintext): Promise<void> {
    const d = this.#d;
    const { client, started } = entry;
    let dst: { ip: string; port: number } | undefined;
    try {
      dst = originalDestination(client);
    } catch (err) {
      d.log.error({ err: (err as Error).message }, 'cannot read the original destination');
    }
    if (!dst) {
      const here = socketAddress(client.localAddress, client.localPort) ?? 'unknown';
      const why = 'connection was not redirected by the capture rules';
      return this.#refuse(entry, undefined, here, 'not_redirected', why);
    }
    const authority = joinHostPort(dst.ip, dst.port);
    const to = decidePlaintext(d, dst);
    if (!to.ok) return this.#refuse(entry, to.workload, authority, to.kind, to.why);
    const w = to.workload;
    entry.dst = dst;
    entry.target = w;
    entry.phase = 'connecting';
    let upstream: Socket;
    try {
      upstream = await d.sockets.upstream(dst.ip, dst.port);
    } catch (err) {
      // Revoked while connecting: refused already.
      if (entry.phase !== 'connecting') return;
      const why = `connect to ${authority} failed: ${(err as Error).message}`;
      return this.#refuse(entry, w, authority, 'upstream_failed', why);
    }
    // Revoked by a policy change while connecting: refused then.
    if (entry.phase !== 'connecting') {
      upstream.destroy();
      entry.phase = 'done';
      this.#rechecks.delete(entry);
      return;
    }
    entry.phase = 'carried';
    entry.carried = carry(this.#account(client, w, authority, started), client, upstream, true, () => {
      entry.phase = 'done';
      this.#rechecks.delete(entry);
    });
  }

  #refuse(entry: Plaintext, w: Workload | undefined, dst: string, kind: RefusalKind, why: string): void {
    entry.phase = 'done';
    this.#rechecks.delete(entry);
    const { client } = entry;
    this.#account(client, w, dst, entry.started).refused(new ConnectionRefusal(kind, why));
    if (!client.destroyed) client.resetAndDestroy();
  }
}
