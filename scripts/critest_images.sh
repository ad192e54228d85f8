#!/usr/bin/env bash
# scripts/critest_images.sh - stand-ins for the images SIG Node's critest (cri-tools v1.36.0)
# pulls, built locally from Debian's busybox-static and small static C programs, pushed to a
# testbed registry under the repository paths critest asks for (the hosts.toml mirror entries
# that scripts/critest.sh writes send registry.k8s.io and gcr.io there).
#
# usage: scripts/critest_images.sh BUILD_DIR REGISTRY_ADDR
#   Run it where REGISTRY_ADDR is reachable (inside the testbed's network namespace).
#   Prints one line per pushed image: "NAME DIGEST" (NAME as critest spells it, with its tag).
#
# What each stand-in reproduces (from cri-tools pkg/validate/*.go at v1.36.0):
#   e2e-test-images/busybox:1.29-2     critest's default container image: sh, top, echo, sleep,
#                                      ls, cat, hostname, pgrep, id, wget... (busybox applets)
#   e2e-test-images/nginx:1.14-2       a web server answering 200 on :80 (busybox httpd)
#   e2e-test-images/httpd:2.4.39-4     the same on :80 (multi-container network spec)
#   k8s-staging-cri-tools/hostnet-nginx-amd64   the same on :12003 (host network specs)
#   e2e-test-images/nonewprivs:1.3     /usr/local/bin/nnp, setuid root, prints "Effective uid: N"
#   pause:3.9                          the testbed's pause program
#   k8s-staging-cri-tools/test-image-{1,2,3}:latest        three different images
#   k8s-staging-cri-tools/test-image-tags:{1,2,3}          one image under three tags
#   k8s-staging-cri-tools/test-image-{latest,tag:test,tag:all}
#   k8s-staging-cri-tools/test-image-user-{uid,username,uid-group,username-group}
#                                      USER 1002 / www-data / 1003:1003 / www-data:www-data
#   k8s-staging-cri-tools/test-image-predefined-group   USER 1000, whose /etc/group lists it in
#                                      group 50000
# Not reproducible: test-image-digest@sha256:9700f9a2... (an upstream digest; the spec that
# pulls it is skipped by name in scripts/critest.sh).
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "[critest-images] error: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: $0 BUILD_DIR REGISTRY_ADDR"
B=$1
ADDR=$2
command -v busybox >/dev/null || die "busybox not found (Debian's busybox-static; scripts/setup.sh installs it)"
BUSYBOX=$(command -v busybox)
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' \
  || ldd "$BUSYBOX" 2>&1 | grep -q 'not a dynamic executable' \
  || die "$BUSYBOX is not static (install busybox-static)"
mkdir -p "$B"
L=$B/layout
rm -rf "$L"

cat >"$B/nnp.c" <<'EOF'
/* stand-in for the e2e nonewprivs image's nnp: installed setuid root; prints the effective
 * uid it ends up with, so critest sees whether no_new_privs kept the setuid bit from working. */
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", (int)geteuid()); return 0; }
EOF
cat >"$B/pause.c" <<'EOF'
/* sleep until SIGTERM/SIGINT, then exit 0 (the sandbox "pause" program) */
#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) { signal(SIGTERM, done); signal(SIGINT, done); for (;;) pause(); }
EOF
cat >"$B/pgrep.c" <<'EOF'
/* pgrep NAME: the pids of processes whose comm is NAME (Debian's busybox-static has no pgrep;
 * critest's execSync-with-timeout spec runs `pgrep sleep`). Exit 1 when there is none. */
#include <dirent.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: pgrep NAME\n"); return 2; }
  DIR *d = opendir("/proc");
  if (!d) return 3;
  struct dirent *e;
  int found = 0;
  while ((e = readdir(d))) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    char path[300], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    if (fgets(comm, sizeof comm, f)) comm[strcspn(comm, "\n")] = 0;
    fclose(f);
    if (strcmp(comm, argv[1]) == 0) { printf("%s\n", e->d_name); found = 1; }
  }
  closedir(d);
  return found ? 0 : 1;
}
EOF
cat >"$B/ipcs.c" <<'EOF'
/* ipcs [-m]: the System V shared memory segments of this IPC namespace, from
 * /proc/sysvipc/shm (Debian's busybox-static has no ipcs; critest's HostIpc specs look for
 * a segment id in its output). */
#include <stdio.h>
int main(void) {
  FILE *f = fopen("/proc/sysvipc/shm", "r");
  char line[512];
  printf("------ Shared Memory Segments --------\nkey        shmid      owner      perms      bytes      nattch\n");
  if (!f) return 0;
  if (!fgets(line, sizeof line, f)) { fclose(f); return 0; }
  while (fgets(line, sizeof line, f)) {
    long key, id, perms, size, cpid, lpid, nattch, uid;
    if (sscanf(line, "%ld %ld %lo %ld %ld %ld %ld %ld", &key, &id, &perms, &size, &cpid, &lpid, &nattch, &uid) == 8)
      printf("0x%08lx %-10ld %-10ld %-10lo %-10ld %ld\n", (unsigned long)key & 0xffffffffUL, id, uid, perms, size, nattch);
  }
  fclose(f);
  return 0;
}
EOF
for p in nnp pause pgrep ipcs; do
  if [ ! -x "$B/$p" ] || [ "$B/$p.c" -nt "$B/$p" ]; then
    gcc -static -Os -s -Wall -o "$B/$p" "$B/$p.c" || die "gcc -static $p.c failed"
  fi
done

# the common root filesystem: busybox and a hard link per applet (as in the busybox image:
# masking one path must not mask sh), pgrep and ipcs, users and groups critest names
common=(--file "$BUSYBOX:/bin/busybox:755" --file "$B/pgrep:/usr/bin/pgrep:755"
  --file "$B/ipcs:/usr/bin/ipcs:755" --dir /tmp:1777 --dir /root:700 --dir /var/www
  --dir /home/user-defined-in-image
  --file "=root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/var/www:/bin/sh
user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
:/etc/passwd:644"
  --file "=root:x:0:
www-data:x:33:
user-defined-in-image:x:1000:
group-defined-in-image:x:50000:user-defined-in-image
nogroup:x:65534:
:/etc/group:644"
  --file "=<html><body>critest stand-in web server</body></html>
:/www/index.html:644")
while read -r applet; do
  [ "$applet" = bin/busybox ] && continue
  case /$applet in /usr/bin/pgrep | /usr/bin/ipcs) continue ;; esac
  common+=(--hardlink "/bin/busybox:/$applet")
done < <("$BUSYBOX" --list-full)

py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3
bo() { "$py" "$SCRIPT_DIR/build_oci.py" image "$L" "$@"; }
# img TAG VARIANT [build_oci args...]: the busybox root plus /etc/critest-variant
img() {
  local tag=$1 variant=$2
  shift 2
  bo "$tag" "${common[@]}" --file "=$variant
:/etc/critest-variant:644" "$@"
}

declare -A DIGEST
DIGEST[busybox]=$(img busybox busybox --cmd '["sh"]')
DIGEST[nginx]=$(img nginx nginx --entrypoint '["httpd","-f","-p","80","-h","/www"]')
DIGEST[httpd]=$(img httpd httpd --entrypoint '["httpd","-f","-p","80","-h","/www"]')
DIGEST[hostnet]=$(img hostnet hostnet-nginx --entrypoint '["httpd","-f","-p","12003","-h","/www"]')
DIGEST[nonewprivs]=$(img nonewprivs nonewprivs --file "$B/nnp:/usr/local/bin/nnp:4755" \
  --entrypoint '["/usr/local/bin/nnp"]')
DIGEST[pause]=$(bo pause --file "$B/pause:/pause:755" --entrypoint '["/pause"]')
for i in 1 2 3; do DIGEST[t$i]=$(img "t$i" "test-image-$i" --cmd '["sh"]'); done
DIGEST[tags]=$(img tags test-image-tags --cmd '["sh"]')
DIGEST[latest]=$(img latest test-image-latest --cmd '["sh"]')
DIGEST[tag]=$(img tag test-image-tag --cmd '["sh"]')
DIGEST[uid]=$(img uid user-uid --user 1002 --cmd '["sh"]')
DIGEST[username]=$(img username user-username --user www-data --cmd '["sh"]')
DIGEST[uidgroup]=$(img uidgroup user-uid-group --user 1003:1003 --cmd '["sh"]')
DIGEST[usernamegroup]=$(img usernamegroup user-username-group --user www-data:www-data --cmd '["sh"]')
DIGEST[predefined]=$(img predefined predefined-group --user 1000 --cmd '["sh"]')

K=k8s-staging-cri-tools
E=e2e-test-images
# LAYOUT_TAG critest-name (registry.k8s.io/... and gcr.io/... both map to the registry root)
PUSHES=(
  "busybox registry.k8s.io/$E/busybox:1.29-2"
  "nginx registry.k8s.io/$E/nginx:1.14-2"
  "httpd registry.k8s.io/$E/httpd:2.4.39-4"
  "nonewprivs registry.k8s.io/$E/nonewprivs:1.3"
  "hostnet gcr.io/$K/hostnet-nginx-amd64:latest"
  "pause registry.k8s.io/pause:3.9"
  "pause gcr.io/pause:3.9"
  "pause k8s.gcr.io/pause:3.9"
  "t1 gcr.io/$K/test-image-1:latest"
  "t2 gcr.io/$K/test-image-2:latest"
  "t3 gcr.io/$K/test-image-3:latest"
  "tags gcr.io/$K/test-image-tags:1"
  "tags gcr.io/$K/test-image-tags:2"
  "tags gcr.io/$K/test-image-tags:3"
  "latest gcr.io/$K/test-image-latest:latest"
  "tag gcr.io/$K/test-image-tag:test"
  "tag gcr.io/$K/test-image-tag:all"
  "uid gcr.io/$K/test-image-user-uid:latest"
  "username gcr.io/$K/test-image-user-username:latest"
  "uidgroup gcr.io/$K/test-image-user-uid-group:latest"
  "usernamegroup gcr.io/$K/test-image-user-username-group:latest"
  "predefined gcr.io/$K/test-image-predefined-group:latest"
)
echo '{"default": [{"type": "insecureAcceptAnything"}]}' >"$B/policy.json"
pids=()
for p in "${PUSHES[@]}"; do
  read -r ltag name <<<"$p"
  path=${name#*/}
  skopeo --policy "$B/policy.json" copy -q --dest-tls-verify=false --dest-no-creds \
    "oci:$L:$ltag" "docker://$ADDR/$path" >"$B/push-${path//[\/:]/-}.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || die "a skopeo push failed (logs: $B/push-*.log)"; done
for p in "${PUSHES[@]}"; do
  read -r ltag name <<<"$p"
  echo "$name ${DIGEST[$ltag]}"
done
