//! Break-glass: time-boxed windows in which an operator on the node lets named image digests
//! start although the normal decision refuses them (the mirror is down, the trust root is stale,
//! a control-plane image was never signed), without turning enforcement off.
//!
//! - Only digests: a window names `registry/repository@sha256:…`; a tag never matches, so
//!   nothing the mirror could move is let through.
//! - Time-boxed: at most [`MAX_WINDOW`]; each decision compares the expiry with the clock, so a
//!   window ends at its expiry even before the daemon re-reads the file.
//! - Recorded: the window says who opened it (user, sudo user, uid, host) and why; every image
//!   it lets through gets an audit record and a warning, and `pullgate_break_glass_active`
//!   is 1 while a window is open.
//!
//! `pullgate break-glass` ([`crate::cmd::break_glass`]) writes `<state_dir>/break-glass.json` ([`store`]); the
//! daemon's [`BreakGlass`] re-reads it on its trust-root tick and on SIGHUP. The gate's hook
//! is `enforce::gate::break_glass`.

pub mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::registry::reference::{Aliases, Reference};

/// The file in the state directory.
pub const FILE_NAME: &str = "break-glass.json";
/// The longest window: a day is enough to repair a mirror or import a trust root; anything
/// longer is an exemption and belongs in the policy.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Most windows in the file, and images in one window: a break-glass is a handful of images.
pub const MAX_WINDOWS: usize = 32;
pub const MAX_IMAGES: usize = 32;
/// Longest reason kept (it goes into every audit record the window writes).
pub const MAX_REASON: usize = 512;

/// Who opened a window, as the command saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Operator {
    /// The real uid that ran `pullgate break-glass`.
    pub uid: u32,
    /// `$USER` (else `$LOGNAME`, else the uid's name).
    pub user: String,
    /// `$SUDO_USER`, when run through sudo: the person behind `root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo_user: Option<String>,
    /// The node's host name.
    pub host: String,
}

impl std::fmt::Display for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sudo_user {
            Some(s) => write!(f, "{s} via sudo as {} (uid {}) on {}", self.user, self.uid, self.host),
            None => write!(f, "{} (uid {}) on {}", self.user, self.uid, self.host),
        }
    }
}

/// One break-glass window, as written to the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// `registry/repository@sha256:…`, normalised.
    pub images: Vec<String>,
    pub reason: String,
    pub opened_at: Timestamp,
    pub expires_at: Timestamp,
    pub opened_by: Operator,
}

impl Window {
    pub fn is_open(&self, now: Timestamp) -> bool {
        self.opened_at <= now && now < self.expires_at
    }

    /// Why the daemon must not honour this window, if anything: images not by digest, longer
    /// than [`MAX_WINDOW`], no reason. The command checks the same; this catches a hand-edited
    /// file.
    pub fn problem(&self, now: Timestamp) -> Option<String> {
        if self.images.is_empty() || self.images.len() > MAX_IMAGES {
            return Some(format!("{} images (1 to {MAX_IMAGES} allowed)", self.images.len()));
        }
        for image in &self.images {
            if let Err(e) = parse_image(image) {
                return Some(e);
            }
        }
        if self.reason.trim().is_empty() || self.reason.len() > MAX_REASON {
            return Some(format!("the reason must be 1 to {MAX_REASON} bytes"));
        }
        let max = jiff::SignedDuration::try_from(MAX_WINDOW).unwrap_or_default();
        let too_long = |from: Timestamp| self.expires_at.duration_since(from) > max;
        if self.expires_at <= self.opened_at || too_long(self.opened_at) || too_long(now) {
            return Some(format!("it lasts longer than 24h (opened {}, expires {})", self.opened_at, self.expires_at));
        }
        None
    }
}

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Windows {
    /// Format version: 1.
    pub version: u32,
    pub windows: Vec<Window>,
}

impl Default for Windows {
    fn default() -> Self {
        Windows { version: 1, windows: Vec::new() }
    }
}

/// An image a window may name: a digest reference without a tag, normalised like
/// containerd does (`busybox@sha256:…` is `docker.io/library/busybox@sha256:…`).
pub fn parse_image(s: &str) -> Result<Reference, String> {
    let reference = Reference::parse(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    match (reference.digest(), reference.tag()) {
        (Some(_), None) => Ok(reference),
        (Some(d), Some(_)) => Err(format!("{s:?}: name it by digest only ({}@{d}): a break-glass never involves a tag", reference.name())),
        (None, _) => Err(format!(
            "{s:?} is a tag, and a break-glass lets images through by digest only (a tag on a \
             mirror can be moved): write {}@sha256:<digest>; `crictl inspecti` or the static \
             pod's image record on a healthy node shows it",
            reference.name()
        )),
    }
}

/// `--for`: a duration of at least a second and at most [`MAX_WINDOW`].
pub fn parse_length(s: &str) -> Result<Duration, String> {
    let d = crate::settings::parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?}: a window lasts at least 1s"));
    }
    if d > MAX_WINDOW {
        return Err(format!("{s:?}: a window lasts at most 24h; open a new one when it ends, or add an exemption to the policy"));
    }
    Ok(d)
}

/// A window the daemon honours, its images parsed once.
#[derive(Debug, Clone)]
struct Loaded {
    window: Window,
    images: Vec<Reference>,
}

/// What a decision that a window let through records.
#[derive(Debug, Clone, PartialEq)]
pub struct Use {
    /// The window's image that matched (as written in the window).
    pub image: String,
    pub window: Window,
}

/// A break-glass use, as the audit record carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Record {
    /// The window's image that matched.
    pub image: String,
    /// The window's reason.
    pub reason: String,
    /// Who opened the window.
    pub opened_by: String,
    pub expires_at: String,
    /// What pullgate would have answered without the window.
    pub refused: String,
}

impl Use {
    pub fn record(&self, refused: String) -> Record {
        Record {
            image: self.image.clone(),
            reason: self.window.reason.clone(),
            opened_by: self.window.opened_by.to_string(),
            expires_at: self.window.expires_at.to_string(),
            refused,
        }
    }
}

/// Summary for metrics, as of a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    pub active: bool,
    /// Distinct images in open windows.
    pub images: usize,
    /// The latest expiry among open windows.
    pub expires_at: Option<Timestamp>,
}

/// The daemon's view of the break-glass file.
#[derive(Debug, Default)]
pub struct BreakGlass {
    /// `<state_dir>/break-glass.json`; `None`: break-glass off (tests, pass-through).
    path: Option<PathBuf>,
    /// The valid windows read at the last load (open or not yet: each use checks the clock).
    windows: RwLock<Arc<Vec<Loaded>>>,
    /// The windows open at the last load, to log each opening and closing once. Held for a
    /// whole reload, so that a slow reload never stores an older file over a newer one.
    logged: Mutex<Vec<Window>>,
}

impl BreakGlass {
    /// Windows from `<state_dir>/break-glass.json`; call [`Self::reload`] to read it.
    pub fn in_state_dir(state_dir: &Path) -> BreakGlass {
        BreakGlass { path: Some(state_dir.join(FILE_NAME)), ..Default::default() }
    }

    /// Re-reads the file (on the daemon's tick and on SIGHUP). A file that cannot be trusted
    /// (unreadable, malformed, writable by others) opens no window: break-glass only ever adds
    /// access, so doubt closes it. Each window opening or closing is logged once. Returns how
    /// many windows are open.
    pub fn reload(&self) -> usize {
        let Some(path) = &self.path else { return 0 };
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
        let windows = match store::read(path) {
            Ok(w) => w.windows,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "break-glass file ignored: no window is open");
                Vec::new()
            }
        };
        let mut loaded = Vec::new();
        for window in windows.into_iter().take(MAX_WINDOWS) {
            if let Some(problem) = window.problem(now) {
                tracing::error!(path = %path.display(), opened_by = %window.opened_by, problem, "break-glass window ignored");
                continue;
            }
            let images = window.images.iter().filter_map(|i| parse_image(i).ok()).collect();
            loaded.push(Loaded { window, images });
        }
        let open: Vec<Window> = loaded.iter().filter(|l| l.window.is_open(now)).map(|l| l.window.clone()).collect();
        *self.windows.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        for w in open.iter().filter(|w| !logged.contains(w)) {
            tracing::warn!(images = %w.images.join(" "), reason = %w.reason, opened_by = %w.opened_by, expires_at = %w.expires_at, "break-glass window open: these digests start even when refused");
        }
        for w in logged.iter().filter(|w| !open.contains(w)) {
            let why = if w.expires_at <= now { "expired" } else { "revoked" };
            tracing::warn!(images = %w.images.join(" "), opened_by = %w.opened_by, expires_at = %w.expires_at, "break-glass window closed ({why})");
        }
        let count = open.len();
        *logged = open;
        count
    }

    fn current(&self) -> Arc<Vec<Loaded>> {
        self.windows.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The open window naming `candidate` (same canonical repository, same digest), if any.
    /// A reference without a digest never matches.
    pub fn matching(&self, aliases: &Aliases, candidate: &Reference, now: Timestamp) -> Option<Use> {
        let digest = candidate.digest()?;
        let name = aliases.name(candidate);
        self.current().iter().filter(|l| l.window.is_open(now)).find_map(|l| {
            let (i, _) = l.images.iter().enumerate().find(|(_, r)| r.digest() == Some(digest) && aliases.name(r) == name)?;
            Some(Use { image: l.window.images[i].clone(), window: l.window.clone() })
        })
    }

    pub fn facts(&self, now: Timestamp) -> Facts {
        let current = self.current();
        let open: Vec<&Loaded> = current.iter().filter(|l| l.window.is_open(now)).collect();
        let mut images: Vec<String> = open.iter().flat_map(|l| l.images.iter().map(|r| r.to_string())).collect();
        images.sort();
        images.dedup();
        Facts { active: !open.is_empty(), images: images.len(), expires_at: open.iter().map(|l| l.window.expires_at).max() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn window(images: &[&str], opened: &str, expires: &str) -> Window {
        Window {
            images: images.iter().map(|s| s.to_string()).collect(),
            reason: "etcd cannot start: mirror down".into(),
            opened_at: ts(opened),
            expires_at: ts(expires),
            opened_by: Operator { uid: 0, user: "root".into(), sudo_user: Some("alice".into()), host: "node-1".into() },
        }
    }

    fn loaded(windows: Vec<Window>) -> BreakGlass {
        let b = BreakGlass::default();
        let l =
            windows.into_iter().map(|w| Loaded { images: w.images.iter().map(|i| parse_image(i).unwrap()).collect(), window: w }).collect();
        *b.windows.write().unwrap() = Arc::new(l);
        b
    }

    #[test]
    fn images_are_digests_only() {
        let r = parse_image(&format!("registry.internal/etcd@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("registry.internal/etcd@{D}"));
        assert_eq!(parse_image(&format!("busybox@{D}")).unwrap().to_string(), format!("docker.io/library/busybox@{D}"));
        let e = parse_image("registry.internal/etcd:3.5.15-0").unwrap_err();
        assert!(e.contains("is a tag") && e.contains("registry.internal/etcd@sha256:<digest>"), "{e}");
        let e = parse_image(&format!("registry.internal/etcd:3.5@{D}")).unwrap_err();
        assert!(e.contains("digest only"), "{e}");
        assert!(parse_image("registry.internal/etcd@sha256:abc").is_err());
        assert!(parse_image("").is_err());
    }

    #[test]
    fn lengths_are_bounded() {
        assert_eq!(parse_length("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_length("24h").unwrap(), MAX_WINDOW);
        assert!(parse_length("25h").unwrap_err().contains("at most 24h"));
        assert!(parse_length("2d").is_err());
        assert!(parse_length("0s").is_err());
        assert!(parse_length("500ms").is_err());
        assert!(parse_length("forever").is_err());
    }

    #[test]
    fn a_window_is_open_from_its_start_until_its_expiry() {
        let w = window(&[&format!("r.test/etcd@{D}")], "2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z");
        assert!(!w.is_open(ts("2026-01-01T09:59:59Z")));
        assert!(w.is_open(ts("2026-01-01T10:00:00Z")));
        assert!(w.is_open(ts("2026-01-01T10:59:59Z")));
        assert!(!w.is_open(ts("2026-01-01T11:00:00Z")));
    }

    #[test]
    fn hand_edited_windows_are_checked_again() {
        let now = ts("2026-01-01T10:30:00Z");
        let ok = window(&[&format!("r.test/etcd@{D}")], "2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z");
        assert_eq!(ok.problem(now), None);
        let tag = window(&["r.test/etcd:3.5"], "2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z");
        assert!(tag.problem(now).unwrap().contains("is a tag"));
        let long = window(&[&format!("r.test/etcd@{D}")], "2026-01-01T10:00:00Z", "2026-01-03T10:00:00Z");
        assert!(long.problem(now).unwrap().contains("longer than 24h"));
        // Opened "in the past" to dodge the bound: still at most 24h from now.
        let backdated = window(&[&format!("r.test/etcd@{D}")], "2025-12-31T00:00:00Z", "2026-01-02T12:00:00Z");
        assert!(backdated.problem(now).is_some());
        let mut no_reason = ok.clone();
        no_reason.reason = "  ".into();
        assert!(no_reason.problem(now).is_some());
    }

    #[test]
    fn matching_is_by_canonical_repository_and_digest() {
        let b = loaded(vec![window(&[&format!("127.0.0.1:5000/etcd@{D}")], "2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z")]);
        let aliases =
            Aliases::new(&std::collections::BTreeMap::from([("127.0.0.1:5000".to_string(), vec!["localhost:5000".to_string()])])).unwrap();
        let now = ts("2026-01-01T10:30:00Z");
        let r = |s: &str| Reference::parse(s).unwrap();
        let hit = b.matching(&aliases, &r(&format!("localhost:5000/etcd@{D}")), now).expect("alias of the registry matches");
        assert_eq!(hit.image, format!("127.0.0.1:5000/etcd@{D}"));
        assert!(b.matching(&aliases, &r(&format!("127.0.0.1:5000/other@{D}")), now).is_none(), "another repository");
        assert!(b.matching(&aliases, &r("127.0.0.1:5000/etcd:3.5"), now).is_none(), "a tag");
        let other = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        assert!(b.matching(&aliases, &r(&format!("127.0.0.1:5000/etcd@{other}")), now).is_none(), "another digest");
        assert!(b.matching(&aliases, &r(&format!("127.0.0.1:5000/etcd@{D}")), ts("2026-01-01T11:00:01Z")).is_none(), "expired");
    }

    #[test]
    fn facts_count_open_windows_only() {
        let b = loaded(vec![
            window(&[&format!("r.test/etcd@{D}"), &format!("r.test/apiserver@{D}")], "2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z"),
            window(&[&format!("r.test/etcd@{D}")], "2026-01-01T10:00:00Z", "2026-01-01T12:00:00Z"),
            window(&[&format!("r.test/old@{D}")], "2026-01-01T08:00:00Z", "2026-01-01T09:00:00Z"),
        ]);
        let f = b.facts(ts("2026-01-01T10:30:00Z"));
        assert_eq!(f, Facts { active: true, images: 2, expires_at: Some(ts("2026-01-01T12:00:00Z")) });
        assert_eq!(b.facts(ts("2026-01-01T12:00:00Z")), Facts::default());
    }
}
