//! Signature discovery on the node's registry mirror: resolve an image the way containerd does
//! (same `hosts.toml`, same endpoints, same order), verify what the mirror serves against its
//! digest, and collect every piece of Sigstore material for the image's digest, from the mirror
//! and from the node's bundle directory. No network access beyond the endpoints containerd
//! itself would use for the image.
//!
//! # Layout
//! - [`reference`]: image references and digests, normalised like containerd/Docker.
//! - [`hosts`]: containerd's registry host directory (`hosts.toml`) → ordered endpoints.
//! - [`auth`]: credentials (kubelet's `AuthConfig`, static config) and auth challenges.
//! - [`tls`]: per-endpoint TLS settings on rustls.
//! - [`client`]: the bounded HTTP client (timeouts, size limits, per-host concurrency, auth).
//! - [`platform`]: containerd's platform normalisation and choice from a multi-arch index.
//! - [`resolve`]: tag → digest, manifests and blobs fetched by digest and verified.
//! - [`discover`]: referrers API, referrers tag schema, cosign `.sig` and `.att` tags, local bundles.
//! - [`config`]: the `registry:` configuration section and the registry command-line flags.
//!
//! [`Registry`] ties them together; [`Registry::inspect`] is what `pullgate verify IMAGE` and
//! the pull-time check call.

pub mod auth;
pub mod client;
pub mod config;
pub mod discover;
pub mod hosts;
pub mod platform;
pub mod reference;
pub mod resolve;
pub mod tls;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

pub use crate::digest::{Digest, DigestError};
pub use auth::{Credentials, Secret};
pub use client::{Dialer, ErrorKind, RequestError, TcpDialer};
pub use config::{Platform, RegistryArgs, RegistryConfig};
pub use discover::{Discovery, Material, Outcome, SideArtifact, Source, Step, StepReport};
pub use hosts::{Endpoint, HostsDir, HostsError, HostsResolution};
pub use reference::{Reference, ReferenceError};
pub use resolve::{FetchedManifest, PlatformImage, Resolution, ResolveError, ResolvedImage, SubjectRole};

use client::{Op, Transport};
use resolve::TagRequest;

/// Why an image could not be resolved (discovery itself reports per step, never fails whole).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Reference(#[from] ReferenceError),
    #[error("registry host configuration: {0}")]
    Hosts(#[from] HostsError),
    #[error("{0}")]
    Resolve(#[from] ResolveError),
}

/// Resolves images and discovers their signature material on the configured mirrors. Cheap to
/// clone; connection pools, concurrency permits and cached tokens are shared.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    config: RegistryConfig,
    hosts: HostsDir,
    transport: Transport,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

/// The result of `pullgate verify IMAGE` before verification: what was resolved where, and
/// every candidate with its source and every step's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The reference as given.
    pub reference: String,
    /// The host directory used for the registry, if any.
    pub hosts_dir: Option<PathBuf>,
    /// The endpoints, in the order they are tried.
    pub endpoints: Vec<Endpoint>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub image: ResolvedImage,
    pub discovery: Discovery,
    pub elapsed_ms: f64,
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Registry {
        Registry::with_dialer(config, Arc::new(TcpDialer))
    }

    /// With a custom [`Dialer`] (tests use one that records every connection attempt).
    pub fn with_dialer(config: RegistryConfig, dialer: Arc<dyn Dialer>) -> Registry {
        let transport = Transport::new(&config, dialer);
        let hosts = HostsDir::new(config.hosts_dir.clone());
        Registry { inner: Arc::new(Inner { config, hosts, transport }) }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// The endpoints containerd would use for `registry` (looked up each time, as containerd does
    /// for each pull, so `hosts.toml` edits apply without a restart; an unchanged file is not
    /// parsed again).
    pub fn endpoints(&self, registry: &str) -> Result<HostsResolution, HostsError> {
        self.inner.hosts.resolve(registry)
    }

    /// `registry` as a metric label, from a bounded set: the registry's name when the hosts
    /// directory configures it (`host:port/` or `host_port_/`), `_default` when the default
    /// directory applies, `other` otherwise. Never free text from a request, so a caller naming
    /// a new registry on every pull cannot grow the metric series.
    pub fn mirror_label(&self, registry: &str) -> String {
        match self.inner.hosts.dir_for(registry) {
            Ok(Some(dir)) if dir.file_name().is_some_and(|n| n == "_default") => "_default".into(),
            Ok(Some(_)) => registry.to_string(),
            _ => "other".into(),
        }
    }

    fn op(&self, hosts: &HostsResolution, credentials: Option<&Credentials>) -> Op {
        let mut hosts_list: Vec<String> = hosts.endpoints.iter().map(|e| e.host.clone()).collect();
        hosts_list.push(hosts.registry.clone());
        Op::new(self.inner.config.discovery_timeout, credentials.cloned(), hosts_list)
    }

    /// Discovery settings from the configuration; `attestations`: fetch attestation bundles too.
    fn settings(&self, attestations: bool) -> discover::DiscoverSettings<'_> {
        discover::DiscoverSettings {
            max_manifest: self.inner.config.max_manifest_bytes,
            max_blob: self.inner.config.max_blob_bytes,
            bundle_dir: self.inner.config.bundle_dir.as_deref(),
            attestations,
        }
    }

    /// Resolves `reference` to its verified manifest (and platform manifest for an index),
    /// within `discovery_timeout`.
    pub async fn resolve(&self, reference: &Reference, credentials: Option<&Credentials>) -> Result<ResolvedImage, Error> {
        let hosts = self.endpoints(reference.registry())?;
        let op = self.op(&hosts, credentials);
        Ok(self.resolve_in(&op, &hosts, reference, None).await?)
    }

    /// The digest `reference` names on the mirror and, for a tag, the manifest's bytes: the tag
    /// is asked for with one `GET` (its bytes must hash to any `Docker-Content-Digest` the
    /// mirror sends), enough to look a decision up, and on a cache miss handed to
    /// [`Registry::resolve_and_discover_with`] so the manifest is not fetched twice. A digest
    /// reference asks nothing of the mirror (`None`).
    pub async fn resolve_tag(&self, reference: &Reference, credentials: Option<&Credentials>) -> Result<Resolution, Error> {
        let hosts = self.endpoints(reference.registry())?;
        let op = self.op(&hosts, credentials);
        let c = &self.inner.config;
        let r =
            resolve::resolve_digest(&self.inner.transport, &op, &hosts.endpoints, reference, c.max_manifest_bytes, TagRequest::Get).await?;
        Ok(Resolution { digest: r.digest, manifest: r.prefetched })
    }

    async fn resolve_in(
        &self,
        op: &Op,
        hosts: &HostsResolution,
        reference: &Reference,
        known: Option<&FetchedManifest>,
    ) -> Result<ResolvedImage, ResolveError> {
        let c = &self.inner.config;
        resolve::resolve(&self.inner.transport, op, &hosts.endpoints, reference, &c.platform, c.max_manifest_bytes, known).await
    }

    /// Discovers the signature material of a resolved image, within `discovery_timeout`.
    pub async fn discover(&self, image: &ResolvedImage, credentials: Option<&Credentials>) -> Result<Discovery, Error> {
        self.discover_with(image, credentials, false).await
    }

    /// [`Registry::discover`], also fetching attestation bundles when `attestations` (a policy
    /// that applies requires them).
    pub async fn discover_with(
        &self,
        image: &ResolvedImage,
        credentials: Option<&Credentials>,
        attestations: bool,
    ) -> Result<Discovery, Error> {
        let hosts = self.endpoints(image.reference.registry())?;
        let op = self.op(&hosts, credentials);
        let settings = self.settings(attestations);
        Ok(discover::discover(&self.inner.transport, &op, &hosts.endpoints, image, &settings).await)
    }

    /// [`Registry::resolve`] and [`Registry::discover`] of a digest reference, overlapped:
    /// discovery for the digest starts with the manifest fetch instead of after it (one round
    /// trip to the mirror less on the path of a cold decision). Same requests, same results,
    /// each part with its own `discovery_timeout` budget (both from the start);
    /// `resolved` is told whether the manifest fetch succeeded, when it ends (for metrics).
    pub async fn resolve_and_discover(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        resolved: impl FnOnce(bool),
    ) -> Result<(ResolvedImage, Discovery), Error> {
        self.resolve_and_discover_with(reference, credentials, false, None, resolved).await
    }

    /// [`Registry::resolve_and_discover`], fetching attestation bundles too when `attestations`
    /// (see [`Registry::discover_with`]). `known`: the manifest [`Registry::resolve_tag`]
    /// fetched; when it is the digest's, the manifest is not fetched again.
    pub async fn resolve_and_discover_with(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        attestations: bool,
        known: Option<&FetchedManifest>,
        resolved: impl FnOnce(bool),
    ) -> Result<(ResolvedImage, Discovery), Error> {
        let hosts = match self.endpoints(reference.registry()) {
            Ok(h) => h,
            Err(e) => {
                resolved(false);
                return Err(e.into());
            }
        };
        let (resolve_op, discover_op) = (self.op(&hosts, credentials), self.op(&hosts, credentials));
        let image = async {
            let image = self.resolve_in(&resolve_op, &hosts, reference, known).await;
            resolved(image.is_ok());
            image.map_err(Error::from)
        };
        let settings = self.settings(attestations);
        let t = &self.inner.transport;
        match reference.digest() {
            Some(digest) => {
                discover::discover_while(t, &discover_op, &hosts.endpoints, digest, reference.repository(), image, &settings).await
            }
            None => {
                let image = image.await?;
                let discovery = discover::discover(t, &discover_op, &hosts.endpoints, &image, &settings).await;
                Ok((image, discovery))
            }
        }
    }

    /// `GET <api path>/` (`/v2/`) on each endpoint containerd would use for `registry`: the HTTP
    /// status, or why the endpoint could not be reached. For `pullgate doctor`.
    pub async fn ping(&self, registry: &str) -> Result<Vec<(String, Result<u16, RequestError>)>, HostsError> {
        let hosts = self.endpoints(registry)?;
        let op = self.op(&hosts, None);
        let mut out = Vec::new();
        for ep in &hosts.endpoints {
            let call = client::Call {
                method: http::Method::GET,
                path: format!("{}/", ep.path.trim_end_matches('/')),
                accept: "application/json",
                limit: 64 << 10,
                limit_setting: "registry.max_manifest_bytes",
                repository: "",
            };
            let answer = self.inner.transport.send(&op, ep, &call).await;
            out.push((ep.url(), answer.map(|r| r.status.as_u16())));
        }
        Ok(out)
    }

    /// Resolves and discovers in one budget of `discovery_timeout`: the library side of
    /// `pullgate verify IMAGE_REF` and of the pull-time check.
    pub async fn inspect(&self, reference: &str, credentials: Option<&Credentials>) -> Result<Report, Error> {
        self.inspect_with(reference, credentials, false).await
    }

    /// [`Registry::inspect`], also fetching attestation bundles when `attestations`.
    pub async fn inspect_with(&self, reference: &str, credentials: Option<&Credentials>, attestations: bool) -> Result<Report, Error> {
        let started = Instant::now();
        let parsed = Reference::parse(reference)?;
        let hosts = self.endpoints(parsed.registry())?;
        for w in &hosts.warnings {
            tracing::warn!("{w}");
        }
        let op = self.op(&hosts, credentials);
        let image = self.resolve_in(&op, &hosts, &parsed, None).await?;
        let settings = self.settings(attestations);
        let discovery = discover::discover(&self.inner.transport, &op, &hosts.endpoints, &image, &settings).await;
        Ok(Report {
            reference: reference.to_string(),
            hosts_dir: hosts.dir.clone(),
            endpoints: hosts.endpoints.clone(),
            warnings: hosts.warnings.clone(),
            image,
            discovery,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

impl fmt::Display for Report {
    /// The human form: what was resolved, then each step and candidate, one per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "image:     {} ({})", self.image.reference, self.reference)?;
        writeln!(f, "digest:    {} ({}, resolved by {})", self.image.digest, self.image.media_type, self.image.resolved_by)?;
        if let Some(p) = &self.image.platform {
            writeln!(f, "platform:  {} {}", p.platform, p.digest)?;
        }
        for n in &self.image.notes {
            writeln!(f, "note:      {n}")?;
        }
        let eps: Vec<String> = self.endpoints.iter().map(Endpoint::url).collect();
        writeln!(f, "endpoints: {}", eps.join(", "))?;
        for w in &self.warnings {
            writeln!(f, "warning:   {w}")?;
        }
        for s in &self.discovery.steps {
            let outcome = match &s.outcome {
                Outcome::Found { candidates } => format!("{candidates} candidate(s)"),
                Outcome::NotFound => "none".into(),
                Outcome::Unsupported { reason } => format!("unsupported ({reason})"),
                Outcome::Failed { error } => format!("FAILED: {error}"),
                Outcome::Skipped { reason } => format!("skipped ({reason})"),
            };
            writeln!(f, "  {} {}: {outcome}", s.subject, s.step)?;
            for p in &s.problems {
                writeln!(f, "    problem: {p}")?;
            }
        }
        for m in &self.discovery.materials {
            let kind = match m {
                Material::Bundle { .. } => "bundle",
                Material::LegacySignature { .. } => "legacy signature",
                Material::LegacyAttestation { .. } => "legacy attestation",
            };
            writeln!(f, "  candidate: {kind} for {} from {}", m.subject(), m.source())?;
        }
        for a in &self.discovery.side_artifacts {
            writeln!(
                f,
                "  kept aside: {} {} (predicate {})",
                a.artifact_type.as_deref().unwrap_or("?"),
                a.manifest,
                a.predicate_type.as_deref().unwrap_or("-")
            )?;
        }
        Ok(())
    }
}
