//! `pullgate report`: the command over [`crate::enforce::report`].
//!
//! Exit codes: 0 nothing would be refused in the window, 1 something would, 64 bad usage,
//! 66 an audit log cannot be read.

use std::path::PathBuf;

use clap::Args;
use jiff::Timestamp;

use crate::cmd::{exit, OutputFormat};
use crate::enforce::audit::read_records;
use crate::enforce::report::{build, parse_when, render_human};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Audit log (JSON lines, `audit: {sink: file}`); repeat for rotated files
    /// (`--audit-log audit.log --audit-log audit.log.1`). Lines that are not audit records are
    /// skipped and counted, so `journalctl -u pullgate -o cat > FILE` works for the stdout sink.
    #[arg(long = "audit-log", value_name = "FILE", required = true)]
    pub audit_log: Vec<PathBuf>,
    /// Start of the window: a duration back from now (`24h`, `7d`) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// End of the window, same forms as --since. Default: now.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only this policy.
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    #[arg(long, value_enum, default_value = "human")]
    pub output: OutputFormat,
}

/// `pullgate report`; returns the exit code.
pub fn run(args: &ReportArgs) -> i32 {
    let now = Timestamp::now();
    let parse = |s: &Option<String>, flag: &str| -> Result<Option<Timestamp>, String> {
        s.as_deref().map(|v| parse_when(v, now).map_err(|e| format!("{flag}: {e}"))).transpose()
    };
    let (since, until) = match (parse(&args.since, "--since"), parse(&args.until, "--until")) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("pullgate: {e}");
            return exit::USAGE;
        }
    };
    let mut records = Vec::new();
    let mut skipped = 0;
    for file in &args.audit_log {
        match read_records(file) {
            Ok((r, bad)) => {
                records.extend(r);
                skipped += bad;
            }
            Err(e) => {
                eprintln!("pullgate: cannot read audit log {}: {e}", file.display());
                return exit::NO_INPUT;
            }
        }
    }
    let mut report = build(&records, since, until, args.policy.as_deref());
    report.files = args.audit_log.iter().map(|f| f.display().to_string()).collect();
    report.skipped_lines = skipped;
    match args.output {
        OutputFormat::Human => print!("{}", render_human(&report)),
        OutputFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("pullgate: {e}");
                return exit::FAILED;
            }
        },
    }
    if report.has_refusals() {
        exit::FAILED
    } else {
        exit::OK
    }
}
