/*
 * The tunnel's HTTP/2 (h2.c) as the rest of the binding sees it: the hooks conn.c and tls_records.c call
 * on a tunnel connection or a spliced workload connection, the session's creation, and what the entry
 * points JavaScript calls (napi_h2.c) work on: the session and its streams.
 */
#ifndef AMBIT_H2_H
#define AMBIT_H2_H

#include <nghttp2/nghttp2.h>
#include <stdint.h>

#include "conn.h"

/* A JavaScript writer is told to wait above this much in its stream's buffer. */
#define STREAM_HIGH (64 * 1024)
extern const uint8_t KEEPALIVE_PING[8];

typedef struct strm strm_t;

struct splice {
  conn_t *tls, *plain;
  uint32_t sid;
  int closed;    /* nghttp2 closed the stream: nothing more either way */
  int want_read; /* the data provider waits for the workload's socket to be readable */
  int drained;   /* the last read came back short: the socket is empty until the poll says otherwise */
  uint64_t skip; /* queued by JavaScript before the splice: already credited there */
  splice_t *next, *prev;
};

/* A stream's glue state: nghttp2's stream user data. */
struct strm {
  uint32_t sid;
  splice_t *splice;
  int spliced;  /* was joined to a workload: its DATA never goes to JavaScript */
  int deferred; /* the data provider returned DEFERRED: nghttp2_session_resume_data wakes it */
  int room;     /* deferred until the TLS queue drains */
  int has_prd;  /* a data provider serves this stream (it was opened or answered with a body) */
  int out_end;  /* JavaScript ended its side: END_STREAM after out */
  int told_full;
  int unsent;    /* a request nghttp2 has not opened a stream for yet */
  int rst_after; /* a refusal: RST_STREAM NO_ERROR once its END_STREAM HEADERS are out (RFC 9113 §8.1) */
  unsigned char *out; /* JavaScript's bytes not yet framed */
  size_t out_off, out_len, out_cap;
  strm_t *next, *prev;
};

struct h2 {
  conn_t *c;
  nghttp2_session *ng;
  int server;
  uint32_t max_header_list, max_header_frames, max_window, local_window;
  double reset_rate;
  int in_ng;   /* inside nghttp2 (mem_recv, send): neither is re-entered */
  int pumping; /* inside pump(): a drain or a credit asks for one more round */
  int want_send;
  int blocked; /* frames wait for the TLS queue to drain (h2_drained) */
  int dead; /* the connection closed while inside nghttp2: freed on the way out */
  int failed;
  int told;
  uint32_t err_code;
  const char *reason;
  char msg[160];
  int last_lib_err;
  /* Rapid Reset: a token bucket of RST_STREAM frames received */
  double rst_tokens;
  uint64_t rst_ms;
  /* the header block being received */
  uint32_t block_frames, hb_sid;
  size_t hb_bytes;
  int hb_over, strikes;
  unsigned char *hb;
  size_t hb_len, hb_cap;
  /* BDP sample: a PING in flight and the DATA bytes received since */
  int bdp_inflight;
  uint64_t bdp_bytes, bdp_next_ms;
  /* DATA being framed: where read_callback left its payload for send_data_callback */
  const unsigned char *src;
  strm_t *src_strm;
  splice_t *src_splice;
  splice_t *splices;
  strm_t *strms;
  uint32_t nstrms;
  uint32_t *room;
  size_t nroom, room_cap;
  /* events raised while nghttp2 sends, told once the frames are sealed */
  struct post {
    uint32_t sid, what;
    conn_t *plain;
  } *post;
  size_t npost, post_cap;
};

strm_t *get_strm(h2_t *h, uint32_t sid);
strm_t *new_strm(h2_t *h, uint32_t sid); /* a request's, before nghttp2 gives it an id */
void free_strm(h2_t *h, strm_t *st);
/* Every stream's data provider: JavaScript's buffered bytes, or a spliced workload's socket. */
ssize_t on_read(nghttp2_session *ng, int32_t sid, uint8_t *buf, size_t length, uint32_t *flags,
                nghttp2_data_source *src, void *ud);
void resume(h2_t *h, strm_t *st); /* the stream's data provider has something again */
int pump(h2_t *h);                /* frames out, as many as the TLS queue takes */
splice_t *splice_join(h2_t *h, strm_t *st, conn_t *p); /* NULL: they cannot be joined now */

int h2_input(conn_t *c, const unsigned char *p, size_t n); /* 0: the connection is gone */
int h2_sync(conn_t *c);                                    /* the batch's end: spliced bytes out, frames sent */
void h2_free(conn_t *c);                                   /* the tunnel connection closes */
void h2_drained(conn_t *c);                                /* its send queue emptied */
void splice_read(conn_t *p);                               /* a spliced workload socket is readable */
void splice_sent(conn_t *p, size_t n);                     /* n bytes left its queue for the kernel */
void splice_free(conn_t *p);                               /* the workload connection closes or ends */
int splice_waiting(conn_t *p);                             /* not to be read for now */
void ambit_h2_init(napi_env env, napi_value exports);
h2_t *h2_create(conn_t *c, int server, const double *options); /* h2Enable's work (and the fuzz target's) */

#endif
