//! The `policy:` YAML (the `*Config` types, as operators write them) and its compilation into
//! a [`PolicySet`]: globs built, identities and keys read, attestation conditions checked, each
//! problem named by its key under `policy`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use globset::{GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::{glob, Exemption, ImagePolicy, Mode, MultiArch, PolicySet, Unmatched};
use crate::verify::keys::PublicKey;
use crate::verify::signers::{
    AttestationRequirement, Authority, AuthoritySigners, Condition, ExtensionClaim, IdentityPolicy, JsonPath, KeylessIdentity,
    StringMatcher, Test,
};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub unmatched: Unmatched,
    #[serde(default)]
    pub exemptions: Vec<ExemptionConfig>,
    #[serde(default)]
    pub policies: Vec<ImagePolicyConfig>,
}

/// Images admitted without any signature, by explicit decision (e.g. the node's pause image).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExemptionConfig {
    pub name: String,
    pub images: Vec<String>,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePolicyConfig {
    pub name: String,
    pub images: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    pub authorities: Vec<AuthorityConfig>,
    pub threshold: Option<usize>,
    #[serde(default)]
    pub multi_arch: MultiArch,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    pub name: String,
    pub keyless: Option<KeylessConfig>,
    pub key: Option<KeyConfig>,
    /// Attestations this authority must also have signed (see [`crate::verify::signers::attestation`]).
    #[serde(default)]
    pub attestations: Vec<AttestationConfig>,
}

/// One required attestation: policy-controller's `predicateType`, an optional signer (default:
/// the authority's own identities or key) and Kyverno-like `conditions` on the predicate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationConfig {
    #[serde(rename = "predicateType", alias = "predicate_type")]
    pub predicate_type: String,
    pub signer: Option<SignerConfig>,
    #[serde(default)]
    pub conditions: Vec<ConditionConfig>,
}

/// Who must have signed an attestation: exactly one of `keyless` or `key`, as on an authority.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    pub keyless: Option<KeylessConfig>,
    pub key: Option<KeyConfig>,
}

/// A condition on a predicate field: `path` and exactly one test.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    pub path: String,
    pub equals: Option<ScalarConfig>,
    pub matches: Option<String>,
    #[serde(rename = "oneOf", alias = "one_of")]
    pub one_of: Option<Vec<ScalarConfig>>,
    #[serde(rename = "notOlderThan", alias = "not_older_than")]
    pub not_older_than: Option<String>,
}

/// A value `equals` and `oneOf` compare with: a string, number or boolean as written (anything
/// else is a config error naming the key).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ScalarConfig {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
    Other(serde::de::IgnoredAny),
}

impl ScalarConfig {
    /// The JSON text a predicate field is compared by (strings as they are).
    fn text(&self) -> Option<String> {
        match self {
            ScalarConfig::Bool(b) => Some(b.to_string()),
            ScalarConfig::Int(n) => Some(n.to_string()),
            ScalarConfig::UInt(n) => Some(n.to_string()),
            ScalarConfig::Float(f) => serde_json::Number::from_f64(*f).map(|n| n.to_string()),
            ScalarConfig::Text(s) => Some(s.clone()),
            ScalarConfig::Other(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeylessConfig {
    pub identities: Vec<IdentityConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub issuer: Option<String>,
    pub issuer_regexp: Option<String>,
    pub subject: Option<String>,
    pub subject_regexp: Option<String>,
    /// Fulcio certificate extensions that must have exactly these values, by claim name
    /// (`github-workflow-repository`, `source-repository-ref`, ...) or OID
    /// (`1.3.6.1.4.1.57264.1.N`).
    #[serde(default)]
    pub extensions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// PEM public key(s) inline.
    pub data: Option<String>,
    /// File with a PEM public key.
    pub path: Option<PathBuf>,
}

/// A policy problem: the key path under `policy` and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("key `{key}`: {message}")]
pub struct PolicyConfigError {
    pub key: String,
    pub message: String,
}

fn err(key: String, message: impl Into<String>) -> PolicyConfigError {
    PolicyConfigError { key, message: message.into() }
}

fn glob_set(patterns: &[String], key: &str) -> Result<GlobSet, PolicyConfigError> {
    let mut b = GlobSetBuilder::new();
    for (i, p) in patterns.iter().enumerate() {
        b.add(glob(p).map_err(|e| err(format!("{key}[{i}]"), format!("invalid glob {p:?}: {e}")))?);
    }
    b.build().map_err(|e| err(key.to_string(), e.to_string()))
}

fn matcher(exact: &Option<String>, regexp: &Option<String>, key: &str, what: &str) -> Result<Option<StringMatcher>, PolicyConfigError> {
    match (exact, regexp) {
        (Some(_), Some(_)) => Err(err(key.to_string(), format!("set `{what}` or `{what}_regexp`, not both"))),
        (Some(v), None) => Ok(Some(StringMatcher::exact(v))),
        (None, Some(r)) => StringMatcher::regex(r).map(Some).map_err(|e| err(format!("{key}.{what}_regexp"), e.to_string())),
        (None, None) => Ok(None),
    }
}

impl PolicyConfig {
    /// Validates and compiles the policy; `generation` tags the result.
    pub fn compile(&self, generation: u64) -> Result<PolicySet, PolicyConfigError> {
        let mut names = std::collections::HashSet::new();
        let mut exemptions = Vec::new();
        for (i, e) in self.exemptions.iter().enumerate() {
            let key = format!("policy.exemptions[{i}]");
            if e.images.is_empty() {
                return Err(err(format!("{key}.images"), "list at least one image glob"));
            }
            exemptions.push(Exemption { name: e.name.clone(), images: glob_set(&e.images, &format!("{key}.images"))? });
        }
        let mut policies = Vec::new();
        for (i, p) in self.policies.iter().enumerate() {
            let key = format!("policy.policies[{i}]");
            if p.name.trim().is_empty() {
                return Err(err(format!("{key}.name"), "must not be empty"));
            }
            if !names.insert(p.name.clone()) {
                return Err(err(format!("{key}.name"), format!("duplicate policy name {:?}", p.name)));
            }
            if p.images.is_empty() {
                return Err(err(format!("{key}.images"), "list at least one image glob"));
            }
            let images = glob_set(&p.images, &format!("{key}.images"))?;
            let namespaces = if p.namespaces.is_empty() { None } else { Some(glob_set(&p.namespaces, &format!("{key}.namespaces"))?) };
            if p.authorities.is_empty() {
                return Err(err(format!("{key}.authorities"), "list at least one authority (keyless identities or a key)"));
            }
            let mut authorities = Vec::new();
            for (j, a) in p.authorities.iter().enumerate() {
                authorities.push(compile_authority(a, &format!("{key}.authorities[{j}]"))?);
            }
            let threshold = p.threshold.unwrap_or(1);
            let identity = IdentityPolicy::new(authorities, threshold).map_err(|e| err(format!("{key}.threshold"), e.to_string()))?;
            policies.push(Arc::new(ImagePolicy {
                name: p.name.clone(),
                images,
                namespaces,
                mode: p.mode,
                identity,
                multi_arch: p.multi_arch,
            }));
        }
        Ok(PolicySet { generation, unmatched: self.unmatched, exemptions, policies })
    }
}

fn compile_authority(a: &AuthorityConfig, key: &str) -> Result<Authority, PolicyConfigError> {
    if a.name.trim().is_empty() {
        return Err(err(format!("{key}.name"), "must not be empty"));
    }
    let signers = compile_signers(&a.name, &a.keyless, &a.key, key, "an authority has exactly one of `keyless` or `key`")?;
    let mut attestations = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, at) in a.attestations.iter().enumerate() {
        let key = format!("{key}.attestations[{i}]");
        if !seen.insert(at.predicate_type.clone()) {
            return Err(err(format!("{key}.predicateType"), format!("{:?} is already required by this authority", at.predicate_type)));
        }
        attestations.push(compile_attestation(&a.name, at, &key)?);
    }
    Ok(Authority { name: a.name.clone(), signers, attestations })
}

fn compile_signers(
    name: &str,
    keyless: &Option<KeylessConfig>,
    key_config: &Option<KeyConfig>,
    key: &str,
    neither: &str,
) -> Result<AuthoritySigners, PolicyConfigError> {
    match (keyless, key_config) {
        (Some(k), None) => {
            let mut identities = Vec::new();
            for (i, id) in k.identities.iter().enumerate() {
                let key = format!("{key}.keyless.identities[{i}]");
                let subject = matcher(&id.subject, &id.subject_regexp, &key, "subject")?
                    .ok_or_else(|| err(key.clone(), "set `subject` or `subject_regexp`"))?;
                let issuer = matcher(&id.issuer, &id.issuer_regexp, &key, "issuer")?
                    .ok_or_else(|| err(key.clone(), "set `issuer` or `issuer_regexp` (the OIDC issuer is part of the identity)"))?;
                let mut claims = Vec::new();
                for (name, value) in &id.extensions {
                    claims.push(
                        ExtensionClaim::new(name, value.clone()).map_err(|e| err(format!("{key}.extensions.{name}"), e.to_string()))?,
                    );
                }
                identities.push(KeylessIdentity { subject, issuer: Some(issuer), claims });
            }
            Authority::keyless(name, identities).map(|a| a.signers).map_err(|e| err(format!("{key}.keyless.identities"), e.to_string()))
        }
        (None, Some(k)) => {
            let pem = match (&k.data, &k.path) {
                (Some(d), None) => d.clone(),
                (None, Some(p)) => {
                    std::fs::read_to_string(p).map_err(|e| err(format!("{key}.key.path"), format!("cannot read {}: {e}", p.display())))?
                }
                _ => return Err(err(format!("{key}.key"), "set exactly one of `data` (PEM) or `path`")),
            };
            let keys = split_pem(&pem)
                .into_iter()
                .map(|p| PublicKey::from_pem(&p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(format!("{key}.key"), e.to_string()))?;
            Authority::keys(name, keys).map(|a| a.signers).map_err(|e| err(format!("{key}.key"), e.to_string()))
        }
        _ => Err(err(key.to_string(), neither)),
    }
}

fn compile_attestation(authority: &str, a: &AttestationConfig, key: &str) -> Result<AttestationRequirement, PolicyConfigError> {
    let predicate_type = a.predicate_type.trim();
    if predicate_type.is_empty() || predicate_type.chars().any(char::is_whitespace) || !predicate_type.contains(':') {
        return Err(err(
            format!("{key}.predicateType"),
            format!("{:?} is not a predicate type URI (e.g. https://slsa.dev/provenance/v1)", a.predicate_type),
        ));
    }
    if predicate_type == crate::verify::image::COSIGN_SIGN_PREDICATE {
        return Err(err(
            format!("{key}.predicateType"),
            "that is cosign's signature predicate: the authority's signature is already required",
        ));
    }
    let signers = match &a.signer {
        None => None,
        Some(s) => Some(compile_signers(
            authority,
            &s.keyless,
            &s.key,
            &format!("{key}.signer"),
            "a signer has exactly one of `keyless` or `key`",
        )?),
    };
    let mut conditions = Vec::new();
    for (i, c) in a.conditions.iter().enumerate() {
        conditions.push(compile_condition(c, &format!("{key}.conditions[{i}]"))?);
    }
    Ok(AttestationRequirement { predicate_type: predicate_type.to_string(), signers, conditions })
}

fn compile_condition(c: &ConditionConfig, key: &str) -> Result<Condition, PolicyConfigError> {
    let path = JsonPath::parse(&c.path).map_err(|e| err(format!("{key}.path"), e))?;
    let tests = [c.equals.is_some(), c.matches.is_some(), c.one_of.is_some(), c.not_older_than.is_some()];
    if tests.iter().filter(|t| **t).count() != 1 {
        return Err(err(key.to_string(), "set exactly one of `equals`, `matches`, `oneOf` or `notOlderThan`"));
    }
    let scalar = |v: &ScalarConfig, key: String| v.text().ok_or_else(|| err(key, "want a string, number or boolean"));
    let test = if let Some(v) = &c.equals {
        Test::Equals(scalar(v, format!("{key}.equals"))?)
    } else if let Some(r) = &c.matches {
        Test::Matches(StringMatcher::regex(r).map_err(|e| err(format!("{key}.matches"), e.to_string()))?)
    } else if let Some(set) = &c.one_of {
        if set.is_empty() {
            return Err(err(format!("{key}.oneOf"), "list at least one value"));
        }
        let values = set.iter().enumerate().map(|(i, v)| scalar(v, format!("{key}.oneOf[{i}]"))).collect::<Result<_, _>>()?;
        Test::OneOf(values)
    } else {
        let text = c.not_older_than.clone().unwrap_or_default();
        let d = crate::settings::parse_duration(&text).map_err(|e| err(format!("{key}.notOlderThan"), e))?;
        if d.is_zero() {
            return Err(err(format!("{key}.notOlderThan"), "must be longer than zero"));
        }
        Test::NotOlderThan(d, text.trim().to_string())
    };
    Ok(Condition { path, test })
}

/// Splits a PEM bundle into its blocks.
fn split_pem(pem: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current = String::new();
    for line in pem.lines() {
        if line.starts_with("-----BEGIN") {
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END") {
            blocks.push(std::mem::take(&mut current));
        }
    }
    if blocks.is_empty() {
        blocks.push(pem.to_string());
    }
    blocks
}

impl PolicyConfig {
    /// Warnings for `pullgate config check`: exemption globs that name a tag (or any tag)
    /// instead of a digest. Whoever can push that tag decides what the exemption admits.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, e) in self.exemptions.iter().enumerate() {
            for (j, image) in e.images.iter().enumerate() {
                if !image.contains('@') {
                    out.push(format!(
                        "policy.exemptions[{i}].images[{j}] {image:?} (exemption {}) names a tag, not a digest: anything pushed under that tag is admitted unsigned; pin it as name@sha256:<digest>",
                        e.name
                    ));
                }
            }
        }
        out
    }
}
