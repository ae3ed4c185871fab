// The `hop` contender's engine routed by the ChainRouter a waypoint runs, over entries that set the
// service's protocol and nothing else: the baseline hop-policies is held against (bench/l7/policies.ts).

import type { L7Contender } from '../contender.js';
import { ambitMissing, ambitVersion } from './ambit.js';
import { startPlainHop } from './hop.js';

export const contender: L7Contender = {
  name: 'hop-chain',
  description:
    "the hop contender routed by the waypoint's ChainRouter over a service-defaults with `Protocol: http` " +
    'alone, with its retries and mirrors as a waypoint has them, nothing configured (bench/l7/plain-hop.ts chain)',
  missing: ambitMissing,
  version: ambitVersion,
  start: (ctx) => startPlainHop(ctx, 'chain'),
};
