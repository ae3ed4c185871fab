#include "record.h"

#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <string.h>

/* HKDF-Expand-Label(secret, label, "", len) for len <= the hash length: one HMAC block (RFC 8446 §7.1). */
static int expand_label(const EVP_MD *md, const unsigned char *secret, size_t secret_len, const char *label,
                        unsigned char *out, size_t len) {
  unsigned char info[2 + 1 + 6 + 16 + 1 + 1];
  size_t label_len = strlen(label), n = 0;
  if (label_len > 16) return 0;
  info[n++] = (unsigned char)(len >> 8);
  info[n++] = (unsigned char)len;
  info[n++] = (unsigned char)(6 + label_len);
  memcpy(info + n, "tls13 ", 6);
  n += 6;
  memcpy(info + n, label, label_len);
  n += label_len;
  info[n++] = 0; /* empty context */
  info[n++] = 1; /* T(1) */
  unsigned char t[EVP_MAX_MD_SIZE];
  unsigned int t_len = 0;
  if (HMAC(md, secret, (int)secret_len, info, n, t, &t_len) == NULL || t_len < len) return 0;
  memcpy(out, t, len);
  OPENSSL_cleanse(t, sizeof t);
  return 1;
}

static int set_keys(rec_t *r, rec_dir_t *d, int enc) {
  unsigned char key[32];
  if (!expand_label(r->md, d->secret, r->hash_len, "key", key, r->key_len) ||
      !expand_label(r->md, d->secret, r->hash_len, "iv", d->iv, sizeof d->iv))
    return 0;
  const EVP_CIPHER *cipher = r->key_len == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
  int ok = EVP_CipherInit_ex(d->ctx, cipher, NULL, key, NULL, enc) == 1;
  OPENSSL_cleanse(key, sizeof key);
  d->seq = 0;
  return ok;
}

int rec_init(rec_t *r, int suite, const unsigned char *rx_secret, const unsigned char *tx_secret) {
  memset(r, 0, sizeof *r);
  if (suite == 0x1301) {
    r->md = EVP_sha256();
    r->hash_len = 32;
    r->key_len = 16;
  } else if (suite == 0x1302) {
    r->md = EVP_sha384();
    r->hash_len = 48;
    r->key_len = 32;
  } else {
    return 0;
  }
  memcpy(r->rx.secret, rx_secret, r->hash_len);
  memcpy(r->tx.secret, tx_secret, r->hash_len);
  r->rx.ctx = EVP_CIPHER_CTX_new();
  r->tx.ctx = EVP_CIPHER_CTX_new();
  if (!r->rx.ctx || !r->tx.ctx || !set_keys(r, &r->rx, 0) || !set_keys(r, &r->tx, 1)) {
    rec_free(r);
    return 0;
  }
  return 1;
}

void rec_free(rec_t *r) {
  EVP_CIPHER_CTX_free(r->rx.ctx);
  EVP_CIPHER_CTX_free(r->tx.ctx);
  OPENSSL_cleanse(r, sizeof *r);
}

int rec_update(rec_t *r, rec_dir_t *d) {
  unsigned char next[48];
  if (!expand_label(r->md, d->secret, r->hash_len, "traffic upd", next, r->hash_len)) return 0;
  memcpy(d->secret, next, r->hash_len);
  OPENSSL_cleanse(next, sizeof next);
  return set_keys(r, d, d == &r->tx);
}

/* The per-record nonce: the IV XORed with the sequence number, right-aligned (RFC 8446 §5.3). */
static void nonce_of(const rec_dir_t *d, unsigned char nonce[12]) {
  memcpy(nonce, d->iv, 12);
  for (int i = 0; i < 8; i++) nonce[4 + i] ^= (unsigned char)(d->seq >> (56 - 8 * i));
}

int rec_seal_begin(rec_t *r, unsigned char *out, size_t plain_len) {
  size_t body = plain_len + 1 + REC_TAG;
  out[0] = REC_TYPE_DATA; /* every protected record says application_data outside */
  out[1] = 0x03;
  out[2] = 0x03;
  out[3] = (unsigned char)(body >> 8);
  out[4] = (unsigned char)body;
  unsigned char nonce[12];
  nonce_of(&r->tx, nonce);
  int n;
  return EVP_EncryptInit_ex(r->tx.ctx, NULL, NULL, NULL, nonce) == 1 &&
         EVP_EncryptUpdate(r->tx.ctx, NULL, &n, out, REC_HEADER) == 1;
}

int rec_seal_update(rec_t *r, unsigned char *out, const unsigned char *in, size_t len) {
  int n;
  return EVP_EncryptUpdate(r->tx.ctx, out, &n, in, (int)len) == 1 && (size_t)n == len;
}

int rec_seal_end(rec_t *r, unsigned char *out, unsigned char type) {
  int n, m;
  if (EVP_EncryptUpdate(r->tx.ctx, out, &n, &type, 1) != 1 || n != 1) return 0;
  if (EVP_EncryptFinal_ex(r->tx.ctx, out + 1, &m) != 1 || m != 0) return 0;
  if (EVP_CIPHER_CTX_ctrl(r->tx.ctx, EVP_CTRL_AEAD_GET_TAG, REC_TAG, out + 1) != 1) return 0;
  r->tx.seq++;
  return 1;
}

long rec_open(rec_t *r, const unsigned char *rec, size_t body_len, unsigned char *out, unsigned char *type) {
  if (body_len <= REC_TAG) return REC_ERR_MAC;
  size_t clen = body_len - REC_TAG;
  unsigned char nonce[12], tag[REC_TAG];
  nonce_of(&r->rx, nonce);
  memcpy(tag, rec + REC_HEADER + clen, REC_TAG);
  int n, m;
  EVP_CIPHER_CTX *ctx = r->rx.ctx;
  if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1 ||
      EVP_DecryptUpdate(ctx, NULL, &n, rec, REC_HEADER) != 1 ||
      EVP_DecryptUpdate(ctx, out, &n, rec + REC_HEADER, (int)clen) != 1 || (size_t)n != clen ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, REC_TAG, tag) != 1 ||
      EVP_DecryptFinal_ex(ctx, out + n, &m) != 1)
    return REC_ERR_MAC;
  r->rx.seq++;
  /* Checked once authentic: only a peer holding the keys hears record_overflow rather than bad_record_mac. */
  if (clen > REC_MAX_INNER) return REC_ERR_OVERFLOW;
  /* The content type is the last non-zero byte; zeros after it are padding. */
  size_t len = clen;
  while (len > 0 && out[len - 1] == 0) len--;
  if (len == 0) return REC_ERR_NO_TYPE;
  *type = out[len - 1];
  return (long)(len - 1);
}
