//! Parsed `hosts.toml` files, reused while the file is unchanged.
//!
//! Every pull reads the host configuration again (so edits apply without a restart, as in
//! containerd), but parsing the same TOML on every call is most of that cost. The file is still
//! looked at on every call (one `stat`); its parse is reused only when device, inode, size,
//! modification and change times are all the same as when it was parsed.
//!
//! A file is kept only once its change time is at least [`SETTLE`] older than the moment just
//! before it was read (git's "racily clean" rule): any later write, truncation or rename onto it
//! then sets a change time the kernel cannot have given the kept version, so the stamp differs
//! and the file is parsed again. A freshly written file is parsed on every call until it settles.
//! Errors and missing or empty files are never kept.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{parse_hosts_toml, HostsError, ParsedHosts};

/// How old a file's change time must be before its parse is kept.
pub const SETTLE: Duration = Duration::from_secs(1);

/// At most this many files are kept; a full cache is emptied (a node has a handful of registries).
const CAPACITY: usize = 64;

/// What identifies one version of a file, short of reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file last changed at least `settle` before `now`.
    fn settled(&self, now: SystemTime, settle: Duration) -> bool {
        let Ok(now) = now.duration_since(UNIX_EPOCH) else { return false };
        let Some(limit) = now.checked_sub(settle) else { return false };
        let (secs, nanos) = self.ctime;
        match (u64::try_from(secs), u32::try_from(nanos)) {
            (Ok(secs), Ok(nanos)) if nanos < 1_000_000_000 => Duration::new(secs, nanos) <= limit,
            _ => false,
        }
    }
}

/// Parsed `hosts.toml` files by path.
#[derive(Debug)]
pub struct HostsCache {
    settle: Duration,
    files: Mutex<HashMap<PathBuf, (Stamp, ParsedHosts)>>,
    parses: AtomicU64,
}

impl Default for HostsCache {
    fn default() -> HostsCache {
        HostsCache::with_settle(SETTLE)
    }
}

impl HostsCache {
    /// Tests use a zero settle time to see reuse without waiting.
    pub fn with_settle(settle: Duration) -> HostsCache {
        HostsCache { settle, files: Mutex::new(HashMap::new()), parses: AtomicU64::new(0) }
    }

    /// How many times a file was parsed.
    pub fn parses(&self) -> u64 {
        self.parses.load(Ordering::Relaxed)
    }

    /// `file` (in host directory `dir`) parsed; `None` when it is missing or empty (Docker's
    /// certificate layout applies then).
    pub fn read(&self, file: &Path, dir: &Path) -> Result<Option<ParsedHosts>, HostsError> {
        let stamp = match std::fs::metadata(file) {
            Ok(meta) if meta.is_file() => Some(Stamp::of(&meta)),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(HostsError::Read { file: file.to_owned(), source }),
        };
        if let Some(stamp) = stamp {
            if let Some((kept, parsed)) = self.lock().get(file) {
                if *kept == stamp {
                    return Ok(Some(parsed.clone()));
                }
            }
        }
        // Taken before the read: the parse is kept only if the file had settled by then.
        let now = SystemTime::now();
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(HostsError::Read { file: file.to_owned(), source }),
        };
        if text.is_empty() {
            return Ok(None);
        }
        self.parses.fetch_add(1, Ordering::Relaxed);
        let parsed = parse_hosts_toml(&text, dir, file)?;
        match stamp {
            Some(stamp) if stamp.settled(now, self.settle) => {
                let mut files = self.lock();
                if files.len() >= CAPACITY && !files.contains_key(file) {
                    files.clear();
                }
                files.insert(file.to_owned(), (stamp, parsed.clone()));
            }
            _ => {
                self.lock().remove(file);
            }
        }
        Ok(Some(parsed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Stamp, ParsedHosts)>> {
        // The map holds no invariant a panicking holder could break half-way.
        self.files.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed_at(secs: i64, nanos: i64) -> Stamp {
        Stamp { dev: 1, ino: 2, size: 3, mtime: (secs, nanos), ctime: (secs, nanos) }
    }

    #[test]
    fn a_file_is_kept_only_once_its_change_time_is_settle_old() {
        let now = UNIX_EPOCH + Duration::new(1_000, 500);
        assert!(changed_at(999, 500).settled(now, SETTLE), "exactly one second before");
        assert!(!changed_at(999, 501).settled(now, SETTLE), "less than a second before");
        assert!(!changed_at(1_000, 500).settled(now, SETTLE), "changed now");
        assert!(!changed_at(2_000, 0).settled(now, SETTLE), "changed after now (clock set back)");
        assert!(changed_at(1_000, 500).settled(now, Duration::ZERO));
        assert!(!changed_at(-1, 0).settled(now, SETTLE), "before 1970: never kept");
        assert!(!changed_at(1, 0).settled(UNIX_EPOCH, SETTLE), "a clock at 1970: never kept");
    }
}
