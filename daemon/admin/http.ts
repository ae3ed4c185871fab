import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { open, readFile, rename, unlink } from 'node:fs/promises';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import type { Listen } from '../../lib/config.js';
import { ADMIN_TOKEN_FILE } from '../../lib/paths.js';

export type Handler = (req: IncomingMessage, url: URL) => Promise<Reply> | Reply;
/** A route that upgrades the connection (a WebSocket); `route` is `GET /path`. */
export type UpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer, url: URL) => void;
export interface Reply {
  readonly status?: number;
  readonly json?: unknown;
  readonly text?: string;
  readonly contentType?: string;
}

/** Routes that answer only a request carrying the admin token; `route` is `METHOD /path`. */
export interface AdminAuth {
  readonly token: AdminToken;
  readonly required: (route: string) => boolean;
  readonly denied: (route: string, req: IncomingMessage) => void;
}

/** A small HTTP server for a fixed set of routes: `METHOD /path` → handler. Unknown routes get 404. */
export function startHttp(
  listen: Listen,
  routes: Record<string, Handler>,
  auth?: AdminAuth,
  upgrades: Record<string, UpgradeHandler> = {},
  /** A socket already bound (the supervisor's, kept across a re-exec) to listen on, in place of `listen`. */
  handle?: object,
): Promise<Server> {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://local');
    const route = `${req.method} ${url.pathname}`;
    const handler = routes[route];
    if (!handler)
      return send(res, { status: 404, json: { error: `no route ${req.method} ${url.pathname}` } });
    if (auth?.required(route) && !auth.token.matches(req.headers.authorization)) {
      auth.denied(route, req);
      res.setHeader('www-authenticate', 'Bearer realm="ambitd admin"');
      return send(res, {
        status: 401,
        json: {
          error: `${route} needs the admin token: Authorization: Bearer <contents of ${auth.token.path}>`,
        },
      });
    }
    Promise.resolve()
      .then(() => handler(req, url))
      .then(
        (reply) => send(res, reply),
        (err: Error) => send(res, { status: 500, json: { error: err.message } }),
      );
  });
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => {});
    const url = new URL(req.url ?? '/', 'http://local');
    const route = `${req.method} ${url.pathname}`;
    const handler = upgrades[route];
    if (!handler) return refuseUpgrade(socket, 404, 'Not Found', `no route ${route} to upgrade`);
    if (auth && !auth.token.matches(req.headers.authorization)) {
      auth.denied(route, req);
      return refuseUpgrade(
        socket,
        401,
        'Unauthorized',
        `${route} needs the admin token: Authorization: Bearer <contents of ${auth.token.path}>`,
      );
    }
    handler(req, socket, head, url);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const listening = (): void => {
      server.removeListener('error', reject);
      resolve(server);
    };
    if (handle) server.listen(handle, listening);
    else server.listen(listen.port, listen.host, listening);
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

/** Refuses an upgrade with a plain HTTP answer (the client has not become a WebSocket yet). */
export function refuseUpgrade(socket: Duplex, status: number, reason: string, message: string): void {
  const body = `${JSON.stringify({ error: message })}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}

export const portOf = (server: Server): number => (server.address() as AddressInfo).port;

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/**
 * The admin API's credential: a random token in `<stateDir>/admin.token`, readable only by the daemon's
 * user, new at every start. Someone who can read that file is the daemon's user (or root) on this host,
 * which a peer reaching the admin port through the tunnel, or any other local user, is not.
 */
export class AdminToken {
  readonly path: string;
  readonly #digest: Buffer;

  private constructor(path: string, token: string) {
    this.path = path;
    this.#digest = digest(token);
  }

  /**
   * Writes a fresh token, mode 0600 from its creation (a temporary file renamed over the old one). With
   * `keep` (a supervisor taking over from its predecessor), the token on disk stays, so that a re-exec
   * does not lock out the scripts that read it at their start.
   */
  static async create(stateDir: string, keep = false): Promise<AdminToken> {
    const path = join(stateDir, ADMIN_TOKEN_FILE);
    if (keep) {
      const kept = (await readFile(path, 'utf8').catch(() => '')).trim();
      if (kept) return new AdminToken(path, kept);
    }
    const token = randomBytes(32).toString('base64url');
    const tmp = `${path}.${process.pid}.tmp`;
    await unlink(tmp).catch(() => {});
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(`${token}\n`);
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    return new AdminToken(path, token);
  }

  /** Whether an Authorization header carries the token; compared in constant time (as digests). */
  matches(authorization: string | undefined): boolean {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    if (!m) return false;
    return timingSafeEqual(digest(m[1]!), this.#digest);
  }
}
