// The emulator's TCP and HTTP health checks, as Consul's agent runs them (hashicorp/consul
// agent/checks/check.go, CheckTCP and CheckHTTP; agent/agent.go addCheck; agent/local/state.go UpdateCheck):
// - each check first runs after a random stagger within its Interval (lib.RandomStagger), then every
//   Interval after the previous run ends; an Interval under 1 s is raised to 1 s (checks.MinInterval);
// - Timeout defaults to 10 s (the dialer's and the HTTP client's);
// - TCP: passing "TCP connect <addr>: Success" when the connection opens, else critical with Go's dial
//   error ("dial tcp 127.0.0.1:9: connect: connection refused", "dial tcp 198.18.0.1:80: i/o timeout");
// - HTTP: a GET (or Method) with User-Agent "Consul Health Check" and Accept "text/plain, text/*, */*",
//   redirects followed (10 at most) unless DisableRedirects; 2xx passing, 429 warning, anything else
//   critical, Output "HTTP GET <url>: 200 OK Output: <body>" (the last 4 KiB of the body); a request that
//   fails is critical with Go's url.Error ("Get \"<url>\": dial tcp ...").
// How a check reaches its target is a hook (EmulatorOptions.runCheck): by default a connection from this
// process; commandCheckRunner runs each probe in a child process behind a command prefix instead
// (`ip netns exec <ns>`, `setpriv --reuid=<uid> ...`), the way an agent elsewhere would reach it.

import { spawn } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';

export type CheckStatus = 'passing' | 'warning' | 'critical';

export type ProbeDefinition =
  | { kind: 'tcp'; tcp: string; timeoutMs: number }
  | {
      kind: 'http';
      url: string;
      method: string;
      header: Record<string, string[]>;
      body: string;
      tlsSkipVerify: boolean;
      disableRedirects: boolean;
      timeoutMs: number;
    };

export interface ProbeResult {
  status: CheckStatus;
  output: string;
}

/** Runs one probe of a check; must settle (the emulator does not time it out on its behalf). */
export type CheckRunner = (probe: ProbeDefinition) => Promise<ProbeResult>;

export const MIN_INTERVAL_MS = 1000;
export const DEFAULT_TIMEOUT_MS = 10_000;
/** checks.DefaultBufSize: the HTTP body kept in Output. */
const OUTPUT_MAX = 4 * 1024;

/** The default runner: a TCP connect or an HTTP request from this process. */
export const runCheckHere: CheckRunner = (probe) =>
  probe.kind === 'tcp' ? probeTcp(probe.tcp, probe.timeoutMs) : probeHttp(probe);

/** net.SplitHostPort. */
function splitHostPort(hostport: string): { host: string; port: number } | undefined {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(hostport) ?? /^([^:]*):(\d+)$/.exec(hostport);
  if (!m) return undefined;
  return { host: m[1]!, port: Number(m[2]) };
}

/** Go's net.OpError text for a failed dial. */
function dialError(addr: string, err: NodeJS.ErrnoException | 'timeout'): string {
  if (err === 'timeout') return `dial tcp ${addr}: i/o timeout`;
  const why: Record<string, string> = {
    ECONNREFUSED: 'connect: connection refused',
    EHOSTUNREACH: 'connect: no route to host',
    ENETUNREACH: 'connect: network is unreachable',
    EADDRNOTAVAIL: 'connect: cannot assign requested address',
    ECONNRESET: 'connect: connection reset by peer',
    EACCES: 'connect: permission denied',
    EPERM: 'connect: operation not permitted',
  };
  if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') {
    const host = splitHostPort(addr)?.host ?? addr;
    return `dial tcp: lookup ${host}: no such host`;
  }
  return `dial tcp ${addr}: ${why[err.code ?? ''] ?? err.message}`;
}

function probeTcp(target: string, timeoutMs: number): Promise<ProbeResult> {
  const hp = splitHostPort(target);
  if (!hp)
    return Promise.resolve({
      status: 'critical',
      output: `dial tcp: address ${target}: missing port in address`,
    });
  return new Promise((resolve) => {
    const sock = connect({ host: hp.host, port: hp.port });
    const done = (r: ProbeResult): void => {
      clearTimeout(timer);
      sock.removeAllListeners();
      sock.on('error', () => {});
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(
      () => done({ status: 'critical', output: dialError(target, 'timeout') }),
      timeoutMs,
    ).unref();
    sock.once('connect', () => done({ status: 'passing', output: `TCP connect ${target}: Success` }));
    sock.once('error', (err: NodeJS.ErrnoException) =>
      done({ status: 'critical', output: dialError(target, err) }),
    );
  });
}

/** Go's url.Error Op: the method with only its first letter capitalised ("Get"). */
const urlOp = (method: string): string => method.slice(0, 1).toUpperCase() + method.slice(1).toLowerCase();

async function probeHttp(p: Extract<ProbeDefinition, { kind: 'http' }>): Promise<ProbeResult> {
  const deadline = Date.now() + p.timeoutMs;
  let url = p.url;
  let method = p.method || 'GET';
  let body = p.body;
  const fail = (why: string): ProbeResult => ({
    status: 'critical',
    output: `${urlOp(method)} ${JSON.stringify(url)}: ${why}`,
  });
  // net/http's default policy: at most 10 redirects; 301/302/303 turn into GET without a body.
  for (let hop = 0; hop <= 10; hop++) {
    let target: URL;
    try {
      target = new URL(url);
    } catch {
      return fail('unsupported protocol scheme ""');
    }
    if (target.protocol !== 'http:' && target.protocol !== 'https:')
      return fail(`unsupported protocol scheme ${JSON.stringify(target.protocol.replace(/:$/, ''))}`);
    const r = await oneRequest(target, method, p.header, body, p.tlsSkipVerify, deadline);
    if ('error' in r) return fail(r.error);
    const location = r.headers.location;
    if (!p.disableRedirects && [301, 302, 303, 307, 308].includes(r.status) && typeof location === 'string') {
      if (hop === 10) return fail('stopped after 10 redirects');
      url = new URL(location, target).toString();
      if (r.status <= 303 && method !== 'HEAD') {
        method = 'GET';
        body = '';
      }
      continue;
    }
    const output = `HTTP ${p.method || 'GET'} ${p.url}: ${r.status} ${r.statusText} Output: ${r.body}`;
    if (r.status >= 200 && r.status <= 299) return { status: 'passing', output };
    if (r.status === 429) return { status: 'warning', output };
    return { status: 'critical', output };
  }
  return fail('stopped after 10 redirects');
}

type Answer =
  | {
      status: number;
      statusText: string;
      headers: Record<string, string | string[] | undefined>;
      body: string;
    }
  | { error: string };

function oneRequest(
  target: URL,
  method: string,
  header: Record<string, string[]>,
  body: string,
  tlsSkipVerify: boolean,
  deadline: number,
): Promise<Answer> {
  return new Promise((resolve) => {
    const headers: Record<string, string[]> = { ...header };
    const has = (name: string): boolean => Object.keys(headers).some((k) => k.toLowerCase() === name);
    if (!has('user-agent')) headers['User-Agent'] = ['Consul Health Check'];
    if (!has('accept')) headers.Accept = ['text/plain, text/*, */*'];
    // Keep-alives off, as the agent's transport has them.
    headers.Connection = ['close'];
    const send = target.protocol === 'https:' ? httpsRequest : httpRequest;
    const addr = `${target.hostname.includes(':') ? `[${target.hostname.replace(/^\[|\]$/g, '')}]` : target.hostname}:${target.port || (target.protocol === 'https:' ? 443 : 80)}`;
    let settled = false;
    const finish = (a: Answer): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      resolve(a);
    };
    const req = send(
      target,
      {
        method,
        // A Host header given in the definition is sent as the request's Host, as the agent does.
        headers,
        rejectUnauthorized: !tlsSkipVerify,
      },
      (res) => {
        let kept = Buffer.alloc(0);
        res.on('data', (c: Buffer) => {
          kept = Buffer.concat([kept, c]);
          if (kept.length > OUTPUT_MAX) kept = kept.subarray(kept.length - OUTPUT_MAX);
        });
        const answer = (): void =>
          finish({
            status: res.statusCode ?? 0,
            statusText: res.statusMessage ?? '',
            headers: res.headers,
            body: kept.toString('utf8'),
          });
        res.once('end', answer);
        // A body cut short still decides by the status, as the agent only logs the read error.
        res.once('error', answer);
        res.once('aborted', answer);
      },
    );
    const timer = setTimeout(
      () => finish({ error: 'context deadline exceeded (Client.Timeout exceeded while awaiting headers)' }),
      Math.max(0, deadline - Date.now()),
    ).unref();
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (
        err.code?.startsWith('ERR_TLS') ||
        err.code === 'DEPTH_ZERO_SELF_SIGNED_CERT' ||
        err.code === 'SELF_SIGNED_CERT_IN_CHAIN' ||
        err.code === 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'
      )
        return finish({ error: `tls: failed to verify certificate: ${err.message}` });
      finish({ error: dialError(addr, err) });
    });
    if (body) req.write(body);
    req.end();
  });
}

/**
 * A runner that probes from a child process started behind `prefix` (e.g. `['ip', 'netns', 'exec', ns]`
 * or `['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']`): the same probe, from where the
 * workload's own agent would run it. A child that fails or outlives the probe's timeout (plus 5 s) is
 * killed, and the check is critical with what it said.
 */
export function commandCheckRunner(prefix: readonly string[]): CheckRunner {
  const self = fileURLToPath(import.meta.url);
  return (probe) =>
    new Promise((resolve) => {
      const [cmd, ...args] = [...prefix, process.execPath, self, PROBE_FLAG, JSON.stringify(probe)];
      const child = spawn(cmd!, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString('utf8');
      });
      child.stderr.on('data', (d: Buffer) => {
        err += d.toString('utf8');
      });
      const timer = setTimeout(() => child.kill('SIGKILL'), probe.timeoutMs + 5000).unref();
      const fail = (why: string): void => resolve({ status: 'critical', output: why });
      child.once('error', (e) => {
        clearTimeout(timer);
        fail(`cannot run the check: ${e.message}`);
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        try {
          const r = JSON.parse(out) as ProbeResult;
          if (['passing', 'warning', 'critical'].includes(r.status) && typeof r.output === 'string')
            return resolve({ status: r.status, output: r.output });
        } catch {
          // not a result: reported below
        }
        fail(`check runner exited ${signal ?? code}: ${err.trim().slice(0, 500)}`);
      });
    });
}

const PROBE_FLAG = '--consul-check-probe';

// Run as `node consul-checks.js --consul-check-probe '<probe JSON>'`: one probe, its result on stdout.
if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === PROBE_FLAG) {
  void runCheckHere(JSON.parse(process.argv[3] ?? '{}') as ProbeDefinition).then((r) => {
    process.stdout.write(JSON.stringify(r));
  });
}
