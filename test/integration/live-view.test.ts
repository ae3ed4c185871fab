// The live view of what a daemon carries: GET /connections (the open connections with their bytes so far,
// spliced ones included), the /tap WebSocket stream of opened, closed and refused connections with its
// filters, and the CLI's `ambit tap` and `ambit top` on top of them. Both behind the admin token.
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import WebSocket from 'ws';
import type { Ambitd } from '../../daemon/daemon.js';
import { addPolicy, editMeshFile } from '../../lib/mesh/edit.js';
import type { ConnectionRow, TapEvent } from '../../lib/tap.js';
import {
  type Cluster,
  echoOnce,
  echoServer,
  freePort,
  metricSum,
  metricsText,
  openEcho,
  startCluster,
  throughTunnel,
  until,
  workload,
} from '../helpers/cluster.js';
import { ROOT } from '../helpers/paths.js';

const run = promisify(execFile);
const CLI = join(ROOT, 'dist', 'agent-cli', 'main.js');

const tokenOf = async (c: Cluster, node: string): Promise<string> =>
  (await readFile(join(c.dir, node, 'admin.token'), 'utf8')).trim();

async function connections(d: Ambitd, token: string | undefined, query = ''): Promise<Response> {
  return fetch(`http://127.0.0.1:${d.ports.admin}/connections${query}`, {
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
}

/** A tap on `d`: the events it has received so far, and how to stop it. */
async function tap(d: Ambitd, token: string, query = ''): Promise<{ events: TapEvent[]; close: () => void }> {
  const ws = new WebSocket(`ws://127.0.0.1:${d.ports.admin}/tap${query}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  const events: TapEvent[] = [];
  ws.on('message', (m) => events.push(JSON.parse(String(m)) as TapEvent));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  // The daemon registers the tap once the upgrade is done: wait for it to count.
  await until(() => d.metrics.connections.taps > 0, 2000, 'the tap registered');
  return { events, close: () => ws.close() };
}

test('GET /connections lists each open connection on both daemons, with the bytes carried so far', async (t) => {
  const cluster = await startCluster();
  const echo = await echoServer();
  try {
    const port = await throughTunnel(
      cluster,
      workload({ name: 'echo-1', service: 'echo', node: 'node-b', ports: [echo.port] }),
    );
    const [ta, tb] = [await tokenOf(cluster, 'node-a'), await tokenOf(cluster, 'node-b')];
    t.is((await connections(cluster.b, undefined)).status, 401, 'the admin token is needed');
    const s = await openEcho(port);
    const text = 'x'.repeat(100_000);
    t.is((await echoOnce(s, text)).length, text.length);
    const rows = async (d: Ambitd, token: string): Promise<ConnectionRow[]> =>
      (await (await connections(d, token)).json()) as ConnectionRow[];
    await until(async () => (await rows(cluster.b, tb)).length === 1, 5000, 'node-b lists it');
    const [a] = await rows(cluster.a, ta);
    const [b] = await rows(cluster.b, tb);
    t.is(a?.direction, 'outbound');
    t.is(a?.dst.service, 'echo');
    t.is(b?.direction, 'inbound');
    t.is(b?.dst.workload, 'echo-1');
    t.is(b?.src.principal, 'spiffe://ambit.local/ns/default/dc/dc1/svc/web');
    t.is(b?.security, 'mutual_tls');
    // 'hello' then the text, each way: the spliced bytes are counted while the connection is open.
    const carried = 5 + text.length;
    t.is(a?.bytes_sent, carried, 'node-a: from the client so far');
    t.is(a?.bytes_received, carried, 'node-a: to the client so far');
    t.is(b?.bytes_sent, carried, 'node-b: from the client so far');
    t.true((b?.age_ms ?? -1) >= 0);
    // Filters: a service that is not there lists nothing; a bad filter is a 400 naming it.
    t.deepEqual(await (await connections(cluster.b, tb, '?to=nope')).json(), []);
    const bad = await connections(cluster.b, tb, '?colour=red');
    t.is(bad.status, 400);
    t.regex(((await bad.json()) as { error: string }).error, /unknown filter "colour"/);
    s.destroy();
    await until(async () => (await rows(cluster.b, tb)).length === 0, 5000, 'gone once closed');
  } finally {
    echo.server.close();
    await cluster.close();
  }
});

test('/tap streams opened, closed and refused connections as they happen, filtered', async (t) => {
  const cluster = await startCluster();
  const echo = await echoServer();
  try {
    const port = await throughTunnel(
      cluster,
      workload({ name: 'echo-1', service: 'echo', node: 'node-b', ports: [echo.port] }),
    );
    const tb = await tokenOf(cluster, 'node-b');
    const all = await tap(cluster.b, tb);
    const refusedOnly = await tap(cluster.b, tb, '?status=refused');
    const s = await openEcho(port);
    await echoOnce(s, 'ping');
    s.end();
    await until(() => all.events.some((e) => e.event === 'closed'), 5000, 'the close event');
    const [opened, closed] = all.events;
    t.is(opened?.event, 'opened');
    t.is(opened?.dst.workload, 'echo-1');
    t.is(opened?.src.principal, 'spiffe://ambit.local/ns/default/dc/dc1/svc/web');
    t.is(closed?.event, 'closed');
    t.is(closed?.id, opened?.id, 'one connection, one id');
    t.is(closed?.bytes_sent, 9, "'hello' and 'ping' from the client");
    t.is(refusedOnly.events.length, 0, 'the status filter kept them out');

    await editMeshFile(cluster.meshFile, (m) => {
      addPolicy(m, {
        name: 'deny-web',
        action: 'deny',
        service: 'echo',
        namespace: 'default',
        ports: [],
        from: [{ service: 'web', namespace: undefined, principal: undefined }],
      });
    });
    await until(() => cluster.b.store.mesh.policies.length === 1, 5000, 'node-b has the policy');
    await openEcho(port).then(
      (x) => x.destroy(),
      () => {},
    );
    await until(() => refusedOnly.events.length > 0, 5000, 'the refusal event');
    t.is(refusedOnly.events[0]?.event, 'refused');
    t.regex(refusedOnly.events[0]?.reason ?? '', /denied by policy deny-web|deny-web/);
    all.close();
    refusedOnly.close();
    await until(() => cluster.b.metrics.connections.taps === 0, 2000, 'taps gone once closed');
    // Without the token the upgrade is refused, and counted as an unauthorized admin request.
    const noToken = new WebSocket(`ws://127.0.0.1:${cluster.b.ports.admin}/tap`);
    const status = await new Promise<number | undefined>((resolve) => {
      noToken.on('unexpected-response', (_req, res) => resolve(res.statusCode));
      noToken.on('error', () => resolve(undefined));
    });
    t.is(status, 401);
    t.true(
      metricSum(await metricsText(cluster.b), 'ambit_admin_unauthorized_total', { route: 'GET /tap' }) >= 1,
    );
  } finally {
    echo.server.close();
    await cluster.close();
  }
});

test('ambit tap and ambit top, as a user runs them', async (t) => {
  const cluster = await startCluster();
  const echo = await echoServer();
  try {
    const port = await throughTunnel(
      cluster,
      workload({ name: 'echo-1', service: 'echo', node: 'node-b', ports: [echo.port] }),
    );
    const cli = (args: string[]) =>
      run(process.execPath, [
        CLI,
        '--state-dir',
        join(cluster.dir, 'node-b'),
        '--admin',
        `127.0.0.1:${cluster.b.ports.admin}`,
        ...args,
      ]);
    const tapping = cli(['tap', '--count', '2', '--json']);
    await until(() => cluster.b.metrics.connections.taps === 1, 5000, 'ambit tap is tapping');
    const s = await openEcho(port);
    await echoOnce(s, 'ping');
    const top = await cli(['top', '--once']);
    t.regex(top.stdout, /1 connection\(s\) open/);
    t.regex(top.stdout, /inbound +.*echo-1/);
    s.end();
    const events = (await tapping).stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as TapEvent);
    t.deepEqual(
      events.map((e) => e.event),
      ['opened', 'closed'],
    );
  } finally {
    echo.server.close();
    await cluster.close();
  }
});

test('ambit status: the daemon at a glance, with an open connection and its certificate', async (t) => {
  const cluster = await startCluster();
  const echo = await echoServer();
  try {
    const port = await throughTunnel(
      cluster,
      workload({ name: 'echo-1', service: 'echo', node: 'node-b', ports: [echo.port] }),
    );
    const s = await openEcho(port);
    await echoOnce(s, 'ping');
    const status = (json: boolean) =>
      run(process.execPath, [
        CLI,
        '--admin',
        `127.0.0.1:${cluster.b.ports.admin}`,
        'status',
        ...(json ? ['--json'] : []),
      ]);
    const text = (await status(false)).stdout;
    t.regex(text, /^ambitd +node-b \(node\), pid \d+, up \d+s, one process$/m);
    t.regex(text, /^ready +yes$/m);
    t.regex(text, /^control +mesh file .*mesh\.yaml$/m);
    t.regex(text, /^certs +1 held for 1 local workload\(s\), next expiry in (\d+d \d+h|\d+h \d+m)$/m);
    t.regex(text, /^traffic +1 connection\(s\) open; .*1 inbound$/m);
    t.regex(text, /^capture +off$/m);
    const json = JSON.parse((await status(true)).stdout) as {
      traffic: { connections: number };
      mode: string;
    };
    t.is(json.mode, 'single');
    t.is(json.traffic.connections, 1);
    s.end();
    // Unreachable: exit code 3, as every admin command.
    const gone = await run(process.execPath, [
      CLI,
      '--admin',
      `127.0.0.1:${await freePort()}`,
      'status',
    ]).catch((e: { code: number; stderr: string }) => e);
    t.is((gone as { code: number }).code, 3);
  } finally {
    echo.server.close();
    await cluster.close();
  }
});
