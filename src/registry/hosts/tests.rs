use super::hosts_toml::parse_go_duration;
use super::*;

fn parse(text: &str) -> Result<Vec<Endpoint>, String> {
    parse_hosts_toml(text, Path::new("/etc/containerd/certs.d/ghcr.io"), Path::new("/etc/containerd/certs.d/ghcr.io/hosts.toml"))
        .map(|p| p.endpoints())
        .map_err(|e| e.to_string())
}

fn resolve_text(registry: &str, text: &str) -> HostsResolution {
    let (_dir, _file, hosts) = hosts_dir_with(registry, text, HostsCache::default());
    hosts.resolve(registry).unwrap()
}

#[test]
fn containerd_doc_example_keeps_file_order() {
    let eps = parse(
        r#"
server = "https://registry-1.docker.io"

[host."https://mirror-b.example"]
  capabilities = ["pull"]
[host."http://mirror-a.example:5000"]
  capabilities = ["pull", "resolve"]
  skip_verify = false
[host."https://z.example/custom/path"]
  override_path = true
"#,
    )
    .unwrap();
    let hosts: Vec<_> = eps.iter().map(|e| (e.url(), e.path.as_str())).collect();
    assert_eq!(
        hosts,
        [
            ("https://mirror-b.example".to_string(), "/v2"),
            ("https+http://mirror-a.example:5000".to_string(), "/v2"),
            ("https://z.example".to_string(), "/custom/path"),
            ("https://registry-1.docker.io".to_string(), "/v2"),
        ]
    );
    assert_eq!(eps[0].capabilities, Capabilities { pull: true, resolve: false, push: false });
    assert_eq!(eps[1].capabilities, Capabilities { pull: true, resolve: true, push: false });
    assert_eq!(eps[3].capabilities, Capabilities::ALL);
    assert!(eps[1].http_fallback, "http host with TLS settings tries https first (containerd 2.x)");
    assert_eq!(eps[1].tls.skip_verify, Some(false));
}

#[test]
fn paths_and_schemes() {
    let eps = parse(
        r#"
[host."mirror.example"]
[host."http://plain.example:8080"]
[host."https://nested.example/some/prefix/"]
[host."https://already.example/api/v2"]
[host."http://port80.example:80"]
  skip_verify = true
"#,
    )
    .unwrap();
    let got: Vec<_> = eps.iter().take(5).map(|e| (e.url(), e.path.clone(), e.port())).collect();
    assert_eq!(
        got,
        [
            ("https://mirror.example".into(), "/v2".into(), 443),
            ("http://plain.example:8080".into(), "/v2".into(), 8080),
            ("https://nested.example".into(), "/some/prefix/v2".into(), 443),
            ("https://already.example".into(), "/api/v2".into(), 443),
            ("http://port80.example:80".into(), "/v2".into(), 80),
        ]
    );
    // no server: last entry is the registry itself, filled in by resolve
    assert_eq!(eps.last().unwrap().host, "");
}

#[test]
fn tls_and_headers() {
    let eps = parse(
        r#"
ca = "/abs/root.pem"
[host."https://m.example"]
  ca = ["ca1.pem", "/etc/ca2.pem"]
  client = [["client.cert", "client.key"], ["combined.pem", ""], "other.pem"]
  skip_verify = true
  dial_timeout = "1m30s"
  [host."https://m.example".header]
x-custom = "1"
x-multi = ["a", "b"]
[host."https://n.example"]
  client = "both.pem"
"#,
    )
    .unwrap();
    let base = Path::new("/etc/containerd/certs.d/ghcr.io");
    assert_eq!(eps[0].tls.ca_files, [base.join("ca1.pem"), PathBuf::from("/etc/ca2.pem")]);
    assert_eq!(
        eps[0].tls.client_pairs,
        [(base.join("client.cert"), Some(base.join("client.key"))), (base.join("combined.pem"), None), (base.join("other.pem"), None)]
    );
    assert_eq!(eps[0].tls.skip_verify, Some(true));
    assert_eq!(eps[0].dial_timeout, Some(Duration::from_secs(90)));
    assert_eq!(eps[0].headers, [("x-custom".into(), "1".into()), ("x-multi".into(), "a".into()), ("x-multi".into(), "b".into())]);
    assert_eq!(eps[1].tls.client_pairs, [(base.join("both.pem"), None)]);
    // top-level ca applies to the server entry (here: the registry itself)
    assert_eq!(eps[2].tls.ca_files, [PathBuf::from("/abs/root.pem")]);
}

#[test]
fn errors_name_file_and_key() {
    let e = parse("[host.\"m\"]\ncapabilities = [\"pull\", \"fly\"]\n").unwrap_err();
    assert!(e.contains("hosts.toml: [host.\"m\"]: `capabilities`: unknown capability \"fly\""), "{e}");
    let e = parse("[host.\"m\"]\ncapabilities = \"pull\"\n").unwrap_err();
    assert!(e.contains("expected a list"), "{e}");
    let e = parse("[host.\"m\"]\nca = 3\n").unwrap_err();
    assert!(e.contains("`ca`"), "{e}");
    let e = parse("[host.\"m\"]\nclient = [[\"a\"]]\n").unwrap_err();
    assert!(e.contains("invalid pair"), "{e}");
    let e = parse("[host.\"m\"]\nskip_verify = \"yes\"\n").unwrap_err();
    assert!(e.contains("`skip_verify`: expected true or false"), "{e}");
    let e = parse("server = [1]\n[host]\n").unwrap_err();
    assert!(e.contains("server"), "{e}");
    let e = parse("server = \"ftp://x\"\n[host]\n").unwrap_err();
    assert!(e.contains("unsupported scheme"), "{e}");
    let e = parse("server = \"https://user:pw@x\"\n[host]\n").unwrap_err();
    assert!(e.contains("credentials in the URL"), "{e}");
    let e = parse("server = \"https://x:port\"\n[host]\n").unwrap_err();
    assert!(e.contains("invalid port"), "{e}");
    let e = parse("server = \n").unwrap_err();
    assert!(e.contains("invalid TOML"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    let e = parse("[host.\"m\"]\ndial_timeout = \"soon\"\n").unwrap_err();
    assert!(e.contains("invalid duration"), "{e}");
    let e = parse("[host.\"m\".header]\n\"bad header\" = \"x\"\n").unwrap_err();
    assert!(e.contains("invalid header name"), "{e}");
}

#[test]
fn unknown_keys_and_missing_host_table_are_warnings() {
    let p = parse_hosts_toml("server = \"http://m:5000\"\nmirrors = 1\n", Path::new("/d"), Path::new("/d/hosts.toml")).unwrap();
    assert!(p.warnings.iter().any(|w| w.contains("unknown key `mirrors`")), "{:?}", p.warnings);
    assert!(p.warnings.iter().any(|w| w.contains("containerd 1.6 ignores")), "{:?}", p.warnings);
    let eps = p.endpoints();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].url(), "http://m:5000");
    let p = parse_hosts_toml("server = \"http://m:5000\"\n[host]\n", Path::new("/d"), Path::new("/d/hosts.toml")).unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(p.endpoints().len(), 1, "empty [host] table: the server only");
}

#[test]
fn defaults_without_configuration() {
    let none = HostsDir::new(vec![PathBuf::from("/nonexistent/certs.d")]);
    let one = |reg: &str| {
        let r = none.resolve(reg).unwrap();
        assert_eq!(r.endpoints.len(), 1);
        r.endpoints[0].clone()
    };
    let e = one("docker.io");
    assert_eq!((e.url(), e.path.as_str(), e.origin.clone()), ("https://registry-1.docker.io".into(), "/v2", Origin::Default));
    assert_eq!(one("ghcr.io").url(), "https://ghcr.io");
    assert_eq!(one("registry.internal:5000").url(), "https://registry.internal:5000");
    // loopback: https (unverified) then plain http, like containerd 2.x
    let e = one("127.0.0.1:5000");
    assert_eq!(e.url(), "https+http://127.0.0.1:5000");
    assert_eq!(e.tls.skip_verify, Some(true));
    assert_eq!(one("localhost:5000").url(), "https+http://localhost:5000");
    assert_eq!(one("[::1]:5000").url(), "https+http://[::1]:5000");
    assert_eq!(one("localhost").url(), "https://localhost", "no port: https only");
    assert_eq!(one("127.0.0.1:443").url(), "https://127.0.0.1:443");
    assert_eq!(one("127.0.0.1:80").url(), "http://127.0.0.1:80", "port 80: plain http only");
    assert!(!is_loopback("10.0.0.1:5000"));
    assert!(is_loopback("127.8.9.1"));
}

#[test]
fn host_directory_lookup_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("_default")).unwrap();
    std::fs::write(root.join("_default/hosts.toml"), "server = \"https://default-mirror\"\n[host]\n").unwrap();
    std::fs::create_dir_all(root.join("mirror.example:5000")).unwrap();
    std::fs::write(root.join("mirror.example:5000/hosts.toml"), "server = \"http://colon\"\n[host]\n").unwrap();
    let hd = HostsDir::new(vec![root.to_owned()]);
    assert_eq!(hd.resolve("mirror.example:5000").unwrap().endpoints[0].url(), "http://colon");
    std::fs::create_dir_all(root.join("mirror.example_5000_")).unwrap();
    std::fs::write(root.join("mirror.example_5000_/hosts.toml"), "server = \"http://underscore\"\n[host]\n").unwrap();
    assert_eq!(hd.resolve("mirror.example:5000").unwrap().endpoints[0].url(), "http://underscore");
    assert_eq!(hd.resolve("quay.io").unwrap().endpoints[0].url(), "https://default-mirror");
    // several roots, containerd's config_path syntax: the first root with a match wins
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("quay.io")).unwrap();
    std::fs::write(other.path().join("quay.io/hosts.toml"), "server = \"https://quay-mirror\"\n[host]\n").unwrap();
    let hd = HostsDir::from_config_path(&format!("{}:{}", other.path().display(), root.display()));
    assert_eq!(hd.resolve("quay.io").unwrap().endpoints[0].url(), "https://quay-mirror");
    assert_eq!(hd.resolve("ghcr.io").unwrap().endpoints[0].url(), "https://default-mirror");
}

#[test]
fn mirror_then_registry_itself_when_no_server() {
    let r = resolve_text("ghcr.io", "[host.\"http://10.1.2.3:5000\"]\ncapabilities = [\"pull\", \"resolve\"]\n");
    let urls: Vec<_> = r.endpoints.iter().map(Endpoint::url).collect();
    assert_eq!(urls, ["http://10.1.2.3:5000", "https://ghcr.io"]);
    assert_eq!(r.endpoints[1].origin, Origin::Default);
    let r = resolve_text("docker.io", "[host.\"https://hub-mirror\"]\n");
    let urls: Vec<_> = r.endpoints.iter().map(Endpoint::url).collect();
    assert_eq!(urls, ["https://hub-mirror", "https://registry-1.docker.io"]);
}

#[test]
fn docker_cert_layout_without_hosts_toml() {
    let dir = tempfile::tempdir().unwrap();
    let hd = dir.path().join("reg.example");
    std::fs::create_dir_all(&hd).unwrap();
    for f in ["ca.crt", "client.cert", "client.key", "lone.cert", "README"] {
        std::fs::write(hd.join(f), "x").unwrap();
    }
    let r = HostsDir::new(vec![dir.path().to_owned()]).resolve("reg.example").unwrap();
    let e = &r.endpoints[0];
    assert_eq!(e.url(), "https://reg.example");
    assert_eq!(e.tls.ca_files, [hd.join("ca.crt")]);
    assert_eq!(e.tls.client_pairs, [(hd.join("client.cert"), Some(hd.join("client.key"))), (hd.join("lone.cert"), None)]);
    assert!(matches!(e.origin, Origin::CertDir { .. }));
}

#[test]
fn go_durations() {
    assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
    assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_go_duration("10"), None);
    assert_eq!(parse_go_duration("x"), None);
}

#[test]
fn split_authority() {
    assert_eq!(split_host_port("a:1"), ("a", Some(1)));
    assert_eq!(split_host_port("a"), ("a", None));
    assert_eq!(split_host_port("[::1]:5000"), ("::1", Some(5000)));
    assert_eq!(split_host_port("[::1]"), ("::1", None));
}

/// A hosts directory for `registry` under a temp root, with `text` as its `hosts.toml`.
fn hosts_dir_with(registry: &str, text: &str, cache: HostsCache) -> (tempfile::TempDir, PathBuf, HostsDir) {
    let dir = tempfile::tempdir().unwrap();
    let host_dir = dir.path().join(registry);
    std::fs::create_dir_all(&host_dir).unwrap();
    let file = host_dir.join("hosts.toml");
    std::fs::write(&file, text).unwrap();
    let hosts = HostsDir::with_cache(vec![dir.path().to_owned()], cache);
    (dir, file, hosts)
}

fn hosts_of(hosts: &HostsDir, registry: &str) -> Vec<String> {
    hosts.resolve(registry).unwrap().endpoints.iter().map(Endpoint::url).collect()
}

#[test]
fn an_unchanged_hosts_toml_is_parsed_once_and_every_edit_is_seen() {
    let settled = HostsCache::with_settle(Duration::ZERO);
    let (_dir, file, hosts) = hosts_dir_with("r.example", "[host.\"http://m1.example:5000\"]\n", settled);
    let clone = hosts.clone();
    for _ in 0..3 {
        assert_eq!(hosts_of(&hosts, "r.example"), ["http://m1.example:5000", "https://r.example"]);
        assert_eq!(hosts_of(&clone, "r.example"), ["http://m1.example:5000", "https://r.example"]);
    }
    assert_eq!(hosts.parses(), 1, "clones share one parse of an unchanged file");

    // Edited in place (another size), replaced by rename (another inode), emptied, removed.
    std::fs::write(&file, "[host.\"http://m2.example:5000\"]\nserver = \"https://r.example\"\n").unwrap();
    assert_eq!(hosts_of(&hosts, "r.example"), ["http://m2.example:5000", "https://r.example"]);
    let next = file.with_extension("new");
    std::fs::write(&next, "[host.\"http://m3.example:5000\"]\n").unwrap();
    std::fs::rename(&next, &file).unwrap();
    assert_eq!(hosts_of(&hosts, "r.example"), ["http://m3.example:5000", "https://r.example"]);
    std::fs::write(&file, "[host.\"http://m44.example:5000\"]\n").unwrap();
    assert_eq!(hosts_of(&hosts, "r.example"), ["http://m44.example:5000", "https://r.example"]);
    std::fs::write(&file, "").unwrap();
    assert_eq!(hosts_of(&hosts, "r.example"), ["https://r.example"]);
    std::fs::write(&file, "[host.\"http://m5.example:5000\"]\n").unwrap();
    assert_eq!(hosts_of(&hosts, "r.example"), ["http://m5.example:5000", "https://r.example"]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(hosts_of(&hosts, "r.example"), ["https://r.example"]);

    // A broken edit is an error every time, never an older parse.
    std::fs::write(&file, "[host.\"http://m6.example:5000\"\n").unwrap();
    for _ in 0..2 {
        let err = hosts.resolve("r.example").unwrap_err().to_string();
        assert!(err.contains("invalid TOML"), "{err}");
    }
}

#[test]
fn a_freshly_written_hosts_toml_is_parsed_until_it_settles() {
    let (_dir, _file, hosts) = hosts_dir_with("r.example", "[host.\"http://m1.example:5000\"]\n", HostsCache::default());
    for _ in 0..3 {
        assert_eq!(hosts_of(&hosts, "r.example"), ["http://m1.example:5000", "https://r.example"]);
    }
    assert_eq!(hosts.parses(), 3, "a file changed less than a second ago could change again unseen by its stamp");
}
