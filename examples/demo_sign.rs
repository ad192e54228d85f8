//! Signs images for the demo with the test Sigstore stack (`tests/support/sigstore`: a
//! Fulcio-like CA, CT log and Rekor-like log made for tests, since the real services cannot run
//! here) and publishes the signatures in the registry where cosign puts them.
//!
//! ```text
//! demo_sign --registry 127.0.0.1:5000 --out DIR REPO@DIGEST...
//! ```
//! Writes DIR/trusted_root.json (to import with `pullgate trust-root import`) and prints the
//! signer identity and issuer a policy must name.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::ExitCode;

use pullgate::registry::Digest;
use support::registry::push::Pusher;
use support::signer::{sign_and_push, Format};
use support::sigstore::{SignOptions, Stack, DEFAULT_ISSUER, DEFAULT_SAN};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take = |flag: &str| -> Option<String> {
        let i = args.iter().position(|a| a == flag)?;
        let v = args.get(i + 1)?.clone();
        args.drain(i..=i + 1);
        Some(v)
    };
    let (Some(registry), Some(out)) = (take("--registry"), take("--out")) else {
        eprintln!("usage: demo_sign --registry HOST:PORT --out DIR REPO@DIGEST...");
        return ExitCode::from(64);
    };
    let out = PathBuf::from(out);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result = rt.block_on(async {
        let addr = registry.parse().map_err(|e| format!("--registry {registry}: {e}"))?;
        let pusher = Pusher::new(addr);
        let mut stack = Stack::new();
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        std::fs::write(out.join("trusted_root.json"), stack.trusted_root_json()).map_err(|e| e.to_string())?;
        let opts = SignOptions::new(stack.now);
        for image in &args {
            let (repo, digest) = image.split_once('@').ok_or_else(|| format!("{image}: want REPO@DIGEST"))?;
            let digest = Digest::parse(digest).map_err(|e| e.to_string())?;
            sign_and_push(&mut stack, &pusher, repo, &digest, &opts, Format::Bundle).await?;
            println!("signed {registry}/{repo}@{digest} (cosign v3 bundle referrer)");
        }
        Ok::<_, String>(())
    });
    match result {
        Ok(()) => {
            println!("identity: {DEFAULT_SAN}\nissuer:   {DEFAULT_ISSUER}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo_sign: {e}");
            ExitCode::FAILURE
        }
    }
}
