//! pullgate: a CRI proxy between kubelet and containerd that lets an image be pulled only when
//! a Sigstore signature by an allowed identity verifies offline against a mirrored trust root.
//!
//! # Layout
//! - [`admin`]: metrics, `/live` and `/ready` on a loopback HTTP port.
//! - [`app`]: the wiring `serve`, `doctor` and `verify` share: configuration -> enforcer -> proxy.
//! - [`bounded`]: request text shortened and escaped for refusals, log lines and audit records.
//! - [`cmd`]: the commands' entry points (arguments -> the module that does the work -> an exit
//!   code from the one table, output as text or JSON).
//! - [`config`]: the YAML configuration, validated before anything is bound.
//! - [`cri`]: the socket kubelet talks to, transparent forwarding to containerd, and the calls
//!   pullgate decodes.
//! - [`daemon`]: `pullgate serve`, wiring configuration to the proxy until a signal.
//! - [`digest`]: content digests (sha256, sha384, sha512), the one type every layer names
//!   content by.
//! - [`doctor`]: the check of the node's setup behind `pullgate doctor`, one line per problem.
//! - [`enforce`]: decisions at PullImage and CreateContainer, policies, modes, the decision
//!   cache, the audit log and the report over it.
//! - [`registry`]: the node's registry mirror, found like containerd does: digests and
//!   signature discovery.
//! - [`settings`]: the configuration vocabulary modules share: durations, sizes, YAML parsing
//!   and the one-line configuration error.
//! - [`policy`]: whom we accept: keyless identities, keys, authorities and thresholds.
//! - [`trust`]: the mirrored trust root: TUF import, freshness, hot reload, status.
//! - [`verify`]: offline Sigstore verification of image signatures (bundles, cosign legacy).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod bounded;
pub mod cmd;
pub mod config;
pub mod cri;
pub mod daemon;
pub mod digest;
pub mod doctor;
pub mod enforce;
pub mod gauge;
pub mod policy;
pub mod registry;
pub mod settings;
pub mod trust;
pub mod verify;
