// Node's own floor as an L7 hop (bench/l7/node-floor.ts): node:http in and out, nothing else, started with
// a waypoint's node flags and environment. Its RSS is what the waypoint's is read against.

import type { L7Contender } from '../contender.js';
import { ambitMissing, ambitVersion } from './ambit.js';
import { startNodeHop } from './hop.js';

export const contender: L7Contender = {
  name: 'node-floor',
  description:
    'the least a Node process does as this hop: node:http server and keep-alive agent, each request piped ' +
    "through, no routing, metrics or logs, node started as a waypoint's (bench/l7/node-floor.ts)",
  missing: ambitMissing,
  version: ambitVersion,
  start: (ctx) => startNodeHop(ctx, 'node floor', 'dist/bench/l7/node-floor.js'),
};
