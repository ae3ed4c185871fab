// No hop: the load generator talks to the upstream itself. The limit of the machine, and the base that
// "latency added" is measured from.

import type { L7Contender } from '../contender.js';

export const contender: L7Contender = {
  name: 'direct',
  description: 'no hop: the load generator talks to the upstream server itself (the limit)',
  missing: () => undefined,
  version: () => 'no hop',
  async start(ctx) {
    return { port: ctx.upstreamPort, pids: [], stop: async () => {} };
  },
};
