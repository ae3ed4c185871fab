// `ambit route explain`: what a waypoint would do with one request (routes, split, target, endpoints,
// load balancer, the policies it meets, L7 intentions), from the same sources the daemon reads: the mesh file, or Consul.
// Exit codes: 0 routed, 1 refused (403) or no route (503), 2 a usage error or an invalid mesh file.
import { type Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { spiffeId } from '../../daemon/identity/spiffe.js';
import { AmbitError } from '../../lib/errors.js';
import type { PolicyAction } from '../../lib/mesh/model.js';
import { checkServiceName, parsePrincipal, parseServiceRef, repeatable } from '../args.js';
import { consulClient } from '../consul.js';
import { type Io, globals } from '../context.js';
import { jsonText } from '../output.js';
import { type ExplainRequest, chainServices, explain } from '../route-explain.js';
import { explanationText } from '../route-text.js';
import { type RouteView, consulView, meshFileView } from '../route-view.js';

const EXIT_USAGE = 2;
/** The trust domain a service-name --source is given (ambitd's default); L7 intentions compare names only. */
const TRUST_DOMAIN = 'ambit.local';

interface ExplainOpts {
  service: string;
  namespace: string;
  path: string;
  method: string;
  header?: [string, string][];
  query?: [string, string][];
  source?: string;
  json?: boolean;
  datacenter?: string;
  defaultPolicy?: PolicyAction;
}

function pair(what: string): (v: string) => [string, string] {
  return (v) => {
    const eq = v.indexOf('=');
    if (eq <= 0) throw new InvalidArgumentError(`must be ${what}=value.`);
    return [v.slice(0, eq), v.slice(eq + 1)];
  };
}

function parsePath(v: string): string {
  if (!v.startsWith('/')) throw new InvalidArgumentError('must start with "/".');
  return v;
}

/** A SPIFFE ID as the client's certificate carries it, or `svc[.ns]` standing for that service's. */
function parseSource(v: string, datacenter: string): { given: string; id: string } {
  if (v.startsWith('spiffe://')) return { given: v, id: parsePrincipal(v) };
  const ref = parseServiceRef(v);
  const id = spiffeId({
    trustDomain: TRUST_DOMAIN,
    namespace: ref.namespace!,
    datacenter,
    service: ref.service,
  });
  return { given: v, id };
}

function requestOf(o: ExplainOpts, datacenter: string): ExplainRequest {
  const headers: Record<string, string | string[]> = {};
  for (const [k, v] of o.header ?? []) {
    const name = k.toLowerCase();
    const had = headers[name];
    headers[name] = had === undefined ? v : [...(typeof had === 'string' ? [had] : had), v];
  }
  // Query parameters are matched undecoded, as the waypoint reads them off the request line.
  const query = (o.query ?? []).map(([k, v]) => `${k}=${v}`).join('&');
  const path = query ? `${o.path}${o.path.includes('?') ? '&' : '?'}${query}` : o.path;
  return {
    service: o.service,
    namespace: o.namespace,
    method: o.method.toUpperCase(),
    path,
    headers,
    source: o.source === undefined ? undefined : parseSource(o.source, datacenter),
  };
}

/** Printed after the explanation; exit 1, as the CLI exits for any refusal. */
const notRouted = (status: number, reason: string): AmbitError =>
  new AmbitError(status === 403 ? 'AMBIT_DENIED' : 'AMBIT_NO_ENDPOINT', `not routed: ${status} ${reason}`);

async function viewOf(cmd: Command, o: ExplainOpts): Promise<RouteView> {
  const g = globals(cmd);
  const client = consulClient(g);
  if (!client) {
    if (o.defaultPolicy)
      cmd.error('ambit: --default-policy: only in Consul mode; the mesh file sets its own defaultPolicy', {
        exitCode: EXIT_USAGE,
      });
    return meshFileView(g, o.datacenter ?? 'dc1');
  }
  try {
    if (o.namespace !== 'default')
      cmd.error(`ambit: --namespace "${o.namespace}": Consul CE has no namespaces; use "default"`, {
        exitCode: EXIT_USAGE,
      });
    return await consulView(
      client,
      o.service,
      (mesh) => chainServices(mesh, o.service, o.namespace, o.datacenter ?? 'dc1'),
      { defaultPolicy: o.defaultPolicy, datacenter: o.datacenter },
    );
  } finally {
    client.close();
  }
}

function registerExplain(route: Command, io: Io): void {
  route
    .command('explain')
    .summary('Explain what a waypoint would do with one request to a service.')
    .description(
      'Explain what a waypoint would do with one request to a service: the routes\n' +
        'of its service-router tried and why each does or does not match, the route\n' +
        "chosen, the split (every leg, by weight), the resolver's target and subset\n" +
        '(redirects and failover followed), the endpoints the subset selects and which\n' +
        'are healthy, the load balancer, the policies the request meets (timeouts,\n' +
        'fault, rate limit, limits and outlier ejection, retries, mirror), and the\n' +
        'L7 intention decision for --source.\n' +
        'Reads the mesh file or, with --consul, Consul, as ambitd does.\n\n' +
        'Exit codes: 0 routed, 1 refused (403) or no route (503),\n' +
        '2 usage error or invalid mesh file.',
    )
    .requiredOption('--service <name>', 'the service the request is for', (v) => checkServiceName(v))
    .option('--namespace <ns>', 'its namespace', (v) => checkServiceName(v, 'namespace'), 'default')
    .requiredOption('--path <path>', 'the request path, e.g. /v2/x (a query string may follow)', parsePath)
    .option('--method <method>', 'the request method', 'GET')
    .option('--header <name=value>', 'a request header (repeatable)', repeatable(pair('name')))
    .option('--query <name=value>', 'a query parameter (repeatable)', repeatable(pair('name')))
    .option(
      '--source <id>',
      "the client: a SPIFFE ID, or a service name (svc or svc.ns) standing for its workloads' identity",
    )
    .option('--datacenter <dc>', "ambitd's datacenter  [default: dc1, or the Consul agent's]")
    .addOption(
      new Option(
        '--default-policy <policy>',
        "Consul mode: ambitd's defaultPolicy setting, when it sets one",
      ).choices(['allow', 'deny']),
    )
    .option('--json', 'print the explanation as JSON')
    .exitOverride((err) => {
      // Help and version exit 0; every other complaint of commander's is a usage error.
      throw err.exitCode === 0 ? err : new CommanderError(EXIT_USAGE, err.code, err.message);
    })
    .action(async (o: ExplainOpts, cmd: Command) => {
      let req: ExplainRequest;
      try {
        req = requestOf(o, o.datacenter ?? 'dc1');
      } catch (err) {
        if (!(err instanceof InvalidArgumentError)) throw err;
        return cmd.error(`ambit: --source: ${err.message}`, { exitCode: EXIT_USAGE });
      }
      const view = await viewOf(cmd, o);
      const x = explain(view, req);
      io.out(o.json ? jsonText(x) : explanationText(x));
      if (!x.verdict.routed) throw notRouted(x.verdict.status, x.verdict.reason);
    });
}

export function registerRoute(program: Command, io: Io): void {
  const route = program
    .command('route')
    .description("Ask how a waypoint routes requests by the mesh's L7 config entries.");
  registerExplain(route, io);
}
