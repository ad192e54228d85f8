//! The daemon's trust-root handle: freshness over a controlled clock (warning, then fail-closed
//! with the stale message), hot reload while readers keep verifying, refusal of bad roots, and
//! the watcher.

#[path = "support/tuf/mod.rs"]
mod tuf;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use pullgate::trust::freshness::{Freshness, FreshnessPolicy, Limit};
use pullgate::trust::handle::{ReloadError, ReloadOutcome, TrustHandle, TrustUnavailable};
use pullgate::trust::import::{import_tuf, import_unverified, ImportOptions};
use pullgate::trust::state::{StateDir, StateError};
use pullgate::trust::tuf_import::PinnedRoot;
use pullgate::trust::{Clock, ManualClock};
use tuf::{sha256_hex, ts, Repo, DAY};

const T0: &str = "2026-03-01T00:00:00Z";

fn policy() -> FreshnessPolicy {
    FreshnessPolicy { max_age: Duration::from_secs(30 * 86400), warn_before: Duration::from_secs(7 * 86400) }
}

struct Fixture {
    tmp: tempfile::TempDir,
    repo: Repo,
    state: PathBuf,
    clock: Arc<ManualClock>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(&tmp.path().join("repo"), ts(T0));
    let state = tmp.path().join("state");
    Fixture { tmp, repo, state, clock: Arc::new(ManualClock::new(ts(T0))) }
}

impl Fixture {
    fn import_at(&self, now: Timestamp) {
        import_tuf(&self.repo.dir, &PinnedRoot::File(self.repo.root_path(1)), &ImportOptions::new(&self.state, now)).unwrap();
    }

    fn handle(&self) -> TrustHandle {
        TrustHandle::new(StateDir::new(&self.state), policy(), self.clock.clone())
    }

    fn current_dir(&self) -> PathBuf {
        StateDir::new(&self.state).current_dir().unwrap().unwrap()
    }

    /// Points `current` at `generation` behind pullgate's back.
    fn repoint(&self, generation_dir: &Path) {
        let root = StateDir::new(&self.state).path().to_owned();
        let tmp = root.join("current.test-tmp");
        std::os::unix::fs::symlink(generation_dir, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("current")).unwrap();
    }
}

/// Captures what the code logs on the calling test's thread.
///
/// One global subscriber writes into a per-thread buffer. A scoped
/// subscriber (`tracing::subscriber::with_default`) is not enough: while
/// other tests run on other threads without one, tracing may cache a
/// callsite's interest as "never" and the event is lost (a flake seen in CI).
struct Logs;

thread_local! {
    static CAPTURED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with(|c| c.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn take(&self) -> String {
        String::from_utf8(CAPTURED.with(|c| std::mem::take(&mut *c.borrow_mut()))).unwrap()
    }
}

fn with_logs<T>(f: impl FnOnce(&Logs) -> T) -> T {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt().with_writer(|| ThreadWriter).with_ansi(false).finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    let logs = Logs;
    logs.take();
    f(&logs)
}

#[test]
fn nothing_installed_fails_closed() {
    let f = fixture();
    let handle = f.handle();
    assert_eq!(handle.reload().unwrap(), ReloadOutcome::NothingInstalled);
    let e = handle.material().unwrap_err();
    assert_eq!(e, TrustUnavailable::NotInstalled);
    assert_eq!(e.to_string(), "no trust root installed: run `pullgate trust-root import`");
    let facts = handle.facts();
    assert!(!facts.installed && facts.generation == 0 && facts.verdict == "none");
    assert!(facts.last_reload.unwrap().ok);
}

#[test]
fn crossing_warn_before_then_max_age_fails_closed_with_the_stale_message() {
    let mut f = fixture();
    f.import_at(ts(T0));
    let handle = f.handle();
    with_logs(|logs| {
        f.clock.set(ts(T0) + SignedDuration::from_hours(1));
        assert_eq!(handle.reload().unwrap(), ReloadOutcome::Swapped { generation: 1 });
        assert!(logs.take().contains("trust root loaded"));
        let (material, generation) = handle.material().unwrap();
        assert_eq!(generation, 1);
        assert_eq!(material.source_digest(), format!("sha256:{}", sha256_hex(&tuf::production_trusted_root())));
        let facts = handle.facts();
        assert_eq!(facts.verdict, "fresh");
        assert_eq!(facts.stale_at, Some(ts("2026-03-31T00:00:00Z")));
        assert_eq!(facts.seconds_until_stale, Some(30 * 86400 - 3600));

        // One second before the warning window: fresh, nothing logged.
        f.clock.set(ts("2026-03-24T00:00:00Z") - SignedDuration::from_secs(1));
        assert!(matches!(handle.check_freshness(), Some(Freshness::Fresh { .. })));
        assert_eq!(logs.take(), "");

        // Inside warn_before: still usable, a warning, once.
        f.clock.set(ts("2026-03-24T00:00:00Z"));
        assert!(matches!(handle.check_freshness(), Some(Freshness::Expiring { .. })));
        let warning = logs.take();
        assert!(warning.contains("WARN"), "{warning}");
        assert!(warning.contains("trust root expiring in 7 days: import a fresh mirror before 2026-03-31T00:00:00Z"), "{warning}");
        f.clock.advance(SignedDuration::from_hours(1));
        handle.check_freshness();
        assert_eq!(logs.take(), "", "the warning is logged once per transition");
        assert!(handle.material().is_ok());
        assert_eq!(handle.facts().verdict, "expiring");

        // At max_age: every decision fails closed with the stale message.
        f.clock.set(ts("2026-03-31T00:00:00Z"));
        let e = handle.material().unwrap_err();
        assert_eq!(e.to_string(), "trust root stale since 2026-03-31T00:00:00Z: import a fresh mirror");
        assert!(matches!(e, TrustUnavailable::Stale(s) if s.limit == Limit::MaxAge));
        handle.check_freshness();
        let error = logs.take();
        assert!(error.contains("ERROR"), "{error}");
        assert!(error.contains("trust root stale since 2026-03-31T00:00:00Z: import a fresh mirror"), "{error}");
        let facts = handle.facts();
        assert_eq!((facts.verdict, facts.seconds_until_stale), ("stale", Some(0)));
        f.clock.advance(DAY);
        assert_eq!(handle.facts().seconds_until_stale, Some(-86400));

        // A fresh mirror brings it back.
        f.repo.publish();
        let now = f.clock.now();
        f.repo.timestamp_expires = now + DAY;
        f.repo.snapshot_expires = now + DAY;
        f.repo.write_snapshot_and_timestamp();
        f.import_at(now);
        assert_eq!(handle.reload().unwrap(), ReloadOutcome::Swapped { generation: 2 });
        assert_eq!(handle.material().unwrap().1, 2);
        assert!(logs.take().contains("trust root fresh"));
    });
}

#[test]
fn root_or_targets_expiry_ends_freshness_before_max_age() {
    let mut f = fixture();
    f.repo.rotate(|r| r.expires = ts(T0) + 10 * DAY);
    f.repo.targets_expires = ts(T0) + 20 * DAY;
    f.repo.publish();
    f.import_at(ts(T0));
    let handle = f.handle();
    handle.reload().unwrap();
    f.clock.set(ts(T0) + 3 * DAY - SignedDuration::from_secs(1));
    assert!(matches!(handle.freshness(), Some(Freshness::Fresh { stale_at }) if stale_at.limit == Limit::RootExpiry));
    f.clock.set(ts(T0) + 3 * DAY);
    assert!(matches!(handle.freshness(), Some(Freshness::Expiring { .. })));
    f.clock.set(ts(T0) + 10 * DAY);
    let e = handle.material().unwrap_err();
    assert_eq!(e.to_string(), "trust root stale since 2026-03-11T00:00:00Z: import a fresh mirror");
    assert!(matches!(e, TrustUnavailable::Stale(s) if s.limit == Limit::RootExpiry));
}

#[test]
fn hot_reload_swaps_good_roots_and_refuses_bad_ones_while_readers_verify() {
    let mut f = fixture();
    f.import_at(ts(T0));
    let handle = Arc::new(f.handle());
    handle.reload().unwrap();
    let production = format!("sha256:{}", sha256_hex(&tuf::production_trusted_root()));
    let staging = format!("sha256:{}", sha256_hex(&tuf::staging_trusted_root()));

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (handle, stop, reads) = (handle.clone(), stop.clone(), reads.clone());
            let known = [production.clone(), staging.clone()];
            std::thread::spawn(move || {
                let mut last_generation = 0;
                let mut seen = BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    // What an in-flight verification holds: one consistent material.
                    let (material, generation) = handle.material().expect("a good root is always in force");
                    assert!(known.contains(&material.source_digest().to_string()));
                    assert!(generation >= last_generation, "generations only move forward");
                    assert!(!material.trusted_root().tlogs.is_empty());
                    last_generation = generation;
                    seen.insert(material.source_digest().to_string());
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();

    // Rotate between two roots a few times.
    for i in 1..=6u64 {
        let target = if i % 2 == 1 { tuf::staging_trusted_root() } else { tuf::production_trusted_root() };
        f.repo.targets.insert("trusted_root.json".into(), target.clone());
        f.repo.publish();
        f.import_at(ts(T0) + SignedDuration::from_hours(i as i64));
        assert_eq!(handle.reload().unwrap(), ReloadOutcome::Swapped { generation: i + 1 });
        assert_eq!(handle.reload().unwrap(), ReloadOutcome::Unchanged { generation: i + 1 });
        assert_eq!(handle.current().unwrap().material.source_digest(), format!("sha256:{}", sha256_hex(&target)));
        std::thread::sleep(Duration::from_millis(5));
    }
    let good = handle.current().unwrap();
    assert_eq!(good.generation, 7);

    // A generation whose trusted root is not usable, with a manifest that matches it.
    let forged = StateDir::new(&f.state).path().join("generations/00000099");
    tuf::copy_dir(&f.current_dir(), &forged);
    let bad = br#"{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","tlogs":[{"x":1}]}"#;
    std::fs::write(forged.join("trusted_root.json"), bad).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(forged.join("manifest.json")).unwrap()).unwrap();
    manifest["files"]["trusted_root.json"] = serde_json::json!({ "sha256": sha256_hex(bad), "length": bad.len() });
    manifest["generation"] = 99.into();
    std::fs::write(forged.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let good_dir = f.current_dir();
    f.repoint(Path::new("generations/00000099"));
    let e = handle.reload().unwrap_err();
    assert!(matches!(e, ReloadError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("is not usable"), "{e}");

    // A damaged file: the digest no longer matches the manifest.
    let damaged = StateDir::new(&f.state).path().join("generations/00000098");
    tuf::copy_dir(&good_dir, &damaged);
    let mut bytes = std::fs::read(damaged.join("trusted_root.json")).unwrap();
    bytes.push(b'\n');
    std::fs::write(damaged.join("trusted_root.json"), bytes).unwrap();
    f.repoint(&damaged);
    let e = handle.reload().unwrap_err();
    assert!(matches!(e, ReloadError::State(StateError::Corrupt { .. })), "{e}");

    // The root disappears.
    std::fs::remove_file(StateDir::new(&f.state).path().join("current")).unwrap();
    let e = handle.reload().unwrap_err();
    assert!(matches!(e, ReloadError::Disappeared(7)), "{e}");

    // The last good root stayed in force throughout.
    assert!(Arc::ptr_eq(&handle.current().unwrap(), &good));
    assert_eq!(handle.generation(), 7);
    let facts = handle.facts();
    let last = facts.last_reload.unwrap();
    assert!(!last.ok && last.generation == 7 && last.error.unwrap().contains("disappeared"));

    stop.store(true, Ordering::Relaxed);
    let mut seen = BTreeSet::new();
    for r in readers {
        seen.extend(r.join().expect("no reader failed"));
    }
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert!(seen.contains(&production));
}

#[test]
fn reload_refuses_an_older_generation() {
    let mut f = fixture();
    f.import_at(ts(T0));
    let first = f.current_dir();
    f.repo.publish();
    f.import_at(ts(T0) + SignedDuration::from_hours(1));
    let handle = f.handle();
    handle.reload().unwrap();
    f.repoint(&first);
    let e = handle.reload().unwrap_err();
    assert!(matches!(e, ReloadError::Rollback { role: "timestamp", loaded: 2, offered: 1 }), "{e}");
    assert_eq!(handle.current().unwrap().manifest.roles.as_ref().unwrap().timestamp.version, 2);
}

#[test]
fn reload_refuses_a_stale_root_while_the_loaded_one_is_fresher() {
    let f = fixture();
    let file = f.tmp.path().join("trusted_root.json");
    std::fs::write(&file, tuf::production_trusted_root()).unwrap();
    import_unverified(&file, &ImportOptions::new(&f.state, ts(T0))).unwrap();
    let older = f.current_dir();
    std::fs::write(&file, tuf::staging_trusted_root()).unwrap();
    import_unverified(&file, &ImportOptions::new(&f.state, ts(T0) + 20 * DAY)).unwrap();
    let handle = f.handle();
    f.clock.set(ts(T0) + 31 * DAY);
    handle.reload().unwrap();
    f.repoint(&older);
    let e = handle.reload().unwrap_err();
    assert!(matches!(e, ReloadError::Stale(_)), "{e}");
    assert!(e.to_string().contains("trust root stale since 2026-03-31T00:00:00Z"), "{e}");
    assert!(handle.material().is_ok());
}

#[test]
fn facts_report_the_last_import() {
    let mut f = fixture();
    let old = f.tmp.path().join("old");
    f.repo.copy_to(&old);
    f.repo.publish();
    f.import_at(ts(T0));
    let handle = f.handle();
    handle.reload().unwrap();
    assert!(handle.facts().last_import.unwrap().ok);
    import_tuf(&old, &PinnedRoot::File(f.repo.root_path(1)), &ImportOptions::new(&f.state, ts(T0))).unwrap_err();
    assert_eq!(handle.poll().unwrap(), ReloadOutcome::Unchanged { generation: 1 });
    let last = handle.facts().last_import.unwrap();
    assert!(!last.ok && last.error.unwrap().contains("rollback"), "failed import recorded");
    assert_eq!(handle.facts().generation, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_picks_up_a_new_import() {
    let mut f = fixture();
    f.clock.set(ts(T0) + SignedDuration::from_hours(2));
    let handle = Arc::new(f.handle());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(handle.clone().watch(Duration::from_millis(20), async {
        let _ = stopped.await;
    }));
    let wait_for = |generation: u64| {
        let handle = handle.clone();
        async move {
            for _ in 0..250 {
                if handle.generation() == generation {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the watcher did not load generation {generation}");
        }
    };
    f.import_at(ts(T0));
    wait_for(1).await;
    f.repo.targets.insert("trusted_root.json".into(), tuf::staging_trusted_root());
    f.repo.publish();
    f.import_at(ts(T0) + SignedDuration::from_hours(1));
    wait_for(2).await;
    let (material, generation) = handle.material().unwrap();
    assert_eq!(generation, 2);
    assert_eq!(material.source_digest(), format!("sha256:{}", sha256_hex(&tuf::staging_trusted_root())));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watcher).await.unwrap().unwrap();
}
