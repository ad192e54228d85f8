//! The decision for an image present in containerd: CreateContainer's own image, and any other
//! call that puts such an image into a container (image volumes, the sandbox image), in steps:
//! the names the image has ([`Present`]), what applies to them (the policy's one
//! [`PolicySet::applicable_to_each`]), then each registry digest in the asked repository until
//! one verifies as what the image runs.

use std::sync::Arc;

use super::{AuditRecord, Enforcer, Outcome, Resolved};
use crate::cri::api;
use crate::cri::intercept::{CreateCall, CreateVerdict};
use crate::digest::Digest;
use crate::enforce::decision::Reason;
use crate::policy::{Applicable, ImagePolicy, Mode, PolicySet, Unmatched};
use crate::registry::reference::Reference;

/// An image containerd has, by the names it has there.
struct Present<'a> {
    image: &'a api::Image,
    /// The image ID (its config digest).
    id: Digest,
    /// `repo_tags`, as references without digest.
    tags: Vec<Reference>,
    /// `repo_digests`, as digest references.
    digests: Vec<Reference>,
    /// The name the pod asked for, when it is one of the image's names.
    asked: Option<Reference>,
}

/// The refusals of the registry digests tried so far.
#[derive(Default)]
struct Failures {
    reasons: Vec<Reason>,
    /// No enforce-mode policy refused any of them: the call goes through (audit mode).
    enforced: bool,
}

/// An image's tags and registry digests in containerd, as references.
pub(super) fn registry_names(image: &api::Image) -> (Vec<Reference>, Vec<Reference>) {
    let tags = image.repo_tags.iter().filter_map(|t| Reference::parse(t).ok()).filter(|r| r.digest().is_none()).collect();
    let digests = image.repo_digests.iter().filter_map(|d| Reference::parse(d).ok()).filter(|r| r.digest().is_some()).collect();
    (tags, digests)
}

fn refuse(mut record: AuditRecord, reason: Reason) -> (CreateVerdict, AuditRecord) {
    record.mode = Some(Mode::Enforce);
    record.deny(&reason);
    (CreateVerdict::Refuse(record.reason.clone()), record)
}

impl Enforcer {
    /// The CreateContainer decision for `call`, neither logged, audited nor counted (for
    /// `pullgate doctor`, which asks about every image on the node).
    pub async fn dry_run_create(&self, call: &CreateCall) -> (CreateVerdict, AuditRecord) {
        self.decide_create(call).await
    }

    /// The name the pod asked for (`user_specified_image`, else the container config's image
    /// when that is a name), when it really is one of the image's names in containerd; `None`
    /// when that is not known (an image ID, a short ID, an older kubelet).
    pub(super) fn asked_name(&self, call: &CreateCall, tags: &[Reference], digests: &[Reference]) -> Option<Reference> {
        let spelled = call.user_specified.as_deref().filter(|s| !s.is_empty()).unwrap_or(&call.image);
        let asked = Reference::parse(spelled).ok()?;
        let same = |r: &Reference| {
            self.aliases.same_repository(r, &asked)
                && match asked.digest() {
                    Some(d) => r.digest() == Some(d),
                    None => r.digest().is_none() && r.tag() == asked.tag(),
                }
        };
        tags.iter().chain(digests).any(same).then_some(asked)
    }

    /// The per-image decision at CreateContainer (and for any other call that puts an image
    /// present in containerd into a container): `call.status` is containerd's record of the
    /// image, `call.user_specified`/`call.image` the name it was asked by.
    ///
    /// - An exemption applies only when the name the pod asked for is exempt (when that name is
    ///   not known: only when every name of the image is exempt).
    /// - Otherwise the policies of that name (unknown: of every name of the image) apply, and
    ///   the image is allowed only when one of its registry digests in that repository verifies
    ///   under all of them **and** the image ID is the config of the manifest that verified: a
    ///   passing digest never admits an image ID that is not what it runs.
    pub(super) async fn decide_create(&self, call: &CreateCall) -> (CreateVerdict, AuditRecord) {
        let mut record = AuditRecord {
            node: self.node.clone(),
            call: "CreateContainer".into(),
            namespace: call.namespace.clone().unwrap_or_default(),
            pod: call.pod.clone(),
            image: call.user_specified.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| call.image.clone()),
            ..Default::default()
        };
        let Some(image) = &call.status else {
            // containerd refuses a container of an image it does not have.
            record.allow(&Reason::ImageAbsent("image not present in containerd; containerd will refuse the container".into()));
            return (CreateVerdict::Forward, record);
        };
        let present = match self.present(call, image) {
            Ok(p) => p,
            Err(reason) => return refuse(record, reason),
        };
        let policy = self.policy();
        // The registry digests to verify: those in the asked repository (unknown: all).
        let candidates: Vec<&Reference> =
            present.digests.iter().filter(|d| present.asked.as_ref().is_none_or(|a| self.aliases.same_repository(a, d))).collect();
        let applicable = self.applicable_to(&policy, &present, &candidates, call.namespace.as_deref());
        record.policy = applicable.label();
        let policies = match applicable {
            Applicable::Policies(p) => p,
            Applicable::Exempt(name) => {
                record.allow(&Reason::Exempt(match &present.asked {
                    Some(r) => format!("{r}: exempt by exemption {name}"),
                    None => format!("every name of image {} is exempt (exemption {name})", image.id),
                }));
                return (CreateVerdict::Forward, record);
            }
            Applicable::Unmatched(Unmatched::Allow) => {
                record.allow(&Reason::UnmatchedAllowed("no policy matches; policy.unmatched is allow".into()));
                return (CreateVerdict::Forward, record);
            }
            Applicable::Unmatched(Unmatched::Deny) => return refuse(record, unmatched(&present)),
        };
        if candidates.is_empty() {
            return refuse(record, self.no_registry_digest(&present));
        }
        let mut failures = Failures::default();
        for reference in candidates {
            if self.try_candidate(&present, reference, &policies, policy.generation, &mut record, &mut failures).await {
                return (CreateVerdict::Forward, record);
            }
        }
        record.deny(&Reason::Several(failures.reasons));
        if failures.enforced {
            record.mode = Some(Mode::Enforce);
            (CreateVerdict::Refuse(record.reason.clone()), record)
        } else {
            (CreateVerdict::Forward, record)
        }
    }

    /// containerd's record of the image, read; a refusal when its image ID is not a digest.
    fn present<'a>(&self, call: &CreateCall, image: &'a api::Image) -> Result<Present<'a>, Reason> {
        let (tags, digests) = registry_names(image);
        let id = Digest::parse(&image.id).map_err(|e| {
            Reason::Uncheckable(format!("containerd reports image ID {:?} for {}: not a digest ({e})", image.id, call.image))
        })?;
        let asked = self.asked_name(call, &tags, &digests);
        Ok(Present { image, id, tags, digests, asked })
    }

    /// What applies to the image: exemptions by the asked name only (unknown: every name must
    /// be exempt); policies by the asked name and the digests to verify (unknown: every name).
    fn applicable_to(&self, policy: &PolicySet, present: &Present<'_>, candidates: &[&Reference], ns: Option<&str>) -> Applicable {
        let scope: Vec<&Reference> = match &present.asked {
            Some(r) => vec![r],
            None => present.tags.iter().chain(present.digests.iter()).collect(),
        };
        let each: Vec<Vec<String>> = scope.iter().map(|r| self.names(r)).collect();
        let mut names: Vec<String> = each.iter().flatten().cloned().chain(candidates.iter().flat_map(|r| self.names(r))).collect();
        names.sort();
        names.dedup();
        policy.applicable_to_each(&each, &names, ns)
    }

    /// Tries one registry digest of the image: the digest itself, then the signed index it was
    /// pinned from (if known), then what the image's tags in this repository point to on the
    /// mirror now. `true` when one verified as what the image runs (`record` then says so);
    /// otherwise each refusal is added to `failures`.
    async fn try_candidate(
        &self,
        present: &Present<'_>,
        reference: &Reference,
        policies: &[Arc<ImagePolicy>],
        generation: u64,
        record: &mut AuditRecord,
        failures: &mut Failures,
    ) -> bool {
        let Some(digest) = reference.digest().cloned() else { return false };
        // What a refusal names: the reference the pod used; unknown (an image ID), the image's
        // tag in this repository, else the repository.
        let shown = match &present.asked {
            Some(_) => record.image.clone(),
            None => {
                present.tags.iter().find(|t| self.aliases.same_repository(t, reference)).map_or_else(|| reference.name(), |t| t.to_string())
            }
        };
        let mut tried: Vec<Digest> = Vec::new();
        let mut queue: Vec<Digest> = vec![digest.clone()];
        queue.extend(self.picked_from(reference));
        let mut tags_resolved = false;
        while let Some(subject) = queue.first().cloned() {
            queue.remove(0);
            if tried.contains(&subject) {
                continue;
            }
            tried.push(subject.clone());
            let subject_ref = reference.with_digest(subject.clone());
            let resolved = Resolved { digest: subject.clone(), platform_digest: None, image: None, manifest: None };
            let mut results = self.check(&subject_ref, &resolved, policies, generation, None).await;
            for (_, outcome, _) in results.iter_mut() {
                runs_this_image(outcome, &subject_ref, &digest, &present.id);
            }
            let checked = self.combine(&shown, &subject.to_string(), &results);
            record.digest = checked.digest.clone();
            record.policy = checked.policy.clone();
            record.mode = Some(checked.mode);
            record.identity = checked.identity.clone();
            record.source = checked.source.clone();
            record.cached = checked.cached;
            if checked.would_allow {
                record.allow(&checked.reason);
                return true;
            }
            if !checked.allowed {
                failures.enforced = true;
            }
            failures.reasons.push(checked.reason);
            if queue.is_empty() && !tags_resolved {
                tags_resolved = true;
                for tag in present.tags.iter().filter(|t| self.aliases.same_repository(t, reference)) {
                    if let Ok(r) = self.checker.resolve(tag, None).await {
                        queue.push(r.digest);
                    }
                }
            }
        }
        false
    }

    /// The refusal of an image without a registry digest to verify (in the asked repository).
    fn no_registry_digest(&self, present: &Present<'_>) -> Reason {
        let id = &present.image.id;
        Reason::NoRegistryDigest(match &present.asked {
            Some(a) if !present.digests.is_empty() => format!("image {id} has no registry digest in repository {}, the name the pod asked for, so its signature cannot be checked", self.aliases.name(a)),
            _ => format!("image {id} has no registry digest (imported or built on the node, not pulled from a registry), so its signature cannot be checked"),
        })
    }
}

/// The refusal of an image no policy matches under `unmatched: deny`.
fn unmatched(present: &Present<'_>) -> Reason {
    let image = present.image;
    let shown = present
        .asked
        .as_ref()
        .map(|r| r.to_string())
        .or(image.repo_tags.first().or(image.repo_digests.first()).cloned())
        .unwrap_or_else(|| image.id.clone());
    Reason::Unmatched(format!("image {shown} ({}) matches no policy and policy.unmatched is deny", image.id))
}

/// An allowed `outcome` stands only when the verified manifest is what the image is (the
/// digest itself, or the entry pinned from the index) and its config is the image ID `id`;
/// otherwise it becomes an image-mismatch refusal.
fn runs_this_image(outcome: &mut Arc<Outcome>, subject_ref: &Reference, digest: &Digest, id: &Digest) {
    if !outcome.allowed {
        return;
    }
    let subject = subject_ref.digest();
    let runs = outcome.pin.as_ref().is_some_and(|p| p == digest || Some(p) == subject);
    if runs && outcome.configs.contains(id) {
        return;
    }
    let mut o = (**outcome).clone();
    o.allowed = false;
    o.reason = Reason::ImageMismatch(format!(
        "{subject_ref} verified, but image {id} is not what it runs (verified manifest {}, config {})",
        o.pin.as_ref().map(|d| d.to_string()).unwrap_or_default(),
        o.configs.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
    ));
    *outcome = Arc::new(o);
}
