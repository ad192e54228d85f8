//! A real containerd and a real registry, started by the project's `scripts/testbed.sh` with all
//! state under a temporary directory, and stopped (exactly what it started) on drop.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Why real-parts tests cannot run here, if they cannot (they then report as ignored).
pub fn unavailable_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("end-to-end tests need root (containerd, runc, mount namespaces); run them as root".into());
    }
    None
}

/// libtest trials for suites that share one testbed context: each trial gets the context from
/// `ctx` (set up on first use); without root every trial is reported ignored, with the reason.
pub fn trials<C: 'static>(
    tests: Vec<(&'static str, fn(&C) -> Result<(), libtest_mimic::Failed>)>,
    ctx: fn() -> Result<std::sync::Arc<C>, libtest_mimic::Failed>,
) -> Vec<libtest_mimic::Trial> {
    let skip = unavailable_reason();
    tests
        .into_iter()
        .map(|(name, f)| {
            let t = libtest_mimic::Trial::test(name, move || {
                let c = ctx()?;
                f(&c)
            });
            match &skip {
                Some(reason) => {
                    eprintln!("skipping {name}: {reason}");
                    t.with_ignored_flag(true)
                }
                None => t,
            }
        })
        .collect()
}

pub struct Testbed {
    pub dir: PathBuf,
    env: HashMap<String, String>,
}

impl Testbed {
    /// Starts a testbed on a free loopback port. `extra_env` is passed to the script
    /// (e.g. `REGISTRY_HTPASSWD`).
    pub fn start(name: &str, extra_env: &[(&str, &str)]) -> Result<Testbed, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        // Short: unix socket paths are limited to 108 bytes.
        let dir = PathBuf::from(format!("/tmp/pg-{name}-{}", std::process::id()));
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/testbed.sh")).arg("start").arg(&dir);
        cmd.env("REGISTRY_ADDR", format!("127.0.0.1:{port}"));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let out = cmd.output().map_err(|e| format!("cannot run testbed.sh: {e}"))?;
        // Owns the directory from here on: a failed start is cleaned up too.
        let mut tb = Testbed { dir: dir.clone(), env: HashMap::new() };
        if !out.status.success() {
            return Err(format!(
                "testbed.sh start failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        tb.env = parse_env(&std::fs::read_to_string(dir.join("env")).map_err(|e| format!("no testbed env: {e}"))?);
        Ok(tb)
    }

    pub fn get(&self, key: &str) -> &str {
        self.env.get(key).map(String::as_str).unwrap_or_else(|| panic!("testbed env has no {key}"))
    }

    pub fn containerd_sock(&self) -> PathBuf {
        PathBuf::from(self.get("CONTAINERD_SOCK"))
    }

    fn script(&self, cmd: &str) -> Result<(), String> {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/testbed.sh"))
            .arg(cmd)
            .arg(&self.dir)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("testbed.sh {cmd}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    pub fn kill_containerd(&self) -> Result<(), String> {
        self.script("kill-containerd")
    }

    pub fn restart_containerd(&self) -> Result<(), String> {
        self.script("restart-containerd")
    }
}

impl Testbed {
    /// Stops everything the testbed started and removes its directory.
    pub fn clean(&self) {
        if let Err(e) = self.script("clean") {
            eprintln!("warning: {e}");
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.clean();
    }
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').trim_matches('\'').to_string()))
        .collect()
}
