# fogconnect build entry points. One target directory serves the host
# (release profile) and the plugins (wasm32-wasip2, "plugin" profile), so the
# workspace is built once and plugin builds stay incremental.

CARGO       ?= cargo
TARGET_DIR  ?= $(CURDIR)/target
PLUGIN_DIR  := $(TARGET_DIR)/wasm32-wasip2/plugin
PLUGINS     := echo demo adaptive-source test-echo-v1 test-echo-v2 test-spin test-memhog test-panic test-escape test-probe test-counter test-oversized test-ticker
export CARGO_TARGET_DIR := $(TARGET_DIR)
export FOGCONNECT_PLUGIN_DIR := $(PLUGIN_DIR)

.PHONY: setup lab-deps plugins build demo test lint bench bench-nat fuzz clean

## setup: install the toolchain pieces the build needs
setup:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

## lab-deps: what the NAT lab tests need (root): ip, nft, and coturn's
## RFC 5780 server and client for the interoperability tests
LAB_TOOLS := ip:iproute2 nft:nftables turnserver:coturn turnutils_natdiscovery:coturn
lab-deps:
	@missing=""; for tool in $(LAB_TOOLS); do \
		command -v $${tool%%:*} >/dev/null || missing="$$missing $${tool##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## plugins: build every plugin to $(PLUGIN_DIR)
plugins: setup
	$(CARGO) build --target wasm32-wasip2 --profile plugin $(addprefix -p ,$(PLUGINS))

## build: the fogconnect binary and the plugins
build: plugins
	$(CARGO) build --release -p fogconnect

## demo: two nodes on loopback, the demo plugins answering
demo: build
	$(TARGET_DIR)/release/fogconnect demo --plugins-dir $(PLUGIN_DIR)

## test: build everything and run every test (the integration tests last, so
## the run ends on their summary)
test: lab-deps plugins
	$(CARGO) build --release -p fogconnect --examples
	$(CARGO) test --release -p fogconnect --doc
	$(CARGO) test --release -p fogconnect --benches
	$(CARGO) test --release -p fogconnect-proto
	$(CARGO) test --release -p fogconnect --lib --bins --tests

## lint: formatting and clippy with warnings denied
lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: plugin dispatch against native, QUIC echo round trip, signaling,
## relay against coturn, stream plugins' pull tick, live swap pause, what
## attacks cost legitimate users
bench: lab-deps plugins
	$(CARGO) bench -p fogconnect --bench dispatch
	$(CARGO) bench -p fogconnect --bench signal_server
	$(CARGO) bench -p fogconnect --bench relay
	$(CARGO) bench -p fogconnect --bench streams
	$(CARGO) bench -p fogconnect --bench swap
	$(CARGO) bench -p fogconnect --bench hardening

## bench-nat: time to connect per NAT pair in the NAT lab, probes used by
## birthday probing, and the adaptive stream plugin's settle time on a
## rate-limited link (root)
bench-nat: lab-deps plugins
	$(CARGO) bench -p fogconnect --bench nat_lab
	$(CARGO) bench -p fogconnect --bench stream_lab

## fuzz: run each wire-format fuzz target for FUZZ_SECONDS (needs cargo-fuzz;
## RUSTC_BOOTSTRAP lets the stable toolchain build with the sanitizer flags)
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for target in frame_decoder offer_checks plugin_manifest signal_messages stream_messages stun_messages turn_messages; do \
		RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$(TARGET_DIR)/fuzz cargo fuzz run $$target -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
