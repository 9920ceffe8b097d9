#!/usr/bin/env bash
# Installs the Debian packages corral needs to build, test and benchmark, and only those missing.
set -euo pipefail

PKGS=(
	build-essential pkg-config clang llvm libclang-rt-14-dev bpftool libbpf-dev libelf-dev zlib1g-dev
	liburing-dev node-llhttp libyaml-dev libjansson-dev liburcu-dev libxxhash-dev libssl-dev openssl
	libcriterion-dev python3 python3-pytest python3-yaml python3-prometheus-client tmux
	nginx haproxy wrk iproute2 curl clang-format
)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# nginx and haproxy are benchmark peers only: never leave their system services running.
for s in nginx haproxy; do
	if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now "$s" >/dev/null 2>&1 || true; fi
	$SUDO pkill -x "$s" >/dev/null 2>&1 || true
done
