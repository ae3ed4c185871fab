// The waypoint contender with issue 16's policies in the mesh file's configEntries: a retry policy and
// limits far above the load (bench/l7/policies.ts). Its CPU per request over waypoint's is what they cost.

import type { L7Contender, Running } from '../contender.js';
import { POLICY_ENTRIES } from '../policies.js';
import { ambitMissing, ambitVersion, startAmbitPath } from './ambit.js';

export const contender: L7Contender = {
  name: 'waypoint-policies',
  description:
    'the waypoint contender with a retry policy (NumRetries 2, RetryOn 5xx), MaxConcurrentRequests 1000 and ' +
    'RateLimits 100,000 req/s in the mesh file (bench/l7/policies.ts); only the waypoint is charged',
  missing: ambitMissing,
  version: ambitVersion,
  async start(ctx): Promise<Running> {
    const path = await startAmbitPath(ctx, POLICY_ENTRIES);
    return { port: path.port, pids: [path.pids['wp-node']], stop: path.stop };
  },
};
