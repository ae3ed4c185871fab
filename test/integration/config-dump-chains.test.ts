// `GET /config_dump` shows the compiled discovery chain of every service that has a waypoint, on a node
// daemon and on the waypoint, from the mesh file's configEntries, and follows `ambit config write` live.
// An entry that makes the file invalid leaves the chain in force as it was (the last good state).
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { run } from '../../agent-cli/cli.js';
import { Ambitd } from '../../daemon/daemon.js';
import { loadConfig } from '../../lib/config.js';
import type { CompiledChain } from '../../lib/l7/chain.js';
import { silentLogger } from '../../lib/log.js';
import { ADMIN_TOKEN_FILE } from '../../lib/paths.js';
import { startCluster, until } from '../helpers/cluster.js';

async function chains(d: Ambitd): Promise<Record<string, CompiledChain | { error: string }>> {
  const token = (await readFile(join(d.config.stateDir, ADMIN_TOKEN_FILE), 'utf8')).trim();
  const res = await fetch(`http://127.0.0.1:${d.ports.admin}/config_dump`, {
    headers: { authorization: `Bearer ${token}` },
  });
  return ((await res.json()) as { chains: Record<string, CompiledChain | { error: string }> }).chains;
}

const cli = async (...args: string[]): Promise<{ code: number; err: string }> => {
  let err = '';
  const code = await run(args, {
    out: () => {},
    err: (s) => {
      err += s;
    },
  });
  return { code, err };
};

test("config_dump: each waypoint service's chain, on the node daemon and the waypoint, live", async (t) => {
  const c = await startCluster({ flags: { meshPoll: '100ms' } });
  const wp = await Ambitd.start(
    loadConfig({
      env: {},
      flags: {
        nodeName: 'wp-node',
        stateDir: join(c.dir, 'wp-node'),
        meshFile: c.meshFile,
        caDir: join(c.dir, 'ca'),
        tunnel: '127.0.0.1:0',
        admin: '127.0.0.1:0',
        metrics: '127.0.0.1:0',
        ready: '127.0.0.1:0',
        meshPoll: '100ms',
        role: 'waypoint',
        waypointService: 'wp',
      },
    }),
    silentLogger(),
  );
  t.teardown(async () => {
    await wp.close();
    await c.close();
  });
  // The waypoint enrolled itself into the file: add the opt-ins to it.
  const text = await readFile(c.meshFile, 'utf8');
  await writeFile(
    c.meshFile,
    `${text}services:\n  api: { waypoint: wp }\n  echo: { waypoint: wp }\n  plain: {}\n`,
  );
  const entries = join(c.dir, 'entries.yaml');
  await writeFile(
    entries,
    `- { Kind: service-defaults, Name: api, Protocol: http }
- Kind: service-resolver
  Name: api
  Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } }
- Kind: service-router
  Name: api
  Routes: [{ Match: { HTTP: { PathPrefix: /v2 } }, Destination: { ServiceSubset: v2 } }]
`,
  );
  const r = await cli('--mesh', c.meshFile, 'config', 'write', entries);
  t.is(r.code, 0, r.err);

  const routed = (ch: Record<string, unknown>): boolean =>
    (ch['default/api'] as CompiledChain | undefined)?.StartNode === 'router:api.default.default';
  for (const d of [c.a, wp]) {
    let ch: Record<string, CompiledChain | { error: string }> = {};
    await until(
      async () => {
        ch = await chains(d);
        return routed(ch);
      },
      5000,
      `${d.config.nodeName} has the router`,
    );
    t.deepEqual(Object.keys(ch).sort(), ['default/api', 'default/echo'], 'only services with a waypoint');
    const api = ch['default/api'] as CompiledChain;
    t.is(api.Protocol, 'http');
    t.truthy(api.Targets['v2.api.default.default.dc1']);
    const echo = ch['default/echo'] as CompiledChain;
    t.is(echo.Protocol, 'tcp');
    t.is(echo.StartNode, 'resolver:echo.default.default.dc1');
    t.is(d.store.service('default', 'api')?.protocol, 'http');
  }

  // A file made invalid by hand (a router on echo, a tcp service) is refused: the last good chains stay.
  const good = await readFile(c.meshFile, 'utf8');
  await writeFile(
    c.meshFile,
    `${good}  - { Kind: service-router, Name: echo, Routes: [{ Match: { HTTP: { PathPrefix: /x } } }] }\n`,
  );
  const refused = (): string | undefined => c.a.readiness().checks.mesh;
  await until(() => refused() !== 'ok', 5000, 'node-a refuses the file');
  t.regex(refused() ?? '', /configEntries\[3\] service-router\/echo: .*protocol "tcp"/);
  const after = await chains(c.a);
  t.true(routed(after));
  t.is((after['default/echo'] as CompiledChain).StartNode, 'resolver:echo.default.default.dc1');
});
