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

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

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

/// containerd's registry host directory: one or more roots, searched in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsDir {
    roots: Vec<PathBuf>,
}

impl HostsDir {
    pub fn new(roots: Vec<PathBuf>) -> HostsDir {
        HostsDir { roots }
    }

    /// From containerd's `config_path` syntax: directories separated by `:`.
    pub fn from_config_path(path: &str) -> HostsDir {
        HostsDir { roots: path.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect() }
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

    /// The endpoints containerd would try for `registry`, in order.
    pub fn resolve(&self, registry: &str) -> Result<HostsResolution, HostsError> {
        let dir = self.dir_for(registry)?;
        let mut warnings = Vec::new();
        let mut entries = match &dir {
            None => vec![Entry::default()],
            Some(dir) => {
                let file = dir.join("hosts.toml");
                match std::fs::read_to_string(&file) {
                    Ok(text) if !text.is_empty() => {
                        let parsed = parse_hosts_toml(&text, dir, &file)?;
                        warnings = parsed.warnings;
                        parsed.entries
                    }
                    Ok(_) => cert_dir_entry(dir)?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => cert_dir_entry(dir)?,
                    Err(source) => return Err(HostsError::Read { file, source }),
                }
            }
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

/// Keys containerd reads in a host table.
const HOST_KEYS: &[&str] = &["capabilities", "ca", "client", "skip_verify", "header", "override_path", "dial_timeout"];

/// Parses the text of a `hosts.toml` found in `base_dir` (relative paths are joined to it);
/// `file` names it in errors.
pub fn parse_hosts_toml(text: &str, base_dir: &Path, file: &Path) -> Result<ParsedHosts, HostsError> {
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| HostsError::Toml { file: file.to_owned(), message: one_line(&e.to_string()) })?;
    let invalid = |at: &str, message: String| HostsError::Invalid { file: file.to_owned(), at: at.to_string(), message };
    let mut warnings = Vec::new();
    let mut entries = Vec::new();

    match table.get("host") {
        Some(toml::Value::Table(hosts)) => {
            for (name, value) in hosts {
                let at = format!("[host.{name:?}]");
                let toml::Value::Table(t) = value else {
                    return Err(invalid(&at, "expected a table".into()));
                };
                let mut entry = parse_host_table(t, &at, base_dir, file, &mut warnings, HOST_KEYS)?;
                let override_path = bool_key(t, "override_path", &at, file)?.unwrap_or(false);
                set_server(&mut entry, name, override_path).map_err(|m| invalid(&at, m))?;
                entry.origin = Some(Origin::HostsToml { file: file.to_owned(), table: format!("host.{name:?}") });
                entries.push(entry);
            }
        }
        Some(_) => return Err(invalid("host", "expected tables like [host.\"https://mirror.example\"]".into())),
        None => warnings.push(format!(
            "{}: no [host] table: containerd 1.6 ignores this whole file (\"invalid `host` tree\") and pulls from the registry itself; \
             containerd 2.x and pullgate use its `server`; add an empty [host] table to make them agree",
            file.display()
        )),
    }

    let top_keys: Vec<&str> = HOST_KEYS.iter().copied().chain(["server", "host"]).collect();
    let mut server = parse_host_table(&table, "top level", base_dir, file, &mut warnings, &top_keys)?;
    match table.get("server") {
        None => {}
        Some(toml::Value::String(s)) if s.is_empty() => {}
        Some(toml::Value::String(s)) => {
            let override_path = bool_key(&table, "override_path", "top level", file)?.unwrap_or(false);
            set_server(&mut server, s, override_path).map_err(|m| invalid("server", m))?;
            server.origin = Some(Origin::HostsToml { file: file.to_owned(), table: "server".into() });
        }
        Some(_) => return Err(invalid("server", "expected a string like \"https://registry.example\"".into())),
    }
    if server.host.is_empty() && server.tls.is_explicit() {
        server.origin = Some(Origin::HostsToml { file: file.to_owned(), table: "top level (registry itself)".into() });
    }
    entries.push(server);
    Ok(ParsedHosts { entries, warnings })
}

/// Scheme, host and API path from a `server` or `[host."..."]` name (containerd's
/// `parseHostConfig`).
fn set_server(entry: &mut Entry, server: &str, override_path: bool) -> Result<(), String> {
    let (scheme, rest) = if let Some(r) = server.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = server.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if server.contains("://") {
        return Err(format!("unsupported scheme in {server:?}: expected http:// or https://"));
    } else {
        (Scheme::Https, server)
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if path.contains(['?', '#']) {
        return Err(format!("{server:?}: a query or fragment is not allowed in a registry host"));
    }
    if authority.is_empty() {
        return Err(format!("{server:?}: no host"));
    }
    if authority.contains('@') {
        return Err(format!("{server:?}: credentials in the URL are not supported; configure registry.credentials in pullgate"));
    }
    if authority.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("{server:?}: invalid host"));
    }
    if let (_, None) = split_host_port(authority) {
        if authority.ends_with(':') || (authority.contains(':') && !authority.starts_with('[')) {
            return Err(format!("{server:?}: invalid port"));
        }
    }
    let mut path = clean_path(path);
    if path.is_empty() || path == "/" {
        path = if override_path { String::new() } else { "/v2".into() };
    } else if !path.ends_with("/v2") && !override_path {
        path.push_str("/v2");
    }
    entry.scheme = Some(scheme);
    entry.host = authority.to_string();
    entry.path = path;
    Ok(())
}

/// Go's `path.Clean` for absolute paths, trailing slash removed.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        if path.is_empty() {
            String::new()
        } else {
            "/".into()
        }
    } else {
        format!("/{}", parts.join("/"))
    }
}

fn parse_host_table(
    t: &toml::Table,
    at: &str,
    base_dir: &Path,
    file: &Path,
    warnings: &mut Vec<String>,
    known: &[&str],
) -> Result<Entry, HostsError> {
    let invalid = |key: &str, message: String| HostsError::Invalid { file: file.to_owned(), at: format!("{at}: `{key}`"), message };
    let abs = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { base_dir.join(p) };
    let mut entry = Entry::default();
    for key in t.keys() {
        if !known.contains(&key.as_str()) {
            warnings.push(format!("{}: {at}: unknown key `{key}` is ignored (containerd ignores it too)", file.display()));
        }
    }
    if let Some(v) = t.get("capabilities") {
        let list = string_list(v).ok_or_else(|| invalid("capabilities", "expected a list like [\"pull\", \"resolve\"]".into()))?;
        let mut caps = Capabilities::NONE;
        for c in &list {
            match c.to_ascii_lowercase().as_str() {
                "pull" => caps.pull = true,
                "resolve" => caps.resolve = true,
                "push" => caps.push = true,
                _ => return Err(invalid("capabilities", format!("unknown capability {c:?} (pull, resolve or push)"))),
            }
        }
        // containerd: an empty list means all capabilities.
        entry.capabilities = Some(if list.is_empty() { Capabilities::ALL } else { caps });
    }
    if let Some(v) = t.get("ca") {
        entry.tls.ca_files = match v {
            toml::Value::String(s) => vec![abs(s)],
            v => string_list(v)
                .ok_or_else(|| invalid("ca", "expected a file name or a list of file names".into()))?
                .iter()
                .map(|s| abs(s))
                .collect(),
        };
    }
    if let Some(v) = t.get("client") {
        let bad = || invalid("client", "expected a file, a list of files, or a list of [certificate, key] pairs".into());
        entry.tls.client_pairs = match v {
            toml::Value::String(s) => vec![(abs(s), None)],
            toml::Value::Array(items) => {
                let mut pairs = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => pairs.push((abs(s), None)),
                        toml::Value::Array(_) => {
                            let pair = string_list(item).ok_or_else(bad)?;
                            let [cert, key] = pair.as_slice() else {
                                return Err(invalid("client", format!("invalid pair {pair:?}: expected [certificate, key]")));
                            };
                            pairs.push((abs(cert), (!key.is_empty()).then(|| abs(key))));
                        }
                        _ => return Err(bad()),
                    }
                }
                pairs
            }
            _ => return Err(bad()),
        };
    }
    entry.tls.skip_verify = bool_key(t, "skip_verify", at, file)?;
    if let Some(v) = t.get("header") {
        let toml::Value::Table(h) = v else {
            return Err(invalid("header", "expected a table of header names to values".into()));
        };
        for (name, value) in h {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid("header", format!("invalid header name {name:?}")));
            }
            let values = match value {
                toml::Value::String(s) => vec![s.clone()],
                v => string_list(v).ok_or_else(|| invalid("header", format!("header {name:?}: expected a string or a list of strings")))?,
            };
            for value in values {
                if http::HeaderValue::from_str(&value).is_err() {
                    return Err(invalid("header", format!("header {name:?}: invalid value")));
                }
                entry.headers.push((name.clone(), value));
            }
        }
    }
    if let Some(v) = t.get("dial_timeout") {
        let s = v.as_str().ok_or_else(|| invalid("dial_timeout", "expected a duration string like \"3s\"".into()))?;
        entry.dial_timeout = Some(
            parse_go_duration(s)
                .ok_or_else(|| invalid("dial_timeout", format!("invalid duration {s:?} (like \"500ms\", \"3s\", \"1m30s\")")))?,
        );
    }
    Ok(entry)
}

fn bool_key(t: &toml::Table, key: &str, at: &str, file: &Path) -> Result<Option<bool>, HostsError> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
        Some(_) => {
            Err(HostsError::Invalid { file: file.to_owned(), at: format!("{at}: `{key}`"), message: "expected true or false".into() })
        }
    }
}

fn string_list(v: &toml::Value) -> Option<Vec<String>> {
    v.as_array()?.iter().map(|i| i.as_str().map(str::to_string)).collect()
}

/// Go's `time.ParseDuration` for the units a timeout needs: `ns us ms s m h`, e.g. `1m30s`.
fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let n: f64 = num.parse().ok()?;
        let secs = match unit {
            "ns" => n / 1e9,
            "us" | "µs" => n / 1e6,
            "ms" => n / 1e3,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(secs).ok()?;
        rest = next;
    }
    Some(total)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Endpoint>, String> {
        parse_hosts_toml(text, Path::new("/etc/containerd/certs.d/ghcr.io"), Path::new("/etc/containerd/certs.d/ghcr.io/hosts.toml"))
            .map(|p| p.endpoints())
            .map_err(|e| e.to_string())
    }

    fn resolve_text(registry: &str, text: &str) -> HostsResolution {
        let dir = tempfile::tempdir().unwrap();
        let host_dir = dir.path().join(registry);
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(host_dir.join("hosts.toml"), text).unwrap();
        HostsDir::new(vec![dir.path().to_owned()]).resolve(registry).unwrap()
    }

    #[test]
    fn containerd_doc_example_keeps_file_order() {
        let eps = parse(
            r#"
server = "https://registry-1.docker.io"

[host."https://mirror-b.example"]
  capabilities = ["pull"]
[host."http://mirror-a.example:5000"]
  capabilities = ["pull", "resolve"]
  skip_verify = false
[host."https://z.example/custom/path"]
  override_path = true
"#,
        )
        .unwrap();
        let hosts: Vec<_> = eps.iter().map(|e| (e.url(), e.path.as_str())).collect();
        assert_eq!(
            hosts,
            [
                ("https://mirror-b.example".to_string(), "/v2"),
                ("https+http://mirror-a.example:5000".to_string(), "/v2"),
                ("https://z.example".to_string(), "/custom/path"),
                ("https://registry-1.docker.io".to_string(), "/v2"),
            ]
        );
        assert_eq!(eps[0].capabilities, Capabilities { pull: true, resolve: false, push: false });
        assert_eq!(eps[1].capabilities, Capabilities { pull: true, resolve: true, push: false });
        assert_eq!(eps[3].capabilities, Capabilities::ALL);
        assert!(eps[1].http_fallback, "http host with TLS settings tries https first (containerd 2.x)");
        assert_eq!(eps[1].tls.skip_verify, Some(false));
    }

    #[test]
    fn paths_and_schemes() {
        let eps = parse(
            r#"
[host."mirror.example"]
[host."http://plain.example:8080"]
[host."https://nested.example/some/prefix/"]
[host."https://already.example/api/v2"]
[host."http://port80.example:80"]
  skip_verify = true
"#,
        )
        .unwrap();
        let got: Vec<_> = eps.iter().take(5).map(|e| (e.url(), e.path.clone(), e.port())).collect();
        assert_eq!(
            got,
            [
                ("https://mirror.example".into(), "/v2".into(), 443),
                ("http://plain.example:8080".into(), "/v2".into(), 8080),
                ("https://nested.example".into(), "/some/prefix/v2".into(), 443),
                ("https://already.example".into(), "/api/v2".into(), 443),
                ("http://port80.example:80".into(), "/v2".into(), 80),
            ]
        );
        // no server: last entry is the registry itself, filled in by resolve
        assert_eq!(eps.last().unwrap().host, "");
    }

    #[test]
    fn tls_and_headers() {
        let eps = parse(
            r#"
ca = "/abs/root.pem"
[host."https://m.example"]
  ca = ["ca1.pem", "/etc/ca2.pem"]
  client = [["client.cert", "client.key"], ["combined.pem", ""], "other.pem"]
  skip_verify = true
  dial_timeout = "1m30s"
  [host."https://m.example".header]
    x-custom = "1"
    x-multi = ["a", "b"]
[host."https://n.example"]
  client = "both.pem"
"#,
        )
        .unwrap();
        let base = Path::new("/etc/containerd/certs.d/ghcr.io");
        assert_eq!(eps[0].tls.ca_files, [base.join("ca1.pem"), PathBuf::from("/etc/ca2.pem")]);
        assert_eq!(
            eps[0].tls.client_pairs,
            [(base.join("client.cert"), Some(base.join("client.key"))), (base.join("combined.pem"), None), (base.join("other.pem"), None)]
        );
        assert_eq!(eps[0].tls.skip_verify, Some(true));
        assert_eq!(eps[0].dial_timeout, Some(Duration::from_secs(90)));
        assert_eq!(eps[0].headers, [("x-custom".into(), "1".into()), ("x-multi".into(), "a".into()), ("x-multi".into(), "b".into())]);
        assert_eq!(eps[1].tls.client_pairs, [(base.join("both.pem"), None)]);
        // top-level ca applies to the server entry (here: the registry itself)
        assert_eq!(eps[2].tls.ca_files, [PathBuf::from("/abs/root.pem")]);
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = parse("[host.\"m\"]\ncapabilities = [\"pull\", \"fly\"]\n").unwrap_err();
        assert!(e.contains("hosts.toml: [host.\"m\"]: `capabilities`: unknown capability \"fly\""), "{e}");
        let e = parse("[host.\"m\"]\ncapabilities = \"pull\"\n").unwrap_err();
        assert!(e.contains("expected a list"), "{e}");
        let e = parse("[host.\"m\"]\nca = 3\n").unwrap_err();
        assert!(e.contains("`ca`"), "{e}");
        let e = parse("[host.\"m\"]\nclient = [[\"a\"]]\n").unwrap_err();
        assert!(e.contains("invalid pair"), "{e}");
        let e = parse("[host.\"m\"]\nskip_verify = \"yes\"\n").unwrap_err();
        assert!(e.contains("`skip_verify`: expected true or false"), "{e}");
        let e = parse("server = [1]\n[host]\n").unwrap_err();
        assert!(e.contains("server"), "{e}");
        let e = parse("server = \"ftp://x\"\n[host]\n").unwrap_err();
        assert!(e.contains("unsupported scheme"), "{e}");
        let e = parse("server = \"https://user:pw@x\"\n[host]\n").unwrap_err();
        assert!(e.contains("credentials in the URL"), "{e}");
        let e = parse("server = \"https://x:port\"\n[host]\n").unwrap_err();
        assert!(e.contains("invalid port"), "{e}");
        let e = parse("server = \n").unwrap_err();
        assert!(e.contains("invalid TOML"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = parse("[host.\"m\"]\ndial_timeout = \"soon\"\n").unwrap_err();
        assert!(e.contains("invalid duration"), "{e}");
        let e = parse("[host.\"m\".header]\n\"bad header\" = \"x\"\n").unwrap_err();
        assert!(e.contains("invalid header name"), "{e}");
    }

    #[test]
    fn unknown_keys_and_missing_host_table_are_warnings() {
        let p = parse_hosts_toml("server = \"http://m:5000\"\nmirrors = 1\n", Path::new("/d"), Path::new("/d/hosts.toml")).unwrap();
        assert!(p.warnings.iter().any(|w| w.contains("unknown key `mirrors`")), "{:?}", p.warnings);
        assert!(p.warnings.iter().any(|w| w.contains("containerd 1.6 ignores")), "{:?}", p.warnings);
        let eps = p.endpoints();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].url(), "http://m:5000");
        let p = parse_hosts_toml("server = \"http://m:5000\"\n[host]\n", Path::new("/d"), Path::new("/d/hosts.toml")).unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(p.endpoints().len(), 1, "empty [host] table: the server only");
    }

    #[test]
    fn defaults_without_configuration() {
        let none = HostsDir::new(vec![PathBuf::from("/nonexistent/certs.d")]);
        let one = |reg: &str| {
            let r = none.resolve(reg).unwrap();
            assert_eq!(r.endpoints.len(), 1);
            r.endpoints[0].clone()
        };
        let e = one("docker.io");
        assert_eq!((e.url(), e.path.as_str(), e.origin.clone()), ("https://registry-1.docker.io".into(), "/v2", Origin::Default));
        assert_eq!(one("ghcr.io").url(), "https://ghcr.io");
        assert_eq!(one("registry.internal:5000").url(), "https://registry.internal:5000");
        // loopback: https (unverified) then plain http, like containerd 2.x
        let e = one("127.0.0.1:5000");
        assert_eq!(e.url(), "https+http://127.0.0.1:5000");
        assert_eq!(e.tls.skip_verify, Some(true));
        assert_eq!(one("localhost:5000").url(), "https+http://localhost:5000");
        assert_eq!(one("[::1]:5000").url(), "https+http://[::1]:5000");
        assert_eq!(one("localhost").url(), "https://localhost", "no port: https only");
        assert_eq!(one("127.0.0.1:443").url(), "https://127.0.0.1:443");
        assert_eq!(one("127.0.0.1:80").url(), "http://127.0.0.1:80", "port 80: plain http only");
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(is_loopback("127.8.9.1"));
    }

    #[test]
    fn host_directory_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("_default")).unwrap();
        std::fs::write(root.join("_default/hosts.toml"), "server = \"https://default-mirror\"\n[host]\n").unwrap();
        std::fs::create_dir_all(root.join("mirror.example:5000")).unwrap();
        std::fs::write(root.join("mirror.example:5000/hosts.toml"), "server = \"http://colon\"\n[host]\n").unwrap();
        let hd = HostsDir::new(vec![root.to_owned()]);
        assert_eq!(hd.resolve("mirror.example:5000").unwrap().endpoints[0].url(), "http://colon");
        std::fs::create_dir_all(root.join("mirror.example_5000_")).unwrap();
        std::fs::write(root.join("mirror.example_5000_/hosts.toml"), "server = \"http://underscore\"\n[host]\n").unwrap();
        assert_eq!(hd.resolve("mirror.example:5000").unwrap().endpoints[0].url(), "http://underscore");
        assert_eq!(hd.resolve("quay.io").unwrap().endpoints[0].url(), "https://default-mirror");
        // several roots, containerd's config_path syntax: the first root with a match wins
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(other.path().join("quay.io")).unwrap();
        std::fs::write(other.path().join("quay.io/hosts.toml"), "server = \"https://quay-mirror\"\n[host]\n").unwrap();
        let hd = HostsDir::from_config_path(&format!("{}:{}", other.path().display(), root.display()));
        assert_eq!(hd.resolve("quay.io").unwrap().endpoints[0].url(), "https://quay-mirror");
        assert_eq!(hd.resolve("ghcr.io").unwrap().endpoints[0].url(), "https://default-mirror");
    }

    #[test]
    fn mirror_then_registry_itself_when_no_server() {
        let r = resolve_text("ghcr.io", "[host.\"http://10.1.2.3:5000\"]\ncapabilities = [\"pull\", \"resolve\"]\n");
        let urls: Vec<_> = r.endpoints.iter().map(Endpoint::url).collect();
        assert_eq!(urls, ["http://10.1.2.3:5000", "https://ghcr.io"]);
        assert_eq!(r.endpoints[1].origin, Origin::Default);
        let r = resolve_text("docker.io", "[host.\"https://hub-mirror\"]\n");
        let urls: Vec<_> = r.endpoints.iter().map(Endpoint::url).collect();
        assert_eq!(urls, ["https://hub-mirror", "https://registry-1.docker.io"]);
    }

    #[test]
    fn docker_cert_layout_without_hosts_toml() {
        let dir = tempfile::tempdir().unwrap();
        let hd = dir.path().join("reg.example");
        std::fs::create_dir_all(&hd).unwrap();
        for f in ["ca.crt", "client.cert", "client.key", "lone.cert", "README"] {
            std::fs::write(hd.join(f), "x").unwrap();
        }
        let r = HostsDir::new(vec![dir.path().to_owned()]).resolve("reg.example").unwrap();
        let e = &r.endpoints[0];
        assert_eq!(e.url(), "https://reg.example");
        assert_eq!(e.tls.ca_files, [hd.join("ca.crt")]);
        assert_eq!(e.tls.client_pairs, [(hd.join("client.cert"), Some(hd.join("client.key"))), (hd.join("lone.cert"), None)]);
        assert!(matches!(e.origin, Origin::CertDir { .. }));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("x"), None);
    }

    #[test]
    fn split_authority() {
        assert_eq!(split_host_port("a:1"), ("a", Some(1)));
        assert_eq!(split_host_port("a"), ("a", None));
        assert_eq!(split_host_port("[::1]:5000"), ("::1", Some(5000)));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
    }
}
