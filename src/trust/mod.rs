//! The trust-root store: the mirrored Sigstore trust root pullgate verifies against, how it gets
//! onto the node, how fresh it is, and how the daemon swaps it while pulls are in flight.
//!
//! Offline verification trades a live trust anchor for a mirrored one. That only holds if the
//! mirror is verified on the way in (TUF, from a pinned root) and its age is owned: a stale root
//! silently rejects valid new signatures or keeps trusting keys Sigstore rotated away. So import
//! is the operator's explicit trust decision, staleness fails closed, and nothing disables expiry.
//!
//! # Layout
//! - [`tuf_import`]: verify a mirrored TUF repository offline with `sigstore-tuf` and extract
//!   `trusted_root.json` (and the signing config).
//! - [`import`]: `trust-root import`: lock the state dir, verify, enforce rollback floors, install.
//! - [`state`]: the on-disk layout under the state dir and its crash-safe installation.
//! - [`manifest`]: what was installed, from where, with which role versions and expiries.
//! - [`freshness`]: the run-time policy (`max_age`, root/targets expiry, `warn_before`).
//! - [`handle`]: the daemon's view: current root, generation, reload, watch, monitoring facts.
//! - [`status`]: `trust-root status` report (human and JSON) and its exit-code verdict.
//! - [`config`]: the `trust_root:` configuration section.
//! - [`clock`]: wall time, replaceable in tests.
//! - [`crate::cmd::trust_root`]: clap arguments and `run_*` entry points for `pullgate trust-root ...`.
//!
//! # On-disk layout
//! ```text
//! <state_dir>/trust-root/
//!   current -> generations/00000007    symlink; swapping it is the atomic install step
//!   generations/00000007/              immutable once `current` points at it
//!     manifest.json                    written last; sha256 of every other file
//!     trusted_root.json
//!     signing_config.json              when the mirror publishes one
//!     tuf/                             the verified TUF metadata: next import's rollback floors
//!   last-import.json                   outcome of the latest import attempt (monitoring)
//!   lock                               flock held by an import
//! ```

pub mod clock;
pub mod config;
pub mod freshness;
pub mod handle;
pub mod import;
pub mod manifest;
pub mod state;
pub mod status;
pub mod tuf_import;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::TrustRootConfig;
pub use freshness::{Freshness, FreshnessPolicy, Limit, StaleError};
pub use handle::{InstalledRoot, ReloadError, ReloadOutcome, TrustFacts, TrustHandle, TrustUnavailable};
pub use import::{import_tuf, import_unverified, ImportError, ImportOptions, Imported};
pub use manifest::{Manifest, RootKind};
pub use state::{StateDir, StateError};
pub use tuf_import::{PinnedRoot, TufImportError};
