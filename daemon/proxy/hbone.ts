import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { DEFAULT_LIMITS, type Limits } from '../../lib/config.js';
import { joinHostPort, splitHostPort } from '../../lib/net/hostport.js';
import { randomHex } from '../../lib/random.js';
import type { H2SessionOptions } from './h2/session.js';

// HBONE as ztunnel speaks it: TLS 1.3, ALPN h2, an HTTP/2 CONNECT per tunneled connection whose :authority
// is the destination workload's ip:port.

/**
 * Per-stream receive window: it starts at 1 MiB and grows to ztunnel's 4 MiB when a round trip needs it (a
 * BDP sample in the session). On one host or a LAN the round trip is short but the scheduler's is not: on
 * a busy 2-core host 256 KiB held one connection's bulk to the pace of WINDOW_UPDATEs (1 MiB carried 20%
 * more, bench/NOTES.md 2026-12-01). A slow reader holds 1 MiB here rather than 4 MiB; the 4 MiB bound a
 * peer can drive the window to is unchanged.
 */
export const STREAM_WINDOW = 1024 * 1024;
export const MAX_STREAM_WINDOW = 4 * 1024 * 1024;
export const CONNECTION_WINDOW = 16 * 1024 * 1024;
export const MAX_FRAME = 1024 * 1024 - 1;
export const SERVER_MAX_STREAMS = DEFAULT_LIMITS.maxInboundStreams;

/** The HTTP/2 bounds of docs/limits.md, as config gives them (the session enforces them). */
export type H2Limits = Pick<
  Limits,
  'maxHeaderListSize' | 'maxHeaderFrames' | 'streamResetRate' | 'maxOutboundControl'
>;

export const h2Options = (
  maxConcurrentStreams: number,
  limits: H2Limits = DEFAULT_LIMITS,
): H2SessionOptions => ({
  maxConcurrentStreams,
  streamWindow: STREAM_WINDOW,
  maxStreamWindow: MAX_STREAM_WINDOW,
  connectionWindow: CONNECTION_WINDOW,
  maxFrameSize: MAX_FRAME,
  maxHeaderListSize: limits.maxHeaderListSize,
  maxHeaderFrames: limits.maxHeaderFrames,
  streamResetRate: limits.streamResetRate,
  maxOutboundControl: limits.maxOutboundControl,
});

export interface HostPort {
  readonly ip: string;
  readonly port: number;
}

/** `ip:port` or `[ipv6]:port`; anything else (names, missing port, an unbracketed IPv6) is malformed. */
export function parseAuthority(authority: string | undefined): HostPort | undefined {
  const hp = authority ? splitHostPort(authority) : undefined;
  if (hp === undefined || !/^\d{1,5}$/.test(hp.port)) return undefined;
  const port = Number(hp.port);
  if (port < 1 || port > 65535 || isIP(hp.host) === 0) return undefined;
  return { ip: hp.host, port };
}

export const forwardedFor = (ip: string | undefined, port: number | undefined): string =>
  `for="${joinHostPort(ip ?? 'unknown', port ?? 0)}"`;

/** Parses the address out of `forwarded: for="ip:port"` (RFC 7239); only the first element counts. */
export function parseForwardedFor(value: string | undefined): string | undefined {
  if (!value) return undefined;
  const m = /for=(?:"([^"]*)"|([^;,\s]*))/i.exec(value);
  const node = m?.[1] ?? m?.[2];
  if (!node) return undefined;
  if (isIP(node) !== 0) return node;
  if (node.startsWith('['))
    return parseAuthority(node)?.ip ?? (isIP(node.slice(1, -1)) === 6 ? node.slice(1, -1) : undefined);
  return parseAuthority(node)?.ip;
}

/**
 * Several workloads may share a node address, so the client names the identity it expects in SNI and the
 * server answers with that workload's certificate. SNI must be a DNS name, hence a digest label.
 */
export function sniForIdentity(identity: string): string {
  return `${createHash('sha256').update(identity).digest('hex').slice(0, 32)}.id.ambit`;
}

/** A W3C traceparent with fresh random ids, sampled flag off. */
export function newTraceparent(): string {
  return `00-${randomHex(16)}-${randomHex(8)}-00`;
}
