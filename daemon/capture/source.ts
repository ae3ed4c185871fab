// Which enrolled workload a captured connection came from: by its source address, or, for processes that
// share the host's network, by the owner uid of the client socket. Never by anything the client sends.
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import type { Workload } from '../../lib/mesh/model.js';
import { unmapIp } from '../../lib/net/addresses.js';
import type { StateStore } from '../state/store.js';

/** An address as /proc/net/tcp{,6} prints it: 32-bit words in host (little-endian) byte order, hex. */
export function procHex(ip: string, port: number): string {
  const bytes: number[] = [];
  if (isIP(ip) === 4) bytes.push(...ip.split('.').map(Number));
  else {
    const [head, tail] = ip.includes('::') ? ip.split('::') : [ip, undefined];
    const h = head ? head.split(':') : [];
    const t = tail ? tail.split(':') : [];
    const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
    for (const g of groups) {
      const n = Number.parseInt(g || '0', 16);
      bytes.push(n >> 8, n & 0xff);
    }
  }
  let out = '';
  for (let i = 0; i < bytes.length; i += 4) {
    for (let j = 3; j >= 0; j--) out += bytes[i + j]!.toString(16).padStart(2, '0');
  }
  return `${out.toUpperCase()}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
}

/** The uid owning the local TCP socket whose local end is ip:port (the client of a captured connection). */
export async function uidOfLocalSocket(ip: string, port: number): Promise<number | undefined> {
  const v4 = isIP(ip) === 4;
  const candidates = v4 ? [procHex(ip, port), procHex(`::ffff:${ip}`, port)] : [procHex(ip, port)];
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      const f = line.trim().split(/\s+/);
      // sl local rem st queues timer retrnsmt uid ...
      if (f.length < 8 || !candidates.includes(f[1]!)) continue;
      const uid = Number(f[7]);
      if (Number.isInteger(uid)) return uid;
    }
  }
  return undefined;
}

export type SourceDecision =
  | { readonly workload: Workload; readonly by: 'address' | 'uid' }
  | { readonly workload: undefined; readonly reason: string };

/** The local workload a connection from remoteIp:remotePort belongs to, if any. */
export async function sourceWorkload(
  store: StateStore,
  nodeName: string,
  remoteIp: string,
  remotePort: number,
): Promise<SourceDecision> {
  const ip = unmapIp(remoteIp);
  const own = store.workloadsByIp(ip).filter((w) => w.node === nodeName && w.uid === undefined);
  if (own.length === 1) return { workload: own[0]!, by: 'address' };
  if (own.length > 1)
    return { workload: undefined, reason: `${ip} is the address of ${own.length} workloads: ambiguous` };
  const uid = await uidOfLocalSocket(ip, remotePort);
  if (uid === undefined) return { workload: undefined, reason: `no workload on this node has address ${ip}` };
  const byUid = store.workloadsByUid(uid).filter((w) => w.node === nodeName);
  if (byUid.length === 1) return { workload: byUid[0]!, by: 'uid' };
  if (byUid.length > 1) {
    // Several workloads run as one uid: the one whose address the client used, else the first by name.
    const match = byUid.find((w) => w.addresses.includes(ip));
    return { workload: match ?? [...byUid].sort((a, b) => a.name.localeCompare(b.name))[0]!, by: 'uid' };
  }
  return { workload: undefined, reason: `no workload on this node has address ${ip} or uid ${uid}` };
}
