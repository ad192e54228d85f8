//! `pullgate doctor`: checks this node's setup and explains each problem in one line.
//!
//! Checks, in order (a check that depends on an earlier one is skipped when that one failed):
//! 1. `config`: the configuration file loads and validates, policy included.
//! 2. `kubelet`: kubelet's `containerRuntimeEndpoint` and `imageServiceEndpoint` point at
//!    pullgate's socket (see [`kubelet`] for where they are read from).
//! 3. `pullgate`: pullgate's socket answers a CRI `Version` call.
//! 4. `containerd`: containerd's socket answers, and speaks CRI v1; its config file's format
//!    (version) suits the generation that runs, and it reads mirrors from the same `hosts.toml`
//!    directory as pullgate (see [`containerd`]).
//! 5. `hosts`: `hosts.toml` is readable for every registry the policy names.
//! 6. `mirror`: each of their mirror endpoints answers `GET /v2/`.
//! 7. `trust-root`: an imported trust root is installed and fresh.
//! 8. `images`: every image on the node has a valid decision under the current policy: the
//!    same check CreateContainer makes, so what is listed here would be refused (or, in audit
//!    mode, logged) if a pod used it.
//!
//! Exit 0 when nothing failed (warnings allowed), 1 when something did ([`crate::cmd::doctor`]).

pub mod containerd;
pub mod kubelet;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::config::Config;
use crate::cri::client::CriClient;
use crate::cri::intercept::{CreateCall, CreateVerdict};
use crate::enforce::audit::{AuditConfig, AuditLog};
use crate::policy::{Mode, PolicyConfig};
use crate::registry::Registry;
use crate::trust::status::{self, Verdict};
use crate::trust::{StateDir, TrustHandle};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// pullgate's configuration file.
    #[arg(long, short = 'c', value_name = "FILE", env = "PULLGATE_CONFIG", default_value = "/etc/pullgate/config.yaml")]
    pub config: PathBuf,
    /// kubelet's KubeletConfiguration file. Default: the running kubelet's --config, else
    /// /var/lib/kubelet/config.yaml.
    #[arg(long, value_name = "FILE")]
    pub kubelet_config: Option<PathBuf>,
    /// kubelet's drop-in directory. Default: the running kubelet's --config-dir, else
    /// /etc/kubernetes/kubelet.conf.d.
    #[arg(long, value_name = "DIR")]
    pub kubelet_config_dir: Option<PathBuf>,
    /// containerd's configuration file. Default: /etc/containerd/config.toml when it exists.
    #[arg(long, value_name = "FILE")]
    pub containerd_config: Option<PathBuf>,
    /// The socket kubelet should use. Default: `listen` from the configuration.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Check at most this many images on the node.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub max_images: usize,
    /// Time budget for the images check, all images together.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = crate::settings::parse_duration)]
    pub images_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// One line of the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub config: String,
    pub ok: bool,
    pub problems: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
}

struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, check: &'static str, status: Status, message: impl Into<String>) {
        self.0.push(Finding { check, status, message: message.into() });
    }
}

/// Registries named literally in policy and exemption globs (`registry.internal/team/**` →
/// `registry.internal`); patterns whose registry part is itself a glob are skipped.
pub fn policy_registries(policy: &PolicyConfig) -> BTreeSet<String> {
    let patterns = policy.policies.iter().flat_map(|p| p.images.iter()).chain(policy.exemptions.iter().flat_map(|e| e.images.iter()));
    patterns
        .filter_map(|p| p.split_once('/').map(|(r, _)| r.to_string()))
        .filter(|r| !r.contains(['*', '?', '[', '{']))
        .filter(|r| r.contains(['.', ':']) || r == "localhost")
        .collect()
}

/// Runs every check.
pub async fn diagnose(args: &DoctorArgs) -> DoctorReport {
    let mut f = Findings(Vec::new());
    let config = match Config::load(&args.config) {
        Ok(c) => {
            let detail = match &c.policy {
                Some(p) => {
                    let audit = p.policies.iter().filter(|x| x.mode == Mode::Audit).count();
                    format!(
                        "{} is valid: {} policies ({} in audit mode), {} exemptions, unmatched images {}",
                        args.config.display(),
                        p.policies.len(),
                        audit,
                        p.exemptions.len(),
                        match p.unmatched {
                            crate::policy::Unmatched::Deny => "denied",
                            crate::policy::Unmatched::Allow => "allowed",
                        }
                    )
                }
                None => format!("{} is valid", args.config.display()),
            };
            f.add("config", Status::Ok, detail);
            if c.policy.is_none() {
                f.add(
                    "policy",
                    Status::Warn,
                    "no `policy` section: pullgate forwards everything and checks nothing (add a policy, in audit mode first)",
                );
            }
            Some(c)
        }
        Err(e) => {
            f.add("config", Status::Fail, format!("invalid configuration: {e}"));
            None
        }
    };
    let listen = args
        .socket
        .clone()
        .or_else(|| config.as_ref().map(|c| c.listen.clone()))
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_LISTEN));
    check_kubelet(&mut f, args, &listen);
    let settings = config.as_ref().map(|c| c.upstream_connection.clone()).unwrap_or_default();
    let timeout = Duration::from_secs(5);
    let pg = CriClient::new(&listen, settings.clone(), timeout);
    match pg.version().await {
        Ok(v) => f.add(
            "pullgate",
            Status::Ok,
            format!("pullgate answers on {} ({} {} behind it)", listen.display(), v.runtime_name, v.runtime_version),
        ),
        Err(e) => f.add(
            "pullgate",
            Status::Fail,
            format!("pullgate does not answer on {}: {e} (systemctl status pullgate.socket pullgate.service)", listen.display()),
        ),
    }
    let Some(config) = config else {
        return finish(&args.config, f);
    };
    let containerd = CriClient::new(&config.upstream, settings, timeout);
    let version = containerd.version().await;
    let running = version.as_ref().ok().and_then(|v| containerd::Running::parse(&v.runtime_version));
    let containerd_ok = match version {
        Ok(v) if v.runtime_api_version == "v1" => {
            f.add(
                "containerd",
                Status::Ok,
                format!(
                    "{} {} answers on {} (CRI {})",
                    v.runtime_name,
                    v.runtime_version,
                    config.upstream.display(),
                    v.runtime_api_version
                ),
            );
            true
        }
        Ok(v) => {
            f.add(
                "containerd",
                Status::Fail,
                format!(
                    "{} {} speaks CRI {:?}, pullgate needs v1 (containerd 1.6 or later)",
                    v.runtime_name, v.runtime_version, v.runtime_api_version
                ),
            );
            false
        }
        Err(e) => {
            f.add("containerd", Status::Fail, format!("containerd does not answer on {} (`upstream`): {e}", config.upstream.display()));
            false
        }
    };
    check_containerd_config(&mut f, args, running, &config.registry.hosts_dir);
    if containerd_ok {
        check_sandbox_image(&mut f, &config, &containerd).await;
    }
    let Some(policy) = &config.policy else {
        return finish(&args.config, f);
    };
    check_mirrors(&mut f, &crate::app::registry(&config), policy).await;
    let trust = check_trust_root(&mut f, &config);
    if containerd_ok {
        check_images(&mut f, args, &config, policy, trust, &containerd).await;
    } else {
        f.add("images", Status::Skip, "images on the node not checked: containerd does not answer");
    }
    finish(&args.config, f)
}

fn finish(config: &Path, f: Findings) -> DoctorReport {
    let problems = f.0.iter().filter(|x| x.status == Status::Fail).count();
    let warnings = f.0.iter().filter(|x| x.status == Status::Warn).count();
    DoctorReport { config: config.display().to_string(), ok: problems == 0, problems, warnings, findings: f.0 }
}

fn check_containerd_config(f: &mut Findings, args: &DoctorArgs, running: Option<containerd::Running>, hosts_dir: &[PathBuf]) {
    let default = Path::new("/etc/containerd/config.toml");
    let file = args.containerd_config.as_deref().unwrap_or(default);
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if args.containerd_config.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            f.add(
                "containerd",
                Status::Skip,
                format!("no {}: containerd's config format and mirrors not checked; pass --containerd-config", file.display()),
            );
            return;
        }
        Err(e) => {
            f.add("containerd", Status::Fail, format!("cannot read containerd's config {}: {e}", file.display()));
            return;
        }
    };
    for (status, message) in containerd::check(&text, file, running, hosts_dir) {
        f.add("containerd", status, message);
    }
}

fn check_kubelet(f: &mut Findings, args: &DoctorArgs, listen: &Path) {
    let view = kubelet::inspect(&kubelet::Inputs {
        config: args.kubelet_config.clone(),
        config_dir: args.kubelet_config_dir.clone(),
        proc_root: None,
        read_flag_files: true,
    });
    for p in &view.problems {
        f.add("kubelet", Status::Warn, format!("cannot read kubelet configuration {p}"));
    }
    if !view.found() {
        f.add(
            "kubelet",
            Status::Skip,
            "no kubelet configuration found (no running kubelet, no /var/lib/kubelet/config.yaml): not checked; pass --kubelet-config",
        );
        return;
    }
    let (runtime, image) = view.effective();
    for (field, setting) in [("containerRuntimeEndpoint", runtime), ("imageServiceEndpoint", image)] {
        if kubelet::endpoint_path(&setting.value) == listen {
            f.add("kubelet", Status::Ok, format!("kubelet's {field} is {} (from {})", setting.value, setting.source));
        } else {
            f.add(
                "kubelet",
                Status::Fail,
                format!(
                    "kubelet's {field} is {} (from {}), not pullgate's unix://{}: kubelet bypasses pullgate; install the drop-in /usr/share/doc/pullgate/examples/kubelet/20-pullgate.conf and restart kubelet",
                    setting.value,
                    setting.source,
                    listen.display()
                ),
            );
        }
    }
}

async fn check_mirrors(f: &mut Findings, registry: &Registry, policy: &PolicyConfig) {
    let registries = policy_registries(policy);
    if registries.is_empty() {
        f.add("hosts", Status::Skip, "the policy names no registry literally (only globs): hosts.toml and mirrors not checked");
        return;
    }
    for name in registries {
        let resolution = match registry.endpoints(&name) {
            Ok(r) => r,
            Err(e) => {
                f.add("hosts", Status::Fail, format!("{name}: cannot read its hosts.toml: {e}"));
                continue;
            }
        };
        match &resolution.dir {
            Some(dir) => f.add("hosts", Status::Ok, format!("{name}: {} readable", dir.join("hosts.toml").display())),
            None => f.add(
                "hosts",
                Status::Warn,
                format!(
                    "{name}: no hosts.toml under {}: pullgate and containerd go to {name} itself, not a mirror",
                    registry.config().hosts_dir.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
                ),
            ),
        }
        for w in &resolution.warnings {
            f.add("hosts", Status::Warn, format!("{name}: {w}"));
        }
        match registry.ping(&name).await {
            Ok(answers) => {
                let mut seen = BTreeSet::new();
                // hosts.toml's `server` is often also a `[host]`: one line per endpoint.
                for (endpoint, answer) in answers.into_iter().filter(|(e, _)| seen.insert(e.clone())) {
                    match answer {
                        Ok(status) if status < 500 => {
                            f.add("mirror", Status::Ok, format!("{name}: {endpoint} answers /v2/ (HTTP {status})"))
                        }
                        Ok(status) => f.add("mirror", Status::Fail, format!("{name}: {endpoint} answers /v2/ with HTTP {status}")),
                        Err(e) if e.is_unreachable() => f.add("mirror", Status::Fail, format!("{name}: {e}")),
                        // Reachable; what failed is auth or the answer, which pulls will tell.
                        Err(e) => f.add("mirror", Status::Warn, format!("{name}: {e}")),
                    }
                }
            }
            Err(e) => f.add("mirror", Status::Fail, format!("{name}: {e}")),
        }
    }
}

fn check_trust_root(f: &mut Findings, config: &Config) -> Option<Arc<TrustHandle>> {
    let state = StateDir::new(&config.trust_root.state_dir);
    let report = status::build(&state, config.trust_root.policy(), jiff::Timestamp::now());
    let dir = config.trust_root.state_dir.display();
    match &report.verdict {
        Verdict::Fresh => {
            let until = report.stale_at.as_ref().map(|s| format!(", usable until {}", s.at)).unwrap_or_default();
            f.add("trust-root", Status::Ok, format!("fresh trust root in {dir}{until}"));
        }
        Verdict::Expiring { days } => f.add(
            "trust-root",
            Status::Warn,
            format!("trust root in {dir} goes stale in {days} day(s): import a fresh mirror (pullgate trust-root import) before then"),
        ),
        Verdict::Stale { since } => f.add(
            "trust-root",
            Status::Fail,
            format!("trust root in {dir} is stale since {since}: enforce-mode pulls are refused; import a fresh mirror"),
        ),
        Verdict::NoneInstalled => f.add(
            "trust-root",
            Status::Fail,
            format!("no trust root installed in {dir}: enforce-mode pulls are refused; run pullgate trust-root import"),
        ),
        Verdict::Invalid { reason } => f.add("trust-root", Status::Fail, format!("trust root in {dir} is unusable: {reason}")),
    }
    let handle = Arc::new(crate::app::trust_root(config));
    let _ = handle.reload();
    Some(handle)
}

/// containerd's sandbox image should be pinned by digest: RunPodSandbox makes containerd pull it
/// by its name, so a tag lets the registry decide what every pod's sandbox runs.
async fn check_sandbox_image(f: &mut Findings, config: &Config, containerd: &CriClient) {
    let reported = match containerd.status_info().await {
        Ok(info) => crate::cri::sandbox::reported_sandbox_image(&info),
        Err(e) => return f.add("sandbox-image", Status::Warn, format!("cannot ask containerd for its sandbox image: {e}")),
    };
    let (image, source) = match (reported, &config.cri.sandbox_image) {
        (Some(i), _) => (i, "containerd's sandbox_image"),
        (None, Some(i)) => (i.clone(), "cri.sandbox_image (containerd does not report its own)"),
        (None, None) => {
            let what = if config.policy.is_some() { "enforce mode refuses every RunPodSandbox" } else { "it cannot be checked" };
            return f.add(
                "sandbox-image",
                Status::Warn,
                format!("containerd does not report its sandbox image (containerd 2.x): set cri.sandbox_image to its pinned_images.sandbox, by digest; until then {what}"),
            );
        }
    };
    let pinned = crate::registry::reference::Reference::parse(&image).ok().is_some_and(|r| r.digest().is_some());
    if pinned {
        f.add("sandbox-image", Status::Ok, format!("sandbox image {image} ({source}) is pinned by digest"));
    } else {
        f.add(
            "sandbox-image",
            Status::Warn,
            format!("sandbox image {image} ({source}) is not pinned by digest: containerd pulls it by tag when absent; pin it (name:tag@sha256:...) in containerd's configuration and in cri.sandbox_image"),
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn check_images(
    f: &mut Findings,
    args: &DoctorArgs,
    config: &Config,
    policy: &PolicyConfig,
    trust: Option<Arc<TrustHandle>>,
    containerd: &CriClient,
) {
    let images = match containerd.list_images().await {
        Ok(i) => i,
        Err(e) => {
            f.add("images", Status::Fail, format!("cannot list the node's images: {e}"));
            return;
        }
    };
    let (Ok(set), Some(trust)) = (policy.compile(1), trust) else { return };
    let audit = match AuditLog::new(&AuditConfig::Off) {
        Ok(a) => a,
        Err(_) => return,
    };
    let wiring = crate::app::EnforcerWiring { audit, node: "doctor".into(), metrics: None, break_glass: false };
    let enforcer = crate::app::enforcer(config, set, trust, wiring);
    let deadline = Instant::now() + args.images_timeout;
    let (mut allowed, mut refused, mut audit_only, mut checked) = (0, 0, 0, 0);
    for image in images.iter().take(args.max_images) {
        let name = image.repo_tags.first().or(image.repo_digests.first()).cloned().unwrap_or_else(|| image.id.clone());
        let call = CreateCall {
            image: image.id.clone(),
            user_specified: None,
            namespace: None,
            pod: String::new(),
            container: String::new(),
            status: Some(image.clone()),
        };
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
        let Ok((verdict, record)) = tokio::time::timeout(left, enforcer.dry_run_create(&call)).await else { break };
        checked += 1;
        match verdict {
            CreateVerdict::Refuse(reason) => {
                refused += 1;
                f.add("images", Status::Fail, format!("{name} would be refused at CreateContainer: {reason}"));
            }
            CreateVerdict::Forward if record.decision == "deny" => {
                audit_only += 1;
                f.add("images", Status::Warn, format!("{name}: audit mode lets it run, enforce would refuse it: {}", record.reason));
            }
            CreateVerdict::Forward => allowed += 1,
        }
    }
    let total = images.len();
    let summary = format!(
        "{checked} of {total} images checked (no namespace: policies with a namespace selector are not applied): {allowed} allowed, {refused} would be refused, {audit_only} only in audit mode"
    );
    let status = if refused > 0 {
        Status::Fail
    } else if checked < total || audit_only > 0 {
        Status::Warn
    } else {
        Status::Ok
    };
    let summary = if checked < total { format!("{summary}; stopped at --max-images or --images-timeout") } else { summary };
    f.add("images", status, summary);
}

/// The human rendering.
pub fn render_human(r: &DoctorReport) -> String {
    let mut out = format!("pullgate doctor ({})\n", r.config);
    for x in &r.findings {
        let tag = match x.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        out.push_str(&format!("{tag} {:<10} {}\n", x.check, x.message));
    }
    out.push_str(&match (r.problems, r.warnings) {
        (0, 0) => "all checks passed\n".to_string(),
        (0, w) => format!("no problems, {w} warning(s)\n"),
        (p, w) => format!("{p} problem(s), {w} warning(s)\n"),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_named_by_policies() {
        let p: PolicyConfig = serde_saphyr::from_str(
            r#"
exemptions:
  - name: sandbox
    images: ["registry.k8s.io/pause:*", "localhost/x"]
policies:
  - name: a
    images: ["registry.internal:5000/team/**", "*/anything/**", "nginx"]
    authorities: []
"#,
        )
        .unwrap();
        let r: Vec<String> = policy_registries(&p).into_iter().collect();
        assert_eq!(r, ["localhost", "registry.internal:5000", "registry.k8s.io"]);
    }
}
