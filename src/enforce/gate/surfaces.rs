//! The surfaces beyond PullImage and a container's own present image (`src/cri/methods.rs`):
//! image volumes, the sandbox image, images containerd does not have (a checkpoint archive to
//! restore), and calls that name no image at all.
//!
//! Every image here goes through the same per-image decision as a container's image
//! ([`Enforcer::decide_create`]), asked by the name the call used; this module only says which
//! image, names it in the reason (`image volume /data: ...`, `sandbox image ...: ...`), and
//! marks the audit record's `surface`. What cannot be checked is refused whenever something is
//! enforced ([`PolicySet::enforces`](crate::policy::PolicySet::enforces)), and let
//! through with a `deny` record otherwise (audit mode).

use std::time::Instant;

use super::{match_names, AuditRecord, Enforcer};
use crate::cri::intercept::{CreateCall, CreateVerdict, MountImage, SandboxCall, Unchecked, UncheckedCall};
use crate::enforce::decision::Reason;
use crate::policy::{Applicable, Mode, Unmatched};
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
            let decided = self.decide_create(call).await;
            self.break_glass_image(call, decided)
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
        if let Some(a) = &applicable {
            record.policy = a.label();
        }
        let enforce = match &applicable {
            Some(Applicable::Exempt(name)) => {
                record.allow(&Reason::Exempt(format!("exempt by exemption {name} (not present in containerd)")));
                return (CreateVerdict::Forward, record);
            }
            Some(Applicable::Unmatched(Unmatched::Allow)) => {
                record.allow(&Reason::UnmatchedAllowed("no policy matches; policy.unmatched is allow (not present in containerd)".into()));
                return (CreateVerdict::Forward, record);
            }
            Some(Applicable::Unmatched(Unmatched::Deny)) => true,
            Some(Applicable::Policies(p)) => Mode::of(p) == Mode::Enforce,
            None => policy.enforces(),
        };
        record.mode = Some(if enforce { Mode::Enforce } else { Mode::Audit });
        record.deny(&Reason::Uncheckable(format!(
            "image {} is not present in containerd, so pullgate cannot check it (a checkpoint archive to restore, or an image never pulled): pull it through pullgate first",
            call.image
        )));
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
            // The volume's image is named by the mount itself.
            user_specified: None,
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
            record.mode = Some(if enforce { Mode::Enforce } else { Mode::Audit });
            record.deny(&Reason::Uncheckable("containerd does not report its sandbox image (containerd 2.x keeps it in pinned_images.sandbox), so pullgate cannot check what the pod would run: set cri.sandbox_image in pullgate's configuration to that image".into()));
            let verdict = if enforce { CreateVerdict::Refuse(record.reason.clone()) } else { CreateVerdict::Forward };
            return (verdict, record);
        };
        let image_call = CreateCall {
            image: image.clone(),
            user_specified: None,
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
        if call.kind == Unchecked::UnknownImageMethod && self.allowed_methods.contains(&call.path) {
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
        let mut record = AuditRecord {
            node: self.node.clone(),
            call: call.path.clone(),
            surface: surface.into(),
            mode: Some(if enforce { Mode::Enforce } else { Mode::Audit }),
            ..Default::default()
        };
        record.deny(&Reason::Uncheckable(format!(
            "{reason} (caller uid {}{})",
            call.uid,
            call.pid.map(|p| format!(", pid {p}")).unwrap_or_default()
        )));
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cri::api;
    use crate::cri::intercept::BoxFuture;
    use crate::enforce::audit::{AuditConfig, AuditLog};
    use crate::enforce::gate::{CacheConfig, Checker, Outcome, Resolved, TrustStatus};
    use crate::policy::{ImagePolicy, PolicyConfig};
    use crate::registry::Error as RegistryError;

    const SIGNED: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const UNSIGNED: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// Stands in for the mirror: images with digest `SIGNED` verify, everything else does not.
    struct FakeChecker;
    impl Checker for FakeChecker {
        fn resolve<'a>(&'a self, r: &'a Reference, _: Option<&'a api::AuthConfig>) -> BoxFuture<'a, Result<Resolved, RegistryError>> {
            Box::pin(async move { Err(super::super::tests::not_found(r)) })
        }
        fn verify<'a>(
            &'a self,
            _: &'a Reference,
            r: &'a Resolved,
            _: &'a ImagePolicy,
            _: Option<&'a api::AuthConfig>,
        ) -> BoxFuture<'a, Outcome> {
            let allowed = r.digest.to_string() == SIGNED;
            let reason = if allowed { Reason::Verified("verified".into()) } else { Reason::NoSignatures("no signatures found".into()) };
            // A verified manifest admits its own config: the image ID `present` reports.
            let pin = allowed.then(|| r.digest.clone());
            let configs = if allowed {
                crate::registry::Digest::parse(&format!("sha256:{}", "c".repeat(64))).into_iter().collect()
            } else {
                Vec::new()
            };
            Box::pin(async move { Outcome { allowed, reason, pin, configs, ..Default::default() } })
        }
        fn trust(&self) -> TrustStatus {
            TrustStatus { generation: 1, unusable: None }
        }
    }

    fn enforcer(mode: &str, unmatched: &str) -> Enforcer {
        let yaml = format!(
            "unmatched: {unmatched}\nexemptions:\n  - name: sandbox\n    images: [\"reg.test:5000/pause:*\"]\npolicies:\n  - name: demo\n    images: [\"reg.test:5000/demo/**\"]\n    mode: {mode}\n    authorities:\n      - name: ci\n        keyless:\n          identities:\n            - issuer: https://issuer\n              subject: https://subject\n"
        );
        let config: PolicyConfig = crate::settings::parse_yaml(&yaml, std::path::Path::new("test.yaml")).unwrap();
        let audit = AuditLog::new(&AuditConfig::Off).unwrap();
        Enforcer::new(config.compile(1).unwrap(), &CacheConfig::default(), Arc::new(FakeChecker), audit, "node".into())
            .with_allowed_methods(vec!["/runtime.v1.ImageService/FetchImage".into()])
    }

    fn present(name: &str, digest: &str) -> Option<api::Image> {
        Some(api::Image {
            id: format!("sha256:{}", "c".repeat(64)),
            repo_digests: vec![format!("{name}@{digest}")],
            repo_tags: vec![format!("{name}:1")],
            ..Default::default()
        })
    }

    fn call(image: &str, status: Option<api::Image>) -> CreateCall {
        CreateCall {
            image: image.into(),
            user_specified: None,
            namespace: Some("team".into()),
            pod: "team/web".into(),
            container: "app".into(),
            status,
        }
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn absent_images_are_refused_when_enforced() {
        let e = enforcer("enforce", "deny");
        let (v, r) = block(e.decide_image(&call("/var/lib/kubelet/checkpoints/c.tar", None)));
        assert!(matches!(&v, CreateVerdict::Refuse(m) if m.contains("not present in containerd") && m.contains("checkpoint")), "{v:?}");
        assert_eq!((r.decision.as_str(), r.mode.map_or("", Mode::as_str)), ("deny", "enforce"));
        let (v, _) = block(e.decide_image(&call("reg.test:5000/demo/app:1", None)));
        assert!(matches!(v, CreateVerdict::Refuse(_)));
        // Exempt names need no content to check.
        let (v, r) = block(e.decide_image(&call("reg.test:5000/pause:1", None)));
        assert_eq!(v, CreateVerdict::Forward);
        assert_eq!(r.decision, "allow");
        // Audit mode, unmatched allowed: let through, recorded as what enforce would refuse.
        let a = enforcer("audit", "allow");
        let (v, r) = block(a.decide_image(&call("reg.test:5000/demo/app:1", None)));
        assert_eq!(v, CreateVerdict::Forward);
        assert_eq!((r.decision.as_str(), r.mode.map_or("", Mode::as_str)), ("deny", "audit"));
    }

    #[test]
    fn image_volumes_are_named_in_the_refusal_and_recorded_apart() {
        let e = enforcer("enforce", "deny");
        let container = call("reg.test:5000/demo/app:1", present("reg.test:5000/demo/app", SIGNED));
        let (v, r) = block(e.decide_mount(
            &container,
            &MountImage {
                container_path: "/data".into(),
                image: "reg.test:5000/demo/unsigned:1".into(),
                status: present("reg.test:5000/demo/unsigned", UNSIGNED),
            },
        ));
        assert!(
            matches!(&v, CreateVerdict::Refuse(m) if m.starts_with("image volume /data: ") && m.contains("no signatures found")),
            "{v:?}"
        );
        assert_eq!(
            (r.surface.as_str(), r.call.as_str(), r.image.as_str()),
            ("image volume /data", "CreateContainer", "reg.test:5000/demo/unsigned:1")
        );
        let (v, r) = block(e.decide_mount(
            &container,
            &MountImage {
                container_path: "/models".into(),
                image: "reg.test:5000/demo/app:1".into(),
                status: present("reg.test:5000/demo/app", SIGNED),
            },
        ));
        assert_eq!(v, CreateVerdict::Forward);
        assert_eq!((r.decision.as_str(), r.surface.as_str()), ("allow", "image volume /models"));
        // One bad volume among good ones refuses the call.
        let mounts = [
            MountImage {
                container_path: "/a".into(),
                image: "reg.test:5000/demo/app:1".into(),
                status: present("reg.test:5000/demo/app", SIGNED),
            },
            MountImage {
                container_path: "/b".into(),
                image: "reg.test:5000/demo/unsigned:1".into(),
                status: present("reg.test:5000/demo/unsigned", UNSIGNED),
            },
        ];
        assert!(matches!(block(e.gate_mounts(&container, &mounts)), CreateVerdict::Refuse(m) if m.starts_with("image volume /b: ")));
    }

    #[test]
    fn sandbox_image_is_decided_like_a_container_image() {
        let e = enforcer("enforce", "deny");
        let sandbox = |image: Option<&str>, status| SandboxCall {
            image: image.map(String::from),
            namespace: Some("team".into()),
            pod: "team/web".into(),
            status,
        };
        let (v, r) =
            block(e.decide_sandbox(&sandbox(Some("reg.test:5000/demo/unsigned:1"), present("reg.test:5000/demo/unsigned", UNSIGNED))));
        assert!(matches!(&v, CreateVerdict::Refuse(m) if m.starts_with("sandbox image reg.test:5000/demo/unsigned:1: ")), "{v:?}");
        assert_eq!((r.call.as_str(), r.surface.as_str()), ("RunPodSandbox", "sandbox image"));
        let (v, _) = block(e.decide_sandbox(&sandbox(Some("reg.test:5000/pause:1"), present("reg.test:5000/pause", UNSIGNED))));
        assert_eq!(v, CreateVerdict::Forward);
        let (v, _) = block(e.decide_sandbox(&sandbox(None, None)));
        assert!(matches!(&v, CreateVerdict::Refuse(m) if m.contains("cri.sandbox_image")), "{v:?}");
        let (v, r) = block(enforcer("audit", "allow").decide_sandbox(&sandbox(None, None)));
        assert_eq!((v, r.mode.map_or("", Mode::as_str)), (CreateVerdict::Forward, "audit"));
    }

    #[test]
    fn calls_without_an_image_are_refused_when_enforced() {
        let e = enforcer("enforce", "deny");
        let unchecked = |path: &str, kind| UncheckedCall { path: path.into(), kind, uid: 0, pid: Some(7) };
        let (v, r) = e.decide_unchecked(&unchecked("/containerd.services.images.v1.Images/Create", Unchecked::NotCri)).unwrap();
        assert!(matches!(&v, CreateVerdict::Refuse(m) if m.contains("only the CRI API")), "{v:?}");
        assert_eq!((r.surface.as_str(), r.decision.as_str()), ("not CRI", "deny"));
        assert!(r.reason.contains("uid 0, pid 7"));
        let (v, _) = e.decide_unchecked(&unchecked("/runtime.v1.ImageService/Other", Unchecked::UnknownImageMethod)).unwrap();
        assert!(matches!(&v, CreateVerdict::Refuse(m) if m.contains("cri.allow_image_methods")));
        assert!(e.decide_unchecked(&unchecked("/runtime.v1.ImageService/FetchImage", Unchecked::UnknownImageMethod)).is_none());
        let (v, r) = enforcer("audit", "allow").decide_unchecked(&unchecked("/grpc.health.v1.Health/Check", Unchecked::NotCri)).unwrap();
        assert_eq!((v, r.mode.map_or("", Mode::as_str)), (CreateVerdict::Forward, "audit"));
    }
}
