//! Image policies: which images need signatures by whom, in which namespaces, in which mode.
//!
//! The shape follows sigstore policy-controller's `ClusterImagePolicy` (image globs,
//! authorities that are keyless identities or keys, a threshold, `enforce`/`audit` like its
//! `enforce`/`warn`) so that operators who know it can read a pullgate policy at once:
//!
//! ```yaml
//! policy:
//!   unmatched: deny              # images no policy matches: deny (default) or allow
//!   exemptions:
//!     - name: sandbox
//!       images: ["registry.internal/pause:*"]
//!   policies:
//!     - name: team-a
//!       images: ["registry.internal/team-a/**"]
//!       namespaces: ["team-a", "team-a-*"]     # optional; default all namespaces
//!       mode: enforce                           # or audit
//!       threshold: 1                            # N of the authorities (default 1)
//!       authorities:
//!         - name: release-workflow
//!           keyless:
//!             identities:
//!               - issuer: https://token.actions.githubusercontent.com
//!                 subject_regexp: https://github.com/org/app/\.github/workflows/release\.yml@refs/tags/v.*
//!                 extensions:
//!                   github-workflow-repository: org/app
//!           attestations:                          # also required, signed by the same identities
//!             - predicateType: https://slsa.dev/provenance/v1
//!               conditions:                          # on the statement's `predicate`
//!                 - path: buildDefinition.externalParameters.workflow.ref
//!                   equals: refs/heads/main
//!                 - path: runDetails.builder.id
//!                   matches: https://github\.com/org/builder/.*@refs/tags/v.*
//!         - name: release-key
//!           key:
//!             path: /etc/pullgate/keys/release.pub   # or `data: |` with the PEM
//! ```
//!
//! Attestation conditions (`equals`, `matches`, `oneOf`, `notOlderThan`) are described in
//! [`crate::verify::signers::attestation`].
//!
//! Image globs match the normalised reference (`docker.io/library/nginx`, with `:tag` or
//! `@digest` forms tried too): `*` stays within one path segment, `**` crosses them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::verify::keys::PublicKey;
use crate::verify::signers::{
    AttestationRequirement, Authority, AuthoritySigners, Condition, ExtensionClaim, IdentityPolicy, JsonPath, KeylessIdentity,
    StringMatcher, Test,
};

/// What happens to images that no policy matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    #[default]
    Deny,
    Allow,
}

/// Per-policy mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse what does not verify.
    #[default]
    Enforce,
    /// Let it through; log and count what enforce would have refused.
    Audit,
}

impl Mode {
    /// The mode of a set of policies that all apply: enforce when any of them enforces.
    pub fn of<'a>(policies: impl IntoIterator<Item = &'a Arc<ImagePolicy>>) -> Mode {
        if policies.into_iter().any(|p| p.mode == Mode::Enforce) {
            Mode::Enforce
        } else {
            Mode::Audit
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// For a multi-arch image, where the signature must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MultiArch {
    /// On the index or on the platform manifest (the index digest covers its manifests).
    #[default]
    Either,
    /// On the index digest.
    Index,
    /// On the platform manifest digest.
    Platform,
}

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

/// One compiled image policy.
#[derive(Debug)]
pub struct ImagePolicy {
    pub name: String,
    images: GlobSet,
    namespaces: Option<GlobSet>,
    pub mode: Mode,
    pub identity: IdentityPolicy,
    pub multi_arch: MultiArch,
}

impl ImagePolicy {
    /// A policy that is not from configuration (e.g. `pullgate verify` identity flags): it
    /// matches every image in every namespace, in enforce mode.
    pub fn adhoc(name: &str, identity: IdentityPolicy, multi_arch: MultiArch) -> ImagePolicy {
        let mut all = GlobSetBuilder::new();
        if let Ok(g) = glob("**") {
            all.add(g);
        }
        let images = all.build().unwrap_or_else(|_| GlobSet::empty());
        ImagePolicy { name: name.into(), images, namespaces: None, mode: Mode::Enforce, identity, multi_arch }
    }
}

#[derive(Debug)]
struct Exemption {
    name: String,
    images: GlobSet,
}

/// The compiled policy, swapped as a whole on reload.
#[derive(Debug)]
pub struct PolicySet {
    /// Bumped on every successful (re)load; part of every decision-cache key.
    pub generation: u64,
    pub unmatched: Unmatched,
    exemptions: Vec<Exemption>,
    policies: Vec<Arc<ImagePolicy>>,
}

/// What applies to one image in one namespace.
#[derive(Debug, Clone)]
pub enum Applicable {
    /// Exempted by name.
    Exempt(String),
    /// These policies all apply (all must pass).
    Policies(Vec<Arc<ImagePolicy>>),
    /// No policy matched.
    Unmatched(Unmatched),
}

impl Applicable {
    /// What a decision record names as its policy: `exempt:NAME`, `unmatched`, or the names of
    /// the policies that apply, joined by commas.
    pub fn label(&self) -> String {
        match self {
            Applicable::Exempt(name) => format!("exempt:{name}"),
            Applicable::Unmatched(_) => "unmatched".into(),
            Applicable::Policies(p) => p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(","),
        }
    }
}

fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern).literal_separator(true).build().map_err(|e| e.to_string())
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

impl PolicySet {
    /// Whether anything is enforced: an enforce-mode policy, or unmatched images denied. Calls
    /// that name no image pullgate can check are refused exactly then (else let through and
    /// recorded, as audit mode does).
    pub fn enforces(&self) -> bool {
        self.unmatched == Unmatched::Deny || self.policies.iter().any(|p| p.mode == Mode::Enforce)
    }

    /// What applies to an image, given the forms of its normalised reference (`repo`,
    /// `repo:tag`, `repo@digest`) and the pod's namespace (unknown: only policies without a
    /// namespace selector apply).
    ///
    /// A reference with a digest is exempt only by an exemption glob that matches its
    /// `name@digest` form: containerd pulls the digest and ignores any tag, so `pause:*` or a
    /// bare `pause` admits tag references only, never `pause:1@sha256:<anything>`.
    pub fn applicable(&self, names: &[String], namespace: Option<&str>) -> Applicable {
        self.applicable_to_each(std::slice::from_ref(&names.to_vec()), names, namespace)
    }

    /// What applies to an image known by several references (an image in containerd, by its
    /// tags and digests): exempt when the name forms of every reference in `each` are exempt
    /// (the first exemption names it); otherwise the policies that match any of `names`, or
    /// `Unmatched`. [`PolicySet::applicable`] is the case of one reference.
    pub fn applicable_to_each(&self, each: &[Vec<String>], names: &[String], namespace: Option<&str>) -> Applicable {
        let exempt: Vec<Option<String>> = each.iter().map(|n| self.exemption(n)).collect();
        if !exempt.is_empty() && exempt.iter().all(Option::is_some) {
            return Applicable::Exempt(exempt.into_iter().flatten().next().unwrap_or_default());
        }
        self.applicable_policies(names, namespace)
    }

    /// The exemption that admits a reference with these name forms, if any (see
    /// [`PolicySet::applicable`] for the digest rule).
    pub fn exemption(&self, names: &[String]) -> Option<String> {
        let by_digest = names.iter().any(|n| n.contains('@'));
        let hit = |set: &GlobSet| names.iter().filter(|n| !by_digest || n.contains('@')).any(|n| set.is_match(n));
        self.exemptions.iter().find(|e| hit(&e.images)).map(|e| e.name.clone())
    }

    /// What applies to these name forms leaving exemptions aside: the matching policies, or
    /// `Unmatched`.
    pub fn applicable_policies(&self, names: &[String], namespace: Option<&str>) -> Applicable {
        let hit = |set: &GlobSet| names.iter().any(|n| set.is_match(n));
        let matching: Vec<Arc<ImagePolicy>> = self
            .policies
            .iter()
            .filter(|p| hit(&p.images))
            .filter(|p| match (&p.namespaces, namespace) {
                (None, _) => true,
                (Some(ns), Some(n)) => ns.is_match(n),
                (Some(_), None) => false,
            })
            .cloned()
            .collect();
        if matching.is_empty() {
            Applicable::Unmatched(self.unmatched)
        } else {
            Applicable::Policies(matching)
        }
    }

    pub fn policies(&self) -> &[Arc<ImagePolicy>] {
        &self.policies
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6Ie0Fvwx1B3bMWPAMjMt5LIpn/pd\nG3EeWqgqk4XyV3U/cQGJwdZdWSmV0Nf1E0hu8fVUnM6u8oqvXs5yBn0CUQ==\n-----END PUBLIC KEY-----\n";

    fn parse(yaml: &str) -> Result<PolicySet, String> {
        let cfg: PolicyConfig = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        cfg.compile(1).map_err(|e| e.to_string())
    }

    fn names(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    const BASE: &str = r#"
exemptions:
  - name: sandbox
    images: ["registry.internal/pause:*"]
policies:
  - name: team-a
    images: ["registry.internal/team-a/**"]
    namespaces: ["team-a", "team-a-*"]
    authorities:
      - name: ci
        keyless:
          identities:
            - issuer: https://token.actions.githubusercontent.com
              subject_regexp: https://github.com/org/app/.*
              extensions:
                github-workflow-repository: org/app
  - name: all-internal
    images: ["registry.internal/**"]
    mode: audit
    authorities:
      - name: key
        key:
          data: |
            -----BEGIN PUBLIC KEY-----
            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6Ie0Fvwx1B3bMWPAMjMt5LIpn/pd
            G3EeWqgqk4XyV3U/cQGJwdZdWSmV0Nf1E0hu8fVUnM6u8oqvXs5yBn0CUQ==
            -----END PUBLIC KEY-----
"#;

    #[test]
    fn matching_by_glob_and_namespace() {
        let set = parse(BASE).unwrap();
        let applicable = |n: &[&str], ns| match set.applicable(&names(n), ns) {
            Applicable::Exempt(e) => format!("exempt:{e}"),
            Applicable::Policies(p) => p.iter().map(|p| p.name.clone()).collect::<Vec<_>>().join(","),
            Applicable::Unmatched(u) => format!("unmatched:{u:?}"),
        };
        assert_eq!(applicable(&["registry.internal/team-a/app", "registry.internal/team-a/app:1"], Some("team-a")), "team-a,all-internal");
        assert_eq!(applicable(&["registry.internal/team-a/deep/app"], Some("team-a-dev")), "team-a,all-internal");
        assert_eq!(applicable(&["registry.internal/team-a/app"], Some("other")), "all-internal");
        assert_eq!(applicable(&["registry.internal/team-a/app"], None), "all-internal");
        assert_eq!(applicable(&["registry.internal/pause", "registry.internal/pause:3.9"], None), "exempt:sandbox");
        assert_eq!(applicable(&["docker.io/library/nginx", "docker.io/library/nginx:1"], None), "unmatched:Deny");
        // `*` does not cross `/`.
        let set2 = parse("policies:\n  - name: p\n    images: [\"reg/*\"]\n    authorities:\n      - name: k\n        key:\n          data: |\n            -----BEGIN PUBLIC KEY-----\n            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6Ie0Fvwx1B3bMWPAMjMt5LIpn/pd\n            G3EeWqgqk4XyV3U/cQGJwdZdWSmV0Nf1E0hu8fVUnM6u8oqvXs5yBn0CUQ==\n            -----END PUBLIC KEY-----\n").unwrap();
        assert!(matches!(set2.applicable(&names(&["reg/a/b"]), None), Applicable::Unmatched(_)));
        assert!(matches!(set2.applicable(&names(&["reg/a"]), None), Applicable::Policies(_)));
    }

    #[test]
    fn attestations_compile() {
        let yaml = r#"
policies:
  - name: p
    images: ["a/**"]
    authorities:
      - name: ci
        keyless:
          identities:
            - issuer: https://token.actions.githubusercontent.com
              subject_regexp: https://github.com/org/app/.*
        attestations:
          - predicateType: https://slsa.dev/provenance/v1
            conditions:
              - path: buildDefinition.externalParameters.workflow.ref
                equals: refs/heads/main
              - path: runDetails.builder.id
                matches: https://github\.com/org/builder/.*
          - predicate_type: https://cosign.sigstore.dev/attestation/vuln/v1
            signer:
              keyless:
                identities:
                  - issuer: https://token.actions.githubusercontent.com
                    subject: https://github.com/org/scanner/.github/workflows/scan.yml@refs/heads/main
            conditions:
              - path: metadata.scanFinishedOn
                notOlderThan: 7d
              - path: scanner.result.summary.critical
                oneOf: ["0"]
"#;
        let set = parse(yaml).unwrap();
        let p = &set.policies()[0];
        assert!(p.identity.has_attestations());
        let a = &p.identity.authorities()[0];
        assert_eq!(a.attestations.len(), 2);
        assert_eq!(a.attestations[0].predicate_type, "https://slsa.dev/provenance/v1");
        assert!(a.attestations[0].signers.is_none() && a.attestations[1].signers.is_some());
        assert!(matches!(a.attestations[1].conditions[0].test, Test::NotOlderThan(d, _) if d.as_secs() == 7 * 86400));
        assert!(!parse(BASE).unwrap().policies()[0].identity.has_attestations());
        // `equals` and `oneOf` take numbers and booleans as well as strings, compared by their
        // JSON text.
        let typed = yaml.replace(r#"oneOf: ["0"]"#, r#"oneOf: [0, false, "x", 1.5]"#).replace("equals: refs/heads/main", "equals: 3");
        let set = parse(&typed).unwrap();
        let a = &set.policies()[0].identity.authorities()[0];
        assert!(matches!(&a.attestations[0].conditions[0].test, Test::Equals(v) if v == "3"));
        let want: Vec<String> = ["0", "false", "x", "1.5"].map(String::from).to_vec();
        assert!(
            matches!(&a.attestations[1].conditions[1].test, Test::OneOf(v) if *v == want),
            "{:?}",
            a.attestations[1].conditions[1].test
        );
        let p = serde_json::json!({"metadata": {"scanFinishedOn": "2026-12-06T00:00:00Z"}, "scanner": {"result": {"summary": {"critical": 0}}}});
        assert!(a.attestations[1].conditions[1].check(&p, jiff::Timestamp::now()).is_ok());
    }

    #[test]
    fn readme_attestation_example_compiles() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("### Attestations").expect("README section")..];
        let start = section.find("```yaml\n").unwrap() + 8;
        let block = &section[start..start + section[start..].find("```").unwrap()];
        let body: String = block.lines().map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l))).collect();
        let yaml = format!("policies:\n  - name: p\n    images: [\"a/**\"]\n{body}");
        let set = parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(set.policies()[0].identity.authorities()[0].attestations.len(), 2);
    }

    #[test]
    fn tag_exemptions_do_not_admit_digests() {
        let set = parse(BASE).unwrap();
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert!(matches!(set.applicable(&names(&["registry.internal/pause", "registry.internal/pause:3.9"]), None), Applicable::Exempt(_)));
        // `pause:1@sha256:...` is matched as `pause@sha256:...`: not exempt by `pause:*`.
        assert!(matches!(
            set.applicable(&names(&["registry.internal/pause", &format!("registry.internal/pause@{d}")]), None),
            Applicable::Policies(_)
        ));
        let by_digest = parse(&BASE.replace("registry.internal/pause:*", &format!("registry.internal/pause@{d}"))).unwrap();
        assert!(matches!(
            by_digest.applicable(&names(&["registry.internal/pause", &format!("registry.internal/pause@{d}")]), None),
            Applicable::Exempt(_)
        ));
        let cfg: PolicyConfig = serde_saphyr::from_str(BASE).unwrap();
        let w = cfg.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("names a tag, not a digest") && w[0].contains("exemptions[0].images[0]"), "{w:?}");
    }

    #[test]
    fn invalid_policies_name_the_key() {
        let cases = [
            ("policies:\n  - name: p\n    images: []\n    authorities: []\n", "policy.policies[0].images"),
            ("policies:\n  - name: p\n    images: [\"a/**\"]\n    authorities: []\n", "policy.policies[0].authorities"),
            ("policies:\n  - name: p\n    images: [\"a/[\"]\n    authorities: []\n", "policy.policies[0].images[0]"),
            (
                "policies:\n  - name: p\n    images: [\"a\"]\n    authorities:\n      - name: x\n        keyless:\n          identities:\n            - subject: s\n",
                "policy.policies[0].authorities[0].keyless.identities[0]",
            ),
            (
                "policies:\n  - name: p\n    images: [\"a\"]\n    authorities:\n      - name: x\n        keyless:\n          identities:\n            - subject_regexp: \"(\"\n              issuer: i\n",
                "policy.policies[0].authorities[0].keyless.identities[0].subject_regexp",
            ),
            (
                "policies:\n  - name: p\n    images: [\"a\"]\n    authorities:\n      - name: x\n        keyless:\n          identities:\n            - subject: s\n              issuer: i\n              extensions:\n                favourite-colour: blue\n",
                "policy.policies[0].authorities[0].keyless.identities[0].extensions.favourite-colour",
            ),
            ("policies:\n  - name: p\n    images: [\"a\"]\n    threshold: 2\n    authorities:\n      - name: x\n        key:\n          data: nonsense\n", "policy.policies[0].authorities[0].key"),
            ("policies:\n  - name: p\n    images: [\"a\"]\n    authorities:\n      - name: x\n", "policy.policies[0].authorities[0]"),
        ];
        for (yaml, key) in cases {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(&format!("key `{key}`")), "{yaml}\n=> {e}");
        }
        let att = |conditions: &str| {
            format!(
                "policies:\n  - name: p\n    images: [\"a\"]\n    authorities:\n      - name: x\n        keyless:\n          identities:\n            - subject: s\n              issuer: i\n        attestations:\n          - predicateType: https://slsa.dev/provenance/v1\n{conditions}"
            )
        };
        let a = "policy.policies[0].authorities[0].attestations[0]";
        let attestation_cases = [
            ("            conditions:\n              - path: a..b\n                equals: x\n", format!("{a}.conditions[0].path")),
            ("            conditions:\n              - path: a\n", format!("{a}.conditions[0]")),
            (
                "            conditions:\n              - path: a\n                equals: x\n                matches: y\n",
                format!("{a}.conditions[0]"),
            ),
            (
                "            conditions:\n              - path: a\n              - path: b\n                matches: \"(\"\n",
                format!("{a}.conditions[0]"),
            ),
            ("            conditions:\n              - path: b\n                matches: \"(\"\n", format!("{a}.conditions[0].matches")),
            (
                "            conditions:\n              - path: b\n                notOlderThan: soon\n",
                format!("{a}.conditions[0].notOlderThan"),
            ),
            (
                "            conditions:\n              - path: b\n                notOlderThan: 0s\n",
                format!("{a}.conditions[0].notOlderThan"),
            ),
            ("            conditions:\n              - path: b\n                oneOf: []\n", format!("{a}.conditions[0].oneOf")),
            ("            conditions:\n              - path: b\n                equals: [1]\n", format!("{a}.conditions[0].equals")),
            ("            conditions:\n              - path: b\n                equals: {x: 1}\n", format!("{a}.conditions[0].equals")),
            (
                "            conditions:\n              - path: b\n                oneOf: [0, {x: 1}]\n",
                format!("{a}.conditions[0].oneOf[1]"),
            ),
            ("            conditions:\n              - path: b\n                equals: null\n", format!("{a}.conditions[0]")),
            (
                "            signer:\n              keyless:\n                identities:\n                  - subject: s\n",
                format!("{a}.signer.keyless.identities[0]"),
            ),
            ("            signer: {}\n", format!("{a}.signer")),
        ];
        for (conditions, key) in attestation_cases {
            let yaml = att(conditions);
            let e = parse(&yaml).unwrap_err();
            assert!(e.contains(&format!("key `{key}`")), "{yaml}\n=> {e}");
        }
        let bad_type = att("").replace("https://slsa.dev/provenance/v1", "slsa");
        assert!(parse(&bad_type).unwrap_err().contains(&format!("key `{a}.predicateType`")));
        let twice = att("          - predicateType: https://slsa.dev/provenance/v1\n");
        assert!(parse(&twice).unwrap_err().contains("policy.policies[0].authorities[0].attestations[1].predicateType"));
        // Unknown condition keys are refused by name at parse time.
        assert!(parse(&att("            conditions:\n              - path: a\n                equal: x\n")).unwrap_err().contains("equal"));
        let two = format!(
            "policies:\n  - name: p\n    images: [\"a\"]\n    threshold: 2\n    authorities:\n      - name: x\n        key:\n          data: \"{}\"\n",
            KEY.replace('\n', "\\n")
        );
        assert!(parse(&two).unwrap_err().contains("threshold"));
    }
}
