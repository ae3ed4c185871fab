// `ambit policy allow|deny|list|remove|default`: L4 authorization, as mesh-file policies or Consul intentions.
import { Argument, type Command } from 'commander';
import type { ConsulIntention } from '../../lib/consul/intentions.js';
import { ConfigError, NotFoundError } from '../../lib/errors.js';
import { addPolicy, editMeshFile, removePolicy, setDefaultPolicy } from '../../lib/mesh/edit.js';
import type { Mesh, Policy, PolicyAction, PolicySource } from '../../lib/mesh/model.js';
import {
  checkObjectName,
  checkServiceName,
  flag,
  fmtSource,
  parsePort,
  parsePrincipal,
  parseServiceRef,
  repeatable,
} from '../args.js';
import {
  CONSUL_DEFAULT_POLICY_REFUSED,
  consulClient,
  consulIntentions,
  consulRemoveIntention,
  consulSetIntentions,
  intentionAction,
} from '../consul.js';
import { type Io, globals, meshPath, readMesh } from '../context.js';
import { jsonText, table } from '../output.js';

export interface PolicyOpts {
  to: string;
  from?: string[];
  fromNamespace?: string[];
  fromPrincipal?: string[];
  port?: number[];
  name?: string;
}

/** `--from '*'`: every source, said on purpose (a deny must say it; an allow without sources means it). */
export const EVERY_SOURCE = '*';

/**
 * The sources of `--from`, `--from-namespace` and `--from-principal`, in that order; `ns` is the
 * destination's. None is every source: an allow may mean it by giving none, a deny must say `--from '*'`
 * (a forgotten --from would otherwise deny everyone, silently), and `*` stands alone.
 */
export function policySources(o: PolicyOpts, ns: string, action: PolicyAction = 'allow'): PolicySource[] {
  const from = o.from ?? [];
  const count = from.length + (o.fromNamespace?.length ?? 0) + (o.fromPrincipal?.length ?? 0);
  if (from.includes(EVERY_SOURCE)) {
    if (count > 1) throw new ConfigError("--from '*' is every source: give it alone, without other sources");
    return [];
  }
  if (count === 0 && action === 'deny') {
    throw new ConfigError(
      "policy deny needs a source: pass --from '*' to deny every source, or name them with --from, " +
        '--from-namespace or --from-principal',
    );
  }
  return [
    ...from.map((f) => {
      const r = flag(`--from "${f}"`, () => parseServiceRef(f, ns, true));
      return { service: r.service, namespace: r.namespace, principal: undefined };
    }),
    ...(o.fromNamespace ?? []).map((n) => {
      flag(`--from-namespace "${n}"`, () => checkServiceName(n, 'namespace'));
      return { service: undefined, namespace: n, principal: undefined };
    }),
    ...(o.fromPrincipal ?? []).map((p) => ({ service: undefined, namespace: undefined, principal: p })),
  ];
}

/**
 * The services `p` names (destination, then sources) that no workload or services entry of `mesh` has, as
 * `svc.ns` (`svc.*` for a source of any namespace): a typo there is a rule that never matches.
 */
export function unknownServices(mesh: Pick<Mesh, 'services'>, p: Policy): string[] {
  const known = (service: string, namespace: string | undefined): boolean =>
    mesh.services.some((s) => s.name === service && (namespace === undefined || s.namespace === namespace));
  const out: string[] = [];
  if (!known(p.service, p.namespace)) out.push(`${p.service}.${p.namespace}`);
  for (const f of p.from) {
    if (f.service === undefined || known(f.service, f.namespace)) continue;
    const svc = `${f.service}.${f.namespace ?? '*'}`;
    if (!out.includes(svc)) out.push(svc);
  }
  return out;
}

/** The name a policy gets without --name, e.g. allow-web-to-api or deny-ns-ops-to-db.prod-5432. */
export function policyName(
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

/** `ambit policy list`'s output from the mesh file: the policies, then the default action. */
export function policiesText(
  mesh: Pick<Mesh, 'defaultPolicy' | 'policies'>,
  json: boolean | undefined,
): string {
  if (json) return jsonText({ defaultPolicy: mesh.defaultPolicy, policies: mesh.policies });
  const list = mesh.policies.length
    ? table(
        ['NAME', 'ACTION', 'TO', 'PORTS', 'FROM'],
        mesh.policies.map((p) => [
          p.name,
          p.action,
          `${p.service}.${p.namespace}`,
          p.ports.length ? p.ports.join(',') : '*',
          p.from.length ? p.from.map(fmtSource).join(' | ') : 'any',
        ]),
      )
    : 'no policies\n';
  return `${list}default: ${mesh.defaultPolicy} (when no policy matches)\n`;
}

/** `ambit policy list`'s output in Consul mode; `where` names the agent when there are no intentions. */
export function intentionsText(
  intentions: readonly ConsulIntention[],
  json: boolean | undefined,
  where: string,
): string {
  if (json) return jsonText(intentions);
  const list = intentions.length
    ? table(
        ['SOURCE', 'DESTINATION', 'ACTION', 'PRECEDENCE'],
        intentions.map((i) => [
          i.SourceName,
          i.DestinationName,
          intentionAction(i),
          String(i.Precedence ?? ''),
        ]),
      )
    : `no intentions (${where})\n`;
  return `${list}default: Consul's, or ambitd's defaultPolicy where set (when no intention matches)\n`;
}

function registerSet(policy: Command, io: Io, action: PolicyAction): void {
  policy
    .command(action)
    .description(
      `${action === 'allow' ? 'Allow' : 'Deny'} connections to a service (a deny wins over an allow).\n` +
        "Sources are ANDed within one flag and ORed across flags; --from '*' = every peer\n" +
        '(an allow with no source means it too; a deny must say it).\n' +
        'A --from without a namespace means that service in the destination namespace; svc.* means any namespace.\n' +
        'In Consul mode: one intention per source (none = *), decided in Consul precedence order;\n' +
        '--port, --name, --from-principal and namespaces other than default are refused.',
    )
    .requiredOption('--to <svc[.ns]>', 'destination service')
    .option(
      '--from <svc[.ns]>',
      "source service (repeatable); '*' = every source (a deny needs a source)",
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
      const from = policySources(o, ns, action);
      const ports = [...new Set(o.port ?? [])];
      const consul = consulClient(globals(cmd));
      if (consul) {
        const req = { to: { service: to.service, namespace: ns }, from, ports, name: o.name };
        const changes = await consulSetIntentions(consul, action, req);
        for (const c of changes)
          io.out(`${c.existed ? 'updated' : 'added'} intention ${c.source}->${c.destination}: ${c.action}\n`);
        return;
      }
      const name = o.name ?? policyName(action, { service: to.service, namespace: ns }, from, ports);
      flag(`policy name "${name}"`, () => checkObjectName(name, 'policy name'));
      const p: Policy = { name, action, service: to.service, namespace: ns, ports, from };
      let existed = false;
      const mesh = await editMeshFile(meshPath(globals(cmd)), (doc) => {
        existed = addPolicy(doc, p);
      });
      const src = from.length ? from.map(fmtSource).join(' or ') : 'any peer';
      const portTxt = ports.length ? ` port ${ports.join(',')}` : '';
      io.out(
        `${existed ? 'updated' : 'added'} policy ${name}: ${action} ${src} -> ${to.service}.${ns}${portTxt}\n`,
      );
      for (const svc of unknownServices(mesh, p)) {
        io.err(
          `ambit: warning: policy ${name} names service ${svc}, which the mesh does not know (no workload ` +
            'or services entry has it); it takes effect once one does\n',
        );
      }
    });
}

function registerPolicyList(policy: Command, io: Io): void {
  policy
    .command('list')
    .description('List policies and the default action.')
    .option('--json', 'print {defaultPolicy, policies} as JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const consul = consulClient(globals(cmd));
      if (consul)
        return io.out(intentionsText(await consulIntentions(consul), o.json, `Consul at ${consul.address}`));
      io.out(policiesText(await readMesh(globals(cmd)), o.json));
    });
}

function registerPolicyRemove(policy: Command, io: Io): void {
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
}

function registerPolicyDefault(policy: Command, io: Io): void {
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
}

export function registerPolicy(program: Command, io: Io): void {
  const policy = program
    .command('policy')
    .description('Manage L4 authorization policy (enforced by the destination node).');
  for (const action of ['allow', 'deny'] as const) registerSet(policy, io, action);
  registerPolicyList(policy, io);
  registerPolicyRemove(policy, io);
  registerPolicyDefault(policy, io);
}
