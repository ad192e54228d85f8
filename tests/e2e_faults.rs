//! Faults, end to end against the real parts (issue 12, item 3): a real containerd and registry
//! (`scripts/testbed.sh`), the real `pullgate` binary in enforce mode with an imported trust
//! root, and kubelet-like CRI clients. Each trial breaks one thing while pullgate runs, checks
//! what callers see and what pullgate reports, repairs it, and checks that the same pullgate
//! process (never restarted, except where the fault is its own death) decides correctly again:
//!
//! - containerd killed (SIGKILL) and restarted while pulls, and on containerd 2.x a
//!   `GetContainerEvents` stream, are in flight;
//! - the mirror down, stalling mid-body, lying (other bytes for a digest), redirecting to another
//!   host, answering with an endless or a huge body (`tests/support/fault_relay.rs`);
//! - the installed trust root truncated, or `current` replaced by garbage: the last good root
//!   stays in force; `trust-root status` and the metrics say the installed one is damaged;
//!   a re-import repairs it;
//! - the audit log's disk full (a tiny tmpfs): decisions go on, the lost records are counted
//!   and logged, and writing resumes on a fresh line once there is space;
//! - a storm of SIGHUPs from the moment the process exists, during pulls;
//! - pullgate SIGKILLed under socket activation while kubelet-like clients keep calling: the
//!   socket never disappears, calls fail only while no pullgate runs.
//!
//! Trials run one at a time, each with its own pullgate instance (fresh decision cache). Without
//! root they are reported as ignored, with the reason.

#[path = "support/admin.rs"]
mod admin;
#[path = "support/cri.rs"]
mod cri;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/fault_relay.rs"]
mod fault_relay;
#[path = "support/mod.rs"]
mod support;
#[path = "support/testbed.rs"]
mod testbed;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use admin::{free_port, sample};
use daemon::Daemon;
use fault_relay::{Fault, FaultRelay};
use k8s_cri::v1 as k8s;
use libtest_mimic::{Arguments, Failed};
use nix::sys::signal::Signal;
use pullgate::enforce::audit::read_records;
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

struct Ctx {
    rt: tokio::runtime::Runtime,
    tb: Testbed,
    registry: String,
    registry_addr: SocketAddr,
    /// trusted_root.json of the test Sigstore stack; each instance imports it.
    trusted_root: PathBuf,
}

static CTX: testbed::Contexts<Ctx> = testbed::Contexts::new();

fn teardown(c: &Ctx) {
    c.tb.clean();
}

fn setup(generation: Generation) -> Result<Ctx, String> {
    let tb = Testbed::start_generation(generation, "flt", &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let registry = tb.get("REGISTRY").to_string();
    let registry_addr: SocketAddr = registry.parse().map_err(|e| format!("{registry}: {e}"))?;
    let pusher = Pusher::new(registry_addr);
    let mut stack = Stack::new();
    let trusted_root = tb.dir.join("trusted_root.json");
    std::fs::write(&trusted_root, stack.trusted_root_json()).map_err(|e| e.to_string())?;
    let opts = SignOptions::new(stack.now);
    let digest = |k: &str| Digest::parse(tb.get(k)).map_err(|e| e.to_string());
    let (d1, d2) = (digest("DEMO_DIGEST")?, digest("DEMO2_DIGEST")?);
    rt.block_on(async {
        sign_and_push(&mut stack, &pusher, "demo/app", &d1, &opts, Format::Bundle).await?;
        sign_and_push(&mut stack, &pusher, "demo/app", &d2, &opts, Format::Legacy).await
    })?;
    Ok(Ctx { rt, tb, registry, registry_addr, trusted_root })
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests: Vec<testbed::Trial<Ctx>> = vec![
        ("containerd_killed_during_pulls_then_restarted", containerd_killed_during_pulls),
        ("containerd_killed_under_an_events_stream_then_restarted", containerd_killed_under_events),
        ("mirror_down_then_back", mirror_down),
        ("mirror_stalls_mid_body", mirror_stalls),
        ("mirror_lies_about_a_digest", mirror_lies),
        ("mirror_redirects_to_another_host", mirror_redirects),
        ("mirror_sends_an_endless_body", mirror_endless_body),
        ("mirror_sends_a_huge_body", mirror_huge_body),
        ("trust_root_truncated_keeps_the_last_good", trust_root_truncated),
        ("trust_root_current_replaced_by_garbage_keeps_the_last_good", trust_root_garbage),
        ("audit_log_disk_full_decisions_go_on", audit_disk_full),
        ("sighup_storm_from_startup_during_pulls", sighup_storm),
        ("sigkill_under_socket_activation_never_loses_the_socket", sigkill_socket_activation),
    ];
    let trials = testbed::trials(tests, &CTX, setup, teardown);
    let trials = testbed::ignore_on(
        trials,
        Generation::Containerd16,
        &["containerd_killed_under_an_events_stream_then_restarted"],
        "containerd 1.6 has no GetContainerEvents (it answers Unimplemented)",
    );
    let conclusion = libtest_mimic::run(&args, trials);
    CTX.finish(teardown);
    conclusion.exit();
}

// --- a pullgate instance -----------------------------------------------------------------------

#[derive(Default)]
struct Options<'a> {
    /// pullgate's hosts.toml directory (default: the testbed's, the real registry).
    hosts_dir: Option<&'a Path>,
    /// Audit log path (default: in the instance's directory).
    audit: Option<&'a Path>,
    /// Extra lines under `registry:`.
    registry_extra: &'a str,
}

struct Instance {
    pg: Daemon,
    sock: PathBuf,
    admin: SocketAddr,
    state_dir: PathBuf,
}

fn import_trust_root(c: &Ctx, state_dir: &Path, extra: &[&str]) -> Result<std::process::Output, Failed> {
    Ok(Command::new(daemon::binary())
        .args(["trust-root", "import", "--accept-unverified-trusted-root", "--trusted-root"])
        .arg(&c.trusted_root)
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .output()?)
}

/// Writes the instance's directory, imports the trust root and writes the configuration.
fn prepare(c: &Ctx, name: &str, o: &Options) -> Result<(PathBuf, SocketAddr, PathBuf, PathBuf, PathBuf), Failed> {
    let dir = c.tb.dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("pg.sock");
    let state_dir = dir.join("state");
    let out = import_trust_root(c, &state_dir, &[])?;
    ensure!(out.status.success(), "trust-root import: {}", String::from_utf8_lossy(&out.stderr));
    let audit = o.audit.map(Path::to_owned).unwrap_or_else(|| dir.join("audit.log"));
    let admin = free_port()?;
    let reg = &c.registry;
    let hosts_dir = o.hosts_dir.map(Path::to_owned).unwrap_or_else(|| PathBuf::from(c.tb.get("HOSTS_DIR")));
    let text = format!(
        r#"listen: {sock}
upstream: {upstream}
admin:
  listen: {admin}
registry:
  hosts_dir: {hosts_dir}
  bundle_dir: null
  connect_timeout: 1s
  request_timeout: 2s
  discovery_timeout: 5s
{registry_extra}trust_root:
  state_dir: {state}
  watch_interval: 1s
cache:
  deny_ttl: 1ms
audit:
  sink: file
  path: {audit}
cri:
  sandbox_image: {reg}/pause:1
policy:
  unmatched: deny
  exemptions:
    - name: sandbox
      images: ["{reg}/pause", "{reg}/pause:*"]
  policies:
    - name: demo
      images: ["{reg}/demo/**"]
      mode: enforce
      authorities:
        - name: release-workflow
          keyless:
            identities:
              - issuer: {DEFAULT_ISSUER}
                subject: {DEFAULT_SAN}
                extensions:
                  github-workflow-repository: pullgate/demo
"#,
        sock = sock.display(),
        upstream = c.tb.containerd_sock().display(),
        hosts_dir = hosts_dir.display(),
        registry_extra = o.registry_extra,
        state = state_dir.display(),
        audit = audit.display(),
    );
    let config = dir.join("config.yaml");
    std::fs::write(&config, text)?;
    Ok((sock, admin, audit, state_dir, config))
}

fn instance(c: &Ctx, name: &str, o: Options) -> Result<Instance, Failed> {
    let (sock, admin, _audit, state_dir, config) = prepare(c, name, &o)?;
    let pg = Daemon::start(&sock, &["--config", config.to_str().unwrap()])?;
    Ok(Instance { pg, sock, admin, state_dir })
}

impl Instance {
    /// The same process is still serving (the point of every trial: no restart needed).
    fn alive(&mut self) -> TestResult {
        alive(&mut self.pg)
    }

    fn metrics(&self) -> Result<String, Failed> {
        let (status, body) = http_get(self.admin, "/metrics")?;
        ensure!(status == 200, "/metrics: HTTP {status}: {body}");
        Ok(body)
    }

    /// Polls `/metrics` until `name{labels}` satisfies `want` (bounded; the watcher polls every
    /// second).
    fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: impl Fn(f64) -> bool) -> Result<f64, Failed> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.metrics()?;
            let value = sample(&text, name, labels);
            if let Some(v) = value.filter(|v| want(*v)) {
                return Ok(v);
            }
            ensure!(Instant::now() < deadline, "{name}{labels:?} is {value:?} after 30 s:\n{text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// --- helpers -----------------------------------------------------------------------------------

/// The process is still serving.
fn alive(d: &mut Daemon) -> TestResult {
    match d.exited() {
        Some(status) => Err(format!("pullgate exited ({status}):\n{}", d.logs()).into()),
        None => Ok(()),
    }
}

/// `GET path` of the admin endpoint, metrics in the Prometheus text format: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    admin::http_get_accept(addr, path, "text/plain;version=0.0.4")
}

fn spec(image: &str) -> Option<k8s::ImageSpec> {
    Some(k8s::ImageSpec { image: image.into(), ..Default::default() })
}

fn pod(name: &str) -> k8s::PodSandboxConfig {
    k8s::PodSandboxConfig {
        metadata: Some(k8s::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-{}", std::process::id()),
            namespace: "faults".into(),
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

/// A PullImage as kubelet makes it, with a deadline far enough away that a hang shows as
/// `DeadlineExceeded` rather than hanging the trial.
async fn pull(socket: &Path, image: &str) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(k8s::PullImageRequest { image: spec(image), auth: None, sandbox_config: Some(pod("web")) });
    req.set_timeout(Duration::from_secs(60));
    Ok(cri::images(socket).pull_image(req).await?.into_inner().image_ref)
}

fn pull_ok(c: &Ctx, socket: &Path, image: &str) -> TestResult {
    c.rt.block_on(pull(socket, image)).map_err(|s| format!("pull of {image} refused: {:?}: {}", s.code(), s.message()))?;
    Ok(())
}

/// The refusal kubelet would see: code Unknown, message `SignatureValidationFailed: ...`.
fn refused(result: Result<String, tonic::Status>, contains: &[&str]) -> Result<String, Failed> {
    let status = match result {
        Ok(r) => return Err(format!("pull succeeded ({r}); expected SignatureValidationFailed").into()),
        Err(s) => s,
    };
    let msg = status.message().to_string();
    ensure!(status.code() == tonic::Code::Unknown && msg.starts_with("SignatureValidationFailed: "), "{:?}: {msg}", status.code());
    ensure!(!msg.contains('\n'), "message is not one line: {msg}");
    for c in contains {
        ensure!(msg.contains(c), "message lacks {c:?}: {msg}");
    }
    Ok(msg)
}

fn trust_root_status(state_dir: &Path) -> Result<(i32, String), Failed> {
    let out = Command::new(daemon::binary()).args(["trust-root", "status", "--state-dir"]).arg(state_dir).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1), text))
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A relay in front of the registry and an instance that uses it as its only mirror.
fn behind_relay(c: &Ctx, name: &str, registry_extra: &str) -> Result<(FaultRelay, Instance), Failed> {
    let relay = FaultRelay::start(&c.rt, c.registry_addr)?;
    let hosts = c.tb.dir.join(name).join("hosts");
    relay.hosts_dir(&hosts, &c.registry)?;
    let pg = instance(c, name, Options { hosts_dir: Some(&hosts), registry_extra, ..Default::default() })?;
    Ok((relay, pg))
}

/// Runs one mirror fault: a pull of the signed image is refused naming what went wrong, and once
/// the mirror behaves again the same pullgate lets it through.
fn mirror_fault(c: &Ctx, name: &str, fault: Fault, contains: &[&str]) -> Result<(FaultRelay, Instance, String), Failed> {
    let (relay, mut pg) = behind_relay(c, name, "")?;
    let image = c.tb.get("DEMO_IMAGE").to_string();
    // The mirror works (another image: DEMO_IMAGE must not be decided yet, so that its manifest
    // is fetched by digest through the fault).
    pull_ok(c, &pg.sock, c.tb.get("DEMO2_IMAGE"))?;
    relay.set(fault);
    let msg = refused(c.rt.block_on(pull(&pg.sock, &image)), contains)?;
    eprintln!("{name}: {msg}");
    pg.alive()?;
    relay.set(Fault::Pass);
    pull_ok(c, &pg.sock, &image)?;
    pg.alive()?;
    Ok((relay, pg, msg))
}

// --- containerd --------------------------------------------------------------------------------

/// Kubelet-like pullers: each pulls the signed images in a loop until `stop`; every outcome is
/// kept.
fn start_pullers(
    c: &Ctx,
    socket: &Path,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Result<String, tonic::Status>>>> {
    let images = [c.tb.get("DEMO_IMAGE").to_string(), c.tb.get("DEMO2_IMAGE").to_string()];
    (0..n)
        .map(|i| {
            let (socket, image, stop) = (socket.to_owned(), images[i % 2].clone(), stop.clone());
            c.rt.spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    outcomes.push(pull(&socket, &image).await);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                outcomes
            })
        })
        .collect()
}

/// Until a pull through `socket` succeeds (bounded).
fn wait_pull_ok(c: &Ctx, socket: &Path, image: &str) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c.rt.block_on(pull(socket, image)) {
            Ok(_) => return Ok(()),
            Err(s) if Instant::now() > deadline => return Err(format!("no successful pull 60 s after the fault ended: {s:?}").into()),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// What callers saw while containerd was away: only errors that say so, never a refusal (the
/// signed images are fine) or a hang.
fn check_outcomes(outcomes: &[Result<String, tonic::Status>]) -> TestResult {
    for o in outcomes {
        if let Err(s) = o {
            ensure!(
                !s.message().starts_with("SignatureValidationFailed"),
                "a signed image was refused while containerd was down: {}",
                s.message()
            );
            ensure!(s.code() != tonic::Code::DeadlineExceeded, "a pull hung while containerd was down: {s:?}");
        }
    }
    Ok(())
}

fn containerd_killed_during_pulls(c: &Ctx) -> TestResult {
    let mut pg = instance(c, "ctrd-kill", Options::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    let pullers = start_pullers(c, &pg.sock, 4, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    c.tb.kill_containerd()?;
    std::thread::sleep(Duration::from_millis(500));
    // Down: calls fail at once with Unavailable.
    let down = c.rt.block_on(pull(&pg.sock, c.tb.get("DEMO_IMAGE")));
    c.tb.restart_containerd()?;
    wait_pull_ok(c, &pg.sock, c.tb.get("DEMO_IMAGE"))?;
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for p in pullers {
        outcomes.extend(c.rt.block_on(p)?);
    }
    let status = down.err().ok_or("a pull succeeded while containerd was down")?;
    ensure!(status.code() == tonic::Code::Unavailable && status.message().contains("containerd"), "while down: {status:?}");
    check_outcomes(&outcomes)?;
    let failed = outcomes.iter().filter(|o| o.is_err()).count();
    ensure!(failed > 0, "no puller noticed containerd was down ({} pulls)", outcomes.len());
    ensure!(outcomes.last().is_some_and(|o| o.is_ok()), "pulls did not recover: {:?}", outcomes.last());
    eprintln!("{} pulls, {failed} failed while containerd was away", outcomes.len());
    // Both signed images, through the same process, after the restart.
    pull_ok(c, &pg.sock, c.tb.get("DEMO2_IMAGE"))?;
    pg.alive()
}

/// Reads `stream` until the start of sandbox or container `id` (bounded).
async fn wait_started(
    stream: &mut tonic::Streaming<k8s::ContainerEventResponse>,
    id: &str,
    within: Duration,
) -> Result<Result<bool, tonic::Status>, tokio::time::error::Elapsed> {
    let started = k8s::ContainerEventType::ContainerStartedEvent as i32;
    tokio::time::timeout(within, async {
        while let Some(ev) = stream.message().await? {
            if ev.container_id == id && ev.container_event_type == started {
                return Ok(true);
            }
        }
        Ok(false)
    })
    .await
}

/// containerd 2.x: a GetContainerEvents stream through pullgate ends (does not hang) when
/// containerd dies, and a new one streams after the restart. Pulls run alongside.
fn containerd_killed_under_events(c: &Ctx) -> TestResult {
    let mut pg = instance(c, "ctrd-events", Options::default())?;
    let bounded = Duration::from_secs(30);
    let open = |socket: PathBuf| async move { cri::runtime(&socket).get_container_events(k8s::GetEventsRequest {}).await };
    let run_sandbox = |name: &'static str| {
        let direct = c.tb.containerd_sock();
        async move {
            let mut rt = cri::runtime(&direct);
            let id = rt
                .run_pod_sandbox(k8s::RunPodSandboxRequest { config: Some(pod(name)), runtime_handler: String::new() })
                .await?
                .into_inner()
                .pod_sandbox_id;
            Ok::<_, Failed>(id)
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let pullers = start_pullers(c, &pg.sock, 2, stop.clone());
    let mut sandboxes = Vec::new();
    let result = c.rt.block_on(async {
        // The stream's headers come with containerd's first event: start a sandbox to get one.
        let via = tokio::spawn(open(pg.sock.clone()));
        let first = run_sandbox("events-1").await?;
        sandboxes.push(first.clone());
        let mut stream = tokio::time::timeout(bounded, via).await.map_err(|_| "the events stream did not open")???.into_inner();
        let seen = wait_started(&mut stream, &first, bounded).await;
        ensure!(matches!(seen, Ok(Ok(true))), "the first sandbox's start never came: {seen:?}");

        // containerd dies: the stream must end, with an error or its end, not hang.
        let kill = {
            let dir = c.tb.dir.clone();
            tokio::task::spawn_blocking(move || {
                Command::new("bash")
                    .arg(testbed::repo_root().join("scripts/testbed.sh"))
                    .arg("kill-containerd")
                    .arg(dir)
                    .env("PULLGATE_SHARED", testbed::shared_dir())
                    .status()
            })
        };
        let ended = tokio::time::timeout(bounded, async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    other => return other.map(|_| ()),
                }
            }
        })
        .await;
        kill.await??;
        let ended = ended.map_err(|_| "the events stream through pullgate hung after containerd was killed")?;
        eprintln!("events stream ended with {ended:?}");
        Ok::<_, Failed>(())
    });
    c.tb.restart_containerd()?;
    result?;
    wait_pull_ok(c, &pg.sock, c.tb.get("DEMO_IMAGE"))?;
    // After the restart: a new stream through the same pullgate delivers events again.
    c.rt.block_on(async {
        let via = tokio::spawn(open(pg.sock.clone()));
        let second = run_sandbox("events-2").await?;
        sandboxes.push(second.clone());
        let mut stream = tokio::time::timeout(bounded, via).await.map_err(|_| "no events stream after the restart")???.into_inner();
        let seen = wait_started(&mut stream, &second, bounded).await;
        ensure!(matches!(seen, Ok(Ok(true))), "no event through pullgate after containerd's restart: {seen:?}");
        Ok::<_, Failed>(())
    })?;
    wait_pull_ok(c, &pg.sock, c.tb.get("DEMO_IMAGE"))?;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for p in pullers {
        outcomes.extend(c.rt.block_on(p)?);
    }
    check_outcomes(&outcomes)?;
    c.rt.block_on(async {
        let mut rt = cri::runtime(&c.tb.containerd_sock());
        for id in sandboxes {
            rt.stop_pod_sandbox(k8s::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await.ok();
            rt.remove_pod_sandbox(k8s::RemovePodSandboxRequest { pod_sandbox_id: id }).await.ok();
        }
    });
    pg.alive()
}

// --- the mirror --------------------------------------------------------------------------------

fn mirror_down(c: &Ctx) -> TestResult {
    let (relay, _pg, _) = mirror_fault(c, "mirror-down", Fault::Down, &["registry mirror"])?;
    ensure!(relay.seen().len() > 2, "the relay saw {:?}", relay.seen());
    Ok(())
}

fn mirror_stalls(c: &Ctx) -> TestResult {
    let (relay, _pg, msg) = mirror_fault(c, "mirror-stall", Fault::Stall, &["registry mirror"])?;
    ensure!(msg.contains(&relay.addr.to_string()), "the refusal does not name the mirror: {msg}");
    Ok(())
}

/// The mirror answers the signed image's digest with the unsigned image's manifest: refused
/// (the bytes do not hash to the digest), and nothing of the unsigned image reaches the node.
fn mirror_lies(c: &Ctx) -> TestResult {
    let unsigned_digest = c.tb.get("UNSIGNED_DIGEST").to_string();
    let unsigned_repo =
        c.tb.get("UNSIGNED_IMAGE")
            .split_once('/')
            .map(|(_, r)| r.rsplit_once(':').map_or(r, |(n, _)| n).to_string())
            .ok_or("UNSIGNED_IMAGE")?;
    let path = format!("/v2/{unsigned_repo}/manifests/{unsigned_digest}");
    let answer = c.rt.block_on(async {
        support::registry::http::request(
            c.registry_addr,
            "GET",
            &path,
            &[("accept", pullgate::registry::resolve::MANIFEST_ACCEPT.into())],
            bytes::Bytes::new(),
        )
        .await
    })?;
    ensure!(answer.status == 200, "cannot read the unsigned manifest: HTTP {}", answer.status);
    let (_relay, _pg, msg) = mirror_fault(c, "mirror-lie", Fault::Lie(answer.body.to_vec()), &[c.tb.get("DEMO_DIGEST")])?;
    ensure!(msg.contains("digest") || msg.contains("hash"), "the refusal does not say the bytes do not match: {msg}");
    let listed =
        c.rt.block_on(async { cri::images(&c.tb.containerd_sock()).list_images(k8s::ListImagesRequest::default()).await })?.into_inner();
    ensure!(
        !listed.images.iter().any(|i| i.repo_digests.iter().any(|d| d.ends_with(&unsigned_digest))),
        "the unsigned image reached the node"
    );
    Ok(())
}

/// Manifest requests redirected to another host (the real registry, which serves the right
/// bytes): refused naming the host when `registry.redirect_hosts` pins egress to the mirror,
/// followed (and checked by digest) when it does not.
fn mirror_redirects(c: &Ctx) -> TestResult {
    let other = format!("http://{}", c.registry_addr);
    let (relay, mut pinned) = {
        let relay = FaultRelay::start(&c.rt, c.registry_addr)?;
        let hosts = c.tb.dir.join("redirect-pinned").join("hosts");
        relay.hosts_dir(&hosts, &c.registry)?;
        let extra = format!("  redirect_hosts: [\"{}\"]\n", relay.addr);
        let pg = instance(c, "redirect-pinned", Options { hosts_dir: Some(&hosts), registry_extra: &extra, ..Default::default() })?;
        (relay, pg)
    };
    let image = c.tb.get("DEMO_IMAGE").to_string();
    relay.set(Fault::Redirect(other.clone()));
    let msg = refused(c.rt.block_on(pull(&pinned.sock, &image)), &["redirect_hosts", &c.registry_addr.to_string()])?;
    eprintln!("pinned: {msg}");
    // Without the pin the same redirect is followed; what comes back still verifies by digest.
    let (open_relay, mut open) = behind_relay(c, "redirect-open", "")?;
    open_relay.set(Fault::Redirect(other));
    pull_ok(c, &open.sock, &image)?;
    ensure!(open_relay.seen().iter().any(|l| l.contains("/manifests/")), "no manifest request reached the relay");
    relay.set(Fault::Pass);
    pull_ok(c, &pinned.sock, &image)?;
    pinned.alive()?;
    open.alive()
}

fn body_fault(c: &Ctx, name: &str, fault: Fault) -> TestResult {
    let (relay, mut pg, msg) = mirror_fault(c, name, fault, &["registry mirror"])?;
    ensure!(
        msg.contains("byte") || msg.contains("limit") || msg.contains("larger"),
        "the refusal does not say the answer was too large: {msg}"
    );
    let sent = relay.junk_sent.load(Ordering::Relaxed);
    let peak = peak_rss_kib(pg.pg.pid()).ok_or("no VmHWM")?;
    eprintln!("{name}: the relay wrote {sent} bytes of body; pullgate's peak RSS {peak} KiB");
    // pullgate reads at most `max_manifest_bytes` (4 MiB) of a manifest: its memory never
    // approaches what the mirror offered.
    ensure!(peak < 256 * 1024, "peak RSS {peak} KiB after a {sent}-byte answer");
    pg.alive()
}

fn mirror_endless_body(c: &Ctx) -> TestResult {
    body_fault(c, "mirror-endless", Fault::EndlessBody)
}

fn mirror_huge_body(c: &Ctx) -> TestResult {
    body_fault(c, "mirror-huge", Fault::HugeBody)
}

// --- the trust root ----------------------------------------------------------------------------

/// After damage: the daemon still decides with the root it loaded, and says the installed one
/// is unusable; `trust-root status` says so too. A re-import repairs it, again without a restart.
fn damaged_then_repaired(c: &Ctx, pg: &mut Instance, import_args: &[&str]) -> TestResult {
    pg.wait_metric("pullgate_trust_root_last_reload_success", &[], |v| v == 0.0)?;
    let metrics = pg.metrics()?;
    ensure!(sample(&metrics, "pullgate_trust_root_generation", &[]) == Some(1.0), "{metrics}");
    ensure!(
        sample(&metrics, "pullgate_trust_root_state", &[("state", "fresh")]) == Some(1.0),
        "the loaded root is not in force:\n{metrics}"
    );
    let (code, text) = trust_root_status(&pg.state_dir)?;
    ensure!(code == 4, "trust-root status exit {code}, want 4 (damaged):\n{text}");
    eprintln!("trust-root status: {}", text.lines().find(|l| l.contains("unusable")).unwrap_or(text.trim()));
    ensure!(pg.pg.logs().contains("trust root reload refused"), "no log line says the installed root is refused:\n{}", pg.pg.logs());
    // Decisions go on with the last good root: an image not decided before is verified.
    pull_ok(c, &pg.sock, c.tb.get("DEMO2_IMAGE"))?;
    refused(c.rt.block_on(pull(&pg.sock, c.tb.get("UNSIGNED_IMAGE"))), &["no signatures found"])?;

    let out = import_trust_root(c, &pg.state_dir, import_args)?;
    ensure!(out.status.success(), "re-import: {}", String::from_utf8_lossy(&out.stderr));
    pg.wait_metric("pullgate_trust_root_generation", &[], |v| v == 2.0)?;
    pg.wait_metric("pullgate_trust_root_last_reload_success", &[], |v| v == 1.0)?;
    let (code, text) = trust_root_status(&pg.state_dir)?;
    ensure!(code == 0, "trust-root status after the re-import: exit {code}:\n{text}");
    pull_ok(c, &pg.sock, c.tb.get("DEMO_IMAGE"))?;
    pg.alive()
}

fn trust_root_truncated(c: &Ctx) -> TestResult {
    let mut pg = instance(c, "root-truncated", Options::default())?;
    pull_ok(c, &pg.sock, c.tb.get("DEMO_IMAGE"))?;
    let current = pg.state_dir.join("trust-root/current/trusted_root.json");
    std::fs::OpenOptions::new().write(true).truncate(true).open(&current)?;
    // A plain re-import reads the damaged root for its rollback floors and says how to go on.
    let out = import_trust_root(c, &pg.state_dir, &[])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--reset-rollback-protection"),
        "re-import over a damaged root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    damaged_then_repaired(c, &mut pg, &["--reset-rollback-protection"])
}

fn trust_root_garbage(c: &Ctx) -> TestResult {
    let mut pg = instance(c, "root-garbage", Options::default())?;
    pull_ok(c, &pg.sock, c.tb.get("DEMO_IMAGE"))?;
    let current = pg.state_dir.join("trust-root/current");
    std::fs::remove_file(&current)?;
    std::fs::write(&current, b"\x00\x13garbage\xff\xfe not a symlink")?;
    damaged_then_repaired(c, &mut pg, &["--reset-rollback-protection"])
}

// --- the audit log -----------------------------------------------------------------------------

/// A tmpfs mounted for one trial, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, Failed> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "pullgate-faults"]).arg(path).output()?;
        ensure!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Ok(Tmpfs(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with a file until it has no space left.
fn fill(dir: &Path) -> Result<PathBuf, Failed> {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path)?;
    let block = vec![0u8; 4096];
    loop {
        if let Err(e) = f.write_all(&block) {
            ensure!(e.raw_os_error() == Some(nix::libc::ENOSPC), "filling: {e}");
            break;
        }
    }
    // The last partial page too.
    while f.write_all(&[0u8]).is_ok() {}
    Ok(path)
}

/// The audit log's filesystem fills up: pulls are still decided (allowed and refused as ever),
/// the lost records are counted in `pullgate_audit_write_errors_total` and logged; once there is
/// space, records are written again, on a line of their own (a torn line from the failed write
/// never swallows the next record).
fn audit_disk_full(c: &Ctx) -> TestResult {
    let fs = Tmpfs::mount(&c.tb.dir.join("audit-fs"), "64k")?;
    let audit = fs.0.join("audit.log");
    let mut pg = instance(c, "audit-full", Options { audit: Some(&audit), ..Default::default() })?;
    let (signed, unsigned) = (c.tb.get("DEMO_IMAGE").to_string(), c.tb.get("UNSIGNED_IMAGE").to_string());
    pull_ok(c, &pg.sock, &signed)?;
    let filler = fill(&fs.0)?;
    for _ in 0..3 {
        pull_ok(c, &pg.sock, &signed)?;
        refused(c.rt.block_on(pull(&pg.sock, &unsigned)), &["no signatures found"])?;
    }
    let lost = sample(&pg.metrics()?, "pullgate_audit_write_errors_total", &[]).unwrap_or(0.0);
    // The first records may still fit in the audit file's last page; the rest are lost.
    ensure!(lost.ge(&1.0), "pullgate_audit_write_errors_total is {lost} after 6 decisions on a full disk");
    let decisions = sample(&pg.metrics()?, "pullgate_decisions_total", &[("result", "deny")]).unwrap_or(0.0);
    ensure!(decisions.ge(&3.0), "refusals not counted while the audit log was full: {decisions}");
    ensure!(pg.pg.logs().contains("cannot write the audit log"), "no log line for the lost records:\n{}", pg.pg.logs());

    std::fs::remove_file(filler)?;
    refused(c.rt.block_on(pull(&pg.sock, &unsigned)), &["no signatures found"])?;
    let (records, bad) = read_records(&audit)?;
    ensure!(bad <= 1, "{bad} unreadable lines: only the one torn by the full disk may be");
    let last = records.last().ok_or("no audit records")?;
    ensure!(last.image == unsigned && last.decision == "deny", "the record after the disk had space again is not the last one: {last:?}");
    ensure!(sample(&pg.metrics()?, "pullgate_audit_write_errors_total", &[]) == Some(lost), "a write failed after space was freed");
    pg.alive()?;
    drop(pg);
    drop(fs);
    Ok(())
}

// --- signals -----------------------------------------------------------------------------------

/// SIGHUPs sent from the moment the process exists (the reload signal systemd or the sync
/// DaemonSet may send while pullgate starts) and on through concurrent pulls: pullgate comes up,
/// decides every pull right, and reloads.
fn sighup_storm(c: &Ctx) -> TestResult {
    let (sock, admin, _audit, _state, config) = prepare(c, "sighup", &Options::default())?;
    let mut d = Daemon::spawn(&sock, Command::new(daemon::binary()).args(["serve", "--config", config.to_str().unwrap()]))?;
    let pid = nix::unistd::Pid::from_raw(d.pid() as i32);
    // From the moment pullgate can protect itself (its first instruction holds SIGHUP): a signal
    // before the new program runs at all would hit any process, whatever it does.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sighup_held_or_caught(d.pid()) {
        ensure!(d.exited().is_none(), "pullgate exited at start:\n{}", d.logs());
        ensure!(Instant::now() < deadline, "pullgate never blocked nor caught SIGHUP");
        std::thread::sleep(Duration::from_micros(200));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let storm = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if nix::sys::signal::kill(pid, Signal::SIGHUP).is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if let Some(status) = d.exited() {
                return Err(Failed::from(format!("pullgate died during startup under SIGHUPs ({status}):\n{}", d.logs())));
            }
            ensure!(Instant::now() < deadline, "pullgate did not come up under SIGHUPs:\n{}", d.logs());
            std::thread::sleep(Duration::from_millis(10));
        }
        let (signed, signed2, unsigned) =
            (c.tb.get("DEMO_IMAGE").to_string(), c.tb.get("DEMO2_IMAGE").to_string(), c.tb.get("UNSIGNED_IMAGE").to_string());
        c.rt.block_on(async {
            let mut calls = Vec::new();
            for i in 0..30 {
                let image = [&signed, &signed2, &unsigned][i % 3].clone();
                let sock = sock.clone();
                calls.push(tokio::spawn(async move { (image.clone(), pull(&sock, &image).await) }));
            }
            for call in calls {
                let (image, result) = call.await?;
                if image.contains("unsigned") {
                    refused(result, &["no signatures found"])?;
                } else {
                    result.map_err(|s| format!("{image} refused during the SIGHUP storm: {}", s.message()))?;
                }
            }
            Ok::<_, Failed>(())
        })
    })();
    stop.store(true, Ordering::Relaxed);
    storm.join().map_err(|_| "storm thread")?;
    result?;
    alive(&mut d)?;
    let (_, metrics) = http_get(admin, "/metrics")?;
    let reloads = sample(&metrics, "pullgate_policy_reloads_total", &[("result", "ok")]).unwrap_or(0.0);
    eprintln!("{} SIGHUPs sent, {reloads} reloads", sent.load(Ordering::Relaxed));
    ensure!(reloads.ge(&1.0), "no reload after {} SIGHUPs:\n{metrics}", sent.load(Ordering::Relaxed));
    ensure!(
        sample(&metrics, "pullgate_policy_reloads_total", &[("result", "error")]).is_none_or(|v| v == 0.0),
        "a reload failed:\n{metrics}"
    );
    pull_ok(c, &sock, c.tb.get("DEMO_IMAGE"))?;
    ensure!(!d.logs().contains("panicked"), "{}", d.logs());
    d.terminate(Duration::from_secs(10)).ok_or("no exit after SIGTERM")?;
    Ok(())
}

/// Whether SIGHUP is blocked or has a handler in process `pid` (`/proc/PID/status`).
fn sighup_held_or_caught(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    let bit = |field: &str| {
        status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).is_some_and(|m| m & 1 != 0)
    };
    bit("SigBlk:") || bit("SigCgt:")
}

/// Starts pullgate on the listening socket `fd` as systemd does (`LISTEN_FDS=1`, fd 3).
fn spawn_activated(sock: &Path, fd: std::os::fd::RawFd, config: &Path) -> Result<Daemon, Failed> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(daemon::binary());
    cmd.args(["serve", "--config", config.to_str().unwrap()]);
    cmd.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
    // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(Daemon::spawn(sock, &mut cmd)?)
}

/// systemd holds the socket (here: this test), pullgate is SIGKILLed and started again on it
/// while kubelet-like clients keep calling. The socket file never disappears and never refuses
/// a connection; calls in flight at the kill fail with `Unavailable` (or `Cancelled` caused by
/// "connection closed", when the client had queued the call on the connection the kill closed),
/// calls made while no pullgate runs wait in the socket's backlog and are answered by the next
/// one.
fn sigkill_socket_activation(c: &Ctx) -> TestResult {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let (sock, _admin, _audit, _state, config) = prepare(c, "activated", &Options::default())?;
    // `listen` in the configuration is this same path; under activation it is ignored.
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock)?;
    let inode = std::fs::metadata(&sock)?.ino();
    let mut first = spawn_activated(&sock, listener.as_raw_fd(), &config)?;
    pull_ok(c, &sock, c.tb.get("DEMO_IMAGE"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (sock, stop) = (sock.clone(), stop.clone());
            let image = c.tb.get(if i % 2 == 0 { "DEMO_IMAGE" } else { "DEMO2_IMAGE" }).to_string();
            c.rt.spawn(async move {
                // One channel per client, as kubelet keeps one connection.
                let channel = cri::channel(&sock);
                let mut outcomes: Vec<Result<(), tonic::Status>> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut rt = k8s::runtime_service_client::RuntimeServiceClient::new(channel.clone());
                    let mut version = tonic::Request::new(k8s::VersionRequest { version: "v1".into() });
                    version.set_timeout(Duration::from_secs(60));
                    outcomes.push(rt.version(version).await.map(|_| ()));
                    let mut images = k8s::image_service_client::ImageServiceClient::new(channel.clone());
                    let mut req =
                        tonic::Request::new(k8s::PullImageRequest { image: spec(&image), auth: None, sandbox_config: Some(pod("web")) });
                    req.set_timeout(Duration::from_secs(60));
                    outcomes.push(images.pull_image(req).await.map(|_| ()));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                outcomes
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(10)).ok_or("pullgate survived SIGKILL")?;
    // No pullgate for a moment: the socket is still there, held by "systemd".
    std::thread::sleep(Duration::from_millis(300));
    ensure!(std::fs::metadata(&sock)?.ino() == inode, "the socket file changed while pullgate was down");
    let connected = std::os::unix::net::UnixStream::connect(&sock);
    ensure!(connected.is_ok(), "a client could not connect while pullgate restarted: {connected:?}");
    drop(connected);
    let mut second = spawn_activated(&sock, listener.as_raw_fd(), &config)?;
    wait_pull_ok(c, &sock, c.tb.get("DEMO_IMAGE"))?;
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for client in clients {
        let outcomes = c.rt.block_on(client)?;
        ensure!(outcomes.last().is_some_and(|o| o.is_ok()), "a client did not recover: {:?}", outcomes.last());
        all.extend(outcomes);
    }
    let errors: Vec<&tonic::Status> = all.iter().filter_map(|o| o.as_ref().err()).collect();
    for e in &errors {
        // The message and its causes: tonic words a closed connection either way ("connection
        // closed" as the message, or "operation was canceled" caused by it).
        let mut m = e.message().to_ascii_lowercase();
        let mut cause = std::error::Error::source(*e);
        while let Some(c) = cause {
            m.push_str(": ");
            m.push_str(&c.to_string().to_ascii_lowercase());
            cause = c.source();
        }
        ensure!(
            e.code() == tonic::Code::Unavailable
                || e.code() == tonic::Code::Unknown && !e.message().starts_with("SignatureValidationFailed")
                || e.code() == tonic::Code::Cancelled && m.contains("connection closed"),
            "unexpected error around the restart: {e:?}"
        );
        ensure!(!m.contains("no such file") && !m.contains("connection refused"), "the socket was lost: {e:?}");
    }
    eprintln!("{} calls, {} failed around the SIGKILL", all.len(), errors.len());
    ensure!(errors.len() <= 4 * 2, "more failures ({}) than calls in flight at the kill", errors.len());
    ensure!(std::fs::metadata(&sock)?.ino() == inode, "the socket file was replaced");
    alive(&mut second)?;
    second.terminate(Duration::from_secs(10)).ok_or("no exit after SIGTERM")?;
    ensure!(sock.exists(), "the socket systemd owns was removed");
    Ok(())
}
