//! The CRI side's own settings: who may call, and how pullgate connects to containerd.
//! `config` reads them from the configuration file (keys `access` and `upstream_connection`).

use std::time::Duration;

use serde::Deserialize;

use crate::settings::de_duration;

/// Peer credential check. Root (uid 0) is always allowed: it is kubelet's identity.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    /// Extra uids allowed besides root.
    pub allowed_uids: Vec<u32>,
    /// Callers whose primary gid is one of these are allowed too.
    pub allowed_gids: Vec<u32>,
}

impl Access {
    /// Whether a caller with these credentials may use the socket.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || self.allowed_uids.contains(&uid) || self.allowed_gids.contains(&gid)
    }
}

/// Connection to containerd.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConnection {
    /// Bound on connecting and the HTTP/2 handshake; a call fails with `Unavailable` past it.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// After a failed connect, calls fail fast for this long before the next attempt; the wait
    /// doubles on each failure up to `max_backoff`.
    #[serde(deserialize_with = "de_duration")]
    pub initial_backoff: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub max_backoff: Duration,
}

impl Default for UpstreamConnection {
    fn default() -> Self {
        UpstreamConnection {
            connect_timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl UpstreamConnection {
    /// Bounds beyond the types; a problem as its configuration key and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.connect_timeout.is_zero() {
            return Err(("upstream_connection.connect_timeout", "must be greater than zero"));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(("upstream_connection.initial_backoff", "must not exceed `max_backoff`"));
        }
        Ok(())
    }
}
