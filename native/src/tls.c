/*
 * The tunnel's TLS connection, in native code: OpenSSL (the copy inside Node) on a non-blocking socket that
 * libuv polls. Why not node:tls: it hands every 16 KiB record to JavaScript through a stream, and joins and
 * copies every write; on the tunnel that per-record cost was most of the daemon's CPU. Here one callback
 * carries everything readable at once (up to READ_BATCH), and a write seals the caller's buffers into
 * records and sends them with one syscall.
 *
 * JavaScript side: daemon/tls/connection.ts. Everything runs on the main thread.
 *   tlsInit(dispatch, allocSlab)                 once: dispatch(owner, event, a, b), allocSlab() -> Buffer
 *   tlsContext(opts)                             -> context (cert/key optional, roots, server: sni lookup)
 *   tlsConnect(ctx, fd, server, servername, owner) -> connection on a duplicate of fd (closed at the end)
 *   tlsWrite(conn, buffers[])                    -> bytes still queued for the socket
 *   tlsPause / tlsResume(conn)                   reading stops / starts (resume returns 1 if data is held)
 *   tlsPump(conn)                                read what OpenSSL already holds
 *   tlsEnd(conn)                                 close_notify and FIN once everything queued is out
 *   tlsDestroy(conn)                             now; the 'close' event follows
 * Events: 1 secure(peerCertDer, alpn)  2 data(offset, length in the current slab)  3 end  4 drain
 *         5 close(errorMessage | undefined)
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
#include <sys/socket.h>
#include <unistd.h>

#define EV_SECURE 1
#define EV_DATA 2
#define EV_END 3
#define EV_DRAIN 4
#define EV_CLOSE 5

/* What one 'data' event carries at most, and what one recv() reads. */
#define READ_BATCH (256 * 1024)
#define SOCKET_READ (256 * 1024)
/* A record's worth of plaintext. */
#define RECORD 16384
/* Below this much room left in the slab, a new one is asked for. */
#define SLAB_MIN (RECORD * 2)

enum { S_HANDSHAKE = 0, S_OPEN = 1, S_CLOSED = 2 };

typedef struct {
  SSL_CTX *ctx;
  napi_env env;
  napi_ref sni; /* server: servername -> context | undefined */
} actx_t;

typedef struct conn {
  napi_env env;
  napi_ref owner;
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
  char *in; /* ciphertext read from the socket, not yet taken by OpenSSL */
  size_t in_off, in_len;
  uv_poll_t poll;
} conn_t;

static napi_ref g_dispatch;
static napi_ref g_alloc_slab;
static napi_ref g_slab;
static napi_async_context g_async;
static char *g_slab_data;
static size_t g_slab_len, g_slab_off;
static BIO_METHOD *g_out_method;
static BIO_METHOD *g_in_method;
/* An emptied input buffer waits here for the next connection that reads: no malloc per read. */
static char *g_spare_in;
static char *g_spare_out;
static size_t g_spare_out_cap;
static unsigned char g_stage[RECORD];
static const unsigned char ALPN_H2[] = {2, 'h', '2'};

/* ---- errors */

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

static void set_err(conn_t *c, const char *msg) {
  if (c->err == NULL) c->err = dup_str(msg);
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

static void emit(conn_t *c, int ev, int argc_extra, napi_value *extra) {
  napi_env env = c->env;
  napi_value fn, owner, global, argv[4], result;
  if (napi_get_reference_value(env, g_dispatch, &fn) != napi_ok) return;
  napi_get_reference_value(env, c->owner, &owner);
  napi_get_global(env, &global);
  argv[0] = owner;
  napi_create_int32(env, ev, &argv[1]);
  for (int i = 0; i < argc_extra && i < 2; i++) argv[2 + i] = extra[i];
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

static int out_reserve(conn_t *c, size_t more) {
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

static size_t queued(conn_t *c) { return c->out_len - c->out_off; }

/*
 * The incoming side: one recv() of up to SOCKET_READ bytes, handed to OpenSSL as it asks (a record header,
 * then its body). Not OpenSSL's socket BIO with read-ahead: with a large read-ahead buffer OpenSSL moves
 * what is left to the front of it before every record, which costs more than the decryption.
 */
static void in_release(conn_t *c) {
  if (c->in == NULL) return;
  if (g_spare_in == NULL) g_spare_in = c->in;
  else free(c->in);
  c->in = NULL;
  c->in_off = c->in_len = 0;
}

static int in_bread(BIO *b, char *data, int len) {
  conn_t *c = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (len <= 0) return 0;
  if (c->in_off == c->in_len) {
    if (c->in == NULL) {
      c->in = g_spare_in ? g_spare_in : malloc(SOCKET_READ);
      g_spare_in = NULL;
      if (c->in == NULL) {
        errno = ENOMEM;
        return -1;
      }
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

/* Whether anything is readable without the socket saying so: in OpenSSL or in our input buffer. */
static int has_pending(conn_t *c) { return SSL_has_pending(c->ssl) || c->in_off < c->in_len; }

static void update_poll(conn_t *c);
static void close_conn(conn_t *c);

/* Sends what is queued. Returns 0 if the connection failed (and is closing). */
static int flush_out(conn_t *c) {
  while (c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n > 0) {
      c->out_off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    char buf[160];
    snprintf(buf, sizeof buf, "write to the peer failed: %s", strerror(errno));
    set_err(c, buf);
    close_conn(c);
    return 0;
  }
  if (c->out_off == c->out_len) {
    c->out_off = c->out_len = 0;
    out_release(c);
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

/* ---- the poll */

static void on_poll(uv_poll_t *h, int status, int events);

static void update_poll(conn_t *c) {
  if (c->closing) return;
  int want = 0;
  if (!c->read_eof && (!c->paused || c->state == S_HANDSHAKE)) want |= UV_READABLE;
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
  napi_value arg;
  if (c->err) napi_create_string_utf8(env, c->err, NAPI_AUTO_LENGTH, &arg);
  else napi_get_undefined(env, &arg);
  emit(c, EV_CLOSE, 1, &arg);
  napi_close_handle_scope(env, scope);
  napi_delete_reference(env, c->owner);
  free(c->err);
  free(c);
}

static void close_conn(conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  c->state = S_CLOSED;
  uv_poll_stop(&c->poll);
  SSL_free(c->ssl);
  c->ssl = NULL;
  in_release(c);
  close(c->fd);
  c->fd = -1;
  out_release(c);
  uv_close((uv_handle_t *)&c->poll, on_closed);
}

/* ---- reading */

static int ensure_slab(napi_env env) {
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

/* Decrypts what is readable into the slab and hands it on, one event per batch. */
static void do_read(conn_t *c) {
  napi_env env = c->env;
  /* SSL_get_error reads OpenSSL's error queue: it must hold nothing of ours from before. */
  ERR_clear_error();
  /* Until the socket and OpenSSL are both empty: records OpenSSL holds raise no poll event. */
  while (!c->closing && !c->paused && !c->read_eof) {
    if (!ensure_slab(env)) {
      set_err(c, "out of memory for the read buffer");
      close_conn(c);
      return;
    }
    size_t start = g_slab_off, got = 0, room = g_slab_len - g_slab_off;
    if (room > READ_BATCH) room = READ_BATCH;
    int stop = 0; /* 1 would block, 2 end, 3 error */
    while (got < room) {
      size_t n = 0;
      errno = 0;
      if (SSL_read_ex(c->ssl, g_slab_data + start + got, room - got, &n)) {
        got += n;
        continue;
      }
      int e = SSL_get_error(c->ssl, 0);
      if (e == SSL_ERROR_WANT_READ) stop = 1;
      else if (e == SSL_ERROR_ZERO_RETURN) stop = 2;
      else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && (errno == 0 || errno == EAGAIN)) stop = 2;
      else if (e == SSL_ERROR_WANT_WRITE) stop = 1;
      else {
        set_ssl_err(c, "TLS read failed");
        stop = 3;
      }
      break;
    }
    /* Post-handshake messages (tickets, key updates) may have queued records of ours. */
    if (queued(c) > 0 && !flush_out(c)) return;
    if (got > 0) {
      g_slab_off += got;
      napi_value a[2];
      napi_create_uint32(env, (uint32_t)start, &a[0]);
      napi_create_uint32(env, (uint32_t)got, &a[1]);
      emit(c, EV_DATA, 2, a);
      if (c->closing) return;
    }
    if (stop == 3) {
      close_conn(c);
      return;
    }
    if (stop == 2) {
      c->read_eof = 1;
      emit(c, EV_END, 0, NULL);
      if (c->closing) return;
      if (c->fin_sent) {
        close_conn(c);
        return;
      }
      break;
    }
    if (stop == 1) {
      /* Nothing more to read for now: OpenSSL's record buffers (~34 KiB) go until the next bytes come.
       * Once per batch rather than per record, which is what SSL_MODE_RELEASE_BUFFERS would cost. */
      if (!has_pending(c)) SSL_free_buffers(c->ssl);
      break;
    }
  }
  update_poll(c);
}

/* ---- handshake */

static void handshake(conn_t *c) {
  ERR_clear_error();
  errno = 0;
  int r = SSL_do_handshake(c->ssl);
  if (r == 1) {
    c->state = S_OPEN;
    if (!flush_out(c)) return;
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
    char buf[160];
    snprintf(buf, sizeof buf, "socket error: %s", uv_strerror(status));
    set_err(c, buf);
    close_conn(c);
  } else {
    if ((events & UV_WRITABLE) && !c->closing) {
      size_t before = queued(c);
      if (flush_out(c) && before > 0 && queued(c) == 0 && c->need_drain) {
        c->need_drain = 0;
        emit(c, EV_DRAIN, 0, NULL);
      }
    }
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

static napi_value throw_msg(napi_env env, const char *code, const char *msg) {
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

/* tlsContext({ roots, ciphersuites, cert?, key?, sni? }) */
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
  actx_t *a = calloc(1, sizeof *a);
  if (!a) {
    throw_msg(env, "ENOMEM", "tlsContext: out of memory");
    goto fail;
  }
  a->ctx = ctx;
  a->env = env;
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

static conn_t *get_conn(napi_env env, napi_value v) {
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
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  /* Our own descriptor: the caller closes its socket (Node's) right after this. */
  int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (own < 0) return throw_msg(env, "EBADF", "tlsConnect: the socket's descriptor cannot be duplicated");
  fd = own;
  conn_t *c = calloc(1, sizeof *c);
  if (!c) {
    close(fd);
    return throw_msg(env, "ENOMEM", "tlsConnect: out of memory");
  }
  c->env = env;
  c->fd = fd;
  c->server = server;
  c->ssl = SSL_new(a->ctx);
  BIO *wbio = c->ssl ? BIO_new(g_out_method) : NULL;
  BIO *rbio = wbio ? BIO_new(g_in_method) : NULL;
  if (!rbio || uv_poll_init_socket(loop, &c->poll, fd) != 0) {
    BIO_free(rbio);
    BIO_free(wbio);
    SSL_free(c->ssl);
    close(fd);
    free(c);
    return throw_ssl(env, "tlsConnect");
  }
  BIO_set_data(wbio, c);
  BIO_set_data(rbio, c);
  SSL_set_bio(c->ssl, rbio, wbio);
  c->poll.data = c;
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
  napi_create_reference(env, argv[4], 1, &c->owner);
  c->state = S_HANDSHAKE;
  /* The client speaks first; a server waits for its hello. Both go through the poll, never re-entering JS. */
  c->events = UV_READABLE | UV_WRITABLE;
  uv_poll_start(&c->poll, c->events, on_poll);
  return wrap_conn(env, c);
}

/* Seals `len` bytes into records (queued in c->out). */
static int seal(conn_t *c, const unsigned char *p, size_t len) {
  while (len > 0) {
    size_t n = 0;
    if (!SSL_write_ex(c->ssl, p, len, &n)) {
      set_ssl_err(c, "TLS write failed");
      return 0;
    }
    p += n;
    len -= n;
  }
  return 1;
}

/*
 * tlsWrite(conn, buffers): the buffers become full records where it costs little. Small pieces (a frame header,
 * a control frame) are gathered with what follows them into one record; a large piece goes straight to
 * OpenSSL, which seals it from the caller's memory.
 */
static napi_value TlsWrite(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  conn_t *c = argc >= 2 ? get_conn(env, argv[0]) : NULL;
  if (!c) return throw_msg(env, "EINVAL", "tlsWrite(conn, buffers)");
  if (c->closing || c->state != S_OPEN || c->ending) {
    napi_create_int32(env, -1, &result);
    return result;
  }
  uint32_t count = 0;
  napi_get_array_length(env, argv[1], &count);
  ERR_clear_error();
  size_t staged = 0;
  int ok = 1;
  for (uint32_t i = 0; i < count && ok; i++) {
    napi_value item;
    void *data;
    size_t len;
    napi_get_element(env, argv[1], i, &item);
    if (napi_get_buffer_info(env, item, &data, &len) != napi_ok) {
      napi_throw_type_error(env, "EINVAL", "tlsWrite: every item must be a Buffer");
      return NULL;
    }
    const unsigned char *p = data;
    if (staged + len <= RECORD && (staged > 0 || len < 4096)) {
      memcpy(g_stage + staged, p, len);
      staged += len;
      continue;
    }
    if (staged > 0) {
      size_t fill = RECORD - staged;
      memcpy(g_stage + staged, p, fill);
      ok = seal(c, g_stage, RECORD);
      staged = 0;
      p += fill;
      len -= fill;
    }
    /* Whole records straight from the caller's buffer; the tail waits for what follows. */
    size_t whole = len - len % RECORD;
    if (ok && whole > 0) ok = seal(c, p, whole);
    if (ok && len > whole) {
      memcpy(g_stage, p + whole, len - whole);
      staged = len - whole;
    }
  }
  if (ok && staged > 0) ok = seal(c, g_stage, staged);
  if (!ok) {
    close_conn(c);
    napi_create_int32(env, -1, &result);
    return result;
  }
  if (flush_out(c)) update_poll(c);
  size_t q = c->closing ? 0 : queued(c);
  if (q > 0) c->need_drain = 1;
  napi_create_double(env, (double)q, &result);
  return result;
}

static napi_value conn_arg(napi_env env, napi_callback_info info, conn_t **out) {
  size_t argc = 1;
  napi_value v;
  napi_get_cb_info(env, info, &argc, &v, NULL, NULL);
  *out = argc >= 1 ? get_conn(env, v) : NULL;
  if (!*out) throw_msg(env, "EINVAL", "expected a TLS connection");
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
    held = c->state == S_OPEN && !c->read_eof && has_pending(c);
  }
  napi_get_boolean(env, held, &r);
  return r;
}

static napi_value TlsPump(napi_env env, napi_callback_info info) {
  conn_t *c;
  conn_arg(env, info, &c);
  if (c && !c->closing && c->state == S_OPEN) do_read(c);
  return NULL;
}

static napi_value TlsEnd(napi_env env, napi_callback_info info) {
  conn_t *c;
  conn_arg(env, info, &c);
  if (!c || c->closing || c->ending) return NULL;
  c->ending = 1;
  if (c->state == S_OPEN) {
    ERR_clear_error();
    SSL_shutdown(c->ssl); /* queues close_notify */
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
  if (g_dispatch) return NULL;
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
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
