# corral — build, run, test, bench. Every output goes to build/ (or $(B)).
#
# Conventions (so that a new module needs no Makefile edit):
#   proxy/*.c            -> the daemon build/corral (proxy/main.c holds main())
#   bpf/*.bpf.c          -> BPF objects + skeletons in build/bpf/
#   tools/backend/*.c    -> build/corral-backend
#   tools/corralctl/*.c  -> build/corralctl
#   tests/unit/test_*.c  -> one Criterion binary each, linked with every proxy object but main
#   tests/fuzz/fuzz_*.c  -> libFuzzer targets (make fuzz)
#   tests/e2e/test_*.py  -> pytest end-to-end tests against the real binaries

B        ?= build
CC       ?= gcc
CLANG    ?= clang
PYTHON   ?= /usr/bin/python3
SAN      ?=
LLHTTP_SRC := /usr/share/llhttp
LLHTTP_INC := /usr/share/include/llhttp

WARN     := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-unused-parameter \
            -Wmissing-prototypes -Wstrict-prototypes -Wpointer-arith -Wvla
OPT      ?= -O2 -g
CFLAGS   := $(OPT) -std=gnu11 -pthread -D_GNU_SOURCE -fno-strict-aliasing $(WARN) $(SAN) \
            -Iproxy -Ibpf -I$(B)/bpf -I$(LLHTTP_INC) -MMD -MP
LDFLAGS  += -pthread $(SAN)
LIBS     := -luring -lbpf -lelf -lz -lyaml -ljansson -lurcu-qsbr -lxxhash -lssl -lcrypto -lm

PROXY_SRC   := $(wildcard proxy/*.c)
PROXY_OBJ   := $(PROXY_SRC:%.c=$(B)/obj/%.o)
LIB_OBJ     := $(filter-out $(B)/obj/proxy/main.o,$(PROXY_OBJ))
BPF_SRC     := $(wildcard bpf/*.bpf.c)
BPF_OBJ     := $(BPF_SRC:bpf/%.bpf.c=$(B)/bpf/%.bpf.o)
BPF_SKEL    := $(BPF_SRC:bpf/%.bpf.c=$(B)/bpf/%.skel.h)
BACKEND_SRC := $(wildcard tools/backend/*.c)
CTL_SRC     := $(wildcard tools/corralctl/*.c)
UNIT_SRC    := $(wildcard tests/unit/test_*.c)
UNIT_BIN    := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
FUZZ_SRC    := $(wildcard tests/fuzz/fuzz_*.c)
LLHTTP_OBJ  := $(B)/llhttp/llhttp.o $(B)/llhttp/api.o $(B)/llhttp/http.o
LLHTTP_LIB  := $(B)/libllhttp.a

BINS := $(B)/corral $(B)/corral-backend $(if $(CTL_SRC),$(B)/corralctl)

.SECONDARY: $(BPF_OBJ) $(BPF_SKEL)
.PHONY: all deps deps-run deps-test deps-bench run test unit e2e asan bench bench-quick bench-bins fuzz fuzz-smoke fmt lint clean install uninstall
.DEFAULT_GOAL := all

all: $(BINS) $(UNIT_BIN)

# Debian packages by purpose (deploy/install-deps.sh): `make run` needs only the run set.
deps:
	@bash deploy/install-deps.sh run test bench
deps-run:
	@bash deploy/install-deps.sh run
deps-test:
	@bash deploy/install-deps.sh test
deps-bench:
	@bash deploy/install-deps.sh bench

# --- llhttp, compiled from Debian's node-llhttp sources ----------------------
$(B)/llhttp/%.o: $(LLHTTP_SRC)/%.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -fPIC $(SAN) -I$(LLHTTP_INC) -c $< -o $@

$(LLHTTP_LIB): $(LLHTTP_OBJ)
	ar rcs $@ $^

# --- BPF ----------------------------------------------------------------------
$(B)/bpf/%.bpf.o: bpf/%.bpf.c $(wildcard bpf/*.h)
	@mkdir -p $(@D)
	$(CLANG) -O2 -g -target bpf -D__TARGET_ARCH_x86 -I/usr/include/x86_64-linux-gnu -Ibpf \
		-Wall -Werror -c $< -o $@

$(B)/bpf/%.skel.h: $(B)/bpf/%.bpf.o
	bpftool gen skeleton $< > $@.tmp && mv $@.tmp $@

# --- the daemon -----------------------------------------------------------------
$(B)/obj/%.o: %.c | $(BPF_SKEL)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

$(B)/corral: $(PROXY_OBJ) $(LLHTTP_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(B)/corral-backend: $(BACKEND_SRC:%.c=$(B)/obj/%.o)
	$(CC) $(LDFLAGS) -o $@ $^ -lm

$(B)/corralctl: $(CTL_SRC:%.c=$(B)/obj/%.o)
	$(CC) $(LDFLAGS) -o $@ $^ -ljansson -lm

# --- tests ------------------------------------------------------------------------
$(B)/tests/test_%: $(B)/obj/tests/unit/test_%.o $(LIB_OBJ) $(LLHTTP_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) -lcriterion

unit: $(UNIT_BIN)
	@bash tests/run-unit.sh $(UNIT_BIN)

# E2E_JOBS pytest processes (pytest-xdist, in the test set): the tests are independent (ports
# from the kernel, their own instances, BPF pin folders and temp folders) and mostly wait on
# sockets, so two share two CPUs well; .ci/run uses 2. The default is 1 (also without xdist):
# on a machine that is busy already (tests/under-load.sh), a second process squeezes the
# tests' timing margins further than SLOW=1 allows for.
E2E_JOBS ?= 1
E2E_XDIST = $(if $(filter-out 0 1,$(E2E_JOBS)),$(shell $(PYTHON) -c 'import xdist' 2>/dev/null && printf -- '-n %s' '$(E2E_JOBS)'))
e2e: $(BINS)
	CORRAL_BUILD=$(abspath $(B)) $(PYTHON) -m pytest -q -rsx -p no:cacheprovider $(E2E_XDIST) tests/e2e $(PYTEST_ARGS)

test: deps-test
	$(MAKE) all
	$(MAKE) unit
	$(MAKE) fuzz-smoke
	$(MAKE) e2e

# The same tests, built with AddressSanitizer + UBSan into build/asan. unit, then e2e: under
# make -j2 two goals of one make would run at once.
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
asan: deps-test
	$(MAKE) B=build/asan SAN="$(ASAN_FLAGS)" OPT="-O1 -g" all
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(MAKE) B=build/asan SAN="$(ASAN_FLAGS)" OPT="-O1 -g" unit
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(MAKE) B=build/asan SAN="$(ASAN_FLAGS)" OPT="-O1 -g" e2e

# --- fuzzing (clang libFuzzer) ----------------------------------------------------
FUZZ_FLAGS := -O1 -g -fsanitize=fuzzer,address,undefined -std=gnu11 -D_GNU_SOURCE -Iproxy -Ibpf -I$(LLHTTP_INC)
FUZZ_SECONDS ?= 60
# The PROXY header parser is pure: its target needs nothing else.
$(B)/fuzz/fuzz_proxyproto: tests/fuzz/fuzz_proxyproto.c tests/fuzz/check.h proxy/proxyproto.c proxy/proxyproto.h
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $< proxy/proxyproto.c

$(B)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/check.h proxy/http.c $(wildcard proxy/*.h) $(LLHTTP_SRC)/llhttp.c
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $< proxy/http.c $(LLHTTP_SRC)/llhttp.c $(LLHTTP_SRC)/api.c $(LLHTTP_SRC)/http.c

# The TLS target exercises proxy/tls.c (and util.c for BUG_ON) against OpenSSL.
$(B)/fuzz/fuzz_tls: tests/fuzz/fuzz_tls.c tests/fuzz/check.h proxy/tls.c proxy/util.c $(wildcard proxy/*.h)
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $< proxy/tls.c proxy/util.c -lssl -lcrypto -lurcu-qsbr
# Its client side (TLS to backends), against corral's own server session.
$(B)/fuzz/fuzz_tls_client: tests/fuzz/fuzz_tls_client.c tests/fuzz/check.h proxy/tls.c proxy/util.c $(wildcard proxy/*.h)
	@mkdir -p $(@D)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $< proxy/tls.c proxy/util.c -lssl -lcrypto -lurcu-qsbr

# One rule per target, so that make -j2 fuzzes two targets at once (each for FUZZ_SECONDS).
FUZZ_RUN := $(FUZZ_SRC:tests/fuzz/%.c=$(B)/fuzz/%.run)
.PHONY: $(FUZZ_RUN)
fuzz: $(FUZZ_RUN)
$(FUZZ_RUN): %.run: %
	@n=$$(basename $<); mkdir -p $(B)/fuzz/corpus-$$n; \
		echo "fuzz: $$n for $(FUZZ_SECONDS)s"; \
		seeds=tests/fuzz/corpus/$$n; [ -d $$seeds ] || seeds=; \
		$< -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=$(B)/fuzz/$$n- \
			$(B)/fuzz/corpus-$$n $$seeds

fuzz-smoke:
	@$(MAKE) --no-print-directory --output-sync=target fuzz FUZZ_SECONDS=10

# --- run, bench -----------------------------------------------------------------------
# The binaries only: the unit tests (all) would need the test set's Criterion.
run: deps-run
	$(MAKE) $(BINS)
	@bash deploy/run-demo.sh $(B)

# TLS transport micro-benchmark: corral's BIO vs a memory BIO (tools/bench/tls_bio.c).
$(B)/tls-bio-bench: tools/bench/tls_bio.c $(B)/obj/proxy/tls.o $(B)/obj/proxy/util.o
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ -lssl -lcrypto -lurcu-qsbr

# The bench's own contenders: the io_uring relay (the floor) and the Tokio/Hyper proxy, built
# offline against Debian's crates in /usr/share/cargo/registry (install-deps.sh bench).
RELAY_BIN := $(B)/corral-relay
TOKIO_BIN := $(B)/bench/tokio-proxy/release/tokio-proxy
$(RELAY_BIN): tools/bench/relay.c
	@mkdir -p $(@D)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) $(LDFLAGS) -o $@ $< -luring

# The TLS load generator (keep-alive with the handshakes outside the measured window, or a full
# handshake per request, which wrk cannot do without resuming): tools/bench/tls_load.c.
TLS_LOAD_BIN := $(B)/corral-tls-load
$(TLS_LOAD_BIN): tools/bench/tls_load.c
	@mkdir -p $(@D)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) $(LDFLAGS) -o $@ $< -lssl -lcrypto

$(TOKIO_BIN): tools/bench/tokio-proxy/src/main.rs tools/bench/tokio-proxy/Cargo.toml
	cd tools/bench/tokio-proxy && CARGO_HOME=$(abspath $(B))/bench/cargo-home /usr/bin/cargo build \
		--offline --release -j2 --target-dir $(abspath $(B))/bench/tokio-proxy

bench-bins: $(BINS) $(RELAY_BIN) $(TOKIO_BIN) $(TLS_LOAD_BIN)

# Full run (under 15 min on 2 cores) and a quick one (under 3 min); see docs/benchmarks.md.
bench: deps-bench
	$(MAKE) bench-bins
	@bash tools/bench/bench.sh $(B) full

bench-quick: deps-bench
	$(MAKE) bench-bins
	@bash tools/bench/bench.sh $(B) quick

# --- mutation check (slow, not in CI): planted bugs the tests must catch --------------------
.PHONY: mutate
mutate:
	$(PYTHON) tools/mutate/mutate.py $(MUTATE_ARGS)

# --- install (GNU conventions: PREFIX, DESTDIR for staging) ------------------------------
# corral and corralctl in $(BINDIR); the unit in $(UNITDIR) with ExecStart/ExecReload pointing
# at $(BINDIR); the sysctl file in $(SYSCTLDIR) (systemd reads /usr/lib and /usr/local/lib);
# the sample config in $(SYSCONFDIR)/corral only when none is there (an edited one is kept).
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSCTLDIR  ?= $(PREFIX)/lib/sysctl.d
DOCDIR     ?= $(PREFIX)/share/doc/corral

install: $(B)/corral $(B)/corralctl
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCTLDIR) \
		$(DESTDIR)$(SYSCONFDIR)/corral $(DESTDIR)$(DOCDIR)
	install -m 0755 $(B)/corral $(B)/corralctl $(DESTDIR)$(BINDIR)/
	sed -e 's#/usr/local/bin/#$(BINDIR)/#g' -e 's#/etc/corral/#$(SYSCONFDIR)/corral/#g' \
		deploy/corral.service > $(DESTDIR)$(UNITDIR)/corral.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/corral.service
	install -m 0644 deploy/sysctl-corral.conf $(DESTDIR)$(SYSCTLDIR)/60-corral.conf
	[ -e $(DESTDIR)$(SYSCONFDIR)/corral/corral.yaml ] || \
		install -m 0644 deploy/corral.yaml $(DESTDIR)$(SYSCONFDIR)/corral/corral.yaml
	install -m 0644 README.md docs/config.md docs/operations.md $(DESTDIR)$(DOCDIR)/

# Removes what install put there, except the config (it may hold local edits).
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/corral $(DESTDIR)$(BINDIR)/corralctl \
		$(DESTDIR)$(UNITDIR)/corral.service $(DESTDIR)$(SYSCTLDIR)/60-corral.conf
	rm -rf $(DESTDIR)$(DOCDIR)

# --- style ------------------------------------------------------------------------------
FMT_SRC := $(wildcard proxy/*.[ch] bpf/*.[ch] tools/*/*.[ch] tests/unit/*.c tests/fuzz/*.c)
fmt:
	clang-format -i $(FMT_SRC)

# lint tolerates nothing: a clang-format difference or a cppcheck finding fails it. Accepted
# cppcheck findings are listed with their reason in tools/lint/cppcheck-suppressions.txt.
CPPCHECK_FLAGS := --quiet --std=c11 --enable=warning,style,performance,portability \
	--library=tools/lint/cppcheck.cfg --suppressions-list=tools/lint/cppcheck-suppressions.txt \
	--inline-suppr --suppress=missingIncludeSystem --error-exitcode=1 -j2 \
	-D_GNU_SOURCE -D__x86_64__ -Iproxy -Ibpf -I$(B)/bpf -I$(LLHTTP_INC)
lint: deps-test $(BPF_SKEL)
	clang-format --dry-run --Werror $(FMT_SRC)
	cppcheck $(CPPCHECK_FLAGS) $(filter %.c,$(FMT_SRC))

clean:
	rm -rf build

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)
