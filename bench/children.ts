// The load generator and the sink: child processes of the bench, spoken to over IPC (bench/protocol.ts), so
// that their CPU and memory are never charged to a contender. Used by run.ts and ab.ts.

import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Spawned, startProcess, stopProcess } from './proc.js';
import type { Job, JobResult, SinkReady } from './protocol.js';

const here = dirname(fileURLToPath(import.meta.url)); // dist/bench

// ---- the load generator and sink, child processes spoken to over IPC

/**
 * A load generator child: by default bench/loadgen.ts; another script (the L7 bench's) may speak the same
 * IPC exchange, `{ id, job }` in and `{ id, result | error }` out, with job and result types of its own.
 */
export class LoadGen<J extends { kind: string } = Job, R = JobResult> {
  #proc: Spawned | undefined;
  #next = 1;
  #pending = new Map<number, { resolve: (r: R) => void; reject: (e: Error) => void }>();
  readonly #script: string;
  readonly #name: string;

  constructor(script = join(here, 'loadgen.js'), name = 'loadgen') {
    this.#script = script;
    this.#name = name;
  }

  #start(): Spawned {
    const p = startProcess(this.#name, process.execPath, ['--expose-gc', this.#script], {
      ipc: true,
    });
    p.child.on('message', (m: { id: number; result?: R; error?: string }) => {
      const waiter = this.#pending.get(m.id);
      if (!waiter) return;
      this.#pending.delete(m.id);
      if (m.error !== undefined) waiter.reject(new Error(m.error));
      else waiter.resolve(m.result!);
    });
    p.exited.then((status) => {
      for (const w of this.#pending.values()) w.reject(new Error(`load generator exited (${status})`));
      this.#pending.clear();
      if (this.#proc === p) this.#proc = undefined;
    });
    this.#proc = p;
    return p;
  }

  /** Runs one job; a job that overruns `timeoutMs` kills the generator (the next job gets a fresh one). */
  async run<T extends R>(job: J, timeoutMs: number): Promise<T> {
    const p = this.#proc ?? this.#start();
    const id = this.#next++;
    let timer: NodeJS.Timeout | undefined;
    try {
      return (await new Promise<R>((resolve, reject) => {
        this.#pending.set(id, { resolve, reject });
        timer = setTimeout(() => {
          this.#pending.delete(id);
          reject(new Error(`${job.kind} did not finish within ${Math.round(timeoutMs / 1000)} s`));
          void stopProcess(p, 500);
        }, timeoutMs);
        p.child.send({ id, job });
      })) as T;
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    if (this.#proc) await stopProcess(this.#proc, 1000);
  }
}

export interface Sink {
  proc: Spawned;
  ports: Record<string, number>;
  /** A full GC in the sink, now rather than during the next latency measurement. */
  collect(): Promise<void>;
}

export async function startSink(names: readonly string[]): Promise<Sink> {
  const proc = startProcess('sink', process.execPath, ['--expose-gc', join(here, 'sink.js'), ...names], {
    ipc: true,
  });
  const ports = await new Promise<Record<string, number>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sink did not start:\n${proc.output()}`)), 10_000);
    proc.child.once('message', (m: SinkReady) => {
      clearTimeout(timer);
      resolve(m.ports);
    });
    proc.exited.then((s) => reject(new Error(`sink exited (${s}):\n${proc.output()}`)));
  });
  const collect = (): Promise<void> =>
    new Promise((resolve) => {
      const timer = setTimeout(resolve, 5000);
      proc.child.once('message', () => {
        clearTimeout(timer);
        resolve();
      });
      proc.child.send('gc');
    });
  return { proc, ports, collect };
}
