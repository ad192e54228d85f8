//! Which endpoints to ask for a registry: containerd's registry host directory
//! (`[plugins."io.containerd.grpc.v1.cri".registry] config_path`, usually
//! `/etc/containerd/certs.d`), read the way containerd reads it, so that pullgate looks for an
//! image and its signatures on exactly the mirrors containerd pulls the image from.
//!
//! Lookup, for registry `host[:port]`, in each root of the (colon-separated) hosts path, first
//! root that has one wins: `<root>/host_port_/`, `<root>/host:port/`, `<root>/_default/`.
//! In that directory:
//! - `hosts.toml`: the `[host."..."]` tables in file order, then the top-level `server` (whose
//!   settings are the top-level keys). Each has `capabilities` (`pull`, `resolve`, `push`; all
//!   three when absent), `ca` (file or files, relative to the directory), `client` (a file with
//!   certificate and key, a list of those, or a list of `[cert, key]` pairs), `skip_verify`,
//!   `header`, `override_path` (the URL path is the API root, no `/v2` appended) and
//!   `dial_timeout`. A host without a scheme is `https://`.
//! - no `hosts.toml`: Docker's layout, `*.crt` CA files and `*.cert`/`*.key` client pairs, for
//!   the registry itself.
//!
//! Without `server`, containerd appends the registry itself as the last endpoint: `https`, except
//! `docker.io` → `https://registry-1.docker.io` and loopback registries (`localhost`, `127.x`,
//! `::1`): there containerd 2.x tries HTTPS (certificate not verified) and falls back to plain
//! HTTP on a port other than 443 (containerd 1.6 goes straight to plain HTTP); pullgate does the
//! former, which reaches the same registry either way. An `http://` host that also has TLS
//! settings (`ca`, `client`, `skip_verify`) is tried with HTTPS first, then HTTP (containerd 2.x).
//!
//! Where pullgate deliberately differs from containerd:
//! - A `hosts.toml` without any `[host]` table: containerd 1.6 (go-toml v1) fails with "invalid
//!   `host` tree", logs "failed to decode hosts.toml" and silently uses the registry itself, so
//!   its `server` line is ignored; containerd 2.x honours it. pullgate honours it (never asking a
//!   registry the operator meant to replace) and reports a warning saying that containerd 1.6
//!   ignores such a file; an empty `[host]` table makes both agree.
//! - Any other error in `hosts.toml` (bad TOML, wrong type, unknown capability, unreadable CA):
//!   containerd logs it and falls back to the registry itself; pullgate refuses with the error,
//!   so a broken mirror configuration is reported instead of turning into traffic elsewhere.
//! - Unknown keys are ignored like containerd does, and reported as warnings.

mod cache;
mod hosts_toml;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use self::cache::HostsCache;
pub use self::hosts_toml::parse_hosts_toml;

/// The registry containerd talks to for `docker.io`.
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

/// A hosts directory problem, one line, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("{file}: cannot read: {source}")]
    Read { file: PathBuf, source: io::Error },
    #[error("{file}: invalid TOML: {message}")]
    Toml { file: PathBuf, message: String },
    #[error("{file}: {at}: {message}")]
    Invalid { file: PathBuf, at: String, message: String },
}

/// What an endpoint may be used for (`capabilities` in `hosts.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Fetch content by digest.
    pub pull: bool,
    /// Resolve a tag to a digest: the mirror is trusted to say what a tag means.
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities { pull: true, resolve: true, push: true };
    const NONE: Capabilities = Capabilities { pull: false, resolve: false, push: false };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// TLS settings of one endpoint, as written in `hosts.toml` (paths made absolute).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsSettings {
    /// Extra trusted CA files, added to the system roots.
    pub ca_files: Vec<PathBuf>,
    /// Client certificate files, each with its key file (`None`: the key is in the same file).
    pub client_pairs: Vec<(PathBuf, Option<PathBuf>)>,
    /// `skip_verify`: accept any server certificate.
    pub skip_verify: Option<bool>,
}

impl TlsSettings {
    fn is_explicit(&self) -> bool {
        !self.ca_files.is_empty() || !self.client_pairs.is_empty() || self.skip_verify.is_some()
    }
}

/// Where an endpoint was configured, for reports and errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// A `[host."..."]` table, or the top-level `server` when `table` is `server`.
    HostsToml { file: PathBuf, table: String },
    /// Docker-style certificate files in a host directory without `hosts.toml`.
    CertDir { dir: PathBuf },
    /// Nothing configured: the registry itself, as containerd does.
    Default,
}

/// One place to send registry requests to, in the order containerd tries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// `host[:port]`, as it goes into the URL and the `Host` header.
    pub host: String,
    /// API root path, `/v2` unless `override_path`; requests go to `<path>/<repository>/...`.
    pub path: String,
    pub capabilities: Capabilities,
    pub tls: TlsSettings,
    /// Extra headers (`header` in `hosts.toml`), sent with every request to this endpoint.
    pub headers: Vec<(String, String)>,
    /// `dial_timeout`, overriding the configured connect timeout for this endpoint.
    pub dial_timeout: Option<Duration>,
    /// Try HTTPS first and fall back to plain HTTP when the TLS handshake fails (containerd 2.x
    /// for loopback registries and for `http://` hosts with TLS settings).
    pub http_fallback: bool,
    pub origin: Origin,
}

impl Endpoint {
    /// `https://host:port`, how errors name the endpoint.
    pub fn url(&self) -> String {
        if self.http_fallback {
            format!("https+http://{}", self.host)
        } else {
            format!("{}://{}", self.scheme.as_str(), self.host)
        }
    }

    /// Host name without port or brackets (TLS server name).
    pub fn host_name(&self) -> &str {
        split_host_port(&self.host).0
    }

    /// The port requests go to: the explicit one, else the scheme's default.
    pub fn port(&self) -> u16 {
        split_host_port(&self.host).1.unwrap_or(match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

/// The endpoints for one registry, and what was read to find them.
#[derive(Debug, Clone, Serialize)]
pub struct HostsResolution {
    /// The registry as named in the reference.
    pub registry: String,
    /// The host directory used, if any.
    pub dir: Option<PathBuf>,
    /// In the order to try them.
    pub endpoints: Vec<Endpoint>,
    /// Things that were ignored or that containerd versions read differently.
    pub warnings: Vec<String>,
}

/// containerd's registry host directory: one or more roots, searched in order. Clones share
/// the parsed `hosts.toml` files ([`HostsCache`]).
#[derive(Debug, Clone)]
pub struct HostsDir {
    roots: Vec<PathBuf>,
    cache: Arc<HostsCache>,
}

impl PartialEq for HostsDir {
    fn eq(&self, other: &HostsDir) -> bool {
        self.roots == other.roots
    }
}

impl Eq for HostsDir {}

impl HostsDir {
    pub fn new(roots: Vec<PathBuf>) -> HostsDir {
        HostsDir::with_cache(roots, HostsCache::default())
    }

    /// With its own cache (tests use one that keeps a file as soon as it is read).
    pub fn with_cache(roots: Vec<PathBuf>, cache: HostsCache) -> HostsDir {
        HostsDir { roots, cache: Arc::new(cache) }
    }

    /// From containerd's `config_path` syntax: directories separated by `:`.
    pub fn from_config_path(path: &str) -> HostsDir {
        HostsDir::new(path.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect())
    }

    /// How many times a `hosts.toml` was parsed.
    pub fn parses(&self) -> u64 {
        self.cache.parses()
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The host directory containerd would use for `registry`, if any.
    pub fn dir_for(&self, registry: &str) -> Result<Option<PathBuf>, HostsError> {
        for root in &self.roots {
            let mut candidates = Vec::new();
            if let Some(i) = registry.rfind(':').filter(|&i| i > 0) {
                candidates.push(root.join(format!("{}_{}_", &registry[..i], &registry[i + 1..])));
            }
            candidates.push(root.join(registry));
            candidates.push(root.join("_default"));
            for dir in candidates {
                match std::fs::metadata(&dir) {
                    Ok(_) => return Ok(Some(dir)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(HostsError::Read { file: dir, source }),
                }
            }
        }
        Ok(None)
    }

    /// The endpoints containerd would try for `registry`, in order. The host directory is looked
    /// up and `hosts.toml` checked on every call; an unchanged file's parse is reused.
    pub fn resolve(&self, registry: &str) -> Result<HostsResolution, HostsError> {
        let dir = self.dir_for(registry)?;
        let mut warnings = Vec::new();
        let mut entries = match &dir {
            None => vec![Entry::default()],
            Some(dir) => match self.cache.read(&dir.join("hosts.toml"), dir)? {
                Some(parsed) => {
                    warnings = parsed.warnings;
                    parsed.entries
                }
                None => cert_dir_entry(dir)?,
            },
        };
        if let Some(last) = entries.last_mut() {
            if last.host.is_empty() {
                fill_default(last, registry);
            }
        }
        let endpoints = entries.into_iter().map(Entry::into_endpoint).collect();
        Ok(HostsResolution { registry: registry.to_string(), dir, endpoints, warnings })
    }
}

/// A parsed `hosts.toml`: its entries (the server last, possibly without a host yet) and
/// warnings.
#[derive(Debug, Clone)]
pub struct ParsedHosts {
    entries: Vec<Entry>,
    pub warnings: Vec<String>,
}

impl ParsedHosts {
    /// The configured endpoints; the last one has an empty `host` when there is no `server`
    /// (the registry itself goes there).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.entries.iter().cloned().map(Entry::into_endpoint).collect()
    }
}

/// One host entry before defaults are applied.
#[derive(Debug, Clone, Default)]
struct Entry {
    scheme: Option<Scheme>,
    host: String,
    path: String,
    capabilities: Option<Capabilities>,
    tls: TlsSettings,
    headers: Vec<(String, String)>,
    dial_timeout: Option<Duration>,
    origin: Option<Origin>,
}

impl Entry {
    fn into_endpoint(self) -> Endpoint {
        let mut scheme = self.scheme.unwrap_or(Scheme::Https);
        // containerd 2.x: an http host with TLS settings tries HTTPS first, unless on port 80.
        let port = split_host_port(&self.host).1;
        let http_fallback = scheme == Scheme::Http && self.tls.is_explicit() && port != Some(80);
        if http_fallback {
            scheme = Scheme::Https;
        }
        Endpoint {
            scheme,
            host: self.host,
            path: self.path,
            capabilities: self.capabilities.unwrap_or(Capabilities::ALL),
            tls: self.tls,
            headers: self.headers,
            dial_timeout: self.dial_timeout,
            http_fallback,
            origin: self.origin.unwrap_or(Origin::Default),
        }
    }
}

/// containerd's defaults for the last entry when it names no host.
fn fill_default(entry: &mut Entry, registry: &str) {
    entry.path = "/v2".into();
    entry.capabilities = Some(Capabilities::ALL);
    if entry.origin.is_none() {
        entry.origin = Some(Origin::Default);
    }
    if registry == super::reference::DEFAULT_REGISTRY {
        entry.scheme = Some(Scheme::Https);
        entry.host = DOCKER_HUB_ENDPOINT.into();
        return;
    }
    entry.host = registry.into();
    if is_loopback(registry) {
        let port = split_host_port(registry).1;
        entry.scheme = Some(if port.is_none() || port == Some(443) { Scheme::Https } else { Scheme::Http });
        if port != Some(80) {
            entry.tls.skip_verify = Some(true);
        }
    } else {
        entry.scheme = Some(Scheme::Https);
    }
}

/// `localhost` or a loopback IP address, with or without port (containerd's `IsLocalhost`).
pub fn is_loopback(host: &str) -> bool {
    let name = split_host_port(host).0;
    name == "localhost" || name.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

/// `host:port` → (`host`, port); `[v6]:port` → (`v6`, port).
pub fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((v6, after)) = rest.split_once(']') {
            return (v6, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (authority, None),
    }
}

/// Docker's certificate layout in a host directory without `hosts.toml`.
fn cert_dir_entry(dir: &Path) -> Result<Vec<Entry>, HostsError> {
    let mut entry = Entry { origin: Some(Origin::CertDir { dir: dir.to_owned() }), ..Entry::default() };
    let read = std::fs::read_dir(dir);
    let mut names: Vec<String> = match read {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => Vec::new(),
        Err(source) => return Err(HostsError::Read { file: dir.to_owned(), source }),
    };
    names.sort();
    for name in names {
        if name.ends_with(".crt") {
            entry.tls.ca_files.push(dir.join(&name));
        }
        if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            let key = key.exists().then_some(key);
            entry.tls.client_pairs.push((dir.join(&name), key));
        }
    }
    if !entry.tls.is_explicit() {
        entry.origin = None;
    }
    Ok(vec![entry])
}

#[cfg(test)]
mod tests;
