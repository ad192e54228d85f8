//! pullgate's configuration: one YAML file, validated completely before anything is bound.
//!
//! Parsing takes a string, not a path, so tests feed it text directly. Every problem is reported
//! as one line naming the file, the key path and what was expected; the binary exits 64
//! (EX_USAGE) on any of them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use crate::cri::settings::{Access, UpstreamConnection};
use crate::settings::{de_duration, parse_yaml, ConfigError};

/// Default path of the socket kubelet talks to.
pub const DEFAULT_LISTEN: &str = "/run/pullgate/pullgate.sock";
/// Default path of containerd's CRI socket.
pub const DEFAULT_UPSTREAM: &str = "/run/containerd/containerd.sock";

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Unix socket pullgate serves CRI on (kubelet's `containerRuntimeEndpoint`).
    pub listen: PathBuf,
    /// containerd's CRI socket, where every call is forwarded.
    pub upstream: PathBuf,
    /// Permission bits of the socket pullgate creates (not of one handed over by systemd).
    pub socket_mode: FileMode,
    /// Group owning the socket pullgate creates; unset keeps the process's group.
    pub socket_group: Option<u32>,
    /// Who may call pullgate, checked with `SO_PEERCRED` on every connection.
    pub access: Access,
    /// How pullgate talks to containerd.
    pub upstream_connection: UpstreamConnection,
    /// How long SIGTERM waits for in-flight calls before closing them.
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// Log output.
    pub log: Log,
    /// Which images need signatures by whom. Without it, pullgate checks nothing (pure
    /// pass-through, with a warning at start).
    pub policy: Option<crate::policy::PolicyConfig>,
    /// The node's registry mirrors (containerd's hosts directory) and discovery limits.
    pub registry: crate::registry::RegistryConfig,
    /// The mirrored Sigstore trust root: where it is installed and how fresh it must be.
    pub trust_root: crate::trust::TrustRootConfig,
    /// The decision cache.
    pub cache: crate::enforce::gate::CacheConfig,
    /// Where decisions are recorded.
    pub audit: crate::enforce::audit::AuditConfig,
    /// Node name in audit records; default: the host name.
    pub node_name: Option<String>,
    /// Metrics and health endpoints; off unless `admin.listen` is set.
    pub admin: crate::admin::AdminConfig,
    /// Which CRI calls pass the gate besides those pullgate knows, and containerd's sandbox image.
    pub cri: CriSurfaces,
}

/// The CRI surfaces of `src/cri/methods.rs` that configuration adjusts, and the buffer budget
/// of the calls pullgate decodes (read at start).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriSurfaces {
    /// `ImageService` methods pullgate does not know, let through in enforce mode by name
    /// (`runtime.v1.ImageService/Method`): only for methods known not to bring an image in.
    pub allow_image_methods: Vec<String>,
    /// containerd's sandbox image, for containerd 2.x, which does not report it: set it to
    /// containerd's `pinned_images.sandbox`. containerd 1.6/1.7 report theirs (this is ignored).
    pub sandbox_image: Option<String>,
    /// Most request bytes the intercepted calls (PullImage, CreateContainer, RunPodSandbox,
    /// ImageStatus) buffer at once, over all connections; a call past it waits, then is refused
    /// with `RESOURCE_EXHAUSTED`. At least 16 MiB (one call of the largest size buffered).
    #[serde(deserialize_with = "crate::settings::de_size")]
    pub max_buffered_bytes: u64,
    /// Serve each caller connection with the frame-level relay (`src/cri/frame_relay/`): calls
    /// pullgate only passes through go to containerd as HTTP/2 frames on a connection of their
    /// own, without terminating HTTP/2 in pullgate (the default). Off: every call goes through
    /// hyper and h2.
    pub frame_relay: bool,
}

impl Default for CriSurfaces {
    fn default() -> Self {
        CriSurfaces {
            allow_image_methods: Vec::new(),
            sandbox_image: None,
            max_buffered_bytes: crate::cri::budget::DEFAULT_MAX_BUFFERED,
            frame_relay: true,
        }
    }
}

impl CriSurfaces {
    /// The allowed methods as gRPC paths (`/runtime.v1.ImageService/Method`).
    pub fn allowed_paths(&self) -> Vec<String> {
        self.allow_image_methods.iter().filter_map(|m| crate::cri::methods::allowable_image_method(m).ok()).collect()
    }

    fn validate(&self) -> Result<(), (String, String)> {
        for (i, m) in self.allow_image_methods.iter().enumerate() {
            crate::cri::methods::allowable_image_method(m).map_err(|e| (format!("cri.allow_image_methods[{i}]"), e))?;
        }
        if let Some(image) = &self.sandbox_image {
            crate::registry::reference::Reference::parse(image)
                .map_err(|e| ("cri.sandbox_image".to_string(), format!("{image:?} is not an image reference: {e}")))?;
        }
        let min = crate::cri::budget::MIN_MAX_BUFFERED;
        if self.max_buffered_bytes < min {
            return Err((
                "cri.max_buffered_bytes".into(),
                format!(
                    "must be at least {min} bytes (16MiB, one call of the largest size pullgate buffers), got {}",
                    self.max_buffered_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: PathBuf::from(DEFAULT_LISTEN),
            upstream: PathBuf::from(DEFAULT_UPSTREAM),
            socket_mode: FileMode(0o660),
            socket_group: None,
            access: Access::default(),
            upstream_connection: UpstreamConnection::default(),
            drain_timeout: Duration::from_secs(10),
            log: Log::default(),
            policy: None,
            registry: Default::default(),
            trust_root: Default::default(),
            cache: Default::default(),
            audit: Default::default(),
            node_name: None,
            admin: Default::default(),
            cri: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `pullgate=debug,h2=info`, ...
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { format: LogFormat::Human, level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Unix permission bits written as an octal string (`"0660"`), as in `chmod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bits = u32::from_str_radix(s.trim_start_matches("0o"), 8).ok().filter(|b| *b <= 0o777).ok_or_else(|| {
            serde::de::Error::custom(format!("invalid mode {s:?}: expected octal permission bits as a quoted string, like \"0660\""))
        })?;
        Ok(FileMode(bits))
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: None,
            message: format!("cannot read config file: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `file` only names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = parse_yaml(text, file)?;
        config.validate().map_err(|(key, message)| ConfigError { file: file.to_owned(), key: Some(key), message })?;
        Ok(config)
    }

    /// Checks that go beyond types: paths absolute, bounds sane.
    fn validate(&self) -> Result<(), (String, String)> {
        self.validate_proxy().map_err(|(k, m)| (k.to_string(), m))?;
        self.registry.validate().map_err(|(k, m)| (format!("registry.{k}"), m))?;
        self.trust_root.validate().map_err(|(k, m)| (k.to_string(), m))?;
        self.admin.validate().map_err(|(k, m)| (k.to_string(), m))?;
        self.cri.validate()?;
        if let Some(policy) = &self.policy {
            policy.compile(0).map_err(|e| (e.key, e.message))?;
        }
        if self.cache.capacity == 0 {
            return Err(("cache.capacity".into(), "must be at least 1".into()));
        }
        Ok(())
    }

    fn validate_proxy(&self) -> Result<(), (&'static str, String)> {
        for (key, path) in [("listen", &self.listen), ("upstream", &self.upstream)] {
            if !path.is_absolute() {
                return Err((key, format!("expected an absolute socket path, got {:?}", path.display())));
            }
            // sun_path holds 108 bytes including the terminating NUL.
            if path.as_os_str().len() > 107 {
                return Err((key, format!("socket path is {} bytes long; unix sockets allow at most 107", path.as_os_str().len())));
            }
        }
        if self.listen == self.upstream {
            return Err(("listen", "must differ from `upstream` (pullgate would forward to itself)".into()));
        }
        self.upstream_connection.validate().map_err(|(k, m)| (k, m.to_string()))?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(("log.level", format!("invalid log filter {:?}: {e}", self.log.level)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/pullgate/config.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn packaged_example_is_valid_and_shows_the_defaults() {
        assert_eq!(parse(include_str!("../packaging/config.yaml")).unwrap(), Config::default());
    }

    #[test]
    fn cri_surfaces_are_validated() {
        let c = parse("cri:\n  allow_image_methods: [runtime.v1.ImageService/FetchImage, /runtime.v1alpha2.ImageService/X]\n  sandbox_image: reg/pause:3@sha256:0000000000000000000000000000000000000000000000000000000000000000\n").unwrap();
        assert_eq!(c.cri.allowed_paths(), ["/runtime.v1.ImageService/FetchImage", "/runtime.v1alpha2.ImageService/X"]);
        let e = parse("cri:\n  allow_image_methods: [runtime.v1.ImageService/PullImage]\n").unwrap_err();
        assert!(e.contains("cri.allow_image_methods[0]") && e.contains("knows"), "{e}");
        let e = parse("cri:\n  allow_image_methods: [containerd.services.images.v1.Images/Create]\n").unwrap_err();
        assert!(e.contains("not an ImageService method"), "{e}");
        let e = parse("cri:\n  sandbox_image: \"Not A Reference!\"\n").unwrap_err();
        assert!(e.contains("cri.sandbox_image"), "{e}");
        assert!(parse("cri:\n  nope: 1\n").is_err());
        assert_eq!(parse("listen: /run/x.sock\n").unwrap().cri.max_buffered_bytes, 64 << 20);
        assert_eq!(parse("cri:\n  max_buffered_bytes: 32MiB\n").unwrap().cri.max_buffered_bytes, 32 << 20);
        let e = parse("cri:\n  max_buffered_bytes: 1MiB\n").unwrap_err();
        assert!(e.contains("cri.max_buffered_bytes") && e.contains("at least"), "{e}");
        assert!(parse("cri:\n  max_buffered_bytes: lots\n").unwrap_err().contains("max_buffered_bytes"));
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing\n\n").unwrap(), Config::default());
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
listen: /run/pg/pg.sock
upstream: /run/containerd/containerd.sock
socket_mode: "0600"
socket_group: 990
access:
  allowed_uids: [1000]
  allowed_gids: [990]
upstream_connection:
  connect_timeout: 500ms
  initial_backoff: 10ms
  max_backoff: 2s
drain_timeout: 30s
log:
  format: json
  level: pullgate=debug,info
"#,
        )
        .unwrap();
        assert_eq!(c.socket_mode, FileMode(0o600));
        assert_eq!(c.access.allowed_uids, vec![1000]);
        assert_eq!(c.upstream_connection.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_key_names_file_and_path() {
        let e = parse("access:\n  allowed_uid: [1]\n").unwrap_err();
        assert!(e.starts_with("/etc/pullgate/config.yaml: key `access"), "{e}");
        assert!(e.contains("allowed_uid"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = parse("access:\n  allowed_uids: [root]\n").unwrap_err();
        assert!(e.contains("key `access.allowed_uids[0]`"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        let e = parse("drain_timeout: soon\n").unwrap_err();
        assert!(e.contains("key `drain_timeout`") && e.contains("like \"10s\""), "{e}");
        let e = parse("socket_mode: \"999\"\n").unwrap_err();
        assert!(e.contains("key `socket_mode`") && e.contains("octal"), "{e}");
        let e = parse("listen: relative.sock\n").unwrap_err();
        assert!(e.contains("key `listen`") && e.contains("absolute"), "{e}");
        let e = parse("log:\n  format: xml\n").unwrap_err();
        assert!(e.contains("key `log.format`"), "{e}");
        let e = parse("log:\n  level: \"[\"\n").unwrap_err();
        assert!(e.contains("key `log.level`"), "{e}");
        let e = parse("listen: /run/containerd/containerd.sock\n").unwrap_err();
        assert!(e.contains("must differ"), "{e}");
    }

    #[test]
    fn malformed_yaml_is_an_error() {
        let e = parse("listen: [unclosed\n").unwrap_err();
        assert!(e.starts_with("/etc/pullgate/config.yaml: "), "{e}");
    }
}
