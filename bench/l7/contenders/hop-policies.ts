// hop-chain with issue 16's policies configured: a retry policy and limits far above the load
// (bench/l7/policies.ts). Its CPU per request over hop-chain's is what the policies cost.

import type { L7Contender } from '../contender.js';
import { ambitMissing, ambitVersion } from './ambit.js';
import { startPlainHop } from './hop.js';

export const contender: L7Contender = {
  name: 'hop-policies',
  description:
    'hop-chain with a retry policy (NumRetries 2, RetryOn 5xx) on the route, MaxConcurrentRequests 1000 ' +
    "in the client's UpstreamConfig and RateLimits 100,000 req/s on the service (bench/l7/policies.ts)",
  missing: ambitMissing,
  version: ambitVersion,
  start: (ctx) => startPlainHop(ctx, 'policies'),
};
