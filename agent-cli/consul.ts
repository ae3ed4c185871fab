// The CLI against Consul. `ambit enroll` / `ambit unenroll`: the workload becomes (or stops being) a Consul
// service instance registered with the local agent; every daemon learns it from Consul's health API.
// `ambit list` reads the Ambit-tagged instances of the catalog; `ambit policy` reads and writes intentions.
import { readFileSync } from 'node:fs';
import {
  AMBIT_TAG,
  NODE_SERVICE,
  healthEntries,
  isRecord,
  workloadFromEntry,
  workloadRegistration,
} from '../lib/consul/catalog.js';
import { ConsulClient, DEFAULT_CONSUL_ADDRESS } from '../lib/consul/client.js';
import type { ConsulIntention } from '../lib/consul/intentions.js';
import { Secret } from '../lib/consul/secret.js';
import { ConfigError, NotFoundError } from '../lib/errors.js';
import type { PolicyAction, PolicySource, Workload } from '../lib/mesh/model.js';

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

// --- `ambit list` -------------------------------------------------------------------------------------------

export interface ConsulWorkloads {
  workloads: Workload[];
  /** Ambit-tagged instances whose Meta could not be read: `service/id: why`. */
  skipped: string[];
}

/** Every workload registered through Ambit, across all nodes: the `ambit`-tagged instances in the catalog. */
export async function consulWorkloads(client: ConsulClient): Promise<ConsulWorkloads> {
  try {
    const catalog = await client.get<unknown>('/v1/catalog/services', { permission: 'service:read' });
    const names = Object.entries(isRecord(catalog.body) ? catalog.body : {})
      .filter(([name, tags]) => name !== NODE_SERVICE && Array.isArray(tags) && tags.includes(AMBIT_TAG))
      .map(([name]) => name)
      .sort();
    const answers = await Promise.all(
      names.map((name) =>
        client.get<unknown>(`/v1/health/service/${encodeURIComponent(name)}`, {
          permission: `service:read on "${name}"`,
        }),
      ),
    );
    const workloads: Workload[] = [];
    const skipped: string[] = [];
    for (const answer of answers) {
      for (const e of healthEntries(answer.body)) {
        // Instances of the same service registered by other tools are not Ambit workloads.
        if (!e.Service.Tags?.includes(AMBIT_TAG)) continue;
        try {
          workloads.push(workloadFromEntry(e));
        } catch (err) {
          skipped.push(`${e.Service.Service}/${e.Service.ID}: ${(err as Error).message}`);
        }
      }
    }
    workloads.sort((a, b) => a.name.localeCompare(b.name));
    return { workloads, skipped };
  } finally {
    client.close();
  }
}

// --- `ambit policy` ----------------------------------------------------------------------------------------
// A policy is a set of intentions: one per source, on the destination. Consul decides by precedence (an
// exact source before `*`), the first match wins, and no match leaves the decision to Consul's default
// (its default intention policy, else the ACL default), or to ambitd's defaultPolicy where it is set. What intentions cannot say at L4 is refused rather than dropped.

export const CONSUL_DEFAULT_POLICY_REFUSED =
  "in Consul mode the default is Consul's (its default intention policy, else the ACL default), unless ambitd's defaultPolicy setting overrides it";

export interface ConsulPolicyRequest {
  to: { service: string; namespace: string };
  from: readonly PolicySource[];
  ports: readonly number[];
  name: string | undefined;
}

export interface IntentionChange {
  source: string;
  destination: string;
  action: PolicyAction;
  existed: boolean;
}

const exactQuery = (source: string, destination: string): Record<string, string> => ({
  source,
  destination,
});

/** The intention sources of a policy; throws ConfigError (one line, with the reason) for what they cannot say. */
export function intentionSources(p: ConsulPolicyRequest): string[] {
  if (p.ports.length) {
    throw new ConfigError(
      '--port: in Consul mode policy is intentions, which have no ports (an L4 intention covers every port of the destination); leave out --port',
    );
  }
  if (p.name !== undefined) {
    throw new ConfigError(
      '--name: in Consul mode an intention is named by its source and destination (e.g. web->api), it has no name of its own; leave out --name',
    );
  }
  if (p.to.namespace !== 'default') {
    throw new ConfigError(
      `--to "${p.to.service}.${p.to.namespace}": Consul CE has no namespaces; use "default"`,
    );
  }
  const sources: string[] = [];
  for (const f of p.from) {
    if (f.principal !== undefined) {
      throw new ConfigError(
        `--from-principal "${f.principal}": an intention's source is a Consul service name, not a SPIFFE ID; use --from <service>`,
      );
    }
    if (f.namespace !== undefined && f.namespace !== 'default') {
      const what =
        f.service !== undefined
          ? `--from "${f.service}.${f.namespace}"`
          : `--from-namespace "${f.namespace}"`;
      throw new ConfigError(`${what}: Consul CE has no namespaces; only "default" can be given`);
    }
    // A service (in the one namespace there is), or every service: source `*`.
    sources.push(f.service ?? '*');
  }
  // No source means every peer, as in the mesh file.
  return sources.length ? [...new Set(sources)] : ['*'];
}

/** `ambit policy allow|deny` in Consul mode: upserts one intention per source. */
export async function consulSetIntentions(
  client: ConsulClient,
  action: PolicyAction,
  p: ConsulPolicyRequest,
): Promise<IntentionChange[]> {
  try {
    const sources = intentionSources(p);
    const destination = p.to.service;
    const changes: IntentionChange[] = [];
    for (const source of sources) {
      const query = exactQuery(source, destination);
      const prev = await client.get<unknown>('/v1/connect/intentions/exact', {
        query,
        allow404: true,
        permission: `intentions:read on "${destination}"`,
      });
      await client.put('/v1/connect/intentions/exact', {
        query,
        body: {
          Action: action,
          Description: `ambit policy ${action} --to ${destination}${source === '*' ? '' : ` --from ${source}`}`,
        },
        permission: `intentions:write on "${destination}"`,
      });
      changes.push({ source, destination, action, existed: prev.status !== 404 });
    }
    return changes;
  } finally {
    client.close();
  }
}

/** `ambit policy list` in Consul mode: every intention the token may read, in Consul's order. */
export async function consulIntentions(client: ConsulClient): Promise<ConsulIntention[]> {
  try {
    const res = await client.get<unknown>('/v1/connect/intentions', { permission: 'intentions:read' });
    if (!Array.isArray(res.body)) return [];
    return res.body.filter(
      (i): i is ConsulIntention =>
        isRecord(i) && typeof i.SourceName === 'string' && typeof i.DestinationName === 'string',
    );
  } finally {
    client.close();
  }
}

/** What an intention decides: allow, deny, or l7 (it has Permissions; L4 denies until a waypoint enforces it). */
export const intentionAction = (i: ConsulIntention): string =>
  (i.Permissions?.length ?? 0) > 0 ? 'l7' : (i.Action ?? '');

/** `web->api` → source web, destination api. */
export function parseIntentionName(name: string): { source: string; destination: string } {
  const m = /^([^>]+)->([^>]+)$/.exec(name.trim());
  if (!m) {
    throw new ConfigError(
      `policy "${name}": in Consul mode a policy is an intention, named <source>-><destination> (e.g. web->api; see \`ambit policy list\`)`,
    );
  }
  return { source: m[1]!.trim(), destination: m[2]!.trim() };
}

/** `ambit policy remove <source>-><destination>` in Consul mode. */
export async function consulRemoveIntention(
  client: ConsulClient,
  name: string,
): Promise<{ source: string; destination: string }> {
  try {
    const { source, destination } = parseIntentionName(name);
    const query = exactQuery(source, destination);
    // Consul's DELETE answers true whether or not the intention was there: look first.
    const prev = await client.get<unknown>('/v1/connect/intentions/exact', {
      query,
      allow404: true,
      permission: `intentions:read on "${destination}"`,
    });
    if (prev.status === 404) throw new NotFoundError(`intention ${source}->${destination}`);
    await client.delete('/v1/connect/intentions/exact', {
      query,
      permission: `intentions:write on "${destination}"`,
    });
    return { source, destination };
  } finally {
    client.close();
  }
}
