#!/usr/bin/env bash
# scripts/demo.sh - pullgate end to end on this machine: a real containerd and registry
# (scripts/testbed.sh), pullgate in front of containerd, and a kubelet-like CRI client
# (examples/crictl.rs) talking to pullgate's socket.
#
# usage: scripts/demo.sh [--keep]     (as root; --keep leaves everything running)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
DIR=${DEMO_DIR:-/tmp/pullgate-demo}
KEEP=0
[ "${1:-}" = --keep ] && KEEP=1

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "demo.sh must run as root (containerd needs it)" >&2; exit 1; }

scripts/setup.sh --no-python
say "building pullgate (release)"
cargo build --release --locked --bin pullgate --example crictl 2>&1 | tail -n 2
PULLGATE=$REPO/target/release/pullgate
CRICTL=$REPO/target/release/examples/crictl

say "starting containerd + registry under $DIR"
REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5000} scripts/testbed.sh start "$DIR" >/dev/null
# shellcheck disable=SC1091
. "$DIR/env"
PG_PID=
cleanup() {
  [ -n "$PG_PID" ] && kill -TERM "$PG_PID" 2>/dev/null && wait "$PG_PID" 2>/dev/null || true
  if [ $KEEP = 0 ]; then scripts/testbed.sh clean "$DIR" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

SOCK=$DIR/pullgate.sock
say "starting pullgate: $SOCK -> $CONTAINERD_SOCK"
"$PULLGATE" serve --listen "$SOCK" --upstream "$CONTAINERD_SOCK" 2> "$DIR/pullgate.log" &
PG_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done

crictl() { echo "\$ crictl $*" >&2; "$CRICTL" -r "$SOCK" "$@"; }
say "CRI calls through pullgate"
crictl version
crictl pull --namespace demo "$DEMO_IMAGE"
crictl inspecti "$DEMO_IMAGE"
crictl run --namespace demo "$DEMO_IMAGE" /hello echo "hello through pullgate"

say "what pullgate logged"
grep -E 'accepting|call' "$DIR/pullgate.log" | sed 's/^/  /'
[ $KEEP = 1 ] && echo "left running: pullgate pid $PG_PID, testbed $DIR (scripts/testbed.sh clean $DIR)" && PG_PID= && trap - EXIT
