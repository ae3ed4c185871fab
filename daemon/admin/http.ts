import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Listen } from '../config.js';

export type Handler = (req: IncomingMessage, url: URL) => Promise<Reply> | Reply;
export interface Reply {
  readonly status?: number;
  readonly json?: unknown;
  readonly text?: string;
  readonly contentType?: string;
}

/** A small HTTP server for a fixed set of routes: `METHOD /path` → handler. Unknown routes get 404. */
export function startHttp(listen: Listen, routes: Record<string, Handler>): Promise<Server> {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://local');
    const handler = routes[`${req.method} ${url.pathname}`];
    if (!handler)
      return send(res, { status: 404, json: { error: `no route ${req.method} ${url.pathname}` } });
    Promise.resolve()
      .then(() => handler(req, url))
      .then(
        (reply) => send(res, reply),
        (err: Error) => send(res, { status: 500, json: { error: err.message } }),
      );
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.removeListener('error', reject);
      resolve(server);
    });
  });
}

function send(res: ServerResponse, reply: Reply): void {
  const status = reply.status ?? 200;
  if (reply.json !== undefined) {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify(reply.json, null, 2)}\n`);
  } else {
    res.writeHead(status, { 'content-type': reply.contentType ?? 'text/plain; charset=utf-8' });
    res.end(reply.text ?? '');
  }
}

export const portOf = (server: Server): number => (server.address() as AddressInfo).port;
