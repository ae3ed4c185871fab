// Just enough Markdown to check a page's links: its headings' anchors as GitHub makes them, and the
// targets of its inline links, with fenced code and code spans left out (a `#` or `](` there is code).

/** One inline link or image: where it points, and the line it is on (1-based). */
export interface MarkdownLink {
  readonly target: string;
  readonly line: number;
}

const FENCE = /^\s{0,3}(`{3,}|~{3,})/;

/** The page's lines with the lines of fenced code blocks (fences included) replaced by empty ones. */
function proseLines(text: string): string[] {
  let fence: string | undefined;
  return text.split('\n').map((line) => {
    const m = FENCE.exec(line);
    if (fence === undefined) {
      if (m) {
        fence = m[1]![0]!.repeat(m[1]!.length);
        return '';
      }
      return line;
    }
    if (m && m[1]!.startsWith(fence)) fence = undefined;
    return '';
  });
}

const withoutCodeSpans = (line: string): string => line.replace(/(`+)[^`]*?\1/g, '');

/** GitHub's anchor for a heading's text: lower case, punctuation dropped, spaces to hyphens. */
export function slug(heading: string): string {
  const text = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1') // a link's text stays, its target goes
    .toLowerCase();
  return text.replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');
}

/** Every anchor the page's headings make, duplicates numbered as GitHub numbers them (-1, -2, ...). */
export function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const line of proseLines(text)) {
    const m = /^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$/.exec(line);
    if (!m) continue;
    const base = slug(m[1]!);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

/** The targets of the page's inline links and images, outside code. */
export function links(text: string): MarkdownLink[] {
  const out: MarkdownLink[] = [];
  proseLines(text).forEach((raw, i) => {
    const line = withoutCodeSpans(raw);
    for (const m of line.matchAll(/!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) {
      out.push({ target: m[1]!, line: i + 1 });
    }
  });
  return out;
}

/** A link that leaves the repository (a scheme such as https: or mailto:, or a protocol-relative one). */
export const isExternal = (target: string): boolean => /^([a-z][a-z0-9+.-]*:|\/\/)/i.test(target);
