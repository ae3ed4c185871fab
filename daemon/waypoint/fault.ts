// Fault injection in the waypoint's engines: what a drawn fault (lib/l7/fault.ts) does to one request. A
// delay holds the request before it goes to its endpoint; an abort answers it at the waypoint with the
// drawn status, Envoy's "fault filter abort", and response flag FI (DI for a delay, both when both hit).
import type { FaultDraw } from '../../lib/l7/fault.js';

export const FAULT_BODY = 'fault filter abort';

/** An abort due after a delay: what the delayed request meets instead of its endpoint. */
export class FaultAbort extends Error {
  readonly status: number;
  readonly grpc: number;
  constructor(abort: NonNullable<FaultDraw['abort']>) {
    super(`fault injected: abort ${abort.http}`);
    this.status = abort.http;
    this.grpc = abort.grpc;
  }
}

/** Envoy's response flags for what a request met: DI delayed, FI aborted. */
export const faultFlags = (f: FaultDraw): string =>
  f.delayMs !== undefined ? (f.abort ? 'DI,FI' : 'DI') : 'FI';

/** `then` once `ms` have passed; the abort drawn with the delay instead, when there is one. */
export function afterDelay<T>(f: FaultDraw, then: () => T | Promise<T>): Promise<T> {
  return new Promise<void>((resolve) => setTimeout(resolve, f.delayMs ?? 0).unref()).then(() => {
    if (f.abort) throw new FaultAbort(f.abort);
    return then();
  });
}
