// L7 at the waypoint in embedded mode: the routing suite of test/helpers/l7-routing.ts with the config
// entries in the mesh file's configEntries, as every daemon reads them.
import anyTest, { type TestFn } from 'ava';
import { type L7World, routingSuite, startFileWorld } from '../helpers/l7-routing.js';

const test = anyTest as TestFn<L7World>;

test.before(async (t) => {
  t.context = await startFileWorld();
});

test.after.always(async (t) => {
  await t.context?.close?.();
});

routingSuite(test);
