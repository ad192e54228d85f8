//! When an installed trust root is too old to decide with.
//!
//! # The rule
//! An installed root is **stale** from the earliest of these instants on (`now >= stale_at`):
//! - `fresh_since + max_age` ([`Limit::MaxAge`]);
//! - the TUF `root` role's `expires` ([`Limit::RootExpiry`]);
//! - the TUF `targets` role's `expires` ([`Limit::TargetsExpiry`]).
//!
//! and **expiring** from `stale_at - warn_before` on. The short-lived `timestamp` and `snapshot`
//! roles (Sigstore's timestamp lives about a week) are enforced at import only: an import with
//! either expired fails, so a monthly-refreshed air-gapped mirror remains usable between
//! refreshes.
//!
//! # What `max_age` counts from
//! TUF metadata carries expiry times but no signing time, so "since the mirrored metadata was
//! signed" cannot be read off the files. pullgate uses `fresh_since` (recorded in the manifest):
//! the first time the verified timestamp role, this version with these exact bytes, was imported
//! into the state dir. Because an import requires the timestamp to be unexpired, the metadata was
//! signed no earlier than one timestamp lifetime before `fresh_since` (for Sigstore's public-good
//! instance: about 7 days), and re-importing the same timestamp later does not move
//! `fresh_since`. For an `unverified-trusted-root` import the anchor is the first import of the
//! same trusted_root.json bytes, and only `max_age` applies (there are no TUF roles).
//!
//! Nothing disables expiry: `max_age` is bounded by configuration validation, and the root and
//! targets expiry always apply.

use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::manifest::Manifest;

/// The run-time freshness policy (`trust_root.max_age`, `trust_root.warn_before`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshnessPolicy {
    pub max_age: Duration,
    pub warn_before: Duration,
}

impl Default for FreshnessPolicy {
    fn default() -> Self {
        FreshnessPolicy { max_age: super::config::DEFAULT_MAX_AGE, warn_before: super::config::DEFAULT_WARN_BEFORE }
    }
}

/// Which limit makes a root stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Limit {
    /// `fresh_since + max_age`.
    MaxAge,
    /// The TUF root role expires.
    RootExpiry,
    /// The TUF targets role expires.
    TargetsExpiry,
}

impl Limit {
    pub fn describe(self) -> &'static str {
        match self {
            Limit::MaxAge => "max_age since the mirrored metadata was first imported",
            Limit::RootExpiry => "TUF root role expiry",
            Limit::TargetsExpiry => "TUF targets role expiry",
        }
    }
}

/// An instant at which a root goes stale, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Deadline {
    pub at: Timestamp,
    pub limit: Limit,
}

/// The verdict on an installed root at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Usable, and more than `warn_before` from going stale.
    Fresh { stale_at: Deadline },
    /// Usable, but goes stale within `warn_before`: import a fresh mirror soon.
    Expiring { stale_at: Deadline },
    /// Not usable: every decision that needs the trust root fails closed.
    Stale { since: Timestamp, limit: Limit },
}

impl Freshness {
    pub fn is_stale(&self) -> bool {
        matches!(self, Freshness::Stale { .. })
    }

    /// The instant the root goes (or went) stale.
    pub fn stale_at(&self) -> Timestamp {
        match self {
            Freshness::Fresh { stale_at } | Freshness::Expiring { stale_at } => stale_at.at,
            Freshness::Stale { since, .. } => *since,
        }
    }

    pub fn limit(&self) -> Limit {
        match self {
            Freshness::Fresh { stale_at } | Freshness::Expiring { stale_at } => stale_at.limit,
            Freshness::Stale { limit, .. } => *limit,
        }
    }

    /// Seconds from `now` until stale; zero or negative once stale.
    pub fn seconds_until_stale(&self, now: Timestamp) -> i64 {
        self.stale_at().duration_since(now).as_secs()
    }

    /// The fail-closed error, when stale.
    pub fn stale_error(&self) -> Option<StaleError> {
        match self {
            Freshness::Stale { since, limit } => Some(StaleError { since: *since, limit: *limit }),
            _ => None,
        }
    }

    /// `fresh`, `expiring in N days`, `stale since T`: the one-line verdict.
    pub fn verdict(&self, now: Timestamp) -> String {
        match self {
            Freshness::Fresh { .. } => "fresh".into(),
            Freshness::Expiring { stale_at } => format!("expiring in {}", human_days(stale_at.at.duration_since(now))),
            Freshness::Stale { since, .. } => format!("stale since {since}"),
        }
    }
}

/// "3 days", "1 day", "less than a day" (rounded down, so a warning never overstates the time left).
pub fn human_days(d: SignedDuration) -> String {
    let days = d.as_secs().max(0) / 86400;
    match days {
        0 => "less than a day".into(),
        1 => "1 day".into(),
        n => format!("{n} days"),
    }
}

/// The error every enforce-mode decision that needs a stale trust root fails with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleError {
    pub since: Timestamp,
    pub limit: Limit,
}

impl fmt::Display for StaleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trust root stale since {}: import a fresh mirror", self.since)
    }
}

impl std::error::Error for StaleError {}

impl FreshnessPolicy {
    /// Every limit that applies to `manifest`, earliest first.
    pub fn deadlines(&self, manifest: &Manifest) -> Vec<Deadline> {
        let mut deadlines = vec![Deadline { at: add(manifest.fresh_since, self.max_age), limit: Limit::MaxAge }];
        if let Some(roles) = &manifest.roles {
            deadlines.push(Deadline { at: roles.root.expires, limit: Limit::RootExpiry });
            deadlines.push(Deadline { at: roles.targets.expires, limit: Limit::TargetsExpiry });
        }
        deadlines.sort_by_key(|d| d.at);
        deadlines
    }

    /// The earliest limit.
    pub fn stale_at(&self, manifest: &Manifest) -> Deadline {
        self.deadlines(manifest)[0]
    }

    /// The `max_age` deadline alone.
    pub fn max_age_deadline(&self, manifest: &Manifest) -> Timestamp {
        add(manifest.fresh_since, self.max_age)
    }

    pub fn evaluate(&self, manifest: &Manifest, now: Timestamp) -> Freshness {
        let stale_at = self.stale_at(manifest);
        if now >= stale_at.at {
            Freshness::Stale { since: stale_at.at, limit: stale_at.limit }
        } else if now >= sub(stale_at.at, self.warn_before) {
            Freshness::Expiring { stale_at }
        } else {
            Freshness::Fresh { stale_at }
        }
    }
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(signed(d)).unwrap_or(Timestamp::MAX)
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_sub(signed(d)).unwrap_or(Timestamp::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::manifest::{FileRecord, RoleRecord, RootKind, TufRoles, MANIFEST_FORMAT};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn manifest(fresh_since: &str, root_expires: &str, targets_expires: &str) -> Manifest {
        let role = |expires: &str| RoleRecord { version: 1, expires: ts(expires), sha256: String::new() };
        Manifest {
            format: MANIFEST_FORMAT,
            kind: RootKind::Tuf,
            source: "/mirror".into(),
            generation: 1,
            imported_at: ts(fresh_since),
            fresh_since: ts(fresh_since),
            pinned_root: None,
            roles: Some(TufRoles {
                root: role(root_expires),
                timestamp: role("2026-01-02T00:00:00Z"),
                snapshot: role("2026-01-02T00:00:00Z"),
                targets: role(targets_expires),
            }),
            files: [("trusted_root.json".to_string(), FileRecord::of(b"{}"))].into(),
            rollback_protection_reset: false,
        }
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn max_age_decides_when_earliest() {
        let m = manifest("2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z", "2026-06-01T00:00:00Z");
        let p = FreshnessPolicy { max_age: 30 * DAY, warn_before: 7 * DAY };
        let deadline = p.stale_at(&m);
        assert_eq!(deadline, Deadline { at: ts("2026-01-31T00:00:00Z"), limit: Limit::MaxAge });
        assert!(matches!(p.evaluate(&m, ts("2026-01-23T23:59:59Z")), Freshness::Fresh { .. }));
        let f = p.evaluate(&m, ts("2026-01-24T00:00:00Z"));
        assert!(matches!(f, Freshness::Expiring { .. }));
        assert_eq!(f.verdict(ts("2026-01-24T00:00:00Z")), "expiring in 7 days");
        assert_eq!(f.seconds_until_stale(ts("2026-01-24T00:00:00Z")), 7 * 86400);
        let f = p.evaluate(&m, ts("2026-01-31T00:00:00Z"));
        assert_eq!(f, Freshness::Stale { since: ts("2026-01-31T00:00:00Z"), limit: Limit::MaxAge });
        assert_eq!(f.stale_error().unwrap().to_string(), "trust root stale since 2026-01-31T00:00:00Z: import a fresh mirror");
    }

    #[test]
    fn role_expiry_decides_when_earlier() {
        let m = manifest("2026-01-01T00:00:00Z", "2026-01-10T00:00:00Z", "2026-01-20T00:00:00Z");
        let p = FreshnessPolicy::default();
        assert_eq!(p.stale_at(&m).limit, Limit::RootExpiry);
        let m = manifest("2026-01-01T00:00:00Z", "2026-03-10T00:00:00Z", "2026-01-20T00:00:00Z");
        assert_eq!(p.stale_at(&m).limit, Limit::TargetsExpiry);
        assert_eq!(p.evaluate(&m, ts("2026-01-20T00:00:01Z")).limit(), Limit::TargetsExpiry);
    }

    #[test]
    fn unverified_roots_have_only_max_age() {
        let mut m = manifest("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-02T00:00:00Z");
        m.kind = RootKind::UnverifiedTrustedRoot;
        m.roles = None;
        let p = FreshnessPolicy::default();
        assert_eq!(p.deadlines(&m).len(), 1);
        assert_eq!(p.stale_at(&m).limit, Limit::MaxAge);
    }
}
