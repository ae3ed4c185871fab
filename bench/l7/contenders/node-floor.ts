// Node's own floor as an L7 hop (bench/l7/node-floor.ts): node:http in and out, nothing else, started with
// a waypoint's node flags and environment. Its RSS is what the waypoint's is read against.

import { join } from 'node:path';
import { WAYPOINT_ENV, WAYPOINT_NODE_FLAGS } from '../../../daemon/waypoint/runtime.js';
import { freePort, startProcess } from '../../proc.js';
import type { L7Contender, Running } from '../contender.js';
import { stopAll, untilAnswers } from '../ready.js';
import { ambitMissing, ambitVersion } from './ambit.js';

export const contender: L7Contender = {
  name: 'node-floor',
  description:
    'the least a Node process does as this hop: node:http server and keep-alive agent, each request piped ' +
    "through, no routing, metrics or logs, node started as a waypoint's (bench/l7/node-floor.ts)",
  missing: ambitMissing,
  version: ambitVersion,
  async start(ctx): Promise<Running> {
    const port = await freePort();
    const proc = startProcess(
      'node floor',
      process.execPath,
      [
        ...WAYPOINT_NODE_FLAGS,
        join(ctx.root, 'dist/bench/l7/node-floor.js'),
        String(port),
        String(ctx.upstreamPort),
      ],
      { env: { ...process.env, ...WAYPOINT_ENV } },
    );
    try {
      await untilAnswers(port, 10_000, 'node floor', [proc]);
      return { port, pids: [proc.pid], stop: () => stopAll([proc]) };
    } catch (e) {
      await stopAll([proc]);
      throw e;
    }
  },
};
