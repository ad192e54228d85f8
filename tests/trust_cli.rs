//! `pullgate trust-root import|status` as the lead mounts them: argument parsing, exit codes
//! and the status report (human and JSON).

#[path = "support/tuf/mod.rs"]
mod tuf;

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use jiff::Timestamp;
use pullgate::cmd::trust_root::{run, run_import, run_status, ImportArgs, StateArgs, StatusArgs, TrustRootCommand};
use pullgate::cmd::OutputFormat;
use pullgate::trust::freshness::FreshnessPolicy;
use pullgate::trust::state::StateDir;
use pullgate::trust::status::{self, Verdict};
use tuf::Repo;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: TrustRootCommand,
}

fn parse(args: &[&str]) -> TrustRootCommand {
    Cli::try_parse_from(std::iter::once("trust-root").chain(args.iter().copied())).unwrap().command
}

fn import_args(state: &Path) -> ImportArgs {
    ImportArgs {
        from: None,
        root: None,
        trusted_root: None,
        accept_unverified_trusted_root: false,
        reset_rollback_protection: false,
        state: StateArgs { config: None, state_dir: Some(state.to_owned()) },
    }
}

fn status_args(state: &Path) -> StatusArgs {
    StatusArgs {
        output: OutputFormat::Human,
        max_age: None,
        warn_before: None,
        state: StateArgs { config: None, state_dir: Some(state.to_owned()) },
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
    repo: Repo,
    state: PathBuf,
}

/// A repository published now, so the command's real clock finds it current.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(&tmp.path().join("repo"), Timestamp::now());
    let state = tmp.path().join("state");
    Fixture { tmp, repo, state }
}

impl Fixture {
    fn import(&self) -> i32 {
        let mut args = import_args(&self.state);
        args.from = Some(self.repo.dir.clone());
        args.root = Some(self.repo.root_path(1));
        run_import(&args)
    }
}

#[test]
fn arguments_parse_as_mounted() {
    Cli::command().debug_assert();
    let TrustRootCommand::Import(a) = parse(&["import", "--from", "/mirror", "--root", "/r.json", "--state-dir", "/s"]) else { panic!() };
    assert_eq!(a.from.as_deref(), Some(Path::new("/mirror")));
    assert_eq!(a.root.as_deref(), Some(Path::new("/r.json")));
    assert_eq!(a.state.state_dir.as_deref(), Some(Path::new("/s")));
    let TrustRootCommand::Import(a) = parse(&["import", "--trusted-root", "/t.json", "--accept-unverified-trusted-root"]) else { panic!() };
    assert!(a.accept_unverified_trusted_root && a.trusted_root.is_some());
    let TrustRootCommand::Status(s) = parse(&["status", "--output", "json", "--max-age", "45d"]) else { panic!() };
    assert_eq!((s.output, s.max_age.as_deref()), (OutputFormat::Json, Some("45d")));
}

#[test]
fn bad_usage_exits_64_and_touches_nothing() {
    let f = fixture();
    let file = f.tmp.path().join("trusted_root.json");
    std::fs::write(&file, tuf::production_trusted_root()).unwrap();
    type Case<'a> = Box<dyn Fn(&mut ImportArgs) + 'a>;
    let cases: Vec<Case> = vec![
        Box::new(|_| {}),
        Box::new(|a| {
            a.from = Some("/m".into());
            a.trusted_root = Some("/t".into());
        }),
        // The explicit flag is required for a bare trusted root.
        Box::new(|a| a.trusted_root = Some(file.clone())),
        Box::new(|a| {
            a.trusted_root = Some(file.clone());
            a.accept_unverified_trusted_root = true;
            a.root = Some("/r".into());
        }),
        Box::new(|a| {
            a.from = Some("/m".into());
            a.accept_unverified_trusted_root = true;
        }),
        Box::new(|a| {
            a.from = Some("/m".into());
            a.state.state_dir = Some("relative".into());
        }),
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut args = import_args(&f.state);
        case(&mut args);
        assert_eq!(run_import(&args), 64, "case {i}");
    }
    assert!(!f.state.exists(), "usage errors never create state");

    let config = f.tmp.path().join("config.yaml");
    std::fs::write(&config, "trust_root:\n  max_agee: 3d\n").unwrap();
    let mut args = status_args(&f.state);
    args.state.config = Some(config);
    assert_eq!(run_status(&args), 64);
    let mut args = status_args(&f.state);
    args.max_age = Some("soon".into());
    assert_eq!(run_status(&args), 64);
    let mut args = status_args(&f.state);
    args.warn_before = Some("40d".into());
    assert_eq!(run_status(&args), 64, "warn_before must stay below max_age");
}

#[test]
fn status_exit_codes_tell_the_verdict() {
    let mut f = fixture();
    assert_eq!(run_status(&status_args(&f.state)), 3, "nothing installed");

    assert_eq!(f.import(), 0);
    assert_eq!(run(&TrustRootCommand::Status(status_args(&f.state))), 0, "fresh");

    // Targets expiring in 3 days: inside the 7-day warning window.
    f.repo.targets_expires = Timestamp::now() + 3 * tuf::DAY;
    f.repo.publish();
    assert_eq!(f.import(), 0);
    assert_eq!(run_status(&status_args(&f.state)), 1, "expiring");

    let mut args = status_args(&f.state);
    args.max_age = Some("1s".into());
    args.warn_before = Some("0s".into());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(run_status(&args), 2, "stale");

    // A refused import exits 1 and leaves the root in place.
    let old = f.tmp.path().join("old");
    f.repo.copy_to(&old);
    f.repo.publish();
    assert_eq!(f.import(), 0);
    let mut args = import_args(&f.state);
    args.from = Some(old);
    args.root = Some(f.repo.root_path(1));
    assert_eq!(run_import(&args), 1, "rollback refused");
    assert_eq!(StateDir::new(&f.state).load_current().unwrap().unwrap().manifest.generation, 3);

    // Another import running: 75.
    let lock = StateDir::new(&f.state).lock().unwrap();
    assert_eq!(f.import(), 75);
    drop(lock);

    // A damaged root: 4.
    let current = StateDir::new(&f.state).current_dir().unwrap().unwrap();
    std::fs::write(current.join("trusted_root.json"), b"{}").unwrap();
    assert_eq!(run_status(&status_args(&f.state)), 4, "damaged");
}

#[test]
fn config_section_supplies_the_state_dir() {
    let f = fixture();
    let config = f.tmp.path().join("config.yaml");
    std::fs::write(&config, format!("listen: /run/x.sock\ntrust_root:\n  state_dir: {}\n  max_age: 60d\n", f.state.display())).unwrap();
    let mut args = import_import_from_config(&f, &config);
    assert_eq!(run_import(&args), 0);
    args.state.state_dir = None;
    let status = StatusArgs {
        output: OutputFormat::Json,
        max_age: None,
        warn_before: None,
        state: StateArgs { config: Some(config), state_dir: None },
    };
    assert_eq!(run_status(&status), 0);
    assert!(StateDir::new(&f.state).load_current().unwrap().is_some());
}

fn import_import_from_config(f: &Fixture, config: &Path) -> ImportArgs {
    ImportArgs {
        from: Some(f.repo.dir.clone()),
        root: Some(f.repo.root_path(1)),
        trusted_root: None,
        accept_unverified_trusted_root: false,
        reset_rollback_protection: false,
        state: StateArgs { config: Some(config.to_owned()), state_dir: None },
    }
}

#[test]
fn unverified_import_needs_the_flag_and_says_so_in_status() {
    let f = fixture();
    let file = f.tmp.path().join("trusted_root.json");
    std::fs::write(&file, tuf::staging_trusted_root()).unwrap();
    let mut args = import_args(&f.state);
    args.trusted_root = Some(file);
    args.accept_unverified_trusted_root = true;
    assert_eq!(run_import(&args), 0);
    let report = status::build(&StateDir::new(&f.state), FreshnessPolicy::default(), Timestamp::now());
    assert_eq!(report.verdict, Verdict::Fresh);
    let text = status::render_human(&report);
    assert!(text.contains("kind:         unverified-trusted-root"), "{text}");
    assert!(text.contains("(max_age since the mirrored metadata was first imported)"), "{text}");
}

#[test]
fn status_report_human_and_json() {
    let f = fixture();
    assert_eq!(f.import(), 0);
    let now = Timestamp::now();
    let report = status::build(&StateDir::new(&f.state), FreshnessPolicy::default(), now);
    assert_eq!((report.verdict.clone(), report.exit_code), (Verdict::Fresh, 0));

    let text = status::render_human(&report);
    for needle in [
        "kind:         tuf",
        "generation:   1",
        "roles:",
        "  root       version 1",
        "  timestamp  version 1",
        "(enforced at import)",
        "max_age:      30d from ",
        "verdict:      fresh",
        "keys (trusted_root.json sha256:",
        "fulcio-ca",
        "rekor-log",
        "ct-log",
        "tsa",
        "last import:",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["verdict"], "fresh");
    assert_eq!(json["exit_code"], 0);
    assert_eq!(json["max_age"], "30d");
    assert_eq!(json["manifest"]["kind"], "tuf");
    assert_eq!(json["manifest"]["roles"]["root"]["version"], 1);
    assert_eq!(json["stale_at"]["limit"], "max-age");
    assert!(json["seconds_until_stale"].as_i64().unwrap() > 29 * 86400);
    let keys = json["keys"].as_array().unwrap();
    assert!(keys.iter().any(|k| k["kind"] == "fulcio-ca" && k["state"] == "active"));
    assert!(keys.iter().any(|k| k["state"] == "ended"), "the production root lists retired keys");

    // Expiring and stale verdicts carry their details.
    let policy = FreshnessPolicy { max_age: std::time::Duration::from_secs(10 * 86400), ..Default::default() };
    let report = status::build(&StateDir::new(&f.state), policy, now + jiff::SignedDuration::from_hours(24 * 5));
    assert_eq!(report.verdict, Verdict::Expiring { days: 4 });
    assert!(status::render_human(&report).contains("verdict:      expiring in 4 days"));
    let later = now + jiff::SignedDuration::from_hours(24 * 11);
    let report = status::build(&StateDir::new(&f.state), policy, later);
    let Verdict::Stale { since } = report.verdict else { panic!("{:?}", report.verdict) };
    let text = status::render_human(&report);
    assert!(text.contains(&format!("verdict:      stale since {since}: import a fresh mirror")), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!((json["verdict"].as_str(), json["exit_code"].as_i64()), (Some("stale"), Some(2)));
    assert_eq!(json["since"], since.to_string());
}
