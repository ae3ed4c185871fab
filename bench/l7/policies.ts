// The resilience policies issue 16 says cost at most 10% CPU per request when configured: a retry policy
// on the route (NumRetries 2, RetryOn 5xx) and the service-defaults limits (the client's
// MaxConcurrentRequests, the destination's RateLimits), set far above the bench's load so that they are
// checked on every request and never refuse one. The `-policies` contenders run with them; the upstream
// answers 200, so no request is retried: the figure is what a configured policy costs a healthy service.

/** The upstream service and the client service every L7 contender of Ambit's uses. */
export const SERVICE = 'l7-upstream';
export const CLIENT_SERVICE = 'l7-client';

/** A service-defaults with its Protocol alone: the chain router's baseline, nothing configured. */
export const CHAIN_ENTRIES: readonly Record<string, unknown>[] = [
  { Kind: 'service-defaults', Name: SERVICE, Protocol: 'http' },
];

export const POLICY_ENTRIES: readonly Record<string, unknown>[] = [
  {
    Kind: 'service-defaults',
    Name: SERVICE,
    Protocol: 'http',
    RateLimits: { InstanceLevel: { RequestsPerSecond: 100_000, RequestsMaxBurst: 100_000 } },
  },
  {
    Kind: 'service-defaults',
    Name: CLIENT_SERVICE,
    UpstreamConfig: { Defaults: { Limits: { MaxConcurrentRequests: 1000 } } },
  },
  {
    Kind: 'service-router',
    Name: SERVICE,
    Routes: [
      {
        Match: { HTTP: { PathPrefix: '/' } },
        Destination: { Service: SERVICE, NumRetries: 2, RetryOn: ['5xx'] },
      },
    ],
  },
];
