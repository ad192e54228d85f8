#!/usr/bin/env bash
# scripts/critest.sh - SIG Node's critest (cri-tools v1.36.0, ../shared/bin/critest) against
# containerd directly and through pullgate, and the difference between the two.
#
# usage: scripts/critest.sh [--full] [--gen 1.6|2|all] [--mode passthrough|enforce|all]
#                           [--out DIR] [--focus REGEX]
#   (default)  the focused part CI runs: a handful of image and container specs, directly and
#              through pullgate in enforce mode, on every containerd generation available.
#   --full     every critest spec (minus the named skips below), pass-through and enforce.
#   --gen      containerd generation(s): 1.6 (Debian's) and/or 2 (../shared/bin's 2.x, needs
#              scripts/testbed.sh with TESTBED_CONTAINERD). Default all (2 only when possible).
#   --mode     pullgate mode(s) to run besides direct (default: enforce; --full: all).
#   --out DIR  keep the reports and logs there (default: a temporary directory, removed).
#   --focus    a --ginkgo.focus regex instead of the default set (with or without --full).
#
# Per generation, inside one network namespace this script creates and deletes (ip netns add;
# containerd, the registry, pullgate, the CNI bridge and the pods all live in it; the namespace
# has only lo and that bridge: no masquerade, no route out, no veth to the host):
#   1. scripts/testbed.sh start with TESTBED_NETNS and TESTBED_CNI=bridge (real pod networking:
#      bridge + host-local + portmap);
#   2. stand-ins for critest's images (scripts/critest_images.sh) pushed to the testbed
#      registry, and hosts.toml entries for registry.k8s.io, gcr.io, k8s.gcr.io and docker.io
#      whose server is that registry: critest asks for its usual names, containerd and pullgate both
#      resolve them to the local registry, and nothing can fall back to the internet;
#   3. every stand-in signed by the test Sigstore stack (examples/demo_sign.rs), its trust root
#      imported with `pullgate trust-root import`, a policy that enforces signatures on
#      registry.k8s.io/**, gcr.io/** and k8s.gcr.io/** (the sandbox image exempt, everything else denied);
#   4. critest directly against containerd, then through pullgate (pass-through: no config;
#      enforce: that policy), with a fixed seed, each run starting from no pods and no images;
#   5. scripts/critest_report.py: counts, failed specs, and direct vs through-pullgate sets.
# Exit 1 when a spec passes directly but not through pullgate; 0 otherwise. Without
# ../shared/bin/critest (or PULLGATE_SHARED/bin/critest) it says so and exits 0: skipped.
# Needs root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

log() { echo "[critest] $*" >&2; }
die() { echo "[critest] error: $*" >&2; exit 2; }

FULL=0 GENS=all MODES="" OUT="" FOCUS=""
while [ $# -gt 0 ]; do
  case $1 in
    --full) FULL=1 ;;
    --gen) GENS=${2:?--gen needs a value}; shift ;;
    --mode) MODES=${2:?--mode needs a value}; shift ;;
    --out) OUT=${2:?--out needs a value}; shift ;;
    --focus) FOCUS=${2:?--focus needs a value}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[ -n "$MODES" ] || { [ $FULL = 1 ] && MODES=all || MODES=enforce; }
[ "$MODES" = all ] && MODES="passthrough enforce"
for m in $MODES; do
  case $m in passthrough | enforce) ;; *) die "--mode: passthrough, enforce or all, not $m" ;; esac
done

SHARED=${PULLGATE_SHARED:-$REPO/../shared}
CRITEST=$SHARED/bin/critest
CRICTL=$SHARED/bin/crictl
if [ ! -x "$CRITEST" ] || [ ! -x "$CRICTL" ]; then
  log "SKIPPED: $CRITEST (cri-tools v1.36.0) not found; set PULLGATE_SHARED to the folder holding bin/critest"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "must run as root (containerd, network namespaces)"

have_gen2() { grep -q 'TESTBED_CONTAINERD' scripts/testbed.sh && [ -x "$SHARED/bin/containerd" ]; }
case $GENS in
  all) GENS=1.6; if have_gen2; then GENS="1.6 2"; else log "containerd 2.x: not run (scripts/testbed.sh has no TESTBED_CONTAINERD yet, or no $SHARED/bin/containerd)"; fi ;;
  1.6) ;;
  2) have_gen2 || die "containerd 2.x needs TESTBED_CONTAINERD in scripts/testbed.sh and $SHARED/bin/containerd" ;;
  *) die "--gen: 1.6, 2 or all, not $GENS" ;;
esac

# --- which specs ------------------------------------------------------------------------------
# Skipped by name, each with the reason it cannot run on these machines (regexes for
# --ginkgo.skip; a skipped spec counts as skipped in every run, directly and through pullgate).
SKIPS=(
  # its image is pinned by an upstream digest that no local build can reproduce
  'Image Manager public image with digest should be pulled and removed'
)
# The focused part (CI): pulls, image status and listing, removal, and containers created from
# pulled images, i.e. exactly the calls pullgate gates, with the rest of the lifecycle around them.
CI_FOCUS='Image Manager (public image with tag|public image without tag|image status|listImage should get exactly 3 image)|Image Identifier Consistency should return the same image identifier across all APIs|Container runtime should support basic operations on container runtime should support (creating|starting|removing running) container|Streaming runtime should support streaming interfaces runtime should support exec with tty=false'
if [ -z "$FOCUS" ] && [ $FULL = 0 ]; then FOCUS=$CI_FOCUS; fi

# --- build ---------------------------------------------------------------------------------------
scripts/setup.sh --no-python >/dev/null
log "building pullgate and demo_sign (release)"
cargo build --release --locked --bin pullgate --example demo_sign 2>&1 | tail -n 1 >&2
PULLGATE=$REPO/target/release/pullgate
DEMO_SIGN=$REPO/target/release/examples/demo_sign

# --- state and cleanup ---------------------------------------------------------------------------
RUN_ID=$$
KEEP_OUT=1
if [ -z "$OUT" ]; then OUT=$(mktemp -d /tmp/pgct-out.XXXXXX); KEEP_OUT=0; fi
mkdir -p "$OUT"
RESULTS=$OUT/results
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
NS="" DIR="" PG_PID=""

stop_pullgate() {
  if [ -n "$PG_PID" ]; then
    kill -TERM "$PG_PID" 2>/dev/null || true
    wait "$PG_PID" 2>/dev/null || true
    PG_PID=""
  fi
}
teardown() {
  stop_pullgate
  if [ -n "$DIR" ]; then
    TESTBED_NETNS=$NS scripts/testbed.sh clean "$DIR" >/dev/null 2>&1 \
      || log "warning: scripts/testbed.sh clean $DIR failed"
    DIR=""
  fi
  if [ -n "$NS" ]; then
    ip netns delete "$NS" 2>/dev/null || log "warning: could not delete network namespace $NS"
    NS=""
  fi
}
on_exit() {
  local rc=$?
  teardown
  if [ $KEEP_OUT = 0 ]; then rm -rf "$OUT"; fi
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# nsenter, not `ip netns exec`: that one also remounts /sys, hiding the cgroup mounts runc needs
in_ns() { nsenter --net="/run/netns/$NS" "$@"; }

# reset_node SOCK: no pods, no images (the sandbox image comes back on the next RunPodSandbox)
reset_node() {
  local c=("$CRICTL" --runtime-endpoint "unix://$1" --image-endpoint "unix://$1" --timeout 60s)
  "${c[@]}" rmp --all --force >/dev/null 2>&1 || true
  "${c[@]}" rmi --all >/dev/null 2>&1 || true
}

# run_critest GEN PATH SOCK
run_critest() {
  local gen=$1 path=$2 sock=$3 args rc t0
  args=(--runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock"
    --ginkgo.seed=1 --ginkgo.no-color --ginkgo.json-report="$RESULTS/$gen--$path.json"
    --ginkgo.timeout=2h)
  [ -n "$FOCUS" ] && args+=(--ginkgo.focus="$FOCUS")
  local s
  for s in "${SKIPS[@]}"; do args+=(--ginkgo.skip="$s"); done
  reset_node "$CONTAINERD_SOCK"
  log "containerd $gen, $path: critest${FOCUS:+ (focused)} (log: $RESULTS/$gen--$path.log)"
  t0=$(date +%s)
  # critest runs in the namespace: it reaches pod addresses, host ports and the streaming server
  rc=0
  (cd "$OUT" && in_ns "$CRITEST" "${args[@]}") >"$RESULTS/$gen--$path.log" 2>&1 || rc=$?
  log "containerd $gen, $path: critest exit $rc after $(($(date +%s) - t0)) s: $(grep -E '^(Ran|FAIL|SUCCESS)' "$RESULTS/$gen--$path.log" | tr '\n' ' ')"
  [ -s "$RESULTS/$gen--$path.json" ] || die "critest wrote no report (see $RESULTS/$gen--$path.log)"
}

write_mirrors() {
  local host
  for host in registry.k8s.io gcr.io k8s.gcr.io docker.io; do
    mkdir -p "$HOSTS_DIR/$host"
    # server = the local registry: exactly one endpoint, no fallback to the real host
    cat >"$HOSTS_DIR/$host/hosts.toml" <<EOF
# written by scripts/critest.sh: critest's images come from the testbed registry
server = "http://$REGISTRY"

# intentionally empty: containerd 1.6.20 needs the table to exist
[host]
EOF
  done
}

write_enforce_config() {
  local identity issuer
  identity=$(sed -n 's/^identity: *//p' "$DIR/signer.txt")
  issuer=$(sed -n 's/^issuer: *//p' "$DIR/signer.txt")
  cat >"$DIR/pullgate-enforce.yaml" <<EOF
listen: $DIR/pullgate.sock
upstream: $CONTAINERD_SOCK
registry:
  hosts_dir: $HOSTS_DIR
trust_root:
  state_dir: $DIR/pgstate
audit:
  sink: file
  path: $DIR/audit.log
cri:
  sandbox_image: $SANDBOX_IMAGE   # containerd 2.x does not report it (pinned_images.sandbox)
policy:
  unmatched: deny
  exemptions:
    - name: sandbox
      images: ["$REGISTRY/pause:*"]
  policies:
    - name: critest
      images: ["registry.k8s.io/**", "gcr.io/**", "k8s.gcr.io/**"]
      mode: enforce
      authorities:
        - name: test-sigstore
          keyless:
            identities:
              - issuer: $issuer
                subject: $identity
EOF
  "$PULLGATE" config check "$DIR/pullgate-enforce.yaml" >&2
}

start_pullgate() {
  local mode=$1 sock=$DIR/pullgate.sock i
  rm -f "$sock"
  local cmd=("$PULLGATE" serve --listen "$sock" --upstream "$CONTAINERD_SOCK")
  [ "$mode" = enforce ] && cmd=("$PULLGATE" serve --config "$DIR/pullgate-enforce.yaml")
  # in the namespace: pullgate reads the registry at its loopback address
  # exec: $! is then pullgate itself (nsenter execs it), so stop_pullgate's SIGTERM reaches it;
  # a function run with & is a subshell that would leave pullgate running after the script.
  (exec nsenter --net="/run/netns/$NS" "${cmd[@]}") 2>"$RESULTS/$GEN--$mode.pullgate.log" &
  PG_PID=$!
  for ((i = 0; i < 200; i++)); do
    [ -S "$sock" ] && return 0
    kill -0 "$PG_PID" 2>/dev/null || break
    sleep 0.05
  done
  tail -n 20 "$RESULTS/$GEN--$mode.pullgate.log" >&2
  die "pullgate ($mode) did not start"
}

# --- per generation ---------------------------------------------------------------------------------
for GEN in $GENS; do
  NS=pgct-$RUN_ID-${GEN//./}
  DIR=/tmp/pgct-$RUN_ID-${GEN//./}
  log "containerd $GEN: network namespace $NS, testbed $DIR"
  ip netns add "$NS"
  in_ns ip link set lo up
  tb_env=(TESTBED_NETNS="$NS" TESTBED_CNI=bridge REGISTRY_ADDR=127.0.0.1:5000)
  [ "$GEN" = 2 ] && tb_env+=(TESTBED_CONTAINERD=2)
  env "${tb_env[@]}" scripts/testbed.sh start "$DIR" >"$RESULTS/$GEN--testbed.log" 2>&1 \
    || { tail -n 30 "$RESULTS/$GEN--testbed.log" >&2; die "testbed did not start"; }
  # shellcheck disable=SC1091
  . "$DIR/env"

  log "containerd $GEN: building and pushing critest's stand-in images"
  in_ns scripts/critest_images.sh "$DIR/critest" "$REGISTRY" >"$DIR/images.txt" \
    2>"$RESULTS/$GEN--images.log" || { cat "$RESULTS/$GEN--images.log" >&2; die "stand-in images failed"; }
  write_mirrors

  log "containerd $GEN: signing the stand-ins with the test Sigstore stack"
  mapfile -t to_sign < <(awk '{ n = $1; sub(/^[^\/]*\//, "", n); sub(/:[^:\/]*$/, "", n); print n "@" $2 }' "$DIR/images.txt" | sort -u)
  in_ns "$DEMO_SIGN" --registry "$REGISTRY" --out "$DIR/sigstore" "${to_sign[@]}" >"$DIR/signer.txt" \
    2>"$RESULTS/$GEN--sign.log" || { cat "$RESULTS/$GEN--sign.log" >&2; die "signing failed"; }
  "$PULLGATE" trust-root import --trusted-root "$DIR/sigstore/trusted_root.json" \
    --accept-unverified-trusted-root --state-dir "$DIR/pgstate" >"$RESULTS/$GEN--trust-root.log" 2>&1 \
    || { cat "$RESULTS/$GEN--trust-root.log" >&2; die "trust-root import failed"; }
  write_enforce_config

  run_critest "$GEN" direct "$CONTAINERD_SOCK"
  for MODE in $MODES; do
    start_pullgate "$MODE"
    run_critest "$GEN" "$MODE" "$DIR/pullgate.sock"
    stop_pullgate
  done
  cp "$DIR/audit.log" "$RESULTS/$GEN--enforce.audit.log" 2>/dev/null || true
  teardown
done

log "reports: $RESULTS"
rc=0
python3 scripts/critest_report.py "$RESULTS" || rc=$?
if [ $rc -ne 0 ]; then
  log "FAILED: a spec passes directly but not through pullgate (see LOST above)"
fi
exit $rc
