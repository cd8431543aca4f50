#!/usr/bin/env bash
# Installs everything portwright needs on a fresh Debian/Ubuntu machine (run as root), idempotently:
# the system tools it drives and measures with, and a venv at .venv with the package installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "bootstrap: run as root (sudo bash scripts/bootstrap.sh)" >&2; exit 1; fi
PKGS=(iproute2 nftables iptables conntrack procps iperf3 wrk nginx-light curl netcat-openbsd socat
      dnsutils file busybox-static docker.io containernetworking-plugins podman python3-venv sysstat tini
      ufw firewalld gcc)  # gcc: portwright proxy install builds the dockerd waiter (issue 15)
# --test (scripts/test.sh): also what only the tests use: a cross compiler and qemu-user, so the
# aarch64 waiter is built and run for real (tests/integration/test_proxy_waiter_arm.py).
if [ "${1:-}" = --test ]; then PKGS+=(gcc-aarch64-linux-gnu qemu-user-static); fi
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  # ufw and firewalld serve the tests' throwaway host namespaces only: never enable them on this host.
  # firewalld's package enables and starts its service on install: mask it first under systemd, and
  # keep init scripts from starting it (a policy-rc.d that refuses, while none exists).
  if printf '%s\n' "${missing[@]}" | grep -qx firewalld; then
    if [ -d /run/systemd/system ]; then systemctl mask firewalld.service >/dev/null; fi
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
  fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# nginx-light starts the distro's service on port 80 when installed; portwright runs its own nginx
# in sandboxes, so stop only the distro instance (by its pidfile), never anyone else's nginx.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now nginx >/dev/null 2>&1 || true
elif [ -s /run/nginx.pid ]; then
  kill "$(cat /run/nginx.pid)" 2>/dev/null || true
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'
# Shell completion for bash and zsh, generated from the CLI's own parser ('portwright completion').
install_completion() {
  mkdir -p "$(dirname "$2")" && .venv/bin/portwright completion "$1" > "$2.tmp" && mv "$2.tmp" "$2"
}
install_completion bash /usr/share/bash-completion/completions/portwright
install_completion zsh /usr/local/share/zsh/site-functions/_portwright
echo "bootstrap: ok ($(.venv/bin/python --version), portwright $(.venv/bin/portwright --version 2>/dev/null || echo '?'))"
