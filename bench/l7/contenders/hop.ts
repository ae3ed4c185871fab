// The waypoint's HTTP/1.1 engine alone, as nginx and HAProxy run here: one process, plaintext in and out
// (bench/l7/plain-hop.ts). This is the contender the requests/s and latency targets hold beside
// them; the waypoint contender is the same engine inside the real path, with mTLS and HTTP/2 both sides.

import { join } from 'node:path';
import { WAYPOINT_ENV, WAYPOINT_NODE_FLAGS } from '../../../daemon/waypoint/runtime.js';
import { freePort, startProcess } from '../../proc.js';
import type { L7Contender, L7Context, Running } from '../contender.js';
import { stopAll, untilAnswers } from '../ready.js';
import { ambitMissing, ambitVersion } from './ambit.js';

export const contender: L7Contender = {
  name: 'hop',
  description:
    "the waypoint's HTTP/1.1 engine (daemon/waypoint/http.ts, llhttp) alone, one Node process, plaintext " +
    "both sides, keep-alive upstream, request metrics on, access log off, node started as a waypoint's " +
    '(bench/l7/plain-hop.ts)',
  missing: ambitMissing,
  version: ambitVersion,
  start: (ctx) => startPlainHop(ctx, 'plain'),
};

/** plain-hop.js in one of its modes (its header says what each routes with). */
export const startPlainHop = (ctx: L7Context, mode: 'plain' | 'chain' | 'policies'): Promise<Running> =>
  startNodeHop(ctx, `plain hop (${mode})`, 'dist/bench/l7/plain-hop.js', [mode]);

/**
 * A bench hop script (`<script> <listen port> <upstream port> ...args`) in a node started as a waypoint's
 * is (daemon/waypoint/runtime.ts): the engine's footprint as it runs there. Returns once it answers.
 */
export async function startNodeHop(
  ctx: L7Context,
  name: string,
  script: string,
  args: readonly string[] = [],
): Promise<Running> {
  const port = await freePort();
  const proc = startProcess(
    name,
    process.execPath,
    [...WAYPOINT_NODE_FLAGS, join(ctx.root, script), String(port), String(ctx.upstreamPort), ...args],
    { env: { ...process.env, ...WAYPOINT_ENV } },
  );
  try {
    await untilAnswers(port, 10_000, name, [proc]);
    return { port, pids: [proc.pid], stop: () => stopAll([proc]) };
  } catch (e) {
    await stopAll([proc]);
    throw e;
  }
}
