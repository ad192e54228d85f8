//! The trust-root state directory and its crash-safe installation.
//!
//! An import writes a complete generation directory under a staging name, fsyncs it, renames it
//! to its generation number and then atomically replaces the `current` symlink. Until that last
//! rename the previous root is the installed one, whatever happens; after it the new one is. A
//! crash leaves at most an unreferenced directory, which the next import removes. Generations are
//! never modified once written, so a reader that resolved `current` reads one consistent set of
//! files.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::manifest::{FileRecord, Manifest, SIGNING_CONFIG_FILE, TRUSTED_ROOT_FILE, TUF_DIR};

/// Name of the trust-root directory inside the configured state dir.
pub const TRUST_ROOT_DIR: &str = "trust-root";
const CURRENT: &str = "current";
const GENERATIONS: &str = "generations";
const MANIFEST: &str = "manifest.json";
const LOCK: &str = "lock";
const LAST_IMPORT: &str = "last-import.json";
const STAGING_PREFIX: &str = ".staging-";
/// Upper bound for any file pullgate reads back from its own state dir.
const MAX_STATE_FILE: u64 = 8 << 20;

/// A problem with the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The installed root is damaged: a file is missing, altered or unparseable.
    #[error("installed trust root {path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("another `trust-root import` holds {0}; try again when it has finished")]
    Locked(PathBuf),
    /// A simulated crash ([`InstallOptions::interrupt_after`]); nothing was cleaned up.
    #[error("installation interrupted after {0:?} (simulated crash)")]
    Interrupted(InstallStep),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_owned(), source }
}

/// The steps of an installation, for crash tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallStep {
    /// Some files of the staging directory are written, the manifest is not.
    PartialFiles,
    /// The staging directory is complete and fsynced.
    Staged,
    /// The staging directory was renamed to its generation number.
    GenerationNamed,
    /// `current` points at the new generation; old generations not yet pruned.
    Switched,
}

/// Installation knobs; the default is a normal installation.
#[derive(Debug, Clone, Copy, Default)]
pub struct InstallOptions {
    /// Stop right after this step as if the process had been killed (tests only).
    pub interrupt_after: Option<InstallStep>,
}

/// Identifies one installation cheaply: which generation `current` points at, the digest of
/// its manifest, and the size and modification time of the files the daemon loads from it. The
/// daemon polls this to notice a new import, and damage to the installed files: generations
/// are never modified, so a changed stamp means someone truncated or overwrote a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub generation_dir: PathBuf,
    pub manifest_sha256: String,
    pub stamps: Vec<FileStamp>,
}

/// Size and modification time of one state file; `None` when it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub name: &'static str,
    pub stat: Option<(u64, std::time::SystemTime)>,
}

/// Stamps of the files of a generation the daemon reads.
fn stamps(dir: &Path) -> Vec<FileStamp> {
    [MANIFEST, TRUSTED_ROOT_FILE, SIGNING_CONFIG_FILE]
        .into_iter()
        .map(|name| FileStamp { name, stat: fs::metadata(dir.join(name)).ok().and_then(|m| Some((m.len(), m.modified().ok()?))) })
        .collect()
}

/// The installed root as read from disk, every file checked against the manifest.
#[derive(Debug, Clone)]
pub struct InstalledFiles {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub fingerprint: Fingerprint,
    pub trusted_root: Vec<u8>,
    pub signing_config: Option<Vec<u8>>,
}

/// Outcome of the latest import attempt, kept for `status` and monitoring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastImport {
    pub at: Timestamp,
    pub ok: bool,
    pub source: String,
    /// The installed generation on success; the error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Files to install as a new generation. Paths are relative, `/`-separated.
#[derive(Debug, Clone, Default)]
pub struct Staged {
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Held while an import runs; released on drop.
#[derive(Debug)]
pub struct ImportLock {
    _lock: nix::fcntl::Flock<File>,
}

/// `<state_dir>/trust-root`.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The trust-root store inside `state_dir` (the configured `trust_root.state_dir`).
    pub fn new(state_dir: impl AsRef<Path>) -> StateDir {
        StateDir { root: state_dir.as_ref().join(TRUST_ROOT_DIR) }
    }

    /// `<state_dir>/trust-root`.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn generations(&self) -> PathBuf {
        self.root.join(GENERATIONS)
    }

    /// Takes the import lock, creating the directory tree if needed.
    pub fn lock(&self) -> Result<ImportLock, StateError> {
        let generations = self.generations();
        fs::create_dir_all(&generations).map_err(io_err(&generations))?;
        let path = self.root.join(LOCK);
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(ImportLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(StateError::Locked(path)),
            Err((_, errno)) => Err(StateError::Io { path, source: io::Error::from(errno) }),
        }
    }

    /// The generation directory `current` points at, if any.
    pub fn current_dir(&self) -> Result<Option<PathBuf>, StateError> {
        let link = self.root.join(CURRENT);
        match fs::read_link(&link) {
            Ok(target) => Ok(Some(self.root.join(target))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::Io { path: link, source: e }),
        }
    }

    /// Which installation is current, without reading more than its manifest.
    pub fn fingerprint(&self) -> Result<Option<Fingerprint>, StateError> {
        let Some(dir) = self.current_dir()? else { return Ok(None) };
        let path = dir.join(MANIFEST);
        let bytes = read_bounded(&path)?;
        let stamps = stamps(&dir);
        Ok(Some(Fingerprint { generation_dir: dir, manifest_sha256: super::manifest::sha256_hex(&bytes), stamps }))
    }

    /// Reads and checks the installed root. `None` when nothing is installed.
    ///
    /// A concurrent import may prune the generation between resolving `current` and reading it;
    /// that shows as a missing file, so resolve again a few times before calling it damage.
    pub fn load_current(&self) -> Result<Option<InstalledFiles>, StateError> {
        let mut attempts = 0;
        loop {
            let Some(dir) = self.current_dir()? else { return Ok(None) };
            match self.load_generation(&dir) {
                Err(StateError::Io { ref source, .. }) if source.kind() == io::ErrorKind::NotFound && attempts < 3 => {
                    attempts += 1;
                    continue;
                }
                other => return other.map(Some),
            }
        }
    }

    fn load_generation(&self, dir: &Path) -> Result<InstalledFiles, StateError> {
        // Before reading: a change while reading shows as a different stamp at the next poll.
        let stamps = stamps(dir);
        let manifest_path = dir.join(MANIFEST);
        let manifest_bytes = read_bounded(&manifest_path)?;
        let manifest =
            Manifest::from_json(&manifest_bytes).map_err(|reason| StateError::Corrupt { path: manifest_path.clone(), reason })?;
        let read_checked = |name: &str| -> Result<Vec<u8>, StateError> {
            let path = dir.join(name);
            let bytes = read_bounded(&path)?;
            if !manifest.files[name].matches(&bytes) {
                return Err(StateError::Corrupt { path, reason: "content does not match the sha256 in manifest.json".into() });
            }
            Ok(bytes)
        };
        let trusted_root = read_checked(TRUSTED_ROOT_FILE)?;
        let signing_config = match manifest.files.contains_key(SIGNING_CONFIG_FILE) {
            true => Some(read_checked(SIGNING_CONFIG_FILE)?),
            false => None,
        };
        Ok(InstalledFiles {
            dir: dir.to_owned(),
            fingerprint: Fingerprint {
                generation_dir: dir.to_owned(),
                manifest_sha256: super::manifest::sha256_hex(&manifest_bytes),
                stamps,
            },
            manifest,
            trusted_root,
            signing_config,
        })
    }

    /// The verified TUF metadata of an installation (`tuf/...`, keys without the prefix), each
    /// file checked against the manifest. Files the manifest does not list are ignored.
    pub fn load_tuf_metadata(&self, installed: &InstalledFiles) -> Result<BTreeMap<String, Vec<u8>>, StateError> {
        let mut out = BTreeMap::new();
        let prefix = format!("{TUF_DIR}/");
        for (name, record) in &installed.manifest.files {
            let Some(rel) = name.strip_prefix(&prefix) else { continue };
            let path = installed.dir.join(name);
            let bytes = read_bounded(&path)?;
            if !record.matches(&bytes) {
                return Err(StateError::Corrupt { path, reason: "content does not match the sha256 in manifest.json".into() });
            }
            out.insert(rel.to_string(), bytes);
        }
        Ok(out)
    }

    /// The next generation number: above every directory and the current manifest.
    pub fn next_generation(&self, _lock: &ImportLock) -> Result<u64, StateError> {
        let mut max = 0;
        let generations = self.generations();
        for entry in fs::read_dir(&generations).map_err(io_err(&generations))? {
            let entry = entry.map_err(io_err(&generations))?;
            if let Some(n) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                max = max.max(n);
            }
        }
        Ok(max + 1)
    }

    /// Installs `manifest` and `staged` as generation `manifest.generation` and makes it
    /// current. Adds every staged file's digest to the manifest (so the manifest written is the
    /// one returned). Requires the import lock.
    pub fn install(
        &self,
        _lock: &ImportLock,
        mut manifest: Manifest,
        staged: Staged,
        options: InstallOptions,
    ) -> Result<Manifest, StateError> {
        let interrupt = |step| match options.interrupt_after {
            Some(s) if s == step => Err(StateError::Interrupted(step)),
            _ => Ok(()),
        };
        let generations = self.generations();
        let name = format!("{:08}", manifest.generation);
        let staging = generations.join(format!("{STAGING_PREFIX}{name}"));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        fs::create_dir(&staging).map_err(io_err(&staging))?;

        manifest.files.clear();
        for (i, (rel, bytes)) in staged.files.iter().enumerate() {
            if !is_safe_relative(rel) || rel == MANIFEST {
                return Err(StateError::Corrupt { path: staging.join(rel), reason: "unsafe file name".into() });
            }
            let path = staging.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            write_synced(&path, bytes)?;
            manifest.files.insert(rel.clone(), FileRecord::of(bytes));
            if i == 0 {
                interrupt(InstallStep::PartialFiles)?;
            }
        }
        // The manifest goes last: a directory with a manifest is complete.
        write_synced(&staging.join(MANIFEST), &manifest.to_json())?;
        for dir in staged_dirs(&staging, &staged) {
            sync_dir(&dir)?;
        }
        sync_dir(&staging)?;
        interrupt(InstallStep::Staged)?;

        let final_dir = generations.join(&name);
        if final_dir.exists() {
            // Left by a crash between naming and switching: never current, safe to replace.
            fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
        }
        fs::rename(&staging, &final_dir).map_err(io_err(&final_dir))?;
        sync_dir(&generations)?;
        interrupt(InstallStep::GenerationNamed)?;

        // A `current` that is not a symlink (overwritten by garbage) is replaced like any other:
        // failing here would make the damaged state dir impossible to repair by importing.
        let previous = self.current_dir().ok().flatten();
        let tmp_link = self.root.join(format!(".{CURRENT}.tmp"));
        let _ = fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(Path::new(GENERATIONS).join(&name), &tmp_link).map_err(io_err(&tmp_link))?;
        fs::rename(&tmp_link, self.root.join(CURRENT)).map_err(io_err(&self.root))?;
        sync_dir(&self.root)?;
        interrupt(InstallStep::Switched)?;

        self.prune(&final_dir, previous.as_deref());
        Ok(manifest)
    }

    /// Removes every generation but `keep` and `previous`, and leftovers of crashed imports.
    /// Best effort: a leftover costs disk space, never correctness.
    fn prune(&self, keep: &Path, previous: Option<&Path>) {
        let generations = self.generations();
        let Ok(entries) = fs::read_dir(&generations) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == keep || Some(path.as_path()) == previous {
                continue;
            }
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old trust-root generation");
            }
        }
    }

    /// Records the outcome of an import attempt (atomically; best effort).
    pub fn record_last_import(&self, _lock: &ImportLock, record: &LastImport) -> Result<(), StateError> {
        let path = self.root.join(LAST_IMPORT);
        let tmp = self.root.join(format!(".{LAST_IMPORT}.tmp"));
        let mut bytes = serde_json::to_vec_pretty(record).expect("serializable");
        bytes.push(b'\n');
        write_synced(&tmp, &bytes)?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.root)
    }

    /// The latest import attempt, if one was recorded.
    pub fn last_import(&self) -> Result<Option<LastImport>, StateError> {
        let path = self.root.join(LAST_IMPORT);
        match read_bounded(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| StateError::Corrupt { path, reason: e.to_string() }),
            Err(StateError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn staged_dirs(staging: &Path, staged: &Staged) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        staged.files.keys().filter_map(|rel| staging.join(rel).parent().map(Path::to_owned)).filter(|d| d != staging).collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// A relative path without `..`, absolute or empty components.
fn is_safe_relative(rel: &str) -> bool {
    !rel.is_empty() && rel.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, StateError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut bytes = Vec::new();
    file.take(MAX_STATE_FILE + 1).read_to_end(&mut bytes).map_err(io_err(path))?;
    if bytes.len() as u64 > MAX_STATE_FILE {
        return Err(StateError::Corrupt { path: path.to_owned(), reason: format!("larger than {MAX_STATE_FILE} bytes") });
    }
    Ok(bytes)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let mut file = File::create(path).map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}
