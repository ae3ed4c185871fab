// `ambit tap` and `ambit top`: what the local ambitd carries, live. tap streams the connection events of its
// admin API's /tap WebSocket (filtered there); top polls GET /connections and shows the busiest
// connections, by bytes per second between two polls, redrawn in place on a terminal.
import { type Command, Option } from 'commander';
import WebSocket from 'ws';
import type { ConnectionRow, TapEvent, TapFilter } from '../../lib/tap.js';
import { type AdminTarget, AdminUnauthorizedError, AdminUnreachableError, adminGet } from '../admin.js';
import { type Io, adminTarget, globals } from '../context.js';
import { table } from '../output.js';

interface FilterOpts {
  workload?: string;
  service?: string;
  to?: string;
  identity?: string;
  direction?: 'inbound' | 'outbound';
  status?: TapFilter['status'];
}

/** The admin API's query for a filter: only the fields set. */
export function filterQuery(o: FilterOpts): string {
  const q = new URLSearchParams();
  for (const k of ['workload', 'service', 'to', 'identity', 'direction', 'status'] as const) {
    const v = o[k];
    if (v !== undefined) q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

const who = (e: { workload?: string | undefined; addr?: string | undefined }): string =>
  e.workload ? `${e.workload}${e.addr ? ` (${e.addr})` : ''}` : (e.addr ?? 'unknown');

const bytes = (n: number): string =>
  n < 1024 ? `${n} B` : n < 1024 ** 2 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 ** 2).toFixed(1)} MiB`;

/** One line of `ambit tap` for an event. */
export function tapLine(e: TapEvent): string {
  const time = e.time.slice(11, 23);
  const head = `${time} ${e.status.padEnd(7)} ${e.direction.padEnd(8)} ${who(e.src)} -> ${who(e.dst)}`;
  const id = e.src.principal ? ` from ${e.src.principal}` : '';
  if (e.request) {
    const r = e.request;
    const via = [
      r.route && `route ${r.route}`,
      r.split && `split ${r.split}`,
      r.subset && `subset ${r.subset}`,
    ]
      .filter(Boolean)
      .join(', ');
    const flags = e.response_flags && e.response_flags !== '-' ? ` [${e.response_flags}]` : '';
    return `${head}${id} ${r.method ?? '-'} ${r.authority ?? ''}${r.path ?? ''} ${r.response_code}${flags}${via ? ` (${via})` : ''}, ${e.duration_ms ?? 0} ms`;
  }
  if (e.event === 'refused') return `${head}${id}: ${e.reason ?? ''} [${e.response_flags ?? ''}]`;
  if (e.event === 'opened') return `${head}${id} ${e.security}`;
  return `${head} ${bytes(e.bytes_sent ?? 0)} sent, ${bytes(e.bytes_received ?? 0)} received, ${e.duration_ms ?? 0} ms`;
}

/** Streams events until the daemon closes the tap, `count` events have come, or the process is stopped. */
export function tapStream(
  target: AdminTarget,
  o: FilterOpts,
  onEvent: (e: TapEvent) => void,
  count?: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const url = `ws://${target.admin}/tap${filterQuery(o)}`;
    const ws = new WebSocket(url, {
      headers: target.token ? { authorization: `Bearer ${target.token}` } : {},
      handshakeTimeout: 5000,
    });
    let seen = 0;
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (b: Buffer) => {
        body += b.toString();
      });
      res.on('end', () => {
        ws.terminate();
        if (res.statusCode === 401)
          reject(new AdminUnauthorizedError(target.admin, "no admin token: run as the daemon's user"));
        else
          reject(
            new AdminUnreachableError(target.admin, `GET /tap answered ${res.statusCode} ${body.trim()}`),
          );
      });
    });
    ws.on('error', (err) => reject(new AdminUnreachableError(target.admin, err.message)));
    ws.on('message', (data) => {
      onEvent(JSON.parse(String(data)) as TapEvent);
      if (count !== undefined && ++seen >= count) ws.close();
    });
    ws.on('close', (code, reason) => {
      if (code === 1008) reject(new AdminUnreachableError(target.admin, `the tap was dropped: ${reason}`));
      else resolve();
    });
  });
}

/** A row of `ambit top`: a connection and its rate since the previous poll. */
export interface TopRow {
  readonly row: ConnectionRow;
  readonly rate: number;
}

/** The busiest connections: bytes per second since `before` (a connection new since then: since it began). */
export function busiest(
  now: readonly ConnectionRow[],
  before: ReadonlyMap<number, ConnectionRow>,
  intervalMs: number,
  limit: number,
): TopRow[] {
  const total = (r: ConnectionRow): number => r.bytes_sent + r.bytes_received;
  return now
    .map((row) => {
      const prev = before.get(row.id);
      const span = prev ? intervalMs : Math.max(row.age_ms, 1);
      return { row, rate: ((total(row) - (prev ? total(prev) : 0)) * 1000) / span };
    })
    .sort((a, b) => b.rate - a.rate || b.row.age_ms - a.row.age_ms)
    .slice(0, limit);
}

export function topText(rows: readonly TopRow[], open: number): string {
  const head = `${open} connection(s) open\n`;
  if (!rows.length) return head;
  return (
    head +
    table(
      ['RATE', 'SENT', 'RECEIVED', 'AGE', 'DIRECTION', 'SOURCE', 'DESTINATION', 'SECURITY'],
      rows.map(({ row, rate }) => [
        `${bytes(Math.round(rate))}/s`,
        bytes(row.bytes_sent),
        bytes(row.bytes_received),
        `${Math.round(row.age_ms / 1000)}s`,
        row.direction,
        who(row.src),
        who(row.dst),
        row.security,
      ]),
    )
  );
}

const isRows = (v: unknown): v is ConnectionRow[] =>
  Array.isArray(v) && v.every((r) => typeof (r as ConnectionRow).id === 'number');

export async function fetchConnections(target: AdminTarget, o: FilterOpts): Promise<ConnectionRow[]> {
  const body = await adminGet(target, `/connections${filterQuery(o)}`);
  if (!isRows(body))
    throw new AdminUnreachableError(target.admin, 'GET /connections answered an unexpected shape');
  return body;
}

function filterOptions(cmd: Command): Command {
  return cmd
    .option('--workload <w>', 'only connections from or to this workload')
    .option('--service <s>', 'only connections from or to this service')
    .option('--to <s>', 'only connections to this service')
    .option('--identity <spiffe-id>', 'only connections from or to this identity')
    .addOption(new Option('--direction <d>', 'inbound or outbound').choices(['inbound', 'outbound']));
}

export function registerTap(program: Command, io: Io): void {
  filterOptions(
    program
      .command('tap')
      .description(
        'Stream the connections the local ambitd opens, closes and refuses (its admin API, /tap).',
      ),
  )
    .addOption(
      new Option('--status <s>', 'only events of this status').choices([
        'open',
        'closed',
        'reset',
        'refused',
      ]),
    )
    .option('--count <n>', 'stop after this many events', (v) => Number.parseInt(v, 10))
    .option('--json', 'one JSON object per event')
    .action(async (o: FilterOpts & { json?: boolean; count?: number }, cmd: Command) => {
      const target = await adminTarget(globals(cmd));
      await tapStream(
        target,
        o,
        (e) => io.out(o.json ? `${JSON.stringify(e)}\n` : `${tapLine(e)}\n`),
        o.count,
      );
    });

  filterOptions(
    program
      .command('top')
      .description('Show the busiest open connections of the local ambitd, refreshed in place.'),
  )
    .option('--interval <s>', 'seconds between refreshes', (v) => Number.parseFloat(v), 2)
    .option('--limit <n>', 'rows shown', (v) => Number.parseInt(v, 10), 20)
    .option('--once', 'print one table (rates since each connection began) and exit')
    .option('--json', 'with --once: the rows as JSON')
    .action(
      async (
        o: FilterOpts & { interval: number; limit: number; once?: boolean; json?: boolean },
        cmd: Command,
      ) => {
        const target = await adminTarget(globals(cmd));
        if (o.once) {
          const rows = await fetchConnections(target, o);
          const top = busiest(rows, new Map(), 0, o.limit);
          io.out(o.json ? `${JSON.stringify(top, null, 2)}\n` : topText(top, rows.length));
          return;
        }
        const tty = process.stdout.isTTY === true;
        let before = new Map<number, ConnectionRow>();
        const intervalMs = Math.max(0.2, o.interval) * 1000;
        for (;;) {
          const rows = await fetchConnections(target, o);
          const text = topText(busiest(rows, before, intervalMs, o.limit), rows.length);
          // On a terminal: redrawn in place; piped: one table per refresh.
          io.out(tty ? `\x1b[H\x1b[2J${text}` : `${text}\n`);
          before = new Map(rows.map((r) => [r.id, r]));
          await new Promise((r) => setTimeout(r, intervalMs));
        }
      },
    );
}
