import { readFile } from 'node:fs/promises';
// The few requests the pod watch makes of the Kubernetes API server, over node:https: a LIST answered as one
// JSON document, and a WATCH answered as JSON lines. No client library: this is two GETs, and a library's
// informers would hold every object it is sent whatever its size, which is what the bounds below refuse.
import type { IncomingMessage } from 'node:http';
import { type RequestOptions, request } from 'node:https';
import { KubernetesError } from '../../../lib/errors.js';

/** Where the service account's credentials are mounted in every pod (unless automount is off). */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export interface KubeEndpoint {
  /** `https://host:port` of the API server. */
  readonly server: string;
  /** Bearer token file; read at every request, since the kubelet rotates projected tokens in place. */
  readonly tokenFile: string;
  /** CA bundle that signs the API server's certificate; read at every connection (it can rotate too). */
  readonly caFile: string;
}

/**
 * The in-cluster endpoint, as client-go's rest.InClusterConfig finds it: KUBERNETES_SERVICE_HOST and
 * KUBERNETES_SERVICE_PORT, and the service account's token and ca.crt. `server` overrides the variables.
 */
export function inClusterEndpoint(
  env: NodeJS.ProcessEnv,
  given: { server?: string | undefined; tokenFile?: string | undefined; caFile?: string | undefined } = {},
): KubeEndpoint {
  let server = given.server;
  if (!server) {
    const host = env.KUBERNETES_SERVICE_HOST;
    const port = env.KUBERNETES_SERVICE_PORT;
    if (!host || !port) {
      throw new KubernetesError(
        'not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset (set kubernetesServer)',
      );
    }
    server = `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
  }
  return {
    server,
    tokenFile: given.tokenFile ?? `${SERVICE_ACCOUNT_DIR}/token`,
    caFile: given.caFile ?? `${SERVICE_ACCOUNT_DIR}/ca.crt`,
  };
}

export interface KubeBounds {
  /** Longest watch line (one event) taken; a longer one ends the watch. */
  readonly maxLineBytes: number;
  /** Largest LIST page taken. */
  readonly maxPageBytes: number;
}

/** A bound the API server's answer went over: `what` is the bound's name in metrics and logs. */
export class BoundExceeded extends KubernetesError {
  readonly bound: 'line' | 'page' | 'pods';
  constructor(bound: 'line' | 'page' | 'pods', message: string) {
    super(message);
    this.bound = bound;
  }
}

/** An answer other than 200; `status` 410 means the resourceVersion is gone (relist). */
export class KubeStatusError extends KubernetesError {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

export class KubeClient {
  readonly endpoint: KubeEndpoint;
  readonly bounds: KubeBounds;

  constructor(endpoint: KubeEndpoint, bounds: KubeBounds) {
    this.endpoint = endpoint;
    this.bounds = bounds;
  }

  /** GET `path` and parse the answer as one JSON document of at most maxPageBytes. */
  async getJson(path: string, signal: AbortSignal): Promise<unknown> {
    const res = await this.#get(path, signal);
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of res as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > this.bounds.maxPageBytes) {
        res.destroy();
        throw new BoundExceeded('page', `a LIST page over ${this.bounds.maxPageBytes} bytes`);
      }
      chunks.push(chunk);
    }
    try {
      return JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      throw new KubernetesError(`${pathOnly(path)}: the answer is not JSON`);
    }
  }

  /**
   * GET `path` as a watch: `onEvent` gets each line parsed. Resolves when the server ends the stream (its
   * timeoutSeconds), rejects on a line over maxLineBytes, a line that is not JSON, or a broken connection.
   */
  async watch(path: string, signal: AbortSignal, onEvent: (event: unknown) => void): Promise<void> {
    const res = await this.#get(path, signal);
    let pending: Buffer[] = [];
    let pendingSize = 0;
    const take = (line: Buffer): void => {
      const text = line.toString('utf8').trim();
      if (text === '') return;
      let event: unknown;
      try {
        event = JSON.parse(text);
      } catch {
        throw new KubernetesError('a watch line is not JSON');
      }
      onEvent(event);
    };
    try {
      for await (const chunk of res as AsyncIterable<Buffer>) {
        let from = 0;
        for (let nl = chunk.indexOf(10, from); nl !== -1; nl = chunk.indexOf(10, from)) {
          const piece = chunk.subarray(from, nl);
          if (pendingSize + piece.length > this.bounds.maxLineBytes) throw lineTooLong(this.bounds);
          take(pending.length ? Buffer.concat([...pending, piece]) : piece);
          pending = [];
          pendingSize = 0;
          from = nl + 1;
        }
        if (from < chunk.length) {
          const rest = chunk.subarray(from);
          pendingSize += rest.length;
          // Before buffering the rest: a line that never ends must not be held whole.
          if (pendingSize > this.bounds.maxLineBytes) throw lineTooLong(this.bounds);
          pending.push(Buffer.from(rest));
        }
      }
      if (pendingSize > 0) take(Buffer.concat(pending));
    } finally {
      res.destroy();
    }
  }

  async #get(path: string, signal: AbortSignal): Promise<IncomingMessage> {
    const { server, tokenFile, caFile } = this.endpoint;
    const [token, ca] = await Promise.all([
      readFile(tokenFile, 'utf8').catch((err: NodeJS.ErrnoException) => {
        throw new KubernetesError(`cannot read the token file ${tokenFile}: ${err.code ?? err.message}`);
      }),
      readFile(caFile).catch((err: NodeJS.ErrnoException) => {
        throw new KubernetesError(`cannot read the CA file ${caFile}: ${err.code ?? err.message}`);
      }),
    ]);
    const url = new URL(path, server);
    const opts: RequestOptions = {
      method: 'GET',
      headers: { Authorization: `Bearer ${token.trim()}`, Accept: 'application/json' },
      ca,
      signal,
      // A fresh connection each time: a watch holds its socket for minutes, and a rotated CA must apply.
      agent: false,
    };
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = request(url, opts, resolve);
      req.on('error', (err) =>
        reject(new KubernetesError(`${url.pathname}: ${err.message}`, { cause: err })),
      );
      req.end();
    });
    if (res.statusCode !== 200) {
      // The Status object's message, bounded: it says why (Forbidden, Gone, ...).
      let body = '';
      for await (const chunk of res as AsyncIterable<Buffer>) {
        if (body.length < 4096) body += chunk.toString('utf8');
      }
      let message = body.slice(0, 300);
      try {
        message = String((JSON.parse(body) as { message?: unknown }).message ?? message);
      } catch {}
      throw new KubeStatusError(res.statusCode ?? 0, `${url.pathname}: ${res.statusCode}: ${message}`);
    }
    return res;
  }
}

const lineTooLong = (b: KubeBounds): BoundExceeded =>
  new BoundExceeded('line', `a watch line over ${b.maxLineBytes} bytes`);

const pathOnly = (path: string): string => path.split('?')[0]!;
