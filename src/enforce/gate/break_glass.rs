//! The break-glass hook (`crate::enforce::break_glass`): after the normal decision has refused
//! an image, an open window naming that image's digest lets it through, with an audit record
//! and a warning saying so. It never decides on its own: it only turns a refusal into an
//! allowance, and only by digest.
//!
//! - PullImage: the reference kubelet asked for must carry the digest (a tag never matches,
//!   even when the mirror resolves it to a digest in a window: the mirror is what is in doubt).
//! - CreateContainer, image volumes, the sandbox image: one of the image's registry digests as
//!   containerd records them (in the repository the pod asked for, when known), which pins the
//!   content whatever tag the pod used. Images containerd does not have are never let through.

use jiff::Timestamp;

use super::{AuditRecord, Enforcer};
use crate::cri::intercept::{CreateCall, CreateVerdict, PullCall, PullVerdict};
use crate::enforce::break_glass::{BreakGlass, Use};
use crate::enforce::decision::Reason;
use crate::policy::Mode;
use crate::registry::reference::Reference;

impl Enforcer {
    /// Honours the break-glass windows of `break_glass` (the daemon's, in the state directory).
    pub fn with_break_glass(mut self, break_glass: BreakGlass) -> Enforcer {
        self.break_glass = break_glass;
        self
    }

    /// The break-glass windows in force (reloaded by the daemon, read by metrics).
    pub fn break_glass(&self) -> &BreakGlass {
        &self.break_glass
    }

    /// A refused PullImage of a digest in an open window: forwarded as asked.
    pub(super) fn break_glass_pull(&self, call: &PullCall, decided: (PullVerdict, AuditRecord)) -> (PullVerdict, AuditRecord) {
        let (verdict, record) = decided;
        if !matches!(verdict, PullVerdict::Refuse(_)) {
            return (verdict, record);
        }
        let used = Reference::parse(&call.image).ok().and_then(|r| self.break_glass.matching(&self.aliases, &r, Timestamp::now()));
        match used {
            Some(used) => (PullVerdict::Forward, broken(record, &used)),
            None => (verdict, record),
        }
    }

    /// A refused image at CreateContainer (or an image volume, or the sandbox image) with a
    /// registry digest in an open window: forwarded.
    pub(super) fn break_glass_image(&self, call: &CreateCall, decided: (CreateVerdict, AuditRecord)) -> (CreateVerdict, AuditRecord) {
        let (verdict, record) = decided;
        let (CreateVerdict::Refuse(_), Some(image)) = (&verdict, &call.status) else {
            return (verdict, record);
        };
        let (tags, digests) = super::create::registry_names(image);
        let asked = self.asked_name(call, &tags, &digests);
        let now = Timestamp::now();
        let used = digests
            .iter()
            .filter(|d| match &asked {
                Some(a) => self.aliases.same_repository(a, d) && a.digest().is_none_or(|want| d.digest() == Some(want)),
                None => true,
            })
            .find_map(|d| self.break_glass.matching(&self.aliases, d, now));
        match used {
            Some(used) => (CreateVerdict::Forward, broken(record, &used)),
            None => (verdict, record),
        }
    }
}

/// The refusal `record`, turned into a break-glass allowance.
fn broken(mut record: AuditRecord, used: &Use) -> AuditRecord {
    let refused = std::mem::take(&mut record.reason);
    let w = &used.window;
    tracing::warn!(
        call = %record.call,
        image = %record.image,
        window_image = %used.image,
        reason = %w.reason,
        opened_by = %w.opened_by,
        expires_at = %w.expires_at,
        refused = %refused,
        "break-glass: letting a refused image through"
    );
    if record.digest.is_empty() {
        record.digest = used.image.rsplit_once('@').map(|(_, d)| d.to_string()).unwrap_or_default();
    }
    record.allow(&Reason::BreakGlass(format!(
        "break-glass: {} is in a window opened by {} until {} ({}); refused otherwise: {refused}",
        used.image, w.opened_by, w.expires_at, w.reason
    )));
    record.mode = Some(Mode::Enforce);
    record.break_glass = Some(used.record(refused));
    record
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::cri::api;
    use crate::cri::intercept::{BoxFuture, Gate, SandboxCall};
    use crate::enforce::audit::{AuditConfig, AuditLog};
    use crate::enforce::break_glass::{store, Operator, Window, Windows};
    use crate::enforce::gate::{CacheConfig, Checker, Outcome, Resolved, TrustStatus};
    use crate::policy::{ImagePolicy, PolicyConfig};
    use crate::registry::reference::Aliases;
    use crate::registry::Error as RegistryError;
    use crate::trust::{Limit, StaleError, TrustUnavailable};

    const ETCD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const OTHER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// A node in trouble: the trust root is unusable, so everything under a policy is refused.
    struct Stale;
    impl Checker for Stale {
        fn resolve<'a>(&'a self, r: &'a Reference, _: Option<&'a api::AuthConfig>) -> BoxFuture<'a, Result<Resolved, RegistryError>> {
            let digest = r.digest().cloned();
            Box::pin(async move {
                digest
                    .map(|digest| Resolved { digest, platform_digest: None, image: None, manifest: None })
                    .ok_or_else(|| super::super::tests::not_found(r))
            })
        }
        fn verify<'a>(
            &'a self,
            _: &'a Reference,
            _: &'a Resolved,
            _: &'a ImagePolicy,
            _: Option<&'a api::AuthConfig>,
        ) -> BoxFuture<'a, Outcome> {
            Box::pin(async { Outcome::default() })
        }
        fn trust(&self) -> TrustStatus {
            let since = "2026-01-01T00:00:00Z".parse().unwrap_or_default();
            TrustStatus { generation: 1, unusable: Some(TrustUnavailable::Stale(StaleError { since, limit: Limit::MaxAge })) }
        }
    }

    fn enforcer(dir: &std::path::Path, images: &[&str]) -> Enforcer {
        let yaml = "unmatched: deny\npolicies:\n  - name: cp\n    images: [\"reg.test/**\"]\n    authorities:\n      - name: ci\n        keyless:\n          identities:\n            - issuer: https://issuer\n              subject: https://subject\n";
        let config: PolicyConfig = crate::settings::parse_yaml(yaml, std::path::Path::new("test.yaml")).unwrap();
        let now = Timestamp::now();
        let window = Window {
            images: images.iter().map(|s| s.to_string()).collect(),
            reason: "INC-1".into(),
            opened_at: now,
            expires_at: now.checked_add(jiff::SignedDuration::from_secs(3600)).unwrap(),
            opened_by: Operator { uid: 0, user: "root".into(), sudo_user: Some("alice".into()), host: "cp-1".into() },
        };
        store::write(&dir.join("break-glass.json"), &Windows { version: 1, windows: vec![window] }).unwrap();
        let bg = BreakGlass::in_state_dir(dir);
        bg.reload();
        let aliases = Aliases::new(&BTreeMap::from([("reg.test".to_string(), vec!["reg-alias.test".to_string()])])).unwrap();
        Enforcer::new(
            config.compile(1).unwrap(),
            &CacheConfig::default(),
            Arc::new(Stale),
            AuditLog::new(&AuditConfig::Off).unwrap(),
            "cp-1".into(),
        )
        .with_aliases(aliases)
        .with_break_glass(bg)
    }

    fn present(name: &str, digest: &str, tag: &str) -> Option<api::Image> {
        Some(api::Image {
            id: format!("sha256:{}", "c".repeat(64)),
            repo_digests: vec![format!("{name}@{digest}")],
            repo_tags: vec![format!("{name}:{tag}")],
            ..Default::default()
        })
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn pulls_by_digest_in_a_window_pass_and_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let e = enforcer(dir.path(), &[&format!("reg.test/etcd@{ETCD}")]);
        let pull = |image: String| block(e.pull(&PullCall { image, ..Default::default() }));
        assert_eq!(pull(format!("reg.test/etcd@{ETCD}")), PullVerdict::Forward);
        assert_eq!(pull(format!("reg-alias.test/etcd@{ETCD}")), PullVerdict::Forward, "another spelling of the registry");
        let (v, r) = e.break_glass_pull(
            &PullCall { image: format!("reg.test/etcd@{ETCD}"), ..Default::default() },
            block(e.decide_pull(&PullCall { image: format!("reg.test/etcd@{ETCD}"), ..Default::default() })),
        );
        assert_eq!(v, PullVerdict::Forward);
        assert_eq!((r.decision.as_str(), r.mode.map_or("", Mode::as_str)), ("allow", "enforce"));
        let bg = r.break_glass.expect("the record says break-glass");
        assert_eq!((bg.reason.as_str(), bg.opened_by.as_str()), ("INC-1", "alice via sudo as root (uid 0) on cp-1"));
        assert!(bg.refused.contains("trust root stale since"), "{bg:?}");
        assert!(r.reason.starts_with("break-glass: "), "{}", r.reason);
        // Never a tag (not even one resolving to the digest), another digest or repository.
        for image in ["reg.test/etcd:3.5".to_string(), format!("reg.test/etcd@{OTHER}"), format!("reg.test/other@{ETCD}")] {
            assert!(matches!(pull(image.clone()), PullVerdict::Refuse(_)), "{image}");
        }
    }

    #[test]
    fn present_images_pass_by_their_recorded_digest_on_every_surface() {
        let dir = tempfile::tempdir().unwrap();
        let e = enforcer(dir.path(), &[&format!("reg.test/etcd@{ETCD}")]);
        let call = |image: &str, status| CreateCall {
            image: image.into(),
            namespace: Some("kube-system".into()),
            pod: "kube-system/etcd-cp-1".into(),
            status,
            ..Default::default()
        };
        // A static pod naming its image by tag: the image containerd holds has the digest.
        assert_eq!(block(e.create(&call("reg.test/etcd:3.5", present("reg.test/etcd", ETCD, "3.5")))), CreateVerdict::Forward);
        // The asked repository must hold the digest; another digest is refused.
        assert!(matches!(block(e.create(&call("reg.test/other:1", present("reg.test/other", ETCD, "1")))), CreateVerdict::Refuse(_)));
        assert!(matches!(block(e.create(&call("reg.test/etcd:3.5", present("reg.test/etcd", OTHER, "3.5")))), CreateVerdict::Refuse(_)));
        // Not present in containerd: nothing to pin, refused.
        assert!(matches!(block(e.create(&call("reg.test/etcd:3.5", None))), CreateVerdict::Refuse(_)));
        // The sandbox image goes through the same hook.
        let sandbox = SandboxCall {
            image: Some("reg.test/etcd:3.5".into()),
            namespace: None,
            pod: "p".into(),
            status: present("reg.test/etcd", ETCD, "3.5"),
        };
        assert_eq!(block(e.sandbox(&sandbox)), CreateVerdict::Forward);
    }
}
