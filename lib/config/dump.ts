import type { DaemonConfig } from './daemon-config.js';

export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

/**
 * The configuration as GET /config_dump shows it: every field, a setting the schema marks `secret` (a
 * Secret since it was parsed) as "[redacted]", unset optional fields left out.
 */
export function configDump(config: DaemonConfig): { [key: string]: Json } {
  return JSON.parse(JSON.stringify(config)) as { [key: string]: Json };
}
