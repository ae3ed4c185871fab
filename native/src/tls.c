/*
 * The tunnel's TLS connection, in native code, on a non-blocking socket that libuv polls. OpenSSL (the copy
 * inside Node) does the handshake; the records after it are ours (record.c), the way kernel TLS takes them
 * over from a userspace handshake: a record is decrypted from the socket's bytes straight into the buffer
 * JavaScript reads, and sealed from JavaScript's buffers straight into the one the socket sends from.
 * Why not node:tls: it hands every 16 KiB record to JavaScript through a stream and copies each byte three
 * times on the way; on the tunnel that was most of the daemon's CPU. Here one callback carries everything
 * readable at once (up to READ_BATCH), and a write is one syscall for all its records.
 *
 * JavaScript side: daemon/tls/connection.ts. Everything runs on the main thread.
 *   tlsInit(dispatch, allocSlab)                 once: dispatch(owner, event, a, b, c), allocSlab() -> Buffer
 *   tlsContext(opts)                             -> context (cert/key optional, roots, server: sni lookup,
 *                                                  keyUpdateRate: a peer's KeyUpdates a second, burst 10x)
 *   tlsConnect(ctx, fd, server, servername, owner) -> connection on a duplicate of fd (closed at the end)
 *   tlsWrite(conn, buffers[])                    -> bytes still queued for the socket
 *   tlsPause / tlsResume(conn)                   reading stops / starts (resume returns 1 if data is held)
 *   tlsPump(conn)                                read what OpenSSL already holds
 *   tlsEnd(conn)                                 close_notify and FIN once everything queued is out
 *   tlsDestroy(conn)                             now; the 'close' event follows
 *   tlsReset(conn)                               now, with RST
 *   plainConnect(fd, owner)                      a workload's plain TCP connection; the calls above work on it
 * Events: listed in codes.h (EV_*); a tunnel's HTTP/2 ones come from h2.c.
 */
#include <node_api.h>
#include <uv.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conn.h"

/* A peer's post-handshake messages (tickets, key updates) are a few hundred bytes; more is refused. */
#define HS_MAX 65536
/* Post-handshake handshake message types (RFC 8446 §4). */
#define HS_NEW_SESSION_TICKET 4
#define HS_KEY_UPDATE 24
/* AES-GCM's limit per key is 2^24.5 records (RFC 8446 §5.5): we move to new keys well before. */
#define TX_RECORDS_PER_KEY (1ull << 24)
/* Decrypted HTTP/2 bytes of one batch (h2.c routes them): a batch and one more record. */
#define H2_SCRATCH (READ_BATCH + REC_MAX_BODY)

enum { S_HANDSHAKE = 0, S_OPEN = 1, S_CLOSED = 2 };

typedef struct {
  SSL_CTX *ctx;
  napi_env env;
  napi_ref sni; /* server: servername -> context | undefined */
  double key_update_rate;
} actx_t;


static napi_env g_env;
static napi_ref g_dispatch;
static napi_ref g_alloc_slab;
static napi_ref g_slab;
static napi_async_context g_async;
char *g_slab_data;
size_t g_slab_len, g_slab_off;
static unsigned char *g_h2_scratch;
/* A handshake record's plaintext while the batch before it is handed on (do_read_records). */
static unsigned char g_hs_copy[REC_MAX_INNER];
/* A read in progress: no JavaScript call re-enters one, but a second would share the scratch buffer. */
static int g_reading;
static BIO_METHOD *g_out_method;
static BIO_METHOD *g_in_method;
/* An emptied input buffer waits here for the next connection that reads: no malloc per read. */
static char *g_spare_in;
static char *g_spare_out;
static size_t g_spare_out_cap;
static const unsigned char ALPN_H2[] = {2, 'h', '2'};

/* ---- errors */

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

void set_err(conn_t *c, const char *msg) {
  if (c->err == NULL) c->err = dup_str(msg);
}

void close_for_errno(conn_t *c, const char *what) {
  char buf[160];
  snprintf(buf, sizeof buf, "%s: %s", what, strerror(errno));
  set_err(c, buf);
  close_conn(c);
}

/* OpenSSL's reason for the last failure, drained from its error queue. */
static void set_ssl_err(conn_t *c, const char *what) {
  char buf[320];
  unsigned long e = ERR_get_error();
  unsigned long last = e;
  while (e != 0) {
    last = e;
    e = ERR_get_error();
  }
  if (last != 0) {
    char reason[256];
    ERR_error_string_n(last, reason, sizeof reason);
    snprintf(buf, sizeof buf, "%s: %s", what, reason);
  } else if (errno != 0) {
    snprintf(buf, sizeof buf, "%s: %s", what, strerror(errno));
  } else {
    snprintf(buf, sizeof buf, "%s: the peer closed the connection", what);
  }
  set_err(c, buf);
}

/* ---- calling JavaScript */

void emit(conn_t *c, int ev, int argc_extra, napi_value *extra) {
  napi_env env = c->env;
  napi_value fn, owner, global, argv[6], result;
  if (napi_get_reference_value(env, g_dispatch, &fn) != napi_ok) return;
  napi_get_reference_value(env, c->owner, &owner);
  napi_get_global(env, &global);
  argv[0] = owner;
  napi_create_int32(env, ev, &argv[1]);
  for (int i = 0; i < argc_extra && i < 4; i++) argv[2 + i] = extra[i];
  if (napi_make_callback(env, g_async, global, fn, 2 + argc_extra, argv, &result) == napi_pending_exception) {
    /* A listener threw: that is the application's bug, reported the way Node reports it. */
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    napi_fatal_exception(env, exc);
  }
}

/* ---- the outgoing queue: OpenSSL writes sealed records here through a BIO, one syscall sends them */

/* An idle connection keeps no buffer (10,000 of them must fit in little memory); one emptied buffer is
 * kept for whichever connection writes next, so a busy one does not allocate per write. */
static void out_release(conn_t *c) {
  if (c->out == NULL) return;
  if (g_spare_out == NULL && c->out_cap <= 4 * 1024 * 1024) {
    g_spare_out = c->out;
    g_spare_out_cap = c->out_cap;
  } else {
    free(c->out);
  }
  c->out = NULL;
  c->out_cap = c->out_len = c->out_off = 0;
}

int out_reserve(conn_t *c, size_t more) {
  if (c->out_off > 0 && c->out_off == c->out_len) c->out_off = c->out_len = 0;
  if (c->out_len + more <= c->out_cap) return 1;
  if (c->out_off > 0) {
    memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
    c->out_len -= c->out_off;
    c->out_off = 0;
    if (c->out_len + more <= c->out_cap) return 1;
  }
  if (c->out == NULL && g_spare_out != NULL) {
    c->out = g_spare_out;
    c->out_cap = g_spare_out_cap;
    g_spare_out = NULL;
    if (more <= c->out_cap) return 1;
  }
  size_t cap = c->out_cap ? c->out_cap : 64 * 1024;
  while (cap < c->out_len + more) cap *= 2;
  char *p = realloc(c->out, cap);
  if (!p) return 0;
  c->out = p;
  c->out_cap = cap;
  return 1;
}

static int out_bwrite(BIO *b, const char *data, int len) {
  conn_t *c = BIO_get_data(b);
  if (len <= 0) return 0;
  if (!out_reserve(c, (size_t)len)) return -1;
  memcpy(c->out + c->out_len, data, (size_t)len);
  c->out_len += (size_t)len;
  return len;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b, (void)num, (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int out_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

size_t queued(conn_t *c) { return c->out_len - c->out_off; }

/*
 * The incoming side: one recv() of up to SOCKET_READ bytes. During the handshake OpenSSL takes from it what
 * it asks for (a record header, then its body), so it never reads past its last handshake record: whatever
 * follows stays here for our records.
 */
static void in_release(conn_t *c) {
  if (c->in == NULL) return;
  if (g_spare_in == NULL) g_spare_in = c->in;
  else free(c->in);
  c->in = NULL;
  c->in_off = c->in_len = 0;
}

/* The spare buffer, or a new one, for a connection that has none. 0: out of memory. */
static int in_acquire(conn_t *c) {
  c->in = g_spare_in ? g_spare_in : malloc(SOCKET_READ);
  g_spare_in = NULL;
  c->in_off = c->in_len = 0;
  return c->in != NULL;
}

static int in_bread(BIO *b, char *data, int len) {
  conn_t *c = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (len <= 0) return 0;
  if (c->in_off == c->in_len) {
    if (c->in == NULL && !in_acquire(c)) {
      errno = ENOMEM;
      return -1;
    }
    ssize_t n;
    do n = recv(c->fd, c->in, SOCKET_READ, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
      int e = errno;
      in_release(c); /* an idle connection holds no buffer */
      if (n == 0) return 0;
      errno = e;
      if (e == EAGAIN || e == EWOULDBLOCK) BIO_set_retry_read(b);
      return -1;
    }
    c->in_off = 0;
    c->in_len = (size_t)n;
  }
  size_t n = c->in_len - c->in_off;
  if (n > (size_t)len) n = (size_t)len;
  memcpy(data, c->in + c->in_off, n);
  c->in_off += n;
  if (c->in_off == c->in_len) in_release(c);
  return (int)n;
}

static long in_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)num, (void)ptr;
  conn_t *c = BIO_get_data(b);
  if (cmd == BIO_CTRL_PENDING) return c ? (long)(c->in_len - c->in_off) : 0;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

/* Whether a whole record is buffered: the socket will not say so again. */
static int has_pending(conn_t *c) {
  size_t avail = c->in_len - c->in_off;
  if (avail < REC_HEADER) return 0;
  const unsigned char *h = (const unsigned char *)c->in + c->in_off;
  return avail >= REC_HEADER + (((size_t)h[3] << 8) | h[4]);
}


/* Sends what is queued. Returns 0 if the connection failed (and is closing). */
int flush_out(conn_t *c) {
  while (c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n > 0) {
      c->out_off += (size_t)n;
      if (c->splice) splice_sent(c, (size_t)n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    close_for_errno(c, "write to the peer failed");
    return 0;
  }
  if (c->out_off == c->out_len) {
    c->out_off = c->out_len = 0;
    out_release(c);
    if (c->h2) h2_drained(c);
    if (c->ending && !c->fin_sent) {
      c->fin_sent = 1;
      shutdown(c->fd, SHUT_WR);
      if (c->read_eof) {
        close_conn(c);
        return 0;
      }
    }
  }
  return 1;
}

/*
 * Sends what is queued, from the event loop (not from a JavaScript call): if that empties a queue that
 * JavaScript was told is not empty, it hears 'drain' whichever event got us here. Returns 0 if the
 * connection is gone.
 */
int flush_and_drain(conn_t *c) {
  if (!flush_out(c)) return 0;
  if (queued(c) == 0 && c->need_drain) {
    c->need_drain = 0;
    emit(c, EV_DRAIN, 0, NULL);
  }
  return !c->closing;
}

/* ---- the poll */

static void on_poll(uv_poll_t *h, int status, int events);

void update_poll(conn_t *c) {
  if (c->closing) return;
  int want = 0;
  if (!c->read_eof && (!c->paused || c->state == S_HANDSHAKE) && !(c->splice && splice_waiting(c)))
    want |= UV_READABLE;
  if (queued(c) > 0) want |= UV_WRITABLE;
  if (want == c->events) return;
  c->events = want;
  if (want == 0) uv_poll_stop(&c->poll);
  else uv_poll_start(&c->poll, want, on_poll);
}

static void on_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  napi_env env = c->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value args[4];
  if (c->err) napi_create_string_utf8(env, c->err, NAPI_AUTO_LENGTH, &args[0]);
  else napi_get_undefined(env, &args[0]);
  napi_create_double(env, c->spliced_in, &args[1]);
  napi_create_double(env, c->spliced_out, &args[2]);
  if (c->err && c->reason) napi_create_string_utf8(env, c->reason, NAPI_AUTO_LENGTH, &args[3]);
  else napi_get_undefined(env, &args[3]);
  emit(c, EV_CLOSE, 4, args);
  napi_close_handle_scope(env, scope);
  napi_delete_reference(env, c->owner);
  if (c->ctx) napi_delete_reference(env, c->ctx);
  free(c->err);
  free(c);
}

void close_conn(conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  c->state = S_CLOSED;
  uv_poll_stop(&c->poll);
  if (c->splice) splice_free(c);
  if (c->h2) h2_free(c);
  SSL_free(c->ssl);
  c->ssl = NULL;
  if (c->records) rec_free(&c->rec);
  c->records = 0;
  OPENSSL_cleanse(c->secret_client, sizeof c->secret_client);
  OPENSSL_cleanse(c->secret_server, sizeof c->secret_server);
  free(c->hs);
  c->hs = NULL;
  in_release(c);
  close(c->fd);
  c->fd = -1;
  out_release(c);
  uv_close((uv_handle_t *)&c->poll, on_closed);
}

/* ---- reading */

int ensure_slab(napi_env env) {
  if (g_slab_data != NULL && g_slab_len - g_slab_off >= SLAB_MIN) return 1;
  napi_value fn, global, buf;
  if (napi_get_reference_value(env, g_alloc_slab, &fn) != napi_ok) return 0;
  napi_get_global(env, &global);
  if (napi_call_function(env, global, fn, 0, NULL, &buf) != napi_ok) return 0;
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, buf, &data, &len) != napi_ok || len < SLAB_MIN) return 0;
  if (g_slab) napi_delete_reference(env, g_slab);
  napi_create_reference(env, buf, 1, &g_slab);
  g_slab_data = data;
  g_slab_len = len;
  g_slab_off = 0;
  return 1;
}

/* ---- records out */

/* Seals `len` bytes of `type` (an alert, a handshake message) as one record on the outgoing queue. */
static int seal_one(conn_t *c, unsigned char type, const unsigned char *p, size_t len) {
  if (!out_reserve(c, rec_sealed_size(len))) return 0;
  unsigned char *o = (unsigned char *)c->out + c->out_len;
  if (!rec_seal_begin(&c->rec, o, len) || !rec_seal_update(&c->rec, o + REC_HEADER, p, len) ||
      !rec_seal_end(&c->rec, o + REC_HEADER + len, type))
    return 0;
  c->out_len += rec_sealed_size(len);
  return 1;
}

/* KeyUpdate (RFC 8446 §4.6.3): ours goes under the old keys, then we move to the next ones. */
static int send_key_update(conn_t *c, int request) {
  const unsigned char msg[5] = {24, 0, 0, 1, (unsigned char)request};
  return seal_one(c, REC_TYPE_HANDSHAKE, msg, sizeof msg) && rec_update(&c->rec, &c->rec.tx);
}

/* ---- records in */

static const char *alert_name(unsigned d) {
  switch (d) {
    case 0: return "close_notify";
    case 10: return "unexpected_message";
    case 20: return "bad_record_mac";
    case 22: return "record_overflow";
    case 40: return "handshake_failure";
    case 42: return "bad_certificate";
    case 43: return "unsupported_certificate";
    case 44: return "certificate_revoked";
    case 45: return "certificate_expired";
    case 46: return "certificate_unknown";
    case 47: return "illegal_parameter";
    case 48: return "unknown_ca";
    case 49: return "access_denied";
    case 50: return "decode_error";
    case 51: return "decrypt_error";
    case 70: return "protocol_version";
    case 71: return "insufficient_security";
    case 80: return "internal_error";
    case 86: return "inappropriate_fallback";
    case 90: return "user_canceled";
    case 109: return "missing_extension";
    case 110: return "unsupported_extension";
    case 112: return "unrecognized_name";
    case 113: return "bad_certificate_status_response";
    case 115: return "unknown_psk_identity";
    case 116: return "certificate_required";
    case 120: return "no_application_protocol";
    default: return "unknown";
  }
}

/*
 * A post-handshake failure: the alert (if it has one, < 0 if not) sealed under the current keys and sent
 * best-effort, then the close, with `why` and the alert in the message and `reason` (a RefusalReason) for
 * JavaScript. Before the close the socket's unread bytes are drained (bounded): a close with unread data
 * sends RST, and the peer's stack may then drop the alert it has not read yet.
 */
static void fail_records(conn_t *c, const char *reason, int alert, const char *why) {
  if (c->closing) return;
  /* After our close_notify nothing more may be sent. */
  int send_alert = alert >= 0 && c->records && !c->ending;
  char buf[256];
  if (send_alert) snprintf(buf, sizeof buf, "%s (sent %s)", why, alert_name((unsigned)alert));
  else snprintf(buf, sizeof buf, "%s", why);
  set_err(c, buf);
  if (c->reason == NULL) c->reason = reason;
  if (send_alert) {
    const unsigned char msg[2] = {2, (unsigned char)alert}; /* fatal */
    if (seal_one(c, REC_TYPE_ALERT, msg, sizeof msg)) {
      while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) c->out_off += (size_t)n;
        else if (n < 0 && errno == EINTR) continue;
        else break;
      }
    }
    char sink[16384];
    for (int i = 0; i < 64; i++) {
      ssize_t n = recv(c->fd, sink, sizeof sink, MSG_DONTWAIT);
      if (n <= 0 && !(n < 0 && errno == EINTR)) break;
    }
  }
  close_conn(c);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One of the peer's KeyUpdates against its bucket. 0: over the rate. */
static int key_update_admitted(conn_t *c) {
  uint64_t now = now_ms();
  double burst = c->ku_rate * 10;
  c->ku_tokens += (double)(now - c->ku_at) * c->ku_rate / 1000.0;
  if (c->ku_tokens > burst) c->ku_tokens = burst;
  c->ku_at = now;
  if (c->ku_tokens < 1) return 0;
  c->ku_tokens -= 1;
  return 1;
}

/* Our KeyUpdate that the peer asked for, if it did: one for however many requests came while we were silent
 * (RFC 8446 §4.6.3), before our next record. */
static int answer_key_update(conn_t *c) {
  if (!c->ku_answer) return 1;
  c->ku_answer = 0;
  /* After our close_notify nothing more is sent: there is no next record to precede. */
  return c->ending || send_key_update(c, 0);
}

/*
 * Checks one post-handshake message's header (4 bytes at m) as soon as it is there, before its body is
 * buffered: only a KeyUpdate (one byte), or a NewSessionTicket to a client (RFC 8446 §4.6), no larger than
 * HS_MAX. 0: the connection failed.
 */
static int hs_header_ok(conn_t *c, const unsigned char *m) {
  size_t mlen = ((size_t)m[1] << 16) | ((size_t)m[2] << 8) | m[3];
  if (m[0] == HS_KEY_UPDATE) {
    if (mlen == 1) return 1;
    fail_records(c, REASON_TLS_RECORD, ALERT_DECODE_ERROR, "the peer sent a KeyUpdate whose length is not 1");
    return 0;
  }
  if (m[0] == HS_NEW_SESSION_TICKET && !c->server) {
    if (mlen <= HS_MAX) return 1;
    fail_records(c, REASON_TLS_RECORD, ALERT_ILLEGAL_PARAMETER, "the peer sent an oversized NewSessionTicket");
    return 0;
  }
  char buf[128];
  snprintf(buf, sizeof buf, "the peer sent an unexpected post-handshake message (type %u)", m[0]);
  fail_records(c, REASON_TLS_RECORD, ALERT_UNEXPECTED_MESSAGE, buf);
  return 0;
}

/*
 * One handshake record's plaintext after the handshake: tickets are ignored (we never resume), key updates
 * followed. A KeyUpdate changes the peer's keys, so it must end its record (RFC 8446 §5.1: no message spans
 * a key change): anything after it in the same record, a second KeyUpdate included, is unexpected_message.
 * Only complete messages are buffered beyond this record: at most HS_MAX bytes of one. 0: the connection
 * failed.
 */
static int on_handshake_record(conn_t *c, const unsigned char *p, size_t len) {
  if (len == 0) {
    fail_records(c, REASON_TLS_RECORD, ALERT_UNEXPECTED_MESSAGE, "the peer sent an empty handshake record");
    return 0;
  }
  /* What is parsed: this record alone, or the buffered start of a message with this record after it. */
  const unsigned char *buf = p;
  size_t total = len;
  if (c->hs_len > 0) {
    unsigned char *hs = realloc(c->hs, c->hs_len + len);
    if (!hs) {
      fail_records(c, REASON_TLS_RECORD, ALERT_INTERNAL_ERROR, "out of memory for a post-handshake message");
      return 0;
    }
    c->hs = hs;
    memcpy(hs + c->hs_len, p, len);
    c->hs_len += len;
    buf = hs;
    total = c->hs_len;
  }
  size_t off = 0;
  while (total - off >= 4) {
    const unsigned char *m = buf + off;
    if (!hs_header_ok(c, m)) return 0;
    size_t mlen = ((size_t)m[1] << 16) | ((size_t)m[2] << 8) | m[3];
    if (total - off < 4 + mlen) break;
    off += 4 + mlen;
    if (m[0] != HS_KEY_UPDATE) continue;
    if (m[4] > 1) {
      fail_records(c, REASON_TLS_RECORD, ALERT_ILLEGAL_PARAMETER, "the peer sent a KeyUpdate whose request is not 0 or 1");
      return 0;
    }
    if (off != total) {
      fail_records(c, REASON_TLS_RECORD, ALERT_UNEXPECTED_MESSAGE,
                   "the peer sent more after a KeyUpdate in the same record (a message spans the key change)");
      return 0;
    }
    if (!key_update_admitted(c)) {
      char why[128];
      snprintf(why, sizeof why, "the peer sent KeyUpdates faster than %g a second", c->ku_rate);
      fail_records(c, REASON_TLS_KEYUPDATE_FLOOD, ALERT_UNEXPECTED_MESSAGE, why);
      return 0;
    }
    if (!rec_update(&c->rec, &c->rec.rx)) {
      fail_records(c, REASON_TLS_RECORD, ALERT_INTERNAL_ERROR, "TLS: deriving the peer's next keys failed");
      return 0;
    }
    if (m[4] == 1) c->ku_answer = 1;
  }
  /* The rest is the start of one message: its header, once here, was checked above. */
  size_t rest = total - off;
  if (rest == 0) {
    free(c->hs);
    c->hs = NULL;
    c->hs_len = 0;
    return 1;
  }
  if (buf == c->hs) {
    memmove(c->hs, c->hs + off, rest);
  } else {
    unsigned char *hs = malloc(rest);
    if (!hs) {
      fail_records(c, REASON_TLS_RECORD, ALERT_INTERNAL_ERROR, "out of memory for a post-handshake message");
      return 0;
    }
    memcpy(hs, buf + off, rest);
    free(c->hs);
    c->hs = hs;
  }
  c->hs_len = rest;
  return 1;
}

/* Room for a whole record after what is buffered, moving the unread part to the front if needed. */
static int in_room(conn_t *c) {
  if (c->in == NULL && !in_acquire(c)) return 0;
  if (c->in_off > 0 && SOCKET_READ - c->in_len < REC_HEADER + REC_MAX_BODY) {
    memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
    c->in_len -= c->in_off;
    c->in_off = 0;
  }
  return 1;
}

/* Hands what this batch decrypted to JavaScript. Returns 0 if the connection went away meanwhile. */
int emit_data(conn_t *c, size_t start, size_t *got) {
  if (*got == 0) return 1;
  napi_value a[2];
  napi_create_uint32(c->env, (uint32_t)start, &a[0]);
  napi_create_uint32(c->env, (uint32_t)*got, &a[1]);
  g_slab_off += *got;
  *got = 0;
  emit(c, EV_DATA, 2, a);
  return !c->closing;
}

/* The peer's end: close_notify, or FIN between records. */
static void on_read_end(conn_t *c) {
  c->read_eof = 1;
  emit(c, EV_END, 0, NULL);
  if (!c->closing && c->fin_sent) close_conn(c);
}

/*
 * Opens every whole record that is buffered or readable and hands on what they carry, one event per batch:
 * into the slab for JavaScript, or (a tunnel's HTTP/2) into the scratch buffer that h2.c routes from.
 * Stops when the socket would block, on pause, on the peer's end.
 */
static void do_read_plain(conn_t *c);
static void do_read_records(conn_t *c);

static void do_read(conn_t *c) {
  /* No JavaScript call reads synchronously today; if one ever did inside a read, the poll catches up. */
  if (g_reading) {
    update_poll(c);
    return;
  }
  g_reading = 1;
  if (c->splice) splice_read(c);
  else if (c->plain) do_read_plain(c);
  else do_read_records(c);
  g_reading = 0;
}

/* The end of a batch: what it decrypted goes on (JavaScript's, and h2.c's spliced bytes first). */
static int batch_end(conn_t *c, size_t start, size_t *got) {
  if (c->h2) {
    *got = 0;
    return h2_sync(c);
  }
  return emit_data(c, start, got);
}

static void do_read_records(conn_t *c) {
  napi_env env = c->env;
  size_t start = 0, got = 0;
  int have_slab = 0, drained = 0;
  while (!c->closing && !c->paused && !c->read_eof) {
    size_t avail = c->in_len - c->in_off;
    if (avail >= REC_HEADER) {
      const unsigned char *h = (const unsigned char *)c->in + c->in_off;
      size_t body = ((size_t)h[3] << 8) | h[4];
      /* Known from the header alone, before the body is even here (RFC 8446 §5.1, §5.2). What this batch
       * opened before it still goes on: it authenticated. */
      if ((h[0] != REC_TYPE_DATA || body > REC_MAX_BODY) && !batch_end(c, start, &got)) return;
      if (h[0] != REC_TYPE_DATA) {
        char why[96];
        snprintf(why, sizeof why, "the peer sent a TLS record of outer type %u after the handshake", h[0]);
        fail_records(c, REASON_TLS_RECORD, ALERT_UNEXPECTED_MESSAGE, why);
        return;
      }
      if (body > REC_MAX_BODY) {
        char why[96];
        snprintf(why, sizeof why, "the peer sent a TLS record of %zu bytes (at most %d)", body, REC_MAX_BODY);
        fail_records(c, REASON_TLS_RECORD, ALERT_RECORD_OVERFLOW, why);
        return;
      }
      if (avail >= REC_HEADER + body) {
        unsigned char *plain;
        if (c->h2) {
          /* The scratch holds one batch: spliced bytes point into it until h2_sync has written them. */
          if (got + body > H2_SCRATCH || got >= READ_BATCH) {
            if (!batch_end(c, start, &got)) return;
            if (c->paused) break;
          }
          plain = g_h2_scratch + got;
        } else {
          /* Room in the slab for this record's plaintext, or a new batch in a new slab. */
          if (!have_slab || g_slab_len - (start + got) < body || got >= READ_BATCH) {
            if (have_slab && !emit_data(c, start, &got)) return;
            if (c->paused) break;
            if (!ensure_slab(env)) {
              set_err(c, "out of memory for the read buffer");
              close_conn(c);
              return;
            }
            have_slab = 1;
            start = g_slab_off;
          }
          plain = (unsigned char *)g_slab_data + start + got;
        }
        unsigned char type;
        long n = rec_open(&c->rec, h, body, plain, &type);
        c->in_off += REC_HEADER + body;
        if (n < 0) {
          /* What was decrypted before this record still goes on: it authenticated. */
          if (!batch_end(c, start, &got)) return;
          if (n == REC_ERR_OVERFLOW)
            fail_records(c, REASON_TLS_RECORD, ALERT_RECORD_OVERFLOW,
                         "the peer sent a TLS record with over 2^14 bytes of plaintext");
          else if (n == REC_ERR_NO_TYPE)
            fail_records(c, REASON_TLS_RECORD, ALERT_UNEXPECTED_MESSAGE, "the peer sent a TLS record with no content type");
          else
            fail_records(c, REASON_TLS_RECORD, ALERT_BAD_RECORD_MAC, "a TLS record from the peer does not authenticate");
          return;
        }
        if (type != REC_TYPE_HANDSHAKE && c->hs_len > 0) {
          /* RFC 8446 §5.1: a handshake message split over records has nothing else between them. */
          if (!batch_end(c, start, &got)) return;
          fail_records(c, REASON_TLS_RECORD, ALERT_UNEXPECTED_MESSAGE,
                       "the peer interleaved another record with a split handshake message");
          return;
        }
        if (type == REC_TYPE_DATA) {
          if (c->h2 && !h2_input(c, plain, (size_t)n)) return;
          got += (size_t)n;
        } else if (type == REC_TYPE_ALERT) {
          if (n == 2 && plain[1] == ALERT_USER_CANCELED) continue; /* a warning: close_notify follows */
          if (!batch_end(c, start, &got)) return;
          if (n == 2 && plain[1] == ALERT_CLOSE_NOTIFY) {
            on_read_end(c);
            if (c->closing) return;
            break;
          }
          if (n != 2) {
            /* RFC 8446 §5.1: one alert per record, never fragmented. */
            fail_records(c, REASON_TLS_RECORD, ALERT_DECODE_ERROR, "the peer sent an alert record that is not 2 bytes");
            return;
          }
          /* A fatal alert: the peer is gone, no answer (RFC 8446 §6.2). */
          char why[96];
          snprintf(why, sizeof why, "the peer sent TLS alert %u (%s)", plain[1], alert_name(plain[1]));
          fail_records(c, REASON_TLS_ALERT, -1, why);
          return;
        } else if (type == REC_TYPE_HANDSHAKE) {
          /* What came before goes on first, whatever this record does to the keys or the connection; the
           * next record starts a batch of its own (`start` moves on). Its plaintext is copied out first:
           * the slab or scratch it lies in is the batch's, and the batch is handed on. Rare: a KeyUpdate
           * now and then. */
          if (got > 0) {
            memcpy(g_hs_copy, plain, (size_t)n);
            plain = g_hs_copy;
            if (!batch_end(c, start, &got)) return;
            have_slab = 0;
          }
          if (!on_handshake_record(c, plain, (size_t)n)) return;
        } else {
          if (!batch_end(c, start, &got)) return;
          char why[96];
          snprintf(why, sizeof why, "the peer sent a TLS record of inner type %u after the handshake", type);
          fail_records(c, REASON_TLS_RECORD, ALERT_UNEXPECTED_MESSAGE, why);
          return;
        }
        continue;
      }
    }
    /* Not a whole record buffered: read more, unless the last read already emptied the socket (it came
     * back short): the poll says when there is more, which saves a recv that would say EAGAIN. */
    if (drained) break;
    if (!in_room(c)) {
      set_err(c, "out of memory for the socket buffer");
      close_conn(c);
      return;
    }
    ssize_t r;
    size_t want = SOCKET_READ - c->in_len;
    do r = recv(c->fd, c->in + c->in_len, want, 0);
    while (r < 0 && errno == EINTR);
    if (r > 0) {
      drained = (size_t)r < want;
      c->in_len += (size_t)r;
      continue;
    }
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (!batch_end(c, start, &got)) return;
    if (r == 0 && c->in_len == c->in_off) {
      on_read_end(c); /* FIN without close_notify: the HTTP/2 above notices any truncation */
      if (c->closing) return;
      break;
    }
    char buf[160];
    snprintf(buf, sizeof buf, "read from the peer failed: %s",
             r == 0 ? "connection closed in the middle of a record" : strerror(errno));
    set_err(c, buf);
    close_conn(c);
    return;
  }
  if (!batch_end(c, start, &got)) return;
  if (!answer_key_update(c)) {
    fail_records(c, REASON_TLS_RECORD, -1, "TLS: sealing our KeyUpdate failed");
    return;
  }
  if (c->in_off == c->in_len) in_release(c); /* an idle connection holds no buffer */
  /* What we answered (a key update, WINDOW_UPDATEs), and what was waiting for the socket anyway. */
  if (queued(c) > 0 && !flush_and_drain(c)) return;
  update_poll(c);
}

/* A plain connection: the socket's bytes go straight into the slab, one event per read. */
static void do_read_plain(conn_t *c) {
  napi_env env = c->env;
  while (!c->closing && !c->paused && !c->read_eof) {
    if (!ensure_slab(env)) {
      set_err(c, "out of memory for the read buffer");
      close_conn(c);
      return;
    }
    size_t want = g_slab_len - g_slab_off;
    if (want > READ_BATCH) want = READ_BATCH;
    ssize_t r;
    do r = recv(c->fd, g_slab_data + g_slab_off, want, 0);
    while (r < 0 && errno == EINTR);
    if (r > 0) {
      size_t got = (size_t)r;
      if (!emit_data(c, g_slab_off, &got)) return;
      if ((size_t)r < want) break; /* short: the socket is empty for now */
      continue;
    }
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (r == 0) {
      on_read_end(c);
      if (c->closing) return;
      break;
    }
    close_for_errno(c, "read failed");
    return;
  }
  if (queued(c) > 0 && !flush_and_drain(c)) return;
  update_poll(c);
}

/* The key log is where OpenSSL hands out the traffic secrets; the records after the handshake need them. */
static void on_keylog(const SSL *ssl, const char *line) {
  conn_t *c = SSL_get_app_data(ssl);
  if (!c) return;
  unsigned char *dst;
  size_t *dst_len;
  const char *p;
  if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0) {
    dst = c->secret_client, dst_len = &c->secret_client_len, p = line + 24;
  } else if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0) {
    dst = c->secret_server, dst_len = &c->secret_server_len, p = line + 24;
  } else {
    return;
  }
  p = strchr(p, ' '); /* past the client random */
  if (!p) return;
  p++;
  size_t n = 0;
  while (p[0] && p[1] && n < 48) {
    unsigned int byte;
    if (sscanf(p, "%2x", &byte) != 1) return;
    dst[n++] = (unsigned char)byte;
    p += 2;
  }
  *dst_len = n;
}

/* After the handshake: the records become ours and OpenSSL's connection object is freed. */
static int take_over(conn_t *c) {
  const SSL_CIPHER *cipher = SSL_get_current_cipher(c->ssl);
  int suite = cipher ? (int)(SSL_CIPHER_get_id(cipher) & 0xffff) : 0;
  size_t want = suite == 0x1302 ? 48 : 32;
  if (SSL_has_pending(c->ssl) || c->secret_client_len != want || c->secret_server_len != want) {
    set_err(c, "TLS: the handshake's traffic secrets are not available");
    return 0;
  }
  const unsigned char *rx = c->server ? c->secret_client : c->secret_server;
  const unsigned char *tx = c->server ? c->secret_server : c->secret_client;
  int ok = rec_init(&c->rec, suite, rx, tx);
  OPENSSL_cleanse(c->secret_client, sizeof c->secret_client);
  OPENSSL_cleanse(c->secret_server, sizeof c->secret_server);
  if (!ok) {
    set_err(c, "TLS: the negotiated cipher suite is not AES-GCM");
    return 0;
  }
  c->records = 1;
  c->ku_tokens = c->ku_rate * 10;
  c->ku_at = now_ms();
  SSL_free(c->ssl);
  c->ssl = NULL;
  return 1;
}

/* ---- handshake */

static void handshake(conn_t *c) {
  ERR_clear_error();
  errno = 0;
  int r = SSL_do_handshake(c->ssl);
  if (r == 1) {
    c->state = S_OPEN;
    napi_env env = c->env;
    napi_value a[2];
    X509 *peer = SSL_get1_peer_certificate(c->ssl);
    if (peer) {
      int len = i2d_X509(peer, NULL);
      void *data;
      if (len > 0 && napi_create_buffer(env, (size_t)len, &data, &a[0]) == napi_ok) {
        unsigned char *p = data;
        i2d_X509(peer, &p);
      } else {
        napi_get_undefined(env, &a[0]);
      }
      X509_free(peer);
    } else {
      napi_get_undefined(env, &a[0]);
    }
    const unsigned char *alpn;
    unsigned int alpn_len;
    SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
    napi_create_string_latin1(env, (const char *)alpn, alpn_len, &a[1]);
    if (!take_over(c)) {
      close_conn(c);
      return;
    }
    if (!flush_out(c)) return;
    emit(c, EV_SECURE, 2, a);
    if (c->closing) return;
    if (has_pending(c) && !c->paused) do_read(c);
    else update_poll(c);
    return;
  }
  int e = SSL_get_error(c->ssl, r);
  if (!flush_out(c)) return;
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    update_poll(c);
    return;
  }
  set_ssl_err(c, "TLS handshake failed");
  close_conn(c);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  conn_t *c = h->data;
  napi_env env = c->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  if (status < 0) {
    /* libuv says EBADF for any EPOLLERR: the socket's own error is the reason (a reset, mostly). */
    int e = 0;
    socklen_t len = sizeof e;
    char buf[160];
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &len) == 0 && e != 0)
      snprintf(buf, sizeof buf, "socket error: %s", strerror(e));
    else
      snprintf(buf, sizeof buf, "socket error: %s", uv_strerror(status));
    set_err(c, buf);
    close_conn(c);
  } else {
    if ((events & UV_WRITABLE) && !c->closing) flush_and_drain(c);
    if (!c->closing) {
      if (c->state == S_HANDSHAKE) handshake(c);
      else if (events & UV_READABLE) do_read(c);
      else update_poll(c);
    }
  }
  napi_close_handle_scope(env, scope);
}

/* ---- contexts */

static void ctx_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  actx_t *a = data;
  if (a->sni) napi_delete_reference(env, a->sni);
  SSL_CTX_free(a->ctx);
  free(a);
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg) {
  (void)ssl, (void)arg;
  unsigned char *sel;
  if (SSL_select_next_proto(&sel, outlen, ALPN_H2, sizeof ALPN_H2, in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL; /* HBONE is HTTP/2 only */
  *out = sel;
  return SSL_TLSEXT_ERR_OK;
}

/* Server: the certificate is the local workload's that the client names in SNI. */
static int on_servername(SSL *ssl, int *alert, void *arg) {
  actx_t *a = arg;
  const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!name || !a->sni) {
    *alert = SSL_AD_UNRECOGNIZED_NAME;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  napi_env env = a->env;
  napi_value fn, global, arg0, result;
  napi_get_reference_value(env, a->sni, &fn);
  napi_get_global(env, &global);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &arg0);
  if (napi_call_function(env, global, fn, 1, &arg0, &result) != napi_ok) {
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  actx_t *chosen = NULL;
  napi_valuetype t;
  napi_typeof(env, result, &t);
  if (t == napi_external) napi_get_value_external(env, result, (void **)&chosen);
  if (!chosen) {
    *alert = SSL_AD_UNRECOGNIZED_NAME;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  SSL_set_SSL_CTX(ssl, chosen->ctx);
  return SSL_TLSEXT_ERR_OK;
}

napi_value throw_msg(napi_env env, const char *code, const char *msg) {
  napi_throw_error(env, code, msg);
  return NULL;
}

static napi_value throw_ssl(napi_env env, const char *what) {
  char buf[320], reason[256];
  unsigned long e = ERR_get_error();
  ERR_error_string_n(e, reason, sizeof reason);
  snprintf(buf, sizeof buf, "%s: %s", what, e ? reason : "unknown error");
  ERR_clear_error();
  return throw_msg(env, "ERR_TLS_CONTEXT", buf);
}

static char *get_string(napi_env env, napi_value obj, const char *name) {
  napi_value v;
  napi_valuetype t;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok) return NULL;
  napi_typeof(env, v, &t);
  if (t != napi_string) return NULL;
  size_t len;
  napi_get_value_string_utf8(env, v, NULL, 0, &len);
  char *s = malloc(len + 1);
  if (!s) return NULL;
  napi_get_value_string_utf8(env, v, s, len + 1, &len);
  return s;
}

static int add_pem_certs(X509_STORE *store, const char *pem) {
  BIO *bio = BIO_new_mem_buf(pem, -1);
  int n = 0;
  X509 *x;
  while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
    if (X509_STORE_add_cert(store, x) == 1) n++;
    X509_free(x);
  }
  ERR_clear_error(); /* the end of the text reads as an error */
  BIO_free(bio);
  return n;
}

/* tlsContext({ roots, ciphersuites, cert?, key?, sni?, keyUpdateRate? }) */
static napi_value TlsContext(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value opts;
  if (napi_get_cb_info(env, info, &argc, &opts, NULL, NULL) != napi_ok || argc < 1)
    return throw_msg(env, "EINVAL", "tlsContext(options)");
  char *roots = get_string(env, opts, "roots");
  char *suites = get_string(env, opts, "ciphersuites");
  char *cert = get_string(env, opts, "cert");
  char *key = get_string(env, opts, "key");
  napi_value result = NULL;
  SSL_CTX *ctx = NULL;
  if (!roots || !suites) {
    throw_msg(env, "EINVAL", "tlsContext: roots and ciphersuites are required strings");
    goto done;
  }
  double rate = KEY_UPDATE_RATE;
  napi_value rate_v;
  napi_valuetype rate_t = napi_undefined;
  if (napi_get_named_property(env, opts, "keyUpdateRate", &rate_v) == napi_ok) napi_typeof(env, rate_v, &rate_t);
  if (rate_t != napi_undefined) {
    /* 0 is allowed: a peer's first KeyUpdate is then refused. */
    if (rate_t != napi_number || napi_get_value_double(env, rate_v, &rate) != napi_ok || !(rate >= 0) ||
        rate > 1e6) {
      throw_msg(env, "EINVAL", "tlsContext: keyUpdateRate must be a number from 0 to 1000000");
      goto done;
    }
  }
  ctx = SSL_CTX_new(TLS_method());
  if (!ctx) {
    throw_ssl(env, "SSL_CTX_new");
    goto done;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  if (SSL_CTX_set_ciphersuites(ctx, suites) != 1) {
    throw_ssl(env, "ciphersuites");
    goto fail;
  }
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  /* Pooled sessions stand in for resumption: no tickets to issue or store. */
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
  /* No roots is allowed (a server before its CA answered): every peer is then refused. */
  add_pem_certs(SSL_CTX_get_cert_store(ctx), roots);
  if (cert) {
    BIO *bio = BIO_new_mem_buf(cert, -1);
    X509 *leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    int ok = leaf && SSL_CTX_use_certificate(ctx, leaf) == 1;
    X509_free(leaf);
    X509 *extra;
    while (ok && (extra = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
      if (SSL_CTX_add0_chain_cert(ctx, extra) != 1) {
        X509_free(extra);
        ok = 0;
      }
    }
    BIO_free(bio);
    if (!ok) {
      throw_ssl(env, "certificate");
      goto fail;
    }
    ERR_clear_error();
  }
  if (key) {
    BIO *bio = BIO_new_mem_buf(key, -1);
    EVP_PKEY *pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    int ok = pk && SSL_CTX_use_PrivateKey(ctx, pk) == 1 && SSL_CTX_check_private_key(ctx) == 1;
    EVP_PKEY_free(pk);
    if (!ok) {
      throw_ssl(env, "private key");
      goto fail;
    }
  }
  SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
  SSL_CTX_set_keylog_callback(ctx, on_keylog);
  actx_t *a = calloc(1, sizeof *a);
  if (!a) {
    throw_msg(env, "ENOMEM", "tlsContext: out of memory");
    goto fail;
  }
  a->ctx = ctx;
  a->env = env;
  a->key_update_rate = rate;
  napi_value sni;
  napi_valuetype t = napi_undefined;
  if (napi_get_named_property(env, opts, "sni", &sni) == napi_ok) napi_typeof(env, sni, &t);
  if (t == napi_function) {
    napi_create_reference(env, sni, 1, &a->sni);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx, a);
  }
  napi_create_external(env, a, ctx_finalize, NULL, &result);
  goto done;
fail:
  SSL_CTX_free(ctx);
done:
  free(roots);
  free(suites);
  free(cert);
  free(key);
  return result;
}

/* ---- connections */

conn_t *get_conn(napi_env env, napi_value v) {
  conn_t *c = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external) return NULL;
  napi_get_value_external(env, v, (void **)&c);
  return c;
}

/* The external's own finalizer does nothing: a connection lives until its close event, not until GC. */
static napi_value wrap_conn(napi_env env, conn_t *c) {
  napi_value v;
  napi_create_external(env, c, NULL, NULL, &v);
  return v;
}

/* A connection on our own duplicate of fd: the caller closes its socket (Node's) right after. NULL: thrown. */
static conn_t *conn_alloc(napi_env env, int32_t fd) {
  int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (own < 0) {
    throw_msg(env, "EBADF", "the socket's descriptor cannot be duplicated");
    return NULL;
  }
  conn_t *c = calloc(1, sizeof *c);
  if (!c) {
    close(own);
    throw_msg(env, "ENOMEM", "out of memory for a connection");
    return NULL;
  }
  c->env = env;
  c->fd = own;
  return c;
}

/* Watches the socket for `events` and ties the connection to its JavaScript owner; frees it on failure. */
static napi_value conn_start(napi_env env, conn_t *c, napi_value owner, int events) {
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  if (uv_poll_init_socket(loop, &c->poll, c->fd) != 0) {
    SSL_free(c->ssl);
    close(c->fd);
    free(c);
    return throw_msg(env, "ENOMEM", "cannot watch the socket");
  }
  c->poll.data = c;
  napi_create_reference(env, owner, 1, &c->owner);
  c->events = events;
  if (events) uv_poll_start(&c->poll, events, on_poll);
  return wrap_conn(env, c);
}

/* tlsConnect(ctx, fd, server, servername | null, owner) */
static napi_value TlsConnect(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5)
    return throw_msg(env, "EINVAL", "tlsConnect(ctx, fd, server, servername, owner)");
  actx_t *a = NULL;
  napi_valuetype t;
  napi_typeof(env, argv[0], &t);
  if (t == napi_external) napi_get_value_external(env, argv[0], (void **)&a);
  int32_t fd;
  bool server;
  if (!a || napi_get_value_int32(env, argv[1], &fd) != napi_ok || fd < 0 ||
      napi_get_value_bool(env, argv[2], &server) != napi_ok)
    return throw_msg(env, "EINVAL", "tlsConnect(ctx, fd, server, servername, owner)");
  conn_t *c = conn_alloc(env, fd);
  if (!c) return NULL;
  /* No Nagle, whatever the socket's creator set: a record must not wait for the ACK of the one before. */
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->server = server;
  c->ku_rate = a->key_update_rate;
  c->ssl = SSL_new(a->ctx);
  BIO *wbio = c->ssl ? BIO_new(g_out_method) : NULL;
  BIO *rbio = wbio ? BIO_new(g_in_method) : NULL;
  if (!rbio) {
    BIO_free(wbio);
    SSL_free(c->ssl);
    close(c->fd);
    free(c);
    return throw_ssl(env, "tlsConnect");
  }
  BIO_set_data(wbio, c);
  BIO_set_data(rbio, c);
  SSL_set_bio(c->ssl, rbio, wbio);
  SSL_set_app_data(c->ssl, c);
  if (server) {
    SSL_set_verify(c->ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_set_accept_state(c->ssl);
  } else {
    SSL_set_verify(c->ssl, SSL_VERIFY_PEER, NULL);
    SSL_set_alpn_protos(c->ssl, ALPN_H2, sizeof ALPN_H2);
    napi_typeof(env, argv[3], &t);
    if (t == napi_string) {
      char name[256];
      size_t len;
      napi_get_value_string_utf8(env, argv[3], name, sizeof name, &len);
      SSL_set_tlsext_host_name(c->ssl, name);
    }
    SSL_set_connect_state(c->ssl);
  }
  c->state = S_HANDSHAKE;
  /* The client speaks first; a server waits for its hello. Both go through the poll, never re-entering JS. */
  napi_value conn = conn_start(env, c, argv[4], UV_READABLE | UV_WRITABLE);
  if (conn) napi_create_reference(env, argv[0], 1, &c->ctx);
  return conn;
}

/*
 * A plain connection's write: straight from the caller's buffers with one writev when nothing is queued
 * (the common case: no copy at all); what the socket does not take now is copied to the queue.
 */
int write_plain(conn_t *c, const piece_t *pieces, uint32_t count) {
  uint32_t i = 0;
  size_t at = 0;
  if (queued(c) == 0) {
    while (i < count) {
      struct iovec iov[64];
      int n = 0;
      for (uint32_t j = i; j < count && n < 64; j++, n++) {
        iov[n].iov_base = (void *)(pieces[j].p + (j == i ? at : 0));
        iov[n].iov_len = pieces[j].len - (j == i ? at : 0);
      }
      struct msghdr msg;
      memset(&msg, 0, sizeof msg);
      msg.msg_iov = iov;
      msg.msg_iovlen = (size_t)n;
      ssize_t w;
      do w = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
      while (w < 0 && errno == EINTR);
      if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        char buf[160];
        snprintf(buf, sizeof buf, "write failed: %s", strerror(errno));
        set_err(c, buf);
        return 0;
      }
      size_t left = (size_t)w;
      while (i < count && left >= pieces[i].len - at) {
        left -= pieces[i].len - at;
        i++;
        at = 0;
      }
      at += left;
      if (n < 64 && i < count) break; /* a short write: the socket is full */
    }
  }
  for (; i < count; i++, at = 0) {
    size_t n = pieces[i].len - at;
    if (!out_reserve(c, n)) {
      set_err(c, "out of memory for the send queue");
      return 0;
    }
    memcpy(c->out + c->out_len, pieces[i].p + at, n);
    c->out_len += n;
  }
  return 1;
}

/* Seals the pieces into records on the outgoing queue. 0 (with the reason set) if that failed. */
int seal_records(conn_t *c, const piece_t *pieces, size_t total) {
  size_t records = (total + REC_MAX_PLAIN - 1) / REC_MAX_PLAIN;
  /* A KeyUpdate the peer asked for goes before our next application data (RFC 8446 §4.6.3). */
  int ok = answer_key_update(c) && out_reserve(c, total + records * (REC_HEADER + 1 + REC_TAG) + 64);
  uint32_t i = 0;
  size_t at = 0, left = total;
  while (ok && left > 0) {
    size_t plen = left;
    if (left > 2 * REC_MAX_PLAIN) plen = REC_MAX_PLAIN;
    else if (left > REC_MAX_PLAIN) plen = (left + 1) / 2;
    unsigned char *o = (unsigned char *)c->out + c->out_len;
    ok = rec_seal_begin(&c->rec, o, plen);
    size_t done = 0;
    while (ok && done < plen) {
      size_t n = pieces[i].len - at;
      if (n > plen - done) n = plen - done;
      ok = rec_seal_update(&c->rec, o + REC_HEADER + done, pieces[i].p + at, n);
      done += n;
      at += n;
      if (at == pieces[i].len) i++, at = 0;
    }
    ok = ok && rec_seal_end(&c->rec, o + REC_HEADER + plen, REC_TYPE_DATA);
    c->out_len += rec_sealed_size(plen);
    left -= plen;
    if (ok && c->rec.tx.seq >= TX_RECORDS_PER_KEY) ok = send_key_update(c, 0);
  }
  if (!ok) set_err(c, "TLS: sealing a record failed");
  return ok;
}

/*
 * tlsWrite(conn, buffers): everything becomes full records (16 KiB of plaintext, the last two of a write
 * evened out so that none is tiny), sealed from the caller's buffers into the outgoing queue: a frame header
 * and its payload share a record without being copied together first.
 */
static napi_value TlsWrite(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  conn_t *c = argc >= 2 ? get_conn(env, argv[0]) : NULL;
  if (!c) return throw_msg(env, "EINVAL", "tlsWrite(conn, buffers)");
  if (c->closing || !(c->records || c->plain) || c->ending) {
    napi_create_int32(env, -1, &result);
    return result;
  }
  uint32_t count = 0;
  napi_get_array_length(env, argv[1], &count);
  piece_t stack[64], *pieces = count <= 64 ? stack : malloc(count * sizeof *pieces);
  if (!pieces) return throw_msg(env, "ENOMEM", "tlsWrite: out of memory");
  size_t total = 0;
  for (uint32_t i = 0; i < count; i++) {
    napi_value item;
    void *data;
    size_t len;
    napi_get_element(env, argv[1], i, &item);
    if (napi_get_buffer_info(env, item, &data, &len) != napi_ok) {
      if (pieces != stack) free(pieces);
      napi_throw_type_error(env, "EINVAL", "tlsWrite: every item must be a Buffer");
      return NULL;
    }
    pieces[i].p = data;
    pieces[i].len = len;
    total += len;
  }
  int ok = c->plain ? write_plain(c, pieces, count) : seal_records(c, pieces, total);
  if (pieces != stack) free(pieces);
  if (!ok) {
    close_conn(c);
    napi_create_int32(env, -1, &result);
    return result;
  }
  if (flush_out(c)) update_poll(c);
  size_t q = c->closing ? 0 : queued(c);
  /* JavaScript learns the queue's size from this answer; an empty one needs no 'drain' later. */
  c->need_drain = q > 0;
  napi_create_double(env, (double)q, &result);
  return result;
}

static napi_value conn_arg(napi_env env, napi_callback_info info, conn_t **out) {
  size_t argc = 1;
  napi_value v;
  napi_get_cb_info(env, info, &argc, &v, NULL, NULL);
  *out = argc >= 1 ? get_conn(env, v) : NULL;
  if (!*out) throw_msg(env, "EINVAL", "expected a connection");
  return NULL;
}

/* plainConnect(fd, owner): a plain TCP connection on a duplicate of fd, paused until resumed. */
static napi_value PlainConnect(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0)
    return throw_msg(env, "EINVAL", "plainConnect(fd, owner)");
  conn_t *c = conn_alloc(env, fd);
  if (!c) return NULL;
  /* A tunnel adds no Nagle delay of its own: each write is a whole message the peer already sent. */
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->plain = 1;
  c->state = S_OPEN;
  c->paused = 1;
  return conn_start(env, c, argv[1], 0);
}

/* tlsReset(conn): an abortive close (RST), for a connection whose other side failed. */
static napi_value TlsReset(napi_env env, napi_callback_info info) {
  conn_t *c;
  conn_arg(env, info, &c);
  if (c && !c->closing) {
    struct linger l = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close_conn(c);
  }
  return NULL;
}

static napi_value TlsPause(napi_env env, napi_callback_info info) {
  conn_t *c;
  conn_arg(env, info, &c);
  if (c && !c->closing) {
    c->paused = 1;
    update_poll(c);
  }
  return NULL;
}

static napi_value TlsResume(napi_env env, napi_callback_info info) {
  conn_t *c;
  napi_value r;
  conn_arg(env, info, &c);
  int held = 0;
  if (c && !c->closing) {
    c->paused = 0;
    update_poll(c);
    /* A plain connection holds nothing: the poll says when to read. */
    held = c->records && !c->read_eof && has_pending(c);
  }
  napi_get_boolean(env, held, &r);
  return r;
}

static napi_value TlsPump(napi_env env, napi_callback_info info) {
  conn_t *c;
  conn_arg(env, info, &c);
  if (c && !c->closing && (c->records || c->plain)) do_read(c);
  return NULL;
}

static napi_value TlsEnd(napi_env env, napi_callback_info info) {
  conn_t *c;
  conn_arg(env, info, &c);
  if (!c || c->closing) return NULL;
  if (c->splice) {
    /* Its tunnel stream is over: nothing more is read, and what the stream delivered goes out first. */
    splice_free(c);
    c->read_eof = 1;
    if (c->fin_sent) {
      close_conn(c);
      return NULL;
    }
    if (c->ending) return NULL;
  }
  if (c->ending) return NULL;
  c->ending = 1;
  static const unsigned char close_notify[2] = {1, 0};
  if (c->records && !seal_one(c, REC_TYPE_ALERT, close_notify, sizeof close_notify)) {
    set_err(c, "TLS: sealing close_notify failed");
    close_conn(c);
    return NULL;
  }
  if (flush_out(c)) update_poll(c);
  return NULL;
}

static napi_value TlsDestroy(napi_env env, napi_callback_info info) {
  conn_t *c;
  conn_arg(env, info, &c);
  if (c) close_conn(c);
  return NULL;
}

static napi_value TlsInit(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], name;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return throw_msg(env, "EINVAL", "tlsInit(dispatch, allocSlab)");
  /* One JavaScript environment per process: the buffers and callbacks here are process-wide. */
  if (g_dispatch) {
    if (env != g_env) return throw_msg(env, "ENOTSUP", "the tunnel's TLS runs on the main thread only");
    return NULL;
  }
  g_h2_scratch = malloc(H2_SCRATCH);
  if (!g_h2_scratch) return throw_msg(env, "ENOMEM", "tlsInit: out of memory");
  g_env = env;
  napi_create_reference(env, argv[0], 1, &g_dispatch);
  napi_create_reference(env, argv[1], 1, &g_alloc_slab);
  napi_create_string_utf8(env, "ambit:tls", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &g_async);
  g_out_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ambit-out");
  BIO_meth_set_write(g_out_method, out_bwrite);
  BIO_meth_set_ctrl(g_out_method, out_ctrl);
  BIO_meth_set_create(g_out_method, out_create);
  g_in_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ambit-in");
  BIO_meth_set_read(g_in_method, in_bread);
  BIO_meth_set_ctrl(g_in_method, in_ctrl);
  BIO_meth_set_create(g_in_method, out_create);
  return NULL;
}

void ambit_tls_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"tlsInit", NULL, TlsInit, NULL, NULL, NULL, napi_default, NULL},
    {"tlsContext", NULL, TlsContext, NULL, NULL, NULL, napi_default, NULL},
    {"tlsConnect", NULL, TlsConnect, NULL, NULL, NULL, napi_default, NULL},
    {"tlsWrite", NULL, TlsWrite, NULL, NULL, NULL, napi_default, NULL},
    {"tlsPause", NULL, TlsPause, NULL, NULL, NULL, napi_default, NULL},
    {"tlsResume", NULL, TlsResume, NULL, NULL, NULL, napi_default, NULL},
    {"tlsPump", NULL, TlsPump, NULL, NULL, NULL, napi_default, NULL},
    {"tlsEnd", NULL, TlsEnd, NULL, NULL, NULL, napi_default, NULL},
    {"tlsDestroy", NULL, TlsDestroy, NULL, NULL, NULL, napi_default, NULL},
    {"tlsReset", NULL, TlsReset, NULL, NULL, NULL, napi_default, NULL},
    {"plainConnect", NULL, PlainConnect, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  ambit_h2_init(env, exports);
}
