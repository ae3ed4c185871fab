/*
 * N-API and the few libuv calls of native/src stubbed, for the fuzz targets: the real conn.c, tls.c,
 * tls_records.c, record.c and h2.c run on top, with "JavaScript" reduced to counting the events it is
 * sent and handing out slabs. Values come from a small ring (the binding never keeps a napi_value past the call that made it); references are
 * the values themselves. What the binding would do on a failure of N-API is not what is fuzzed: every call
 * succeeds unless it asks for something the stub does not model.
 */
#include <node_api.h>
#include <uv.h>
#include <stdlib.h>
#include <string.h>

#include "napi_stub.h"

unsigned long stub_events[16];

struct napi_env__ *const stub_env = (struct napi_env__ *)&stub_events;

enum { V_UNDEF, V_NUM, V_BOOL, V_STR, V_EXT, V_BUF, V_FN, V_OBJ };

struct napi_value__ {
  int kind;
  double num;
  void *ptr;
  size_t len;
};

#define RING 256
static struct napi_value__ ring[RING];
static unsigned ring_at;

static napi_value val(int kind, double num, void *ptr, size_t len) {
  struct napi_value__ *v = &ring[ring_at++ % RING];
  v->kind = kind;
  v->num = num;
  v->ptr = ptr;
  v->len = len;
  return v;
}

/* The slab "JavaScript" allocates: a new one each time, the old one freed, so that a pointer the binding kept
 * into an old slab is a use-after-free AddressSanitizer sees. */
#define SLAB 262144
static void *slab;

static struct napi_value__ alloc_slab_fn = {V_FN, 0, NULL, 0};
static struct napi_value__ global_obj = {V_OBJ, 0, NULL, 0};

/* ---- libuv */

static struct {
  uv_handle_t *h;
  uv_close_cb cb;
} closes[64];
static int n_closes;

void uv_close(uv_handle_t *h, uv_close_cb cb) {
  if (n_closes < 64) {
    closes[n_closes].h = h;
    closes[n_closes].cb = cb;
    n_closes++;
  }
}

void stub_run_closes(void) {
  for (int i = 0; i < n_closes; i++)
    if (closes[i].cb) closes[i].cb(closes[i].h);
  n_closes = 0;
}

int uv_poll_init_socket(uv_loop_t *loop, uv_poll_t *h, uv_os_sock_t fd) {
  (void)loop, (void)fd;
  memset(h, 0, sizeof *h);
  return 0;
}
int uv_poll_start(uv_poll_t *h, int events, uv_poll_cb cb) {
  (void)h, (void)events, (void)cb;
  return 0;
}
int uv_poll_stop(uv_poll_t *h) {
  (void)h;
  return 0;
}
const char *uv_strerror(int err) {
  (void)err;
  return "stub error";
}
uint64_t uv_now(const uv_loop_t *loop) {
  (void)loop;
  return 0;
}

/* ---- N-API */

napi_status napi_get_uv_event_loop(node_api_basic_env env, struct uv_loop_s **loop) {
  (void)env;
  static uv_loop_t dummy;
  *loop = &dummy;
  return napi_ok;
}
napi_status napi_async_init(napi_env env, napi_value r, napi_value n, napi_async_context *result) {
  (void)env, (void)r, (void)n;
  *result = (napi_async_context)&global_obj;
  return napi_ok;
}
napi_status napi_make_callback(napi_env env, napi_async_context ac, napi_value recv, napi_value func, size_t argc,
                               const napi_value *argv, napi_value *result) {
  (void)env, (void)ac, (void)recv, (void)func;
  if (argc >= 2 && argv[1] && argv[1]->kind == V_NUM) {
    int ev = (int)argv[1]->num;
    if (ev >= 0 && ev < 16) stub_events[ev]++;
  }
  *result = val(V_UNDEF, 0, NULL, 0);
  return napi_ok;
}
napi_status napi_call_function(napi_env env, napi_value recv, napi_value func, size_t argc, const napi_value *argv,
                               napi_value *result) {
  (void)env, (void)recv, (void)argc, (void)argv;
  if (func == &alloc_slab_fn) {
    free(slab);
    slab = malloc(SLAB);
    if (!slab) return napi_generic_failure;
    *result = val(V_BUF, 0, slab, SLAB);
    return napi_ok;
  }
  *result = val(V_UNDEF, 0, NULL, 0);
  return napi_ok;
}
napi_status napi_open_handle_scope(napi_env env, napi_handle_scope *result) {
  (void)env;
  *result = (napi_handle_scope)&global_obj;
  return napi_ok;
}
napi_status napi_close_handle_scope(napi_env env, napi_handle_scope scope) {
  (void)env, (void)scope;
  return napi_ok;
}
napi_status napi_create_buffer(napi_env env, size_t length, void **data, napi_value *result) {
  (void)env, (void)length, (void)data, (void)result;
  return napi_generic_failure;
}
napi_status napi_create_buffer_copy(napi_env env, size_t length, const void *data, void **result_data,
                                    napi_value *result) {
  (void)env, (void)data;
  /* The copy is checked for being readable, then dropped: "JavaScript" keeps nothing. */
  static unsigned char sink[1 << 16];
  if (length > 0) {
    const unsigned char *p = data;
    sink[0] ^= p[0] ^ p[length - 1];
  }
  if (result_data) *result_data = NULL;
  *result = val(V_BUF, 0, NULL, length);
  return napi_ok;
}
napi_status napi_create_double(napi_env env, double value, napi_value *result) {
  (void)env;
  *result = val(V_NUM, value, NULL, 0);
  return napi_ok;
}
napi_status napi_create_int32(napi_env env, int32_t value, napi_value *result) {
  (void)env;
  *result = val(V_NUM, value, NULL, 0);
  return napi_ok;
}
napi_status napi_create_uint32(napi_env env, uint32_t value, napi_value *result) {
  (void)env;
  *result = val(V_NUM, value, NULL, 0);
  return napi_ok;
}
napi_status napi_create_external(napi_env env, void *data, node_api_basic_finalize cb, void *hint,
                                 napi_value *result) {
  (void)env, (void)cb, (void)hint;
  *result = val(V_EXT, 0, data, 0);
  return napi_ok;
}
napi_status napi_create_reference(napi_env env, napi_value value, uint32_t count, napi_ref *result) {
  (void)env, (void)value, (void)count;
  *result = (napi_ref)&global_obj;
  return napi_ok;
}
napi_status napi_delete_reference(napi_env env, napi_ref ref) {
  (void)env, (void)ref;
  return napi_ok;
}
/* Every reference the fuzz targets' code looks up is a function; the only one called for a value is the
 * slab allocator. */
napi_status napi_get_reference_value(napi_env env, napi_ref ref, napi_value *result) {
  (void)env, (void)ref;
  *result = &alloc_slab_fn;
  return napi_ok;
}
static napi_status str_value(const char *str, size_t length, napi_value *result) {
  size_t n = length == NAPI_AUTO_LENGTH ? strlen(str) : length;
  if (n > 0) {
    volatile char c = str[n - 1]; /* readable, whole */
    (void)c;
  }
  *result = val(V_STR, 0, (void *)str, n);
  return napi_ok;
}
napi_status napi_create_string_latin1(napi_env env, const char *str, size_t length, napi_value *result) {
  (void)env;
  return str_value(str, length, result);
}
napi_status napi_create_string_utf8(napi_env env, const char *str, size_t length, napi_value *result) {
  (void)env;
  return str_value(str, length, result);
}
napi_status napi_define_properties(napi_env env, napi_value o, size_t n, const napi_property_descriptor *p) {
  (void)env, (void)o, (void)n, (void)p;
  return napi_ok;
}
napi_status napi_fatal_exception(napi_env env, napi_value err) {
  (void)env, (void)err;
  abort();
}
napi_status napi_get_and_clear_last_exception(napi_env env, napi_value *result) {
  (void)env;
  *result = val(V_UNDEF, 0, NULL, 0);
  return napi_ok;
}
napi_status napi_get_array_length(napi_env env, napi_value value, uint32_t *result) {
  (void)env, (void)value;
  *result = 0;
  return napi_ok;
}
napi_status napi_get_boolean(napi_env env, bool value, napi_value *result) {
  (void)env;
  *result = val(V_BOOL, value, NULL, 0);
  return napi_ok;
}
napi_status napi_get_buffer_info(napi_env env, napi_value value, void **data, size_t *length) {
  (void)env;
  if (!value || value->kind != V_BUF) return napi_invalid_arg;
  if (data) *data = value->ptr;
  if (length) *length = value->len;
  return napi_ok;
}
napi_status napi_get_cb_info(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv,
                             napi_value *this_arg, void **data) {
  (void)env, (void)info, (void)argv, (void)this_arg, (void)data;
  if (argc) *argc = 0;
  return napi_ok;
}
napi_status napi_get_element(napi_env env, napi_value o, uint32_t i, napi_value *result) {
  (void)env, (void)o, (void)i;
  *result = val(V_UNDEF, 0, NULL, 0);
  return napi_ok;
}
napi_status napi_get_global(napi_env env, napi_value *result) {
  (void)env;
  *result = &global_obj;
  return napi_ok;
}
napi_status napi_get_named_property(napi_env env, napi_value o, const char *name, napi_value *result) {
  (void)env, (void)o, (void)name;
  *result = val(V_UNDEF, 0, NULL, 0);
  return napi_ok;
}
napi_status napi_get_undefined(napi_env env, napi_value *result) {
  (void)env;
  *result = val(V_UNDEF, 0, NULL, 0);
  return napi_ok;
}
napi_status napi_get_value_bool(napi_env env, napi_value value, bool *result) {
  (void)env;
  if (!value || value->kind != V_BOOL) return napi_boolean_expected;
  *result = value->num != 0;
  return napi_ok;
}
napi_status napi_get_value_double(napi_env env, napi_value value, double *result) {
  (void)env;
  if (!value || value->kind != V_NUM) return napi_number_expected;
  *result = value->num;
  return napi_ok;
}
napi_status napi_get_value_int32(napi_env env, napi_value value, int32_t *result) {
  (void)env;
  if (!value || value->kind != V_NUM) return napi_number_expected;
  *result = (int32_t)value->num;
  return napi_ok;
}
napi_status napi_get_value_uint32(napi_env env, napi_value value, uint32_t *result) {
  (void)env;
  if (!value || value->kind != V_NUM) return napi_number_expected;
  *result = (uint32_t)value->num;
  return napi_ok;
}
napi_status napi_get_value_external(napi_env env, napi_value value, void **result) {
  (void)env;
  if (!value || value->kind != V_EXT) return napi_invalid_arg;
  *result = value->ptr;
  return napi_ok;
}
napi_status napi_get_value_string_utf8(napi_env env, napi_value value, char *buf, size_t size, size_t *result) {
  (void)env;
  if (!value || value->kind != V_STR) return napi_string_expected;
  size_t n = value->len;
  if (buf && size > 0) {
    if (n > size - 1) n = size - 1;
    memcpy(buf, value->ptr, n);
    buf[n] = 0;
  }
  if (result) *result = n;
  return napi_ok;
}
napi_status napi_throw_error(napi_env env, const char *code, const char *msg) {
  (void)env, (void)code, (void)msg;
  return napi_ok;
}
napi_status napi_throw_type_error(napi_env env, const char *code, const char *msg) {
  (void)env, (void)code, (void)msg;
  return napi_ok;
}
napi_status napi_typeof(napi_env env, napi_value value, napi_valuetype *result) {
  (void)env;
  static const napi_valuetype kinds[] = {napi_undefined, napi_number, napi_boolean, napi_string,
                                         napi_external,  napi_object, napi_function, napi_object};
  *result = value ? kinds[value->kind] : napi_undefined;
  return napi_ok;
}

/* ---- what h2.c's header lists need: arrays are opaque here (the harness reads no event's contents) */
napi_status napi_create_array(napi_env env, napi_value *result) {
  (void)env;
  *result = val(V_OBJ, 0, NULL, 0);
  return napi_ok;
}
napi_status napi_set_element(napi_env env, napi_value o, uint32_t i, napi_value v) {
  (void)env, (void)o, (void)i, (void)v;
  return napi_ok;
}
napi_status napi_create_int64(napi_env env, int64_t value, napi_value *result) {
  (void)env;
  *result = val(V_NUM, (double)value, NULL, 0);
  return napi_ok;
}
napi_status napi_get_value_string_latin1(napi_env env, napi_value value, char *buf, size_t size, size_t *result) {
  return napi_get_value_string_utf8(env, value, buf, size, result);
}
