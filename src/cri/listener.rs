//! The unix socket kubelet connects to: bound by pullgate, or handed over by systemd.
//!
//! A socket pullgate bound itself is removed when it stops. One handed over by systemd socket
//! activation (`LISTEN_FDS`) is never removed: it belongs to systemd, which keeps it open across
//! pullgate restarts so kubelet's connection target never disappears.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{umask, Mode};
use nix::unistd::{chown, Gid};

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("another process is already serving {0}; stop it first (pullgate does not take over a live socket)")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot create directory {0}: {1}")]
    CreateDir(PathBuf, io::Error),
    #[error("cannot remove stale socket {0}: {1}")]
    RemoveStale(PathBuf, io::Error),
    #[error("cannot bind {0}: {1}")]
    Bind(PathBuf, io::Error),
    #[error("cannot set owner or mode of {0}: {1}")]
    Permissions(PathBuf, String),
    #[error("systemd passed a socket pullgate cannot use: {0}")]
    Activation(io::Error),
}

/// A bound listener and what pullgate must clean up when it stops.
pub struct Listener {
    pub inner: tokio::net::UnixListener,
    /// Path and inode of the socket file pullgate created; `None` when systemd owns it.
    owned: Option<(PathBuf, u64)>,
}

impl Listener {
    /// The socket systemd passed (socket activation, `LISTEN_FDS`), if any.
    ///
    /// Call this before starting any thread: it removes the `LISTEN_*` variables from the
    /// environment so children do not inherit them.
    pub fn systemd_socket() -> Result<Option<std::os::unix::net::UnixListener>, ListenError> {
        let mut fds = listenfd::ListenFd::from_env();
        if fds.len() == 0 {
            return Ok(None);
        }
        match fds.take_unix_listener(0).map_err(ListenError::Activation)? {
            Some(l) => Ok(Some(l)),
            None => Err(ListenError::Activation(io::Error::other("file descriptor 3 is not a unix stream socket"))),
        }
    }

    /// Serves on the socket systemd passed; it is never removed by pullgate.
    pub fn activated(std: std::os::unix::net::UnixListener) -> Result<Listener, ListenError> {
        std.set_nonblocking(true).map_err(ListenError::Activation)?;
        let inner = tokio::net::UnixListener::from_std(std).map_err(ListenError::Activation)?;
        tracing::info!("using the socket passed by systemd socket activation");
        Ok(Listener { inner, owned: None })
    }

    /// Binds a new socket at `path`, replacing a stale one left by a crash.
    pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<Listener, ListenError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ListenError::CreateDir(dir.to_owned(), e))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                // Live if something accepts a connection; stale (from a crash) if refused.
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => return Err(ListenError::InUse(path.to_owned())),
                    Err(_) => {
                        tracing::info!(socket = %path.display(), "replacing stale socket left by an earlier run");
                        std::fs::remove_file(path).map_err(|e| ListenError::RemoveStale(path.to_owned(), e))?;
                    }
                }
            }
            Ok(_) => return Err(ListenError::NotASocket(path.to_owned())),
            Err(_) => {}
        }
        // Create the socket with no access for group/others, then open it up to `mode`: no
        // window in which anyone else can connect.
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = tokio::net::UnixListener::bind(path);
        umask(old);
        let inner = bound.map_err(|e| ListenError::Bind(path.to_owned(), e))?;
        let perm = |e: String| ListenError::Permissions(path.to_owned(), e);
        if let Some(gid) = group {
            chown(path, None, Some(Gid::from_raw(gid))).map_err(|e| perm(e.to_string()))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| perm(e.to_string()))?;
        let ino = std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0);
        Ok(Listener { inner, owned: Some((path.to_owned(), ino)) })
    }

    /// Removes the socket file if pullgate created it and it is still the same file (a newer
    /// instance may have replaced it).
    pub fn cleanup(self) {
        drop(self.inner);
        if let Some((path, ino)) = self.owned {
            if std::fs::metadata(&path).map(|m| m.ino()).ok() == Some(ino) {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(socket = %path.display(), error = %e, "could not remove socket");
                }
            }
        }
    }
}
