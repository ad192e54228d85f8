//! The daemon's handle on the installed trust root.
//!
//! [`TrustHandle`] holds the current root (the verification engine's [`TrustMaterial`], built
//! once per root) with its manifest, behind an `Arc` swapped under a short lock: a verification
//! keeps the `Arc` it started with, so a reload never tears or blocks one in flight. Every
//! successful swap bumps the generation, which keys cached decisions. A candidate root is fully
//! validated before the swap; a bad one is refused and the last good root stays in force.
//!
//! Decisions ask [`TrustHandle::material`], which fails closed when no root is installed or the
//! installed one is stale (see [`crate::trust::freshness`]).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use super::clock::Clock;
use super::freshness::{Freshness, FreshnessPolicy, StaleError};
use super::manifest::{Manifest, RootKind};
use super::state::{Fingerprint, LastImport, StateDir, StateError};
use crate::verify::trust::TrustMaterial;

/// A loaded trust root. Immutable; replaced as a whole.
#[derive(Debug)]
pub struct InstalledRoot {
    pub material: Arc<TrustMaterial>,
    pub manifest: Manifest,
    pub fingerprint: Fingerprint,
    /// The handle generation this root was loaded as.
    pub generation: u64,
}

/// Why a decision cannot use the trust root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustUnavailable {
    #[error("no trust root installed: run `pullgate trust-root import`")]
    NotInstalled,
    #[error(transparent)]
    Stale(StaleError),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new root is in force, as this generation.
    Swapped { generation: u64 },
    /// The installed root is the one already loaded.
    Unchanged { generation: u64 },
    /// Nothing is installed and nothing was loaded.
    NothingInstalled,
}

/// Why a candidate root was refused; the last good root stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read the installed trust root: {0}")]
    State(#[from] StateError),
    #[error("installed trust root {dir} is not usable: {reason}")]
    Invalid { dir: String, reason: String },
    #[error("the installed trust root disappeared; keeping the loaded generation {0}")]
    Disappeared(u64),
    #[error("installed trust root is already stale ({0}); keeping the loaded one, which is fresher")]
    Stale(StaleError),
    #[error(
        "installed trust root has {role} version {offered}, older than the loaded version {loaded}: \
         refusing the rollback"
    )]
    Rollback { role: &'static str, loaded: u64, offered: u64 },
}

/// The latest reload attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadRecord {
    pub at: Timestamp,
    pub ok: bool,
    /// The generation in force after the attempt (0: none).
    pub generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the daemon publishes for monitoring.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrustFacts {
    pub installed: bool,
    /// Increases with every successful swap; 0 before the first load.
    pub generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<RootKind>,
    /// `fresh`, `expiring`, `stale` or `none`.
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_at: Option<Timestamp>,
    /// Seconds until stale: zero or negative once stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_until_stale: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imported_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_import: Option<LastImport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ReloadRecord>,
}

/// Which verdict the logs last reported, so each transition is logged once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    Nothing,
    Fresh,
    Expiring,
    Stale,
}

/// The daemon's trust root: current material, generation, reload and freshness.
pub struct TrustHandle {
    state: StateDir,
    policy: FreshnessPolicy,
    clock: Arc<dyn Clock>,
    /// The root in force; `None` until one is loaded. Held only to clone or replace the `Arc`.
    current: RwLock<Option<Arc<InstalledRoot>>>,
    /// Bumped on every swap; cached decisions are keyed by it.
    generation: AtomicU64,
    /// Serializes reloads (SIGHUP and the watcher may race); readers never take it.
    reload_lock: Mutex<()>,
    last_reload: Mutex<Option<ReloadRecord>>,
    last_import: Mutex<Option<LastImport>>,
    reported: Mutex<Reported>,
}

impl fmt::Debug for TrustHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustHandle").field("state", &self.state.path()).field("generation", &self.generation()).finish()
    }
}

impl TrustHandle {
    /// A handle with nothing loaded; call [`Self::reload`] to load the installed root.
    pub fn new(state: StateDir, policy: FreshnessPolicy, clock: Arc<dyn Clock>) -> TrustHandle {
        TrustHandle {
            state,
            policy,
            clock,
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            reload_lock: Mutex::new(()),
            last_reload: Mutex::new(None),
            last_import: Mutex::new(None),
            reported: Mutex::new(Reported::Nothing),
        }
    }

    pub fn policy(&self) -> FreshnessPolicy {
        self.policy
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The loaded root, stale or not (for reporting; decisions use [`Self::material`]).
    pub fn current(&self) -> Option<Arc<InstalledRoot>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The generation in force (0: nothing loaded yet).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The trust material for a decision, or why there is none. Fails closed when stale.
    pub fn material(&self) -> Result<(Arc<TrustMaterial>, u64), TrustUnavailable> {
        let root = self.current().ok_or(TrustUnavailable::NotInstalled)?;
        match self.policy.evaluate(&root.manifest, self.clock.now()).stale_error() {
            Some(stale) => Err(TrustUnavailable::Stale(stale)),
            None => Ok((Arc::clone(&root.material), root.generation)),
        }
    }

    /// The freshness of the loaded root now, or `None` when nothing is loaded.
    pub fn freshness(&self) -> Option<Freshness> {
        self.current().map(|root| self.policy.evaluate(&root.manifest, self.clock.now()))
    }

    /// Loads the installed root if it differs from the loaded one, validating it completely
    /// before swapping. On error the loaded root stays in force.
    pub fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        let _serialized = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.reload_locked();
        let at = self.clock.now();
        let record =
            ReloadRecord { at, ok: result.is_ok(), generation: self.generation(), error: result.as_ref().err().map(|e| e.to_string()) };
        match &result {
            Ok(ReloadOutcome::Swapped { generation }) => {
                let root = self.current().expect("just swapped in");
                let m = &root.manifest;
                tracing::info!(
                    generation,
                    kind = m.kind.as_str(),
                    source = %m.source,
                    installed_generation = m.generation,
                    root_version = m.roles.as_ref().map(|r| r.root.version),
                    targets_version = m.roles.as_ref().map(|r| r.targets.version),
                    trusted_root = %root.material.source_digest(),
                    "trust root loaded"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, generation = self.generation(), "trust root reload refused"),
        }
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(record);
        self.refresh_last_import();
        self.check_freshness();
        result
    }

    /// Re-reads the outcome of the latest import attempt (written by `trust-root import`).
    fn refresh_last_import(&self) {
        if let Ok(last) = self.state.last_import() {
            *self.last_import.lock().unwrap_or_else(|p| p.into_inner()) = last;
        }
    }

    fn reload_locked(&self) -> Result<ReloadOutcome, ReloadError> {
        let loaded = self.current();
        let fingerprint = self.state.fingerprint()?;
        match (&fingerprint, &loaded) {
            (None, None) => return Ok(ReloadOutcome::NothingInstalled),
            (None, Some(root)) => return Err(ReloadError::Disappeared(root.generation)),
            (Some(fp), Some(root)) if *fp == root.fingerprint => return Ok(ReloadOutcome::Unchanged { generation: root.generation }),
            _ => {}
        }
        let Some(files) = self.state.load_current()? else {
            return match loaded {
                Some(root) => Err(ReloadError::Disappeared(root.generation)),
                None => Ok(ReloadOutcome::NothingInstalled),
            };
        };
        if let Some(root) = loaded.as_deref() {
            if root.fingerprint == files.fingerprint {
                return Ok(ReloadOutcome::Unchanged { generation: root.generation });
            }
        }
        let invalid = |reason: String| ReloadError::Invalid { dir: files.dir.display().to_string(), reason };
        let json = std::str::from_utf8(&files.trusted_root).map_err(|e| invalid(e.to_string()))?;
        let material = TrustMaterial::from_json(json).map_err(|e| invalid(e.to_string()))?;

        if let Some(root) = loaded.as_deref() {
            let now = self.clock.now();
            if let Some(stale) = self.policy.evaluate(&files.manifest, now).stale_error() {
                if self.policy.stale_at(&root.manifest).at > stale.since {
                    return Err(ReloadError::Stale(stale));
                }
            }
            check_not_older(&root.manifest, &files.manifest)?;
        }

        let generation = self.generation() + 1;
        let new =
            Arc::new(InstalledRoot { material: Arc::new(material), manifest: files.manifest, fingerprint: files.fingerprint, generation });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(new);
        self.generation.store(generation, Ordering::Release);
        Ok(ReloadOutcome::Swapped { generation })
    }

    /// Evaluates freshness and logs each change of verdict once: a warning when entering the
    /// `warn_before` window, an error when stale.
    pub fn check_freshness(&self) -> Option<Freshness> {
        let freshness = self.freshness();
        let now = self.clock.now();
        let now_reported = match freshness {
            None => Reported::Nothing,
            Some(Freshness::Fresh { .. }) => Reported::Fresh,
            Some(Freshness::Expiring { .. }) => Reported::Expiring,
            Some(Freshness::Stale { .. }) => Reported::Stale,
        };
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if *reported != now_reported {
            match freshness {
                Some(f @ Freshness::Expiring { stale_at }) => tracing::warn!(
                    stale_at = %stale_at.at,
                    limit = stale_at.limit.describe(),
                    "trust root {}: import a fresh mirror before {}",
                    f.verdict(now),
                    stale_at.at
                ),
                Some(f @ Freshness::Stale { limit, .. }) => {
                    tracing::error!(limit = limit.describe(), "{}; enforce-mode decisions fail closed", f.stale_error().expect("stale"))
                }
                Some(Freshness::Fresh { stale_at }) if *reported != Reported::Nothing => {
                    tracing::info!(stale_at = %stale_at.at, "trust root fresh")
                }
                None if *reported != Reported::Nothing => tracing::error!("no trust root loaded"),
                _ => {}
            }
            *reported = now_reported;
        }
        freshness
    }

    /// The facts published for monitoring.
    pub fn facts(&self) -> TrustFacts {
        let now = self.clock.now();
        let root = self.current();
        let freshness = root.as_ref().map(|r| self.policy.evaluate(&r.manifest, now));
        TrustFacts {
            installed: root.is_some(),
            generation: self.generation(),
            kind: root.as_ref().map(|r| r.manifest.kind),
            verdict: match freshness {
                None => "none",
                Some(Freshness::Fresh { .. }) => "fresh",
                Some(Freshness::Expiring { .. }) => "expiring",
                Some(Freshness::Stale { .. }) => "stale",
            },
            stale_at: freshness.map(|f| f.stale_at()),
            seconds_until_stale: freshness.map(|f| f.seconds_until_stale(now)),
            imported_at: root.as_ref().map(|r| r.manifest.imported_at),
            last_import: self.last_import.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            last_reload: self.last_reload.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// One watch step: reload when the installed root changed, and report freshness.
    pub fn poll(&self) -> Result<ReloadOutcome, ReloadError> {
        let changed = match (self.state.fingerprint(), self.current()) {
            (Ok(fp), Some(root)) => fp.as_ref() != Some(&root.fingerprint),
            (Ok(fp), None) => fp.is_some(),
            (Err(_), _) => true,
        };
        if changed {
            return self.reload();
        }
        self.refresh_last_import();
        self.check_freshness();
        Ok(match self.current() {
            Some(root) => ReloadOutcome::Unchanged { generation: root.generation },
            None => ReloadOutcome::NothingInstalled,
        })
    }

    /// Polls the state dir every `interval` until `shutdown` resolves. SIGHUP handling is the
    /// daemon's: it calls [`Self::reload`].
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticks.tick() => {
                    let handle = Arc::clone(&self);
                    // File reads and parsing a new root: keep them off the async workers.
                    let _ = tokio::task::spawn_blocking(move || handle.poll()).await;
                }
            }
        }
    }
}

/// A loaded TUF root is never replaced by one with an older role version, unless the newer
/// import deliberately reset the rollback floors.
fn check_not_older(loaded: &Manifest, candidate: &Manifest) -> Result<(), ReloadError> {
    if candidate.rollback_protection_reset {
        return Ok(());
    }
    let (Some(old), Some(new)) = (&loaded.roles, &candidate.roles) else { return Ok(()) };
    for ((role, o), (_, n)) in old.iter().into_iter().zip(new.iter()) {
        if n.version < o.version {
            return Err(ReloadError::Rollback { role, loaded: o.version, offered: n.version });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::import::{import_unverified, ImportOptions};
    use crate::trust::ManualClock;

    fn installed(now: Timestamp) -> (tempfile::TempDir, TrustHandle) {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("trusted_root.json");
        std::fs::write(&file, sigstore_verify::trust_root::SIGSTORE_PRODUCTION_TRUSTED_ROOT).unwrap();
        import_unverified(&file, &ImportOptions::new(tmp.path().join("state"), now)).unwrap();
        let policy = FreshnessPolicy { max_age: Duration::from_secs(30 * 86400), warn_before: Duration::from_secs(86400) };
        let handle = TrustHandle::new(StateDir::new(tmp.path().join("state")), policy, Arc::new(ManualClock::new(now)));
        assert_eq!(handle.reload().unwrap(), ReloadOutcome::Swapped { generation: 1 });
        (tmp, handle)
    }

    /// Generations are never modified, so the manifest's digest alone did not change when the
    /// installed trusted_root.json was truncated: the watcher saw nothing, and metrics kept
    /// reporting a healthy reload while the next restart would have had no root.
    #[test]
    fn poll_notices_a_truncated_trusted_root_and_keeps_the_loaded_one() {
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let (_tmp, handle) = installed(now);
        let dir = handle.state.current_dir().unwrap().unwrap();
        std::fs::File::create(dir.join("trusted_root.json")).unwrap();

        let e = handle.poll().unwrap_err();
        assert!(matches!(e, ReloadError::State(StateError::Corrupt { .. })), "{e}");
        let facts = handle.facts();
        let last = facts.last_reload.unwrap();
        assert!(!last.ok && last.generation == 1, "{last:?}");
        assert!(last.error.unwrap().contains("damaged"));
        // Decisions go on with the last good root.
        assert_eq!(handle.material().unwrap().1, 1);
        assert_eq!(facts.verdict, "fresh");
    }

    /// `current` overwritten by garbage: refused, the loaded root stays; a re-import (which must
    /// replace the garbage) is picked up by the next poll.
    #[test]
    fn a_reimport_repairs_a_garbage_current_and_is_picked_up() {
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let (tmp, handle) = installed(now);
        let current = handle.state.path().join("current");
        std::fs::remove_file(&current).unwrap();
        std::fs::write(&current, b"\0garbage\xff").unwrap();
        assert!(handle.poll().is_err());
        assert_eq!(handle.material().unwrap().1, 1);

        let file = tmp.path().join("trusted_root.json");
        let mut options = ImportOptions::new(tmp.path().join("state"), now);
        options.reset_rollback_protection = true;
        import_unverified(&file, &options).expect("a re-import replaces a damaged `current`");
        assert_eq!(handle.poll().unwrap(), ReloadOutcome::Swapped { generation: 2 });
        assert!(handle.facts().last_reload.unwrap().ok);
    }
}
