// `ambit enroll`: a workload into the mesh file (its node must be there already), or into the Consul catalog.
import { type Command, Option } from 'commander';
import { ConfigError } from '../../lib/errors.js';
import { editMeshFile, upsertWorkload } from '../../lib/mesh/edit.js';
import { ownAddress } from '../../lib/mesh/file/validate.js';
import type { FailMode, MeshMode, Upstream, Workload } from '../../lib/mesh/model.js';
import {
  checkObjectName,
  checkServiceName,
  flag,
  parseIp,
  parseLabelValue,
  parsePort,
  parseUid,
  parseUpstream,
  repeatable,
} from '../args.js';
import { daemonSettings, refreshCaptureAfterEnroll } from '../capture.js';
import { consulClient, consulEnroll } from '../consul.js';
import { type Io, globals, meshPath } from '../context.js';

export interface EnrollOpts {
  service: string;
  namespace: string;
  /** Resolved before enrollWorkload: --node, else the configured node name. */
  node: string;
  config?: string;
  address?: string[];
  ip?: string[];
  failMode?: FailMode;
  capture?: boolean;
  port?: number[];
  plaintextPort?: number[];
  uid?: number;
  mode: MeshMode;
  upstream?: string[];
  app?: string;
  appVersion?: string;
  canonicalService?: string;
  canonicalRevision?: string;
}

/**
 * The workload `ambit enroll <name>` describes, its flags checked in the order they are reported. Its
 * addresses may still be empty (a --uid workload): the node's address fills them in the mesh file.
 */
export function enrollWorkload(name: string, o: EnrollOpts): Workload {
  flag(`workload name "${name}"`, () => checkObjectName(name, 'workload name'));
  const given = [...(o.address ?? []), ...(o.ip ?? [])];
  if (given.length === 0 && o.uid === undefined)
    throw new ConfigError(
      'give --ip (a workload with an address of its own) or --uid (a process on the host network)',
    );
  flag(`--service "${o.service}"`, () => checkServiceName(o.service));
  flag(`--namespace "${o.namespace}"`, () => checkServiceName(o.namespace, 'namespace'));
  flag(`--node "${o.node}"`, () => checkObjectName(o.node, 'node name'));
  const upstreams: Upstream[] = (o.upstream ?? []).map((u) =>
    flag(`--upstream "${u}"`, () => parseUpstream(u, o.namespace)),
  );
  return {
    name,
    service: o.service,
    namespace: o.namespace,
    node: o.node,
    addresses: [...new Set(given)],
    ports: [...new Set(o.port ?? [])],
    ...(o.plaintextPort?.length ? { plaintextPorts: [...new Set(o.plaintextPort)] } : {}),
    uid: o.uid,
    mode: o.mode,
    ...(o.failMode ? { failMode: o.failMode } : {}),
    ...(o.app !== undefined ? { app: o.app } : {}),
    ...(o.appVersion !== undefined ? { version: o.appVersion } : {}),
    ...(o.canonicalService !== undefined ? { canonicalService: o.canonicalService } : {}),
    ...(o.canonicalRevision !== undefined ? { canonicalRevision: o.canonicalRevision } : {}),
    upstreams,
  };
}

/** `ports: []` at an address of the workload's own node: refused before anything is written. */
export function refuseEveryPort(w: Workload, nodeAddress: string): void {
  if (w.ports.length > 0) return;
  const own = ownAddress(w.addresses, { name: w.node, address: nodeAddress, tunnelPort: 0 });
  if (!own) return;
  throw new ConfigError(
    `workload ${w.name} at ${own.ip}, ${own.what}, must list the ports it serves: give --port ` +
      "(every port would let any peer of the mesh reach every server of that host, ambitd's admin API included)",
  );
}

export function registerEnroll(program: Command, io: Io): void {
  program
    .command('enroll')
    .description(
      'Enroll a workload on a node (re-enrolling the same name replaces its entry).\n' +
        'The node must already be in the mesh (ambitd adds its own; or use `ambit node set`).',
    )
    .argument('<name>', 'workload name, unique in the mesh (e.g. web-1)')
    .requiredOption('--service <svc>', 'service the workload belongs to; its identity is this service')
    .option('--namespace <ns>', 'namespace of the service', 'default')
    .option(
      '--node <node>',
      "node (host running ambitd) the workload runs on [default: ambitd's nodeName, from --config or AMBIT_CONFIG, else the host name]",
    )
    .option(
      '--config <file>',
      "ambitd's config file, for its nodeName and capture settings; env AMBIT_CONFIG",
    )
    .option('--address <ip>', 'IP address of the workload (repeatable)', repeatable(parseIp))
    .option(
      '--ip <ip>',
      "same as --address; a --uid workload defaults to its node's address",
      repeatable(parseIp),
    )
    .option(
      '--port <port>',
      'port the workload serves (repeatable; none = every port)',
      repeatable(parsePort),
    )
    .option(
      '--plaintext-port <port>',
      'port a strict workload takes plaintext on, on purpose: a metrics scrape or health check from outside the mesh (repeatable)',
      repeatable(parsePort),
    )
    .option('--uid <uid>', 'owner uid, for processes sharing the host network', parseUid)
    .addOption(
      new Option('--mode <mode>', 'plaintext inbound: refuse (strict) or allow (permissive)')
        .choices(['strict', 'permissive'])
        .default('strict'),
    )
    .option(
      '--upstream <svc[.ns][:port]=listen>',
      'explicit upstream listener (repeatable), e.g. api:8080=15101 or api.prod=127.0.0.1:15101',
      (v: string, prev: string[] | undefined) => [...(prev ?? []), v],
    )
    .addOption(
      new Option(
        '--fail-mode <mode>',
        'capture while ambitd is down [default: closed if strict, else open]',
      ).choices(['open', 'closed']),
    )
    .option('--app <name>', "Istio's app label for the metrics [default: the service]", parseLabelValue)
    .option(
      '--app-version <v>',
      "Istio's version label (the workload's `version`; --version is the CLI's own) [default: unknown]",
      parseLabelValue,
    )
    .option(
      '--canonical-service <name>',
      'service.istio.io/canonical-name [default: the app]',
      parseLabelValue,
    )
    .option(
      '--canonical-revision <rev>',
      'service.istio.io/canonical-revision [default: the version, else latest]',
      parseLabelValue,
    )
    .option('--no-capture', 'do not update the capture rules installed on this host')
    .action(async (name: string, given: Omit<EnrollOpts, 'node'> & { node?: string }, cmd: Command) => {
      // The daemon's own name for this host, so that a workload enrolled here lands on this node.
      const o: EnrollOpts = {
        ...given,
        node: given.node ?? daemonSettings(globals(cmd), given.config).nodeName,
      };
      let w = enrollWorkload(name, o);
      const consul = consulClient(globals(cmd));
      if (consul) {
        refuseEveryPort(w, '');
        await consulEnroll(consul, w);
        io.out(
          `registered workload ${name} (service ${w.service}) on node ${w.node} with Consul at ${consul.address}\n`,
        );
        return;
      }
      const file = meshPath(globals(cmd));
      let existed = false;
      await editMeshFile(file, (doc) => {
        if (!doc.hasIn(['nodes', o.node])) {
          throw new ConfigError(
            `node "${o.node}" is not in the mesh: start ambitd on it, or add it with \`ambit node set ${o.node} --address <ip>\``,
          );
        }
        const nodeAddress = doc.getIn(['nodes', o.node, 'address']);
        if (w.addresses.length === 0 && typeof nodeAddress === 'string')
          w = { ...w, addresses: [nodeAddress] };
        refuseEveryPort(w, typeof nodeAddress === 'string' ? nodeAddress : '');
        existed = upsertWorkload(doc, w);
      });
      const ports = w.ports.length ? ` ports ${w.ports.join(',')}` : '';
      io.out(
        `${existed ? 'updated' : 'enrolled'} workload ${name} (service ${w.service}.${w.namespace}, ` +
          `${w.addresses.join(',')}${ports}) on node ${w.node}\n`,
      );
      if (o.capture !== false) {
        const updated = await refreshCaptureAfterEnroll(globals(cmd), w.node, o.config);
        if (updated) io.out(updated);
      }
    });
}
