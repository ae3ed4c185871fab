import { EventEmitter } from 'node:events';
import type { Mesh, MeshNode, Policy, Service, Workload } from '../../lib/mesh/model.js';
import { emptyMesh, ownsEveryPort } from '../../lib/mesh/model.js';

const key = (namespace: string, name: string): string => `${namespace}/${name}`;
const addrKey = (ip: string, port: number): string => `${ip}:${port}`;

/**
 * The state in force: the last good mesh from the control plane, indexed for the lookups the data path
 * makes per connection. Replaced whole on every change; readers never see a half-applied update.
 */
export class StateStore extends EventEmitter {
  #mesh: Mesh = emptyMesh();
  /** The control plane's mesh, as its source last replaced it; #mesh is it with #beside merged in. */
  #base: Mesh = emptyMesh();
  #beside: { nodes: readonly MeshNode[]; workloads: readonly Workload[] } = { nodes: [], workloads: [] };
  #nodes = new Map<string, MeshNode>();
  #workloads = new Map<string, Workload>();
  #endpoints = new Map<string, Workload[]>();
  #services = new Map<string, Service>();
  #byIpPort = new Map<string, Workload>();
  #byIp = new Map<string, Workload[]>();
  #byUid = new Map<number, Workload[]>();
  #vips = new Map<string, { service: Service; targetPort: number }>();
  #policies = new Map<string, Policy[]>();

  get mesh(): Mesh {
    return this.#mesh;
  }

  /** The control plane's mesh alone, without what setBeside added: what the mesh file itself declares. */
  get base(): Mesh {
    return this.#base;
  }

  replace(mesh: Mesh): void {
    this.#base = mesh;
    this.#index(this.#merged());
  }

  /**
   * Workloads, and the nodes they run on, from a source beside the control plane (the Kubernetes pod watch):
   * kept across every replace() and merged into the mesh. What the control plane names itself wins, so a
   * pod cannot take over a workload or a node the mesh file or Consul declares.
   */
  setBeside(nodes: readonly MeshNode[], workloads: readonly Workload[]): void {
    this.#beside = { nodes, workloads };
    this.#index(this.#merged());
  }

  #merged(): Mesh {
    const base = this.#base;
    const { nodes, workloads } = this.#beside;
    if (nodes.length === 0 && workloads.length === 0) return base;
    const nodeNames = new Set(base.nodes.map((n) => n.name));
    const names = new Set(base.workloads.map((w) => w.name));
    return {
      ...base,
      nodes: [...base.nodes, ...nodes.filter((n) => !nodeNames.has(n.name))],
      workloads: [...base.workloads, ...workloads.filter((w) => !names.has(w.name))],
    };
  }

  #index(mesh: Mesh): void {
    const nodes = new Map<string, MeshNode>();
    for (const n of mesh.nodes) nodes.set(n.name, n);
    const workloads = new Map<string, Workload>();
    const endpoints = new Map<string, Workload[]>();
    const byIpPort = new Map<string, Workload>();
    const byIp = new Map<string, Workload[]>();
    const byUid = new Map<number, Workload[]>();
    for (const w of mesh.workloads) {
      workloads.set(w.name, w);
      push(endpoints, key(w.namespace, w.service), w);
      for (const ip of w.addresses) {
        push(byIp, ip, w);
        for (const p of w.ports) byIpPort.set(addrKey(ip, p), w);
      }
      if (w.uid !== undefined) push(byUid, w.uid, w);
    }
    const services = new Map<string, Service>();
    const vips = new Map<string, { service: Service; targetPort: number }>();
    for (const s of mesh.services) {
      services.set(key(s.namespace, s.name), s);
      for (const vip of s.vips)
        for (const p of s.ports) vips.set(addrKey(vip, p.port), { service: s, targetPort: p.targetPort });
    }
    const policies = new Map<string, Policy[]>();
    for (const p of mesh.policies) push(policies, key(p.namespace, p.service), p);

    this.#mesh = mesh;
    this.#nodes = nodes;
    this.#workloads = workloads;
    this.#endpoints = endpoints;
    this.#services = services;
    this.#byIpPort = byIpPort;
    this.#byIp = byIp;
    this.#byUid = byUid;
    this.#vips = vips;
    this.#policies = policies;
    this.emit('change', mesh);
  }

  node(name: string): MeshNode | undefined {
    return this.#nodes.get(name);
  }

  workload(name: string): Workload | undefined {
    return this.#workloads.get(name);
  }

  workloadsOn(node: string): Workload[] {
    return this.#mesh.workloads.filter((w) => w.node === node);
  }

  /**
   * The workload serving ip:port: an exact port match first, then a workload that lists no ports, then
   * the one workload holding ip as an address of its own (see ownsEveryPort): every port of a pod is the
   * pod's, so that no port of a mesh workload is left to plaintext.
   */
  workloadAt(ip: string, port: number): Workload | undefined {
    const exact = this.#byIpPort.get(addrKey(ip, port));
    if (exact) return exact;
    const all = this.#byIp.get(ip);
    if (!all) return undefined;
    const any = all.find((w) => w.ports.length === 0);
    if (any) return any;
    const only = all.length === 1 ? all[0]! : undefined;
    return only && ownsEveryPort(only, this.#nodes.get(only.node)?.address) ? only : undefined;
  }

  workloadsByIp(ip: string): readonly Workload[] {
    return this.#byIp.get(ip) ?? [];
  }

  workloadsByUid(uid: number): readonly Workload[] {
    return this.#byUid.get(uid) ?? [];
  }

  service(namespace: string, name: string): Service | undefined {
    return this.#services.get(key(namespace, name));
  }

  /** Every workload of a service, on any node. */
  endpoints(namespace: string, service: string): readonly Workload[] {
    return this.#endpoints.get(key(namespace, service)) ?? [];
  }

  vip(ip: string, port: number): { service: Service; targetPort: number } | undefined {
    return this.#vips.get(addrKey(ip, port));
  }

  policiesFor(namespace: string, service: string): readonly Policy[] {
    return this.#policies.get(key(namespace, service)) ?? [];
  }
}

function push<K, V>(map: Map<K, V[]>, k: K, v: V): void {
  const list = map.get(k);
  if (list) list.push(v);
  else map.set(k, [v]);
}

/**
 * `name` as the control plane itself declares it: the pod watch adds this node beside the mesh, and
 * registering in the mesh file must not take that for the file's own entry.
 */
export const baseNode = (store: StateStore, name: string): MeshNode | undefined =>
  store.base.nodes.find((n) => n.name === name);
