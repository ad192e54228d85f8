#!/usr/bin/env bash
# scripts/test.sh - run pullgate's whole test suite, as CI does (.ci/run calls this).
#
# usage: scripts/test.sh [extra cargo test args...]
#
# Installs what the tests need (scripts/setup.sh: Debian packages, the Python grpcio venv),
# builds once in the release profile (tests, examples and benches reuse that build), and runs
# every test: unit tests, the Sigstore vector and tamper suites, the byte-level transparency
# tests, and the end-to-end suites against a real containerd + registry (root needed; without
# root they are reported as ignored). Tests that use ../shared (real Sigstore vectors and TUF
# metadata) skip with a message when it is absent; set PULLGATE_SHARED to point elsewhere.
# As root and with no extra arguments, it then runs the focused part of critest directly and
# through pullgate (scripts/critest.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" = 0 ]; then
  scripts/setup.sh
else
  echo "[test] not root: skipping scripts/setup.sh; end-to-end tests will be ignored" >&2
fi

echo "[test] building (release profile, once)" >&2
cargo build --release --locked --all-targets
echo "[test] running tests" >&2
rc=0
cargo test --release --locked --no-fail-fast "$@" || rc=$?
if [ "$(id -u)" = 0 ] && [ $# -eq 0 ]; then
  # SIG Node's critest directly and through pullgate (enforce mode), the focused part (about a
  # minute per containerd generation); `scripts/critest.sh --full` is the whole suite, by hand.
  # Skips itself with a message when ../shared/bin/critest is absent.
  echo "[test] critest through pullgate (scripts/critest.sh)" >&2
  scripts/critest.sh || rc=$?
fi
exit $rc
