/*
 * The tunnel's HTTP/2, on nghttp2: framing, HPACK, flow control, SETTINGS, PING and GOAWAY are nghttp2's;
 * this file is the glue between it, the TLS records of tls_records.c and JavaScript (daemon/proxy/h2/session.ts).
 *
 * nghttp2 is the copy inside Node's own binary (process.versions.nghttp2): the binding is compiled against
 * Debian's headers and not linked with -lnghttp2, so its symbols resolve to Node's at load time (nghttp2
 * keeps its ABI across 1.x). Only API present in 1.52's header is used.
 *
 * Two paths for DATA. A stream that carries a workload connection is spliced (h2Splice): its DATA moves
 * both ways here without a call into JavaScript, as in stunnel or HAProxy. Received DATA is written
 * straight to the workload's socket (batched per read, g_pend) and credit goes back to the peer once it
 * has left for the kernel (splice_sent), so a workload that stops reading holds its peer to one stream
 * window; the connection's window is given back on arrival, so one slow stream never stalls the others.
 * What the workload sends is read by the stream's data provider straight into a DATA frame (no copy into
 * nghttp2) and sealed with its frame header into TLS records. A stream that is not spliced (before its
 * workload connection is up, or a caller's own) has its DATA in JavaScript as Buffers, and what
 * JavaScript writes waits in a per-stream buffer that the same data provider serves.
 *
 * JavaScript keeps each stream's life cycle, told as decoded events (conn.h, EV_H2_*), never as frames.
 *
 * Limits (each a session option): RST_STREAM received per second (a token bucket, burst 10x; Rapid
 * Reset), HEADERS + CONTINUATION frames per header block and decoded header bytes per block (CONTINUATION
 * flood, HPACK bomb), SETTINGS entries per frame, queued PING/SETTINGS answers for a peer that does not
 * read (nghttp2's outbound-ack limit: reading goes on while the TLS queue is full, nghttp2's own queue of
 * answers does not), concurrent streams (nghttp2 refuses extra ones). A limit that ends the session sends
 * GOAWAY ENHANCE_YOUR_CALM and tells JavaScript why (EV_H2_ERROR with a refusal reason).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#if defined(__has_include) && !__has_include(<nghttp2/nghttp2.h>)
#error "nghttp2's header is missing: apt-get install -y libnghttp2-dev (only the header is used; see above)"
#endif
#include <nghttp2/nghttp2.h>

#include "h2.h"

/* The largest DATA payload per frame we send (below the peer's SETTINGS_MAX_FRAME_SIZE), and per read. */
#define SPLICE_READ (256 * 1024)
/* How full the tunnel's TLS queue may get before nghttp2 is asked for more frames. */
#define TUNNEL_HIGH (1024 * 1024)
#define BDP_INTERVAL_MS 100
/* Small frames of one pump are sealed together, in records of up to this much. */
#define STAGE_MAX (16 * 1024)
/* Header blocks over maxHeaderListSize: each resets its stream; this many in one session end it. */
#define HEADER_STRIKES 4
static const uint8_t BDP_PING[8] = {'a', 'm', 'b', 'i', 't', 'b', 'd', 'p'};
const uint8_t KEEPALIVE_PING[8] = {'a', 'm', 'b', 'i', 't', 'k', 'a', 'l'};


/* Spliced payloads of the batch in progress: views of the scratch buffer, written out together. */
#define PEND_MAX 64
static struct {
  splice_t *s;
  const unsigned char *p;
  size_t n;
} g_pend[PEND_MAX];
static int g_npend;
static unsigned char *g_read_buf;
static unsigned char g_stage[STAGE_MAX];
static size_t g_stage_len;


static uint64_t now_ms(conn_t *c) {
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(c->env, &loop) != napi_ok || loop == NULL) return 0;
  return uv_now(loop);
}

strm_t *get_strm(h2_t *h, uint32_t sid) {
  strm_t *st = h->ng ? nghttp2_session_get_stream_user_data(h->ng, (int32_t)sid) : NULL;
  if (st || h->server) return st;
  /* A request not sent yet has no stream in nghttp2: its state is ours alone until then. */
  for (st = h->strms; st; st = st->next)
    if (st->sid == sid && st->unsent) return st;
  return NULL;
}

strm_t *new_strm(h2_t *h, uint32_t sid) {
  strm_t *st = calloc(1, sizeof *st);
  if (!st) return NULL;
  st->sid = sid;
  st->next = h->strms;
  if (h->strms) h->strms->prev = st;
  h->strms = st;
  h->nstrms++;
  return st;
}

void free_strm(h2_t *h, strm_t *st) {
  if (st->prev) st->prev->next = st->next;
  else h->strms = st->next;
  if (st->next) st->next->prev = st->prev;
  h->nstrms--;
  if (st->splice) st->splice->closed = 1;
  if (h->src_strm == st) h->src_strm = NULL;
  free(st->out);
  free(st);
}

/* ---- events to JavaScript, always after the spliced bytes that came before them */

static void flush_pending(void);

static int tell(h2_t *h, int ev, int argc, napi_value *argv) {
  conn_t *c = h->c;
  if (h->dead || c->closing) return 0;
  flush_pending();
  if (h->dead || c->closing) return 0;
  emit(c, ev, argc, argv);
  return !h->dead && !c->closing;
}

static int stream_event(h2_t *h, uint32_t sid, uint32_t what) {
  napi_value a[2];
  napi_create_uint32(h->c->env, sid, &a[0]);
  napi_create_uint32(h->c->env, what, &a[1]);
  return tell(h, EV_STREAM, 2, a);
}

static void post_event(h2_t *h, uint32_t sid, uint32_t what, conn_t *plain) {
  if (h->npost == h->post_cap) {
    size_t cap = h->post_cap ? h->post_cap * 2 : 8;
    struct post *p = realloc(h->post, cap * sizeof *p);
    if (!p) return;
    h->post = p;
    h->post_cap = cap;
  }
  h->post[h->npost].sid = sid;
  h->post[h->npost].what = what;
  h->post[h->npost].plain = plain;
  h->npost++;
}

/* Ends the session: GOAWAY with `code` (sent by the next pump), and JavaScript is told with `reason`. */
static void fail(h2_t *h, uint32_t code, const char *reason, const char *msg) {
  if (h->failed) return;
  h->failed = 1;
  h->err_code = code;
  h->reason = reason;
  snprintf(h->msg, sizeof h->msg, "%s", msg);
  if (h->ng) nghttp2_session_terminate_session(h->ng, code);
}

/* JavaScript hears of the end once (EV_H2_ERROR); what the peer sends after is read and dropped. */
static void report(h2_t *h) {
  if (h->told || !h->failed || h->dead) return;
  h->told = 1;
  conn_t *c = h->c;
  napi_value a[3];
  napi_create_uint32(c->env, h->err_code, &a[0]);
  napi_create_string_utf8(c->env, h->msg, NAPI_AUTO_LENGTH, &a[1]);
  napi_create_string_utf8(c->env, h->reason, NAPI_AUTO_LENGTH, &a[2]);
  tell(h, EV_H2_ERROR, 3, a);
}

/* ---- the table of spliced streams */

static void forget(splice_t *s) {
  h2_t *h = s->tls->h2;
  if (h) {
    if (s->prev) s->prev->next = s->next;
    else h->splices = s->next;
    if (s->next) s->next->prev = s->prev;
    if (h->src_splice == s) h->src_splice = NULL;
    strm_t *st = s->closed ? NULL : get_strm(h, s->sid);
    if (st && st->splice == s) st->splice = NULL;
  }
  for (int i = 0; i < g_npend; i++)
    if (g_pend[i].s == s) g_pend[i].s = NULL;
  s->plain->splice = NULL;
  free(s);
}

void splice_free(conn_t *p) {
  if (p->splice) forget(p->splice);
}

int splice_waiting(conn_t *p) { return p->splice->closed || !p->splice->want_read; }

static void h2_destroy(h2_t *h) {
  if (h->ng) nghttp2_session_del(h->ng);
  h->ng = NULL;
  while (h->strms) free_strm(h, h->strms);
  free(h->hb);
  free(h->room);
  free(h->post);
  free(h);
}

/* The tunnel closes: its workloads stop being read here (JavaScript resets them with their streams). */
void h2_free(conn_t *c) {
  h2_t *h = c->h2;
  while (h->splices) {
    conn_t *p = h->splices->plain;
    forget(h->splices);
    p->paused = 1;
    update_poll(p);
  }
  c->h2 = NULL;
  h->dead = 1;
  if (!h->in_ng && !h->pumping) h2_destroy(h);
}

/* ---- received DATA to the workloads */

/* Credit back to the peer for what left for the workload's socket. */
void splice_sent(conn_t *p, size_t n) {
  splice_t *s = p->splice;
  if (s->skip > 0) {
    size_t k = s->skip < n ? (size_t)s->skip : n;
    s->skip -= k;
    n -= k;
  }
  h2_t *h = s->tls->h2;
  if (n == 0 || s->closed || h == NULL || h->dead) return;
  nghttp2_session_consume_stream(h->ng, (int32_t)s->sid, n);
  /* The WINDOW_UPDATE, if nghttp2 wants one now, goes with this batch or at once. */
  pump(h);
}

/*
 * Received DATA to the workload's socket: straight out when its queue is empty, the rest queued; what left
 * now is credited back. A write that fails closes the workload connection (and forgets s).
 */
static void to_workload(splice_t *s, const piece_t *pieces, uint32_t count, size_t total) {
  conn_t *p = s->plain;
  size_t before = queued(p);
  if (!write_plain(p, pieces, count)) {
    close_conn(p);
    return;
  }
  p->spliced_out += (double)total;
  size_t sent = total - (queued(p) - before);
  if (sent > 0 && p->splice) splice_sent(p, sent);
  if (queued(p) > 0) update_poll(p);
}

/* Writes out the batch's spliced payloads, a writev per run of one stream's; the rest waits in its queue. */
static void flush_pending(void) {
  /* Not re-entered: a credit it returns may pump, and an event told there would flush the same views. */
  static int flushing;
  if (flushing) return;
  flushing = 1;
  int i = 0;
  while (i < g_npend) {
    splice_t *s = g_pend[i].s;
    if (s == NULL) {
      i++;
      continue;
    }
    piece_t pieces[PEND_MAX];
    uint32_t n = 0;
    size_t total = 0;
    int j = i;
    for (; j < g_npend && g_pend[j].s == s; j++, n++) {
      pieces[n].p = g_pend[j].p;
      pieces[n].len = g_pend[j].n;
      total += g_pend[j].n;
    }
    i = j;
    to_workload(s, pieces, n, total); /* a failure forgets s and nulls its later entries */
  }
  g_npend = 0;
  flushing = 0;
}

static void pend(splice_t *s, const unsigned char *p, size_t n) {
  if (g_npend > 0) {
    /* Records decrypt one after another into the scratch: a frame's pieces are usually contiguous. */
    if (g_pend[g_npend - 1].s == s && g_pend[g_npend - 1].p + g_pend[g_npend - 1].n == p) {
      g_pend[g_npend - 1].n += n;
      return;
    }
    if (g_npend == PEND_MAX) flush_pending();
  }
  g_pend[g_npend].s = s;
  g_pend[g_npend].p = p;
  g_pend[g_npend].n = n;
  g_npend++;
}

/* The peer's END_STREAM on a spliced stream: the workload gets FIN once everything before it is out. */
static void end_workload(splice_t *s) {
  conn_t *p = s->plain;
  flush_pending(); /* may take s with it (the workload failed): only p from here */
  if (!p->closing && !p->ending) {
    p->ending = 1;
    if (flush_out(p)) update_poll(p);
  }
}

int h2_sync(conn_t *c) {
  flush_pending();
  h2_t *h = c->h2;
  if (h == NULL || c->closing) return !c->closing;
  return pump(h);
}

/* ---- frames out */

static int stage_seal(h2_t *h) {
  if (g_stage_len == 0) return 1;
  piece_t piece = {g_stage, g_stage_len};
  g_stage_len = 0;
  if (seal_records(h->c, &piece, piece.len)) return 1;
  return 0;
}

static ssize_t on_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *ud) {
  (void)ng, (void)flags;
  h2_t *h = ud;
  if (h->dead || h->c->closing) return NGHTTP2_ERR_CALLBACK_FAILURE;
  /* A peer that does not read: nghttp2 keeps its frames (and counts its queued answers) until a drain. */
  if (!h->failed && queued(h->c) + g_stage_len >= TUNNEL_HIGH) {
    h->blocked = 1;
    return NGHTTP2_ERR_WOULDBLOCK;
  }
  if (len > STAGE_MAX - g_stage_len && !stage_seal(h)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  if (len > STAGE_MAX) {
    piece_t piece = {data, len};
    return seal_records(h->c, &piece, len) ? (ssize_t)len : NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  memcpy(g_stage + g_stage_len, data, len);
  g_stage_len += len;
  return (ssize_t)len;
}

/* One DATA frame: the small frames staged before it, its header and its payload, sealed without a copy. */
static int on_send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd, size_t len,
                        nghttp2_data_source *source, void *ud) {
  (void)ng, (void)source;
  h2_t *h = ud;
  conn_t *c = h->c;
  if (h->dead || c->closing) return NGHTTP2_ERR_CALLBACK_FAILURE;
  static const uint8_t zeros[256];
  size_t pad = frame->data.padlen > 0 ? frame->data.padlen - 1 : 0;
  uint8_t padlen = (uint8_t)pad;
  piece_t pieces[5];
  int n = 0;
  size_t total = 0;
  if (g_stage_len) pieces[n++] = (piece_t){g_stage, g_stage_len};
  pieces[n++] = (piece_t){framehd, 9};
  if (frame->data.padlen > 0) pieces[n++] = (piece_t){&padlen, 1};
  if (len > 0) pieces[n++] = (piece_t){h->src, len};
  if (pad > 0) pieces[n++] = (piece_t){zeros, pad};
  for (int i = 0; i < n; i++) total += pieces[i].len;
  g_stage_len = 0;
  if (!seal_records(c, pieces, total)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  strm_t *st = h->src_strm;
  if (st && len > 0) {
    st->out_off += len;
    if (st->out_off == st->out_len) {
      st->out_off = st->out_len = 0;
      if (st->out_cap > STREAM_HIGH) {
        free(st->out);
        st->out = NULL;
        st->out_cap = 0;
      }
    }
    if (st->told_full && st->out_len - st->out_off < STREAM_HIGH / 2) {
      st->told_full = 0;
      post_event(h, st->sid, STREAM_DRAINED, NULL);
    }
  }
  if (h->src_splice) h->src_splice->plain->spliced_in += (double)len;
  h->src = NULL;
  h->src_strm = NULL;
  h->src_splice = NULL;
  return 0;
}

static void room_wait(h2_t *h, strm_t *st) {
  if (st->room) return;
  if (h->nroom == h->room_cap) {
    size_t cap = h->room_cap ? h->room_cap * 2 : 16;
    uint32_t *r = realloc(h->room, cap * sizeof *r);
    if (!r) return;
    h->room = r;
    h->room_cap = cap;
  }
  st->room = 1;
  h->room[h->nroom++] = st->sid;
}

/* A stream's DATA: JavaScript's buffered bytes, then (spliced) what the workload sends, read in place. */
ssize_t on_read(nghttp2_session *ng, int32_t sid, uint8_t *buf, size_t length, uint32_t *flags,
                nghttp2_data_source *source, void *ud) {
  (void)ng, (void)buf, (void)source;
  h2_t *h = ud;
  conn_t *c = h->c;
  if (h->dead || c->closing) return NGHTTP2_ERR_CALLBACK_FAILURE;
  strm_t *st = get_strm(h, (uint32_t)sid);
  if (st == NULL) return NGHTTP2_ERR_DEFERRED;
  if (!h->failed && queued(c) + g_stage_len >= TUNNEL_HIGH) {
    h->blocked = 1;
    room_wait(h, st);
    st->deferred = 1;
    return NGHTTP2_ERR_DEFERRED;
  }
  if (st->out_len > st->out_off) {
    size_t n = st->out_len - st->out_off;
    if (n > length) n = length;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == st->out_len - st->out_off && st->out_end && st->splice == NULL) *flags |= NGHTTP2_DATA_FLAG_EOF;
    h->src = st->out + st->out_off;
    h->src_strm = st;
    return (ssize_t)n;
  }
  splice_t *s = st->splice;
  if (s != NULL && !s->closed) {
    conn_t *p = s->plain;
    if (p->closing) return NGHTTP2_ERR_DEFERRED;
    if (p->read_eof) {
      *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_COPY;
      return 0;
    }
    if (length > SPLICE_READ) length = SPLICE_READ;
    ssize_t r;
    if (s->drained) {
      /* A short read emptied the socket: the recv that would say EAGAIN is skipped (the poll is level). */
      r = -1;
      errno = EAGAIN;
    } else {
      do r = recv(p->fd, g_read_buf, length, 0);
      while (r < 0 && errno == EINTR);
    }
    if (r > 0) {
      s->drained = (size_t)r < length;
      *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
      h->src = g_read_buf;
      h->src_splice = s;
      return r;
    }
    if (r == 0) {
      /* The workload's FIN: END_STREAM, after everything it sent. */
      p->read_eof = 1;
      *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_COPY;
      post_event(h, st->sid, STREAM_LOCAL_END, p);
      return 0;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      s->want_read = 1;
      st->deferred = 1;
      update_poll(p);
      return NGHTTP2_ERR_DEFERRED;
    }
    close_for_errno(p, "read failed");
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  if (st->out_end && !st->spliced) {
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_COPY;
    return 0;
  }
  st->deferred = 1;
  return NGHTTP2_ERR_DEFERRED;
}

static ssize_t on_read_length(nghttp2_session *ng, uint8_t type, int32_t sid, int32_t conn_window,
                              int32_t stream_window, uint32_t max_frame, void *ud) {
  (void)ng, (void)type, (void)sid, (void)conn_window, (void)stream_window, (void)ud;
  return max_frame < SPLICE_READ ? (ssize_t)max_frame : SPLICE_READ;
}

void resume(h2_t *h, strm_t *st) {
  if (!st->deferred) return;
  st->deferred = 0;
  nghttp2_session_resume_data(h->ng, (int32_t)st->sid);
}

/*
 * Asks nghttp2 for its frames and seals them, while the TLS queue has room; then what waited on the send
 * (a workload's FIN, a writer's drain) is told. Never inside nghttp2: then it is asked for again after.
 * Returns 0 if the tunnel connection is gone.
 */
int pump(h2_t *h) {
  conn_t *c = h->c;
  if (h->dead) return 0;
  if (h->in_ng || h->pumping || !c->records || c->closing) {
    h->want_send = 1;
    return !c->closing;
  }
  h->pumping = 1;
  for (int round = 0; round < 64; round++) {
    h->want_send = 0;
    h->in_ng = 1;
    int rv = nghttp2_session_send(h->ng);
    h->in_ng = 0;
    int sealed = !h->dead && !c->closing && stage_seal(h);
    if (h->dead || c->closing) break;
    if (!sealed) {
      h->pumping = 0;
      close_conn(c);
      return 0;
    }
    if (rv != 0 && !h->failed) fail(h, NGHTTP2_INTERNAL_ERROR, REASON_H2_PROTOCOL, nghttp2_strerror(rv));
    /* Told after the frames are sealed: a FIN the workload's end leads to must not pass them. */
    for (size_t i = 0; i < h->npost && !h->dead && !c->closing; i++) {
      struct post ev = h->post[i];
      if (!stream_event(h, ev.sid, ev.what)) break;
      if (ev.plain && !ev.plain->closing && ev.plain->fin_sent && ev.plain->read_eof) close_conn(ev.plain);
    }
    h->npost = 0;
    if (h->dead || c->closing) break;
    if (!flush_out(c)) break;
    if (h->dead || c->closing) break;
    if (!h->want_send) break;
  }
  h->pumping = 0;
  if (h->dead) {
    h2_destroy(h);
    return 0;
  }
  if (c->closing) return 0;
  update_poll(c);
  if (h->failed) report(h);
  return !c->closing && !h->dead;
}

/* The tunnel's queue emptied: the streams that waited for room are served again. */
void h2_drained(conn_t *c) {
  h2_t *h = c->h2;
  if (h == NULL || h->dead || !h->blocked) return;
  h->blocked = 0;
  if (h->nroom > 0) {
    size_t n = h->nroom;
    h->nroom = 0;
    for (size_t i = 0; i < n; i++) {
      strm_t *st = get_strm(h, h->room[i]);
      if (st && st->room) {
        st->room = 0;
        resume(h, st);
      }
    }
  }
  h->want_send = 1;
  if (!h->pumping && !h->in_ng) pump(h);
}

/* A spliced workload's socket is readable: its data provider reads it again. */
void splice_read(conn_t *p) {
  splice_t *s = p->splice;
  h2_t *h = s->tls->h2;
  s->want_read = 0;
  s->drained = 0;
  /*
   * The poll is left as it is until the provider has read: it usually reads to EAGAIN and wants the socket
   * again, and stopping then restarting a uv_poll costs two epoll_ctl calls per message. Only a provider
   * that did not get to read (window, tunnel queue full) leaves want_read clear, and the poll stops then.
   */
  if (h != NULL && !s->closed) {
    strm_t *st = get_strm(h, s->sid);
    if (st) resume(h, st);
    pump(h);
  }
  update_poll(p);
}

/* ---- frames in */

static void bdp_sample(h2_t *h, size_t len) {
  if (h->local_window >= h->max_window) return;
  if (h->bdp_inflight) {
    h->bdp_bytes += len;
    return;
  }
  uint64_t now = now_ms(h->c);
  if (now < h->bdp_next_ms) return;
  if (nghttp2_submit_ping(h->ng, NGHTTP2_FLAG_NONE, BDP_PING) == 0) {
    h->bdp_inflight = 1;
    h->bdp_bytes = 0;
  }
}

static int bdp_done(h2_t *h) {
  if (!h->bdp_inflight) return 1;
  h->bdp_inflight = 0;
  h->bdp_next_ms = now_ms(h->c) + BDP_INTERVAL_MS;
  int behind = 0;
  for (splice_t *s = h->splices; s; s = s->next) behind |= queued(s->plain) > 0;
  napi_value a[2];
  napi_create_double(h->c->env, (double)h->bdp_bytes, &a[0]);
  napi_get_boolean(h->c->env, behind, &a[1]);
  return tell(h, EV_BDP, 2, a);
}

static int on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *ud) {
  (void)ng;
  h2_t *h = ud;
  if (h->dead) return NGHTTP2_ERR_CALLBACK_FAILURE;
  if (hd->type == NGHTTP2_HEADERS || hd->type == NGHTTP2_PUSH_PROMISE) {
    h->block_frames = 1;
  } else if (hd->type == NGHTTP2_CONTINUATION) {
    if (++h->block_frames > h->max_header_frames) {
      fail(h, NGHTTP2_ENHANCE_YOUR_CALM, REASON_H2_HEADER_FLOOD, "too many CONTINUATION frames in a header block");
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
  } else if (hd->type == NGHTTP2_DATA) {
    bdp_sample(h, hd->length);
  }
  return 0;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
  h2_t *h = ud;
  if (h->dead) return NGHTTP2_ERR_CALLBACK_FAILURE;
  uint32_t sid = (uint32_t)frame->hd.stream_id;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST && h->server &&
      get_strm(h, sid) == NULL) {
    strm_t *st = new_strm(h, sid);
    if (!st) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    nghttp2_session_set_stream_user_data(ng, (int32_t)sid, st);
  }
  h->hb_sid = sid;
  h->hb_len = 0;
  h->hb_bytes = 0;
  h->hb_over = 0;
  return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
  (void)ng, (void)flags;
  h2_t *h = ud;
  if (h->dead) return NGHTTP2_ERR_CALLBACK_FAILURE;
  if ((uint32_t)frame->hd.stream_id != h->hb_sid) return 0;
  /* Counted as SETTINGS_MAX_HEADER_LIST_SIZE counts: an HPACK bomb is refused by the same count. */
  h->hb_bytes += nlen + vlen + 32;
  if (h->hb_over || h->hb_bytes > h->max_header_list) {
    h->hb_over = 1;
    return 0;
  }
  size_t need = h->hb_len + 8 + nlen + vlen;
  if (need > h->hb_cap) {
    size_t cap = h->hb_cap ? h->hb_cap : 1024;
    while (cap < need) cap *= 2;
    unsigned char *b = realloc(h->hb, cap);
    if (!b) {
      h->hb_over = 1;
      return 0;
    }
    h->hb = b;
    h->hb_cap = cap;
  }
  unsigned char *o = h->hb + h->hb_len;
  uint32_t n32 = (uint32_t)nlen, v32 = (uint32_t)vlen;
  memcpy(o, &n32, 4);
  memcpy(o + 4, &v32, 4);
  memcpy(o + 8, name, nlen);
  memcpy(o + 8 + nlen, value, vlen);
  h->hb_len = need;
  return 0;
}

/* A whole header block to JavaScript: [name, value, ...] and whether it ended the stream. */
static int headers_event(h2_t *h, uint32_t sid, int end) {
  napi_env env = h->c->env;
  napi_value a[3], list;
  napi_create_array(env, &list);
  uint32_t k = 0;
  for (size_t off = 0; off < h->hb_len;) {
    uint32_t nlen, vlen;
    memcpy(&nlen, h->hb + off, 4);
    memcpy(&vlen, h->hb + off + 4, 4);
    napi_value nv, vv;
    napi_create_string_latin1(env, (const char *)h->hb + off + 8, nlen, &nv);
    napi_create_string_latin1(env, (const char *)h->hb + off + 8 + nlen, vlen, &vv);
    napi_set_element(env, list, k++, nv);
    napi_set_element(env, list, k++, vv);
    off += 8 + nlen + vlen;
  }
  h->hb_len = 0;
  if (h->hb_cap > 16 * 1024) {
    free(h->hb);
    h->hb = NULL;
    h->hb_cap = 0;
  }
  napi_create_uint32(env, sid, &a[0]);
  a[1] = list;
  napi_get_boolean(env, end, &a[2]);
  return tell(h, EV_H2_HEADERS, 3, a);
}

/* RST_STREAM from the peer: a token bucket of streamResetRate per second, burst 10x (Rapid Reset). */
static int reset_admitted(h2_t *h) {
  uint64_t now = now_ms(h->c);
  double burst = h->reset_rate * 10;
  h->rst_tokens += (double)(now - h->rst_ms) * h->reset_rate / 1000.0;
  if (h->rst_tokens > burst) h->rst_tokens = burst;
  h->rst_ms = now;
  if (h->rst_tokens < 1) return 0;
  h->rst_tokens -= 1;
  return 1;
}

static int remote_end(h2_t *h, strm_t *st) {
  if (st->splice) {
    end_workload(st->splice);
    if (h->dead || h->c->closing) return 0;
  } else if (st->spliced) {
    return 1; /* its workload is gone: JavaScript resets the stream */
  }
  return stream_event(h, st->sid, STREAM_REMOTE_END);
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
  h2_t *h = ud;
  if (h->dead) return NGHTTP2_ERR_CALLBACK_FAILURE;
  uint32_t sid = (uint32_t)frame->hd.stream_id;
  int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
      strm_t *st = get_strm(h, sid);
      if (st == NULL || sid != h->hb_sid) return 0;
      if (h->hb_over) {
        h->hb_len = 0;
        if (++h->strikes >= HEADER_STRIKES) {
          fail(h, NGHTTP2_ENHANCE_YOUR_CALM, REASON_H2_HEADER_FLOOD, "header blocks over the header list size");
          return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, (int32_t)sid, NGHTTP2_ENHANCE_YOUR_CALM);
        return 0;
      }
      if (st->spliced) {
        h->hb_len = 0;
        if (end && !remote_end(h, st)) return NGHTTP2_ERR_CALLBACK_FAILURE;
        return 0;
      }
      return headers_event(h, sid, end) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    case NGHTTP2_DATA: {
      strm_t *st = get_strm(h, sid);
      if (st && end && !remote_end(h, st)) return NGHTTP2_ERR_CALLBACK_FAILURE;
      return 0;
    }
    case NGHTTP2_RST_STREAM:
      if (!reset_admitted(h)) {
        fail(h, NGHTTP2_ENHANCE_YOUR_CALM, REASON_H2_RESET_FLOOD, "RST_STREAM over the stream reset rate");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
      return 0;
    case NGHTTP2_SETTINGS: {
      if (frame->hd.flags & NGHTTP2_FLAG_ACK) return 0;
      napi_value a[1];
      uint32_t max = nghttp2_session_get_remote_settings(ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
      napi_create_double(h->c->env, (double)max, &a[0]);
      return tell(h, EV_H2_SETTINGS, 1, a) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    case NGHTTP2_PING:
      if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) return 0;
      if (memcmp(frame->ping.opaque_data, BDP_PING, 8) == 0)
        return bdp_done(h) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
      if (memcmp(frame->ping.opaque_data, KEEPALIVE_PING, 8) == 0)
        return tell(h, EV_H2_PING, 0, NULL) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
      return 0;
    case NGHTTP2_GOAWAY: {
      napi_value a[2];
      napi_create_uint32(h->c->env, frame->goaway.error_code, &a[0]);
      napi_create_uint32(h->c->env, (uint32_t)frame->goaway.last_stream_id, &a[1]);
      return tell(h, EV_H2_GOAWAY, 2, a) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    default:
      return 0;
  }
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                         void *ud) {
  (void)flags;
  h2_t *h = ud;
  if (h->dead) return NGHTTP2_ERR_CALLBACK_FAILURE;
  /* The connection's window back at once: each stream's own window is what holds a peer. */
  nghttp2_session_consume_connection(ng, len);
  strm_t *st = get_strm(h, (uint32_t)sid);
  if (st == NULL) return 0;
  if (st->splice) {
    pend(st->splice, data, len);
    return 0;
  }
  if (st->spliced) {
    /* Its workload went away: nobody reads this, the stream is being reset. */
    nghttp2_session_consume_stream(ng, sid, len);
    return 0;
  }
  napi_value a[2];
  void *copy;
  napi_create_uint32(h->c->env, (uint32_t)sid, &a[0]);
  if (napi_create_buffer_copy(h->c->env, len, data, &copy, &a[1]) != napi_ok) {
    fail(h, NGHTTP2_INTERNAL_ERROR, REASON_H2_PROTOCOL, "out of memory for DATA");
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  return tell(h, EV_H2_DATA, 2, a) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_stream_close(nghttp2_session *ng, int32_t sid, uint32_t code, void *ud) {
  (void)ng;
  h2_t *h = ud;
  if (h->dead) return 0;
  strm_t *st = get_strm(h, (uint32_t)sid);
  if (st == NULL) return 0;
  int told = 1;
  /* Closed by what we send (our END_STREAM or RST_STREAM): told once the frames are sealed, since what
   * JavaScript does about it (end the session) must not pass them. */
  if (h->pumping) post_event(h, (uint32_t)sid, STREAM_CLOSED + code, NULL);
  else if (!h->c->closing) told = stream_event(h, (uint32_t)sid, STREAM_CLOSED + code);
  if (h->dead) return NGHTTP2_ERR_CALLBACK_FAILURE;
  nghttp2_session_set_stream_user_data(ng, sid, NULL);
  free_strm(h, st);
  return told ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
  h2_t *h = ud;
  if (h->dead) return 0;
  if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR && !h->failed) {
    /* nghttp2 ended the session on a connection error of its own finding: JavaScript is told after the pump. */
    h->failed = 1;
    h->err_code = frame->goaway.error_code;
    h->reason = REASON_H2_PROTOCOL;
    if (frame->goaway.opaque_data_len > 0)
      snprintf(h->msg, sizeof h->msg, "%.*s", (int)frame->goaway.opaque_data_len, frame->goaway.opaque_data);
    else if (h->msg[0] == 0)
      snprintf(h->msg, sizeof h->msg, "%s", nghttp2_strerror(h->last_lib_err ? h->last_lib_err : NGHTTP2_ERR_PROTO));
    return 0;
  }
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  strm_t *st = get_strm(h, (uint32_t)frame->hd.stream_id);
  if (st) st->unsent = 0;
  if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
  /* The answer is complete: the client is told to stop sending rather than left half open. */
  if (st && st->rst_after) nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
  return 0;
}

/* A request that never went out (GOAWAY came first, or the session ended): refused, safe to retry. */
static int on_frame_not_send(nghttp2_session *ng, const nghttp2_frame *frame, int lib, void *ud) {
  (void)ng, (void)lib;
  h2_t *h = ud;
  if (h->dead || frame->hd.type != NGHTTP2_HEADERS) return 0;
  strm_t *st = get_strm(h, (uint32_t)frame->hd.stream_id);
  if (st == NULL || !st->unsent) return 0;
  st->unsent = 0;
  uint32_t sid = st->sid;
  if (nghttp2_session_get_stream_user_data(ng, (int32_t)sid) == st) nghttp2_session_set_stream_user_data(ng, (int32_t)sid, NULL);
  free_strm(h, st);
  post_event(h, sid, STREAM_CLOSED + NGHTTP2_REFUSED_STREAM, NULL);
  return 0;
}

static int on_error(nghttp2_session *ng, int lib, const char *msg, size_t len, void *ud) {
  (void)ng;
  h2_t *h = ud;
  h->last_lib_err = lib;
  if (!h->failed) snprintf(h->msg, sizeof h->msg, "%.*s", (int)len, msg);
  return 0;
}

static int on_invalid_frame(nghttp2_session *ng, const nghttp2_frame *frame, int lib, void *ud) {
  (void)ng, (void)frame;
  h2_t *h = ud;
  h->last_lib_err = lib;
  return 0;
}

int h2_input(conn_t *c, const unsigned char *p, size_t n) {
  h2_t *h = c->h2;
  if (h->failed) return 1; /* GOAWAY is on its way: nothing more the peer says is read */
  h->in_ng = 1;
  ssize_t rv = nghttp2_session_mem_recv(h->ng, p, n);
  h->in_ng = 0;
  if (h->dead) {
    h2_destroy(h);
    return 0;
  }
  if (c->closing) return 0;
  if (rv < 0 && !h->failed) {
    if (rv == NGHTTP2_ERR_FLOODED)
      fail(h, NGHTTP2_ENHANCE_YOUR_CALM, REASON_H2_CONTROL_FLOOD, "too many PING/SETTINGS answers queued for a peer that does not read");
    else if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC)
      fail(h, NGHTTP2_PROTOCOL_ERROR, REASON_H2_PROTOCOL, "not an HTTP/2 client preface");
    else
      fail(h, (uint32_t)(rv == NGHTTP2_ERR_NOMEM ? NGHTTP2_INTERNAL_ERROR : NGHTTP2_PROTOCOL_ERROR), REASON_H2_PROTOCOL,
           nghttp2_strerror((int)rv));
  }
  /* A connection error nghttp2 finds itself is told when its GOAWAY goes (on_frame_send). Answers go out
   * per record: nghttp2's count of queued PING/SETTINGS answers then measures a peer that does not read,
   * not the size of our read batch. */
  if (!h->failed && nghttp2_session_want_write(h->ng)) {
    if (!pump(h)) return 0;
  }
  if (h->failed) {
    /* The GOAWAY goes on the queue before JavaScript, told, ends the connection. */
    flush_pending();
    if (!pump(h)) return 0;
    report(h);
  }
  return !c->closing;
}

/*
 * nghttp2's memory. A block of 8 KiB or more (its frame buffer: 16 KiB from the session's start, and up to
 * 256 KiB once a DATA frame asked for it) is a mapping of its own, so that an idle session keeps resident
 * only the pages it wrote (a few frame headers), not the whole buffer; the rest comes from malloc.
 */
#define MAP_MIN (8 * 1024)
typedef struct {
  size_t size; /* what the caller asked for */
  size_t mapped;
} blk_t;

static void *ng_malloc(size_t size, void *ud) {
  (void)ud;
  blk_t *b;
  if (size > SIZE_MAX - sizeof *b) return NULL;
  if (size + sizeof *b < MAP_MIN) {
    if (!(b = malloc(sizeof *b + size))) return NULL;
    b->mapped = 0;
  } else {
    b = mmap(NULL, sizeof *b + size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED) return NULL;
    b->mapped = 1;
  }
  b->size = size;
  return b + 1;
}

static void ng_free(void *p, void *ud) {
  (void)ud;
  if (!p) return;
  blk_t *b = (blk_t *)p - 1;
  if (b->mapped) munmap(b, sizeof *b + b->size);
  else free(b);
}

static void *ng_calloc(size_t n, size_t size, void *ud) {
  if (size && n > SIZE_MAX / size) return NULL;
  void *p = ng_malloc(n * size, ud);
  if (p && !((blk_t *)p - 1)->mapped) memset(p, 0, n * size); /* a fresh mapping is zeroed already */
  return p;
}

static void *ng_realloc(void *p, size_t size, void *ud) {
  if (!p) return ng_malloc(size, ud);
  blk_t *b = (blk_t *)p - 1;
  if (!b->mapped && size + sizeof *b < MAP_MIN) {
    blk_t *r = realloc(b, sizeof *b + size);
    if (!r) return NULL;
    r->size = size;
    return r + 1;
  }
  void *q = ng_malloc(size, ud);
  if (!q) return NULL;
  memcpy(q, p, b->size < size ? b->size : size);
  ng_free(p, ud);
  return q;
}

static nghttp2_mem g_ng_mem = {NULL, ng_malloc, ng_free, ng_calloc, ng_realloc};

/* ---- the session, and a stream joined to a workload */

/* The session of a tunnel connection (also the fuzz target's way in). NULL: out of memory. */
h2_t *h2_create(conn_t *c, int server, const double *o) {
  if (!g_read_buf && !(g_read_buf = malloc(SPLICE_READ))) return NULL;
  h2_t *h = calloc(1, sizeof *h);
  if (!h) return NULL;
  h->c = c;
  h->server = server;
  h->max_header_list = (uint32_t)o[H2_OPT_MAX_HEADER_LIST_SIZE];
  h->max_header_frames = (uint32_t)o[H2_OPT_MAX_HEADER_FRAMES];
  h->reset_rate = o[H2_OPT_STREAM_RESET_RATE];
  h->rst_tokens = h->reset_rate * 10;
  h->rst_ms = now_ms(c);
  h->local_window = (uint32_t)o[H2_OPT_STREAM_WINDOW];
  h->max_window = (uint32_t)o[H2_OPT_MAX_STREAM_WINDOW];
  if (h->max_window < h->local_window) h->max_window = h->local_window;

  nghttp2_session_callbacks *cb;
  nghttp2_option *opt;
  if (nghttp2_session_callbacks_new(&cb) != 0) {
    free(h);
    return NULL;
  }
  nghttp2_session_callbacks_set_send_callback(cb, on_send);
  nghttp2_session_callbacks_set_send_data_callback(cb, on_send_data);
  nghttp2_session_callbacks_set_data_source_read_length_callback(cb, on_read_length);
  nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, on_frame_not_send);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
  nghttp2_session_callbacks_set_error_callback2(cb, on_error);
  if (nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cb);
    free(h);
    return NULL;
  }
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_max_outbound_ack(opt, (size_t)o[H2_OPT_MAX_OUTBOUND_CONTROL]);
  nghttp2_option_set_max_settings(opt, 32);
  /* Until the peer's SETTINGS, it may have as many of our streams as we allow ourselves. */
  nghttp2_option_set_peer_max_concurrent_streams(opt, (uint32_t)o[H2_OPT_MAX_CONCURRENT_STREAMS]);
  int rv = server ? nghttp2_session_server_new3(&h->ng, cb, h, opt, &g_ng_mem)
                  : nghttp2_session_client_new3(&h->ng, cb, h, opt, &g_ng_mem);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cb);
  if (rv != 0) {
    free(h);
    return NULL;
  }
  nghttp2_settings_entry iv[5] = {
    {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)o[H2_OPT_MAX_CONCURRENT_STREAMS]},
    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, h->local_window},
    {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, (uint32_t)o[H2_OPT_MAX_FRAME_SIZE]},
    {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, h->max_header_list},
    {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, server ? 4 : 5) != 0 ||
      (o[H2_OPT_CONNECTION_WINDOW] > 65535 &&
       nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)o[H2_OPT_CONNECTION_WINDOW]) != 0)) {
    nghttp2_session_del(h->ng);
    free(h);
    return NULL;
  }
  c->h2 = h;
  return h;
}

/* Joins stream `st` to the workload connection `p`, if both can be joined now; NULL when not. */
splice_t *splice_join(h2_t *h, strm_t *st, conn_t *p) {
  int ok = st && st->has_prd && !st->spliced && !st->out_end && p && p->plain && !p->closing && !p->splice &&
           !p->read_eof && !p->ending;
  splice_t *s = ok ? calloc(1, sizeof *s) : NULL;
  if (s == NULL) return NULL;
  s->tls = h->c;
  s->plain = p;
  s->sid = st->sid;
  s->skip = queued(p);
  s->next = h->splices;
  if (h->splices) h->splices->prev = s;
  h->splices = s;
  st->splice = s;
  st->spliced = 1;
  p->splice = s;
  p->paused = 0;
  /* The data provider reads the workload from now on (after what JavaScript buffered). */
  resume(h, st);
  h->want_send = 1;
  update_poll(p);
  return s;
}
