/*
 * A TLS connection's records once the handshake is over: ours, not OpenSSL's, the way kernel TLS takes
 * them over from a userspace handshake (record.c seals and opens one record). A record is decrypted from
 * the socket's bytes straight into the buffer JavaScript reads (or, on a tunnel, the scratch buffer h2.c
 * routes from), and sealed from JavaScript's buffers straight into the one the socket sends from. Here too:
 * alerts both ways, the peer's post-handshake messages (tickets ignored, KeyUpdates followed within a rate)
 * and our own KeyUpdates. Why not node:tls: it hands every 16 KiB record to JavaScript through a stream and
 * copies each byte three times on the way; on the tunnel that was most of the daemon's CPU. Here one
 * callback carries everything readable at once (up to READ_BATCH), and a write is one syscall for all its
 * records.
 */
#include <node_api.h>
#include <openssl/crypto.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>

#include "conn.h"
#include "h2.h"

/* A peer's post-handshake messages (tickets, key updates) are a few hundred bytes; more is refused. */
#define HS_MAX 65536
/* Post-handshake handshake message types (RFC 8446 §4). */
#define HS_NEW_SESSION_TICKET 4
#define HS_KEY_UPDATE 24
/* AES-GCM's limit per key is 2^24.5 records (RFC 8446 §5.5): we move to new keys well before. */
#define TX_RECORDS_PER_KEY (1ull << 24)
/* Decrypted HTTP/2 bytes of one batch (h2.c routes them): a batch and one more record. */
#define H2_SCRATCH (READ_BATCH + REC_MAX_BODY)

static unsigned char *g_h2_scratch;
/* A handshake record's plaintext while the batch before it is handed on (records_read). */
static unsigned char g_hs_copy[REC_MAX_INNER];

int records_init(void) {
  if (!g_h2_scratch) g_h2_scratch = malloc(H2_SCRATCH);
  return g_h2_scratch != NULL;
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

/* close_notify, before our FIN. 0: sealing it failed. */
int seal_close_notify(conn_t *c) {
  static const unsigned char close_notify[2] = {1, 0};
  return seal_one(c, REC_TYPE_ALERT, close_notify, sizeof close_notify);
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

uint64_t clock_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One of the peer's KeyUpdates against its bucket. 0: over the rate. */
static int key_update_admitted(conn_t *c) {
  uint64_t now = clock_ms();
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

/* Whether a whole record is buffered: the socket will not say so again. */
int has_pending(conn_t *c) {
  size_t avail = c->in_len - c->in_off;
  if (avail < REC_HEADER) return 0;
  const unsigned char *h = (const unsigned char *)c->in + c->in_off;
  return avail >= REC_HEADER + (((size_t)h[3] << 8) | h[4]);
}

/* The end of a batch: what it decrypted goes on (JavaScript's, and h2.c's spliced bytes first). */
static int batch_end(conn_t *c, size_t start, size_t *got) {
  if (c->h2) {
    *got = 0;
    return h2_sync(c);
  }
  return emit_data(c, start, got);
}

/*
 * Opens every whole record that is buffered or readable and hands on what they carry, one event per batch:
 * into the slab for JavaScript, or (a tunnel's HTTP/2) into the scratch buffer that h2.c routes from.
 * Stops when the socket would block, on pause, on the peer's end.
 */
void records_read(conn_t *c) {
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
