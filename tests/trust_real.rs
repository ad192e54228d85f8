//! The real Sigstore public-good TUF metadata in `shared/tuf/sigstore-public-good` (read in
//! place, never copied): its root chain 1..15, its refusal today as expired, and its real
//! trusted_root.json target. Each test skips with a message when the folder is absent.

#[path = "support/tuf/mod.rs"]
mod tuf;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use base64::Engine as _;
use jiff::Timestamp;
use pullgate::trust::import::{import_tuf, ImportError, ImportOptions};
use pullgate::trust::state::StateDir;
use pullgate::trust::status::key_windows;
use pullgate::trust::tuf_import::{check_trusted_root, PinnedRoot, TufImportError, EMBEDDED_SIGSTORE_ROOT};
use pullgate::verify::TrustMaterial;
use serde_json::Value;
use sigstore_tuf::{Error as TufError, TrustedMetadataSet};
use tuf::{sha256_hex, ts};

const ROOT_V15_EXPIRES: &str = "2026-11-20T13:58:18Z";
const TIMESTAMP_EXPIRES: &str = "2026-08-28T19:25:56Z";

fn shared() -> Option<PathBuf> {
    let dir = tuf::shared_public_good();
    if dir.is_none() {
        eprintln!("skipping: shared/tuf/sigstore-public-good not found (set PULLGATE_SHARED to the shared folder)");
    }
    dir
}

fn root_file(dir: &Path, version: u64) -> Vec<u8> {
    std::fs::read(dir.join(format!("{version}.root.json"))).unwrap()
}

/// Threshold check of `metadata` against `role` of `root` (a parsed root's `signed`), written
/// independently of sigstore-tuf so it also reads roots 1-4, whose keys are hex-encoded
/// uncompressed P-256 points (sigstore-tuf reads only PEM ECDSA keys).
fn signed_to_threshold(metadata: &Value, root: &Value, role: &str) -> (usize, usize) {
    let canonical = sigstore_tuf::canonical_json::to_canonical_bytes(&metadata["signed"]).unwrap();
    let role = &root["roles"][role];
    let authorized: BTreeSet<&str> = role["keyids"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    let mut good = BTreeSet::new();
    for sig in metadata["signatures"].as_array().unwrap() {
        let keyid = sig["keyid"].as_str().unwrap();
        if !authorized.contains(keyid) {
            continue;
        }
        let public = root["keys"][keyid]["keyval"]["public"].as_str().unwrap();
        let point = if public.starts_with("-----BEGIN") {
            let b64: String = public.lines().filter(|l| !l.starts_with("-----")).collect();
            let spki = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
            spki[spki.len() - 65..].to_vec()
        } else {
            hex::decode(public).unwrap()
        };
        let signature = hex::decode(sig["sig"].as_str().unwrap()).unwrap();
        if UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point).verify(&canonical, &signature).is_ok() {
            good.insert(keyid.to_string());
        }
    }
    (good.len(), role["threshold"].as_u64().unwrap() as usize)
}

#[test]
fn real_root_chain_walks_from_1_to_15_and_on_to_the_embedded_16() {
    let Some(dir) = shared() else { return };
    let roots: Vec<Value> = (1..=15).map(|v| serde_json::from_slice(&root_file(&dir, v)).unwrap()).collect();

    // Every step of the chain, checked independently: root N+1 is signed to threshold by root
    // N's root keys and by its own.
    for (i, pair) in roots.windows(2).enumerate() {
        let (old, new) = (&pair[0], &pair[1]);
        assert_eq!(new["signed"]["version"].as_u64(), Some(i as u64 + 2));
        let (found, threshold) = signed_to_threshold(new, &old["signed"], "root");
        assert!(found >= threshold, "root {} not signed by root {}: {found}/{threshold}", i + 2, i + 1);
        let (found, threshold) = signed_to_threshold(new, &new["signed"], "root");
        assert!(found >= threshold, "root {} not self-signed: {found}/{threshold}", i + 2);
    }
    let (found, threshold) = signed_to_threshold(&roots[0], &roots[0]["signed"], "root");
    assert!(found >= threshold, "root 1 self-signature: {found}/{threshold}");

    // The keys really rotated along the way.
    let root_keys = |r: &Value| -> BTreeSet<String> {
        r["signed"]["roles"]["root"]["keyids"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().into()).collect()
    };
    assert!(root_keys(&roots[0]).is_disjoint(&root_keys(&roots[14])), "root keys of v1 and v15 differ entirely");
    let timestamp_thresholds: Vec<u64> = roots.iter().map(|r| r["signed"]["roles"]["timestamp"]["threshold"].as_u64().unwrap()).collect();
    assert_eq!(timestamp_thresholds[0], 3, "v1 had a 3-of-5 timestamp role");
    assert_eq!(timestamp_thresholds[14], 1);

    // sigstore-tuf, the client pullgate imports with: roots 1-4 carry hex-encoded ECDSA keys it
    // cannot read, so it can bootstrap from version 5 at the earliest...
    for v in 1..=4 {
        let e = TrustedMetadataSet::from_root(&root_file(&dir, v)).unwrap_err();
        assert!(matches!(e, TufError::ThresholdNotMet { found: 0, threshold: 3, .. }), "root {v}: {e}");
    }
    // ...and from there walks the real chain to 15.
    let mut trusted = TrustedMetadataSet::from_root(&root_file(&dir, 5)).unwrap();
    for v in 6..=15 {
        trusted.update_root(&root_file(&dir, v)).unwrap_or_else(|e| panic!("root {v}: {e}"));
    }
    assert_eq!(trusted.root().version, 15);
    assert_eq!(trusted.root().expires, ts(ROOT_V15_EXPIRES));
    // The root pullgate embeds is the real successor of 15.
    trusted.update_root(EMBEDDED_SIGSTORE_ROOT).unwrap();
    assert_eq!(trusted.root().version, 16);
}

fn import_real(dir: &Path, pinned: PinnedRoot, now: Timestamp) -> (ImportError, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let e = import_tuf(dir, &pinned, &ImportOptions::new(state.path(), now)).unwrap_err();
    assert!(StateDir::new(state.path()).load_current().unwrap().is_none(), "nothing installed");
    (e, state)
}

#[test]
fn real_mirror_is_refused_today_as_expired() {
    let Some(dir) = shared() else { return };
    let pin = || PinnedRoot::File(dir.join("5.root.json"));

    // Today: the chain reaches root 15, which expired on 2026-11-20.
    let now = Timestamp::now();
    assert!(now > ts(ROOT_V15_EXPIRES), "this test describes a date after {ROOT_V15_EXPIRES}");
    let (e, _state) = import_real(&dir, pin(), now);
    match &e {
        ImportError::Tuf(TufImportError::Tuf(TufError::Expired { role, expires })) => {
            assert_eq!((role.as_str(), *expires), ("root", ts(ROOT_V15_EXPIRES)));
        }
        other => panic!("expected root expiry, got: {other}"),
    }
    assert!(e.to_string().contains("root metadata expired at 2026-11-20T13:58:18Z"), "{e}");

    // Before the root expired but after the timestamp did: the timestamp is refused.
    let (e, _state) = import_real(&dir, pin(), ts("2026-09-01T00:00:00Z"));
    assert!(
        matches!(&e, ImportError::Tuf(TufImportError::Tuf(TufError::Expired { role, expires }))
            if role == "timestamp" && *expires == ts(TIMESTAMP_EXPIRES)),
        "{e}"
    );

    // While everything was current, chain and timestamp verify; the folder has no snapshot.
    let (e, _state) = import_real(&dir, pin(), ts("2026-08-22T00:00:00Z"));
    assert!(e.to_string().contains("165.snapshot.json not found"), "{e}");

    // With pullgate's embedded pin (root 16), this mirror is older than what is trusted.
    let (e, _state) = import_real(&dir, PinnedRoot::EmbeddedSigstore, now);
    assert!(matches!(e, ImportError::Tuf(TufImportError::StaleMirror { mirror: 15, trusted: 16 })), "{e}");
}

#[test]
fn real_trusted_root_target_parses_with_the_verification_engine() {
    let Some(dir) = shared() else { return };
    let mut trusted_root = None;
    let mut signing_config = None;
    for entry in std::fs::read_dir(dir.join("targets")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let (hash, target) = name.split_once('.').unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(sha256_hex(&bytes), hash, "{name}: consistent-snapshot name is its sha256");
        match target {
            "trusted_root.json" => trusted_root = Some(bytes),
            "signing_config.v0.2.json" => signing_config = Some(bytes),
            _ => {}
        }
    }
    let trusted_root = trusted_root.expect("the trusted root target");
    let material = TrustMaterial::from_json(std::str::from_utf8(&trusted_root).unwrap()).unwrap();
    check_trusted_root(&trusted_root).unwrap();
    let root = material.trusted_root();
    assert!(!root.tlogs.is_empty() && !root.certificate_authorities.is_empty() && !root.ctlogs.is_empty());

    let windows = key_windows(&material, ts("2026-08-22T00:00:00Z"));
    let kinds: BTreeSet<&str> = windows.iter().map(|w| w.kind).collect();
    assert_eq!(kinds, BTreeSet::from(["ct-log", "fulcio-ca", "rekor-log", "tsa"]));
    assert!(windows.iter().any(|w| w.kind == "rekor-log" && w.name.contains("rekor.sigstore.dev")));
    assert!(windows.iter().all(|w| w.valid_from.is_some()), "every real key has a validFor start");
    assert!(windows.iter().any(|w| w.valid_until.is_some()), "the real root lists retired keys with an end of validity");

    let signing_config = signing_config.expect("the signing config target");
    sigstore_trust_root::SigningConfig::from_json(std::str::from_utf8(&signing_config).unwrap()).unwrap();
}
