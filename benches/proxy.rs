//! CRI proxy overhead: the same unary CRI calls sent directly to a real containerd and through
//! the real `pullgate` binary, measured in one run.
//!
//! ```text
//! cargo bench --bench proxy                         # full run (a few minutes), as root
//! PULLGATE_BENCH_QUICK=1 cargo bench --bench proxy  # smoke run in seconds (CI)
//! ```
//!
//! Cargo builds the `pullgate` binary in the bench (= release) profile before running this and
//! passes its path (`target/release/pullgate`); set `PULLGATE_BIN` to measure another build.
//! `PULLGATE_BENCH_ARGS` adds arguments to `pullgate serve` (e.g. for A/B runs of a flag).
//!
//! What is measured (see BENCHMARKS.md for the figures):
//! - sequential latency: one caller, one call at a time, p50 and p99 per round;
//! - throughput with 64 concurrent callers multiplexed over one shared HTTP/2 connection, as
//!   kubelet does;
//! - pullgate's RSS during that load (VmRSS sampled, VmHWM at the end);
//! - startup: spawning `pullgate serve` until a first Version call on its socket succeeds.
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
    fn from_env() -> Plan {
        let quick = std::env::var("PULLGATE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        if quick {
            Plan {
                rounds: 2,
                seq_calls: 200,
                seq_block: 50,
                warmup_calls: 100,
                callers: 64,
                load: Duration::from_millis(300),
                startups: 3,
            }
        } else {
            Plan {
                rounds: 5,
                seq_calls: 2000,
                seq_block: 100,
                warmup_calls: 1000,
                callers: 64,
                load: Duration::from_secs(3),
                startups: 20,
            }
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
                k8s::ImageStatusRequest {
                    image: Some(k8s::ImageSpec { image: image.into(), ..Default::default() }),
                    verbose: false,
                }
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

fn main() {
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

/// Sets up, measures and tears down (`Testbed` and `Daemon` clean up on drop, on error too).
fn run() -> Result<String, String> {
    let plan = Plan::from_env();
    let bin = pullgate_binary()?;
    let extra_args: Vec<String> =
        std::env::var("PULLGATE_BENCH_ARGS").unwrap_or_default().split_whitespace().map(String::from).collect();
    eprintln!("[bench] pullgate binary: {}", bin.display());
    eprintln!("[bench] starting testbed (containerd + registry)...");
    let tb = Testbed::start("bench", &[])?;
    let direct_sock = tb.containerd_sock();
    let pg_sock = tb.dir.join("pullgate.sock");
    let mut cmd = Command::new(&bin);
    cmd.arg("serve")
        .arg("--listen")
        .arg(&pg_sock)
        .arg("--upstream")
        .arg(&direct_sock)
        .args(&extra_args);
    let pg = Daemon::start_with(&pg_sock, &mut cmd)?;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let image = tb.get("DEMO_IMAGE").to_string();
    let calls = calls(&image);
    let chans = {
        let _rt = rt.enter();
        [cri::channel(&direct_sock), cri::channel(&pg_sock)]
    };

    rt.block_on(async {
        eprintln!("[bench] pulling {image} into containerd");
        let pull = k8s::PullImageRequest {
            image: Some(k8s::ImageSpec { image: image.clone(), ..Default::default() }),
            ..Default::default()
        };
        cri::images(&direct_sock).pull_image(pull).await.map_err(|e| format!("PullImage {image}: {e}"))?;
        // The same answer both ways, or the comparison means nothing.
        for c in &calls {
            let d = call(&chans[DIRECT], c).await?;
            let v = call(&chans[VIA], c).await?;
            if d != v {
                return Err(format!("{}: response through pullgate differs from the direct one", c.name));
            }
        }
        Ok::<_, String>(())
    })?;

    let mut out = String::new();
    let seq = rt.block_on(sequential(&plan, &chans, &calls))?;
    let load = rt.block_on(concurrent(&plan, &chans, &calls, pg.pid()))?;
    drop(chans);
    drop(rt);
    let startup = startups(&plan, &bin, &extra_args, &tb.dir, &direct_sock)?;
    let pg_log_lines = pg.logs().lines().count();
    drop(pg);

    write_report(&mut out, &plan, &seq, &load, &startup, &bin, &extra_args);
    let _ = writeln!(out, "\n(pullgate wrote {pg_log_lines} log lines during the run: one per intercepted ImageStatus call, at the default `info` level.)");
    eprintln!("[bench] tearing down the testbed");
    drop(tb);
    Ok(out)
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
        Err(format!(
            "no pullgate binary at {}; build it with `cargo build --release` (or point PULLGATE_BIN at one)",
            bin.display()
        ))
    }
}

// --- sequential latency ------------------------------------------------------------------------

struct Sequential {
    /// Per round and path: p50, p99 over all calls (ns).
    rounds: Vec<[(u64, u64); 2]>,
    /// Per call kind, per round and path: p50 (ns).
    per_call: Vec<(&'static str, Vec<[u64; 2]>)>,
}

async fn sequential(plan: &Plan, chans: &[Channel; 2], calls: &[Call]) -> Result<Sequential, String> {
    eprintln!("[bench] sequential: warm-up, then {} rounds x {} calls per path", plan.rounds, plan.seq_calls);
    for ch in chans {
        for i in 0..plan.warmup_calls {
            call(ch, &calls[i % calls.len()]).await?;
        }
    }
    let mut result = Sequential { rounds: vec![], per_call: calls.iter().map(|c| (c.name, vec![])).collect() };
    for round in 0..plan.rounds {
        // samples[path][call kind]
        let mut samples: [Vec<Vec<u64>>; 2] = [vec![vec![]; calls.len()], vec![vec![]; calls.len()]];
        let order = if round % 2 == 0 { [DIRECT, VIA] } else { [VIA, DIRECT] };
        let mut done = 0;
        while done < plan.seq_calls {
            let n = plan.seq_block.min(plan.seq_calls - done);
            for p in order {
                for i in done..done + n {
                    let k = i % calls.len();
                    let t = Instant::now();
                    call(&chans[p], &calls[k]).await?;
                    samples[p][k].push(t.elapsed().as_nanos() as u64);
                }
            }
            done += n;
        }
        let mut r = [(0, 0); 2];
        for p in [DIRECT, VIA] {
            let mut all: Vec<u64> = samples[p].iter().flatten().copied().collect();
            all.sort_unstable();
            r[p] = (pct(&all, 50.0), pct(&all, 99.0));
        }
        for (k, (_, v)) in result.per_call.iter_mut().enumerate() {
            let mut p50 = [0; 2];
            for p in [DIRECT, VIA] {
                samples[p][k].sort_unstable();
                p50[p] = pct(&samples[p][k], 50.0);
            }
            v.push(p50);
        }
        eprintln!(
            "[bench]   round {}: p50 {:.1} / {:.1} us, p99 {:.1} / {:.1} us (direct / via)",
            round + 1,
            us(r[0].0),
            us(r[1].0),
            us(r[0].1),
            us(r[1].1)
        );
        result.rounds.push(r);
    }
    Ok(result)
}

// --- concurrent throughput and RSS -------------------------------------------------------------

struct Load {
    /// Per round: calls/s [direct, via].
    rounds: Vec<[f64; 2]>,
    max_rss_kib: u64,
    hwm_kib: u64,
}

async fn concurrent(plan: &Plan, chans: &[Channel; 2], calls: &[Call], pid: u32) -> Result<Load, String> {
    eprintln!(
        "[bench] concurrent: {} callers on one connection, {} rounds x {:?} per path",
        plan.callers, plan.rounds, plan.load
    );
    let sampler = RssSampler::start(pid);
    for p in [DIRECT, VIA] {
        load_once(plan.callers, &chans[p], calls, plan.load / 4).await?;
    }
    let mut rounds = vec![];
    for round in 0..plan.rounds {
        let order = if round % 2 == 0 { [DIRECT, VIA] } else { [VIA, DIRECT] };
        let mut r = [0.0; 2];
        for p in order {
            r[p] = load_once(plan.callers, &chans[p], calls, plan.load).await?;
        }
        eprintln!(
            "[bench]   round {}: {:.0} / {:.0} calls/s (direct / via), ratio {:.3}",
            round + 1,
            r[0],
            r[1],
            r[1] / r[0]
        );
        rounds.push(r);
    }
    let max_rss_kib = sampler.stop();
    let hwm_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    Ok(Load { rounds, max_rss_kib, hwm_kib })
}

/// `callers` tasks calling back-to-back on one channel for `duration`; returns calls/s.
async fn load_once(callers: usize, ch: &Channel, calls: &[Call], duration: Duration) -> Result<f64, String> {
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
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Samples a process's VmRSS every 10 ms on its own thread.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                max = max.max(proc_status_kib(pid, "VmRSS:").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(10));
            }
            max
        });
        RssSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
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

fn startups(plan: &Plan, bin: &Path, extra: &[String], dir: &Path, upstream: &Path) -> Result<Startup, String> {
    eprintln!("[bench] startup: {} starts", plan.startups);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let version = grpc_frame(&k8s::VersionRequest { version: "v1".into() }.encode_to_vec());
    let mut runs = vec![];
    for i in 0..plan.startups {
        let sock = dir.join(format!("start{i}.sock"));
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--listen").arg(&sock).arg("--upstream").arg(upstream).args(extra);
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
    conn.abort();
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

fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

fn write_report(out: &mut String, plan: &Plan, seq: &Sequential, load: &Load, st: &Startup, bin: &Path, extra: &[String]) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let _ = writeln!(out, "\n## CRI proxy overhead\n");
    let _ = writeln!(
        out,
        "{cores} cores; {} rounds; sequential {} calls per path per round; {} callers for {:?} per path per round; {} starts; binary {}{}\n",
        plan.rounds,
        plan.seq_calls,
        plan.callers,
        plan.load,
        plan.startups,
        bin.display(),
        if extra.is_empty() { String::new() } else { format!(" (serve args: {})", extra.join(" ")) }
    );
    let m = |f: &dyn Fn(&[(u64, u64); 2]) -> f64| median_f(seq.rounds.iter().map(f).collect());
    let p50 = [m(&|r| us(r[0].0)), m(&|r| us(r[1].0))];
    let p99 = [m(&|r| us(r[0].1)), m(&|r| us(r[1].1))];
    // Added latency: median over rounds of (via - direct) in that round.
    let add50 = m(&|r| us(r[1].0) - us(r[0].0));
    let add99 = m(&|r| us(r[1].1) - us(r[0].1));
    let tput = [
        median_f(load.rounds.iter().map(|r| r[0]).collect()),
        median_f(load.rounds.iter().map(|r| r[1]).collect()),
    ];
    let ratio = median_f(load.rounds.iter().map(|r| r[1] / r[0]).collect());
    let rss_mib = load.max_rss_kib.max(load.hwm_kib) as f64 / 1024.0;
    let connect_ms = median_f(st.runs.iter().map(|r| r.0 as f64 / 1e6).collect());
    let version_ms = median_f(st.runs.iter().map(|r| r.1 as f64 / 1e6).collect());
    let logged: Vec<f64> = st.runs.iter().filter_map(|r| r.2).collect();
    let logged_ms = median_f(logged.clone());

    let _ = writeln!(out, "| metric | direct | via pullgate | added / ratio | goal | met? |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
    let _ = writeln!(
        out,
        "| sequential latency p50 | {:.1} us | {:.1} us | +{:.1} us ({:.2}x) | added <= 60 us | {} |",
        p50[0],
        p50[1],
        add50,
        p50[1] / p50[0],
        met(add50 <= 60.0)
    );
    let _ = writeln!(
        out,
        "| sequential latency p99 | {:.1} us | {:.1} us | +{:.1} us ({:.2}x) | added <= 150 us | {} |",
        p99[0],
        p99[1],
        add99,
        p99[1] / p99[0],
        met(add99 <= 150.0)
    );
    let _ = writeln!(
        out,
        "| throughput, {} callers, one connection | {:.0} calls/s | {:.0} calls/s | {:.3} | ratio >= 0.85 | {} |",
        plan.callers,
        tput[0],
        tput[1],
        ratio,
        met(ratio >= 0.85)
    );
    let _ = writeln!(
        out,
        "| pullgate RSS under that load (max VmRSS {:.1} MiB, VmHWM {:.1} MiB) | - | {:.1} MiB | - | <= 10 MiB | {} |",
        load.max_rss_kib as f64 / 1024.0,
        load.hwm_kib as f64 / 1024.0,
        rss_mib,
        met(rss_mib <= 10.0)
    );
    let _ = writeln!(
        out,
        "| startup: spawn to first Version answered (median of {}) | - | {:.2} ms | - | <= 10 ms | {} |",
        st.runs.len(),
        version_ms,
        met(version_ms <= 10.0)
    );
    let _ = writeln!(out, "| startup: spawn to socket accepting | - | {connect_ms:.2} ms | - | - | - |");
    let _ = writeln!(
        out,
        "| startup_ms pullgate logs (bind to accepting, median) | - | {} | - | - | - |",
        if logged.is_empty() { "n/a".to_string() } else { format!("{logged_ms:.3} ms") }
    );

    let _ = writeln!(out, "\nSequential p50 per call (median of rounds):\n");
    let _ = writeln!(out, "| call | direct | via pullgate | added |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (name, rounds) in &seq.per_call {
        let d = median_f(rounds.iter().map(|r| us(r[0])).collect());
        let v = median_f(rounds.iter().map(|r| us(r[1])).collect());
        let a = median_f(rounds.iter().map(|r| us(r[1]) - us(r[0])).collect());
        let note = if *name == "ImageStatus" { " (intercepted: buffered, decoded, logged)" } else { "" };
        let _ = writeln!(out, "| {name}{note} | {d:.1} us | {v:.1} us | +{a:.1} us |");
    }
    let _ = writeln!(out, "\nPer round (direct / via):\n");
    for (i, (s, l)) in seq.rounds.iter().zip(&load.rounds).enumerate() {
        let _ = writeln!(
            out,
            "- round {}: p50 {:.1} / {:.1} us, p99 {:.1} / {:.1} us, {:.0} / {:.0} calls/s (ratio {:.3})",
            i + 1,
            us(s[0].0),
            us(s[1].0),
            us(s[0].1),
            us(s[1].1),
            l[0],
            l[1],
            l[1] / l[0]
        );
    }
}
