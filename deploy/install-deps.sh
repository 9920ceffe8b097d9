#!/usr/bin/env bash
# Installs the Debian packages corral needs, by purpose, and only those missing:
#
#   deploy/install-deps.sh [SET...]          SET: run (default), test, bench
#   deploy/install-deps.sh --print [SET...]  print the packages of those sets, install nothing
#
#   run    build corral (BPF included) and run it: `make run`, `make all`
#   test   run + unit, fuzz-smoke and end-to-end tests, lint: `make test`, `make asan`
#          (haproxy: the L4 tier in front of corral in tests/e2e/test_proxy_protocol.py)
#   bench  run + the benchmark peers and load tool: `make bench`, tests/e2e/differential.py
#
# The script only installs. It never stops, disables or kills a service or process: Debian's
# nginx and haproxy packages (bench set; haproxy is in the test set too) start their system
# services when first installed; the benchmark and the tests do not use them (they start their
# own nginx and haproxy on ports the kernel picks, with their own configs), so stop them yourself
# if you do not want them running.
set -euo pipefail

RUN_PKGS=(
	build-essential pkg-config clang llvm bpftool libbpf-dev libelf-dev zlib1g-dev
	liburing-dev node-llhttp libyaml-dev libjansson-dev liburcu-dev libxxhash-dev libssl-dev
)
TEST_PKGS=(
	libcriterion-dev libclang-rt-14-dev clang-format
	python3 python3-pytest python3-pytest-xdist python3-yaml python3-prometheus-client tmux curl iproute2
	systemd cppcheck openssl wrk haproxy
)
# The peers and the load generator, plus what tools/bench/ builds and plots: cargo and the Rust
# crates of the Tokio/Hyper work-stealing contender (built offline against
# /usr/share/cargo/registry), gnuplot for the PNG plots, openssl (CLI) for the TLS scenarios' certificate.
BENCH_PKGS=(
	nginx haproxy wrk curl python3 iproute2 openssl
	cargo librust-tokio-dev librust-hyper-dev gnuplot-nox
)

print=0
if [ "${1:-}" = "--print" ]; then
	print=1
	shift
fi
[ $# -gt 0 ] || set -- run
pkgs=("${RUN_PKGS[@]}")
for set in "$@"; do
	case "$set" in
	run) ;;
	test) pkgs+=("${TEST_PKGS[@]}") ;;
	bench) pkgs+=("${BENCH_PKGS[@]}") ;;
	*)
		echo "install-deps: unknown package set '$set' (run, test, bench)" >&2
		exit 2
		;;
	esac
done
# One name once, in the order first listed.
mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | awk '!seen[$0]++')
if [ "$print" = 1 ]; then
	printf '%s\n' "${pkgs[@]}"
	exit 0
fi

missing=()
for p in "${pkgs[@]}"; do
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
