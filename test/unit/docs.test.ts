import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { anchors, isExternal, links, slug } from '../helpers/markdown.js';

// The README and docs/ are what a user reads first: a link that leads nowhere is a bug, and so is a README
// that has grown back into a manual.

/** The checkout: the nearest directory above this file with a package.json (dist/test/... or test/...). */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('no package.json above the test');
    dir = up;
  }
  return dir;
}

const root = repoRoot();
const README_MAX_LINES = 260;

const pages = (): string[] => [
  'README.md',
  ...readdirSync(join(root, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => `docs/${f}`),
  ...(existsSync(join(root, 'bench/NOTES.md')) ? ['bench/NOTES.md'] : []),
];

const read = (page: string): string => readFileSync(join(root, page), 'utf8');

test('slugs are the anchors GitHub gives headings', (t) => {
  t.is(slug('How a connection travels'), 'how-a-connection-travels');
  t.is(slug('Authorization (L4)'), 'authorization-l4');
  t.is(slug('The tunnel (HBONE)'), 'the-tunnel-hbone');
  t.is(slug("Node's heap headroom"), 'nodes-heap-headroom');
  t.is(slug('HTTP/2 on nghttp2'), 'http2-on-nghttp2');
  t.is(slug('The CLI: `ambit`'), 'the-cli-ambit');
  t.is(slug('2026-12-01: HTTP/2, with the limits'), '2026-12-01-http2-with-the-limits');
  t.is(slug('A [linked](x.md) snake_case title'), 'a-linked-snake_case-title');
  t.deepEqual(
    [...anchors('# A\n\n```sh\n# not a heading\n```\n## A\n### B ###\n')],
    ['a', 'a-1', 'b'],
    'code blocks make no headings, repeats are numbered, closing #s are dropped',
  );
});

test('links are read from prose only, not from code', (t) => {
  const text = 'See [x](a.md#b) and ![c](d.svg "t").\n`[no](code.md)`\n```\n[no](fence.md)\n```';
  t.deepEqual(
    links(text).map((l) => [l.target, l.line]),
    [
      ['a.md#b', 1],
      ['d.svg', 1],
    ],
  );
  t.true(isExternal('https://example.com'));
  t.true(isExternal('mailto:a@b'));
  t.false(isExternal('docs/tunnel.md'));
  t.false(isExternal('#anchor'));
});

test('every relative link in README.md and docs/ leads to a file, and every #anchor to a heading', (t) => {
  const broken: string[] = [];
  const anchorsOf = new Map<string, Set<string>>();
  const headingsOf = (page: string): Set<string> => {
    let a = anchorsOf.get(page);
    if (!a) {
      a = anchors(read(page));
      anchorsOf.set(page, a);
    }
    return a;
  };
  let checked = 0;
  for (const page of pages()) {
    for (const { target, line } of links(read(page))) {
      if (isExternal(target)) continue;
      checked++;
      const hash = target.indexOf('#');
      const path = decodeURIComponent(hash < 0 ? target : target.slice(0, hash));
      const anchor = hash < 0 ? '' : decodeURIComponent(target.slice(hash + 1));
      const file = path === '' ? join(root, page) : resolve(root, dirname(page), path);
      const rel = relative(root, file);
      const where = `${page}:${line}: ${target}`;
      if (rel.startsWith('..')) {
        broken.push(`${where} leaves the repository`);
        continue;
      }
      if (!existsSync(file)) {
        broken.push(`${where}: no such file`);
        continue;
      }
      if (anchor && statSync(file).isFile() && rel.endsWith('.md') && !headingsOf(rel).has(anchor)) {
        broken.push(`${where}: ${rel} has no heading #${anchor}`);
      }
    }
  }
  t.true(checked > 50, `only ${checked} links found: is the link reader broken?`);
  t.deepEqual(broken, []);
});

test('every page in docs/ is linked from the README', (t) => {
  const linked = new Set(
    links(read('README.md'))
      .filter((l) => !isExternal(l.target))
      .map((l) => l.target.split('#')[0]),
  );
  const orphans = pages().filter((p) => p.startsWith('docs/') && !linked.has(p));
  t.deepEqual(orphans, []);
});

test(`the README stays a first page: at most ${README_MAX_LINES} lines`, (t) => {
  const lines = read('README.md').replace(/\n$/, '').split('\n').length;
  t.true(lines <= README_MAX_LINES, `README.md has ${lines} lines; move the detail into docs/`);
});
