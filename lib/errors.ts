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
  | 'AMBIT_WAYPOINT_UNAVAILABLE'
  | 'AMBIT_NOT_REDIRECTED'
  | 'AMBIT_UPSTREAM_FAILED'
  | 'AMBIT_TUNNEL_FAILED'
  | 'AMBIT_PEER_IDENTITY'
  | 'AMBIT_ADMIN_UNREACHABLE'
  | 'AMBIT_ADMIN_UNAUTHORIZED'
  | 'AMBIT_CONSUL_UNAVAILABLE'
  | 'AMBIT_CONSUL_FORBIDDEN'
  | 'AMBIT_CONSUL_REQUEST'
  | 'AMBIT_KUBERNETES_REQUEST'
  | 'AMBIT_CAPTURE_UNAVAILABLE'
  | 'AMBIT_CAPTURE_FAILED'
  | 'AMBIT_H2_PROTOCOL'
  | 'AMBIT_L7_CONFIG_INVALID'
  | 'AMBIT_LISTEN_FAILED'
  | 'AMBIT_RELOAD_FAILED';

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

/** Istio / Envoy response flags as dashboards know them. */
export type ResponseFlag =
  | '-'
  | 'DENY'
  | 'CONNECT'
  | 'TLS_FAILURE'
  | 'NR'
  | 'UF'
  | 'UH'
  | 'BAD_REQUEST'
  // Envoy's RbacAccessDenied: a request an L7 intention denied at the waypoint.
  | 'RBAC'
  // Envoy's RateLimited and UpstreamOverflow: a waypoint's rate limit and circuit breaker.
  | 'RL'
  | 'UO'
  // Envoy's DelayInjected and FaultInjected: a route's fault at the waypoint (`DI,FI` when both hit).
  | 'DI'
  | 'FI'
  // Envoy's UpstreamRetryLimitExceeded: the route's retries were spent (joins the last attempt's flag).
  | 'URX';

/** Why a connection was refused before it carried anything: the `reason` of ambit_connections_refused_total. */
export type ConnectionRefusalReason =
  | 'bad_request'
  | 'denied'
  | 'unknown_workload'
  | 'no_endpoint'
  | 'upstream_failed'
  | 'peer_identity'
  | 'plaintext'
  | 'not_redirected'
  | 'waypoint_unavailable'
  | 'waypoint_bypass'
  | 'l7_denied';

interface RefusalRow {
  readonly reason: ConnectionRefusalReason;
  /** The response flag of the connection's metric labels and access-log line. */
  readonly flag: ResponseFlag;
  /** The HTTP/2 status a tunnel stream refused this way is answered with. */
  readonly status: 400 | 401 | 503;
  readonly code: AmbitErrorCode;
}

/**
 * Every way the data path refuses a connection (inbound, outbound, plaintext, capture), and what each is
 * counted as, flagged as, answered with and coded as: the one place these meet. Two kinds share the reason
 * upstream_failed and differ in flag: a tunnel's CONNECT whose workload cannot be reached (or a connection
 * gone before it was carried) is CONNECT, as ztunnel flags it; an upstream the daemon dialled for its own
 * client (a peer daemon, a passthrough destination, a plaintext workload) is Envoy's UF.
 */
export const REFUSALS = {
  bad_request: { reason: 'bad_request', flag: 'BAD_REQUEST', status: 400, code: 'AMBIT_BAD_REQUEST' },
  denied: { reason: 'denied', flag: 'DENY', status: 401, code: 'AMBIT_DENIED' },
  /** A strict workload takes mTLS only. */
  plaintext: { reason: 'plaintext', flag: 'DENY', status: 401, code: 'AMBIT_DENIED' },
  unknown_workload: { reason: 'unknown_workload', flag: 'NR', status: 503, code: 'AMBIT_UNKNOWN_WORKLOAD' },
  /** Someone connected to a capture port directly: no original destination. */
  not_redirected: { reason: 'not_redirected', flag: 'NR', status: 503, code: 'AMBIT_NOT_REDIRECTED' },
  no_endpoint: { reason: 'no_endpoint', flag: 'UH', status: 503, code: 'AMBIT_NO_ENDPOINT' },
  upstream_failed: { reason: 'upstream_failed', flag: 'UF', status: 503, code: 'AMBIT_UPSTREAM_FAILED' },
  connect_failed: { reason: 'upstream_failed', flag: 'CONNECT', status: 503, code: 'AMBIT_UPSTREAM_FAILED' },
  peer_identity: { reason: 'peer_identity', flag: 'TLS_FAILURE', status: 503, code: 'AMBIT_PEER_IDENTITY' },
  /** A service with a waypoint whose waypoint has no instance that answers: failed closed, never sent around it. */
  waypoint_unavailable: {
    reason: 'waypoint_unavailable',
    flag: 'UH',
    status: 503,
    code: 'AMBIT_WAYPOINT_UNAVAILABLE',
  },
  /** A CONNECT to a waypoint service's workload from a peer that is not its waypoint. */
  waypoint_bypass: { reason: 'waypoint_bypass', flag: 'DENY', status: 401, code: 'AMBIT_DENIED' },
  /** A request an L7 intention (Permissions) denied at the waypoint: answered 403 `RBAC: access denied`. */
  l7_denied: { reason: 'l7_denied', flag: 'RBAC', status: 401, code: 'AMBIT_DENIED' },
} as const satisfies Record<string, RefusalRow>;

export type RefusalKind = keyof typeof REFUSALS;

/** Why a connection was refused: its kind (a row of REFUSALS) and the words for the access log. */
export class ConnectionRefusal extends AmbitError {
  readonly kind: RefusalKind;
  readonly reason: ConnectionRefusalReason;
  readonly flag: ResponseFlag;
  readonly status: 400 | 401 | 503;
  constructor(kind: RefusalKind, message: string) {
    const row: RefusalRow = REFUSALS[kind];
    super(row.code, message);
    this.kind = kind;
    this.reason = row.reason;
    this.flag = row.flag;
    this.status = row.status;
  }
}

export const badRequest = (message: string): ConnectionRefusal =>
  new ConnectionRefusal('bad_request', message);
export const denied = (message: string): ConnectionRefusal => new ConnectionRefusal('denied', message);
export const unknownWorkload = (message: string): ConnectionRefusal =>
  new ConnectionRefusal('unknown_workload', message);

/** A tunnel to a peer daemon could not be opened or used: the connection is refused as upstream_failed. */
export class TunnelError extends AmbitError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('AMBIT_TUNNEL_FAILED', message, options);
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
/** The Kubernetes API server could not be asked, refused, or answered what the pod watch does not take. */
export class KubernetesError extends AmbitError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('AMBIT_KUBERNETES_REQUEST', message, options);
  }
}

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

/** A port ambitd serves on cannot be bound: names the listener, the address and the system's reason. */
export class ListenError extends AmbitError {
  readonly listener: string;
  readonly errno: string;
  constructor(listener: string, at: string, errno: string, detail: string) {
    const hint =
      errno === 'EADDRINUSE'
        ? '; is another ambitd running? To replace a running one without a gap, reload it (SIGHUP, or SIGUSR2 to re-exec)'
        : '';
    super('AMBIT_LISTEN_FAILED', `cannot listen on ${at} (${listener}): ${detail} (${errno})${hint}`);
    this.listener = listener;
    this.errno = errno;
  }
}
