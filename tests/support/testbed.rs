//! A real containerd and a real registry, started by the project's `scripts/testbed.sh` with all
//! state under a temporary directory, and stopped (exactly what it started) on drop.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use libtest_mimic::Failed;

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

/// The two containerd generations the end-to-end suites run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Generation {
    /// Debian 12's containerd 1.6 (config version 2, CRI v1 and v1alpha2).
    Containerd16,
    /// containerd 2.x from `$PULLGATE_SHARED/bin` (config version 3, CRI v1 only).
    Containerd2,
}

impl Generation {
    pub const ALL: [Generation; 2] = [Generation::Containerd16, Generation::Containerd2];

    /// The value `scripts/testbed.sh` takes in `TESTBED_CONTAINERD` (and writes to
    /// `CONTAINERD_GENERATION` in its env file).
    pub fn env_value(self) -> &'static str {
        match self {
            Generation::Containerd16 => "1.6",
            Generation::Containerd2 => "2",
        }
    }

    /// The prefix of trial names: `containerd-1.6/pull_signed`.
    pub fn label(self) -> &'static str {
        match self {
            Generation::Containerd16 => "containerd-1.6",
            Generation::Containerd2 => "containerd-2",
        }
    }

    fn index(self) -> usize {
        match self {
            Generation::Containerd16 => 0,
            Generation::Containerd2 => 1,
        }
    }

    /// Why this generation cannot run here, if it cannot: root for both, and for 2.x the
    /// upstream binaries in the shared folder.
    pub fn unavailable_reason(self) -> Option<String> {
        if let Some(reason) = unavailable_reason() {
            return Some(reason);
        }
        match self {
            Generation::Containerd16 => None,
            Generation::Containerd2 => {
                let bin = shared_dir().join("bin");
                let missing: Vec<&str> =
                    ["containerd", "containerd-shim-runc-v2", "ctr"].into_iter().filter(|b| !bin.join(b).is_file()).collect();
                if missing.is_empty() {
                    None
                } else {
                    Some(format!(
                        "containerd 2.x not found in {} (missing {}); set PULLGATE_SHARED to the shared folder",
                        bin.display(),
                        missing.join(", ")
                    ))
                }
            }
        }
    }
}

/// The shared folder of real upstream programs and vectors: `$PULLGATE_SHARED`, else the
/// repository's `../shared`.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("PULLGATE_SHARED") {
        Some(d) => PathBuf::from(d),
        None => repo_root().join("../shared"),
    }
}

/// A program from the shared folder's `bin/` (e.g. `crictl`), if it is there.
pub fn shared_bin(name: &str) -> Option<PathBuf> {
    let p = shared_dir().join("bin").join(name);
    p.is_file().then_some(p)
}

/// One shared context per containerd generation for a suite: set up on first use, and torn
/// down when the trials move on to the other generation (so a 2-core CI machine never runs
/// two testbeds of one suite at once) or at the end of `main` (`finish`).
/// One generation's context: not yet set up, set up, or the reason it could not be.
type Slot<C> = Mutex<Option<Result<Arc<C>, String>>>;

/// A named trial of a suite, run once per generation.
pub type Trial<C> = (&'static str, fn(&C) -> Result<(), Failed>);

pub struct Contexts<C> {
    slots: [Slot<C>; 2],
}

impl<C> Contexts<C> {
    pub const fn new() -> Self {
        Contexts { slots: [Mutex::new(None), Mutex::new(None)] }
    }

    fn get(&self, generation: Generation, setup: fn(Generation) -> Result<C, String>) -> Result<Arc<C>, Failed> {
        let mut slot = self.slots[generation.index()].lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(setup(generation).map(Arc::new));
        }
        match slot.as_ref() {
            Some(Ok(c)) => Ok(c.clone()),
            Some(Err(e)) => Err(Failed::from(format!("{} testbed: {e}", generation.label()))),
            None => Err(Failed::from("no context")),
        }
    }

    fn stop(&self, generation: Generation, teardown: fn(&C)) {
        let taken = self.slots[generation.index()].lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(Ok(c)) = taken {
            teardown(&c);
        }
    }

    /// Tears down every context still up (statics are never dropped).
    pub fn finish(&self, teardown: fn(&C)) {
        for g in Generation::ALL {
            self.stop(g, teardown);
        }
    }
}

/// libtest trials for suites that share one testbed context per containerd generation: each
/// test runs once per generation, named `containerd-1.6/NAME` and `containerd-2/NAME`, all of
/// one generation before the other (the suites run one trial at a time). A generation that
/// cannot run here (no root; no containerd 2.x in the shared folder) is reported ignored, with
/// the reason.
pub fn trials<C: Send + Sync + 'static>(
    tests: Vec<Trial<C>>,
    contexts: &'static Contexts<C>,
    setup: fn(Generation) -> Result<C, String>,
    teardown: fn(&C),
) -> Vec<libtest_mimic::Trial> {
    let mut out = Vec::new();
    for generation in Generation::ALL {
        let skip = generation.unavailable_reason();
        if let Some(reason) = &skip {
            eprintln!("skipping the {} trials: {reason}", generation.label());
        }
        for (name, f) in &tests {
            let f = *f;
            let t = libtest_mimic::Trial::test(format!("{}/{name}", generation.label()), move || {
                for other in Generation::ALL.into_iter().filter(|g| *g != generation) {
                    contexts.stop(other, teardown);
                }
                let c = contexts.get(generation, setup)?;
                f(&c)
            });
            out.push(if skip.is_some() { t.with_ignored_flag(true) } else { t });
        }
    }
    out
}

/// Marks the trials of `tests` on `generation` ignored, for a surface that generation does not
/// have (e.g. image volumes on containerd 1.6), saying why.
pub fn ignore_on(trials: Vec<libtest_mimic::Trial>, generation: Generation, tests: &[&str], reason: &str) -> Vec<libtest_mimic::Trial> {
    trials
        .into_iter()
        .map(|t| {
            let hit = t.name().split_once('/').is_some_and(|(g, name)| g == generation.label() && tests.contains(&name));
            if hit {
                eprintln!("skipping {}: {reason}", t.name());
            }
            if hit {
                t.with_ignored_flag(true)
            } else {
                t
            }
        })
        .collect()
}

pub struct Testbed {
    pub dir: PathBuf,
    env: HashMap<String, String>,
}

impl Testbed {
    /// Starts a containerd 1.6 testbed on a free loopback port. `extra_env` is passed to the
    /// script (e.g. `REGISTRY_HTPASSWD`).
    pub fn start(name: &str, extra_env: &[(&str, &str)]) -> Result<Testbed, String> {
        Self::start_generation(Generation::Containerd16, name, extra_env)
    }

    /// Starts a testbed of the given containerd generation on a free loopback port.
    pub fn start_generation(generation: Generation, name: &str, extra_env: &[(&str, &str)]) -> Result<Testbed, String> {
        if let Some(reason) = generation.unavailable_reason() {
            return Err(reason);
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| format!("no free port: {e}"))?.port();
        // Short: unix socket paths are limited to 108 bytes.
        let short = generation.env_value().replace('.', "");
        let dir = PathBuf::from(format!("/tmp/pg-{name}-{short}-{}", std::process::id()));
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/testbed.sh")).arg("start").arg(&dir);
        cmd.env("REGISTRY_ADDR", format!("127.0.0.1:{port}"));
        cmd.env("TESTBED_CONTAINERD", generation.env_value());
        cmd.env("PULLGATE_SHARED", shared_dir());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let out = cmd.output().map_err(|e| format!("cannot run testbed.sh: {e}"))?;
        // Owns the directory from here on: a failed start is cleaned up too.
        let mut tb = Testbed { dir: dir.clone(), env: HashMap::new() };
        if !out.status.success() {
            return Err(format!("testbed.sh start failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
        }
        tb.env = parse_env(&std::fs::read_to_string(dir.join("env")).map_err(|e| format!("no testbed env: {e}"))?);
        Ok(tb)
    }

    pub fn get(&self, key: &str) -> &str {
        self.env.get(key).map(String::as_str).unwrap_or_else(|| panic!("testbed env has no {key}"))
    }

    pub fn generation(&self) -> Generation {
        match self.get("CONTAINERD_GENERATION") {
            "2" => Generation::Containerd2,
            _ => Generation::Containerd16,
        }
    }

    pub fn containerd_sock(&self) -> PathBuf {
        PathBuf::from(self.get("CONTAINERD_SOCK"))
    }

    fn script(&self, cmd: &str) -> Result<(), String> {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/testbed.sh"))
            .arg(cmd)
            .arg(&self.dir)
            .env("PULLGATE_SHARED", shared_dir())
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
