//! The `registry:` section of pullgate's configuration and the matching command-line flags.
//!
//! Every key is optional; the defaults suit a node whose containerd uses
//! `/etc/containerd/certs.d` as its `config_path`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::auth::{Credentials, Secret};
use crate::settings::parse_duration;

/// containerd's conventional `config_path`.
pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";
/// Where bundles that travel with an image (`cosign sign --bundle`) are put on a node.
pub const DEFAULT_BUNDLE_DIR: &str = "/var/lib/pullgate/bundles";
/// Manifests and bundles are small; anything bigger is a broken or hostile mirror.
pub const DEFAULT_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// `registry:` in the configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// containerd's registry host directory (`config_path`); several separated by `:` as in
    /// containerd. Must be the same directory containerd uses, so both ask the same mirrors.
    #[serde(deserialize_with = "path_list")]
    pub hosts_dir: Vec<PathBuf>,
    /// Local bundles: `<dir>/sha256-<hex>.json` or `.sigstore.json`; a missing directory is
    /// an empty one. `null` turns the lookup off.
    pub bundle_dir: Option<PathBuf>,
    /// Platform whose manifest is picked from a multi-arch index (the node's own by default).
    pub platform: Platform,
    /// Bound on opening a TCP connection to an endpoint (a `dial_timeout` in hosts.toml wins).
    #[serde(deserialize_with = "crate::settings::de_duration")]
    pub connect_timeout: Duration,
    /// Bound on one request, from sending it to the last byte of the answer.
    #[serde(deserialize_with = "crate::settings::de_duration")]
    pub request_timeout: Duration,
    /// Bound on resolving one image and discovering its signatures, all requests together.
    #[serde(deserialize_with = "crate::settings::de_duration")]
    pub discovery_timeout: Duration,
    /// Largest manifest or index accepted.
    #[serde(deserialize_with = "crate::settings::de_size")]
    pub max_manifest_bytes: u64,
    /// Largest bundle or signature payload accepted.
    #[serde(deserialize_with = "crate::settings::de_size")]
    pub max_blob_bytes: u64,
    /// Requests in flight to one endpoint host at most, across all pulls, so that a burst of
    /// pulls cannot flood the node's mirror.
    pub max_concurrent_requests: usize,
    /// Token servers (`host[:port]`) that may be contacted besides the endpoints themselves,
    /// when a registry's `WWW-Authenticate` realm is on another host.
    pub token_realm_hosts: Vec<String>,
    /// Hosts (`host` for any port, or `host:port`) that a mirror's redirects may lead to, for
    /// operators who pin the node's egress; `null` (the default) follows redirects to any host,
    /// as containerd does. Redirects to the endpoint's own host are always followed; credentials
    /// never leave it.
    pub redirect_hosts: Option<Vec<String>>,
    /// Static credentials per endpoint host (`host[:port]` as in the URL), used when kubelet
    /// sends none for that host.
    pub credentials: BTreeMap<String, Credentials>,
    /// Other spellings of a registry, by its canonical `host[:port]`: images named with an
    /// alias are the same images to policies and exemptions (`localhost:5000` and
    /// `127.0.0.1:5000`, a mirror's DNS aliases).
    pub aliases: BTreeMap<String, Vec<String>>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            hosts_dir: vec![PathBuf::from(DEFAULT_HOSTS_DIR)],
            bundle_dir: Some(PathBuf::from(DEFAULT_BUNDLE_DIR)),
            platform: Platform::host(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            discovery_timeout: Duration::from_secs(30),
            max_manifest_bytes: DEFAULT_MAX_BYTES,
            max_blob_bytes: DEFAULT_MAX_BYTES,
            max_concurrent_requests: 8,
            token_realm_hosts: Vec::new(),
            redirect_hosts: None,
            credentials: BTreeMap::new(),
            aliases: BTreeMap::new(),
        }
    }
}

impl RegistryConfig {
    /// Checks beyond types; `Err((key, message))` with the key relative to `registry`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("discovery_timeout", self.discovery_timeout),
        ] {
            if d.is_zero() {
                return Err((key, "must be greater than zero".into()));
            }
        }
        if self.max_manifest_bytes == 0 || self.max_blob_bytes == 0 {
            return Err(("max_manifest_bytes", "size limits must be greater than zero".into()));
        }
        if self.max_concurrent_requests == 0 {
            return Err(("max_concurrent_requests", "must be at least 1".into()));
        }
        if self.hosts_dir.iter().any(|p| !p.is_absolute()) {
            return Err(("hosts_dir", "expected absolute directories".into()));
        }
        if self.bundle_dir.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(("bundle_dir", "expected an absolute directory".into()));
        }
        if let Err(e) = crate::registry::reference::Aliases::new(&self.aliases) {
            return Err(("aliases", e));
        }
        for host in self.redirect_hosts.iter().flatten() {
            valid_host_entry(host).map_err(|why| ("redirect_hosts", format!("{host:?}: {why}")))?;
        }
        for (host, creds) in &self.credentials {
            if let Err(e) = creds.material() {
                return Err(("credentials", format!("{host}: {e}")));
            }
        }
        Ok(())
    }
}

/// A `host` or `host:port` entry (a bracketed IPv6 address with a port): no scheme, path,
/// user or wildcard, so that what is allowed is exactly what is written.
fn valid_host_entry(entry: &str) -> Result<(), &'static str> {
    if entry.contains("://") {
        return Err("expected host or host:port, without a scheme");
    }
    let (host, port) = match entry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
        _ => (entry, None),
    };
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let name_ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        && (name.contains(':') == host.starts_with('['));
    if !name_ok {
        return Err("expected host or host:port, like \"storage.internal\" or \"10.0.0.5:9000\"");
    }
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err("the port must be a number from 1 to 65535");
    }
    Ok(())
}

/// An OCI platform, written `os/architecture[/variant]` (`linux/amd64`, `linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform pullgate runs on, in OCI terms (what containerd pulls for by default).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Platform { os: "linux".into(), architecture: architecture.into(), variant: None }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: None }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => {
                Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: Some(v.to_string()) })
            }
            _ => Err(format!("invalid platform {s:?}: expected os/architecture[/variant], like \"linux/amd64\"")),
        }
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

fn path_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Paths {
        One(String),
        Many(Vec<PathBuf>),
    }
    Ok(match Paths::deserialize(d)? {
        Paths::One(s) => s.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect(),
        Paths::Many(v) => v,
    })
}

/// Registry flags of `pullgate verify` (and of any command that reads from the mirror); each
/// overrides the configuration file's `registry:` key of the same name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryArgs {
    /// containerd's registry host directory (its `config_path`) [default: /etc/containerd/certs.d]
    #[arg(long, value_name = "DIR")]
    pub hosts_dir: Option<String>,
    /// Directory of local bundles named sha256-<hex>.json or .sigstore.json [default: /var/lib/pullgate/bundles]
    #[arg(long, value_name = "DIR")]
    pub bundle_dir: Option<PathBuf>,
    /// Platform picked from a multi-arch index, os/arch[/variant] [default: this machine's]
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<Platform>,
    /// Registry user name (sent only to the image's endpoints)
    #[arg(long, value_name = "USER", requires = "password")]
    pub username: Option<String>,
    /// Registry password (prefer the environment variable: flags show in `ps`)
    #[arg(long, value_name = "PASSWORD", env = "PULLGATE_REGISTRY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Bound on opening a connection to a registry [default: 2s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Bound on one registry request [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
    /// Bound on resolving and discovering one image [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub discovery_timeout: Option<Duration>,
}

impl RegistryArgs {
    /// Applies the flags that were given on top of `config`.
    pub fn apply(&self, config: &mut RegistryConfig) {
        if let Some(h) = &self.hosts_dir {
            config.hosts_dir = h.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect();
        }
        if let Some(b) = &self.bundle_dir {
            config.bundle_dir = Some(b.clone());
        }
        if let Some(p) = &self.platform {
            config.platform = p.clone();
        }
        if let Some(t) = self.connect_timeout {
            config.connect_timeout = t;
        }
        if let Some(t) = self.request_timeout {
            config.request_timeout = t;
        }
        if let Some(t) = self.discovery_timeout {
            config.discovery_timeout = t;
        }
    }

    /// The credentials given on the command line, like kubelet's for a pull.
    pub fn credentials(&self) -> Option<Credentials> {
        let username = self.username.clone()?;
        Some(Credentials { username: Some(username), password: self.password.clone().map(Secret::new), ..Credentials::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RegistryConfig, String> {
        serde_saphyr::from_str::<RegistryConfig>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = RegistryConfig::default();
        assert_eq!(c.hosts_dir, [PathBuf::from("/etc/containerd/certs.d")]);
        assert_eq!(c.bundle_dir.as_deref(), Some(std::path::Path::new("/var/lib/pullgate/bundles")));
        assert_eq!(c.max_manifest_bytes, 4 << 20);
        assert_eq!(c.max_blob_bytes, 4 << 20);
        assert!(c.validate().is_ok());
        assert_eq!(parse("{}").unwrap(), c);
    }

    #[test]
    fn full_section() {
        let c = parse(
            r#"
hosts_dir: /etc/containerd/certs.d:/etc/docker/certs.d
bundle_dir: /srv/bundles
platform: linux/arm64/v8
connect_timeout: 500ms
request_timeout: 5s
discovery_timeout: 1m
max_manifest_bytes: 1MiB
max_blob_bytes: 65536
max_concurrent_requests: 2
token_realm_hosts: [auth.internal]
redirect_hosts: [storage.internal, "10.0.0.5:9000", "[fd00::1]:443"]
credentials:
  mirror.internal:5000:
    username: puller
    password: s3cret
  other.internal:
    auth: dTpw
"#,
        )
        .unwrap();
        assert_eq!(c.hosts_dir, [PathBuf::from("/etc/containerd/certs.d"), PathBuf::from("/etc/docker/certs.d")]);
        assert_eq!(c.platform.to_string(), "linux/arm64/v8");
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.discovery_timeout, Duration::from_secs(60));
        assert_eq!(c.max_manifest_bytes, 1 << 20);
        assert_eq!(c.max_blob_bytes, 65536);
        assert_eq!(c.redirect_hosts.as_deref().map(<[String]>::len), Some(3));
        assert_eq!(c.credentials["mirror.internal:5000"].username.as_deref(), Some("puller"));
        assert!(!format!("{c:?}").contains("s3cret"), "Debug redacts");
        assert!(c.validate().is_ok());
        let c = parse("hosts_dir: [/a, /b]\nbundle_dir: null\n").unwrap();
        assert_eq!(c.hosts_dir.len(), 2);
        assert_eq!(c.bundle_dir, None);
    }

    #[test]
    fn bad_values() {
        assert!(parse("hosts_dirs: /x").unwrap_err().contains("unknown field"));
        assert!(parse("platform: linux").unwrap_err().contains("os/architecture"));
        assert!(parse("request_timeout: 10").unwrap_err().contains("like \"10s\""));
        assert!(parse("max_blob_bytes: 4GB").unwrap_err().contains("like \"4MiB\""));
        assert!(parse("credentials:\n  h:\n    user: x\n").unwrap_err().contains("unknown field"));
        let c = parse("request_timeout: 0s").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "request_timeout");
        let c = parse("hosts_dir: relative/dir").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "hosts_dir");
        for bad in ["https://s3.internal", "s3.internal/bucket", "user@s3", "*.s3.internal", "s3:0", "s3:http", "", "fd00::1"] {
            let c = parse(&format!("redirect_hosts: [{bad:?}]")).unwrap();
            let (key, why) = c.validate().unwrap_err();
            assert_eq!(key, "redirect_hosts", "{bad}");
            assert!(why.contains(bad), "{why}");
        }
        assert!(parse("redirect_hosts: []").unwrap().validate().is_ok(), "an empty list: only the endpoint's own host");
        let c = parse("credentials:\n  h:\n    auth: \"%%%\"\n").unwrap();
        assert!(c.validate().unwrap_err().1.contains("base64"));
    }

    #[test]
    fn platforms() {
        // Matching is containerd's (`registry::platform`); here only the syntax.
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        let c = parse("aliases:\n  127.0.0.1:5000: [localhost:5000]\n").unwrap();
        assert!(c.validate().is_ok());
        let c = parse("aliases:\n  a.io: [x.io]\n  b.io: [x.io]\n").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "aliases");
        assert!("linux/".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
    }

    #[test]
    fn args_override_config() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            registry: RegistryArgs,
        }
        let cli = Cli::try_parse_from([
            "verify",
            "--hosts-dir",
            "/h1:/h2",
            "--platform",
            "linux/arm64",
            "--username",
            "u",
            "--password",
            "p",
            "--request-timeout",
            "3s",
        ])
        .unwrap();
        let mut c = RegistryConfig::default();
        cli.registry.apply(&mut c);
        assert_eq!(c.hosts_dir.len(), 2);
        assert_eq!(c.platform.architecture, "arm64");
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        let creds = cli.registry.credentials().unwrap();
        assert_eq!(creds.username.as_deref(), Some("u"));
        assert!(Cli::try_parse_from(["verify", "--platform", "x"]).is_err());
    }
}
