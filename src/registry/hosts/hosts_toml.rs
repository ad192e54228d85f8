//! Parsing one `hosts.toml` the way containerd does: its `[host."..."]` tables in file order,
//! then the top-level `server`; unknown keys are warnings, every other problem an error that
//! names the file and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{split_host_port, Capabilities, Entry, HostsError, Origin, ParsedHosts, Scheme};

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
pub(super) fn parse_go_duration(s: &str) -> Option<Duration> {
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
