#!/usr/bin/env bash
# scripts/soak.sh - the soak run: a million forwarded CRI calls and ten thousand gated pulls
# through the real pullgate binary, against a real containerd + registry (scripts/testbed.sh),
# checking that RSS, open fds, threads and p99 latency do not grow (examples/soak.rs says how).
# Not in CI: it takes minutes. Needs root, like the end-to-end tests.
#
# usage: scripts/soak.sh
# env:   SOAK_CALLS (1000000) SOAK_PULLS (10000) SOAK_ROUNDS (50) SOAK_CONCURRENCY (16)
#        SOAK_IMAGES (12 signed + 12 unsigned)
#        e.g. SOAK_CALLS=100000 SOAK_PULLS=1000 scripts/soak.sh   for a quick run
# Exit 0 when nothing grew beyond noise and every answer was right, 1 otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" != 0 ]; then
  echo "soak: needs root (containerd, runc); run as root" >&2
  exit 1
fi
echo "[soak] building pullgate and the soak example (release profile)" >&2
cargo build --release --locked --bin pullgate --example soak
PULLGATE_BIN="$PWD/target/release/pullgate" exec target/release/examples/soak
