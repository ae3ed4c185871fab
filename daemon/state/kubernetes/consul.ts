import { workloadRegistration } from '../../../lib/consul/catalog.js';
import type { ConsulClient } from '../../../lib/consul/client.js';
import type { Logger } from '../../../lib/log.js';
import type { Workload } from '../../../lib/mesh/model.js';
// With Consul as the control plane, the pods of this node go into Consul's catalog through the node's
// agent, as consul-k8s's endpoints controller puts them: the other nodes (with `kubernetesScope: node`,
// which watches only this node's pods) and anything else that reads Consul then know them. Only this
// node's pods, each by its own daemon, so that one agent never registers another node's services.
import { Coalesced } from './coalesce.js';

/** The Meta key that marks a registration as a pod's, made by the pod watch (not by `ambit enroll`). */
export const POD_META = 'ambit-kubernetes-pod';

/** After a failed registration, when the next attempt is made without waiting for a pod change. */
const RETRY_MS = 5000;

export class ConsulPodRegistry {
  readonly #client: ConsulClient;
  readonly #log: Logger;
  readonly #local: () => Workload[];
  /** What the agent holds from us: service ID to the body it was registered with. */
  readonly #registered = new Map<string, string>();
  readonly #syncs = new Coalesced(
    () => this.#once(),
    () => this.#closed,
  );
  #retry: NodeJS.Timeout | undefined;
  #closed = false;
  /** Whether the agent's own list was read: what a previous daemon registered is ours to keep or remove. */
  #adopted = false;
  readonly #nodeName: string;

  constructor(client: ConsulClient, log: Logger, nodeName: string, local: () => Workload[]) {
    this.#client = client;
    this.#nodeName = nodeName;
    this.#log = log.child({ component: 'kubernetes-consul' });
    this.#local = local;
  }

  /** Registers the pods new or changed, deregisters the ones gone; one run at a time. */
  sync(): Promise<void> {
    return this.#syncs.sync();
  }

  /**
   * Stops syncing. The registrations stay: a restarted or updated daemon finds them in place, and a pod
   * that is gone is deregistered by the next daemon's first sync (it registers only what it lists).
   */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#retry);
  }

  /** The pods a previous daemon of this node registered: re-registered if still wanted, else removed. */
  async #adopt(): Promise<void> {
    const res = await this.#client.get<Record<string, { ID?: string; Meta?: Record<string, string> }>>(
      '/v1/agent/services',
      { permission: 'service:read' },
    );
    for (const [id, s] of Object.entries(res.body ?? {}))
      if (s.Meta?.[POD_META] === this.#nodeName && !this.#registered.has(id)) this.#registered.set(id, '');
    this.#adopted = true;
  }

  async #once(): Promise<void> {
    if (this.#closed) return;
    let failed = false;
    if (!this.#adopted) {
      try {
        await this.#adopt();
      } catch (err) {
        failed = true;
        this.#log.warn({ err: (err as Error).message }, "cannot read the agent's services; retrying");
      }
    }
    const wanted = new Map<string, { service: string; body: ReturnType<typeof workloadRegistration> }>();
    for (const w of this.#local()) {
      try {
        const body = workloadRegistration(w);
        body.Meta = { ...body.Meta, [POD_META]: this.#nodeName };
        wanted.set(w.name, { service: w.service, body });
      } catch (err) {
        this.#log.warn({ workload: w.name, err: (err as Error).message }, 'pod not registered in Consul');
      }
    }
    for (const [id, { service, body }] of wanted) {
      const text = JSON.stringify(body);
      if (this.#registered.get(id) === text) continue;
      try {
        await this.#client.put('/v1/agent/service/register', {
          body,
          permission: `service:write on "${service}"`,
        });
        this.#registered.set(id, text);
        this.#log.info({ workload: id, service }, 'pod registered in Consul');
      } catch (err) {
        failed = true;
        this.#log.warn(
          { workload: id, err: (err as Error).message },
          'cannot register the pod in Consul; retrying',
        );
      }
    }
    for (const id of [...this.#registered.keys()]) {
      if (wanted.has(id)) continue;
      try {
        await this.#client.put(`/v1/agent/service/deregister/${encodeURIComponent(id)}`, {
          permission: `service:write on the service of ${id}`,
        });
        this.#registered.delete(id);
        this.#log.info({ workload: id }, 'pod deregistered from Consul');
      } catch (err) {
        failed = true;
        this.#log.warn(
          { workload: id, err: (err as Error).message },
          'cannot deregister the pod from Consul; retrying',
        );
      }
    }
    if (failed && !this.#closed) {
      clearTimeout(this.#retry);
      this.#retry = setTimeout(() => void this.sync(), RETRY_MS);
      this.#retry.unref();
    }
  }
}
