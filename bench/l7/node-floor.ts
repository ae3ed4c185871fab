// The least Node can do as an L7 hop, for the L7 bench's `node-floor` contender: node:http's server and a
// keep-alive node:http agent, each request piped through, nothing routed, counted or logged. It is not a
// proxy anyone should run (no header hygiene, no limits); it is there to show what the runtime itself
// holds for this load, so that the waypoint's RSS can be read against Node's floor rather than against
// a C++ proxy's (issue 15: Envoy's 60 MB).
//
//   node dist/bench/l7/node-floor.js <listen port> <upstream port>

import { Agent, createServer, request } from 'node:http';

const [listenPort, upstreamPort] = process.argv.slice(2, 4).map(Number);
if (!listenPort || !upstreamPort) {
  process.stderr.write('usage: node dist/bench/l7/node-floor.js <listen port> <upstream port>\n');
  process.exit(2);
}
// As many kept upstream connections as the load generator opens (16), and a few over.
const agent = new Agent({ keepAlive: true, maxSockets: 64 });
createServer((req, res) => {
  const up = request(
    { host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers, agent },
    (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    },
  );
  up.on('error', () => res.destroy());
  req.pipe(up);
}).listen(listenPort, '127.0.0.1');
