//! Break-glass end to end, with real parts: a real containerd and registry
//! (`scripts/testbed.sh`), the real `pullgate` binary in enforce mode on a node whose trust root
//! is missing (the case break-glass is for: every image under a policy is refused, the control
//! plane's static pods included), and a kubelet-like CRI client.
//!
//! - refused before a window; allowed within it by digest only, with an audit record naming the
//!   window, a warning and the metrics; refused again after its expiry;
//! - an image already on the node (a static pod's) starts by its recorded digest while the
//!   window is open, and is refused again once the window is revoked;
//! - the command refuses tags, unbounded windows and missing reasons, and writes a private file.
//!
//! The trials share one testbed and one pullgate per containerd generation and run one at a
//! time. Without root they are reported as ignored, with the reason.

#[path = "support/admin.rs"]
mod admin;
#[path = "support/cri.rs"]
mod cri;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/testbed.rs"]
mod testbed;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use admin::{free_port, http_get, sample};
use daemon::Daemon;
use k8s_cri::v1 as k8s;
use libtest_mimic::{Arguments, Failed};
use pullgate::enforce::audit::{read_records, AuditRecord};
use pullgate::enforce::break_glass::Windows;
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
    pg: Mutex<Daemon>,
    pg_sock: PathBuf,
    admin: SocketAddr,
    audit_log: PathBuf,
    /// pullgate's state directory: no trust root in it, the break-glass file goes there.
    state_dir: PathBuf,
}

static CTX: testbed::Contexts<Ctx> = testbed::Contexts::new();

fn teardown(c: &Ctx) {
    if let Ok(mut pg) = c.pg.lock() {
        pg.terminate(Duration::from_secs(10));
    }
    c.tb.clean();
}

fn setup(generation: Generation) -> Result<Ctx, String> {
    let tb = Testbed::start_generation(generation, "bg", &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let registry = tb.get("REGISTRY").to_string();
    let state_dir = tb.dir.join("state");
    std::fs::create_dir_all(&state_dir).map_err(|e| e.to_string())?;
    let pg_sock = tb.dir.join("pg.sock");
    let audit_log = tb.dir.join("audit.log");
    let admin = free_port()?;
    let cfg = tb.dir.join("pullgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"listen: {listen}
upstream: {upstream}
admin:
  listen: {admin}
registry:
  hosts_dir: {hosts_dir}
  connect_timeout: 1s
  request_timeout: 5s
trust_root:
  state_dir: {state}
  watch_interval: 1s
audit:
  sink: file
  path: {audit}
cri:
  sandbox_image: {registry}/pause:1
policy:
  unmatched: deny
  exemptions:
    - name: sandbox
      images: ["{registry}/pause:*"]
  policies:
    - name: control-plane
      images: ["{registry}/demo/**"]
      mode: enforce
      authorities:
        - name: release
          keyless:
            identities:
              - issuer: https://token.actions.githubusercontent.com
                subject: https://github.com/pullgate/demo/.github/workflows/release.yml@refs/heads/main
"#,
            listen = pg_sock.display(),
            upstream = tb.containerd_sock().display(),
            hosts_dir = tb.get("HOSTS_DIR"),
            state = state_dir.display(),
            audit = audit_log.display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let pg = Daemon::start(&pg_sock, &["--config", cfg.to_str().unwrap()])?;
    Ok(Ctx { rt, tb, registry, pg: Mutex::new(pg), pg_sock, admin, audit_log, state_dir })
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests: Vec<testbed::Trial<Ctx>> = vec![
        ("refused_before_allowed_within_the_window_with_an_audit_record", within_the_window),
        ("refused_again_after_expiry", after_expiry),
        ("images_on_the_node_start_by_digest_until_revoked", static_pod_until_revoked),
        ("the_command_refuses_tags_unbounded_windows_and_missing_reasons", command_line),
    ];
    let trials = testbed::trials(tests, &CTX, setup, teardown);
    let conclusion = libtest_mimic::run(&args, trials);
    CTX.finish(teardown);
    conclusion.exit();
}

// --- helpers -----------------------------------------------------------------------------------

/// `pullgate break-glass ARGS --state-dir <the daemon's>`, as `alice` through sudo.
fn break_glass(c: &Ctx, args: &[&str]) -> Result<Output, Failed> {
    let out = Command::new(daemon::binary())
        .arg("break-glass")
        .args(args)
        .arg("--state-dir")
        .arg(&c.state_dir)
        .env("SUDO_USER", "alice")
        .env("USER", "root")
        .output()?;
    Ok(out)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Opens a window with the command; returns it as written.
fn open(c: &Ctx, images: &[&str], length: &str, reason: &str) -> Result<pullgate::enforce::break_glass::Window, Failed> {
    let mut args = Vec::new();
    for image in images {
        args.extend(["--images", image]);
    }
    args.extend(["--for", length, "--reason", reason]);
    let out = break_glass(c, &args)?;
    ensure!(out.status.success(), "break-glass exit {:?}:\n{}", out.status.code(), text(&out));
    let file: Windows = serde_json::from_str(&std::fs::read_to_string(c.state_dir.join("break-glass.json"))?)?;
    Ok(file.windows.last().cloned().ok_or("no window written")?)
}

/// Applies the break-glass file now (`systemctl reload pullgate`) and waits until the daemon
/// has re-read it.
fn reload(c: &Ctx) -> TestResult {
    let needle = "break-glass windows re-read";
    let pg = c.pg.lock().unwrap();
    let before = pg.logs().matches(needle).count();
    pg.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.logs().matches(needle).count() <= before {
        ensure!(Instant::now() < deadline, "pullgate never logged {needle:?}:\n{}", pg.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Ends every window and makes sure the daemon knows.
fn revoke(c: &Ctx) -> TestResult {
    let had = c.state_dir.join("break-glass.json").exists();
    let out = break_glass(c, &["--revoke"])?;
    ensure!(out.status.success(), "--revoke: {}", text(&out));
    if had {
        reload(c)?;
    }
    Ok(())
}

fn spec(image: &str) -> Option<k8s::ImageSpec> {
    Some(k8s::ImageSpec { image: image.into(), ..Default::default() })
}

fn pod(name: &str) -> k8s::PodSandboxConfig {
    k8s::PodSandboxConfig {
        metadata: Some(k8s::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-{}", std::process::id()),
            namespace: "kube-system".into(),
            attempt: 0,
        }),
        linux: Some(k8s::LinuxPodSandboxConfig {
            security_context: Some(k8s::LinuxSandboxSecurityContext {
                namespace_options: Some(k8s::NamespaceOption { network: k8s::NamespaceMode::Node as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn pull(socket: &Path, image: &str) -> Result<String, tonic::Status> {
    let req = k8s::PullImageRequest { image: spec(image), auth: None, sandbox_config: Some(pod("etcd-cp-1")) };
    Ok(cri::images(socket).pull_image(req).await?.into_inner().image_ref)
}

async fn remove(socket: &Path, image: &str) {
    cri::images(socket).remove_image(k8s::RemoveImageRequest { image: spec(image) }).await.ok();
}

/// A refusal as kubelet sees it, naming `contains`.
fn refused(result: Result<String, tonic::Status>, contains: &str) -> TestResult {
    match result {
        Ok(r) => Err(format!("pulled ({r}); expected a refusal").into()),
        Err(s) => {
            ensure!(s.message().starts_with("SignatureValidationFailed: ") && s.message().contains(contains), "{}", s.message());
            Ok(())
        }
    }
}

fn audit(c: &Ctx) -> Vec<AuditRecord> {
    read_records(&c.audit_log).map(|r| r.0).unwrap_or_default()
}

fn metrics(c: &Ctx) -> Result<String, Failed> {
    let (status, body) = http_get(c.admin, "/metrics")?;
    ensure!(status == 200, "/metrics: HTTP {status}");
    Ok(body)
}

// --- trials ------------------------------------------------------------------------------------

fn within_the_window(c: &Ctx) -> TestResult {
    revoke(c)?;
    let digest = c.tb.get("DEMO_DIGEST");
    let image = format!("{}/demo/app@{digest}", c.registry);
    c.rt.block_on(remove(&c.tb.containerd_sock(), &image));
    // Before: refused (no trust root), and nothing says break-glass.
    refused(c.rt.block_on(pull(&c.pg_sock, &image)), "trust root")?;
    let m = metrics(c)?;
    ensure!(sample(&m, "pullgate_break_glass_active", &[]) == Some(0.0), "{m}");

    let window = open(c, &[&image], "1h", "INC-7: trust root stale, etcd down")?;
    ensure!(window.opened_by.sudo_user.as_deref() == Some("alice") && window.opened_by.uid == 0, "{window:?}");
    reload(c)?;
    ensure!(c.pg.lock().unwrap().logs().contains("break-glass window open"), "the window's opening is not logged");

    // Within: the digest is pulled, and the audit record says by which window and what it
    // overrode.
    c.rt.block_on(pull(&c.pg_sock, &image)).map_err(|s| format!("refused within the window: {}", s.message()))?;
    let records = audit(c);
    let r = records.iter().rev().find(|r| r.call == "PullImage" && r.image == image).ok_or("no audit record")?;
    ensure!(
        r.decision == "allow"
            && r.mode == Some(pullgate::policy::Mode::Enforce)
            && r.digest == digest
            && r.reason.starts_with("break-glass: "),
        "{r:?}"
    );
    let bg = r.break_glass.as_ref().ok_or("the audit record does not say break-glass")?;
    ensure!(bg.reason == "INC-7: trust root stale, etcd down" && bg.opened_by.starts_with("alice via sudo as root (uid 0) on "), "{bg:?}");
    ensure!(bg.expires_at == window.expires_at.to_string() && bg.refused.contains("trust root"), "{bg:?}");
    ensure!(c.pg.lock().unwrap().logs().contains("break-glass: letting a refused image through"), "no warning logged");
    let m = metrics(c)?;
    ensure!(sample(&m, "pullgate_break_glass_active", &[]) == Some(1.0), "{m}");
    ensure!(sample(&m, "pullgate_break_glass_images", &[]) == Some(1.0), "{m}");
    ensure!(sample(&m, "pullgate_break_glass_expiry_timestamp_seconds", &[]) == Some(window.expires_at.as_second() as f64), "{m}");
    ensure!(
        sample(&m, "pullgate_decisions_total", &[("call", "PullImage"), ("result", "allow"), ("reason", "break_glass")]) == Some(1.0),
        "{m}"
    );

    // Only that digest, only by digest: its tag, another digest and another repository stay
    // refused.
    refused(c.rt.block_on(pull(&c.pg_sock, c.tb.get("DEMO_IMAGE"))), "trust root")?;
    refused(c.rt.block_on(pull(&c.pg_sock, &format!("{}/demo/app@{}", c.registry, c.tb.get("DEMO2_DIGEST")))), "trust root")?;
    refused(c.rt.block_on(pull(&c.pg_sock, &format!("{}/demo/unsigned@{digest}", c.registry))), "")?;
    revoke(c)?;
    c.rt.block_on(remove(&c.tb.containerd_sock(), &image));
    Ok(())
}

fn after_expiry(c: &Ctx) -> TestResult {
    revoke(c)?;
    let digest = c.tb.get("DEMO2_DIGEST");
    let image = format!("{}/demo/app@{digest}", c.registry);
    c.rt.block_on(remove(&c.tb.containerd_sock(), &image));
    refused(c.rt.block_on(pull(&c.pg_sock, &image)), "trust root")?;
    let window = open(c, &[&image], "5s", "INC-8: short window")?;
    reload(c)?;
    // Within (when this machine is quick enough to ask before the end): allowed.
    let within = c.rt.block_on(pull(&c.pg_sock, &image));
    let asked_by = jiff::Timestamp::now();
    match &within {
        Ok(_) => eprintln!("pulled within the 5s window"),
        Err(s) => ensure!(asked_by >= window.expires_at, "refused within the window ({}): {}", window.expires_at, s.message()),
    }
    // After: refused again, with the normal reason and no break-glass in the record; the
    // metrics say no window is open.
    while jiff::Timestamp::now() <= window.expires_at {
        std::thread::sleep(Duration::from_millis(100));
    }
    c.rt.block_on(remove(&c.tb.containerd_sock(), &image));
    refused(c.rt.block_on(pull(&c.pg_sock, &image)), "trust root")?;
    let records = audit(c);
    let r = records.iter().rev().find(|r| r.call == "PullImage" && r.image == image).ok_or("no audit record")?;
    ensure!(r.decision == "deny" && r.break_glass.is_none(), "{r:?}");
    let m = metrics(c)?;
    ensure!(sample(&m, "pullgate_break_glass_active", &[]) == Some(0.0), "{m}");
    ensure!(sample(&m, "pullgate_break_glass_images", &[]) == Some(0.0), "{m}");
    // The command shows it expired.
    let out = break_glass(c, &["--list"])?;
    ensure!(out.status.success() && text(&out).contains("expired at"), "{}", text(&out));
    revoke(c)
}

/// The static-pod case: the image is on the node already (pulled before pullgate refused
/// everything) and kubelet creates the container by its tag.
fn static_pod_until_revoked(c: &Ctx) -> TestResult {
    revoke(c)?;
    let tag = c.tb.get("UNSIGNED_IMAGE").to_string();
    let digest = c.tb.get("UNSIGNED_DIGEST").to_string();
    c.rt.block_on(async {
        pull(&c.tb.containerd_sock(), &tag).await?;
        let mut rt = cri::runtime(&c.pg_sock);
        let cfg = pod("etcd-cp-1");
        let sandbox = rt
            .run_pod_sandbox(k8s::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let create = |name: &'static str| {
            let mut rt = rt.clone();
            let (sandbox, cfg, tag) = (sandbox.clone(), cfg.clone(), tag.clone());
            async move {
                rt.create_container(k8s::CreateContainerRequest {
                    pod_sandbox_id: sandbox,
                    config: Some(k8s::ContainerConfig {
                        metadata: Some(k8s::ContainerMetadata { name: name.into(), attempt: 0 }),
                        image: spec(&tag),
                        command: vec!["/hello".into()],
                        ..Default::default()
                    }),
                    sandbox_config: Some(cfg),
                })
                .await
            }
        };
        let before = create("before").await;
        let window = open(c, &[&format!("{}/demo/unsigned@{digest}", c.registry)], "1h", "INC-9: etcd image unsigned")?;
        reload(c)?;
        let within = create("within").await;
        revoke(c)?;
        let after = create("after").await;
        rt.stop_pod_sandbox(k8s::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() }).await?;
        rt.remove_pod_sandbox(k8s::RemovePodSandboxRequest { pod_sandbox_id: sandbox }).await?;
        remove(&c.tb.containerd_sock(), &tag).await;

        let before = before.err().ok_or("created before the window")?;
        ensure!(
            before.message().starts_with("SignatureValidationFailed: ") && before.message().contains("trust root"),
            "{}",
            before.message()
        );
        within.map_err(|s| format!("refused within the window: {}", s.message()))?;
        let after = after.err().ok_or("created after the window was revoked")?;
        ensure!(after.message().contains("trust root"), "{}", after.message());
        let records = audit(c);
        let r = records
            .iter()
            .rev()
            .find(|r| r.call == "CreateContainer" && r.break_glass.is_some())
            .ok_or("no break-glass CreateContainer record")?;
        ensure!(r.image == tag && r.decision == "allow" && r.namespace == "kube-system", "{r:?}");
        let bg = r.break_glass.as_ref().unwrap();
        ensure!(bg.reason == "INC-9: etcd image unsigned" && bg.expires_at == window.expires_at.to_string(), "{bg:?}");
        ensure!(c.pg.lock().unwrap().logs().contains("break-glass window closed (revoked)"), "revocation not logged");
        Ok(())
    })
}

fn command_line(c: &Ctx) -> TestResult {
    revoke(c)?;
    let digest = c.tb.get("DEMO_DIGEST");
    let by_digest = format!("{}/demo/app@{digest}", c.registry);
    let by_digest = by_digest.as_str();
    let cases: [(Vec<&str>, &str); 6] = [
        (vec!["--images", c.tb.get("DEMO_IMAGE"), "--for", "1h", "--reason", "x"], "by digest only"),
        (vec!["--images", by_digest, "--for", "25h", "--reason", "x"], "at most 24h"),
        (vec!["--images", by_digest, "--for", "1h"], "--reason TEXT is required"),
        (vec!["--images", by_digest, "--reason", "x"], "--for DURATION is required"),
        (vec!["--images", by_digest, "--for", "1h", "--reason", "  "], "--reason TEXT is required"),
        (vec![], "--images IMAGE@DIGEST"),
    ];
    for (args, want) in cases {
        let out = break_glass(c, &args)?;
        ensure!(
            out.status.code() == Some(64) && text(&out).contains(want),
            "{args:?}: exit {:?}, want {want:?}:\n{}",
            out.status.code(),
            text(&out)
        );
        ensure!(!c.state_dir.join("break-glass.json").exists(), "{args:?} wrote a window");
    }
    let window = open(c, &[by_digest], "90m", "INC-10")?;
    let path = c.state_dir.join("break-glass.json");
    ensure!(std::fs::metadata(&path)?.permissions().mode() & 0o777 == 0o600, "the file is not private");
    let secs = window.expires_at.duration_since(window.opened_at).as_secs();
    ensure!(secs == 90 * 60, "window of {secs}s");
    let out = break_glass(c, &["--list"])?;
    let listed = text(&out);
    ensure!(
        out.status.success()
            && listed.contains("OPEN")
            && listed.contains(by_digest)
            && listed.contains("INC-10")
            && listed.contains("alice via sudo"),
        "{listed}"
    );
    let help = Command::new(daemon::binary()).args(["help", "break-glass"]).output()?;
    let help = text(&help);
    ensure!(help.contains("Runbook") && help.contains("--revoke") && help.contains("systemctl reload pullgate"), "{help}");
    revoke(c)?;
    ensure!(!path.exists(), "--revoke left the file");
    Ok(())
}
