// The capture rules' inputs from ambitd's settings: what `ambit capture install` installs, and what ambitd
// itself reinstalls when the pod watch changes this node's workloads.
import type { DaemonConfig } from '../config.js';
import type { Workload } from '../mesh/model.js';
import type { CaptureSpec } from './rules.js';
import type { ReplyRoutingSpec } from './transparent.js';

export function captureSpec(
  config: DaemonConfig,
  workloads: readonly Workload[],
  host: { nodeAddress: string | undefined; checkUids: readonly number[] },
): CaptureSpec {
  return {
    ...host,
    workloads,
    mark: config.capture.mark,
    outboundPort: config.outbound.port,
    inboundPort: config.inboundPlaintext.port,
    tunnelPort: config.tunnel.port,
    daemonPorts: [config.admin.port, config.metrics.port, config.ready.port].filter((p) => p > 0),
    excludePorts: config.capture.excludePorts,
    excludeCidrs: config.capture.excludeCidrs,
    daemonUid: config.capture.daemonUid,
  };
}

/** The reply routing the original source address needs; undefined when captureOriginalSource is off. */
export const replySpec = (config: DaemonConfig): ReplyRoutingSpec | undefined =>
  config.capture.originalSource
    ? {
        socketMark: config.capture.mark,
        replyMark: config.capture.replyMark,
        table: config.capture.replyTable,
      }
    : undefined;
