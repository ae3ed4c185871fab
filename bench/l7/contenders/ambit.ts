// The whole Ambit path as an L7 hop: load generator -> node daemon A (an explicit upstream listener of a
// client workload) ==HBONE==> waypoint ==HBONE==> node daemon B -> the shared upstream. Three ambitd child
// processes on loopback sharing one mesh file and one embedded CA, as in test/integration/waypoint.test.ts.
// The waypoint contender (waypoint.ts) starts the same path and is charged for the waypoint process alone.

import { existsSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { EmbeddedCa } from '../../../daemon/identity/ca.js';
import { NODE_FLAGS } from '../../../daemon/proxy/reclaim.js';
import { WAYPOINT_ENV, WAYPOINT_NODE_FLAGS } from '../../../daemon/waypoint/runtime.js';
import { editMeshFile, setConfigEntry, upsertWorkload } from '../../../lib/mesh/edit.js';
import { workload } from '../../../test/helpers/mesh.js';
import { type Spawned, freePort, gitCommit, sleep, startProcess } from '../../proc.js';
import type { L7Contender, L7Context, Running } from '../contender.js';
import { CLIENT_SERVICE, SERVICE } from '../policies.js';
import { stopAll, untilAnswers } from '../ready.js';

const TRUST_DOMAIN = 'ambit.local';
const WAYPOINT_SERVICE = 'l7-wp';
const NODES = ['node-a', 'node-b', 'wp-node'] as const;
type Node = (typeof NODES)[number];

export function ambitMissing(root: string): string | undefined {
  return existsSync(join(root, 'dist/daemon/main.js'))
    ? undefined
    : 'dist/daemon/main.js is missing: run `npm run build` first';
}

export function ambitVersion(root: string): string {
  let v = '?';
  try {
    v = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;
  } catch {
    // keep '?'
  }
  return `ambitd ${v} @ ${gitCommit(root)}, Node ${process.version} (OpenSSL ${process.versions.openssl})`;
}

function ambitEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('AMBIT_')) env[k] = v;
  // No capture in the bench: keep the transparent listeners off the well-known ports.
  env.AMBIT_OUTBOUND = '127.0.0.1:0';
  env.AMBIT_INBOUND_PLAINTEXT = '127.0.0.1:0';
  env.AMBIT_MESH_POLL = '200ms';
  return env;
}

async function httpOk(port: number, path: string): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer();
    return res.ok;
  } catch {
    return false;
  }
}

export interface AmbitPath {
  /** The client's explicit upstream listener on node-a. */
  readonly port: number;
  readonly pids: Readonly<Record<Node, number>>;
  stop(): Promise<void>;
}

/**
 * Starts the three daemons, opts the service into the waypoint (with `entries` in the mesh file's
 * configEntries), and returns once a request came back.
 */
export async function startAmbitPath(
  ctx: L7Context,
  entries: readonly Record<string, unknown>[] = [],
): Promise<AmbitPath> {
  const meshFile = join(ctx.dir, 'mesh.yaml');
  const caDir = join(ctx.dir, 'ca');
  await mkdir(ctx.dir, { recursive: true });
  // Created once, here, so that the daemons starting together all load it rather than race to create it.
  await EmbeddedCa.loadOrCreate(caDir, TRUST_DOMAIN);
  const procs: Spawned[] = [];
  try {
    const ready = new Map<Node, number>();
    for (const node of NODES) {
      const readyPort = await freePort();
      ready.set(node, readyPort);
      const wp = node === 'wp-node';
      const role = wp ? ['--role', 'waypoint', '--waypoint-service', WAYPOINT_SERVICE] : [];
      const args = [
        // What ambitd's launchers pass (daemon/proxy/reclaim.ts; a waypoint's: daemon/waypoint/runtime.ts).
        ...(wp ? WAYPOINT_NODE_FLAGS : NODE_FLAGS),
        join(ctx.root, 'dist/daemon/main.js'),
        ...role,
        '--node-name',
        node,
        '--state-dir',
        join(ctx.dir, node),
        '--mesh-file',
        meshFile,
        '--ca-dir',
        caDir,
        '--tunnel',
        '127.0.0.1:0',
        '--admin',
        `127.0.0.1:${await freePort()}`,
        '--metrics',
        `127.0.0.1:${await freePort()}`,
        '--ready',
        `127.0.0.1:${readyPort}`,
        // As nginx and haproxy run with their access logs off: warn drops the per-request info lines.
        '--log-level',
        'warn',
      ];
      procs.push(
        startProcess(`ambitd ${node}`, process.execPath, args, {
          env: wp ? { ...ambitEnv(), ...WAYPOINT_ENV } : ambitEnv(),
          logFile: join(ctx.dir, `${node}.log`),
        }),
      );
    }
    const deadline = Date.now() + 20_000;
    for (const [i, node] of NODES.entries()) {
      while (!(await httpOk(ready.get(node)!, '/healthz/ready'))) {
        const p = procs[i]!;
        if (p.child.exitCode !== null) throw new Error(`ambitd ${node} exited:\n${p.output()}`);
        if (Date.now() > deadline) throw new Error(`ambitd ${node} not ready after 20 s:\n${p.output()}`);
        await sleep(100);
      }
    }
    const port = await freePort();
    await editMeshFile(meshFile, (doc) => {
      upsertWorkload(
        doc,
        workload({
          name: 'client',
          service: CLIENT_SERVICE,
          node: 'node-a',
          // A client only; at a loopback address it must still list a port (nothing listens on discard).
          ports: [9],
          upstreams: [
            {
              service: SERVICE,
              namespace: 'default',
              port: undefined,
              listenHost: '127.0.0.1',
              listenPort: port,
            },
          ],
        }),
      );
      upsertWorkload(
        doc,
        workload({ name: `${SERVICE}-1`, service: SERVICE, node: 'node-b', ports: [ctx.upstreamPort] }),
      );
      doc.setIn(['services', SERVICE], doc.createNode({ waypoint: WAYPOINT_SERVICE, protocol: 'http' }));
      for (const e of entries) setConfigEntry(doc, { ...e });
    });
    // The first answer may take a mesh poll or two (each daemon reads the file on its own): bounded.
    await untilAnswers(port, 20_000, 'ambit', procs);
    const [a, b, wp] = procs;
    return {
      port,
      pids: { 'node-a': a!.pid, 'node-b': b!.pid, 'wp-node': wp!.pid },
      stop: () => stopAll(procs),
    };
  } catch (e) {
    await stopAll(procs);
    throw e;
  }
}

export const contender: L7Contender = {
  name: 'ambit',
  description:
    'the whole Ambit path, three ambitd processes: node daemon A (explicit upstream) ==HBONE==> waypoint ' +
    '(`protocol: http`) ==HBONE==> node daemon B; CPU and RSS are the three together, log level warn',
  missing: ambitMissing,
  version: ambitVersion,
  async start(ctx): Promise<Running> {
    const path = await startAmbitPath(ctx);
    return { port: path.port, pids: Object.values(path.pids), stop: path.stop };
  },
};
