// Mesh -> this node: certificates for exactly the local workloads' identities, listeners for their
// upstreams, policies re-checked, and this node's own entry in the mesh file. The decisions are pure
// functions; Reconciler only applies them in order.
import { MeshFileError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { editMeshFile, setNode } from '../lib/mesh/edit.js';
import { everyPortRefused, fieldPath, ownAddress } from '../lib/mesh/file/validate.js';
import type { Mesh, MeshNode, Workload } from '../lib/mesh/model.js';
import { LocalAddresses } from '../lib/net/addresses.js';
import type { CertificateManager } from './identity/manager.js';
import type { Metrics } from './metrics/metrics.js';
import { sniForIdentity } from './proxy/hbone.js';
import type { Inbound } from './proxy/inbound/inbound.js';
import type { ExplicitListeners } from './proxy/outbound/explicit.js';
import type { TlsContext } from './tls/context.js';

/** How soon a failed certificate issue is tried again (the certificate manager backs off on its own after). */
export const RECONCILE_RETRY_MS = 5_000;

/** The identities the local workloads need, and the SNI name a peer reaches each by. */
export function wantedIdentities(
  local: readonly Workload[],
  identityOf: (w: Workload) => string,
): { wanted: Set<string>; sni: Map<string, string> } {
  const wanted = new Set(local.map((w) => identityOf(w)));
  const sni = new Map<string, string>();
  for (const id of wanted) sni.set(sniForIdentity(id), id);
  return { wanted, sni };
}

/** Held certificates no local workload needs any more (its workload left this node or the mesh). */
export const unwantedIdentities = (held: Iterable<string>, wanted: ReadonlySet<string>): string[] =>
  [...held].filter((id) => !wanted.has(id));

/** Local workloads whose identity has no certificate yet, by name (what readiness waits for). */
export const missingCertificates = (
  local: readonly Workload[],
  identityOf: (w: Workload) => string,
  has: (identity: string) => boolean,
): string[] => local.filter((w) => !has(identityOf(w))).map((w) => w.name);

/** Whether the mesh file already holds this node as it is, so registering would be an empty edit. */
export const nodeRegistered = (current: MeshNode | undefined, wanted: MeshNode): boolean =>
  current?.address === wanted.address && current.tunnelPort === wanted.tunnelPort;

export interface HostMeshCheck {
  readonly nodeName: string;
  readonly advertiseAddress: string;
  readonly meshFile: string;
}

/**
 * What only this host can check in the mesh file: a local workload serving every port of one of the host's
 * addresses (the file's own validation knows loopback and the node's address, not the interfaces).
 */
export function checkHostMesh(
  mesh: Mesh,
  host: HostMeshCheck,
  local: LocalAddresses = new LocalAddresses(() => [host.advertiseAddress]),
): void {
  const { nodeName } = host;
  const node = mesh.nodes.find((n) => n.name === nodeName);
  if (!node) return;
  for (const w of mesh.workloads) {
    if (w.node !== nodeName || w.ports.length > 0) continue;
    const own = ownAddress(w.addresses, node, (ip) => local.has(ip));
    if (own)
      throw new MeshFileError(
        host.meshFile,
        fieldPath(['workloads', w.name, 'ports']),
        everyPortRefused(own),
      );
  }
}

/** Puts this node's tunnel address in the mesh file, unless it is already there as it is. */
export async function registerInMeshFile(
  meshFile: string,
  current: MeshNode | undefined,
  node: MeshNode,
  log: Logger,
): Promise<void> {
  if (nodeRegistered(current, node)) return;
  await editMeshFile(meshFile, (doc) => {
    setNode(doc, node);
  });
  log.info(
    { node: node.name, address: node.address, tunnelPort: node.tunnelPort },
    'node registered in mesh file',
  );
}

export interface ReconcilerOptions {
  readonly localWorkloads: () => Workload[];
  readonly identityOf: (w: Workload) => string;
  readonly certs: Pick<CertificateManager, 'ensure' | 'list' | 'forget' | 'has' | 'tlsContext'>;
  readonly listeners: Pick<ExplicitListeners, 'reconcile'>;
  readonly inbound: Pick<Inbound, 'recheck'>;
  readonly metrics: Pick<Metrics, 'certExpiry'>;
  readonly log: Logger;
  readonly retryMs?: number;
}

/** Applies the mesh to this node, one change after another, and serves the SNI names that result. */
export class Reconciler {
  readonly #o: ReconcilerOptions;
  readonly #retryMs: number;
  #sni = new Map<string, string>();
  #reconciling: Promise<void> = Promise.resolve();
  #retryTimer: NodeJS.Timeout | undefined;

  constructor(options: ReconcilerOptions) {
    this.#o = options;
    this.#retryMs = options.retryMs ?? RECONCILE_RETRY_MS;
  }

  /** Reconciles after any reconcile already under way: changes apply in order, never concurrently. */
  schedule(): void {
    this.#reconciling = this.#reconciling
      .then(() => this.#reconcile())
      .catch((err: Error) => {
        this.#o.log.error({ err: err.message }, 'applying the mesh failed');
      });
  }

  /** Settles when every reconcile scheduled so far has run. */
  settled(): Promise<void> {
    return this.#reconciling;
  }

  /** The TLS context a peer's ClientHello names, when it is a local workload's and its certificate is held. */
  contextForSni(servername: string): TlsContext | undefined {
    const { certs } = this.#o;
    const id = this.#sni.get(servername);
    if (!id || !certs.has(id)) return undefined;
    return certs.tlsContext(id);
  }

  exportCertExpiry(): void {
    const { certs, metrics } = this.#o;
    metrics.certExpiry.reset();
    for (const c of certs.list())
      metrics.certExpiry.set({ identity: c.identity }, Date.parse(c.notAfter) / 1000);
  }

  /** Certificates for exactly the local workloads' identities, listeners for their upstreams, policies re-checked. */
  async #reconcile(): Promise<void> {
    const { certs, log } = this.#o;
    const local = this.#o.localWorkloads();
    const { wanted, sni } = wantedIdentities(local, this.#o.identityOf);
    let failed = 0;
    await Promise.all(
      [...wanted].map((id) =>
        certs.ensure(id).catch((err: Error) => {
          failed++;
          log.error({ identity: id, err: err.message }, 'cannot issue certificate');
        }),
      ),
    );
    // A first issue that failed (CA briefly unreachable) is tried again without waiting for a mesh change.
    if (failed > 0) this.#retry();
    this.#sni = sni;
    for (const id of unwantedIdentities(
      certs.list().map((c) => c.identity),
      wanted,
    ))
      certs.forget(id);
    this.exportCertExpiry();
    await this.#o.listeners.reconcile(local);
    const closed = this.#o.inbound.recheck();
    if (closed > 0) log.info({ closed }, 'closed connections that policy no longer allows');
  }

  #retry(): void {
    if (this.#retryTimer) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.schedule();
    }, this.#retryMs).unref();
  }
}
