// Parsers for command-line values. They throw commander's InvalidArgumentError, so a bad flag is reported as
// "option '--port <port>' argument 'x' is invalid. <why>" with exit code 1, before the mesh file is touched.
import { isIP } from 'node:net';
import { InvalidArgumentError } from 'commander';
import { ConfigError } from '../lib/errors.js';
import { DEFAULT_NAMESPACE, LABEL_VALUE, OBJECT_NAME, SERVICE_NAME } from '../lib/mesh/file/schema.js';
import { isPort, parseListen } from '../lib/mesh/file/validate.js';
import type { PolicySource, Upstream } from '../lib/mesh/model.js';

export function parsePort(v: string): number {
  const n = /^\d+$/.test(v) ? Number(v) : Number.NaN;
  if (!isPort(n)) throw new InvalidArgumentError('must be an integer between 1 and 65535.');
  return n;
}

export function parseUid(v: string): number {
  const n = /^\d+$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isSafeInteger(n) || n > 0xffffffff) throw new InvalidArgumentError('must be an integer >= 0.');
  return n;
}

export function parseIp(v: string): string {
  if (isIP(v) === 0) throw new InvalidArgumentError('must be an IPv4 or IPv6 address literal.');
  return v;
}

export function checkServiceName(v: string, what = 'service name'): string {
  if (!SERVICE_NAME.test(v)) {
    throw new InvalidArgumentError(`${what} must use only letters, digits, "-" and "_".`);
  }
  return v;
}

/** An Istio label value (app, version, canonical names): a Kubernetes label value. */
export function parseLabelValue(v: string): string {
  if (!LABEL_VALUE.test(v)) {
    throw new InvalidArgumentError(
      'must be at most 63 letters, digits, ".", "-" and "_", starting and ending with a letter or digit.',
    );
  }
  return v;
}

export function checkObjectName(v: string, what: string): string {
  if (!OBJECT_NAME.test(v)) {
    throw new InvalidArgumentError(`${what} must use only letters, digits, ".", "-" and "_".`);
  }
  return v;
}

/** Validation inside an action: commander only reports parser errors itself, so name the flag here. */
export function flag<T>(what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof InvalidArgumentError) throw new ConfigError(`${what}: ${e.message.replace(/\.$/, '')}`);
    throw e;
  }
}

/** Collects a repeatable option, running `parse` on each value. */
export const repeatable =
  <T>(parse: (v: string) => T) =>
  (v: string, prev: T[] | undefined): T[] => [...(prev ?? []), parse(v)];

export interface ServiceRef {
  service: string;
  /** undefined for `svc.*` (any namespace); only meaningful for policy sources. */
  namespace: string | undefined;
}

/** `svc` or `svc.ns`; with `allowAny`, `svc.*` means the service in any namespace. */
export function parseServiceRef(
  v: string,
  defaultNs: string = DEFAULT_NAMESPACE,
  allowAny = false,
): ServiceRef {
  const dot = v.indexOf('.');
  const service = dot < 0 ? v : v.slice(0, dot);
  const ns = dot < 0 ? defaultNs : v.slice(dot + 1);
  checkServiceName(service);
  if (allowAny && ns === '*') return { service, namespace: undefined };
  checkServiceName(ns, 'namespace');
  return { service, namespace: ns };
}

/**
 * `svc[.ns][:port]=listen`, e.g. `api:8080=15101` or `api.prod=127.0.0.1:15101`; listen is `ip:port`,
 * `[ipv6]:port` or a bare port on 127.0.0.1. The namespace defaults to the workload's, as in the file.
 */
export function parseUpstream(v: string, workloadNs: string): Upstream {
  const eq = v.indexOf('=');
  if (eq < 0) throw new InvalidArgumentError('must be svc[.ns][:port]=listen, e.g. api:8080=15101.');
  let target = v.slice(0, eq);
  let port: number | undefined;
  const colon = target.lastIndexOf(':');
  if (colon >= 0) {
    port = parsePort(target.slice(colon + 1));
    target = target.slice(0, colon);
  }
  const ref = parseServiceRef(target, workloadNs);
  const listen = parseListen(v.slice(eq + 1));
  if (typeof listen === 'string') throw new InvalidArgumentError(`listen address ${listen}.`);
  return {
    service: ref.service,
    namespace: ref.namespace!,
    port,
    listenHost: listen.host,
    listenPort: listen.port,
  };
}

export function parsePrincipal(v: string): string {
  if (!v.startsWith('spiffe://')) throw new InvalidArgumentError('must be a SPIFFE ID (spiffe://...).');
  return v;
}

export const fmtSource = (s: PolicySource): string => {
  const parts: string[] = [];
  if (s.service !== undefined)
    parts.push(s.namespace !== undefined ? `${s.service}.${s.namespace}` : `${s.service}.*`);
  else if (s.namespace !== undefined) parts.push(`namespace ${s.namespace}`);
  if (s.principal !== undefined) parts.push(s.principal);
  return parts.length ? parts.join(' ') : 'any';
};

/** host:port of the admin API; `[v6]:port` for IPv6. */
export function parseAdmin(v: string): string {
  const m = /^(\[[^\]]+\]|[^:[\]]+):(\d+)$/.exec(v);
  if (!m || !isPort(Number(m[2]))) throw new InvalidArgumentError('must be host:port, e.g. 127.0.0.1:15000.');
  return v;
}
