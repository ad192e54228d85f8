//! What `packaging/` ships, checked as a node-image build and a cluster would consume it:
//! - the Debian package built by `scripts/build-deb.sh` has exactly the expected files and
//!   installs, upgrades its conffile correctly and purges, with dpkg, into a temporary root;
//!   lintian (where installed) reports nothing on it; it ships a man page for every command and
//!   subcommand (`man` finds them) and shell completions; its binary is stripped and the debug
//!   information is in the -dbgsym package;
//! - the systemd units pass `systemd-analyze verify` (where systemd is installed) and reload
//!   with SIGHUP;
//! - the example configurations are valid;
//! - the DaemonSet manifest is structurally sound (kinds, hostPath mounts, the reload
//!   mechanism, and no pull-path dependency: its image is never pulled and is exempt in the
//!   configuration it delivers), and the Helm chart renders to exactly the same objects.
//!   Helm itself installs from none of the registries this project may use, so the chart is
//!   rendered by a small renderer of the template subset the chart uses (it refuses anything
//!   else, which keeps the chart inside that subset); `helm template` is compared too when a
//!   `helm` binary is on PATH;
//! - the Prometheus alert rules parse and cover the operator's cases (`promtool check rules`
//!   too when installed). tests/e2e_ops.rs checks their metric names against a live scrape;
//! - the shipped binary behaves in a shell pipeline: output to a reader that went away
//!   (`pullgate report ... | head`) ends it quietly with 141, not with a panic.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use pullgate::config::Config;
use pullgate::enforce::gate::match_names;
use pullgate::policy::Applicable;
use pullgate::registry::Reference;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(text).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{text}"))
}

// --- Debian package ----------------------------------------------------------------------------

const EXPECTED_FILES: &[&str] = &[
    "./etc/pullgate/config.yaml",
    "./lib/systemd/system/pullgate.service",
    "./lib/systemd/system/pullgate.socket",
    "./usr/bin/pullgate",
    "./usr/share/doc/pullgate/AUDIT-LOG.md",
    "./usr/share/doc/pullgate/README.md",
    "./usr/share/doc/pullgate/changelog.gz",
    "./usr/share/doc/pullgate/copyright",
    "./usr/share/doc/pullgate/examples/config.yaml",
    "./usr/share/doc/pullgate/examples/kubelet/20-pullgate.conf",
    "./usr/share/doc/pullgate/examples/kubelet/kubelet-pullgate.service.conf",
    "./usr/share/doc/pullgate/examples/kubernetes/daemonset.yaml",
    "./usr/share/doc/pullgate/examples/kubernetes/pullgate-sync.sh",
    "./usr/share/doc/pullgate/examples/policy-example.yaml",
    "./usr/share/doc/pullgate/examples/prometheus/pullgate-alerts.yaml",
    "./usr/share/bash-completion/completions/pullgate",
    "./usr/share/fish/vendor_completions.d/pullgate.fish",
    "./usr/share/zsh/vendor-completions/_pullgate",
];

/// Every command path of `pullgate` as its `--help` lists them (`[]`, `["config"]`,
/// `["config", "check"]`, ...), hidden ones and `help` excluded.
fn commands(path: &[String]) -> Vec<Vec<String>> {
    let help = run(Command::new(env!("CARGO_BIN_EXE_pullgate")).args(path).arg("--help"));
    let mut all = vec![path.to_vec()];
    let Some((_, rest)) = help.split_once("\nCommands:\n") else { return all };
    for line in rest.lines().take_while(|l| !l.trim().is_empty()) {
        // Names are indented by two spaces; wrapped descriptions by more.
        let Some(name) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')).and_then(|l| l.split_whitespace().next()) else {
            continue;
        };
        if name != "help" {
            all.extend(commands(&[path, &[name.to_string()]].concat()));
        }
    }
    all
}

/// The man page `man` looks up for a command path: `pullgate-trust-root-import.1.gz`.
fn page_name(path: &[String]) -> String {
    format!("{}.1.gz", std::iter::once("pullgate").chain(path.iter().map(String::as_str)).collect::<Vec<_>>().join("-"))
}

#[test]
fn debian_package_builds_and_installs_into_a_temp_root() {
    if !have("dpkg-deb") || !have("dpkg") {
        eprintln!("skipped: dpkg/dpkg-deb not installed");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let printed = run(Command::new("bash")
        .arg(root().join("scripts/build-deb.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_pullgate"), "--output"])
        .arg(out.path()));
    let deb = PathBuf::from(printed.trim().lines().last().unwrap());
    let ddeb = PathBuf::from(printed.trim().lines().rev().nth(1).unwrap());
    assert!(deb.file_name().unwrap().to_string_lossy().starts_with(&format!("pullgate_{}_", env!("CARGO_PKG_VERSION"))), "{deb:?}");

    // Exactly the expected regular files, with their modes.
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let mut files = BTreeSet::new();
    let mut pages = BTreeSet::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (mode, path) = (cols[0], *cols.last().unwrap());
        assert!(cols[1] == "root/root", "{line}");
        if let Some(page) = path.strip_prefix("./usr/share/man/man1/").filter(|p| !p.is_empty()) {
            assert_eq!(mode, "-rw-r--r--", "{line}");
            pages.insert(page.to_string());
        } else if mode.starts_with('-') {
            files.insert(path.to_string());
            let exec = path == "./usr/bin/pullgate" || path.ends_with(".sh");
            assert_eq!(mode, if exec { "-rwxr-xr-x" } else { "-rw-r--r--" }, "{line}");
        }
    }
    let expected: BTreeSet<String> = EXPECTED_FILES.iter().map(|s| s.to_string()).collect();
    assert_eq!(files, expected);
    // A man page for every command and subcommand, and nothing else.
    let commands = commands(&[]);
    let want: BTreeSet<String> = commands.iter().map(|c| page_name(c)).collect();
    assert!(want.len() >= 12 && want.contains("pullgate-verify.1.gz") && want.contains("pullgate-trust-root-import.1.gz"), "{want:?}");
    assert_eq!(pages, want);
    assert!(listing.contains("./var/lib/pullgate/") && listing.contains("./var/log/pullgate/"), "{listing}");

    let field = |name: &str| run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(name)).trim().to_string();
    assert_eq!(field("Package"), "pullgate");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert!(field("Depends").starts_with("libc6 (>= 2."), "{}", field("Depends"));
    let maintainer = field("Maintainer");
    assert!(maintainer.contains('<') && !maintainer.contains("localhost"), "{maintainer}");
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(control.path()));
    assert_eq!(std::fs::read_to_string(control.path().join("conffiles")).unwrap(), "/etc/pullgate/config.yaml\n");
    // Services are started and stopped through deb-systemd-invoke (policy-rc.d applies) and
    // enabled through deb-systemd-helper (no running systemd needed).
    for script in ["postinst", "prerm", "postrm"] {
        let text = std::fs::read_to_string(control.path().join(script)).unwrap();
        for line in text.lines().filter(|l| l.trim_start().starts_with("systemctl")) {
            assert!(line.contains("daemon-reload"), "{script}: {line}");
        }
    }
    assert!(std::fs::read_to_string(control.path().join("postinst")).unwrap().contains("deb-systemd-helper enable"));

    // Debug information: none in the packaged binary, all of it in the -dbgsym package.
    let extracted = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(extracted.path()));
    if have("readelf") {
        let sections = run(Command::new("readelf").arg("-SW").arg(extracted.path().join("usr/bin/pullgate")));
        // (.debug_gdb_scripts is loaded data, Rust's pretty-printer hook, not debug information.)
        assert!(
            !sections.contains(".symtab") && !sections.contains(".debug_info") && !sections.contains(".debug_line"),
            "not stripped:\n{sections}"
        );
        assert!(sections.contains(".gnu_debuglink"), "{sections}");
    }
    let dbg = run(Command::new("dpkg-deb").arg("-c").arg(&ddeb));
    assert!(dbg.lines().any(|l| l.contains("./usr/lib/debug/") && l.ends_with(".debug")), "{dbg}");
    assert_eq!(
        run(Command::new("dpkg-deb").arg("-f").arg(&ddeb).arg("Depends")).trim(),
        format!("pullgate (= {})", env!("CARGO_PKG_VERSION"))
    );

    // lintian, as image pipelines run it: no errors, no warnings.
    if have("lintian") {
        for package in [&deb, &ddeb] {
            let out = Command::new("lintian").args(["--fail-on", "error,warning"]).arg(package).output().unwrap();
            let tags = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && tags.trim().is_empty(),
                "lintian {}:\n{tags}{}",
                package.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        eprintln!("lintian not installed (scripts/setup.sh installs it): package not linted");
    }

    // Install into a temporary root as a node-image build would (maintainer scripts run outside
    // it with DPKG_ROOT set; libc6 is not in that root's package database).
    let target = tempfile::tempdir().unwrap();
    let r = target.path();
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", r.display())).args(["--force-script-chrootless", "--force-not-root", "--force-depends"]).args(args);
        c
    };
    run(&mut dpkg(&["--force-confnew", "-i", deb.to_str().unwrap()]));
    let status = run(&mut dpkg(&["-s", "pullgate"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(status.contains("Conffiles:\n /etc/pullgate/config.yaml"), "{status}");
    let installed = r.join("usr/bin/pullgate");
    assert!(run(Command::new(&installed).arg("--version")).contains(env!("CARGO_PKG_VERSION")));
    run(Command::new(&installed).args(["config", "check"]).arg(r.join("etc/pullgate/config.yaml")));
    assert_eq!(std::fs::read_to_string(r.join("etc/pullgate/config.yaml")).unwrap(), read("packaging/config.yaml"));
    // `man pullgate-verify` and friends find the installed pages.
    if have("man") {
        let manpath = r.join("usr/share/man");
        for (command, want) in [
            ("pullgate", "pullgate serve --listen"),
            ("pullgate-verify", "Check an image on the registry mirror"),
            ("pullgate-trust-root-import", "Verify a mirrored Sigstore TUF repository"),
        ] {
            let page = run(Command::new("man").arg("-M").arg(&manpath).arg(command).env("MANWIDTH", "200").env("PAGER", "cat"));
            assert!(page.contains(&format!("{command}(1)")) && page.contains("SYNOPSIS") && page.contains(want), "man {command}:\n{page}");
        }
    }
    // bash completion, loaded the way bash-completion loads it.
    let completion = r.join("usr/share/bash-completion/completions/pullgate");
    let registered = run(Command::new("bash").arg("-c").arg(format!("source {} && complete -p pullgate", completion.display())));
    assert!(registered.contains("pullgate"), "{registered}");

    // A local edit survives reinstalling (conffile), removal keeps it, purge removes it all.
    let edited = format!("{}\nnode_name: edited\n", read("packaging/config.yaml"));
    std::fs::write(r.join("etc/pullgate/config.yaml"), &edited).unwrap();
    run(&mut dpkg(&["--force-confold", "-i", deb.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(r.join("etc/pullgate/config.yaml")).unwrap(), edited);
    // State the daemon and `trust-root import` leave behind.
    std::fs::write(r.join("var/lib/pullgate/state-file"), "x").unwrap();
    run(&mut dpkg(&["-r", "pullgate"]));
    assert!(!installed.exists());
    assert!(r.join("etc/pullgate/config.yaml").exists(), "remove keeps the conffile");
    assert!(r.join("var/lib/pullgate/state-file").exists(), "remove keeps the state");
    run(&mut dpkg(&["-P", "pullgate"]));
    assert!(!r.join("etc/pullgate/config.yaml").exists(), "purge removes the conffile");
    assert!(!r.join("var/lib/pullgate").exists(), "purge removes the state directory");
}

// --- systemd units -----------------------------------------------------------------------------

#[test]
fn systemd_units_verify_and_reload_with_sighup() {
    let service = read("packaging/systemd/pullgate.service");
    let socket = read("packaging/systemd/pullgate.socket");
    let lines: Vec<&str> = service.lines().map(str::trim).collect();
    for want in
        ["ExecReload=/bin/kill -HUP $MAINPID", "Restart=always", "Requires=pullgate.socket", "NoNewPrivileges=yes", "ProtectSystem=strict"]
    {
        assert!(lines.contains(&want), "pullgate.service lacks {want}");
    }
    // The socket systemd owns is the one the default configuration (and the kubelet drop-in) names.
    assert!(socket.lines().any(|l| l.trim() == format!("ListenStream={}", pullgate::config::DEFAULT_LISTEN)));
    assert!(read("packaging/kubelet/20-pullgate.conf").contains(&format!("unix://{}", pullgate::config::DEFAULT_LISTEN)));
    if !have("systemd-analyze") {
        eprintln!("systemd-analyze not installed: unit syntax not verified");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pullgate.service"), service.replace("/usr/bin/pullgate", env!("CARGO_BIN_EXE_pullgate"))).unwrap();
    std::fs::write(dir.path().join("pullgate.socket"), socket).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("pullgate.service"))
        .arg(dir.path().join("pullgate.socket"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only complaints about our units count (the host's own units may have their own).
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("pullgate.")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify:\n{stderr}");
}

// --- configuration examples --------------------------------------------------------------------

#[test]
fn policy_example_is_valid_and_starts_in_audit_mode() {
    let c = Config::parse(&read("packaging/policy-example.yaml"), Path::new("policy-example.yaml")).unwrap();
    let policy = c.policy.expect("the example has a policy");
    assert!(!policy.policies.is_empty());
    assert!(policy.policies.iter().all(|p| p.mode == pullgate::policy::Mode::Audit), "first rollout: audit mode");
    assert!(c.admin.listen.is_some_and(|a| a.ip().is_loopback()));
    assert!(policy.exemptions.iter().any(|e| e.name == "pullgate-node-sync"));
}

// --- Kubernetes manifests ----------------------------------------------------------------------

fn by_kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn daemonset_manifest_is_off_the_pull_path_and_reloads_pullgate() {
    let docs = yaml_docs(&read("packaging/kubernetes/daemonset.yaml"));
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap", "ConfigMap", "DaemonSet"]);
    let ds = by_kind(&docs, "DaemonSet", "pullgate-node-sync");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let spec = &ds["spec"]["template"]["spec"];
    let name_label = &ds["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"];
    assert!(name_label.is_string() && *name_label == ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]);
    assert_eq!(spec["hostPID"], true, "nsenter into the host's PID 1 needs hostPID");
    assert_eq!(spec["automountServiceAccountToken"], false, "the sync needs no API access");
    assert!(spec["tolerations"].as_array().unwrap().iter().any(|t| t["operator"] == "Exists"), "runs on every node, tainted or not");

    // hostPath volumes: the config dir and the sync dir, nothing broader.
    let volumes = spec["volumes"].as_array().unwrap();
    let host_paths: BTreeSet<&str> = volumes.iter().filter_map(|v| v["hostPath"]["path"].as_str()).collect();
    assert_eq!(host_paths, BTreeSet::from(["/etc/pullgate", "/var/lib/pullgate-sync"]));
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let mounts: BTreeSet<&str> = c["volumeMounts"].as_array().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    for m in ["/host/etc/pullgate", "/host/var/lib/pullgate-sync", "/sync/config", "/sync/trust-root", "/scripts"] {
        assert!(mounts.contains(m), "no mount at {m}: {mounts:?}");
    }
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("no env {name}"))
            .to_string()
    };
    // The reload mechanism: the host's systemctl reload, which the unit turns into SIGHUP.
    assert_eq!(env("PULLGATE_RELOAD"), "systemctl reload pullgate.service");
    assert!(read("packaging/systemd/pullgate.service").contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert_eq!(c["securityContext"]["privileged"], true, "nsenter needs it");
    assert_eq!(env("PULLGATE_CONFIG"), "/etc/pullgate/config.yaml");
    assert!(env("PULLGATE_IMPORT_ARGS").contains(&env("PULLGATE_MIRROR_DIR")), "imports the mirror it writes");

    // The script the pod runs is the tested one.
    let script_cm = by_kind(&docs, "ConfigMap", "pullgate-sync-script");
    assert_eq!(script_cm["data"]["pullgate-sync.sh"].as_str().unwrap(), read("packaging/kubernetes/pullgate-sync.sh"));
    assert!(c["command"].as_array().unwrap().iter().any(|a| a == "/scripts/pullgate-sync.sh"));

    // Not on the pull path: kubelet never pulls the image (Never: it ships in the node image),
    // and the configuration the DaemonSet itself delivers exempts it, so CreateContainer does
    // not depend on a signature check either (stale trust root, mirror down).
    assert_eq!(c["imagePullPolicy"], "Never");
    let image = c["image"].as_str().unwrap();
    let config_cm = by_kind(&docs, "ConfigMap", "pullgate-config");
    let delivered = Config::parse(config_cm["data"]["config.yaml"].as_str().unwrap(), Path::new("pullgate-config")).unwrap();
    let set = delivered.policy.expect("delivered config has a policy").compile(1).unwrap();
    let reference = Reference::parse(image).unwrap();
    assert!(matches!(set.applicable(&match_names(&reference), Some("pullgate-system")), Applicable::Exempt(_)), "{image} is not exempt");
    // So does the node image's example configuration.
    let example = Config::parse(&read("packaging/policy-example.yaml"), Path::new("policy-example.yaml"))
        .unwrap()
        .policy
        .unwrap()
        .compile(1)
        .unwrap();
    assert!(matches!(example.applicable(&match_names(&reference), Some("pullgate-system")), Applicable::Exempt(_)));
}

/// Renders a Helm template with the subset of the template language the chart uses:
/// `{{ .Values.x.y }}`, `.Release.Namespace`, `.Files.Get "f"`, `toYaml X`, pipes into `quote`,
/// `nindent N`, `indent N`, `{{-`/`-}}` trimming. Anything else is an error.
fn render(template: &str, values: &Value, chart: &Path, namespace: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("unclosed action") + start;
        let mut action = &rest[start + 2..end];
        rest = &rest[end + 2..];
        if let Some(a) = action.strip_prefix('-') {
            action = a;
            out.truncate(out.trim_end().len());
        }
        if let Some(a) = action.strip_suffix('-') {
            action = a;
            rest = rest.trim_start();
        }
        let mut stages = action.split('|').map(str::trim);
        let head = stages.next().unwrap();
        let lookup = |path: &str| -> Value {
            let path = path.strip_prefix(".Values.").unwrap_or_else(|| panic!("unsupported reference {path:?}"));
            path.split('.').fold(values.clone(), |v, k| v.get(k).cloned().unwrap_or_else(|| panic!("no value {path}")))
        };
        let scalar = |v: Value| match v {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let mut text = if head == ".Release.Namespace" {
            namespace.to_string()
        } else if let Some(file) = head.strip_prefix(".Files.Get ") {
            std::fs::read_to_string(chart.join(file.trim_matches('"'))).unwrap()
        } else if let Some(path) = head.strip_prefix("toYaml ") {
            serde_saphyr::to_string(&lookup(path.trim())).unwrap().trim_end().to_string()
        } else if head.starts_with(".Values.") {
            scalar(lookup(head))
        } else {
            panic!("unsupported action {{{{{action}}}}}")
        };
        for f in stages {
            let (name, arg) = f.split_once(' ').unwrap_or((f, ""));
            let pad = |n: &str| " ".repeat(n.parse().unwrap());
            text = match name {
                "quote" => serde_json::to_string(&text).unwrap(),
                "nindent" => format!("\n{}", text.lines().map(|l| format!("{}{l}", pad(arg))).collect::<Vec<_>>().join("\n")),
                "indent" => text.lines().map(|l| format!("{}{l}", pad(arg))).collect::<Vec<_>>().join("\n"),
                _ => panic!("unsupported function {name}"),
            };
        }
        out.push_str(&text);
    }
    out.push_str(rest);
    out
}

#[test]
fn helm_chart_renders_to_the_plain_manifests() {
    let chart = root().join("packaging/helm/pullgate");
    let meta = &yaml_docs(&read("packaging/helm/pullgate/Chart.yaml"))[0];
    assert_eq!(meta["apiVersion"], "v2");
    assert_eq!(meta["name"], "pullgate");
    assert_eq!(meta["appVersion"], env!("CARGO_PKG_VERSION"));
    let values = &yaml_docs(&read("packaging/helm/pullgate/values.yaml"))[0];
    assert_eq!(
        read("packaging/helm/pullgate/files/pullgate-sync.sh"),
        read("packaging/kubernetes/pullgate-sync.sh"),
        "the chart's copy of the script drifted"
    );
    let mut rendered = Vec::new();
    let mut templates: Vec<PathBuf> = std::fs::read_dir(chart.join("templates")).unwrap().map(|e| e.unwrap().path()).collect();
    templates.sort();
    for t in templates {
        let text = render(&std::fs::read_to_string(&t).unwrap(), values, &chart, "pullgate-system");
        rendered.extend(yaml_docs(&text));
    }
    let plain: Vec<Value> =
        yaml_docs(&read("packaging/kubernetes/daemonset.yaml")).into_iter().filter(|d| d["kind"] != "Namespace").collect();
    let key = |d: &Value| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap());
    let mut a: Vec<(String, &Value)> = rendered.iter().map(|d| (key(d), d)).collect();
    let mut b: Vec<(String, &Value)> = plain.iter().map(|d| (key(d), d)).collect();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a.iter().map(|x| &x.0).collect::<Vec<_>>(), b.iter().map(|x| &x.0).collect::<Vec<_>>());
    for ((name, r), (_, p)) in a.iter().zip(b.iter()) {
        assert_eq!(r, p, "{name}: the chart renders differently from packaging/kubernetes/daemonset.yaml");
    }
    if have("helm") {
        let out = run(Command::new("helm").args(["template", "pullgate", "--namespace", "pullgate-system"]).arg(&chart));
        let helm: Vec<Value> = yaml_docs(&out);
        assert_eq!(helm.len(), rendered.len());
        for d in &helm {
            let k = key(d);
            let mine = a.iter().find(|x| x.0 == k).unwrap().1;
            assert_eq!(d, mine, "helm template differs for {k}");
        }
    } else {
        eprintln!("helm not installed: chart rendered by the test's template subset only");
    }
}

// --- Prometheus alerts -------------------------------------------------------------------------

#[test]
fn alert_rules_cover_the_operational_cases() {
    let text = read("packaging/prometheus/pullgate-alerts.yaml");
    let doc = &yaml_docs(&text)[0];
    let rules: Vec<&Value> = doc["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    let expr = |alert: &str| {
        rules.iter().find(|r| r["alert"] == alert).unwrap_or_else(|| panic!("no alert {alert}"))["expr"].as_str().unwrap().to_string()
    };
    assert!(expr("PullgateTrustRootStaleSoon").contains("pullgate_trust_root_seconds_until_stale < 7 * 86400"));
    assert!(expr("PullgateTrustRootStale").contains("pullgate_trust_root_seconds_until_stale <= 0"));
    assert!(expr("PullgateTrustRootReloadFailed").contains("pullgate_trust_root_last_reload_success == 0"));
    assert!(expr("PullgatePolicyReloadFailed").contains("pullgate_policy_last_reload_success == 0"));
    assert!(expr("PullgateEnforceRefusalsSpike").contains("pullgate_decisions_total{result=\"deny\"}"));
    assert!(expr("PullgateContainerdUnreachable").contains("pullgate_upstream_up == 0"));
    assert!(expr("PullgateBreakGlassActive").contains("pullgate_break_glass_active == 1"));
    assert!(expr("PullgateAuditRecordsLost").contains("pullgate_audit_write_errors_total"));
    for r in &rules {
        assert!(r["labels"]["severity"].is_string() && r["annotations"]["summary"].is_string(), "{r}");
    }
    if have("promtool") {
        run(Command::new("promtool").args(["check", "rules"]).arg(root().join("packaging/prometheus/pullgate-alerts.yaml")));
    } else {
        eprintln!("promtool not installed: PromQL not parsed");
    }
}

// --- Command line in a pipeline ----------------------------------------------------------------

#[test]
fn output_to_a_closed_pipe_ends_the_command_quietly() {
    // The reader is gone before pullgate writes: its first line fails with EPIPE, as at the end of
    // `pullgate report ... | head` or `pullgate verify ... | grep -q`.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .args(["config", "check"])
        .arg(root().join("packaging/config.yaml"))
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

#[test]
fn usage_errors_exit_64_in_every_command() {
    // The README's exit-code table: a bad command line is 64 (EX_USAGE) whichever command it is,
    // whether clap finds it or the command does; help and --version are not errors.
    let code = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pullgate")).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let missing = "/nonexistent/pullgate-test";
    for args in [
        &["no-such-command"][..],
        &["serve", "--worker-threads", "0"],
        &["config", "check", missing],
        &["verify"],
        &["verify", "r.test/app:1", "--config", missing],
        &["verify-bundle", "--bundle", missing, "--key", missing, "sha256:00"],
        &["verify-image-files", "--digest", "sha256:00"],
        &["trust-root", "status", "--state-dir", "relative"],
        &["report"],
        &["report", "--audit-log", missing, "--since", "yesterday"],
        &["doctor", "--max-images", "many"],
        &["break-glass", "--state-dir", "relative", "--list"],
    ] {
        let (status, stderr) = code(args);
        assert_eq!(status, Some(64), "pullgate {args:?}:\n{stderr}");
    }
    assert_eq!(code(&["--help"]).0, Some(0));
    assert_eq!(code(&["--version"]).0, Some(0));
}
