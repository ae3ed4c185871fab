/*
 * The connection calls JavaScript makes (daemon/native/addon.ts; conn.c, tls.c and tls_records.c do the
 * work). Everything runs on the main thread.
 *   tlsInit(dispatch, allocSlab)                 once: dispatch(owner, event, a, b, c, d), allocSlab() -> Buffer
 *   tlsContext(opts)                             -> context (cert/key optional, roots, server: sni lookup,
 *                                                  keyUpdateRate: a peer's KeyUpdates a second, burst 10x)
 *   tlsConnect(ctx, fd, server, servername, owner) -> connection on a duplicate of fd (closed at the end)
 *   tlsWrite(conn, buffers[])                    -> bytes still queued for the socket
 *   tlsPause / tlsResume(conn)                   reading stops / starts (resume returns 1 if data is held)
 *   tlsPump(conn)                                read what is already held
 *   tlsEnd(conn)                                 close_notify and FIN once everything queued is out
 *   tlsDestroy(conn)                             now; the 'close' event follows
 *   tlsReset(conn)                               now, with RST
 *   plainConnect(fd, owner)                      a workload's plain TCP connection; the calls above work on it
 * Events: listed in codes.h (EV_*); a tunnel's HTTP/2 ones come from h2.c.
 */
#include <node_api.h>
#include <uv.h>
#include <stdlib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "conn.h"
#include "h2.h"

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

/* tlsInit(dispatch, allocSlab): once, before any connection. */
static napi_value TlsInit(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return throw_msg(env, "EINVAL", "tlsInit(dispatch, allocSlab)");
  /* One JavaScript environment per process: the buffers and callbacks here are process-wide. */
  int ready = conn_ready(env);
  if (ready < 0) return throw_msg(env, "ENOTSUP", "the tunnel's TLS runs on the main thread only");
  if (ready > 0) return NULL;
  if (!records_init()) return throw_msg(env, "ENOMEM", "tlsInit: out of memory");
  conn_init(env, argv[0], argv[1]);
  tls_init();
  return NULL;
}

/* tlsContext({ roots, ciphersuites, cert?, key?, sni?, keyUpdateRate? }) -> context */
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
  actx_t *a = tls_context_new(env, roots, suites, cert, key, rate);
  if (!a) goto done;
  napi_value sni;
  napi_valuetype t = napi_undefined;
  if (napi_get_named_property(env, opts, "sni", &sni) == napi_ok) napi_typeof(env, sni, &t);
  if (t == napi_function) tls_context_sni(a, sni);
  napi_create_external(env, a, tls_context_free, NULL, &result);
done:
  free(roots);
  free(suites);
  free(cert);
  free(key);
  return result;
}

/* tlsConnect(ctx, fd, server, servername | null, owner) -> connection */
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
  char name[256];
  const char *servername = NULL;
  if (!server) {
    napi_typeof(env, argv[3], &t);
    if (t == napi_string) {
      size_t len;
      napi_get_value_string_utf8(env, argv[3], name, sizeof name, &len);
      servername = name;
    }
  }
  conn_t *c = tls_conn_new(env, a, fd, server, servername);
  if (!c) return NULL;
  /* The client speaks first; a server waits for its hello. Both go through the poll, never re-entering JS. */
  napi_value conn = conn_start(env, c, argv[4], UV_READABLE | UV_WRITABLE);
  /* The context outlives the connection's handshake: a server's SNI callback reaches its lookup through it. */
  if (conn) napi_create_reference(env, argv[0], 1, &c->ctx);
  return conn;
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
  if (c->records && !seal_close_notify(c)) {
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

/* connSpliced(conn) -> [in, out]: what the splice has carried so far, for a live view of an open
 * connection (the totals come with its close event). */
static napi_value ConnSpliced(napi_env env, napi_callback_info info) {
  conn_t *c;
  conn_arg(env, info, &c);
  napi_value r, v;
  napi_create_array_with_length(env, 2, &r);
  napi_create_double(env, c ? c->spliced_in : 0, &v);
  napi_set_element(env, r, 0, v);
  napi_create_double(env, c ? c->spliced_out : 0, &v);
  napi_set_element(env, r, 1, v);
  return r;
}

void ambit_conn_init(napi_env env, napi_value exports) {
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
    {"connSpliced", NULL, ConnSpliced, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
