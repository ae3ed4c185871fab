// The four things the bench measures, each a TCP path from a loopback port to the sink:
//   direct   the sink itself (the limit of the machine),
//   ambit    two ambitd daemons (child processes), an explicit upstream on node-a leading over HBONE to node-b,
//   stunnel  two stunnel4 processes with mutual TLS 1.3 (client mode → server mode),
//   haproxy  two haproxy processes in tcp mode with mutual TLS 1.3.
// All use ECDSA P-256 certificates from the same kind of CA (EmbeddedCa), and only loopback.

import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { EmbeddedCa } from '../daemon/identity/ca.js';
import { editMeshFile, upsertWorkload } from '../lib/mesh/edit.js';
import { workload } from '../test/helpers/cluster.js';
import {
  type Spawned,
  commandLine,
  freePort,
  gitCommit,
  sleep,
  startProcess,
  stopProcess,
  waitForPort,
  which,
} from './proc.js';
import { MODE_ECHO } from './protocol.js';

export const CONTENDERS = ['direct', 'ambit', 'stunnel', 'haproxy', 'ambit-w1', 'ambit-w2'] as const;
/** What a run measures unless told (--only): the workers' variants are asked for by name. */
export const DEFAULT_CONTENDERS: readonly ContenderName[] = ['direct', 'ambit', 'stunnel', 'haproxy'];
export type ContenderName = (typeof CONTENDERS)[number];
export const PEERS: readonly ContenderName[] = ['stunnel', 'haproxy'];

export interface Running {
  /** Where the load generator connects. */
  readonly port: number;
  /** The contender's own processes (both tunnel ends), whose RSS and CPU are measured. */
  readonly pids: readonly number[];
  stop(): Promise<void>;
}

export interface Context {
  /** Repository root (holds dist/). */
  readonly root: string;
  /** Scratch directory for this run (configs, certs, state), removed at the end. */
  readonly work: string;
  /** The sink port reserved for this contender. */
  readonly sinkPort: number;
  readonly certs: PeerCerts;
  /** Counts starts, so each gets fresh state. */
  readonly seq: number;
  /** The open-file limit the contender's processes inherit. */
  readonly fileLimit: number;
  /** Extra arguments for the node running each ambitd (e.g. --max-semi-space-size=64). */
  readonly nodeArgs: readonly string[];
}

export interface Contender {
  readonly name: ContenderName;
  /** Descriptors one tunnel end holds per tunneled connection (bounds the idle test under the file limit). */
  readonly fdsPerConn: number;
  /** Undefined when it can run; otherwise what is missing and how to get it. */
  missing(root: string): string | undefined;
  version(root: string): string;
  start(ctx: Context): Promise<Running>;
}

export interface PeerCerts {
  readonly caFile: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** Certificate then key, in one PEM (what haproxy wants). */
  readonly clientPem: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly serverPem: string;
}

const TRUST_DOMAIN = 'ambit.local';
const spiffe = (svc: string): string => `spiffe://${TRUST_DOMAIN}/ns/default/dc/dc1/svc/${svc}`;

/** ECDSA P-256 leaf certificates for the stunnel and haproxy pairs, from an EmbeddedCa like ambitd's. */
export async function issuePeerCerts(dir: string): Promise<PeerCerts> {
  await mkdir(dir, { recursive: true });
  const ca = await EmbeddedCa.loadOrCreate(join(dir, 'ca'), TRUST_DOMAIN);
  const day = 24 * 3600_000;
  const client = await ca.issue(spiffe('bench-client'), day);
  const server = await ca.issue(spiffe('bench-server'), day);
  const files: PeerCerts = {
    caFile: join(dir, 'ca', 'root-cert.pem'),
    clientCert: join(dir, 'client-cert.pem'),
    clientKey: join(dir, 'client-key.pem'),
    clientPem: join(dir, 'client.pem'),
    serverCert: join(dir, 'server-cert.pem'),
    serverKey: join(dir, 'server-key.pem'),
    serverPem: join(dir, 'server.pem'),
  };
  await writeFile(files.clientCert, client.certPem);
  await writeFile(files.clientKey, client.keyPem, { mode: 0o600 });
  await writeFile(files.clientPem, client.certPem + client.keyPem, { mode: 0o600 });
  await writeFile(files.serverCert, server.certPem);
  await writeFile(files.serverKey, server.keyPem, { mode: 0o600 });
  await writeFile(files.serverPem, server.certPem + server.keyPem, { mode: 0o600 });
  return files;
}

/** One echo round trip through `port` (1 byte), within `ms`; false if it did not come back. */
function probe(port: number, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), ms);
    s.once('error', () => done(false));
    s.once('connect', () => s.write(Buffer.of(MODE_ECHO)));
    s.once('data', () => done(true));
  });
}

/** Waits until a byte makes it through the whole path to the sink and back (bounded by `ms`). */
async function untilEchoes(port: number, ms: number, what: string, procs: readonly Spawned[]): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await probe(port, 2000))) {
    const dead = procs.find((p) => p.child.exitCode !== null || p.child.signalCode !== null);
    if (dead) throw new Error(`${what}: ${dead.name} exited:\n${dead.output()}`);
    if (Date.now() > deadline) {
      const out = procs.map((p) => `--- ${p.name}\n${p.output()}`).join('\n');
      throw new Error(`${what}: no echo through 127.0.0.1:${port} after ${ms} ms\n${out}`);
    }
    await sleep(100);
  }
}

/** Waits until `port` accepts, failing early (with the processes' output) if one of them exits. */
async function untilListening(port: number, what: string, procs: readonly Spawned[]): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const dead = procs.find((p) => p.child.exitCode !== null || p.child.signalCode !== null);
    if (dead) throw new Error(`${what}: ${dead.name} exited:\n${dead.output()}`);
    try {
      await waitForPort(port, 0, what);
      return;
    } catch (e) {
      if (Date.now() > deadline) {
        const out = procs.map((p) => `--- ${p.name}\n${p.output()}`).join('\n');
        throw new Error(`${(e as Error).message}\n${out}`);
      }
      await sleep(100);
    }
  }
}

async function stopAll(procs: readonly Spawned[]): Promise<void> {
  await Promise.all(procs.map((p) => stopProcess(p)));
}

// ---------------------------------------------------------------------------------------------------------
const direct: Contender = {
  name: 'direct',
  fdsPerConn: 0,
  missing: () => undefined,
  version: () => 'plain TCP (kernel loopback)',
  async start(ctx) {
    return { port: ctx.sinkPort, pids: [], stop: async () => {} };
  },
};

// ---------------------------------------------------------------------------------------------------------
async function httpOk(port: number, path: string): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer();
    return res.ok;
  } catch {
    return false;
  }
}

function ambitEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('AMBIT_')) env[k] = v;
  // No capture in the bench: keep the transparent listeners (if the daemon binds them) off the well-known ports.
  env.AMBIT_OUTBOUND = '127.0.0.1:0';
  env.AMBIT_INBOUND_PLAINTEXT = '127.0.0.1:0';
  env.AMBIT_MESH_POLL = '200ms';
  return env;
}

/**
 * ambitd in one process (`ambit`, workers 0), or a supervisor with that many workers (`ambit-w1`,
 * `ambit-w2`): its workers are measured with it, as its descendants.
 */
const ambitWith = (name: 'ambit' | 'ambit-w1' | 'ambit-w2', workers: number): Contender => ({
  name,
  fdsPerConn: 1,
  missing(root) {
    return existsSync(join(root, 'dist/daemon/main.js'))
      ? undefined
      : 'dist/daemon/main.js is missing: run `npm run build` (npx tsc -p .) first';
  },
  version(root) {
    let v = '?';
    try {
      v = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;
    } catch {
      // keep '?'
    }
    return `ambitd ${v} @ ${gitCommit(root)}, Node ${process.version} (OpenSSL ${process.versions.openssl})`;
  },
  async start(ctx) {
    const dir = join(ctx.work, `ambit-${ctx.seq}`);
    const meshFile = join(dir, 'mesh.yaml');
    const caDir = join(ctx.work, 'ambit-ca');
    await mkdir(dir, { recursive: true });
    // Created once, here, so that the two daemons starting together both load it rather than race to create it.
    await EmbeddedCa.loadOrCreate(caDir, TRUST_DOMAIN);
    const procs: Spawned[] = [];
    try {
      const ready: Record<string, number> = {};
      for (const node of ['node-a', 'node-b']) {
        ready[node] = await freePort();
        const args = [
          // What ambitd's launchers pass (see daemon/proxy/reclaim.ts), then anything the caller adds.
          '--initial-old-space-size=64',
          ...ctx.nodeArgs,
          join(ctx.root, 'dist/daemon/main.js'),
          '--node-name',
          node,
          '--state-dir',
          join(dir, node),
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
          `127.0.0.1:${ready[node]}`,
          '--log-level',
          'warn',
          '--workers',
          String(workers),
        ];
        procs.push(
          startProcess(`ambitd ${node}`, process.execPath, args, {
            env: ambitEnv(),
            logFile: join(dir, `${node}.log`),
          }),
        );
      }
      const deadline = Date.now() + 20_000;
      for (const [i, node] of ['node-a', 'node-b'].entries()) {
        while (!(await httpOk(ready[node]!, '/healthz/ready'))) {
          const p = procs[i]!;
          if (p.child.exitCode !== null) throw new Error(`ambitd ${node} exited:\n${p.output()}`);
          if (Date.now() > deadline) throw new Error(`ambitd ${node} not ready after 20 s:\n${p.output()}`);
          await sleep(100);
        }
      }
      const upstream = await freePort();
      await editMeshFile(meshFile, (doc) => {
        upsertWorkload(
          doc,
          workload({
            name: 'client',
            service: 'bench-client',
            node: 'node-a',
            // A client only; at a loopback address it must still list a port (nothing listens on discard).
            ports: [9],
            upstreams: [
              {
                service: 'sink',
                namespace: 'default',
                port: undefined,
                listenHost: '127.0.0.1',
                listenPort: upstream,
              },
            ],
          }),
        );
        upsertWorkload(
          doc,
          workload({ name: 'sink-1', service: 'sink', node: 'node-b', ports: [ctx.sinkPort] }),
        );
      });
      await untilEchoes(upstream, 20_000, name, procs);
      // The workers are the supervisor's descendants: the measures count them with it.
      return { port: upstream, pids: procs.map((p) => p.pid), stop: () => stopAll(procs) };
    } catch (e) {
      await stopAll(procs);
      throw e;
    }
  },
});
const ambit = ambitWith('ambit', 0);

// ---------------------------------------------------------------------------------------------------------
const INSTALL_HINT = 'install it with `apt-get install -y stunnel4 haproxy` (or run bench/install.sh)';

const stunnelBin = (): string | undefined => which('stunnel4') ?? which('stunnel');

const stunnel: Contender = {
  name: 'stunnel',
  fdsPerConn: 2,
  missing: () => (stunnelBin() ? undefined : `stunnel4 is not installed: ${INSTALL_HINT}`),
  version() {
    const bin = stunnelBin();
    if (!bin) return 'missing';
    const v = commandLine(bin, ['-version'], /^stunnel \d/) ?? 'stunnel (unknown version)';
    const ssl = commandLine(bin, ['-version'], /^Running\s+with OpenSSL/)?.replace(/^Running\s+with\s+/, '');
    return ssl ? `${v.replace(/ on .*/, '')} (${ssl})` : v;
  },
  async start(ctx) {
    const bin = stunnelBin()!;
    const dir = join(ctx.work, `stunnel-${ctx.seq}`);
    await mkdir(dir, { recursive: true });
    const [clientPort, serverPort] = [await freePort(), await freePort()];
    const { certs } = ctx;
    const common = [
      'foreground = yes',
      'pid =',
      'debug = warning',
      'syslog = no',
      // Nagle would add 40 ms to every small message; any tuned deployment turns it off.
      'socket = l:TCP_NODELAY=1',
      'socket = r:TCP_NODELAY=1',
    ];
    const clientConf = [
      ...common,
      '[bench]',
      'client = yes',
      `accept = 127.0.0.1:${clientPort}`,
      `connect = 127.0.0.1:${serverPort}`,
      `cert = ${certs.clientCert}`,
      `key = ${certs.clientKey}`,
      `CAfile = ${certs.caFile}`,
      'verifyChain = yes',
      'sslVersion = TLSv1.3',
      '',
    ].join('\n');
    const serverConf = [
      ...common,
      '[bench]',
      `accept = 127.0.0.1:${serverPort}`,
      `connect = 127.0.0.1:${ctx.sinkPort}`,
      `cert = ${certs.serverCert}`,
      `key = ${certs.serverKey}`,
      `CAfile = ${certs.caFile}`,
      'verifyChain = yes',
      'requireCert = yes',
      'sslVersion = TLSv1.3',
      '',
    ].join('\n');
    await writeFile(join(dir, 'client.conf'), clientConf);
    await writeFile(join(dir, 'server.conf'), serverConf);
    const procs: Spawned[] = [];
    try {
      procs.push(
        startProcess('stunnel server', bin, [join(dir, 'server.conf')], { logFile: join(dir, 'server.log') }),
      );
      procs.push(
        startProcess('stunnel client', bin, [join(dir, 'client.conf')], { logFile: join(dir, 'client.log') }),
      );
      await untilListening(serverPort, 'stunnel server', procs);
      await untilListening(clientPort, 'stunnel client', procs);
      await untilEchoes(clientPort, 10_000, 'stunnel', procs);
      return { port: clientPort, pids: procs.map((p) => p.pid), stop: () => stopAll(procs) };
    } catch (e) {
      await stopAll(procs);
      throw e;
    }
  },
};

// ---------------------------------------------------------------------------------------------------------
const haproxyBin = (): string | undefined => which('haproxy');

const haproxy: Contender = {
  name: 'haproxy',
  fdsPerConn: 2,
  missing: () => (haproxyBin() ? undefined : `haproxy is not installed: ${INSTALL_HINT}`),
  version() {
    const bin = haproxyBin();
    if (!bin) return 'missing';
    const v = commandLine(bin, ['-v'], /^HA-?Proxy version/)?.replace(/ - https.*$/, '');
    const ssl = commandLine(bin, ['-vv'], /^Running on OpenSSL version/)?.replace(
      /^Running on OpenSSL version\s*:\s*/,
      '',
    );
    return `${v ?? 'HAProxy (unknown version)'}${ssl ? ` (${ssl})` : ''}`;
  },
  async start(ctx) {
    const bin = haproxyBin()!;
    const dir = join(ctx.work, `haproxy-${ctx.seq}`);
    await mkdir(dir, { recursive: true });
    const [clientPort, serverPort] = [await freePort(), await freePort()];
    const { certs } = ctx;
    // haproxy wants 2 descriptors per connection plus slack, and refuses to start if the limit is lower.
    const maxconn = Math.max(100, Math.min(30_000, Math.floor((ctx.fileLimit - 200) / 2)));
    const head = [
      'global',
      `  maxconn ${maxconn}`,
      '  tune.ssl.default-dh-param 2048',
      'defaults',
      '  mode tcp',
      `  maxconn ${maxconn}`,
      '  timeout connect 5s',
      '  timeout client 10m',
      '  timeout server 10m',
    ];
    const clientConf = [
      ...head,
      'frontend plain_in',
      `  bind 127.0.0.1:${clientPort}`,
      '  default_backend tls_out',
      'backend tls_out',
      `  server peer 127.0.0.1:${serverPort} ssl crt ${certs.clientPem} ca-file ${certs.caFile} verify required ssl-min-ver TLSv1.3`,
      '',
    ].join('\n');
    const serverConf = [
      ...head,
      'frontend tls_in',
      `  bind 127.0.0.1:${serverPort} ssl crt ${certs.serverPem} ca-file ${certs.caFile} verify required ssl-min-ver TLSv1.3`,
      '  default_backend sink',
      'backend sink',
      `  server sink 127.0.0.1:${ctx.sinkPort}`,
      '',
    ].join('\n');
    await writeFile(join(dir, 'client.cfg'), clientConf);
    await writeFile(join(dir, 'server.cfg'), serverConf);
    const procs: Spawned[] = [];
    try {
      for (const side of ['server', 'client'] as const) {
        const cfg = join(dir, `${side}.cfg`);
        const check = await checkHaproxy(bin, cfg);
        if (check) throw new Error(`haproxy rejects its ${side} config:\n${check}`);
        procs.push(
          startProcess(`haproxy ${side}`, bin, ['-db', '-f', cfg], { logFile: join(dir, `${side}.log`) }),
        );
      }
      await untilListening(serverPort, 'haproxy server', procs);
      await untilListening(clientPort, 'haproxy client', procs);
      await untilEchoes(clientPort, 10_000, 'haproxy', procs);
      return { port: clientPort, pids: procs.map((p) => p.pid), stop: () => stopAll(procs) };
    } catch (e) {
      await stopAll(procs);
      throw e;
    }
  },
};

/** `haproxy -c`: undefined if the config is valid, otherwise what haproxy said. */
async function checkHaproxy(bin: string, cfg: string): Promise<string | undefined> {
  const p = startProcess('haproxy -c', bin, ['-c', '-q', '-f', cfg]);
  const status = await p.exited;
  return status === 'code 0' ? undefined : `${status}\n${p.output()}\n${await readFile(cfg, 'utf8')}`;
}

export const ALL: Record<ContenderName, Contender> = {
  direct,
  ambit,
  stunnel,
  haproxy,
  'ambit-w1': ambitWith('ambit-w1', 1),
  'ambit-w2': ambitWith('ambit-w2', 2),
};
