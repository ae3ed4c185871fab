/*
 * The HTTP/2 calls JavaScript makes on a tunnel connection (daemon/proxy/h2/session.ts through
 * daemon/native/addon.ts); h2.c does the work. Each checks its arguments and that the session is usable
 * (h2_args), then submits to nghttp2; what is submitted goes out on h2Send (once per turn).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "h2.h"

static h2_t *h2_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  conn_t *c = argc >= want ? get_conn(env, argv[0]) : NULL;
  h2_t *h = c && !c->closing ? c->h2 : NULL;
  return h && !h->dead ? h : NULL;
}

static double num_arg(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d;
}

static uint32_t u32_arg(napi_env env, napi_value v) {
  double d = num_arg(env, v);
  if (!(d > 0)) return 0;
  return d > 4294967295.0 ? 0xffffffffu : (uint32_t)d;
}



/* h2Enable(conn, server, [options in codes.h's h2_option order]) */
static napi_value H2Enable(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  conn_t *c = argc == 3 ? get_conn(env, argv[0]) : NULL;
  if (!c || c->plain || c->h2 || c->closing)
    return throw_msg(env, "EINVAL", "h2Enable(conn, server, options) once, on a TLS connection");
  bool server = false;
  napi_get_value_bool(env, argv[1], &server);
  double o[H2_OPT_COUNT];
  for (uint32_t i = 0; i < H2_OPT_COUNT; i++) {
    napi_value v;
    napi_get_element(env, argv[2], i, &v);
    o[i] = num_arg(env, v);
  }
  if (!h2_create(c, server, o)) return throw_msg(env, "ENOMEM", "h2Enable: out of memory");
  return NULL;
}

/* [name, value, ...] from JavaScript as nghttp2's list; the strings live in one buffer. */
typedef struct {
  nghttp2_nv *nv;
  size_t n;
  char *buf;
} nvlist_t;

static int nv_from(napi_env env, napi_value list, nvlist_t *out) {
  uint32_t len = 0;
  memset(out, 0, sizeof *out);
  if (napi_get_array_length(env, list, &len) != napi_ok || len % 2 != 0 || len > 512) return 0;
  size_t total = 0;
  for (uint32_t i = 0; i < len; i++) {
    napi_value v;
    size_t n = 0;
    napi_get_element(env, list, i, &v);
    if (napi_get_value_string_latin1(env, v, NULL, 0, &n) != napi_ok) return 0;
    total += n + 1;
  }
  out->buf = malloc(total + 1);
  out->nv = calloc(len / 2 + 1, sizeof *out->nv);
  if (!out->buf || !out->nv) {
    free(out->buf);
    free(out->nv);
    return 0;
  }
  size_t at = 0;
  for (uint32_t i = 0; i < len; i++) {
    napi_value v;
    size_t n = 0;
    napi_get_element(env, list, i, &v);
    napi_get_value_string_latin1(env, v, out->buf + at, total - at + 1, &n);
    if (i % 2 == 0) {
      out->nv[i / 2].name = (uint8_t *)out->buf + at;
      out->nv[i / 2].namelen = n;
    } else {
      out->nv[i / 2].value = (uint8_t *)out->buf + at;
      out->nv[i / 2].valuelen = n;
      out->nv[i / 2].flags = NGHTTP2_NV_FLAG_NONE;
    }
    at += n + 1;
  }
  out->n = len / 2;
  return 1;
}

static void nv_free(nvlist_t *l) {
  free(l->nv);
  free(l->buf);
}

static napi_value int_result(napi_env env, int64_t v) {
  napi_value r;
  napi_create_int64(env, v, &r);
  return r;
}

/* h2Request(conn, [name, value, ...]) -> stream id, or a negative nghttp2 error */
static napi_value H2Request(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  h2_t *h = h2_args(env, info, 2, argv);
  if (!h || h->server || h->failed) return int_result(env, NGHTTP2_ERR_INVALID_STATE);
  nvlist_t l;
  if (!nv_from(env, argv[1], &l)) return throw_msg(env, "EINVAL", "h2Request: headers are [name, value, ...]");
  strm_t *st = new_strm(h, 0);
  if (!st) {
    nv_free(&l);
    return throw_msg(env, "ENOMEM", "h2Request: out of memory");
  }
  nghttp2_data_provider prd = {.source = {.ptr = NULL}, .read_callback = on_read};
  int32_t sid = nghttp2_submit_request(h->ng, NULL, l.nv, l.n, &prd, st);
  nv_free(&l);
  if (sid < 0) {
    free_strm(h, st);
    return int_result(env, sid);
  }
  st->sid = (uint32_t)sid;
  st->has_prd = 1;
  st->unsent = 1;
  return int_result(env, sid);
}

/* h2Respond(conn, streamId, [name, value, ...], endStream) -> 0 or a negative nghttp2 error */
static napi_value H2Respond(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  h2_t *h = h2_args(env, info, 4, argv);
  uint32_t sid = 0;
  if (!h || !h->server) return int_result(env, NGHTTP2_ERR_INVALID_STATE);
  napi_get_value_uint32(env, argv[1], &sid);
  bool end = false;
  napi_get_value_bool(env, argv[3], &end);
  strm_t *st = get_strm(h, sid);
  if (!st) return int_result(env, NGHTTP2_ERR_STREAM_CLOSED);
  nvlist_t l;
  if (!nv_from(env, argv[2], &l)) return throw_msg(env, "EINVAL", "h2Respond: headers are [name, value, ...]");
  nghttp2_data_provider prd = {.source = {.ptr = NULL}, .read_callback = on_read};
  int rv = nghttp2_submit_response(h->ng, (int32_t)sid, l.nv, l.n, end ? NULL : &prd);
  nv_free(&l);
  if (rv == 0 && !end) st->has_prd = 1;
  if (rv == 0 && end && nghttp2_session_get_stream_remote_close(h->ng, (int32_t)sid) == 0) st->rst_after = 1;
  return int_result(env, rv);
}

/* h2Write(conn, streamId, buffer | null, end) -> bytes waiting in the stream's buffer, -1: no such stream */
static napi_value H2Write(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  h2_t *h = h2_args(env, info, 4, argv);
  uint32_t sid = 0;
  if (!h) return int_result(env, -1);
  napi_get_value_uint32(env, argv[1], &sid);
  strm_t *st = get_strm(h, sid);
  if (!st || !st->has_prd || st->out_end) return int_result(env, -1);
  void *data = NULL;
  size_t len = 0;
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t == napi_object && napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok)
    return throw_msg(env, "EINVAL", "h2Write: a Buffer or null");
  if (len > 0) {
    if (st->out_off > 0 && st->out_off == st->out_len) st->out_off = st->out_len = 0;
    if (st->out_len + len > st->out_cap) {
      if (st->out_off > 0) {
        memmove(st->out, st->out + st->out_off, st->out_len - st->out_off);
        st->out_len -= st->out_off;
        st->out_off = 0;
      }
      size_t cap = st->out_cap ? st->out_cap : 16 * 1024;
      while (cap < st->out_len + len) cap *= 2;
      unsigned char *b = realloc(st->out, cap);
      if (!b) return throw_msg(env, "ENOMEM", "h2Write: out of memory");
      st->out = b;
      st->out_cap = cap;
    }
    memcpy(st->out + st->out_len, data, len);
    st->out_len += len;
  }
  bool end = false;
  napi_get_value_bool(env, argv[3], &end);
  if (end) st->out_end = 1;
  if (!st->room) resume(h, st);
  size_t buffered = st->out_len - st->out_off;
  if (buffered >= STREAM_HIGH) st->told_full = 1;
  return int_result(env, (int64_t)buffered);
}

/* h2Consume(conn, streamId, bytes): JavaScript's reader took them; the peer may send that much more. */
static napi_value H2Consume(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  h2_t *h = h2_args(env, info, 3, argv);
  uint32_t sid = 0;
  if (!h) return NULL;
  napi_get_value_uint32(env, argv[1], &sid);
  size_t n = (size_t)num_arg(env, argv[2]);
  if (sid != 0 && n > 0) nghttp2_session_consume_stream(h->ng, (int32_t)sid, n);
  return NULL;
}

/* h2Reset(conn, streamId, code) */
static napi_value H2Reset(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  h2_t *h = h2_args(env, info, 3, argv);
  uint32_t sid = 0, code = 0;
  if (!h) return NULL;
  napi_get_value_uint32(env, argv[1], &sid);
  napi_get_value_uint32(env, argv[2], &code);
  if (sid != 0) nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, (int32_t)sid, code);
  return NULL;
}

/* h2Goaway(conn, code, message): no new streams past the last the peer opened; code 0 lets the rest end. */
static napi_value H2Goaway(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  h2_t *h = h2_args(env, info, 3, argv);
  if (!h) return NULL;
  uint32_t code = 0;
  napi_get_value_uint32(env, argv[1], &code);
  char msg[128];
  size_t n = 0;
  if (napi_get_value_string_utf8(env, argv[2], msg, sizeof msg, &n) != napi_ok) n = 0;
  if (code == 0)
    nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng), 0,
                          (const uint8_t *)msg, n);
  else
    nghttp2_session_terminate_session(h->ng, code);
  return NULL;
}

/* h2Ping(conn) -> whether a PING went on its way (its ACK is EV_H2_PING) */
static napi_value H2Ping(napi_env env, napi_callback_info info) {
  napi_value argv[1], r;
  h2_t *h = h2_args(env, info, 1, argv);
  napi_get_boolean(env, h && nghttp2_submit_ping(h->ng, NGHTTP2_FLAG_NONE, KEEPALIVE_PING) == 0, &r);
  return r;
}

/* h2Send(conn): what JavaScript submitted this turn goes out (called once per turn, from a microtask). */
static napi_value H2Send(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  h2_t *h = h2_args(env, info, 1, argv);
  if (h) pump(h);
  return NULL;
}

/* h2SetWindow(conn, streamWindow): SETTINGS_INITIAL_WINDOW_SIZE grows, for every stream at once. */
static napi_value H2SetWindow(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  h2_t *h = h2_args(env, info, 2, argv);
  if (!h) return NULL;
  uint32_t next = u32_arg(env, argv[1]);
  if (next > 0x7fffffff) next = 0x7fffffff;
  nghttp2_settings_entry iv = {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, next};
  if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, &iv, 1) == 0) h->local_window = next;
  return NULL;
}


/* h2Splice(conn, streamId, plain) -> whether the stream is spliced now */
static napi_value H2Splice(napi_env env, napi_callback_info info) {
  napi_value argv[3], result;
  h2_t *h = h2_args(env, info, 3, argv);
  conn_t *p = h ? get_conn(env, argv[2]) : NULL;
  uint32_t sid = 0;
  if (h) napi_get_value_uint32(env, argv[1], &sid);
  strm_t *st = h && !h->failed ? get_strm(h, sid) : NULL;
  napi_get_boolean(env, st != NULL && splice_join(h, st, p) != NULL, &result);
  return result;
}

/* h2Info(conn) -> [streams open in nghttp2, our stream window now] */
static napi_value H2Info(napi_env env, napi_callback_info info) {
  napi_value argv[1], r, v;
  h2_t *h = h2_args(env, info, 1, argv);
  napi_create_array(env, &r);
  napi_create_uint32(env, h ? h->nstrms : 0, &v);
  napi_set_element(env, r, 0, v);
  napi_create_uint32(env, h ? h->local_window : 0, &v);
  napi_set_element(env, r, 1, v);
  return r;
}

/*
 * h2Version() -> [version | undefined, the file nghttp2's code was found in]. Node exports nghttp2's
 * functions but not nghttp2_version (then JavaScript reads process.versions.nghttp2, the same build); the
 * file says whose copy runs: Node's binary, or a libnghttp2 (the fuzz build).
 */
static napi_value H2Version(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value r, v;
  napi_create_array(env, &r);
  typedef nghttp2_info *(*version_fn)(int);
  version_fn fn = (version_fn)dlsym(RTLD_DEFAULT, "nghttp2_version");
  if (fn) napi_create_string_utf8(env, fn(0)->version_str, NAPI_AUTO_LENGTH, &v);
  else napi_get_undefined(env, &v);
  napi_set_element(env, r, 0, v);
  Dl_info where;
  if (dladdr((void *)nghttp2_session_mem_recv, &where) && where.dli_fname)
    napi_create_string_utf8(env, where.dli_fname, NAPI_AUTO_LENGTH, &v);
  else napi_get_undefined(env, &v);
  napi_set_element(env, r, 1, v);
  return r;
}

void ambit_h2_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"h2Enable", NULL, H2Enable, NULL, NULL, NULL, napi_default, NULL},
    {"h2Request", NULL, H2Request, NULL, NULL, NULL, napi_default, NULL},
    {"h2Respond", NULL, H2Respond, NULL, NULL, NULL, napi_default, NULL},
    {"h2Write", NULL, H2Write, NULL, NULL, NULL, napi_default, NULL},
    {"h2Consume", NULL, H2Consume, NULL, NULL, NULL, napi_default, NULL},
    {"h2Reset", NULL, H2Reset, NULL, NULL, NULL, napi_default, NULL},
    {"h2Goaway", NULL, H2Goaway, NULL, NULL, NULL, napi_default, NULL},
    {"h2Ping", NULL, H2Ping, NULL, NULL, NULL, napi_default, NULL},
    {"h2Send", NULL, H2Send, NULL, NULL, NULL, napi_default, NULL},
    {"h2SetWindow", NULL, H2SetWindow, NULL, NULL, NULL, napi_default, NULL},
    {"h2Splice", NULL, H2Splice, NULL, NULL, NULL, napi_default, NULL},
    {"h2Info", NULL, H2Info, NULL, NULL, NULL, napi_default, NULL},
    {"h2Version", NULL, H2Version, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
