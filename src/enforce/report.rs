//! `pullgate report`: what enforce mode would have refused, per policy, from the audit log.
//!
//! The coverage check before switching a policy from `audit` to `enforce`: run the policy in
//! audit mode for a while, then list every image it would have refused (with namespaces,
//! reasons and counts). An empty list for a policy means its pipelines all emit signatures that
//! verify; anything listed is a pipeline to fix or an exemption to add first.
//!
//! The command is [`crate::cmd::report`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use jiff::Timestamp;
use serde::Serialize;

use super::audit::AuditRecord;

/// One image a policy would refuse.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageRefusal {
    pub image: String,
    /// What the image was to the call when it was not the container's own image (`image volume
    /// /data`, `sandbox image`): such images are listed on their own, apart from the same
    /// image run as a container.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub surface: String,
    pub digests: BTreeSet<String>,
    pub namespaces: BTreeSet<String>,
    /// `PullImage`, `CreateContainer`.
    pub calls: BTreeSet<String>,
    /// Modes the decisions were made in: `audit` (let through) or `enforce` (refused).
    pub modes: BTreeSet<String>,
    pub count: usize,
    /// Reason categories with counts.
    pub categories: BTreeMap<String, usize>,
    /// Distinct full reasons, at most [`MAX_REASONS`].
    pub reasons: Vec<String>,
    pub first_seen: String,
    pub last_seen: String,
}

/// Distinct reasons kept per image.
pub const MAX_REASONS: usize = 3;

/// One policy's part of the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyReport {
    pub policy: String,
    pub modes: BTreeSet<String>,
    /// Decisions this policy took part in.
    pub decisions: usize,
    pub allowed: usize,
    /// Decisions this policy failed: refused in enforce mode, let through in audit mode.
    pub would_refuse: usize,
    pub namespaces: BTreeMap<String, usize>,
    pub categories: BTreeMap<String, usize>,
    /// Most refused first.
    pub images: Vec<ImageRefusal>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub files: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// Records in the window.
    pub decisions: usize,
    pub would_refuse: usize,
    /// Lines that were not audit records.
    pub skipped_lines: usize,
    /// Records outside the window, or without a readable time.
    pub outside_window: usize,
    pub policies: Vec<PolicyReport>,
}

impl Report {
    /// Whether anything in the window would be refused.
    pub fn has_refusals(&self) -> bool {
        self.would_refuse > 0
    }
}

/// A window bound: `24h` back from `now`, or an RFC 3339 time.
pub fn parse_when(s: &str, now: Timestamp) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let d = crate::settings::parse_duration(s).map_err(|_| format!("{s:?} is neither a duration (24h, 7d) nor an RFC 3339 time"))?;
    let d = jiff::SignedDuration::try_from(d).map_err(|e| e.to_string())?;
    now.checked_sub(d).map_err(|e| format!("{s:?}: {e}"))
}

/// The policies a record's refusal is attributed to: those its reason names as failing, or
/// every policy listed when the reason names none (a mirror error applies to all of them).
fn failing_policies(r: &AuditRecord) -> Vec<String> {
    let listed: Vec<String> = r.policy.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
    let named: Vec<String> = listed.iter().filter(|p| r.reason.contains(&format!("policy {p}: "))).cloned().collect();
    if named.is_empty() {
        listed
    } else {
        named
    }
}

/// Builds the report over `records` (already read), keeping those in `[since, until]`.
pub fn build(records: &[AuditRecord], since: Option<Timestamp>, until: Option<Timestamp>, only: Option<&str>) -> Report {
    let mut report = Report {
        files: Vec::new(),
        since,
        until,
        decisions: 0,
        would_refuse: 0,
        skipped_lines: 0,
        outside_window: 0,
        policies: Vec::new(),
    };
    let mut policies: BTreeMap<String, PolicyReport> = BTreeMap::new();
    let mut images: BTreeMap<(String, String, String), ImageRefusal> = BTreeMap::new();
    for r in records {
        let Ok(time) = r.time.parse::<Timestamp>() else {
            report.outside_window += 1;
            continue;
        };
        if since.is_some_and(|s| time < s) || until.is_some_and(|u| time > u) {
            report.outside_window += 1;
            continue;
        }
        let listed: Vec<&str> = r.policy.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        if only.is_some_and(|o| !listed.contains(&o)) {
            continue;
        }
        report.decisions += 1;
        // Format 1 wrote `deny` for audit-mode calls it let through; format 2 `would_deny`.
        let deny = r.would_refuse();
        let failing = if deny { failing_policies(r) } else { Vec::new() };
        if deny && failing.iter().any(|p| only.is_none_or(|o| o == p)) {
            report.would_refuse += 1;
        }
        // As recorded; records older than `category`: by their wording.
        let category = r.category();
        for name in listed {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let p = policies.entry(name.to_string()).or_insert_with(|| PolicyReport {
                policy: name.to_string(),
                modes: BTreeSet::new(),
                decisions: 0,
                allowed: 0,
                would_refuse: 0,
                namespaces: BTreeMap::new(),
                categories: BTreeMap::new(),
                images: Vec::new(),
            });
            p.decisions += 1;
            if let Some(mode) = r.mode {
                p.modes.insert(mode.as_str().to_string());
            }
            if !failing.iter().any(|f| f == name) {
                if !deny {
                    p.allowed += 1;
                }
                continue;
            }
            p.would_refuse += 1;
            *p.namespaces.entry(r.namespace.clone()).or_default() += 1;
            *p.categories.entry(category.clone()).or_default() += 1;
            let img = images.entry((name.to_string(), r.image.clone(), r.surface.clone())).or_insert_with(|| ImageRefusal {
                image: r.image.clone(),
                surface: r.surface.clone(),
                digests: BTreeSet::new(),
                namespaces: BTreeSet::new(),
                calls: BTreeSet::new(),
                modes: BTreeSet::new(),
                count: 0,
                categories: BTreeMap::new(),
                reasons: Vec::new(),
                first_seen: r.time.clone(),
                last_seen: r.time.clone(),
            });
            img.count += 1;
            if !r.digest.is_empty() {
                img.digests.insert(r.digest.clone());
            }
            if !r.namespace.is_empty() {
                img.namespaces.insert(r.namespace.clone());
            }
            img.calls.insert(r.call.clone());
            if let Some(mode) = r.mode {
                img.modes.insert(mode.as_str().to_string());
            }
            *img.categories.entry(category.clone()).or_default() += 1;
            if img.reasons.len() < MAX_REASONS && !img.reasons.contains(&r.reason) {
                img.reasons.push(r.reason.clone());
            }
            if r.time < img.first_seen {
                img.first_seen = r.time.clone();
            }
            if r.time > img.last_seen {
                img.last_seen = r.time.clone();
            }
        }
    }
    for ((policy, _, _), img) in images {
        if let Some(p) = policies.get_mut(&policy) {
            p.images.push(img);
        }
    }
    for p in policies.values_mut() {
        p.images.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.image.cmp(&b.image)));
    }
    let mut list: Vec<PolicyReport> = policies.into_values().collect();
    // Policies with something to refuse first, then the rest by name.
    list.sort_by(|a, b| (b.would_refuse > 0).cmp(&(a.would_refuse > 0)).then_with(|| a.policy.cmp(&b.policy)));
    report.policies = list;
    report
}

fn join<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    items.into_iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// The human rendering.
pub fn render_human(r: &Report) -> String {
    let mut out = String::new();
    let w = &mut out;
    let window = match (r.since, r.until) {
        (Some(s), Some(u)) => format!("from {s} to {u}"),
        (Some(s), None) => format!("since {s}"),
        (None, Some(u)) => format!("until {u}"),
        (None, None) => "all time".into(),
    };
    let _ = writeln!(w, "pullgate report: {} decisions {window} in {}", r.decisions, r.files.join(", "));
    if r.skipped_lines > 0 || r.outside_window > 0 {
        let _ = writeln!(w, "  ({} lines were not audit records, {} records outside the window)", r.skipped_lines, r.outside_window);
    }
    if !r.has_refusals() {
        let _ = writeln!(w, "enforce mode would refuse nothing in this window.");
    } else {
        let images: usize = r.policies.iter().map(|p| p.images.len()).sum();
        let _ = writeln!(w, "enforce mode would refuse {} decisions ({} image(s) across policies):", r.would_refuse, images);
    }
    for p in r.policies.iter().filter(|p| p.would_refuse > 0) {
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "policy {} ({}): {} decisions, {} would be refused",
            p.policy,
            if p.modes.is_empty() { "-".to_string() } else { join(&p.modes) },
            p.decisions,
            p.would_refuse
        );
        let ns: Vec<String> = p.namespaces.iter().map(|(n, c)| format!("{}={c}", if n.is_empty() { "(none)" } else { n })).collect();
        let cats: Vec<String> = p.categories.iter().map(|(n, c)| format!("{n}={c}")).collect();
        let _ = writeln!(w, "  namespaces: {}", ns.join(" "));
        let _ = writeln!(w, "  reasons:    {}", cats.join(" "));
        for img in &p.images {
            let _ = writeln!(
                w,
                "  {}x {}{}  {}  namespaces: {}  calls: {}  last {}",
                img.count,
                img.image,
                if img.surface.is_empty() { String::new() } else { format!(" ({})", img.surface) },
                if img.digests.is_empty() { "-".into() } else { join(&img.digests) },
                if img.namespaces.is_empty() { "-".into() } else { join(&img.namespaces) },
                join(&img.calls),
                img.last_seen
            );
            for reason in &img.reasons {
                let _ = writeln!(w, "      {reason}");
            }
        }
    }
    let clean: Vec<String> = r.policies.iter().filter(|p| p.would_refuse == 0).map(|p| format!("{} ({})", p.policy, p.decisions)).collect();
    if !clean.is_empty() {
        let _ = writeln!(w);
        let _ = writeln!(w, "nothing to refuse (decisions): {}", clean.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Mode;

    fn rec(time: &str, image: &str, ns: &str, policy: &str, mode: &str, decision: &str, reason: &str) -> AuditRecord {
        AuditRecord {
            time: time.into(),
            call: "PullImage".into(),
            namespace: ns.into(),
            image: image.into(),
            digest: format!("sha256:{}", image.len()),
            policy: policy.into(),
            mode: match mode {
                "enforce" => Some(Mode::Enforce),
                "audit" => Some(Mode::Audit),
                _ => None,
            },
            decision: decision.into(),
            reason: reason.into(),
            ..Default::default()
        }
    }

    fn log() -> Vec<AuditRecord> {
        vec![
            rec(
                "2024-05-01T10:00:00Z",
                "reg/app:1",
                "team-a",
                "team-a,all",
                "audit",
                "allow",
                "policy team-a: verified; policy all: verified",
            ),
            rec(
                "2024-05-01T11:00:00Z",
                "reg/unsigned:1",
                "team-a",
                "team-a,all",
                "audit",
                "deny",
                "image reg/unsigned:1 (sha256:14) denied by policy team-a: no signatures found; policy all: no signatures found",
            ),
            rec(
                "2024-05-01T12:00:00Z",
                "reg/unsigned:1",
                "team-b",
                "all",
                "audit",
                "deny",
                "image reg/unsigned:1 (sha256:14) denied by policy all: no signatures found",
            ),
            rec(
                "2024-05-01T12:30:00Z",
                "reg/forked:1",
                "team-a",
                "team-a,all",
                "audit",
                "deny",
                "image reg/forked:1 (sha256:12) denied by policy team-a: referrer: identity mismatch: got x, want y",
            ),
            rec(
                "2024-05-01T13:00:00Z",
                "reg/other:1",
                "team-a",
                "team-a,all",
                "audit",
                "deny",
                "cannot resolve reg/other:1 on the registry mirror: connection refused",
            ),
            rec(
                "2024-05-01T14:00:00Z",
                "docker.io/library/nginx:1",
                "web",
                "unmatched",
                "enforce",
                "deny",
                "image docker.io/library/nginx:1 matches no policy and policy.unmatched is deny",
            ),
            rec("2024-05-01T15:00:00Z", "reg/pause:1", "", "exempt:sandbox", "", "allow", "exempt by exemption sandbox"),
            rec(
                "2024-05-03T00:00:00Z",
                "reg/late:1",
                "team-a",
                "all",
                "audit",
                "deny",
                "image reg/late:1 (sha256:10) denied by policy all: no signatures found",
            ),
            rec("garbage", "reg/undated:1", "team-a", "all", "audit", "deny", "no signatures found"),
        ]
    }

    #[test]
    fn refusals_are_attributed_to_the_failing_policy() {
        let since = parse_when("2024-05-01T00:00:00Z", Timestamp::now()).unwrap();
        let until = parse_when("2024-05-02T00:00:00Z", Timestamp::now()).unwrap();
        let r = build(&log(), Some(since), Some(until), None);
        assert_eq!(r.decisions, 7);
        assert_eq!(r.outside_window, 2, "the late record and the undated one");
        assert_eq!(r.would_refuse, 5);
        let p = |name: &str| r.policies.iter().find(|p| p.policy == name).unwrap().clone();
        let team_a = p("team-a");
        assert_eq!((team_a.decisions, team_a.allowed, team_a.would_refuse), (4, 1, 3));
        let images: Vec<&str> = team_a.images.iter().map(|i| i.image.as_str()).collect();
        assert_eq!(images, ["reg/forked:1", "reg/other:1", "reg/unsigned:1"]);
        assert_eq!(team_a.categories.get("identity"), Some(&1));
        assert_eq!(team_a.categories.get("mirror"), Some(&1));
        // `all` failed the unsigned image in two namespaces, but not the forked one (only
        // team-a's identity rule refused it).
        let all = p("all");
        assert_eq!(all.would_refuse, 3);
        let unsigned = all.images.iter().find(|i| i.image == "reg/unsigned:1").unwrap();
        assert_eq!(unsigned.count, 2);
        assert_eq!(unsigned.namespaces.iter().cloned().collect::<Vec<_>>(), ["team-a", "team-b"]);
        assert_eq!(unsigned.first_seen, "2024-05-01T11:00:00Z");
        assert!(!all.images.iter().any(|i| i.image == "reg/forked:1"));
        let unmatched = p("unmatched");
        assert_eq!(unmatched.images[0].modes.iter().cloned().collect::<Vec<_>>(), ["enforce"]);
        assert_eq!(p("exempt:sandbox").would_refuse, 0);
        // Refusing policies come first.
        assert_eq!(r.policies.last().unwrap().policy, "exempt:sandbox");
        let human = render_human(&r);
        assert!(human.contains("policy team-a (audit): 4 decisions, 3 would be refused"), "{human}");
        assert!(human.contains("2x reg/unsigned:1"), "{human}");
        assert!(human.contains("nothing to refuse (decisions): exempt:sandbox (1)"), "{human}");
    }

    #[test]
    fn format_1_and_format_2_logs_report_the_same() {
        // The same decisions as format 2 writes them: audit-mode refusals are `allow` +
        // `would_deny`, read back through JSON as `pullgate report` does.
        let v2: Vec<AuditRecord> = log()
            .into_iter()
            .map(|r| {
                let refused = r.mode == Some(Mode::Enforce) && r.decision == "deny";
                let verdict = r.verdict(refused);
                let line = serde_json::to_string(&r.settled(verdict)).unwrap();
                serde_json::from_str(&line).unwrap()
            })
            .collect();
        assert!(v2.iter().all(|r| r.format == 2 && (r.mode != Some(Mode::Audit) || r.decision == "allow")));
        let one = build(&log(), None, None, None);
        let two = build(&v2, None, None, None);
        assert_eq!((two.decisions, two.would_refuse), (one.decisions, one.would_refuse));
        assert_eq!(render_human(&two), render_human(&one));
    }

    #[test]
    fn one_policy_and_open_windows() {
        let r = build(&log(), None, None, Some("all"));
        assert_eq!(r.policies.len(), 1);
        assert_eq!(r.would_refuse, 4, "late record included without a window");
        let none = build(&log()[..1], None, None, None);
        assert!(!none.has_refusals());
        assert!(render_human(&none).contains("would refuse nothing"));
    }

    #[test]
    fn window_bounds() {
        let now: Timestamp = "2024-05-02T00:00:00Z".parse().unwrap();
        assert_eq!(parse_when("24h", now).unwrap().to_string(), "2024-05-01T00:00:00Z");
        assert_eq!(parse_when("2024-05-01T10:00:00+02:00", now).unwrap().to_string(), "2024-05-01T08:00:00Z");
        assert!(parse_when("yesterday", now).is_err());
    }
}
