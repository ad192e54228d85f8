//! Offline verification of a mirrored Sigstore TUF repository with `sigstore-tuf`.
//!
//! The mirror is a directory in the published layout (`N.root.json`, `timestamp.json`,
//! `N.snapshot.json`, `N.targets.json`, `targets/<sha256>.<name>`). `sigstore-tuf`'s `Updater`
//! runs the whole TUF client workflow over it with a repository that reads files instead of
//! URLs, so every check is the library's: the root chain from the pinned root (each step signed
//! to threshold by the old and the new root), thresholds for every role, version rollback
//! against the floors of the previous import, snapshot/targets version and hash pins, target
//! length and hashes, and expiry of every role at the import instant.
//!
//! # The pinned root
//! pullgate embeds version 16 of the Sigstore public-good TUF root, as shipped in the
//! `sigstore-trust-root` 0.15.1 crate (`repository/tuf_root.json`, sha256
//! `27aea7e372aa7864065174f0661784fcf8b0e28b1dbfebeada31a0f1fb19167f`; it chains from version 15
//! of the real repository). `sigstore-tuf` embeds no root, and `sigstore-trust-root` exposes its
//! copy only with its networked `tuf` feature. Sigstore's roots 1 to 4 use hex-encoded ECDSA keys,
//! which `sigstore-tuf` cannot read, so a chain must start at version 5 or later anyway.
//! A private instance passes its own root with `--root`.
//!
//! # Rollback floors
//! The previous import's verified metadata (kept in its generation's `tuf/` directory) seeds the
//! client's metadata store, exactly as a TUF client's local cache: the client fast-forwards its
//! root through the cached history and treats the cached timestamp, snapshot and targets
//! versions as floors the mirror must meet. A mirror whose newest root is older than the root
//! already trusted is refused explicitly.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use jiff::Timestamp;
use sigstore_tuf::transport::FetchFuture;
use sigstore_tuf::{MetadataStore, Repository, Updater, UpdaterConfig};

use super::manifest::{sha256_hex, PinnedRootRecord, RoleRecord, TufRoles};
use crate::verify::trust::{TrustMaterial, MAX_TRUSTED_ROOT_BYTES};

/// Version 16 of the Sigstore public-good TUF root (see the module docs for provenance).
pub const EMBEDDED_SIGSTORE_ROOT: &[u8] = include_bytes!("sigstore-public-good.16.root.json");

/// Name of the Sigstore trusted root target.
pub const TRUSTED_ROOT_TARGET: &str = "trusted_root.json";
/// Names under which Sigstore publishes its signing config, newest format first.
pub const SIGNING_CONFIG_TARGETS: [&str; 2] = ["signing_config.v0.2.json", "signing_config.json"];

/// The root a TUF chain starts from.
#[derive(Debug, Clone)]
pub enum PinnedRoot {
    /// [`EMBEDDED_SIGSTORE_ROOT`].
    EmbeddedSigstore,
    /// A `root.json` file (a private Sigstore instance, or a newer public-good root).
    File(PathBuf),
}

impl PinnedRoot {
    fn load(&self) -> Result<(Vec<u8>, String), TufImportError> {
        match self {
            PinnedRoot::EmbeddedSigstore => Ok((EMBEDDED_SIGSTORE_ROOT.to_vec(), "embedded".into())),
            PinnedRoot::File(path) => {
                let bytes = read_limited(path, ROOT_MAX)
                    .map_err(|e| TufImportError::PinnedRoot(format!("{}: {e}", path.display())))?
                    .ok_or_else(|| TufImportError::PinnedRoot(format!("{}: no such file", path.display())))?;
                Ok((bytes, path.display().to_string()))
            }
        }
    }
}

const ROOT_MAX: u64 = 512_000;

/// Why a mirror was refused.
#[derive(Debug, thiserror::Error)]
pub enum TufImportError {
    #[error("pinned root {0}")]
    PinnedRoot(String),
    #[error("mirror {path}: {reason}")]
    Mirror { path: PathBuf, reason: String },
    /// The mirror's newest root is older than the root already trusted (pinned or imported).
    #[error(
        "mirror's newest root is version {mirror}, older than the already trusted root version {trusted}: \
         the mirror is stale or rolled back"
    )]
    StaleMirror { mirror: u64, trusted: u64 },
    /// A check of the TUF workflow failed (signature threshold, rollback, expiry, pins...).
    #[error("TUF verification failed: {}", chain(.0))]
    Tuf(#[source] sigstore_tuf::Error),
    #[error("the mirror's targets do not list {0}")]
    MissingTarget(String),
    #[error("target {name} is not a usable trusted root: {reason}")]
    InvalidTarget { name: String, reason: String },
}

impl TufImportError {
    /// The `sigstore-tuf` error, for callers (and tests) that distinguish the failed check.
    pub fn tuf(&self) -> Option<&sigstore_tuf::Error> {
        match self {
            TufImportError::Tuf(e) => Some(e),
            _ => None,
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// What to verify against.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    /// The instant every expiry is checked at.
    pub now: Timestamp,
    pub pinned_root: PinnedRoot,
    /// Verified metadata of the previous import (store names: `root_history/N.root.json`,
    /// `timestamp.json`, ...), the rollback floors. Empty for a first import.
    pub previous_metadata: BTreeMap<String, Vec<u8>>,
}

/// A verified mirror.
#[derive(Debug, Clone)]
pub struct VerifiedMirror {
    pub roles: TufRoles,
    pub pinned_root: PinnedRootRecord,
    pub trusted_root: Vec<u8>,
    /// `(target name, bytes)` of the signing config, when the mirror publishes one.
    pub signing_config: Option<(String, Vec<u8>)>,
    /// The verified metadata to keep as the next import's rollback floors.
    pub metadata: BTreeMap<String, Vec<u8>>,
}

/// Verifies the mirror in `dir` and extracts its trusted root.
pub fn verify_mirror(dir: &Path, request: &VerifyRequest) -> Result<VerifiedMirror, TufImportError> {
    let mirror_err = |reason: String| TufImportError::Mirror { path: dir.to_owned(), reason };
    let meta = std::fs::metadata(dir).map_err(|e| mirror_err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(mirror_err("not a directory".into()));
    }
    let newest_root = newest_root_version(dir).map_err(|e| mirror_err(e.to_string()))?;
    let Some(newest_root) = newest_root else {
        return Err(mirror_err("no N.root.json: not a TUF repository in the published layout".into()));
    };

    let (pinned_bytes, pinned_source) = request.pinned_root.load()?;
    let store = Arc::new(RecordingStore::default());
    for (name, bytes) in &request.previous_metadata {
        // Targets are re-read from the mirror and checked against the pins; never from a cache.
        if is_floor_metadata(name) {
            store.store(name, bytes).map_err(TufImportError::Tuf)?;
        }
    }
    let mut config = UpdaterConfig::default();
    config.target_max_length = MAX_TRUSTED_ROOT_BYTES as u64;
    // The pinned root must parse and be signed to its own root threshold.
    let updater = Updater::new(DirRepository { dir: dir.to_owned() }, &pinned_bytes)
        .map_err(|e| TufImportError::PinnedRoot(format!("{pinned_source}: {}", chain(&e))))?;
    let pinned_version = updater.trusted().root().version;
    let mut updater = updater.with_config(config).with_store(Arc::clone(&store));

    // The previous import's roots were adopted above: a mirror that does not reach them is stale.
    let trusted_version = updater.trusted().root().version;
    if newest_root < trusted_version {
        return Err(TufImportError::StaleMirror { mirror: newest_root, trusted: trusted_version });
    }

    let now = request.now;
    ready(updater.refresh(now)).map_err(TufImportError::Tuf)?;

    let trusted_root = match ready(updater.get_target(TRUSTED_ROOT_TARGET, now)) {
        Ok(bytes) => bytes,
        Err(sigstore_tuf::Error::TargetNotFound(name)) => return Err(TufImportError::MissingTarget(name)),
        Err(e) => return Err(TufImportError::Tuf(e)),
    };
    check_trusted_root(&trusted_root).map_err(|reason| TufImportError::InvalidTarget { name: TRUSTED_ROOT_TARGET.into(), reason })?;

    let mut signing_config = None;
    for name in SIGNING_CONFIG_TARGETS {
        match ready(updater.get_target(name, now)) {
            Ok(bytes) => {
                let text =
                    std::str::from_utf8(&bytes).map_err(|e| TufImportError::InvalidTarget { name: name.into(), reason: e.to_string() })?;
                sigstore_trust_root::SigningConfig::from_json(text)
                    .map_err(|e| TufImportError::InvalidTarget { name: name.into(), reason: e.to_string() })?;
                signing_config = Some((name.to_string(), bytes));
                break;
            }
            Err(sigstore_tuf::Error::TargetNotFound(_)) => continue,
            Err(e) => return Err(TufImportError::Tuf(e)),
        }
    }

    let metadata = store.verified_metadata();
    let trusted = updater.trusted();
    let record = |name: &str, version: u64, expires: Timestamp| RoleRecord {
        version,
        expires,
        sha256: metadata.get(name).map(|b| sha256_hex(b)).unwrap_or_default(),
    };
    let (Some(timestamp), Some(snapshot), Some(targets)) = (trusted.timestamp(), trusted.snapshot(), trusted.targets_role("targets"))
    else {
        return Err(TufImportError::Tuf(sigstore_tuf::Error::NotRefreshed));
    };
    let roles = TufRoles {
        root: record("root.json", trusted.root().version, trusted.root().expires),
        timestamp: record("timestamp.json", timestamp.version, timestamp.expires),
        snapshot: record("snapshot.json", snapshot.version, snapshot.expires),
        targets: record("targets.json", targets.version, targets.expires),
    };
    Ok(VerifiedMirror {
        roles,
        pinned_root: PinnedRootRecord { source: pinned_source, version: pinned_version, sha256: sha256_hex(&pinned_bytes) },
        trusted_root,
        signing_config,
        metadata,
    })
}

/// Media type prefix of a Sigstore trusted root (`...+json;version=0.1`).
pub const TRUSTED_ROOT_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.trustedroot";

/// Whether `bytes` is a trusted root worth installing: it builds the verification engine's
/// [`TrustMaterial`] (keys and certificates parse, windows are sane), has the Sigstore media
/// type, and has at least one transparency log or certificate authority, without which it
/// verifies nothing.
pub fn check_trusted_root(bytes: &[u8]) -> Result<TrustMaterial, String> {
    let json = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let material = TrustMaterial::from_json(json).map_err(|e| e.to_string())?;
    let root = material.trusted_root();
    if !root.media_type.starts_with(TRUSTED_ROOT_MEDIA_TYPE) {
        return Err(format!("media type {:?} is not {TRUSTED_ROOT_MEDIA_TYPE}", root.media_type));
    }
    if root.tlogs.is_empty() && root.certificate_authorities.is_empty() {
        return Err("no transparency log and no certificate authority: it would verify nothing".into());
    }
    Ok(material)
}

/// Highest N of the `N.root.json` files in `dir`.
fn newest_root_version(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name.strip_suffix(".root.json").and_then(|n| n.parse::<u64>().ok()) {
            newest = newest.max(Some(n));
        }
    }
    Ok(newest)
}

/// Drives a future that never waits: `DirRepository` answers synchronously, so the `Updater`'s
/// async workflow completes in one poll, in or out of a tokio runtime.
fn ready<T>(future: impl Future<Output = sigstore_tuf::Result<T>>) -> sigstore_tuf::Result<T> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(sigstore_tuf::Error::transport("internal: the offline TUF workflow waited for I/O")),
    }
}

/// A TUF repository in a local directory (the published layout).
struct DirRepository {
    dir: PathBuf,
}

impl DirRepository {
    fn read(&self, rel: &str, max_length: u64) -> sigstore_tuf::Result<Option<Vec<u8>>> {
        if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(sigstore_tuf::Error::transport(format!("refusing unsafe path {rel:?}")));
        }
        let path = self.dir.join(rel);
        read_limited(&path, max_length).map_err(|e| sigstore_tuf::Error::transport(format!("{}: {e}", path.display())))
    }
}

impl Repository for DirRepository {
    fn fetch_metadata<'a>(&'a self, name: &'a str, max_length: u64) -> FetchFuture<'a> {
        let result = if name.contains('/') {
            Err(sigstore_tuf::Error::transport(format!("refusing metadata name {name:?}")))
        } else {
            self.read(name, max_length)
        };
        Box::pin(std::future::ready(result))
    }

    fn fetch_target<'a>(&'a self, path: &'a str, max_length: u64) -> FetchFuture<'a> {
        let result = self.read(&format!("targets/{path}"), max_length);
        Box::pin(std::future::ready(result))
    }
}

/// Reads at most `max` bytes; `None` when the file does not exist; an error when it is longer.
fn read_limited(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!("longer than the {max}-byte limit")));
    }
    Ok(Some(bytes))
}

/// The store entries worth keeping for the next import: the root history and the top-level
/// roles under their unversioned names (the client also stores `N.snapshot.json` copies, which
/// would only accumulate).
fn is_floor_metadata(name: &str) -> bool {
    matches!(name, "root.json" | "timestamp.json" | "snapshot.json" | "targets.json")
        || name.strip_prefix("root_history/").and_then(|n| n.strip_suffix(".root.json")).is_some_and(|n| n.parse::<u64>().is_ok())
}

/// The client's metadata store, kept in memory and listed at the end: what it holds after a
/// successful refresh is exactly the verified metadata.
#[derive(Debug, Default)]
struct RecordingStore {
    files: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl RecordingStore {
    fn verified_metadata(&self) -> BTreeMap<String, Vec<u8>> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.iter().filter(|(name, _)| is_floor_metadata(name)).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl MetadataStore for RecordingStore {
    fn load(&self, name: &str) -> sigstore_tuf::Result<Option<Vec<u8>>> {
        Ok(self.files.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned())
    }

    fn store(&self, name: &str, bytes: &[u8]) -> sigstore_tuf::Result<()> {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), bytes.to_vec());
        Ok(())
    }
}
