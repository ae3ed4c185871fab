import type { DaemonConfig } from '../../lib/config.js';
import { NODE_CHECK_TTL_S, workloadRegistration } from '../../lib/consul/catalog.js';
import type { ConsulClient } from '../../lib/consul/client.js';
import type { Logger } from '../../lib/log.js';
import { editMeshFile, upsertWorkload } from '../../lib/mesh/edit.js';
import type { Workload } from '../../lib/mesh/model.js';
import type { StateStore } from '../state/store.js';

type Config = Pick<DaemonConfig, 'waypointService' | 'nodeName' | 'advertiseAddress' | 'meshFile'>;

/**
 * A waypoint instance is a workload of its waypoint service on its own node, at the advertise address
 * and the tunnel port: sources reach its HBONE listener there directly.
 */
export function waypointWorkload(config: Config, tunnelPort: number): Workload {
  return {
    name: `${config.waypointService}-${config.nodeName}`,
    service: config.waypointService,
    namespace: 'default',
    node: config.nodeName,
    addresses: [config.advertiseAddress],
    ports: [tunnelPort],
    uid: undefined,
    mode: 'strict',
    upstreams: [],
  };
}

/**
 * The waypoint's own entry in the catalog, kept by whichever process owns the host's control plane: the
 * single process, or the supervisor (its workers carry the traffic, and one entry stands for them all,
 * across reloads and re-execs, since they share the tunnel port).
 */
export class WaypointRegistration {
  readonly #config: Config;
  readonly #store: StateStore;
  readonly #consul: ConsulClient | undefined;
  readonly #log: Logger;
  #registered: string | undefined;
  #beat: NodeJS.Timeout | undefined;

  constructor(config: Config, store: StateStore, consul: ConsulClient | undefined, log: Logger) {
    this.#config = config;
    this.#store = store;
    this.#consul = consul;
    this.#log = log;
  }

  async register(tunnelPort: number): Promise<Workload> {
    const w = waypointWorkload(this.#config, tunnelPort);
    const consul = this.#consul;
    if (consul) {
      // A TTL check it keeps passing, as the node check, not a TCP probe of the tunnel port (to the
      // listener each probe is a failed handshake): a waypoint that dies goes critical within the TTL,
      // one that stops deregisters at once.
      const check = `${w.name}:alive`;
      const body = {
        ...workloadRegistration(w),
        Checks: [
          {
            CheckID: check,
            Name: `ambit: waypoint ${w.name}`,
            TTL: `${NODE_CHECK_TTL_S}s`,
            Status: 'passing',
          },
        ],
      };
      const permission = `service:write on "${w.service}"`;
      await consul.put('/v1/agent/service/register', { body, permission });
      this.#registered = w.name;
      const beat = (): void =>
        void consul
          .put(`/v1/agent/check/update/${encodeURIComponent(check)}`, {
            body: { Status: 'passing' },
            permission,
          })
          .catch((err: Error) =>
            this.#log.warn({ err: err.message, check }, 'cannot update the waypoint check'),
          );
      this.#beat = setInterval(beat, (NODE_CHECK_TTL_S * 1000) / 3).unref();
    } else {
      const current = this.#store.workload(w.name);
      const same =
        current?.node === w.node &&
        current.addresses.join() === w.addresses.join() &&
        current.ports.join() === w.ports.join();
      if (!same) await editMeshFile(this.#config.meshFile, (doc) => void upsertWorkload(doc, w));
    }
    this.#log.info(
      { workload: w.name, service: w.service, at: w.addresses, ports: w.ports },
      'waypoint enrolled',
    );
    return w;
  }

  /**
   * Stops the check's keep-alive. `deregister`: a stop, so the instance leaves the catalog at once; not
   * on a hand-over to a successor, which registered the same instance (same id) and serves it now.
   */
  async close(deregister: boolean): Promise<void> {
    clearInterval(this.#beat);
    this.#beat = undefined;
    const name = this.#registered;
    this.#registered = undefined;
    if (!deregister || !this.#consul || name === undefined) return;
    await this.#consul
      .put(`/v1/agent/service/deregister/${encodeURIComponent(name)}`, {
        permission: `service:write on "${this.#config.waypointService}"`,
      })
      .catch((err: Error) => this.#log.warn({ err: err.message }, 'cannot deregister the waypoint'));
  }
}
