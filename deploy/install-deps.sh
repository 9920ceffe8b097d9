#!/usr/bin/env bash
# Installs the Debian packages corral needs to build, test and benchmark, and only those missing.
set -euo pipefail

PKGS=(
	build-essential pkg-config clang llvm libclang-rt-14-dev bpftool libbpf-dev libelf-dev zlib1g-dev
	liburing-dev node-llhttp libyaml-dev libjansson-dev liburcu-dev libxxhash-dev
	libcriterion-dev python3 python3-pytest python3-yaml python3-prometheus-client tmux
	nginx haproxy wrk iproute2 curl clang-format
)

# --- bench set: only for `install-deps.sh bench` (make bench / make bench-quick) ------------------
# The peers and load generator above, plus what tools/bench/ builds and plots: cargo and the Rust
# crates of the Tokio/Hyper work-stealing contender (built offline against /usr/share/cargo/registry),
# and gnuplot for the PNG plots.
BENCH_PKGS=(
	nginx haproxy wrk curl liburing-dev
	cargo librust-tokio-dev librust-hyper-dev gnuplot-nox
)
if [ "${1:-}" = bench ]; then
	PKGS=("${BENCH_PKGS[@]}")
fi

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
if [ "${1:-}" = bench ]; then
	# The bench starts its own NGINX/HAProxy by pid. A package installed just now may have started
	# its system service: stop that service only, and only if this run installed it (never a
	# process by name: other users' nginx/haproxy on this host are not ours).
	for s in nginx haproxy; do
		case " ${missing[*]} " in
		*" $s "*) command -v systemctl >/dev/null 2>&1 && $SUDO systemctl disable --now "$s" >/dev/null 2>&1 || true ;;
		esac
	done
	exit 0
fi
# nginx and haproxy are benchmark peers only: never leave their system services running.
for s in nginx haproxy; do
	if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now "$s" >/dev/null 2>&1 || true; fi
	$SUDO pkill -x "$s" >/dev/null 2>&1 || true
done
