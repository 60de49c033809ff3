# Weir — the two commands a newcomer needs: `make demo` and `make test`.
# `make deps` installs the system packages the build needs (Debian/Ubuntu, as root or with sudo).

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The binary `make test` builds too. `cargo build`/`cargo run --bin weir`, `cargo run --example
# ...` and `cargo test` resolve the same features (weir-core pins the one dev-only difference),
# so all of them share one debug build, RocksDB and DataFusion included.
WEIR = $${CARGO_TARGET_DIR:-target}/debug/weir
WEIR_RELEASE = $${CARGO_TARGET_DIR:-target}/release/weir

.PHONY: deps build demo test bench image fuzz fuzz-seeds clean

# protoc for the gRPC code, clang/libclang for RocksDB's bindings, chromium and its WebDriver for
# the web UI's browser test, moto as the S3 server of the tests, kubernetes-validate for the
# Kubernetes manifests' schema check.
deps:
	@command -v protoc >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && [ -n "$$(ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* 2>/dev/null)" ] || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq protobuf-compiler clang libclang-dev chromium chromium-driver >/dev/null; }
	@python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install --quiet 'moto[server]'
	@python3 -c 'import kubernetes_validate' 2>/dev/null || python3 -m pip install --quiet kubernetes-validate

build: deps
	$(CARGO) test --workspace --no-run -q

# Build, run the word count on the embedded mini cluster, show the final count of each word.
demo: build
	@rm -rf out/wordcount
	$(WEIR) run examples/wordcount.yaml
	@echo "--- top words (final counts) from out/wordcount/part-*:"
	@cat out/wordcount/part-* | awk -F, '{ if ($$2 > max[$$1]) max[$$1] = $$2 } END { for (w in max) print max[w], w }' | sort -rn | head -10

test: deps
	$(CARGO) test --workspace

# Container images, built from this machine's files (no registry): weir:latest from the release
# binary, and weir-s3-test:latest, the S3 server the compose test uses instead of MinIO.
image: deps
	$(CARGO) build --release --bin weir
	python3 deploy/image/build.py weir --binary $(WEIR_RELEASE)
	python3 deploy/image/build.py s3-test

# Throughput figures from one release build (binary, examples and benchmarks together, so RocksDB
# is compiled once); prints tables, asserts nothing. Ends with the micro-benchmarks (state_bench,
# criterion's codec and state backends) and a flame graph per backend in bench/out/.
bench: deps
	$(CARGO) build --release --workspace --bins --examples --benches
	python3 bench/run.py $(WEIR_RELEASE)
	python3 bench/checkpoints.py $(WEIR_RELEASE)
	python3 bench/unaligned.py $(WEIR_RELEASE)
	python3 bench/savepoints.py $(WEIR_RELEASE)
	python3 bench/memory.py $(WEIR_RELEASE)
	python3 bench/micro.py
	python3 bench/profile.py $(WEIR_RELEASE)

# Fuzzing, not part of `make test`: every cargo-fuzz target in fuzz/ (the decoders of job files,
# data-plane frames, `_metadata` and state files) for FUZZ_SECONDS each, on the nightly
# toolchain, starting from the committed corpus in fuzz/corpus/<target>. Inputs the fuzzer finds
# go to fuzz/scratch/ (not committed); the first crash, panic, timeout or oversized allocation
# fails the run and leaves its input in fuzz/artifacts/<target>/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = job_file data_plane_event data_plane_buffer checkpoint_metadata state_files
FUZZ_FLAGS = -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512

fuzz: deps
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
	  echo "--- fuzzing $$t for $(FUZZ_SECONDS) s"; \
	  mkdir -p fuzz/scratch/$$t; \
	  $(CARGO) +nightly fuzz run $$t fuzz/scratch/$$t fuzz/corpus/$$t -- $(FUZZ_FLAGS) || exit 1; \
	done

# Rewrites the seed-* files of fuzz/corpus from Weir's own encoders (fuzz/src/write_seeds.rs).
fuzz-seeds: deps
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	$(CARGO) +nightly fuzz build write_seeds
	$${CARGO_TARGET_DIR:-fuzz/target}/x86_64-unknown-linux-gnu/release/write_seeds fuzz/corpus

clean:
	$(CARGO) clean
	rm -rf out
