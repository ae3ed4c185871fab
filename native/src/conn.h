/*
 * A connection the binding reads and writes itself (conn.c): a tunnel's TLS connection, or a workload's
 * plain TCP one, and what each part of the binding offers the others: conn.c (sockets, the queue, the
 * poll, JavaScript events), tls.c (the handshake), tls_records.c (the records after it) and h2.c (the
 * tunnel's HTTP/2 on nghttp2, whose DATA path joins a workload's socket to a tunnel stream; h2.h).
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

enum { S_HANDSHAKE = 0, S_OPEN = 1, S_CLOSED = 2 };

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
  /* tls_records.c: a post-handshake failure's refusal reason (tls_record...), delivered with EV_CLOSE. */
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

/* conn.c: the connection, its queue, its poll, its close; plain reads and writes */
extern char *g_slab_data;
extern size_t g_slab_len, g_slab_off;
int conn_ready(napi_env env); /* tlsInit ran: 1 in this env, -1 in another, 0 not yet */
void conn_init(napi_env env, napi_value dispatch, napi_value alloc_slab);
void emit(conn_t *c, int ev, int argc_extra, napi_value *extra);
napi_value throw_msg(napi_env env, const char *code, const char *msg);
void set_err(conn_t *c, const char *msg);
void close_for_errno(conn_t *c, const char *what); /* "what: <errno's reason>", then closes */
void close_conn(conn_t *c);
void update_poll(conn_t *c);
size_t queued(conn_t *c);
int out_reserve(conn_t *c, size_t more);
int flush_out(conn_t *c);
int flush_and_drain(conn_t *c);
int in_acquire(conn_t *c); /* the incoming buffer, for a connection that has none; 0: out of memory */
void in_release(conn_t *c);
int ensure_slab(napi_env env);
int emit_data(conn_t *c, size_t start, size_t *got);
void on_read_end(conn_t *c);
void do_read(conn_t *c); /* the socket is readable: a splice's, a plain connection's, or records */
int write_plain(conn_t *c, const piece_t *pieces, uint32_t count);
conn_t *get_conn(napi_env env, napi_value v);
conn_t *conn_alloc(napi_env env, int32_t fd); /* on a duplicate of fd; NULL: thrown */
napi_value conn_start(napi_env env, conn_t *c, napi_value owner, int events); /* NULL: thrown, c freed */

/* tls.c: the handshake and contexts (OpenSSL) */
typedef struct actx actx_t;
void tls_init(void);
void tls_handshake(conn_t *c);
void tls_release(conn_t *c); /* what TLS holds of a closing connection */
actx_t *tls_context_new(napi_env env, const char *roots, const char *suites, const char *cert, const char *key,
                        double rate);
void tls_context_sni(actx_t *a, napi_value fn);
void tls_context_free(napi_env env, void *data, void *hint);
conn_t *tls_conn_new(napi_env env, actx_t *a, int32_t fd, int server, const char *servername);

/* tls_records.c: the records after the handshake */
int records_init(void);
void records_read(conn_t *c);
int seal_records(conn_t *c, const piece_t *pieces, size_t total);
int seal_close_notify(conn_t *c);
int has_pending(conn_t *c); /* a whole record is buffered: the socket will not say so again */
uint64_t clock_ms(void);    /* monotonic */

#endif
