/*
 * A connection the binding reads and writes itself, on a non-blocking socket that libuv polls: what a
 * tunnel's TLS connection and a workload's plain TCP connection share. The outgoing queue (one syscall
 * sends it), the poll, the close and its event, the read slab JavaScript gets views of, and the plain
 * connection's reads and writes. A TLS connection's handshake is tls.c's, its records tls_records.c's; a
 * tunnel's HTTP/2 and the splice are h2.c's. JavaScript's calls come in through napi_conn.c.
 * Why not node:net: each read and write through a Readable and a Writable costs more than the kernel does
 * on a small message; here a read is one call into JavaScript with a view of the bytes, and the writes of
 * one turn of the event loop leave in one call out of it. Everything runs on the main thread.
 */
#include <node_api.h>
#include <uv.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conn.h"
#include "h2.h"

static napi_env g_env;
static napi_ref g_dispatch;
static napi_ref g_alloc_slab;
static napi_ref g_slab;
static napi_async_context g_async;
char *g_slab_data;
size_t g_slab_len, g_slab_off;
/* A read in progress: no JavaScript call re-enters one, but a second would share the scratch buffer. */
static int g_reading;
/* An emptied input buffer waits here for the next connection that reads: no malloc per read. */
static char *g_spare_in;
static char *g_spare_out;
static size_t g_spare_out_cap;

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

/* ---- calling JavaScript */

int conn_ready(napi_env env) {
  if (!g_dispatch) return 0;
  return env == g_env ? 1 : -1;
}

void conn_init(napi_env env, napi_value dispatch, napi_value alloc_slab) {
  napi_value name;
  g_env = env;
  napi_create_reference(env, dispatch, 1, &g_dispatch);
  napi_create_reference(env, alloc_slab, 1, &g_alloc_slab);
  napi_create_string_utf8(env, "ambit:tls", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &g_async);
}

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

napi_value throw_msg(napi_env env, const char *code, const char *msg) {
  napi_throw_error(env, code, msg);
  return NULL;
}

/* ---- the outgoing queue: what the socket has not taken yet (sealed records, or a plain write's rest) */

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

size_t queued(conn_t *c) { return c->out_len - c->out_off; }

/* ---- the incoming buffer: bytes read from the socket, not yet opened (tls.c, tls_records.c) */

/*
 * The incoming side: one recv() of up to SOCKET_READ bytes. During the handshake OpenSSL takes from it what
 * it asks for (a record header, then its body), so it never reads past its last handshake record: whatever
 * follows stays here for our records.
 */
void in_release(conn_t *c) {
  if (c->in == NULL) return;
  if (g_spare_in == NULL) g_spare_in = c->in;
  else free(c->in);
  c->in = NULL;
  c->in_off = c->in_len = 0;
}

/* The spare buffer, or a new one, for a connection that has none. 0: out of memory. */
int in_acquire(conn_t *c) {
  c->in = g_spare_in ? g_spare_in : malloc(SOCKET_READ);
  g_spare_in = NULL;
  c->in_off = c->in_len = 0;
  return c->in != NULL;
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
  tls_release(c);
  in_release(c);
  close(c->fd);
  c->fd = -1;
  out_release(c);
  uv_close((uv_handle_t *)&c->poll, on_closed);
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
      if (c->state == S_HANDSHAKE) tls_handshake(c);
      else if (events & UV_READABLE) do_read(c);
      else update_poll(c);
    }
  }
  napi_close_handle_scope(env, scope);
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
void on_read_end(conn_t *c) {
  c->read_eof = 1;
  emit(c, EV_END, 0, NULL);
  if (!c->closing && c->fin_sent) close_conn(c);
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

/* The socket is readable (or JavaScript asked): a spliced workload's bytes go to its stream (h2.c), a
 * plain connection's to JavaScript, a TLS connection's records are opened (tls_records.c). */
void do_read(conn_t *c) {
  /* No JavaScript call reads synchronously today; if one ever did inside a read, the poll catches up. */
  if (g_reading) {
    update_poll(c);
    return;
  }
  g_reading = 1;
  if (c->splice) splice_read(c);
  else if (c->plain) do_read_plain(c);
  else records_read(c);
  g_reading = 0;
}

/* ---- writing */

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
conn_t *conn_alloc(napi_env env, int32_t fd) {
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
napi_value conn_start(napi_env env, conn_t *c, napi_value owner, int events) {
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
