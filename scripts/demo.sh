#!/usr/bin/env bash
# scripts/demo.sh - pullgate end to end on this machine, as root:
#   1. a real containerd + registry (scripts/testbed.sh) with a signed and an unsigned image
#      (signed by the test Sigstore stack, published where cosign puts them);
#   2. the stack's trust root imported with `pullgate trust-root import`;
#   3. pullgate in front of containerd with a policy for demo/**;
#   4. a kubelet-like CRI client (examples/crictl.rs) pulls and runs the signed image, and is
#      refused the unsigned one with the error kubelet would show in the pod's events.
#
# usage: scripts/demo.sh [--keep]     (--keep leaves everything running)
#
# containerd: 2.x from ${PULLGATE_SHARED:-../shared}/bin when it is there, else Debian's 1.6;
# TESTBED_CONTAINERD=1.6|2 chooses. The demo says which one it used.
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
cargo build --release --locked --bin pullgate --example crictl --example demo_sign 2>&1 | tail -n 1
PULLGATE=$REPO/target/release/pullgate
CRICTL=$REPO/target/release/examples/crictl

SHARED_BIN=$(realpath -m -- "${PULLGATE_SHARED:-$REPO/../shared}/bin")
if [ -z "${TESTBED_CONTAINERD:-}" ]; then
  if [ -x "$SHARED_BIN/containerd" ] && [ -x "$SHARED_BIN/containerd-shim-runc-v2" ] && [ -x "$SHARED_BIN/ctr" ]; then
    TESTBED_CONTAINERD=2
  else
    TESTBED_CONTAINERD=1.6
  fi
fi
export TESTBED_CONTAINERD

say "starting containerd ($TESTBED_CONTAINERD) + registry under $DIR"
scripts/testbed.sh clean "$DIR" >/dev/null 2>&1 || true
REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5000} scripts/testbed.sh start "$DIR" >/dev/null
# shellcheck disable=SC1091
. "$DIR/env"
if [ "$CONTAINERD_GENERATION" = 2 ]; then
  echo "containerd $CONTAINERD_VERSION from $SHARED_BIN (config version 3: $CONTAINERD_CONFIG)"
else
  echo "containerd $CONTAINERD_VERSION from Debian (config version 2: $CONTAINERD_CONFIG)"
fi
PG_PID=
cleanup() {
  if [ -n "$PG_PID" ]; then kill -TERM "$PG_PID" 2>/dev/null && wait "$PG_PID" 2>/dev/null || true; fi
  if [ $KEEP = 0 ]; then scripts/testbed.sh clean "$DIR" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

say "signing $DEMO_IMAGE (not $UNSIGNED_IMAGE) with the test Sigstore stack"
"$REPO/target/release/examples/demo_sign" --registry "$REGISTRY" --out "$DIR/sigstore" "demo/app@$DEMO_DIGEST" | tee "$DIR/signer.txt"
IDENTITY=$(sed -n 's/^identity: *//p' "$DIR/signer.txt")
ISSUER=$(sed -n 's/^issuer: *//p' "$DIR/signer.txt")

say "importing the trust root (what an operator does with a mirrored trusted_root.json)"
"$PULLGATE" trust-root import --trusted-root "$DIR/sigstore/trusted_root.json" --accept-unverified-trusted-root \
  --state-dir "$DIR/state"
"$PULLGATE" trust-root status --state-dir "$DIR/state" || true

SOCK=$DIR/pullgate.sock
cat > "$DIR/pullgate.yaml" <<EOF
listen: $SOCK
upstream: $CONTAINERD_SOCK
registry:
  hosts_dir: $HOSTS_DIR        # the same hosts.toml containerd uses
trust_root:
  state_dir: $DIR/state
audit:
  sink: file
  path: $DIR/audit.log
cri:
  sandbox_image: $SANDBOX_IMAGE   # what containerd runs for pods (2.x does not report it)
policy:
  unmatched: deny
  exemptions:
    - name: sandbox
      images: ["$REGISTRY/pause:*"]
  policies:
    - name: demo
      images: ["$REGISTRY/demo/**"]
      mode: enforce
      authorities:
        - name: release-workflow
          keyless:
            identities:
              - issuer: $ISSUER
                subject: $IDENTITY
EOF
say "pullgate config check"
"$PULLGATE" config check "$DIR/pullgate.yaml"

say "starting pullgate: $SOCK -> $CONTAINERD_SOCK"
"$PULLGATE" serve --config "$DIR/pullgate.yaml" 2> "$DIR/pullgate.log" &
PG_PID=$!
for _ in $(seq 200); do [ -S "$SOCK" ] && break; sleep 0.05; done

crictl() { echo "\$ crictl $*" >&2; "$CRICTL" -r "$SOCK" "$@"; }

say "the signed image: pulled (pinned to the verified digest) and run"
crictl pull --namespace demo "$DEMO_IMAGE"
crictl inspecti "$DEMO_IMAGE"
crictl run --namespace demo "$DEMO_IMAGE" /hello echo "hello from a verified image"

say "the unsigned image: refused; kubelet would report SignatureValidationFailed"
if crictl pull --namespace demo "$UNSIGNED_IMAGE"; then
  echo "UNEXPECTED: the unsigned image was pulled" >&2; exit 1
fi

say "pullgate verify (the same check, from the command line)"
"$PULLGATE" verify --config "$DIR/pullgate.yaml" "$DEMO_IMAGE" || true

say "audit log ($DIR/audit.log)"
sed 's/^/  /' "$DIR/audit.log"
if [ $KEEP = 1 ]; then
  echo "left running: pullgate pid $PG_PID, testbed $DIR (stop: kill $PG_PID; scripts/testbed.sh clean $DIR)"
  PG_PID=
  trap - EXIT
fi
echo
echo "demo OK on containerd $CONTAINERD_VERSION: signed image pulled and run, unsigned image refused"
