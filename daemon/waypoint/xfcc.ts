// The original client's identity as a waypoint hands it on: Envoy's x-forwarded-client-cert, with the
// two elements a SPIFFE mesh needs (`By`: the waypoint that proved the client, `URI`: the client's SPIFFE
// ID). A destination believes it only from a peer that proved it is the service's waypoint.

export const XFCC = 'x-forwarded-client-cert';

/** `By=<waypoint>;URI=<client>`, as Envoy spells it (values quoted only when they need it). */
export const formatXfcc = (by: string, client: string): string => `By=${quote(by)};URI=${quote(client)}`;

const quote = (v: string): string => (/[;,="]/.test(v) ? `"${v.replace(/"/g, '\\"')}"` : v);

/**
 * The client's SPIFFE ID in an x-forwarded-client-cert value: the `URI` of its last element (the hop
 * nearest to us appends last). Undefined when there is none or it is not a SPIFFE ID.
 */
export function xfccClient(value: string | undefined): string | undefined {
  if (!value) return undefined;
  const elements = splitOutside(value, ',');
  const last = elements[elements.length - 1];
  if (last === undefined) return undefined;
  for (const pair of splitOutside(last, ';')) {
    const eq = pair.indexOf('=');
    if (eq < 0) continue;
    if (pair.slice(0, eq).trim().toLowerCase() !== 'uri') continue;
    let v = pair.slice(eq + 1).trim();
    if (v.startsWith('"') && v.endsWith('"') && v.length >= 2) v = v.slice(1, -1).replace(/\\"/g, '"');
    return v.startsWith('spiffe://') ? v : undefined;
  }
  return undefined;
}

/** Splits on `sep` outside double quotes. */
function splitOutside(s: string, sep: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '\\' && quoted && i + 1 < s.length) {
      cur += c + s[i + 1];
      i++;
      continue;
    }
    if (c === '"') quoted = !quoted;
    if (c === sep && !quoted) {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  return out;
}
