// Installs, removes, shows and checks the reply routing of lib/capture/transparent.ts with the host's tools
// (iptables of the capture's backend, table mangle; iproute2's `ip`). Idempotent: install rebuilds the mangle
// chain whole and adds the ip rule only when it is missing, so that a re-install (each enrollment) never leaves
// a moment in which replies are lost; remove deletes every AMBIT_ chain of the mangle table, every jump to
// one, and every rule and route that carries Ambit's protocol number.
import { existsSync } from 'node:fs';
import { CaptureError } from '../errors.js';
import { type Backend, type Tools, run, splitRule, tools } from './iptables.js';
import { CHAIN_PREFIX, type Family } from './rules.js';
import {
  CREATED_MANGLE_MARKER,
  type InstalledRouting,
  type IpRoute,
  type IpRule,
  ROUTE_PROTO,
  type ReplyRoutingSpec,
  ambitRules,
  deleteRoute,
  deleteRule,
  isWantedRule,
  mangleLines,
  mangleScript,
  missingRouting,
  parseIpJson,
  replyRules,
  routingLines,
  staleRouting,
} from './transparent.js';

const SEARCH = ['/usr/sbin', '/sbin', '/usr/bin', '/bin', '/usr/local/sbin'];

function ipTool(): string {
  const found = SEARCH.map((d) => `${d}/ip`).find((p) => existsSync(p));
  if (!found) throw new CaptureError('no ip command found: install iproute2 (apt-get install -y iproute2)');
  return found;
}

const ok = (p: Promise<unknown>): Promise<boolean> =>
  p.then(
    () => true,
    () => false,
  );

const mangleSave = (t: Tools): Promise<string> => run(t.save, ['-t', 'mangle']).catch(() => '');

/** Whether the mangle table exists: iptables-nft-save -t mangle prints one even where there is none. */
const mangleExists = async (t: Tools): Promise<boolean> =>
  (await run(t.save, []).catch(() => '')).split('\n').some((l) => l.trim() === '*mangle');

async function installed(t: Tools): Promise<InstalledRouting> {
  const ip = ipTool();
  const f = t.family === 4 ? '-4' : '-6';
  const [mangle, rules, routes] = await Promise.all([
    mangleSave(t),
    run(ip, ['-j', f, 'rule', 'show']).catch(() => ''),
    run(ip, ['-j', f, 'route', 'show', 'table', 'all', 'proto', String(ROUTE_PROTO)]).catch(() => ''),
  ]);
  return { mangle, rules: parseIpJson<IpRule>(rules), routes: parseIpJson<IpRoute>(routes) };
}

async function deleteStale(
  family: Family,
  spec: ReplyRoutingSpec | undefined,
  now: InstalledRouting,
): Promise<number> {
  const ip = ipTool();
  const stale = staleRouting(spec, now.rules, now.routes);
  let n = 0;
  for (const r of stale.rules) if (await ok(run(ip, deleteRule(family, r)))) n++;
  for (const r of stale.routes) if (await ok(run(ip, deleteRoute(family, r)))) n++;
  return n;
}

async function installFamily(t: Tools, spec: ReplyRoutingSpec): Promise<string[]> {
  const existed = await mangleExists(t);
  const before = await mangleSave(t);
  const rs = replyRules(spec, t.family, { createdTable: !existed || before.includes(CREATED_MANGLE_MARKER) });
  await run(t.restore, ['-w', '5', '--noflush'], mangleScript(rs));
  for (const j of rs.jumps) {
    const exists = await ok(run(t.cmd, ['-w', '5', '-t', 'mangle', '-C', j.chain, '-j', j.target]));
    if (!exists) await run(t.cmd, ['-w', '5', '-t', 'mangle', '-I', j.chain, '1', '-j', j.target]);
  }
  const ip = ipTool();
  const now = await installed(t);
  // Added before the stale ones go: the routing is never missing for a moment.
  if (!ambitRules(now.rules).some((r) => isWantedRule(r, spec))) await run(ip, rs.ipRule);
  await run(ip, rs.ipRoute);
  await deleteStale(t.family, spec, now);
  return showFamily(t);
}

/** Installs (or brings up to date) the reply routing for every family; returns Ambit's lines per family. */
export async function installReplyRouting(
  backend: Backend,
  spec: ReplyRoutingSpec,
): Promise<{ family: Family; lines: string[] }[]> {
  const out: { family: Family; lines: string[] }[] = [];
  for (const t of await tools(backend)) out.push({ family: t.family, lines: await installFamily(t, spec) });
  return out;
}

async function removeFamily(t: Tools): Promise<number> {
  let removed = await deleteStale(t.family, undefined, await installed(t));
  if (!(await mangleExists(t))) return removed;
  const before = await mangleSave(t);
  const created = before.includes(CREATED_MANGLE_MARKER);
  for (const line of before.split('\n')) {
    const m = /^-A (\S+) (.*-[jg] (AMBIT_\S+).*)$/.exec(line);
    if (!m || m[1]!.startsWith(CHAIN_PREFIX)) continue;
    const args = splitRule(m[2]!);
    // Bounded: a rule inserted several times is deleted at most 16 times.
    for (let i = 0; i < 16 && (await ok(run(t.cmd, ['-w', '5', '-t', 'mangle', '-D', m[1]!, ...args]))); i++)
      removed++;
  }
  const chains = before
    .split('\n')
    .filter((l) => l.startsWith(`:${CHAIN_PREFIX}`))
    .map((l) => l.slice(1).split(' ')[0]!);
  for (const c of chains) await run(t.cmd, ['-w', '5', '-t', 'mangle', '-F', c]);
  for (const c of chains) {
    await run(t.cmd, ['-w', '5', '-t', 'mangle', '-X', c]);
    removed++;
  }
  if (created && t.backend === 'nft') {
    // The table was created by install: delete it again if nothing else has been put in it since.
    const lines = (await mangleSave(t))
      .split('\n')
      .filter((l) => l && !l.startsWith('#') && l !== '*mangle' && l !== 'COMMIT');
    if (lines.every((l) => /^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT /.test(l)))
      await run(t.restore, ['-w', '5', '-T', 'mangle'], '*mangle\nCOMMIT\n');
  }
  return removed;
}

/** Removes Ambit's mangle chains and jumps, ip rules and routes, for every family; returns how many went. */
export async function removeReplyRouting(backend: Backend): Promise<number> {
  let n = 0;
  for (const t of await tools(backend)) n += await removeFamily(t);
  return n;
}

async function showFamily(t: Tools): Promise<string[]> {
  const now = await installed(t);
  return [...mangleLines(now.mangle), ...routingLines(t.family, now.rules, now.routes)];
}

/** Ambit's lines in the mangle table and its ip rules and routes, per family. */
export async function showReplyRouting(backend: Backend): Promise<{ family: Family; lines: string[] }[]> {
  const out: { family: Family; lines: string[] }[] = [];
  for (const t of await tools(backend)) out.push({ family: t.family, lines: await showFamily(t) });
  return out;
}

/**
 * For each family the host has: undefined when the reply routing for `spec` is installed, else what it lacks.
 */
export async function replyRoutingState(
  backend: Backend,
  spec: ReplyRoutingSpec,
): Promise<Partial<Record<Family, string | undefined>>> {
  const out: Partial<Record<Family, string | undefined>> = {};
  for (const t of await tools(backend)) out[t.family] = missingRouting(spec, t.family, await installed(t));
  return out;
}
