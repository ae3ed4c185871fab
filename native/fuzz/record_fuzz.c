/*
 * libFuzzer target: the TLS record reader (tls_records.c's records_read and everything it calls: record.c's
 * opening, alerts, post-handshake messages, KeyUpdates and their rate, the alerts we send back) on a
 * connection whose handshake is over, keyed from fixed secrets. The fuzzer's bytes are the peer's: they
 * arrive on a real socket (one end of a socketpair), and the binding reads them with recv() as it does
 * in ambitd, through do_read (conn.c) as the poll calls it. The binding's sources are linked as they are
 * (the Makefile lists them), all but the N-API entry points.
 *
 * The first input byte picks the setup:
 *   bit 0   0: we are the server (the peer's records are sealed with the client secret), 1: the client
 *   bit 1   the cipher suite: 0 TLS_AES_128_GCM_SHA256, 1 TLS_AES_256_GCM_SHA384
 *   bit 2   0: the rest is raw socket bytes, written in pieces; 1: the rest is records for the harness to
 *           seal with the peer's keys (so the fuzzer reaches what lies past the MAC): each is
 *           type (1 byte, 0 = none), length (2 bytes, big-endian), padding (1 byte), then the content;
 *           the harness follows the peer's KeyUpdates the way a peer would (when the reader took one)
 *   bit 3   the peer closes its side (FIN) once everything is written
 *   bits 4-7 raw mode: (n + 1) * 61 bytes are written before each read
 * gen_corpus.mjs writes seeds in this format with the same secrets.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"

#include "napi_stub.h"

static unsigned char secret_client[48], secret_server[48];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  memset(secret_client, 0x11, sizeof secret_client);
  memset(secret_server, 0x22, sizeof secret_server);
  return 0;
}

/* What the binding sent us (alerts, KeyUpdates): read and dropped, so its socket never fills. */
static void drain(int fd) {
  char buf[65536];
  while (recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
  }
}

/* Writes everything (the socket's buffer is larger than any one piece written here). */
static void put(int fd, const unsigned char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) return;
    p += w;
    n -= (size_t)w;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  unsigned opts = data[0];
  data++, size--;
  int server = !(opts & 1);
  int suite = opts & 2 ? 0x1302 : 0x1301;
  int sealed = (opts & 4) != 0;
  int fin = (opts & 8) != 0;
  size_t piece = (size_t)((opts >> 4) + 1) * 61;

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 0;
  fcntl(sv[0], F_SETFL, O_NONBLOCK);
  fcntl(sv[1], F_SETFL, O_NONBLOCK);
  int big = 1 << 20;
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);

  conn_t *c = calloc(1, sizeof *c);
  rec_t peer;
  const unsigned char *ours_rx = server ? secret_client : secret_server;
  const unsigned char *ours_tx = server ? secret_server : secret_client;
  if (!c || !rec_init(&c->rec, suite, ours_rx, ours_tx)) abort();
  if (!rec_init(&peer, suite, ours_tx, ours_rx)) abort();
  c->env = stub_env;
  c->fd = sv[0];
  c->server = server;
  c->state = S_OPEN;
  c->records = 1;
  c->ku_rate = KEY_UPDATE_RATE;
  c->ku_tokens = c->ku_rate * 10;
  c->ku_at = clock_ms();
  c->poll.data = c;

  if (sealed) {
    static unsigned char rec[REC_HEADER + REC_MAX_BODY + 512];
    while (size >= 4 && !c->closing) {
      unsigned type = data[0];
      size_t len = (((size_t)data[1] << 8) | data[2]) % (REC_MAX_PLAIN + 256);
      size_t pad = data[3];
      data += 4, size -= 4;
      if (len > size) len = size;
      /* The inner plaintext is content, type, padding: with padding, the type goes in as content and the
       * last zero is what rec_seal_end appends. */
      size_t plain = len + (pad > 0 ? pad : 0);
      if (REC_HEADER + plain + 1 + REC_TAG > sizeof rec) break;
      static const unsigned char zeros[256];
      unsigned char t = (unsigned char)type;
      int ok = rec_seal_begin(&peer, rec, plain) && rec_seal_update(&peer, rec + REC_HEADER, data, len);
      if (ok && pad > 0) {
        ok = rec_seal_update(&peer, rec + REC_HEADER + len, &t, 1) &&
             (pad == 1 || rec_seal_update(&peer, rec + REC_HEADER + len + 1, zeros, pad - 1));
        t = 0;
      }
      ok = ok && rec_seal_end(&peer, rec + REC_HEADER + plain, t);
      if (!ok) abort();
      data += len, size -= len;
      put(sv[1], rec, rec_sealed_size(plain));
      do_read(c);
      drain(sv[1]);
      /* The reader took a KeyUpdate: the peer's next records are under its next keys. */
      if (!c->closing && memcmp(c->rec.rx.secret, peer.tx.secret, peer.hash_len) != 0) rec_update(&peer, &peer.tx);
    }
  } else {
    while (size > 0 && !c->closing) {
      size_t n = size < piece ? size : piece;
      put(sv[1], data, n);
      data += n, size -= n;
      do_read(c);
      drain(sv[1]);
    }
  }
  if (!c->closing && fin) {
    shutdown(sv[1], SHUT_WR);
    do_read(c);
  }
  if (!c->closing) close_conn(c); /* tlsDestroy */
  stub_run_closes();              /* on_closed: the close event, then c is freed */
  close(sv[1]);
  rec_free(&peer);
  return 0;
}
