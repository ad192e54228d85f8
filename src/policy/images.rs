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

use std::sync::Arc;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::verify::signers::IdentityPolicy;

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

mod config;

pub use config::{
    AttestationConfig, AuthorityConfig, ConditionConfig, ExemptionConfig, IdentityConfig, ImagePolicyConfig, KeyConfig, KeylessConfig,
    PolicyConfig, PolicyConfigError, ScalarConfig, SignerConfig,
};

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

#[cfg(test)]
mod tests;
