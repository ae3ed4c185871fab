# The HTTP/2 targets, included by the fuzz Makefile (it supplies CC, CFLAGS and BUILD): the nghttp2 glue fed
# a session's input (h2_fuzz) and the CONNECT header handling fed header blocks (connect_fuzz), both from
# h2_fuzz.c, which includes h2.c whole. Linked with Debian's libnghttp2: there is no Node here.
FUZZ_TARGETS += h2_fuzz connect_fuzz

H2_FUZZ_DEPS := h2_fuzz.c ../src/h2.c ../src/conn.h ../src/codes.h ../src/h2.h

$(BUILD)/h2_fuzz: $(H2_FUZZ_DEPS) | $(BUILD)
	$(CC) $(CFLAGS) -o $@ h2_fuzz.c $(NGHTTP2_LIBS)

$(BUILD)/connect_fuzz: $(H2_FUZZ_DEPS) | $(BUILD)
	$(CC) $(CFLAGS) -DFUZZ_CONNECT_HEADERS -o $@ h2_fuzz.c $(NGHTTP2_LIBS)
