//! Every single-field mutation of every valid bundle must be refused, except
//! the edits on the documented allow-list ([`pullgate::verify::ALLOWED_EDITS`]).
//!
//! Cases: every `pass` Sigstore bundle of `../shared/vectors` (skipped with a
//! message when absent) and bundles the test Sigstore stack makes (keyless,
//! keyless with RFC 3161, key-signed, v0.1 chain). Mutations, generated
//! deterministically per field (no randomness between runs):
//!
//! * base64 fields: one bit flipped in the decoded bytes at the first, last
//!   and middle byte and at a few more positions derived from the field path;
//! * numbers (JSON numbers and decimal strings): one step up and one down;
//! * other strings: a character replaced, deleted or inserted at the start,
//!   middle, end and at positions derived from the path (for checkpoint
//!   envelopes, every line is edited);
//! * every object key deleted.
//!
//! `PULLGATE_MUTATION_POSITIONS` sets the number of derived positions per
//! field (default 3); more positions give a longer, fuller run.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use pullgate::verify::{
    parse_bundle, AllowedEdit, ArtifactRef, Digest, ExpectedSigner, Mode, PublicKey, TrustMaterial, VerifiedSignature, ALLOWED_EDITS,
};
use serde_json::Value;
use support::sigstore::keys::{KeyAlg, TestKey};
use support::sigstore::{image_digest, Stack};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn positions() -> usize {
    std::env::var("PULLGATE_MUTATION_POSITIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(3)
}

/// One valid bundle and what it must verify against.
struct Case {
    name: String,
    bundle: Value,
    trust: TrustMaterial,
    artifact: Artifact,
    key: Option<PublicKey>,
}

enum Artifact {
    Bytes(Vec<u8>),
    Digest(Digest),
}

impl Case {
    fn verify(&self, bundle: &Value) -> Option<VerifiedSignature> {
        let parsed = parse_bundle(bundle.to_string().as_bytes()).ok()?;
        let artifact = match &self.artifact {
            Artifact::Bytes(b) => ArtifactRef::Bytes(b),
            Artifact::Digest(d) => ArtifactRef::Digest(d),
        };
        let signer = match &self.key {
            Some(key) => ExpectedSigner::Key(key),
            None => ExpectedSigner::Certificate,
        };
        self.trust.verify_bundle_with_mode(&parsed, artifact, signer, Mode::Fast).ok()
    }
}

fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("PULLGATE_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    dir.join("vectors/cases.json").is_file().then_some(dir)
}

fn production_root_json(shared: &Path) -> String {
    let targets = shared.join("tuf/sigstore-public-good/targets");
    if let Ok(entries) = std::fs::read_dir(&targets) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".trusted_root.json") {
                return std::fs::read_to_string(entry.path()).expect("TUF target");
            }
        }
    }
    sigstore_verify::trust_root::SIGSTORE_PRODUCTION_TRUSTED_ROOT.to_string()
}

fn shared_cases(shared: &Path) -> Vec<Case> {
    let dir = shared.join("vectors");
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for c in cases {
        if c["expect"] != "pass" || c["format"] != "sigstore-bundle" {
            continue;
        }
        let read = |k: &str| c[k].as_str().map(|p| std::fs::read_to_string(dir.join(p)).unwrap());
        let root = read("trusted_root").unwrap_or_else(|| production_root_json(shared));
        let artifact = match c["artifact"].as_str() {
            Some(p) if dir.join(p).is_file() => Artifact::Bytes(std::fs::read(dir.join(p)).unwrap()),
            _ => Artifact::Digest(c["digest"].as_str().unwrap().parse().unwrap()),
        };
        out.push(Case {
            name: c["name"].as_str().unwrap().to_string(),
            bundle: serde_json::from_str(&read("bundle").unwrap()).unwrap(),
            trust: TrustMaterial::from_json(&root).unwrap(),
            artifact,
            key: read("key").map(|pem| PublicKey::from_pem(&pem).unwrap()),
        });
    }
    out
}

fn stack_cases() -> Vec<Case> {
    let mut stack = Stack::new();
    let mut out = Vec::new();
    let image = image_digest(11);
    let opts = stack.options();
    let plain = stack.sign_image_v3(&image, &opts);
    let mut with_tsa = stack.options();
    with_tsa.tsa = true;
    let tsa = stack.sign_image_v3(&image, &with_tsa);
    let key = TestKey::generate(KeyAlg::P256);
    let keyed = stack.sign_image_v3_with_key(&image, &opts, &key);
    let mut chain = plain.bundle.clone();
    let leaf = chain["verificationMaterial"]["certificate"]["rawBytes"].clone();
    let material = chain["verificationMaterial"].as_object_mut().unwrap();
    material.remove("certificate");
    material.insert(
        "x509CertificateChain".into(),
        serde_json::json!({"certificates": [
            {"rawBytes": leaf},
            {"rawBytes": B64.encode(&stack.fulcio_intermediate.der)},
        ]}),
    );
    chain["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.1".into();
    for (name, bundle, key) in [
        ("stack-v3", plain.bundle, None),
        ("stack-v3-tsa", tsa.bundle, None),
        ("stack-v3-key", keyed.bundle, Some(PublicKey::from_pem(&key.public_pem()).unwrap())),
        ("stack-v0.1-chain", chain, None),
    ] {
        out.push(Case { name: name.into(), bundle, trust: stack.trust(), artifact: Artifact::Digest(image.clone()), key });
    }
    out
}

/// A JSON path, as keys and array indices.
type JsonPath = Vec<String>;

fn walk(v: &Value, path: &mut JsonPath, leaves: &mut Vec<JsonPath>, keys: &mut Vec<JsonPath>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                path.push(k.clone());
                keys.push(path.clone());
                walk(child, path, leaves, keys);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(i.to_string());
                walk(child, path, leaves, keys);
                path.pop();
            }
        }
        Value::String(_) | Value::Number(_) => leaves.push(path.clone()),
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut v = v;
    for k in path {
        v = match v {
            Value::Array(items) => items.get_mut(k.parse::<usize>().ok()?)?,
            Value::Object(map) => map.get_mut(k)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Deterministic positions in `0..len` for a field: ends, middle and `n`
/// more derived from the path (FNV-1a), so every run tries the same ones.
fn spots(path: &[String], len: usize, n: usize) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.join("/").bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = vec![0, len / 2, len - 1];
    for _ in 0..n {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        out.push((h % len as u64) as usize);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// One mutant: the edited document and what was done.
struct Mutant {
    doc: Value,
    path: JsonPath,
    kind: &'static str,
    /// For string edits: the byte offset edited.
    offset: Option<usize>,
}

fn mutants(doc: &Value) -> Vec<Mutant> {
    let mut leaves = Vec::new();
    let mut keys = Vec::new();
    walk(doc, &mut Vec::new(), &mut leaves, &mut keys);
    let n = positions();
    let mut out = Vec::new();
    let mut push = |doc: Value, path: &JsonPath, kind, offset| out.push(Mutant { doc, path: path.clone(), kind, offset });
    for path in &leaves {
        let mut probe = doc.clone();
        let leaf = at(&mut probe, path).unwrap().clone();
        match &leaf {
            Value::Number(number) => {
                let value = number.as_i64().unwrap_or(0);
                for step in [1i64, -1] {
                    let mut m = doc.clone();
                    *at(&mut m, path).unwrap() = (value + step).into();
                    push(m, path, "number step", None);
                }
            }
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                let value: u128 = s.parse().unwrap_or(0);
                for next in [value.checked_add(1), value.checked_sub(1)].into_iter().flatten() {
                    let mut m = doc.clone();
                    *at(&mut m, path).unwrap() = next.to_string().into();
                    push(m, path, "number step", None);
                }
            }
            Value::String(s) => {
                let decoded = (s.len() >= 4).then(|| B64.decode(s).ok()).flatten().filter(|b| !b.is_empty());
                if let Some(bytes) = decoded {
                    for i in spots(path, bytes.len(), n) {
                        let bit = (i * 7 + path.len()) % 8;
                        let mut flipped = bytes.clone();
                        flipped[i] ^= 1 << bit;
                        let mut m = doc.clone();
                        *at(&mut m, path).unwrap() = B64.encode(&flipped).into();
                        push(m, path, "bit flip", Some(i));
                    }
                    continue;
                }
                let chars: Vec<char> = s.chars().collect();
                let mut offsets = spots(path, chars.len(), n);
                if s.contains('\n') {
                    // Checkpoint envelopes: edit every line (start and middle).
                    let mut start = 0;
                    for line in s.split('\n') {
                        let len = line.chars().count();
                        if len > 0 {
                            offsets.push(start);
                            offsets.push(start + len / 2);
                            offsets.push(start + len - 1);
                        }
                        start += len + 1;
                    }
                    offsets.sort_unstable();
                    offsets.dedup();
                }
                for i in offsets {
                    let Some(&c) = chars.get(i) else { continue };
                    let replacement = match c {
                        'a'..='y' | 'A'..='Y' | '0'..='8' => char::from(c as u8 + 1),
                        'z' => 'a',
                        'Z' => 'A',
                        '9' => '0',
                        _ => 'x',
                    };
                    for (kind, edited) in [
                        ("char replace", {
                            let mut e = chars.clone();
                            e[i] = replacement;
                            e
                        }),
                        ("char delete", {
                            let mut e = chars.clone();
                            e.remove(i);
                            e
                        }),
                        ("char insert", {
                            let mut e = chars.clone();
                            e.insert(i, replacement);
                            e
                        }),
                    ] {
                        let mut m = doc.clone();
                        *at(&mut m, path).unwrap() = edited.into_iter().collect::<String>().into();
                        push(m, path, kind, Some(i));
                    }
                }
            }
            _ => {}
        }
    }
    for path in &keys {
        let mut m = doc.clone();
        let (last, parent) = path.split_last().unwrap();
        if let Some(Value::Object(map)) = at(&mut m, parent) {
            map.remove(last);
        }
        push(m, path, "key deletion", None);
    }
    out
}

/// The allow-list entry that explains an accepted mutant, if any.
fn explain(case: &Case, m: &Mutant, verified: &VerifiedSignature) -> Option<&'static AllowedEdit> {
    let field = m.path.iter().filter(|k| k.parse::<usize>().is_err()).cloned().collect::<Vec<_>>();
    let last = field.last().map(String::as_str).unwrap_or("");
    let label = |name: &str| ALLOWED_EDITS.iter().find(|a| a.field == name);
    let original = &case.bundle;
    let media_type = original["mediaType"].as_str().unwrap_or("");
    if m.path == ["mediaType"] && m.kind != "key deletion" {
        return label("mediaType");
    }
    if field.iter().any(|k| k == "hint") {
        return label("verificationMaterial.publicKey.hint");
    }
    if last == "keyid" && field.iter().any(|k| k == "dsseEnvelope") {
        return label("dsseEnvelope.signatures[].keyid");
    }
    if m.kind == "key deletion" && last == "messageDigest" {
        return label("messageSignature.messageDigest");
    }
    if m.kind == "key deletion" && last == "inclusionProof" && (media_type.ends_with("version=0.1") || media_type.ends_with("v0.1+json")) {
        return label("tlogEntries[].inclusionProof (v0.1)");
    }
    if field.iter().any(|k| k == "x509CertificateChain") && m.path.iter().any(|k| k != "0" && k.parse::<usize>().is_ok()) {
        return label("x509CertificateChain.certificates[1..]");
    }
    if last == "envelope" {
        // Which line was edited, and does it name the entry's log?
        let text = at(&mut original.clone(), &m.path)?.as_str()?.to_string();
        let offset = m.offset?;
        let line = text
            .chars()
            .collect::<Vec<_>>()
            .split(|c| *c == '\n')
            .scan(0usize, |start, line| {
                let range = *start..*start + line.len() + 1;
                *start += line.len() + 1;
                Some((range, line.iter().collect::<String>()))
            })
            .find(|(range, _)| range.contains(&offset))
            .map(|(_, line)| line)?;
        let origin = text.lines().next()?.split(' ').next()?.to_string();
        let name = line.strip_prefix("\u{2014} ")?.split(' ').next()?;
        if name != origin || line.matches(' ').count() > 2 {
            return label("checkpoint witness cosignature");
        }
        return label("checkpoint log signature line, second copy");
    }
    if !verified.skipped_timestamps.is_empty() {
        return label("rfc3161Timestamps[] naming an unlisted TSA");
    }
    if field.iter().any(|k| k == "rfc3161Timestamps") && m.kind == "bit flip" {
        let token = B64.decode(at(&mut original.clone(), &m.path)?.as_str()?).ok()?;
        let offset = m.offset?;
        if embedded_certificates(&token).iter().any(|range| range.contains(&offset)) {
            return label("rfc3161Timestamps[] embedded certificates");
        }
        return None;
    }
    if m.kind == "key deletion" && matches!(last, "inclusionPromise" | "timestampVerificationData" | "rfc3161Timestamps") {
        return label("redundant time source");
    }
    None
}

/// Byte ranges of the certificates a TimeStampToken embeds (bare token or
/// inside a TimeStampResp), found by their DER encoding.
fn embedded_certificates(token: &[u8]) -> Vec<std::ops::Range<usize>> {
    use x509_cert::der::{Decode, Encode};
    let Some(start) = token.windows(11).position(|w| {
        // id-signedData OID, the start of the ContentInfo inside.
        w == [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02]
    }) else {
        return Vec::new();
    };
    // Back up to the ContentInfo SEQUENCE header (4 bytes for long lengths).
    let info = (start.saturating_sub(4)..start).find_map(|s| {
        cms::content_info::ContentInfo::from_der(&token[s..]).ok().or_else(|| {
            let any = x509_cert::der::Any::from_der(&token[s..]).ok()?;
            cms::content_info::ContentInfo::from_der(&any.to_der().ok()?).ok()
        })
    });
    let Some(info) = info else {
        return Vec::new();
    };
    let Ok(signed) = info.content.to_der().and_then(|der| cms::signed_data::SignedData::from_der(&der)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for choice in signed.certificates.iter().flat_map(|set| set.0.iter()) {
        if let cms::cert::CertificateChoices::Certificate(cert) = choice {
            let Ok(der) = cert.to_der() else { continue };
            if let Some(at) = token.windows(der.len()).position(|w| w == der.as_slice()) {
                out.push(at..at + der.len());
            }
        }
    }
    out
}

#[test]
fn single_field_mutations_are_refused_unless_allow_listed() {
    let mut cases = stack_cases();
    match shared_dir() {
        Some(shared) => cases.extend(shared_cases(&shared)),
        None => eprintln!("../shared/vectors not found (set PULLGATE_SHARED): mutating the stack's bundles only"),
    }
    let mut tried = 0usize;
    let mut refused = 0usize;
    let mut allowed: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut unexplained = Vec::new();
    for case in &cases {
        assert!(case.verify(&case.bundle).is_some(), "{}: the unmutated bundle must verify", case.name);
        for m in mutants(&case.bundle) {
            if m.doc == case.bundle {
                continue;
            }
            tried += 1;
            let Some(verified) = case.verify(&m.doc) else {
                refused += 1;
                continue;
            };
            match explain(case, &m, &verified) {
                Some(entry) => {
                    if std::env::var_os("PULLGATE_MUTATION_VERBOSE").is_some() {
                        println!("allowed {}: {} at {} (offset {:?}) as {:?}", case.name, m.kind, m.path.join("."), m.offset, entry.field);
                    }
                    *allowed.entry(entry.field).or_default() += 1
                }
                None => {
                    if std::env::var_os("PULLGATE_MUTATION_DUMP").is_some() {
                        let mut doc = case.bundle.clone();
                        if let Some(Value::String(s)) = at(&mut doc, &m.path) {
                            eprintln!("DUMP {} {}", m.offset.unwrap_or(0), hex::encode(B64.decode(&*s).unwrap_or_default()));
                        }
                    }
                    unexplained.push(format!("{}: {} at {} (offset {:?})", case.name, m.kind, m.path.join("."), m.offset))
                }
            }
        }
    }
    let allowed_total: usize = allowed.values().sum();
    println!(
        "mutation test: {} cases, {tried} mutants tried, {refused} refused, {allowed_total} accepted by the allow-list, {} accepted unexplained",
        cases.len(),
        unexplained.len()
    );
    for (field, count) in &allowed {
        println!("  allowed {count:5}  {field}");
    }
    assert!(unexplained.is_empty(), "{} mutants accepted outside the allow-list:\n{}", unexplained.len(), unexplained.join("\n"));
}
