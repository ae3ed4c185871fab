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
  | 'AMBIT_ADMIN_UNREACHABLE'
  | 'AMBIT_ADMIN_UNAUTHORIZED'
  | 'AMBIT_CONSUL_UNAVAILABLE'
  | 'AMBIT_CONSUL_FORBIDDEN'
  | 'AMBIT_CONSUL_REQUEST'
  | 'AMBIT_CAPTURE_UNAVAILABLE'
  | 'AMBIT_CAPTURE_FAILED'
  | 'AMBIT_H2_PROTOCOL';

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

/** Consul could not be reached or answered with a server error; the daemon keeps its last known state. */
export class ConsulUnavailableError extends AmbitError {
  readonly address: string;
  constructor(address: string, reason: string, options?: { cause?: unknown }) {
    super('AMBIT_CONSUL_UNAVAILABLE', `Consul at ${address} is unavailable: ${reason}`, options);
    this.address = address;
  }
}

/**
 * Consul answered 403. `permission` names the ACL rule the token lacks (e.g. `service:write on "web"`), or
 * says that Consul does not know the token at all. The token itself is never part of the message.
 */
export class ConsulPermissionError extends AmbitError {
  readonly permission: string;
  readonly request: string;
  constructor(request: string, permission: string, detail: string) {
    super(
      'AMBIT_CONSUL_FORBIDDEN',
      `Consul refused ${request} (403): the ACL token ${permission}` +
        (detail ? ` (Consul said: ${detail})` : ''),
    );
    this.permission = permission;
    this.request = request;
  }
}

/** Consul refused a request as malformed or unknown (4xx other than 403). */
export class ConsulRequestError extends AmbitError {
  readonly status: number;
  constructor(request: string, status: number, detail: string) {
    super('AMBIT_CONSUL_REQUEST', `Consul refused ${request} (${status}): ${detail || 'no detail'}`);
    this.status = status;
  }
}

/** Transparent capture cannot work here: not Linux, or the native binding is not built. */
export class CaptureUnavailableError extends AmbitError {
  constructor(message: string) {
    super('AMBIT_CAPTURE_UNAVAILABLE', message);
  }
}

/** Installing, removing or reading the capture rules failed (an iptables command said no). */
export class CaptureError extends AmbitError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('AMBIT_CAPTURE_FAILED', message, options);
  }
}

/** Why a peer's HTTP/2 session was ended (a RefusalReason of daemon/metrics). */
export type H2RefusalReason = 'h2_protocol' | 'h2_reset_flood' | 'h2_control_flood' | 'h2_header_flood';

/**
 * A peer broke the HTTP/2 (HBONE) protocol, its HPACK header compression or one of the session's limits.
 * `h2Code` is the RFC 9113 error code sent to the peer in GOAWAY (1 PROTOCOL_ERROR, 3 FLOW_CONTROL_ERROR,
 * 6 FRAME_SIZE_ERROR, 9 COMPRESSION_ERROR, 11 ENHANCE_YOUR_CALM, ...); `reason` says which rule or limit
 * (h2_reset_flood: RST_STREAM over the rate; h2_control_flood: PING/SETTINGS answers queued for a peer that
 * does not read; h2_header_flood: too many CONTINUATION frames or oversized header blocks; h2_protocol: any
 * other). Only ever ends that session, never the daemon.
 */
export class H2ProtocolError extends AmbitError {
  readonly h2Code: number;
  readonly reason: H2RefusalReason;
  constructor(h2Code: number, message: string, reason: H2RefusalReason = 'h2_protocol') {
    super('AMBIT_H2_PROTOCOL', message);
    this.h2Code = h2Code;
    this.reason = reason;
  }
}
