# Weir — the two commands a newcomer needs: `make demo` and `make test`.
# `make deps` installs the system packages the build needs (Debian/Ubuntu, as root or with sudo).

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The binary `make test` builds too: building it through the test profile's feature set shares
# one build (RocksDB included) between `make demo` and `make test`.
WEIR = $${CARGO_TARGET_DIR:-target}/debug/weir
WEIR_RELEASE = $${CARGO_TARGET_DIR:-target}/release/weir

.PHONY: deps build demo test bench clean

# protoc for the gRPC code, clang/libclang for RocksDB's bindings, moto as the S3 server of the tests.
deps:
	@command -v protoc >/dev/null 2>&1 && [ -n "$$(ls /usr/lib/llvm-*/lib/libclang*.so* 2>/dev/null)" ] || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq protobuf-compiler clang libclang-dev >/dev/null; }
	@python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install --quiet 'moto[server]'

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

# Throughput figures from release builds; prints a table, asserts nothing.
bench: deps
	$(CARGO) build --release --bin weir
	python3 bench/run.py $(WEIR_RELEASE)
	python3 bench/checkpoints.py $(WEIR_RELEASE)
	python3 bench/unaligned.py $(WEIR_RELEASE)
	python3 bench/savepoints.py $(WEIR_RELEASE)
	$(CARGO) run --release -q -p weir-state --example state_bench

clean:
	$(CARGO) clean
	rm -rf out
