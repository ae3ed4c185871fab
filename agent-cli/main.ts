#!/usr/bin/env node
import { run } from './cli.js';

const code = await run(process.argv.slice(2), {
  out: (s) => process.stdout.write(s),
  err: (s) => process.stderr.write(s),
});
// Not process.exit(): that could cut off output still queued for a pipe.
process.exitCode = code;
