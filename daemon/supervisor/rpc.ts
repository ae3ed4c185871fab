import type { Answers, Ask, Question, Reply } from './protocol.js';

type Pending = { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };

/**
 * Questions and answers over one IPC channel, in both directions. Every question has a deadline, so a
 * worker that stopped answering costs its asker a bounded wait and no memory.
 */
export class Rpc {
  readonly #send: (m: Ask | Reply) => void;
  readonly #answer: (what: Question) => Promise<unknown> | unknown;
  readonly #pending = new Map<number, Pending>();
  #next = 1;

  constructor(send: (m: Ask | Reply) => void, answer: (what: Question) => Promise<unknown> | unknown) {
    this.#send = send;
    this.#answer = answer;
  }

  ask<Q extends Question>(what: Q, timeoutMs: number): Promise<Answers[Q['q']]> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`no answer to ${what.q} within ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref();
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      try {
        this.#send({ t: 'ask', id, what });
      } catch (err) {
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(err as Error);
      }
    });
  }

  /** Takes a message off the channel; false when it is not a question or an answer. */
  handle(m: { t: string }): boolean {
    if (m.t === 'reply') {
      const r = m as Reply;
      const p = this.#pending.get(r.id);
      if (!p) return true; // its asker gave up
      this.#pending.delete(r.id);
      clearTimeout(p.timer);
      if (r.ok) p.resolve(r.value);
      else p.reject(new Error(r.error));
      return true;
    }
    if (m.t === 'ask') {
      const a = m as Ask;
      Promise.resolve()
        .then(() => this.#answer(a.what))
        .then(
          (value) => this.#reply({ t: 'reply', id: a.id, ok: true, value }),
          (err: unknown) =>
            this.#reply({
              t: 'reply',
              id: a.id,
              ok: false,
              error: err instanceof Error ? err.message : String(err),
            }),
        );
      return true;
    }
    return false;
  }

  /** The channel is gone: every question still out fails now. */
  close(reason: string): void {
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new Error(reason));
      this.#pending.delete(id);
    }
  }

  #reply(r: Reply): void {
    try {
      this.#send(r);
    } catch {
      // The channel closed meanwhile: nobody is left to answer.
    }
  }
}
