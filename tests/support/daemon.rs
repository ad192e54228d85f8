//! The real `pullgate` binary (the one this test build produced), run as a child process.

#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_pullgate")
}

/// The logs `logs` gives once one of their lines matches `wanted`, or as they are after 5 s: a
/// call's log line is written just after its answer, so it may follow the answer the test got.
pub fn logs_with(logs: impl Fn() -> String, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = logs();
        if text.lines().any(&wanted) || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `pullgate serve ARGS` and waits until `socket` accepts connections.
    pub fn start(socket: &Path, args: &[&str]) -> Result<Daemon, String> {
        Self::start_with(socket, Command::new(binary()).arg("serve").args(args))
    }

    /// Starts a prepared command and waits until `socket` accepts connections.
    pub fn start_with(socket: &Path, cmd: &mut Command) -> Result<Daemon, String> {
        let mut d = Self::spawn(socket, cmd)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = d.exited() {
                return Err(format!("pullgate exited at start ({status}):\n{}", d.logs()));
            }
            if UnixStream::connect(socket).is_ok() {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("pullgate did not accept on {} within 10s:\n{}", socket.display(), d.logs()))
    }

    /// Starts a prepared command (output to the log file) without waiting for `socket`.
    pub fn spawn(socket: &Path, cmd: &mut Command) -> Result<Daemon, String> {
        let log = socket.with_extension(format!("{}.log", std::process::id()));
        let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cmd.get_program().to_string_lossy()))?;
        Ok(Daemon { child, socket: socket.to_owned(), log })
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// SIGTERM, then wait.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        self.wait(timeout)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
