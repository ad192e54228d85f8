//! Enforcement overhead: PullImage and CreateContainer through the real `pullgate` binary with
//! a policy, against the same calls sent directly to a real containerd, measured in one run.
//!
//! ```text
//! cargo bench --bench enforce                         # full run (about a minute), as root
//! PULLGATE_BENCH_QUICK=1 cargo bench --bench enforce  # smoke run in seconds (CI)
//! ```
//!
//! The set-up is the enforcement end-to-end suite's (`tests/e2e_enforce.rs`): a real containerd
//! and registry (`scripts/testbed.sh`), the test Sigstore stack's trust root imported with
//! `pullgate trust-root import`, images signed by that stack (cosign v3 bundles published as
//! referrers), and a pullgate whose policy requires a keyless signature for `REGISTRY/demo/**`.
//! Cargo builds the `pullgate` binary in the bench (= release) profile and passes its path; set
//! `PULLGATE_BIN` to measure another build (`target/dist/pullgate`, from `cargo build --profile
//! dist`, is what the Debian package ships).
//!
//! What is measured (figures in BENCHMARKS.md, "Enforcement overhead"):
//! - PullImage with a **cold decision**: N distinct small signed images (zero layers: a config
//!   blob and a manifest, which containerd pulls and records like any image). Each image is
//!   pulled once directly and once through pullgate (order alternating per image), with a
//!   RemoveImage (direct, untimed) before each pull, so containerd really fetches it both times
//!   and pullgate has never seen the digest: tag resolve, discovery and verification on the
//!   loopback mirror, then the pull pinned to the verified digest and the tag record.
//! - PullImage with a **warm decision**: the same signed image pulled again and again, already
//!   present in containerd; blocks of direct and via-pullgate pulls interleaved. pullgate
//!   forwards the pull pinned to the verified digest, which spares containerd its own tag
//!   resolve, so the via path is also compared with the same pull by digest sent directly
//!   (identical containerd work). Plus, for the analysis, the parts of pullgate's warm path
//!   measured alone: the tag-record step pullgate does with containerd's image API after the
//!   pull, and one `HEAD` of the tag on the mirror (the registry's own answer time). Besides
//!   the p50s over the whole phase, each via-pullgate block is paired with the direct block run
//!   next to it (the difference of their medians, then the median over rounds), which keeps
//!   drift over the run out of the difference.
//! - **CreateContainer with a warm decision**: creates (and untimed removes) of containers in
//!   one host-network pod sandbox, alternating direct and via pullgate. containerd's own create
//!   costs tens of milliseconds with milliseconds of jitter, which buries a sub-millisecond
//!   difference, so the same comparison is also made with CreateContainer calls that containerd
//!   refuses at once (an unknown sandbox ID): pullgate does all of its work for those (image
//!   lookup, decision, audit record, forward) and containerd almost none. They run in blocks too,
//!   and are paired block by block like the warm pulls.
//!
//! pullgate's own accounts are read back too: the audit log's `latency_ms` (the decision: resolve,
//! cache, discovery, verification) and the JSON log's `ms` per intercepted call (everything
//! pullgate did for the call, containerd's pull included).
//!
//! The client is a kubelet-like tonic CRI client (one connection per socket, as kubelet keeps
//! it) on a current-thread tokio runtime; client, pullgate, containerd and the registry share the
//! machine's cores.
//!
//! A/B in one run: `PULLGATE_BENCH_B_BIN=<other build>` starts a second pullgate (B) with the same
//! configuration on the same containerd. The warm pull by digest and the refused creates then
//! also run through B, in blocks next to pullgate's (A), after them in even rounds and before
//! them in odd ones, and the report adds B − A paired by round. A change to the served path
//! can then be judged apart from the drift between runs.
//!
//! For a profile: `PULLGATE_BENCH_PROFILE=1` adds a table of pullgate's registry requests in the
//! cold phase; `PULLGATE_BENCH_LOG_LEVEL` sets pullgate's `log.level` (e.g. `info,pullgate=debug`)
//! and `PULLGATE_BENCH_LOG_COPY=FILE` keeps pullgate's log there (a timeline of each decision).

#[path = "../tests/support/cri.rs"]
mod cri;
#[path = "../tests/support/daemon.rs"]
mod daemon;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../tests/support/testbed.rs"]
mod testbed;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use daemon::Daemon;
use k8s_cri::v1 as k8s;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use pullgate::enforce::audit::{read_records, AuditRecord};
use pullgate::registry::Digest;
use support::registry::push::{push_tiny_image, Pusher};
use support::signer::{sign_and_push, Format};
use support::sigstore::{SignOptions, Stack, DEFAULT_ISSUER, DEFAULT_SAN};
use testbed::Testbed;
use tonic::transport::Channel;

/// How much to measure.
struct Plan {
    quick: bool,
    /// Distinct images, each pulled cold once per path.
    cold: usize,
    /// Warm pulls per path.
    warm: usize,
    /// Calls per block; the paths' blocks alternate.
    block: usize,
    /// Real CreateContainer calls per path.
    creates: usize,
    /// CreateContainer calls containerd refuses at once, per path.
    rejects: usize,
    /// Unmeasured cold pulls per path first (connections, caches, code paths).
    warmup: usize,
}

impl Plan {
    /// The full or quick plan; `PULLGATE_BENCH_COLD`, `_WARM`, `_CREATES` and `_REJECTS`
    /// override single values.
    fn from_env() -> Plan {
        let quick = std::env::var("PULLGATE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut plan = if quick {
            Plan { quick, cold: 4, warm: 40, block: 10, creates: 4, rejects: 40, warmup: 1 }
        } else {
            Plan { quick, cold: 60, warm: 600, block: 25, creates: 40, rejects: 600, warmup: 3 }
        };
        let get = |k: &str| std::env::var(format!("PULLGATE_BENCH_{k}")).ok().and_then(|v| v.parse::<usize>().ok());
        if let Some(v) = get("COLD") {
            plan.cold = v.max(1);
        }
        if let Some(v) = get("WARM") {
            plan.warm = v.max(1);
        }
        if let Some(v) = get("CREATES") {
            plan.creates = v.max(1);
        }
        if let Some(v) = get("REJECTS") {
            plan.rejects = v.max(1);
        }
        plan
    }
}

/// Progress on stderr, with the time since the bench started.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("[bench {:6.1}s] {}", started().elapsed().as_secs_f64(), format!($($arg)*))
    };
}

fn started() -> &'static Instant {
    static T: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T.get_or_init(Instant::now)
}

fn main() {
    started();
    if let Some(reason) = testbed::unavailable_reason() {
        eprintln!("enforce bench skipped: {reason}");
        return;
    }
    match run() {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("enforce bench failed: {e}");
            std::process::exit(1);
        }
    }
}

fn pullgate_binary() -> Result<PathBuf, String> {
    let bin = match std::env::var_os("PULLGATE_BIN") {
        Some(p) => PathBuf::from(p),
        // Set by cargo for benchmarks: the binary built in this (release) profile.
        None => PathBuf::from(env!("CARGO_BIN_EXE_pullgate")),
    };
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("no pullgate binary at {}; build it with `cargo build --release` (or point PULLGATE_BIN at one)", bin.display()))
    }
}

/// pullgate's configuration: the e2e suite's enforce policy, JSON logs (read back for `ms`).
#[allow(clippy::too_many_arguments)] // one YAML template, one argument per blank
fn config(
    dir: &Path,
    registry: &str,
    listen: &Path,
    upstream: &Path,
    hosts_dir: &str,
    audit: &Path,
    admin: SocketAddr,
    level: &str,
) -> String {
    format!(
        r#"listen: {listen}
upstream: {upstream}
log:
  format: json
  level: "{level}"
admin:
  listen: {admin}
registry:
  hosts_dir: {hosts_dir}
  bundle_dir: {bundles}
  connect_timeout: 1s
  request_timeout: 5s
  discovery_timeout: 10s
trust_root:
  state_dir: {state}
audit:
  sink: file
  path: {audit}
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
                extensions:
                  github-workflow-repository: pullgate/demo
"#,
        listen = listen.display(),
        upstream = upstream.display(),
        bundles = dir.join("bundles").display(),
        state = dir.join("state").display(),
        audit = audit.display(),
        issuer = DEFAULT_ISSUER,
        san = DEFAULT_SAN,
    )
}

/// `PULLGATE_BENCH_PROFILE=1`: pullgate logs every registry request with its time (debug
/// level of the registry client only), and the report splits the cold decision by request.
/// Costs a log line per request: a run for the breakdown, not for the headline figures.
fn profiling() -> bool {
    std::env::var("PULLGATE_BENCH_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0")
}

// --- CRI calls ---------------------------------------------------------------------------------

fn spec(image: &str) -> Option<k8s::ImageSpec> {
    Some(k8s::ImageSpec { image: image.into(), ..Default::default() })
}

/// A host-network pod (the testbed's CNI is loopback only), as kubelet describes it.
fn pod(namespace: &str, name: &str) -> k8s::PodSandboxConfig {
    k8s::PodSandboxConfig {
        metadata: Some(k8s::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-{}", std::process::id()),
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

/// One PullImage as kubelet sends it (with the pod's sandbox config); its wall time.
async fn pull(client: &ImageServiceClient<Channel>, image: &str, pod_cfg: &k8s::PodSandboxConfig) -> Result<(u64, String), String> {
    let req = k8s::PullImageRequest { image: spec(image), auth: None, sandbox_config: Some(pod_cfg.clone()) };
    let t = Instant::now();
    let r = client.clone().pull_image(req).await;
    let ns = t.elapsed().as_nanos() as u64;
    match r {
        Ok(r) => Ok((ns, r.into_inner().image_ref)),
        Err(s) => Err(format!("PullImage {image}: {:?} {}", s.code(), s.message())),
    }
}

async fn remove_image(direct: &ImageServiceClient<Channel>, image: &str) -> Result<(), String> {
    direct
        .clone()
        .remove_image(k8s::RemoveImageRequest { image: spec(image) })
        .await
        .map(|_| ())
        .map_err(|s| format!("RemoveImage {image}: {}", s.message()))
}

async fn image_present(direct: &ImageServiceClient<Channel>, image: &str) -> Result<Option<k8s::Image>, String> {
    direct
        .clone()
        .image_status(k8s::ImageStatusRequest { image: spec(image), verbose: false })
        .await
        .map(|r| r.into_inner().image)
        .map_err(|s| format!("ImageStatus {image}: {}", s.message()))
}

fn create_request(sandbox: &str, cfg: &k8s::PodSandboxConfig, name: &str, image_id: &str) -> k8s::CreateContainerRequest {
    k8s::CreateContainerRequest {
        pod_sandbox_id: sandbox.into(),
        config: Some(k8s::ContainerConfig {
            metadata: Some(k8s::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: spec(image_id),
            command: vec!["/hello".into()],
            ..Default::default()
        }),
        sandbox_config: Some(cfg.clone()),
    }
}

/// Container name of the CreateContainer calls containerd refuses (unknown sandbox).
const REJECTED: &str = "rejected";

const DIRECT: usize = 0;
const VIA: usize = 1;
const PATHS: [&str; 3] = ["direct", "via pullgate", "via B"];
/// The second pullgate of an A/B run (`PULLGATE_BENCH_B_BIN`).
const B: usize = 2;

/// The two paths' clients: index DIRECT or VIA; `b`: the second pullgate of an A/B run.
struct Clients {
    images: [ImageServiceClient<Channel>; 2],
    runtime: [RuntimeServiceClient<Channel>; 2],
    b: Option<(ImageServiceClient<Channel>, RuntimeServiceClient<Channel>)>,
}

/// `PULLGATE_BENCH_B_BIN`: the build measured as B in an A/B run.
fn b_binary() -> Option<PathBuf> {
    std::env::var_os("PULLGATE_BENCH_B_BIN").filter(|v| !v.is_empty()).map(PathBuf::from)
}

// --- the run -----------------------------------------------------------------------------------

/// Sets up, measures and tears down (`Testbed` and `Daemon` clean up on drop, on error too).
fn run() -> Result<String, String> {
    let plan = Plan::from_env();
    let bin = pullgate_binary()?;
    progress!("pullgate: {}", bin.display());
    progress!("starting testbed (containerd + registry)...");
    let tb = Testbed::start("benf", &[])?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let registry = tb.get("REGISTRY").to_string();
    let addr: SocketAddr = registry.parse().map_err(|e| format!("{registry}: {e}"))?;
    let pusher = Pusher::new(addr);
    let direct_sock = tb.containerd_sock();

    // The test Sigstore stack and its trust root, imported as an operator would.
    progress!("importing the test Sigstore trust root, signing and pushing images");
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

    // Signed images: the testbed's demo/app:1 (a real image with a binary, for containers) and
    // the distinct tiny images for cold pulls (warm-up ones first).
    let demo_image = tb.get("DEMO_IMAGE").to_string();
    let demo_digest = Digest::parse(tb.get("DEMO_DIGEST")).map_err(|e| e.to_string())?;
    let salt = format!("{}-{}", std::process::id(), jiff::Timestamp::now().as_nanosecond());
    let repo = "demo/bench";
    let n_images = plan.warmup + plan.cold;
    let opts = SignOptions::new(stack.now);
    let (cold_images, cold_digests, single_flight_image) = rt.block_on(async {
        sign_and_push(&mut stack, &pusher, "demo/app", &demo_digest, &opts, Format::Bundle).await?;
        let mut images = Vec::new();
        let mut digests = Vec::new();
        for i in 0..n_images {
            let tag = format!("c{i}");
            let d = push_tiny_image(&pusher, repo, &tag, &salt).await?;
            sign_and_push(&mut stack, &pusher, repo, &d, &opts, Format::Bundle).await?;
            images.push(format!("{registry}/{repo}:{tag}"));
            digests.push(d);
        }
        // One more, pulled by 100 callers at once (by digest) for the single-flight check.
        let d = push_tiny_image(&pusher, repo, "sf", &salt).await?;
        sign_and_push(&mut stack, &pusher, repo, &d, &opts, Format::Bundle).await?;
        Ok::<_, String>((images, digests, format!("{registry}/{repo}@{d}")))
    })?;

    let level = std::env::var("PULLGATE_BENCH_LOG_LEVEL")
        .unwrap_or_else(|_| if profiling() { "info,pullgate::registry::client=debug" } else { "info" }.to_string());
    // One pullgate (and for an A/B run a second, B) with the same configuration; each has its
    // own socket, audit log and admin port.
    let start = |bin: &Path, name: &str| -> Result<(Daemon, PathBuf, PathBuf, SocketAddr), String> {
        let sock = tb.dir.join(format!("{name}.sock"));
        let audit = tb.dir.join(format!("{name}-audit.log"));
        let cfg_path = tb.dir.join(format!("{name}.yaml"));
        // Metrics on (as in production, where they are scraped): the mirror-request and
        // verification histograms split the cold decision into its parts.
        let admin: SocketAddr =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| format!("no free port: {e}"))?;
        std::fs::write(&cfg_path, config(&tb.dir, &registry, &sock, &direct_sock, tb.get("HOSTS_DIR"), &audit, admin, &level))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--config").arg(&cfg_path);
        Ok((Daemon::start_with(&sock, &mut cmd)?, sock, audit, admin))
    };
    let (mut pg, pg_sock, audit_log, admin) = start(&bin, "pg")?;
    let b_bin = b_binary();
    let mut pg_b = match &b_bin {
        Some(b) => {
            progress!("B: {}", b.display());
            Some(start(b, "pg-b")?)
        }
        None => None,
    };

    let clients = {
        let _rt = rt.enter();
        Clients {
            images: [cri::images(&direct_sock), cri::images(&pg_sock)],
            runtime: [cri::runtime(&direct_sock), cri::runtime(&pg_sock)],
            b: pg_b.as_ref().map(|(_, sock, ..)| (cri::images(sock), cri::runtime(sock))),
        }
    };

    let m0 = rt.block_on(Metrics::scrape(admin))?;
    let cold = rt.block_on(cold_pulls(&plan, &clients, &cold_images, addr))?;
    let m1 = rt.block_on(Metrics::scrape(admin))?;
    let warm = rt.block_on(warm_pulls(&plan, &clients, &demo_image, &demo_digest, &direct_sock, addr))?;
    let m2 = rt.block_on(Metrics::scrape(admin))?;
    let create = rt.block_on(creates(&plan, &clients, &demo_image))?;
    let m3 = rt.block_on(Metrics::scrape(admin))?;
    rt.block_on(single_flight(&clients, &single_flight_image))?;
    let m4 = rt.block_on(Metrics::scrape(admin))?;

    progress!("reading pullgate's audit log and call log");
    // Close the client connections first (dropping the runtime drops their tasks), so pullgate's
    // SIGTERM drain has nothing to wait for.
    drop(clients);
    drop(rt);
    let records = read_records(&audit_log).map(|r| r.0).map_err(|e| format!("audit log: {e}"))?;
    pg.terminate(Duration::from_secs(10));
    if let Some((b, ..)) = pg_b.as_mut() {
        b.terminate(Duration::from_secs(10));
    }
    drop(pg_b);
    let log_text = pg.logs();
    if let Ok(path) = std::env::var("PULLGATE_BENCH_LOG_COPY") {
        std::fs::write(&path, &log_text).map_err(|e| format!("{path}: {e}"))?;
    }
    let logs = CallLogs::parse(&log_text);
    drop(pg);
    let by_digest = format!("{}@{demo_digest}", demo_image.rsplit_once(':').map(|(n, _)| n).unwrap_or(&demo_image));
    let mut accounts = Accounts::collect(&records, &logs, &cold_images[plan.warmup..], &demo_image, &by_digest);
    accounts.cold_parts = m1.minus(&m0);
    accounts.warm_parts = m2.minus(&m1);
    accounts.single_flight = m4.minus(&m3);
    accounts.requests = RequestTimes::parse(&log_text, repo, &cold_digests);

    let mut out = String::new();
    write_report(&mut out, &plan, &cold, &warm, &create, &accounts, &bin);
    if let Some(b) = &b_bin {
        write_ab(&mut out, &plan, &warm, &create, &bin, b);
    }
    progress!("tearing down the testbed");
    drop(tb);
    Ok(out)
}

// --- cold decisions ----------------------------------------------------------------------------

struct Cold {
    /// Per image: wall time of its direct and via-pullgate pull (ns).
    pairs: Vec<[u64; 2]>,
    /// Per path: pulls after which an immediate ImageStatus by the pulled reference found
    /// nothing yet (found on a retry), and the longest wait for it (ms).
    late: [usize; 2],
    late_max_ms: f64,
    /// Per image: the mirror's own time for the requests a cold decision must make one after
    /// the other (`mirror_chain`), sent from here on one keep-alive connection (ns).
    chain: Vec<u64>,
}

async fn cold_pulls(plan: &Plan, c: &Clients, images: &[String], registry: SocketAddr) -> Result<Cold, String> {
    let direct = &c.images[DIRECT];
    let pod_cfg = pod("team", "web");
    progress!("cold decisions: {} warm-up images, then {} images, each pulled once per path", plan.warmup, plan.cold);
    let mut pairs = Vec::new();
    let mut late = [0usize; 2];
    let mut late_max_ms = 0f64;
    let mut chain = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let mut t = [0u64; 2];
        // Alternate which path goes first, so a leftover of the first pull (page cache, a
        // containerd cache) favours neither.
        let order = if i % 2 == 0 { [DIRECT, VIA] } else { [VIA, DIRECT] };
        for p in order {
            remove_image(direct, image).await?;
            if image_present(direct, image).await?.is_some() {
                return Err(format!("{image} is still in containerd after RemoveImage"));
            }
            let (ns, _) = pull(&c.images[p], image, &pod_cfg).await?;
            t[p] = ns;
            // kubelet's view: ImageStatus by the reference it pulled. containerd's CRI plugin
            // learns of image records written through containerd's image API (pullgate's tag
            // record) from events, asynchronously: wait a little if need be, and count it.
            if image_present(direct, image).await?.is_none() {
                let waited = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if image_present(direct, image).await?.is_some() {
                        break;
                    }
                    if waited.elapsed() > Duration::from_secs(5) {
                        return Err(format!("{image} is not in containerd 5 s after a successful pull ({})", PATHS[p]));
                    }
                }
                late[p] += 1;
                late_max_ms = late_max_ms.max(waited.elapsed().as_secs_f64() * 1000.0);
            }
        }
        remove_image(direct, image).await?;
        let floor = mirror_chain(registry, image).await?;
        if i >= plan.warmup {
            chain.push(floor);
            pairs.push(t);
            if pairs.len() % 10 == 0 || pairs.len() == plan.cold {
                progress!("  {} / {} images", pairs.len(), plan.cold);
            }
        }
    }
    Ok(Cold { pairs, late, late_max_ms, chain })
}

/// The floor of a cold decision on this mirror: the four requests that cannot overlap, each
/// needing the one before (the tag's manifest gives the digest, the referrers tag index named
/// after it lists the signature, the signature's manifest names the bundle blob, the blob),
/// sent one after the other on one keep-alive HTTP/1.1 connection by a plain client that does
/// nothing else (no discovery in other places, no checks, no verification). Returns the wall
/// time of the four (ns).
async fn mirror_chain(registry: SocketAddr, image: &str) -> Result<u64, String> {
    let path = image.split_once('/').map(|(_, p)| p).unwrap_or(image);
    let (repo, tag) = path.rsplit_once(':').ok_or("no tag")?;
    let mut conn = support::registry::http::Connection::open(registry).await?;
    let mut get =
        async |path: String, accept: &str| match conn.send("GET", &path, &[("accept", accept.into())], bytes::Bytes::new()).await? {
            a if a.status == 200 => Ok(a),
            a => Err(format!("GET {path}: HTTP {}", a.status)),
        };
    let json = |b: &bytes::Bytes| serde_json::from_slice::<serde_json::Value>(b).map_err(|e| e.to_string());
    let manifests = pullgate::registry::resolve::MANIFEST_ACCEPT;
    let t = Instant::now();
    let tagged = get(format!("/v2/{repo}/manifests/{tag}"), manifests).await?;
    let digest = tagged.header("docker-content-digest").ok_or("no Docker-Content-Digest")?.to_string();
    let index = get(format!("/v2/{repo}/manifests/{}", digest.replace(':', "-")), manifests).await?;
    let listed = json(&index.body)?["manifests"][0]["digest"].as_str().ok_or("empty referrers index")?.to_string();
    let referrer = get(format!("/v2/{repo}/manifests/{listed}"), manifests).await?;
    let blob = json(&referrer.body)?["layers"][0]["digest"].as_str().ok_or("referrer without layers")?.to_string();
    get(format!("/v2/{repo}/blobs/{blob}"), "*/*").await?;
    Ok(t.elapsed().as_nanos() as u64)
}

// --- warm decisions ----------------------------------------------------------------------------

/// What the warm-pull phase measures, per round: ns samples.
const W_DIRECT: usize = 0;
const W_VIA: usize = 1;
/// containerd's pull of `repo@digest` (what pullgate forwards), direct.
const W_BY_DIGEST: usize = 2;
/// pullgate's tag-record step alone (`pullgate::cri::images::ContainerdImages::tag`, the code
/// linked into this bench), from here.
const W_TAG: usize = 3;
/// One `HEAD` of the tag on the mirror from here (a new connection each time): the registry's
/// own answer time, which pullgate's warm decision waits for.
const W_HEAD: usize = 4;
/// The pull by digest through pullgate (decision cached): against `W_BY_DIGEST`, pullgate's
/// whole cost for a cached digest (no mirror request).
const W_VIA_DIGEST: usize = 5;
const WARM_KINDS: usize = 6;

struct Warm {
    samples: [Vec<u64>; WARM_KINDS],
    /// A/B runs: B's pulls by digest (decision cached), one block per round next to A's.
    b_digest: Vec<u64>,
}

/// `HEAD /v2/<repo>/manifests/<tag>` of `image` on `registry`, as pullgate and containerd send it.
async fn head_tag(registry: SocketAddr, image: &str) -> Result<(), String> {
    let path = image.split_once('/').map(|(_, p)| p).unwrap_or(image);
    let (repo, tag) = path.rsplit_once(':').ok_or("no tag")?;
    let accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
    let r = support::registry::http::request(
        registry,
        "HEAD",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("accept", accept.into())],
        bytes::Bytes::new(),
    )
    .await?;
    if r.status != 200 || r.header("docker-content-digest").is_none() {
        return Err(format!("HEAD {image}: HTTP {}", r.status));
    }
    Ok(())
}

async fn warm_pulls(
    plan: &Plan,
    c: &Clients,
    image: &str,
    digest: &Digest,
    direct_sock: &Path,
    registry: SocketAddr,
) -> Result<Warm, String> {
    let pod_cfg = pod("team", "web");
    let name = image.rsplit_once(':').map(|(n, _)| n).unwrap_or(image);
    let by_digest = format!("{name}@{digest}");
    // Present in containerd, decision cached.
    let (_, id_via) = pull(&c.images[VIA], image, &pod_cfg).await?;
    let (_, id_direct) = pull(&c.images[DIRECT], image, &pod_cfg).await?;
    if id_via != id_direct {
        return Err(format!("the two paths pulled different images: {id_via} vs {id_direct}"));
    }
    let images = pullgate::cri::images::ContainerdImages::new(direct_sock);
    progress!("warm decisions: {} pulls per path of {image}, in blocks of {}", plan.warm, plan.block);
    for _ in 0..plan.block {
        for p in [DIRECT, VIA] {
            pull(&c.images[p], image, &pod_cfg).await?;
        }
        pull(&c.images[DIRECT], &by_digest, &pod_cfg).await?;
        pull(&c.images[VIA], &by_digest, &pod_cfg).await?;
        images.tag(&by_digest, image).await.map_err(|e| e.to_string())?;
        if let Some((b, _)) = &c.b {
            pull(b, image, &pod_cfg).await?;
            pull(b, &by_digest, &pod_cfg).await?;
        }
    }
    let mut samples: [Vec<u64>; WARM_KINDS] = Default::default();
    let mut b_digest = Vec::new();
    let mut done = 0;
    let mut round = 0;
    while done < plan.warm {
        let k = plan.block.min(plan.warm - done);
        for j in 0..WARM_KINDS {
            let kind = (j + round) % WARM_KINDS;
            // A/B runs: B's block next to A's (`W_VIA_DIGEST`), after it in even rounds and
            // before it in odd ones, so that neither gains from its place.
            let b_block = match (kind, &c.b) {
                (W_VIA_DIGEST, Some((b, _))) => Some(b),
                _ => None,
            };
            if let (Some(b), 1) = (b_block, round % 2) {
                b_pulls(b, &by_digest, &pod_cfg, k, &mut b_digest).await?;
            }
            for _ in 0..k {
                let ns = match kind {
                    W_DIRECT => pull(&c.images[DIRECT], image, &pod_cfg).await?.0,
                    W_VIA => pull(&c.images[VIA], image, &pod_cfg).await?.0,
                    W_BY_DIGEST => pull(&c.images[DIRECT], &by_digest, &pod_cfg).await?.0,
                    W_VIA_DIGEST => pull(&c.images[VIA], &by_digest, &pod_cfg).await?.0,
                    W_HEAD => {
                        let t = Instant::now();
                        head_tag(registry, image).await?;
                        t.elapsed().as_nanos() as u64
                    }
                    _ => {
                        let t = Instant::now();
                        images.tag(&by_digest, image).await.map_err(|e| format!("tag step: {e}"))?;
                        t.elapsed().as_nanos() as u64
                    }
                };
                samples[kind].push(ns);
            }
            if let (Some(b), 0) = (b_block, round % 2) {
                b_pulls(b, &by_digest, &pod_cfg, k, &mut b_digest).await?;
            }
        }
        done += k;
        round += 1;
    }
    Ok(Warm { samples, b_digest })
}

/// `k` pulls of `image` through B (A/B runs), their times appended to `out`.
async fn b_pulls(
    b: &ImageServiceClient<Channel>,
    image: &str,
    pod_cfg: &k8s::PodSandboxConfig,
    k: usize,
    out: &mut Vec<u64>,
) -> Result<(), String> {
    for _ in 0..k {
        out.push(pull(b, image, pod_cfg).await?.0);
    }
    Ok(())
}

// --- single flight -----------------------------------------------------------------------------

/// Callers pulling one digest at once, through pullgate.
const SINGLE_FLIGHT_CALLERS: usize = 100;

/// `SINGLE_FLIGHT_CALLERS` PullImage calls of `image` (a digest reference pullgate has never
/// seen) at once through pullgate, on the one connection; all must succeed. The metrics before
/// and after tell how many verifications they caused.
async fn single_flight(c: &Clients, image: &str) -> Result<(), String> {
    let pod_cfg = pod("team", "web");
    progress!("single flight: {SINGLE_FLIGHT_CALLERS} concurrent pulls of {image} through pullgate");
    let calls = (0..SINGLE_FLIGHT_CALLERS).map(|_| pull(&c.images[VIA], image, &pod_cfg));
    for r in futures_util::future::join_all(calls).await {
        r?;
    }
    remove_image(&c.images[DIRECT], image).await
}

// --- CreateContainer ---------------------------------------------------------------------------

struct Create {
    /// Real creates: per pair, direct and via (ns).
    pairs: Vec<[u64; 2]>,
    /// Creates containerd refuses at once (unknown sandbox): samples per path (ns).
    rejects: [Vec<u64>; 2],
    /// What containerd answered those.
    reject_answer: String,
    /// A/B runs: B's refused creates, one block per round next to A's.
    b_rejects: Vec<u64>,
}

async fn creates(plan: &Plan, c: &Clients, image: &str) -> Result<Create, String> {
    let image_id = image_present(&c.images[DIRECT], image).await?.ok_or("the demo image is not in containerd")?.id;
    let cfg = pod("team", "bench");
    let mut direct_rt = c.runtime[DIRECT].clone();
    progress!("CreateContainer: sandbox, then {} creates per path (each removed, untimed)", plan.creates);
    let sandbox = direct_rt
        .run_pod_sandbox(k8s::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
        .await
        .map_err(|s| format!("RunPodSandbox: {}", s.message()))?
        .into_inner()
        .pod_sandbox_id;
    let result = async {
        let mut n = 0usize;
        let mut create_once = |p: usize| {
            n += 1;
            let req = create_request(&sandbox, &cfg, &format!("c{n}"), &image_id);
            let mut rt = c.runtime[p].clone();
            let mut direct_rt = direct_rt.clone();
            async move {
                let t = Instant::now();
                let id = rt
                    .create_container(req)
                    .await
                    .map_err(|s| format!("CreateContainer ({}): {:?} {}", PATHS[p], s.code(), s.message()))?
                    .into_inner()
                    .container_id;
                let ns = t.elapsed().as_nanos() as u64;
                direct_rt
                    .remove_container(k8s::RemoveContainerRequest { container_id: id })
                    .await
                    .map_err(|s| format!("RemoveContainer: {}", s.message()))?;
                Ok::<u64, String>(ns)
            }
        };
        // Warm-up: both paths, not measured.
        for p in [DIRECT, VIA, DIRECT, VIA] {
            create_once(p).await?;
        }
        let mut pairs = Vec::new();
        for i in 0..plan.creates {
            let mut t = [0u64; 2];
            let order = if i % 2 == 0 { [DIRECT, VIA] } else { [VIA, DIRECT] };
            for p in order {
                t[p] = create_once(p).await?;
            }
            pairs.push(t);
        }

        progress!("CreateContainer refused by containerd (unknown sandbox): {} per path, in blocks of {}", plan.rejects, plan.block);
        let bogus = "0".repeat(64);
        let reject_once = |p: usize| {
            let req = create_request(&bogus, &cfg, REJECTED, &image_id);
            let mut rt = match (p, &c.b) {
                (B, Some((_, b))) => b.clone(),
                _ => c.runtime[p].clone(),
            };
            async move {
                let t = Instant::now();
                let r = rt.create_container(req).await;
                let ns = t.elapsed().as_nanos() as u64;
                match r {
                    Ok(_) => Err("CreateContainer in an unknown sandbox succeeded".to_string()),
                    Err(s) if s.message().starts_with("SignatureValidationFailed") => Err(format!("pullgate refused: {}", s.message())),
                    Err(s) => Ok((ns, format!("{:?}: {}", s.code(), s.message()))),
                }
            }
        };
        let mut answers = [String::new(), String::new()];
        for p in [DIRECT, VIA] {
            for _ in 0..plan.block {
                answers[p] = reject_once(p).await?.1;
            }
        }
        if answers[DIRECT] != answers[VIA] {
            return Err(format!("containerd answered differently: direct {:?}, via {:?}", answers[DIRECT], answers[VIA]));
        }
        if c.b.is_some() {
            for _ in 0..plan.block {
                reject_once(B).await?;
            }
        }
        let mut rejects: [Vec<u64>; 2] = Default::default();
        let mut b_rejects = Vec::new();
        let mut done = 0;
        let mut round = 0;
        while done < plan.rejects {
            let k = plan.block.min(plan.rejects - done);
            // A/B runs: B's block next to A's, after it in even rounds and before it in odd ones.
            let order: &[usize] = match (round % 2, c.b.is_some()) {
                (0, false) => &[DIRECT, VIA],
                (_, false) => &[VIA, DIRECT],
                (0, true) => &[DIRECT, VIA, B],
                (_, true) => &[B, VIA, DIRECT],
            };
            for &p in order {
                for _ in 0..k {
                    let ns = reject_once(p).await?.0;
                    if p == B {
                        b_rejects.push(ns);
                    } else {
                        rejects[p].push(ns);
                    }
                }
            }
            done += k;
            round += 1;
        }
        Ok::<_, String>(Create { pairs, rejects, reject_answer: answers[DIRECT].clone(), b_rejects })
    }
    .await;
    let _ = direct_rt.stop_pod_sandbox(k8s::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() }).await;
    let _ = direct_rt.remove_pod_sandbox(k8s::RemovePodSandboxRequest { pod_sandbox_id: sandbox }).await;
    result
}

// --- pullgate's own accounts -------------------------------------------------------------------

/// `ms` of pullgate's per-call log lines (JSON), with method, image and container name.
struct CallLogs {
    calls: Vec<(String, String, String, f64)>,
}

impl CallLogs {
    fn parse(text: &str) -> CallLogs {
        let calls = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "call")
            .filter_map(|v| {
                let ms = match &v["ms"] {
                    serde_json::Value::String(s) => s.parse().ok()?,
                    other => other.as_f64()?,
                };
                let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                Some((field("method"), field("image"), field("container"), ms))
            })
            .collect();
        CallLogs { calls }
    }

    /// `ms` of the calls of `method` whose image and container name pass `f`.
    fn ms(&self, method: &str, f: impl Fn(&str, &str) -> bool) -> Vec<f64> {
        self.calls.iter().filter(|(m, i, c, _)| m == method && f(i, c)).map(|c| c.3).collect()
    }
}

/// Times pullgate reports itself (ms).
struct Accounts {
    /// Audit `latency_ms` of the measured cold pulls (decision: resolve, discovery, verify).
    cold_decision: Vec<f64>,
    /// How many of those were answered from the cache (should be none).
    cold_cached: usize,
    /// Logged `ms` of the measured cold pulls (the whole call: decision, pinned pull, tag).
    cold_call: Vec<f64>,
    /// Audit `latency_ms` of warm pulls (resolve + cache hit).
    warm_decision: Vec<f64>,
    warm_uncached: usize,
    warm_call: Vec<f64>,
    /// The same for the warm pulls by digest.
    digest_decision: Vec<f64>,
    digest_uncached: usize,
    digest_call: Vec<f64>,
    /// Audit `latency_ms` of CreateContainer decisions (cache hit), and how many were not cached.
    create_decision: Vec<f64>,
    create_uncached: usize,
    create_call: Vec<f64>,
    /// Logged `ms` of the CreateContainer calls containerd refused.
    reject_call: Vec<f64>,
    /// pullgate's metrics over the cold phase (warm-up images included) and the warm phase.
    cold_parts: Metrics,
    warm_parts: Metrics,
    /// pullgate's metrics over the single-flight phase.
    single_flight: Metrics,
    /// Registry requests pullgate logged (`PULLGATE_BENCH_PROFILE`).
    requests: RequestTimes,
}

/// Sums and counts of pullgate's duration histograms (seconds): mirror `resolve` and
/// `discover` operations, and verifications.
#[derive(Debug, Clone, Copy, Default)]
struct Metrics {
    resolve: (f64, f64),
    discover: (f64, f64),
    verify: (f64, f64),
    /// `pullgate_verifications_total` (all results) and decision-cache lookups by result.
    verifications: f64,
    lookups: [f64; 3],
}

impl Metrics {
    async fn scrape(admin: SocketAddr) -> Result<Metrics, String> {
        let r = support::registry::http::request(admin, "GET", "/metrics", &[], bytes::Bytes::new()).await?;
        if r.status != 200 {
            return Err(format!("GET /metrics: HTTP {}", r.status));
        }
        let text = String::from_utf8_lossy(&r.body);
        let value = |name: &str, label: &str| -> f64 {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| l.split(['{', ' ']).next().is_some_and(|n| n.ends_with(name)) && l.contains(label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let hist = |base: &str, label: &str| (value(&format!("{base}_sum"), label), value(&format!("{base}_count"), label));
        Ok(Metrics {
            resolve: hist("mirror_request_duration_seconds", "operation=\"resolve\""),
            discover: hist("mirror_request_duration_seconds", "operation=\"discover\""),
            verify: hist("verification_duration_seconds", ""),
            verifications: value("_verifications_total", ""),
            lookups: ["miss", "joined", "hit"].map(|r| value("decision_cache_lookups_total", &format!("result=\"{r}\""))),
        })
    }

    fn minus(&self, o: &Metrics) -> Metrics {
        let d = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0, a.1 - b.1);
        Metrics {
            resolve: d(self.resolve, o.resolve),
            discover: d(self.discover, o.discover),
            verify: d(self.verify, o.verify),
            verifications: self.verifications - o.verifications,
            lookups: [0, 1, 2].map(|i| self.lookups[i] - o.lookups[i]),
        }
    }
}

/// The registry requests of the cold decisions, from pullgate's debug log lines (`ms` each),
/// by kind: what each request on the path of a cold decision costs.
#[derive(Default)]
struct RequestTimes {
    kinds: Vec<(&'static str, Vec<f64>)>,
    /// pullgate's own time on the chain of each cold decision, between one request's full
    /// answer and the send of the request it names, by step.
    gaps: Vec<(&'static str, Vec<f64>)>,
}

impl RequestTimes {
    /// Requests about `repo` (the cold images' repository); `digests` tell the images' own
    /// manifests from their referrers' manifests.
    fn parse(text: &str, repo: &str, digests: &[Digest]) -> RequestTimes {
        let digests: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
        let mut kinds: Vec<(&'static str, Vec<f64>)> = Vec::new();
        // (start, end, kind) of each request, ms since the epoch: the log line is written at
        // the full answer, and `ms` runs from the send.
        let mut spans: Vec<(f64, f64, &'static str)> = Vec::new();
        for v in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
            if v["message"] != "registry request" {
                continue;
            }
            let (Some(path), Some(method)) = (v["path"].as_str(), v["method"].as_str()) else { continue };
            let ms = match &v["ms"] {
                serde_json::Value::String(s) => s.parse().ok(),
                other => other.as_f64(),
            };
            let Some(ms) = ms else { continue };
            if !path.contains(&format!("/{repo}/")) {
                continue;
            }
            let last = path.rsplit('/').next().unwrap_or_default();
            let kind = if path.contains("/referrers/") {
                "referrers API listing"
            } else if path.contains("/blobs/") {
                "bundle blob"
            } else if method == "HEAD" {
                "tag HEAD (resolve)"
            } else if !last.contains(':') && !last.starts_with("sha256-") {
                // The gate resolves a tag with one GET (the manifest comes with it).
                "tag GET (resolve, with the manifest)"
            } else if last.ends_with(".sig") {
                "cosign .sig tag"
            } else if last.starts_with("sha256-") {
                "referrers tag index"
            } else if digests.iter().any(|d| d == last) {
                "image manifest by digest"
            } else if last.starts_with("sha256:") {
                "referrer manifest"
            } else {
                "other"
            };
            match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, v)) => v.push(ms),
                None => kinds.push((kind, vec![ms])),
            }
            if let Some(end) = v["timestamp"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
                let end = end.as_microsecond() as f64 / 1000.0;
                spans.push((end - ms, end, kind));
            }
        }
        RequestTimes { kinds, gaps: chain_gaps(spans) }
    }
}

/// The waits inside pullgate on each cold decision's chain (tag -> referrers tag index ->
/// referrer manifest -> bundle blob): the bench pulls its cold images one at a time, so each
/// tag `GET` starts the requests of one decision.
fn chain_gaps(mut spans: Vec<(f64, f64, &'static str)>) -> Vec<(&'static str, Vec<f64>)> {
    const STEPS: [(&str, &str, &str); 3] = [
        ("tag answer -> listings sent", "tag GET (resolve, with the manifest)", "referrers tag index"),
        ("referrers tag index answer -> referrer manifest sent", "referrers tag index", "referrer manifest"),
        ("referrer manifest answer -> bundle blob sent", "referrer manifest", "bundle blob"),
    ];
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut gaps: Vec<(&'static str, Vec<f64>)> = STEPS.iter().map(|(name, ..)| (*name, Vec::new())).collect();
    let starts: Vec<usize> = spans.iter().enumerate().filter(|(_, s)| s.2 == STEPS[0].1).map(|(i, _)| i).collect();
    for (n, &i) in starts.iter().enumerate() {
        let decision = &spans[i..starts.get(n + 1).copied().unwrap_or(spans.len())];
        let first = |kind: &str| decision.iter().find(|s| s.2 == kind);
        for (k, (_, from, to)) in STEPS.iter().enumerate() {
            if let (Some(a), Some(b)) = (first(from), first(to)) {
                gaps[k].1.push(b.0 - a.1);
            }
        }
    }
    gaps.retain(|(_, v)| !v.is_empty());
    gaps
}

/// Mean of a histogram's observations, ms ("n/a" without any).
fn mean_ms(h: (f64, f64)) -> String {
    if h.1 < 1.0 {
        "n/a".into()
    } else {
        format!("{} (n = {})", fmt_ms(h.0 / h.1 * 1000.0), h.1)
    }
}

impl Accounts {
    fn collect(records: &[AuditRecord], logs: &CallLogs, cold_images: &[String], warm_image: &str, by_digest: &str) -> Accounts {
        let digest: Vec<&AuditRecord> = records.iter().filter(|r| r.call == "PullImage" && r.image == by_digest).collect();
        let cold: Vec<&AuditRecord> = records.iter().filter(|r| r.call == "PullImage" && cold_images.contains(&r.image)).collect();
        // Warm: every PullImage of the warm image but the first (which made the decision).
        let warm: Vec<&AuditRecord> = records.iter().filter(|r| r.call == "PullImage" && r.image == warm_image).skip(1).collect();
        let create: Vec<&AuditRecord> = records.iter().filter(|r| r.call == "CreateContainer").collect();
        let warm_call = logs.ms("PullImage", |i, _| i == warm_image);
        Accounts {
            cold_decision: cold.iter().map(|r| r.latency_ms).collect(),
            cold_cached: cold.iter().filter(|r| r.cached).count(),
            cold_call: logs.ms("PullImage", |i, _| cold_images.iter().any(|c| c == i)),
            warm_decision: warm.iter().map(|r| r.latency_ms).collect(),
            warm_uncached: warm.iter().filter(|r| !r.cached).count(),
            warm_call: warm_call.into_iter().skip(1).collect(),
            digest_decision: digest.iter().map(|r| r.latency_ms).collect(),
            digest_uncached: digest.iter().filter(|r| !r.cached).count(),
            digest_call: logs.ms("PullImage", |i, _| i == by_digest),
            create_decision: create.iter().map(|r| r.latency_ms).collect(),
            create_uncached: create.iter().filter(|r| !r.cached).count(),
            create_call: logs.ms("CreateContainer", |_, c| c != REJECTED),
            reject_call: logs.ms("CreateContainer", |_, c| c == REJECTED),
            cold_parts: Metrics::default(),
            warm_parts: Metrics::default(),
            single_flight: Metrics::default(),
            requests: RequestTimes::default(),
        }
    }
}

// --- report ------------------------------------------------------------------------------------

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn pct_f(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

fn sorted(v: &[u64]) -> Vec<u64> {
    let mut s = v.to_vec();
    s.sort_unstable();
    s
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// p50 and p90 of `v`, in ms.
fn p50_p90(v: &[u64]) -> (f64, f64) {
    let s = sorted(v);
    (ms(pct(&s, 50.0)), ms(pct(&s, 90.0)))
}

/// Median of per-pair differences (via - direct), ms.
fn paired_median(pairs: &[[u64; 2]]) -> f64 {
    let d: Vec<f64> = pairs.iter().map(|p| ms(p[VIA]) - ms(p[DIRECT])).collect();
    pct_f(&d, 50.0)
}

/// Pairs of block medians `[direct, via]`: the warm phase runs its kinds in blocks of `block`
/// calls, one block of each kind per round, so block `i` of `direct` and block `i` of `via` ran
/// next to each other. Pairing them keeps drift over the run (containerd's metadata growing,
/// the machine's load) out of the difference, which a p50 over the whole run does not.
fn block_pairs(direct: &[u64], via: &[u64], block: usize) -> Vec<[u64; 2]> {
    let median = |b: &[u64]| pct(&sorted(b), 50.0);
    direct.chunks(block.max(1)).zip(via.chunks(block.max(1))).map(|(d, v)| [median(d), median(v)]).collect()
}

/// A bootstrap-free spread of a median difference: the interquartile range of the per-pair
/// differences divided by sqrt(n) (about the standard error of the median for a symmetric
/// distribution, times ~0.93).
fn paired_se(pairs: &[[u64; 2]]) -> f64 {
    let d: Vec<f64> = pairs.iter().map(|p| ms(p[VIA]) - ms(p[DIRECT])).collect();
    (pct_f(&d, 75.0) - pct_f(&d, 25.0)) / (d.len() as f64).sqrt()
}

/// A paired estimate as the report prints it: the median difference and its spread.
fn paired(pairs: &[[u64; 2]]) -> String {
    format!("{} (+/- {})", signed_ms(paired_median(pairs)), fmt_ms(paired_se(pairs)))
}

/// The A/B section: B against A (pullgate) and against direct, block by block.
fn write_ab(out: &mut String, plan: &Plan, warm: &Warm, create: &Create, a: &Path, b: &Path) {
    let _ = writeln!(out, "\n### A/B in this run\n\nA: {}\nB: {}\n", a.display(), b.display());
    let _ = writeln!(
        out,
        "Per round, the median of one path's block minus that of the other's, then the median over rounds (+/- IQR/sqrt(n)):\n"
    );
    for (name, direct, via_a, via_b) in [
        ("PullImage by digest, decision cached", &warm.samples[W_BY_DIGEST], &warm.samples[W_VIA_DIGEST], &warm.b_digest),
        ("CreateContainer refused by containerd", &create.rejects[DIRECT], &create.rejects[VIA], &create.b_rejects),
    ] {
        let ab = block_pairs(via_a, via_b, plan.block);
        let a_added = block_pairs(direct, via_a, plan.block);
        let b_added = block_pairs(direct, via_b, plan.block);
        let _ = writeln!(
            out,
            "- {name}: B - A {} over {} rounds; added over direct: A {}, B {}",
            paired(&ab),
            ab.len(),
            paired(&a_added),
            paired(&b_added),
        );
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

fn fmt_ms(v: f64) -> String {
    if v.abs() < 1.0 {
        format!("{:.3} ms", v)
    } else {
        format!("{:.2} ms", v)
    }
}

fn signed_ms(v: f64) -> String {
    if v.abs() < 1.0 {
        format!("{:+.3} ms", v)
    } else {
        format!("{:+.2} ms", v)
    }
}

fn write_report(out: &mut String, plan: &Plan, cold: &Cold, warm: &Warm, create: &Create, acc: &Accounts, bin: &Path) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let _ = writeln!(out, "\n## Enforcement overhead{}\n", if plan.quick { " (QUICK smoke run: too few samples to quote)" } else { "" });
    let _ = writeln!(
        out,
        "{cores} cores, load average at the end {load}; cold: {} images pulled once per path; warm: {} pulls per path in blocks of {}; CreateContainer: {} per path (+ {} refused by containerd).\npullgate: {}\n",
        plan.cold,
        plan.warm,
        plan.block,
        plan.creates,
        plan.rejects,
        bin.display()
    );

    let cold_d: Vec<u64> = cold.pairs.iter().map(|p| p[DIRECT]).collect();
    let cold_v: Vec<u64> = cold.pairs.iter().map(|p| p[VIA]).collect();
    let (cd50, cd90) = p50_p90(&cold_d);
    let (cv50, cv90) = p50_p90(&cold_v);
    let (wd50, wd90) = p50_p90(&warm.samples[W_DIRECT]);
    let (wv50, wv90) = p50_p90(&warm.samples[W_VIA]);
    let (wg50, wg90) = p50_p90(&warm.samples[W_BY_DIGEST]);
    let (wt50, _) = p50_p90(&warm.samples[W_TAG]);
    let (wvd50, wvd90) = p50_p90(&warm.samples[W_VIA_DIGEST]);
    let cr_d: Vec<u64> = create.pairs.iter().map(|p| p[DIRECT]).collect();
    let cr_v: Vec<u64> = create.pairs.iter().map(|p| p[VIA]).collect();
    let (crd50, crd90) = p50_p90(&cr_d);
    let (crv50, crv90) = p50_p90(&cr_v);
    let (rjd50, rjd90) = p50_p90(&create.rejects[DIRECT]);
    let (rjv50, rjv90) = p50_p90(&create.rejects[VIA]);

    let _ = writeln!(out, "| metric | direct | via pullgate | added | goal | met? |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
    let row = |out: &mut String, name: &str, d: f64, v: f64, goal: Option<f64>| {
        let added = v - d;
        let (g, m) = match goal {
            Some(g) => (format!("added p50 <= {}", fmt_ms(g)), met(added <= g).to_string()),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(out, "| {name} | {} | {} | {} ({:.2}x) | {g} | {m} |", fmt_ms(d), fmt_ms(v), signed_ms(added), v / d);
    };
    row(out, "PullImage, cold decision, p50", cd50, cv50, Some(10.0));
    row(out, "PullImage, cold decision, p90", cd90, cv90, None);
    row(out, "PullImage, warm decision (image present), p50", wd50, wv50, Some(0.1));
    row(out, "PullImage, warm decision (image present), p90", wd90, wv90, None);
    // pullgate forwards the pull pinned to the digest, which spares containerd its own tag
    // resolve: against the same pull by digest sent directly, containerd's work is identical
    // and the difference is pullgate's own.
    row(out, "PullImage, warm, against the direct pull **by digest** (same containerd work), p50", wg50, wv50, Some(0.1));
    row(out, "PullImage, warm, against the direct pull by digest, p90", wg90, wv90, None);
    // The goal of issue 16 for a cached decision: a pull **by digest** (no tag to resolve, so no
    // mirror request) through pullgate against the same pull sent directly.
    row(out, "PullImage **by digest**, decision cached, against the direct pull by digest, p50", wg50, wvd50, Some(0.1));
    row(out, "PullImage by digest, decision cached, p90", wg90, wvd90, None);
    row(out, "CreateContainer, warm decision, p50", crd50, crv50, Some(0.1));
    row(out, "CreateContainer, warm decision, p90", crd90, crv90, None);
    row(out, "CreateContainer refused by containerd (unknown sandbox; pullgate does all its work), p50", rjd50, rjv50, Some(0.1));
    row(out, "CreateContainer refused by containerd, p90", rjd90, rjv90, None);

    let sf = &acc.single_flight;
    let _ = writeln!(
        out,
        "| {SINGLE_FLIGHT_CALLERS} concurrent PullImage of one new digest: verifications (pullgate's metrics; cache lookups miss {}, joined {}, hit {}) | | {} | | exactly 1 | {} |",
        sf.lookups[0],
        sf.lookups[1],
        sf.lookups[2],
        sf.verifications,
        met(sf.verifications == 1.0)
    );

    let _ = writeln!(out, "\nPaired differences (via - direct, same image / adjacent calls), median and IQR/sqrt(n):\n");
    let _ = writeln!(out, "- cold PullImage: {} over {} images", paired(&cold.pairs), cold.pairs.len());
    let _ = writeln!(out, "- CreateContainer: {} over {} pairs", paired(&create.pairs), create.pairs.len());
    for (name, direct, via) in [
        (
            "PullImage by digest, decision cached, against the direct pull by digest",
            &warm.samples[W_BY_DIGEST],
            &warm.samples[W_VIA_DIGEST],
        ),
        ("PullImage by tag, warm decision, against the direct pull by tag", &warm.samples[W_DIRECT], &warm.samples[W_VIA]),
        ("CreateContainer refused by containerd", &create.rejects[DIRECT], &create.rejects[VIA]),
    ] {
        let pairs = block_pairs(direct, via, plan.block);
        let _ = writeln!(
            out,
            "- {name}: {} over {} rounds (per round, the median of its {}-call block via pullgate minus that of the adjacent direct block)",
            paired(&pairs),
            pairs.len(),
            plan.block
        );
    }
    let _ = writeln!(out, "- containerd's answer to the refused creates: `{}`", create.reject_answer);
    let _ = writeln!(
        out,
        "- cold pulls after which ImageStatus by the pulled tag, asked at once, found nothing yet: direct {}, via pullgate {} of {} (longest wait {:.1} ms)",
        cold.late[DIRECT],
        cold.late[VIA],
        plan.cold + plan.warmup,
        cold.late_max_ms
    );
    // The same-run floor of a cold decision: the mirror's own time for the requests that must
    // follow one another, plus the verification's crypto (pullgate's metric).
    let (chain50, _) = p50_p90(&cold.chain);
    let (vsum, vn) = acc.cold_parts.verify;
    let verify_ms = if vn >= 1.0 { vsum / vn * 1000.0 } else { 0.0 };
    let decision50 = pct_f(&acc.cold_decision, 50.0);
    let floor = chain50 + verify_ms;
    let _ = writeln!(
        out,
        "- floor of a cold decision on this mirror, this run: {} (tag `GET` -> referrers tag index -> signature manifest -> bundle blob, one after the other on one keep-alive connection from a plain client, p50 {}; + verification mean {}); pullgate's decision p50 {} = floor {} ({:.2}x); cold PullImage added p50 {} = floor {}",
        fmt_ms(floor),
        fmt_ms(chain50),
        fmt_ms(verify_ms),
        fmt_ms(decision50),
        signed_ms(decision50 - floor),
        decision50 / floor,
        signed_ms(cv50 - cd50),
        signed_ms(cv50 - cd50 - floor)
    );

    let _ = writeln!(
        out,
        "\nWhere the time goes (pullgate's own accounts: audit `latency_ms` = the decision; log `ms` = the whole call inside pullgate):\n"
    );
    let _ = writeln!(out, "| part | p50 | p90 |");
    let _ = writeln!(out, "|---|---:|---:|");
    let f = |out: &mut String, name: String, v: &[f64]| {
        let _ = writeln!(out, "| {name} | {} | {} |", fmt_ms(pct_f(v, 50.0)), fmt_ms(pct_f(v, 90.0)));
    };
    f(
        out,
        format!(
            "cold: decision (tag resolve + manifest + discovery + verify; {} of {} from cache)",
            acc.cold_cached,
            acc.cold_decision.len()
        ),
        &acc.cold_decision,
    );
    f(out, "cold: whole call in pullgate (decision + containerd pull by digest + tag record)".into(), &acc.cold_call);
    f(
        out,
        format!(
            "warm: decision (tag resolve on the mirror + cache hit; {} of {} not from cache)",
            acc.warm_uncached,
            acc.warm_decision.len()
        ),
        &acc.warm_decision,
    );
    f(out, "warm: whole call in pullgate".into(), &acc.warm_call);
    f(
        out,
        format!(
            "warm by digest: decision (cache hit, no mirror request; {} of {} not from cache)",
            acc.digest_uncached,
            acc.digest_decision.len()
        ),
        &acc.digest_decision,
    );
    f(out, "warm by digest: whole call in pullgate (decision + containerd's pull)".into(), &acc.digest_call);
    f(
        out,
        format!("CreateContainer: decision (cache hit; {} of {} not from cache)", acc.create_uncached, acc.create_decision.len()),
        &acc.create_decision,
    );
    f(out, "CreateContainer: whole call in pullgate (ImageStatus lookup + decision + containerd's create)".into(), &acc.create_call);
    f(
        out,
        "CreateContainer refused by containerd: whole call in pullgate (ImageStatus lookup + decision + containerd's refusal)".into(),
        &acc.reject_call,
    );

    let _ = writeln!(out, "\npullgate's metrics (means of the duration histograms; cold phase includes the warm-up images):\n");
    let _ = writeln!(out, "| part | cold phase | warm phase |");
    let _ = writeln!(out, "|---|---:|---:|");
    let _ = writeln!(
        out,
        "| mirror `resolve` operations (tag -> digest, manifest) | {} | {} |",
        mean_ms(acc.cold_parts.resolve),
        mean_ms(acc.warm_parts.resolve)
    );
    let _ = writeln!(
        out,
        "| mirror discovery (all steps, concurrent; on a cold decision it overlaps the manifest fetch, which it includes) | {} | {} |",
        mean_ms(acc.cold_parts.discover),
        mean_ms(acc.warm_parts.discover)
    );
    let _ = writeln!(
        out,
        "| verification (crypto, on the blocking pool) | {} | {} |",
        mean_ms(acc.cold_parts.verify),
        mean_ms(acc.warm_parts.verify)
    );

    if !acc.requests.kinds.is_empty() {
        let _ = writeln!(out, "\nRegistry requests of the cold phase, as pullgate timed them (`PULLGATE_BENCH_PROFILE=1`: debug log of the registry client; send to full answer, permit wait included):\n");
        let _ = writeln!(out, "| request | n | p50 | p90 |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for (kind, v) in &acc.requests.kinds {
            let _ = writeln!(out, "| {kind} | {} | {} | {} |", v.len(), fmt_ms(pct_f(v, 50.0)), fmt_ms(pct_f(v, 90.0)));
        }
        if !acc.requests.gaps.is_empty() {
            let _ = writeln!(out, "\npullgate's own time on the chain of a cold decision (from one request's full answer to the send of the one it names; times of the same log):\n");
            let _ = writeln!(out, "| between | n | p50 | p90 | mean |");
            let _ = writeln!(out, "|---|---:|---:|---:|---:|");
            for (step, v) in &acc.requests.gaps {
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let _ =
                    writeln!(out, "| {step} | {} | {} | {} | {} |", v.len(), fmt_ms(pct_f(v, 50.0)), fmt_ms(pct_f(v, 90.0)), fmt_ms(mean));
            }
        }
    }

    let _ = writeln!(out, "\nWarm PullImage, the parts of pullgate's path measured alone from the client (p50):\n");
    let _ = writeln!(out, "| step | p50 |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(out, "| containerd PullImage by tag (direct baseline) | {} |", fmt_ms(wd50));
    let _ = writeln!(
        out,
        "| containerd PullImage by digest (what pullgate forwards) | {} ({} vs by tag) |",
        fmt_ms(wg50),
        signed_ms(wg50 - wd50)
    );
    let _ = writeln!(out, "| tag record step (`ContainerdImages::tag` of this build, record already in place) | {} |", fmt_ms(wt50));
    let _ = writeln!(out, "| pullgate decision (audit latency_ms, p50) | {} |", fmt_ms(pct_f(&acc.warm_decision, 50.0)));
    let rest = (wv50 - wd50) - (wg50 - wd50) - wt50 - pct_f(&acc.warm_decision, 50.0);
    let _ = writeln!(out, "| rest (proxying, decoding, audit and log writes, scheduling) | {} |", signed_ms(rest));
    let _ = writeln!(out, "| = added p50 | {} |", signed_ms(wv50 - wd50));
    let _ = writeln!(
        out,
        "\nFor reference, one `HEAD` of the tag on the mirror sent from the bench (a new TCP connection each), interleaved with the above: p50 {}, p90 {}.",
        fmt_ms(p50_p90(&warm.samples[W_HEAD]).0),
        fmt_ms(p50_p90(&warm.samples[W_HEAD]).1)
    );
}
