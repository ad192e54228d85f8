//! A client that goes away in the middle of a call (kubelet's deadline, crictl interrupted)
//! must not make pullgate lose the decision: the real `pullgate` binary, a registry mirror that
//! accepts connections and never answers, and a PullImage the client abandons while pullgate
//! waits for that mirror. The decision still completes and its audit record is written; pullgate
//! keeps running (writes to the closed connection get EPIPE, never a fatal SIGPIPE: the signal
//! is ignored). No containerd or root needed.

#[path = "support/cri.rs"]
mod cri;
#[path = "support/daemon.rs"]
mod daemon;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use daemon::Daemon;
use k8s_cri::v1 as k8s;
use pullgate::enforce::audit::{read_records, AuditRecord};

const KEY: &str = "-----BEGIN PUBLIC KEY-----\\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6Ie0Fvwx1B3bMWPAMjMt5LIpn/pd\\nG3EeWqgqk4XyV3U/cQGJwdZdWSmV0Nf1E0hu8fVUnM6u8oqvXs5yBn0CUQ==\\n-----END PUBLIC KEY-----\\n";

/// Waits (bounded) until `f` returns something.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_abandoned_pull_is_still_decided_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    // The mirror: accepts (the kernel completes the handshake) and never answers.
    let mirror = TcpListener::bind("127.0.0.1:0").unwrap();
    mirror.set_nonblocking(true).unwrap();
    let image = format!("{}/demo/app:1", mirror.local_addr().unwrap());
    let sock = dir.path().join("pg.sock");
    let audit = dir.path().join("audit.log");
    let hosts = dir.path().join("certs.d");
    std::fs::create_dir_all(&hosts).unwrap();
    let config = format!(
        r#"listen: {sock}
upstream: {upstream}
registry:
  hosts_dir: {hosts}
  bundle_dir: null
  connect_timeout: 1s
  request_timeout: 2s
trust_root:
  state_dir: {state}
audit:
  sink: file
  path: {audit}
policy:
  unmatched: deny
  policies:
    - name: demo
      images: ["{reg}/demo/**"]
      mode: enforce
      authorities:
        - name: k
          key:
            data: "{KEY}"
"#,
        sock = sock.display(),
        upstream = dir.path().join("no-containerd.sock").display(),
        hosts = hosts.display(),
        state = dir.path().join("state").display(),
        audit = audit.display(),
        reg = mirror.local_addr().unwrap(),
    );
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, config).unwrap();
    let mut pg = Daemon::start(&sock, &["--config", cfg.to_str().unwrap()]).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = {
        let (sock, image) = (sock.clone(), image.clone());
        rt.spawn(async move {
            let req = k8s::PullImageRequest { image: Some(k8s::ImageSpec { image, ..Default::default() }), ..Default::default() };
            cri::images(&sock).pull_image(req).await
        })
    };
    // pullgate is resolving the image on the mirror: the call is in the middle of its decision.
    let held: Vec<TcpStream> = vec![rt.block_on(async {
        loop {
            match mirror.accept() {
                Ok((s, _)) => return s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => panic!("mirror accept: {e}"),
            }
        }
    })];
    // The client gives up: its call and its connection go away (the mirror is still silent, and
    // stays so until pullgate's request timeout, seconds from now).
    client.abort();
    assert!(rt.block_on(client).unwrap_err().is_cancelled());
    drop(rt);

    // The decision completes anyway (the mirror times out) and is audited. Further connections
    // to the mirror (a retry, another scheme) are held silent too.
    let mut held = held;
    let record: AuditRecord = wait_for("the abandoned pull's audit record", || {
        while let Ok((s, _)) = mirror.accept() {
            held.push(s);
        }
        assert!(pg.exited().is_none(), "pullgate exited:\n{}", pg.logs());
        read_records(&audit).ok().and_then(|(records, _)| records.into_iter().find(|r| r.image == image))
    });
    assert_eq!((record.call.as_str(), record.decision.as_str(), record.format), ("PullImage", "deny", 2), "{record:?}");
    assert!(record.reason.contains("cannot resolve"), "{}", record.reason);
    assert!(!record.would_deny);

    // Still serving, with SIGPIPE ignored (so a write to a closed connection is an EPIPE error).
    assert!(pg.exited().is_none(), "pullgate exited:\n{}", pg.logs());
    let status = std::fs::read_to_string(format!("/proc/{}/status", pg.pid())).unwrap();
    let ignored = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).map(|m| u64::from_str_radix(m.trim(), 16).unwrap()).unwrap();
    assert_ne!(ignored & (1 << (libc_sigpipe() - 1)), 0, "SIGPIPE not ignored: SigIgn {ignored:x}");
    assert!(!pg.logs().contains("panicked"), "{}", pg.logs());
    pg.terminate(Duration::from_secs(10));
}

fn libc_sigpipe() -> u32 {
    nix::sys::signal::Signal::SIGPIPE as u32
}
