//! `<state_dir>/break-glass.json`: written whole and atomically (a temporary file, fsync,
//! rename), mode 0600; read only when it cannot have been written by someone else.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::Windows;

/// A larger file is not one `pullgate break-glass` wrote.
const MAX_FILE: u64 = 1 << 20;

/// Reads the windows; a missing file is no window. Refused: a file or directory that others
/// may write (anyone who can write it could let any image through), or that is too large or
/// malformed.
pub fn read(path: &Path) -> Result<Windows, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Windows::default()),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let meta = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
    let owner = nix::unistd::geteuid().as_raw();
    if meta.uid() != owner && meta.uid() != 0 {
        return Err(format!("{} is owned by uid {}, not by root or pullgate's uid {owner}", path.display(), meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("{} is writable by group or others (mode {:o}): `chmod 600` it", path.display(), meta.mode() & 0o777));
    }
    if meta.len() > MAX_FILE {
        return Err(format!("{} is larger than 1 MiB", path.display()));
    }
    let mut text = String::new();
    file.take(MAX_FILE).read_to_string(&mut text).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let windows: Windows = serde_json::from_str(&text).map_err(|e| format!("{} is not a break-glass file: {e}", path.display()))?;
    if windows.version != 1 {
        return Err(format!("{}: unknown format version {}", path.display(), windows.version));
    }
    Ok(windows)
}

/// Replaces the file with `windows`, atomically; creates the state directory (0700) if needed.
pub fn write(path: &Path, windows: &Windows) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = dir.join(format!(".{}.tmp-{}", super::FILE_NAME, std::process::id()));
    let mut text = serde_json::to_vec_pretty(windows).map_err(std::io::Error::other)?;
    text.push(b'\n');
    let written = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Removes the file (every window ends); whether there was one.
pub fn remove(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::enforce::break_glass::{Operator, Window};

    #[test]
    fn round_trip_is_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/break-glass.json");
        assert_eq!(read(&path).unwrap(), Windows::default(), "no file: no window");
        let w = Windows {
            version: 1,
            windows: vec![Window {
                images: vec![format!("r.test/etcd@sha256:{}", "1".repeat(64))],
                reason: "mirror down".into(),
                opened_at: "2026-01-01T10:00:00Z".parse().unwrap(),
                expires_at: "2026-01-01T11:00:00Z".parse().unwrap(),
                opened_by: Operator { uid: 0, user: "root".into(), sudo_user: None, host: "n".into() },
            }],
        };
        write(&path, &w).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read(&path).unwrap(), w);
        // Writable by others: not trusted.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read(&path).unwrap_err().contains("writable by group or others"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "{\"version\":1,\"windows\":[{\"images\":[]}]}").unwrap();
        assert!(read(&path).unwrap_err().contains("not a break-glass file"));
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
