#!/usr/bin/env bash
# scripts/build-deb.sh - build pullgate's Debian package (what a node-image build installs).
#
# usage: scripts/build-deb.sh [--binary FILE] [--output DIR]
#   --binary FILE  the pullgate binary to package (default: target/dist/pullgate, brought up to
#                  date with `cargo build --profile dist --locked --bin pullgate` first: the release
#                  profile with fat LTO and one codegen unit, see Cargo.toml; a few minutes longer
#                  to build, a smaller and faster daemon)
#   --output DIR   where the .deb goes (default: target/debian); its path is printed last,
#                  after the path of the debug symbols package (pullgate-dbgsym_*.ddeb)
#
# Env: PULLGATE_MAINTAINER  the Maintainer field (default: pullgate maintainers
#                           <maintainers@pullgate.example.org>); set it to whoever answers for
#                           the package you ship
#
# Plain dpkg-deb, no debhelper, but what debhelper would produce: lintian reports no errors or
# warnings (tests/packaging.rs checks). The binary is stripped; its debug information goes into
# pullgate-dbgsym (/usr/lib/debug/.build-id/...), as Debian's -dbgsym packages do. Needs
# dpkg-deb, binutils (objcopy, strip, readelf) and gzip; the binary must run on the build host
# (`pullgate manual` writes the man pages and completions). The package installs:
#   /usr/bin/pullgate
#   /usr/share/man/man1/pullgate*.1.gz                      a page per command
#   /usr/share/bash-completion/completions/pullgate, /usr/share/zsh/vendor-completions/_pullgate,
#   /usr/share/fish/vendor_completions.d/pullgate.fish      shell completions
#   /lib/systemd/system/pullgate.service, pullgate.socket   (enabled on install, not started)
#   /etc/pullgate/config.yaml                               (conffile: local edits survive upgrades)
#   /usr/share/doc/pullgate/                                README, audit-log format, copyright,
#                                                           changelog (packaging/debian/changelog)
#   /usr/share/doc/pullgate/examples/                       policy example, kubelet drop-ins,
#                                                           Prometheus alerts, DaemonSet manifest
#   /var/lib/pullgate, /var/log/pullgate                    state (trust root) and audit log
# Maintainer scripts honour DPKG_ROOT (dpkg --root ... --force-script-chrootless), so the package
# also installs into an image root from outside it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "build-deb: $*" >&2; exit 1; }

BINARY=target/dist/pullgate
OUTPUT=target/debian
while [ $# -gt 0 ]; do
  case $1 in
    --binary) BINARY=${2:?--binary needs a file}; shift 2 ;;
    --output) OUTPUT=${2:?--output needs a directory}; shift 2 ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done

command -v dpkg-deb >/dev/null || die "dpkg-deb not found (Debian's dpkg package)"
for tool in objcopy strip readelf; do
  command -v $tool >/dev/null || die "$tool not found (Debian's binutils package; scripts/setup.sh installs it)"
done
MAINTAINER=${PULLGATE_MAINTAINER:-pullgate maintainers <maintainers@pullgate.example.org>}
if [ "$BINARY" = target/dist/pullgate ]; then
  # Always asked for (a no-op when it is up to date), so the package never holds a stale build.
  echo "build-deb: cargo build --profile dist --locked --bin pullgate (fat LTO: the first build takes a while)" >&2
  cargo build --profile dist --locked --bin pullgate
fi
[ -x "$BINARY" ] || die "$BINARY is not an executable"

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$VERSION" ] || die "no version in Cargo.toml"
# A native package: its changelog is packaging/debian/changelog, whose newest entry must be this
# version.
LOGGED=$(sed -n '1s/^pullgate (\([^)]*\)).*/\1/p' packaging/debian/changelog)
[ "$LOGGED" = "$VERSION" ] || die "packaging/debian/changelog's newest entry is ${LOGGED:-missing}, Cargo.toml says $VERSION: add an entry"
ARCH=$(dpkg --print-architecture)
# The newest glibc symbol version the binary needs (the Depends: line).
GLIBC=$( (objdump -T "$BINARY" 2>/dev/null || true) | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
GLIBC=${GLIBC:-2.34}

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
ROOT=$STAGE/root
DOC=$ROOT/usr/share/doc/pullgate
EX=$DOC/examples

install -D -m 0755 "$BINARY" "$ROOT/usr/bin/pullgate"
# Strip as dh_strip does: the debug information (the release profile's line tables) and the
# symbol table go into the -dbgsym package, found by build ID (gdb, debuginfod, addr2line).
BUILD_ID=$(readelf -n "$BINARY" | sed -n 's/^ *Build ID: *\([0-9a-f]*\)$/\1/p' | head -n 1)
if [ -n "$BUILD_ID" ]; then
  DEBUG_FILE=usr/lib/debug/.build-id/${BUILD_ID:0:2}/${BUILD_ID:2}.debug
else
  DEBUG_FILE=usr/lib/debug/usr/bin/pullgate.debug
fi
DBG=$STAGE/dbgsym
install -d -m 0755 "$(dirname "$DBG/$DEBUG_FILE")"
objcopy --only-keep-debug --compress-debug-sections "$BINARY" "$DBG/$DEBUG_FILE"
chmod 0644 "$DBG/$DEBUG_FILE"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$ROOT/usr/bin/pullgate"
objcopy --add-gnu-debuglink="$DBG/$DEBUG_FILE" "$ROOT/usr/bin/pullgate"

# Man pages and completions, generated from the command-line definitions.
"$BINARY" manual --out "$STAGE/manual" >/dev/null
for page in "$STAGE"/manual/man1/*.1; do
  install -D -m 0644 "$page" "$ROOT/usr/share/man/man1/$(basename "$page")"
  gzip -9n "$ROOT/usr/share/man/man1/$(basename "$page")"
done
install -D -m 0644 "$STAGE/manual/completions/pullgate.bash" "$ROOT/usr/share/bash-completion/completions/pullgate"
install -D -m 0644 "$STAGE/manual/completions/_pullgate" "$ROOT/usr/share/zsh/vendor-completions/_pullgate"
install -D -m 0644 "$STAGE/manual/completions/pullgate.fish" "$ROOT/usr/share/fish/vendor_completions.d/pullgate.fish"
install -D -m 0644 packaging/systemd/pullgate.service "$ROOT/lib/systemd/system/pullgate.service"
install -D -m 0644 packaging/systemd/pullgate.socket "$ROOT/lib/systemd/system/pullgate.socket"
install -D -m 0644 packaging/config.yaml "$ROOT/etc/pullgate/config.yaml"
install -D -m 0644 README.md "$DOC/README.md"
install -D -m 0644 packaging/AUDIT-LOG.md "$DOC/AUDIT-LOG.md"
gzip -9n -c packaging/debian/changelog >"$DOC/changelog.gz"
chmod 0644 "$DOC/changelog.gz"
install -D -m 0644 packaging/config.yaml "$EX/config.yaml"
install -D -m 0644 packaging/policy-example.yaml "$EX/policy-example.yaml"
install -D -m 0644 packaging/kubelet/20-pullgate.conf "$EX/kubelet/20-pullgate.conf"
install -D -m 0644 packaging/kubelet/kubelet-pullgate.service.conf "$EX/kubelet/kubelet-pullgate.service.conf"
install -D -m 0644 packaging/prometheus/pullgate-alerts.yaml "$EX/prometheus/pullgate-alerts.yaml"
install -D -m 0644 packaging/kubernetes/daemonset.yaml "$EX/kubernetes/daemonset.yaml"
install -D -m 0755 packaging/kubernetes/pullgate-sync.sh "$EX/kubernetes/pullgate-sync.sh"
install -d -m 0755 "$ROOT/var/lib/pullgate" "$ROOT/var/log/pullgate"
cat >"$DOC/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pullgate
Source: the pullgate repository

Files: *
Copyright: 2026 the pullgate authors
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
chmod 0644 "$DOC/copyright"

mkdir -p "$ROOT/DEBIAN"
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
cat >"$ROOT/DEBIAN/control" <<EOF
Package: pullgate
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $INSTALLED_SIZE
Depends: libc6 (>= $GLIBC)
Recommends: containerd
Section: admin
Priority: optional
Description: CRI proxy that admits only images with a valid Sigstore signature
 pullgate sits between kubelet and containerd on every node and forwards every
 CRI call, except the image pulls and container creations it checks: an image
 is pulled or run only when a Sigstore signature by an allowed identity
 verifies, fully offline, against a mirrored trust root.
 .
 Point kubelet at /run/pullgate/pullgate.sock with the drop-in in
 /usr/share/doc/pullgate/examples/kubelet/.
EOF
echo /etc/pullgate/config.yaml >"$ROOT/DEBIAN/conffiles"

# Maintainer scripts as dh_installsystemd writes them: deb-systemd-helper for enablement (works
# in an image build without a running systemd) and deb-systemd-invoke for start/stop (honours
# policy-rc.d); only daemon-reload calls systemctl.
cat >"$ROOT/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# Enables (does not start) the socket and service: kubelet uses pullgate only once its drop-in
# is installed, and a node image build has no running systemd. An upgrade restarts a running
# pullgate (try-restart); pullgate.socket keeps kubelet's socket in place meanwhile.
set -e
if [ "$1" = configure ] && [ -z "${DPKG_ROOT:-}" ]; then
  if command -v deb-systemd-helper >/dev/null 2>&1; then
    for unit in pullgate.socket pullgate.service; do
      # was-enabled is true for a new installation, false when the admin disabled the unit.
      if deb-systemd-helper --quiet was-enabled "$unit"; then
        deb-systemd-helper enable "$unit" >/dev/null || true
      else
        deb-systemd-helper update-state "$unit" >/dev/null || true
      fi
    done
  fi
  if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    if [ -n "$2" ] && command -v deb-systemd-invoke >/dev/null 2>&1; then
      deb-systemd-invoke try-restart pullgate.service >/dev/null || true
    fi
  fi
fi
exit 0
EOF
cat >"$ROOT/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# Removing pullgate from a node whose kubelet still points at it stops that node's kubelet
# from reaching containerd: move kubelet back first (remove its drop-in, restart kubelet).
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ] \
  && command -v deb-systemd-invoke >/dev/null 2>&1; then
  deb-systemd-invoke stop pullgate.service pullgate.socket >/dev/null || true
fi
exit 0
EOF
cat >"$ROOT/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# purge: also the trust root, decision state and audit logs.
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = purge ]; then
  if [ -z "${DPKG_ROOT:-}" ] && command -v deb-systemd-helper >/dev/null 2>&1; then
    deb-systemd-helper purge pullgate.socket pullgate.service >/dev/null || true
  fi
  rm -rf "${DPKG_ROOT:-}/var/lib/pullgate" "${DPKG_ROOT:-}/var/log/pullgate"
fi
exit 0
EOF
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) >"$ROOT/DEBIAN/md5sums"

# The debug symbols package, as dh_strip makes it.
install -d -m 0755 "$DBG/usr/share/doc"
ln -s pullgate "$DBG/usr/share/doc/pullgate-dbgsym"
mkdir -p "$DBG/DEBIAN"
cat >"$DBG/DEBIAN/control" <<EOF
Package: pullgate-dbgsym
Source: pullgate
Version: $VERSION
Auto-Built-Package: debug-symbols
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $(du -sk --exclude=DEBIAN "$DBG" | cut -f1)
Depends: pullgate (= $VERSION)
Section: debug
Priority: optional
Description: debug symbols for pullgate
EOF
[ -z "$BUILD_ID" ] || echo "Build-Ids: $BUILD_ID" >>"$DBG/DEBIAN/control"
(cd "$DBG" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) >"$DBG/DEBIAN/md5sums"

mkdir -p "$OUTPUT"
DEB=$OUTPUT/pullgate_${VERSION}_${ARCH}.deb
DDEB=$OUTPUT/pullgate-dbgsym_${VERSION}_${ARCH}.ddeb
dpkg-deb --root-owner-group -Zxz --build "$DBG" "$DDEB" >/dev/null
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
echo "$DDEB"
echo "$DEB"
