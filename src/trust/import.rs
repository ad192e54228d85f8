//! `trust-root import`: the operator's trust decision, made once and recorded.
//!
//! Under the state dir's import lock: read the installed root (its verified TUF metadata is the
//! rollback floor), verify the new material, and install it as a new generation. Any failure
//! before the final symlink swap leaves the installed root exactly as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::manifest::{Manifest, RootKind, TufRoles, MANIFEST_FORMAT, SIGNING_CONFIG_FILE, TRUSTED_ROOT_FILE, TUF_DIR};
use super::state::{ImportLock, InstallOptions, InstalledFiles, LastImport, Staged, StateDir, StateError};
use super::tuf_import::{check_trusted_root, verify_mirror, PinnedRoot, TufImportError, VerifyRequest};
use crate::verify::trust::MAX_TRUSTED_ROOT_BYTES;

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The configured state dir (`trust_root.state_dir`); the store is its `trust-root/`.
    pub state_dir: PathBuf,
    /// The import instant: every role's expiry is checked at it and it is recorded.
    pub now: Timestamp,
    /// Ignore the previous import's rollback floors (switching to another TUF instance, or
    /// recovering from a damaged state dir). Recorded in the manifest.
    pub reset_rollback_protection: bool,
    /// Crash simulation for tests; default for real imports.
    pub install: InstallOptions,
}

impl ImportOptions {
    pub fn new(state_dir: impl Into<PathBuf>, now: Timestamp) -> Self {
        ImportOptions { state_dir: state_dir.into(), now, reset_rollback_protection: false, install: InstallOptions::default() }
    }
}

/// A successful import.
#[derive(Debug, Clone)]
pub struct Imported {
    pub manifest: Manifest,
    /// Generation of the root it replaced.
    pub replaced: Option<u64>,
}

/// Why an import was refused. The installed root is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tuf(#[from] TufImportError),
    /// A role version below the installed one.
    #[error(
        "rollback refused: the mirror's {role} role is version {offered}, older than the installed version \
         {installed} (use --reset-rollback-protection only to switch to another TUF instance)"
    )]
    Rollback { role: &'static str, installed: u64, offered: u64 },
    /// The same version of a role with different content than the installed one: a signing key
    /// was misused, or the mirror mixes two repositories.
    #[error("the mirror's {role} role version {version} differs from the installed {role} of the same version")]
    Forked { role: &'static str, version: u64 },
    /// The installed root cannot be read, so its rollback floors are unknown.
    #[error(
        "cannot read the installed trust root for its rollback floors: {0}; \
         re-run with --reset-rollback-protection to replace it"
    )]
    PreviousUnreadable(StateError),
    #[error("{path}: {reason}")]
    Unverified { path: PathBuf, reason: String },
}

/// Imports a mirrored TUF repository from `from`.
pub fn import_tuf(from: &Path, pinned: &PinnedRoot, options: &ImportOptions) -> Result<Imported, ImportError> {
    with_lock(options, &from.display().to_string(), |state, lock, previous| {
        let previous_metadata = match (&previous, options.reset_rollback_protection) {
            (Some(prev), false) => state.load_tuf_metadata(prev).map_err(ImportError::PreviousUnreadable)?,
            _ => BTreeMap::new(),
        };
        let request = VerifyRequest { now: options.now, pinned_root: pinned.clone(), previous_metadata };
        let verified = verify_mirror(from, &request)?;
        if let (Some(prev), false) = (&previous, options.reset_rollback_protection) {
            check_floors(&prev.manifest, &verified.roles)?;
        }

        let fresh_since = match &previous {
            Some(prev)
                if prev.manifest.kind == RootKind::Tuf
                    && prev.manifest.roles.as_ref().map(|r| &r.timestamp) == Some(&verified.roles.timestamp) =>
            {
                prev.manifest.fresh_since
            }
            _ => options.now,
        };
        let mut staged = Staged::default();
        staged.files.insert(TRUSTED_ROOT_FILE.into(), verified.trusted_root);
        if let Some((_, bytes)) = verified.signing_config {
            staged.files.insert(SIGNING_CONFIG_FILE.into(), bytes);
        }
        for (name, bytes) in verified.metadata {
            staged.files.insert(format!("{TUF_DIR}/{name}"), bytes);
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            kind: RootKind::Tuf,
            source: absolute(from),
            generation: state.next_generation(lock)?,
            imported_at: options.now,
            fresh_since,
            pinned_root: Some(verified.pinned_root),
            roles: Some(verified.roles),
            files: BTreeMap::new(),
            rollback_protection_reset: options.reset_rollback_protection,
        };
        Ok(state.install(lock, manifest, staged, options.install)?)
    })
}

/// Imports a bare `trusted_root.json` (a private Sigstore without TUF). The caller has obtained
/// the operator's explicit `--accept-unverified-trusted-root`.
pub fn import_unverified(file: &Path, options: &ImportOptions) -> Result<Imported, ImportError> {
    with_lock(options, &file.display().to_string(), |state, lock, previous| {
        let unverified = |reason: String| ImportError::Unverified { path: file.to_owned(), reason };
        let len = std::fs::metadata(file).map_err(|e| unverified(e.to_string()))?.len();
        if len > MAX_TRUSTED_ROOT_BYTES as u64 {
            return Err(unverified(format!("{len} bytes, over the {MAX_TRUSTED_ROOT_BYTES}-byte limit")));
        }
        let bytes = std::fs::read(file).map_err(|e| unverified(e.to_string()))?;
        check_trusted_root(&bytes).map_err(|e| unverified(format!("not a usable trusted root: {e}")))?;

        let sha = super::manifest::sha256_hex(&bytes);
        let fresh_since = match &previous {
            Some(prev) if prev.manifest.trusted_root_sha256() == sha => prev.manifest.fresh_since,
            _ => options.now,
        };
        let mut staged = Staged::default();
        staged.files.insert(TRUSTED_ROOT_FILE.into(), bytes);
        // Keep the TUF rollback floors for a later TUF import.
        if let (Some(prev), false) = (&previous, options.reset_rollback_protection) {
            let metadata = state.load_tuf_metadata(prev).map_err(ImportError::PreviousUnreadable)?;
            for (name, bytes) in metadata {
                staged.files.insert(format!("{TUF_DIR}/{name}"), bytes);
            }
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            kind: RootKind::UnverifiedTrustedRoot,
            source: absolute(file),
            generation: state.next_generation(lock)?,
            imported_at: options.now,
            fresh_since,
            pinned_root: None,
            roles: None,
            files: BTreeMap::new(),
            rollback_protection_reset: options.reset_rollback_protection,
        };
        Ok(state.install(lock, manifest, staged, options.install)?)
    })
}

/// Runs `f` under the import lock with the installed root, and records the outcome.
fn with_lock(
    options: &ImportOptions,
    source: &str,
    f: impl FnOnce(&StateDir, &ImportLock, Option<InstalledFiles>) -> Result<Manifest, ImportError>,
) -> Result<Imported, ImportError> {
    let state = StateDir::new(&options.state_dir);
    let lock = state.lock()?;
    let outcome = (|| {
        let previous = match state.load_current() {
            Ok(previous) => previous,
            Err(_) if options.reset_rollback_protection => None,
            Err(e) => return Err(ImportError::PreviousUnreadable(e)),
        };
        let replaced = previous.as_ref().map(|p| p.manifest.generation);
        let manifest = f(&state, &lock, previous)?;
        Ok(Imported { manifest, replaced })
    })();
    if matches!(&outcome, Err(ImportError::State(StateError::Interrupted(_)))) {
        // A simulated crash records nothing, like a real one.
        return outcome;
    }
    let record = LastImport {
        at: options.now,
        ok: outcome.is_ok(),
        source: source.to_string(),
        generation: outcome.as_ref().ok().map(|i| i.manifest.generation),
        error: outcome.as_ref().err().map(|e| e.to_string()),
    };
    if let Err(e) = state.record_last_import(&lock, &record) {
        tracing::warn!(error = %e, "cannot record the import outcome");
    }
    outcome
}

/// Belt and braces over the client's own floors: the client drops a cached role whose signing
/// key rotated, the manifest's versions stay.
fn check_floors(previous: &Manifest, offered: &TufRoles) -> Result<(), ImportError> {
    let Some(installed) = previous.roles.as_ref().filter(|_| previous.kind == RootKind::Tuf) else {
        return Ok(());
    };
    for ((role, old), (_, new)) in installed.iter().into_iter().zip(offered.iter()) {
        if new.version < old.version {
            return Err(ImportError::Rollback { role, installed: old.version, offered: new.version });
        }
        if new.version == old.version && new.sha256 != old.sha256 {
            return Err(ImportError::Forked { role, version: new.version });
        }
    }
    Ok(())
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned()).display().to_string()
}
