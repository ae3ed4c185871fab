// systemd's notify protocol (sd_notify(3)) over $NOTIFY_SOCKET, for `Type=notify`: READY=1 once ambitd
// serves, RELOADING=1 while a reload starts new workers (systemctl reload waits for the READY=1 after it),
// STOPPING=1, and WATCHDOG=1 keep-alives at half of WatchdogSec. Without $NOTIFY_SOCKET every call is a
// no-op, so the same ambitd runs under systemd and anywhere else.
import type { Logger } from '../../lib/log.js';
import { binding } from '../native/index.js';

export type NotifySend = (socket: string, message: string) => void;

export class Systemd {
  readonly #socket: string | undefined;
  readonly #send: NotifySend;
  readonly #log: Logger;
  readonly #watchdogUsec: number | undefined;
  #watchdog: NodeJS.Timeout | undefined;
  #failing = false;

  constructor(log: Logger, env: NodeJS.ProcessEnv = process.env, send?: NotifySend) {
    this.#log = log;
    this.#socket = env.NOTIFY_SOCKET || undefined;
    this.#send = send ?? ((s, m) => binding().notify(s, m));
    const usec = Number(env.WATCHDOG_USEC);
    // WATCHDOG_PID names the process the watchdog is for; another process (a worker) leaves it alone.
    const forUs = env.WATCHDOG_PID === undefined || Number(env.WATCHDOG_PID) === process.pid;
    this.#watchdogUsec = Number.isFinite(usec) && usec > 0 && forUs ? usec : undefined;
  }

  get enabled(): boolean {
    return this.#socket !== undefined;
  }

  ready(status: string): void {
    this.#notify(`READY=1\nMAINPID=${process.pid}\nSTATUS=${status}`);
  }

  /**
   * A re-exec's last word as the main process: the successor is the service's main process from now on
   * (NotifyAccess=main then accepts its keep-alives), and it is ready.
   */
  handOver(pid: number, status: string): void {
    this.#notify(`MAINPID=${pid}\nREADY=1\nSTATUS=${status}`);
  }

  reloading(): void {
    // CLOCK_MONOTONIC, as systemd wants it: Node's hrtime is that clock on Linux.
    this.#notify(`RELOADING=1\nMONOTONIC_USEC=${process.hrtime.bigint() / 1000n}`);
  }

  stopping(): void {
    this.#notify('STOPPING=1');
  }

  /** Keep-alives at half the watchdog interval, each only while `healthy()` holds. */
  watchdog(healthy: () => boolean): void {
    if (!this.#socket || this.#watchdogUsec === undefined || this.#watchdog) return;
    const everyMs = Math.max(1, Math.floor(this.#watchdogUsec / 2000));
    this.#watchdog = setInterval(() => {
      if (healthy()) this.#notify('WATCHDOG=1');
    }, everyMs);
    this.#watchdog.unref();
  }

  close(): void {
    clearInterval(this.#watchdog);
    this.#watchdog = undefined;
  }

  #notify(message: string): void {
    if (!this.#socket) return;
    try {
      this.#send(this.#socket, message);
      this.#failing = false;
    } catch (err) {
      // Once per failing spell: a watchdog keep-alive every few seconds would otherwise flood the log.
      if (!this.#failing) {
        this.#log.warn({ socket: this.#socket, err: (err as Error).message }, 'cannot notify systemd');
      }
      this.#failing = true;
    }
  }
}
