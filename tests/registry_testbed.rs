//! Resolution and discovery against the REAL registry of the project's testbed
//! (`scripts/testbed.sh`: Debian's `docker-registry`, distribution 2.8, plain HTTP, seeded with
//! single-platform and multi-arch images), and a second one requiring basic auth (htpasswd).
//! Signature material is pushed to it by the tests over the distribution API, the way cosign
//! stores it: legacy `.sig` tags and referrers-tag-schema indexes (distribution 2.8 has no
//! referrers API; that API is tested against the fake registry in `registry_fake.rs`).
//!
//! Without root (the testbed runs containerd too) the trials are reported as ignored, with the
//! reason. The trials share the testbeds, which are started once and removed at the end.

#[path = "support/registry/mod.rs"]
mod support;
#[path = "support/testbed.rs"]
mod testbed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use pullgate::registry::{Credentials, Digest, Material, Outcome, Platform, Registry, RegistryConfig, Report, Source, Step, SubjectRole};
use support::push::{self, Pusher, COSIGN_SIGN_PREDICATE, OCI_MANIFEST};
use support::{closed_port, write_hosts, RecordingDialer};
use testbed::Testbed;

type TestResult = Result<(), Failed>;
type TestFn = fn(&Ctx) -> TestResult;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

const USER: &str = "puller";
const PASSWORD: &str = "s3cret-pw";

struct Ctx {
    rt: tokio::runtime::Runtime,
    tb: Testbed,
    /// The registry with basic auth, started by the one trial that needs it.
    tb_auth: Mutex<Option<Result<Arc<Testbed>, String>>>,
    scratch: tempfile::TempDir,
}

impl Ctx {
    fn registry_addr(&self) -> String {
        self.tb.get("REGISTRY").to_string()
    }

    fn pusher(&self) -> Pusher {
        Pusher::new(self.registry_addr().parse::<SocketAddr>().unwrap())
    }

    /// The testbed's own hosts dir (what containerd there uses).
    fn config(&self) -> RegistryConfig {
        RegistryConfig {
            hosts_dir: vec![PathBuf::from(self.tb.get("HOSTS_DIR"))],
            bundle_dir: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            discovery_timeout: Duration::from_secs(15),
            ..RegistryConfig::default()
        }
    }

    fn inspect(&self, config: RegistryConfig, image: &str, creds: Option<&Credentials>) -> Result<Report, String> {
        self.rt.block_on(Registry::new(config).inspect(image, creds)).map_err(|e| e.to_string())
    }

    fn auth_testbed(&self) -> Result<Arc<Testbed>, String> {
        let mut slot = self.tb_auth.lock().unwrap();
        if slot.is_none() {
            let creds = format!("{USER}:{PASSWORD}");
            *slot = Some(Testbed::start("rega", &[("REGISTRY_HTPASSWD", creds.as_str()), ("TESTBED_PRELOAD_SANDBOX", "0")]).map(Arc::new));
        }
        slot.clone().unwrap()
    }
}

static CTX: OnceLock<Result<Arc<Ctx>, String>> = OnceLock::new();

fn ctx() -> Result<Arc<Ctx>, Failed> {
    CTX.get_or_init(|| {
        let tb = Testbed::start("reg", &[])?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
        let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
        Ok(Arc::new(Ctx { rt, tb, tb_auth: Mutex::new(None), scratch }))
    })
    .clone()
    .map_err(Failed::from)
}

fn main() {
    let args = Arguments::from_args();
    let skip = testbed::unavailable_reason();
    let tests: Vec<(&str, TestFn)> = vec![
        ("tag_resolves_to_the_seeded_digest", tag_resolves_to_the_seeded_digest),
        ("digest_references_are_verified_not_resolved", digest_references),
        ("multi_arch_index_and_platform_manifest", multi_arch_index),
        ("sig_tag_and_referrers_tag_schema", sig_tag_and_referrers_tag_schema),
        ("signatures_on_index_and_platform_digests", signatures_on_index_and_platform),
        ("plain_http_mirror_through_hosts_toml", plain_http_mirror),
        ("mirror_down_fails_fast", mirror_down_fails_fast),
        ("basic_auth_htpasswd", basic_auth_htpasswd),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let t = Trial::test(name, move || {
                let c = ctx()?;
                f(&c)
            });
            match &skip {
                Some(reason) => {
                    eprintln!("skipping {name}: {reason}");
                    t.with_ignored_flag(true)
                }
                None => t,
            }
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Statics are never dropped: stop the testbeds (containerd, registry) explicitly.
    if let Some(Ok(ctx)) = CTX.get() {
        if let Some(Ok(tb)) = ctx.tb_auth.lock().unwrap().take() {
            tb.clean();
        }
        ctx.tb.clean();
    }
    conclusion.exit();
}

fn step(report: &Report, subject: &Digest, step: Step) -> Outcome {
    report
        .discovery
        .steps
        .iter()
        .find(|s| &s.subject == subject && s.step == step)
        .map(|s| s.outcome.clone())
        .unwrap_or(Outcome::Skipped { reason: "not reported".into() })
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

fn tag_resolves_to_the_seeded_digest(c: &Ctx) -> TestResult {
    let image = c.tb.get("DEMO_IMAGE");
    let r = c.inspect(c.config(), image, None)?;
    ensure!(r.image.digest == digest(c.tb.get("DEMO_DIGEST")), "resolved {} want {}", r.image.digest, c.tb.get("DEMO_DIGEST"));
    ensure!(r.image.media_type == OCI_MANIFEST, "{}", r.image.media_type);
    ensure!(r.image.resolved_by == format!("http://{}", c.registry_addr()), "{}", r.image.resolved_by);
    ensure!(r.image.platform.is_none(), "single-platform image");
    ensure!(r.discovery.subjects.len() == 1 && r.discovery.subjects[0].role == SubjectRole::Manifest, "{:?}", r.discovery.subjects);
    // distribution 2.8 has no referrers API: unsupported, which is not "none"
    ensure!(matches!(step(&r, &r.image.digest, Step::ReferrersApi), Outcome::Unsupported { .. }), "{r}");
    ensure!(r.discovery.errors().is_empty(), "{:?}", r.discovery.errors());
    // Without the testbed's hosts.toml: the loopback registry itself, HTTPS first then plain HTTP.
    let mut cfg = c.config();
    cfg.hosts_dir = vec![c.scratch.path().join("empty-hosts")];
    let r = c.inspect(cfg, image, None)?;
    ensure!(r.image.digest == digest(c.tb.get("DEMO_DIGEST")), "fallback resolution");
    ensure!(r.endpoints[0].url() == format!("https+http://{}", c.registry_addr()), "{}", r.endpoints[0].url());
    // An unknown tag: not found, naming the endpoint.
    let e = c.inspect(c.config(), &format!("{}/demo/app:nope", c.registry_addr()), None).unwrap_err();
    ensure!(e.ends_with(&format!("demo/app:nope: not found on http://{}", c.registry_addr())), "{e}");
    Ok(())
}

fn digest_references(c: &Ctx) -> TestResult {
    let d = c.tb.get("DEMO_DIGEST");
    for image in [format!("{}/demo/app@{d}", c.registry_addr()), format!("{}/demo/app:ignored@{d}", c.registry_addr())] {
        let r = c.inspect(c.config(), &image, None)?;
        ensure!(r.image.digest == digest(d), "{image}");
    }
    // A digest the registry does not have.
    let missing = Digest::sha256(b"not there");
    let e = c.inspect(c.config(), &format!("{}/demo/app@{missing}", c.registry_addr()), None).unwrap_err();
    ensure!(e.contains("not found on"), "{e}");
    Ok(())
}

fn multi_arch_index(c: &Ctx) -> TestResult {
    let image = c.tb.get("MULTI_IMAGE");
    let r = c.inspect(c.config(), image, None)?;
    let index = digest(c.tb.get("MULTI_DIGEST"));
    let amd64 = digest(c.tb.get("MULTI_AMD64_DIGEST"));
    ensure!(r.image.digest == index, "index digest {}", r.image.digest);
    ensure!(r.image.media_type == "application/vnd.oci.image.index.v1+json", "{}", r.image.media_type);
    let p = r.image.platform.clone().ok_or("no platform manifest")?;
    ensure!(p.digest == amd64 && p.platform == "linux/amd64", "{p:?}");
    let roles: Vec<_> = r.discovery.subjects.iter().map(|s| (s.digest.clone(), s.role)).collect();
    ensure!(roles == [(index.clone(), SubjectRole::Index), (amd64.clone(), SubjectRole::Platform)], "{roles:?}");
    for d in [&index, &amd64] {
        for s in [Step::ReferrersApi, Step::ReferrersTag, Step::SignatureTag] {
            ensure!(!matches!(step(&r, d, s), Outcome::Skipped { .. }), "{d} {s} reported");
        }
    }
    let mut cfg = c.config();
    cfg.platform = "linux/arm64".parse::<Platform>().unwrap();
    let r = c.inspect(cfg.clone(), image, None)?;
    let p = r.image.platform.clone().ok_or("no arm64 manifest")?;
    ensure!(p.digest != amd64 && p.platform == "linux/arm64", "{p:?}");
    cfg.platform = "linux/s390x".parse::<Platform>().unwrap();
    let r = c.inspect(cfg, image, None)?;
    ensure!(
        r.image.platform.is_none() && r.image.notes.iter().any(|n| n.contains("no manifest for platform linux/s390x")),
        "{:?}",
        r.image.notes
    );
    ensure!(r.discovery.subjects.len() == 1, "index only");
    Ok(())
}

fn sig_tag_and_referrers_tag_schema(c: &Ctx) -> TestResult {
    let p = c.pusher();
    let image = c.tb.get("DEMO2_IMAGE");
    let d = digest(c.tb.get("DEMO2_DIGEST"));
    let size = c.rt.block_on(manifest_size(&p, "demo/app", &d))?;
    let (sig_manifest, layers) = c.rt.block_on(push::push_legacy_signature(&p, "demo/app", image, &d, &["MEUCsig1", "MEUCsig2"]))?;
    let (sign, bundle) = c.rt.block_on(push::push_bundle_referrer(&p, "demo/app", &d, size, OCI_MANIFEST, COSIGN_SIGN_PREDICATE, "v3"))?;
    let (att, _) =
        c.rt.block_on(push::push_bundle_referrer(&p, "demo/app", &d, size, OCI_MANIFEST, "https://slsa.dev/provenance/v1", "slsa"))?;
    c.rt.block_on(push::push_referrers_tag(&p, "demo/app", &d, vec![sign, att]))?;

    let r = c.inspect(c.config(), image, None)?;
    ensure!(r.image.digest == d, "resolved {}", r.image.digest);
    ensure!(step(&r, &d, Step::ReferrersTag) == Outcome::Found { candidates: 1 }, "{r}");
    ensure!(step(&r, &d, Step::SignatureTag) == Outcome::Found { candidates: 2 }, "{r}");
    ensure!(r.discovery.errors().is_empty(), "{:?}", r.discovery.errors());
    let endpoint = format!("http://{}", c.registry_addr());
    let bundles: Vec<_> = r.discovery.materials.iter().filter(|m| matches!(m, Material::Bundle { .. })).collect();
    ensure!(bundles.len() == 1, "{r}");
    if let Material::Bundle { json, source: Source::ReferrersTag { tag, endpoint: ep, .. }, .. } = bundles[0] {
        ensure!(json.as_ref() == bundle.as_slice(), "bundle bytes");
        ensure!(*tag == d.referrers_tag() && *ep == endpoint, "{tag} {ep}");
    } else {
        return Err(format!("unexpected {:?}", bundles[0]).into());
    }
    let sigs: Vec<_> = r.discovery.materials.iter().filter(|m| matches!(m, Material::LegacySignature { .. })).collect();
    ensure!(sigs.len() == 2, "{r}");
    for (m, want) in sigs.iter().zip(["MEUCsig1", "MEUCsig2"]) {
        let Material::LegacySignature { payload, annotations, source, subject, .. } = m else { unreachable!() };
        ensure!(subject == &d, "subject");
        ensure!(annotations.get("dev.cosignproject.cosign/signature").map(String::as_str) == Some(want), "{annotations:?}");
        ensure!(
            annotations.contains_key("dev.sigstore.cosign/certificate") && annotations.contains_key("dev.sigstore.cosign/bundle"),
            "{annotations:?}"
        );
        ensure!(payload.as_ref() == push::simple_signing_payload(image, &d).as_slice(), "payload bytes");
        ensure!(
            *source
                == Source::SignatureTag {
                    endpoint: endpoint.clone(),
                    tag: d.cosign_signature_tag(),
                    manifest: sig_manifest.clone(),
                    layer: layers[0].clone()
                },
            "{source:?}"
        );
    }
    ensure!(r.discovery.side_artifacts.len() == 1, "attestation kept aside: {r}");
    ensure!(
        r.discovery.side_artifacts[0].predicate_type.as_deref() == Some("https://slsa.dev/provenance/v1"),
        "{:?}",
        r.discovery.side_artifacts
    );
    Ok(())
}

fn signatures_on_index_and_platform(c: &Ctx) -> TestResult {
    let p = c.pusher();
    let image = c.tb.get("MULTI_IMAGE");
    let index = digest(c.tb.get("MULTI_DIGEST"));
    let amd64 = digest(c.tb.get("MULTI_AMD64_DIGEST"));
    c.rt.block_on(push::push_legacy_signature(&p, "demo/multi", image, &amd64, &["MEUCplatform"]))?;
    let size = c.rt.block_on(manifest_size(&p, "demo/multi", &index))?;
    let (desc, _) =
        c.rt.block_on(push::push_bundle_referrer(&p, "demo/multi", &index, size, push::OCI_INDEX, COSIGN_SIGN_PREDICATE, "index"))?;
    c.rt.block_on(push::push_referrers_tag(&p, "demo/multi", &index, vec![desc]))?;
    let r = c.inspect(c.config(), image, None)?;
    let subjects: Vec<(String, &Digest)> = r
        .discovery
        .materials
        .iter()
        .map(|m| {
            (
                match m {
                    Material::Bundle { .. } => "bundle".to_string(),
                    _ => "legacy".to_string(),
                },
                m.subject(),
            )
        })
        .collect();
    ensure!(subjects == [("bundle".to_string(), &index), ("legacy".to_string(), &amd64)], "{subjects:?}");
    Ok(())
}

fn plain_http_mirror(c: &Ctx) -> TestResult {
    // containerd-style mirror configuration: two public names served by the testbed registry
    // over plain HTTP, one through `server`, one through a [host] table after a mirror that is
    // down (skipped, then the next one).
    let dir = c.scratch.path().join("mirror-hosts");
    let reg = c.registry_addr();
    write_hosts(&dir, "mirror.example:5000", &format!("server = \"http://{reg}\"\n[host]\n"));
    let down = closed_port();
    write_hosts(
        &dir,
        "ghcr.io",
        &format!(
            "server = \"http://{reg}\"\n\n[host.\"http://127.0.0.1:{down}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{reg}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    );
    let mut cfg = c.config();
    cfg.hosts_dir = vec![dir.clone()];
    let want = digest(c.tb.get("DEMO_DIGEST"));
    for image in ["mirror.example:5000/demo/app:1", "ghcr.io/demo/app:1"] {
        let dialer = RecordingDialer::allowing(std::slice::from_ref(&reg));
        let registry = Registry::with_dialer(cfg.clone(), Arc::new(dialer.clone()));
        let r = c.rt.block_on(registry.inspect(image, None)).map_err(|e| e.to_string())?;
        ensure!(r.image.digest == want, "{image}: {}", r.image.digest);
        ensure!(r.image.resolved_by == format!("http://{reg}"), "{image}: {}", r.image.resolved_by);
        ensure!(r.discovery.errors().is_empty(), "{image}: {:?}", r.discovery.errors());
        let others: Vec<_> = dialer.attempts().into_iter().filter(|a| *a != reg).collect();
        let expected: Vec<String> = if image.starts_with("ghcr") { vec![format!("127.0.0.1:{down}")] } else { vec![] };
        ensure!(others == expected, "{image}: contacted {others:?} (the down mirror once at most, nothing else)");
    }
    Ok(())
}

fn mirror_down_fails_fast(c: &Ctx) -> TestResult {
    let dir = c.scratch.path().join("down-hosts");
    let port = closed_port();
    write_hosts(&dir, "mirror.internal", &format!("server = \"http://127.0.0.1:{port}\"\n[host]\n"));
    let mut cfg = c.config();
    cfg.hosts_dir = vec![dir];
    let started = Instant::now();
    let e = c.inspect(cfg, "mirror.internal/demo/app:1", None).unwrap_err();
    ensure!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    ensure!(
        e == format!("mirror.internal/demo/app:1: http://127.0.0.1:{port}: HEAD /v2/demo/app/manifests/1: cannot connect: 127.0.0.1:{port}: connection refused"),
        "{e}"
    );
    Ok(())
}

fn basic_auth_htpasswd(c: &Ctx) -> TestResult {
    let tb = c.auth_testbed()?;
    let image = tb.get("DEMO_IMAGE");
    let reg = tb.get("REGISTRY").to_string();
    let mut cfg = c.config();
    cfg.hosts_dir = vec![PathBuf::from(tb.get("HOSTS_DIR"))];
    let creds = Credentials::basic(USER, PASSWORD);
    let r = c.inspect(cfg.clone(), image, Some(&creds))?;
    ensure!(r.image.digest == digest(tb.get("DEMO_DIGEST")), "{}", r.image.digest);
    ensure!(r.discovery.errors().is_empty(), "{:?}", r.discovery.errors());
    // signatures pushed with credentials are found with credentials
    let mut p = Pusher::new(reg.parse().unwrap());
    p.basic = Some((USER.into(), PASSWORD.into()));
    let d = digest(tb.get("DEMO_DIGEST"));
    c.rt.block_on(push::push_legacy_signature(&p, "demo/app", image, &d, &["MEUCauth"]))?;
    let r = c.inspect(cfg.clone(), image, Some(&creds))?;
    ensure!(step(&r, &d, Step::SignatureTag) == Outcome::Found { candidates: 1 }, "{r}");

    let e = c.inspect(cfg.clone(), image, None).unwrap_err();
    ensure!(e.contains(&format!("http://{reg}: HEAD /v2/demo/app/manifests/1: unauthorized: anonymous access refused")), "{e}");
    let e = c.inspect(cfg.clone(), image, Some(&Credentials::basic(USER, "wrong"))).unwrap_err();
    ensure!(e.contains("the registry refused the credentials") && !e.contains("wrong"), "{e}");
    // kubelet's `auth` field (base64 user:password), and its server_address scoping
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let kubelet =
        Credentials { auth: Some(pullgate::registry::Secret::new(auth)), server_address: Some(reg.clone()), ..Credentials::default() };
    c.inspect(cfg.clone(), image, Some(&kubelet))?;
    let elsewhere = Credentials { server_address: Some("ghcr.io".into()), ..creds.clone() };
    ensure!(c.inspect(cfg.clone(), image, Some(&elsewhere)).is_err(), "credentials for another server must not be sent");
    // static credentials from the configuration
    cfg.credentials.insert(reg, creds);
    c.inspect(cfg, image, None)?;
    Ok(())
}

/// The size of a manifest on the registry (for subject descriptors).
async fn manifest_size(p: &Pusher, repo: &str, d: &Digest) -> Result<usize, String> {
    let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json".to_string();
    let r = support::http::request(p.addr, "GET", &format!("/v2/{repo}/manifests/{d}"), &[("accept", accept)], bytes::Bytes::new()).await?;
    if r.status != 200 {
        return Err(format!("GET manifest {repo}@{d}: HTTP {}", r.status));
    }
    Ok(r.body.len())
}
