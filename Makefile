# Tide build. `make` builds, `make test` sets up + runs every test,
# `make run` sets up + runs the default job, `make debug` builds with
# ASan+UBSan, `make fuzz` runs the file-format fuzzers, `make clean` cleans.

CC      ?= cc
PKGS    := luajit libedit jansson
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LIBS    := $(PKG_LIBS) -lopenblas -luv -lzstd -lutf8proc -lm -lpthread -ldl

WARN    := -Wall -Wextra -Werror
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE $(WARN) -fPIC -Isrc -Ikernels $(PKG_CFLAGS) -I/usr/include/x86_64-linux-gnu/openblas-pthread
OPT_CFLAGS  := -O2 -g
DBG_CFLAGS  := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
AVX_FLAGS   := -mavx2 -mfma -mf16c

LIB_SRC   := $(filter-out src/main.c,$(wildcard src/*.c)) $(wildcard kernels/*.c)
AVX_SRC   := $(wildcard kernels/avx2/*.c)
TEST_SRC  := $(wildcard tests/c/test_*.c)
TEST_UTIL := $(filter-out $(TEST_SRC),$(wildcard tests/c/*.c))
HEADERS   := $(wildcard src/*.h kernels/*.h kernels/avx2/*.h tests/c/*.h)

# Build folders; override (make B=build-x BD=build-x-debug) to build a
# private copy without racing another build in the same tree.
B  ?= build
BD ?= build-debug

.PHONY: all debug test run deps fuzz clean bench tests-bin
.DEFAULT_GOAL := all
.SECONDARY:

all: $(B)/tide $(B)/libtide.so lua/tide/cdef.lua tests-bin
ifeq ($(B),build)
all: tide
tide: $(B)/tide
	ln -sf $(B)/tide tide
endif

# ---- release --------------------------------------------------------------
$(B)/obj/%.o: %.c $(HEADERS) | $(B)/obj
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(OPT_CFLAGS) $(if $(findstring kernels/avx2/,$<),$(AVX_FLAGS)) -c $< -o $@

LIB_OBJ := $(patsubst %.c,$(B)/obj/%.o,$(LIB_SRC) $(AVX_SRC))

$(B)/libtide.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/libtide.so: $(LIB_OBJ)
	$(CC) -shared -o $@ $^ $(LIBS)

$(B)/tide: $(B)/obj/src/main.o $(B)/libtide.a
	$(CC) -o $@ $(B)/obj/src/main.o -Wl,--whole-archive $(B)/libtide.a -Wl,--no-whole-archive -Wl,--export-dynamic $(LIBS)

lua/tide/cdef.lua: $(HEADERS) scripts/gen_cdef.sh
	scripts/gen_cdef.sh "$(CC)" $@

TEST_BIN := $(patsubst tests/c/%.c,$(B)/tests/%,$(TEST_SRC))
TEST_UTIL_OBJ := $(patsubst %.c,$(B)/obj/%.o,$(TEST_UTIL))
tests-bin: $(TEST_BIN)
$(B)/tests/%: tests/c/%.c $(TEST_UTIL_OBJ) $(B)/libtide.a $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(OPT_CFLAGS) -Itests/c -o $@ $< $(TEST_UTIL_OBJ) $(B)/libtide.a -lcmocka $(LIBS)

# ---- debug (ASan + UBSan) -------------------------------------------------
$(BD)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(DBG_CFLAGS) $(if $(findstring kernels/avx2/,$<),$(AVX_FLAGS)) -c $< -o $@

DBG_OBJ := $(patsubst %.c,$(BD)/obj/%.o,$(LIB_SRC) $(AVX_SRC))
DBG_TEST_BIN := $(patsubst tests/c/%.c,$(BD)/tests/%,$(TEST_SRC))
DBG_TEST_UTIL_OBJ := $(patsubst %.c,$(BD)/obj/%.o,$(TEST_UTIL))

$(BD)/libtide.a: $(DBG_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BD)/tide: $(BD)/obj/src/main.o $(BD)/libtide.a
	$(CC) $(DBG_CFLAGS) -o $@ $(BD)/obj/src/main.o -Wl,--whole-archive $(BD)/libtide.a -Wl,--no-whole-archive -Wl,--export-dynamic $(LIBS)

$(BD)/tests/%: tests/c/%.c $(DBG_TEST_UTIL_OBJ) $(BD)/libtide.a $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(DBG_CFLAGS) -Itests/c -o $@ $< $(DBG_TEST_UTIL_OBJ) $(BD)/libtide.a -lcmocka $(LIBS)

debug: $(BD)/tide $(DBG_TEST_BIN) lua/tide/cdef.lua

$(B)/obj:
	@mkdir -p $@

# ---- set-up, tests, default job -------------------------------------------
deps:
	@scripts/deps.sh

test: deps
	@$(MAKE) --no-print-directory all debug
	@B=$(B) BD=$(BD) scripts/run_tests.sh

run: deps
	@$(MAKE) --no-print-directory all
	./tide run recipes/default.lua

# The quick benchmarks (minutes); the long ones (bench/quant_speed.lua writes
# 1B-parameter synthetic models, bench/serve_*.lua, bench/overlap.lua) are run
# by hand: `./tide run bench/NAME.lua`.
BENCH_QUICK ?= decode_overhead tokenizer_bench eplb_balance serve_prefix plan_h20_vs_h800
bench: deps
	@$(MAKE) --no-print-directory all
	@for b in $(BENCH_QUICK); do ./tide run bench/$$b.lua || exit 1; done

# ---- fuzzing (clang libFuzzer) ----------------------------------------------
FUZZ_SECONDS ?= 60
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Isrc $(PKG_CFLAGS)
FUZZ_LIB_SRC := src/error.c src/dtype.c src/tensor.c src/safetensors.c src/gguf.c src/fileio.c
fuzz:
	@scripts/deps.sh clang libclang-rt-14-dev
	@mkdir -p $(B)/fuzz
	@for t in safetensors gguf http; do \
	  clang $(FUZZ_FLAGS) -o $(B)/fuzz/fuzz_$$t fuzz/fuzz_$$t.c $(FUZZ_LIB_SRC) $(PKG_LIBS) -lm -lpthread || exit 1; \
	  mkdir -p $(B)/fuzz/corpus_$$t; cp -n fuzz/seeds/$$t/* $(B)/fuzz/corpus_$$t/ 2>/dev/null || true; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS)s"; \
	  $(B)/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -artifact_prefix=fuzz/crashes/$$t- \
	    $(B)/fuzz/corpus_$$t fuzz/seeds/$$t >$(B)/fuzz/$$t.log 2>&1; rc=$$?; tail -3 $(B)/fuzz/$$t.log; \
	  [ $$rc -eq 0 ] || { echo "fuzz: $$t failed (exit $$rc), see $(B)/fuzz/$$t.log and fuzz/crashes/"; exit 1; }; \
	done

clean:
	rm -rf build build-debug tide lua/tide/cdef.lua

# ---- tokenizer: Unicode category tables from Debian's unicode-data ----------
UNICODE_DIR ?= /usr/share/unicode
all: lua/tide/unicode_gen.lua
lua/tide/unicode_gen.lua: scripts/gen_unicode.lua $(UNICODE_DIR)/UnicodeData.txt $(UNICODE_DIR)/PropList.txt $(UNICODE_DIR)/DerivedCoreProperties.txt
	luajit scripts/gen_unicode.lua $(UNICODE_DIR) $@

# ---- MPI (Open MPI): flags from the mpicc wrapper; libtide links libmpi, but
# MPI is initialised only when a script asks for it (src/comm_mpi.c).
MPI_CFLAGS := $(shell mpicc --showme:compile 2>/dev/null)
MPI_LIBS   := $(shell mpicc --showme:link 2>/dev/null)
BASE_CFLAGS += $(MPI_CFLAGS)
LIBS += $(MPI_LIBS)
ifeq ($(strip $(MPI_CFLAGS)),)
BASE_CFLAGS += -DTIDE_NO_MPI
endif

# quantization: the dtype traits table (src/dtype.c) points at the block formats in kernels/quant.c
FUZZ_LIB_SRC += kernels/quant.c

# ---- serving: src/server.c (libuv + Debian's http_parser); its request
# parser is fuzzed too (fuzz/fuzz_http.c).
LIBS += -lhttp_parser
FUZZ_LIB_SRC += src/server.c
PKG_LIBS += -luv -lhttp_parser
