// L7 at the waypoint in Consul mode: the routing suite of test/helpers/l7-routing.ts, from the same
// config entries written to Consul's /v1/config and the workloads registered in its catalog (the emulator,
// or a real agent when one is on PATH).
import anyTest, { type TestFn } from 'ava';
import { type L7World, routingSuite, startConsulWorld } from '../helpers/l7-routing.js';

const test = anyTest as TestFn<L7World>;

test.before(async (t) => {
  t.context = await startConsulWorld();
});

test.after.always(async (t) => {
  await t.context?.close?.();
});

routingSuite(test);
