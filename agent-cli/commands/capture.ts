// `ambit capture install|remove|show`: the iptables rules that send enrolled workloads' TCP to ambitd
// (15001 outbound, 15006 inbound plaintext). Run as root, on the host, before or after ambitd starts.
import { type Command, Option } from 'commander';
import { removeCapture, showCapture } from '../../lib/capture/iptables.js';
import { removeReplyRouting, showReplyRouting } from '../../lib/capture/reply-routing.js';
import { type CaptureOpts, backendFor, installFor, needRoot } from '../capture.js';
import { type Io, globals } from '../context.js';
import { jsonText } from '../output.js';

export function registerCapture(program: Command, io: Io): void {
  const capture = program
    .command('capture')
    .description(
      'Transparent capture: iptables rules (chains AMBIT_*) that send the TCP of the workloads enrolled on\n' +
        'this node to ambitd (outbound to 15001, plaintext inbound to 15006). Needs root.',
    );
  const common = (c: Command): Command =>
    c
      .option('--config <file>', "ambitd's config file (ports, mark, exclusions); env AMBIT_CONFIG")
      .addOption(
        new Option('--backend <backend>', 'iptables backend [default: auto-detected]').choices([
          'auto',
          'nft',
          'legacy',
        ]),
      );
  common(capture.command('install'))
    .description(
      "Install (or bring up to date) the rules for this node's workloads, from the mesh file. Idempotent.",
    )
    .option('--node <name>', 'node whose workloads to capture [default: ambitd node name, the host name]')
    .action(async (o: CaptureOpts, cmd: Command) => {
      needRoot('install');
      io.out(await installFor(globals(cmd), o));
    });
  common(capture.command('remove'))
    .description(
      'Remove every AMBIT_* chain and every jump to one, and the reply routing (ip rule, ip route) (IPv4 and IPv6).',
    )
    .action(async (o: CaptureOpts, cmd: Command) => {
      needRoot('remove');
      const backend = await backendFor(globals(cmd), o);
      const n = (await removeCapture(backend)) + (await removeReplyRouting(backend));
      io.out(
        n
          ? `capture removed (iptables ${backend}): ${n} chain(s) and jump(s)\n`
          : 'no capture rules installed\n',
      );
    });
  common(capture.command('show'))
    .description(
      'Print the capture rules installed now (the AMBIT_* part of iptables-save -t nat and -t mangle, and the reply routing).',
    )
    .option('--json', 'print {backend, families: [{family, lines}]} as JSON')
    .action(async (o: CaptureOpts & { json?: boolean }, cmd: Command) => {
      needRoot('show');
      const backend = await backendFor(globals(cmd), o);
      const shown = await showCapture(backend);
      const replies = await showReplyRouting(backend);
      if (o.json) return io.out(jsonText({ backend, families: shown, replyRouting: replies }));
      if (![...shown, ...replies].some((s) => s.lines.length))
        return io.out(`no capture rules installed (iptables ${backend})\n`);
      for (const s of shown) {
        io.out(`# IPv${s.family} (iptables ${backend}, table nat)\n`);
        io.out(s.lines.length ? `${s.lines.join('\n')}\n` : '# none\n');
      }
      for (const s of replies) {
        io.out(`# IPv${s.family} reply routing for the original source (table mangle, ip rule, ip route)\n`);
        io.out(s.lines.length ? `${s.lines.join('\n')}\n` : '# none\n');
      }
    });
}
