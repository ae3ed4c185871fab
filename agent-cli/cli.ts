// `ambit`: enrolls workloads and edits policy in the mesh file (which ambitd watches and applies live), and
// asks the running daemon about its certificates.
import { hostname } from 'node:os';
import { join } from 'node:path';
import { Argument, Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { AmbitError, ConfigError, MeshFileError, NotFoundError } from '../lib/errors.js';
import { LOG_LEVELS } from '../lib/log.js';
import {
  addPolicy,
  editMeshFile,
  removePolicy,
  removeWorkload,
  setDefaultPolicy,
  setNode,
  upsertWorkload,
} from '../lib/mesh/edit.js';
import { readMeshFile } from '../lib/mesh/file/parse.js';
import { DEFAULT_TUNNEL_PORT, fmtHostPort } from '../lib/mesh/file/schema.js';
import { ownAddress } from '../lib/mesh/file/validate.js';
import type {
  FailMode,
  MeshMode,
  Policy,
  PolicyAction,
  PolicySource,
  Upstream,
  Workload,
} from '../lib/mesh/model.js';
import { DEFAULT_ADMIN, defaultStateDir } from '../lib/paths.js';
import {
  type AdminTarget,
  AdminUnreachableError,
  type CertInfo,
  fetchCerts,
  logLevel,
  readAdminToken,
} from './admin.js';
import {
  checkObjectName,
  checkServiceName,
  fmtSource,
  parseAdmin,
  parseIp,
  parsePort,
  parsePrincipal,
  parseServiceRef,
  parseUid,
  parseUpstream,
  repeatable,
} from './args.js';
import { refreshCaptureAfterEnroll, registerCapture } from './capture.js';
import {
  CONSUL_DEFAULT_POLICY_REFUSED,
  type ConsulCliOpts,
  consulClient,
  consulEnroll,
  consulIntentions,
  consulRemoveIntention,
  consulSetIntentions,
  consulUnenroll,
  consulWorkloads,
  intentionAction,
} from './consul.js';

export const EXIT_OK = 0;
export const EXIT_USER = 1;
export const EXIT_MESH_INVALID = 2;
export const EXIT_UNREACHABLE = 3;

interface GlobalOpts extends ConsulCliOpts {
  stateDir: string;
  mesh: string | undefined;
  admin: string;
}

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

/** Validation inside an action: commander only reports parser errors itself, so name the flag here. */
function flag<T>(what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof InvalidArgumentError) throw new ConfigError(`${what}: ${e.message.replace(/\.$/, '')}`);
    throw e;
  }
}

const meshPath = (g: GlobalOpts): string => g.mesh ?? join(g.stateDir, 'mesh.yaml');
const globals = (cmd: Command): GlobalOpts => cmd.optsWithGlobals<GlobalOpts>();
const adminTarget = async (g: GlobalOpts): Promise<AdminTarget> => ({
  admin: g.admin,
  token: await readAdminToken(g.stateDir),
});

/** Left-aligned columns, two spaces apart, as kubectl and consul print them. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]): string =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

/** "3d 4h", "5h 12m", "42s"; negative durations read "expired 5m ago". */
export function humanDuration(ms: number): string {
  const neg = ms < 0;
  let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const parts = d ? [`${d}d`, `${h}h`] : h ? [`${h}h`, `${m}m`] : m ? [`${m}m`, `${s}s`] : [`${s}s`];
  const txt = parts.join(' ');
  return neg ? `expired ${txt} ago` : txt;
}

/** `ambit list`'s output, whichever backend the workloads come from; `where` names it when there are none. */
function workloadsText(workloads: readonly Workload[], json: boolean | undefined, where: string): string {
  if (json) return `${JSON.stringify(workloads, null, 2)}\n`;
  if (!workloads.length) return `no workloads enrolled (${where})\n`;
  return table(
    ['NAME', 'SERVICE', 'NAMESPACE', 'NODE', 'ADDRESSES', 'PORTS', 'MODE'],
    workloads.map((w) => [
      w.name,
      w.service,
      w.namespace,
      w.node,
      w.addresses.join(','),
      w.ports.length ? w.ports.join(',') : '*',
      w.mode,
    ]),
  );
}

function policyName(
  action: PolicyAction,
  to: { service: string; namespace: string },
  from: PolicySource[],
  ports: number[],
): string {
  const src = from.length
    ? [
        ...new Set(
          from.map((f) => f.service ?? (f.namespace !== undefined ? `ns-${f.namespace}` : 'principal')),
        ),
      ].join('-')
    : 'all';
  let n = `${action}-${src}-to-${to.service}`;
  if (to.namespace !== 'default') n += `.${to.namespace}`;
  if (ports.length) n += `-${ports.join('-')}`;
  return n;
}

/** `ports: []` at an address of the workload's own node: refused before anything is written. */
function refuseEveryPort(w: Workload, nodeAddress: string): void {
  if (w.ports.length > 0) return;
  const own = ownAddress(w.addresses, { name: w.node, address: nodeAddress, tunnelPort: 0 });
  if (!own) return;
  throw new ConfigError(
    `workload ${w.name} at ${own.ip}, ${own.what}, must list the ports it serves: give --port ` +
      "(every port would let any peer of the mesh reach every server of that host, ambitd's admin API included)",
  );
}

export function buildProgram(io: Io): Command {
  const program = new Command('ambit')
    .description(
      'Enroll workloads in the Ambit mesh and manage its policy.\n\n' +
        'Changes are written to the mesh file, which ambitd watches and applies within a second;\n' +
        'an edit that would make the file invalid is refused and nothing is written.\n' +
        'With --consul (or CONSUL_HTTP_ADDR), enroll, unenroll and list use the Consul catalog and\n' +
        'policy uses Consul intentions instead.\n\n' +
        'Exit codes: 0 ok, 1 usage error or not found, 2 invalid mesh file, 3 ambitd unreachable.',
    )
    .addOption(
      new Option('--state-dir <dir>', 'ambitd state directory')
        .env('AMBIT_STATE_DIR')
        .default(defaultStateDir(), 'per-user state dir, /var/lib/ambit as root'),
    )
    .addOption(
      new Option('--mesh <file>', 'mesh file (.yaml, .yml or .json)  [default: <state-dir>/mesh.yaml]').env(
        'AMBIT_MESH_FILE',
      ),
    )
    .addOption(
      new Option('--admin <host:port>', 'ambitd admin API address')
        .env('AMBIT_ADMIN')
        .default(DEFAULT_ADMIN)
        .argParser(parseAdmin),
    )
    .addOption(
      new Option(
        '--consul <addr>',
        'use the Consul agent at addr instead of the mesh file (enroll, unenroll, list, policy)',
      ).env('CONSUL_HTTP_ADDR'),
    )
    .addOption(new Option('--consul-token <token>', 'Consul ACL token').env('CONSUL_HTTP_TOKEN'))
    .addOption(
      new Option('--consul-token-file <file>', 'file holding the Consul ACL token').env(
        'CONSUL_HTTP_TOKEN_FILE',
      ),
    )
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({
      writeOut: io.out,
      writeErr: io.err,
      outputError: (s, write) => write(s.replace(/^error: /, 'ambit: ')),
    })
    .exitOverride();

  program
    .command('enroll')
    .description(
      'Enroll a workload on a node (re-enrolling the same name replaces its entry).\n' +
        'The node must already be in the mesh (ambitd adds its own; or use `ambit node set`).',
    )
    .argument('<name>', 'workload name, unique in the mesh (e.g. web-1)')
    .requiredOption('--service <svc>', 'service the workload belongs to; its identity is this service')
    .option('--namespace <ns>', 'namespace of the service', 'default')
    .option('--node <node>', 'node (host running ambitd) the workload runs on', hostname())
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
    .option('--no-capture', 'do not update the capture rules installed on this host')
    .action(async (name: string, o: EnrollOpts, cmd: Command) => {
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
      let w: Workload = {
        name,
        service: o.service,
        namespace: o.namespace,
        node: o.node,
        addresses: [...new Set(given)],
        ports: [...new Set(o.port ?? [])],
        uid: o.uid,
        mode: o.mode,
        ...(o.failMode ? { failMode: o.failMode } : {}),
        upstreams,
      };
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
        if (w.addresses.length === 0) {
          const nodeAddress = doc.getIn(['nodes', o.node, 'address']);
          if (typeof nodeAddress === 'string') w = { ...w, addresses: [nodeAddress] };
        }
        const nodeAddress = doc.getIn(['nodes', o.node, 'address']);
        refuseEveryPort(w, typeof nodeAddress === 'string' ? nodeAddress : '');
        existed = upsertWorkload(doc, w);
      });
      const ports = w.ports.length ? ` ports ${w.ports.join(',')}` : '';
      io.out(
        `${existed ? 'updated' : 'enrolled'} workload ${name} (service ${w.service}.${w.namespace}, ` +
          `${w.addresses.join(',')}${ports}) on node ${w.node}\n`,
      );
      if (o.capture !== false) {
        const updated = await refreshCaptureAfterEnroll(globals(cmd), w.node);
        if (updated) io.out(updated);
      }
    });

  program
    .command('unenroll')
    .description('Remove a workload from the mesh.')
    .argument('<name>', 'workload name')
    .action(async (name: string, _o: unknown, cmd: Command) => {
      const consul = consulClient(globals(cmd));
      if (consul) {
        await consulUnenroll(consul, name);
        return io.out(`deregistered workload ${name} from Consul at ${consul.address}\n`);
      }
      await editMeshFile(meshPath(globals(cmd)), (doc) => {
        if (!removeWorkload(doc, name)) throw new NotFoundError(`workload "${name}"`);
      });
      io.out(`unenrolled workload ${name}\n`);
    });

  program
    .command('list')
    .description('List enrolled workloads.')
    .option('--json', 'print the workloads as JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const consul = consulClient(globals(cmd));
      if (consul) {
        const { workloads, skipped } = await consulWorkloads(consul);
        for (const s of skipped) io.err(`ambit: ignoring Consul service instance ${s}\n`);
        return io.out(workloadsText(workloads, o.json, `Consul at ${consul.address}`));
      }
      const file = meshPath(globals(cmd));
      io.out(workloadsText((await readMeshFile(file)).workloads, o.json, file));
    });

  const node = program.command('node').description('Manage the nodes (hosts running ambitd) of the mesh.');
  node
    .command('set')
    .description('Add a node, or change its address or tunnel port.')
    .argument('<name>', 'node name (ambitd uses the host name)')
    .requiredOption('--address <ip>', "address other nodes reach this node's tunnel at", parseIp)
    .option(
      '--tunnel-port <port>',
      `tunnel (HBONE) port [default: ${DEFAULT_TUNNEL_PORT}, or the current one]`,
      parsePort,
    )
    .action(async (name: string, o: { address: string; tunnelPort?: number }, cmd: Command) => {
      flag(`node name "${name}"`, () => checkObjectName(name, 'node name'));
      let existed = false;
      let tunnelPort = DEFAULT_TUNNEL_PORT;
      await editMeshFile(meshPath(globals(cmd)), (doc) => {
        existed = doc.hasIn(['nodes', name]);
        const current = doc.getIn(['nodes', name, 'tunnelPort']);
        tunnelPort = o.tunnelPort ?? (typeof current === 'number' ? current : DEFAULT_TUNNEL_PORT);
        setNode(doc, { name, address: o.address, tunnelPort });
      });
      io.out(`${existed ? 'updated' : 'added'} node ${name} at ${fmtHostPort(o.address, tunnelPort)}\n`);
    });
  node
    .command('list')
    .description('List the nodes of the mesh.')
    .option('--json', 'print the nodes as JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const mesh = await readMeshFile(meshPath(globals(cmd)));
      if (o.json) return io.out(`${JSON.stringify(mesh.nodes, null, 2)}\n`);
      if (!mesh.nodes.length) return io.out('no nodes in the mesh\n');
      io.out(
        table(
          ['NAME', 'ADDRESS', 'TUNNEL-PORT', 'WORKLOADS'],
          mesh.nodes.map((n) => [
            n.name,
            n.address,
            String(n.tunnelPort),
            String(mesh.workloads.filter((w) => w.node === n.name).length),
          ]),
        ),
      );
    });

  const policy = program
    .command('policy')
    .description('Manage L4 authorization policy (enforced by the destination node).');
  for (const action of ['allow', 'deny'] as const) {
    policy
      .command(action)
      .description(
        `${action === 'allow' ? 'Allow' : 'Deny'} connections to a service (a deny wins over an allow).\n` +
          'Sources are ANDed within one flag and ORed across flags; no source = every peer.\n' +
          'A --from without a namespace means that service in the destination namespace; svc.* means any namespace.\n' +
          'In Consul mode: one intention per source (none = *), decided in Consul precedence order;\n' +
          '--port, --name, --from-principal and namespaces other than default are refused.',
      )
      .requiredOption('--to <svc[.ns]>', 'destination service')
      .option(
        '--from <svc[.ns]>',
        'source service (repeatable)',
        repeatable((v) => v),
      )
      .option(
        '--from-namespace <ns>',
        'every service of a source namespace (repeatable)',
        repeatable((v) => v),
      )
      .option('--from-principal <spiffe-id>', 'a source SPIFFE ID (repeatable)', repeatable(parsePrincipal))
      .option('--port <port>', 'destination port (repeatable; none = all ports)', repeatable(parsePort))
      .option('--name <name>', 'policy name [default: e.g. allow-web-to-api]')
      .action(async (o: PolicyOpts, cmd: Command) => {
        const to = flag(`--to "${o.to}"`, () => parseServiceRef(o.to));
        const ns = to.namespace!;
        const from: PolicySource[] = [
          ...(o.from ?? []).map((f) => {
            const r = flag(`--from "${f}"`, () => parseServiceRef(f, ns, true));
            return { service: r.service, namespace: r.namespace, principal: undefined };
          }),
          ...(o.fromNamespace ?? []).map((n) => {
            flag(`--from-namespace "${n}"`, () => checkServiceName(n, 'namespace'));
            return { service: undefined, namespace: n, principal: undefined };
          }),
          ...(o.fromPrincipal ?? []).map((p) => ({ service: undefined, namespace: undefined, principal: p })),
        ];
        const ports = [...new Set(o.port ?? [])];
        const consul = consulClient(globals(cmd));
        if (consul) {
          const req = { to: { service: to.service, namespace: ns }, from, ports, name: o.name };
          const changes = await consulSetIntentions(consul, action, req);
          for (const c of changes)
            io.out(
              `${c.existed ? 'updated' : 'added'} intention ${c.source}->${c.destination}: ${c.action}\n`,
            );
          return;
        }
        const name = o.name ?? policyName(action, { service: to.service, namespace: ns }, from, ports);
        flag(`policy name "${name}"`, () => checkObjectName(name, 'policy name'));
        const p: Policy = { name, action, service: to.service, namespace: ns, ports, from };
        let existed = false;
        await editMeshFile(meshPath(globals(cmd)), (doc) => {
          existed = addPolicy(doc, p);
        });
        const src = from.length ? from.map(fmtSource).join(' or ') : 'any peer';
        const portTxt = ports.length ? ` port ${ports.join(',')}` : '';
        io.out(
          `${existed ? 'updated' : 'added'} policy ${name}: ${action} ${src} -> ${to.service}.${ns}${portTxt}\n`,
        );
      });
  }
  policy
    .command('list')
    .description('List policies and the default action.')
    .option('--json', 'print {defaultPolicy, policies} as JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const consul = consulClient(globals(cmd));
      if (consul) {
        const intentions = await consulIntentions(consul);
        if (o.json) return io.out(`${JSON.stringify(intentions, null, 2)}\n`);
        io.out(
          intentions.length
            ? table(
                ['SOURCE', 'DESTINATION', 'ACTION', 'PRECEDENCE'],
                intentions.map((i) => [
                  i.SourceName,
                  i.DestinationName,
                  intentionAction(i),
                  String(i.Precedence ?? ''),
                ]),
              )
            : `no intentions (Consul at ${consul.address})\n`,
        );
        return io.out("default: ambitd's defaultPolicy setting (when no intention matches)\n");
      }
      const mesh = await readMeshFile(meshPath(globals(cmd)));
      if (o.json) {
        return io.out(
          `${JSON.stringify({ defaultPolicy: mesh.defaultPolicy, policies: mesh.policies }, null, 2)}\n`,
        );
      }
      if (mesh.policies.length) {
        io.out(
          table(
            ['NAME', 'ACTION', 'TO', 'PORTS', 'FROM'],
            mesh.policies.map((p) => [
              p.name,
              p.action,
              `${p.service}.${p.namespace}`,
              p.ports.length ? p.ports.join(',') : '*',
              p.from.length ? p.from.map(fmtSource).join(' | ') : 'any',
            ]),
          ),
        );
      } else {
        io.out('no policies\n');
      }
      io.out(`default: ${mesh.defaultPolicy} (when no policy matches)\n`);
    });
  policy
    .command('remove')
    .description('Remove a policy.')
    .argument('<name>', 'policy name (see `ambit policy list`); in Consul mode <source>-><destination>')
    .action(async (name: string, _o: unknown, cmd: Command) => {
      const consul = consulClient(globals(cmd));
      if (consul) {
        const i = await consulRemoveIntention(consul, name);
        return io.out(`removed intention ${i.source}->${i.destination}\n`);
      }
      await editMeshFile(meshPath(globals(cmd)), (doc) => {
        if (!removePolicy(doc, name)) throw new NotFoundError(`policy "${name}"`);
      });
      io.out(`removed policy ${name}\n`);
    });
  policy
    .command('default')
    .description('Set what happens to a connection that no policy matches.')
    .addArgument(new Argument('<action>', 'allow or deny').choices(['allow', 'deny']))
    .action(async (action: PolicyAction, _o: unknown, cmd: Command) => {
      const consul = consulClient(globals(cmd));
      if (consul) {
        consul.close();
        throw new ConfigError(CONSUL_DEFAULT_POLICY_REFUSED);
      }
      await editMeshFile(meshPath(globals(cmd)), (doc) => setDefaultPolicy(doc, action));
      io.out(`default policy is now ${action}\n`);
    });

  program
    .command('certs')
    .description('Show the workload certificates held by the local ambitd (asks its admin API).')
    .option('--json', 'print the admin API answer as JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const certs = await fetchCerts(await adminTarget(globals(cmd)));
      if (o.json) return io.out(`${JSON.stringify(certs, null, 2)}\n`);
      if (!certs.length) return io.out('no certificates (no workloads enrolled on this node?)\n');
      const now = Date.now();
      io.out(
        table(
          ['WORKLOAD', 'IDENTITY', 'SERIAL', 'EXPIRES', 'LEFT', 'REFRESH', 'ROTATIONS'],
          certs.map((c: CertInfo) => [
            c.workload,
            c.identity,
            c.serial,
            c.notAfter,
            humanDuration(Date.parse(c.notAfter) - now),
            Date.parse(c.refreshAt) > now ? `in ${humanDuration(Date.parse(c.refreshAt) - now)}` : 'due',
            String(c.rotations),
          ]),
        ),
      );
    });

  program
    .command('log-level')
    .description(
      "Show the local ambitd's log level, or set it (asks its admin API; setting needs the admin token,\n" +
        "<state-dir>/admin.token, readable only by the daemon's user).",
    )
    .addArgument(new Argument('[level]', 'new level').choices([...LOG_LEVELS]))
    .action(async (level: string | undefined, _o: unknown, cmd: Command) => {
      io.out(`${await logLevel(await adminTarget(globals(cmd)), level)}\n`);
    });

  registerCapture(program, io);
  return program;
}

interface EnrollOpts {
  service: string;
  namespace: string;
  node: string;
  address?: string[];
  ip?: string[];
  failMode?: FailMode;
  capture?: boolean;
  port?: number[];
  uid?: number;
  mode: MeshMode;
  upstream?: string[];
}

interface PolicyOpts {
  to: string;
  from?: string[];
  fromNamespace?: string[];
  fromPrincipal?: string[];
  port?: number[];
  name?: string;
}

export function exitCodeOf(err: unknown): number {
  if (err instanceof MeshFileError) return EXIT_MESH_INVALID;
  if (err instanceof AdminUnreachableError) return EXIT_UNREACHABLE;
  return EXIT_USER;
}

/** Runs the CLI; returns the exit code instead of exiting, so that it can be driven in-process. */
export async function run(argv: readonly string[], io: Io): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return EXIT_OK;
  } catch (err) {
    // Commander has already printed its own message (or the help).
    if (err instanceof CommanderError) return err.exitCode;
    if (err instanceof AmbitError) {
      io.err(`ambit: ${err.message}\n`);
      return exitCodeOf(err);
    }
    io.err(`ambit: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return EXIT_USER;
  }
}
