//! containerd's own configuration file, seen from pullgate: which format (version) it is in,
//! whether the running containerd generation reads that format, and whether containerd resolves
//! registry mirrors from the same `hosts.toml` directory as pullgate (`config_path`).
//!
//! Where containerd keeps `config_path` depends on the file's version, not on the binary:
//! - version 1 (containerd 1.x, deprecated): `[plugins.cri.registry]`;
//! - version 2 (containerd 1.x; 2.x migrates it at every start):
//!   `[plugins."io.containerd.grpc.v1.cri".registry]`;
//! - version 3 (containerd 2.0+) and 4 (2.3+): `[plugins."io.containerd.cri.v1.images".registry]`.
//!
//! containerd 1.x reads versions 1 and 2 only. A `config_path` under the section of another
//! version is ignored by containerd, which then pulls from registries directly instead of the
//! mirrors pullgate verifies against. Mirrors in `registry.mirrors` are the deprecated form that
//! pullgate does not read.

use std::path::{Path, PathBuf};

use super::Status;

const CRI_V1: &[&str] = &["plugins", "cri"];
const CRI_V2: &[&str] = &["plugins", "io.containerd.grpc.v1.cri"];
const CRI_V3: &[&str] = &["plugins", "io.containerd.cri.v1.images"];

/// The containerd generation, from CRI `Version`'s `runtime_version` ("1.6.20~ds1", "v2.3.4").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    pub major: u32,
    pub minor: u32,
}

impl Running {
    pub fn parse(runtime_version: &str) -> Option<Running> {
        let v = runtime_version.trim_start_matches('v');
        let mut parts = v.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Running { major, minor })
    }
}

/// The checks on one containerd config file's text: (status, one-line message) each.
pub fn check(text: &str, file: &Path, running: Option<Running>, hosts_dir: &[PathBuf]) -> Vec<(Status, String)> {
    let mut out = Vec::new();
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let e: toml::de::Error = e;
            out.push((Status::Fail, format!("{}: not valid TOML: {}", file.display(), e.message())));
            return out;
        }
    };
    let file = file.display();
    let version = table.get("version").and_then(toml::Value::as_integer).unwrap_or(1);
    let (cri, section) = match version {
        1 => (CRI_V1, "[plugins.cri.registry]"),
        2 => (CRI_V2, "[plugins.\"io.containerd.grpc.v1.cri\".registry]"),
        3 | 4 => (CRI_V3, "[plugins.\"io.containerd.cri.v1.images\".registry]"),
        v => {
            out.push((Status::Fail, format!("{file}: unknown config version {v} (containerd knows 1 to 4)")));
            return out;
        }
    };

    // 1. The format against the generation that runs.
    let format = format!("{file} is a version {version} config");
    match running {
        Some(r) if r.major == 1 && version >= 3 => out.push((
            Status::Fail,
            format!("{format} (containerd 2.x) but containerd {}.{} runs, which reads versions 1 and 2 only: write it as version 2 (config_path under [plugins.\"io.containerd.grpc.v1.cri\".registry])", r.major, r.minor),
        )),
        Some(r) if r.major == 2 && version == 4 && r.minor < 3 => out.push((
            Status::Fail,
            format!("{format} (containerd 2.3+) but containerd {}.{} runs, which reads up to version 3: write it as version 3", r.major, r.minor),
        )),
        Some(r) if r.major >= 2 && version <= 2 => out.push((
            Status::Warn,
            format!("{format} (containerd 1.x): containerd {}.{} migrates it in memory at every start; `containerd config migrate` prints the current form", r.major, r.minor),
        )),
        Some(r) => out.push((Status::Ok, format!("{format}, read by the running containerd {}.{}", r.major, r.minor))),
        None => out.push((Status::Skip, format!("{format}; containerd does not answer, so its generation is unknown"))),
    }

    // 2. config_path where this version keeps it, or somewhere containerd ignores.
    let registry = |path: &[&str]| lookup(&table, path).and_then(|t| t.get("registry")).and_then(toml::Value::as_table);
    let config_path = registry(cri).and_then(|r| r.get("config_path")).and_then(toml::Value::as_str).filter(|s| !s.is_empty());
    let misplaced: Vec<&str> = [
        (CRI_V1, "[plugins.cri.registry]"),
        (CRI_V2, "[plugins.\"io.containerd.grpc.v1.cri\".registry]"),
        (CRI_V3, "[plugins.\"io.containerd.cri.v1.images\".registry]"),
    ]
    .into_iter()
    .filter(|(p, _)| *p != cri)
    .filter(|(p, _)| registry(p).and_then(|r| r.get("config_path")).is_some())
    .map(|(_, name)| name)
    .collect();
    let pullgate_dirs = hosts_dir.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    match config_path {
        Some(cp) => {
            let theirs: Vec<PathBuf> = cp.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect();
            if theirs == hosts_dir {
                out.push((Status::Ok, format!("containerd reads hosts.toml from {cp} (config_path in {section}), as pullgate does")));
            } else {
                out.push((
                    Status::Warn,
                    format!("containerd reads hosts.toml from {cp} (config_path in {section}), pullgate from {pullgate_dirs} (registry.hosts_dir): they may pull from different mirrors"),
                ));
            }
        }
        None if !misplaced.is_empty() => out.push((
            Status::Fail,
            format!(
                "config_path is set in {}, which a version {version} config does not use: containerd ignores it and pulls from registries directly; move it to {section}",
                misplaced.join(" and ")
            ),
        )),
        None => out.push((
            Status::Fail,
            format!("config_path is not set in {section}: containerd does not read hosts.toml and pulls from registries directly, not from the mirrors pullgate checks ({pullgate_dirs}); set config_path = \"{pullgate_dirs}\""),
        )),
    }

    // 3. Mirrors the deprecated way (pullgate reads hosts.toml only).
    for (path, name) in
        [(CRI_V1, "plugins.cri"), (CRI_V2, "plugins.\"io.containerd.grpc.v1.cri\""), (CRI_V3, "plugins.\"io.containerd.cri.v1.images\"")]
    {
        let Some(r) = registry(path) else { continue };
        let legacy: Vec<&str> = ["mirrors", "configs"]
            .into_iter()
            .filter(|k| r.get(*k).and_then(toml::Value::as_table).is_some_and(|t| !t.is_empty()))
            .collect();
        if !legacy.is_empty() {
            let status = if config_path.is_some() { Status::Warn } else { Status::Fail };
            out.push((
                status,
                format!(
                    "registry {} in {name}.registry: the deprecated way to configure mirrors, which pullgate does not read; move each registry to <config_path>/<host>/hosts.toml",
                    legacy.join(" and ")
                ),
            ));
        }
    }
    out
}

fn lookup<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Table> {
    let mut t = table;
    for key in path {
        t = t.get(*key)?.as_table()?;
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V16: Option<Running> = Some(Running { major: 1, minor: 6 });
    const V23: Option<Running> = Some(Running { major: 2, minor: 3 });

    fn run(text: &str, running: Option<Running>) -> Vec<(Status, String)> {
        check(text, Path::new("/etc/containerd/config.toml"), running, &[PathBuf::from("/etc/containerd/certs.d")])
    }

    fn statuses(r: &[(Status, String)]) -> Vec<Status> {
        r.iter().map(|x| x.0).collect()
    }

    const V2: &str = r#"
version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"#;
    const V3: &str = r#"
version = 3
[plugins."io.containerd.cri.v1.images".registry]
  config_path = "/etc/containerd/certs.d"
"#;

    #[test]
    fn generations_parse() {
        assert_eq!(Running::parse("1.6.20~ds1"), Some(Running { major: 1, minor: 6 }));
        assert_eq!(Running::parse("v2.3.4"), Some(Running { major: 2, minor: 3 }));
        assert_eq!(Running::parse("garbage"), None);
    }

    #[test]
    fn matching_formats_pass() {
        assert_eq!(statuses(&run(V2, V16)), [Status::Ok, Status::Ok]);
        assert_eq!(statuses(&run(V3, V23)), [Status::Ok, Status::Ok]);
        assert!(run(V3, V23)[1].1.contains("io.containerd.cri.v1.images"));
    }

    #[test]
    fn a_version_3_file_given_to_1_6_is_explained() {
        let r = run(V3, V16);
        assert_eq!(r[0].0, Status::Fail);
        assert!(r[0].1.contains("reads versions 1 and 2 only"), "{r:?}");
    }

    #[test]
    fn a_version_2_file_on_2_x_is_migrated() {
        let r = run(V2, V23);
        assert_eq!(statuses(&r), [Status::Warn, Status::Ok]);
        assert!(r[0].1.contains("containerd config migrate"), "{r:?}");
    }

    #[test]
    fn config_path_in_the_section_of_another_version_is_ignored() {
        let text = "version = 3\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";
        let r = run(text, V23);
        assert_eq!(r[1].0, Status::Fail);
        assert!(r[1].1.contains("does not use") && r[1].1.contains("io.containerd.cri.v1.images"), "{r:?}");
    }

    #[test]
    fn config_path_missing_and_deprecated_mirrors() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.internal\"]\n";
        let r = run(text, V16);
        assert_eq!(statuses(&r), [Status::Ok, Status::Fail, Status::Fail]);
        assert!(r[1].1.contains("config_path is not set"), "{r:?}");
        assert!(r[2].1.contains("deprecated"), "{r:?}");
    }

    #[test]
    fn different_hosts_dirs_warn() {
        let r = check(V3, Path::new("c.toml"), V23, &[PathBuf::from("/srv/certs.d")]);
        assert_eq!(r[1].0, Status::Warn);
        assert!(r[1].1.contains("/srv/certs.d"), "{r:?}");
    }

    #[test]
    fn garbage_is_one_line() {
        let r = run("version = [", V16);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, Status::Fail);
        assert!(!r[0].1.contains('\n'), "{r:?}");
    }
}
