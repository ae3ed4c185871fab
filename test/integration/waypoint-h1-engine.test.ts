// The waypoint's HTTP/1.1 engine over plain sockets (as the L7 bench's hop runs it), under real clients
// that misbehave the way load tools do at the end of a run: wrk closes its connections with requests in
// flight and answers unread. Kept upstream connections must come out of that ready for the next client.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { type Server, createServer } from 'node:http';
import { type AddressInfo, connect, createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { which } from '../../bench/proc.js';
import { Refusals } from '../../daemon/limits/refusal.js';
import { Metrics } from '../../daemon/metrics/metrics.js';
import type { OutboundPlan } from '../../daemon/proxy/outbound/plan.js';
import { SocketStream } from '../../daemon/waypoint/h1/socket-stream.js';
import { HopFailure } from '../../daemon/waypoint/h1/upstream.js';
import type { HopDeps } from '../../daemon/waypoint/hop.js';
import { DEFAULT_HTTP1_LIMITS, WaypointHttp } from '../../daemon/waypoint/http.js';
import { ServiceRouter } from '../../daemon/waypoint/router.js';
import { silentLogger } from '../../lib/log.js';
import { workload } from '../helpers/mesh.js';

const run = promisify(execFile);
const principal = (svc: string): string => `spiffe://ambit.local/ns/default/dc/dc1/svc/${svc}`;

interface Engine {
  port: number;
  upstreamConnections: () => number;
  close(): Promise<void>;
}

/** An upstream node:http server, and the engine in front of it on a plain listener. */
async function engine(): Promise<Engine> {
  let accepted = 0;
  const upstream: Server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url === '/big') res.end(Buffer.alloc(512 * 1024, 0x62));
      else res.end(`${req.method} ${req.url}\n`);
    });
  });
  upstream.on('connection', () => accepted++);
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  const upPort = (upstream.address() as AddressInfo).port;
  const metrics = new Metrics({ processMetrics: false });
  const log = silentLogger();
  const plan: OutboundPlan = {
    kind: 'mesh',
    service: { name: 'api', namespace: 'default' },
    endpoints: [workload({ name: 'api-1', service: 'api', node: 'n', ports: [upPort] })],
    targetPort: upPort,
    targeted: undefined,
  };
  // With an opener of its own the engine never reaches the store or the pool of a HopDeps.
  const hop: HopDeps = {
    store: undefined as never,
    pool: undefined as never,
    identityOf: (w) => principal(w.service),
    self: principal('wp'),
  };
  const http = new WaypointHttp({
    hop,
    router: new ServiceRouter(1000),
    log,
    refusals: new Refusals(metrics, log),
    metrics,
    limits: DEFAULT_HTTP1_LIMITS,
    open: () =>
      new Promise((resolve, reject) => {
        const s = connect({ host: '127.0.0.1', port: upPort, allowHalfOpen: true });
        s.once('error', (err) => reject(new HopFailure(503, err.message)));
        s.once('connect', () => resolve({ stream: new SocketStream(s), authority: `127.0.0.1:${upPort}` }));
      }),
  });
  const client = { principal: principal('web'), forwarded: undefined, traceparent: undefined };
  const server = createNetServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    http.serve(new SocketStream(s), { plan, client, clientAddr: `${s.remoteAddress}:${s.remotePort}` });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    upstreamConnections: () => accepted,
    async close() {
      http.close();
      server.close();
      upstream.closeAllConnections();
      upstream.close();
    },
  };
}

/** `n` requests one after another on one keep-alive connection, each answered (bounded: 5 s in all). */
function sequential(port: number, n: number): Promise<number> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' });
    let answered = 0;
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve(answered);
    }, 5000);
    const send = (): boolean => s.write(`GET /seq/${answered} HTTP/1.1\r\nHost: api\r\n\r\n`);
    s.setEncoding('utf8');
    s.on('data', (c: string) => {
      buf += c;
      while (buf.includes(`GET /seq/${answered}\n`)) {
        buf = buf.slice(buf.indexOf(`GET /seq/${answered}\n`) + `GET /seq/${answered}\n`.length);
        if (++answered === n) {
          clearTimeout(timer);
          s.end();
          resolve(answered);
          return;
        }
        send();
      }
    });
    s.on('error', () => {});
    send();
  });
}

test('a client that stops reading and goes away leaves no kept connection paused for the next', async (t) => {
  const e = await engine();
  try {
    // Eight clients each ask for a large answer, read none of it, and reset.
    for (let i = 0; i < 8; i++) {
      await new Promise<void>((resolve) => {
        const s = connect({ port: e.port, host: '127.0.0.1' }, () => {
          s.pause();
          s.write('GET /big HTTP/1.1\r\nHost: api\r\n\r\n');
          setTimeout(() => {
            s.resetAndDestroy();
            resolve();
          }, 150);
        });
        s.on('error', () => {});
      });
    }
    const answered = await Promise.all([1, 2, 3, 4].map(() => sequential(e.port, 25)));
    t.deepEqual(answered, [25, 25, 25, 25]);
  } finally {
    await e.close();
  }
});

if (!which('wrk')) {
  console.log('waypoint-h1-engine: the wrk test skipped: wrk is not installed (apt-get install -y wrk)');
  test.skip('after wrk ends a load mid-flight, every client is still answered', () => {});
} else {
  test('after wrk ends a load mid-flight, every client is still answered', async (t) => {
    const e = await engine();
    const dir = await mkdtemp(join(tmpdir(), 'ambit-h1-'));
    try {
      const lua = join(dir, 'post.lua');
      await writeFile(lua, 'wrk.method="POST"\nwrk.body=string.rep("x",1024)\n');
      const { stdout } = await run('wrk', ['-t1', '-c16', '-d1s', '-s', lua, `http://127.0.0.1:${e.port}/`]);
      t.regex(stdout, /requests in/);
      t.notRegex(stdout, /Non-2xx/);
      const answered = await Promise.all(Array.from({ length: 8 }, () => sequential(e.port, 20)));
      t.deepEqual(answered, Array(8).fill(20));
      // Kept connections were reused, not one per request.
      t.true(e.upstreamConnections() < 200, `${e.upstreamConnections()} upstream connections`);
      const { stdout: body } = await run('curl', ['-sS', `http://127.0.0.1:${e.port}/after`]);
      t.is(body, 'GET /after\n');
    } finally {
      await e.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
}
