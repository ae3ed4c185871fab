// The shapes of the admin API's live view, as ambitd serves them and `ambit tap`/`ambit top` read them:
// `GET /connections` rows and `/tap` events, and the filters both take.

/** The side of the daemon a connection came in on. */
export type Direction = 'inbound' | 'outbound';

/** One end of a connection as the access log names it (account.ts's Party, without the labels' metadata). */
export interface End {
  readonly addr?: string | undefined;
  readonly workload?: string | undefined;
  readonly namespace?: string | undefined;
  readonly service?: string | undefined;
  readonly principal?: string | undefined;
}

/** A row of `GET /connections`. */
export interface ConnectionRow {
  readonly id: number;
  readonly direction: Direction;
  readonly src: End;
  readonly dst: End;
  readonly security: string;
  readonly started: string;
  readonly age_ms: number;
  readonly bytes_sent: number;
  readonly bytes_received: number;
}

export type TapStatus = 'open' | 'closed' | 'reset' | 'refused';

/** What a waypoint's request event says of the request (L7 services only). */
export interface TapRequest {
  readonly protocol: 'http' | 'grpc';
  readonly method: string | undefined;
  readonly path: string | undefined;
  readonly authority: string | undefined;
  readonly response_code: number;
  readonly route?: string | undefined;
  readonly split?: string | undefined;
  readonly subset?: string | undefined;
  readonly endpoint?: string | undefined;
  readonly trace_id?: string | undefined;
}

/**
 * One event of the tap: an opened, closed (or reset) or refused connection, or (at a waypoint) a request
 * that is over, with `request` set.
 */
export interface TapEvent {
  readonly event: 'opened' | 'closed' | 'refused' | 'request';
  readonly status: TapStatus;
  readonly time: string;
  readonly id: number | undefined;
  readonly direction: Direction;
  readonly src: End;
  readonly dst: End;
  readonly security: string;
  readonly duration_ms?: number;
  readonly bytes_sent?: number;
  readonly bytes_received?: number;
  readonly reason?: string;
  readonly response_flags?: string;
  readonly request?: TapRequest;
}

/** What a tap asks for; every field it sets must match (`to`: the destination service alone). */
export interface TapFilter {
  readonly workload?: string | undefined;
  readonly service?: string | undefined;
  readonly to?: string | undefined;
  readonly identity?: string | undefined;
  readonly direction?: Direction | undefined;
  readonly status?: TapStatus | undefined;
}

export const TAP_FILTER_KEYS = ['workload', 'service', 'to', 'identity', 'direction', 'status'] as const;
