import { type Backend, detectBackend, installCapture, setGate } from '../../../lib/capture/iptables.js';
import { captureSpec } from '../../../lib/capture/spec.js';
import { resolveUsers } from '../../../lib/capture/users.js';
import type { DaemonConfig } from '../../../lib/config.js';
import type { Logger } from '../../../lib/log.js';
import type { Workload } from '../../../lib/mesh/model.js';
// With capture and the pod watch, the rules follow the pods: `ambit capture install` (the DaemonSet's init
// container) can only install the rules for what was enrolled when it ran, and pods come and go all day.
// Each change of this node's pod workloads reinstalls them (idempotent, one run at a time, a burst of
// changes as one run), with the same inputs as `ambit capture install`.
import { Coalesced } from './coalesce.js';

export class PodCapture {
  readonly #config: DaemonConfig;
  readonly #log: Logger;
  readonly #local: () => Workload[];
  readonly #nodeAddress: () => string | undefined;
  readonly #syncs = new Coalesced(() => this.#once());
  #last = '';
  #backend: Backend | undefined;
  /** Runs that failed (iptables missing, no CAP_NET_ADMIN): each is logged. */
  failures = 0;
  runs = 0;

  constructor(
    config: DaemonConfig,
    log: Logger,
    local: () => Workload[],
    nodeAddress: () => string | undefined,
  ) {
    this.#config = config;
    this.#log = log.child({ component: 'kubernetes-capture' });
    this.#local = local;
    this.#nodeAddress = nodeAddress;
  }

  /** Brings the rules up to date with this node's workloads; resolves once they are (or failed, logged). */
  sync(): Promise<void> {
    return this.#syncs.sync();
  }

  async #once(): Promise<void> {
    const local = this.#local();
    const key = JSON.stringify(local.map((w) => [w.name, w.addresses, w.ports, w.mode, w.failMode]));
    if (key === this.#last) return;
    try {
      const config = this.#config;
      this.#backend ??= await detectBackend(config.capture.backend);
      const checkers = await resolveUsers(config.capture.checkUsers);
      const spec = captureSpec(config, local, { nodeAddress: this.#nodeAddress(), checkUids: checkers.uids });
      await installCapture(this.#backend, spec);
      // A fail-open workload new since the gate was opened needs it open too: ambitd runs.
      await setGate(this.#backend, spec, true);
      this.#last = key;
      this.runs++;
      this.#log.info({ workloads: local.length, backend: this.#backend }, 'capture rules follow the pods');
    } catch (err) {
      this.failures++;
      this.#log.error(
        { err: (err as Error).message },
        'cannot bring the capture rules up to date with the pods; the rules installed before stay',
      );
    }
  }
}
