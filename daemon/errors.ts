// Every error Ambit raises, each with a stable code that logs, metrics and the CLI can match on.

export type AmbitErrorCode =
  | 'AMBIT_CONFIG_INVALID'
  | 'AMBIT_MESH_INVALID'
  | 'AMBIT_MESH_LOCKED'
  | 'AMBIT_NOT_FOUND'
  | 'AMBIT_CA_ERROR'
  | 'AMBIT_CERT_UNAVAILABLE'
  | 'AMBIT_BAD_REQUEST'
  | 'AMBIT_DENIED'
  | 'AMBIT_UNKNOWN_WORKLOAD'
  | 'AMBIT_NO_ENDPOINT'
  | 'AMBIT_UPSTREAM_FAILED'
  | 'AMBIT_TUNNEL_FAILED'
  | 'AMBIT_PEER_IDENTITY'
  | 'AMBIT_ADMIN_UNREACHABLE';

export class AmbitError extends Error {
  readonly code: AmbitErrorCode;
  constructor(code: AmbitErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A configuration file or flag is wrong; names the file and the field. */
export class ConfigError extends AmbitError {
  readonly file: string | undefined;
  readonly field: string | undefined;
  constructor(message: string, where: { file?: string; field?: string } = {}) {
    const prefix = [where.file, where.field].filter(Boolean).join(': ');
    super('AMBIT_CONFIG_INVALID', prefix ? `${prefix}: ${message}` : message);
    this.file = where.file;
    this.field = where.field;
  }
}

/** The mesh file (embedded control plane) is malformed; names the file and the field. */
export class MeshFileError extends AmbitError {
  readonly file: string;
  readonly field: string;
  readonly reason: string;
  constructor(file: string, field: string, reason: string) {
    super('AMBIT_MESH_INVALID', `${file}: ${field}: ${reason}`);
    this.file = file;
    this.field = field;
    this.reason = reason;
  }
}

export class MeshLockedError extends AmbitError {
  constructor(lockFile: string) {
    super(
      'AMBIT_MESH_LOCKED',
      `another edit holds ${lockFile}; retry, or remove it if no ambit command is running`,
    );
  }
}

export class NotFoundError extends AmbitError {
  constructor(what: string) {
    super('AMBIT_NOT_FOUND', `${what} not found`);
  }
}

export class CaError extends AmbitError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('AMBIT_CA_ERROR', message, options);
  }
}

export class CertUnavailableError extends AmbitError {
  constructor(identity: string) {
    super('AMBIT_CERT_UNAVAILABLE', `no certificate for ${identity}`);
  }
}

/**
 * Why a tunneled connection was refused. `status` is the HTTP/2 status the inbound side answers with,
 * `flag` the Istio response flag recorded in metrics and access logs.
 */
export class ConnectionRefusal extends AmbitError {
  readonly status: 400 | 401 | 503;
  readonly flag: ResponseFlag;
  constructor(code: AmbitErrorCode, status: 400 | 401 | 503, flag: ResponseFlag, message: string) {
    super(code, message);
    this.status = status;
    this.flag = flag;
  }
}

/** Istio / Envoy response flags as dashboards know them. */
export type ResponseFlag = '-' | 'DENY' | 'CONNECT' | 'TLS_FAILURE' | 'NR' | 'UF' | 'UH' | 'BAD_REQUEST';

export const badRequest = (message: string): ConnectionRefusal =>
  new ConnectionRefusal('AMBIT_BAD_REQUEST', 400, 'BAD_REQUEST', message);
export const denied = (message: string): ConnectionRefusal =>
  new ConnectionRefusal('AMBIT_DENIED', 401, 'DENY', message);
export const unknownWorkload = (message: string): ConnectionRefusal =>
  new ConnectionRefusal('AMBIT_UNKNOWN_WORKLOAD', 503, 'NR', message);
export const noEndpoint = (message: string): ConnectionRefusal =>
  new ConnectionRefusal('AMBIT_NO_ENDPOINT', 503, 'UH', message);
export const upstreamFailed = (message: string): ConnectionRefusal =>
  new ConnectionRefusal('AMBIT_UPSTREAM_FAILED', 503, 'CONNECT', message);

export class TunnelError extends AmbitError {
  readonly flag: ResponseFlag;
  readonly status: number | undefined;
  constructor(message: string, flag: ResponseFlag, status?: number, options?: { cause?: unknown }) {
    super('AMBIT_TUNNEL_FAILED', message, options);
    this.flag = flag;
    this.status = status;
  }
}

export class PeerIdentityError extends AmbitError {
  constructor(expected: readonly string[], got: readonly string[]) {
    super(
      'AMBIT_PEER_IDENTITY',
      `peer presented ${got.length ? got.join(', ') : 'no SPIFFE identity'}, expected ${expected.join(' or ')}`,
    );
  }
}
