#!/usr/bin/env bash
# scripts/testbed.sh - a real containerd (CRI) + a real OCI registry for
# pullgate's end-to-end tests: no Docker, no systemd, all state under one DIR.
#
# usage: scripts/testbed.sh COMMAND DIR
#   start DIR               start docker-registry and containerd as setsid'd
#                           background processes (pid files under DIR), wait
#                           until both answer, seed the registry with tiny
#                           images, write DIR/env and print it. If the testbed
#                           for DIR is already up, just print DIR/env.
#   stop DIR                delete all containerd tasks (ctr), then stop exactly
#                           the processes this script started for DIR, leftover
#                           shims serving DIR's socket (and their children) too.
#   status DIR              print what runs; exit 0 iff containerd and registry are up.
#   clean DIR               stop, then remove DIR.
#   restart-containerd DIR  stop containerd only (SIGTERM) and start it again the
#                           same way; shims, containers and registry stay.
#   kill-containerd DIR     SIGKILL containerd only (shims and containers survive).
#
# Env:
#   REGISTRY_ADDR=127.0.0.1:PORT    registry address (default 127.0.0.1:5000); use
#                                   different ports + DIRs to run several testbeds.
#   REGISTRY_HTPASSWD=user:password registry requires basic auth (bcrypt htpasswd);
#                                   seeding pushes with these credentials.
#   TESTBED_PRELOAD_SANDBOX=0|1     also pull the sandbox image into containerd's
#                                   k8s.io namespace at start (default: 1 with
#                                   REGISTRY_HTPASSWD, since containerd pulls it
#                                   without credentials on RunPodSandbox; else 0).
#   TESTBED_SKIP_INSTALL=1          never run scripts/setup.sh for missing tools.
#   TESTBED_NETNS=NAME              run this script, and so the registry, containerd, its
#                                   shims and pods, inside the existing network namespace
#                                   NAME (`ip netns add NAME`, created and removed by the
#                                   caller, e.g. scripts/critest.sh). Loopback addresses are
#                                   then NAME's own: callers reach the registry and the
#                                   streaming server with `nsenter --net=/run/netns/NAME`.
#                                   Give it to every command for that DIR (start/stop/clean).
#   TESTBED_CNI=loopback|bridge     pod networking (default loopback: host-network pods
#                                   only). bridge: Debian's containernetworking-plugins
#                                   bridge + host-local + portmap; pods get an address in
#                                   TESTBED_CNI_SUBNET on bridge pgcni0, with no masquerade
#                                   and no route out. Only with TESTBED_NETNS (the bridge and
#                                   the pod addresses must stay inside that namespace).
#   TESTBED_CNI_SUBNET=CIDR         pod subnet for TESTBED_CNI=bridge (default 10.88.0.0/16).
#   TESTBED_CONTAINERD=1.6|2        containerd generation (default 1.6): 1.6 is Debian's
#                                   containerd (config version 2, CRI v1 and v1alpha2);
#                                   2 is containerd 2.x from $PULLGATE_SHARED/bin (default
#                                   ../shared/bin next to the repo), first on PATH for
#                                   containerd, containerd-shim-runc-v2 and ctr, with a
#                                   config version 3 file (CRI v1 only). start records the
#                                   generation in DIR; the other commands read it from there.
#   PULLGATE_SHARED=DIR             the shared folder (default: the repo's ../shared).
#
# DIR/env (KEY=VALUE lines, sourceable) has: TESTBED_DIR CONTAINERD_GENERATION
# CONTAINERD_VERSION CONTAINERD_CONFIG CONTAINERD_SOCK CRI_ENDPOINT CONTAINERD_PID CONTAINERD_NAMESPACE CONTAINERD_LOG HOSTS_DIR
# POD_LOG_DIR REGISTRY REGISTRY_URL REGISTRY_PID REGISTRY_LOG REGISTRY_AUTH
# [REGISTRY_USER REGISTRY_PASSWORD] SANDBOX_IMAGE SANDBOX_DIGEST DEMO_IMAGE
# DEMO_DIGEST DEMO2_IMAGE DEMO2_DIGEST UNSIGNED_IMAGE UNSIGNED_DIGEST
# MULTI_IMAGE MULTI_DIGEST MULTI_AMD64_DIGEST.
#
# Seeded images (built by scripts/build_oci.py, reproducible):
#   pause:1        static /pause (the sandbox image)
#   demo/app:1     static multi-call /hello: no args -> prints "hello from pullgate
#                  testbed" and sleeps until SIGTERM/SIGINT; "/hello echo ARGS"
#                  prints ARGS; "/hello exit N"; "/hello sleep N"; "/hello cat FILE";
#                  /etc/pullgate-variant holds the image's own name ("demo/app:1")
#   demo/unsigned:1, demo/app:2   same binary, other /etc/pullgate-variant -> other digests
#   demo/multi:1   OCI index (linux/amd64 runnable + linux/arm64 variant-file-only)
#
# Digests are reproducible for a given gcc/glibc: read them from DIR/env, never
# hard-code them. Pods must use host networking (NamespaceMode NODE): the CNI
# config is loopback only (unless TESTBED_CNI=bridge). containerd state survives stop/start of the same DIR
# (like a node reboot); use clean, or a new DIR, for a fresh one.
# containerd sees /run as DIR/run, so `ctr run` needs
# `--fifo-dir DIR/run/containerd/fifo` (CRI calls need nothing special).
# Needs root. Daemons are setsid'd: callers should `trap 'testbed.sh stop DIR' EXIT`.
# Logs: DIR/containerd/containerd.log, DIR/registry/registry.log (reset by start,
# appended to by restart-containerd). DIR is at most 80 characters.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { echo "[testbed] $*" >&2; }
die() { echo "[testbed] error: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

[ $# -eq 2 ] || usage
CMD=$1
case $CMD in
  start | stop | status | clean | restart-containerd | kill-containerd) ;;
  *) usage ;;
esac

# --- network namespace ----------------------------------------------------------------
# Re-run the whole script inside TESTBED_NETNS: every process it starts inherits it.
if [ -n "${TESTBED_NETNS:-}" ] && [ "${_TESTBED_IN_NETNS:-}" != "$TESTBED_NETNS" ]; then
  [[ $TESTBED_NETNS =~ ^[A-Za-z0-9._-]+$ ]] || die "TESTBED_NETNS must match [A-Za-z0-9._-]+"
  [ -e "/run/netns/$TESTBED_NETNS" ] || die "no network namespace $TESTBED_NETNS (ip netns add it first)"
  # nsenter, not `ip netns exec`: that one also remounts /sys, hiding the cgroup mounts runc needs
  _TESTBED_IN_NETNS=$TESTBED_NETNS exec nsenter --net="/run/netns/$TESTBED_NETNS" "$0" "$@"
fi
TESTBED_CNI=${TESTBED_CNI:-loopback}
case $TESTBED_CNI in
  loopback) ;;
  bridge) [ -n "${TESTBED_NETNS:-}" ] || die "TESTBED_CNI=bridge needs TESTBED_NETNS (pod addresses must stay inside it)" ;;
  *) die "TESTBED_CNI must be loopback or bridge, got '$TESTBED_CNI'" ;;
esac
CNI_SUBNET=${TESTBED_CNI_SUBNET:-10.88.0.0/16}
[[ $CNI_SUBNET =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$ ]] || die "TESTBED_CNI_SUBNET must be an IPv4 CIDR, got '$CNI_SUBNET'"

# --- DIR checks -------------------------------------------------------------------
DIR=$(realpath -m -- "$2")
[[ $DIR =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "DIR must use only [A-Za-z0-9._/+-]: $DIR"
[ "$DIR" != / ] || die "DIR must not be /"
# containerd is run with /run and /var/lib bind-mounted over, so DIR must live elsewhere
case $DIR/ in
  /run/* | /var/run/* | /var/lib/*) die "DIR must not be under /run, /var/run or /var/lib: $DIR" ;;
esac
# sun_path is 108 bytes; the longest socket we make is DIR/containerd.sock.ttrpc, and
# tests put their own sockets in DIR too: keep DIR to 80 characters.
[ ${#DIR} -le 80 ] || die "DIR is ${#DIR} characters, at most 80 allowed (unix socket paths are limited to 108 bytes): $DIR"

SOCK=$DIR/containerd.sock
CTD_DIR=$DIR/containerd
REG_DIR=$DIR/registry
CTD_CONF=$CTD_DIR/config.toml
REG_CONF=$REG_DIR/config.yml
CTD_PIDF=$CTD_DIR/containerd.pid
REG_PIDF=$REG_DIR/registry.pid
CTD_LOG=$CTD_DIR/containerd.log
REG_LOG=$REG_DIR/registry.log
HOSTS_DIR=$CTD_DIR/certs.d
ENV_FILE=$DIR/env
MARKER=$DIR/.pullgate-testbed
K8S_NS=k8s.io
GEN_FILE=$CTD_DIR/generation

# --- containerd generation ----------------------------------------------------------------
# start takes it from TESTBED_CONTAINERD; every later command from what start recorded in DIR,
# so stop and restart-containerd use the same binaries as start did.
if [ "$CMD" = start ]; then
  GEN=${TESTBED_CONTAINERD:-1.6}
elif [ -s "$GEN_FILE" ]; then
  GEN=$(<"$GEN_FILE")
else
  GEN=${TESTBED_CONTAINERD:-1.6}
fi
case $GEN in
  1.6 | 2) ;;
  *) die "TESTBED_CONTAINERD must be 1.6 or 2, got '$GEN'" ;;
esac
SHARED=${PULLGATE_SHARED:-$SCRIPT_DIR/../../shared}
SHARED_BIN=$(realpath -m -- "$SHARED/bin")
if [ "$GEN" = 2 ]; then
  missing_bin=()
  for t in containerd containerd-shim-runc-v2 ctr; do
    [ -x "$SHARED_BIN/$t" ] || missing_bin+=("$t")
  done
  if [ ${#missing_bin[@]} -ne 0 ]; then
    msg="TESTBED_CONTAINERD=2 needs containerd 2.x in $SHARED_BIN (missing: ${missing_bin[*]}); set PULLGATE_SHARED to the shared folder"
    [ "$CMD" = start ] && die "$msg"
    log "warning: $msg"
  fi
  # containerd finds its shim on PATH, so this folder goes first for containerd and ctr alike
  export PATH=$SHARED_BIN:$PATH
fi

# containerd_version: the upstream version of the containerd on PATH ("1.6.20", "2.3.4")
containerd_version() {
  local v
  v=$(containerd --version 2>/dev/null | awk '{ print $3 }')
  v=${v#v}
  echo "${v%%~*}"
}

# check_generation: the containerd on PATH is of generation GEN (a 2.x binary first on PATH
# must not silently stand in for Debian's 1.6, nor the other way round)
check_generation() {
  local v
  v=$(containerd_version)
  [ -n "$v" ] || die "cannot tell the version of $(command -v containerd || echo containerd)"
  case $GEN:$v in
    1.6:1.6.* | 2:2.*) CTD_VERSION=$v ;;
    *) die "TESTBED_CONTAINERD=$GEN but $(command -v containerd) is containerd $v" ;;
  esac
}

# --- process helpers -----------------------------------------------------------------
cmdline_of() { tr '\0' '\n' 2>/dev/null <"/proc/$1/cmdline"; }

# pid_ours PIDFILE CONFIG -> prints the pid if it is alive and its cmdline names CONFIG
# (which lives under DIR), so a recycled pid is never mistaken for ours.
pid_ours() {
  local f=$1 conf=$2 p
  [ -s "$f" ] || return 1
  p=$(<"$f")
  [[ $p =~ ^[0-9]+$ ]] || return 1
  cmdline_of "$p" | grep -qxF -- "$conf" || return 1
  echo "$p"
}

# alive PID: exists and is not a zombie (builtins only: children_of runs this kind of
# check for every process on the machine)
alive() {
  local line
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
  line=${line##*) }  # drop "pid (comm) ", comm may contain spaces
  [ "${line%% *}" != Z ]
}

children_of() {
  local parent=$1 d line
  for d in /proc/[0-9]*; do
    { read -r line <"$d/stat"; } 2>/dev/null || continue
    line=${line##*) }
    # shellcheck disable=SC2086 # split the stat fields on purpose
    set -- $line
    [ "$2" = "$parent" ] && echo "${d#/proc/}"
  done
  return 0
}

# shims serving DIR's containerd socket: comm containerd-shim*, "-address SOCK" in argv
our_shims() {
  local d comm
  for d in /proc/[0-9]*; do
    { read -r comm <"$d/comm"; } 2>/dev/null || continue
    [[ $comm == containerd-shim* ]] || continue
    cmdline_of "${d#/proc/}" | grep -qxF -- "$SOCK" && echo "${d#/proc/}"
  done
  return 0
}

# stop_pid PID GRACE_SECONDS: SIGTERM, wait, then SIGKILL
stop_pid() {
  local p=$1 grace=$2 i
  kill -TERM "$p" 2>/dev/null || return 0
  for ((i = 0; i < grace * 10; i++)); do
    alive "$p" || return 0
    sleep 0.1
  done
  log "pid $p still alive after ${grace}s, sending SIGKILL"
  kill -KILL "$p" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive "$p" || return 0
    sleep 0.1
  done
  log "warning: pid $p did not exit"
}

ctr_() { timeout 20 ctr --address "$SOCK" "$@"; }

# --- env file helpers --------------------------------------------------------------------
env_get() { [ -f "$ENV_FILE" ] && sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1; }
env_set() {  # KEY VALUE: replace one line of DIR/env in place
  [ -f "$ENV_FILE" ] || return 0
  local tmp=$ENV_FILE.tmp
  { grep -v "^$1=" "$ENV_FILE" || true; echo "$1=$2"; } >"$tmp"
  mv "$tmp" "$ENV_FILE"
}

# --- daemons -------------------------------------------------------------------------------
start_registry() {
  # shellcheck disable=SC2016 # $$ and $1.. expand in the inner sh
  setsid sh -c 'echo $$ >"$1"; exec docker-registry serve "$2"' sh "$REG_PIDF" "$REG_CONF" \
    </dev/null >>"$REG_LOG" 2>&1 &
}

# containerd 1.6 hard-codes /run/containerd/s (shim sockets), /var/run/netns and
# /var/lib/cni: run it in a private mount namespace with /run and /var/lib bound to
# DIR. unshare and sh exec, so the pid written is containerd's own.
start_containerd() {
  rm -f "$SOCK" "$SOCK.ttrpc"
  # shellcheck disable=SC2016 # $$ and $1.. expand in the inner sh
  setsid unshare --mount --propagation private sh -c \
    'echo $$ >"$1" && mount -n --bind "$2" /run && mount -n --bind "$3" /var/lib && exec containerd --config "$4"' \
    sh "$CTD_PIDF" "$DIR/run" "$DIR/varlib" "$CTD_CONF" \
    </dev/null >>"$CTD_LOG" 2>&1 &
}

tail_logs() {
  local f
  for f in "$@"; do
    [ -f "$f" ] || continue
    log "last lines of $f:"
    tail -n 15 "$f" | sed 's/^/[testbed]   /' >&2
  done
}

# wait_until SECONDS WHAT CMD...: retry CMD every 0.1 s
wait_until() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "$what did not come up within ${secs}s"
  return 1
}

registry_curl_opts() {
  local user pass
  if [ -s "$REG_DIR/credentials" ]; then
    IFS=: read -r user pass <"$REG_DIR/credentials"
    printf '%s\n' -u "$user:$pass"
  fi
}

registry_ready() {
  local addr opts
  addr=$(<"$REG_DIR/addr")
  mapfile -t opts < <(registry_curl_opts)
  pid_ours "$REG_PIDF" "$REG_CONF" >/dev/null || return 1
  curl -fsS -m 2 "${opts[@]}" "http://$addr/v2/" >/dev/null
}

containerd_ready() {
  pid_ours "$CTD_PIDF" "$CTD_CONF" >/dev/null || return 1
  [ -S "$SOCK" ] || return 1
  ctr --address "$SOCK" --timeout 2s version >/dev/null 2>&1 || return 1
  # the CRI plugin must be loaded and ok ("io.containerd.grpc.v1  cri  linux/amd64  ok")
  ctr --address "$SOCK" --timeout 2s plugins ls 2>/dev/null \
    | awk '$1 == "io.containerd.grpc.v1" && $2 == "cri" { found = 1; ok = ($NF == "ok") } END { exit !(found && ok) }'
}

wait_containerd() {
  if ! wait_until 30 containerd containerd_ready; then
    if [ -S "$SOCK" ]; then
      ctr --address "$SOCK" --timeout 2s plugins ls 2>&1 | grep -i cri | sed 's/^/[testbed]   /' >&2 || true
    fi
    tail_logs "$CTD_LOG"
    return 1
  fi
}

stop_containerd() {
  local p
  if p=$(pid_ours "$CTD_PIDF" "$CTD_CONF"); then
    log "stopping containerd (pid $p)"
    stop_pid "$p" 15
  fi
  rm -f "$CTD_PIDF"
}

do_stop() {
  local p ns id s c out kids i
  if p=$(pid_ours "$CTD_PIDF" "$CTD_CONF") && [ -S "$SOCK" ]; then
    # graceful first: containerd kills and deletes each task, the shims then exit
    for ns in $(ctr_ namespaces list --quiet 2>/dev/null); do
      for id in $(ctr_ --namespace "$ns" tasks list --quiet 2>/dev/null); do
        log "deleting task $ns/$id"
        # a pod's containers die with its sandbox task and may be gone already
        if ! out=$(ctr_ --namespace "$ns" tasks delete --force "$id" 2>&1) \
          && [[ $out != *"not found"* ]]; then
          log "warning: could not delete task $ns/$id: $(echo "$out" | tail -n 1)"
        fi
      done
    done
  fi
  # the registry takes a moment to exit: let it go in parallel with containerd
  if p=$(pid_ours "$REG_PIDF" "$REG_CONF"); then
    log "stopping registry (pid $p)"
    kill -TERM "$p" 2>/dev/null || true
  fi
  stop_containerd
  # shims left behind (containerd was killed, or a task would not go): kill what
  # they run first (a shim is a subreaper, its children would outlive it), then them
  for s in $(our_shims); do
    kids=$(children_of "$s")
    for c in $kids; do
      log "killing process $c of leftover shim $s"
      kill -KILL "$c" 2>/dev/null || true
    done
    # let the shim reap them (else they linger as zombies of pid 1)
    for ((i = 0; i < 50; i++)); do
      [ -z "$(children_of "$s")" ] && break
      sleep 0.1
    done
    log "stopping leftover shim $s"
    stop_pid "$s" 5
  done
  if p=$(pid_ours "$REG_PIDF" "$REG_CONF"); then
    stop_pid "$p" 10
  fi
  rm -f "$REG_PIDF" "$SOCK" "$SOCK.ttrpc"
}

check_dir_is_ours() {
  # refuse to clobber or delete a directory this script did not create
  if [ -d "$DIR" ] && [ ! -e "$MARKER" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
    die "$DIR exists, is not empty and is not a testbed directory (no $MARKER)"
  fi
}

# --- commands ------------------------------------------------------------------------------
cmd_status() {
  local p rc=0 shims
  if p=$(pid_ours "$CTD_PIDF" "$CTD_CONF"); then echo "containerd: up (pid $p, $SOCK)"; else echo "containerd: down"; rc=1; fi
  if p=$(pid_ours "$REG_PIDF" "$REG_CONF"); then echo "registry: up (pid $p, $(cat "$REG_DIR/addr" 2>/dev/null))"; else echo "registry: down"; rc=1; fi
  shims=$(our_shims | wc -l)
  echo "shims: $shims"
  return $rc
}

cmd_kill_containerd() {
  local p i
  p=$(pid_ours "$CTD_PIDF" "$CTD_CONF") || die "containerd for $DIR is not running"
  log "SIGKILL containerd (pid $p)"
  kill -KILL "$p"
  for ((i = 0; i < 100; i++)); do
    alive "$p" || return 0
    sleep 0.1
  done
  die "containerd pid $p did not die"
}

cmd_restart_containerd() {
  local p
  [ -f "$CTD_CONF" ] || die "no testbed in $DIR (run start first)"
  [ "$(id -u)" = 0 ] || die "must run as root"
  stop_containerd
  log "starting containerd"
  start_containerd
  wait_containerd || die "containerd did not come back"
  p=$(pid_ours "$CTD_PIDF" "$CTD_CONF")
  env_set CONTAINERD_PID "$p"
  log "containerd up again (pid $p)"
}

ensure_tools() {
  local missing=() t libc_a
  for t in containerd containerd-shim-runc-v2 runc ctr docker-registry skopeo unshare setsid \
    gcc curl ss python3 htpasswd timeout realpath; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  [ -x /usr/lib/cni/loopback ] || missing+=(/usr/lib/cni/loopback)
  if [ "$TESTBED_CNI" = bridge ]; then
    for t in bridge host-local portmap; do
      [ -x "/usr/lib/cni/$t" ] || missing+=("/usr/lib/cni/$t")
    done
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  fi
  libc_a=$(gcc -print-file-name=libc.a 2>/dev/null || true)
  [ -f "$libc_a" ] || missing+=(libc.a)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "${TESTBED_SKIP_INSTALL:-0}" != 1 ] || die "missing: ${missing[*]} (TESTBED_SKIP_INSTALL=1; run scripts/setup.sh)"
  log "missing ${missing[*]}: running scripts/setup.sh"
  "$SCRIPT_DIR/setup.sh" --no-python --no-rust || die "scripts/setup.sh failed"
  missing=()
  for t in containerd ctr docker-registry skopeo gcc htpasswd; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  [ ${#missing[@]} -eq 0 ] || die "still missing after setup.sh: ${missing[*]}"
}

# containerd 1.6: config version 2, everything CRI under the one "io.containerd.grpc.v1.cri" plugin.
write_containerd_config_v2() {
  local addr=$1
  cat >"$CTD_CONF" <<EOF
# written by scripts/testbed.sh; containerd runs with /run -> $DIR/run and
# /var/lib -> $DIR/varlib (private mount namespace)
version = 2
root = "$CTD_DIR/root"
state = "$CTD_DIR/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$CTD_DIR/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$addr/pause:1"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    # no CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj below ours
    # (the error otherwise is "can't get final child's PID from pipe")
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$DIR/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "$HOSTS_DIR"
EOF
}

# containerd 2.x: config version 3 (what `containerd config migrate` makes of the version 2
# file above; 2.3 migrates it to its version 4 in memory, as it would the version 2 one). The
# CRI plugin is split: images (snapshotter, sandbox image, registry), runtime (runtimes, CNI),
# and the gRPC service (streaming). Image volumes (CRI Mount.image) need no switch: containerd
# 2.1+ mounts them in CreateContainer whatever ignore_image_defined_volumes says (that one is
# about VOLUME entries of an image config); it is spelled out anyway.
write_containerd_config_v3() {
  local addr=$1
  cat >"$CTD_CONF" <<EOF
# written by scripts/testbed.sh; containerd runs with /run -> $DIR/run and
# /var/lib -> $DIR/varlib (private mount namespace)
version = 3
root = "$CTD_DIR/root"
state = "$CTD_DIR/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$CTD_DIR/opt"
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "$addr/pause:1"
    [plugins."io.containerd.cri.v1.images".registry]
      config_path = "$HOSTS_DIR"
  [plugins."io.containerd.cri.v1.runtime"]
    # no CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj below ours
    restrict_oom_score_adj = true
    ignore_image_defined_volumes = false
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          # cgroup v1 on these machines (containerd 2.x warns that it is deprecated)
          SystemdCgroup = false
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "$DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
EOF
}

write_configs() {
  local addr=$1 auth_yaml=""
  mkdir -p "$REG_DIR/data" "$CTD_DIR"/{root,state,opt} "$HOSTS_DIR/$addr" \
    "$DIR"/{cni/net.d,run,varlib,build,podlogs}
  if [ -s "$REG_DIR/htpasswd" ]; then
    auth_yaml="auth:
  htpasswd:
    realm: pullgate-testbed
    path: $REG_DIR/htpasswd"
  fi
  cat >"$REG_CONF" <<EOF
# written by scripts/testbed.sh
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $REG_DIR/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $addr
  secret: pullgate-testbed-not-secret
  headers:
    X-Content-Type-Options: [nosniff]
$auth_yaml
EOF

  if [ "$GEN" = 2 ]; then
    write_containerd_config_v3 "$addr"
  else
    write_containerd_config_v2 "$addr"
  fi
  printf '%s\n' "$GEN" >"$GEN_FILE"

  # plain HTTP for the registry. containerd 1.6.20 rejects a hosts.toml that has no
  # [host] table ("failed to decode hosts.toml: invalid `host` tree") and silently
  # falls back to its defaults; a [host."http://..."] entry for the same address
  # would make it ask the registry twice (e.g. two HEADs for an unknown tag). An
  # empty [host] table gives exactly one endpoint: the server line.
  cat >"$HOSTS_DIR/$addr/hosts.toml" <<EOF
server = "http://$addr"

# intentionally empty: containerd 1.6.20 needs the table to exist
[host]
EOF

  rm -f "$DIR"/cni/net.d/*.conflist
  if [ "$TESTBED_CNI" = bridge ]; then
    # a bridge inside TESTBED_NETNS: no ipMasq, no route out of the namespace (it has only
    # lo and this bridge). portmap's own SNAT only rewrites 127.0.0.1 -> pod hairpin traffic
    # of host ports, inside the namespace too.
    cat >"$DIR/cni/net.d/10-bridge.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "pullgate-testbed-bridge", "plugins": [
  {"type": "bridge", "bridge": "pgcni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$CNI_SUBNET"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$DIR/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
  else
    # loopback only: CRI reports NetworkReady; pods must use host networking
    cat >"$DIR/cni/net.d/10-loopback.conflist" <<'EOF'
{"cniVersion": "0.4.0", "name": "pullgate-testbed-lo", "plugins": [{"type": "loopback"}]}
EOF
  fi

  cat >"$REG_DIR/policy.json" <<'EOF'
{"default": [{"type": "insecureAcceptAnything"}]}
EOF
}

build_programs() {
  local b=$DIR/build
  cat >"$b/pause.c.new" <<'EOF'
/* pullgate testbed sandbox "pause": sleep until SIGTERM/SIGINT, then exit 0. */
#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) {
  signal(SIGTERM, done);
  signal(SIGINT, done);
  for (;;) pause();
}
EOF
  cat >"$b/hello.c.new" <<'EOF'
/* pullgate testbed demo program, static, multi-call:
 *   hello                 print "hello from pullgate testbed", sleep until SIGTERM/SIGINT
 *   hello echo ARGS...    print ARGS (also when called as "echo")
 *   hello exit N          exit with status N
 *   hello sleep N         sleep N seconds
 *   hello cat FILE...     copy FILEs to stdout (e.g. /etc/pullgate-variant)
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void done(int sig) { (void)sig; _exit(0); }

static int echo(int n, char **args) {
  for (int i = 0; i < n; i++) printf("%s%s", i ? " " : "", args[i]);
  printf("\n");
  return 0;
}

static int cat(int n, char **files) {
  char buf[4096];
  int rc = 0;
  for (int i = 0; i < n; i++) {
    int fd = open(files[i], O_RDONLY);
    if (fd < 0) { perror(files[i]); rc = 1; continue; }
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) > 0) fwrite(buf, 1, (size_t)r, stdout);
    close(fd);
  }
  return rc;
}

int main(int argc, char **argv) {
  const char *base = strrchr(argv[0], '/');
  base = base ? base + 1 : argv[0];
  if (strcmp(base, "echo") == 0) return echo(argc - 1, argv + 1);
  if (argc > 1) {
    if (strcmp(argv[1], "echo") == 0) return echo(argc - 2, argv + 2);
    if (strcmp(argv[1], "exit") == 0) return argc > 2 ? atoi(argv[2]) : 0;
    if (strcmp(argv[1], "sleep") == 0) { sleep(argc > 2 ? (unsigned)atoi(argv[2]) : 1); return 0; }
    if (strcmp(argv[1], "cat") == 0) return cat(argc - 2, argv + 2);
    fprintf(stderr, "hello: unknown command %s (echo|exit|sleep|cat)\n", argv[1]);
    return 2;
  }
  signal(SIGTERM, done);
  signal(SIGINT, done);
  printf("hello from pullgate testbed\n");
  fflush(stdout);
  for (;;) pause();
}
EOF
  local prog
  for prog in pause hello; do
    # keep the old source (and its mtime) when unchanged, so gcc runs only once per DIR
    if cmp -s "$b/$prog.c.new" "$b/$prog.c"; then
      rm -f "$b/$prog.c.new"
    else
      mv "$b/$prog.c.new" "$b/$prog.c"
    fi
    if [ ! -x "$b/$prog" ] || [ "$b/$prog.c" -nt "$b/$prog" ]; then
      gcc -static -Os -s -Wall -o "$b/$prog" "$b/$prog.c" 2>"$b/$prog.gcc.log" \
        || { cat "$b/$prog.gcc.log" >&2; die "gcc -static $prog.c failed"; }
    fi
  done
}

# push LAYOUT_TAG REPO:TAG [--all] -> checks the registry serves the digest we built
push_image() {
  local ltag=$1 ref=$2 want=$3 all=${4:-} got
  local creds=(--dest-no-creds)
  [ -n "$REG_USER" ] && creds=(--dest-creds "$REG_USER:$REG_PASS")
  skopeo --policy "$REG_DIR/policy.json" copy -q ${all:+--all} --dest-tls-verify=false \
    "${creds[@]}" "oci:$DIR/build/layout:$ltag" "docker://$ADDR/$ref" >"$DIR/build/push-$ltag.log" 2>&1 \
    || { tail -n 10 "$DIR/build/push-$ltag.log" >&2; die "skopeo push of $ADDR/$ref failed"; }
  local opts=()
  [ -n "$REG_USER" ] && opts=(-u "$REG_USER:$REG_PASS")
  got=$(curl -fsS -I "${opts[@]}" \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json' \
    "http://$ADDR/v2/${ref%:*}/manifests/${ref##*:}" | tr -d '\r' \
    | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')
  [ "$got" = "$want" ] || die "registry serves $ADDR/$ref as '$got', built $want"
}

seed_images() {
  local L=$DIR/build/layout b=$DIR/build v
  build_programs
  rm -rf "$L"
  for v in demo/app:1 demo/unsigned:1 demo/app:2 demo/multi:1; do
    printf '%s\n' "$v" >"$b/variant-${v//[\/:]/-}"
  done
  # build_oci.py is stdlib-only; prefer the system python3 (a pyenv shim costs ~0.2 s a call)
  local py=python3
  [ -x /usr/bin/python3 ] && py=/usr/bin/python3
  local bo=("$py" "$SCRIPT_DIR/build_oci.py")
  SANDBOX_DIGEST=$("${bo[@]}" image "$L" pause --file "$b/pause:/pause:755" --entrypoint '["/pause"]')
  DEMO_DIGEST=$("${bo[@]}" image "$L" app1 --file "$b/hello:/hello:755" \
    --file "$b/variant-demo-app-1:/etc/pullgate-variant:644" --entrypoint '["/hello"]')
  UNSIGNED_DIGEST=$("${bo[@]}" image "$L" unsigned1 --file "$b/hello:/hello:755" \
    --file "$b/variant-demo-unsigned-1:/etc/pullgate-variant:644" --entrypoint '["/hello"]')
  DEMO2_DIGEST=$("${bo[@]}" image "$L" app2 --file "$b/hello:/hello:755" \
    --file "$b/variant-demo-app-2:/etc/pullgate-variant:644" --entrypoint '["/hello"]')
  MULTI_AMD64_DIGEST=$("${bo[@]}" image "$L" multi-amd64 --arch amd64 --file "$b/hello:/hello:755" \
    --file "$b/variant-demo-multi-1:/etc/pullgate-variant:644" --entrypoint '["/hello"]')
  "${bo[@]}" image "$L" multi-arm64 --arch arm64 \
    --file "$b/variant-demo-multi-1:/etc/pullgate-variant:644" --entrypoint '["/hello"]' >/dev/null
  MULTI_DIGEST=$("${bo[@]}" index "$L" multi --from multi-amd64 --from multi-arm64)

  # pushes are independent: run them in parallel (each skopeo takes ~0.3 s)
  local pids=() pid failed=0
  push_image pause pause:1 "$SANDBOX_DIGEST" & pids+=($!)
  push_image app1 demo/app:1 "$DEMO_DIGEST" & pids+=($!)
  push_image unsigned1 demo/unsigned:1 "$UNSIGNED_DIGEST" & pids+=($!)
  push_image app2 demo/app:2 "$DEMO2_DIGEST" & pids+=($!)
  push_image multi demo/multi:1 "$MULTI_DIGEST" all & pids+=($!)
  for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
  done
  [ "$failed" = 0 ] || return 1
}

cmd_start() {
  local t0 t1 p running_addr
  [ "$(id -u)" = 0 ] || die "must run as root (containerd, runc, mount namespaces)"
  ADDR=${REGISTRY_ADDR:-127.0.0.1:5000}
  [[ $ADDR =~ ^127\.0\.0\.1:([0-9]{1,5})$ ]] || die "REGISTRY_ADDR must be 127.0.0.1:PORT, got '$ADDR'"
  local port=${BASH_REMATCH[1]}
  REG_USER="" REG_PASS=""
  if [ -n "${REGISTRY_HTPASSWD:-}" ]; then
    [[ $REGISTRY_HTPASSWD == *:* ]] || die "REGISTRY_HTPASSWD must be user:password"
    REG_USER=${REGISTRY_HTPASSWD%%:*}
    REG_PASS=${REGISTRY_HTPASSWD#*:}
    [[ $REG_USER =~ ^[A-Za-z0-9._-]+$ ]] || die "REGISTRY_HTPASSWD user must match [A-Za-z0-9._-]+"
    [[ $REG_PASS =~ ^[A-Za-z0-9._~+-]+$ ]] || die "REGISTRY_HTPASSWD password must match [A-Za-z0-9._~+-]+"
  fi

  check_dir_is_ours
  mkdir -p "$DIR"
  touch "$MARKER"

  # already up for this DIR?
  if pid_ours "$CTD_PIDF" "$CTD_CONF" >/dev/null && pid_ours "$REG_PIDF" "$REG_CONF" >/dev/null \
    && [ -s "$ENV_FILE" ]; then
    running_addr=$(env_get REGISTRY)
    if [ -n "${REGISTRY_ADDR:-}" ] && [ "$running_addr" != "$ADDR" ]; then
      die "testbed in $DIR already runs with REGISTRY=$running_addr (stop it first)"
    fi
    if [ -n "${TESTBED_CONTAINERD:-}" ] && [ "$(env_get CONTAINERD_GENERATION)" != "$GEN" ]; then
      die "testbed in $DIR already runs containerd $(env_get CONTAINERD_GENERATION), not $GEN (stop it first)"
    fi
    if [ -n "${REGISTRY_HTPASSWD+set}" ] && { [ "$(env_get REGISTRY_USER)" != "$REG_USER" ] || [ "$(env_get REGISTRY_PASSWORD)" != "$REG_PASS" ]; }; then
      die "testbed in $DIR already runs with other REGISTRY_HTPASSWD settings (stop it first)"
    fi
    log "already running"
    cat "$ENV_FILE"
    return 0
  fi

  ensure_tools
  check_generation
  t0=$(date +%s%N)
  # stale or half-up testbed in DIR: take it down first
  if pid_ours "$CTD_PIDF" "$CTD_CONF" >/dev/null || pid_ours "$REG_PIDF" "$REG_CONF" >/dev/null \
    || [ -n "$(our_shims)" ]; then
    log "resetting a half-up testbed in $DIR"
    do_stop
  fi
  rm -f "$ENV_FILE"
  # state survives stop/start of a DIR, but containerd 2.x rewrites 1.6's metadata for good
  if [ -s "$GEN_FILE" ] && [ "$(<"$GEN_FILE")" != "$GEN" ] && [ -n "$(ls -A "$CTD_DIR/root" 2>/dev/null)" ]; then
    die "$DIR holds state of containerd $(<"$GEN_FILE"), not $GEN: clean it or use another DIR"
  fi

  if ss -Hltn "sport = :$port" | grep -q .; then
    ss -ltnp "sport = :$port" >&2 || true
    die "port $port is in use (another registry or testbed? pick another REGISTRY_ADDR)"
  fi

  mkdir -p "$REG_DIR"
  printf '%s\n' "$ADDR" >"$REG_DIR/addr"
  rm -f "$REG_DIR/htpasswd" "$REG_DIR/credentials"
  if [ -n "$REG_USER" ]; then
    htpasswd -Bbn "$REG_USER" "$REG_PASS" >"$REG_DIR/htpasswd" 2>/dev/null || die "htpasswd failed"
    (umask 077 && printf '%s:%s\n' "$REG_USER" "$REG_PASS" >"$REG_DIR/credentials")
  fi
  write_configs "$ADDR"
  : >"$REG_LOG"
  : >"$CTD_LOG"

  # from here on, a failing start takes down whatever it started
  trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed: stopping what was started"; do_stop; fi' EXIT
  log "starting registry on $ADDR${REG_USER:+ (basic auth, user $REG_USER)} and containerd $CTD_VERSION on $SOCK"
  start_registry
  start_containerd
  if ! wait_until 30 registry registry_ready; then
    tail_logs "$REG_LOG"
    die "registry did not start"
  fi
  wait_containerd || die "containerd did not start"
  t1=$(date +%s%N)
  log "daemons up in $(((t1 - t0) / 1000000)) ms; seeding images"

  seed_images  # (a failure exits through the EXIT trap)

  local preload=${TESTBED_PRELOAD_SANDBOX:-}
  [ -n "$preload" ] || { [ -n "$REG_USER" ] && preload=1 || preload=0; }
  if [ "$preload" = 1 ]; then
    log "pulling $ADDR/pause:1 into containerd namespace $K8S_NS"
    ctr_ --namespace "$K8S_NS" images pull --hosts-dir "$HOSTS_DIR" \
      ${REG_USER:+--user "$REG_USER:$REG_PASS"} "$ADDR/pause:1" >>"$DIR/build/preload.log" 2>&1 \
      || { tail -n 10 "$DIR/build/preload.log" >&2; die "could not preload the sandbox image"; }
  fi

  local tmp=$ENV_FILE.tmp
  {
    echo "TESTBED_DIR=$DIR"
    echo "CONTAINERD_GENERATION=$GEN"
    echo "CONTAINERD_VERSION=$CTD_VERSION"
    echo "CONTAINERD_CONFIG=$CTD_CONF"
    echo "CONTAINERD_SOCK=$SOCK"
    echo "CRI_ENDPOINT=unix://$SOCK"
    echo "CONTAINERD_PID=$(pid_ours "$CTD_PIDF" "$CTD_CONF")"
    echo "CONTAINERD_NAMESPACE=$K8S_NS"
    echo "CONTAINERD_LOG=$CTD_LOG"
    echo "HOSTS_DIR=$HOSTS_DIR"
    echo "POD_LOG_DIR=$DIR/podlogs"
    echo "REGISTRY=$ADDR"
    echo "REGISTRY_URL=http://$ADDR"
    echo "REGISTRY_PID=$(pid_ours "$REG_PIDF" "$REG_CONF")"
    echo "REGISTRY_LOG=$REG_LOG"
    if [ -n "$REG_USER" ]; then
      echo "REGISTRY_AUTH=1"
      echo "REGISTRY_USER=$REG_USER"
      echo "REGISTRY_PASSWORD=$REG_PASS"
    else
      echo "REGISTRY_AUTH=0"
    fi
    echo "SANDBOX_PRELOADED=$preload"
    echo "SANDBOX_IMAGE=$ADDR/pause:1"
    echo "SANDBOX_DIGEST=$SANDBOX_DIGEST"
    echo "DEMO_IMAGE=$ADDR/demo/app:1"
    echo "DEMO_DIGEST=$DEMO_DIGEST"
    echo "DEMO2_IMAGE=$ADDR/demo/app:2"
    echo "DEMO2_DIGEST=$DEMO2_DIGEST"
    echo "UNSIGNED_IMAGE=$ADDR/demo/unsigned:1"
    echo "UNSIGNED_DIGEST=$UNSIGNED_DIGEST"
    echo "MULTI_IMAGE=$ADDR/demo/multi:1"
    echo "MULTI_DIGEST=$MULTI_DIGEST"
    echo "MULTI_AMD64_DIGEST=$MULTI_AMD64_DIGEST"
  } >"$tmp"
  mv "$tmp" "$ENV_FILE"
  trap - EXIT
  log "ready in $((($(date +%s%N) - t0) / 1000000)) ms (env: $ENV_FILE)"
  cat "$ENV_FILE"
}

case $CMD in
  start) cmd_start ;;
  stop)
    [ -d "$DIR" ] || { log "no $DIR: nothing to stop"; exit 0; }
    do_stop
    log "stopped ($DIR)"
    ;;
  clean)
    [ -d "$DIR" ] || exit 0
    check_dir_is_ours
    do_stop
    rm -rf -- "$DIR"
    log "removed $DIR"
    ;;
  status) cmd_status ;;
  restart-containerd) cmd_restart_containerd ;;
  kill-containerd) cmd_kill_containerd ;;
esac
