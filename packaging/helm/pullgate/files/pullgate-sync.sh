#!/bin/sh
# pullgate-sync: keeps a node's pullgate configuration (policy included) and mirrored Sigstore
# trust root in sync with what the cluster publishes (ConfigMaps/Secrets mounted under
# $SYNC_SOURCE), then signals pullgate to reload. Runs in the pullgate-node-sync DaemonSet
# (packaging/kubernetes/daemonset.yaml, packaging/helm/pullgate); the same file is embedded in
# both, and tests/e2e_ops.rs runs it against a real pullgate.
#
# Everything that decides is the node's own pullgate binary, run on the host (nsenter into
# PID 1's namespaces): `pullgate config check` before a new configuration replaces the old one,
# `pullgate trust-root import` (TUF-verified, rollback-protected) before a new trust root is
# used, `systemctl reload pullgate` (SIGHUP) to apply both. A refused configuration or trust
# root leaves the installed one in force; the sync retries on the next round.
#
# Source layout ($SYNC_SOURCE):
#   config/config.yaml     the complete /etc/pullgate/config.yaml (optional)
#   trust-root/mirror.tar.gz, trust-root/mirror.tar, or trust-root/... as files
#                          a mirrored TUF repository (N.root.json, timestamp.json, ...,
#                          targets/<sha256>.trusted_root.json) (optional). ConfigMap keys cannot
#                          hold `/`, so a ConfigMap carries it as one archive (binaryData).
#
# Environment (defaults are for the DaemonSet):
#   SYNC_SOURCE=/sync              where the ConfigMaps/Secrets are mounted
#   HOST_ROOT=/host                where the host's /etc/pullgate and mirror dir are mounted
#                                  ("" when the script runs on the host itself)
#   HOST_EXEC="nsenter --target 1 --mount --uts --ipc --net --pid --"
#                                  prefix that runs a command on the host ("" runs it here)
#   PULLGATE_BIN=/usr/bin/pullgate the node's pullgate (host path)
#   PULLGATE_CONFIG=/etc/pullgate/config.yaml            (host path)
#   PULLGATE_MIRROR_DIR=/var/lib/pullgate-sync/mirror    (host path) where the TUF mirror is put
#   PULLGATE_IMPORT_ARGS="--from $PULLGATE_MIRROR_DIR"   trust-root import arguments; add
#                                  `--root /etc/pullgate/tuf-root.json` (shipped in the node
#                                  image) for a private Sigstore instance
#   PULLGATE_RELOAD="systemctl reload pullgate.service"  how pullgate is told (host command)
#   SYNC_INTERVAL=60               seconds between rounds
#   SYNC_ONCE=0                    1: one round, exit 0 if it applied cleanly, 1 if not
set -eu

SYNC_SOURCE=${SYNC_SOURCE:-/sync}
HOST_ROOT=${HOST_ROOT-/host}
HOST_EXEC=${HOST_EXEC-nsenter --target 1 --mount --uts --ipc --net --pid --}
PULLGATE_BIN=${PULLGATE_BIN:-/usr/bin/pullgate}
PULLGATE_CONFIG=${PULLGATE_CONFIG:-/etc/pullgate/config.yaml}
PULLGATE_MIRROR_DIR=${PULLGATE_MIRROR_DIR:-/var/lib/pullgate-sync/mirror}
PULLGATE_IMPORT_ARGS=${PULLGATE_IMPORT_ARGS:---from $PULLGATE_MIRROR_DIR}
PULLGATE_RELOAD=${PULLGATE_RELOAD:-systemctl reload pullgate.service}
SYNC_INTERVAL=${SYNC_INTERVAL:-60}
SYNC_ONCE=${SYNC_ONCE:-0}

log() { echo "pullgate-sync: $*" >&2; }

# on_host CMD...: runs CMD on the host.
# shellcheck disable=SC2086 # HOST_EXEC is a command prefix, split on purpose
on_host() { $HOST_EXEC "$@"; }

# digest DIR-or-FILE: one line that changes whenever the content does (ConfigMap volumes are
# symlink farms: follow links, skip kubelet's ..data bookkeeping entries).
digest() {
  if [ -d "$1" ]; then
    (cd "$1" && find -L . -type f ! -path './..*' | LC_ALL=C sort | while read -r f; do
        printf '%s ' "$f"; sha256sum <"$f"
      done) | sha256sum | cut -d' ' -f1
  else
    sha256sum <"$1" | cut -d' ' -f1
  fi
}

applied_config=""
applied_trust=""

# sync_config: installs $SYNC_SOURCE/config/config.yaml if pullgate accepts it. Returns 0 when
# nothing is left to do, 1 when it was refused. Sets need_reload.
sync_config() {
  src=$SYNC_SOURCE/config/config.yaml
  [ -f "$src" ] || return 0
  sum=$(digest "$src")
  [ "$sum" != "$applied_config" ] || return 0
  dest=$HOST_ROOT$PULLGATE_CONFIG
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    applied_config=$sum
    return 0
  fi
  mkdir -p "$(dirname "$dest")"
  staged=$dest.pullgate-sync
  cp -L "$src" "$staged"
  if ! out=$(on_host "$PULLGATE_BIN" config check "$PULLGATE_CONFIG.pullgate-sync" 2>&1); then
    log "configuration refused, the installed one stays: $out"
    rm -f "$staged"
    return 1
  fi
  mv -f "$staged" "$dest"
  log "installed a new $PULLGATE_CONFIG"
  applied_config=$sum
  need_reload=1
}

# sync_trust_root: puts the mirrored TUF repository on the host and imports it.
sync_trust_root() {
  src=$SYNC_SOURCE/trust-root
  # An optional ConfigMap that does not exist mounts as an empty directory: nothing to do.
  [ -n "$(find -L "$src" -type f ! -path '*/..*' 2>/dev/null | head -n 1)" ] || return 0
  sum=$(digest "$src")
  [ "$sum" != "$applied_trust" ] || return 0
  dest=$HOST_ROOT$PULLGATE_MIRROR_DIR
  # Imported before (by an earlier pod of this DaemonSet): nothing to do.
  if [ "$(cat "$dest.imported" 2>/dev/null)" = "$sum" ]; then
    applied_trust=$sum
    return 0
  fi
  rm -rf "$dest.new"
  mkdir -p "$dest.new"
  if [ -f "$src/mirror.tar.gz" ]; then
    tar -xzf "$src/mirror.tar.gz" -C "$dest.new"
  elif [ -f "$src/mirror.tar" ]; then
    tar -xf "$src/mirror.tar" -C "$dest.new"
  else
    # -L: ConfigMap items are symlinks; the copy holds the files themselves.
    (cd "$src" && find -L . -type f ! -path './..*' | while read -r f; do
        mkdir -p "$dest.new/$(dirname "$f")"
        cp -L "$f" "$dest.new/$f"
      done)
  fi
  rm -rf "$dest.old"
  [ ! -d "$dest" ] || mv "$dest" "$dest.old"
  mv "$dest.new" "$dest"
  rm -rf "$dest.old"
  # shellcheck disable=SC2086 # import arguments are split on purpose
  if ! out=$(on_host "$PULLGATE_BIN" trust-root import $PULLGATE_IMPORT_ARGS --config "$PULLGATE_CONFIG" 2>&1); then
    log "trust root refused, the installed one stays: $out"
    return 1
  fi
  log "imported the trust root: $(echo "$out" | tr '\n' ' ')"
  echo "$sum" >"$dest.imported"
  applied_trust=$sum
  need_reload=1
}

round() {
  need_reload=0
  ok=0
  sync_config || ok=1
  sync_trust_root || ok=1
  if [ "$need_reload" = 1 ]; then
    # shellcheck disable=SC2086 # the reload command is split on purpose
    if out=$(on_host $PULLGATE_RELOAD 2>&1); then
      log "pullgate reloaded"
    else
      log "reload failed ($out); pullgate also picks up a new trust root by itself within trust_root.watch_interval"
      ok=1
    fi
  fi
  return $ok
}

if [ "$SYNC_ONCE" = 1 ]; then
  round
  exit $?
fi
while :; do
  round || true
  sleep "$SYNC_INTERVAL"
done
