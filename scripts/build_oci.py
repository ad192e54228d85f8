#!/usr/bin/env python3
"""Write tiny, reproducible OCI images into an OCI image layout (no Docker).

usage:
  build_oci.py image LAYOUT TAG [--file SRC:DEST[:MODE]]... [--entrypoint JSON]
                                [--cmd JSON] [--env K=V]... [--label K=V]...
                                [--symlink TARGET:DEST]... [--hardlink TARGET:DEST]...
                                [--dir DEST[:MODE]]...
                                [--user USER] [--workdir DIR] [--arch ARCH] [--os OS]
  build_oci.py index LAYOUT TAG --from TAG [--from TAG]...

`image` writes one single-layer image and tags it TAG in LAYOUT/index.json
(replacing an older entry with the same tag); `index` wraps manifests already
in the layout (by their tags, with their platforms) into an OCI image index
tagged TAG (a multi-arch image). Both print the digest of what they wrote
(manifest or index) on stdout, and nothing else.

--file SRC:DEST[:MODE]  SRC is a host file, or '=text' for literal content;
                        DEST is the absolute path in the image; MODE is octal
                        (default 755 for host files that are executable, else 644).
--symlink TARGET:DEST   a symbolic link DEST -> TARGET.
--hardlink TARGET:DEST  a hard link DEST to the --file TARGET (busybox applets, as the
                        busybox image has them: masking one path does not mask the others).
--dir DEST[:MODE]       an (empty) directory, default mode 755 (1777 for /tmp-like dirs
                        must be given explicitly).
--user USER             the image config's User ("1002", "www-data", "1003:1003").

Reproducible: tar entries have mtime 0, uid/gid 0, no user/group names, and
parent directories are added explicitly; gzip has mtime 0 and no file name;
JSON is written with sorted keys and no spaces; "created" is the epoch.  The
same inputs therefore always give the same digests.

Push with skopeo, which keeps digests for OCI layouts:
  skopeo copy --dest-tls-verify=false oci:LAYOUT:TAG docker://127.0.0.1:5000/repo:TAG
  (add --all for an index.)

Standard library only.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import stat
import sys
import tarfile

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
EPOCH = "1970-01-01T00:00:00Z"

GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
          "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def die(msg):
    print(f"build_oci.py: {msg}", file=sys.stderr)
    sys.exit(2)


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    def __init__(self, path):
        self.path = path
        self.blobs = os.path.join(path, "blobs", "sha256")
        os.makedirs(self.blobs, exist_ok=True)
        self.index_path = os.path.join(path, "index.json")

    def write_blob(self, data):
        digest = sha256_digest(data)
        target = os.path.join(self.blobs, digest.split(":", 1)[1])
        if not os.path.exists(target):
            tmp = target + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        return digest

    def read_blob(self, digest):
        with open(os.path.join(self.blobs, digest.split(":", 1)[1]), "rb") as f:
            return f.read()

    def load_index(self):
        if os.path.exists(self.index_path):
            with open(self.index_path) as f:
                return json.load(f)
        return {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}

    def find_tag(self, tag):
        for desc in self.load_index()["manifests"]:
            if desc.get("annotations", {}).get(REF_NAME) == tag:
                return desc
        return None

    def tag(self, descriptor, tag):
        idx = self.load_index()
        idx["manifests"] = [d for d in idx["manifests"]
                            if d.get("annotations", {}).get(REF_NAME) != tag]
        desc = dict(descriptor)
        desc["annotations"] = dict(desc.get("annotations", {}), **{REF_NAME: tag})
        idx["manifests"].append(desc)
        tmp = self.index_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(canonical_json(idx))
        os.replace(tmp, self.index_path)
        with open(os.path.join(self.path, "oci-layout"), "wb") as f:
            f.write(canonical_json({"imageLayoutVersion": "1.0.0"}))


def parse_file_spec(spec):
    # SRC may contain ':' only when it is literal text ('=...'); split from the right.
    parts = spec.split(":")
    mode = None
    if len(parts) >= 3 and all(c in "01234567" for c in parts[-1]) and parts[-1]:
        mode = int(parts.pop(), 8)
    if len(parts) < 2:
        die(f"bad --file {spec!r}: want SRC:DEST[:MODE]")
    dest = parts.pop()
    src = ":".join(parts)
    if not dest.startswith("/"):
        die(f"bad --file {spec!r}: DEST must be absolute")
    if src.startswith("="):
        data = src[1:].encode()
        if mode is None:
            mode = 0o644
    else:
        try:
            with open(src, "rb") as f:
                data = f.read()
        except OSError as e:
            die(f"cannot read {src}: {e}")
        if mode is None:
            mode = 0o755 if os.stat(src).st_mode & stat.S_IXUSR else 0o644
    return dest, data, mode


def parse_symlink_spec(spec):
    target, sep, dest = spec.rpartition(":")
    if not sep or not target or not dest.startswith("/"):
        die(f"bad --symlink {spec!r}: want TARGET:DEST with an absolute DEST")
    return dest, ("symlink", target), 0o777


def parse_hardlink_spec(spec):
    target, sep, dest = spec.rpartition(":")
    if not sep or not target.startswith("/") or not dest.startswith("/"):
        die(f"bad --hardlink {spec!r}: want TARGET:DEST, both absolute")
    return dest, ("hardlink", target.strip("/")), 0o755


def parse_dir_spec(spec):
    dest, sep, mode = spec.partition(":")
    if not dest.startswith("/"):
        die(f"bad --dir {spec!r}: DEST must be absolute")
    if sep and not (mode and all(c in "01234567" for c in mode)):
        die(f"bad --dir {spec!r}: MODE must be octal")
    return dest.rstrip("/") or "/", ("dir", None), int(mode, 8) if sep else 0o755


def make_layer(files):
    """files: list of (dest, data, mode), where data is bytes (a regular file), ("symlink",
    TARGET) or ("dir", None) -> (uncompressed tar bytes, gzip bytes)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        explicit_dirs = {dest.strip("/"): mode for dest, data, mode in files
                         if isinstance(data, tuple) and data[0] == "dir"}
        dirs_done = set()

        def add_dir(d, mode):
            dirs_done.add(d)
            ti = tarfile.TarInfo(d + "/")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, 0
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            tar.addfile(ti)

        # hard links after every regular file: a link must follow its target in the archive
        def order(f):
            return (isinstance(f[1], tuple) and f[1][0] == "hardlink", f[0])

        for dest, data, mode in sorted(files, key=order):
            parts = dest.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs_done:
                    add_dir(d, explicit_dirs.get(d, 0o755))
            name = "/".join(parts)
            if isinstance(data, tuple):
                if data[0] == "dir":
                    if name not in dirs_done:
                        add_dir(name, mode)
                    continue
                ti = tarfile.TarInfo(name)
                kind = tarfile.LNKTYPE if data[0] == "hardlink" else tarfile.SYMTYPE
                ti.type, ti.linkname, ti.mode, ti.mtime = kind, data[1], mode, 0
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                tar.addfile(ti)
                continue
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), mode, 0
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            tar.addfile(ti, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=gz, mode="wb", mtime=0, compresslevel=6) as g:
        g.write(tar_bytes)
    return tar_bytes, gz.getvalue()


def kv_list(items, what):
    out = {}
    for item in items:
        if "=" not in item:
            die(f"bad {what} {item!r}: want K=V")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def cmd_image(a):
    layout = Layout(a.layout)
    files = [parse_file_spec(s) for s in a.file]
    files += [parse_symlink_spec(s) for s in a.symlink]
    files += [parse_hardlink_spec(s) for s in a.hardlink]
    files += [parse_dir_spec(s) for s in a.dir]
    if not files:
        die("image: at least one --file is needed")
    tar_bytes, gz_bytes = make_layer(files)
    layer_digest = layout.write_blob(gz_bytes)

    env = list(a.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    cfg_inner = {"Env": env}
    if a.entrypoint:
        cfg_inner["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        cfg_inner["Cmd"] = json.loads(a.cmd)
    if a.label:
        cfg_inner["Labels"] = kv_list(a.label, "--label")
    if a.user:
        cfg_inner["User"] = a.user
    if a.workdir:
        cfg_inner["WorkingDir"] = a.workdir
    config = {
        "created": EPOCH,
        "architecture": a.arch,
        "os": a.os,
        "config": cfg_inner,
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar_bytes)]},
        "history": [{"created": EPOCH, "created_by": "pullgate scripts/build_oci.py"}],
    }
    cfg_bytes = canonical_json(config)
    cfg_digest = layout.write_blob(cfg_bytes)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": cfg_digest, "size": len(cfg_bytes)},
        "layers": [{"mediaType": MT_LAYER_GZIP, "digest": layer_digest, "size": len(gz_bytes)}],
    }
    m_bytes = canonical_json(manifest)
    m_digest = layout.write_blob(m_bytes)
    layout.tag({"mediaType": MT_MANIFEST, "digest": m_digest, "size": len(m_bytes),
                "platform": {"architecture": a.arch, "os": a.os}}, a.tag)
    print(m_digest)


def cmd_index(a):
    layout = Layout(a.layout)
    manifests = []
    for tag in a.from_tags:
        desc = layout.find_tag(tag)
        if desc is None:
            die(f"index: no tag {tag!r} in {a.layout}")
        if desc.get("mediaType") != MT_MANIFEST:
            die(f"index: tag {tag!r} is not an image manifest")
        entry = {k: desc[k] for k in ("mediaType", "digest", "size")}
        platform_ = desc.get("platform")
        if platform_ is None:  # fall back to the image config
            m = json.loads(layout.read_blob(desc["digest"]))
            c = json.loads(layout.read_blob(m["config"]["digest"]))
            platform_ = {"architecture": c["architecture"], "os": c["os"]}
        entry["platform"] = platform_
        manifests.append(entry)
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}
    i_bytes = canonical_json(index)
    i_digest = layout.write_blob(i_bytes)
    layout.tag({"mediaType": MT_INDEX, "digest": i_digest, "size": len(i_bytes)}, a.tag)
    print(i_digest)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    im = sub.add_parser("image", help="write a single-layer image manifest")
    im.add_argument("layout")
    im.add_argument("tag")
    im.add_argument("--file", action="append", default=[], metavar="SRC:DEST[:MODE]")
    im.add_argument("--entrypoint", metavar="JSON")
    im.add_argument("--cmd", metavar="JSON")
    im.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="extra environment (a default PATH is added unless given)")
    im.add_argument("--label", action="append", default=[], metavar="K=V")
    im.add_argument("--symlink", action="append", default=[], metavar="TARGET:DEST")
    im.add_argument("--hardlink", action="append", default=[], metavar="TARGET:DEST")
    im.add_argument("--dir", action="append", default=[], metavar="DEST[:MODE]")
    im.add_argument("--user", metavar="USER")
    im.add_argument("--workdir", metavar="DIR")
    im.add_argument("--arch", default=GOARCH.get(platform.machine(), platform.machine()))
    im.add_argument("--os", default="linux")
    im.set_defaults(func=cmd_image)

    ix = sub.add_parser("index", help="wrap tagged manifests into an image index")
    ix.add_argument("layout")
    ix.add_argument("tag")
    ix.add_argument("--from", dest="from_tags", action="append", required=True, metavar="TAG")
    ix.set_defaults(func=cmd_index)

    a = ap.parse_args(argv)
    a.func(a)


if __name__ == "__main__":
    main()
