//! The `trust_root:` section of pullgate's configuration.
//!
//! ```yaml
//! trust_root:
//!   state_dir: /var/lib/pullgate   # where `trust-root import` installs and the daemon reads
//!   max_age: 30d                   # how old the mirrored metadata may get (see freshness)
//!   warn_before: 7d                # warn this long before the root goes stale
//!   watch_interval: 30s            # how often the daemon looks for a newly imported root
//! ```
//!
//! There is deliberately no key that disables expiry: a longer `max_age` is a visible value in
//! the file, and the TUF root and targets expiry apply whatever it says.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::settings::ConfigError;
use crate::trust::freshness::FreshnessPolicy;

/// Default state directory, shared with the daemon.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pullgate";
/// Default `max_age`: air-gapped sites refresh their mirror monthly.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 86400);
/// Default `warn_before`.
pub const DEFAULT_WARN_BEFORE: Duration = Duration::from_secs(7 * 86400);
/// Default `watch_interval`.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(30);
/// Upper bound on `max_age`: keeps deadline arithmetic far from the calendar's end. Root and
/// targets expiry bound the real lifetime anyway.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(3650 * 86400);

/// `trust_root:` configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustRootConfig {
    /// Directory holding `trust-root/` (installed roots, manifests, the import lock).
    pub state_dir: PathBuf,
    /// How long after its freshness anchor (see [`crate::trust::freshness`]) an installed root
    /// may be used.
    #[serde(deserialize_with = "crate::settings::de_duration")]
    pub max_age: Duration,
    /// How long before going stale the daemon and `trust-root status` start warning.
    #[serde(deserialize_with = "crate::settings::de_duration")]
    pub warn_before: Duration,
    /// How often the daemon checks the state dir for a newly imported root.
    #[serde(deserialize_with = "crate::settings::de_duration")]
    pub watch_interval: Duration,
}

impl Default for TrustRootConfig {
    fn default() -> Self {
        TrustRootConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            max_age: DEFAULT_MAX_AGE,
            warn_before: DEFAULT_WARN_BEFORE,
            watch_interval: DEFAULT_WATCH_INTERVAL,
        }
    }
}

impl TrustRootConfig {
    /// Checks beyond types. The key is the full path (`trust_root.max_age`) so the main config's
    /// validation can report it as is.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.state_dir.is_absolute() {
            return Err(("trust_root.state_dir", format!("expected an absolute directory, got {:?}", self.state_dir.display())));
        }
        if self.max_age.is_zero() {
            return Err(("trust_root.max_age", "must be greater than zero".into()));
        }
        if self.max_age > MAX_MAX_AGE {
            return Err(("trust_root.max_age", "must be at most 3650d (root and targets expiry apply anyway)".into()));
        }
        if self.warn_before >= self.max_age {
            return Err(("trust_root.warn_before", "must be shorter than `max_age`".into()));
        }
        if self.watch_interval < Duration::from_secs(1) {
            return Err(("trust_root.watch_interval", "must be at least 1s".into()));
        }
        Ok(())
    }

    /// The run-time freshness policy these settings describe.
    pub fn policy(&self) -> FreshnessPolicy {
        FreshnessPolicy { max_age: self.max_age, warn_before: self.warn_before }
    }

    /// Reads only the `trust_root:` section of a pullgate config file, ignoring the other keys
    /// (the full file is validated by `pullgate config check` and at `serve`). Used by the
    /// `trust-root` commands, which must not depend on unrelated settings.
    pub fn load_section(path: &Path) -> Result<TrustRootConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: None,
            message: format!("cannot read config file: {e}"),
        })?;
        Self::parse_section(&text, path)
    }

    /// [`Self::load_section`] on text; `file` only names the source in errors.
    pub fn parse_section(text: &str, file: &Path) -> Result<TrustRootConfig, ConfigError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Section {
            trust_root: TrustRootConfig,
        }
        let err = |key: Option<String>, message: String| ConfigError { file: file.to_owned(), key, message };
        let section: Section = crate::settings::parse_yaml(text, file)?;
        section.trust_root.validate().map_err(|(key, message)| err(Some(key.into()), message))?;
        Ok(section.trust_root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TrustRootConfig, String> {
        TrustRootConfig::parse_section(text, Path::new("/etc/pullgate/config.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, TrustRootConfig::default());
        assert_eq!(c.max_age, Duration::from_secs(30 * 86400));
        assert_eq!(c.warn_before, Duration::from_secs(7 * 86400));
        assert_eq!(parse("listen: /x.sock\n").unwrap(), TrustRootConfig::default());
    }

    #[test]
    fn section_parses() {
        let c = parse("trust_root:\n  state_dir: /srv/pg\n  max_age: 45d\n  warn_before: 10d\n  watch_interval: 5s\n").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/srv/pg"));
        assert_eq!(c.max_age, Duration::from_secs(45 * 86400));
        assert_eq!(c.policy().warn_before, Duration::from_secs(10 * 86400));
        assert_eq!(c.watch_interval, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = parse("trust_root:\n  max_ag: 3d\n").unwrap_err();
        assert!(e.starts_with("/etc/pullgate/config.yaml: key `trust_root"), "{e}");
        assert!(e.contains("max_ag") && e.contains("line 2"), "{e}");
        let e = parse("trust_root:\n  max_age: forever\n").unwrap_err();
        assert!(e.contains("key `trust_root.max_age`") && e.contains("like \"10s\""), "{e}");
        let e = parse("trust_root:\n  max_age: 0d\n").unwrap_err();
        assert!(e.contains("key `trust_root.max_age`: must be greater than zero"), "{e}");
        let e = parse("trust_root:\n  max_age: 5d\n").unwrap_err();
        assert!(e.contains("key `trust_root.warn_before`: must be shorter"), "{e}");
        let e = parse("trust_root:\n  state_dir: var/lib\n").unwrap_err();
        assert!(e.contains("key `trust_root.state_dir`"), "{e}");
        let e = parse("trust_root:\n  max_age: 4000d\n").unwrap_err();
        assert!(e.contains("at most 3650d"), "{e}");
    }
}
