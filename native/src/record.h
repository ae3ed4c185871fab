/*
 * TLS 1.3 record protection (RFC 8446 §5.2-5.3, §7.1-7.2) for a connection whose handshake OpenSSL did:
 * AES-GCM with the traffic secrets the handshake produced, sequence numbers from 0, key updates. Sealing
 * and opening work in place in the caller's buffers, so a byte is touched once, by the cipher.
 */
#ifndef AMBIT_RECORD_H
#define AMBIT_RECORD_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

#define REC_HEADER 5
#define REC_TAG 16
#define REC_MAX_PLAIN 16384
/* Ciphertext may exceed the plaintext limit by 256 (RFC 8446 §5.2). */
#define REC_MAX_BODY (REC_MAX_PLAIN + 256)
/* The encoded inner plaintext (content, type, padding) is at most 2^14 + 1 bytes (RFC 8446 §5.4). */
#define REC_MAX_INNER (REC_MAX_PLAIN + 1)
#define REC_TYPE_ALERT 21
#define REC_TYPE_HANDSHAKE 22
#define REC_TYPE_DATA 23

/* What rec_open says about a record it does not hand on. */
#define REC_ERR_MAC (-1)      /* does not authenticate: bad_record_mac */
#define REC_ERR_OVERFLOW (-2) /* authentic, but its inner plaintext is over REC_MAX_INNER: record_overflow */
#define REC_ERR_NO_TYPE (-3)  /* authentic, but all zeros (no content type): unexpected_message */

/* Alert descriptions (RFC 8446 §6). */
#define ALERT_CLOSE_NOTIFY 0
#define ALERT_UNEXPECTED_MESSAGE 10
#define ALERT_BAD_RECORD_MAC 20
#define ALERT_RECORD_OVERFLOW 22
#define ALERT_ILLEGAL_PARAMETER 47
#define ALERT_DECODE_ERROR 50
#define ALERT_INTERNAL_ERROR 80
#define ALERT_USER_CANCELED 90

typedef struct {
  EVP_CIPHER_CTX *ctx;
  unsigned char iv[12];
  unsigned char secret[48];
  uint64_t seq;
} rec_dir_t;

typedef struct {
  const EVP_MD *md;
  size_t hash_len, key_len;
  rec_dir_t rx, tx;
} rec_t;

/* suite: the IANA id (0x1301 TLS_AES_128_GCM_SHA256, 0x1302 TLS_AES_256_GCM_SHA384). 0 if unsupported. */
int rec_init(rec_t *r, int suite, const unsigned char *rx_secret, const unsigned char *tx_secret);
void rec_free(rec_t *r);
/* Next generation of one direction's keys (KeyUpdate). */
int rec_update(rec_t *r, rec_dir_t *d);

/* Sealing one record of `plain_len` bytes into out: header, then the body written piece by piece. */
int rec_seal_begin(rec_t *r, unsigned char *out, size_t plain_len);
int rec_seal_update(rec_t *r, unsigned char *out, const unsigned char *in, size_t len);
/* Appends the inner content type and the tag at `out` (just after the plaintext). */
int rec_seal_end(rec_t *r, unsigned char *out, unsigned char type);
static inline size_t rec_sealed_size(size_t plain_len) { return REC_HEADER + plain_len + 1 + REC_TAG; }

/*
 * Opens one record: `rec` is its header and body (REC_HEADER + body_len bytes); the plaintext goes to `out`
 * (body_len - REC_TAG bytes of room). Returns the plaintext length and sets *type, or a REC_ERR_*.
 */
long rec_open(rec_t *r, const unsigned char *rec, size_t body_len, unsigned char *out, unsigned char *type);

#endif
