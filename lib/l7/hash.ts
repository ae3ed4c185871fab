// A 32-bit string hash for the hash-based balancers: fast, well mixed (murmur3's finaliser over an FNV-1a
// walk), and the same in every process, so that every waypoint instance maps a key to the same endpoint.
// Envoy uses xxHash64; the values differ, the properties that matter (stable, uniform) do not.

export function hash32(s: string, seed = 0): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
