// The L7 decision library of the waypoint: Consul's config entries, validated as Consul validates them,
// compiled into discovery chains, and the pure decisions one request needs (route, split, endpoint,
// authorization). No sockets here: the data path calls these.

export * from './entries.js';
export { L7ConfigError } from './errors.js';
export { parseGoDuration, durationMs } from './duration.js';
export { compileRe2 } from './regex.js';
export { type Filter, compileFilter } from './filter.js';
export { type EntrySet, indexEntries, protocolOf } from './set.js';
export * from './chain.js';
export * from './match.js';
export * from './route.js';
export * from './endpoints.js';
export * from './lb.js';
export { hash32 } from './hash.js';
export * from './intentions.js';
