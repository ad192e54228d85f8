//! Operating pullgate: metrics, health and the admin HTTP server.
//!
//! # Layout
//! - [`metrics`]: the one `prometheus-client` registry (`pullgate_*`), what the enforcement side
//!   records, and the state read at scrape time (trust root, policy, cache, containerd).
//! - [`calls`]: CRI call counts and latencies, recorded on the pass-through path without
//!   decoding or allocating.
//! - [`health`]: `/live` and `/ready`, and what readiness requires.
//! - [`server`]: the HTTP server on `admin.listen`.
//!
//! The admin server is off unless `admin.listen` is set, and then it only binds loopback
//! addresses unless `admin.allow_non_loopback` is set: its endpoints have no authentication and
//! name images, policies and namespaces, so exposing them beyond the node is a decision the
//! configuration has to state.
//!
//! ```yaml
//! admin:
//!   listen: 127.0.0.1:9464       # unset: no admin server, no metrics recorded
//!   allow_non_loopback: false    # true to bind e.g. the node's IP for a remote scraper
//! ```

pub mod calls;
pub mod health;
pub mod metrics;
pub mod server;

use std::net::SocketAddr;

use serde::Deserialize;

/// The `admin:` configuration section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `ip:port` for `/metrics`, `/live` and `/ready`; unset: no admin server.
    pub listen: Option<SocketAddr>,
    /// Allow `listen` on an address other than loopback.
    pub allow_non_loopback: bool,
}

impl AdminConfig {
    /// Checks beyond types; the key is the full path.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(addr) = self.listen {
            if !addr.ip().is_loopback() && !self.allow_non_loopback {
                return Err((
                    "admin.listen",
                    format!(
                        "{addr} is not a loopback address: the admin endpoints have no authentication and name images and \
                         policies; use 127.0.0.1:PORT, or set admin.allow_non_loopback: true to expose them on purpose"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/pullgate/config.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn loopback_only_unless_allowed() {
        assert_eq!(parse("admin:\n  listen: 127.0.0.1:9464\n").unwrap().admin.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(parse("admin:\n  listen: \"[::1]:9464\"\n").is_ok());
        let e = parse("admin:\n  listen: 0.0.0.0:9464\n").unwrap_err();
        assert!(e.contains("key `admin.listen`") && e.contains("not a loopback address") && e.contains("allow_non_loopback"), "{e}");
        assert!(parse("admin:\n  listen: 10.0.0.5:9464\n  allow_non_loopback: true\n").is_ok());
        let e = parse("admin:\n  listen: localhost\n").unwrap_err();
        assert!(e.contains("admin.listen"), "{e}");
        assert_eq!(parse("").unwrap().admin.listen, None, "off by default");
    }
}
