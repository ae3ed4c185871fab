// The supervisor's one control plane per host: the mesh file or Consul watches, the CA and the
// certificate manager. Workers get what these produce (workers.ts relays it); none of them watches or
// issues anything of its own, so the load on Consul is one daemon's however many workers run.
import { mkdir } from 'node:fs/promises';
import type { DaemonConfig } from '../../lib/config.js';
import type { Logger } from '../../lib/log.js';
import type { Workload } from '../../lib/mesh/model.js';
import { type CertificateAuthority, EmbeddedCa, type IssuedCertificate } from '../identity/ca.js';
import { CertificateManager } from '../identity/manager.js';
import { spiffeId } from '../identity/spiffe.js';
import { Metrics } from '../metrics/metrics.js';
import { checkHostMesh } from '../reconcile.js';
import { ConsulControlPlane } from '../state/consul-control-plane.js';
import { MeshFileSource, lastGoodPath } from '../state/file-source.js';
import {
  type ConsulPodRegistry,
  type PodSource,
  captureFollowsPods,
  consulFollowsPods,
  podSourceFor,
} from '../state/kubernetes/index.js';
import { StateStore } from '../state/store.js';

export class ControlPlane {
  /** The configuration with Consul's trust domain and datacenter in Consul mode. */
  readonly config: DaemonConfig;
  readonly store = new StateStore();
  readonly metrics: Metrics;
  readonly certs: CertificateManager;
  readonly kind: CertificateAuthority['kind'];
  readonly consul: ConsulControlPlane | undefined;
  #source: MeshFileSource | undefined;
  #pods: PodSource | undefined;
  #podRegistry: ConsulPodRegistry | undefined;
  readonly #log: Logger;

  private constructor(
    config: DaemonConfig,
    log: Logger,
    ca: CertificateAuthority,
    consul?: ConsulControlPlane,
  ) {
    this.config = config;
    this.#log = log;
    this.kind = ca.kind;
    this.consul = consul;
    this.metrics = new Metrics({ cluster: config.datacenter });
    this.certs = new CertificateManager(ca, {
      ttlMs: config.certTtlMs,
      logger: log,
      keyUpdateRate: config.limits.keyUpdateRate,
    });
  }

  static async open(given: DaemonConfig, log: Logger): Promise<ControlPlane> {
    await mkdir(given.stateDir, { recursive: true, mode: 0o700 });
    if (given.consul) {
      const consul = await ConsulControlPlane.open(given, log);
      return new ControlPlane(consul.config, log, consul.ca, consul);
    }
    const ca = await EmbeddedCa.loadOrCreate(given.caDir, given.trustDomain, log);
    return new ControlPlane(given, log, ca);
  }

  /** Loads the roots, starts the watches and applies the first view of the mesh. */
  async start(): Promise<void> {
    const { config, store, metrics } = this;
    await this.certs.start();
    // Identities of workloads that left this host are no longer refreshed (as each worker's reconciler
    // forgets its own copy).
    store.on('change', () => {
      const wanted = new Set(store.workloadsOn(config.nodeName).map((w) => this.identityOf(w)));
      for (const c of this.certs.list()) if (!wanted.has(c.identity)) this.certs.forget(c.identity);
    });
    if (this.consul) await this.consul.start(store, this.certs, metrics);
    else await this.#startMeshFile();
  }

  /** With `kubernetes`: the pods enrolled beside the mesh; the tunnel port is the workers' (one for all). */
  async startPods(tunnelPort: number): Promise<void> {
    this.#pods = podSourceFor(this.config, tunnelPort, this.#log, this.metrics);
    await this.#pods?.start(this.store);
    this.#podRegistry = await consulFollowsPods(this.#pods, this.config, this.consul?.client, this.#log);
  }

  /** With capture too: the rules follow the pods (the supervisor owns the rules, as it owns the gate). */
  async captureFollowsPods(): Promise<void> {
    await captureFollowsPods(this.#pods, this.config, this.store, this.#log);
  }

  async #startMeshFile(): Promise<void> {
    const { config, store, metrics } = this;
    const source = new MeshFileSource(config.meshFile, store, this.#log, {
      pollMs: config.meshPollMs,
      check: (mesh) => checkHostMesh(mesh, config),
      lastGood: lastGoodPath(config.stateDir, config.meshFile),
    });
    source.on('applied', () => metrics.meshReloads.inc({ result: 'applied' }));
    source.on('rejected', () => metrics.meshReloads.inc({ result: 'rejected' }));
    this.#source = source;
    await source.start();
  }

  /** What a worker's RelayedCa asks: the certificate this manager holds (issuing it first if need be). */
  async issue(identity: string): Promise<IssuedCertificate> {
    await this.certs.ensure(identity);
    const info = this.certs.list().find((c) => c.identity === identity);
    const { certPem, keyPem } = this.certs.credentials(identity);
    if (!info) throw new Error(`no certificate held for ${identity}`);
    return {
      certPem,
      keyPem,
      identity,
      serial: info.serial,
      notBefore: new Date(info.notBefore),
      notAfter: new Date(info.notAfter),
    };
  }

  identityOf(w: Workload): string {
    const { trustDomain, datacenter } = this.config;
    return spiffeId({ trustDomain, namespace: w.namespace, datacenter, service: w.service });
  }

  localWorkloads(): Workload[] {
    return this.store.workloadsOn(this.config.nodeName);
  }

  get meshError(): { message: string } | undefined {
    return this.#source?.lastError;
  }

  async close(): Promise<void> {
    this.#source?.close();
    this.#podRegistry?.close();
    await this.#pods?.close();
    await this.consul?.close();
    this.certs.close();
  }
}
