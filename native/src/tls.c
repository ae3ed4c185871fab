/*
 * The tunnel's TLS handshake and contexts, on OpenSSL (the copy inside Node). A connection's socket bytes
 * reach OpenSSL through BIOs on the connection's own buffers (conn.c): during the handshake OpenSSL takes
 * from the incoming one what it asks for (a record header, then its body), so it never reads past its last
 * handshake record, and whatever follows stays there for our records. Once the handshake is done, its
 * traffic secrets (from the key log) key our records (tls_records.c) and OpenSSL's connection is freed.
 * TLS 1.3 only, ALPN h2 only, a verified certificate chain on both ends; a server picks its certificate
 * by SNI through a JavaScript lookup. JavaScript's calls come in through napi_conn.c.
 */
#include <node_api.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"

struct actx {
  SSL_CTX *ctx;
  napi_env env;
  napi_ref sni; /* server: servername -> context | undefined */
  double key_update_rate;
};

static BIO_METHOD *g_out_method;
static BIO_METHOD *g_in_method;
static const unsigned char ALPN_H2[] = {2, 'h', '2'};

/* ---- errors */

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

static napi_value throw_ssl(napi_env env, const char *what) {
  char buf[320], reason[256];
  unsigned long e = ERR_get_error();
  ERR_error_string_n(e, reason, sizeof reason);
  snprintf(buf, sizeof buf, "%s: %s", what, e ? reason : "unknown error");
  ERR_clear_error();
  return throw_msg(env, "ERR_TLS_CONTEXT", buf);
}

/* ---- the BIOs: OpenSSL writes to the outgoing queue and reads the incoming buffer */

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

void tls_init(void) {
  if (g_out_method) return;
  g_out_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ambit-out");
  BIO_meth_set_write(g_out_method, out_bwrite);
  BIO_meth_set_ctrl(g_out_method, out_ctrl);
  BIO_meth_set_create(g_out_method, out_create);
  g_in_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ambit-in");
  BIO_meth_set_read(g_in_method, in_bread);
  BIO_meth_set_ctrl(g_in_method, in_ctrl);
  BIO_meth_set_create(g_in_method, out_create);
}

/* ---- handshake */

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
  c->ku_at = clock_ms();
  SSL_free(c->ssl);
  c->ssl = NULL;
  return 1;
}

void tls_handshake(conn_t *c) {
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

void tls_release(conn_t *c) {
  SSL_free(c->ssl);
  c->ssl = NULL;
  if (c->records) rec_free(&c->rec);
  c->records = 0;
  OPENSSL_cleanse(c->secret_client, sizeof c->secret_client);
  OPENSSL_cleanse(c->secret_server, sizeof c->secret_server);
  free(c->hs);
  c->hs = NULL;
}

/* ---- contexts */

/* The finalizer of a context's external: its SNI lookup goes, and our reference to the SSL_CTX. */
void tls_context_free(napi_env env, void *data, void *hint) {
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

/*
 * A context for one identity (cert and key, both optional: a server that picks one per SNI has none) and
 * the roots a peer must chain to; `rate`: the peer's KeyUpdates a second. NULL: thrown.
 */
actx_t *tls_context_new(napi_env env, const char *roots, const char *suites, const char *cert, const char *key,
                        double rate) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (!ctx) {
    throw_ssl(env, "SSL_CTX_new");
    return NULL;
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
  return a;
fail:
  SSL_CTX_free(ctx);
  return NULL;
}

/* Server: `fn` (servername -> context | undefined) picks the certificate for the name a client sends. */
void tls_context_sni(actx_t *a, napi_value fn) {
  napi_create_reference(a->env, fn, 1, &a->sni);
  SSL_CTX_set_tlsext_servername_callback(a->ctx, on_servername);
  SSL_CTX_set_tlsext_servername_arg(a->ctx, a);
}


/* ---- connections */

/*
 * A TLS connection on a duplicate of fd with context `a`: a server's or a client's (which sends
 * `servername` in SNI, when there is one). Not yet watched: conn_start does that. NULL: thrown.
 */
conn_t *tls_conn_new(napi_env env, actx_t *a, int32_t fd, int server, const char *servername) {
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
    throw_ssl(env, "tlsConnect");
    return NULL;
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
    if (servername) SSL_set_tlsext_host_name(c->ssl, servername);
    SSL_set_connect_state(c->ssl);
  }
  c->state = S_HANDSHAKE;
  return c;
}
