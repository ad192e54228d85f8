//! The hostile inputs of issue 12, end to end with real parts: a real containerd and registry
//! (`scripts/testbed.sh`, containerd 1.6), the real `pullgate` binary, and the `k8s-cri` crate's
//! CRI v1 client as a hostile pod creator or socket client would use it:
//!
//! - cache poisoning: a refusal of `demo/does-not-exist@<digest of a signed image>`, repeated,
//!   must not refuse the signed image itself in any namespace, at PullImage or CreateContainer;
//! - a 10 MB image string: the client sees `SignatureValidationFailed` in one short line, and
//!   pullgate's log and audit log grow by kilobytes, not megabytes;
//! - a newline in an image string cannot forge a log line (human format) or an audit record;
//! - 2000 pulls naming 2000 registries do not create 2000 metric series;
//! - 96 concurrent ~15 MiB requests stay within the global buffer budget (peak RSS from /proc).
//!
//! The suite runs on one containerd generation: what it tests is pullgate's own handling of
//! input, which no containerd version changes.

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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use admin::free_port;
use daemon::Daemon;
use k8s_cri::v1 as k8s;
use libtest_mimic::{Arguments, Failed, Trial};
use pullgate::enforce::audit::{read_records, AuditRecord};
use pullgate::registry::Digest;
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

/// One pullgate instance of the suite.
struct Pg {
    daemon: Mutex<Daemon>,
    sock: PathBuf,
    audit: PathBuf,
    admin: SocketAddr,
}

impl Pg {
    fn records(&self) -> Vec<AuditRecord> {
        read_records(&self.audit).map(|r| r.0).unwrap_or_default()
    }
    fn log_path(&self) -> PathBuf {
        self.daemon.lock().map(|d| d.log.clone()).unwrap_or_default()
    }
    fn logs(&self) -> String {
        self.daemon.lock().map(|d| d.logs()).unwrap_or_default()
    }
    fn pid(&self) -> u32 {
        self.daemon.lock().map(|d| d.pid()).unwrap_or_default()
    }
}

struct Ctx {
    rt: tokio::runtime::Runtime,
    tb: Testbed,
    /// The demo policy (`demo/**` enforce, identity pinned, `pause:*` exempt), human log format.
    pg: Pg,
    /// A policy covering `**`, JSON log format.
    wide: Pg,
}

fn config(tb: &Testbed, name: &str, admin: SocketAddr, images: &str, log_format: &str) -> String {
    let reg = tb.get("REGISTRY");
    format!(
        r#"listen: {dir}/{name}.sock
upstream: {upstream}
log:
  format: {log_format}
admin:
  listen: {admin}
registry:
  hosts_dir: {hosts}
  bundle_dir: {dir}/bundles
  connect_timeout: 1s
  request_timeout: 5s
  discovery_timeout: 10s
trust_root:
  state_dir: {dir}/state
audit:
  sink: file
  path: {dir}/{name}.audit.log
policy:
  unmatched: deny
  exemptions:
    - name: sandbox
      images: ["{reg}/pause", "{reg}/pause:*"]
  policies:
    - name: demo
      images: {images}
      mode: enforce
      authorities:
        - name: release-workflow
          keyless:
            identities:
              - issuer: {issuer}
                subject: {san}
                extensions:
                  github-workflow-repository: pullgate/demo
"#,
        dir = tb.dir.display(),
        upstream = tb.containerd_sock().display(),
        hosts = tb.get("HOSTS_DIR"),
        issuer = DEFAULT_ISSUER,
        san = DEFAULT_SAN,
    )
}

fn start_pg(tb: &Testbed, name: &str, images: &str, log_format: &str) -> Result<Pg, String> {
    let sock = tb.dir.join(format!("{name}.sock"));
    let audit = tb.dir.join(format!("{name}.audit.log"));
    let cfg = tb.dir.join(format!("{name}.yaml"));
    let admin = free_port()?;
    std::fs::write(&cfg, config(tb, name, admin, images, log_format)).map_err(|e| e.to_string())?;
    let daemon = Daemon::start(&sock, &["--config", cfg.to_str().unwrap_or_default()])?;
    Ok(Pg { daemon: Mutex::new(daemon), sock, audit, admin })
}

fn setup() -> Result<Ctx, String> {
    let tb = Testbed::start_generation(Generation::Containerd16, "hostile", &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let registry = tb.get("REGISTRY").to_string();
    let addr: SocketAddr = registry.parse().map_err(|e| format!("{registry}: {e}"))?;
    let pusher = Pusher::new(addr);
    let mut stack = Stack::new();
    let root = tb.dir.join("trusted_root.json");
    std::fs::write(&root, stack.trusted_root_json()).map_err(|e| e.to_string())?;
    let out = Command::new(daemon::binary())
        .args(["trust-root", "import", "--trusted-root"])
        .arg(&root)
        .arg("--accept-unverified-trusted-root")
        .arg("--state-dir")
        .arg(tb.dir.join("state"))
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("trust-root import failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let opts = SignOptions::new(stack.now);
    let d1 = Digest::parse(tb.get("DEMO_DIGEST")).map_err(|e| e.to_string())?;
    rt.block_on(sign_and_push(&mut stack, &pusher, "demo/app", &d1, &opts, Format::Bundle))?;
    let pg = start_pg(&tb, "pg", &format!("[\"{registry}/demo/**\"]"), "human")?;
    let wide = start_pg(&tb, "wide", "[\"**\"]", "json")?;
    Ok(Ctx { rt, tb, pg, wide })
}

fn teardown(c: &Ctx) {
    for pg in [&c.pg, &c.wide] {
        if let Ok(mut d) = pg.daemon.lock() {
            d.terminate(Duration::from_secs(10));
        }
    }
    c.tb.clean();
}

static CTX: Mutex<Option<Result<Arc<Ctx>, String>>> = Mutex::new(None);

fn ctx() -> Result<Arc<Ctx>, Failed> {
    let mut slot = CTX.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(setup().map(Arc::new));
    }
    match slot.as_ref() {
        Some(Ok(c)) => Ok(c.clone()),
        Some(Err(e)) => Err(format!("testbed: {e}").into()),
        None => Err("no context".into()),
    }
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests: Vec<testbed::Trial<Ctx>> = vec![
        ("refusal_of_a_missing_repository_does_not_poison_the_signed_image", cache_poisoning),
        ("ten_megabyte_image_string_is_refused_in_one_short_line", huge_image_string),
        ("newline_in_an_image_cannot_forge_a_human_log_line", log_forgery_human),
        ("newline_in_an_image_cannot_forge_an_audit_record", log_forgery_audit),
        ("newline_in_an_image_stays_inside_its_json_log_field", log_forgery_json),
        ("distinct_registries_do_not_grow_metric_series", metric_series),
        ("concurrent_large_requests_stay_within_the_buffer_budget", buffer_budget),
    ];
    let skip = testbed::unavailable_reason().or_else(|| Generation::Containerd16.unavailable_reason());
    if let Some(reason) = &skip {
        eprintln!("skipping e2e_hostile: {reason}");
    }
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let t = Trial::test(name, move || {
                let c = ctx()?;
                f(&c)
            });
            t.with_ignored_flag(skip.is_some())
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(Ok(c)) = CTX.lock().unwrap_or_else(|e| e.into_inner()).take() {
        teardown(&c);
    }
    conclusion.exit();
}

// --- helpers -----------------------------------------------------------------------------------

fn spec(image: &str) -> Option<k8s::ImageSpec> {
    Some(k8s::ImageSpec { image: image.into(), ..Default::default() })
}

fn pod(namespace: &str, name: &str) -> k8s::PodSandboxConfig {
    k8s::PodSandboxConfig {
        metadata: Some(k8s::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{namespace}-{name}-{}", std::process::id()),
            namespace: namespace.into(),
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

async fn pull_in(sock: &Path, image: &str, namespace: &str) -> Result<String, tonic::Status> {
    let req = k8s::PullImageRequest { image: spec(image), auth: None, sandbox_config: Some(pod(namespace, "p")) };
    Ok(cri::images(sock).pull_image(req).await?.into_inner().image_ref)
}

/// The refusal kubelet sees: code Unknown, one line `SignatureValidationFailed: ...` of at most
/// about 1 KiB.
fn expect_refusal<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Result<String, Failed> {
    let status = match result {
        Ok(r) => return Err(format!("call succeeded ({r:?}); expected SignatureValidationFailed").into()),
        Err(s) => s,
    };
    let msg = status.message().to_string();
    ensure!(status.code() == tonic::Code::Unknown, "code {:?}: {}", status.code(), &msg[..msg.len().min(2000)]);
    ensure!(msg.starts_with("SignatureValidationFailed: ") && !msg.contains('\n'), "message: {}", &msg[..msg.len().min(2000)]);
    ensure!(msg.len() <= 1024, "refusal is {} bytes: {}", msg.len(), &msg[..2000.min(msg.len())]);
    Ok(msg)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// `GET /metrics` in the Prometheus text format: the body.
fn scrape(addr: SocketAddr) -> Result<String, Failed> {
    let (status, body) = admin::http_get_accept(addr, "/metrics", "text/plain;version=0.0.4")?;
    ensure!(status == 200, "GET /metrics: HTTP {status}");
    Ok(body)
}

/// A value from `/proc/PID/status`, in kB.
fn proc_status_kb(pid: u32, key: &str) -> Result<u64, Failed> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(key)).ok_or_else(|| format!("no {key} in /proc/{pid}/status"))?;
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).ok_or_else(|| format!("bad line {line}").into())
}

// --- trials ------------------------------------------------------------------------------------

fn cache_poisoning(c: &Ctx) -> TestResult {
    let reg = c.tb.get("REGISTRY");
    let digest = c.tb.get("DEMO_DIGEST");
    let poison = format!("{reg}/demo/does-not-exist@{digest}");
    let signed = format!("{reg}/demo/app@{digest}");
    let sock = &c.pg.sock;
    c.rt.block_on(async {
        // The attacker's pulls are refused, repeatedly (the second from the cache).
        for _ in 0..3 {
            expect_refusal(pull_in(sock, &poison, "attacker").await)?;
        }
        // The signed image still pulls, in the attacker's namespace and in others.
        let mut image_ref = String::new();
        for ns in ["team", "attacker", "kube-system"] {
            image_ref = pull_in(sock, &signed, ns).await.map_err(|s| format!("pull of the signed image in {ns}: {s}"))?;
            expect_refusal(pull_in(sock, &poison, "attacker").await)?;
        }
        // And runs: CreateContainer, right after yet another poisoning pull.
        let mut rt = cri::runtime(sock);
        let cfg = pod("team", "victim");
        let sandbox = rt
            .run_pod_sandbox(k8s::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
            .await?
            .into_inner()
            .pod_sandbox_id;
        expect_refusal(pull_in(sock, &poison, "attacker").await)?;
        let created = rt
            .create_container(k8s::CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(k8s::ContainerConfig {
                    metadata: Some(k8s::ContainerMetadata { name: "app".into(), attempt: 0 }),
                    image: Some(k8s::ImageSpec { image: image_ref.clone(), user_specified_image: signed.clone(), ..Default::default() }),
                    command: vec!["/hello".into()],
                    ..Default::default()
                }),
                sandbox_config: Some(cfg),
            })
            .await;
        if let Ok(r) = &created {
            rt.remove_container(k8s::RemoveContainerRequest { container_id: r.get_ref().container_id.clone() }).await.ok();
        }
        rt.stop_pod_sandbox(k8s::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() }).await.ok();
        rt.remove_pod_sandbox(k8s::RemovePodSandboxRequest { pod_sandbox_id: sandbox }).await.ok();
        created.map_err(|s| format!("CreateContainer of the signed image: {s}"))?;
        Ok::<_, Failed>(())
    })?;
    let records = c.pg.records();
    let denied: Vec<&AuditRecord> = records.iter().filter(|r| r.image == poison).collect();
    ensure!(denied.len() >= 6 && denied.iter().all(|r| r.decision == "deny"), "{denied:?}");
    ensure!(denied.iter().any(|r| r.cached), "the poisoning refusal is cached (for its own name): {denied:?}");
    let allowed = records.iter().filter(|r| r.image == signed && r.call == "PullImage" && r.decision == "allow").count();
    ensure!(allowed == 3, "{allowed} allowed pulls of {signed}");
    Ok(())
}

fn huge_image_string(c: &Ctx) -> TestResult {
    let reg = c.tb.get("REGISTRY");
    let image = format!("{reg}/demo/{}:1", "a".repeat(10 << 20));
    let (log, audit) = (c.pg.log_path(), c.pg.audit.clone());
    let (log0, audit0) = (file_len(&log), file_len(&audit));
    let msg = c.rt.block_on(async { expect_refusal(pull_in(&c.pg.sock, &image, "team").await) })?;
    ensure!(msg.contains("sha256:") && msg.contains('…'), "the refusal names the shortened image by its hash: {msg}");
    let (log_growth, audit_growth) = (file_len(&log) - log0, file_len(&audit) - audit0);
    ensure!(log_growth < 32 << 10, "pullgate's log grew by {log_growth} bytes");
    ensure!(audit_growth < 16 << 10, "the audit log grew by {audit_growth} bytes");
    let r = c.pg.records().into_iter().last().ok_or("no audit record")?;
    ensure!(
        r.decision == "deny" && r.image.starts_with(&format!("{reg}/demo/aaaa")) && r.image.len() <= 2048,
        "{}",
        &r.image[..r.image.len().min(3000)]
    );
    // pullgate still serves.
    c.rt.block_on(pull_in(&c.pg.sock, &format!("{reg}/demo/app@{}", c.tb.get("DEMO_DIGEST")), "team"))?;
    Ok(())
}

/// An image string that, printed raw, would end the log line and start a forged one.
fn forged(reg: &str, marker: &str) -> String {
    format!("{reg}/demo/unsigned:1\n2026-01-01T00:00:00.000000Z  INFO pullgate::enforce::gate: allowed call=PullImage image={marker}")
}

fn log_forgery_human(c: &Ctx) -> TestResult {
    let marker = "forged-human-line";
    let image = forged(c.tb.get("REGISTRY"), marker);
    c.rt.block_on(async { expect_refusal(pull_in(&c.pg.sock, &image, "team").await) })?;
    // The gate's line comes before the answer, the call's line after it: both are checked.
    let logs = daemon::logs_with(|| c.pg.logs(), |l| l.contains(marker) && l.contains(" call method="));
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains(marker)).collect();
    ensure!(!lines.is_empty(), "the refusal is not logged:\n{logs}");
    for l in &lines {
        ensure!(!l.starts_with("2026-01-01T00:00:00"), "forged line in pullgate's log: {l}");
        ensure!(l.contains("image=\"") && l.contains("\\n2026-01-01T00:00:00"), "image not quoted and escaped: {l}");
    }
    Ok(())
}

fn log_forgery_audit(c: &Ctx) -> TestResult {
    let marker = "forged-audit-record";
    let image = forged(c.tb.get("REGISTRY"), marker);
    c.rt.block_on(async { expect_refusal(pull_in(&c.pg.sock, &image, "team").await) })?;
    let text = std::fs::read_to_string(&c.pg.audit)?;
    for line in text.lines() {
        let record: AuditRecord = serde_json::from_str(line).map_err(|e| format!("audit line is not one record ({e}): {line}"))?;
        if line.contains(marker) {
            ensure!(record.image == image && record.decision == "deny", "{record:?}");
        }
    }
    let (records, bad) = read_records(&c.pg.audit)?;
    ensure!(bad == 0 && records.iter().filter(|r| r.image == image).count() == 1, "{bad} unreadable lines");
    Ok(())
}

fn log_forgery_json(c: &Ctx) -> TestResult {
    let marker = "forged-json-line";
    let image = forged(c.tb.get("REGISTRY"), marker);
    c.rt.block_on(async { expect_refusal(pull_in(&c.wide.sock, &image, "team").await) })?;
    let logs = daemon::logs_with(|| c.wide.logs(), |l| l.contains(marker) && l.contains("\"message\":\"call\""));
    let mut seen = 0;
    for l in logs.lines().filter(|l| l.contains(marker)) {
        let v: serde_json::Value = serde_json::from_str(l).map_err(|e| format!("not one JSON object ({e}): {l}"))?;
        ensure!(v.get("image").and_then(|i| i.as_str()) == Some(image.as_str()), "{l}");
        seen += 1;
    }
    ensure!(seen > 0, "the refusal is not logged:\n{logs}");
    Ok(())
}

fn metric_series(c: &Ctx) -> TestResult {
    const PULLS: usize = 2000;
    let sock = c.wide.sock.clone();
    let count = |text: &str| text.lines().filter(|l| l.starts_with("pullgate_mirror_requests_total{")).count();
    let before = scrape(c.wide.admin)?;
    // Loopback addresses on a closed port: each pull is refused at once (connection refused).
    let pulls = |range: std::ops::Range<usize>| {
        c.rt.block_on(async {
            let mut tasks = Vec::new();
            for worker in 0..8 {
                let sock = sock.clone();
                let range = range.clone();
                tasks.push(tokio::spawn(async move {
                    let mut refused = 0;
                    for i in range.skip(worker).step_by(8) {
                        let image = format!("127.0.{}.{}:9/x:1", i / 250, i % 250 + 1);
                        if let Err(s) = pull_in(&sock, &image, "team").await {
                            if s.message().starts_with("SignatureValidationFailed: ") {
                                refused += 1;
                            }
                        }
                    }
                    refused
                }));
            }
            let mut refused = 0;
            for t in tasks {
                refused += t.await.unwrap_or(0);
            }
            refused
        })
    };
    // Memory per distinct name is bounded: the second half of the names adds nothing.
    let first = pulls(0..PULLS / 2);
    let rss_half = proc_status_kb(c.wide.pid(), "VmRSS:")?;
    let second = pulls(PULLS / 2..PULLS);
    let rss_end = proc_status_kb(c.wide.pid(), "VmRSS:")?;
    ensure!(first + second == PULLS, "{} of {PULLS} pulls refused", first + second);
    let after = scrape(c.wide.admin)?;
    let series: Vec<&str> = after.lines().filter(|l| l.starts_with("pullgate_mirror_requests_total{")).collect();
    ensure!(
        count(&after) <= count(&before) + 2,
        "mirror request series grew from {} to {}:\n{}",
        count(&before),
        count(&after),
        series.join("\n")
    );
    ensure!(series.iter().any(|l| l.contains("registry=\"other\"")), "{}", series.join("\n"));
    ensure!(!after.contains("127.0.1."), "a request's registry became a label");
    ensure!(rss_end < rss_half + 4 * 1024, "RSS grew from {rss_half} kB to {rss_end} kB over the last {} distinct registries", PULLS / 2);
    Ok(())
}

fn buffer_budget(c: &Ctx) -> TestResult {
    const CALLS: usize = 96;
    const CONNECTIONS: usize = 2;
    // A fresh instance (default budget, 64 MiB), so its peak RSS is this trial's.
    let pg = start_pg(&c.tb, "budget", &format!("[\"{}/demo/**\"]", c.tb.get("REGISTRY")), "human")?;
    let pid = pg.pid();
    let base = proc_status_kb(pid, "VmHWM:")?;
    let reg = c.tb.get("REGISTRY").to_string();
    let results: Vec<Result<(), tonic::Status>> = c.rt.block_on(async {
        let channels: Vec<_> = (0..CONNECTIONS).map(|_| cri::channel(&pg.sock)).collect();
        let mut tasks = Vec::new();
        for i in 0..CALLS {
            let client = k8s_cri::v1::image_service_client::ImageServiceClient::new(channels[i % CONNECTIONS].clone());
            let image = format!("{reg}/demo/{}{i}:1", "b".repeat(15 << 20));
            tasks.push(tokio::spawn(async move {
                let mut client = client;
                let req = k8s::PullImageRequest { image: spec(&image), auth: None, sandbox_config: Some(pod("team", "big")) };
                client.pull_image(req).await.map(|_| ())
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap_or_else(|e| Err(tonic::Status::internal(e.to_string()))));
        }
        out
    });
    let peak = proc_status_kb(pid, "VmHWM:")?;
    let logs = pg.logs();
    let mut refused = 0;
    let mut exhausted = 0;
    for r in &results {
        match r {
            Ok(()) => return Err("a 15 MiB image string was pulled".into()),
            Err(s)
                if s.code() == tonic::Code::Unknown
                    && s.message().starts_with("SignatureValidationFailed: ")
                    && s.message().len() <= 1024 =>
            {
                refused += 1
            }
            Err(s) if s.code() == tonic::Code::ResourceExhausted && s.message().contains("cri.max_buffered_bytes") => exhausted += 1,
            Err(s) => return Err(format!("unexpected answer {:?}: {}", s.code(), &s.message()[..s.message().len().min(500)]).into()),
        }
    }
    ensure!(refused + exhausted == CALLS && refused > 0, "{refused} refused, {exhausted} over budget");
    // 96 x 15 MiB is 1.4 GiB of requests; unbounded, pullgate peaked near 1 GB. With a 64 MiB
    // budget, the calls in flight hold at most 64 MiB of request bytes (plus their decoded
    // copies and what HTTP/2 flow control lets each connection send ahead, 16 MiB).
    let grown_mib = peak.saturating_sub(base) / 1024;
    ensure!(grown_mib < 400, "peak RSS grew by {grown_mib} MiB ({base} kB -> {peak} kB); {refused} refused, {exhausted} over budget");
    // Budget given back: a normal call goes through.
    let digest = c.tb.get("DEMO_DIGEST");
    c.rt.block_on(pull_in(&pg.sock, &format!("{reg}/demo/app@{digest}"), "team")).map_err(|s| format!("after the flood: {s}\n{logs}"))?;
    eprintln!("e2e_hostile: {CALLS} calls of 15 MiB: {refused} refused, {exhausted} over budget; peak RSS {base} kB -> {peak} kB");
    if let Ok(mut d) = pg.daemon.lock() {
        d.terminate(Duration::from_secs(10));
    }
    Ok(())
}
