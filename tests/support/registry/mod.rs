//! Test support for `src/registry`: a FAKE OCI registry with the referrers API and a FAKE token
//! server (`fake`), push helpers that work against real registries too (`push`), a tiny HTTP
//! client (`http`), a redirecting front for a real registry (`redirect`), and a recording [`Dialer`](pullgate::registry::Dialer).
#![allow(dead_code)]

pub mod fake;
pub mod http;
pub mod push;
pub mod redirect;
pub mod tls;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use pullgate::registry::Dialer;
use tokio::net::TcpStream;

/// A dialer that records every connection attempt (`host:port`) and only connects to allowed
/// addresses; any other attempt fails with "connection refused" without touching the network.
#[derive(Clone, Default)]
pub struct RecordingDialer {
    pub attempts: Arc<Mutex<Vec<String>>>,
    allowed: Arc<Vec<String>>,
}

impl RecordingDialer {
    pub fn allowing(allowed: &[String]) -> RecordingDialer {
        RecordingDialer { attempts: Arc::default(), allowed: Arc::new(allowed.to_vec()) }
    }

    pub fn attempts(&self) -> Vec<String> {
        self.attempts.lock().unwrap().clone()
    }
}

impl Dialer for RecordingDialer {
    fn dial(&self, host: &str, port: u16) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> {
        let target = format!("{host}:{port}");
        self.attempts.lock().unwrap().push(target.clone());
        let allowed = self.allowed.contains(&target);
        Box::pin(async move {
            if !allowed {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "blocked by the test's recording dialer"));
            }
            TcpStream::connect(target).await
        })
    }
}

/// Writes `<dir>/<registry>/hosts.toml` and returns `dir`.
pub fn write_hosts(dir: &Path, registry: &str, toml: &str) -> PathBuf {
    let d = dir.join(registry);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("hosts.toml"), toml).unwrap();
    dir.to_owned()
}

/// A free loopback port nobody listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
