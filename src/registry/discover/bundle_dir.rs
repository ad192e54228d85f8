//! Step 4: the local bundle directory, `<dir>/sha256-<hex>.json`,
//! `<dir>/sha256-<hex>.sigstore.json` and, when a policy requires attestations,
//! `<dir>/sha256-<hex>.<name>.att.json`.

use super::*;

impl Ctx<'_> {
    pub(super) async fn bundle_files(&self) -> (Outcome, Vec<Material>, Vec<String>) {
        let Some(dir) = self.settings.bundle_dir else {
            return (Outcome::Skipped { reason: "no bundle directory configured".into() }, vec![], vec![]);
        };
        let stem = self.subject.file_stem();
        let mut materials = Vec::new();
        let mut problems = Vec::new();
        let mut names = vec![format!("{stem}.json"), format!("{stem}.sigstore.json")];
        if self.settings.attestations {
            names.extend(attestation_files(dir, &stem, &mut problems).await);
        }
        for name in names {
            let path = dir.join(&name);
            let meta = match tokio::fs::metadata(&path).await {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if !meta.is_file() {
                problems.push(format!("{}: not a regular file", path.display()));
                continue;
            }
            if meta.len() > self.settings.max_blob {
                problems.push(format!(
                    "{}: {} bytes, over the {}-byte limit (registry.max_blob_bytes)",
                    path.display(),
                    meta.len(),
                    self.settings.max_blob
                ));
                continue;
            }
            match tokio::fs::read(&path).await {
                Ok(bytes) if bytes.len() as u64 <= self.settings.max_blob => {
                    let json = Bytes::from(bytes);
                    materials.push(Material::Bundle {
                        subject: self.subject.clone(),
                        media_type: BUNDLE_MEDIA_TYPES[0].into(),
                        digest: Digest::sha256(&json),
                        json,
                        source: Source::BundleFile { path },
                    });
                }
                Ok(_) => problems.push(format!("{}: grew over the size limit while being read", path.display())),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        let outcome = if materials.is_empty() { Outcome::NotFound } else { Outcome::Found { candidates: materials.len() } };
        (outcome, materials, problems)
    }
}

/// Attestation bundle files read per subject from the bundle directory.
const MAX_ATTESTATION_FILES: usize = 16;

/// Names of attestation bundle files for `stem` in `dir`: `<stem>.<name>.att.json`, sorted, at
/// most [`MAX_ATTESTATION_FILES`].
async fn attestation_files(dir: &std::path::Path, stem: &str, problems: &mut Vec<String>) -> Vec<String> {
    let prefix = format!("{stem}.");
    let mut names = Vec::new();
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return names,
        Err(e) => {
            problems.push(format!("{}: {e}", dir.display()));
            return names;
        }
    };
    loop {
        match entries.next_entry().await {
            Ok(Some(entry)) => {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && name.ends_with(".att.json") {
                    names.push(name);
                }
            }
            Ok(None) => break,
            Err(e) => {
                problems.push(format!("{}: {e}", dir.display()));
                break;
            }
        }
    }
    names.sort();
    if names.len() > MAX_ATTESTATION_FILES {
        problems.push(format!(
            "{}: {} attestation files for {stem}; only the first {MAX_ATTESTATION_FILES} were read",
            dir.display(),
            names.len()
        ));
        names.truncate(MAX_ATTESTATION_FILES);
    }
    names
}
