//! Soak run: a long stream of CRI calls through the real `pullgate` binary (enforce mode, against
//! a real containerd and registry from `scripts/testbed.sh`), checking that nothing grows.
//!
//! ```text
//! scripts/soak.sh                                  # full run: 1,000,000 calls, 10,000 pulls
//! SOAK_CALLS=100000 SOAK_PULLS=1000 scripts/soak.sh   # smaller
//! ```
//! Not in CI (it takes minutes); run it as root. `scripts/soak.sh` builds in the release
//! profile and runs this example with `PULLGATE_BIN=target/release/pullgate`.
//!
//! What it does, in `SOAK_ROUNDS` rounds (default 50), each round running its share of both
//! streams at once over one kubelet-like connection:
//! - **forwarded calls** (`SOAK_CALLS`, default 1,000,000), `SOAK_CONCURRENCY` in flight (default
//!   16): a mix of `Version`, `Status`, `ListImages`, `ListPodSandbox` (forwarded as frames) and
//!   `ImageStatus` (decoded, then forwarded);
//! - **gated pulls** (`SOAK_PULLS`, default 10,000), 4 in flight: a moving mix of allowed images
//!   (signed by the test Sigstore stack, cosign v3 bundles and legacy `.sig` signatures) and
//!   refused ones (unsigned, outside every policy, absent from the mirror), whose allowed share
//!   swings between 12% and 88% over the rounds. Short decision-cache TTLs (allow 2s, deny 1s,
//!   capacity 64) keep pullgate deciding afresh: resolve, discovery and verification run all the
//!   time, not only cache lookups.
//!
//! Every answer is checked: a forwarded call must succeed, an allowed pull must give an image
//! and a refused one `SignatureValidationFailed`; any other answer is a wrong answer.
//!
//! After the first two rounds (warm-up: connections, caches, allocator arenas) and after the
//! last, it samples pullgate's RSS, open fds and threads (`/proc/<pid>`), and the p99 of the
//! forwarded calls and pulls of that round. It fails (exit 1) on any wrong answer, or when from
//! start to end RSS grows by more than 10% + 4 MiB, fds by more than 2, threads by more than 4
//! (tokio's blocking pool comes and goes), or a p99 more than doubles + 5 ms (the machine is
//! shared: latency is noisy; a leak grows without bound, noise does not).

#[path = "../tests/support/cri.rs"]
mod cri;
/// Only its PRNG, to pick calls and images reproducibly.
#[path = "../tests/support/fuzz.rs"]
mod fuzz;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../tests/support/testbed.rs"]
mod testbed;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use fuzz::Rng;
use k8s_cri::v1 as k8s;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use support::registry::push::{push_tiny_image, Pusher};
use support::signer::{sign_and_push, Format};
use support::sigstore::{SignOptions, Stack, DEFAULT_ISSUER, DEFAULT_SAN};
use testbed::Testbed;
use tonic::transport::Channel;

struct Plan {
    calls: usize,
    pulls: usize,
    rounds: usize,
    concurrency: usize,
    /// Distinct signed images (as many unsigned ones).
    images: usize,
}

impl Plan {
    fn from_env() -> Plan {
        let get = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(d);
        Plan {
            calls: get("SOAK_CALLS", 1_000_000),
            pulls: get("SOAK_PULLS", 10_000),
            rounds: get("SOAK_ROUNDS", 50).max(3),
            concurrency: get("SOAK_CONCURRENCY", 16).max(1),
            images: get("SOAK_IMAGES", 12).max(1),
        }
    }
}

const PULLS_IN_FLIGHT: usize = 4;
const WARMUP_ROUNDS: usize = 2;

fn started() -> &'static Instant {
    static T: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T.get_or_init(Instant::now)
}

macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("[soak {:7.1}s] {}", started().elapsed().as_secs_f64(), format!($($arg)*))
    };
}

fn main() -> ExitCode {
    started();
    if let Some(reason) = testbed::unavailable_reason() {
        eprintln!("soak: cannot run: {reason}");
        return ExitCode::FAILURE;
    }
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pullgate_binary() -> Result<PathBuf, String> {
    let bin = std::env::var_os("PULLGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/pullgate"));
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("no pullgate binary at {} (build with `cargo build --release`, or set PULLGATE_BIN)", bin.display()))
    }
}

/// The pullgate process, killed on drop.
struct Pullgate {
    child: Child,
    log: PathBuf,
}

impl Pullgate {
    fn start(bin: &Path, config: &Path, socket: &Path, log: PathBuf) -> Result<Pullgate, String> {
        let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut pg = Pullgate { child, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = pg.child.try_wait() {
                return Err(format!("pullgate exited at start ({status}):\n{}", pg.logs()));
            }
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(pg);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("pullgate did not listen on {} within 15s:\n{}", socket.display(), pg.logs()))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Pullgate {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `/proc/<pid>` says about the process.
#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_kib: u64,
    fds: usize,
    threads: usize,
}

impl Usage {
    fn of(pid: u32) -> Result<Usage, String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| e.to_string())?.count();
        Ok(Usage { rss_kib: field("VmRSS:")?, fds, threads: field("Threads:")? as usize })
    }
}

fn p99_ms(samples: &mut [u64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64) * 0.99).ceil() as usize;
    samples[i.clamp(1, samples.len()) - 1] as f64 / 1e6
}

/// One sample: resources and the p99 of the round just finished.
#[derive(Debug, Clone, Copy)]
struct Sample {
    usage: Usage,
    call_p99_ms: f64,
    pull_p99_ms: f64,
}

fn config(dir: &Path, registry: &str, listen: &Path, upstream: &Path, hosts_dir: &str) -> String {
    format!(
        r#"listen: {listen}
upstream: {upstream}
log:
  level: warn
registry:
  hosts_dir: {hosts_dir}
  bundle_dir: null
  connect_timeout: 2s
  request_timeout: 10s
  discovery_timeout: 20s
trust_root:
  state_dir: {state}
audit:
  sink: file
  path: {audit}
cache:
  capacity: 64
  allow_ttl: 2s
  deny_ttl: 1s
policy:
  unmatched: deny
  exemptions:
    - name: sandbox
      images: ["{registry}/pause", "{registry}/pause:*"]
  policies:
    - name: demo
      images: ["{registry}/demo/**"]
      mode: enforce
      authorities:
        - name: release-workflow
          keyless:
            identities:
              - issuer: {issuer}
                subject: {san}
"#,
        listen = listen.display(),
        upstream = upstream.display(),
        state = dir.join("state").display(),
        audit = dir.join("audit.log").display(),
        issuer = DEFAULT_ISSUER,
        san = DEFAULT_SAN,
    )
}

fn spec(image: &str) -> Option<k8s::ImageSpec> {
    Some(k8s::ImageSpec { image: image.into(), ..Default::default() })
}

fn pod(namespace: &str, name: &str) -> k8s::PodSandboxConfig {
    k8s::PodSandboxConfig {
        metadata: Some(k8s::PodSandboxMetadata { name: name.into(), uid: format!("{name}-soak"), namespace: namespace.into(), attempt: 0 }),
        ..Default::default()
    }
}

/// The images pulled, with the answer each must get.
struct Images {
    allowed: Vec<String>,
    refused: Vec<String>,
}

/// The allowed share of the pulls in `round`: swings between 10% and 90%.
fn allowed_share(round: usize) -> f64 {
    0.5 + 0.4 * (round as f64 * std::f64::consts::TAU / 10.0).sin()
}

/// One forwarded call of the mix; `Err` is a wrong answer.
async fn forwarded_call(
    kind: u64,
    rt: &RuntimeServiceClient<Channel>,
    img: &ImageServiceClient<Channel>,
    image: &str,
) -> Result<(), String> {
    match kind % 10 {
        0..=4 => {
            let v = rt.clone().version(k8s::VersionRequest { version: "v1".into() }).await.map_err(|s| format!("Version: {s}"))?;
            if v.get_ref().runtime_name.is_empty() {
                return Err("Version: empty runtime name".into());
            }
        }
        5 => {
            rt.clone().status(k8s::StatusRequest { verbose: false }).await.map_err(|s| format!("Status: {s}"))?;
        }
        6 => {
            img.clone().list_images(k8s::ListImagesRequest { filter: None }).await.map_err(|s| format!("ListImages: {s}"))?;
        }
        7 => {
            rt.clone().list_pod_sandbox(k8s::ListPodSandboxRequest { filter: None }).await.map_err(|s| format!("ListPodSandbox: {s}"))?;
        }
        _ => {
            img.clone()
                .image_status(k8s::ImageStatusRequest { image: spec(image), verbose: false })
                .await
                .map_err(|s| format!("ImageStatus: {s}"))?;
        }
    }
    Ok(())
}

/// One gated pull; `Err` is a wrong answer.
async fn gated_pull(img: &ImageServiceClient<Channel>, image: &str, allowed: bool, pod_cfg: &k8s::PodSandboxConfig) -> Result<(), String> {
    let req = k8s::PullImageRequest { image: spec(image), auth: None, sandbox_config: Some(pod_cfg.clone()) };
    match (img.clone().pull_image(req).await, allowed) {
        (Ok(r), true) if !r.get_ref().image_ref.is_empty() => Ok(()),
        (Ok(_), true) => Err(format!("{image}: allowed pull answered an empty image_ref")),
        (Ok(_), false) => Err(format!("{image}: must be refused, was pulled")),
        (Err(s), false) if s.message().contains("SignatureValidationFailed") => Ok(()),
        (Err(s), _) => Err(format!("{image}: {:?} {}", s.code(), s.message())),
    }
}

struct RoundResult {
    calls: Vec<u64>,
    pulls: Vec<u64>,
    wrong: Vec<String>,
    allowed: usize,
    refused: usize,
}

#[allow(clippy::too_many_arguments)]
async fn round(
    r: usize,
    calls: usize,
    pulls: usize,
    plan: &Plan,
    rt: &RuntimeServiceClient<Channel>,
    img: &ImageServiceClient<Channel>,
    images: &Images,
    rng: &mut Rng,
) -> RoundResult {
    let share = allowed_share(r);
    let call_kinds: Vec<(u64, String)> = (0..calls)
        .map(|_| {
            let k = rng.next();
            let i = (rng.next() as usize) % images.allowed.len();
            (k, images.allowed[i].clone())
        })
        .collect();
    let pull_list: Vec<(String, bool)> = (0..pulls)
        .map(|_| {
            if (rng.below(1000) as f64) < share * 1000.0 {
                (images.allowed[(rng.next() as usize) % images.allowed.len()].clone(), true)
            } else {
                (images.refused[(rng.next() as usize) % images.refused.len()].clone(), false)
            }
        })
        .collect();
    let pod_cfg = pod("team", "soak");
    let call_stream = stream::iter(call_kinds)
        .map(|(k, image)| async move {
            let t = Instant::now();
            let res = forwarded_call(k, rt, img, &image).await;
            (t.elapsed().as_nanos() as u64, res)
        })
        .buffer_unordered(plan.concurrency)
        .collect::<Vec<_>>();
    let pod_ref = &pod_cfg;
    let pull_stream = stream::iter(pull_list)
        .map(|(image, allowed)| async move {
            let t = Instant::now();
            let res = gated_pull(img, &image, allowed, pod_ref).await;
            (t.elapsed().as_nanos() as u64, allowed, res)
        })
        .buffer_unordered(PULLS_IN_FLIGHT)
        .collect::<Vec<_>>();
    let (call_results, pull_results) = futures_util::future::join(call_stream, pull_stream).await;
    let mut out =
        RoundResult { calls: Vec::with_capacity(calls), pulls: Vec::with_capacity(pulls), wrong: Vec::new(), allowed: 0, refused: 0 };
    for (ns, res) in call_results {
        out.calls.push(ns);
        if let Err(e) = res {
            out.wrong.push(e);
        }
    }
    for (ns, allowed, res) in pull_results {
        out.pulls.push(ns);
        if allowed {
            out.allowed += 1;
        } else {
            out.refused += 1;
        }
        if let Err(e) = res {
            out.wrong.push(e);
        }
    }
    out
}

fn share_of(total: usize, rounds: usize, r: usize) -> usize {
    total / rounds + usize::from(r < total % rounds)
}

fn run() -> Result<bool, String> {
    let plan = Plan::from_env();
    let bin = pullgate_binary()?;
    progress!(
        "plan: {} forwarded calls ({} in flight), {} gated pulls ({PULLS_IN_FLIGHT} in flight), {} rounds; pullgate {}",
        plan.calls,
        plan.concurrency,
        plan.pulls,
        plan.rounds,
        bin.display()
    );
    progress!("starting testbed (containerd + registry)...");
    let tb = Testbed::start("soak", &[])?;
    let rt_tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let registry = tb.get("REGISTRY").to_string();
    let pusher = Pusher::new(registry.parse().map_err(|e| format!("{registry}: {e}"))?);

    progress!("importing the test Sigstore trust root; pushing and signing {} images, {} unsigned", plan.images, plan.images);
    let mut stack = Stack::new();
    let root = tb.dir.join("trusted_root.json");
    std::fs::write(&root, stack.trusted_root_json()).map_err(|e| e.to_string())?;
    let out = Command::new(&bin)
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
    let salt = format!("{}-{}", std::process::id(), jiff::Timestamp::now().as_nanosecond());
    let opts = SignOptions::new(stack.now);
    let images = rt_tokio.block_on(async {
        let mut allowed = Vec::new();
        let mut refused = Vec::new();
        for i in 0..plan.images {
            let tag = format!("s{i}");
            let d = push_tiny_image(&pusher, "demo/soak", &tag, &salt).await?;
            let format = if i % 2 == 0 { Format::Bundle } else { Format::Legacy };
            sign_and_push(&mut stack, &pusher, "demo/soak", &d, &opts, format).await?;
            allowed.push(format!("{registry}/demo/soak:{tag}"));
            let tag = format!("u{i}");
            push_tiny_image(&pusher, "demo/soak", &tag, &salt).await?;
            refused.push(format!("{registry}/demo/soak:{tag}"));
        }
        // Outside every policy (unmatched: deny), and absent from the mirror.
        push_tiny_image(&pusher, "other/app", "1", &salt).await?;
        refused.push(format!("{registry}/other/app:1"));
        refused.push(format!("{registry}/demo/absent:1"));
        Ok::<_, String>(Images { allowed, refused })
    })?;

    let sock = tb.dir.join("pg.sock");
    let cfg = tb.dir.join("soak.yaml");
    std::fs::write(&cfg, config(&tb.dir, &registry, &sock, &tb.containerd_sock(), tb.get("HOSTS_DIR"))).map_err(|e| e.to_string())?;
    let mut pg = Pullgate::start(&bin, &cfg, &sock, tb.dir.join("pullgate.log"))?;
    let (rt, img) = {
        let _g = rt_tokio.enter();
        (cri::runtime(&sock), cri::images(&sock))
    };

    let mut rng = Rng::new(0x736f_616b);
    let mut totals = (0usize, 0usize, 0usize, 0usize); // calls, pulls, allowed, refused
    let mut wrong: Vec<String> = Vec::new();
    let mut start: Option<Sample> = None;
    let mut end: Option<Sample> = None;
    let t0 = Instant::now();
    for r in 0..plan.rounds {
        let calls = share_of(plan.calls, plan.rounds, r);
        let pulls = share_of(plan.pulls, plan.rounds, r);
        let mut res = rt_tokio.block_on(round(r, calls, pulls, &plan, &rt, &img, &images, &mut rng));
        totals.0 += res.calls.len();
        totals.1 += res.pulls.len();
        totals.2 += res.allowed;
        totals.3 += res.refused;
        wrong.append(&mut res.wrong);
        if !pg.alive() {
            return Err(format!("pullgate exited during round {r}:\n{}", pg.logs()));
        }
        let last = r + 1 == plan.rounds;
        if r + 1 == WARMUP_ROUNDS || last {
            // Let in-flight work settle (connections, the blocking pool) before sampling.
            std::thread::sleep(Duration::from_millis(500));
            let sample = Sample { usage: Usage::of(pg.pid())?, call_p99_ms: p99_ms(&mut res.calls), pull_p99_ms: p99_ms(&mut res.pulls) };
            if last {
                end = Some(sample);
            } else {
                start = Some(sample);
            }
        }
        progress!(
            "round {}/{}: {} calls, {} pulls ({:.0}% allowed), {} wrong so far, RSS {} KiB",
            r + 1,
            plan.rounds,
            totals.0,
            totals.1,
            allowed_share(r) * 100.0,
            wrong.len(),
            Usage::of(pg.pid()).map(|u| u.rss_kib).unwrap_or(0)
        );
    }
    let elapsed = t0.elapsed();
    drop((rt, img));
    drop(rt_tokio);
    let (start, end) = (start.ok_or("no start sample")?, end.ok_or("no end sample")?);

    let mut failures = Vec::new();
    let rss_limit = start.usage.rss_kib + start.usage.rss_kib / 10 + 4096;
    if end.usage.rss_kib > rss_limit {
        failures.push(format!("RSS grew from {} to {} KiB (limit {rss_limit})", start.usage.rss_kib, end.usage.rss_kib));
    }
    if end.usage.fds > start.usage.fds + 2 {
        failures.push(format!("open fds grew from {} to {}", start.usage.fds, end.usage.fds));
    }
    if end.usage.threads > start.usage.threads + 4 {
        failures.push(format!("threads grew from {} to {}", start.usage.threads, end.usage.threads));
    }
    for (what, s, e) in [("forwarded call", start.call_p99_ms, end.call_p99_ms), ("pull", start.pull_p99_ms, end.pull_p99_ms)] {
        if e > 2.0 * s + 5.0 {
            failures.push(format!("{what} p99 grew from {s:.2} to {e:.2} ms"));
        }
    }
    if !wrong.is_empty() {
        failures.push(format!("{} wrong answers; first: {}", wrong.len(), wrong.iter().take(3).cloned().collect::<Vec<_>>().join(" | ")));
    }

    println!(
        "soak: {} forwarded calls, {} gated pulls ({} allowed, {} refused) in {:.0} s ({:.0} calls/s)",
        totals.0,
        totals.1,
        totals.2,
        totals.3,
        elapsed.as_secs_f64(),
        totals.0 as f64 / elapsed.as_secs_f64()
    );
    println!("                    start (after round {WARMUP_ROUNDS})   end (after round {})", plan.rounds);
    println!("RSS (KiB)           {:>22}   {:>10}", start.usage.rss_kib, end.usage.rss_kib);
    println!("open fds            {:>22}   {:>10}", start.usage.fds, end.usage.fds);
    println!("threads             {:>22}   {:>10}", start.usage.threads, end.usage.threads);
    println!("call p99 (ms)       {:>22.2}   {:>10.2}", start.call_p99_ms, end.call_p99_ms);
    println!("pull p99 (ms)       {:>22.2}   {:>10.2}", start.pull_p99_ms, end.pull_p99_ms);
    println!("wrong answers       {:>35}", wrong.len());
    let ok = failures.is_empty();
    if ok {
        println!("soak: PASS");
    } else {
        for f in &failures {
            println!("soak: FAIL: {f}");
        }
    }
    drop(pg);
    drop(tb);
    Ok(ok)
}
