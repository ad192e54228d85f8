//! The surfaces beyond PullImage and a container's own present image (`src/cri/methods.rs`):
//! image volumes, the sandbox image, images containerd does not have (a checkpoint archive to
//! restore), and calls that name no image at all.
//!
//! Every image here goes through the same per-image decision as a container's image
//! ([`Enforcer::decide_create`]), asked by the name the call used; this module only says which
//! image, names it in the reason (`image volume /data: ...`, `sandbox image ...: ...`), and
//! marks the audit record's `surface`. What cannot be checked is refused whenever something is
//! enforced ([`PolicySet::enforces`](crate::enforce::policy::PolicySet::enforces)), and let
//! through with a `deny` record otherwise (audit mode).

use std::time::Instant;

use super::{match_names, AuditRecord, Enforcer};
use crate::cri::intercept::{CreateCall, CreateVerdict, MountImage, SandboxCall, Unchecked, UncheckedCall};
use crate::enforce::policy::{Applicable, Mode, Unmatched};
use crate::registry::reference::Reference;

impl Enforcer {
    /// Lets these `ImageService` paths through although pullgate does not know them
    /// (`cri.allow_image_methods`, already validated).
    pub fn with_allowed_methods(mut self, paths: Vec<String>) -> Enforcer {
        self.allowed_methods = paths;
        self
    }

    /// One image a container would run or mount, by the name the call used: a present image
    /// takes the per-image decision, an absent one [`Self::decide_absent`].
    pub(super) async fn decide_image(&self, call: &CreateCall) -> (CreateVerdict, AuditRecord) {
        if call.status.is_some() {
            self.decide_create(call).await
        } else {
            self.decide_absent(call)
        }
    }

    /// An image containerd does not have. containerd 1.6 refuses such a container, but 2.x
    /// restores a checkpoint archive named by path, which carries its own root filesystem: nothing
    /// pullgate can verify. So it is refused unless nothing enforces it (exempt or unmatched
    /// and allowed by name; audit mode).
    fn decide_absent(&self, call: &CreateCall) -> (CreateVerdict, AuditRecord) {
        let mut record = self.record("CreateContainer", call);
        let policy = self.policy();
        let applicable = Reference::parse(&call.image).ok().map(|r| policy.applicable(&match_names(&r), call.namespace.as_deref()));
        let enforce = match &applicable {
            Some(Applicable::Exempt(name)) => {
                record.policy = format!("exempt:{name}");
                record.decision = "allow".into();
                record.reason = format!("exempt by exemption {name} (not present in containerd)");
                return (CreateVerdict::Forward, record);
            }
            Some(Applicable::Unmatched(Unmatched::Allow)) => {
                record.policy = "unmatched".into();
                record.decision = "allow".into();
                record.reason = "no policy matches; policy.unmatched is allow (not present in containerd)".into();
                return (CreateVerdict::Forward, record);
            }
            Some(Applicable::Unmatched(Unmatched::Deny)) => {
                record.policy = "unmatched".into();
                true
            }
            Some(Applicable::Policies(p)) => {
                record.policy = p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(",");
                p.iter().any(|p| p.mode == Mode::Enforce)
            }
            None => policy.enforces(),
        };
        record.mode = if enforce { Mode::Enforce } else { Mode::Audit }.as_str().into();
        record.decision = "deny".into();
        record.reason = format!(
            "image {} is not present in containerd, so pullgate cannot check it (a checkpoint archive to restore, or an image never pulled): pull it through pullgate first",
            call.image
        );
        let verdict = if enforce { CreateVerdict::Refuse(record.reason.clone()) } else { CreateVerdict::Forward };
        (verdict, record)
    }

    /// Every image volume of a container, each decided and recorded on its own; the first
    /// refusal refuses the call.
    pub(super) async fn gate_mounts(&self, call: &CreateCall, mounts: &[MountImage]) -> CreateVerdict {
        let mut refusal = None;
        for mount in mounts {
            let started = Instant::now();
            let (verdict, record) = self.decide_mount(call, mount).await;
            self.finish(started, record, matches!(verdict, CreateVerdict::Refuse(_)));
            if let CreateVerdict::Refuse(reason) = verdict {
                refusal.get_or_insert(reason);
            }
        }
        refusal.map_or(CreateVerdict::Forward, CreateVerdict::Refuse)
    }

    async fn decide_mount(&self, call: &CreateCall, mount: &MountImage) -> (CreateVerdict, AuditRecord) {
        let image = CreateCall {
            image: mount.image.clone(),
            namespace: call.namespace.clone(),
            pod: call.pod.clone(),
            container: call.container.clone(),
            status: mount.status.clone(),
        };
        let (verdict, mut record) = self.decide_image(&image).await;
        record.surface = format!("image volume {}", mount.container_path);
        (named(verdict, &format!("image volume {}", mount.container_path)), record)
    }

    /// The sandbox image containerd would run for a pod.
    pub(super) async fn decide_sandbox(&self, call: &SandboxCall) -> (CreateVerdict, AuditRecord) {
        let Some(image) = &call.image else {
            let mut record = AuditRecord {
                node: self.node.clone(),
                call: "RunPodSandbox".into(),
                namespace: call.namespace.clone().unwrap_or_default(),
                pod: call.pod.clone(),
                surface: "sandbox image".into(),
                ..Default::default()
            };
            let enforce = self.policy().enforces();
            record.mode = if enforce { Mode::Enforce } else { Mode::Audit }.as_str().into();
            record.decision = "deny".into();
            record.reason = "containerd does not report its sandbox image (containerd 2.x keeps it in pinned_images.sandbox), so pullgate cannot check what the pod would run: set cri.sandbox_image in pullgate's configuration to that image".into();
            let verdict = if enforce { CreateVerdict::Refuse(record.reason.clone()) } else { CreateVerdict::Forward };
            return (verdict, record);
        };
        let image_call = CreateCall {
            image: image.clone(),
            namespace: call.namespace.clone(),
            pod: call.pod.clone(),
            container: String::new(),
            status: call.status.clone(),
        };
        let (verdict, mut record) = self.decide_image(&image_call).await;
        record.call = "RunPodSandbox".into();
        record.surface = "sandbox image".into();
        (named(verdict, &format!("sandbox image {image}")), record)
    }

    /// A call that names no image: refused when anything is enforced, unless it is an
    /// `ImageService` method configuration allows by name (then `None`: forwarded, no record).
    pub(super) fn decide_unchecked(&self, call: &UncheckedCall) -> Option<(CreateVerdict, AuditRecord)> {
        if call.kind == Unchecked::UnknownImageMethod && self.allowed_methods.iter().any(|p| *p == call.path) {
            return None;
        }
        let (surface, reason) = match call.kind {
            Unchecked::NotCri => (
                "not CRI",
                format!(
                    "pullgate forwards only the CRI API (runtime.v1 and runtime.v1alpha2 RuntimeService and ImageService), not {}: use containerd's own socket for its native API",
                    call.path
                ),
            ),
            Unchecked::UnknownImageMethod => (
                "unknown ImageService method",
                format!(
                    "pullgate does not know {} and cannot tell whether it brings an image onto the node; if it does not, allow it by name in cri.allow_image_methods",
                    call.path
                ),
            ),
        };
        let enforce = self.policy().enforces();
        let record = AuditRecord {
            node: self.node.clone(),
            call: call.path.clone(),
            surface: surface.into(),
            mode: if enforce { Mode::Enforce } else { Mode::Audit }.as_str().into(),
            decision: "deny".into(),
            reason: format!("{reason} (caller uid {}{})", call.uid, call.pid.map(|p| format!(", pid {p}")).unwrap_or_default()),
            ..Default::default()
        };
        let verdict = if enforce { CreateVerdict::Refuse(reason) } else { CreateVerdict::Forward };
        Some((verdict, record))
    }

    fn record(&self, name: &str, call: &CreateCall) -> AuditRecord {
        AuditRecord {
            node: self.node.clone(),
            call: name.into(),
            namespace: call.namespace.clone().unwrap_or_default(),
            pod: call.pod.clone(),
            image: call.image.clone(),
            ..Default::default()
        }
    }
}

/// Prefixes a refusal with the image it is about, so the pod's event names the mount or the
/// sandbox image, not only the image reference.
fn named(verdict: CreateVerdict, what: &str) -> CreateVerdict {
    match verdict {
        CreateVerdict::Refuse(reason) => CreateVerdict::Refuse(format!("{what}: {reason}")),
        v => v,
    }
}
