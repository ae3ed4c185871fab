// The most requests per second: wrk, one thread, a fixed number of keep-alive connections for a fixed
// time, each request a POST with a 1 KiB body (a Lua script), its figures read from the script's done().

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { commandLine, startProcess, stopProcess, which } from '../proc.js';
import { BODY_SIZE } from './http1.js';

export const wrkBin = (): string | undefined => which('wrk');

export const wrkVersion = (): string => {
  const bin = wrkBin();
  return bin ? (commandLine(bin, ['-v'], /^wrk /)?.replace(/ \[.*$/, '') ?? 'wrk') : 'missing';
};

export interface WrkResult {
  requests: number;
  seconds: number;
  rps: number;
  /** Socket errors (connect, read, write, timeout) and responses that were not 2xx/3xx. */
  errors: number;
  errorDetail: { connect: number; read: number; write: number; timeout: number; status: number };
  /** wrk's own latency percentiles under that load (closed loop: not coordinated-omission free). */
  p50us: number;
  p99us: number;
}

const MARK = 'WRK-RESULT ';

const script = (): string =>
  [
    'wrk.method = "POST"',
    `wrk.body = string.rep("x", ${BODY_SIZE})`,
    'wrk.headers["Content-Type"] = "application/octet-stream"',
    'done = function(summary, latency, requests)',
    '  local e = summary.errors',
    `  io.write(string.format('${MARK}{"requests":%d,"durationUs":%d,"connect":%d,"read":%d,"write":%d,` +
      `"status":%d,"timeout":%d,"p50us":%d,"p99us":%d}\\n',`,
    '    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,',
    '    latency:percentile(50), latency:percentile(99)))',
    'end',
    '',
  ].join('\n');

/** Writes the Lua script once into `dir`; returns its path. */
export async function writeWrkScript(dir: string): Promise<string> {
  const file = join(dir, 'post-1k.lua');
  await writeFile(file, script());
  return file;
}

export async function runWrk(
  port: number,
  opts: { conns: number; seconds: number; script: string },
): Promise<WrkResult> {
  const bin = wrkBin();
  if (!bin) throw new Error('wrk is not installed');
  const args = [
    '-t1',
    `-c${opts.conns}`,
    `-d${opts.seconds}s`,
    '--timeout',
    '5s',
    '-s',
    opts.script,
    `http://127.0.0.1:${port}/`,
  ];
  const p = startProcess('wrk', bin, args);
  // wrk stops itself after -d; the timer only guards against a hang.
  const timer = setTimeout(() => void stopProcess(p, 1000), (opts.seconds + 15) * 1000);
  const status = await p.exited;
  clearTimeout(timer);
  const line = p
    .output()
    .split('\n')
    .find((l) => l.startsWith(MARK));
  if (status !== 'code 0' || !line) throw new Error(`wrk ${args.join(' ')}: ${status}\n${p.output()}`);
  const r = JSON.parse(line.slice(MARK.length)) as {
    requests: number;
    durationUs: number;
    connect: number;
    read: number;
    write: number;
    status: number;
    timeout: number;
    p50us: number;
    p99us: number;
  };
  const seconds = r.durationUs / 1e6;
  const errorDetail = {
    connect: r.connect,
    read: r.read,
    write: r.write,
    timeout: r.timeout,
    status: r.status,
  };
  return {
    requests: r.requests,
    seconds: Math.round(seconds * 1000) / 1000,
    rps: seconds > 0 ? Math.round(r.requests / seconds) : 0,
    errors: r.connect + r.read + r.write + r.timeout + r.status,
    errorDetail,
    p50us: r.p50us,
    p99us: r.p99us,
  };
}
