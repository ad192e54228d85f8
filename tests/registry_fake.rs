//! Discovery and the registry client against a FAKE registry and a FAKE token server
//! (`tests/support/registry/fake.rs`): no registry with the OCI 1.1 referrers API or Docker
//! token auth installs on this machine, and faults (a mirror serving other bytes, oversized or
//! hanging answers) need a server that misbehaves on purpose. What a real registry can show is
//! tested against the testbed's registry in `registry_testbed.rs`.

#[path = "support/registry/mod.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pullgate::registry::{Credentials, Digest, Material, Outcome, Registry, RegistryConfig, Secret, Source, Step};
use support::fake::{Auth, FakeRegistry, Fault, TokenPolicy, TokenServer};
use support::push::{self, Pusher, COSIGN_SIGN_PREDICATE, OCI_MANIFEST};
use support::{closed_port, write_hosts, RecordingDialer};

const SLSA: &str = "https://slsa.dev/provenance/v1";

fn config(hosts_dir: &Path) -> RegistryConfig {
    RegistryConfig {
        hosts_dir: vec![hosts_dir.to_owned()],
        bundle_dir: None,
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(3),
        discovery_timeout: Duration::from_secs(10),
        ..RegistryConfig::default()
    }
}

/// hosts.toml mapping `registry` to the fake over plain HTTP, the way the testbed does.
fn mirror_hosts(dir: &Path, registry: &str, fake: &FakeRegistry) {
    write_hosts(dir, registry, &format!("server = \"http://{}\"\n[host]\n", fake.host()));
}

fn outcome(report: &pullgate::registry::Report, subject: &Digest, step: Step) -> Outcome {
    report.discovery.steps.iter().find(|s| &s.subject == subject && s.step == step).map(|s| s.outcome.clone()).expect("step reported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_api_finds_bundles_and_keeps_attestations_aside() {
    let fake = FakeRegistry::start(true).await;
    let (digest, size) = fake.put_image("team/app", "1", "app");
    let p = Pusher::new(fake.addr);
    let (_, bundle) = push::push_bundle_referrer(&p, "team/app", &digest, size, OCI_MANIFEST, COSIGN_SIGN_PREDICATE, "sig").await.unwrap();
    push::push_bundle_referrer(&p, "team/app", &digest, size, OCI_MANIFEST, SLSA, "provenance").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    fake.clear_log();

    let report = Registry::new(config(dir.path())).inspect("ghcr.io/team/app:1", None).await.unwrap();
    assert_eq!(report.image.digest, digest);
    assert_eq!(report.image.resolved_by, format!("http://{}", fake.host()));
    assert_eq!(outcome(&report, &digest, Step::ReferrersApi), Outcome::Found { candidates: 1 });
    assert_eq!(outcome(&report, &digest, Step::ReferrersTag), Outcome::NotFound);
    assert_eq!(outcome(&report, &digest, Step::SignatureTag), Outcome::NotFound);
    assert_eq!(report.discovery.materials.len(), 1, "{report}");
    match &report.discovery.materials[0] {
        Material::Bundle { json, subject, source: Source::ReferrersApi { endpoint, .. }, .. } => {
            assert_eq!(json.as_ref(), bundle.as_slice());
            assert_eq!(subject, &digest);
            assert_eq!(endpoint, &format!("http://{}", fake.host()));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(report.discovery.side_artifacts.len(), 1);
    assert_eq!(report.discovery.side_artifacts[0].predicate_type.as_deref(), Some(SLSA));
    assert!(report.discovery.errors().is_empty(), "{:?}", report.discovery.errors());
    // the attestation was listed but never fetched; the listing asked for everything at once
    let log = fake.log();
    let side = report.discovery.side_artifacts[0].manifest.to_string();
    assert!(!log.iter().any(|l| l.contains(&side)), "{log:#?}");
    assert!(log.iter().any(|l| l == &format!("GET /v2/team/app/referrers/{digest}")), "{log:#?}");
    // JSON report for `--output json`
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["discovery"]["materials"][0]["kind"], "bundle");
    assert_eq!(json["discovery"]["materials"][0]["source"]["kind"], "referrers_api");
    assert_eq!(json["discovery"]["steps"][0]["status"], "found");
    assert!(report.to_string().contains("referrers API: 1 candidate(s)"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_api_and_tag_schema_are_deduplicated() {
    let fake = FakeRegistry::start(true).await;
    let (digest, size) = fake.put_image("team/app", "1", "app");
    let p = Pusher::new(fake.addr);
    let (desc, _) = push::push_bundle_referrer(&p, "team/app", &digest, size, OCI_MANIFEST, COSIGN_SIGN_PREDICATE, "sig").await.unwrap();
    push::push_referrers_tag(&p, "team/app", &digest, vec![desc]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let report = Registry::new(config(dir.path())).inspect("ghcr.io/team/app:1", None).await.unwrap();
    assert_eq!(outcome(&report, &digest, Step::ReferrersApi), Outcome::Found { candidates: 1 });
    assert_eq!(outcome(&report, &digest, Step::ReferrersTag), Outcome::NotFound, "same referrer listed twice is one candidate");
    assert_eq!(report.discovery.materials.len(), 1);
}

/// The chain a decision waits for (listing -> referrer manifest -> bundle blob) goes on while
/// cosign's `.sig` tag is still being asked for: here that request never answers, and the
/// bundle blob is fetched all the same. (Before, every listing had to answer first.) No clock
/// is asserted: the wait below only bounds a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrer_chain_does_not_wait_for_the_cosign_tags() {
    let fake = FakeRegistry::start(true).await;
    let (digest, size) = fake.put_image("team/app", "1", "app");
    let p = Pusher::new(fake.addr);
    let (_, bundle) = push::push_bundle_referrer(&p, "team/app", &digest, size, OCI_MANIFEST, COSIGN_SIGN_PREDICATE, "sig").await.unwrap();
    let bundle_path = format!("GET /v2/team/app/blobs/{}", Digest::sha256(&bundle));
    fake.fault(".sig", Fault::Hang);
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    fake.clear_log();
    let mut c = config(dir.path());
    c.request_timeout = Duration::from_secs(30);
    c.discovery_timeout = Duration::from_secs(60);
    let inspect = tokio::spawn(async move { Registry::new(c).inspect("ghcr.io/team/app:1", None).await.map(|_| ()) });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fake.log().iter().any(|l| l.starts_with(&bundle_path)) {
        assert!(Instant::now() < deadline, "bundle blob not fetched while the .sig tag hangs: {:#?}", fake.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fake.log().iter().any(|l| l.contains(".sig")), "the .sig tag was asked for: {:#?}", fake.log());
    assert!(!inspect.is_finished(), "discovery still waits for the .sig tag");
    inspect.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_broken_referrers_api_is_unsupported_not_none() {
    let fake = FakeRegistry::start(false).await;
    let (digest, _) = fake.put_image("team/app", "1", "app");
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let registry = Registry::new(config(dir.path()));
    let report = registry.inspect("ghcr.io/team/app:1", None).await.unwrap();
    match outcome(&report, &digest, Step::ReferrersApi) {
        Outcome::Unsupported { reason } => assert!(reason.contains("HTTP 404"), "{reason}"),
        o => panic!("{o:?}"),
    }
    let fake = FakeRegistry::start(true).await;
    let (digest, _) = fake.put_image("team/app", "1", "app");
    fake.fault(&format!("/referrers/{digest}"), Fault::NotJson);
    mirror_hosts(dir.path(), "quay.io", &fake);
    let report = registry.inspect("quay.io/team/app:1", None).await.unwrap();
    match outcome(&report, &digest, Step::ReferrersApi) {
        Outcome::Unsupported { reason } => assert!(reason.contains("not an OCI index"), "{reason}"),
        o => panic!("{o:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_serving_other_bytes_is_refused() {
    let fake = FakeRegistry::start(true).await;
    let (digest, _) = fake.put_image("team/app", "1", "app");
    fake.fault(&format!("/manifests/{digest}"), Fault::Body(bytes::Bytes::from_static(b"{\"schemaVersion\":2}")));
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let e = Registry::new(config(dir.path())).inspect("ghcr.io/team/app:1", None).await.unwrap_err().to_string();
    assert!(e.contains(&format!("http://{}: GET /v2/team/app/manifests/{digest}", fake.host())), "{e}");
    assert!(e.contains("not the requested") && e.contains("other bytes"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for fault in [Fault::Oversize(5 << 20), Fault::OversizeChunked(5 << 20)] {
        let fake = FakeRegistry::start(true).await;
        let (digest, _) = fake.put_image("team/app", "1", "app");
        fake.fault(&format!("/manifests/{digest}"), fault.clone());
        mirror_hosts(dir.path(), "ghcr.io", &fake);
        // the chunked variant really comes without a length: the reader's bound is what stops it
        let probe =
            support::http::request(fake.addr, "GET", &format!("/v2/team/app/manifests/{digest}"), &[], bytes::Bytes::new()).await.unwrap();
        assert_eq!(probe.header("content-length").is_none(), matches!(fault, Fault::OversizeChunked(_)), "{fault:?}");
        let e = Registry::new(config(dir.path())).inspect("ghcr.io/team/app:1", None).await.unwrap_err().to_string();
        assert!(e.contains("over the 4194304-byte limit (registry.max_manifest_bytes)"), "{fault:?}: {e}");
        assert!(e.contains(&format!("GET /v2/team/app/manifests/{digest}")), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_blobs_are_problems_not_candidates() {
    let fake = FakeRegistry::start(true).await;
    let (digest, size) = fake.put_image("team/app", "1", "app");
    let p = Pusher::new(fake.addr);
    let (desc, bundle) =
        push::push_bundle_referrer(&p, "team/app", &digest, size, OCI_MANIFEST, COSIGN_SIGN_PREDICATE, "sig").await.unwrap();
    let _ = desc;
    let blob = Digest::sha256(&bundle);
    fake.fault(&format!("/blobs/{blob}"), Fault::Body(bytes::Bytes::from_static(b"{\"tampered\":true}")));
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let report = Registry::new(config(dir.path())).inspect("ghcr.io/team/app:1", None).await.unwrap();
    assert!(report.discovery.materials.is_empty());
    let errors = report.discovery.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains(&format!("GET /v2/team/app/blobs/{blob}")) && errors[0].contains("other bytes"), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_down_fails_fast_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    write_hosts(dir.path(), "ghcr.io", &format!("server = \"http://127.0.0.1:{port}\"\n[host]\n"));
    let started = Instant::now();
    let e = Registry::new(config(dir.path())).inspect("ghcr.io/team/app:1", None).await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(
        e,
        format!("ghcr.io/team/app:1: http://127.0.0.1:{port}: HEAD /v2/team/app/manifests/1: cannot connect: 127.0.0.1:{port}: connection refused")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_mirror_hits_the_request_timeout_and_the_budget() {
    let fake = FakeRegistry::start(true).await;
    fake.put_image("team/app", "1", "app");
    fake.fault("/manifests/1", Fault::Hang);
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let mut c = config(dir.path());
    c.request_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let e = Registry::new(c.clone()).inspect("ghcr.io/team/app:1", None).await.unwrap_err().to_string();
    assert!(e.ends_with("HEAD /v2/team/app/manifests/1: no complete answer within 300ms"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    c.request_timeout = Duration::from_secs(5);
    c.discovery_timeout = Duration::from_millis(200);
    let e = Registry::new(c).inspect("ghcr.io/team/app:1", None).await.unwrap_err().to_string();
    assert!(e.contains("budget of 200ms for this image exhausted (registry.discovery_timeout)"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_mirror_is_ever_contacted() {
    let fake = FakeRegistry::start(true).await;
    let (digest, size) = fake.put_image("team/app", "1", "app");
    let p = Pusher::new(fake.addr);
    push::push_bundle_referrer(&p, "team/app", &digest, size, OCI_MANIFEST, COSIGN_SIGN_PREDICATE, "sig").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let dialer = RecordingDialer::allowing(&[fake.host()]);
    let registry = Registry::with_dialer(config(dir.path()), Arc::new(dialer.clone()));
    let report = registry.inspect("ghcr.io/team/app:1", None).await.unwrap();
    assert_eq!(report.discovery.materials.len(), 1);
    let attempts = dialer.attempts();
    assert!(!attempts.is_empty());
    assert!(attempts.iter().all(|a| *a == fake.host()), "{attempts:?}");

    // An unconfigured registry: the registry itself, as containerd does, and nothing else; a
    // failed connection is not retried within the operation.
    let dialer = RecordingDialer::allowing(&[]);
    let registry = Registry::with_dialer(config(dir.path()), Arc::new(dialer.clone()));
    let e = registry.inspect("quay.io/team/app:1", None).await.unwrap_err().to_string();
    assert!(e.contains("https://quay.io: HEAD /v2/team/app/manifests/1: cannot connect: quay.io:443"), "{e}");
    assert_eq!(dialer.attempts(), ["quay.io:443"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_decide_who_resolves_and_who_serves() {
    // A: pull-only mirror without the tag; B: resolves. Tag lookups never go to A; content by
    // digest is asked from A first, then B (containerd's order).
    let a = FakeRegistry::start(false).await;
    let b = FakeRegistry::start(false).await;
    let (digest, _) = b.put_image("team/app", "1", "app");
    let dir = tempfile::tempdir().unwrap();
    write_hosts(
        dir.path(),
        "ghcr.io",
        &format!(
            "server = \"http://{}\"\n[host.\"http://{}\"]\ncapabilities = [\"pull\"]\n[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            b.host(),
            a.host(),
            b.host()
        ),
    );
    let report = Registry::new(config(dir.path())).inspect("ghcr.io/team/app:1", None).await.unwrap();
    assert_eq!(report.image.digest, digest);
    assert_eq!(report.image.resolved_by, format!("http://{}", b.host()));
    let alog = a.log();
    assert!(!alog.iter().any(|l| l.starts_with("HEAD /v2/team/app/manifests/1")), "{alog:#?}");
    assert!(alog.iter().any(|l| l.starts_with(&format!("GET /v2/team/app/manifests/{digest}"))), "{alog:#?}");
    assert_eq!(report.endpoints.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_digest_header_falls_back_to_get() {
    let fake = FakeRegistry::start(false).await;
    let (digest, _) = fake.put_image("team/app", "1", "app");
    fake.omit_digest_header(true);
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let image = Registry::new(config(dir.path())).resolve(&"ghcr.io/team/app:1".parse().unwrap(), None).await.unwrap();
    assert_eq!(image.digest, digest);
    assert!(fake.log().iter().any(|l| l.starts_with("GET /v2/team/app/manifests/1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_registry_without_hosts_toml_falls_back_to_plain_http() {
    let fake = FakeRegistry::start(false).await;
    let (digest, _) = fake.put_image("team/app", "1", "app");
    let dir = tempfile::tempdir().unwrap();
    let report = Registry::new(config(dir.path())).inspect(&format!("{}/team/app:1", fake.host()), None).await.unwrap();
    assert_eq!(report.image.digest, digest);
    assert_eq!(report.endpoints[0].url(), format!("https+http://{}", fake.host()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_with_basic_refresh_and_registry_tokens() {
    let tokens = TokenServer::start(TokenPolicy {
        anonymous: false,
        users: vec![("alice".into(), "pw".into())],
        refresh_tokens: vec!["refresh-1".into()],
    })
    .await;
    let fake = FakeRegistry::start(true).await;
    let (digest, size) = fake.put_image("team/app", "1", "app");
    let p = Pusher::new(fake.addr);
    push::push_bundle_referrer(&p, "team/app", &digest, size, OCI_MANIFEST, COSIGN_SIGN_PREDICATE, "sig").await.unwrap();
    fake.set_auth(Auth::Bearer { realm: tokens.realm(), service: "fake-registry".into(), tokens: tokens.tokens.clone() });
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let mut c = config(dir.path());
    c.token_realm_hosts = vec![tokens.addr.to_string()];
    let registry = Registry::new(c.clone());

    // username/password: GET with basic auth at the realm, one token reused for the operation
    let report = registry.inspect("ghcr.io/team/app:1", Some(&Credentials::basic("alice", "pw"))).await.unwrap();
    assert_eq!(report.discovery.materials.len(), 1, "{report}");
    let log = tokens.log();
    assert!(log[0].starts_with("GET service=fake-registry&scope=repository%3Ateam%2Fapp%3Apull basic"), "{log:?}");
    assert_eq!(log.len(), 1, "token cached across requests: {log:?}");
    assert!(fake.log().iter().filter(|l| l.ends_with(" auth")).count() >= 4);

    // identity token: OAuth2 refresh-token grant
    let idt = Credentials { identity_token: Some(Secret::new("refresh-1")), ..Credentials::default() };
    registry.inspect("ghcr.io/team/app:1", Some(&idt)).await.unwrap();
    assert!(tokens.log().iter().any(|l| l.starts_with("POST grant_type=refresh_token&refresh_token=refresh-1")), "{:?}", tokens.log());

    // registry token: sent as is, no token server round trip
    tokens.tokens.lock().unwrap().insert("static-token".into());
    let before = tokens.log().len();
    let rt = Credentials { registry_token: Some(Secret::new("static-token")), ..Credentials::default() };
    registry.inspect("ghcr.io/team/app:1", Some(&rt)).await.unwrap();
    assert_eq!(tokens.log().len(), before);

    // anonymous and wrong password: refused, saying so
    let e = registry.inspect("ghcr.io/team/app:1", None).await.unwrap_err().to_string();
    assert!(e.contains("unauthorized: token server answered HTTP 401: anonymous token refused"), "{e}");
    let e = registry.inspect("ghcr.io/team/app:1", Some(&Credentials::basic("alice", "nope"))).await.unwrap_err().to_string();
    assert!(e.contains("credentials refused") && !e.contains("nope"), "{e}");

    // static credentials from the configuration, for the endpoint host
    let mut c2 = c.clone();
    c2.credentials.insert(fake.host(), Credentials::basic("alice", "pw"));
    Registry::new(c2).inspect("ghcr.io/team/app:1", None).await.unwrap();

    // kubelet credentials for another server are not sent to this mirror
    let other = Credentials { server_address: Some("registry.elsewhere".into()), ..Credentials::basic("alice", "pw") };
    let e = registry.inspect("ghcr.io/team/app:1", Some(&other)).await.unwrap_err().to_string();
    assert!(e.contains("anonymous token refused"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_realm_on_an_unconfigured_host_is_never_contacted() {
    let tokens = TokenServer::start(TokenPolicy { anonymous: true, ..TokenPolicy::default() }).await;
    let fake = FakeRegistry::start(true).await;
    fake.put_image("team/app", "1", "app");
    fake.set_auth(Auth::Bearer { realm: tokens.realm(), service: "fake-registry".into(), tokens: tokens.tokens.clone() });
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let dialer = RecordingDialer::allowing(&[fake.host(), tokens.addr.to_string()]);
    let e = Registry::with_dialer(config(dir.path()), Arc::new(dialer.clone()))
        .inspect("ghcr.io/team/app:1", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an endpoint of this registry; add it to registry.token_realm_hosts"), "{e}");
    assert!(tokens.log().is_empty());
    assert!(dialer.attempts().iter().all(|a| *a == fake.host()), "{:?}", dialer.attempts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_challenge_is_answered() {
    let fake = FakeRegistry::start(false).await;
    fake.put_image("team/app", "1", "app");
    fake.set_auth(Auth::Basic { user: "bob".into(), password: "pw".into() });
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let registry = Registry::new(config(dir.path()));
    registry.inspect("ghcr.io/team/app:1", Some(&Credentials::basic("bob", "pw"))).await.unwrap();
    let e = registry.inspect("ghcr.io/team/app:1", None).await.unwrap_err().to_string();
    assert!(e.contains("anonymous access refused"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_directory_on_the_node() {
    let fake = FakeRegistry::start(false).await;
    let (digest, _) = fake.put_image("team/app", "1", "app");
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let bundles = tempfile::tempdir().unwrap();
    std::fs::write(bundles.path().join(format!("{}.json", digest.file_stem())), push::fake_bundle("file1")).unwrap();
    std::fs::write(bundles.path().join(format!("{}.sigstore.json", digest.file_stem())), push::fake_bundle("file2")).unwrap();
    let mut c = config(dir.path());
    c.bundle_dir = Some(bundles.path().to_owned());
    let report = Registry::new(c.clone()).inspect("ghcr.io/team/app:1", None).await.unwrap();
    assert_eq!(outcome(&report, &digest, Step::BundleDir), Outcome::Found { candidates: 2 });
    assert!(
        matches!(report.discovery.materials[0].source(), Source::BundleFile { path } if path.ends_with(format!("{}.json", digest.file_stem())))
    );
    c.max_blob_bytes = 10;
    let report = Registry::new(c).inspect("ghcr.io/team/app:1", None).await.unwrap();
    assert_eq!(outcome(&report, &digest, Step::BundleDir), Outcome::NotFound);
    assert!(report.discovery.errors().iter().all(|e| e.contains("over the 10-byte limit")), "{:?}", report.discovery.errors());
    assert_eq!(report.discovery.errors().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_host_are_bounded() {
    let fake = FakeRegistry::start(true).await;
    fake.put_image("team/app", "1", "app");
    fake.delay(Duration::from_millis(20));
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let mut c = config(dir.path());
    c.max_concurrent_requests = 1;
    let registry = Registry::new(c.clone());
    // several pulls at once, each discovering with several requests in parallel
    let runs = (0..3).map(|_| registry.inspect("ghcr.io/team/app:1", None));
    for r in futures_util::future::join_all(runs).await {
        r.unwrap();
    }
    assert_eq!(fake.max_in_flight(), 1);
    c.max_concurrent_requests = 8;
    Registry::new(c).inspect("ghcr.io/team/app:1", None).await.unwrap();
    assert!(fake.max_in_flight() > 1, "discovery steps run in parallel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mirror_with_custom_ca_and_client_certificate() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = support::tls::make_pki(pki_dir.path());
    let fake = FakeRegistry::start_tls(true, support::tls::server_config(&pki)).await;
    let (digest, _) = fake.put_image("team/app", "1", "app");
    let port = fake.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let hosts = |extra: &str| {
        write_hosts(dir.path(), "registry.internal", &format!("server = \"https://localhost:{port}\"\n{extra}\n[host]\n"));
    };
    let (ca, cert, key) = (pki.path("ca.pem"), pki.path("client.pem"), pki.path("client.key"));
    let registry = Registry::new(config(dir.path()));

    hosts(&format!("ca = {ca:?}\nclient = [[{cert:?}, {key:?}]]"));
    let r = registry.inspect("registry.internal/team/app:1", None).await.unwrap();
    assert_eq!(r.image.digest, digest);
    assert_eq!(r.image.resolved_by, format!("https://localhost:{port}"));

    // the CA is needed: system roots alone do not trust the mirror
    hosts(&format!("client = [[{cert:?}, {key:?}]]"));
    let e = registry.inspect("registry.internal/team/app:1", None).await.unwrap_err().to_string();
    assert!(e.contains(&format!("https://localhost:{port}: HEAD /v2/team/app/manifests/1: TLS: handshake with localhost:{port}")), "{e}");
    assert!(e.contains("UnknownIssuer") || e.contains("unknown issuer"), "{e}");

    // the mirror requires a client certificate
    hosts(&format!("ca = {ca:?}"));
    let e = registry.inspect("registry.internal/team/app:1", None).await.unwrap_err().to_string();
    assert!(e.starts_with(&format!("registry.internal/team/app:1: https://localhost:{port}: HEAD /v2/team/app/manifests/1: ")), "{e}");

    // skip_verify: any server certificate, client certificate still presented
    hosts(&format!("skip_verify = true\nclient = [[{cert:?}, {key:?}]]"));
    registry.inspect("registry.internal/team/app:1", None).await.unwrap();
}

/// team/app:1 (a single image), team/app:plat and team/app:multi, an index with `plat` as its
/// linux/amd64 entry.
struct AppAndIndex {
    single: Digest,
    single_size: usize,
    plat: Digest,
    plat_size: usize,
    idx: Digest,
    index: Vec<u8>,
}

fn app_and_index(fake: &FakeRegistry) -> AppAndIndex {
    let (single, single_size) = fake.put_image("team/app", "1", "app");
    let (plat, plat_size) = fake.put_image("team/app", "plat", "plat");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": push::OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": plat.to_string(), "size": plat_size, "platform": {"os": "linux", "architecture": "amd64"}}]
    }))
    .unwrap();
    let idx = fake.put_manifest("team/app", Some("multi"), push::OCI_INDEX, &index);
    AppAndIndex { single, single_size, plat, plat_size, idx, index }
}

/// Issue 16: the cold decision's discovery overlaps the manifest fetch
/// (`Registry::resolve_and_discover`). It must give exactly what `resolve` then `discover`
/// give, in the same order, with material in every place (referrers API, referrers tag,
/// `.sig` tag, on the index and on its platform manifest), however the answers interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapped_discovery_gives_what_resolve_then_discover_gives() {
    let fake = FakeRegistry::start(true).await;
    let p = Pusher::new(fake.addr);
    let AppAndIndex { single, single_size, plat, plat_size, idx, index } = app_and_index(&fake);
    for (subject, size, mt) in
        [(&single, single_size, OCI_MANIFEST), (&plat, plat_size, OCI_MANIFEST), (&idx, index.len(), push::OCI_INDEX)]
    {
        push::push_bundle_referrer(&p, "team/app", subject, size, mt, COSIGN_SIGN_PREDICATE, "api").await.unwrap();
        push::push_bundle_referrer(&p, "team/app", subject, size, mt, SLSA, "provenance").await.unwrap();
        let (tagged, _) = push::push_bundle_referrer(&p, "team/app", subject, size, mt, COSIGN_SIGN_PREDICATE, "tag").await.unwrap();
        push::push_referrers_tag(&p, "team/app", subject, vec![tagged]).await.unwrap();
        push::push_legacy_signature(&p, "team/app", "ghcr.io/team/app", subject, &["sig-a", "sig-b"]).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let mut c = config(dir.path());
    c.platform = pullgate::registry::Platform { os: "linux".into(), architecture: "amd64".into(), variant: None };
    let registry = Registry::new(c);
    for digest in [&single, &idx] {
        let reference = pullgate::registry::Reference::parse(&format!("ghcr.io/team/app@{digest}")).unwrap();
        let image = registry.resolve(&reference, None).await.unwrap();
        let discovery = registry.discover(&image, None).await.unwrap();
        let want = (serde_json::to_value(&image).unwrap(), serde_json::to_value(&discovery).unwrap());
        assert!(discovery.materials.len() >= 4 && discovery.errors().is_empty(), "{discovery:?}");
        for _ in 0..5 {
            let told = std::sync::atomic::AtomicBool::new(false);
            let (i, d) =
                registry.resolve_and_discover(&reference, None, |ok| told.store(ok, std::sync::atomic::Ordering::SeqCst)).await.unwrap();
            assert!(told.load(std::sync::atomic::Ordering::SeqCst));
            assert_eq!((serde_json::to_value(&i).unwrap(), serde_json::to_value(&d).unwrap()), want);
        }
    }
    // The manifest fetch failing fails the whole, with resolve's own error.
    fake.fault(&format!("/manifests/{single}"), Fault::Body(bytes::Bytes::from_static(b"{\"schemaVersion\":2}")));
    let reference = pullgate::registry::Reference::parse(&format!("ghcr.io/team/app@{single}")).unwrap();
    let want = registry.resolve(&reference, None).await.unwrap_err().to_string();
    let got = registry.resolve_and_discover(&reference, None, |ok| assert!(!ok)).await.unwrap_err().to_string();
    assert_eq!(got, want);
}

/// Issue 16: a tag is resolved with one `GET` (`Registry::resolve_tag`), and a cold decision
/// starts from the manifest it served: no second fetch of the manifest by digest, and exactly
/// what resolving the digest gives (single image and index). A manifest handed in for another
/// digest, or whose bytes do not hash to it, is not used: the manifest is fetched as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_resolved_with_one_get_saves_the_manifest_fetch() {
    let fake = FakeRegistry::start(true).await;
    let p = Pusher::new(fake.addr);
    let AppAndIndex { single, single_size, plat, idx, index, .. } = app_and_index(&fake);
    for (subject, size, mt) in [(&single, single_size, OCI_MANIFEST), (&idx, index.len(), push::OCI_INDEX)] {
        let (tagged, _) = push::push_bundle_referrer(&p, "team/app", subject, size, mt, COSIGN_SIGN_PREDICATE, "tag").await.unwrap();
        push::push_referrers_tag(&p, "team/app", subject, vec![tagged]).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let mut c = config(dir.path());
    c.platform = pullgate::registry::Platform { os: "linux".into(), architecture: "amd64".into(), variant: None };
    let registry = Registry::new(c);
    for (tag, digest) in [("1", &single), ("multi", &idx)] {
        let by_digest = pullgate::registry::Reference::parse(&format!("ghcr.io/team/app@{digest}")).unwrap();
        let (i, d) = registry.resolve_and_discover(&by_digest, None, |_| {}).await.unwrap();
        let want = (serde_json::to_value(&i).unwrap(), serde_json::to_value(&d).unwrap());

        fake.clear_log();
        let tagged = pullgate::registry::Reference::parse(&format!("ghcr.io/team/app:{tag}")).unwrap();
        let resolution = registry.resolve_tag(&tagged, None).await.unwrap();
        assert_eq!(&resolution.digest, digest);
        assert_eq!(fake.log(), vec![format!("GET /v2/team/app/manifests/{tag}")], "one GET of the tag, no HEAD");
        let known = resolution.manifest.expect("the manifest served with the tag");
        assert!(digest.matches(&known.body));

        fake.clear_log();
        let (i, d) = registry.resolve_and_discover_with(&by_digest, None, false, Some(&known), |ok| assert!(ok)).await.unwrap();
        assert_eq!((serde_json::to_value(&i).unwrap(), serde_json::to_value(&d).unwrap()), want);
        let log = fake.log();
        assert!(!log.iter().any(|l| l == &format!("GET /v2/team/app/manifests/{digest}")), "manifest fetched again: {log:?}");

        // Not the digest's manifest (other digest, or bytes that do not hash to it): not used.
        let other = pullgate::registry::FetchedManifest { digest: plat.clone(), ..known.clone() };
        let forged = pullgate::registry::FetchedManifest { body: bytes::Bytes::from_static(b"{}"), ..known.clone() };
        for k in [other, forged] {
            fake.clear_log();
            let (i, d) = registry.resolve_and_discover_with(&by_digest, None, false, Some(&k), |ok| assert!(ok)).await.unwrap();
            assert_eq!((serde_json::to_value(&i).unwrap(), serde_json::to_value(&d).unwrap()), want);
            assert!(fake.log().iter().any(|l| l == &format!("GET /v2/team/app/manifests/{digest}")));
        }
    }
    // A digest reference asks nothing of the mirror.
    fake.clear_log();
    let by_digest = pullgate::registry::Reference::parse(&format!("ghcr.io/team/app@{single}")).unwrap();
    let resolution = registry.resolve_tag(&by_digest, None).await.unwrap();
    assert_eq!((resolution.digest, resolution.manifest), (single.clone(), None));
    assert!(fake.log().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_attestation_tag_is_read_only_when_attestations_are_required() {
    let fake = FakeRegistry::start(false).await;
    let (digest, _) = fake.put_image("team/app", "1", "app");
    let p = Pusher::new(fake.addr);
    let envelope = br#"{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"keyid":"","sig":"MEUC"}]}"#.to_vec();
    let annotations = serde_json::json!({"predicateType": SLSA, "dev.sigstore.cosign/bundle": "{}"});
    // An `.att` manifest with one DSSE layer (discovery does not verify; the engine does).
    push::push_attestation_layers(&p, "team/app", &digest, &[(envelope.clone(), annotations)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let registry = Registry::new(config(dir.path()));

    // Without a policy requiring attestations the tag is not even looked up.
    fake.clear_log();
    let report = registry.inspect("ghcr.io/team/app:1", None).await.unwrap();
    assert!(report.discovery.steps.iter().all(|s| s.step != Step::AttestationTag), "{report}");
    assert!(report.discovery.materials.is_empty(), "{report}");
    let tag = digest.cosign_attestation_tag();
    assert!(!fake.log().iter().any(|l| l.contains(&tag)), "{:#?}", fake.log());

    let report = registry.inspect_with("ghcr.io/team/app:1", None, true).await.unwrap();
    assert_eq!(outcome(&report, &digest, Step::AttestationTag), Outcome::Found { candidates: 1 });
    match &report.discovery.materials[..] {
        [Material::LegacyAttestation { envelope: got, annotations, subject, source: Source::SignatureTag { tag: t, .. }, .. }] => {
            assert_eq!(got.as_ref(), envelope.as_slice());
            assert_eq!(annotations.get("predicateType").map(String::as_str), Some(SLSA));
            assert_eq!((subject, t), (&digest, &tag));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(report.to_string().contains("cosign .att tag: 1 candidate(s)"), "{report}");

    assert!(report.discovery.errors().is_empty(), "{:?}", report.discovery.errors());
}

/// Issue 13: a sha384-addressed image resolves on the mirror as a digest reference (the bytes
/// checked with sha384), and discovery looks for signatures under that digest; the same digest
/// type then reaches verification, without a conversion that refused it as malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha384_addressed_image_resolves_and_is_discovered_by_its_digest() {
    use pullgate::digest::DigestAlgorithm;
    let fake = FakeRegistry::start(true).await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let d384 = Digest::compute(DigestAlgorithm::Sha384, manifest);
    fake.put_manifest_as("team/app", None, OCI_MANIFEST, manifest, d384.clone());
    let dir = tempfile::tempdir().unwrap();
    mirror_hosts(dir.path(), "ghcr.io", &fake);
    let reference = format!("ghcr.io/team/app@{d384}");
    assert_eq!(reference.parse::<pullgate::registry::Reference>().unwrap().digest(), Some(&d384));
    let report = Registry::new(config(dir.path())).inspect(&reference, None).await.unwrap();
    assert_eq!(report.image.digest, d384, "{report}");
    assert_eq!(report.image.digest.algorithm(), DigestAlgorithm::Sha384);
    assert!(fake.log().iter().any(|l| l.contains(&format!("/manifests/{d384}"))), "{:?}", fake.log());
    assert!(fake.log().iter().any(|l| l.contains(&format!("/referrers/{d384}"))), "{:?}", fake.log());
    assert_eq!(outcome(&report, &d384, Step::SignatureTag), Outcome::NotFound);
    // A mirror serving other bytes under the sha384 name is refused, as for sha256.
    let other = Digest::compute(DigestAlgorithm::Sha384, b"other");
    fake.put_manifest_as("team/app", None, OCI_MANIFEST, manifest, other.clone());
    let e = Registry::new(config(dir.path())).inspect(&format!("ghcr.io/team/app@{other}"), None).await.unwrap_err().to_string();
    assert!(e.contains("other bytes"), "{e}");
}
