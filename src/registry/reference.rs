//! Image references and digests, normalised the way containerd's CRI plugin and Docker do
//! (`github.com/distribution/reference`: `ParseNormalizedNamed` then `TagNameOnly`).
//!
//! - no registry: `docker.io`; a single path component on `docker.io`: `library/` prefixed;
//! - `index.docker.io` is the legacy spelling of `docker.io` (the endpoint containerd talks to
//!   for it, `registry-1.docker.io`, is chosen by [`super::hosts`], not here);
//! - neither tag nor digest: tag `latest`;
//! - `name:tag@digest`: both are kept, and the digest is what is resolved (containerd ignores the
//!   tag then).
//!
//! The normalised string (`docker.io/library/busybox:latest`) is what policies match on, so
//! parsing is strict: anything containerd would refuse is refused here with the reason.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::digest::{Digest, DigestError};

/// Registry assumed when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Old name of [`DEFAULT_REGISTRY`], still accepted in references.
pub const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
/// Tag assumed when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// distribution's limit on `registry/repository`.
const MAX_NAME_LEN: usize = 255;
/// distribution's limit on a tag (`[\w][\w.-]{0,127}`).
const MAX_TAG_LEN: usize = 128;

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("invalid image reference {0:?}: {1}")]
    Invalid(String, &'static str),
    #[error("invalid image reference {0:?}: repository name {1:?} must be lowercase")]
    Uppercase(String, String),
    #[error("invalid image reference {0:?}: {1:?} is a 64-character hex string, which looks like an image ID, not a name")]
    LooksLikeId(String, String),
    #[error("invalid image reference {0:?}: name is {1} characters long, at most 255 allowed")]
    TooLong(String, usize),
    #[error("invalid image reference {0:?}: {1}")]
    Digest(String, DigestError),
}

/// A normalised image reference: registry, repository, and a tag, a digest or both.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises `s` like containerd's CRI plugin does for `PullImage`.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let invalid = |why: &'static str| ReferenceError::Invalid(s.to_string(), why);
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(ReferenceError::LooksLikeId(s.to_string(), s.to_string()));
        }
        if s.contains("://") {
            return Err(invalid("a reference has no URL scheme (write registry/repository:tag)"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d).map_err(|e| ReferenceError::Digest(s.to_string(), e))?)),
            None => (s, None),
        };
        // distribution's splitDockerDomain: the first component is a registry when it has a
        // `.` or `:`, is `localhost`, or has uppercase letters (registry names are not lowercased).
        let (registry, remainder) = match name_tag.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" || first.to_lowercase() != first => {
                (first, rest.to_string())
            }
            _ => (DEFAULT_REGISTRY, name_tag.to_string()),
        };
        let registry = if registry == LEGACY_DEFAULT_REGISTRY { DEFAULT_REGISTRY } else { registry };
        let (repository, tag) = match remainder.rfind(':') {
            Some(i) if !remainder[i + 1..].contains('/') => (&remainder[..i], Some(&remainder[i + 1..])),
            _ => (remainder.as_str(), None),
        };
        let mut repository = repository.to_string();
        if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if repository.to_lowercase() != repository {
            return Err(ReferenceError::Uppercase(s.to_string(), repository));
        }
        validate_registry(registry).map_err(invalid)?;
        validate_repository(&repository).map_err(invalid)?;
        if let Some(tag) = tag {
            validate_tag(tag).map_err(invalid)?;
        }
        let name_len = registry.len() + 1 + repository.len();
        if name_len > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong(s.to_string(), name_len));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference { registry: registry.to_string(), repository, tag, digest })
    }

    /// The same repository at `digest`, without a tag (what a pull by digest asks for).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference { registry: self.registry.clone(), repository: self.repository.clone(), tag: None, digest: Some(digest) }
    }

    /// The registry as named in the reference (`docker.io`, `127.0.0.1:5000`): the key
    /// containerd looks up in its hosts directory.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository inside the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A registry name as policies and exemptions see it: lower-cased (host names are
/// case-insensitive; containerd reaches `Registry.Example` and `registry.example` alike) and
/// without `:443`, the port every HTTPS endpoint uses when none is written.
pub fn canonical_registry(registry: &str) -> String {
    let lower = registry.to_ascii_lowercase();
    match lower.strip_suffix(":443") {
        Some(host) if !host.is_empty() => host.to_string(),
        _ => lower,
    }
}

/// Other spellings of a registry (`registry.aliases`), mapped to one canonical name, so that
/// `localhost:5000/demo/app` and `127.0.0.1:5000/demo/app` are one image to policies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases {
    /// Canonical spelling of each alias, both canonicalised by [`canonical_registry`].
    to_canonical: std::collections::BTreeMap<String, String>,
}

impl Aliases {
    /// From the configuration's `canonical -> [alias, ...]` map; every name must be a valid
    /// registry `host[:port]`, and an alias may stand for one registry only.
    pub fn new(config: &std::collections::BTreeMap<String, Vec<String>>) -> Result<Aliases, String> {
        let mut to_canonical = std::collections::BTreeMap::new();
        for (canonical, aliases) in config {
            // Every configured registry maps to itself, so it is known to `with_hosts_dir`.
            to_canonical.insert(canonical_registry(canonical), canonical_registry(canonical));
            validate_registry(canonical).map_err(|e| format!("{canonical:?}: {e}"))?;
            let c = canonical_registry(canonical);
            if config.keys().any(|k| k != canonical && canonical_registry(k) == c) {
                return Err(format!("{canonical:?} is listed twice (names are compared lower-cased, without :443)"));
            }
            for alias in aliases {
                validate_registry(alias).map_err(|e| format!("{canonical}: alias {alias:?}: {e}"))?;
                let a = canonical_registry(alias);
                if a == c {
                    continue;
                }
                if config.keys().any(|k| canonical_registry(k) == a) {
                    return Err(format!("{canonical}: alias {alias:?} is itself a canonical name; list all spellings under one"));
                }
                if let Some(other) = to_canonical.insert(a, c.clone()) {
                    if other != c {
                        return Err(format!("alias {alias:?} is listed for both {other} and {c}"));
                    }
                }
            }
        }
        Ok(Aliases { to_canonical })
    }

    /// Adds the registries of containerd's hosts directory that are only another spelling of
    /// a registry named in the configuration: a host directory (`localhost:5000/hosts.toml`)
    /// whose every endpoint (`server`, `[host]`, none the registry itself) is that registry or
    /// one of its aliases. Read once (at start); returns what was added, for the log.
    pub fn with_hosts_dir(mut self, hosts: &super::hosts::HostsDir) -> (Aliases, Vec<String>) {
        let mut added = Vec::new();
        let known: std::collections::BTreeSet<String> = self.to_canonical.values().cloned().collect();
        for root in hosts.roots() {
            let Ok(entries) = std::fs::read_dir(root) else { continue };
            for entry in entries.flatten() {
                let Some(dir) = entry.file_name().to_str().map(str::to_string) else { continue };
                // containerd's `host_port_` spelling of `host:port`.
                let registry = match dir.strip_suffix('_').and_then(|d| d.rsplit_once('_')) {
                    Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() => format!("{host}:{port}"),
                    _ => dir.clone(),
                };
                if registry == "_default" || validate_registry(&registry).is_err() {
                    continue;
                }
                let own = canonical_registry(&registry);
                if self.to_canonical.contains_key(&own) || known.contains(&own) {
                    continue;
                }
                let Ok(resolution) = hosts.resolve(&registry) else { continue };
                let targets: std::collections::BTreeSet<String> = resolution
                    .endpoints
                    .iter()
                    .map(|e| match e.origin {
                        super::hosts::Origin::Default => String::new(),
                        _ => self.registry(&e.host),
                    })
                    .collect();
                if let (1, Some(target)) = (targets.len(), targets.iter().next()) {
                    if known.contains(target) && *target != own {
                        added.push(format!("{registry} is an alias of {target} (its hosts.toml sends every request there)"));
                        self.to_canonical.insert(own, target.clone());
                    }
                }
            }
        }
        (self, added)
    }

    /// The canonical name of `registry`.
    pub fn registry(&self, registry: &str) -> String {
        let c = canonical_registry(registry);
        self.to_canonical.get(&c).cloned().unwrap_or(c)
    }

    /// `registry/repository` of `reference` with its canonical registry: the name policies,
    /// exemptions, audit records and the decision cache know an image by.
    pub fn name(&self, reference: &Reference) -> String {
        format!("{}/{}", self.registry(reference.registry()), reference.repository())
    }

    /// Whether `a` and `b` name the same repository.
    pub fn same_repository(&self, a: &Reference, b: &Reference) -> bool {
        self.name(a) == self.name(b)
    }
}

/// `host[:port]` where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
fn validate_registry(registry: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or("unterminated [IPv6] registry address")?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 registry address");
        }
        match after {
            "" => return Ok(()),
            p => (None, Some(p.strip_prefix(':').ok_or("invalid registry address after ]")?)),
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("registry port must be a number");
        }
    }
    if let Some(host) = host {
        let ok_label = |l: &str| {
            !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-') && !l.ends_with('-')
        };
        if !host.split('.').all(ok_label) {
            return Err("invalid registry host name");
        }
    }
    Ok(())
}

/// Path components `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*` separated by `/`.
fn validate_repository(repo: &str) -> Result<(), &'static str> {
    for component in repo.split('/') {
        if component.is_empty() {
            return Err("empty path component in repository name");
        }
        let b = component.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return Err("repository path components must start and end with a lowercase letter or digit");
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            // a separator: `.`, `_`, `__` or a run of `-`
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-');
            if !ok {
                return Err("repository name has an invalid character or separator (allowed: a-z 0-9 . _ __ -)");
            }
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), &'static str> {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = tag.as_bytes();
    if b.is_empty() {
        return Err("empty tag");
    }
    if b.len() > MAX_TAG_LEN {
        return Err("tag is longer than 128 characters");
    }
    if !word(b[0]) || !b.iter().all(|&c| word(c) || c == b'.' || c == b'-') {
        return Err("invalid tag (allowed: letters, digits, _ . -, not starting with . or -)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).to_string()
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("index.docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("index.docker.io/user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(norm("user/team/app:v1"), "docker.io/user/team/app:v1");
    }

    #[test]
    fn registries_and_ports() {
        assert_eq!(norm("ghcr.io/example/app:1.2"), "ghcr.io/example/app:1.2");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(norm("127.0.0.1:5000/demo/app:1"), "127.0.0.1:5000/demo/app:1");
        assert_eq!(norm("[::1]:5000/demo/app:1"), "[::1]:5000/demo/app:1");
        assert_eq!(norm("[fe80::1]/app"), "[fe80::1]/app:latest");
        assert_eq!(norm("Registry/app"), "Registry/app:latest", "uppercase first component is a registry");
        assert_eq!(norm("mirror:5000/app"), "mirror:5000/app:latest");
        // single component on another registry: no library/ prefix
        let r = Reference::parse("quay.io/app").unwrap();
        assert_eq!(r.repository(), "app");
        assert_eq!(r.registry(), "quay.io");
        assert_eq!(r.name(), "quay.io/app");
    }

    #[test]
    fn digests() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag(), None, "a digest alone gets no default tag");
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        let r = Reference::parse(&format!("ghcr.io/a/b:1.0@{D}")).unwrap();
        assert_eq!(r.tag(), Some("1.0"));
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.to_string(), format!("ghcr.io/a/b:1.0@{D}"));
        let r = Reference::parse(&format!("localhost:5000/a@{D}")).unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.with_digest(r.digest().unwrap().clone()).to_string(), format!("localhost:5000/a@{D}"));
    }

    #[test]
    fn separators() {
        for ok in ["a/b.c", "a/b_c", "a/b__c", "a/b-c", "a/b---c", "a0/9z", "a.b.c/d"] {
            Reference::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["a/b..c", "a/b___c", "a/-b", "a/b-", "a/.b", "a//b", "a/b/", "a/b_.c"] {
            assert!(Reference::parse(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn errors_say_why() {
        assert_eq!(Reference::parse("").unwrap_err(), ReferenceError::Empty);
        let e = Reference::parse("docker.io/Library/Busybox").unwrap_err().to_string();
        assert!(e.contains("must be lowercase"), "{e}");
        let e = Reference::parse(&D[7..]).unwrap_err().to_string();
        assert!(e.contains("image ID"), "{e}");
        let e = Reference::parse("busybox:").unwrap_err().to_string();
        assert!(e.contains("empty tag"), "{e}");
        let e = Reference::parse("busybox:-x").unwrap_err().to_string();
        assert!(e.contains("invalid tag"), "{e}");
        let e = Reference::parse(&format!("busybox:{}", "a".repeat(129))).unwrap_err().to_string();
        assert!(e.contains("128"), "{e}");
        let e = Reference::parse("busybox@sha256:abc").unwrap_err().to_string();
        assert!(e.contains("64 lowercase hex"), "{e}");
        let e = Reference::parse("busybox@md5:abc").unwrap_err().to_string();
        assert!(e.contains("not supported"), "{e}");
        let e = Reference::parse(&format!("busybox@{}", D.to_uppercase().replace("SHA256", "sha256"))).unwrap_err().to_string();
        assert!(e.contains("lowercase hex"), "{e}");
        let e = Reference::parse("docker://busybox").unwrap_err().to_string();
        assert!(e.contains("URL scheme"), "{e}");
        let e = Reference::parse("host:port/app").unwrap_err().to_string();
        assert!(e.contains("port must be a number"), "{e}");
        let e = Reference::parse("bad_host.io/app").unwrap_err().to_string();
        assert!(e.contains("registry host"), "{e}");
        let e = Reference::parse(&format!("r.io/{}", "a".repeat(260))).unwrap_err().to_string();
        assert!(e.contains("at most 255"), "{e}");
        let e = Reference::parse("[::1/app").unwrap_err().to_string();
        assert!(e.contains("IPv6"), "{e}");
        assert!(Reference::parse("a b").is_err());
        assert!(Reference::parse("busybox:1@").is_err());
        assert!(Reference::parse(" busybox").is_err());
    }

    #[test]
    fn canonical_names_and_aliases() {
        assert_eq!(canonical_registry("Registry.Example:443"), "registry.example");
        assert_eq!(canonical_registry("registry.example:5000"), "registry.example:5000");
        assert_eq!(canonical_registry("[::1]:443"), "[::1]");
        assert_eq!(canonical_registry("LOCALHOST:5000"), "localhost:5000");
        let map =
            |pairs: &[(&str, &[&str])]| pairs.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect();
        let a = Aliases::new(&map(&[
            ("127.0.0.1:5000", &["localhost:5000", "[::1]:5000"]),
            ("mirror.internal", &["Mirror-Alias.internal:443"]),
        ]))
        .unwrap();
        for (spelling, want) in [
            ("localhost:5000/demo/app:1", "127.0.0.1:5000/demo/app"),
            ("LocalHost:5000/demo/app:1", "127.0.0.1:5000/demo/app"),
            ("[::1]:5000/demo/app:1", "127.0.0.1:5000/demo/app"),
            ("127.0.0.1:5000/demo/app", "127.0.0.1:5000/demo/app"),
            ("localhost:5001/demo/app", "localhost:5001/demo/app"),
            ("mirror-alias.internal/x/y", "mirror.internal/x/y"),
            ("Mirror.Internal:443/x/y", "mirror.internal/x/y"),
            ("index.docker.io/busybox", "docker.io/library/busybox"),
        ] {
            assert_eq!(a.name(&Reference::parse(spelling).unwrap()), want, "{spelling}");
        }
        assert!(Aliases::new(&map(&[("a.io", &["b.io"]), ("c.io", &["B.io"])])).unwrap_err().contains("both"));
        assert!(Aliases::new(&map(&[("a.io", &["b.io"]), ("b.io", &[])])).unwrap_err().contains("canonical"));
        assert!(Aliases::new(&map(&[("a.io", &["bad host"])])).is_err());
        assert!(Aliases::new(&map(&[("A.io", &[]), ("a.io:443", &[])])).unwrap_err().contains("twice"));
    }

    #[test]
    fn aliases_from_the_hosts_directory() {
        let root = std::env::temp_dir().join(format!("pg-alias-{}", std::process::id()));
        let write = |dir: &str, toml: &str| {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("hosts.toml"), toml).unwrap();
        };
        write("localhost:5000", "server = \"http://127.0.0.1:5000\"\n[host.\"http://127.0.0.1:5000\"]\n");
        write("mirror-b.internal", "server = \"https://mirror.internal\"\n[host.\"https://Mirror.internal:443\"]\n");
        // A registry that falls back to itself is not an alias; nor one sent to an unknown host.
        write("docker.io", "[host.\"https://mirror.internal\"]\n");
        write("other.io", "server = \"https://elsewhere.io\"\n[host.\"https://elsewhere.io\"]\n");
        let config = std::collections::BTreeMap::from([("127.0.0.1:5000".to_string(), vec![]), ("mirror.internal".to_string(), vec![])]);
        let hosts = crate::registry::hosts::HostsDir::new(vec![root.clone()]);
        let (a, added) = Aliases::new(&config).unwrap().with_hosts_dir(&hosts);
        std::fs::remove_dir_all(&root).ok();
        assert_eq!(added.len(), 2, "{added:?}");
        assert_eq!(a.name(&Reference::parse("localhost:5000/demo/app").unwrap()), "127.0.0.1:5000/demo/app");
        assert_eq!(a.name(&Reference::parse("mirror-b.internal/x").unwrap()), "mirror.internal/x");
        assert_eq!(a.name(&Reference::parse("docker.io/x/y").unwrap()), "docker.io/x/y");
        assert_eq!(a.name(&Reference::parse("other.io/x").unwrap()), "other.io/x");
    }
}
