//! The operator's client: SIG Node's real `crictl` (cri-tools, from `$PULLGATE_SHARED/bin`)
//! through pullgate in enforce mode, on both containerd generations (`scripts/testbed.sh`).
//!
//! - `crictl pull` of the signed image succeeds; of the unsigned image it fails, and crictl's own
//!   output carries the `SignatureValidationFailed` reason; the unsigned image is not on the node.
//! - The operator's workflow (`version`, `info`, `pull`, `inspecti`, `images`, `runp`, `create`,
//!   `start`, `exec`, `logs`, `stop`, `rm`, `stopp`, `rmp`) is run once against containerd
//!   directly and once through pullgate, and each command's exit code and normalised stdout
//!   must be equal. Normalised: pod and container IDs (full and 13-character short forms)
//!   become `<POD>` and `<CONTAINER>`, the "… ago" times of `crictl ps` become `<TIME>`, and
//!   runs of blanks (table padding follows the widest cell) are collapsed; nothing else.
//!
//! Skipped with the reason when `crictl` is not in the shared folder (and, per generation, as
//! the other testbed suites: no root, no containerd 2.x).

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
use std::time::Duration;

use daemon::Daemon;
use libtest_mimic::{Arguments, Failed};
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
    tb: Testbed,
    pg: Mutex<Daemon>,
    pg_sock: PathBuf,
    crictl: PathBuf,
}

static CTX: testbed::Contexts<Ctx> = testbed::Contexts::new();

fn setup(generation: Generation) -> Result<Ctx, String> {
    let crictl = testbed::shared_bin("crictl").ok_or("no crictl in the shared folder")?;
    let tb = Testbed::start_generation(generation, "cri", &[])?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let registry = tb.get("REGISTRY").to_string();
    let addr: SocketAddr = registry.parse().map_err(|e| format!("{registry}: {e}"))?;

    // The test Sigstore stack signs demo/app:1; its trust root is imported as an operator would.
    let mut stack = Stack::new();
    let root = tb.dir.join("trusted_root.json");
    std::fs::write(&root, stack.trusted_root_json()).map_err(|e| e.to_string())?;
    let state = tb.dir.join("state");
    let out = Command::new(daemon::binary())
        .args(["trust-root", "import", "--accept-unverified-trusted-root", "--trusted-root"])
        .arg(&root)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("trust-root import: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let digest = Digest::parse(tb.get("DEMO_DIGEST")).map_err(|e| e.to_string())?;
    let opts = SignOptions::new(stack.now);
    rt.block_on(sign_and_push(&mut stack, &Pusher::new(addr), "demo/app", &digest, &opts, Format::Bundle))?;

    let pg_sock = tb.dir.join("pg.sock");
    let cfg = tb.dir.join("pullgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"listen: {listen}
upstream: {upstream}
registry:
  hosts_dir: {hosts}
trust_root:
  state_dir: {state}
cri:
  sandbox_image: {sandbox}
policy:
  unmatched: deny
  exemptions:
    - name: sandbox
      images: ["{registry}/pause:*"]
  policies:
    - name: demo
      images: ["{registry}/demo/**"]
      mode: enforce
      authorities:
        - name: release-workflow
          keyless:
            identities:
              - issuer: {DEFAULT_ISSUER}
                subject: {DEFAULT_SAN}
"#,
            listen = pg_sock.display(),
            upstream = tb.containerd_sock().display(),
            hosts = tb.get("HOSTS_DIR"),
            state = state.display(),
            sandbox = tb.get("SANDBOX_IMAGE"),
        ),
    )
    .map_err(|e| e.to_string())?;
    let pg = Daemon::start(&pg_sock, &["--config", cfg.to_str().unwrap()])?;
    Ok(Ctx { tb, pg: Mutex::new(pg), pg_sock, crictl })
}

fn teardown(c: &Ctx) {
    if let Ok(mut pg) = c.pg.lock() {
        pg.terminate(Duration::from_secs(10));
    }
    c.tb.clean();
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests: Vec<testbed::Trial<Ctx>> = vec![
        ("pull_signed_succeeds_unsigned_fails_with_the_reason", pull_signed_and_unsigned),
        ("operator_workflow_matches_containerd_directly", workflow_matches_direct),
    ];
    let mut trials = testbed::trials(tests, &CTX, setup, teardown);
    if testbed::shared_bin("crictl").is_none() {
        eprintln!("skipping the crictl trials: no crictl in {}/bin (set PULLGATE_SHARED)", testbed::shared_dir().display());
        trials = trials.into_iter().map(|t| t.with_ignored_flag(true)).collect();
    }
    let conclusion = libtest_mimic::run(&args, trials);
    CTX.finish(teardown);
    conclusion.exit();
}

// --- crictl ------------------------------------------------------------------------------------

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ctx {
    /// `crictl ARGS` against `socket` for both the runtime and the image service, with no
    /// client config file (so /etc/crictl.yaml of the machine plays no part).
    fn crictl(&self, socket: &Path, args: &[&str]) -> Result<Run, String> {
        let endpoint = format!("unix://{}", socket.display());
        let out = Command::new(&self.crictl)
            .args(["--config", "/dev/null", "--runtime-endpoint", &endpoint, "--image-endpoint", &endpoint, "--timeout", "30s"])
            .args(args)
            .env_remove("CONTAINER_RUNTIME_ENDPOINT")
            .env_remove("IMAGE_SERVICE_ENDPOINT")
            .env_remove("CRI_CONFIG_FILE")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.crictl.display()))?;
        Ok(Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn crictl_ok(&self, socket: &Path, args: &[&str]) -> Result<String, String> {
        let r = self.crictl(socket, args)?;
        if r.code != 0 {
            return Err(format!("crictl {} on {} exited {}:\n{}{}", args.join(" "), socket.display(), r.code, r.stdout, r.stderr));
        }
        Ok(r.stdout)
    }
}

fn pull_signed_and_unsigned(c: &Ctx) -> TestResult {
    let demo = c.tb.get("DEMO_IMAGE");
    let unsigned = c.tb.get("UNSIGNED_IMAGE");
    let out = c.crictl_ok(&c.pg_sock, &["pull", demo])?;
    ensure!(out.contains(c.tb.get("DEMO_DIGEST")) || out.starts_with("Image is up to date for sha256:"), "crictl pull said: {out}");

    let r = c.crictl(&c.pg_sock, &["pull", unsigned])?;
    eprintln!("$ crictl pull {unsigned}\n{}{}(exit {})", r.stdout, r.stderr, r.code);
    ensure!(r.code != 0, "the unsigned image was pulled: {}", r.stdout);
    ensure!(
        r.stderr.contains("SignatureValidationFailed: image") && r.stderr.contains("no signatures found"),
        "crictl's output does not carry the reason:\n{}",
        r.stderr
    );
    // crictl's own words around it: "pulling image: rpc error: code = Unknown desc = ..."
    ensure!(r.stderr.contains("code = Unknown desc = SignatureValidationFailed"), "{}", r.stderr);
    let listed = c.crictl_ok(&c.tb.containerd_sock(), &["images", "--quiet"])?;
    let present = c.crictl(&c.tb.containerd_sock(), &["inspecti", unsigned])?;
    ensure!(present.code != 0, "the unsigned image is on the node:\n{listed}{}", present.stdout);
    Ok(())
}

/// The normalised result of each step of the workflow on one socket.
fn workflow(c: &Ctx, socket: &Path, tag: &str) -> Result<Vec<(String, i32, String)>, String> {
    let demo = c.tb.get("DEMO_IMAGE");
    let logs = c.tb.dir.join("podlogs").join(format!("crictl-{tag}"));
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    // Host networking: the testbed's CNI is loopback only. Same names both runs: the first run
    // removes its pod before the second starts.
    let pod = c.tb.dir.join(format!("pod-{tag}.json"));
    std::fs::write(
        &pod,
        serde_json::json!({
            "metadata": {"name": "crictl-pod", "namespace": "crictl", "uid": "crictl-pod-uid", "attempt": 0},
            "log_directory": logs,
            "linux": {"security_context": {"namespace_options": {"network": 2}}}
        })
        .to_string(),
    )
    .map_err(|e| e.to_string())?;
    let ctr = c.tb.dir.join(format!("ctr-{tag}.json"));
    std::fs::write(
        &ctr,
        serde_json::json!({
            "metadata": {"name": "hello"},
            "image": {"image": demo},
            "command": ["/hello"],
            "log_path": "hello.log"
        })
        .to_string(),
    )
    .map_err(|e| e.to_string())?;
    let (pod_s, ctr_s) = (pod.to_str().unwrap_or_default(), ctr.to_str().unwrap_or_default());

    let mut steps = Vec::new();
    let mut ids: Vec<(String, &str)> = Vec::new();
    let mut step = |name: &str, args: &[&str], ids: &[(String, &str)], new_id: Option<&'static str>| -> Result<String, String> {
        let r = c.crictl(socket, args)?;
        let out = r.stdout.trim().to_string();
        // runp and create print the new ID: normalise it too
        let mut known = ids.to_vec();
        if let Some(placeholder) = new_id {
            known.push((out.clone(), placeholder));
        }
        steps.push((name.to_string(), r.code, normalise(&r.stdout, &known)));
        if r.code != 0 {
            return Err(format!("crictl {} on {} exited {}:\n{}{}", args.join(" "), socket.display(), r.code, r.stdout, r.stderr));
        }
        Ok(out)
    };
    step("version", &["version"], &ids, None)?;
    step("info", &["info"], &ids, None)?;
    step("pull", &["pull", demo], &ids, None)?;
    step("inspecti", &["inspecti", demo], &ids, None)?;
    step("images", &["images"], &ids, None)?;
    let pod_id = step("runp", &["runp", pod_s], &ids, Some("<POD>"))?;
    ids.push((pod_id.clone(), "<POD>"));
    let ctr_id = step("create", &["create", &pod_id, ctr_s, pod_s], &ids, Some("<CONTAINER>"))?;
    ids.push((ctr_id.clone(), "<CONTAINER>"));
    step("start", &["start", &ctr_id], &ids, None)?;
    step("exec", &["exec", &ctr_id, "/hello", "echo", "exec", "through", "crictl"], &ids, None)?;
    step("exec-sync", &["exec", "--sync", &ctr_id, "/hello", "cat", "/etc/pullgate-variant"], &ids, None)?;
    // The container prints its greeting as it starts; wait for the log line to land.
    for _ in 0..50 {
        if std::fs::read_to_string(logs.join("hello.log")).is_ok_and(|t| t.contains("hello from pullgate testbed")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    step("logs", &["logs", &ctr_id], &ids, None)?;
    step("ps", &["ps", "--pod", &pod_id, "-o", "table"], &ids, None)?;
    step("stop", &["stop", &ctr_id], &ids, None)?;
    step("rm", &["rm", &ctr_id], &ids, None)?;
    step("stopp", &["stopp", &pod_id], &ids, None)?;
    step("rmp", &["rmp", &pod_id], &ids, None)?;
    Ok(steps)
}

/// IDs to placeholders (full and 13-character forms), listing times to `<TIME>`.
fn normalise(text: &str, ids: &[(String, &str)]) -> String {
    let mut t = text.to_string();
    for (id, name) in ids {
        if id.len() >= 13 {
            t = t.replace(id.as_str(), name);
            t = t.replace(&id[..13], name);
        }
    }
    ago_times(&t)
}

/// `crictl ps` shows "Less than a second ago", "3 seconds ago", "About a minute ago": times,
/// not behaviour. Table columns are padded to the widest cell, so runs of blanks are collapsed.
fn ago_times(text: &str) -> String {
    text.lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.iter().position(|w| *w == "ago") {
                Some(end) => {
                    let first = |w: &&str| w.chars().all(|c| c.is_ascii_digit()) || *w == "About" || *w == "Less";
                    let start = words[..end].iter().rposition(first).unwrap_or(end.saturating_sub(2));
                    let mut out: Vec<&str> = words[..start].to_vec();
                    out.push("<TIME>");
                    out.extend_from_slice(&words[end + 1..]);
                    out.join(" ")
                }
                None => words.join(" "),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn workflow_matches_direct(c: &Ctx) -> TestResult {
    // Both runs start from the same node state: the sandbox image that the first runp would
    // pull is there already.
    c.crictl_ok(&c.tb.containerd_sock(), &["pull", c.tb.get("SANDBOX_IMAGE")])?;
    let direct = workflow(c, &c.tb.containerd_sock(), "direct")?;
    let via = workflow(c, &c.pg_sock, "via")?;
    ensure!(direct.len() == via.len(), "{} steps directly, {} through pullgate", direct.len(), via.len());
    for (d, v) in direct.iter().zip(&via) {
        // The pod log directory differs by run (the tag), and info/inspecti carry no IDs.
        let v_text = v.2.replace("crictl-via", "crictl-direct").replace("pod-via", "pod-direct");
        ensure!(
            d.1 == v.1 && d.2 == v_text,
            "crictl {} differs:\n--- directly (exit {})\n{}\n--- through pullgate (exit {})\n{}",
            d.0,
            d.1,
            d.2,
            v.1,
            v.2
        );
    }
    let logs = &via.iter().find(|s| s.0 == "logs").map(|s| s.2.clone()).unwrap_or_default();
    ensure!(logs.contains("hello from pullgate testbed"), "crictl logs: {logs}");
    let exec = &via.iter().find(|s| s.0 == "exec").map(|s| s.2.clone()).unwrap_or_default();
    ensure!(exec.trim() == "exec through crictl", "crictl exec: {exec}");
    eprintln!("{} crictl commands gave the same answers directly and through pullgate", direct.len());
    Ok(())
}
