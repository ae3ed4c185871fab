/*
 * The tunnel's HTTP/2 DATA path in native code. A tunnel connection's decrypted bytes pass through a frame
 * parser here: DATA for a stream that carries a workload connection ("spliced") goes straight to that
 * workload's socket, and what the workload sends goes straight out as DATA frames, flow control included;
 * JavaScript (daemon/proxy/h2/session.ts) gets every other frame, whole, and keeps the streams' life cycle:
 * HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY. A 64-byte message then crosses the daemon without a call
 * into JavaScript, as it does in stunnel or HAProxy: on one core that call and its allocations were most of
 * the latency the tunnel added.
 *
 * Flow control: the connection's windows both ways live here (JavaScript's own DATA, rare, asks h2Credit
 * and reports h2Spend); a spliced stream's windows too. Received DATA is acknowledged (WINDOW_UPDATE) once
 * it has left for the workload's socket, so a workload that does not read holds the peer to one window.
 *
 *   h2Enable(conn, server, maxFrame, streamWindow, maxStreamWindow, connectionWindow)   before any data
 *   h2Splice(conn, streamId, plain, sendWindow, recvWindow) -> bool
 *   h2Settings(conn, initialWindowDelta, maxFrame)   the peer's SETTINGS, as JavaScript read them
 *   h2Credit(conn) -> connection send window;  h2Spend(conn, n)
 *   h2SetWindow(conn, streamWindow)                   our stream window grew (JavaScript sent SETTINGS)
 * Events (to the tunnel connection's owner): EV_STREAM(id, H2_*), EV_BDP(bytes, behind), EV_H2_ERROR(code,
 * message), EV_DATA_COPY(buffer).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conn.h"

#define FH 9
#define F_DATA 0x0
#define F_HEADERS 0x1
#define F_PUSH_PROMISE 0x5
#define F_PING 0x6
#define F_WINDOW_UPDATE 0x8
#define F_CONTINUATION 0x9
#define FL_END_STREAM 0x1
#define FL_ACK 0x1
#define FL_END_HEADERS 0x4
#define FL_PADDED 0x8
#define E_PROTOCOL 0x1
#define E_FLOW_CONTROL 0x3
#define E_STREAM_CLOSED 0x5
#define E_FRAME_SIZE 0x6
#define MAX_WINDOW 0x7fffffffLL

/* EV_STREAM's second argument: what happened to a spliced stream. An error is H2_ERROR + its code. */
#define H2_REMOTE_END 1 /* the peer's END_STREAM: delivered, the workload gets FIN after it */
#define H2_LOCAL_END 2  /* the workload's FIN: END_STREAM sent */
#define H2_ERROR 0x100  /* the stream must be reset with the code */

/* The largest read from a workload per turn, and how full the tunnel's queue may get before they wait. */
#define SPLICE_READ (256 * 1024)
#define TUNNEL_HIGH (1024 * 1024)
#define BDP_INTERVAL_MS 100
static const unsigned char BDP_PING[8] = {'a', 'm', 'b', 'i', 't', 'b', 'd', 'p'};
static const unsigned char PREFACE_LEN = 24;

enum { M_WHOLE = 0, M_SPLICE = 1, M_DROP = 2 };

struct splice {
  conn_t *tls, *plain;
  uint32_t sid;
  int64_t send_window; /* what the peer lets us send on this stream */
  int64_t recv_window; /* what it may still send us */
  uint64_t unacked;    /* delivered to the workload's socket, not yet given back */
  uint64_t skip;       /* queued by JavaScript before the splice: acknowledged there */
  int remote_ended, local_ended, failed;
  int waiting; /* no credit, or the tunnel's queue is full: the workload is not read */
  splice_t *hnext;
  splice_t *wnext, *wprev;
};

struct h2 {
  size_t preface_left;
  /* the frame being parsed */
  unsigned char hdr[FH];
  size_t hdr_len;
  uint32_t len, sid;
  uint8_t type, flags;
  size_t left;
  int mode;
  splice_t *fs;           /* M_SPLICE: whose payload this is */
  unsigned char *frame;   /* M_WHOLE: header and payload so far */
  size_t frame_len, frame_cap;
  int in_block;           /* a header block is open: only its CONTINUATION may follow */
  uint32_t block_sid;
  uint32_t max_frame;     /* ours */
  uint32_t remote_max_frame;
  /* flow control of the connection */
  int64_t conn_send, conn_recv;
  uint64_t conn_unacked, conn_window;
  uint32_t local_window, max_window;
  /* BDP sample: a PING in flight and the DATA bytes received since */
  int bdp_inflight;
  uint64_t bdp_bytes, bdp_next_ms;
  /* spliced streams by id */
  splice_t **buckets;
  uint32_t nbuckets, count;
  splice_t *waiting;
  /* JavaScript's bytes of the batch in progress, in the slab */
  size_t js_start, js_len;
  int js_region;
  int failed;
};

/* Spliced payloads of the batch in progress: views of the scratch buffer, written out together. */
#define PEND_MAX 64
static struct {
  splice_t *s;
  const unsigned char *p;
  size_t n;
} g_pend[PEND_MAX];
static int g_npend;
static unsigned char *g_read_buf;

static uint32_t be32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put_header(unsigned char *b, size_t len, uint8_t type, uint8_t flags, uint32_t sid) {
  b[0] = (unsigned char)(len >> 16);
  b[1] = (unsigned char)(len >> 8);
  b[2] = (unsigned char)len;
  b[3] = type;
  b[4] = flags;
  b[5] = (unsigned char)(sid >> 24);
  b[6] = (unsigned char)(sid >> 16);
  b[7] = (unsigned char)(sid >> 8);
  b[8] = (unsigned char)sid;
}

static uint64_t now_ms(conn_t *c) {
  uv_loop_t *loop;
  napi_get_uv_event_loop(c->env, &loop);
  return uv_now(loop);
}

/* Seals one small frame of ours onto the tunnel's queue (sent with the batch's other records). */
static int send_frame(conn_t *t, uint8_t type, uint8_t flags, uint32_t sid, const unsigned char *p,
                      size_t n) {
  unsigned char hdr[FH];
  put_header(hdr, n, type, flags, sid);
  piece_t pieces[2] = {{hdr, FH}, {p, n}};
  if (seal_records(t, pieces, FH + n)) return 1;
  close_conn(t);
  return 0;
}

static int send_window_update(conn_t *t, uint32_t sid, uint64_t inc) {
  unsigned char p[4] = {(unsigned char)(inc >> 24), (unsigned char)(inc >> 16), (unsigned char)(inc >> 8),
                        (unsigned char)inc};
  return send_frame(t, F_WINDOW_UPDATE, 0, sid, p, 4);
}

/* ---- the table of spliced streams */

#define FOR_EACH_SPLICE(h, s)                              \
  for (uint32_t i_ = 0; i_ < (h)->nbuckets; i_++)         \
    for (splice_t *s = (h)->buckets[i_]; s; s = s->hnext)

static splice_t *lookup(h2_t *h, uint32_t sid) {
  if (h->count == 0) return NULL;
  for (splice_t *s = h->buckets[sid & (h->nbuckets - 1)]; s; s = s->hnext)
    if (s->sid == sid) return s;
  return NULL;
}

static int insert(h2_t *h, splice_t *s) {
  if (h->count + 1 > h->nbuckets * 2 || h->buckets == NULL) {
    uint32_t n = h->nbuckets ? h->nbuckets * 4 : 16;
    splice_t **b = calloc(n, sizeof *b);
    if (!b) return 0;
    for (uint32_t i = 0; i < h->nbuckets; i++) {
      for (splice_t *e = h->buckets[i], *next; e; e = next) {
        next = e->hnext;
        e->hnext = b[e->sid & (n - 1)];
        b[e->sid & (n - 1)] = e;
      }
    }
    free(h->buckets);
    h->buckets = b;
    h->nbuckets = n;
  }
  splice_t **at = &h->buckets[s->sid & (h->nbuckets - 1)];
  s->hnext = *at;
  *at = s;
  h->count++;
  return 1;
}

static void unwait(h2_t *h, splice_t *s) {
  if (!s->waiting) return;
  s->waiting = 0;
  if (s->wprev) s->wprev->wnext = s->wnext;
  else h->waiting = s->wnext;
  if (s->wnext) s->wnext->wprev = s->wprev;
  s->wnext = s->wprev = NULL;
}

static void wait_for_room(h2_t *h, splice_t *s) {
  if (s->waiting) return;
  s->waiting = 1;
  s->wprev = NULL;
  s->wnext = h->waiting;
  if (h->waiting) h->waiting->wprev = s;
  h->waiting = s;
}

/* Its workload is read again; if there is still no room, it waits again. */
static void wake(h2_t *h, splice_t *s) {
  unwait(h, s);
  update_poll(s->plain);
}

static void wake_all(h2_t *h) {
  while (h->waiting) wake(h, h->waiting);
}

/* Forgets a splice: its table entry, its place in the waiting list, the batch's views of its bytes. */
static void forget(splice_t *s) {
  h2_t *h = s->tls->h2;
  unwait(h, s);
  splice_t **at = &h->buckets[s->sid & (h->nbuckets - 1)];
  while (*at && *at != s) at = &(*at)->hnext;
  if (*at) {
    *at = s->hnext;
    h->count--;
  }
  if (h->fs == s) {
    h->fs = NULL;
    h->mode = M_DROP;
  }
  for (int i = 0; i < g_npend; i++)
    if (g_pend[i].s == s) g_pend[i].s = NULL;
  s->plain->splice = NULL;
  free(s);
}

void splice_free(conn_t *p) {
  if (p->splice) forget(p->splice);
}

int splice_waiting(conn_t *p) { return p->splice->waiting; }

/* The tunnel closes: its workloads stop being read here (JavaScript resets them with their streams). */
void h2_free(conn_t *c) {
  h2_t *h = c->h2;
  for (uint32_t i = 0; i < h->nbuckets; i++) {
    while (h->buckets[i]) {
      conn_t *p = h->buckets[i]->plain;
      forget(h->buckets[i]);
      p->paused = 1;
      update_poll(p);
    }
  }
  free(h->buckets);
  free(h->frame);
  free(h);
  c->h2 = NULL;
}

/* ---- events to JavaScript, always after the bytes that came before them */

static int stream_event(conn_t *t, uint32_t sid, uint32_t what) {
  if (!h2_sync(t)) return 0;
  napi_value a[2];
  napi_create_uint32(t->env, sid, &a[0]);
  napi_create_uint32(t->env, what, &a[1]);
  emit(t, EV_STREAM, 2, a);
  return !t->closing;
}

/* A connection error: JavaScript sends GOAWAY and ends the session; nothing more is read here. */
static int conn_error(conn_t *t, uint32_t code, const char *msg) {
  t->h2->failed = 1;
  if (!h2_sync(t)) return 0;
  napi_value a[2];
  napi_create_uint32(t->env, code, &a[0]);
  napi_create_string_utf8(t->env, msg, NAPI_AUTO_LENGTH, &a[1]);
  emit(t, EV_H2_ERROR, 2, a);
  return 0;
}

static int stream_error(conn_t *t, splice_t *s, uint32_t code) {
  s->failed = 1;
  return stream_event(t, s->sid, H2_ERROR + code);
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
  s->unacked += n;
  conn_t *t = s->tls;
  if (t->closing || s->remote_ended || s->unacked < t->h2->local_window / 4) return;
  uint64_t inc = s->unacked;
  s->unacked = 0;
  s->recv_window += (int64_t)inc;
  /* Sent with whatever the tunnel sends next, or when the poll finds it writable. */
  if (send_window_update(t, s->sid, inc)) update_poll(t);
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
  if (sent > 0) splice_sent(p, sent);
  if (queued(p) > 0) update_poll(p);
}

/* Writes out the batch's spliced payloads, a writev per run of one stream's; the rest waits in its queue. */
static void flush_pending(void) {
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

/* The peer's END_STREAM: the workload gets FIN once everything before it is out. */
static void end_workload(splice_t *s) {
  conn_t *p = s->plain;
  s->remote_ended = 1;
  flush_pending(); /* may take s with it (the workload failed): only p from here */
  if (!p->closing && !p->ending) {
    p->ending = 1;
    if (flush_out(p)) update_poll(p);
  }
}

static int remote_end(conn_t *t, splice_t *s) {
  uint32_t sid = s->sid;
  end_workload(s);
  return stream_event(t, sid, H2_REMOTE_END);
}

/* ---- JavaScript's frames */

/* Appends to the batch's bytes for JavaScript (whole frames, in order); a huge frame goes on its own. */
static int js_append(conn_t *c, const unsigned char *p, size_t n) {
  h2_t *h = c->h2;
  if (n > SLAB_MIN) {
    if (!h2_sync(c)) return 0;
    napi_value buf;
    void *data;
    if (napi_create_buffer_copy(c->env, n, p, &data, &buf) != napi_ok) {
      set_err(c, "out of memory for an HTTP/2 frame");
      close_conn(c);
      return 0;
    }
    emit(c, EV_DATA_COPY, 1, &buf);
    return !c->closing;
  }
  if (!h->js_region || g_slab_len - (h->js_start + h->js_len) < n || h->js_len >= READ_BATCH) {
    if (!h2_sync(c)) return 0;
    if (!ensure_slab(c->env)) {
      set_err(c, "out of memory for the read buffer");
      close_conn(c);
      return 0;
    }
    h->js_region = 1;
    h->js_start = g_slab_off;
    h->js_len = 0;
  }
  memcpy(g_slab_data + h->js_start + h->js_len, p, n);
  h->js_len += n;
  return 1;
}

int h2_sync(conn_t *c) {
  flush_pending();
  h2_t *h = c->h2;
  if (h == NULL || c->closing) return !c->closing;
  if (h->js_region) {
    size_t got = h->js_len;
    h->js_region = 0;
    h->js_len = 0;
    if (got > 0) return emit_data(c, h->js_start, &got);
  }
  return 1;
}

/* ---- the parser */

static void bdp_sample(conn_t *c, h2_t *h, uint32_t len) {
  if (h->local_window >= h->max_window) return;
  if (h->bdp_inflight) {
    h->bdp_bytes += len;
    return;
  }
  uint64_t now = now_ms(c);
  if (now < h->bdp_next_ms) return;
  if (send_frame(c, F_PING, 0, 0, BDP_PING, sizeof BDP_PING)) {
    h->bdp_inflight = 1;
    h->bdp_bytes = 0;
  }
}

static int bdp_done(conn_t *c, h2_t *h) {
  if (!h->bdp_inflight) return 1;
  h->bdp_inflight = 0;
  h->bdp_next_ms = now_ms(c) + BDP_INTERVAL_MS;
  int behind = 0;
  FOR_EACH_SPLICE(h, s) behind |= queued(s->plain) > 0;
  if (!h2_sync(c)) return 0;
  napi_value a[2];
  napi_create_double(c->env, (double)h->bdp_bytes, &a[0]);
  napi_get_boolean(c->env, behind, &a[1]);
  emit(c, EV_BDP, 2, a);
  return !c->closing;
}

/* A spliced stream's checks of one DATA frame: 1 deliver it; 0 drop it (the stream is being reset, with the
 * reason sent to JavaScript); -1 the connection is gone. */
static int data_admitted(conn_t *c, splice_t *s, size_t len) {
  if (s->failed) return 0;
  if (s->remote_ended) return stream_error(c, s, E_STREAM_CLOSED) ? 0 : -1;
  if ((s->recv_window -= (int64_t)len) < 0) return stream_error(c, s, E_FLOW_CONTROL) ? 0 : -1;
  return 1;
}

static int frame_start(conn_t *c, h2_t *h) {
  const unsigned char *b = h->hdr;
  h->len = ((uint32_t)b[0] << 16) | ((uint32_t)b[1] << 8) | b[2];
  h->type = b[3];
  h->flags = b[4];
  h->sid = be32(b + 5) & 0x7fffffff;
  h->left = h->len;
  h->fs = NULL;
  if (h->len > h->max_frame) return conn_error(c, E_FRAME_SIZE, "frame exceeds our maximum size");
  if (h->in_block && (h->type != F_CONTINUATION || h->sid != h->block_sid))
    return conn_error(c, E_PROTOCOL, "header block interrupted by another frame");
  if (h->type == F_HEADERS || h->type == F_PUSH_PROMISE || h->type == F_CONTINUATION) {
    h->in_block = !(h->flags & FL_END_HEADERS);
    h->block_sid = h->sid;
  }
  if (h->type == F_DATA) {
    if (h->sid == 0) return conn_error(c, E_PROTOCOL, "DATA on stream 0");
    h->conn_recv -= h->len;
    if (h->conn_recv < 0) return conn_error(c, E_FLOW_CONTROL, "peer overran the connection window");
    h->conn_unacked += h->len;
    /* The connection's window is given back on arrival: each stream's own window is what holds a peer. */
    if (h->conn_unacked >= h->conn_window / 4) {
      if (!send_window_update(c, 0, h->conn_unacked)) return 0;
      h->conn_recv += (int64_t)h->conn_unacked;
      h->conn_unacked = 0;
    }
    bdp_sample(c, h, h->len);
    if (c->closing) return 0;
    splice_t *s = lookup(h, h->sid);
    if (s && !(h->flags & FL_PADDED)) {
      h->mode = M_DROP;
      int admitted = data_admitted(c, s, h->len);
      if (admitted < 0) return 0;
      if (admitted) {
        h->mode = M_SPLICE;
        h->fs = s;
      }
      return 1;
    }
  }
  /* Kept whole: JavaScript reads a frame at once, and an unspliced stream's DATA may be spliced by its end. */
  h->mode = M_WHOLE;
  if (h->frame_cap < FH + h->len) {
    /* Control frames are small: an idle tunnel (one per hundred connections) keeps a small buffer. */
    size_t cap = FH + h->len < 1024 ? 1024 : FH + h->len;
    unsigned char *f = realloc(h->frame, cap);
    if (!f) {
      set_err(c, "out of memory for an HTTP/2 frame");
      close_conn(c);
      return 0;
    }
    h->frame = f;
    h->frame_cap = cap;
  }
  memcpy(h->frame, h->hdr, FH);
  h->frame_len = FH;
  return 1;
}

/* DATA kept whole for a stream that is spliced now (padded, or spliced while it arrived). */
static int whole_data(conn_t *c, h2_t *h) {
  /* What came before goes first; a workload that fails on it takes its splice with it. */
  flush_pending();
  splice_t *s = lookup(h, h->sid);
  if (s == NULL || s->failed) return 1;
  const unsigned char *p = h->frame + FH;
  size_t len = h->len, start = 0, pad = 0;
  if (h->flags & FL_PADDED) {
    if (len < 1 || p[0] >= len) return conn_error(c, E_PROTOCOL, "DATA padding exceeds the frame");
    pad = p[0];
    start = 1;
  }
  int admitted = data_admitted(c, s, len);
  if (admitted <= 0) return admitted == 0;
  uint32_t sid = s->sid;
  /* Padding is credit the workload never sees: given back now. */
  if (start + pad > 0) splice_sent(s->plain, start + pad);
  if (c->closing) return 0;
  piece_t data = {p + start, len - start - pad};
  if (data.len > 0) to_workload(s, &data, 1, data.len);
  if (c->closing) return 0;
  s = lookup(h, sid);
  if (s && (h->flags & FL_END_STREAM)) return remote_end(c, s);
  return 1;
}

static int whole_frame_end(conn_t *c, h2_t *h);

static int frame_end(conn_t *c, h2_t *h) {
  if (h->mode == M_SPLICE) {
    splice_t *s = h->fs;
    h->fs = NULL;
    if (s && (h->flags & FL_END_STREAM)) return remote_end(c, s);
    return 1;
  }
  if (h->mode == M_DROP) return 1;
  int ok = whole_frame_end(c, h);
  if (!c->closing && h->frame_cap > 64 * 1024) {
    /* A large frame was a one-off (JavaScript's own DATA): an idle tunnel keeps no large buffer. */
    free(h->frame);
    h->frame = NULL;
    h->frame_cap = 0;
  }
  return ok;
}

/* A frame kept whole: handled here (flow control, BDP answers, spliced DATA) or handed to JavaScript. */
static int whole_frame_end(conn_t *c, h2_t *h) {
  const unsigned char *p = h->frame + FH;
  if (h->type == F_DATA) {
    if (lookup(h, h->sid)) return whole_data(c, h);
  } else if (h->type == F_WINDOW_UPDATE && h->len == 4) {
    uint32_t inc = be32(p) & 0x7fffffff;
    if (h->sid == 0) {
      if (inc == 0) return conn_error(c, E_PROTOCOL, "WINDOW_UPDATE of 0");
      h->conn_send += inc;
      if (h->conn_send > MAX_WINDOW) return conn_error(c, E_FLOW_CONTROL, "connection window overflow");
      wake_all(h);
      /* JavaScript's own streams may be waiting for the connection's window too. */
    } else {
      splice_t *s = lookup(h, h->sid);
      if (s) {
        if (s->failed) return 1;
        if (inc == 0) return stream_error(c, s, E_PROTOCOL);
        s->send_window += inc;
        if (s->send_window > MAX_WINDOW) return stream_error(c, s, E_FLOW_CONTROL);
        if (s->waiting) wake(h, s);
        return 1;
      }
    }
  } else if (h->type == F_PING && h->len == 8 && (h->flags & FL_ACK) && memcmp(p, BDP_PING, 8) == 0) {
    return bdp_done(c, h);
  }
  return js_append(c, h->frame, h->frame_len);
}

int h2_input(conn_t *c, const unsigned char *p, size_t n) {
  h2_t *h = c->h2;
  size_t off = 0;
  if (h->failed) return 1;
  if (h->preface_left > 0) {
    /* A server's first bytes are the client's preface: JavaScript checks it. */
    size_t k = h->preface_left < n ? h->preface_left : n;
    if (!js_append(c, p, k)) return 0;
    h->preface_left -= k;
    off = k;
  }
  while (off < n) {
    if (c->closing) return 0;
    if (h->hdr_len < FH) {
      size_t k = FH - h->hdr_len;
      if (k > n - off) k = n - off;
      memcpy(h->hdr + h->hdr_len, p + off, k);
      h->hdr_len += k;
      off += k;
      if (h->hdr_len < FH) break;
      if (!frame_start(c, h)) return !c->closing;
      if (h->left > 0) continue;
    } else {
      size_t k = h->left < n - off ? h->left : n - off;
      if (h->mode == M_SPLICE) {
        if (h->fs) pend(h->fs, p + off, k);
      } else if (h->mode == M_WHOLE) {
        memcpy(h->frame + h->frame_len, p + off, k);
        h->frame_len += k;
      }
      off += k;
      h->left -= k;
      if (h->left > 0) continue;
    }
    h->hdr_len = 0;
    if (!frame_end(c, h) || c->closing) return !c->closing;
    if (h->failed) return 1;
  }
  return !c->closing;
}

/* ---- a workload's bytes out as DATA */

/* The tunnel's queue emptied: whoever waited for room reads again. */
void h2_drained(conn_t *c) {
  if (c->h2->waiting) wake_all(c->h2);
}

/* Reads what the workload sent, as far as the windows and the tunnel's queue allow, and sends it as DATA. */
void splice_read(conn_t *p) {
  splice_t *s = p->splice;
  conn_t *t = s->tls;
  h2_t *h = t->h2;
  uint32_t sid = s->sid;
  int eof = 0;
  while (!p->closing && !p->read_eof && !t->closing) {
    int64_t credit = s->send_window < h->conn_send ? s->send_window : h->conn_send;
    if (credit <= 0 || queued(t) >= TUNNEL_HIGH) {
      wait_for_room(h, s);
      break;
    }
    size_t want = credit < SPLICE_READ ? (size_t)credit : SPLICE_READ;
    ssize_t r;
    do r = recv(p->fd, g_read_buf, want, 0);
    while (r < 0 && errno == EINTR);
    if (r > 0) {
      /* Frames of at most the peer's size, each header and payload sealed together without a copy. */
      size_t n = (size_t)r, max = h->remote_max_frame, frames = (n + max - 1) / max;
      unsigned char hdrs[SPLICE_READ / 16384][FH];
      piece_t pieces[2 * (SPLICE_READ / 16384)];
      for (size_t i = 0, at = 0; i < frames; i++) {
        size_t len = n - at < max ? n - at : max;
        put_header(hdrs[i], len, F_DATA, 0, sid);
        pieces[2 * i].p = hdrs[i];
        pieces[2 * i].len = FH;
        pieces[2 * i + 1].p = g_read_buf + at;
        pieces[2 * i + 1].len = len;
        at += len;
      }
      if (!seal_records(t, pieces, n + frames * FH)) {
        close_conn(t);
        break;
      }
      s->send_window -= r;
      h->conn_send -= r;
      p->spliced_in += (double)r;
      if ((size_t)r < want) break; /* short: the socket is empty for now */
      continue;
    }
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (r == 0) {
      /* The workload's FIN: END_STREAM, after everything it sent. */
      p->read_eof = 1;
      s->local_ended = 1;
      if (!send_frame(t, F_DATA, FL_END_STREAM, sid, NULL, 0)) break;
      eof = 1;
      break;
    }
    close_for_errno(p, "read failed");
    break;
  }
  if (!t->closing && !flush_and_drain(t)) return;
  if (!t->closing) update_poll(t);
  if (eof && !t->closing && !stream_event(t, sid, H2_LOCAL_END)) return;
  if (p->closing) return;
  if (eof && p->fin_sent) {
    close_conn(p);
    return;
  }
  update_poll(p);
}

/* ---- JavaScript's calls */

/* A call's arguments; the first names a tunnel connection, whose HTTP/2 state is returned (NULL: none). */
static h2_t *h2_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, conn_t **out) {
  size_t argc = want;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  conn_t *c = argc >= want ? get_conn(env, argv[0]) : NULL;
  if (out) *out = c;
  return c && !c->closing ? c->h2 : NULL;
}

static double num_arg(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d;
}

/* h2Enable(conn, server, maxFrame, streamWindow, maxStreamWindow, connectionWindow) */
static napi_value H2Enable(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  conn_t *c = argc == 6 ? get_conn(env, argv[0]) : NULL;
  /* Before any data is read: a client's right away, a server's when its handshake has just ended. */
  if (!c || c->plain || c->h2) return throw_msg(env, "EINVAL", "h2Enable(conn, ...) once, on a TLS connection");
  h2_t *h = calloc(1, sizeof *h);
  if (!h) return throw_msg(env, "ENOMEM", "h2Enable: out of memory");
  bool server = false;
  napi_get_value_bool(env, argv[1], &server);
  h->preface_left = server ? PREFACE_LEN : 0;
  h->max_frame = (uint32_t)num_arg(env, argv[2]);
  h->local_window = (uint32_t)num_arg(env, argv[3]);
  h->max_window = (uint32_t)num_arg(env, argv[4]);
  h->conn_window = (uint64_t)num_arg(env, argv[5]);
  h->conn_recv = (int64_t)h->conn_window;
  h->conn_send = 65535;
  h->remote_max_frame = 16384;
  if (!g_read_buf && !(g_read_buf = malloc(SPLICE_READ))) {
    free(h);
    return throw_msg(env, "ENOMEM", "h2Enable: out of memory");
  }
  c->h2 = h;
  return NULL;
}

/* h2Splice(conn, streamId, plain, sendWindow, recvWindow) -> whether the stream is spliced now */
static napi_value H2Splice(napi_env env, napi_callback_info info) {
  napi_value argv[5], result;
  conn_t *t;
  h2_t *h = h2_args(env, info, 5, argv, &t);
  conn_t *p = h ? get_conn(env, argv[2]) : NULL;
  uint32_t sid = 0;
  if (h) napi_get_value_uint32(env, argv[1], &sid);
  int ok = h && p && p->plain && !p->closing && !p->splice && !p->read_eof && !p->ending && sid != 0 &&
           !h->failed && lookup(h, sid) == NULL;
  splice_t *s = ok ? calloc(1, sizeof *s) : NULL;
  if (s) {
    s->tls = t;
    s->plain = p;
    s->sid = sid;
    s->send_window = (int64_t)num_arg(env, argv[3]);
    s->recv_window = (int64_t)num_arg(env, argv[4]);
    s->skip = queued(p);
    if (insert(h, s)) {
      p->splice = s;
      p->paused = 0;
      update_poll(p);
    } else {
      free(s);
      s = NULL;
    }
  }
  napi_get_boolean(env, s != NULL, &result);
  return result;
}

/* h2Settings(conn, initialWindowDelta, maxFrame) -> false if a stream's window overflows */
static napi_value H2Settings(napi_env env, napi_callback_info info) {
  napi_value argv[3], result;
  h2_t *h = h2_args(env, info, 3, argv, NULL);
  int ok = 1;
  if (h) {
    int64_t delta = (int64_t)num_arg(env, argv[1]);
    h->remote_max_frame = (uint32_t)num_arg(env, argv[2]);
    if (h->remote_max_frame > SPLICE_READ) h->remote_max_frame = SPLICE_READ;
    FOR_EACH_SPLICE(h, s) {
      s->send_window += delta;
      if (s->send_window > MAX_WINDOW) ok = 0;
    }
    if (delta > 0) wake_all(h);
  }
  napi_get_boolean(env, ok, &result);
  return result;
}

static napi_value H2Credit(napi_env env, napi_callback_info info) {
  napi_value v, r;
  h2_t *h = h2_args(env, info, 1, &v, NULL);
  napi_create_double(env, h ? (double)h->conn_send : 0, &r);
  return r;
}

static napi_value H2Spend(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  h2_t *h = h2_args(env, info, 2, argv, NULL);
  if (h) h->conn_send -= (int64_t)num_arg(env, argv[1]);
  return NULL;
}

/* h2RemoteEnd(conn, streamId): END_STREAM that came on trailers, which JavaScript reads. */
static napi_value H2RemoteEnd(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  h2_t *h = h2_args(env, info, 2, argv, NULL);
  uint32_t sid = 0;
  if (!h || napi_get_value_uint32(env, argv[1], &sid) != napi_ok) return NULL;
  splice_t *s = lookup(h, sid);
  if (s && !s->remote_ended) end_workload(s);
  return NULL;
}

/* h2SetWindow(conn, streamWindow): every spliced stream's receive window grows with it. */
static napi_value H2SetWindow(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  h2_t *h = h2_args(env, info, 2, argv, NULL);
  if (!h) return NULL;
  uint32_t next = (uint32_t)num_arg(env, argv[1]);
  int64_t delta = (int64_t)next - (int64_t)h->local_window;
  h->local_window = next;
  FOR_EACH_SPLICE(h, s) s->recv_window += delta;
  return NULL;
}

void ambit_h2_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"h2Enable", NULL, H2Enable, NULL, NULL, NULL, napi_default, NULL},
    {"h2Splice", NULL, H2Splice, NULL, NULL, NULL, napi_default, NULL},
    {"h2Settings", NULL, H2Settings, NULL, NULL, NULL, napi_default, NULL},
    {"h2Credit", NULL, H2Credit, NULL, NULL, NULL, napi_default, NULL},
    {"h2Spend", NULL, H2Spend, NULL, NULL, NULL, napi_default, NULL},
    {"h2SetWindow", NULL, H2SetWindow, NULL, NULL, NULL, napi_default, NULL},
    {"h2RemoteEnd", NULL, H2RemoteEnd, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
