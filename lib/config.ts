// The configuration of ambitd, from one table (config/schema.ts). This file only gathers the modules of
// config/ so that `lib/config.js` stays the one import for the daemon, the CLI and the tests.
export { type ConsulSettings, DEFAULT_LIMITS, type DaemonConfig } from './config/daemon-config.js';
export { configDump, type Json } from './config/dump.js';
export { loadConfig, readConfigFile, readEnv } from './config/load.js';
export { type Listen, type Where, parseDuration, parseListen } from './config/parse.js';
export {
  CONFIG_KEYS,
  type ConfigInput,
  DEFAULT_EXCLUDE_PORTS,
  LIMIT_KEYS,
  type LimitKey,
  type Limits,
  SECTIONS,
  SETTINGS,
  type SettingKey,
  type SettingValues,
  envName,
  flagName,
  optionOf,
  shownDefault,
} from './config/schema.js';
