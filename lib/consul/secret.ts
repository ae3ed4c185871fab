import { inspect } from 'node:util';

/**
 * A value that must never reach a log, a config dump or an error message (an ACL token). JSON, string
 * conversion and util.inspect all print `[redacted]`; only `reveal()` gives the value, at the one place
 * that puts it in a request header.
 */
export class Secret {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
  }
  reveal(): string {
    return this.#value;
  }
  toJSON(): string {
    return '[redacted]';
  }
  toString(): string {
    return '[redacted]';
  }
  [inspect.custom](): string {
    return 'Secret([redacted])';
  }
}
