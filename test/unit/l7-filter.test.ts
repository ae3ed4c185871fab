import test from 'ava';
import { type Instance, compileFilter } from '../../lib/l7/index.js';

const inst: Instance = {
  id: 'api-1',
  address: '198.18.0.10',
  port: 8080,
  tags: ['canary', 'blue'],
  meta: { version: 'v2', 'app-tier': 'web', 'a.b': 'dotted' },
  nodeMeta: { zone: 'z1' },
  passing: true,
  node: 'n1',
};
const ok = (src: string): boolean => {
  const f = compileFilter(src);
  if (typeof f === 'string') throw new Error(f);
  return f.test(inst);
};
const err = (src: string): string => {
  const f = compileFilter(src);
  if (typeof f !== 'string') throw new Error(`compiled: ${src}`);
  return f;
};

test('== and != on strings and numbers', (t) => {
  t.true(ok('Service.Meta.version == "v2"'));
  t.false(ok('Service.Meta.version == "v1"'));
  t.true(ok('Service.Meta.version != "v1"'));
  t.true(ok('Service.Port == 8080'));
  t.true(ok('Node.Node == n1'));
  t.true(ok('Service.Meta.version==`v2`'));
});
test('a missing map key reads as the empty string', (t) => {
  t.false(ok('Service.Meta.missing == "v2"'));
  t.true(ok('Service.Meta.missing != "v2"'));
  t.true(ok('Service.Meta.missing is empty'));
});
test('in, not in, contains on lists, maps and strings', (t) => {
  t.true(ok('"canary" in Service.Tags'));
  t.false(ok('"green" in Service.Tags'));
  t.true(ok('"green" not in Service.Tags'));
  t.true(ok('Service.Tags contains "blue"'));
  t.true(ok('Service.Tags not contains "green"'));
  t.true(ok('"version" in Service.Meta'));
  t.true(ok('"v" in Service.Meta.version'));
  t.true(ok('Node.Meta.zone contains "1"'));
});
test('matches is an unanchored RE2 match', (t) => {
  t.true(ok('Service.Meta.version matches "^v[0-9]$"'));
  t.true(ok('Service.Meta.version matches "2"'));
  t.true(ok('Service.Meta.version not matches "^v1"'));
  t.true(ok('Service.Meta.version matches "(?i)V2"'));
});
test('is empty and is not empty', (t) => {
  t.false(ok('Service.Tags is empty'));
  t.true(ok('Service.Tags is not empty'));
  t.false(ok('Node.Meta is empty'));
});
test('and, or, not, parentheses and precedence', (t) => {
  t.true(ok('Service.Meta.version == "v2" and "canary" in Service.Tags'));
  t.false(ok('Service.Meta.version == "v1" and "canary" in Service.Tags'));
  t.true(ok('Service.Meta.version == "v1" or "canary" in Service.Tags'));
  // and binds tighter than or: false and false or true
  t.true(ok('Service.Port == 1 and Service.Port == 2 or Service.Port == 8080'));
  t.false(ok('Service.Port == 1 and (Service.Port == 2 or Service.Port == 8080)'));
  t.true(ok('not Service.Meta.version == "v1"'));
  t.false(ok('not (Service.Meta.version == "v2")'));
  t.true(ok('not not Service.Meta.version == "v2"'));
});
test('index syntax and dashes in map keys', (t) => {
  t.true(ok('Service.Meta["a.b"] == "dotted"'));
  t.true(ok('Service.Meta.app-tier == "web"'));
});
test('Checks selectors', (t) => {
  t.true(ok('"passing" in Checks.Status'));
  t.false(ok('Checks is empty'));
});
test('syntax errors name the position', (t) => {
  t.regex(err('Service.Meta.version = "v2"'), /at \d+/);
  t.regex(err('Service.Meta.version == '), /expected a value/);
  t.regex(err('(Service.Port == 1'), /expected "\)"/);
  t.regex(err('Service.Port == 1 Service.Port == 2'), /unexpected text/);
  t.regex(err('"x" in'), /expected a selector/);
  t.regex(err('Service.Meta.version == "v2'), /unterminated/);
  t.regex(err(''), /expected an expression/);
  t.regex(err('Service.Meta.version matches "(?=x)"'), /lookaround/);
});
test('unknown selectors and type mismatches are refused at compile', (t) => {
  t.regex(err('Service.Versions == "v2"'), /selector "Service.Versions" is not valid/);
  t.regex(err('Service.Port == "abc"'), /is a number/);
  t.regex(err('Service.Tags == "x"'), /apply to strings and numbers/);
  t.regex(err('Service.Tags matches "x"'), /applies to strings/);
  t.regex(err('Service.Port is empty'), /does not apply/);
});

test("Consul's documented bare-value form", (t) => {
  t.true(ok('Service.Meta.version == v2'));
  t.false(ok('Service.Meta.version == v1'));
});

test('string escapes: double quotes take Go escapes, backticks are raw', (t) => {
  const i2: Instance = { ...inst, meta: { q: 'a"b', bs: 'a\\b' } };
  const on = (src: string) => {
    const f = compileFilter(src);
    if (typeof f === 'string') throw new Error(f);
    return f.test(i2);
  };
  t.true(on('Service.Meta.q == "a\\"b"'));
  t.true(on('Service.Meta.bs == `a\\b`'));
  t.regex(err('Service.Meta.q == "a\\xb"'), /unknown escape/);
});
