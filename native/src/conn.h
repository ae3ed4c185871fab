/*
 * A connection the binding reads and writes itself (tls.c): a tunnel's TLS connection, or a workload's plain
 * TCP one. Shared by tls.c (sockets, records, JavaScript events) and h2.c (the tunnel's HTTP/2 on nghttp2,
 * whose DATA path joins a workload's socket to a tunnel stream without JavaScript).
 */
#ifndef AMBIT_CONN_H
#define AMBIT_CONN_H

#include <node_api.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "codes.h"
#include "record.h"

/* What one 'data' event carries at most, and what one recv() reads. */
#define READ_BATCH (256 * 1024)
#define SOCKET_READ (256 * 1024)
/* Below this much room left in the slab, a new one is asked for (more than a record's plaintext). */
#define SLAB_MIN (REC_MAX_PLAIN * 2)

typedef struct h2 h2_t;
typedef struct splice splice_t;

typedef struct conn {
  napi_env env;
  napi_ref owner;
  napi_ref ctx; /* a TLS connection's context: its SNI callback needs it until the end */
  SSL *ssl;
  int fd;
  int server;
  int state;
  int paused;
  int read_eof;  /* the peer's close_notify or FIN */
  int ending;    /* end() asked: close_notify and FIN once the queue is out */
  int fin_sent;
  int events;    /* what the poll watches now */
  int need_drain;
  int closing;   /* uv_close requested */
  char *err;     /* why it closed, delivered with the close event */
  char *out;
  size_t out_off, out_len, out_cap;
  char *in; /* ciphertext read from the socket, not yet opened */
  size_t in_off, in_len;
  int plain;                    /* a plain TCP connection (a workload's): no TLS at all */
  int records;                  /* the handshake is done: records are ours (c->rec), OpenSSL is gone */
  rec_t rec;
  unsigned char secret_client[48], secret_server[48]; /* from the key log, until the records start */
  size_t secret_client_len, secret_server_len;
  unsigned char *hs;            /* a peer's post-handshake message, until it is whole */
  size_t hs_len;
  /* tls.c: a post-handshake failure's refusal reason (tls_record...), delivered with EV_CLOSE. */
  const char *reason;
  double ku_rate, ku_tokens;    /* the peer's KeyUpdates: a token bucket, ku_rate a second, burst 10x */
  uint64_t ku_at;               /* when the bucket was last filled (monotonic ms) */
  int ku_answer;                /* the peer asked for our KeyUpdate: it goes out before our next record */
  h2_t *h2;                     /* a tunnel connection: its HTTP/2 session (nghttp2, in h2.c) */
  splice_t *splice;             /* a workload connection joined to a tunnel stream (h2.c) */
  double spliced_in, spliced_out; /* what the splice read from and wrote to this socket */
  uv_poll_t poll;
} conn_t;

typedef struct {
  const unsigned char *p;
  size_t len;
} piece_t;

/* tls.c */
extern char *g_slab_data;
extern size_t g_slab_len, g_slab_off;
void emit(conn_t *c, int ev, int argc_extra, napi_value *extra);
void set_err(conn_t *c, const char *msg);
void close_for_errno(conn_t *c, const char *what); /* "what: <errno's reason>", then closes */
void close_conn(conn_t *c);
void update_poll(conn_t *c);
size_t queued(conn_t *c);
int out_reserve(conn_t *c, size_t more);
int flush_out(conn_t *c);
int flush_and_drain(conn_t *c);
int ensure_slab(napi_env env);
int emit_data(conn_t *c, size_t start, size_t *got);
int seal_records(conn_t *c, const piece_t *pieces, size_t total);
int write_plain(conn_t *c, const piece_t *pieces, uint32_t count);
napi_value throw_msg(napi_env env, const char *code, const char *msg);
conn_t *get_conn(napi_env env, napi_value v);

/* h2.c */
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
