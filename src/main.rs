//! The `pullgate` command: parse arguments, load configuration, run.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use pullgate::cmd::exit::{self, status};
use pullgate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "pullgate",
    version,
    about = "CRI proxy that admits only container images with a valid Sigstore signature, verified offline",
    long_about = "pullgate sits between kubelet and containerd on every node. kubelet's \
containerRuntimeEndpoint points at pullgate's unix socket; pullgate forwards every CRI call to \
containerd unchanged, except the image pulls and container creations it checks.\n\n\
Quick try (pure pass-through, no checks):\n  pullgate serve --listen /run/pullgate/pullgate.sock --upstream /run/containerd/containerd.sock"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve CRI on a unix socket and forward to containerd.
    Serve(ServeArgs),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check an image on the registry mirror, offline: resolve it, find its signatures and
    /// verify them against the policy and the mirrored trust root. Exit 0 only when verified.
    Verify(pullgate::cmd::verify::VerifyArgs),
    /// Verify an image's signature from files (digest + bundle or legacy signature files), for
    /// build pipelines: no registry needed.
    VerifyImageFiles(pullgate::cmd::verify_files::VerifyImageFilesArgs),
    /// The sigstore-conformance client protocol: verify one bundle against an artifact or
    /// digest. Lets anyone run Sigstore's own conformance suite against pullgate.
    VerifyBundle(pullgate::cmd::verify_files::VerifyBundleArgs),
    /// Import, inspect and check the mirrored Sigstore trust root.
    #[command(subcommand)]
    TrustRoot(pullgate::cmd::trust_root::TrustRootCommand),
    /// From the audit log: per policy, what enforce mode would have refused in a time window
    /// (images, namespaces, reasons, counts). The check before switching audit to enforce.
    /// Exit 0 nothing would be refused, 1 something would, 64 bad usage, 66 unreadable log.
    Report(pullgate::cmd::report::ReportArgs),
    /// Check this node's setup (kubelet pointed at pullgate, sockets, containerd, mirrors,
    /// trust root, policy, images on the node) and explain each problem in one line.
    /// Exit 0 when nothing failed, 1 otherwise.
    Doctor(pullgate::cmd::doctor::DoctorCommand),
    /// Let named image digests start for a while (at most 24h) although pullgate refuses them:
    /// for a node whose mirror or trust root is unusable. Recorded and alerted on.
    #[command(long_about = pullgate::cmd::break_glass::LONG_ABOUT)]
    BreakGlass(pullgate::cmd::break_glass::BreakGlassArgs),
    /// Write the man pages (one per command) and bash, zsh and fish completions, generated
    /// from these definitions: DIR/man1/*.1 and DIR/completions/. For packaging.
    #[command(hide = true)]
    Manual {
        /// Output directory (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `pullgate report ... | head`: the reader goes away before the output ends. Rust ignores
/// SIGPIPE, so the next write fails with EPIPE and the print macros panic with a backtrace hint.
/// A command whose output nobody reads any more stops quietly instead, with the status a shell
/// shows for a process killed by SIGPIPE (128 + 13), as other Unix tools do. Every other panic
/// keeps the default report. (The daemon's sockets are not stdout: this changes nothing there.)
fn stop_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
        if message.is_some_and(|m| m.starts_with("failed printing to stdout") && m.contains("Broken pipe")) {
            std::process::exit(exit::BROKEN_PIPE);
        }
        default(info);
    }));
}

#[derive(Args)]
struct ServeArgs {
    /// YAML configuration file. Without it pullgate runs as a pure pass-through proxy with
    /// built-in defaults (and warns that nothing is checked). A file that is missing or invalid
    /// is an error (exit 64), never a silent pass-through.
    #[arg(long, short = 'c', value_name = "FILE", env = "PULLGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Socket to serve CRI on (kubelet's containerRuntimeEndpoint); overrides `listen`.
    /// Default: /run/pullgate/pullgate.sock. Ignored under systemd socket activation.
    #[arg(long, value_name = "PATH")]
    listen: Option<PathBuf>,
    /// containerd's CRI socket to forward to; overrides `upstream`.
    /// Default: /run/containerd/containerd.sock.
    #[arg(long, value_name = "PATH")]
    upstream: Option<PathBuf>,
    /// Log format; overrides `log.format`.
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Log filter (`info`, `debug`, `pullgate=debug`); overrides `log.level`. RUST_LOG also works.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Threads that serve CRI calls. With 1 (the default) every call is proxied on one thread,
    /// which costs the least CPU and latency per call; signature verification runs on separate
    /// threads either way. More threads only help if one core cannot keep up.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    worker_threads: u16,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file exactly as `serve` would; exit 0 if valid, 64 if not.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    stop_quietly_when_stdout_closes();
    // A bad command line is a usage error like any other: 64, not clap's 2. Help and
    // --version print on stdout and exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return status(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Verify(args) => status(pullgate::cmd::verify::run_verify(args)),
        Command::VerifyImageFiles(args) => status(pullgate::cmd::verify_files::run_verify_image_files(args)),
        Command::VerifyBundle(args) => status(pullgate::cmd::verify_files::run_verify_bundle(args)),
        Command::TrustRoot(cmd) => status(pullgate::cmd::trust_root::run(&cmd)),
        Command::Report(args) => status(pullgate::cmd::report::run(&args)),
        Command::Doctor(args) => status(pullgate::cmd::doctor::run(&args)),
        Command::BreakGlass(args) => status(pullgate::cmd::break_glass::run(&args)),
        Command::Manual { out } => match manual(&out) {
            Ok(pages) => {
                println!("{pages} man pages and 3 completion scripts in {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pullgate: manual: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Config(ConfigCommand::Check { file }) => match Config::load(&file) {
            Ok(config) => {
                for w in config.policy.as_ref().map(|p| p.warnings()).unwrap_or_default() {
                    eprintln!("warning: {w}");
                }
                println!("{}: valid", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pullgate: invalid configuration: {e}");
                status(exit::USAGE)
            }
        },
    }
}

/// Man pages for `pullgate` and each (visible) subcommand, named `pullgate-<sub>[-<sub>].1`,
/// and completion scripts; returns the number of pages.
fn manual(out: &Path) -> std::io::Result<usize> {
    use clap_complete::Shell;
    let man = out.join("man1");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(Cli::command(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "pullgate", &completions)?;
    }
    Ok(std::fs::read_dir(&man)?.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "1"))).count())
}

fn serve(args: ServeArgs) -> ExitCode {
    // Before anything else: a SIGHUP during startup must neither kill pullgate nor be lost.
    pullgate::daemon::hold_reload_signal();
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("pullgate: invalid configuration: {e}");
                return status(exit::USAGE);
            }
        },
        None => Config::default(),
    };
    if let Some(p) = args.listen {
        config.listen = p;
    }
    if let Some(p) = args.upstream {
        config.upstream = p;
    }
    if let Some(f) = args.log_format {
        config.log.format = f;
    }
    if let Some(l) = args.log_level {
        config.log.level = l;
    }
    if let Err(e) = init_logging(&config) {
        eprintln!("pullgate: invalid log filter: {e}");
        return status(exit::USAGE);
    }
    if args.config.is_none() {
        tracing::warn!("no --config given: running as a pure pass-through proxy, no image is checked");
    } else if config.policy.is_none() {
        tracing::warn!("the configuration has no `policy` section: running as a pure pass-through proxy, no image is checked");
    }
    // Before any thread exists: this edits the environment.
    let activated = match pullgate::cri::listener::Listener::systemd_socket() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = match args.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pullgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = pullgate::daemon::termination_signal();
    match runtime.block_on(pullgate::daemon::run(config, args.config.as_deref(), activated, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ pullgate::daemon::StartError::Policy(_)) => {
            tracing::error!("{e}");
            status(exit::USAGE)
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env),
        _ => EnvFilter::try_new(&config.log.level),
    }
    .map_err(|e| e.to_string())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.init(),
    }
    Ok(())
}
