//! Which CRI endpoints kubelet uses on this node, and where that was decided.
//!
//! kubelet merges, from lowest to highest precedence: its built-in default, the
//! KubeletConfiguration file (`--config`), the drop-in directory (`--config-dir`, files in
//! lexical order), and command-line flags. The flags come from the running kubelet's
//! `/proc/<pid>/cmdline` when there is one, and otherwise from where distributions keep them:
//! `/etc/default/kubelet`, `/etc/sysconfig/kubelet`, kubeadm's `/var/lib/kubelet/kubeadm-flags.env`
//! and the systemd drop-ins of `kubelet.service`.

use std::path::{Path, PathBuf};

/// kubelet's default `containerRuntimeEndpoint` on Linux.
pub const DEFAULT_RUNTIME_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";
pub const DEFAULT_CONFIG: &str = "/var/lib/kubelet/config.yaml";
pub const DEFAULT_CONFIG_DIR: &str = "/etc/kubernetes/kubelet.conf.d";

/// Files that hold kubelet flags when kubelet is not running.
const FLAG_FILES: &[&str] = &["/etc/default/kubelet", "/etc/sysconfig/kubelet", "/var/lib/kubelet/kubeadm-flags.env"];
const UNIT_DROPIN_DIRS: &[&str] =
    &["/etc/systemd/system/kubelet.service.d", "/usr/lib/systemd/system/kubelet.service.d", "/lib/systemd/system/kubelet.service.d"];

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub source: String,
}

/// What was found about kubelet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeletView {
    /// The pid of a running kubelet.
    pub pid: Option<i32>,
    pub runtime_endpoint: Option<Setting>,
    pub image_endpoint: Option<Setting>,
    /// Every file or process that was read.
    pub sources: Vec<String>,
    /// Files that exist but could not be read or parsed.
    pub problems: Vec<String>,
}

impl KubeletView {
    /// Whether anything about kubelet was found at all.
    pub fn found(&self) -> bool {
        !self.sources.is_empty()
    }

    /// The endpoints kubelet uses: (runtime, image), defaults applied.
    pub fn effective(&self) -> (Setting, Setting) {
        let runtime =
            self.runtime_endpoint.clone().unwrap_or(Setting { value: DEFAULT_RUNTIME_ENDPOINT.into(), source: "kubelet's default".into() });
        let image = match &self.image_endpoint {
            Some(s) if !s.value.is_empty() => s.clone(),
            _ => Setting { value: runtime.value.clone(), source: format!("containerRuntimeEndpoint ({})", runtime.source) },
        };
        (runtime, image)
    }
}

/// `unix:///run/x.sock`, `unix:/run/x.sock` or `/run/x.sock` → `/run/x.sock`.
pub fn endpoint_path(endpoint: &str) -> PathBuf {
    let p = endpoint.strip_prefix("unix://").or_else(|| endpoint.strip_prefix("unix:")).unwrap_or(endpoint);
    PathBuf::from(p)
}

/// The value of `--name=value` or `--name value` in `args` (the last one wins, as in kubelet).
pub fn flag(args: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    let with_eq = format!("--{name}=");
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if let Some(v) = a.strip_prefix(&with_eq) {
            found = Some(v.to_string());
        } else if *a == long {
            found = args.get(i + 1).cloned();
            i += 1;
        }
        i += 1;
    }
    found
}

/// Splits an environment-file or unit-file line into words, dropping quotes (no escapes: kubelet
/// flags have none in practice).
fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_string()).filter(|w| !w.is_empty()).collect()
}

/// The `--flags` written in an environment file or a systemd unit drop-in.
pub fn flags_in_file(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        // `KUBELET_EXTRA_ARGS="--a=b --c"`, `Environment="KUBELET_X=--a=b"`, `ExecStart=/usr/bin/kubelet --a=b`.
        let line = line.strip_prefix("Environment=").unwrap_or(line);
        let rest = match line.split_once('=') {
            Some((key, value)) if !key.starts_with('-') && !key.contains(' ') => value,
            _ => line,
        };
        // `Environment="KUBELET_X=--a=b"` leaves `"KUBELET_X=--a=b"` after the first split.
        for w in words(rest) {
            let w = match w.split_once("=--") {
                Some((key, value)) if !key.starts_with('-') => format!("--{value}"),
                _ => w,
            };
            if w.starts_with("--") {
                out.push(w);
            }
        }
    }
    out
}

fn running_kubelet(proc_root: &Path) -> Option<(i32, Vec<String>)> {
    let entries = std::fs::read_dir(proc_root).ok()?;
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() != "kubelet" {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        return Some((pid, args));
    }
    None
}

/// The two endpoint fields of a KubeletConfiguration document.
fn config_fields(path: &Path, view: &mut KubeletView) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            view.problems.push(format!("{}: {e}", path.display()));
            return;
        }
    };
    view.sources.push(path.display().to_string());
    let doc: serde_json::Value = match serde_saphyr::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            view.problems.push(format!("{}: not valid YAML: {first}", path.display()));
            return;
        }
    };
    let source = path.display().to_string();
    if let Some(v) = doc.get("containerRuntimeEndpoint").and_then(|v| v.as_str()) {
        view.runtime_endpoint = Some(Setting { value: v.to_string(), source: source.clone() });
    }
    if let Some(v) = doc.get("imageServiceEndpoint").and_then(|v| v.as_str()) {
        view.image_endpoint = Some(Setting { value: v.to_string(), source });
    }
}

/// Where to look; `None` fields use the running kubelet's flags, then the defaults.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub config: Option<PathBuf>,
    pub config_dir: Option<PathBuf>,
    /// `/proc` (tests point it elsewhere).
    pub proc_root: Option<PathBuf>,
    /// Read flag files and unit drop-ins when kubelet is not running.
    pub read_flag_files: bool,
}

/// Finds kubelet's CRI endpoints.
pub fn inspect(inputs: &Inputs) -> KubeletView {
    let mut view = KubeletView::default();
    let proc_root = inputs.proc_root.clone().unwrap_or_else(|| PathBuf::from("/proc"));
    let mut flags: Vec<String> = Vec::new();
    let mut flag_source = String::new();
    if let Some((pid, args)) = running_kubelet(&proc_root) {
        view.pid = Some(pid);
        flag_source = format!("running kubelet's flags (pid {pid})");
        view.sources.push(flag_source.clone());
        flags = args;
    } else if inputs.read_flag_files {
        let mut files: Vec<PathBuf> = FLAG_FILES.iter().map(PathBuf::from).collect();
        for dir in UNIT_DROPIN_DIRS {
            let mut confs: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "conf")).collect())
                .unwrap_or_default();
            confs.sort();
            files.extend(confs);
        }
        let mut from = Vec::new();
        for f in files {
            if let Ok(text) = std::fs::read_to_string(&f) {
                let found = flags_in_file(&text);
                if !found.is_empty() {
                    from.push(f.display().to_string());
                    view.sources.push(f.display().to_string());
                }
                flags.extend(found);
            }
        }
        flag_source = format!("kubelet flags in {}", from.join(", "));
    }
    let config = inputs.config.clone().or_else(|| flag(&flags, "config").map(PathBuf::from)).or_else(|| {
        let d = PathBuf::from(DEFAULT_CONFIG);
        d.exists().then_some(d)
    });
    if let Some(c) = &config {
        config_fields(c, &mut view);
    }
    let dir = inputs.config_dir.clone().or_else(|| flag(&flags, "config-dir").map(PathBuf::from)).or_else(|| {
        let d = PathBuf::from(DEFAULT_CONFIG_DIR);
        d.is_dir().then_some(d)
    });
    if let Some(d) = &dir {
        match std::fs::read_dir(d) {
            Ok(entries) => {
                let mut confs: Vec<PathBuf> =
                    entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "conf")).collect();
                confs.sort();
                for c in confs {
                    config_fields(&c, &mut view);
                }
            }
            Err(e) => view.problems.push(format!("{}: {e}", d.display())),
        }
    }
    if let Some(v) = flag(&flags, "container-runtime-endpoint") {
        view.runtime_endpoint = Some(Setting { value: v, source: flag_source.clone() });
    }
    if let Some(v) = flag(&flags, "image-service-endpoint") {
        view.image_endpoint = Some(Setting { value: v, source: flag_source });
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_both_forms_last_wins() {
        let args = s(&["kubelet", "--config=/a", "--container-runtime-endpoint", "unix:///x.sock", "--config", "/b"]);
        assert_eq!(flag(&args, "config").as_deref(), Some("/b"));
        assert_eq!(flag(&args, "container-runtime-endpoint").as_deref(), Some("unix:///x.sock"));
        assert_eq!(flag(&args, "config-dir"), None);
    }

    #[test]
    fn flags_from_env_and_unit_files() {
        let env = "# kubeadm\nKUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.9\"\n";
        assert_eq!(
            flags_in_file(env),
            s(&[
                "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
                "--pod-infra-container-image=registry.k8s.io/pause:3.9"
            ])
        );
        let unit = "[Service]\nEnvironment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"\nExecStart=\nExecStart=/usr/bin/kubelet $KUBELET_CONFIG_ARGS --config-dir=/etc/kubernetes/kubelet.conf.d\n";
        assert_eq!(flags_in_file(unit), s(&["--config=/var/lib/kubelet/config.yaml", "--config-dir=/etc/kubernetes/kubelet.conf.d"]));
    }

    #[test]
    fn drop_ins_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncontainerRuntimeEndpoint: unix:///run/containerd/containerd.sock\n").unwrap();
        let d = dir.path().join("conf.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("20-pullgate.conf"),
            "containerRuntimeEndpoint: unix:///run/pullgate/pullgate.sock\nimageServiceEndpoint: unix:///run/pullgate/pullgate.sock\n",
        )
        .unwrap();
        std::fs::write(d.join("10-other.conf"), "imageServiceEndpoint: unix:///elsewhere.sock\n").unwrap();
        let empty_proc = dir.path().join("proc");
        std::fs::create_dir(&empty_proc).unwrap();
        let inputs =
            Inputs { config: Some(cfg.clone()), config_dir: Some(d.clone()), proc_root: Some(empty_proc.clone()), read_flag_files: false };
        let view = inspect(&inputs);
        let (runtime, image) = view.effective();
        assert_eq!(endpoint_path(&runtime.value), PathBuf::from("/run/pullgate/pullgate.sock"));
        assert!(runtime.source.ends_with("20-pullgate.conf"), "{runtime:?}");
        assert_eq!(image.value, "unix:///run/pullgate/pullgate.sock");
        // Without the drop-ins: the config file, and the image endpoint follows the runtime's.
        let view = inspect(&Inputs { config_dir: Some(dir.path().join("missing")), ..inputs });
        let (runtime, image) = view.effective();
        assert_eq!(runtime.value, DEFAULT_RUNTIME_ENDPOINT);
        assert!(image.source.starts_with("containerRuntimeEndpoint"), "{image:?}");
        assert!(!view.problems.is_empty(), "the missing drop-in dir is reported");
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!(endpoint_path("unix:///run/a.sock"), PathBuf::from("/run/a.sock"));
        assert_eq!(endpoint_path("unix:/run/a.sock"), PathBuf::from("/run/a.sock"));
        assert_eq!(endpoint_path("/run/a.sock"), PathBuf::from("/run/a.sock"));
    }
}
