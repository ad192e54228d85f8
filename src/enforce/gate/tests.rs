//! The enforcer's rules with a fake [`Checker`] (no registry, no signatures: each digest's
//! verification outcome is given).
use super::*;
use crate::cri::api;
use crate::enforce::audit::AuditConfig;
use crate::policy::PolicyConfig;
use std::collections::BTreeMap;

const KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6Ie0Fvwx1B3bMWPAMjMt5LIpn/pd\nG3EeWqgqk4XyV3U/cQGJwdZdWSmV0Nf1E0hu8fVUnM6u8oqvXs5yBn0CUQ==\n-----END PUBLIC KEY-----\n";
const REG: &str = "127.0.0.1:5000";

fn d(n: u8) -> Digest {
    Digest::sha256(&[n])
}

#[derive(Default)]
struct Fake {
    /// digest -> outcome of verifying it.
    outcomes: HashMap<String, Outcome>,
    /// tag reference -> digest on the mirror.
    tags: HashMap<String, Digest>,
    /// Repositories the mirror does not have: every verification there fails.
    missing: Vec<String>,
    /// A password the mirror refuses.
    wrong_password: Option<String>,
    /// Verifications asked for (cache misses).
    verified: std::sync::atomic::AtomicUsize,
    /// The trust root's generation, and why it is unusable (if it is).
    trust_generation: std::sync::atomic::AtomicU64,
    trust_unusable: Mutex<Option<TrustUnavailable>>,
}

/// What the mirror says of a tag it does not have.
pub(super) fn not_found(reference: &Reference) -> RegistryError {
    crate::registry::ResolveError::NotFound { reference: reference.to_string(), endpoints: "the fake mirror".into() }.into()
}

impl Checker for Fake {
    fn resolve<'a>(&'a self, reference: &'a Reference, _: Option<&'a AuthConfig>) -> BoxFuture<'a, Result<Resolved, RegistryError>> {
        Box::pin(async move {
            let digest = match reference.digest() {
                Some(d) => d.clone(),
                None => self.tags.get(&reference.to_string()).cloned().ok_or_else(|| not_found(reference))?,
            };
            Ok(Resolved { digest, platform_digest: None, image: None, manifest: None })
        })
    }
    fn verify<'a>(
        &'a self,
        reference: &'a Reference,
        resolved: &'a Resolved,
        _: &'a ImagePolicy,
        auth: Option<&'a AuthConfig>,
    ) -> BoxFuture<'a, Outcome> {
        self.verified.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            let deny = |reason: &str| Outcome { allowed: false, reason: Reason::Mirror(reason.into()), ..Default::default() };
            if self.missing.iter().any(|m| m == reference.repository()) {
                return deny("cannot fetch: not found");
            }
            if auth.is_some_and(|a| Some(&a.password) == self.wrong_password.as_ref()) {
                return deny("cannot fetch: unauthorized");
            }
            self.outcomes.get(&resolved.digest.to_string()).cloned().unwrap_or(Outcome {
                allowed: false,
                reason: Reason::NoSignatures("no signatures found".into()),
                ..Default::default()
            })
        })
    }
    fn trust(&self) -> TrustStatus {
        TrustStatus {
            generation: self.trust_generation.load(std::sync::atomic::Ordering::Relaxed),
            unusable: self.trust_unusable.lock().unwrap().clone(),
        }
    }
}

fn signed(pin: Digest, config: Digest) -> Outcome {
    Outcome { allowed: true, reason: Reason::Verified("verified".into()), pin: Some(pin), configs: vec![config], ..Default::default() }
}

fn enforcer(fake: Fake, unmatched: &str, multi_arch: &str) -> Enforcer {
    enforcer_in(Arc::new(fake), unmatched, multi_arch, "enforce")
}

fn policy_set(unmatched: &str, multi_arch: &str, mode: &str, generation: u64) -> PolicySet {
    let yaml = format!(
        "unmatched: {unmatched}\nexemptions:\n  - name: sandbox\n    images: [\"{REG}/pause:*\"]\npolicies:\n  - name: demo\n    images: [\"{REG}/demo/**\"]\n    mode: {mode}\n    multi_arch: {multi_arch}\n    authorities:\n      - name: k\n        key:\n          data: \"{}\"\n",
        KEY.replace('\n', "\\n")
    );
    let cfg: PolicyConfig = serde_saphyr::from_str(&yaml).unwrap();
    cfg.compile(generation).unwrap()
}

fn enforcer_in(fake: Arc<Fake>, unmatched: &str, multi_arch: &str, mode: &str) -> Enforcer {
    let aliases = Aliases::new(&BTreeMap::from([(REG.to_string(), vec!["localhost:5000".to_string()])])).unwrap();
    Enforcer::new(
        policy_set(unmatched, multi_arch, mode, 1),
        &CacheConfig::default(),
        fake,
        AuditLog::new(&AuditConfig::Off).unwrap(),
        "node".into(),
    )
    .with_aliases(aliases)
}

fn pull(image: &str) -> PullCall {
    PullCall { image: image.into(), ..Default::default() }
}

fn create(image: &str, user_specified: Option<&str>, id: &Digest, tags: &[&str], digests: &[String]) -> CreateCall {
    CreateCall {
        image: image.into(),
        user_specified: user_specified.map(str::to_string),
        status: Some(api::Image {
            id: id.to_string(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: digests.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn refused(v: &CreateVerdict) -> bool {
    matches!(v, CreateVerdict::Refuse(_))
}

#[tokio::test]
async fn pulls_are_pinned_to_the_verified_platform_manifest() {
    // Index I, signed; pullgate's pick for this node is P (config C).
    let (i, p, c) = (d(1), d(2), d(3));
    let mut fake = Fake::default();
    fake.tags.insert(format!("{REG}/demo/app:1"), i.clone());
    fake.outcomes.insert(i.to_string(), signed(p.clone(), c.clone()));
    let e = enforcer(fake, "deny", "either");
    let (v, _) = e.decide_pull(&pull(&format!("{REG}/demo/app:1"))).await;
    assert_eq!(v, PullVerdict::Pin { reference: format!("{REG}/demo/app@{p}"), tag_as: Some(format!("{REG}/demo/app:1")) });
    // CreateContainer of what containerd then holds: P's record, picked from the signed index.
    let call =
        create(&c.to_string(), Some(&format!("{REG}/demo/app:1")), &c, &[&format!("{REG}/demo/app:1")], &[format!("{REG}/demo/app@{p}")]);
    let (v, r) = e.decide_create(&call).await;
    assert_eq!(v, CreateVerdict::Forward, "{}", r.reason);
}

#[tokio::test]
async fn multi_arch_index_pins_the_index() {
    let (i, c) = (d(1), d(3));
    let mut fake = Fake::default();
    fake.tags.insert(format!("{REG}/demo/app:1"), i.clone());
    fake.outcomes.insert(i.to_string(), signed(i.clone(), c.clone()));
    let e = enforcer(fake, "deny", "index");
    let (v, _) = e.decide_pull(&pull(&format!("{REG}/demo/app:1"))).await;
    assert_eq!(v, PullVerdict::Pin { reference: format!("{REG}/demo/app@{i}"), tag_as: Some(format!("{REG}/demo/app:1")) });
}

#[tokio::test]
async fn a_passing_digest_does_not_admit_another_image_id() {
    // The signed index I admits config C only; containerd holds unsigned config U under it.
    let (i, c, u) = (d(1), d(3), d(4));
    let mut fake = Fake::default();
    fake.outcomes.insert(i.to_string(), signed(i.clone(), c.clone()));
    let e = enforcer(fake, "deny", "index");
    let names = [format!("{REG}/demo/app@{i}"), format!("{REG}/demo/unsigned@{}", d(9))];
    for asked in [None, Some(format!("{REG}/demo/app@{i}")), Some(format!("{REG}/demo/unsigned@{}", d(9)))] {
        let (v, r) = e.decide_create(&create(&u.to_string(), asked.as_deref(), &u, &[], &names)).await;
        assert!(refused(&v), "asked {asked:?}: {}", r.reason);
        assert_eq!(r.decision, "deny");
    }
    let (v, r) = e.decide_create(&create(&c.to_string(), None, &c, &[], &names[..1])).await;
    assert_eq!(v, CreateVerdict::Forward, "{}", r.reason);
}

#[tokio::test]
async fn after_a_restart_the_tag_finds_the_signed_index() {
    let (i, p, c) = (d(1), d(2), d(3));
    let mut fake = Fake::default();
    fake.tags.insert(format!("{REG}/demo/app:1"), i.clone());
    fake.outcomes.insert(i.to_string(), signed(p.clone(), c.clone()));
    let e = enforcer(fake, "deny", "either");
    let call = create(&c.to_string(), None, &c, &[&format!("{REG}/demo/app:1")], &[format!("{REG}/demo/app@{p}")]);
    let (v, r) = e.decide_create(&call).await;
    assert_eq!(v, CreateVerdict::Forward, "{}", r.reason);
    // A platform manifest the index does not pin is not admitted by the index's signature.
    let other = d(5);
    let call = create(&c.to_string(), None, &c, &[&format!("{REG}/demo/app:1")], &[format!("{REG}/demo/app@{other}")]);
    assert!(refused(&e.decide_create(&call).await.0));
}

#[tokio::test]
async fn exemptions_apply_to_the_name_the_pod_used() {
    let u = d(4);
    let e = enforcer(Fake::default(), "deny", "either");
    let tags = [format!("{REG}/pause:forged"), format!("{REG}/demo/unsigned:1")];
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let digests = [format!("{REG}/demo/unsigned@{}", d(9))];
    let by = |asked: Option<String>| create(&u.to_string(), asked.as_deref(), &u, &tags, &digests);
    let (v, r) = e.decide_create(&by(Some(format!("{REG}/demo/unsigned:1")))).await;
    assert!(refused(&v), "{}", r.reason);
    let (v, r) = e.decide_create(&by(None)).await;
    assert!(refused(&v), "by image ID, not every name exempt: {}", r.reason);
    let (v, r) = e.decide_create(&by(Some(format!("{REG}/pause:forged")))).await;
    assert_eq!(v, CreateVerdict::Forward, "{}", r.reason);
    // A name the image does not have counts as unknown.
    let (v, _) = e.decide_create(&by(Some(format!("{REG}/pause:other")))).await;
    assert!(refused(&v));
    // Only exempt names: exempt by image ID too.
    let call = create(&u.to_string(), None, &u, &[&format!("{REG}/pause:3.9")], &[]);
    assert_eq!(e.decide_create(&call).await.0, CreateVerdict::Forward);
}

#[tokio::test]
async fn refusals_are_not_shared_across_repositories_or_credentials() {
    let (p, c) = (d(2), d(3));
    let mut fake = Fake::default();
    fake.outcomes.insert(p.to_string(), signed(p.clone(), c.clone()));
    fake.missing.push("demo/does-not-exist".into());
    fake.wrong_password = Some("wrong".into());
    let e = enforcer(fake, "deny", "either");
    let pinned = |v: &PullVerdict| matches!(v, PullVerdict::Pin { .. });
    // The refusal of a name that does not exist, for the digest of a signed image...
    let (v, r) = e.decide_pull(&pull(&format!("{REG}/demo/does-not-exist@{p}"))).await;
    assert!(matches!(v, PullVerdict::Refuse(_)), "{}", r.reason);
    // ...says nothing of the signed image, under its own name.
    let (v, r) = e.decide_pull(&pull(&format!("{REG}/demo/app@{p}"))).await;
    assert!(pinned(&v) && !r.cached, "{v:?} {}", r.reason);
    // A refusal made with a wrong pull secret says nothing of other credentials.
    let with = |password: &str| PullCall {
        image: format!("{REG}/demo/other@{p}"),
        auth: Some(AuthConfig { username: "u".into(), password: password.into(), ..Default::default() }),
        ..Default::default()
    };
    let (v, r) = e.decide_pull(&with("wrong")).await;
    assert!(matches!(v, PullVerdict::Refuse(_)), "{}", r.reason);
    let (v, r) = e.decide_pull(&with("wrong")).await;
    assert!(matches!(v, PullVerdict::Refuse(_)) && r.cached, "{}", r.reason);
    let (v, r) = e.decide_pull(&with("right")).await;
    assert!(pinned(&v) && !r.cached, "{}", r.reason);
    // An approval holds for any caller: CreateContainer (no credentials) finds it.
    let call = create(&c.to_string(), Some(&format!("{REG}/demo/other@{p}")), &c, &[], &[format!("{REG}/demo/other@{p}")]);
    let (v, r) = e.decide_create(&call).await;
    assert!(v == CreateVerdict::Forward && r.cached, "{}", r.reason);
    let (v, r) = e.decide_pull(&with("wrong")).await;
    assert!(pinned(&v) && r.cached, "an approval is not hidden by another caller's refusal: {}", r.reason);
}

#[tokio::test]
async fn names_are_canonical() {
    let e = enforcer(Fake::default(), "allow", "either");
    // Another spelling of the registry is the same image to policy (unmatched: allow).
    for image in ["localhost:5000/demo/unsigned:1", "LOCALHOST:5000/demo/unsigned:1", "127.0.0.1:5000/demo/unsigned:1"] {
        let (v, r) = e.decide_pull(&pull(image)).await;
        assert!(matches!(v, PullVerdict::Refuse(_)), "{image}: {}", r.reason);
        assert_eq!(r.policy, "demo");
    }
    assert!(matches!(e.decide_pull(&pull("other.example/x:1")).await.0, PullVerdict::Forward));
    // A tag exemption does not admit a digest; `pause:*` admits a tag.
    let e = enforcer(Fake::default(), "deny", "either");
    let (v, r) = e.decide_pull(&pull(&format!("{REG}/pause:1@{}", d(7)))).await;
    assert!(matches!(v, PullVerdict::Refuse(_)), "{}", r.reason);
    assert!(matches!(e.decide_pull(&pull("localhost:5000/pause:3.9")).await.0, PullVerdict::Forward));
}

#[tokio::test]
async fn refusals_name_what_the_call_asked_for_then_the_digest_once() {
    let (id, registry_digest) = (d(4), d(9));
    let e = enforcer(Fake::default(), "deny", "either");
    let tags = [format!("{REG}/demo/unsigned:1")];
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let digests = [format!("{REG}/demo/unsigned@{registry_digest}")];
    let no_sigs = format!("({registry_digest}) denied by policy demo: no signatures found");
    // The pod's own spelling (another spelling of the registry), then the digest, once.
    let call = create(&id.to_string(), Some("localhost:5000/demo/unsigned:1"), &id, &tags, &digests);
    let CreateVerdict::Refuse(reason) = e.decide_create(&call).await.0 else { panic!("allowed") };
    assert_eq!(reason, format!("image localhost:5000/demo/unsigned:1 {no_sigs}"));
    assert_eq!(reason.matches(&registry_digest.to_string()).count(), 1, "{reason}");
    // Asked by image ID (an older kubelet): the image's tag in that repository.
    let call = create(&id.to_string(), None, &id, &tags, &digests);
    let CreateVerdict::Refuse(reason) = e.decide_create(&call).await.0 else { panic!("allowed") };
    assert_eq!(reason, format!("image {REG}/demo/unsigned:1 {no_sigs}"));
    // No tag: the repository.
    let call = create(&id.to_string(), None, &id, &[], &digests);
    let CreateVerdict::Refuse(reason) = e.decide_create(&call).await.0 else { panic!("allowed") };
    assert_eq!(reason, format!("image {REG}/demo/unsigned {no_sigs}"));
    // A pull names the reference as asked; a digest reference carries its digest already.
    let (_, r) = e.decide_pull(&pull(&format!("localhost:5000/demo/x@{registry_digest}"))).await;
    assert_eq!(r.reason, format!("image localhost:5000/demo/x@{registry_digest} denied by policy demo: no signatures found"));
}

fn verifications(fake: &Fake) -> usize {
    fake.verified.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn exempt_and_unmatched_are_decided_by_configuration_alone() {
    let fake = Arc::new(Fake::default());
    let e = enforcer_in(fake.clone(), "deny", "either", "enforce");
    let (v, r) = e.decide_pull(&pull(&format!("{REG}/pause:3.9"))).await;
    assert_eq!(v, PullVerdict::Forward);
    assert_eq!(
        (r.decision.as_str(), r.category.as_str(), r.policy.as_str(), r.reason.as_str()),
        ("allow", "exempt", "exempt:sandbox", "exempt by exemption sandbox")
    );
    let (v, r) = e.decide_pull(&pull("other.example/x:1")).await;
    assert_eq!(
        v,
        PullVerdict::Refuse(
            "image other.example/x:1 matches no policy and policy.unmatched is deny: add a policy for it, or an exemption".into()
        )
    );
    assert_eq!((r.decision.as_str(), r.mode.map_or("", Mode::as_str), r.category.as_str()), ("deny", "enforce", "unmatched"));
    let e = enforcer_in(fake.clone(), "allow", "either", "enforce");
    let (v, r) = e.decide_pull(&pull("other.example/x:1")).await;
    assert_eq!((v, r.category.as_str()), (PullVerdict::Forward, "unmatched_allowed"));
    // Neither asked the mirror anything.
    assert_eq!(verifications(&fake), 0);
    // An unreadable reference is refused as an invalid request.
    let (v, r) = e.decide_pull(&pull("UPPER/Case:%%")).await;
    assert!(matches!(v, PullVerdict::Refuse(_)) && r.category == "invalid_request", "{v:?} {r:?}");
}

#[tokio::test]
async fn audit_mode_lets_through_what_enforce_refuses_and_says_so() {
    let image = format!("{REG}/demo/unsigned@{}", d(9));
    for (mode, refused) in [("enforce", true), ("audit", false)] {
        let e = enforcer_in(Arc::new(Fake::default()), "deny", "either", mode);
        let (v, r) = e.decide_pull(&pull(&image)).await;
        assert_eq!(matches!(v, PullVerdict::Refuse(_)), refused, "{mode}");
        assert_eq!((r.mode.map_or("", Mode::as_str), r.category.as_str()), (mode, "no_signatures"));
        assert_eq!(r.reason, format!("image {image} denied by policy demo: no signatures found"));
        let verdict = r.verdict(refused);
        let written = r.settled(verdict);
        let want = if refused { ("deny", false, Verdict::Deny) } else { ("allow", true, Verdict::AuditWouldDeny) };
        assert_eq!((written.decision.as_str(), written.would_deny, verdict), want, "{mode}");
        assert_eq!(written.category, "no_signatures", "the refusal's kind, also when let through");
    }
}

#[tokio::test]
async fn an_unusable_trust_root_refuses_without_asking_the_mirror() {
    let mut fake = Fake::default();
    fake.outcomes.insert(d(2).to_string(), signed(d(2), d(3)));
    let fake = Arc::new(fake);
    *fake.trust_unusable.lock().unwrap() = Some(TrustUnavailable::NotInstalled);
    let e = enforcer_in(fake.clone(), "deny", "either", "enforce");
    let image = format!("{REG}/demo/app@{}", d(2));
    let (v, r) = e.decide_pull(&pull(&image)).await;
    assert_eq!(
        v,
        PullVerdict::Refuse(format!("image {image} denied by policy demo: no trust root installed: run `pullgate trust-root import`"))
    );
    assert_eq!(r.category, "trust_root");
    assert_eq!(verifications(&fake), 0);
    // Usable again (a new generation): verified, nothing stale reused.
    *fake.trust_unusable.lock().unwrap() = None;
    fake.trust_generation.store(2, std::sync::atomic::Ordering::Relaxed);
    let (v, r) = e.decide_pull(&pull(&image)).await;
    assert!(matches!(v, PullVerdict::Pin { .. }) && r.category == "verified", "{v:?} {}", r.reason);
}

#[tokio::test]
async fn tags_and_digests_pin_to_the_verified_digest() {
    let (p, c) = (d(2), d(3));
    let mut fake = Fake::default();
    fake.tags.insert(format!("{REG}/demo/app:1"), p.clone());
    fake.outcomes.insert(p.to_string(), signed(p.clone(), c));
    let e = enforcer(fake, "deny", "either");
    let (v, _) = e.decide_pull(&pull(&format!("{REG}/demo/app:1"))).await;
    assert_eq!(v, PullVerdict::Pin { reference: format!("{REG}/demo/app@{p}"), tag_as: Some(format!("{REG}/demo/app:1")) });
    let (v, _) = e.decide_pull(&pull(&format!("{REG}/demo/app@{p}"))).await;
    assert_eq!(v, PullVerdict::Pin { reference: format!("{REG}/demo/app@{p}"), tag_as: None });
    // A tag the mirror does not know: refused as a mirror failure.
    let (v, r) = e.decide_pull(&pull(&format!("{REG}/demo/app:2"))).await;
    assert!(matches!(v, PullVerdict::Refuse(_)) && r.category == "mirror", "{v:?} {}", r.reason);
}

#[tokio::test]
async fn cached_decisions_last_only_for_their_generations() {
    let (p, c) = (d(2), d(3));
    let mut fake = Fake::default();
    fake.outcomes.insert(p.to_string(), signed(p.clone(), c));
    let fake = Arc::new(fake);
    let e = enforcer_in(fake.clone(), "deny", "either", "enforce");
    let call = pull(&format!("{REG}/demo/app@{p}"));
    let (_, r) = e.decide_pull(&call).await;
    assert!(!r.cached);
    let (_, r) = e.decide_pull(&call).await;
    assert!(r.cached);
    assert_eq!(verifications(&fake), 1);
    // A new policy: verified again.
    e.replace_policy(policy_set("deny", "either", "enforce", 2));
    let (_, r) = e.decide_pull(&call).await;
    assert!(!r.cached);
    assert_eq!(verifications(&fake), 2);
    // A new trust root: verified again.
    fake.trust_generation.store(7, std::sync::atomic::Ordering::Relaxed);
    let (_, r) = e.decide_pull(&call).await;
    assert!(!r.cached);
    assert_eq!(verifications(&fake), 3);
    let (_, r) = e.decide_pull(&call).await;
    assert!(r.cached);
}

#[tokio::test]
async fn image_volumes_are_decided_one_by_one() {
    let (p, c) = (d(2), d(3));
    let mut fake = Fake::default();
    fake.outcomes.insert(p.to_string(), signed(p.clone(), c.clone()));
    let e = enforcer(fake, "deny", "either");
    let container = create(&c.to_string(), None, &c, &[], &[format!("{REG}/demo/app@{p}")]);
    let signed_volume =
        MountImage { container_path: "/models".into(), image: format!("{REG}/demo/app@{p}"), status: container.status.clone() };
    let u = d(4);
    let unsigned = api::Image { id: u.to_string(), repo_digests: vec![format!("{REG}/demo/unsigned@{}", d(9))], ..Default::default() };
    let unsigned_volume =
        MountImage { container_path: "/data".into(), image: format!("{REG}/demo/unsigned@{}", d(9)), status: Some(unsigned) };
    assert_eq!(e.gate_mounts(&container, std::slice::from_ref(&signed_volume)).await, CreateVerdict::Forward);
    let v = e.gate_mounts(&container, &[signed_volume, unsigned_volume]).await;
    let CreateVerdict::Refuse(reason) = v else { panic!("an unsigned volume went through") };
    assert!(reason.starts_with("image volume /data: "), "{reason}");
}
