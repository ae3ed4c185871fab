// `ambit enroll` / `ambit unenroll` against Consul: the workload becomes (or stops being) a Consul service
// instance registered with the local agent. Every daemon learns it from Consul's health API.
import { readFileSync } from 'node:fs';
import { workloadRegistration } from '../daemon/consul/catalog.js';
import { ConsulClient, DEFAULT_CONSUL_ADDRESS } from '../daemon/consul/client.js';
import { Secret } from '../daemon/consul/secret.js';
import { ConfigError } from '../daemon/errors.js';
import type { Workload } from '../daemon/state/model.js';

export interface ConsulCliOpts {
  consul?: string | undefined;
  consulToken?: string | undefined;
  consulTokenFile?: string | undefined;
}

/** The client for --consul / CONSUL_HTTP_ADDR, or undefined when neither is set (embedded mesh file). */
export function consulClient(o: ConsulCliOpts): ConsulClient | undefined {
  if (!o.consul) {
    if (o.consulToken || o.consulTokenFile) {
      throw new ConfigError(
        `a Consul token is set but no Consul address (--consul or CONSUL_HTTP_ADDR; e.g. ${DEFAULT_CONSUL_ADDRESS})`,
      );
    }
    return undefined;
  }
  let token: Secret | undefined;
  if (o.consulToken) token = new Secret(o.consulToken.trim());
  else if (o.consulTokenFile) {
    try {
      token = new Secret(readFileSync(o.consulTokenFile, 'utf8').trim());
    } catch (err) {
      throw new ConfigError(`--consul-token-file ${o.consulTokenFile}: ${(err as Error).message}`);
    }
  }
  return new ConsulClient({ address: o.consul, token });
}

export async function consulEnroll(client: ConsulClient, w: Workload, waypoint?: string): Promise<void> {
  if (w.namespace !== 'default') {
    throw new ConfigError(`--namespace "${w.namespace}": Consul CE has no namespaces; use "default"`);
  }
  let body: ReturnType<typeof workloadRegistration>;
  try {
    body = workloadRegistration(w, { waypoint });
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  try {
    await client.put('/v1/agent/service/register', { body, permission: `service:write on "${w.service}"` });
  } finally {
    client.close();
  }
}

export async function consulUnenroll(client: ConsulClient, name: string): Promise<void> {
  try {
    await client.put(`/v1/agent/service/deregister/${encodeURIComponent(name)}`, {
      permission: `service:write on the service of ${name}`,
    });
  } finally {
    client.close();
  }
}
