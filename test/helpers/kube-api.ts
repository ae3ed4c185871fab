// A double of the Kubernetes API server's pod endpoints, for the pod watch's tests: a real HTTPS server
// (its own CA, a bearer token checked on every request) that answers LIST /api/v1/pods with limit/continue
// pages and WATCH with the watch protocol: chunked JSON lines of ADDED/MODIFIED/DELETED, BOOKMARK when
// asked for, and ERROR 410 once a resourceVersion is compacted away. labelSelector (equality and existence)
// and fieldSelector spec.nodeName are honoured as the API server honours them. It is not Kubernetes: no
// etcd, no admission, no other resource, no RBAC beyond the one token.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { type Server, createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Pod } from '../../daemon/state/kubernetes/pods.js';

export interface PodSpec {
  name: string;
  namespace?: string;
  node: string;
  ip?: string | undefined;
  ips?: string[];
  hostIP?: string;
  phase?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  serviceAccount?: string;
  ports?: number[];
  hostNetwork?: boolean;
}

/** A v1 Pod as the API server would send it (the fields the watch reads, and a few it must ignore). */
export function pod(s: PodSpec): Pod {
  const ips = s.ips ?? (s.ip ? [s.ip] : []);
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: s.name,
      namespace: s.namespace ?? 'default',
      uid: `uid-${s.namespace ?? 'default'}-${s.name}`,
      labels: { 'ambit.dev/mesh': 'enabled', ...s.labels },
      annotations: s.annotations ?? {},
    },
    spec: {
      nodeName: s.node,
      serviceAccountName: s.serviceAccount ?? 'default',
      hostNetwork: s.hostNetwork ?? false,
      containers: [
        {
          name: 'main',
          image: 'example',
          ports: (s.ports ?? []).map((p) => ({ containerPort: p, protocol: 'TCP' })),
        },
      ],
    },
    status: {
      phase: s.phase ?? 'Running',
      ...(ips[0] ? { podIP: ips[0], podIPs: ips.map((ip) => ({ ip })) } : {}),
      ...(s.hostIP ? { hostIP: s.hostIP } : {}),
    },
  } as unknown as Pod;
}

interface Event {
  rv: number;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  pod: Pod;
}

interface OpenWatch {
  res: ServerResponse;
  match: (p: Pod) => boolean;
  bookmarks: boolean;
}

export interface SeenRequest {
  path: string;
  query: URLSearchParams;
  token: string | undefined;
  status: number;
}

export class KubeApiDouble {
  readonly dir = mkdtempSync(join(tmpdir(), 'ambit-kube-'));
  /** The CA file a client must trust, and the token file a client reads (what a pod has mounted). */
  readonly caFile = join(this.dir, 'ca.crt');
  readonly tokenFile = join(this.dir, 'token');
  readonly requests: SeenRequest[] = [];
  /** A server that never ends a watch at its timeoutSeconds (a partition looks the same to a client). */
  ignoreTimeouts = false;
  /** Every LIST served (relists included). */
  lists = 0;
  #token: string;
  #server: Server;
  #pods = new Map<string, Pod>();
  #history: Event[] = [];
  /** Versions at or below this one are compacted: a watch from them gets ERROR 410. */
  #compacted = 0;
  #rv = 100;
  #watches = new Set<OpenWatch>();

  private constructor(server: Server, token: string) {
    this.#server = server;
    this.#token = token;
    writeFileSync(this.tokenFile, `${token}\n`);
  }

  static async start(): Promise<KubeApiDouble> {
    const dir = mkdtempSync(join(tmpdir(), 'ambit-kube-cert-'));
    try {
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:prime256v1',
          '-nodes',
          '-keyout',
          join(dir, 'key.pem'),
          '-out',
          join(dir, 'cert.pem'),
          '-days',
          '1',
          '-subj',
          '/CN=kube-apiserver',
          '-addext',
          'subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc',
        ],
        { stdio: 'ignore' },
      );
      const cert = readFileSync(join(dir, 'cert.pem'));
      const key = readFileSync(join(dir, 'key.pem'));
      // The handler is bound after construction: it needs the instance.
      const holder: { self?: KubeApiDouble } = {};
      const server = createServer({ cert, key }, (req, res) => holder.self!.#handle(req, res));
      const self = new KubeApiDouble(server, 'token-1');
      holder.self = self;
      writeFileSync(self.caFile, cert);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      return self;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  get url(): string {
    return `https://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  get resourceVersion(): string {
    return String(this.#rv);
  }

  get openWatches(): number {
    return this.#watches.size;
  }

  /** Adds or changes a pod (ADDED or MODIFIED to every watch that selects it). */
  apply(p: Pod): void {
    const key = `${p.metadata!.namespace}/${p.metadata!.name}`;
    const type = this.#pods.has(key) ? 'MODIFIED' : 'ADDED';
    this.#emit(type, key, p);
  }

  delete(namespace: string, name: string): void {
    const key = `${namespace}/${name}`;
    const p = this.#pods.get(key);
    if (p) this.#emit('DELETED', key, p);
  }

  /** A BOOKMARK at the current version to every watch that asked for bookmarks. */
  bookmark(): void {
    const line = `${JSON.stringify({ type: 'BOOKMARK', object: { kind: 'Pod', apiVersion: 'v1', metadata: { resourceVersion: this.resourceVersion } } })}\n`;
    for (const w of this.#watches) if (w.bookmarks) w.res.write(line);
  }

  /** Forgets the history: a watch from any version before now gets ERROR 410, as after etcd compaction. */
  compact(): void {
    this.#compacted = this.#rv;
    this.#history = [];
  }

  /** Sends ERROR 410 on every open watch and ends them (the server's "too old resource version"). */
  expireWatches(): void {
    this.compact();
    const line = `${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', message: 'too old resource version', reason: 'Expired', code: 410 } })}\n`;
    for (const w of this.#watches) w.res.end(line);
    this.#watches.clear();
  }

  /** Ends every open watch cleanly, as the server's timeoutSeconds does. */
  endWatches(): void {
    for (const w of this.#watches) w.res.end();
    this.#watches.clear();
  }

  /** Writes raw bytes on every open watch (a hostile or broken server). */
  sendRaw(bytes: string | Buffer): void {
    for (const w of this.#watches) w.res.write(bytes);
  }

  /** Rotates the token: the file a pod reads changes, and the old token is refused from now on. */
  rotateToken(next: string): void {
    this.#token = next;
    writeFileSync(this.tokenFile, `${next}\n`);
  }

  async close(): Promise<void> {
    for (const w of this.#watches) w.res.destroy();
    this.#watches.clear();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    rmSync(this.dir, { recursive: true, force: true });
  }

  #emit(type: Event['type'], key: string, p: Pod): void {
    this.#rv++;
    const stored: Pod = { ...p, metadata: { ...p.metadata, resourceVersion: String(this.#rv) } };
    if (type === 'DELETED') this.#pods.delete(key);
    else this.#pods.set(key, stored);
    this.#history.push({ rv: this.#rv, type, pod: stored });
    const line = `${JSON.stringify({ type, object: stored })}\n`;
    for (const w of this.#watches) if (w.match(stored)) w.res.write(line);
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'https://x');
    const auth = req.headers.authorization;
    const token = auth?.startsWith('Bearer ') ? auth.slice(7) : undefined;
    const seen: SeenRequest = { path: url.pathname, query: url.searchParams, token, status: 200 };
    this.requests.push(seen);
    const status = (code: number, reason: string, message: string): void => {
      seen.status = code;
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', reason, message, code }));
    };
    if (token !== this.#token) {
      status(401, 'Unauthorized', 'Unauthorized');
      return;
    }
    if (req.method !== 'GET' || url.pathname !== '/api/v1/pods') {
      status(404, 'NotFound', `the double serves GET /api/v1/pods only, not ${req.method} ${url.pathname}`);
      return;
    }
    const match = selector(url.searchParams);
    if (typeof match === 'string') {
      status(400, 'BadRequest', match);
      return;
    }
    if (url.searchParams.get('watch') === '1' || url.searchParams.get('watch') === 'true') {
      this.#watch(url.searchParams, match, res, seen);
      return;
    }
    this.lists++;
    const all = [...this.#pods.values()].filter(match);
    const limit = Number(url.searchParams.get('limit') ?? 0);
    const from = Number(url.searchParams.get('continue') ?? 0);
    const page = limit > 0 ? all.slice(from, from + limit) : all.slice(from);
    const next = limit > 0 && from + limit < all.length ? String(from + limit) : undefined;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        kind: 'PodList',
        apiVersion: 'v1',
        metadata: { resourceVersion: this.resourceVersion, ...(next ? { continue: next } : {}) },
        items: page,
      }),
    );
  }

  #watch(q: URLSearchParams, match: (p: Pod) => boolean, res: ServerResponse, seen: SeenRequest): void {
    const from = Number(q.get('resourceVersion') ?? 0);
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    if (from < this.#compacted) {
      seen.status = 410;
      res.end(
        `${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', status: 'Failure', reason: 'Expired', message: `too old resource version: ${from} (${this.#compacted})`, code: 410 } })}\n`,
      );
      return;
    }
    const w: OpenWatch = { res, match, bookmarks: q.get('allowWatchBookmarks') === 'true' };
    for (const e of this.#history)
      if (e.rv > from && match(e.pod)) res.write(`${JSON.stringify({ type: e.type, object: e.pod })}\n`);
    this.#watches.add(w);
    const timeout = Number(q.get('timeoutSeconds') ?? 0);
    const timer =
      timeout > 0 && !this.ignoreTimeouts ? setTimeout(() => res.end(), timeout * 1000) : undefined;
    res.on('close', () => {
      clearTimeout(timer);
      this.#watches.delete(w);
    });
  }
}

/** labelSelector (k=v, k==v, k!=v, k) and fieldSelector (spec.nodeName=, metadata.namespace=) as a filter. */
function selector(q: URLSearchParams): ((p: Pod) => boolean) | string {
  const tests: ((p: Pod) => boolean)[] = [];
  for (const term of (q.get('labelSelector') ?? '').split(',').filter(Boolean)) {
    const m = /^([\w./-]+)\s*(==|=|!=)?\s*([\w.-]*)$/.exec(term.trim());
    if (!m) return `unable to parse requirement: ${term}`;
    const [, k, op, v] = m;
    if (!op) tests.push((p) => p.metadata?.labels?.[k!] !== undefined);
    else if (op === '!=') tests.push((p) => p.metadata?.labels?.[k!] !== v);
    else tests.push((p) => p.metadata?.labels?.[k!] === v);
  }
  for (const term of (q.get('fieldSelector') ?? '').split(',').filter(Boolean)) {
    const [k, v] = term.split('=');
    if (k === 'spec.nodeName') tests.push((p) => p.spec?.nodeName === v);
    else if (k === 'metadata.namespace') tests.push((p) => p.metadata?.namespace === v);
    else return `field label not supported: ${k}`;
  }
  return (p) => tests.every((t) => t(p));
}
