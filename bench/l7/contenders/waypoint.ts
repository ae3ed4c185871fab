// Ambit's L7 hop alone: the same whole path as the ambit contender (node daemon A -> waypoint -> node
// daemon B), but only the waypoint process is charged. Its latency and requests/s are still those of the
// whole path: a waypoint is only reached over HBONE, so there is no way to load it without the node daemons.

import type { L7Contender, Running } from '../contender.js';
import { ambitMissing, ambitVersion, startAmbitPath } from './ambit.js';

export const contender: L7Contender = {
  name: 'waypoint',
  description:
    'ambitd --role waypoint alone in CPU and RSS, measured inside the whole Ambit path (the two node ' +
    'daemons run but are not charged; latency and requests/s are the whole path)',
  missing: ambitMissing,
  version: ambitVersion,
  async start(ctx): Promise<Running> {
    const path = await startAmbitPath(ctx);
    return { port: path.port, pids: [path.pids['wp-node']], stop: path.stop };
  },
};
