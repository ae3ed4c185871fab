import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import {
  CONFIG_KEYS,
  type ConfigInput,
  DEFAULT_LIMITS,
  type DaemonConfig,
  type SettingKey,
  configDump,
  envName,
  loadConfig,
  parseDuration,
  parseListen,
} from '../../lib/config.js';
import { Secret } from '../../lib/consul/secret.js';
import { hostHasIpv6 } from '../../lib/net/addresses.js';

// The loader made from the schema table (lib/config/schema.ts): the defaults, the precedence and the
// error locations of the four-declarations loader it replaced, value for value.

const base = { nodeName: 'n', stateDir: '/x/state' };

test('the defaults are those of docs/configuration.md, field for field', (t) => {
  const expected: DaemonConfig = {
    nodeName: 'n',
    stateDir: '/x/state',
    meshFile: '/x/state/mesh.yaml',
    role: 'node',
    waypointService: 'waypoint',
    registerNode: true,
    advertiseAddress: '127.0.0.1',
    trustDomain: 'ambit.local',
    datacenter: 'dc1',
    caDir: '/x/state/ca',
    certTtlMs: 86_400_000,
    logLevel: 'info',
    outbound: { host: '0.0.0.0', port: 15001 },
    inboundPlaintext: { host: '0.0.0.0', port: 15006 },
    tunnel: { host: hostHasIpv6() ? '::' : '0.0.0.0', port: 15008 },
    admin: { host: '127.0.0.1', port: 15000 },
    metrics: { host: '0.0.0.0', port: 15020 },
    ready: { host: '0.0.0.0', port: 15021 },
    pool: { maxStreams: 100, idleTimeoutMs: 300_000, pingIntervalMs: 10_000 },
    connectTimeoutMs: 5000,
    ejectMs: 30_000,
    maxAttempts: 3,
    meshPollMs: 1000,
    defaultPolicy: undefined,
    consul: undefined,
    kubernetes: undefined,
    drainMs: 30_000,
    workers: 0,
    workersMax: 8,
    reloadDrainMs: 3_600_000,
    stopGraceMs: 5_000,
    capture: {
      enabled: false,
      mark: 0x539,
      originalSource: true,
      replyMark: 0x1000,
      replyTable: 1339,
      unenrolledSource: 'passthrough',
      excludePorts: [22, 53, 8300, 8301, 8302, 8500, 8501, 8502, 8503, 8600],
      excludeCidrs: [],
      daemonUid: undefined,
      checkUsers: ['consul'],
      backend: 'auto',
    },
    limits: {
      maxHandshakes: 256,
      maxHandshakesPerSource: 32,
      handshakeTimeoutMs: 10_000,
      tunnelIdleTimeoutMs: 600_000,
      httpHeadTimeoutMs: 60_000,
      maxConnections: 10_000,
      maxConnectionsPerIdentity: 1000,
      maxInboundStreams: 200,
      maxConnectsPerSession: 100,
      maxConnectsPerNode: 1000,
      streamResetRate: 100,
      maxOutboundControl: 1000,
      maxHeaderListSize: 16_384,
      maxHeaderFrames: 8,
      keyUpdateRate: 10,
      waypointRetryBufferBytes: 65_536,
      waypointMirrorBufferBytes: 65_536,
      waypointMirrorMaxInFlight: 256,
      waypointMirrorTimeoutMs: 10_000,
      fdReserve: 64,
    },
  };
  t.deepEqual(loadConfig({ env: {}, flags: base }), expected);
  t.deepEqual(DEFAULT_LIMITS, expected.limits);
  // The defaults that follow other settings.
  t.is(loadConfig({ env: {}, flags: { ...base, tunnel: '10.1.1.1:1' } }).advertiseAddress, '10.1.1.1');
  t.is(loadConfig({ env: { AMBIT_STATE_DIR: '/e' }, flags: { nodeName: 'n' } }).caDir, '/e/ca');
});

/** A valid value other than the default for every setting; a Record, so a new setting must add one. */
const SAMPLES: Record<SettingKey, string> = {
  nodeName: 'other',
  stateDir: '/other',
  meshFile: '/other/mesh.yaml',
  role: 'waypoint',
  waypointService: 'edge-wp',
  registerNode: 'false',
  advertiseAddress: '10.0.0.9',
  trustDomain: 'example.org',
  datacenter: 'dc2',
  caDir: '/other/ca',
  certTtl: '2h',
  logLevel: 'debug',
  outbound: '15101',
  inboundPlaintext: '15106',
  tunnel: '127.0.0.1:15108',
  admin: '15100',
  metrics: '15120',
  ready: '15121',
  maxStreams: '7',
  idleTimeout: '1m',
  pingInterval: '1s',
  connectTimeout: '2s',
  ejectTime: '3s',
  maxAttempts: '5',
  meshPoll: '250ms',
  consul: '127.0.0.1:8500',
  consulToken: 'sample-token',
  consulTokenFile: 'token', // in the test's directory
  defaultPolicy: 'deny',
  kubernetes: 'true',
  kubernetesScope: 'node',
  kubernetesLabelSelector: 'mesh=yes',
  kubernetesServer: 'https://198.18.0.1:6443',
  kubernetesTokenFile: '/other/token',
  kubernetesCaFile: '/other/ca.crt',
  kubernetesMaxLine: '4096',
  kubernetesMaxPage: '65536',
  kubernetesMaxPods: '50',
  drainTimeout: '1s',
  workers: '3',
  workersMax: '2',
  reloadDrainTimeout: '10m',
  stopGrace: '0s',
  capture: 'true',
  captureMark: '0x10',
  captureOriginalSource: 'false',
  captureReplyMark: '0x2000',
  captureReplyTable: '77',
  unenrolledSource: 'refuse',
  captureExcludePorts: '22',
  captureExcludeCidrs: '10.0.0.0/8',
  captureDaemonUid: '0',
  captureCheckUsers: 'consul,998',
  iptablesBackend: 'nft',
  maxHandshakes: '1',
  maxHandshakesPerSource: '2',
  maxConnections: '3',
  maxConnectionsPerIdentity: '4',
  maxInboundStreams: '5',
  maxConnectsPerSession: '6',
  maxConnectsPerNode: '7',
  streamResetRate: '8',
  maxOutboundControl: '9',
  maxHeaderListSize: '2048',
  maxHeaderFrames: '11',
  keyUpdateRate: '12',
  handshakeTimeout: '1s',
  tunnelIdleTimeout: '1h',
  httpHeadTimeout: '30s',
  waypointRetryBufferBytes: '1024',
  waypointMirrorBufferBytes: '2048',
  waypointMirrorMaxInFlight: '8',
  waypointMirrorTimeout: '3s',
  fdReserve: '0',
};

test('every setting reaches the configuration, from a flag, a variable and the file alike', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-config-'));
  try {
    // consulToken and consulTokenFile only count with an address; the token wins over the file.
    // A setting's own value must not come from the flags of the context, which win over the rest.
    // consulToken and consulTokenFile only count with an address; the token wins over the file.
    const context = (k: SettingKey): ConfigInput => {
      const { [k]: _, ...rest }: ConfigInput = base;
      if (k === 'consulToken' || k === 'consulTokenFile') return { ...rest, consul: '127.0.0.1:8500' };
      // The pod watch's settings only count with the watch on.
      return k.startsWith('kubernetes') && k !== 'kubernetes' ? { ...rest, kubernetes: true } : rest;
    };
    const samples = { ...SAMPLES, consulTokenFile: join(dir, SAMPLES.consulTokenFile) };
    await writeFile(samples.consulTokenFile, 'file-token\n');
    for (const k of CONFIG_KEYS) {
      const plain = JSON.stringify(configDump(loadConfig({ env: {}, flags: context(k) })));
      const fromFlag = JSON.stringify(
        configDump(loadConfig({ env: {}, flags: { ...context(k), [k]: samples[k] } })),
      );
      t.not(fromFlag, plain, `${k} changes nothing`);
      const fromEnv = loadConfig({ env: { [envName(k)]: samples[k] }, flags: context(k) });
      t.is(JSON.stringify(configDump(fromEnv)), fromFlag, `${envName(k)}`);
      const file = join(dir, 'ambitd.yaml');
      await writeFile(file, `${k}: ${JSON.stringify(samples[k])}\n`);
      const fromFile = loadConfig({ env: {}, flags: context(k), configFile: file });
      t.is(JSON.stringify(configDump(fromFile)), fromFlag, `${k} in the file`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('file < Consul variables < AMBIT_ variables < flags, and the error names the winner', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-config-'));
  try {
    const file = join(dir, 'ambitd.yaml');
    await writeFile(file, 'consul: 127.0.0.1:1\ndatacenter: file\nlogLevel: warn\n');
    const env = { AMBIT_CONFIG: file, CONSUL_HTTP_ADDR: '127.0.0.1:2', AMBIT_DATACENTER: 'env' };
    const c = loadConfig({ env, flags: { ...base, logLevel: 'error' } });
    t.is(c.consul?.address, '127.0.0.1:2');
    t.is(c.datacenter, 'env');
    t.is(c.logLevel, 'error');
    t.is(
      loadConfig({ env: { ...env, AMBIT_CONSUL: '127.0.0.1:3' }, flags: base }).consul?.address,
      '127.0.0.1:3',
    );
    const where = (e: NodeJS.ProcessEnv, flags: ConfigInput = {}) =>
      t.throws(() => loadConfig({ env: { AMBIT_CONFIG: file, ...e }, flags: { ...base, ...flags } }))
        ?.message;
    await writeFile(file, 'defaultPolicy: maybe\n');
    t.is(where({}), `${file}: defaultPolicy: must be one of allow, deny, got "maybe"`);
    t.is(where({ AMBIT_DEFAULT_POLICY: 'x' }), 'AMBIT_DEFAULT_POLICY: must be one of allow, deny, got "x"');
    t.is(where({}, { defaultPolicy: 'y' }), '--default-policy: must be one of allow, deny, got "y"');
    t.is(
      where({ CONSUL_HTTP_ADDR: 'ftp://x' }, { defaultPolicy: 'deny' }),
      'CONSUL_HTTP_ADDR: only http:// and https:// Consul addresses are supported, got ftp://x',
    );
    await writeFile(file, 'nodname: x\n');
    t.regex(where({}) ?? '', /ambitd\.yaml: nodname: unknown setting \(known: nodeName, stateDir, /);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('the dump is the configuration as JSON, with the Consul token redacted', (t) => {
  const config = loadConfig({
    env: { CONSUL_HTTP_TOKEN: 'top-secret' },
    flags: { ...base, consul: '127.0.0.1:8500' },
  });
  t.true(config.consul?.token instanceof Secret);
  t.is(config.consul?.token?.reveal(), 'top-secret');
  const dump = configDump(config);
  t.deepEqual(dump, JSON.parse(JSON.stringify(config)));
  t.false(JSON.stringify(dump).includes('top-secret'));
  t.like(dump, { consul: { address: '127.0.0.1:8500', token: '[redacted]' } });
});

test('durations and listen addresses', (t) => {
  const where = { field: 'f' };
  t.is(parseDuration('500ms', where), 500);
  t.is(parseDuration('1.5s', where), 1500);
  t.is(parseDuration('7d', where), 604_800_000);
  t.is(parseDuration(42, where), 42);
  t.is(parseDuration('42', where), 42);
  t.throws(() => parseDuration('1w', where), {
    message: 'f: must be a duration such as 30s, 5m or 24h, got "1w"',
  });
  t.throws(() => parseDuration(-1, where));
  t.deepEqual(parseListen(15008, '0.0.0.0', where), { host: '0.0.0.0', port: 15008 });
  t.deepEqual(parseListen('10.0.0.1:0', '0.0.0.0', where), { host: '10.0.0.1', port: 0 });
  t.deepEqual(parseListen('[::1]:9', '0.0.0.0', where), { host: '::1', port: 9 });
  t.deepEqual(parseListen('localhost:9', '0.0.0.0', where), { host: 'localhost', port: 9 });
  t.throws(() => parseListen('70000', '0.0.0.0', { file: 'a.yaml', field: 'tunnel' }), {
    message: 'a.yaml: tunnel: must be host:port or a port number, got "70000"',
  });
  t.throws(() => parseListen('host:1', '0.0.0.0', where), {
    message: 'f: host must be an IP address, got "host"',
  });
});
