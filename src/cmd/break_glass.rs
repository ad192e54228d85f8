//! `pullgate break-glass`: open, list and revoke break-glass windows on this node.

use std::time::Duration;

use clap::Args;
use jiff::Timestamp;

use super::trust_root::{settings, StateArgs};
use crate::cmd::exit;
use crate::enforce::break_glass::{
    parse_image, parse_length, store, Operator, Window, Windows, FILE_NAME, MAX_IMAGES, MAX_REASON, MAX_WINDOWS,
};

/// `pullgate help break-glass`: the runbook, since this is read by someone whose node is down.
pub const LONG_ABOUT: &str = "\
Let the images a node needs to recover start although pullgate refuses them (the registry \
mirror is down, the trust root is stale or missing, a control-plane image is unsigned), without \
turning enforcement off. Everything else stays refused.

A window names images by digest only (registry/repository@sha256:...; a tag is refused), lasts \
at most 24h, needs a reason, and records who opened it (user, sudo user, uid, host). It is \
written to <state_dir>/break-glass.json (mode 0600); the running daemon applies it within \
trust_root.watch_interval (30s by default), or at once on `systemctl reload pullgate` (SIGHUP). \
No restart. Each image it lets through is written to the audit log with a `break_glass` field \
and logged as a warning; pullgate_break_glass_active is 1 (alert PullgateBreakGlassActive) \
until the window expires or is revoked.

Runbook (etcd or another static pod cannot start under enforcement):
  1. Find the refused digest: `journalctl -u pullgate | grep refused`, or the audit log, or on
     a healthy node `crictl inspecti -o go-template --template '{{.status.repoDigests}}' IMAGE`.
  2. pullgate break-glass --images 'registry.internal/etcd@sha256:<digest>' --for 1h \\
       --reason 'INC-123: trust root stale, etcd down'
  3. systemctl reload pullgate   (or wait for watch_interval)
  4. kubelet retries the static pod; if the image is not on the node yet:
     crictl pull registry.internal/etcd@sha256:<digest>
  5. Fix the cause (pullgate trust-root import, the mirror), then end the window:
     pullgate break-glass --revoke

Exit codes: 0 done, 1 the state directory cannot be written, 64 bad usage.";

#[derive(Debug, Args)]
pub struct BreakGlassArgs {
    /// An image to let through, by digest: registry/repository@sha256:<hex>. Repeat the flag
    /// (or separate with commas) for more; at most 32.
    #[arg(long = "images", value_name = "IMAGE@DIGEST", value_delimiter = ',', conflicts_with_all = ["list", "revoke"])]
    pub images: Vec<String>,
    /// How long the window stays open: 30m, 1h, ... at most 24h.
    #[arg(long = "for", value_name = "DURATION")]
    pub length: Option<String>,
    /// Why (an incident or ticket): recorded with the window and in every audit record it writes.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Show the windows in the state directory, open and expired. Exit 0.
    #[arg(long, conflicts_with = "revoke")]
    pub list: bool,
    /// End every window now (removes the file).
    #[arg(long)]
    pub revoke: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

fn usage(message: impl std::fmt::Display) -> i32 {
    eprintln!("pullgate break-glass: {message}");
    exit::USAGE
}

/// Runs `pullgate break-glass`; returns the exit code.
pub fn run(args: &BreakGlassArgs) -> i32 {
    let config = match settings(&args.state) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let path = config.state_dir.join(FILE_NAME);
    let applies = format!(
        "the running pullgate applies this within trust_root.watch_interval ({}s), or at once on `systemctl reload pullgate`",
        config.watch_interval.as_secs()
    );
    let now = Timestamp::now();
    if args.list {
        return list(&path, now);
    }
    if args.revoke {
        if args.length.is_some() || args.reason.is_some() {
            return usage("--revoke ends every window: it takes no --for or --reason");
        }
        return match store::remove(&path) {
            Ok(true) => {
                println!("break-glass revoked: every window in {} is closed; {applies}", path.display());
                0
            }
            Ok(false) => {
                println!("no break-glass window in {}", path.display());
                0
            }
            Err(e) => {
                eprintln!("pullgate break-glass: cannot remove {}: {e}", path.display());
                1
            }
        };
    }
    if args.images.is_empty() {
        return usage(
            "say what to do: --images IMAGE@DIGEST --for DURATION --reason TEXT, --list, or --revoke (see `pullgate help break-glass`)",
        );
    }
    let window = match new_window(args, now) {
        Ok(w) => w,
        Err(e) => return usage(e),
    };
    // Keep the other open windows (another image of the same incident); drop expired ones.
    let mut windows = match store::read(&path) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("warning: replacing {} ({e})", path.display());
            Windows::default()
        }
    };
    windows.windows.retain(|w| w.expires_at > now);
    windows.windows.push(window.clone());
    if windows.windows.len() > MAX_WINDOWS {
        return usage(format!("{MAX_WINDOWS} windows are open already: revoke them and open one with every image"));
    }
    if let Err(e) = store::write(&path, &windows) {
        eprintln!("pullgate break-glass: cannot write {}: {e}", path.display());
        return exit::FAILED;
    }
    println!("break-glass window open until {} for:", window.expires_at);
    for image in &window.images {
        println!("  {image}");
    }
    println!("reason: {}", window.reason);
    println!("opened by {}", window.opened_by);
    println!("written to {}; {applies}.", path.display());
    println!("Every image it lets through is in the audit log (break_glass); end it early with `pullgate break-glass --revoke`.");
    exit::OK
}

fn new_window(args: &BreakGlassArgs, now: Timestamp) -> Result<Window, String> {
    let length = match &args.length {
        Some(s) => parse_length(s).map_err(|e| format!("--for {e}"))?,
        None => return Err("--for DURATION is required (e.g. --for 1h; at most 24h): a break-glass always ends".into()),
    };
    let reason = args.reason.as_deref().map(str::trim).unwrap_or_default();
    if reason.is_empty() {
        return Err("--reason TEXT is required (an incident or ticket): it goes into every audit record the window writes".into());
    }
    if reason.len() > MAX_REASON || reason.contains(['\n', '\r']) {
        return Err(format!("--reason must be one line of at most {MAX_REASON} bytes"));
    }
    if args.images.len() > MAX_IMAGES {
        return Err(format!("at most {MAX_IMAGES} images per window"));
    }
    let mut images = Vec::new();
    for image in &args.images {
        let r = parse_image(image).map_err(|e| format!("--images {e}"))?;
        images.push(r.to_string());
    }
    images.sort();
    images.dedup();
    let expires_at =
        now.checked_add(jiff::SignedDuration::try_from(length).unwrap_or(jiff::SignedDuration::from_secs(1))).map_err(|e| e.to_string())?;
    Ok(Window { images, reason: reason.to_string(), opened_at: now, expires_at, opened_by: operator() })
}

/// Who is running this command: from the environment sudo and login set, and the real uid.
fn operator() -> Operator {
    let uid = nix::unistd::getuid();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let user = env("USER")
        .or_else(|| env("LOGNAME"))
        .or_else(|| nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name))
        .unwrap_or_else(|| format!("uid {uid}"));
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into());
    Operator { uid: uid.as_raw(), user, sudo_user: env("SUDO_USER"), host }
}

fn list(path: &std::path::Path, now: Timestamp) -> i32 {
    let windows = match store::read(path) {
        Ok(w) => w,
        Err(e) => {
            println!("break-glass file not honoured (no window is open): {e}");
            return exit::OK;
        }
    };
    if windows.windows.is_empty() {
        println!("no break-glass window in {}", path.display());
        return exit::OK;
    }
    for w in &windows.windows {
        let state = match w.problem(now) {
            Some(p) => format!("IGNORED by pullgate: {p}"),
            None if w.is_open(now) => {
                let left = Duration::from_secs(w.expires_at.duration_since(now).as_secs().max(0) as u64);
                format!("OPEN, {}m left", left.as_secs().div_ceil(60))
            }
            None => format!("expired at {}", w.expires_at),
        };
        println!("{state}: until {}, opened {} by {}", w.expires_at, w.opened_at, w.opened_by);
        println!("  reason: {}", w.reason);
        for image in &w.images {
            println!("  {image}");
        }
    }
    exit::OK
}
