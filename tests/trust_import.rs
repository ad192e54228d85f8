//! `trust-root import` against TUF repositories built here with test keys: the happy path,
//! rotation, every refusal the TUF workflow owes us, and crash safety of the installation.

#[path = "support/tuf/mod.rs"]
mod tuf;

use std::path::Path;

use jiff::Timestamp;
use pullgate::trust::import::{import_tuf, import_unverified, ImportError, ImportOptions};
use pullgate::trust::manifest::{RootKind, SIGNING_CONFIG_FILE, TRUSTED_ROOT_FILE};
use pullgate::trust::state::{InstallOptions, InstallStep, StateDir, StateError};
use pullgate::trust::tuf_import::{PinnedRoot, TufImportError};
use pullgate::verify::TrustMaterial;
use sigstore_tuf::Error as TufError;
use tuf::{sha256_hex, ts, Repo, RoleSpec, DAY};

const T0: &str = "2026-03-01T00:00:00Z";

struct Fixture {
    _tmp: tempfile::TempDir,
    repo: Repo,
    state: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(&tmp.path().join("repo"), ts(T0));
    let state = tmp.path().join("state");
    Fixture { _tmp: tmp, repo, state }
}

impl Fixture {
    fn pin(&self) -> PinnedRoot {
        PinnedRoot::File(self.repo.root_path(1))
    }

    fn import_at(&self, from: &Path, now: Timestamp) -> Result<pullgate::trust::Imported, ImportError> {
        import_tuf(from, &self.pin(), &ImportOptions::new(&self.state, now))
    }

    fn import(&self) -> Result<pullgate::trust::Imported, ImportError> {
        self.import_at(&self.repo.dir, ts(T0) + jiff::SignedDuration::from_hours(1))
    }

    fn store(&self) -> StateDir {
        StateDir::new(&self.state)
    }

    /// (generation, trusted_root sha256) of what is installed, or None.
    fn installed(&self) -> Option<(u64, String)> {
        self.store().load_current().unwrap().map(|i| (i.manifest.generation, sha256_hex(&i.trusted_root)))
    }
}

fn tuf_error(e: &ImportError) -> &TufError {
    match e {
        ImportError::Tuf(TufImportError::Tuf(t)) => t,
        other => panic!("expected a TUF verification error, got: {other}"),
    }
}

#[test]
fn valid_import_installs_root_and_manifest() {
    let f = fixture();
    let imported = f.import().unwrap();
    let m = &imported.manifest;
    assert_eq!(imported.replaced, None);
    assert_eq!(m.kind, RootKind::Tuf);
    assert_eq!(m.generation, 1);
    assert_eq!(m.imported_at, ts("2026-03-01T01:00:00Z"));
    assert_eq!(m.fresh_since, m.imported_at);
    let roles = m.roles.as_ref().unwrap();
    assert_eq!((roles.root.version, roles.timestamp.version, roles.snapshot.version, roles.targets.version), (1, 1, 1, 1));
    assert_eq!(roles.root.expires, f.repo.root().expires);
    assert_eq!(roles.timestamp.expires, f.repo.timestamp_expires);
    assert_eq!(roles.snapshot.expires, f.repo.snapshot_expires);
    assert_eq!(roles.targets.expires, f.repo.targets_expires);
    assert_eq!(roles.timestamp.sha256, sha256_hex(&std::fs::read(f.repo.dir.join("timestamp.json")).unwrap()));
    let pinned = m.pinned_root.as_ref().unwrap();
    assert_eq!(pinned.version, 1);
    assert_eq!(pinned.sha256, sha256_hex(&std::fs::read(f.repo.root_path(1)).unwrap()));
    assert!(m.source.ends_with("/repo"), "{}", m.source);
    assert_eq!(m.files[TRUSTED_ROOT_FILE].sha256, sha256_hex(&tuf::production_trusted_root()));
    assert!(!m.files.contains_key(SIGNING_CONFIG_FILE));
    assert!(m.files.contains_key("tuf/timestamp.json") && m.files.contains_key("tuf/root.json"));

    // On disk: `current` points at a complete generation whose files match the manifest.
    let store = f.store();
    let link = std::fs::read_link(store.path().join("current")).unwrap();
    assert_eq!(link, Path::new("generations/00000001"));
    let installed = store.load_current().unwrap().unwrap();
    assert_eq!(installed.manifest, *m);
    assert_eq!(installed.trusted_root, tuf::production_trusted_root());
    TrustMaterial::from_json(std::str::from_utf8(&installed.trusted_root).unwrap()).unwrap();
    let manifest_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.path().join("current/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest_json["kind"], "tuf");
    assert_eq!(manifest_json["roles"]["targets"]["expires"], f.repo.targets_expires.to_string());
    let last = store.last_import().unwrap().unwrap();
    assert!(last.ok && last.generation == Some(1), "{last:?}");
}

#[test]
fn signing_config_is_installed_when_published() {
    let mut f = fixture();
    f.repo.targets.insert("signing_config.v0.2.json".into(), sigstore_trust_root::SIGSTORE_PRODUCTION_SIGNING_CONFIG.as_bytes().to_vec());
    f.repo.publish();
    let m = f.import().unwrap().manifest;
    let installed = std::fs::read(f.store().path().join("current").join(SIGNING_CONFIG_FILE)).unwrap();
    assert_eq!(installed, sigstore_trust_root::SIGSTORE_PRODUCTION_SIGNING_CONFIG.as_bytes());
    assert_eq!(m.files[SIGNING_CONFIG_FILE].sha256, sha256_hex(&installed));
}

#[test]
fn root_rotation_across_versions_with_new_keys_and_thresholds() {
    let mut f = fixture();
    f.import().unwrap();
    // v2: a completely new root key set with a higher threshold, new timestamp key.
    f.repo.rotate(|r| {
        r.root = RoleSpec::fresh(4, 3);
        r.timestamp = RoleSpec::fresh(1, 1);
    });
    f.repo.publish();
    let m = f.import().unwrap().manifest;
    assert_eq!(m.roles.as_ref().unwrap().root.version, 2);
    // v3: rotate again (ed25519 and ECDSA mix, threshold 2 of 2) and rotate targets to 3 keys, threshold 1.
    f.repo.rotate(|r| {
        r.root = RoleSpec::fresh(2, 2);
        r.targets = RoleSpec::fresh(3, 1);
        r.snapshot = RoleSpec::fresh(2, 2);
    });
    // v4: only the expiry changes.
    f.repo.rotate(|r| r.expires += 30 * DAY);
    f.repo.publish();
    let m = f.import().unwrap().manifest;
    let roles = m.roles.unwrap();
    assert_eq!(roles.root.version, 4);
    assert_eq!(roles.root.expires, f.repo.root().expires);
    assert_eq!(roles.targets.version, 3);
    assert_eq!(m.generation, 3);

    // A fresh state dir chains v1 -> v4 in one import.
    let other = tempfile::tempdir().unwrap();
    let m = import_tuf(&f.repo.dir, &f.pin(), &ImportOptions::new(other.path(), ts(T0))).unwrap().manifest;
    assert_eq!(m.roles.unwrap().root.version, 4);
    assert_eq!(m.pinned_root.unwrap().version, 1);
}

#[test]
fn rotation_not_signed_by_the_old_root_threshold_is_refused() {
    let mut f = fixture();
    f.import().unwrap();
    let before = f.installed();
    let new_root = RoleSpec::fresh(3, 2);
    let signers = new_root.key_refs();
    // Signed by the new keys only: the old root's 2-of-3 is not met.
    f.repo.rotate_signed_by(|r| r.root = new_root.clone(), &signers);
    f.repo.publish();
    let e = f.import().unwrap_err();
    assert!(matches!(tuf_error(&e), TufError::ThresholdNotMet { role, found: 0, threshold: 2 } if role == "root"), "{e}");
    assert_eq!(f.installed(), before);
}

#[test]
fn rotation_not_signed_by_the_new_root_threshold_is_refused() {
    let mut f = fixture();
    let old = f.repo.root().root.clone();
    let new_root = RoleSpec::fresh(3, 3);
    let mut signers = old.key_refs();
    signers.push(new_root.keys[0].as_ref());
    f.repo.rotate_signed_by(|r| r.root = new_root.clone(), &signers);
    f.repo.publish();
    let e = f.import().unwrap_err();
    assert!(matches!(tuf_error(&e), TufError::ThresholdNotMet { found: 1, threshold: 3, .. }), "{e}");
    assert_eq!(f.installed(), None);
}

#[test]
fn below_threshold_signatures_are_refused_for_every_role() {
    for role in ["timestamp", "snapshot", "targets"] {
        let mut f = fixture();
        f.repo.rotate(|r| {
            r.timestamp = RoleSpec::fresh(2, 2);
            r.snapshot = RoleSpec::fresh(3, 2);
            r.targets = RoleSpec::fresh(3, 3);
        });
        f.repo.publish();
        f.import().unwrap();
        let before = f.installed();
        let threshold = match role {
            "timestamp" => 2,
            "snapshot" => 2,
            _ => 3,
        };
        f.repo.signers.insert(role, threshold - 1);
        f.repo.publish();
        let e = f.import().unwrap_err();
        assert!(
            matches!(tuf_error(&e), TufError::ThresholdNotMet { role: r, found, threshold: t }
                if r == role && *found == threshold - 1 && *t == threshold),
            "{role}: {e}"
        );
        assert!(e.to_string().contains(&format!("signature threshold not met for role {role}")), "{e}");
        assert_eq!(f.installed(), before, "{role}");
    }
}

#[test]
fn signature_by_a_key_of_another_role_does_not_count() {
    let mut f = fixture();
    // Targets signed by the timestamp key: a valid signature, by a key not authorized for targets.
    let ts_key = f.repo.root().timestamp.keys[0].clone();
    f.repo.publish();
    let signed = f.repo.targets_signed();
    std::fs::write(f.repo.dir.join("2.targets.json"), tuf::sign_envelope(&signed, &[ts_key.as_ref()])).unwrap();
    f.repo.pin_hashes = false;
    f.repo.write_snapshot_and_timestamp();
    let e = f.import().unwrap_err();
    assert!(matches!(tuf_error(&e), TufError::ThresholdNotMet { role, found: 0, .. } if role == "targets"), "{e}");
}

#[test]
fn rollback_to_an_older_timestamp_is_refused() {
    let mut f = fixture();
    let old_mirror = f._tmp.path().join("old-mirror");
    f.repo.copy_to(&old_mirror);
    f.repo.publish();
    let imported = f.import().unwrap();
    assert_eq!(imported.manifest.roles.as_ref().unwrap().timestamp.version, 2);
    let before = f.installed();
    let e = f.import_at(&old_mirror, ts(T0)).unwrap_err();
    assert!(matches!(tuf_error(&e), TufError::Rollback { role, trusted: 2, new: 1 } if role == "timestamp"), "{e}");
    assert_eq!(f.installed(), before);
    let last = f.store().last_import().unwrap().unwrap();
    assert!(!last.ok && last.error.as_deref().unwrap().contains("rollback detected for timestamp"), "{last:?}");

    // The operator may drop the floors deliberately; it is recorded.
    let mut options = ImportOptions::new(&f.state, ts(T0));
    options.reset_rollback_protection = true;
    let m = import_tuf(&old_mirror, &f.pin(), &options).unwrap().manifest;
    assert!(m.rollback_protection_reset);
    assert_eq!(m.roles.unwrap().timestamp.version, 1);
}

#[test]
fn rollback_of_snapshot_and_targets_through_newer_parents_is_refused() {
    // A new timestamp pinning an older snapshot.
    let mut f = fixture();
    f.repo.publish();
    f.import().unwrap();
    f.repo.timestamp_version += 1;
    f.repo.snapshot_version = 1;
    f.repo.write_timestamp();
    let e = f.import().unwrap_err();
    assert!(matches!(tuf_error(&e), TufError::Rollback { role, trusted: 2, new: 1 } if role.starts_with("snapshot")), "{e}");

    // A new snapshot (and timestamp) pinning an older targets.
    let mut f = fixture();
    f.repo.publish();
    f.import().unwrap();
    f.repo.snapshot_version += 1;
    f.repo.timestamp_version += 1;
    f.repo.targets_version = 1;
    f.repo.write_snapshot_and_timestamp();
    let e = f.import().unwrap_err();
    assert!(matches!(tuf_error(&e), TufError::Rollback { role, trusted: 2, new: 1 } if role.starts_with("targets.json")), "{e}");
    assert_eq!(f.installed().unwrap().0, 1);
}

#[test]
fn mix_and_match_snapshot_is_refused() {
    // (a) The timestamp pins snapshot v2's hash; the mirror serves another validly signed v2.
    let mut f = fixture();
    f.repo.publish();
    let pinned_ts = std::fs::read(f.repo.dir.join("timestamp.json")).unwrap();
    f.repo.snapshot_expires += DAY;
    f.repo.write_snapshot_and_timestamp();
    std::fs::write(f.repo.dir.join("timestamp.json"), pinned_ts).unwrap();
    let e = f.import().unwrap_err();
    assert!(
        matches!(tuf_error(&e), TufError::IntegrityMismatch(m) if m.contains("snapshot.json: length")
        || m.contains("snapshot.json: sha256")),
        "{e}"
    );

    // (b) Version pins only (as Sigstore publishes): an old snapshot served under the new name.
    let mut f = fixture();
    f.repo.pin_hashes = false;
    f.repo.publish();
    f.repo.publish();
    std::fs::copy(f.repo.dir.join("1.snapshot.json"), f.repo.dir.join("3.snapshot.json")).unwrap();
    let e = f.import().unwrap_err();
    assert!(matches!(tuf_error(&e), TufError::IntegrityMismatch(m) if m == "snapshot version 1 does not match timestamp pin 3"), "{e}");

    // (c) The snapshot pins targets v3; the mirror serves targets v1 under that name.
    let mut f = fixture();
    f.repo.pin_hashes = false;
    f.repo.publish();
    f.repo.publish();
    std::fs::copy(f.repo.dir.join("1.targets.json"), f.repo.dir.join("3.targets.json")).unwrap();
    let e = f.import().unwrap_err();
    assert!(matches!(tuf_error(&e), TufError::IntegrityMismatch(m) if m == "targets.json version 1 does not match snapshot pin 3"), "{e}");
    assert_eq!(f.installed(), None);
}

#[test]
fn target_whose_length_or_hash_differs_is_refused() {
    let f = fixture();
    let path = f.repo.target_path("trusted_root.json");
    let original = std::fs::read(&path).unwrap();

    // Longer than pinned: the read itself is bounded by the pinned length.
    let mut longer = original.clone();
    longer.push(b'\n');
    std::fs::write(&path, &longer).unwrap();
    let e = f.import().unwrap_err();
    assert!(e.to_string().contains(&format!("longer than the {}-byte limit", original.len())), "{e}");

    let shorter = &original[..original.len() - 1];
    std::fs::write(&path, shorter).unwrap();
    let e = f.import().unwrap_err();
    let expected = format!("trusted_root.json: length {} != pinned {}", shorter.len(), original.len());
    assert!(matches!(tuf_error(&e), TufError::IntegrityMismatch(m) if *m == expected), "{e}");

    let mut flipped = original.clone();
    let i = flipped.iter().position(|b| *b == b'x').unwrap();
    flipped[i] = b'y';
    std::fs::write(&path, &flipped).unwrap();
    let e = f.import().unwrap_err();
    assert!(matches!(tuf_error(&e), TufError::IntegrityMismatch(m) if m == "trusted_root.json: sha256 mismatch"), "{e}");

    std::fs::remove_file(&path).unwrap();
    let e = f.import().unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    assert_eq!(f.installed(), None);
}

#[test]
fn expired_roles_are_refused_at_import() {
    let now = ts(T0) + 2 * DAY;
    for role in ["timestamp", "snapshot", "targets", "root"] {
        let mut f = fixture();
        let expired = ts(T0) + DAY;
        let valid = ts(T0) + 30 * DAY;
        f.repo.timestamp_expires = valid;
        f.repo.snapshot_expires = valid;
        f.repo.targets_expires = valid;
        match role {
            "timestamp" => f.repo.timestamp_expires = expired,
            "snapshot" => f.repo.snapshot_expires = expired,
            "targets" => f.repo.targets_expires = expired,
            _ => f.repo.rotate(|r| r.expires = expired),
        }
        f.repo.publish();
        let e = f.import_at(&f.repo.dir, now).unwrap_err();
        assert!(matches!(tuf_error(&e), TufError::Expired { role: r, expires } if r == role && *expires == expired), "{role}: {e}");
        assert!(e.to_string().contains(&format!("{role} metadata expired at 2026-03-02T00:00:00Z")), "{e}");
        assert_eq!(f.installed(), None);
    }
}

#[test]
fn state_dir_whose_root_is_newer_than_the_mirror_refuses_it() {
    let mut f = fixture();
    let v1_mirror = f._tmp.path().join("v1-mirror");
    f.repo.copy_to(&v1_mirror);
    f.repo.rotate(|r| r.root = RoleSpec::fresh(3, 2));
    f.repo.rotate(|r| r.timestamp = RoleSpec::fresh(1, 1));
    f.repo.publish();
    f.import().unwrap();
    let before = f.installed();
    let e = f.import_at(&v1_mirror, ts(T0)).unwrap_err();
    assert!(matches!(e, ImportError::Tuf(TufImportError::StaleMirror { mirror: 1, trusted: 3 })), "{e}");
    assert!(e.to_string().contains("stale or rolled back"), "{e}");
    assert_eq!(f.installed(), before);

    // A copy of the current mirror that lost its newest root is just as stale.
    let mirror_v2 = f._tmp.path().join("v2-mirror");
    f.repo.copy_to(&mirror_v2);
    std::fs::remove_file(mirror_v2.join("3.root.json")).unwrap();
    let e = f.import_at(&mirror_v2, ts(T0)).unwrap_err();
    assert!(matches!(e, ImportError::Tuf(TufImportError::StaleMirror { mirror: 2, trusted: 3 })), "{e}");
    assert_eq!(f.installed(), before);
}

#[test]
fn interrupted_import_never_leaves_a_half_installed_root() {
    for step in [InstallStep::PartialFiles, InstallStep::Staged, InstallStep::GenerationNamed, InstallStep::Switched] {
        let mut f = fixture();
        f.import().unwrap();
        let before = f.installed().unwrap();
        f.repo.targets.insert("trusted_root.json".into(), tuf::staging_trusted_root());
        f.repo.publish();
        let mut options = ImportOptions::new(&f.state, ts(T0) + DAY);
        options.install = InstallOptions { interrupt_after: Some(step) };
        let e = import_tuf(&f.repo.dir, &f.pin(), &options).unwrap_err();
        assert!(matches!(e, ImportError::State(StateError::Interrupted(s)) if s == step), "{e}");

        // Whatever is installed is complete and consistent: the old root, or after the switch
        // the new one.
        let installed = f.installed().unwrap();
        if step == InstallStep::Switched {
            assert_eq!(installed, (2, sha256_hex(&tuf::staging_trusted_root())), "{step:?}");
        } else {
            assert_eq!(installed, before, "{step:?}");
        }
        // A later import completes and cleans up the leftovers.
        f.repo.publish();
        let m = import_tuf(&f.repo.dir, &f.pin(), &ImportOptions::new(&f.state, ts(T0) + DAY)).unwrap().manifest;
        assert_eq!(m.roles.unwrap().timestamp.version, 3);
        let generations: Vec<_> = std::fs::read_dir(f.store().path().join("generations"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(generations.len(), 2, "{step:?}: {generations:?}");
        assert!(!generations.iter().any(|g| g.starts_with('.')), "{generations:?}");
    }

    // A crash during the very first import leaves nothing installed.
    let f = fixture();
    let mut options = ImportOptions::new(&f.state, ts(T0));
    options.install = InstallOptions { interrupt_after: Some(InstallStep::GenerationNamed) };
    import_tuf(&f.repo.dir, &f.pin(), &options).unwrap_err();
    assert_eq!(f.installed(), None);
}

#[test]
fn reimporting_the_same_mirror_keeps_its_freshness_anchor() {
    let mut f = fixture();
    let first = f.import_at(&f.repo.dir, ts(T0)).unwrap().manifest;
    let again = f.import_at(&f.repo.dir, ts(T0) + jiff::SignedDuration::from_hours(20)).unwrap().manifest;
    assert_eq!(again.generation, 2);
    assert_eq!(again.imported_at, ts(T0) + jiff::SignedDuration::from_hours(20));
    assert_eq!(again.fresh_since, first.fresh_since);
    // A new publication (new timestamp) resets it.
    f.repo.publish();
    let newer = f.import_at(&f.repo.dir, ts(T0) + jiff::SignedDuration::from_hours(21)).unwrap().manifest;
    assert_eq!(newer.fresh_since, ts(T0) + jiff::SignedDuration::from_hours(21));
}

#[test]
fn missing_or_unusable_trusted_root_target_is_refused() {
    let mut f = fixture();
    f.repo.targets.clear();
    f.repo.targets.insert("other.json".into(), b"{}".to_vec());
    f.repo.publish();
    let e = f.import().unwrap_err();
    assert!(matches!(e, ImportError::Tuf(TufImportError::MissingTarget(ref n)) if n == "trusted_root.json"), "{e}");

    for (content, reason) in [
        (&br#"{"mediaType": "nope"}"#[..], "media type"),
        (br#"{"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}"#, "verify nothing"),
        (b"[1, 2", "failed to parse JSON"),
    ] {
        f.repo.targets.insert("trusted_root.json".into(), content.to_vec());
        f.repo.publish();
        let e = f.import().unwrap_err();
        assert!(matches!(e, ImportError::Tuf(TufImportError::InvalidTarget { .. })), "{e}");
        assert!(e.to_string().contains(reason), "{e}");
    }
    assert_eq!(f.installed(), None);
}

#[test]
fn not_a_tuf_mirror_or_bad_pinned_root_is_refused() {
    let f = fixture();
    let empty = f._tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = f.import_at(&empty, ts(T0)).unwrap_err();
    assert!(e.to_string().contains("no N.root.json"), "{e}");
    let e = f.import_at(&f._tmp.path().join("absent"), ts(T0)).unwrap_err();
    assert!(matches!(e, ImportError::Tuf(TufImportError::Mirror { .. })), "{e}");

    let bad = f._tmp.path().join("bad-root.json");
    std::fs::write(&bad, b"{not json").unwrap();
    let e = import_tuf(&f.repo.dir, &PinnedRoot::File(bad), &ImportOptions::new(&f.state, ts(T0))).unwrap_err();
    assert!(matches!(e, ImportError::Tuf(TufImportError::PinnedRoot(_))), "{e}");

    // The embedded Sigstore root does not sign test repositories.
    let e = import_tuf(&f.repo.dir, &PinnedRoot::EmbeddedSigstore, &ImportOptions::new(&f.state, ts(T0))).unwrap_err();
    assert!(matches!(e, ImportError::Tuf(TufImportError::StaleMirror { mirror: 1, trusted: 16 })), "{e}");
    assert_eq!(f.installed(), None);
}

#[test]
fn a_running_import_holds_the_lock() {
    let f = fixture();
    let lock = f.store().lock().unwrap();
    let e = f.import().unwrap_err();
    assert!(matches!(e, ImportError::State(StateError::Locked(_))), "{e}");
    drop(lock);
    f.import().unwrap();
}

#[test]
fn unverified_trusted_root_is_recorded_as_such_and_keeps_tuf_floors() {
    let mut f = fixture();
    let old_mirror = f._tmp.path().join("old-mirror");
    f.repo.copy_to(&old_mirror);
    f.repo.publish();
    f.import().unwrap();
    let file = f._tmp.path().join("private-trusted_root.json");
    std::fs::write(&file, tuf::staging_trusted_root()).unwrap();
    let imported = import_unverified(&file, &ImportOptions::new(&f.state, ts(T0) + DAY)).unwrap();
    let m = imported.manifest;
    assert_eq!(imported.replaced, Some(1));
    assert_eq!(m.kind, RootKind::UnverifiedTrustedRoot);
    assert!(m.roles.is_none() && m.pinned_root.is_none());
    assert_eq!(m.fresh_since, ts(T0) + DAY);
    assert_eq!(f.installed().unwrap(), (2, sha256_hex(&tuf::staging_trusted_root())));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(f.store().path().join("current/manifest.json")).unwrap()).unwrap();
    assert_eq!(json["kind"], "unverified-trusted-root");

    // Re-importing the same file later keeps the anchor.
    let again = import_unverified(&file, &ImportOptions::new(&f.state, ts(T0) + 2 * DAY)).unwrap().manifest;
    assert_eq!(again.fresh_since, ts(T0) + DAY);

    // The TUF floors survive it: the older mirror is still refused.
    let e = f.import_at(&old_mirror, ts(T0)).unwrap_err();
    assert!(matches!(tuf_error(&e), TufError::Rollback { role, .. } if role == "timestamp"), "{e}");

    // Garbage is refused before anything is touched.
    std::fs::write(&file, b"{}").unwrap();
    let e = import_unverified(&file, &ImportOptions::new(&f.state, ts(T0) + 2 * DAY)).unwrap_err();
    assert!(e.to_string().contains("not a usable trusted root"), "{e}");
    assert_eq!(f.installed().unwrap().0, 3);
}

#[test]
fn damaged_installed_root_blocks_import_until_reset() {
    let mut f = fixture();
    f.import().unwrap();
    let current = f.store().path().join("current");
    std::fs::write(current.join("tuf/timestamp.json"), b"tampered").unwrap();
    f.repo.publish();
    let e = f.import().unwrap_err();
    assert!(matches!(e, ImportError::PreviousUnreadable(StateError::Corrupt { .. })), "{e}");
    let mut options = ImportOptions::new(&f.state, ts(T0));
    options.reset_rollback_protection = true;
    import_tuf(&f.repo.dir, &f.pin(), &options).unwrap();
}

#[test]
fn store_layout_refuses_tampered_trusted_root() {
    let f = fixture();
    f.import().unwrap();
    let path = f.store().path().join("current").join(TRUSTED_ROOT_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.push(b' ');
    std::fs::write(&path, bytes).unwrap();
    let e = f.store().load_current().unwrap_err();
    assert!(matches!(e, StateError::Corrupt { .. }) && e.to_string().contains("does not match the sha256"), "{e}");
}
