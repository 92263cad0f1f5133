# Heimdall: every entry point a user or CI needs. Run as root on Debian 12.
#   make demo   install what is needed, bring up a live demo network in namespaces
#   make test   install what is needed, run the whole test suite
#   make bench  install what is needed, run every benchmark (one "figure=value unit" per line)
#   make proto  regenerate the committed gRPC code from the .proto
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

# Runtime: Redis, WireGuard (kernel tools + userspace wireguard-go), netfilter, routing.
# Tests add: dnsmasq + dig (an upstream resolver and a client for heimdall-dns), dnsperf; qemu + busybox + a Debian kernel to test kernel WireGuard in a guest;
# systemd-nspawn + debootstrap to boot the units on real systemd in containers (tests/e2e).
APT_RUNTIME := redis-server wireguard-tools wireguard-go iptables iproute2 iputils-ping procps util-linux python3 python3-venv
APT_TEST    := dnsmasq-base bind9-dnsutils dnsperf qemu-system-x86 busybox-static cpio xz-utils zstd kmod systemd-container debootstrap

.PHONY: deps venv test demo bench proto unit clean
deps:
	@missing=$$(for p in $(APT_RUNTIME) $(APT_TEST); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@# The kernel-WireGuard guest test boots Debian's kernel; install one if /boot has none.
	@ls /boot/vmlinuz-* >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-image-amd64; }

venv: deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'

test: venv
	$(PY) -m pytest -ra tests

unit: venv
	$(PY) -m pytest -q tests/unit

demo: venv
	$(PY) -m heimdall.lab.demo

bench: venv
	$(PY) -m bench

proto: venv
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. heimdall/api/v1/heimdall.proto

clean:
	rm -rf $(VENV) build *.egg-info
