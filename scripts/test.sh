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
# through pullgate (scripts/critest.sh). With no extra arguments it also checks formatting
# (`cargo fmt --check`) and lints (`cargo clippy --all-targets -- -D warnings`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" = 0 ]; then
  scripts/setup.sh
else
  echo "[test] not root: skipping scripts/setup.sh; end-to-end tests will be ignored" >&2
fi

rc=0
lint=0
[ $# -eq 0 ] && lint=1
if [ "$lint" = 1 ]; then
  # The tree is formatted by rustfmt.toml; a failure here is fixed by `cargo fmt`.
  echo "[test] cargo fmt --check" >&2
  cargo fmt --check || { echo "[test] FAILED: cargo fmt --check (run cargo fmt)" >&2; rc=1; }
fi
echo "[test] building (release profile, once)" >&2
cargo build --release --locked --all-targets
if [ "$lint" = 1 ]; then
  # Same profile as the build; lint allowances live next to the code they excuse, with a reason.
  echo "[test] cargo clippy --all-targets -- -D warnings" >&2
  cargo clippy --release --locked --all-targets -- -D warnings \
    || { echo "[test] FAILED: cargo clippy -D warnings" >&2; rc=1; }
fi
echo "[test] running tests" >&2
cargo test --release --locked --no-fail-fast "$@" || rc=$?
if [ "$(id -u)" = 0 ] && [ $# -eq 0 ]; then
  # SIG Node's critest directly and through pullgate (enforce mode), the focused part (about a
  # minute per containerd generation); `scripts/critest.sh --full` is the whole suite, by hand.
  # Skips itself with a message when ../shared/bin/critest is absent.
  echo "[test] critest through pullgate (scripts/critest.sh)" >&2
  scripts/critest.sh || rc=$?
fi
exit $rc
