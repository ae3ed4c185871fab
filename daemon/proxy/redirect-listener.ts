import { type Server, type Socket, createServer } from 'node:net';
import type { Listen } from '../../lib/config.js';
import type { ListenerGate } from '../limits/fds.js';

/**
 * A listener for connections iptables REDIRECTed to the daemon (15001 outbound, 15006 plaintext inbound):
 * bound on the given address, plus [::] (IPv6 only) when that is 0.0.0.0, so IPv6 capture lands too.
 * Sockets arrive paused: nothing is read before the subclass has decided where they go.
 */
export abstract class RedirectListener {
  #servers: Server[] = [];
  port = 0;
  /** Admission of each accepted connection (the descriptor reserve); every connection when unset. */
  gate: ListenerGate | undefined;

  protected abstract accept(client: Socket): void;

  /**
   * Listens on `listen`, or on the supervisor's held sockets (`held`: the IPv4-or-given one and its IPv6
   * twin), which outlive this process across reloads and re-execs.
   */
  async listen(listen: Listen, held?: { first: object; v6?: object }): Promise<number> {
    const onConnection = (s: Socket): void => {
      if (this.gate && !this.gate.admit(s)) return;
      this.accept(s);
    };
    const server = (): Server => {
      const s = createServer({ allowHalfOpen: true, pauseOnConnect: true }, onConnection);
      this.gate?.watch(s);
      return s;
    };
    const first = server();
    await new Promise<void>((resolve, reject) => {
      first.once('error', reject);
      if (held) first.listen(held.first, () => resolve());
      else
        first.listen({ host: listen.host, port: listen.port, ipv6Only: listen.host === '::' }, () =>
          resolve(),
        );
    });
    this.#servers.push(first);
    const addr = first.address();
    this.port = typeof addr === 'object' && addr ? addr.port : listen.port;
    if (held ? held.v6 : listen.host === '0.0.0.0') {
      const v6 = server();
      const bound = await new Promise<boolean>((resolve) => {
        v6.once('error', () => resolve(false));
        if (held?.v6) v6.listen(held.v6, () => resolve(true));
        else v6.listen({ host: '::', port: this.port, ipv6Only: true }, () => resolve(true));
      });
      if (bound) this.#servers.push(v6);
    }
    return this.port;
  }

  close(): void {
    for (const s of this.#servers) s.close();
    this.#servers = [];
  }
}
