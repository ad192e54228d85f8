//! `verify-bundle` and `verify-image-files` end to end on files written by
//! the test stack: exit codes 0 (verified), 1 (rejected), 64 (bad input).

mod support;

use std::path::{Path, PathBuf};

use clap::Parser;
use pullgate::cmd::verify_files::{run_verify_bundle, run_verify_image_files, VerifyBundleArgs, VerifyImageFilesArgs};
use support::sigstore::keys::{KeyAlg, TestKey};
use support::sigstore::{image_digest, Stack, DEFAULT_ISSUER, DEFAULT_SAN};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pullgate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, name: &str, data: impl AsRef<[u8]>) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, data).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Parser)]
struct BundleCli {
    #[command(flatten)]
    args: VerifyBundleArgs,
}

#[derive(Parser)]
struct ImageCli {
    #[command(flatten)]
    args: VerifyImageFilesArgs,
}

fn verify_bundle(argv: &[&str]) -> i32 {
    let cli = BundleCli::try_parse_from(std::iter::once("verify-bundle").chain(argv.iter().copied())).expect("conformance flags parse");
    run_verify_bundle(cli.args)
}

fn verify_image_files(argv: &[&str]) -> i32 {
    match ImageCli::try_parse_from(std::iter::once("verify-image-files").chain(argv.iter().copied())) {
        Ok(cli) => run_verify_image_files(cli.args),
        // As `pullgate` maps clap's errors: a usage error.
        Err(_) => 64,
    }
}

#[test]
fn conformance_protocol_with_digest_and_file() {
    let mut stack = Stack::new();
    let dir = Scratch::new("cli-bundle");
    let root = dir.write("trusted_root.json", stack.trusted_root_json());
    let image = image_digest(1);
    let opts = stack.options();
    let bundle = dir.write("bundle.json", stack.sign_image_v3(&image, &opts).json());
    let digest = image.to_string();
    let ok = [
        "--bundle",
        &bundle,
        "--certificate-identity",
        DEFAULT_SAN,
        "--certificate-oidc-issuer",
        DEFAULT_ISSUER,
        "--trusted-root",
        &root,
        &digest,
    ];
    assert_eq!(verify_bundle(&ok), 0);
    let wrong = [
        "--bundle",
        &bundle,
        "--certificate-identity",
        "someone@example.com",
        "--certificate-oidc-issuer",
        DEFAULT_ISSUER,
        "--trusted-root",
        &root,
        &digest,
    ];
    assert_eq!(verify_bundle(&wrong), 1);
    let other = image_digest(2).to_string();
    let wrong_digest = [
        "--bundle",
        &bundle,
        "--certificate-identity",
        DEFAULT_SAN,
        "--certificate-oidc-issuer",
        DEFAULT_ISSUER,
        "--trusted-root",
        &root,
        &other,
    ];
    assert_eq!(verify_bundle(&wrong_digest), 1);
    // Key-signed bundle, verified with --key; and the key flag is required for it.
    let key = TestKey::generate(KeyAlg::P256);
    let keyed = dir.write("keyed.json", stack.sign_image_v3_with_key(&image, &opts, &key).json());
    let pem = dir.write("key.pub", key.public_pem());
    assert_eq!(verify_bundle(&["--bundle", &keyed, "--key", &pem, "--trusted-root", &root, &digest]), 0);
    assert_eq!(
        verify_bundle(&[
            "--bundle",
            &keyed,
            "--certificate-identity",
            DEFAULT_SAN,
            "--certificate-oidc-issuer",
            DEFAULT_ISSUER,
            "--trusted-root",
            &root,
            &digest
        ]),
        1
    );
    // Unreadable inputs are usage errors, not crashes.
    assert_eq!(verify_bundle(&["--bundle", "/nonexistent", "--key", &pem, "--trusted-root", &root, &digest]), 64);
    assert_eq!(verify_bundle(&["--bundle", &bundle, "--key", &pem, "--trusted-root", "/nonexistent", &digest]), 64);
}

#[test]
fn image_files_bundles_layers_and_policies() {
    let mut stack = Stack::new();
    let dir = Scratch::new("cli-image");
    let root = dir.write("trusted_root.json", stack.trusted_root_json());
    let image = image_digest(3);
    let digest = image.to_string();
    let opts = stack.options();
    let bundle = dir.write("bundle.json", stack.sign_image_v3(&image, &opts).json());
    let legacy = stack.sign_image_legacy(&image, &opts);
    let payload = dir.write("payload.json", &legacy.payload);
    let descriptor = serde_json::json!({
        "mediaType": pullgate::verify::legacy::SIMPLE_SIGNING_MEDIA_TYPE,
        "size": legacy.payload.len(),
        "digest": legacy.layer_digest.as_ref().unwrap().to_string(),
        "annotations": legacy.annotations(),
    });
    let descriptor = dir.write("layer.json", descriptor.to_string());
    let layer = format!("{descriptor}={payload}");
    let signature = dir.write("signature.b64", &legacy.signature);
    let certificate = dir.write("cert.pem", legacy.certificate.as_ref().unwrap());
    let rekor = dir.write("rekor.json", legacy.rekor_bundle.as_ref().unwrap());

    let base = |extra: &[&str]| {
        let mut v: Vec<String> = vec!["--digest".into(), digest.clone(), "--trusted-root".into(), root.clone()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |argv: Vec<String>| verify_image_files(&argv.iter().map(String::as_str).collect::<Vec<_>>());

    let identity = ["--certificate-identity", DEFAULT_SAN, "--certificate-oidc-issuer", DEFAULT_ISSUER];
    for material in [
        vec!["--bundle", &bundle],
        vec!["--signature-layer", &layer],
        vec!["--payload", &payload, "--signature", &signature, "--certificate", &certificate, "--rekor-bundle", &rekor],
    ] {
        let mut argv = material.clone();
        argv.extend(identity);
        assert_eq!(run(base(&argv)), 0, "{material:?}");
        let mut json = argv.clone();
        json.extend(["--output", "json"]);
        assert_eq!(run(base(&json)), 0);
    }
    // Regex identity, issuer regex and a Fulcio claim.
    assert_eq!(
        run(base(&[
            "--bundle",
            &bundle,
            "--certificate-identity-regexp",
            r"https://github\.com/pullgate/.*",
            "--certificate-oidc-issuer-regexp",
            r"https://token\.actions\..*",
            "--certificate-extension",
            "source-repository-ref=refs/heads/main",
            "--certificate-github-workflow-repository",
            "pullgate/demo",
        ])),
        0
    );
    // Rejections: identity, claim, another image.
    assert_eq!(
        run(base(&["--bundle", &bundle, "--certificate-identity", "x@example.com", "--certificate-oidc-issuer", DEFAULT_ISSUER])),
        1
    );
    assert_eq!(
        run(base(&[
            "--bundle",
            &bundle,
            "--certificate-identity",
            DEFAULT_SAN,
            "--certificate-oidc-issuer",
            DEFAULT_ISSUER,
            "--certificate-extension",
            "source-repository-ref=refs/tags/v1"
        ])),
        1
    );
    let mut other = base(&["--bundle", &bundle]);
    other[1] = image_digest(4).to_string();
    other.extend(identity.iter().map(|s| s.to_string()));
    assert_eq!(run(other), 1);
    // Usage errors: no material, both kinds of signer, bad regex, partial identity.
    assert_eq!(run(base(&identity)), 64);
    let pem = dir.write("key.pub", TestKey::generate(KeyAlg::P256).public_pem());
    assert_eq!(
        run(base(&[
            "--bundle",
            &bundle,
            "--key",
            &pem,
            "--certificate-identity",
            DEFAULT_SAN,
            "--certificate-oidc-issuer",
            DEFAULT_ISSUER
        ])),
        64
    );
    assert_eq!(run(base(&["--bundle", &bundle, "--certificate-identity-regexp", "(", "--certificate-oidc-issuer", DEFAULT_ISSUER])), 64);
    assert_eq!(run(base(&["--bundle", &bundle, "--certificate-identity", DEFAULT_SAN])), 64);
    assert!(Path::new(&root).exists());
}
