/*
 * libFuzzer target: a peer's bytes into a server session's input, through the real glue (native/src/h2.c,
 * compiled here as it is) and the real nghttp2 (Debian's libnghttp2, since there is no Node here). N-API
 * and conn.c's and tls_records.c's functions are stubbed: the stub of emit() plays the JavaScript side the way
 * daemon/proxy/h2/session.ts does (answers each request with 200, writes a little on it and ends it,
 * splices one stream to a real socket pair, gives credit back for DATA), so that the data providers, the
 * splice and the limits all run.
 *
 * Input: the first byte picks the harness's behaviour (bit 0: the peer reads, so the TLS queue drains;
 * bits 1-3: how the rest is cut into records), the rest is what TLS decrypted, from the client's preface on.
 *
 *   make -f native/fuzz/h2.mk fuzz-h2 && native/fuzz/build/h2_fuzz native/fuzz/corpus/h2 -dict=native/fuzz/h2.dict
 */
#include "../src/h2.c"

#include <fcntl.h>
#include <unistd.h>

/* ---- the N-API stubs: a value is an index into a small arena, which keeps numbers and lengths */

struct napi_env__ {
  int unused;
};
struct napi_value__ {
  double num;
  size_t len;
};
static struct napi_env__ g_env;
static struct napi_value__ g_vals[4096];
static unsigned g_nval;
static unsigned char g_bufcopy[1 << 20];
static volatile unsigned g_sink;
static uint64_t g_now = 1000;

static napi_value val(double num, size_t len) {
  napi_value v = &g_vals[g_nval++ % 4096];
  v->num = num;
  v->len = len;
  return v;
}

static void touch(const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) g_sink += b[i];
}

napi_status napi_create_array(napi_env env, napi_value *r) { (void)env; *r = val(0, 0); return napi_ok; }
napi_status napi_create_buffer_copy(napi_env env, size_t len, const void *data, void **copy, napi_value *r) {
  (void)env;
  if (len > sizeof g_bufcopy) return napi_generic_failure;
  memcpy(g_bufcopy, data, len);
  if (copy) *copy = g_bufcopy;
  *r = val(0, len);
  return napi_ok;
}
napi_status napi_create_double(napi_env env, double v, napi_value *r) { (void)env; *r = val(v, 0); return napi_ok; }
napi_status napi_create_int64(napi_env env, int64_t v, napi_value *r) { (void)env; *r = val((double)v, 0); return napi_ok; }
napi_status napi_create_uint32(napi_env env, uint32_t v, napi_value *r) { (void)env; *r = val(v, 0); return napi_ok; }
napi_status napi_create_string_latin1(napi_env env, const char *s, size_t len, napi_value *r) {
  (void)env;
  touch(s, len);
  *r = val(0, len);
  return napi_ok;
}
napi_status napi_create_string_utf8(napi_env env, const char *s, size_t len, napi_value *r) {
  (void)env;
  touch(s, len == NAPI_AUTO_LENGTH ? strlen(s) : len);
  *r = val(0, 0);
  return napi_ok;
}
napi_status napi_get_boolean(napi_env env, bool v, napi_value *r) { (void)env; *r = val(v, 0); return napi_ok; }
napi_status napi_get_undefined(napi_env env, napi_value *r) { (void)env; *r = val(0, 0); return napi_ok; }
napi_status napi_set_element(napi_env env, napi_value o, uint32_t i, napi_value v) {
  (void)env, (void)o, (void)i, (void)v;
  return napi_ok;
}
napi_status napi_get_uv_event_loop(napi_env env, struct uv_loop_s **loop) {
  (void)env;
  static char fake;
  *loop = (struct uv_loop_s *)&fake;
  return napi_ok;
}
uint64_t uv_now(const uv_loop_t *loop) {
  (void)loop;
  return g_now;
}
/* JavaScript's calls are not made through N-API here (the stub of emit calls the glue directly). */
napi_status napi_define_properties(napi_env env, napi_value o, size_t n, const napi_property_descriptor *p) {
  (void)env, (void)o, (void)n, (void)p;
  return napi_ok;
}
napi_status napi_get_array_length(napi_env env, napi_value v, uint32_t *r) { (void)env, (void)v; *r = 0; return napi_ok; }
napi_status napi_get_buffer_info(napi_env env, napi_value v, void **d, size_t *l) {
  (void)env, (void)v, (void)d, (void)l;
  return napi_invalid_arg;
}
napi_status napi_get_cb_info(napi_env env, napi_callback_info i, size_t *argc, napi_value *argv, napi_value *t,
                             void **data) {
  (void)env, (void)i, (void)argv, (void)t, (void)data;
  *argc = 0;
  return napi_ok;
}
napi_status napi_get_element(napi_env env, napi_value o, uint32_t i, napi_value *r) {
  (void)env, (void)o, (void)i;
  *r = val(0, 0);
  return napi_ok;
}
napi_status napi_get_value_bool(napi_env env, napi_value v, bool *r) { (void)env; *r = v->num != 0; return napi_ok; }
napi_status napi_get_value_double(napi_env env, napi_value v, double *r) { (void)env; *r = v->num; return napi_ok; }
napi_status napi_get_value_uint32(napi_env env, napi_value v, uint32_t *r) { (void)env; *r = (uint32_t)v->num; return napi_ok; }
napi_status napi_get_value_string_latin1(napi_env env, napi_value v, char *b, size_t n, size_t *r) {
  (void)env, (void)v, (void)b, (void)n;
  *r = 0;
  return napi_ok;
}
napi_status napi_get_value_string_utf8(napi_env env, napi_value v, char *b, size_t n, size_t *r) {
  (void)env, (void)v, (void)b, (void)n;
  *r = 0;
  return napi_ok;
}
napi_status napi_typeof(napi_env env, napi_value v, napi_valuetype *r) { (void)env, (void)v; *r = napi_null; return napi_ok; }

/* ---- conn.c's and tls_records.c's side of conn.h: a queue that only counts, and drains when the peer reads */

char *g_slab_data;
size_t g_slab_len, g_slab_off;
static int g_peer_reads;
static conn_t *g_tls, *g_plain;
static int g_pair[2] = {-1, -1};

void set_err(conn_t *c, const char *msg) { (void)c, (void)msg; }
void close_conn(conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  if (c->splice) splice_free(c);
  if (c->h2) h2_free(c);
}
void close_for_errno(conn_t *c, const char *what) { (void)what; close_conn(c); }
void update_poll(conn_t *c) { (void)c; }
/* A peer that does not read: each byte queued counts for 256, so that the 1 MiB high-water mark (the
 * frames nghttp2 then keeps, the streams that wait for room) is reached by small inputs. */
size_t queued(conn_t *c) { return (c->out_len - c->out_off) * (c->plain || g_peer_reads ? 1 : 256); }
int out_reserve(conn_t *c, size_t more) { (void)c, (void)more; return 1; }
int flush_out(conn_t *c) {
  if (c->closing) return 0;
  if (c->plain || g_peer_reads) {
    c->out_off = c->out_len = 0;
    if (c->h2) h2_drained(c);
  }
  return !c->closing;
}
int flush_and_drain(conn_t *c) { return flush_out(c); }
int ensure_slab(napi_env env) { (void)env; return 1; }
int emit_data(conn_t *c, size_t start, size_t *got) { (void)c, (void)start; *got = 0; return 1; }
int seal_records(conn_t *c, const piece_t *pieces, size_t total) {
  size_t n = 0;
  for (size_t i = 0; n < total; i++) {
    touch(pieces[i].p, pieces[i].len);
    n += pieces[i].len;
  }
  c->out_len += total;
  return 1;
}
int write_plain(conn_t *c, const piece_t *pieces, uint32_t count) {
  (void)c;
  for (uint32_t i = 0; i < count; i++) touch(pieces[i].p, pieces[i].len);
  return 1;
}

/* ---- what JavaScript would do with the events (session.ts) */

static void respond(h2_t *h, uint32_t sid) {
  strm_t *st = get_strm(h, sid);
  if (!st || st->has_prd) return;
  nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE};
  nghttp2_data_provider prd = {.source = {.ptr = NULL}, .read_callback = on_read};
  if (nghttp2_submit_response(h->ng, (int32_t)sid, &nv, 1, &prd) != 0) return;
  st->has_prd = 1;
  if (sid % 3 == 1 && g_plain && !g_plain->splice && !g_plain->closing) {
    /* Spliced: the workload's bytes wait in a real socket; its FIN follows them. */
    static const char hello[] = "workload says hello";
    if (send(g_pair[1], hello, sizeof hello, MSG_NOSIGNAL) < 0) return;
    /* Every other one stays open: its data provider then waits for the socket (EAGAIN, splice_read). */
    if (sid % 4 == 1) shutdown(g_pair[1], SHUT_WR);
    /* The binding's own join (h2Splice's), so the harness splices as JavaScript's call does. */
    splice_join(h, st, g_plain);
    return;
  }
  /* JavaScript's own bytes on the stream, then its end (every other stream stays open). */
  static unsigned char body[300];
  st->out = malloc(sizeof body);
  if (!st->out) return;
  memcpy(st->out, body, sizeof body);
  st->out_len = st->out_cap = sizeof body;
  st->out_end = sid % 2;
  resume(h, st);
}

void emit(conn_t *c, int ev, int argc, napi_value *argv) {
  (void)argc;
  h2_t *h = c->h2;
  if (!h || h->dead) return;
  if (ev == EV_H2_HEADERS) {
    respond(h, (uint32_t)argv[0]->num);
  } else if (ev == EV_H2_DATA) {
    nghttp2_session_consume_stream(h->ng, (int32_t)argv[0]->num, argv[1]->len);
  } else if (ev == EV_STREAM && (uint32_t)argv[1]->num == STREAM_CLOSED + NGHTTP2_ENHANCE_YOUR_CALM) {
    nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, (int32_t)argv[0]->num, NGHTTP2_CANCEL);
  } else if (ev == EV_BDP) {
    nghttp2_settings_entry iv = {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, h->local_window * 2};
    if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, &iv, 1) == 0) h->local_window *= 2;
  }
}

/* A session's life on `data` (what TLS decrypted), cut into records of `cut` bytes. */
static int run_session(const uint8_t *data, size_t size, size_t cut) {
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, g_pair) != 0) return 0;
  fcntl(g_pair[0], F_SETFL, O_NONBLOCK);
  fcntl(g_pair[1], F_SETFL, O_NONBLOCK);
  conn_t tls = {0}, plain = {0};
  tls.env = &g_env;
  tls.records = 1;
  tls.fd = -1;
  plain.env = &g_env;
  plain.plain = 1;
  plain.fd = g_pair[0];
  g_tls = &tls;
  g_plain = &plain;
  /* maxConcurrentStreams, windows, maxFrameSize, maxHeaderListSize, maxHeaderFrames, streamResetRate,
   * maxOutboundControl: the defaults of hbone.ts (smaller windows, so that flow control runs). */
  const double opts[H2_OPT_COUNT] = {200, 65535, 1 << 20, 1 << 20, 16384, 16384, 8, 100, 1000};
  if (!h2_create(&tls, 1, opts)) return 0;
  for (size_t off = 0; off < size && !tls.closing; off += cut) {
    size_t n = size - off < cut ? size - off : cut;
    g_now += 7;
    if (!tls.h2 || !h2_input(&tls, data + off, n)) break;
    if (tls.closing || !h2_sync(&tls)) break;
    if (plain.splice && plain.splice->want_read) {
      if (send(g_pair[1], data + off, n < 64 ? n : 64, MSG_NOSIGNAL) < 0 && errno != EAGAIN) break;
      splice_read(&plain);
    }
  }
  if (!tls.closing) close_conn(&tls);
  if (!plain.closing) close_conn(&plain);
  close(g_pair[0]);
  close(g_pair[1]);
  g_nval = 0;
  return 0;
}

#ifndef FUZZ_CONNECT_HEADERS
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  g_peer_reads = data[0] & 1;
  size_t cut = (size_t)1 << (((data[0] >> 1) & 7) + 5); /* 32 B .. 4 KiB per record */
  return run_session(data + 1, size - 1, cut);
}
#else
/*
 * connect_fuzz: the CONNECT header handling. The input is a header block (HPACK, as a client's encoder
 * writes it) that arrives after a valid preface and SETTINGS, as the HEADERS of stream 1 and its
 * CONTINUATIONs, then the same block again on stream 3 (the dynamic table the first one built is then in
 * force), so that nghttp2's decoder, the glue's header callbacks, the header-list and frame-count limits and
 * the event JavaScript gets (name/value pairs, END_STREAM) run on every mutation of the block itself rather
 * than on framing the mutator would mostly break. First byte: bits 0-2 how many frames the block is cut
 * into (1-8), bit 3 END_STREAM, bit 4 no second request.
 */
static uint8_t g_wire[1 << 18];

static size_t put_frame(size_t at, uint8_t type, uint8_t flags, uint32_t sid, const uint8_t *p, size_t n) {
  if (at + 9 + n > sizeof g_wire) return at;
  uint8_t *h = g_wire + at;
  h[0] = (uint8_t)(n >> 16), h[1] = (uint8_t)(n >> 8), h[2] = (uint8_t)n;
  h[3] = type, h[4] = flags;
  h[5] = (uint8_t)(sid >> 24) & 0x7f, h[6] = (uint8_t)(sid >> 16), h[7] = (uint8_t)(sid >> 8), h[8] = (uint8_t)sid;
  if (n > 0) memcpy(h + 9, p, n);
  return at + 9 + n;
}

static size_t put_block(size_t at, uint32_t sid, const uint8_t *block, size_t n, unsigned frames, int end) {
  size_t piece = (n + frames - 1) / frames, off = 0;
  for (unsigned i = 0; i < frames; i++) {
    size_t len = n - off < piece ? n - off : piece;
    int last = i + 1 == frames || off + len >= n;
    uint8_t flags = (uint8_t)((last ? NGHTTP2_FLAG_END_HEADERS : 0) | (i == 0 && end ? NGHTTP2_FLAG_END_STREAM : 0));
    at = put_frame(at, i == 0 ? NGHTTP2_HEADERS : NGHTTP2_CONTINUATION, flags, sid, block + off, len);
    off += len;
    if (last) break;
  }
  return at;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size > 65536) return 0;
  unsigned frames = (data[0] & 7) + 1;
  int end = (data[0] >> 3) & 1, twice = !((data[0] >> 4) & 1);
  const uint8_t *block = data + 1;
  size_t n = size - 1;
  static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  memcpy(g_wire, preface, 24);
  size_t at = put_frame(24, NGHTTP2_SETTINGS, 0, 0, NULL, 0);
  at = put_block(at, 1, block, n, frames, end);
  if (twice) at = put_block(at, 3, block, n, frames, end);
  g_peer_reads = 1;
  return run_session(g_wire, at, 16384);
}
#endif
