// Fault injection on a service-router's routes, Istio's fault.delay and fault.abort, written where Consul
// lets a user write it: Consul has no fault fields and refuses unknown ones, so the policy is JSON in the
// router entry's Meta (string values, at most 512 characters each, which Consul keeps as it is given).
// `ambit-fault` applies to every request the router routes (each route and the catch-all);
// `ambit-fault-<i>` to Routes[i] alone, in place of `ambit-fault`. The same entry, Meta and all, goes in
// the mesh file's configEntries. Pure: parsing, its refusals, and one request's draw from an injected RNG.
import type { IncomingHttpHeaders } from 'node:http';
import { durationMs } from './duration.js';
import type { Random } from './lb.js';
import { type Obj, type Reader, join } from './read.js';
import { type RoutePolicies, policyFor, routeMeta } from './route-meta.js';

/** The Meta key of the policy for every route of the router. */
export const FAULT_META = 'ambit-fault';

export interface FaultPolicy {
  /** Hold the request this long before it goes on, for `percent` of the requests. */
  readonly delay?: { readonly ms: number; readonly percent: number };
  /** Answer the request at the waypoint, for `percent` of the requests: HTTP status and gRPC status. */
  readonly abort?: { readonly http: number; readonly grpc: number; readonly percent: number };
  /** Only requests whose header `name` (lower-case) is exactly `exact` meet the fault. */
  readonly header?: { readonly name: string; readonly exact: string };
}

/** A router's faults: per route index, and the one for the routes that have none of their own. */
export type RouterFaults = RoutePolicies<FaultPolicy>;

/** What one request meets: a delay (ms), an abort, both (the delay first, as Envoy's filter), or nothing. */
export interface FaultDraw {
  readonly delayMs?: number;
  readonly abort?: { readonly http: number; readonly grpc: number };
}

// Envoy's mappings (source/common/grpc/status.cc, common.cc): a gRPC abort answers a plain HTTP request
// with its HTTP equivalent, and an HTTP abort answers a gRPC call with its gRPC equivalent.
const GRPC_TO_HTTP = [200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401];
export const grpcToHttp = (code: number): number => GRPC_TO_HTTP[code] ?? 500;
export function httpToGrpc(status: number): number {
  switch (status) {
    case 400:
      return 13;
    case 401:
      return 16;
    case 403:
      return 7;
    case 404:
      return 12;
    case 429:
    case 502:
    case 503:
    case 504:
      return 14;
    default:
      return 2;
  }
}

const GRPC_NAMES = [
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
];

const FAULTS = routeMeta<FaultPolicy>({
  key: FAULT_META,
  noun: 'fault',
  fields: ['Delay', 'Abort', 'Header'],
  parse: parsePolicy,
});

/** The faults of a router entry, or undefined when its Meta names none (route-meta.ts). */
export const routerFaults = FAULTS.read;

/** One policy from its Meta value's object of Delay, Abort and Header. */
function parsePolicy(r: Reader, o: Obj, path: string): FaultPolicy {
  const out: { -readonly [K in keyof FaultPolicy]: FaultPolicy[K] } = {};
  const d = r.optObj(o, 'Delay', path, ['Fixed', 'Percent']);
  if (d) {
    const dp = join(path, 'Delay');
    if (d.Fixed === undefined || d.Fixed === null)
      r.fail(join(dp, 'Fixed'), 'is required (a Go duration, "100ms")');
    if (typeof d.Fixed !== 'string') r.fail(join(dp, 'Fixed'), 'must be a Go duration string ("100ms")');
    const ms = durationMs(d.Fixed);
    if (typeof ms === 'string') r.fail(join(dp, 'Fixed'), ms);
    if (ms <= 0) r.fail(join(dp, 'Fixed'), 'must be more than 0');
    out.delay = { ms, percent: percent(r, d, dp) };
  }
  const a = r.optObj(o, 'Abort', path, ['HTTPStatus', 'GRPCStatus', 'Percent']);
  if (a) {
    const ap = join(path, 'Abort');
    const http = r.uint(a, 'HTTPStatus', ap);
    const grpc = grpcStatus(r, a, ap);
    if ((http === undefined) === (grpc === undefined))
      r.fail(ap, 'needs exactly one of HTTPStatus or GRPCStatus');
    if (http !== undefined && (http < 200 || http > 599))
      r.fail(join(ap, 'HTTPStatus'), 'must be an HTTP status from 200 to 599');
    out.abort =
      http !== undefined
        ? { http, grpc: httpToGrpc(http), percent: percent(r, a, ap) }
        : { http: grpcToHttp(grpc!), grpc: grpc!, percent: percent(r, a, ap) };
  }
  const h = r.optObj(o, 'Header', path, ['Name', 'Exact']);
  if (h) {
    const hp = join(path, 'Header');
    const name = r.nonEmpty(h, 'Name', hp) ?? r.fail(join(hp, 'Name'), 'is required');
    const exact = r.str(h, 'Exact', hp) ?? r.fail(join(hp, 'Exact'), 'is required');
    out.header = { name: name.toLowerCase(), exact };
  }
  if (!out.delay && !out.abort) r.fail(path, 'needs a Delay or an Abort');
  return out;
}

/** Istio's percentage: any value from 0 to 100 (fractions too); unset is every request. */
export function percent(r: Reader, o: Obj, path: string): number {
  const v = r.num(o, 'Percent', path);
  if (v === undefined) return 100;
  if (v < 0 || v > 100) r.fail(join(path, 'Percent'), 'must be a percentage from 0 to 100');
  return v;
}

/** A gRPC status by number (1 to 16) or by its name (`UNAVAILABLE`); OK is no abort. */
function grpcStatus(r: Reader, o: Obj, path: string): number | undefined {
  const v = o.GRPCStatus;
  if (v === undefined || v === null) return undefined;
  const p = join(path, 'GRPCStatus');
  const code = typeof v === 'string' ? GRPC_NAMES.indexOf(v.toUpperCase()) : v;
  if (typeof code !== 'number' || !Number.isInteger(code) || code < 1 || code > 16)
    r.fail(p, `must be a gRPC status from 1 to 16, or its name (${GRPC_NAMES.slice(1, 4).join(', ')}, ...)`);
  return code;
}

/** The policy for route `index` of the router (`implicit`: the catch-all, which has no key of its own). */
export const faultFor: (
  f: RouterFaults,
  index: number | undefined,
  implicit: boolean,
) => FaultPolicy | undefined = policyFor;

const headerValue = (h: IncomingHttpHeaders, name: string): string | undefined => {
  const v = h[name];
  return Array.isArray(v) ? v.join(',') : v;
};

/** Whether the request passes the policy's header gate (a policy without Header lets every request in). */
export const faultHeaderMatches = (p: FaultPolicy, headers: IncomingHttpHeaders): boolean =>
  !p.header || headerValue(headers, p.header.name) === p.header.exact;

/**
 * One request's draw: the header gate, then the delay and the abort each drawn on its own (as Envoy's
 * fault filter does), from `random` in [0, 1). Undefined: the request meets no fault.
 */
export function drawFault(
  p: FaultPolicy,
  headers: IncomingHttpHeaders,
  random: Random,
): FaultDraw | undefined {
  if (!faultHeaderMatches(p, headers)) return undefined;
  const delayed = p.delay !== undefined && hits(p.delay.percent, random);
  const aborted = p.abort !== undefined && hits(p.abort.percent, random);
  if (!delayed && !aborted) return undefined;
  return {
    ...(delayed ? { delayMs: p.delay!.ms } : {}),
    ...(aborted ? { abort: { http: p.abort!.http, grpc: p.abort!.grpc } } : {}),
  };
}

// 100 always hits and 0 never does, whatever the RNG gives.
export const hits = (percent: number, random: Random): boolean =>
  percent >= 100 || (percent > 0 && random() * 100 < percent);

/** The faults of a router entry as the waypoint reads them: parsed once per entry object. */
export const faultsOf = FAULTS.of;

/**
 * The fault policy a request's route meets, and the Meta key that sets it: the chain's router's
 * `ambit-fault-<index>`, else its `ambit-fault`; undefined without a router (route index) or a fault.
 */
export const routeFault = FAULTS.route;
