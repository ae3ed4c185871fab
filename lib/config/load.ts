import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { ConfigError } from '../errors.js';
import { consulSettings } from './consul.js';
import { type DaemonConfig, daemonConfig } from './daemon-config.js';
import type { Listen, Where } from './parse.js';
import {
  CONFIG_KEYS,
  type ConfigInput,
  type DefaultContext,
  SETTINGS,
  type Setting,
  type SettingKey,
  type SettingValues,
  envName,
  flagName,
} from './schema.js';

/** Reads a config file (YAML or JSON); unknown keys are errors so that a typo never passes silently. */
export function readConfigFile(file: string): ConfigInput {
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ConfigError(`cannot read: ${(err as Error).message}`, { file });
  }
  if (raw === null || raw === undefined) return {};
  if (typeof raw !== 'object' || Array.isArray(raw))
    throw new ConfigError('must be a mapping of settings', { file });
  for (const k of Object.keys(raw)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(k)) {
      throw new ConfigError(`unknown setting (known: ${CONFIG_KEYS.join(', ')})`, { file, field: k });
    }
  }
  return raw as ConfigInput;
}

export function readEnv(env: NodeJS.ProcessEnv): ConfigInput {
  const out: Record<string, string> = {};
  for (const k of CONFIG_KEYS) {
    const v = env[envName(k)];
    if (v !== undefined && v !== '') out[k] = v;
  }
  return out as ConfigInput;
}

/** Consul's own variables, as its CLI reads them. */
function readConsulEnv(env: NodeJS.ProcessEnv): ConfigInput {
  const out: Record<string, string> = {};
  for (const k of CONFIG_KEYS) {
    const name = (SETTINGS[k] as Setting<unknown, unknown>).consulEnv;
    const v = name === undefined ? undefined : env[name];
    if (v !== undefined && v !== '') out[k] = v;
  }
  return out as ConfigInput;
}

const ENVIRONMENT = 'environment';
const CONSUL_ENVIRONMENT = 'consul-environment';
const FLAGS = 'flags';

/**
 * The one config loader: defaults, then the config file, then the environment, then flags. Each value is
 * checked where it came from, so an error names the file (or variable, or flag) and the field.
 */
export function loadConfig(opts: {
  flags?: ConfigInput;
  env?: NodeJS.ProcessEnv;
  configFile?: string | undefined;
}): DaemonConfig {
  const env = opts.env ?? process.env;
  const layers: { source: string; input: ConfigInput }[] = [];
  const file = opts.configFile ?? env.AMBIT_CONFIG;
  if (file) layers.push({ source: file, input: readConfigFile(file) });
  // AMBIT_CONSUL* and flags override Consul's variables.
  layers.push({ source: CONSUL_ENVIRONMENT, input: readConsulEnv(env) });
  layers.push({ source: ENVIRONMENT, input: readEnv(env) });
  layers.push({ source: FLAGS, input: opts.flags ?? {} });

  const merged: Record<string, unknown> = {};
  const origin = new Map<SettingKey, string>();
  for (const { source, input } of layers) {
    for (const k of CONFIG_KEYS) {
      const v = input[k];
      if (v !== undefined) {
        merged[k] = v;
        origin.set(k, source);
      }
    }
  }
  const at = (field: SettingKey): Where => {
    const src = origin.get(field);
    if (src === ENVIRONMENT) return { field: envName(field) };
    if (src === CONSUL_ENVIRONMENT)
      return { field: (SETTINGS[field] as Setting<unknown, unknown>).consulEnv ?? envName(field) };
    if (src === FLAGS) return { field: flagName(field) };
    return src === undefined ? { field } : { file: src, field };
  };
  const values = resolve(merged, at, env);
  // The daemon's mark is on every packet it sends: were it to carry the reply mark, the reply routing
  // (ip rule fwmark) would send all of it to lo.
  if ((values.captureReplyMark & values.captureMark) !== 0)
    throw new ConfigError(
      `must share no bit with captureMark (0x${values.captureMark.toString(16)}), got 0x${values.captureReplyMark.toString(16)}`,
      at('captureReplyMark'),
    );
  return daemonConfig(values, consulSettings(values, at));
}

/** Parses every setting, given or default; a default that needs another setting parses that one first. */
function resolve(
  merged: Record<string, unknown>,
  at: (field: SettingKey) => Where,
  env: NodeJS.ProcessEnv,
): SettingValues {
  const values = new Map<SettingKey, unknown>();
  const value = (k: SettingKey): unknown => {
    if (!values.has(k)) {
      const s = SETTINGS[k] as Setting<unknown, unknown>;
      const raw = merged[k] ?? (typeof s.default === 'function' ? s.default(ctx) : s.default);
      values.set(k, s.parser.parse(raw, at(k)));
    }
    return values.get(k);
  };
  const ctx: DefaultContext = {
    env,
    get stateDir() {
      return value('stateDir') as string;
    },
    get tunnel() {
      return value('tunnel') as Listen;
    },
  };
  for (const k of CONFIG_KEYS) value(k);
  return Object.fromEntries(values) as SettingValues;
}
