# The nghttp2 glue's fuzz target (h2_fuzz.c), for the fuzz Makefile to include (or to run on its own:
# make -f native/fuzz/h2.mk fuzz-h2 run-fuzz-h2). Linked with Debian's libnghttp2: there is no Node here.
H2_FUZZ_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
FUZZ_CC ?= clang
NODE_INCLUDE ?= $(firstword $(wildcard $(dir $(shell command -v node))../include/node) /usr/include/node)
H2_FUZZ_FLAGS ?= -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_SECONDS ?= 60
# The fuzz Makefile builds and run.sh runs every target listed here.
FUZZ_TARGETS += h2_fuzz connect_fuzz

$(H2_FUZZ_DIR)/build/h2_fuzz: $(H2_FUZZ_DIR)/h2_fuzz.c $(H2_FUZZ_DIR)/../src/h2.c $(H2_FUZZ_DIR)/../src/conn.h
	@mkdir -p $(H2_FUZZ_DIR)/build
	$(FUZZ_CC) $(H2_FUZZ_FLAGS) -I$(H2_FUZZ_DIR)/../src -I$(NODE_INCLUDE) $< -lnghttp2 -o $@

# The CONNECT header handling: the same glue, fed header blocks (h2_fuzz.c, FUZZ_CONNECT_HEADERS).
$(H2_FUZZ_DIR)/build/connect_fuzz: $(H2_FUZZ_DIR)/h2_fuzz.c $(H2_FUZZ_DIR)/../src/h2.c $(H2_FUZZ_DIR)/../src/conn.h
	@mkdir -p $(H2_FUZZ_DIR)/build
	$(FUZZ_CC) $(H2_FUZZ_FLAGS) -DFUZZ_CONNECT_HEADERS -I$(H2_FUZZ_DIR)/../src -I$(NODE_INCLUDE) $< -lnghttp2 -o $@

.PHONY: fuzz-h2 run-fuzz-h2
fuzz-h2: $(H2_FUZZ_DIR)/build/h2_fuzz

# A copy of the seed corpus grows in build/; the seeds in corpus/h2 stay as committed.
run-fuzz-h2: fuzz-h2
	@mkdir -p $(H2_FUZZ_DIR)/build/corpus-h2
	$(H2_FUZZ_DIR)/build/h2_fuzz $(H2_FUZZ_DIR)/build/corpus-h2 $(H2_FUZZ_DIR)/corpus/h2 \
	  -dict=$(H2_FUZZ_DIR)/h2.dict -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1
