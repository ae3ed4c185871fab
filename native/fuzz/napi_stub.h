/*
 * What the fuzz targets see of the stubbed N-API and libuv (napi_stub.c): the events the binding emitted,
 * and the closes libuv would have completed on the next turn of its loop.
 */
#ifndef AMBIT_NAPI_STUB_H
#define AMBIT_NAPI_STUB_H

/* How many times each event (EV_*, conn.h) was dispatched to "JavaScript". */
extern unsigned long stub_events[16];
/* Runs the close callbacks uv_close queued (the connection's on_closed frees it). */
void stub_run_closes(void);
/* The env the stubs hand out (any non-NULL pointer: nothing dereferences it). */
extern struct napi_env__ *const stub_env;

#endif
