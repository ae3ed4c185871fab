// Installs, removes and shows the capture rules with the iptables tools of the host (nft or legacy backend,
// IPv4 and, where the host has it, IPv6). Idempotent: install rebuilds Ambit's chains whole; remove deletes
// every AMBIT_ chain and every jump to one, and the nat table itself if install had to create it.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { CaptureError } from '../errors.js';
import {
  CHAINS,
  CHAIN_PREFIX,
  CREATED_TABLE_MARKER,
  type CaptureSpec,
  type Family,
  buildRules,
  gateRules,
  restoreScript,
} from './rules.js';

export type Backend = 'nft' | 'legacy';

export interface Tools {
  readonly backend: Backend;
  readonly family: Family;
  /** e.g. iptables-nft, ip6tables-legacy, or plain iptables when that is the backend in use. */
  readonly cmd: string;
  readonly save: string;
  readonly restore: string;
}

const SEARCH = ['/usr/sbin', '/sbin', '/usr/bin', '/bin', '/usr/local/sbin'];
const which = (name: string): string | undefined =>
  SEARCH.map((d) => `${d}/${name}`).find((p) => existsSync(p));

export function run(cmd: string, args: readonly string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      [...args],
      { timeout: 15_000, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err) {
          const msg = String(stderr).trim() || err.message;
          reject(new CaptureError(`${cmd} ${args.join(' ')}: ${msg}`, { cause: err }));
        } else resolve(String(stdout));
      },
    );
    if (input !== undefined) child.stdin?.end(input);
  });
}

const ok = (p: Promise<unknown>): Promise<boolean> =>
  p.then(
    () => true,
    () => false,
  );

function toolsFor(backend: Backend, family: Family): Tools | undefined {
  const base = family === 4 ? 'iptables' : 'ip6tables';
  const cmd = which(`${base}-${backend}`);
  const save = which(`${base}-${backend}-save`);
  const restore = which(`${base}-${backend}-restore`);
  if (cmd && save && restore) return { backend, family, cmd, save, restore };
  return undefined;
}

/** Which backend plain `iptables` is (1.8+ says "(nf_tables)" or "(legacy)" in its version). */
async function plainBackend(family: Family): Promise<Tools | undefined> {
  const base = family === 4 ? 'iptables' : 'ip6tables';
  const cmd = which(base);
  const save = which(`${base}-save`);
  const restore = which(`${base}-restore`);
  if (!cmd || !save || !restore) return undefined;
  const v = await run(cmd, ['--version']).catch(() => '');
  return { backend: v.includes('nf_tables') ? 'nft' : 'legacy', family, cmd, save, restore };
}

const countRules = (save: string): number => save.split('\n').filter((l) => l.startsWith('-A ')).length;

/**
 * The backend to use, as kube-proxy decides it: the one that already holds Ambit's chains; else the one with
 * more rules (whatever else on the host, e.g. Docker, already uses); else nft.
 */
export async function detectBackend(prefer?: Backend | 'auto'): Promise<Backend> {
  if (prefer === 'nft' || prefer === 'legacy') {
    if (!toolsFor(prefer, 4) && (await plainBackend(4))?.backend !== prefer)
      throw new CaptureError(`the iptables ${prefer} backend is not installed (apt-get install iptables)`);
    return prefer;
  }
  const nft = toolsFor('nft', 4);
  const legacy = toolsFor('legacy', 4);
  if (nft && legacy) {
    const [n, l] = await Promise.all([
      run(nft.save, []).catch(() => ''),
      run(legacy.save, []).catch(() => ''),
    ]);
    if (l.includes(`:${CHAINS.prerouting}`)) return 'legacy';
    if (n.includes(`:${CHAINS.prerouting}`)) return 'nft';
    return countRules(l) > countRules(n) ? 'legacy' : 'nft';
  }
  if (nft) return 'nft';
  if (legacy) return 'legacy';
  const plain = await plainBackend(4);
  if (plain) return plain.backend;
  throw new CaptureError('no iptables found: install it (Debian: apt-get install -y iptables)');
}

/**
 * The kernel's IPv6 (the module loaded and not disabled), which ip6tables needs: rules are installed for
 * it even before an interface holds an IPv6 address, unlike lib/net's hostHasIpv6, which decides a bind.
 */
export function kernelHasIpv6(): boolean {
  return existsSync('/proc/net/if_inet6');
}

/** The tools for a backend, one per family the host has; IPv6 is skipped where the host has none. */
export async function tools(backend: Backend): Promise<Tools[]> {
  const out: Tools[] = [];
  for (const family of [4, 6] as const) {
    if (family === 6 && !kernelHasIpv6()) continue;
    let t = toolsFor(backend, family);
    if (!t) {
      const plain = await plainBackend(family);
      if (plain?.backend === backend) t = plain;
    }
    if (t) out.push(t);
    else if (family === 4)
      throw new CaptureError(`iptables (${backend}) is not installed (apt-get install -y iptables)`);
  }
  return out;
}

const natSave = (t: Tools): Promise<string> => run(t.save, ['-t', 'nat']).catch(() => '');

/** Lines of `iptables-save -t nat` that are Ambit's: its chains, its rules and the jumps to them. */
export function ambitLines(save: string): string[] {
  return save
    .split('\n')
    .filter((l) => l.startsWith(`:${CHAIN_PREFIX}`) || (l.startsWith('-A ') && l.includes(CHAIN_PREFIX)));
}

/** Whether the nat table exists: `iptables-nft-save -t nat` prints one even where there is none, so ask for all. */
const natTableExists = async (t: Tools): Promise<boolean> =>
  (await run(t.save, []).catch(() => '')).split('\n').some((l) => l.trim() === '*nat');

async function installFamily(t: Tools, spec: CaptureSpec): Promise<string[]> {
  const existed = await natTableExists(t);
  const before = await natSave(t);
  const createdTable = !existed || before.includes(CREATED_TABLE_MARKER);
  const rs = buildRules(spec, t.family, { createdTable });
  const script = restoreScript(rs);
  // Gate chains belong to the running daemon: created empty if missing, never flushed here.
  for (const gate of [CHAINS.gateOut, CHAINS.gateIn]) {
    if (!before.includes(`:${gate} `)) await run(t.cmd, ['-w', '5', '-t', 'nat', '-N', gate]);
  }
  await run(t.restore, ['-w', '5', '--noflush'], script);
  for (const j of rs.jumps) {
    const exists = await ok(run(t.cmd, ['-w', '5', '-t', 'nat', '-C', j.chain, '-j', j.target]));
    if (!exists) await run(t.cmd, ['-w', '5', '-t', 'nat', '-I', j.chain, '1', '-j', j.target]);
  }
  return ambitLines(await natSave(t));
}

/** Installs (or brings up to date) the capture rules for every family; returns Ambit's lines per family. */
export async function installCapture(
  backend: Backend,
  spec: CaptureSpec,
): Promise<{ family: Family; lines: string[] }[]> {
  const out: { family: Family; lines: string[] }[] = [];
  for (const t of await tools(backend)) out.push({ family: t.family, lines: await installFamily(t, spec) });
  return out;
}

async function removeFamily(t: Tools): Promise<number> {
  if (!(await natTableExists(t))) return 0;
  const before = await natSave(t);
  const created = before.includes(CREATED_TABLE_MARKER);
  let removed = 0;
  // Jumps from any chain that is not ours into ours (PREROUTING, OUTPUT, or wherever someone put one).
  for (const line of before.split('\n')) {
    const m = /^-A (\S+) (.*-[jg] (AMBIT_\S+).*)$/.exec(line);
    if (!m || m[1]!.startsWith(CHAIN_PREFIX)) continue;
    const args = splitRule(m[2]!);
    // Bounded: a rule inserted several times is deleted at most 16 times.
    for (let i = 0; i < 16 && (await ok(run(t.cmd, ['-w', '5', '-t', 'nat', '-D', m[1]!, ...args]))); i++)
      removed++;
  }
  const chains = before
    .split('\n')
    .filter((l) => l.startsWith(`:${CHAIN_PREFIX}`))
    .map((l) => l.slice(1).split(' ')[0]!);
  for (const c of chains) await run(t.cmd, ['-w', '5', '-t', 'nat', '-F', c]);
  for (const c of chains) {
    await run(t.cmd, ['-w', '5', '-t', 'nat', '-X', c]);
    removed++;
  }
  if (created && t.backend === 'nft') {
    // The table was created by install: delete it again if nothing else has been put in it since.
    const after = await natSave(t);
    const lines = after.split('\n').filter((l) => l && !l.startsWith('#') && l !== '*nat' && l !== 'COMMIT');
    const untouched = lines.every((l) => /^:(PREROUTING|INPUT|OUTPUT|POSTROUTING) ACCEPT /.test(l));
    if (untouched) await run(t.restore, ['-w', '5', '-T', 'nat'], '*nat\nCOMMIT\n');
  }
  return removed;
}

/** Splits an iptables-save rule into arguments, keeping "quoted strings" whole. */
export function splitRule(rule: string): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  for (let m = re.exec(rule); m; m = re.exec(rule)) out.push(m[1] !== undefined ? m[1] : m[2]!);
  return out;
}

/** Removes every Ambit chain and jump, for every family; returns how many chains and jumps went. */
export async function removeCapture(backend: Backend): Promise<number> {
  let n = 0;
  for (const t of await tools(backend)) n += await removeFamily(t);
  return n;
}

/** Ambit's lines in the nat table, per family. */
export async function showCapture(backend: Backend): Promise<{ family: Family; lines: string[] }[]> {
  const out: { family: Family; lines: string[] }[] = [];
  for (const t of await tools(backend)) out.push({ family: t.family, lines: ambitLines(await natSave(t)) });
  return out;
}

/**
 * ambitd's half of fail-open: while it runs, the gate chains redirect; when it stops they are emptied, and
 * fail-open workloads' traffic passes untouched. Chains that are not installed are left alone.
 */
export async function setGate(
  backend: Backend,
  spec: Pick<CaptureSpec, 'outboundPort' | 'inboundPort'>,
  up: boolean,
): Promise<void> {
  const rules = gateRules(spec);
  for (const t of await tools(backend)) {
    const save = await natSave(t);
    for (const [chain, rule] of Object.entries(rules)) {
      if (!save.includes(`:${chain} `)) continue;
      const lines = ['*nat', `:${chain} - [0:0]`, ...(up ? [`-A ${chain} ${rule}`] : []), 'COMMIT', ''];
      await run(t.restore, ['-w', '5', '--noflush'], lines.join('\n'));
    }
  }
}
