//! `trust-root status`: what is installed, how long it stays usable, and a verdict whose exit
//! code can gate a build or a cron job.
//!
//! | exit | verdict |
//! |---|---|
//! | 0 | fresh |
//! | 1 | expiring: stale within `warn_before` |
//! | 2 | stale: decisions fail closed |
//! | 3 | no trust root installed |
//! | 4 | the installed root is damaged or unusable |
//! | 64 | bad command line or configuration |

use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use sigstore_verify::types::TimeRange;

use super::freshness::{Deadline, Freshness, FreshnessPolicy};
use super::manifest::Manifest;
use super::state::{LastImport, StateDir};
use crate::verify::trust::TrustMaterial;

/// The verdict and its exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    Fresh,
    Expiring { days: i64 },
    Stale { since: Timestamp },
    NoneInstalled,
    Invalid { reason: String },
}

impl Verdict {
    pub fn exit_code(&self) -> i32 {
        match self {
            Verdict::Fresh => 0,
            Verdict::Expiring { .. } => 1,
            Verdict::Stale { .. } => 2,
            Verdict::NoneInstalled => 3,
            Verdict::Invalid { .. } => 4,
        }
    }
}

/// Where a key stands at the report's instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowState {
    Active,
    NotYetValid,
    Ended,
}

/// One key or CA of the trusted root with its `validFor` window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyWindow {
    /// `fulcio-ca`, `rekor-log`, `ct-log` or `tsa`.
    pub kind: &'static str,
    /// The service URL, or the CA subject when there is none.
    pub name: String,
    /// Log ID (hex) for logs; CA subject for authorities.
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Timestamp>,
    pub state: WindowState,
}

/// Everything `trust-root status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub state_dir: String,
    pub now: Timestamp,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub exit_code: i32,
    pub max_age: String,
    pub warn_before: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
    /// `fresh_since + max_age`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age_deadline: Option<Timestamp>,
    /// The earliest limit, and which it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_at: Option<Deadline>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_until_stale: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_root_digest: Option<String>,
    pub keys: Vec<KeyWindow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_import: Option<LastImport>,
}

/// Builds the report for the root installed in `state` at `now`.
pub fn build(state: &StateDir, policy: FreshnessPolicy, now: Timestamp) -> StatusReport {
    let mut report = StatusReport {
        state_dir: state.path().display().to_string(),
        now,
        verdict: Verdict::NoneInstalled,
        exit_code: 0,
        max_age: format_duration(policy.max_age),
        warn_before: format_duration(policy.warn_before),
        manifest: None,
        max_age_deadline: None,
        stale_at: None,
        seconds_until_stale: None,
        trusted_root_digest: None,
        keys: Vec::new(),
        last_import: state.last_import().ok().flatten(),
    };
    let installed = match state.load_current() {
        Ok(Some(installed)) => installed,
        Ok(None) => return finish(report),
        Err(e) => {
            report.verdict = Verdict::Invalid { reason: e.to_string() };
            return finish(report);
        }
    };
    let manifest = installed.manifest;
    report.max_age_deadline = Some(policy.max_age_deadline(&manifest));
    let freshness = policy.evaluate(&manifest, now);
    report.stale_at = Some(policy.stale_at(&manifest));
    report.seconds_until_stale = Some(freshness.seconds_until_stale(now));
    report.verdict = match freshness {
        Freshness::Fresh { .. } => Verdict::Fresh,
        Freshness::Expiring { stale_at } => Verdict::Expiring { days: stale_at.at.duration_since(now).as_secs() / 86400 },
        Freshness::Stale { since, .. } => Verdict::Stale { since },
    };
    report.manifest = Some(manifest);
    let material = std::str::from_utf8(&installed.trusted_root)
        .map_err(|e| e.to_string())
        .and_then(|json| TrustMaterial::from_json(json).map_err(|e| e.to_string()));
    match material {
        Ok(material) => {
            report.trusted_root_digest = Some(material.source_digest().to_string());
            report.keys = key_windows(&material, now);
        }
        Err(reason) => report.verdict = Verdict::Invalid { reason: format!("trusted_root.json: {reason}") },
    }
    finish(report)
}

fn finish(mut report: StatusReport) -> StatusReport {
    report.exit_code = report.verdict.exit_code();
    report
}

/// Kinds of key a keyless verification needs at least one active instance of.
pub const ESSENTIAL_KINDS: [&str; 3] = ["fulcio-ca", "rekor-log", "ct-log"];

/// The essential kinds with no key active at the report's instant (for an import-time warning:
/// such a root only verifies signatures made in the past).
pub fn inactive_kinds(keys: &[KeyWindow]) -> Vec<&'static str> {
    ESSENTIAL_KINDS.into_iter().filter(|kind| !keys.iter().any(|k| k.kind == *kind && k.state == WindowState::Active)).collect()
}

/// The keys and CAs of a trusted root with their validity windows.
pub fn key_windows(material: &TrustMaterial, now: Timestamp) -> Vec<KeyWindow> {
    let root = material.trusted_root();
    let mut keys = Vec::new();
    let window = |kind, name: String, id: String, range: Option<TimeRange>| KeyWindow {
        kind,
        name,
        id,
        valid_from: range.map(|r| r.start),
        valid_until: range.and_then(|r| r.end),
        state: match range {
            Some(r) if now < r.start => WindowState::NotYetValid,
            Some(TimeRange { end: Some(end), .. }) if now > end => WindowState::Ended,
            _ => WindowState::Active,
        },
    };
    let subject = |s: &sigstore_trust_root::trusted_root::CertificateSubject| {
        [s.organization.as_deref(), s.common_name.as_deref()].into_iter().flatten().collect::<Vec<_>>().join("/")
    };
    for ca in &root.certificate_authorities {
        keys.push(window("fulcio-ca", ca.uri.clone(), subject(&ca.subject), ca.valid_for));
    }
    for log in &root.tlogs {
        keys.push(window("rekor-log", log.base_url.clone(), hex::encode(log.log_id.key_id.as_bytes()), log.public_key.valid_for));
    }
    for log in &root.ctlogs {
        keys.push(window("ct-log", log.base_url.clone(), hex::encode(log.log_id.key_id.as_bytes()), log.public_key.valid_for));
    }
    for tsa in &root.timestamp_authorities {
        let name = tsa.uri.clone().unwrap_or_else(|| subject(&tsa.subject));
        keys.push(window("tsa", name, subject(&tsa.subject), tsa.valid_for));
    }
    keys
}

/// The human rendering.
pub fn render_human(report: &StatusReport) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "trust root in {}", report.state_dir);
    match &report.verdict {
        Verdict::NoneInstalled => {
            let _ = writeln!(w, "verdict:      none installed (run `pullgate trust-root import`)");
            last_import(w, report);
            return out;
        }
        Verdict::Invalid { reason } if report.manifest.is_none() => {
            let _ = writeln!(w, "verdict:      unusable: {reason}");
            last_import(w, report);
            return out;
        }
        _ => {}
    }
    let m = report.manifest.as_ref().expect("installed");
    let _ = writeln!(w, "kind:         {}", m.kind.as_str());
    let _ = writeln!(w, "source:       {}", m.source);
    let _ = writeln!(w, "generation:   {}", m.generation);
    let _ = writeln!(w, "imported at:  {}", m.imported_at);
    if let Some(p) = &m.pinned_root {
        let _ = writeln!(w, "pinned root:  {} (version {}, sha256 {})", p.source, p.version, p.sha256);
    }
    if let Some(roles) = &m.roles {
        let _ = writeln!(w, "roles:");
        for (name, r) in roles.iter() {
            let note = match name {
                "timestamp" | "snapshot" => "  (enforced at import)",
                _ => "",
            };
            let _ = writeln!(w, "  {name:<10} version {:<6} expires {}{note}", r.version, r.expires);
        }
    }
    if m.rollback_protection_reset {
        let _ = writeln!(w, "note:         imported with --reset-rollback-protection");
    }
    if let Some(d) = report.max_age_deadline {
        let _ = writeln!(w, "max_age:      {} from {} -> {}", report.max_age, m.fresh_since, d);
    }
    if let Some(s) = &report.stale_at {
        let _ = writeln!(w, "stale at:     {} ({})", s.at, s.limit.describe());
    }
    let verdict = match &report.verdict {
        Verdict::Fresh => "fresh".to_string(),
        Verdict::Expiring { days } => format!("expiring in {}", plural_days(*days)),
        Verdict::Stale { since } => format!("stale since {since}: import a fresh mirror"),
        Verdict::Invalid { reason } => format!("unusable: {reason}"),
        Verdict::NoneInstalled => unreachable!(),
    };
    let _ = writeln!(w, "verdict:      {verdict}");
    if let Some(digest) = &report.trusted_root_digest {
        let _ =
            writeln!(w, "keys ({} {digest}; each is used only for signing times inside its window):", super::manifest::TRUSTED_ROOT_FILE);
    }
    for k in &report.keys {
        let from = k.valid_from.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
        let until = k.valid_until.map(|t| t.to_string()).unwrap_or_else(|| "open".into());
        let state = match k.state {
            WindowState::Active => "active",
            WindowState::NotYetValid => "not yet valid",
            WindowState::Ended => "ended",
        };
        let _ = writeln!(w, "  {:<9} {}  {from} .. {until}  {state}", k.kind, k.name);
        if !k.id.is_empty() {
            let _ = writeln!(w, "            {}", k.id);
        }
    }
    last_import(w, report);
    out
}

fn last_import(w: &mut String, report: &StatusReport) {
    if let Some(l) = &report.last_import {
        let outcome = match (&l.error, l.generation) {
            (Some(e), _) => format!("failed: {e}"),
            (None, Some(g)) => format!("installed generation {g}"),
            (None, None) => "ok".into(),
        };
        let _ = writeln!(w, "last import:  {} from {}: {outcome}", l.at, l.source);
    }
}

fn plural_days(days: i64) -> String {
    match days {
        0 => "less than a day".into(),
        1 => "1 day".into(),
        n => format!("{n} days"),
    }
}

/// `30d`, `12h`, `90s`: the config's own notation.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86400) {
        format!("{}d", s / 86400)
    } else if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if d.subsec_millis() == 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}
