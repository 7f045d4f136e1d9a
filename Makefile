# cri-shim: `make run` serves the CRI on unix:///run/cri-shim/cri-shim.sock; `make test` runs everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(CURDIR)/bin
GOBIN_DIR ?= /usr/local/bin
CRI_TOOLS_VERSION := v1.37.0
CRI_API_VERSION := v0.37.2
# The newest Kubernetes release whose kubelet still starts on a cgroup v1 host (with failCgroupV1: false).
KUBELET_VERSION := v1.37.2
KUBELET_CACHE ?= /var/cache/cri-shim-tests
KUBELET := $(KUBELET_CACHE)/kubelet-$(KUBELET_VERSION)
export CGO_ENABLED := 0
export GOFLAGS := -trimpath

# Debian 12 packages the test suite uses (registry, image building, reference runtimes, CNI, Windows headers).
# gcc + libc6-dev build the static nonewprivs/pause programs of tests/harness/testimages.py; Debian's dynamic
# `busybox` conflicts with busybox-static, so testimages fetches its .deb with `apt-get download` instead.
APT_PACKAGES := docker-registry busybox-static skopeo runc containerd containernetworking-plugins \
	mingw-w64-common mingw-w64-x86-64-dev util-linux iproute2 nftables iptables libseccomp2 tmux \
	procps psmisc python3-venv openssl gcc libc6-dev

STUBS := cri_shim/api/api_pb2.py cri_shim/api/api_pb2_grpc.py cri_shim/api/api_pb2.pyi

.PHONY: all run test unit integration conformance conformance-check deps venv stubs tools typecheck clean bench bench-smoke bench-pull

all: venv stubs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Stubs are generated from proto/ at build time and never committed or hand-edited.
# The -I mapping makes the generated modules import each other as cri_shim.api.*.
$(STUBS) &: proto/runtime/v1/api.proto $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -Icri_shim/api=proto/runtime/v1 \
		--python_out=. --grpc_python_out=. --pyi_out=. proto/runtime/v1/api.proto

stubs: $(STUBS)

run: venv stubs
	$(VENV)/bin/cri-shim serve $(ARGS)

deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make deps: needs root (apt-get)"; exit 1; fi
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# crictl goes on PATH; critest is a `go test -c` binary built from the module cache (see tests/conformance).
tools: $(GOBIN_DIR)/crictl $(BIN)/critest $(BIN)/streaming-client kubelet

# kubelet for tests/e2e, built from the Go module proxy once per version (about 5 min on 2 cores), then cached.
.PHONY: kubelet
kubelet:
	nice -n 10 tests/e2e/build-kubelet.sh $(KUBELET_VERSION) $(KUBELET)

$(GOBIN_DIR)/crictl:
	GOBIN=$(GOBIN_DIR) go install -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$(CRI_TOOLS_VERSION:v%=%)" \
		sigs.k8s.io/cri-tools/cmd/crictl@$(CRI_TOOLS_VERSION)

$(BIN)/critest:
	tests/conformance/build-critest.sh $(CRI_TOOLS_VERSION) $@

# The streaming tests' client: client-go's executors and dialers at the versions crictl $(CRI_TOOLS_VERSION) uses.
$(BIN)/streaming-client: tests/streaming_client/main.go tests/streaming_client/go.mod tests/streaming_client/go.sum
	cd tests/streaming_client && go build -o $@ .

typecheck: venv stubs
	$(VENV)/bin/mypy

unit: venv stubs
	$(PY) -m pytest tests/unit -q

# The Windows runtime on Linux: fakes of the Windows DLLs, mingw-w64 headers for the ABI check (README).
.PHONY: windows-test
windows-test: venv stubs
	$(PY) -m pytest tests/windows -q

integration: venv stubs tools
	$(PY) -m pytest tests/integration -q

# kubelet $(KUBELET_VERSION) in standalone mode against a real cri-shim (static pods; about 70 s once kubelet is built).
.PHONY: e2e
e2e: venv stubs kubelet $(GOBIN_DIR)/crictl
	$(PY) -m pytest tests/e2e -q

conformance: venv stubs tools
	$(PY) -m tests.conformance.run --critest $(BIN)/critest --update

# The whole suite on a CNI bridge (SPDY streaming), then the streaming specs over WebSocket, then the
# network specs on the built-in network: each listed spec must pass in every pass that runs it.
conformance-check: venv stubs tools
	$(PY) -m tests.conformance.run --critest $(BIN)/critest
	$(PY) -m tests.conformance.run --critest $(BIN)/critest -- -ginkgo.focus=Streaming \
		-websocket-exec -websocket-attach -websocket-portforward
	$(PY) -m tests.conformance.run --critest $(BIN)/critest --network builtin -- \
		'-ginkgo.focus=Networking|Multiple Containers|portforward'

test: deps venv stubs tools typecheck
	$(PY) -m pytest tests -q
	$(MAKE) conformance-check
	$(MAKE) bench-smoke

# cri-shim against a private containerd + runc (Debian's) on the same machine, workloads interleaved A B A B:
# critest -benchmark, pod start, density, restart, cold pull. Tables on stdout, JSON in bench/results/ (< 30 min).
bench: venv stubs tools
	CRI_SHIM_TEST_TMP=$${CRI_SHIM_TEST_TMP:-/tmp/cst-bench} $(PY) -m bench.compare

# The same harness with a few iterations of each workload (part of `make test`, so the harness never rots).
bench-smoke: venv stubs tools
	CRI_SHIM_TEST_TMP=$${CRI_SHIM_TEST_TMP:-/tmp/cst-bench} $(PY) -m bench.compare --smoke

# Cold pull of a 5-layer ~200 MB image from a loopback registry, next to skopeo (prints a ratio).
bench-pull: venv stubs
	CRI_SHIM_TEST_TMP=$${CRI_SHIM_TEST_TMP:-/tmp/cst-bench} $(PY) -m bench.pull

clean:
	rm -rf $(VENV) $(BIN) $(STUBS) build *.egg-info .pytest_cache .mypy_cache

.PHONY: bench-streaming
bench-streaming: venv stubs $(BIN)/streaming-client
	$(PY) bench/streaming.py

# Native Linux runtime: pod shim start, container create+start vs runc create+start, per-pod PSS (root).
.PHONY: bench-runtime
bench-runtime: venv stubs
	CRI_SHIM_TEST_TMP=$${CRI_SHIM_TEST_TMP:-/tmp/cst-bench} $(PY) -m bench.runtime

# Install cri-shim as a systemd service: a venv in $(PREFIX), the unit, tmpfiles, and /etc/cri-shim/config.toml
# and /etc/crictl.yaml when absent (an existing config is never overwritten). Then:
#   systemctl daemon-reload && systemctl enable --now cri-shim
# DESTDIR stages the files elsewhere (tests use it); the venv's scripts still name $(PREFIX).
PREFIX ?= /opt/cri-shim
.PHONY: install
install: stubs
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/pip install --quiet --upgrade pip
	$(DESTDIR)$(PREFIX)/bin/pip install --quiet .
	install -d $(DESTDIR)/etc/systemd/system
	sed 's|/opt/cri-shim/|$(PREFIX)/|g' deploy/systemd/cri-shim.service > $(DESTDIR)/etc/systemd/system/cri-shim.service
	install -D -m 0644 deploy/systemd/cri-shim.tmpfiles.conf $(DESTDIR)/usr/lib/tmpfiles.d/cri-shim.conf
	test -e $(DESTDIR)/etc/cri-shim/config.toml || install -D -m 0644 deploy/config.toml $(DESTDIR)/etc/cri-shim/config.toml
	test -e $(DESTDIR)/etc/crictl.yaml || install -D -m 0644 deploy/crictl.yaml $(DESTDIR)/etc/crictl.yaml
	@echo "installed; now: systemctl daemon-reload && systemctl enable --now cri-shim"
