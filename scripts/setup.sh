#!/usr/bin/env bash
# scripts/setup.sh - install everything pullgate's builds and tests need on a
# fresh Debian 12 machine. Idempotent: a second run does nothing.
#
# usage: scripts/setup.sh [--no-python] [--no-rust] [-h|--help]
#
#   --no-python   do not create the Python venv (grpcio) used by tests/python/
#   --no-rust     do not check that the Rust toolchain (cargo) is present
#                 (scripts/testbed.sh uses this: the testbed needs no Rust)
#
# What it does (as root; only the apt step really needs root):
#   1. Debian packages: containerd runc docker-registry skopeo
#      containernetworking-plugins protobuf-compiler gcc libc6-dev curl python3
#      python3-venv apache2-utils openssl iproute2 util-linux strace (the offline test)
#      busybox-static iptables (scripts/critest.sh: stand-in images, CNI portmap)
#      binutils lintian man-db (scripts/build-deb.sh strips the binary; tests/packaging.rs
#      runs lintian on the package and man on its pages).
#      'apt-get update' runs only when a package is missing. A temporary
#      /usr/sbin/policy-rc.d (exit 101) keeps postinst scripts from starting
#      system daemons (docker-registry would otherwise listen on *:5000); it
#      is removed afterwards only if this script created it.
#   2. Python venv with grpcio at $PULLGATE_PYVENV (default REPO/target/pyvenv),
#      skipped when grpc is already importable there.
#   3. Checks that cargo exists (the Rust toolchain is preinstalled, never
#      installed here).
#
# Env: PULLGATE_PYVENV  venv path (default REPO/target/pyvenv)
#      PULLGATE_PYTHON  interpreter that creates the venv (default /usr/bin/python3
#                       when present, else python3 from PATH)
#      PULLGATE_GRPCIO  pip requirement for grpcio (default grpcio==1.85.3: pinned
#                       because the :authority grpc-core sends on unix sockets is
#                       part of what the tests check)
#      SETUP_LOG        log file (default REPO/target/setup.log)
#
# Quiet when there is nothing to do; one progress line per step that does work;
# on failure the tail of the log goes to stderr and the exit code is non-zero.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)

WANT_PYTHON=1
WANT_RUST=1
for arg in "$@"; do
  case $arg in
    --no-python) WANT_PYTHON=0 ;;
    --no-rust) WANT_RUST=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "[setup] unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

PYVENV=${PULLGATE_PYVENV:-$REPO/target/pyvenv}
GRPCIO=${PULLGATE_GRPCIO:-grpcio==1.85.3}
LOG=${SETUP_LOG:-$REPO/target/setup.log}
mkdir -p "$(dirname "$LOG")"

log() { echo "[setup] $*" >&2; }
fail() {
  log "FAILED: $*"
  if [ -s "$LOG" ]; then
    log "last lines of $LOG:"
    tail -n 25 "$LOG" | sed 's/^/[setup]   /' >&2
  fi
  exit 1
}

# Serialise concurrent runs (e.g. two testbeds started at once on a fresh machine).
LOCK=/tmp/pullgate-setup.lock
exec 9>>"$LOCK"
flock -w 900 9 || fail "could not take $LOCK within 15 minutes"
: >"$LOG"

# --- 1. Debian packages --------------------------------------------------------
PACKAGES=(containerd runc docker-registry skopeo containernetworking-plugins
  protobuf-compiler gcc libc6-dev curl python3 python3-venv apache2-utils
  openssl iproute2 util-linux strace busybox-static iptables binutils lintian man-db)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

made_policy=0
cleanup_policy() {
  if [ "$made_policy" = 1 ]; then
    rm -f /usr/sbin/policy-rc.d
    made_policy=0
  fi
}
trap cleanup_policy EXIT

if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || fail "missing packages (${missing[*]}) and not root: run this script as root"
  command -v apt-get >/dev/null || fail "apt-get not found: this script targets Debian 12"
  log "installing Debian packages: ${missing[*]} (log: $LOG)"
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from pullgate scripts/setup.sh: do not start daemons\nexit 101\n' \
      >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=600)
  { echo "== apt-get update"; apt-get -q -o DPkg::Lock::Timeout=600 update; } >>"$LOG" 2>&1 \
    || fail "apt-get update"
  { echo "== apt-get install ${missing[*]}"; apt-get install "${apt_opts[@]}" "${missing[@]}"; } \
    >>"$LOG" 2>&1 || fail "apt-get install ${missing[*]}"
  cleanup_policy
  for pkg in "${missing[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
      || fail "package $pkg still not installed after apt-get install"
  done
fi

# A static C toolchain is needed for the testbed's images (gcc -static).
libc_a=$(gcc -print-file-name=libc.a 2>/dev/null || true)
[ -f "$libc_a" ] || fail "gcc cannot find libc.a (is libc6-dev installed?)"
[ -x /usr/lib/cni/loopback ] || fail "/usr/lib/cni/loopback missing (containernetworking-plugins)"

# --- 2. Python venv with grpcio -------------------------------------------------------
if [ "$WANT_PYTHON" = 1 ]; then
  if [ -x "$PYVENV/bin/python" ] && "$PYVENV/bin/python" -c 'import grpc' >/dev/null 2>&1; then
    : # already there
  else
    if [ -n "${PULLGATE_PYTHON:-}" ]; then
      py=$PULLGATE_PYTHON
    elif [ -x /usr/bin/python3 ]; then
      py=/usr/bin/python3
    else
      py=$(command -v python3 || true)
    fi
    [ -n "$py" ] || fail "no python3 interpreter found"
    log "creating Python venv $PYVENV with $GRPCIO (log: $LOG)"
    if [ ! -x "$PYVENV/bin/python" ]; then
      rm -rf "$PYVENV"
      { echo "== $py -m venv $PYVENV"; "$py" -m venv "$PYVENV"; } >>"$LOG" 2>&1 \
        || fail "python venv creation with $py"
    fi
    { echo "== pip install $GRPCIO"
      "$PYVENV/bin/python" -m pip install -q --disable-pip-version-check --no-input "$GRPCIO"; } \
      >>"$LOG" 2>&1 || fail "pip install $GRPCIO into $PYVENV"
    "$PYVENV/bin/python" -c 'import grpc' >>"$LOG" 2>&1 || fail "grpc not importable from $PYVENV"
  fi
fi

# --- 3. Rust toolchain (preinstalled; never installed here) ------------------------
if [ "$WANT_RUST" = 1 ]; then
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      fail "cargo is at $HOME/.cargo/bin/cargo but not on PATH: export PATH=\"\$HOME/.cargo/bin:\$PATH\""
    fi
    fail "cargo not found: the Rust toolchain (rustup, cargo, rustc) must be preinstalled; this script does not install it"
  fi
  # scripts/test.sh checks formatting and lints: rustup's default profile has both tools.
  for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
      comp=$([ "$tool" = fmt ] && echo rustfmt || echo clippy)
      echo "setup: cargo $tool missing: rustup component add $comp" >&2
      rustup component add "$comp" >>"$LOG" 2>&1 \
        || fail "cargo $tool not found and \`rustup component add $comp\` failed (see $LOG)"
    fi
  done
fi

exit 0
