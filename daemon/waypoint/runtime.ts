// How node is started for `role: waypoint`: the waypoint's drop-in (systemd/waypoint.conf), the bench and
// docs/waypoints.md all take these. A node daemon carries bulk bytes and is tuned for throughput
// (daemon/proxy/reclaim.ts NODE_FLAGS); a waypoint carries small requests, whose garbage is young, and its
// footprint is what it is held to (issue 15: 60 MB).
//
// - No --initial-old-space-size=64: with it the old generation is not collected until it holds 64 MB,
//   and the objects a scavenge promotes under load stay there; the waypoint's peak RSS was 140 MB.
// - --max-semi-space-size=2: the young generation stays at 2 MB semi-spaces instead of growing to 16 MB
//   ones (up to 48 MB committed) when requests come fast. 1 MB saved another 2 MB of RSS, but scavenged
//   twice as often, and cost CPU per request in the bench; 4 MB kept 5 MB more.
// - --max-old-space-size=1024: V8 lets the old generation grow by up to 4x its live size between
//   mark-compacts when the cap is its default (4 GB on the bench's 24 GB host), so the 20 MB a
//   waypoint keeps became 40 MB and more before the first one; under a 1 GB cap the factor is about 1.6.
//   1 GB is fifty times what a waypoint keeps; past it node stops (and systemd restarts it).
// - MALLOC_ARENA_MAX=2: glibc gives each thread that mallocs (V8's helpers, libuv's pool) an arena of its
//   own; two are enough for a process whose work is on one thread.
// Measured in bench/NOTES.md (2026-12-07).

/** The node flags of a waypoint (in place of NODE_FLAGS). */
export const WAYPOINT_NODE_FLAGS = ['--max-semi-space-size=2', '--max-old-space-size=1024'] as const;

/** The environment a waypoint's node is started with. */
export const WAYPOINT_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2' };

/** What of the waypoint's runtime settings this process was started without (empty: all there). */
export function missingWaypointRuntime(
  execArgv: readonly string[] = process.execArgv,
  env: NodeJS.ProcessEnv = process.env,
): string[] {
  const missing: string[] = [];
  for (const f of WAYPOINT_NODE_FLAGS) {
    const name = f.split('=')[0]!;
    // The flag with another value is the operator's choice, not a missing one.
    if (!execArgv.some((a) => a.replace(/_/g, '-').split('=')[0] === name)) missing.push(f);
  }
  for (const [k, v] of Object.entries(WAYPOINT_ENV)) if (env[k] === undefined) missing.push(`${k}=${v}`);
  return missing;
}

/** The flags and the environment in words, for a log line. */
export const waypointRuntime = (): string =>
  [...Object.entries(WAYPOINT_ENV).map(([k, v]) => `${k}=${v}`), 'node', ...WAYPOINT_NODE_FLAGS].join(' ');
