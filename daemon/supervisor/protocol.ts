// The messages between the supervisor and its workers, over child_process.fork's channel (cluster's), with
// the 'advanced' serialization so that Dates (certificate lifetimes) arrive as Dates.
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import type { LogLevel } from '../../lib/log.js';
import type { Mesh } from '../../lib/mesh/model.js';
import type { IssuedCertificate } from '../identity/ca.js';
import type { ConnectionRow, TapEvent, TapFilter } from '../observe/connections.js';
import type { BoundPorts } from '../own-listeners.js';
import type { Readiness } from '../readiness.js';

export type MetricsJson = MetricObjectWithValues<MetricValue<string>>[];

/** What a worker tells the supervisor it is doing, for readiness, /workers and the config dump. */
export interface WorkerStatus {
  readonly readiness: Readiness;
  /** Connections carried now (the live view's table). */
  readonly open: number;
  readonly pool: { sessions: number; streams: number };
  readonly inbound: { open: number; connecting: number };
}

/** Questions and what answers them; either side may ask the other. */
export interface Answers {
  issue: IssuedCertificate;
  roots: string[];
  connections: ConnectionRow[];
  metrics: MetricsJson;
  status: WorkerStatus;
}
export type Question =
  | { q: 'issue'; identity: string; ttlMs: number }
  | { q: 'roots' }
  | { q: 'connections'; filter: TapFilter }
  | { q: 'metrics' }
  | { q: 'status' };

export type Reply =
  | { t: 'reply'; id: number; ok: true; value: unknown }
  | { t: 'reply'; id: number; ok: false; error: string };
export interface Ask {
  t: 'ask';
  id: number;
  what: Question;
}

/** The first message a worker gets, answering its hello: what its own control plane would have given it. */
export interface Init {
  t: 'init';
  kind: 'embedded' | 'consul';
  /** Consul's trust domain and datacenter in Consul mode (the worker's config has the configured ones). */
  trustDomain: string;
  datacenter: string;
  mesh: Mesh;
  logLevel: LogLevel;
}

export type ToWorker =
  | Init
  | { t: 'mesh'; mesh: Mesh }
  | { t: 'roots'; roots: string[] }
  | { t: 'rotated'; identity: string }
  /** Stop accepting and carry what is open to its end, for at most timeoutMs; then exit. */
  | { t: 'drain'; timeoutMs: number; reason: 'reload' | 'stop' }
  | { t: 'logLevel'; level: LogLevel }
  /** Someone taps the supervisor's /tap (on), or nobody does any more (off): relay events, or stop. */
  | { t: 'tap'; on: boolean }
  /** The answer to a `listen`, sent with the socket's handle (none when `error` says why not). */
  | { t: 'listening'; id: number; error?: string }
  | Ask
  | Reply;

export type FromWorker =
  | { t: 'hello' }
  | { t: 'ready'; ports: BoundPorts }
  /** Sent last, before the worker exits: what it carried, so the supervisor's counters do not go back. */
  | { t: 'drained'; remaining: number; counters: MetricsJson }
  | { t: 'event'; event: TapEvent }
  /** An explicit upstream's socket, held by the supervisor so that reloads and re-execs never close it. */
  | { t: 'listen'; id: number; host: string; port: number }
  /** That upstream was removed: the supervisor closes its socket once no worker listens there. */
  | { t: 'unlisten'; host: string; port: number }
  | Ask
  | Reply;

/** Whether a message off the channel is one of ours (cluster's own carry a `cmd`). */
export const isMessage = (m: unknown): m is { t: string } =>
  typeof m === 'object' && m !== null && typeof (m as { t?: unknown }).t === 'string';
