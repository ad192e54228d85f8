//! CRI proxy overhead: the same unary CRI calls sent directly to a real containerd and through
//! the real `pullgate` binary, measured in one run.
//!
//! ```text
//! cargo bench --bench proxy                         # full run, ~1 minute after the build; as root
//! PULLGATE_BENCH_QUICK=1 cargo bench --bench proxy  # smoke run in seconds (CI)
//! ```
//!
//! Cargo builds the `pullgate` binary in the bench (= release) profile before running this and
//! passes its path (`target/release/pullgate`); set `PULLGATE_BIN` to measure another build
//! (`target/dist/pullgate`, from `cargo build --profile dist`, is what the Debian package ships).
//! `PULLGATE_BENCH_ARGS` adds arguments to `pullgate serve`. `PULLGATE_BENCH_B_BIN` and/or
//! `PULLGATE_BENCH_B_ARGS` add a second pullgate, measured interleaved with the first (A/B under
//! the same machine noise). `PULLGATE_BENCH_FRAME_RELAY=1` runs A with the frame-level relay off
//! and B (the same binary) with it on (`cri.frame_relay`). `PULLGATE_BENCH_ROUNDS`, `_SEQ_CALLS`, `_LOAD_MS` and `_STARTS`
//! override the plan. Without root the bench reports itself skipped.
//!
//! What is measured (see BENCHMARKS.md for the figures):
//! - sequential latency: one caller, one call at a time, p50 and p99 per round;
//! - throughput with 64 concurrent callers multiplexed over one shared HTTP/2 connection, as
//!   kubelet does;
//! - pullgate's RSS during that load (VmRSS sampled, VmHWM at the end);
//! - startup: spawning `pullgate serve` until a first Version call on its socket succeeds;
//! - the floor of one extra hop: a trivial byte-copy relay between two unix sockets (this bench
//!   re-run as its own process, `tokio::io::copy_bidirectional` on a current-thread runtime, as
//!   pullgate runs), measured interleaved like pullgate, so pullgate's cost above that floor is
//!   in the same table.
//!
//! The calls are Version, ImageStatus (of a pulled image), ListImages and ListContainers, sent
//! with the raw-bytes gRPC client of the test support code: requests are encoded once, so the
//! client's protobuf cost is the same on both paths. Direct and via-pullgate runs are
//! interleaved (blocks of calls, alternating order per round) so that drift in the machine's
//! load hits both alike; every figure is the median of the per-round values. The client runs on
//! a current-thread tokio runtime; client, pullgate and containerd share the machine's cores.

#[path = "../tests/support/cri.rs"]
mod cri;
#[path = "../tests/support/daemon.rs"]
mod daemon;
#[path = "../tests/support/testbed.rs"]
mod testbed;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemon::Daemon;
use k8s_cri::v1 as k8s;
use prost::Message;
use testbed::Testbed;
use tonic::transport::Channel;

/// How much to measure.
struct Plan {
    rounds: usize,
    /// Sequential calls per path per round.
    seq_calls: usize,
    /// Calls per block; direct and via blocks alternate within a round.
    seq_block: usize,
    warmup_calls: usize,
    callers: usize,
    /// Load duration per path per round.
    load: Duration,
    startups: usize,
}

impl Plan {
    /// The full or quick plan; `PULLGATE_BENCH_ROUNDS`, `_SEQ_CALLS`, `_LOAD_MS` and `_STARTS`
    /// override single values.
    fn from_env() -> Plan {
        let mut plan = Self::base();
        let get = |k: &str| std::env::var(format!("PULLGATE_BENCH_{k}")).ok().and_then(|v| v.parse::<u64>().ok());
        if let Some(v) = get("ROUNDS") {
            plan.rounds = v.max(1) as usize;
        }
        if let Some(v) = get("SEQ_CALLS") {
            plan.seq_calls = v.max(1) as usize;
        }
        if let Some(v) = get("LOAD_MS") {
            plan.load = Duration::from_millis(v.max(1));
        }
        if let Some(v) = get("STARTS") {
            plan.startups = v as usize;
        }
        plan
    }

    fn base() -> Plan {
        let quick = std::env::var("PULLGATE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        if quick {
            Plan { rounds: 2, seq_calls: 200, seq_block: 50, warmup_calls: 100, callers: 64, load: Duration::from_millis(300), startups: 3 }
        } else {
            Plan { rounds: 5, seq_calls: 2000, seq_block: 100, warmup_calls: 1000, callers: 64, load: Duration::from_secs(3), startups: 20 }
        }
    }
}

/// One pre-encoded unary call.
#[derive(Clone)]
struct Call {
    name: &'static str,
    path: &'static str,
    message: Bytes,
}

fn calls(image: &str) -> Vec<Call> {
    let enc = |m: &dyn Fn() -> Vec<u8>| Bytes::from(m());
    vec![
        Call {
            name: "Version",
            path: "/runtime.v1.RuntimeService/Version",
            message: enc(&|| k8s::VersionRequest { version: "v1".into() }.encode_to_vec()),
        },
        Call {
            name: "ImageStatus",
            path: "/runtime.v1.ImageService/ImageStatus",
            message: enc(&|| {
                k8s::ImageStatusRequest { image: Some(k8s::ImageSpec { image: image.into(), ..Default::default() }), verbose: false }
                    .encode_to_vec()
            }),
        },
        Call {
            name: "ListImages",
            path: "/runtime.v1.ImageService/ListImages",
            message: enc(&|| k8s::ListImagesRequest { filter: None }.encode_to_vec()),
        },
        Call {
            name: "ListContainers",
            path: "/runtime.v1.RuntimeService/ListContainers",
            message: enc(&|| k8s::ListContainersRequest { filter: None }.encode_to_vec()),
        },
    ]
}

async fn call(ch: &Channel, c: &Call) -> Result<Bytes, String> {
    cri::raw_unary(ch.clone(), c.path, c.message.clone())
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{} failed: {} {}", c.name, s.code(), s.message()))
}

const DIRECT: usize = 0;
const VIA: usize = 1;
/// The byte-copy relay: the floor of one extra hop.
const RELAY: usize = 2;
/// The optional second pullgate.
const B: usize = 3;
const PATH_NAMES: [&str; 4] = ["direct", "via pullgate", "via byte-copy relay", "via pullgate B"];

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
    if let Ok(spec) = std::env::var(RELAY_ENV) {
        relay_main(&spec);
    }
    started();
    if let Some(reason) = testbed::unavailable_reason() {
        eprintln!("proxy bench skipped: {reason}");
        return;
    }
    match run() {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("proxy bench failed: {e}");
            std::process::exit(1);
        }
    }
}

fn env_args(key: &str) -> Vec<String> {
    std::env::var(key).unwrap_or_default().split_whitespace().map(String::from).collect()
}

/// A pullgate under test: binary and extra `serve` arguments.
struct Variant {
    bin: PathBuf,
    args: Vec<String>,
}

impl Variant {
    fn describe(&self) -> String {
        let mut s = self.bin.display().to_string();
        if !self.args.is_empty() {
            s += &format!(" serve ... {}", self.args.join(" "));
        }
        s
    }

    fn start(&self, socket: &Path, upstream: &Path) -> Result<Daemon, String> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve").arg("--listen").arg(socket).arg("--upstream").arg(upstream).args(&self.args);
        Daemon::start_with(socket, &mut cmd)
    }
}

/// Sets up, measures and tears down (`Testbed` and `Daemon` clean up on drop, on error too).
fn run() -> Result<String, String> {
    let plan = Plan::from_env();
    // PULLGATE_BENCH_FRAME_RELAY=1: A runs with the frame-level relay off and B (A's binary
    // unless PULLGATE_BENCH_B_BIN names another) with it on (`cri.frame_relay`, issue 16), so
    // both modes are measured side by side with the floor.
    let frame_relay = std::env::var("PULLGATE_BENCH_FRAME_RELAY").is_ok_and(|v| !v.is_empty() && v != "0");
    let relay_config = |on: bool| -> Result<Vec<String>, String> {
        let cfg = std::env::temp_dir().join(format!("pullgate-bench-frame-relay-{on}-{}.yaml", std::process::id()));
        std::fs::write(&cfg, format!("cri:\n  frame_relay: {on}\n")).map_err(|e| format!("cannot write {}: {e}", cfg.display()))?;
        Ok(vec!["--config".to_string(), cfg.display().to_string()])
    };
    let mut a = Variant { bin: pullgate_binary("PULLGATE_BIN")?, args: env_args("PULLGATE_BENCH_ARGS") };
    if frame_relay {
        a.args.extend(relay_config(false)?);
    }
    // Optional second pullgate, measured interleaved with the first (A/B comparisons under the
    // same machine noise): PULLGATE_BENCH_B_BIN and/or PULLGATE_BENCH_B_ARGS.
    let b = if frame_relay || std::env::var_os("PULLGATE_BENCH_B_BIN").is_some() || std::env::var_os("PULLGATE_BENCH_B_ARGS").is_some() {
        let bin = if std::env::var_os("PULLGATE_BENCH_B_BIN").is_some() { pullgate_binary("PULLGATE_BENCH_B_BIN")? } else { a.bin.clone() };
        let mut args = env_args("PULLGATE_BENCH_B_ARGS");
        if frame_relay {
            args.extend(relay_config(true)?);
        }
        Some(Variant { bin, args })
    } else {
        None
    };
    progress!("pullgate: {}", a.describe());
    if let Some(b) = &b {
        progress!("pullgate B: {}", b.describe());
    }
    progress!("starting testbed (containerd + registry)...");
    let tb = Testbed::start("bench", &[])?;
    let direct_sock = tb.containerd_sock();
    let mut socks = vec![direct_sock.clone(), tb.dir.join("pullgate.sock"), tb.dir.join("relay.sock")];
    let mut daemons = vec![a.start(&socks[VIA], &direct_sock)?];
    let relay = start_relay(&socks[RELAY], &direct_sock)?;
    if let Some(b) = &b {
        socks.push(tb.dir.join("pullgate-b.sock"));
        daemons.push(b.start(&socks[B], &direct_sock)?);
    }
    // Processes whose RSS is sampled: pullgate, the relay, pullgate B.
    let mut pids: Vec<u32> = vec![daemons[0].pid(), relay.pid()];
    pids.extend(daemons.get(1).map(Daemon::pid));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let image = tb.get("DEMO_IMAGE").to_string();
    let calls = calls(&image);
    let chans: Vec<Channel> = {
        let _rt = rt.enter();
        socks.iter().map(|s| cri::channel(s)).collect()
    };

    rt.block_on(async {
        progress!("pulling {image} into containerd");
        let pull =
            k8s::PullImageRequest { image: Some(k8s::ImageSpec { image: image.clone(), ..Default::default() }), ..Default::default() };
        cri::images(&direct_sock).pull_image(pull).await.map_err(|e| format!("PullImage {image}: {e}"))?;
        // The same answer both ways, or the comparison means nothing.
        for c in &calls {
            let d = call(&chans[DIRECT], c).await?;
            for ch in &chans[1..] {
                if call(ch, c).await? != d {
                    return Err(format!("{}: response through pullgate differs from the direct one", c.name));
                }
            }
        }
        Ok::<_, String>(())
    })?;

    let seq = rt.block_on(sequential(&plan, &chans, &calls))?;
    let mut procs = vec![("client (bench)".to_string(), std::process::id())];
    if let Ok(pid) = tb.get("CONTAINERD_PID").parse() {
        procs.push(("containerd".to_string(), pid));
    }
    procs.push(("pullgate".to_string(), pids[0]));
    procs.push(("relay".to_string(), pids[1]));
    if let Some(pid) = pids.get(2) {
        procs.push(("pullgate B".to_string(), *pid));
    }
    let load = rt.block_on(concurrent(&plan, &chans, &calls, &pids, procs))?;
    drop(chans);
    drop(rt);
    let startup = startups(&plan, &a, &tb.dir, &direct_sock)?;
    let log_lines = daemons[0].logs().lines().count();
    drop(daemons);
    drop(relay);

    let mut out = String::new();
    write_report(&mut out, &plan, &seq, &load, &startup, &a, b.as_ref());
    let _ = writeln!(out, "\n(pullgate wrote {log_lines} log lines during the run, at the default `info` level.)");
    progress!("tearing down the testbed");
    drop(tb);
    Ok(out)
}

// --- the floor: a byte-copy relay ------------------------------------------------------------

/// Set (to `LISTEN\nUPSTREAM`) when this bench runs as the byte-copy relay.
const RELAY_ENV: &str = "PULLGATE_BENCH_RELAY";

/// Starts this bench's own executable as the relay and waits until it accepts.
fn start_relay(listen: &Path, upstream: &Path) -> Result<Daemon, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.env(RELAY_ENV, format!("{}\n{}", listen.display(), upstream.display()));
    Daemon::start_with(listen, &mut cmd)
}

/// The relay process: every connection accepted on LISTEN is joined to a new connection to
/// UPSTREAM and bytes are copied both ways until either side closes. No HTTP/2, no parsing.
fn relay_main(spec: &str) -> ! {
    let (listen, upstream) = spec.split_once('\n').unwrap_or((spec, ""));
    let (listen, upstream) = (PathBuf::from(listen), PathBuf::from(upstream));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result: std::io::Result<()> = rt.block_on(async move {
        let _ = std::fs::remove_file(&listen);
        let listener = tokio::net::UnixListener::bind(&listen)?;
        loop {
            let (mut caller, _) = listener.accept().await?;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::UnixStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut caller, &mut up).await;
                }
            });
        }
    });
    eprintln!("relay failed: {result:?}");
    std::process::exit(1)
}

fn pullgate_binary(var: &str) -> Result<PathBuf, String> {
    let bin = match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        // Set by cargo for benchmarks: the binary built in this (release) profile.
        None => PathBuf::from(env!("CARGO_BIN_EXE_pullgate")),
    };
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("no pullgate binary at {}; build it with `cargo build --release` (or point {var} at one)", bin.display()))
    }
}

// --- sequential latency ------------------------------------------------------------------------

struct Sequential {
    /// Per round, per path: p50, p99 over all calls (ns).
    rounds: Vec<Vec<(u64, u64)>>,
    /// Per call kind, per round, per path: p50 (ns).
    per_call: Vec<(&'static str, Vec<Vec<u64>>)>,
}

/// The order paths take in a round: rotated each round so none is always first.
fn order(round: usize, n: usize) -> Vec<usize> {
    (0..n).map(|i| (i + round) % n).collect()
}

async fn sequential(plan: &Plan, chans: &[Channel], calls: &[Call]) -> Result<Sequential, String> {
    progress!("sequential: warm-up, then {} rounds x {} calls per path", plan.rounds, plan.seq_calls);
    for ch in chans {
        for i in 0..plan.warmup_calls {
            call(ch, &calls[i % calls.len()]).await?;
        }
    }
    let n = chans.len();
    let mut result = Sequential { rounds: vec![], per_call: calls.iter().map(|c| (c.name, vec![])).collect() };
    for round in 0..plan.rounds {
        // samples[path][call kind]
        let mut samples: Vec<Vec<Vec<u64>>> = vec![vec![Vec::with_capacity(plan.seq_calls); calls.len()]; n];
        let mut done = 0;
        while done < plan.seq_calls {
            let k = plan.seq_block.min(plan.seq_calls - done);
            for p in order(round, n) {
                for i in done..done + k {
                    let kind = i % calls.len();
                    let t = Instant::now();
                    call(&chans[p], &calls[kind]).await?;
                    samples[p][kind].push(t.elapsed().as_nanos() as u64);
                }
            }
            done += k;
        }
        let mut r = vec![];
        for s in &samples {
            let mut all: Vec<u64> = s.iter().flatten().copied().collect();
            all.sort_unstable();
            r.push((pct(&all, 50.0), pct(&all, 99.0)));
        }
        for (kind, (_, v)) in result.per_call.iter_mut().enumerate() {
            v.push(
                samples
                    .iter_mut()
                    .map(|s| {
                        s[kind].sort_unstable();
                        pct(&s[kind], 50.0)
                    })
                    .collect(),
            );
        }
        progress!(
            "  round {}: p50 {} us, p99 {} us (direct / via / relay{})",
            round + 1,
            r.iter().map(|x| format!("{:.1}", us(x.0))).collect::<Vec<_>>().join(" / "),
            r.iter().map(|x| format!("{:.1}", us(x.1))).collect::<Vec<_>>().join(" / "),
            if n > B { " / B" } else { "" }
        );
        result.rounds.push(r);
    }
    Ok(result)
}

// --- concurrent throughput and RSS -------------------------------------------------------------

struct Load {
    /// Per round, per path: calls/s.
    rounds: Vec<Vec<f64>>,
    /// Per path, summed over rounds: calls, and CPU time (ns) of each process in `procs`.
    cpu: Vec<(u64, Vec<u64>)>,
    /// The processes whose CPU time is measured: the client (this bench), containerd, pullgate(s).
    procs: Vec<(String, u32)>,
    /// Per pullgate: max VmRSS sampled, VmHWM at the end (KiB).
    rss_kib: Vec<(u64, u64)>,
    /// Per pullgate: VmRSS before the load, and the largest RssAnon and RssFile sampled (KiB).
    rss_parts_kib: Vec<(u64, u64, u64)>,
}

async fn concurrent(plan: &Plan, chans: &[Channel], calls: &[Call], pids: &[u32], procs: Vec<(String, u32)>) -> Result<Load, String> {
    progress!("concurrent: {} callers on one connection, {} rounds x {:?} per path", plan.callers, plan.rounds, plan.load);
    let idle: Vec<u64> = pids.iter().map(|p| proc_status_kib(*p, "VmRSS:").unwrap_or(0)).collect();
    let samplers: Vec<RssSampler> = pids.iter().map(|p| RssSampler::start(*p)).collect();
    for ch in chans {
        load_once(plan.callers, ch, calls, plan.load / 4).await?;
    }
    let mut rounds = vec![];
    let mut cpu = vec![(0u64, vec![0u64; procs.len()]); chans.len()];
    for round in 0..plan.rounds {
        let mut r = vec![0.0; chans.len()];
        for p in order(round, chans.len()) {
            let before: Vec<u64> = procs.iter().map(|(_, pid)| cpu_ns(*pid)).collect();
            let (rate, n) = load_once(plan.callers, &chans[p], calls, plan.load).await?;
            r[p] = rate;
            cpu[p].0 += n;
            for (i, (_, pid)) in procs.iter().enumerate() {
                cpu[p].1[i] += cpu_ns(*pid).saturating_sub(before[i]);
            }
        }
        progress!(
            "  round {}: {} calls/s (direct / via / relay{}), ratio {}",
            round + 1,
            r.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" / "),
            if r.len() > B { " / B" } else { "" },
            r[1..].iter().map(|x| format!("{:.3}", x / r[0])).collect::<Vec<_>>().join(" / ")
        );
        rounds.push(r);
    }
    let mut rss_kib = vec![];
    let mut rss_parts_kib = vec![];
    for ((s, pid), idle) in samplers.into_iter().zip(pids).zip(idle) {
        let [rss, anon, file] = s.stop();
        rss_kib.push((rss, proc_status_kib(*pid, "VmHWM:").unwrap_or(0)));
        rss_parts_kib.push((idle, anon, file));
    }
    Ok(Load { rounds, rss_kib, rss_parts_kib, cpu, procs })
}

/// `callers` tasks calling back-to-back on one channel for `duration`; returns calls/s and calls.
async fn load_once(callers: usize, ch: &Channel, calls: &[Call], duration: Duration) -> Result<(f64, u64), String> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for t in 0..callers {
        let ch = ch.clone();
        let calls = calls.to_vec();
        set.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                call(&ch, &calls[(t + n as usize) % calls.len()]).await?;
                n += 1;
            }
            Ok::<_, String>(n)
        });
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        total += r.map_err(|e| e.to_string())??;
    }
    Ok((total as f64 / start.elapsed().as_secs_f64(), total))
}

/// User + system CPU time of a process (all threads), from /proc/PID/stat, in ns.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the command name (which may hold spaces) start at ") ".
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 =
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    ticks * 10_000_000
}

/// Samples a process's VmRSS, RssAnon and RssFile every 10 ms on its own thread; keeps the
/// largest of each.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<[u64; 3]>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = [0; 3];
            while !flag.load(Ordering::Relaxed) {
                for (m, key) in max.iter_mut().zip(["VmRSS:", "RssAnon:", "RssFile:"]) {
                    *m = (*m).max(proc_status_kib(pid, key).unwrap_or(0));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            max
        });
        RssSampler { stop, thread }
    }

    fn stop(self) -> [u64; 3] {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or([0; 3])
    }
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

// --- startup -----------------------------------------------------------------------------------

struct Startup {
    /// Per start: spawn -> socket accepts (ns), spawn -> first Version answered (ns), and the
    /// `startup_ms` pullgate logged.
    runs: Vec<(u64, u64, Option<f64>)>,
}

fn startups(plan: &Plan, v: &Variant, dir: &Path, upstream: &Path) -> Result<Startup, String> {
    progress!("startup: {} starts", plan.startups);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let version = grpc_frame(&k8s::VersionRequest { version: "v1".into() }.encode_to_vec());
    let mut runs = vec![];
    for i in 0..plan.startups {
        let sock = dir.join(format!("start{i}.sock"));
        let mut cmd = Command::new(&v.bin);
        cmd.arg("serve").arg("--listen").arg(&sock).arg("--upstream").arg(upstream).args(&v.args);
        let t0 = Instant::now();
        let mut d = Daemon::spawn(&sock, &mut cmd)?;
        let deadline = t0 + Duration::from_secs(10);
        let stream = loop {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
                break s;
            }
            if let Some(status) = d.exited() {
                return Err(format!("pullgate exited at start ({status}):\n{}", d.logs()));
            }
            if Instant::now() > deadline {
                return Err(format!("pullgate did not accept on {} within 10s:\n{}", sock.display(), d.logs()));
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        let t_connect = t0.elapsed();
        rt.block_on(first_version(stream, version.clone()))?;
        let t_version = t0.elapsed();
        d.terminate(Duration::from_secs(10));
        let logged = d
            .logs()
            .lines()
            .find(|l| l.contains("pullgate is accepting CRI calls"))
            .and_then(|l| l.split("startup_ms=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok());
        runs.push((t_connect.as_nanos() as u64, t_version.as_nanos() as u64, logged));
    }
    Ok(Startup { runs })
}

/// One Version call on an already connected socket, with a bare hyper HTTP/2 client.
async fn first_version(stream: std::os::unix::net::UnixStream, body: Bytes) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let io = hyper_util::rt::TokioIo::new(tokio::net::UnixStream::from_std(stream).map_err(|e| e.to_string())?);
    let (mut send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::post("http://localhost/runtime.v1.RuntimeService/Version")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| format!("Version: {e}"))?;
    let status = resp.headers().get("grpc-status").cloned();
    let collected = resp.into_body().collect().await.map_err(|e| format!("Version body: {e}"))?;
    let status = status.or_else(|| collected.trailers().and_then(|t| t.get("grpc-status").cloned()));
    drop(send);
    // Close the connection now (the runtime does not run between calls), so pullgate's SIGTERM
    // drain does not wait for it.
    conn.abort();
    let _ = conn.await;
    match status.as_ref().map(|s| s.as_bytes()) {
        Some(b"0") => Ok(()),
        other => Err(format!("first Version call through pullgate failed: grpc-status {other:?}")),
    }
}

/// One uncompressed gRPC message frame.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

// --- report ------------------------------------------------------------------------------------

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median_f(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// CPU time (us) per call of the process named `proc` while path `path` carried the load.
fn cpu_per_call(load: &Load, path: usize, proc: &str) -> f64 {
    let (n, ns) = &load.cpu[path];
    let i = load.procs.iter().position(|(name, _)| name == proc);
    i.map(|i| ns[i] as f64 / 1000.0 / (*n).max(1) as f64).unwrap_or(f64::NAN)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

fn write_report(out: &mut String, plan: &Plan, seq: &Sequential, load: &Load, st: &Startup, a: &Variant, b: Option<&Variant>) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let _ = writeln!(out, "\n## CRI proxy overhead\n");
    let _ = writeln!(
        out,
        "{cores} cores; {} rounds; sequential: {} calls per path per round; load: {} callers on one connection for {:?} per path per round; {} starts.\npullgate: {}\n",
        plan.rounds,
        plan.seq_calls,
        plan.callers,
        plan.load,
        plan.startups,
        a.describe()
    );
    // Median over rounds of a per-round value.
    #[allow(clippy::type_complexity)] // a closure over rows of (p50, p99) pairs
    let ms = |f: &dyn Fn(&Vec<(u64, u64)>) -> f64| median_f(seq.rounds.iter().map(f).collect());
    let ml = |f: &dyn Fn(&Vec<f64>) -> f64| median_f(load.rounds.iter().map(f).collect());
    let p50 = [ms(&|r| us(r[DIRECT].0)), ms(&|r| us(r[VIA].0))];
    let p99 = [ms(&|r| us(r[DIRECT].1)), ms(&|r| us(r[VIA].1))];
    // Added latency: median over rounds of (via - direct) in that round.
    let add50 = ms(&|r| us(r[VIA].0) - us(r[DIRECT].0));
    let add99 = ms(&|r| us(r[VIA].1) - us(r[DIRECT].1));
    let tput = [ml(&|r| r[DIRECT]), ml(&|r| r[VIA])];
    let ratio = ml(&|r| r[VIA] / r[DIRECT]);
    let (max_rss, hwm) = load.rss_kib[0];
    let rss_mib = max_rss.max(hwm) as f64 / 1024.0;
    let connect_ms = median_f(st.runs.iter().map(|r| r.0 as f64 / 1e6).collect());
    let version_ms = median_f(st.runs.iter().map(|r| r.1 as f64 / 1e6).collect());
    let logged: Vec<f64> = st.runs.iter().filter_map(|r| r.2).collect();

    // The floor of one extra hop, measured the same way.
    let relay50 = ms(&|r| us(r[RELAY].0));
    let relay99 = ms(&|r| us(r[RELAY].1));
    let relay_add50 = ms(&|r| us(r[RELAY].0) - us(r[DIRECT].0));
    let relay_tput = ml(&|r| r[RELAY]);
    let relay_ratio = ml(&|r| r[RELAY] / r[DIRECT]);
    let over_floor50 = add50 / relay_add50;
    let tput_vs_floor = ml(&|r| r[VIA] / r[RELAY]);
    let pullgate_cpu = cpu_per_call(load, VIA, "pullgate");
    let image_status_add = seq
        .per_call
        .iter()
        .find(|(name, _)| *name == "ImageStatus")
        .map(|(_, rounds)| median_f(rounds.iter().map(|r| us(r[VIA]) - us(r[DIRECT])).collect()))
        .unwrap_or(f64::NAN);

    let _ = writeln!(out, "Goals of issue 16 (ratios within this run):\n");
    let _ = writeln!(out, "| metric | direct | via pullgate | via byte-copy relay | pullgate | goal | met? |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|---|");
    let _ = writeln!(
        out,
        "| sequential latency p50 | {:.1} us | {:.1} us | {relay50:.1} us | {:.2}x direct (+{add50:.1} us) | <= 1.25x direct | {} |",
        p50[0],
        p50[1],
        p50[1] / p50[0],
        met(p50[1] / p50[0] <= 1.25)
    );
    let _ = writeln!(
        out,
        "| sequential latency p99 | {:.1} us | {:.1} us | {relay99:.1} us | {:.2}x direct (+{add99:.1} us) | <= 1.4x direct | {} |",
        p99[0],
        p99[1],
        p99[1] / p99[0],
        met(p99[1] / p99[0] <= 1.4)
    );
    let _ = writeln!(
        out,
        "| throughput, {} callers, one connection | {:.0} calls/s | {:.0} calls/s | {relay_tput:.0} calls/s ({relay_ratio:.3}) | {ratio:.3} of direct | >= 0.9 | {} |",
        plan.callers,
        tput[0],
        tput[1],
        met(ratio >= 0.9)
    );
    let _ = writeln!(
        out,
        "| pullgate CPU per call under that load | - | - | {:.1} us (relay) | {pullgate_cpu:.1} us | <= 12 us | {} |",
        cpu_per_call(load, RELAY, "relay"),
        met(pullgate_cpu <= 12.0)
    );
    let _ =
        writeln!(out, "| ImageStatus, p50 added | - | - | - | +{image_status_add:.1} us | <= +40 us | {} |", met(image_status_add <= 40.0));
    let _ = writeln!(
        out,
        "| added p50 above the floor (pullgate's added / relay's added) | - | +{add50:.1} us | +{relay_add50:.1} us | {over_floor50:.2}x | <= 1.5x | {} |",
        met(over_floor50 <= 1.5)
    );
    let _ = writeln!(
        out,
        "| throughput against the floor (via pullgate / via relay) | - | - | - | {tput_vs_floor:.3} | >= 0.95 | {} |",
        met(tput_vs_floor >= 0.95)
    );
    let _ = writeln!(
        out,
        "| pullgate RSS under that load (max of sampled VmRSS {:.1} MiB and VmHWM {:.1} MiB) | - | {:.1} MiB | {:.1} MiB | - | <= 10 MiB | {} |",
        max_rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss_mib,
        load.rss_kib[1].0.max(load.rss_kib[1].1) as f64 / 1024.0,
        met(rss_mib <= 10.0)
    );
    let (idle, anon, file) = load.rss_parts_kib[0];
    let _ = writeln!(
        out,
        "| of which: anonymous (heap, stacks) max / file-backed (pages of the executable and libc) max / VmRSS before the load | - | {:.1} / {:.1} / {:.1} MiB | - | - | - | - |",
        anon as f64 / 1024.0,
        file as f64 / 1024.0,
        idle as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| startup: spawn to first Version answered (median of {}) | - | {:.2} ms | - | - | <= 10 ms | {} |",
        st.runs.len(),
        version_ms,
        met(version_ms <= 10.0)
    );
    let _ = writeln!(out, "| startup: spawn to socket accepting (median) | - | {connect_ms:.2} ms | - | - | - | - |");
    let _ = writeln!(
        out,
        "| startup_ms logged by pullgate (bind to accepting, median) | - | {} | - | - | - | - |",
        if logged.is_empty() { "n/a".to_string() } else { format!("{:.3} ms", median_f(logged)) }
    );

    let _ = writeln!(out, "\nSequential p50 per call (median of rounds):\n");
    let _ = writeln!(out, "| call | direct | via pullgate | added | via relay | added |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for (name, rounds) in &seq.per_call {
        let d = median_f(rounds.iter().map(|r| us(r[DIRECT])).collect());
        let v = median_f(rounds.iter().map(|r| us(r[VIA])).collect());
        let a = median_f(rounds.iter().map(|r| us(r[VIA]) - us(r[DIRECT])).collect());
        let rv = median_f(rounds.iter().map(|r| us(r[RELAY])).collect());
        let ra = median_f(rounds.iter().map(|r| us(r[RELAY]) - us(r[DIRECT])).collect());
        let _ = writeln!(out, "| {name} | {d:.1} us | {v:.1} us | +{a:.1} us | {rv:.1} us | +{ra:.1} us |");
    }

    let _ =
        writeln!(out, "\nCPU time per call under the {}-caller load (us; all rounds; from /proc/PID/stat, 10 ms ticks):\n", plan.callers);
    let _ = writeln!(out, "| path | {} | total |", load.procs.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(out, "|---|{}---:|", "---:|".repeat(load.procs.len()));
    for (p, (n, ns)) in load.cpu.iter().enumerate() {
        let per = |v: u64| v as f64 / 1000.0 / (*n).max(1) as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} |",
            PATH_NAMES[p],
            ns.iter().map(|v| format!("{:.1}", per(*v))).collect::<Vec<_>>().join(" | "),
            per(ns.iter().sum())
        );
    }

    if let Some(b) = b {
        let _ = writeln!(out, "\nA/B, measured interleaved in the same run. B: {}\n", b.describe());
        let _ = writeln!(out, "| metric | A (above) | B | B - A |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        let b50 = ms(&|r| us(r[B].0) - us(r[DIRECT].0));
        let b99 = ms(&|r| us(r[B].1) - us(r[DIRECT].1));
        let d50 = ms(&|r| us(r[B].0) - us(r[VIA].0));
        let d99 = ms(&|r| us(r[B].1) - us(r[VIA].1));
        let bratio = ml(&|r| r[B] / r[DIRECT]);
        let dratio = ml(&|r| r[B] / r[DIRECT] - r[VIA] / r[DIRECT]);
        let (brss, bhwm) = load.rss_kib[2];
        let _ = writeln!(out, "| added p50 | +{add50:.1} us | +{b50:.1} us | {d50:+.1} us |");
        let _ = writeln!(out, "| added p99 | +{add99:.1} us | +{b99:.1} us | {d99:+.1} us |");
        let _ = writeln!(out, "| throughput ratio | {ratio:.3} | {bratio:.3} | {dratio:+.3} |");
        let b_cpu = cpu_per_call(load, B, "pullgate B");
        let _ = writeln!(out, "| CPU per call under load | {pullgate_cpu:.1} us | {b_cpu:.1} us | {:+.1} us |", b_cpu - pullgate_cpu);
        let _ = writeln!(
            out,
            "| RSS | {rss_mib:.1} MiB | {:.1} MiB | {:+.1} MiB |",
            brss.max(bhwm) as f64 / 1024.0,
            (brss.max(bhwm) as f64 - max_rss.max(hwm) as f64) / 1024.0
        );
        let b_floor = b50 / relay_add50;
        let b_tput_floor = ml(&|r| r[B] / r[RELAY]);
        let _ = writeln!(out, "\nGoals of issue 16 for B:\n");
        let _ = writeln!(out, "| metric | B | goal | met? |");
        let _ = writeln!(out, "|---|---:|---|---|");
        let b_p50 = ms(&|r| us(r[B].0)) / p50[0];
        let _ = writeln!(out, "| sequential latency p50 | {b_p50:.2}x direct | <= 1.25x direct | {} |", met(b_p50 <= 1.25));
        let _ = writeln!(out, "| CPU per call under load | {b_cpu:.1} us | <= 12 us | {} |", met(b_cpu <= 12.0));
        let _ = writeln!(
            out,
            "| added p50 above the floor | +{b50:.1} us / +{relay_add50:.1} us = {b_floor:.2}x | <= 1.5x | {} |",
            met(b_floor <= 1.5)
        );
        let _ = writeln!(out, "| throughput of direct | {bratio:.3} | >= 0.9 | {} |", met(bratio >= 0.9));
        let _ = writeln!(out, "| throughput against the floor | {b_tput_floor:.3} | >= 0.95 | {} |", met(b_tput_floor >= 0.95));
    }

    let _ = writeln!(out, "\nPer round (direct / via / relay{}):\n", if b.is_some() { " / B" } else { "" });
    for (i, (s, l)) in seq.rounds.iter().zip(&load.rounds).enumerate() {
        let _ = writeln!(
            out,
            "- round {}: p50 {} us, p99 {} us, {} calls/s",
            i + 1,
            s.iter().map(|x| format!("{:.1}", us(x.0))).collect::<Vec<_>>().join(" / "),
            s.iter().map(|x| format!("{:.1}", us(x.1))).collect::<Vec<_>>().join(" / "),
            l.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" / "),
        );
    }
}
