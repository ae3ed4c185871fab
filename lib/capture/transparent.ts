// The reply routing for the original source address, as data. The destination daemon connects to a workload
// from the client's address through a transparent socket (IP_TRANSPARENT): the workload's replies then go to
// an address this host does not have, and would be routed away (to the client's host, which knows nothing of
// the connection). Three pieces bring them back, for each family:
//   mangle PREROUTING -> AMBIT_REPLIES: a TCP packet of a transparent socket here gets the reply mark;
//   ip rule fwmark <mark>/<mark> lookup <table>: marked packets use Ambit's table;
//   ip route local default dev lo table <table>: in which every address is local, so they are delivered.
// Pure (no iptables or ip here), so that the rule set can be read and tested before it is installed;
// lib/capture/reply-routing.ts installs, removes and checks it.
import { CHAIN_PREFIX, type Family } from './rules.js';

/** Ambit's mangle chain; its name starts with CHAIN_PREFIX, so that removal knows it as Ambit's. */
export const REPLY_CHAIN = `${CHAIN_PREFIX}REPLIES`;

/** Written as a no-op rule when install had to create the mangle table, so that removal deletes it again. */
export const CREATED_MANGLE_MARKER = 'ambit:created-mangle-table';

/**
 * The ip rule's priority: after `local` (0), before `main` (32766), so that a route of main's to the client's
 * address does not win.
 */
export const RULE_PRIORITY = 1339;

/**
 * The routing protocol number Ambit's rule and route carry (`protocol`/`proto`): removal finds them by it,
 * whatever mark and table the settings named when they were installed. Unassigned in rt_protos.
 */
export const ROUTE_PROTO = 153;

export interface ReplyRoutingSpec {
  /** The daemon's socket mark (captureMark): must share no bit with replyMark. */
  readonly socketMark: number;
  /** captureReplyMark: set on replies to transparent sockets; the ip rule matches it. */
  readonly replyMark: number;
  /** captureReplyTable: holds the one local default route. */
  readonly table: number;
}

export interface ReplyRuleSet {
  readonly family: Family;
  /** Chains (re)built by install: declared, flushed and filled (table mangle). */
  readonly chains: readonly string[];
  /** `-A CHAIN ...` rules, as iptables-restore lines. */
  readonly rules: readonly string[];
  readonly jumps: readonly { readonly chain: 'PREROUTING'; readonly target: string }[];
  /** `ip` arguments that add the rule, and that add or replace the route. */
  readonly ipRule: readonly string[];
  readonly ipRoute: readonly string[];
}

const hex = (n: number): string => `0x${n.toString(16)}`;

/** Why a spec cannot work, or undefined when it can. */
export function specError(spec: ReplyRoutingSpec): string | undefined {
  // The socket mark is on every packet the daemon sends: were it to match the rule, all of them would go to lo.
  if ((spec.socketMark & spec.replyMark) !== 0)
    return `captureReplyMark ${hex(spec.replyMark)} shares bits with captureMark ${hex(spec.socketMark)}`;
  return undefined;
}

export function replyRules(
  spec: ReplyRoutingSpec,
  family: Family,
  opts: { createdTable?: boolean } = {},
): ReplyRuleSet {
  const why = specError(spec);
  if (why) throw new Error(why);
  const m = `${hex(spec.replyMark)}/${hex(spec.replyMark)}`;
  const rules: string[] = [];
  if (opts.createdTable) rules.push(`-A ${REPLY_CHAIN} -m comment --comment "${CREATED_MANGLE_MARKER}"`);
  // `--transparent`: only packets of a transparent socket (the daemon's upstream connections that bound the
  // client's address), not of any other socket on the host.
  rules.push(
    `-A ${REPLY_CHAIN} -p tcp -m socket --transparent -m comment --comment "ambit: replies to the original source" -j MARK --set-xmark ${m}`,
  );
  const f = family === 4 ? '-4' : '-6';
  const t = String(spec.table);
  const proto = String(ROUTE_PROTO);
  return {
    family,
    chains: [REPLY_CHAIN],
    rules,
    jumps: [{ chain: 'PREROUTING', target: REPLY_CHAIN }],
    ipRule: [
      f,
      'rule',
      'add',
      'priority',
      String(RULE_PRIORITY),
      'fwmark',
      m,
      'lookup',
      t,
      'protocol',
      proto,
    ],
    ipRoute: [f, 'route', 'replace', 'local', 'default', 'dev', 'lo', 'table', t, 'proto', proto],
  };
}

/** The iptables-restore input that (re)builds Ambit's mangle chain without touching anything else (`--noflush`). */
export function mangleScript(rs: ReplyRuleSet): string {
  return ['*mangle', ...rs.chains.map((c) => `:${c} - [0:0]`), ...rs.rules, 'COMMIT', ''].join('\n');
}

/** One entry of `ip -j rule show`. */
export interface IpRule {
  readonly priority: number;
  readonly fwmark?: string;
  readonly fwmask?: string;
  readonly table: string;
  readonly protocol?: string;
}

/** One entry of `ip -j route show table all proto <ROUTE_PROTO>` (which leaves the protocol out). */
export interface IpRoute {
  readonly type?: string;
  readonly dst: string;
  readonly dev?: string;
  readonly table?: string;
}

/** `ip -j` output as a list; anything else (an old iproute2 printing text) as none. */
export function parseIpJson<T>(text: string): T[] {
  try {
    const v: unknown = JSON.parse(text || '[]');
    return Array.isArray(v) ? (v as T[]) : [];
  } catch {
    return [];
  }
}

/** The rules Ambit installed (by their protocol), whatever mark and table they name. */
export const ambitRules = (rules: readonly IpRule[]): IpRule[] =>
  rules.filter((r) => r.protocol === String(ROUTE_PROTO));

/** Whether a rule is the one `spec` wants. */
export const isWantedRule = (r: IpRule, spec: ReplyRoutingSpec): boolean =>
  r.priority === RULE_PRIORITY &&
  Number(r.fwmark) === spec.replyMark &&
  Number(r.fwmask ?? '0xffffffff') === spec.replyMark &&
  r.table === String(spec.table);

const isWantedRoute = (r: IpRoute, spec: ReplyRoutingSpec): boolean =>
  r.type === 'local' && r.dst === 'default' && r.dev === 'lo' && r.table === String(spec.table);

/** `ip` arguments that delete a rule or a route of Ambit's. */
export const deleteRule = (family: Family, r: IpRule): string[] => [
  family === 4 ? '-4' : '-6',
  'rule',
  'del',
  'priority',
  String(r.priority),
  ...(r.fwmark ? ['fwmark', r.fwmask ? `${r.fwmark}/${r.fwmask}` : r.fwmark] : []),
  'lookup',
  r.table,
  'protocol',
  String(ROUTE_PROTO),
];

export const deleteRoute = (family: Family, r: IpRoute): string[] => [
  family === 4 ? '-4' : '-6',
  'route',
  'del',
  ...(r.type ? [r.type] : []),
  r.dst,
  ...(r.dev ? ['dev', r.dev] : []),
  ...(r.table ? ['table', r.table] : []),
  'proto',
  String(ROUTE_PROTO),
];

/** Ambit's rules and routes that the spec does not want (another mark or table, from older settings). */
export function staleRouting(
  spec: ReplyRoutingSpec | undefined,
  rules: readonly IpRule[],
  routes: readonly IpRoute[],
): { rules: IpRule[]; routes: IpRoute[] } {
  return {
    rules: ambitRules(rules).filter((r) => !spec || !isWantedRule(r, spec)),
    routes: routes.filter((r) => !spec || !isWantedRoute(r, spec)),
  };
}

/** Lines of `iptables-save -t mangle` that are Ambit's: its chains, its rules and the jumps to them. */
export function mangleLines(save: string): string[] {
  return save
    .split('\n')
    .filter((l) => l.startsWith(`:${CHAIN_PREFIX}`) || (l.startsWith('-A ') && l.includes(CHAIN_PREFIX)));
}

/** What `ambit capture show` prints for Ambit's rules and routes. */
export const routingLines = (
  family: Family,
  rules: readonly IpRule[],
  routes: readonly IpRoute[],
): string[] => [
  ...ambitRules(rules).map(
    (r) =>
      `ip -${family} rule: ${r.priority}: from all fwmark ${r.fwmark}${r.fwmask ? `/${r.fwmask}` : ''} lookup ${r.table} proto ${ROUTE_PROTO}`,
  ),
  ...routes.map(
    (r) =>
      `ip -${family} route: ${r.type ?? 'unicast'} ${r.dst} dev ${r.dev ?? '?'} table ${r.table ?? '?'} proto ${ROUTE_PROTO}`,
  ),
];

/** What is installed now, for one family: as the daemon's start check reads it. */
export interface InstalledRouting {
  readonly mangle: string;
  readonly rules: readonly IpRule[];
  readonly routes: readonly IpRoute[];
}

/**
 * What the reply routing of one family lacks for `spec`, named for the log, or undefined when it is all
 * there: the mangle rule and its jump, the ip rule, the route. Without all three, a transparent connect's
 * replies are lost.
 */
export function missingRouting(
  spec: ReplyRoutingSpec,
  family: Family,
  now: InstalledRouting,
): string | undefined {
  const why = specError(spec);
  if (why) return why;
  const m = `${hex(spec.replyMark)}/${hex(spec.replyMark)}`;
  const lines = mangleLines(now.mangle);
  if (!lines.includes(`-A PREROUTING -j ${REPLY_CHAIN}`))
    return `no jump to ${REPLY_CHAIN} in mangle PREROUTING`;
  const marks = lines.some(
    (l) =>
      l.startsWith(`-A ${REPLY_CHAIN} `) &&
      l.includes('-m socket --transparent') &&
      l.includes(`--set-xmark ${m}`),
  );
  if (!marks) return `no rule in ${REPLY_CHAIN} that marks ${m}`;
  if (!ambitRules(now.rules).some((r) => isWantedRule(r, spec)))
    return `no \`ip -${family} rule\` fwmark ${m} lookup ${spec.table}`;
  if (!now.routes.some((r) => isWantedRoute(r, spec)))
    return `no \`ip -${family} route\` local default dev lo table ${spec.table}`;
  return undefined;
}
