// The waypoint's HTTP client side: a keep-alive Agent whose connections are tunnel streams, opened to the
// chosen endpoint's node as the waypoint's own hop.
import { Agent, type AgentOptions, type ClientRequestArgs } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Workload } from '../../lib/mesh/model.js';
import type { OutboundPlan } from '../proxy/outbound/plan.js';
import { StreamDuplex } from './duplex.js';
import { type HopClient, type HopDeps, openHop } from './hop.js';

/** How long an upstream stream is kept for the next request of its client to that endpoint. */
const IDLE_UPSTREAM_MS = 60_000;

/** A hop that did not give a stream: the status the endpoint's daemon answered, or 503. */
export class HopFailure extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

/** What each upstream request carries for the Agent: the endpoint and the client it is for. */
export interface HopRequest extends ClientRequestArgs {
  readonly ambit: { readonly plan: OutboundPlan; readonly endpoint: Workload; readonly client: HopClient };
}

/**
 * Keep-alive connections to endpoints are tunnel streams, one client identity each: the destination
 * checks and logs the client a stream's CONNECT names, so two clients never share one.
 */
export class TunnelAgent extends Agent {
  readonly #hop: HopDeps;

  constructor(opts: AgentOptions, hop: HopDeps) {
    super(opts);
    this.#hop = hop;
  }

  /** A kept stream idle this long is closed (the Agent destroys a free socket that times out). */
  override keepSocketAlive(socket: Duplex): boolean {
    (socket as StreamDuplex).setTimeout(IDLE_UPSTREAM_MS);
    return true;
  }

  override getName(options?: ClientRequestArgs): string {
    const a = (options as HopRequest | undefined)?.ambit;
    return a ? `${a.endpoint.name}|${a.plan.targetPort}|${a.client.principal}` : super.getName(options);
  }

  override createConnection(
    options: ClientRequestArgs,
    callback?: (err: Error | null, stream: Duplex) => void,
  ): Duplex | null | undefined {
    const { plan, endpoint, client } = (options as HopRequest).ambit;
    const done = callback as (err: Error | null, stream?: Duplex) => void;
    openHop(this.#hop, plan, endpoint, client).then(
      (r) => {
        if (r.kind === 'skip') return done(new HopFailure(503, r.why));
        const { stream, status } = r.response;
        if (status !== 200) {
          stream.close();
          return done(new HopFailure(status, `endpoint ${endpoint.name} answered ${status}`));
        }
        done(null, new StreamDuplex(stream));
      },
      (err: Error) => done(new HopFailure(503, err.message)),
    );
    return undefined;
  }
}
