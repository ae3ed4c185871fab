/*
 * The tunnel's HTTP/2 (h2.c) as the rest of the binding sees it: the hooks conn.c and tls_records.c call
 * on a tunnel connection or a spliced workload connection, and the session's creation.
 */
#ifndef AMBIT_H2_H
#define AMBIT_H2_H

#include "conn.h"

int h2_input(conn_t *c, const unsigned char *p, size_t n); /* 0: the connection is gone */
int h2_sync(conn_t *c);                                    /* the batch's end: spliced bytes out, frames sent */
void h2_free(conn_t *c);                                   /* the tunnel connection closes */
void h2_drained(conn_t *c);                                /* its send queue emptied */
void splice_read(conn_t *p);                               /* a spliced workload socket is readable */
void splice_sent(conn_t *p, size_t n);                     /* n bytes left its queue for the kernel */
void splice_free(conn_t *p);                               /* the workload connection closes or ends */
int splice_waiting(conn_t *p);                             /* not to be read for now */
void ambit_h2_init(napi_env env, napi_value exports);
h2_t *h2_create(conn_t *c, int server, const double *options); /* h2Enable's work (and the fuzz target's) */

#endif
