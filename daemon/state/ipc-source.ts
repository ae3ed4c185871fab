import type { Mesh } from '../../lib/mesh/model.js';
import type { StateStore } from './store.js';

/**
 * A worker's state source: the mesh as the supervisor's one watch (mesh file or Consul) sees it, relayed
 * whole on every change. The supervisor has already refused what its checks refuse, so this applies all.
 */
export class IpcSource {
  #mesh: Mesh;
  #store: StateStore | undefined;
  #closed = false;

  /** `first`: the mesh the supervisor's init carried, in force from start(). */
  constructor(first: Mesh) {
    this.#mesh = first;
  }

  async start(store: StateStore): Promise<void> {
    this.#store = store;
    store.replace(this.#mesh);
  }

  apply(mesh: Mesh): void {
    if (this.#closed) return;
    this.#mesh = mesh;
    this.#store?.replace(mesh);
  }

  close(): void {
    this.#closed = true;
  }
}
