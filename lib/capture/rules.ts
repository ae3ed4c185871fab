// The capture rules, as data: which chains Ambit owns and what goes in them, for one address family.
// Pure (no iptables here), so that the rule set can be read, tested and shown before it is installed.
import { isIP } from 'node:net';
import { type FailMode, type Workload, ownsEveryPort } from '../mesh/model.js';

export type Family = 4 | 6;
export type { FailMode };

/** Every chain Ambit creates starts with this; removal deletes every chain that does. */
export const CHAIN_PREFIX = 'AMBIT_';
export const CHAINS = {
  prerouting: 'AMBIT_PREROUTING',
  output: 'AMBIT_OUTPUT',
  outbound: 'AMBIT_OUTBOUND',
  inbound: 'AMBIT_INBOUND',
  outRedirect: 'AMBIT_OUT_REDIRECT',
  inRedirect: 'AMBIT_IN_REDIRECT',
  /** Filled by ambitd while it runs; fail-open workloads go through these, so they pass untouched when it is down. */
  gateOut: 'AMBIT_GATE_OUT',
  gateIn: 'AMBIT_GATE_IN',
} as const;

/** Written as a no-op rule when `capture install` had to create the nat table, so that removal deletes it again. */
export const CREATED_TABLE_MARKER = 'ambit:created-nat-table';

export interface CaptureSpec {
  /** The workloads enrolled on this node. */
  readonly workloads: readonly Workload[];
  readonly mark: number;
  readonly outboundPort: number;
  readonly inboundPort: number;
  readonly tunnelPort: number;
  /** The daemon's other listeners (admin, metrics, readiness): never captured inbound. */
  readonly daemonPorts: readonly number[];
  readonly excludePorts: readonly number[];
  readonly excludeCidrs: readonly string[];
  /** Exclude everything this uid sends (in addition to the mark), when ambitd runs as its own user. */
  readonly daemonUid: number | undefined;
  /** This node's address: a workload there shares the host's network and owns only the ports it lists. */
  readonly nodeAddress: string | undefined;
  /**
   * Users whose connections to workloads on this host are never taken for inbound plaintext: the Consul
   * agent's, whose health checks must reach the workload itself (a check answered by ambitd would pass
   * with the workload dead, and a strict workload would count a refusal at every interval).
   */
  readonly checkUids: readonly number[];
}

export interface RuleSet {
  readonly family: Family;
  /** Chains (re)built by install: declared, flushed and filled. */
  readonly chains: readonly string[];
  /** `-A CHAIN ...` rules, in order, as iptables-restore lines. */
  readonly rules: readonly string[];
  /** Jumps from the built-in chains to Ambit's. */
  readonly jumps: readonly { readonly chain: 'PREROUTING' | 'OUTPUT'; readonly target: string }[];
}

/** Default fail mode: strict workloads fail closed, permissive ones open. */
export const failModeOf = (w: Workload): FailMode => w.failMode ?? (w.mode === 'strict' ? 'closed' : 'open');

const hostCidr = (ip: string): string => (isIP(ip) === 6 ? `${ip}/128` : `${ip}/32`);
const familyOf = (ip: string): Family => (isIP(ip.split('/')[0]!) === 6 ? 6 : 4);
const hex = (n: number): string => `0x${n.toString(16)}`;
const comment = (text: string): string => `-m comment --comment "${text.replace(/["\\]/g, '')}"`;

/** `-m multiport` takes at most 15 ports per rule. */
function portGroups(ports: readonly number[]): string[] {
  const sorted = [...new Set(ports)].sort((a, b) => a - b);
  const out: string[] = [];
  for (let i = 0; i < sorted.length; i += 15) out.push(sorted.slice(i, i + 15).join(','));
  return out;
}

export function buildRules(
  spec: CaptureSpec,
  family: Family,
  opts: { createdTable?: boolean } = {},
): RuleSet {
  const r: string[] = [];
  const add = (chain: string, rule: string): void => {
    r.push(`-A ${chain} ${rule}`);
  };
  const mark = `-m mark --mark ${hex(spec.mark)}/${hex(spec.mark)}`;
  const loopback = family === 4 ? '127.0.0.0/8' : '::1/128';
  const cidrs = spec.excludeCidrs.filter((c) => familyOf(c) === family);
  const { prerouting, output, outbound, inbound, outRedirect, inRedirect, gateOut, gateIn } = CHAINS;

  if (opts.createdTable) add(prerouting, comment(CREATED_TABLE_MARKER));
  // PREROUTING: traffic arriving on an interface (workloads in their own namespaces, other hosts).
  add(prerouting, '-i lo -j RETURN');
  add(prerouting, `${mark} -j RETURN`);
  for (const g of portGroups(spec.excludePorts))
    add(prerouting, `-p tcp -m multiport --dports ${g} ${comment('ambit: excluded ports')} -j RETURN`);
  add(prerouting, `-p tcp -j ${outbound}`);
  add(prerouting, `-p tcp -j ${inbound}`);

  // OUTPUT: connections made on this host (processes sharing its network, matched by owner uid).
  add(output, `${mark} -j RETURN`);
  add(output, `-d ${loopback} -j RETURN`);
  if (spec.daemonUid !== undefined) add(output, `-m owner --uid-owner ${spec.daemonUid} -j RETURN`);
  for (const g of portGroups(spec.excludePorts))
    add(output, `-p tcp -m multiport --dports ${g} ${comment('ambit: excluded ports')} -j RETURN`);
  for (const c of cidrs) add(output, `-d ${c} ${comment('ambit: excluded cidr')} -j RETURN`);
  const uids = new Map<number, FailMode>();
  for (const w of spec.workloads) {
    if (w.uid === undefined) continue;
    // Two workloads with one uid: one failing closed wins.
    if (uids.get(w.uid) !== 'closed') uids.set(w.uid, failModeOf(w));
  }
  for (const [uid, fm] of [...uids].sort((a, b) => a[0] - b[0])) {
    add(
      output,
      `-p tcp -m owner --uid-owner ${uid} ${comment(`ambit: uid ${uid}`)} -j ${fm === 'closed' ? outRedirect : gateOut}`,
    );
  }
  for (const uid of [...new Set(spec.checkUids)].sort((a, b) => a - b))
    add(
      output,
      `-p tcp -m owner --uid-owner ${uid} ${comment(`ambit: health checks, uid ${uid}`)} -j RETURN`,
    );
  // A plaintext connection from this host to a local workload is inbound plaintext too.
  add(output, `-p tcp -j ${inbound}`);

  // Outbound by source address: workloads with addresses of their own (a uid workload shares the host's).
  for (const c of cidrs) add(outbound, `-d ${c} ${comment('ambit: excluded cidr')} -j RETURN`);
  for (const w of spec.workloads) {
    if (w.uid !== undefined) continue;
    const target = failModeOf(w) === 'closed' ? outRedirect : gateOut;
    for (const a of w.addresses) {
      if (familyOf(a) !== family) continue;
      add(outbound, `-s ${hostCidr(a)} ${comment(`ambit: workload ${w.name}`)} -j ${target}`);
    }
  }

  // Inbound plaintext: to a workload's address (every port of an address of its own, the listed ones of
  // the host's), not through the tunnel, not to the daemon's ports.
  add(inbound, `-p tcp --dport ${spec.tunnelPort} ${comment('ambit: tunnel')} -j RETURN`);
  const own = [spec.outboundPort, spec.inboundPort, ...spec.daemonPorts];
  for (const g of portGroups(own))
    add(inbound, `-p tcp -m multiport --dports ${g} ${comment('ambit: daemon ports')} -j RETURN`);
  for (const w of spec.workloads) {
    const target = failModeOf(w) === 'closed' ? inRedirect : gateIn;
    for (const a of w.addresses) {
      if (familyOf(a) !== family) continue;
      const every = ownsEveryPort(w, spec.nodeAddress);
      const ports = every ? [''] : portGroups(w.ports).map((g) => `-m multiport --dports ${g} `);
      for (const p of ports)
        add(inbound, `-d ${hostCidr(a)} -p tcp ${p}${comment(`ambit: workload ${w.name}`)} -j ${target}`);
    }
  }

  add(outRedirect, `-p tcp -j REDIRECT --to-ports ${spec.outboundPort}`);
  add(inRedirect, `-p tcp -j REDIRECT --to-ports ${spec.inboundPort}`);

  return {
    family,
    chains: [prerouting, output, outbound, inbound, outRedirect, inRedirect],
    rules: r,
    jumps: [
      { chain: 'PREROUTING', target: prerouting },
      { chain: 'OUTPUT', target: output },
    ],
  };
}

/** What ambitd puts in the gate chains while it is up (fail-open workloads are redirected only then). */
export const gateRules = (
  spec: Pick<CaptureSpec, 'outboundPort' | 'inboundPort'>,
): Record<string, string> => ({
  [CHAINS.gateOut]: `-p tcp -j REDIRECT --to-ports ${spec.outboundPort}`,
  [CHAINS.gateIn]: `-p tcp -j REDIRECT --to-ports ${spec.inboundPort}`,
});

/** The iptables-restore input that (re)builds Ambit's chains without touching anything else (`--noflush`). */
export function restoreScript(rs: RuleSet): string {
  return ['*nat', ...rs.chains.map((c) => `:${c} - [0:0]`), ...rs.rules, 'COMMIT', ''].join('\n');
}
