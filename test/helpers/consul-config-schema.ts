// The structs Consul decodes each config entry kind into, as hashicorp/mapstructure sees them (field name
// → type), read from agent/structs/config_entry*.go of Consul CE: what DecodeConfigEntry accepts at every
// depth. acl.EnterpriseMeta is squashed into several of them and is empty in CE, so Namespace and
// Partition are not fields there.

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json | undefined };
export type Entry = Record<string, Json | undefined>;

export type Shape =
  | 'string'
  | 'bool'
  | 'int'
  | 'float'
  /** time.Duration answered by a MarshalJSON of Consul's in Go's String() form ("1m30s"). */
  | 'duration'
  /** time.Duration without one: encoding/json answers it as an integer of nanoseconds. */
  | 'nanos'
  | 'time'
  /** interface{} or map[string]interface{}: anything, unchecked. */
  | 'any'
  | { list: Shape }
  | { map: Shape }
  | Struct;

export interface Struct {
  fields: Record<string, Shape>;
}

const S = (fields: Record<string, Shape>): Struct => ({ fields });
const L = (of: Shape): Shape => ({ list: of });
const M = (of: Shape): Shape => ({ map: of });

const META = M('string');
const HEADER_MODIFIERS = S({ Add: M('string'), Set: M('string'), Remove: L('string') });
const MESH_GATEWAY = S({ Mode: 'string' });
const TRANSPARENT_PROXY = S({ OutboundListenerPort: 'int', DialedDirectly: 'bool' });
const EXPOSE = S({
  Checks: 'bool',
  Paths: L(
    S({
      ListenerPort: 'int',
      Path: 'string',
      LocalPathPort: 'int',
      Protocol: 'string',
      ParsedFromCheck: 'bool',
    }),
  ),
});
const UPSTREAM_CONFIG = S({
  Name: 'string',
  Peer: 'string',
  EnvoyListenerJSON: 'string',
  EnvoyClusterJSON: 'string',
  Protocol: 'string',
  ConnectTimeoutMs: 'int',
  Limits: S({ MaxConnections: 'int', MaxPendingRequests: 'int', MaxConcurrentRequests: 'int' }),
  PassiveHealthCheck: S({
    Interval: 'nanos',
    MaxFailures: 'int',
    EnforcingConsecutive5xx: 'int',
    MaxEjectionPercent: 'int',
    BaseEjectionTime: 'nanos',
  }),
  MeshGateway: MESH_GATEWAY,
  BalanceOutboundConnections: 'string',
});
const ENVOY_EXTENSIONS = L(
  S({ Name: 'string', Required: 'bool', Arguments: 'any', ConsulVersion: 'string', EnvoyVersion: 'string' }),
);
const FAILOVER_POLICY = S({ Mode: 'string', Regions: L('string') });
const PRIORITIZE_BY_LOCALITY = S({ Mode: 'string' });
const JWT_REQUIREMENT = S({
  Providers: L(S({ Name: 'string', VerifyClaims: L(S({ Path: L('string'), Value: 'string' })) })),
});

export const KINDS: Record<string, Struct> = {
  'service-defaults': S({
    Name: 'string',
    Protocol: 'string',
    Mode: 'string',
    TransparentProxy: TRANSPARENT_PROXY,
    MutualTLSMode: 'string',
    MeshGateway: MESH_GATEWAY,
    Expose: EXPOSE,
    ExternalSNI: 'string',
    UpstreamConfig: S({ Overrides: L(UPSTREAM_CONFIG), Defaults: UPSTREAM_CONFIG }),
    Destination: S({ Addresses: L('string'), Port: 'int' }),
    MaxInboundConnections: 'int',
    LocalConnectTimeoutMs: 'int',
    LocalRequestTimeoutMs: 'int',
    BalanceInboundConnections: 'string',
    RateLimits: S({
      InstanceLevel: S({
        RequestsPerSecond: 'int',
        RequestsMaxBurst: 'int',
        Routes: L(
          S({
            PathExact: 'string',
            PathPrefix: 'string',
            PathRegex: 'string',
            RequestsPerSecond: 'int',
            RequestsMaxBurst: 'int',
          }),
        ),
      }),
    }),
    EnvoyExtensions: ENVOY_EXTENSIONS,
    Meta: META,
    Hash: 'int',
  }),
  'proxy-defaults': S({
    Name: 'string',
    Config: 'any',
    // json:"-", but mapstructure still fills it; Normalize overwrites it from Config.
    Protocol: 'string',
    Mode: 'string',
    TransparentProxy: TRANSPARENT_PROXY,
    MutualTLSMode: 'string',
    MeshGateway: MESH_GATEWAY,
    Expose: EXPOSE,
    AccessLogs: S({
      Enabled: 'bool',
      DisableListenerLogs: 'bool',
      Type: 'string',
      Path: 'string',
      JSONFormat: 'string',
      TextFormat: 'string',
    }),
    EnvoyExtensions: ENVOY_EXTENSIONS,
    FailoverPolicy: FAILOVER_POLICY,
    PrioritizeByLocality: PRIORITIZE_BY_LOCALITY,
    Meta: META,
    Hash: 'int',
  }),
  'service-router': S({
    Name: 'string',
    Routes: L(
      S({
        Match: S({
          HTTP: S({
            PathExact: 'string',
            PathPrefix: 'string',
            PathRegex: 'string',
            CaseInsensitive: 'bool',
            Header: L(
              S({
                Name: 'string',
                Present: 'bool',
                Exact: 'string',
                Prefix: 'string',
                Suffix: 'string',
                Regex: 'string',
                Invert: 'bool',
              }),
            ),
            QueryParam: L(S({ Name: 'string', Present: 'bool', Exact: 'string', Regex: 'string' })),
            Methods: L('string'),
          }),
        }),
        Destination: S({
          Service: 'string',
          ServiceSubset: 'string',
          Namespace: 'string',
          Partition: 'string',
          PrefixRewrite: 'string',
          RequestTimeout: 'duration',
          IdleTimeout: 'duration',
          NumRetries: 'int',
          RetryOnConnectFailure: 'bool',
          RetryOn: L('string'),
          RetryOnStatusCodes: L('int'),
          RequestHeaders: HEADER_MODIFIERS,
          ResponseHeaders: HEADER_MODIFIERS,
        }),
      }),
    ),
    Meta: META,
  }),
  'service-splitter': S({
    Name: 'string',
    Splits: L(
      S({
        Weight: 'float',
        Service: 'string',
        ServiceSubset: 'string',
        Namespace: 'string',
        Partition: 'string',
        RequestHeaders: HEADER_MODIFIERS,
        ResponseHeaders: HEADER_MODIFIERS,
      }),
    ),
    Meta: META,
  }),
  'service-resolver': S({
    Name: 'string',
    DefaultSubset: 'string',
    Subsets: M(S({ Filter: 'string', OnlyPassing: 'bool' })),
    Redirect: S({
      Service: 'string',
      ServiceSubset: 'string',
      Namespace: 'string',
      Partition: 'string',
      Datacenter: 'string',
      Peer: 'string',
      SamenessGroup: 'string',
    }),
    Failover: M(
      S({
        Service: 'string',
        ServiceSubset: 'string',
        Namespace: 'string',
        SamenessGroup: 'string',
        Datacenters: L('string'),
        Targets: L(
          S({
            Service: 'string',
            ServiceSubset: 'string',
            Partition: 'string',
            Namespace: 'string',
            Datacenter: 'string',
            Peer: 'string',
          }),
        ),
        Policy: FAILOVER_POLICY,
      }),
    ),
    ConnectTimeout: 'duration',
    RequestTimeout: 'duration',
    LoadBalancer: S({
      Policy: 'string',
      RingHashConfig: S({ MinimumRingSize: 'int', MaximumRingSize: 'int' }),
      LeastRequestConfig: S({ ChoiceCount: 'int' }),
      HashPolicies: L(
        S({
          Field: 'string',
          FieldValue: 'string',
          CookieConfig: S({ Session: 'bool', TTL: 'nanos', Path: 'string' }),
          SourceIP: 'bool',
          Terminal: 'bool',
        }),
      ),
    }),
    PrioritizeByLocality: PRIORITIZE_BY_LOCALITY,
    Meta: META,
  }),
  'service-intentions': S({
    Name: 'string',
    Sources: L(
      S({
        Name: 'string',
        Action: 'string',
        Permissions: L(
          S({
            Action: 'string',
            HTTP: S({
              PathExact: 'string',
              PathPrefix: 'string',
              PathRegex: 'string',
              Header: L(
                S({
                  Name: 'string',
                  Present: 'bool',
                  Exact: 'string',
                  Prefix: 'string',
                  Suffix: 'string',
                  Contains: 'string',
                  Regex: 'string',
                  Invert: 'bool',
                  IgnoreCase: 'bool',
                }),
              ),
              Methods: L('string'),
            }),
            JWT: JWT_REQUIREMENT,
          }),
        ),
        Precedence: 'int',
        LegacyID: 'string',
        Type: 'string',
        Description: 'string',
        LegacyMeta: M('string'),
        LegacyCreateTime: 'time',
        LegacyUpdateTime: 'time',
        Peer: 'string',
        SamenessGroup: 'string',
      }),
    ),
    JWT: JWT_REQUIREMENT,
    Meta: META,
  }),
};

/** Kinds Consul CE knows (structs.MakeConfigEntry) whose fields the emulator does not check. */
export const OTHER_KINDS = new Set([
  'ingress-gateway',
  'terminating-gateway',
  'mesh',
  'exported-services',
  'sameness-group',
  'api-gateway',
  'bound-api-gateway',
  'file-system-certificate',
  'inline-certificate',
  'http-route',
  'tcp-route',
  'jwt-provider',
]);

export function object(v: Json | undefined): Entry | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Entry) : undefined;
}

export function objects(v: Json | undefined): Entry[] {
  return Array.isArray(v) ? v.map(object).filter((x): x is Entry => x !== undefined) : [];
}
