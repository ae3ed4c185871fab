// Request mirroring at the waypoint (Istio's mirror and mirrorPercentage, from the router entry's
// `ambit-mirror` Meta: lib/l7/mirror.ts). The router draws the copy and picks its endpoint; each engine
// sends it (h1 in http.ts, h2 in http2.ts) once the request's body is whole, and this module holds what
// both share: the bounds a peer can make us hold (the body kept for the copy, the copies in flight), their
// counting and logging. A copy is fire and forget: its answer is read and dropped, and nothing it does
// reaches the client, whose request never waits for it.
import { Counter } from 'prom-client';
import type { Refusals } from '../limits/refusal.js';
import type { Metrics } from '../metrics/metrics.js';
import type { OutboundPlan, RoutedService } from '../proxy/outbound/plan.js';
import { ReplayBuffer } from './retry.js';
import type { RequestRoute } from './router.js';

/** What became of one request's copy, as the mirrored-requests metric names it. */
export type MirrorOutcome = 'sent' | 'skipped-overflow' | 'skipped-body' | 'failed';

type Labels = 'destination_service' | 'mirror_service' | 'outcome';

/** One set of counters per registry: both engines (and a test's several waypoints) share it. */
const countersOf = new WeakMap<Metrics, Counter<Labels>>();
function counter(m: Metrics): Counter<Labels> {
  let c = countersOf.get(m);
  if (c) return c;
  c = new Counter({
    name: 'ambit_waypoint_mirrored_requests_total',
    help:
      'Requests the waypoint mirrored (service-router ambit-mirror), by outcome: sent (the mirror answered), ' +
      'skipped-overflow (waypointMirrorMaxInFlight copies in flight), skipped-body (a body over ' +
      'waypointMirrorBufferBytes), failed (no endpoint, unreachable, reset, past waypointMirrorTimeout)',
    labelNames: ['destination_service', 'mirror_service', 'outcome'],
    registers: [m.registry],
  });
  countersOf.set(m, c);
  return c;
}

const serviceLabel = (s: RoutedService): string => `${s.name}.${s.namespace}`;

export interface MirrorsDeps {
  readonly metrics: Metrics;
  readonly refusals: Refusals;
  /** Request-body bytes kept per copy (waypointMirrorBufferBytes). */
  readonly bufferBytes: number;
  /** Copies in flight at once (waypointMirrorMaxInFlight). */
  readonly maxInFlight: number;
  /** A copy not answered by then is cancelled (waypointMirrorTimeout). */
  readonly timeoutMs: number;
}

export const DEFAULT_MIRROR_LIMITS = { bufferBytes: 64 * 1024, maxInFlight: 256, timeoutMs: 10_000 };

/** One request's copy: its body kept up to the bound, its slot among those in flight until it ends. */
export class MirrorCopy {
  readonly plan: OutboundPlan;
  readonly endpoint: NonNullable<NonNullable<RequestRoute['mirror']>['endpoint']>;
  readonly timeoutMs: number;
  readonly body: ReplayBuffer;
  readonly #end: (copy: MirrorCopy, outcome: MirrorOutcome) => void;
  #open = true;

  constructor(
    target: NonNullable<RequestRoute['mirror']>,
    limits: MirrorsDeps,
    end: (copy: MirrorCopy, outcome: MirrorOutcome) => void,
  ) {
    this.plan = target.plan!;
    this.endpoint = target.endpoint!;
    this.timeoutMs = limits.timeoutMs;
    this.body = new ReplayBuffer(limits.bufferBytes);
    this.#end = end;
  }

  /** Not ended yet: the copy still holds its slot. */
  get open(): boolean {
    return this.#open;
  }

  /** Keeps a copy of `chunk` (a view of a read unless `owned`); false once past the bound, the copy given up. */
  push(chunk: Buffer, owned = false): boolean {
    if (!this.#open) return false;
    if (this.body.push(chunk, owned)) return true;
    this.end('skipped-body');
    return false;
  }

  /** The copy is over (idempotent): its slot and its body freed, its outcome counted. */
  end(outcome: MirrorOutcome): void {
    if (!this.#open) return;
    this.#open = false;
    this.body.close();
    this.#end(this, outcome);
  }
}

/** The waypoint's mirror copies, shared by its HTTP/1.1 and HTTP/2 engines. */
export class Mirrors {
  readonly #d: MirrorsDeps;
  readonly #c: Counter<Labels>;
  readonly #labels = new WeakMap<MirrorCopy, { destination_service: string; mirror_service: string }>();
  #inFlight = 0;

  constructor(d: MirrorsDeps) {
    this.#d = d;
    this.#c = counter(d.metrics);
  }

  /** Copies holding a slot now (their body being read, or sent and not answered). */
  get inFlight(): number {
    return this.#inFlight;
  }

  /**
   * The copy of a request whose route drew a mirror, or undefined: none drawn, no endpoint for it (failed),
   * or waypointMirrorMaxInFlight copies in flight (skipped-overflow). Either refusal is counted; the
   * request itself goes on as if it had no mirror.
   */
  start(route: RequestRoute, client: string): MirrorCopy | undefined {
    const m = route.mirror;
    if (!m) return undefined;
    const labels = {
      destination_service: serviceLabel(route.plan.service),
      mirror_service: serviceLabel(m.service),
    };
    if (!m.endpoint || !m.plan) {
      this.#c.inc({ ...labels, outcome: 'failed' });
      return undefined;
    }
    if (this.#inFlight >= this.#d.maxInFlight) {
      this.#c.inc({ ...labels, outcome: 'skipped-overflow' });
      this.#d.refusals.note(
        'inbound',
        'mirror_overflow',
        `waypoint did not mirror a request: ${this.#d.maxInFlight} copies in flight (waypointMirrorMaxInFlight)`,
        { client, ...labels },
      );
      return undefined;
    }
    this.#inFlight++;
    const copy = new MirrorCopy(m, this.#d, (c, outcome) => this.#ended(c, outcome, client));
    this.#labels.set(copy, labels);
    return copy;
  }

  #ended(copy: MirrorCopy, outcome: MirrorOutcome, client: string): void {
    this.#inFlight--;
    const labels = this.#labels.get(copy)!;
    this.#c.inc({ ...labels, outcome });
    if (outcome === 'skipped-body')
      this.#d.refusals.note(
        'inbound',
        'mirror_buffer',
        `waypoint gave up a mirror copy: the request body is over ${this.#d.bufferBytes} bytes (waypointMirrorBufferBytes)`,
        { client, ...labels },
      );
  }
}
