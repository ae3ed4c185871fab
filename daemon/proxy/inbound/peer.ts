// The peer an HBONE session's client certificate names, read once per session: the inbound proxy and the
// waypoint both ask for it on every stream, and the certificate does not change under a session.
import { uriSans } from '../../identity/spiffe.js';
import type { Peer } from '../../rbac.js';
import type { H2Session } from '../h2/session.js';
import { peerFromUris } from './decide.js';

const peerOf = new WeakMap<H2Session, Peer | null>();

/** The session's peer: its certificate's first SPIFFE ID, or undefined when it names none. */
export function sessionPeer(session: H2Session): Peer | undefined {
  let peer = peerOf.get(session);
  if (peer === undefined) {
    const cert = session.socket.peerCertificate;
    peer = peerFromUris(cert ? uriSans(cert) : []) ?? null;
    peerOf.set(session, peer);
  }
  return peer ?? undefined;
}
