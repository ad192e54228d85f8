//! `pullgate trust-root import|status`: clap arguments and entry points returning exit codes.
//!
//! Mount with `#[command(subcommand)] TrustRoot(pullgate::cmd::trust_root::TrustRootCommand)` and
//! exit with [`run`]'s code.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cmd::{exit, OutputFormat};
use crate::settings::parse_duration;
use crate::trust::config::TrustRootConfig;
use crate::trust::freshness::FreshnessPolicy;
use crate::trust::import::{import_tuf, import_unverified, ImportError, ImportOptions};
use crate::trust::state::StateDir;
use crate::trust::status;
use crate::trust::tuf_import::PinnedRoot;

#[derive(Debug, Subcommand)]
pub enum TrustRootCommand {
    /// Verify a mirrored Sigstore TUF repository (or, explicitly, a bare trusted_root.json) and
    /// install it atomically as the trust root. A failed import leaves the installed root
    /// untouched. Exit 0 installed, 1 refused, 64 bad usage, 75 another import is running.
    Import(ImportArgs),
    /// Show the installed trust root, its deadlines and keys, and a verdict. Exit 0 fresh,
    /// 1 expiring within warn_before, 2 stale, 3 none installed, 4 damaged, 64 bad usage.
    Status(StatusArgs),
}

/// Where the state dir and the freshness policy come from: flags over `--config` over defaults.
#[derive(Debug, Args, Default, Clone)]
pub struct StateArgs {
    /// pullgate configuration file; only its `trust_root:` section is read.
    #[arg(long, short = 'c', value_name = "FILE", env = "PULLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// State directory (overrides `trust_root.state_dir`; default /var/lib/pullgate).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Mirrored TUF repository in the published layout (N.root.json, timestamp.json,
    /// N.snapshot.json, N.targets.json, targets/<sha256>.<name>).
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// TUF root.json to chain from instead of the embedded Sigstore public-good root
    /// (a private Sigstore instance). With --from only.
    #[arg(long, value_name = "FILE")]
    pub root: Option<PathBuf>,
    /// A bare trusted_root.json of a private Sigstore that publishes no TUF repository.
    /// Nothing verifies it: requires --accept-unverified-trusted-root.
    #[arg(long, value_name = "FILE")]
    pub trusted_root: Option<PathBuf>,
    /// Accept --trusted-root without any signature over it; recorded in the manifest.
    #[arg(long)]
    pub accept_unverified_trusted_root: bool,
    /// Drop the rollback floors of earlier imports (to switch TUF instance or recover a
    /// damaged state dir); recorded in the manifest.
    #[arg(long)]
    pub reset_rollback_protection: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub output: OutputFormat,
    /// Override `trust_root.max_age` (e.g. 30d).
    #[arg(long, value_name = "DURATION")]
    pub max_age: Option<String>,
    /// Override `trust_root.warn_before` (e.g. 7d).
    #[arg(long, value_name = "DURATION")]
    pub warn_before: Option<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

/// Runs a `trust-root` subcommand; returns the process exit code.
pub fn run(command: &TrustRootCommand) -> i32 {
    match command {
        TrustRootCommand::Import(args) => run_import(args),
        TrustRootCommand::Status(args) => run_status(args),
    }
}

/// Now, to the second: what the manifest records and the report shows.
fn now() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}

fn usage(message: impl std::fmt::Display) -> i32 {
    eprintln!("pullgate: {message}");
    exit::USAGE
}

pub(crate) fn settings(args: &StateArgs) -> Result<TrustRootConfig, String> {
    let mut config = match &args.config {
        Some(path) => TrustRootConfig::load_section(path).map_err(|e| format!("invalid configuration: {e}"))?,
        None => TrustRootConfig::default(),
    };
    if let Some(dir) = &args.state_dir {
        if !dir.is_absolute() {
            return Err(format!("--state-dir: expected an absolute directory, got {:?}", dir.display()));
        }
        config.state_dir = dir.clone();
    }
    Ok(config)
}

/// `pullgate trust-root import`.
pub fn run_import(args: &ImportArgs) -> i32 {
    let config = match settings(&args.state) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let mut options = ImportOptions::new(&config.state_dir, now());
    options.reset_rollback_protection = args.reset_rollback_protection;
    let result = match (&args.from, &args.trusted_root) {
        (Some(_), Some(_)) => return usage("--from and --trusted-root are exclusive: import a TUF mirror or a bare trusted root"),
        (None, None) => return usage("trust-root import needs --from DIR (a mirrored TUF repository) or --trusted-root FILE"),
        (None, Some(_)) if args.root.is_some() => return usage("--root pins a TUF root and only applies with --from"),
        (None, Some(file)) => {
            if !args.accept_unverified_trusted_root {
                return usage(format!(
                    "refusing to import {} without --accept-unverified-trusted-root: a bare trusted_root.json \
                     carries no signature, so nothing but this command vouches for it; prefer --from with a \
                     mirrored TUF repository",
                    file.display()
                ));
            }
            import_unverified(file, &options)
        }
        (Some(dir), None) => {
            if args.accept_unverified_trusted_root {
                return usage("--accept-unverified-trusted-root only applies with --trusted-root");
            }
            let pinned = args.root.clone().map(PinnedRoot::File).unwrap_or(PinnedRoot::EmbeddedSigstore);
            import_tuf(dir, &pinned, &options)
        }
    };
    match result {
        Ok(imported) => {
            let m = &imported.manifest;
            let policy = config.policy();
            let freshness = policy.evaluate(m, options.now);
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "installed trust root generation {} ({}) from {}", m.generation, m.kind.as_str(), m.source);
            if let Some(roles) = &m.roles {
                for (name, r) in roles.iter() {
                    let _ = writeln!(out, "  {name:<10} version {:<6} expires {}", r.version, r.expires);
                }
            }
            let stale_at = policy.stale_at(m);
            let _ = writeln!(out, "stale at {} ({}); verdict: {}", stale_at.at, stale_at.limit.describe(), freshness.verdict(options.now));
            let installed = StateDir::new(&config.state_dir).load_current();
            if let Ok(Some(files)) = installed {
                if let Ok(material) = crate::trust::tuf_import::check_trusted_root(&files.trusted_root) {
                    let inactive = status::inactive_kinds(&status::key_windows(&material, options.now));
                    if !inactive.is_empty() {
                        eprintln!(
                            "pullgate: warning: the installed trusted root has no currently valid {}: \
                             only signatures made inside past validity windows will verify",
                            inactive.join(", ")
                        );
                    }
                }
            }
            if m.kind == crate::trust::manifest::RootKind::UnverifiedTrustedRoot {
                eprintln!("pullgate: warning: the installed trust root is unverified (no TUF signature); recorded as such");
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("pullgate: trust-root import failed, installed trust root unchanged: {e}");
            match e {
                ImportError::State(crate::trust::state::StateError::Locked(_)) => exit::TEMP_FAIL,
                _ => exit::FAILED,
            }
        }
    }
}

/// `pullgate trust-root status`.
pub fn run_status(args: &StatusArgs) -> i32 {
    let config = match settings(&args.state) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let mut policy: FreshnessPolicy = config.policy();
    for (flag, value, slot) in
        [("--max-age", &args.max_age, &mut policy.max_age), ("--warn-before", &args.warn_before, &mut policy.warn_before)]
    {
        if let Some(v) = value {
            match parse_duration(v) {
                Ok(d) => *slot = d,
                Err(e) => return usage(format!("{flag}: {e}")),
            }
        }
    }
    let check = TrustRootConfig { max_age: policy.max_age, warn_before: policy.warn_before, ..config.clone() };
    if let Err((key, message)) = check.validate() {
        return usage(format!("{key}: {message}"));
    }
    let report = status::build(&StateDir::new(&config.state_dir), policy, now());
    let text = match args.output {
        OutputFormat::Human => status::render_human(&report),
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report).expect("serializable");
            s.push('\n');
            s
        }
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    report.exit_code
}
