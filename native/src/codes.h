/*
 * The numbers and names the binding and its JavaScript side share: the one place they are written.
 * native/gen-codes.mjs turns this file into daemon/native/codes.ts (the native build runs it; the output
 * is committed, and test/native-codes.test.ts fails when the two differ). The generator reads only what
 * is below: `#define NAME value` with an integer or a string and a comment after it, the comment lines
 * between them, and the one enum h2_option. Keep to that shape.
 */
#ifndef AMBIT_CODES_H
#define AMBIT_CODES_H

/* Events to a connection's JavaScript owner: dispatch(owner, event, a, b, c, d). */
#define EV_SECURE 1       /* the handshake is done: peerCertDer | undefined, alpn */
#define EV_DATA 2         /* offset, length in the current slab */
#define EV_END 3          /* the peer's end (close_notify or FIN) */
#define EV_DRAIN 4        /* the send queue JavaScript was told of emptied */
#define EV_CLOSE 5        /* errorMessage | undefined, bytes the splice read, bytes it wrote, reason | undefined */
#define EV_STREAM 6       /* tunnel: stream id, what happened to it (STREAM_*) */
#define EV_BDP 7          /* tunnel: DATA bytes received during one PING round trip, a reader is behind */
#define EV_H2_ERROR 8     /* tunnel: HTTP/2 error code, message, refusal reason (the session is over) */
#define EV_DATA_COPY 9    /* a Buffer of its own (a frame too large for the slab) */
#define EV_H2_HEADERS 10  /* tunnel: stream id, [name, value, ...], END_STREAM */
#define EV_H2_DATA 11     /* tunnel: stream id, a Buffer (a stream that is not spliced) */
#define EV_H2_GOAWAY 12   /* tunnel: the peer's GOAWAY: code, last stream id */
#define EV_H2_SETTINGS 13 /* tunnel: the peer's SETTINGS: its SETTINGS_MAX_CONCURRENT_STREAMS */
#define EV_H2_PING 14     /* tunnel: the ACK of our keepalive PING */

/* EV_STREAM's second argument: what happened to the stream. */
#define STREAM_REMOTE_END 1  /* the peer's END_STREAM (a spliced stream's workload gets FIN after its data) */
#define STREAM_LOCAL_END 2   /* a spliced workload's FIN: END_STREAM sent */
#define STREAM_DRAINED 3     /* JavaScript's writes on the stream went out: it may write more */
#define STREAM_CLOSED 0x100  /* + the error code: nghttp2 closed the stream (RST_STREAM either way, or both ends) */

/* The refusal reasons the binding closes a connection or a session with (EV_CLOSE, EV_H2_ERROR). */
#define REASON_TLS_RECORD "tls_record"                   /* a record that fails: MAC, size, type, message */
#define REASON_TLS_KEYUPDATE_FLOOD "tls_keyupdate_flood" /* KeyUpdates over the rate */
#define REASON_TLS_ALERT "tls_alert"                     /* the peer's fatal alert */
#define REASON_H2_PROTOCOL "h2_protocol"                 /* any other HTTP/2 error */
#define REASON_H2_RESET_FLOOD "h2_reset_flood"           /* RST_STREAM over the stream reset rate */
#define REASON_H2_CONTROL_FLOOD "h2_control_flood"       /* PING/SETTINGS answers queued for a peer that does not read */
#define REASON_H2_HEADER_FLOOD "h2_header_flood"         /* too many CONTINUATION frames, oversized header blocks */

/* KeyUpdates a second a peer may send when the context says nothing (the contract's keyUpdateRate). */
#define KEY_UPDATE_RATE 10 /* a token bucket, burst 10x */

/* h2Enable's options: an array of numbers in this order. */
enum h2_option {
  H2_OPT_MAX_CONCURRENT_STREAMS, /* SETTINGS_MAX_CONCURRENT_STREAMS, ours and the peer's until it says */
  H2_OPT_STREAM_WINDOW,          /* SETTINGS_INITIAL_WINDOW_SIZE at the start */
  H2_OPT_MAX_STREAM_WINDOW,      /* how far the stream window may grow (BDP) */
  H2_OPT_CONNECTION_WINDOW,      /* the connection's receive window */
  H2_OPT_MAX_FRAME_SIZE,         /* SETTINGS_MAX_FRAME_SIZE */
  H2_OPT_MAX_HEADER_LIST_SIZE,   /* SETTINGS_MAX_HEADER_LIST_SIZE, and decoded header bytes per block */
  H2_OPT_MAX_HEADER_FRAMES,      /* HEADERS + CONTINUATION frames per header block */
  H2_OPT_STREAM_RESET_RATE,      /* RST_STREAM received a second (burst 10x) */
  H2_OPT_MAX_OUTBOUND_CONTROL,   /* PING/SETTINGS answers queued for a peer that does not read */
  H2_OPT_COUNT
};

#endif
