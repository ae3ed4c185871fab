// The one error class of the L7 library: a config entry that Consul would refuse, or that Ambit cannot
// carry out, named by its entry (`service-router/api`) and the field path (`Routes[1].Match.HTTP.PathPrefix`)
// so that `ambit config write` and the daemon's log point at the line to fix.

import { AmbitError } from '../errors.js';

export class L7ConfigError extends AmbitError {
  /** Where the entries came from: a file, `consul`, or a command. */
  readonly where: string;
  /** `<Kind>/<Name>`, as `consul config read` names it. */
  readonly entry: string;
  /** The field path inside the entry, Consul's names; empty for the entry as a whole. */
  readonly field: string;
  readonly reason: string;
  constructor(where: string, entry: string, field: string, reason: string) {
    super(
      'AMBIT_L7_CONFIG_INVALID',
      [where, entry, field].filter((s) => s !== '').join(': ') + `: ${reason}`,
    );
    this.where = where;
    this.entry = entry;
    this.field = field;
    this.reason = reason;
  }
}
