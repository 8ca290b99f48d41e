# fogconnect build entry points. One target directory serves the host
# (release profile) and the plugins (wasm32-wasip2, "plugin" profile), so the
# workspace is built once and plugin builds stay incremental.

CARGO       ?= cargo
TARGET_DIR  ?= $(CURDIR)/target
PLUGIN_DIR  := $(TARGET_DIR)/wasm32-wasip2/plugin
PLUGINS     := echo demo adaptive-source test-echo-v1 test-echo-v2 test-spin test-memhog test-panic test-escape test-probe test-counter test-oversized test-ticker test-events test-stream-events
export CARGO_TARGET_DIR := $(TARGET_DIR)
export FOGCONNECT_PLUGIN_DIR := $(PLUGIN_DIR)

# The C API: library, header, pkg-config file, examples.
PREFIX      ?= /usr/local
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
C_STAGE     := $(TARGET_DIR)/c-install
# The device build's install: the C library without the Wasm runtime and
# browsers, built with the size-optimised "device" profile.
DEVICE_STAGE := $(TARGET_DIR)/c-install-device
# Where the library to install was built (install from LIB_DIR).
LIB_DIR     ?= $(TARGET_DIR)/release
# What a static link of the library needs besides it (pkg-config): the
# full build's browser connections use the system's OpenSSL; the device
# build has none.
PC_REQUIRES ?= libssl libcrypto
C_EXAMPLES  := $(TARGET_DIR)/c-examples
C_WARNINGS  := -Wall -Wextra -Werror
export FOGCONNECT_C_STAGE := $(C_STAGE)
export FOGCONNECT_C_DEVICE_STAGE := $(DEVICE_STAGE)
export FOGCONNECT_C_EXAMPLES := $(C_EXAMPLES)

# The Debian package (make deb).
DEB_STAGE   := $(TARGET_DIR)/deb/stage
DEB         := $(TARGET_DIR)/deb/fogconnect_$(VERSION)_$(shell dpkg --print-architecture 2>/dev/null || echo unknown).deb
export FOGCONNECT_DEB := $(DEB)

.PHONY: setup build-deps lab-deps c-deps browser-deps deb-deps plugins build device install deb c-stage device-stage c-examples demo demo-c test lint bench bench-nat fuzz clean

## setup: install the toolchain pieces the build needs
setup:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

## build-deps: what building the node needs beyond Rust (root): OpenSSL's
## headers, for the DTLS of browser connections
build-deps:
	@if ! pkg-config --exists openssl 2>/dev/null; then \
		echo "installing libssl-dev pkg-config"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libssl-dev pkg-config; \
	fi

## browser-deps: what the browser tests need (root): Debian's Chromium,
## driven headless over the DevTools protocol
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	fi

# $(call install-missing,TOOL:PACKAGE ...,CHECKS): installs (as root, from
# Debian's packages) the package of every tool that is not on the PATH, and
# those the shell CHECKS add to $$missing.
define install-missing
	@missing=""; for tool in $(1); do \
		command -v $${tool%%:*} >/dev/null || missing="$$missing $${tool##*:}"; \
	done; \
	$(2) \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

## lab-deps: what the NAT lab and cluster tests need (root): ip, nft, conntrack,
## nats-server (the signaling cluster tests), coturn's RFC 5780 server and
## client for the interoperability tests, and iperf3 (the throughput
## bench's baseline)
LAB_TOOLS := ip:iproute2 nft:nftables conntrack:conntrack turnserver:coturn turnutils_natdiscovery:coturn nats-server:nats-server iperf3:iperf3
lab-deps:
	$(call install-missing,$(LAB_TOOLS),)

## c-deps: what building and checking C programs needs (root): C and C++
## compilers (the header is checked as both), pkg-config, GLib's headers
## (the original examples use GLib), valgrind
C_TOOLS := gcc:gcc g++:g++ pkg-config:pkg-config valgrind:valgrind
c-deps:
	$(call install-missing,$(C_TOOLS),pkg-config --exists glib-2.0 2>/dev/null || missing="$$missing libglib2.0-dev";)

## deb-deps: what building and checking the Debian package needs (root):
## dpkg-shlibdeps (its dependencies), strip, systemd-analyze (the units)
DEB_TOOLS := dpkg-shlibdeps:dpkg-dev strip:binutils systemd-analyze:systemd
deb-deps:
	$(call install-missing,$(DEB_TOOLS),)

## plugins: build every plugin to $(PLUGIN_DIR)
plugins: setup
	$(CARGO) build --target wasm32-wasip2 --profile plugin $(addprefix -p ,$(PLUGINS))

## build: the fogconnect binary, the C library (libfogconnect.so and .a)
## and the plugins
build: build-deps plugins
	$(CARGO) build --release -p fogconnect -p fogconnect-c

## install: the C library, header and pkg-config file under PREFIX
## (make install PREFIX=/opt/fogconnect); run after make build. The shared
## library goes in as libfogconnect.so.$(VERSION), with links from its
## SONAME (libfogconnect.so.0, what programs load) and from
## libfogconnect.so (what -lfogconnect finds)
install:
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 capi/include/fogconnect.h capi/include/iv_av_p2p.h $(DESTDIR)$(PREFIX)/include/
	soname=$$(objdump -p $(LIB_DIR)/libfogconnect.so | sed -n 's/^ *SONAME *//p'); \
	[ -n "$$soname" ] || { echo "$(LIB_DIR)/libfogconnect.so: no SONAME read (objdump, from binutils, reads it)" >&2; exit 1; }; \
	install -m 755 $(LIB_DIR)/libfogconnect.so $(DESTDIR)$(PREFIX)/lib/libfogconnect.so.$(VERSION) && \
	ln -sfn libfogconnect.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/$$soname && \
	ln -sfn $$soname $(DESTDIR)$(PREFIX)/lib/libfogconnect.so
	install -m 644 $(LIB_DIR)/libfogconnect.a $(DESTDIR)$(PREFIX)/lib/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' -e 's|@REQUIRES_PRIVATE@|$(PC_REQUIRES)|' capi/fogconnect.pc.in \
		> $(DESTDIR)$(PREFIX)/lib/pkgconfig/fogconnect.pc

## c-stage: an install under the target directory, which the C examples and
## tests build against exactly as a user's program would
c-stage:
	$(MAKE) --no-print-directory install PREFIX=$(C_STAGE)

## device: the device build of the C library (and the node's Rust library
## under it) without the WebAssembly runtime and browser connections, for
## devices that serve native services; size-optimised ("device" profile).
## Install it with: make install LIB_DIR=target/device PC_REQUIRES= PREFIX=...
device:
	$(CARGO) build --profile device -p fogconnect-c --no-default-features

## device-stage: the device build installed under the target directory,
## which the C tests build against
device-stage: device
	$(MAKE) --no-print-directory install PREFIX=$(DEVICE_STAGE) LIB_DIR=$(TARGET_DIR)/device PC_REQUIRES=

## c-examples: the C examples, built with pkg-config against the staged
## install, warnings as errors
c-examples: c-deps c-stage
	mkdir -p $(C_EXAMPLES)
	for example in device app camera; do \
		PKG_CONFIG_PATH=$(C_STAGE)/lib/pkgconfig gcc $(C_WARNINGS) -o $(C_EXAMPLES)/$$example \
			capi/examples/c/$$example.c $$(PKG_CONFIG_PATH=$(C_STAGE)/lib/pkgconfig pkg-config --cflags --libs glib-2.0 fogconnect) \
			-Wl,-rpath,$(C_STAGE)/lib || exit 1; \
	done

## deb: the Debian package, $(DEB): the binary, the systemd units, the
## example configs (as conffiles in /etc/fogconnect), the C library, header
## and pkg-config file, the SDK's WIT files and shell completions
deb: build deb-deps
	rm -rf $(DEB_STAGE)
	$(MAKE) --no-print-directory install DESTDIR=$(DEB_STAGE) PREFIX=/usr
	dist/deb/build.sh $(CURDIR) $(TARGET_DIR) $(DEB_STAGE) $(VERSION) $(DEB)

## demo: two nodes on loopback, the demo plugins answering
demo: build
	$(TARGET_DIR)/release/fogconnect demo --plugins-dir $(PLUGIN_DIR)

## demo-c: the C examples: a device in C answering an app in C, by id,
## through a real signaling server on loopback
demo-c: build c-examples
	capi/examples/c/demo.sh $(TARGET_DIR)/release/fogconnect $(C_EXAMPLES)

## test: build everything and run every test (the integration tests last, so
## the run ends on their summary)
test: build-deps lab-deps c-deps browser-deps deb-deps plugins
	$(CARGO) build --release -p fogconnect -p fogconnect-c --lib --bins --examples
	$(MAKE) --no-print-directory c-examples
	$(MAKE) --no-print-directory deb
	$(MAKE) --no-print-directory device-stage
	$(CARGO) test --release -p fogconnect --no-default-features --test device
	$(CARGO) test --release -p fogconnect --doc
	$(CARGO) test --release -p fogconnect --benches
	$(CARGO) test --release -p fogconnect-proto
	$(CARGO) test --release -p fogconnect-c --lib
	$(CARGO) test --release -p fogconnect --lib --bins --tests

## lint: formatting and clippy with warnings denied
lint: setup build-deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p fogconnect -p fogconnect-c --no-default-features --lib --test device -- -D warnings

## bench: plugin dispatch against native, QUIC echo round trip, signaling,
## relay against coturn, stream plugins' pull tick, live swap pause, what
## attacks cost legitimate users, the C API against Rust and a plugin,
## C streams against a stream plugin, event delivery to a plugin against a
## Rust subscriber, the device build's size and idle memory against the
## full build
bench: build-deps lab-deps c-deps browser-deps plugins
	$(CARGO) build --release -p fogconnect -p fogconnect-c --lib --bins --examples
	$(MAKE) --no-print-directory c-examples
	$(MAKE) --no-print-directory device-stage
	$(CARGO) bench -p fogconnect --bench dispatch
	$(CARGO) bench -p fogconnect --bench signal_server
	$(CARGO) bench -p fogconnect --bench signal_cluster
	$(CARGO) bench -p fogconnect --bench relay
	$(CARGO) bench -p fogconnect --bench streams
	$(CARGO) bench -p fogconnect --bench swap
	$(CARGO) bench -p fogconnect --bench hardening
	$(CARGO) bench -p fogconnect --bench c_api
	$(CARGO) bench -p fogconnect --bench device
	$(CARGO) bench -p fogconnect --bench node_scale
	$(CARGO) bench -p fogconnect --bench c_streams
	$(CARGO) bench -p fogconnect --bench plugin_events

## bench-nat: time to connect per NAT pair in the NAT lab, probes used by
## birthday probing, the adaptive stream plugin's settle time on a
## rate-limited link, recovery from network changes, throughput on a
## veth link against iperf3, and QUIC, KCP and UDP compared under loss
## through the lab's impairment stage (root)
bench-nat: build-deps lab-deps browser-deps plugins
	$(CARGO) bench -p fogconnect --bench throughput
	$(CARGO) bench -p fogconnect --bench transports
	$(CARGO) bench -p fogconnect --bench nat_lab
	$(CARGO) bench -p fogconnect --bench stream_lab
	$(CARGO) bench -p fogconnect --bench recovery

## fuzz: run each wire-format fuzz target for FUZZ_SECONDS (needs cargo-fuzz;
## RUSTC_BOOTSTRAP lets the stable toolchain build with the sanitizer flags)
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for target in browser_input frame_decoder kcp_datagrams offer_checks plugin_manifest signal_messages stream_messages stun_messages turn_messages; do \
		RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$(TARGET_DIR)/fuzz cargo fuzz run $$target -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
