//! Operating pullgate, with real parts: a real containerd and registry (`scripts/testbed.sh`),
//! the real `pullgate` binary with its admin endpoints on, signed and unsigned images, and a
//! kubelet-like CRI client.
//!
//! - readiness: not ready before a trust root is loaded, ready once one is imported, not ready
//!   while containerd is down and ready again when it is back;
//! - `/metrics` scraped before and after calls: CRI calls by method and code, decisions by
//!   policy/mode/result/reason, cache, mirror requests, verification, trust root, policy,
//!   containerd; every metric the packaged alert rules use exists;
//! - `pullgate report` over an audit log recorded by a real audit-mode pullgate;
//! - `pullgate doctor` on a good and on a broken setup;
//! - the DaemonSet's sync script (`packaging/kubernetes/pullgate-sync.sh`) run against a live
//!   pullgate: a valid configuration and a trust root are installed and pullgate reloads; an
//!   invalid configuration is refused and the old one stays.
//!
//! The trials share one testbed and run one at a time, in order (the containerd-down trial is
//! last). Without root they are reported as ignored, with the reason.

// `ensure!(sample(...) >= Some(1.0), ...)` reads better than its partial_cmp form.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

#[path = "support/admin.rs"]
mod admin;
#[path = "support/cri.rs"]
mod cri;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/mod.rs"]
mod support;
#[path = "support/testbed.rs"]
mod testbed;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use admin::{free_port, http_get, http_get_accept, sample};
use daemon::Daemon;
use k8s_cri::v1 as k8s;
use libtest_mimic::{Arguments, Failed};
use pullgate::registry::Digest;
use serde_json::Value;
use support::registry::push::Pusher;
use support::signer::{sign_and_push, Format};
use support::sigstore::{SignOptions, Stack, DEFAULT_ISSUER, DEFAULT_SAN};
use testbed::{Generation, Testbed};

type TestResult = Result<(), Failed>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

struct Ctx {
    rt: tokio::runtime::Runtime,
    tb: Testbed,
    registry: String,
    /// The main instance: enforce mode, admin endpoints on `admin`.
    pg: Mutex<Daemon>,
    pg_sock: PathBuf,
    admin: SocketAddr,
    config: PathBuf,
    /// trusted_root.json of the test Sigstore stack (not imported at start).
    trusted_root: PathBuf,
    state_dir: PathBuf,
}

static CTX: testbed::Contexts<Ctx> = testbed::Contexts::new();

/// Stops pullgate and the testbed (containerd, shims, registry).
fn teardown(c: &Ctx) {
    if let Ok(mut pg) = c.pg.lock() {
        pg.terminate(Duration::from_secs(10));
    }
    c.tb.clean();
}

struct Settings<'a> {
    listen: &'a Path,
    upstream: &'a Path,
    registry: &'a str,
    hosts_dir: &'a str,
    state_dir: &'a Path,
    audit: &'a Path,
    mode: &'a str,
    admin: Option<SocketAddr>,
    watch_interval: &'a str,
}

fn config(s: &Settings) -> String {
    let reg = s.registry;
    let admin = s.admin.map(|a| format!("admin:\n  listen: {a}\n")).unwrap_or_default();
    format!(
        r#"listen: {listen}
upstream: {upstream}
{admin}registry:
  hosts_dir: {hosts_dir}
  bundle_dir: null
  connect_timeout: 1s
  request_timeout: 5s
  discovery_timeout: 10s
trust_root:
  state_dir: {state}
  watch_interval: {watch}
audit:
  sink: file
  path: {audit}
cri:
  sandbox_image: {sandbox}
policy:
  unmatched: deny
  exemptions:
    - name: sandbox
      images: ["{reg}/pause", "{reg}/pause:*"]
  policies:
    - name: demo
      images: ["{reg}/demo/**"]
      mode: {mode}
      authorities:
        - name: release-workflow
          keyless:
            identities:
              - issuer: {issuer}
                subject: {san}
                extensions:
                  github-workflow-repository: pullgate/demo
"#,
        listen = s.listen.display(),
        upstream = s.upstream.display(),
        hosts_dir = s.hosts_dir,
        state = s.state_dir.display(),
        watch = s.watch_interval,
        audit = s.audit.display(),
        sandbox = format_args!("{reg}/pause:1"),
        mode = s.mode,
        issuer = DEFAULT_ISSUER,
        san = DEFAULT_SAN,
    )
}

fn setup(generation: Generation) -> Result<Ctx, String> {
    let tb = Testbed::start_generation(generation, "ops", &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let registry = tb.get("REGISTRY").to_string();
    let addr: SocketAddr = registry.parse().map_err(|e| format!("{registry}: {e}"))?;
    let pusher = Pusher::new(addr);
    let mut stack = Stack::new();
    let trusted_root = tb.dir.join("trusted_root.json");
    std::fs::write(&trusted_root, stack.trusted_root_json()).map_err(|e| e.to_string())?;
    let opts = SignOptions::new(stack.now);
    let d1 = Digest::parse(tb.get("DEMO_DIGEST")).map_err(|e| e.to_string())?;
    rt.block_on(sign_and_push(&mut stack, &pusher, "demo/app", &d1, &opts, Format::Bundle))?;

    let pg_sock = tb.dir.join("pg.sock");
    let state_dir = tb.dir.join("state");
    let admin = free_port()?;
    let cfg = tb.dir.join("ops.yaml");
    let text = config(&Settings {
        listen: &pg_sock,
        upstream: &tb.containerd_sock(),
        registry: &registry,
        hosts_dir: tb.get("HOSTS_DIR"),
        state_dir: &state_dir,
        audit: &tb.dir.join("audit.log"),
        mode: "enforce",
        admin: Some(admin),
        watch_interval: "1s",
    });
    std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
    // No trust root imported yet: the first trial watches readiness change when it arrives.
    let pg = Daemon::start(&pg_sock, &["--config", cfg.to_str().unwrap()])?;
    Ok(Ctx { rt, tb, registry, pg: Mutex::new(pg), pg_sock, admin, config: cfg, trusted_root, state_dir })
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests: Vec<testbed::Trial<Ctx>> = vec![
        ("ready_only_once_a_trust_root_is_loaded", ready_after_trust_root),
        ("metrics_change_as_calls_are_made", metrics_change),
        ("doctor_passes_a_good_setup", doctor_good),
        ("doctor_explains_a_broken_setup", doctor_broken),
        ("report_lists_what_enforce_would_refuse", report_on_audit_log),
        ("sync_script_installs_config_and_trust_root_and_reloads", sync_script),
        ("not_ready_while_containerd_is_down", containerd_down),
    ];
    let trials = testbed::trials(tests, &CTX, setup, teardown);
    let conclusion = libtest_mimic::run(&args, trials);
    CTX.finish(teardown);
    conclusion.exit();
}

// --- helpers -----------------------------------------------------------------------------------

fn scrape(c: &Ctx) -> Result<String, Failed> {
    let (status, body) = http_get(c.admin, "/metrics")?;
    ensure!(status == 200, "/metrics: HTTP {status}: {body}");
    Ok(body)
}

/// Polls `/ready` until its status is `want` (at most `within`); returns the last body.
fn wait_ready(addr: SocketAddr, want: u16, within: Duration) -> Result<String, Failed> {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = http_get(addr, "/ready")?;
        if status == want {
            return Ok(body);
        }
        ensure!(Instant::now() < deadline, "/ready stayed HTTP {status} (want {want}) for {within:?}:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn import_trust_root(state_dir: &Path, trusted_root: &Path) -> TestResult {
    let out = Command::new(daemon::binary())
        .args(["trust-root", "import", "--accept-unverified-trusted-root", "--trusted-root"])
        .arg(trusted_root)
        .arg("--state-dir")
        .arg(state_dir)
        .output()?;
    ensure!(out.status.success(), "trust-root import: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn spec(image: &str) -> Option<k8s::ImageSpec> {
    Some(k8s::ImageSpec { image: image.into(), ..Default::default() })
}

fn pod(namespace: &str, name: &str) -> k8s::PodSandboxConfig {
    k8s::PodSandboxConfig {
        metadata: Some(k8s::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-{}", std::process::id()),
            namespace: namespace.into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

async fn pull(socket: &Path, image: &str) -> Result<String, tonic::Status> {
    let req = k8s::PullImageRequest { image: spec(image), auth: None, sandbox_config: Some(pod("team", "web")) };
    Ok(cri::images(socket).pull_image(req).await?.into_inner().image_ref)
}

/// Runs a pullgate subcommand: (exit code, stdout, stderr).
fn pullgate(args: &[&str]) -> Result<(i32, String, String), Failed> {
    let out = Command::new(daemon::binary()).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

// --- trials ------------------------------------------------------------------------------------

fn ready_after_trust_root(c: &Ctx) -> TestResult {
    let (status, body) = http_get(c.admin, "/live")?;
    ensure!(status == 200, "/live: {status} {body}");
    let (status, body) = http_get(c.admin, "/ready")?;
    ensure!(status == 503, "ready without a trust root: {body}");
    ensure!(body.contains("FAIL trust_root") && body.contains("pullgate trust-root import"), "{body}");
    ensure!(body.contains("ok   containerd") && body.contains("ok   policy"), "{body}");
    let metrics = scrape(c)?;
    ensure!(sample(&metrics, "pullgate_trust_root_installed", &[]) == Some(0.0), "{metrics}");
    ensure!(sample(&metrics, "pullgate_trust_root_state", &[("state", "none")]) == Some(1.0), "{metrics}");
    // An operator imports one; the daemon's watcher (1s here) picks it up.
    import_trust_root(&c.state_dir, &c.trusted_root)?;
    let body = wait_ready(c.admin, 200, Duration::from_secs(15))?;
    ensure!(body.starts_with("ready\n") && body.contains("ok   trust_root: generation 1"), "{body}");
    Ok(())
}

fn metrics_change(c: &Ctx) -> TestResult {
    let before = scrape(c)?;
    let version = [("service", "RuntimeService"), ("method", "Version"), ("code", "OK")];
    let v0 = sample(&before, "pullgate_cri_calls_total", &version).unwrap_or(0.0);
    let signed = c.tb.get("DEMO_IMAGE").to_string();
    let unsigned = c.tb.get("UNSIGNED_IMAGE").to_string();
    c.rt.block_on(async {
        let mut rt = cri::runtime(&c.pg_sock);
        for _ in 0..5 {
            rt.version(k8s::VersionRequest::default()).await?;
        }
        let missing = rt.container_status(k8s::ContainerStatusRequest { container_id: "no-such-container".into(), verbose: false }).await;
        ensure!(missing.as_ref().err().map(|s| s.code()) == Some(tonic::Code::NotFound), "{missing:?}");
        let unknown = cri::raw_unary(cri::channel(&c.pg_sock), "/runtime.v1.RuntimeService/NoSuchMethod", bytes::Bytes::new()).await;
        ensure!(unknown.is_err(), "an unknown method succeeded");
        pull(&c.pg_sock, &signed).await?;
        let refused = pull(&c.pg_sock, &unsigned).await;
        ensure!(refused.is_err(), "the unsigned image was pulled");
        Ok::<_, Failed>(())
    })?;
    let after = scrape(c)?;
    let get = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels);
    let v1 = get("pullgate_cri_calls_total", &version).unwrap_or(0.0);
    ensure!(v1 - v0 >= 5.0, "Version calls went from {v0} to {v1}:\n{after}");
    ensure!(
        get("pullgate_cri_call_duration_seconds_count", &[("service", "RuntimeService"), ("method", "Version")]).unwrap_or(0.0) >= 5.0,
        "no Version latencies:\n{after}"
    );
    ensure!(get("pullgate_cri_calls_total", &[("method", "ContainerStatus"), ("code", "NotFound")]) >= Some(1.0), "{after}");
    ensure!(
        get("pullgate_cri_calls_total", &[("service", "other"), ("method", "other")]) >= Some(1.0),
        "unknown methods are not counted:\n{after}"
    );
    ensure!(get("pullgate_cri_calls_total", &[("method", "PullImage"), ("code", "OK")]) >= Some(1.0), "{after}");
    ensure!(
        get("pullgate_cri_calls_total", &[("method", "PullImage"), ("code", "Unknown")]) >= Some(1.0),
        "the refusal is not counted:\n{after}"
    );
    let decision = |result: &str, reason: &str| {
        get(
            "pullgate_decisions_total",
            &[("call", "PullImage"), ("policy", "demo"), ("mode", "enforce"), ("result", result), ("reason", reason)],
        )
    };
    ensure!(decision("allow", "verified") >= Some(1.0), "{after}");
    ensure!(decision("deny", "no_signatures") >= Some(1.0), "{after}");
    ensure!(get("pullgate_decision_cache_lookups_total", &[("result", "miss")]) >= Some(2.0), "{after}");
    ensure!(get("pullgate_decision_cache_entries", &[]) >= Some(2.0), "{after}");
    ensure!(
        get("pullgate_mirror_requests_total", &[("registry", &c.registry), ("operation", "resolve"), ("outcome", "ok")]) >= Some(2.0),
        "{after}"
    );
    ensure!(get("pullgate_mirror_requests_total", &[("registry", &c.registry), ("operation", "discover")]) >= Some(1.0), "{after}");
    ensure!(get("pullgate_verifications_total", &[("result", "verified")]) >= Some(1.0), "{after}");
    ensure!(get("pullgate_verification_duration_seconds_count", &[]) >= Some(2.0), "{after}");
    ensure!(get("pullgate_trust_root_generation", &[]) == Some(1.0), "{after}");
    ensure!(get("pullgate_trust_root_state", &[("state", "fresh")]) == Some(1.0), "{after}");
    ensure!(get("pullgate_trust_root_seconds_until_stale", &[]).is_some_and(|s| s > 86400.0), "{after}");
    ensure!(get("pullgate_trust_root_last_import_success", &[]) == Some(1.0), "{after}");
    ensure!(get("pullgate_policy_generation", &[]) == Some(1.0), "{after}");
    ensure!(get("pullgate_enforcement_enabled", &[]) == Some(1.0), "{after}");
    ensure!(get("pullgate_upstream_connected", &[]) == Some(1.0), "{after}");
    ensure!(get("pullgate_upstream_up", &[]) == Some(1.0), "{after}");
    ensure!(after.ends_with("# EOF\n"), "not OpenMetrics text");
    // curl and promtool get the classic text format, same samples.
    let (_, classic) = http_get_accept(c.admin, "/metrics", "*/*")?;
    ensure!(!classic.contains("# EOF") && sample(&classic, "pullgate_cri_calls_total", &version) >= Some(v1), "{classic}");
    Ok(())
}

fn kubelet_config(dir: &Path, name: &str, endpoint: &Path) -> Result<PathBuf, Failed> {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncontainerRuntimeEndpoint: unix://{0}\nimageServiceEndpoint: unix://{0}\n",
            endpoint.display()
        ),
    )?;
    Ok(path)
}

fn findings(json: &str) -> Result<Vec<(String, String, String)>, Failed> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("{e}: {json}"))?;
    Ok(v["findings"]
        .as_array()
        .ok_or("no findings")?
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap_or("").to_string(),
                f["status"].as_str().unwrap_or("").to_string(),
                f["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

fn doctor_good(c: &Ctx) -> TestResult {
    let empty = c.tb.dir.join("kubelet.conf.d");
    std::fs::create_dir_all(&empty)?;
    let kubelet = kubelet_config(&c.tb.dir, "kubelet-good.yaml", &c.pg_sock)?;
    let (code, out, err) = pullgate(&[
        "doctor",
        "--config",
        c.config.to_str().unwrap(),
        "--kubelet-config",
        kubelet.to_str().unwrap(),
        "--kubelet-config-dir",
        empty.to_str().unwrap(),
        "--containerd-config",
        c.tb.get("CONTAINERD_CONFIG"),
        "--output",
        "json",
    ])?;
    let f = findings(&out)?;
    let failed: Vec<_> = f.iter().filter(|x| x.1 == "fail").collect();
    ensure!(code == 0 && failed.is_empty(), "doctor exit {code}: {failed:?}\n{out}\n{err}");
    for check in ["config", "kubelet", "pullgate", "containerd", "hosts", "mirror", "trust-root", "images"] {
        ensure!(f.iter().any(|x| x.0 == check && x.1 == "ok"), "no ok {check}: {f:?}");
    }
    ensure!(f.iter().any(|x| x.0 == "images" && x.2.contains("1 allowed")), "{f:?}");
    // The testbed's containerd config: the format of its generation, the same hosts.toml dir.
    let version = match c.tb.generation() {
        testbed::Generation::Containerd16 => "version 2 config",
        testbed::Generation::Containerd2 => "version 3 config",
    };
    ensure!(f.iter().any(|x| x.0 == "containerd" && x.1 == "ok" && x.2.contains(version)), "{f:?}");
    ensure!(f.iter().any(|x| x.0 == "containerd" && x.1 == "ok" && x.2.contains("as pullgate does")), "{f:?}");
    // The human form says the same in one line per check.
    let (code, human, _) = pullgate(&[
        "doctor",
        "--config",
        c.config.to_str().unwrap(),
        "--kubelet-config",
        kubelet.to_str().unwrap(),
        "--kubelet-config-dir",
        empty.to_str().unwrap(),
        "--containerd-config",
        c.tb.get("CONTAINERD_CONFIG"),
    ])?;
    ensure!(code == 0 && (human.contains("all checks passed") || human.contains("no problems")), "{human}");
    eprintln!("{human}");
    Ok(())
}

fn doctor_broken(c: &Ctx) -> TestResult {
    // kubelet bypasses pullgate; pullgate's socket is not served; no trust root; the mirror's
    // endpoint is dead; and an unsigned image reached the node behind pullgate's back.
    let unsigned = c.tb.get("UNSIGNED_IMAGE").to_string();
    c.rt.block_on(pull(&c.tb.containerd_sock(), &unsigned))?;
    let dead_port = free_port()?.port();
    let dead = c.tb.dir.join("dead-hosts");
    std::fs::create_dir_all(dead.join(&c.registry))?;
    std::fs::write(
        dead.join(&c.registry).join("hosts.toml"),
        format!("server = \"http://127.0.0.1:{dead_port}\"\n[host.\"http://127.0.0.1:{dead_port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )?;
    let empty_state = c.tb.dir.join("empty-state");
    std::fs::create_dir_all(&empty_state)?;
    let cfg = c.tb.dir.join("broken.yaml");
    std::fs::write(
        &cfg,
        config(&Settings {
            listen: &c.tb.dir.join("nobody.sock"),
            upstream: &c.tb.containerd_sock(),
            registry: &c.registry,
            hosts_dir: dead.to_str().unwrap(),
            state_dir: &empty_state,
            audit: &c.tb.dir.join("broken-audit.log"),
            mode: "enforce",
            admin: None,
            watch_interval: "30s",
        }),
    )?;
    let kubelet = kubelet_config(&c.tb.dir, "kubelet-bad.yaml", &c.tb.containerd_sock())?;
    let empty = c.tb.dir.join("kubelet.conf.d");
    std::fs::create_dir_all(&empty)?;
    // containerd's config in the other generation's format: 1.6 given a version 3 file; 2.x a
    // version 3 file with config_path where only version 2 files keep it.
    let ctd_config = c.tb.dir.join("containerd-mismatch.toml");
    let (ctd_text, ctd_needle) = match c.tb.generation() {
        testbed::Generation::Containerd16 => (
            format!("version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"{}\"\n", dead.display()),
            "reads versions 1 and 2 only",
        ),
        testbed::Generation::Containerd2 => (
            format!("version = 3\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{}\"\n", dead.display()),
            "containerd ignores it",
        ),
    };
    std::fs::write(&ctd_config, ctd_text)?;
    let (code, out, err) = pullgate(&[
        "doctor",
        "--config",
        cfg.to_str().unwrap(),
        "--kubelet-config",
        kubelet.to_str().unwrap(),
        "--kubelet-config-dir",
        empty.to_str().unwrap(),
        "--containerd-config",
        ctd_config.to_str().unwrap(),
        "--images-timeout",
        "60s",
        "--output",
        "json",
    ])?;
    ensure!(code == 1, "doctor exit {code} on a broken setup:\n{out}\n{err}");
    let f = findings(&out)?;
    let fail = |check: &str, needle: &str| f.iter().any(|x| x.0 == check && x.1 == "fail" && x.2.contains(needle));
    ensure!(fail("kubelet", "bypasses pullgate"), "{f:?}");
    ensure!(fail("pullgate", "does not answer"), "{f:?}");
    ensure!(fail("trust-root", "no trust root installed"), "{f:?}");
    ensure!(fail("mirror", &dead_port.to_string()), "{f:?}");
    ensure!(fail("containerd", ctd_needle), "the containerd config mismatch is not explained: {f:?}");
    ensure!(fail("images", &unsigned), "the unsigned image on the node is not reported: {f:?}");
    ensure!(f.iter().all(|x| !x.2.contains('\n')), "a finding spans lines: {f:?}");
    let (_, human, _) = pullgate(&[
        "doctor",
        "--config",
        cfg.to_str().unwrap(),
        "--kubelet-config",
        kubelet.to_str().unwrap(),
        "--kubelet-config-dir",
        empty.to_str().unwrap(),
        "--containerd-config",
        ctd_config.to_str().unwrap(),
    ])?;
    ensure!(human.lines().any(|l| l.starts_with("FAIL kubelet")) && human.contains("problem(s)"), "{human}");
    eprintln!("{human}");
    // An invalid configuration is a problem too, explained.
    let bad = c.tb.dir.join("invalid.yaml");
    std::fs::write(&bad, "policy:\n  unmatched: sometimes\n")?;
    let (code, human, _) = pullgate(&["doctor", "--config", bad.to_str().unwrap(), "--kubelet-config", kubelet.to_str().unwrap()])?;
    ensure!(code == 1 && human.contains("FAIL config") && human.contains("policy.unmatched"), "{human}");
    c.rt.block_on(async {
        cri::images(&c.tb.containerd_sock()).remove_image(k8s::RemoveImageRequest { image: spec(&unsigned) }).await.ok()
    });
    Ok(())
}

fn report_on_audit_log(c: &Ctx) -> TestResult {
    // An audit-mode pullgate records two pulls of an unsigned image and one signed one.
    let sock = c.tb.dir.join("audit.sock");
    let audit = c.tb.dir.join("audit-mode.log");
    let cfg = c.tb.dir.join("audit-mode.yaml");
    std::fs::write(
        &cfg,
        config(&Settings {
            listen: &sock,
            upstream: &c.tb.containerd_sock(),
            registry: &c.registry,
            hosts_dir: c.tb.get("HOSTS_DIR"),
            state_dir: &c.state_dir,
            audit: &audit,
            mode: "audit",
            admin: None,
            watch_interval: "30s",
        }),
    )?;
    let mut d = Daemon::start(&sock, &["--config", cfg.to_str().unwrap()])?;
    let unsigned = c.tb.get("UNSIGNED_IMAGE").to_string();
    let signed = c.tb.get("DEMO_IMAGE").to_string();
    let pulled = c.rt.block_on(async {
        for _ in 0..2 {
            pull(&sock, &unsigned).await?;
        }
        pull(&sock, &signed).await
    });
    d.terminate(Duration::from_secs(10));
    pulled.map_err(|s| format!("audit mode refused a pull: {}", s.message()))?;

    let (code, out, err) = pullgate(&["report", "--audit-log", audit.to_str().unwrap(), "--since", "1h", "--output", "json"])?;
    ensure!(code == 1, "report exit {code} with refusals in the window:\n{out}\n{err}");
    let r: Value = serde_json::from_str(&out)?;
    ensure!(r["decisions"] == 3 && r["would_refuse"] == 2, "{r:#}");
    let demo = r["policies"].as_array().and_then(|p| p.iter().find(|p| p["policy"] == "demo")).ok_or("no demo policy")?;
    ensure!(demo["decisions"] == 3 && demo["allowed"] == 1 && demo["would_refuse"] == 2, "{demo:#}");
    ensure!(demo["modes"] == serde_json::json!(["audit"]), "{demo:#}");
    let img = &demo["images"][0];
    ensure!(img["image"] == unsigned.as_str() && img["count"] == 2, "{img:#}");
    ensure!(img["namespaces"] == serde_json::json!(["team"]), "{img:#}");
    ensure!(img["digests"] == serde_json::json!([c.tb.get("UNSIGNED_DIGEST")]), "{img:#}");
    ensure!(img["categories"]["no_signatures"] == 2, "{img:#}");
    ensure!(demo["images"].as_array().map(Vec::len) == Some(1), "the signed image is listed: {demo:#}");

    let (code, human, _) = pullgate(&["report", "--audit-log", audit.to_str().unwrap(), "--since", "1h"])?;
    ensure!(
        code == 1 && human.contains("policy demo (audit): 3 decisions, 2 would be refused") && human.contains(&format!("2x {unsigned}")),
        "{human}"
    );
    eprintln!("{human}");

    // Format 2 says what happened: the unsigned pulls were let through, enforce would refuse them.
    let text = std::fs::read_to_string(&audit)?;
    let lines: Vec<Value> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(lines.iter().all(|l| l["format"] == 2), "{text}");
    let unsigned_lines: Vec<&Value> = lines.iter().filter(|l| l["image"] == unsigned.as_str()).collect();
    ensure!(unsigned_lines.len() == 2 && unsigned_lines.iter().all(|l| l["decision"] == "allow" && l["would_deny"] == true), "{text}");
    // The same log in format 1 (no `format` or `would_deny`; audit-mode refusals said `deny`)
    // reports the same.
    let v1 = c.tb.dir.join("audit-mode-v1.log");
    let mut old = String::new();
    for mut l in lines {
        let o = l.as_object_mut().ok_or("not an object")?;
        if o.remove("would_deny") == Some(Value::Bool(true)) {
            o.insert("decision".into(), "deny".into());
        }
        o.remove("format");
        old.push_str(&format!("{l}\n"));
    }
    std::fs::write(&v1, old)?;
    let (code, human_v1, _) = pullgate(&["report", "--audit-log", v1.to_str().unwrap(), "--since", "1h"])?;
    // (The first line names the file and the window, `--since 1h` from each run's now.)
    let body = |h: &str| h.lines().skip(1).collect::<Vec<_>>().join("\n");
    ensure!(code == 1 && body(&human_v1) == body(&human), "format 1:\n{human_v1}\nformat 2:\n{human}");
    // A window before the pulls: nothing to refuse, exit 0.
    let (code, human, _) = pullgate(&["report", "--audit-log", audit.to_str().unwrap(), "--until", "2000-01-01T00:00:00Z"])?;
    ensure!(code == 0 && human.contains("would refuse nothing"), "{human}");
    let (code, _, err) = pullgate(&["report", "--audit-log", "/nonexistent/audit.log"])?;
    ensure!(code == 66 && err.contains("cannot read audit log"), "{err}");
    c.rt.block_on(async {
        cri::images(&c.tb.containerd_sock()).remove_image(k8s::RemoveImageRequest { image: spec(&unsigned) }).await.ok()
    });
    Ok(())
}

fn sync_script(c: &Ctx) -> TestResult {
    // A node's filesystem in a directory: pullgate runs from its /etc/pullgate/config.yaml,
    // in audit mode, with no trust root; the trust-root watcher is slow, so only the reload the
    // script triggers can bring the changes in.
    let host = c.tb.dir.join("host");
    let etc = host.join("etc/pullgate");
    std::fs::create_dir_all(&etc)?;
    let sock = c.tb.dir.join("sync.sock");
    let admin = free_port()?;
    let state = host.join("var/lib/pullgate");
    let upstream = c.tb.containerd_sock();
    let audit = c.tb.dir.join("sync-audit.log");
    let settings = |mode: &'static str| Settings {
        listen: &sock,
        upstream: &upstream,
        registry: &c.registry,
        hosts_dir: c.tb.get("HOSTS_DIR"),
        state_dir: &state,
        audit: &audit,
        mode,
        admin: Some(admin),
        watch_interval: "1h",
    };
    let installed = etc.join("config.yaml");
    std::fs::write(&installed, config(&settings("audit")))?;
    let mut d = Daemon::start(&sock, &["--config", installed.to_str().unwrap()])?;
    let (status, _) = http_get(admin, "/ready")?;
    ensure!(status == 503, "ready without a trust root");

    // What the DaemonSet's ConfigMaps would hold: the policy now in enforce mode, and the root.
    let source = c.tb.dir.join("sync-source");
    std::fs::create_dir_all(source.join("config"))?;
    std::fs::create_dir_all(source.join("trust-root"))?;
    let enforce = config(&settings("enforce"));
    std::fs::write(source.join("config/config.yaml"), &enforce)?;
    std::fs::copy(&c.trusted_root, source.join("trust-root/trusted_root.json"))?;
    let mirror = host.join("var/lib/pullgate-sync/mirror");
    let script = testbed::repo_root().join("packaging/kubernetes/pullgate-sync.sh");
    let run_sync = || -> Result<(i32, String), Failed> {
        let out = Command::new("sh")
            .arg(&script)
            .env("SYNC_ONCE", "1")
            .env("SYNC_SOURCE", &source)
            .env("HOST_ROOT", "")
            .env("HOST_EXEC", "")
            .env("PULLGATE_BIN", daemon::binary())
            .env("PULLGATE_CONFIG", &installed)
            .env("PULLGATE_MIRROR_DIR", &mirror)
            .env("PULLGATE_IMPORT_ARGS", format!("--trusted-root {}/trusted_root.json --accept-unverified-trusted-root", mirror.display()))
            .env("PULLGATE_RELOAD", format!("kill -HUP {}", d.pid()))
            .output()?;
        Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    let (code, log) = run_sync()?;
    ensure!(code == 0, "sync exit {code}:\n{log}");
    ensure!(log.contains("installed a new") && log.contains("imported the trust root") && log.contains("pullgate reloaded"), "{log}");
    eprintln!("{log}");
    ensure!(std::fs::read_to_string(&installed)? == enforce, "the configuration was not installed");
    let body = wait_ready(admin, 200, Duration::from_secs(10))?;
    ensure!(body.contains("trust_root: generation 1"), "{body}");
    let (_, metrics) = http_get(admin, "/metrics")?;
    ensure!(sample(&metrics, "pullgate_policy_generation", &[]) == Some(2.0), "the policy was not reloaded:\n{metrics}");
    ensure!(sample(&metrics, "pullgate_policy_reloads_total", &[("result", "ok")]) == Some(1.0), "{metrics}");
    ensure!(sample(&metrics, "pullgate_policy_last_reload_success", &[]) == Some(1.0), "{metrics}");
    // The new policy is in force: the unsigned image is refused now.
    let refused = c.rt.block_on(pull(&sock, c.tb.get("UNSIGNED_IMAGE")));
    ensure!(refused.is_err(), "the enforce policy is not in force");
    // A second round with nothing new does nothing.
    let (code, log) = run_sync()?;
    ensure!(code == 0 && !log.contains("reloaded"), "an idle round reloaded:\n{log}");

    // An invalid configuration is refused by the node's pullgate; the installed one stays and
    // pullgate is not reloaded.
    std::fs::write(source.join("config/config.yaml"), enforce.replace("mode: enforce", "mode: sometimes"))?;
    let (code, log) = run_sync()?;
    ensure!(code == 1 && log.contains("configuration refused") && log.contains("mode"), "sync exit {code}:\n{log}");
    ensure!(std::fs::read_to_string(&installed)? == enforce, "the refused configuration replaced the good one");
    ensure!(!etc.join("config.yaml.pullgate-sync").exists(), "staging file left behind");
    let (_, metrics) = http_get(admin, "/metrics")?;
    ensure!(sample(&metrics, "pullgate_policy_generation", &[]) == Some(2.0), "{metrics}");

    // Every metric the packaged alert rules use exists in a live scrape.
    let rules = std::fs::read_to_string(testbed::repo_root().join("packaging/prometheus/pullgate-alerts.yaml"))?;
    let re = regex::Regex::new(r"pullgate_[a-z_]+")?;
    for name in re.find_iter(&rules).map(|m| m.as_str()).collect::<std::collections::BTreeSet<_>>() {
        ensure!(
            metrics.lines().any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{"))),
            "alert rules use {name}, which /metrics does not have:\n{metrics}"
        );
    }
    d.terminate(Duration::from_secs(10));
    Ok(())
}

fn containerd_down(c: &Ctx) -> TestResult {
    wait_ready(c.admin, 200, Duration::from_secs(10))?;
    c.tb.kill_containerd()?;
    let result = (|| {
        let body = wait_ready(c.admin, 503, Duration::from_secs(15))?;
        ensure!(body.contains("FAIL containerd"), "{body}");
        let metrics = scrape(c)?;
        ensure!(sample(&metrics, "pullgate_upstream_up", &[]) == Some(0.0), "{metrics}");
        Ok::<_, Failed>(())
    })();
    c.tb.restart_containerd()?;
    result?;
    let body = wait_ready(c.admin, 200, Duration::from_secs(30))?;
    ensure!(body.contains("ok   containerd"), "{body}");
    ensure!(sample(&scrape(c)?, "pullgate_upstream_up", &[]) == Some(1.0), "upstream_up did not recover");
    Ok(())
}
