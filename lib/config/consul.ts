import { readFileSync } from 'node:fs';
import { consulBaseUrl } from '../consul/client.js';
import { Secret } from '../consul/secret.js';
import { ConfigError } from '../errors.js';
import type { ConsulSettings } from './daemon-config.js';
import type { Where } from './parse.js';
import type { SettingKey, SettingValues } from './schema.js';

/** The three Consul settings taken together: an address turns Consul mode on, a token needs an address. */
export function consulSettings(
  v: Pick<SettingValues, 'consul' | 'consulToken' | 'consulTokenFile'>,
  at: (field: SettingKey) => Where,
): ConsulSettings | undefined {
  if (v.consul === undefined) {
    if (v.consulToken || v.consulTokenFile) {
      throw new ConfigError(
        'a Consul token is set but no Consul address (--consul or CONSUL_HTTP_ADDR)',
        at('consulToken'),
      );
    }
    return undefined;
  }
  consulBaseUrl(v.consul, at('consul').field);
  let token = v.consulToken;
  if (!token && v.consulTokenFile) {
    let text: string;
    try {
      text = readFileSync(v.consulTokenFile, 'utf8');
    } catch (err) {
      throw new ConfigError(
        `cannot read the token file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        at('consulTokenFile'),
      );
    }
    if (!text.trim()) throw new ConfigError('the token file is empty', at('consulTokenFile'));
    token = new Secret(text.trim());
  }
  return {
    address: v.consul,
    token,
    waitMs: 300_000,
    minIntervalMs: 1000,
    backoffInitialMs: 1000,
    backoffMaxMs: 30_000,
    startTimeoutMs: 10_000,
  };
}
