import { type Server, createServer } from 'node:net';
import type { Logger } from '../../../lib/log.js';
import type { Upstream, Workload } from '../../../lib/mesh/model.js';
import { joinHostPort } from '../../../lib/net/hostport.js';
import type { ListenerGate } from '../../limits/fds.js';
import type { Outbound } from './outbound.js';

/** Where a worker gets its upstream sockets from (the supervisor); release() when one is no longer wanted. */
export interface HeldSockets {
  acquire(host: string, port: number): Promise<object>;
  release(host: string, port: number): void;
}

interface Binding {
  server: Server;
  workload: Workload;
  upstream: Upstream;
  bound: boolean;
  error: string | undefined;
}

/**
 * Explicit mode, for hosts where ambitd cannot capture traffic: each local workload's upstreams become
 * local listeners, and a connection to one is (that workload, that service) for the outbound path.
 * Reconciled on every catalog change; removing a listener never cuts the connections it already accepted.
 */
export class ExplicitListeners {
  readonly #outbound: Outbound;
  readonly #log: Logger;
  readonly #bindings = new Map<string, Binding>();
  /** Set by close(): a reconcile still in flight (it awaits certificates first) must not bind again. */
  #closed = false;
  /** Admission of each accepted connection (the descriptor reserve); every connection when unset. */
  gate: ListenerGate | undefined;
  /**
   * Under a supervisor: the sockets it holds for each upstream (one per address, shared by its workers,
   * kept across reloads and re-execs). Unset: each listener binds its own.
   */
  held: HeldSockets | undefined;

  constructor(outbound: Outbound, logger: Logger) {
    this.#outbound = outbound;
    this.#log = logger;
  }

  async reconcile(local: readonly Workload[]): Promise<void> {
    if (this.#closed) return;
    const wanted = new Map<string, { workload: Workload; upstream: Upstream }>();
    for (const w of local)
      for (const u of w.upstreams)
        wanted.set(joinHostPort(u.listenHost, u.listenPort), { workload: w, upstream: u });
    for (const [addr, b] of this.#bindings) {
      if (!wanted.has(addr)) {
        b.server.close();
        if (b.bound) this.held?.release(b.upstream.listenHost, b.upstream.listenPort);
        this.#bindings.delete(addr);
        this.#log.info({ listen: addr, workload: b.workload.name }, 'upstream listener removed');
      }
    }
    const binds: Promise<void>[] = [];
    for (const [addr, want] of wanted) {
      const existing = this.#bindings.get(addr);
      if (existing?.error !== undefined) {
        // A listener that failed to bind (port taken) is tried again on every change.
        this.#bindings.delete(addr);
      } else if (existing) {
        // Same address, maybe a new target: the next accepted connection follows the new definition.
        existing.workload = want.workload;
        existing.upstream = want.upstream;
        continue;
      }
      binds.push(this.#bind(addr, want.workload, want.upstream));
    }
    await Promise.all(binds);
  }

  #bind(addr: string, workload: Workload, upstream: Upstream): Promise<void> {
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true });
    const binding: Binding = { server, workload, upstream, bound: false, error: undefined };
    this.#bindings.set(addr, binding);
    this.gate?.watch(server);
    server.on('connection', (socket) => {
      if (this.gate && !this.gate.admit(socket)) return;
      const u = binding.upstream;
      this.#outbound.handle(socket, binding.workload, {
        kind: 'service',
        namespace: u.namespace,
        service: u.service,
        port: u.port,
      });
    });
    return new Promise((resolve) => {
      // Closed before it was listening (the daemon stopped meanwhile): listen's callback never comes.
      server.once('close', () => resolve());
      server.once('error', (err) => {
        binding.error = err.message;
        this.#log.error(
          { listen: addr, workload: workload.name, err: err.message },
          'cannot bind upstream listener',
        );
        resolve();
      });
      const listening = (): void => {
        if (this.#closed) {
          server.close();
          resolve();
          return;
        }
        binding.bound = true;
        this.#log.info(
          { listen: addr, workload: workload.name, service: upstream.service },
          'upstream listener bound',
        );
        resolve();
      };
      const held = this.held;
      if (!held) {
        server.listen(upstream.listenPort, upstream.listenHost, listening);
        return;
      }
      held.acquire(upstream.listenHost, upstream.listenPort).then(
        (handle) => {
          if (this.#closed || this.#bindings.get(addr) !== binding) {
            if (!this.#closed) held.release(upstream.listenHost, upstream.listenPort);
            resolve();
            return;
          }
          server.listen(handle, listening);
        },
        (err: Error) => server.emit('error', err),
      );
    });
  }

  /** Listeners that failed to bind, for readiness. */
  failures(): { listen: string; workload: string; error: string }[] {
    const out: { listen: string; workload: string; error: string }[] = [];
    for (const [listen, b] of this.#bindings)
      if (b.error) out.push({ listen, workload: b.workload.name, error: b.error });
    return out;
  }

  listening(): { listen: string; workload: string; service: string }[] {
    const out: { listen: string; workload: string; service: string }[] = [];
    for (const [listen, b] of this.#bindings)
      if (b.bound) out.push({ listen, workload: b.workload.name, service: b.upstream.service });
    return out;
  }

  /** The host and port of every upstream listener bound now. */
  bound(): [string, number][] {
    const out: [string, number][] = [];
    for (const b of this.#bindings.values())
      if (b.bound) out.push([b.upstream.listenHost, b.upstream.listenPort]);
    return out;
  }

  close(): void {
    this.#closed = true;
    for (const b of this.#bindings.values()) b.server.close();
    this.#bindings.clear();
  }
}
