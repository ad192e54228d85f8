//! End-to-end tests of the pass-through proxy with real parts: a real containerd (Debian
//! `containerd` + `runc`) and a real registry (Debian `docker-registry`), started by
//! `scripts/testbed.sh` under a temp dir, and the real `pullgate` binary in between, driven by a
//! kubelet-like CRI client (the full CRI v1 API from the `k8s-cri` crate).
//!
//! Every response through pullgate is compared with the same call made directly to containerd.
//! The trials share one testbed and run one at a time (one of them restarts containerd).
//! Without root they are reported as ignored, with the reason.

#[path = "support/cri.rs"]
mod cri;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/testbed.rs"]
mod testbed;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use daemon::Daemon;
use k8s_cri::v1 as k8s;
use libtest_mimic::{Arguments, Failed};
use testbed::{Generation, Testbed};

struct Ctx {
    rt: tokio::runtime::Runtime,
    tb: Testbed,
    /// The pullgate instance most trials use (pure pass-through, no config).
    pg: Mutex<Daemon>,
    pg_sock: PathBuf,
}

impl Ctx {
    fn direct(&self) -> PathBuf {
        self.tb.containerd_sock()
    }
    /// A fresh socket path in the testbed dir.
    fn sock(&self, name: &str) -> PathBuf {
        self.tb.dir.join(format!("{name}.sock"))
    }
}

type TestResult = Result<(), Failed>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

static CTX: testbed::Contexts<Ctx> = testbed::Contexts::new();

fn setup(generation: Generation) -> Result<Ctx, String> {
    let tb = Testbed::start_generation(generation, "e2e", &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let pg_sock = tb.dir.join("pullgate.sock");
    let direct = tb.containerd_sock();
    let pg =
        Daemon::start(&pg_sock, &["--listen", pg_sock.to_str().unwrap(), "--upstream", direct.to_str().unwrap(), "--log-level", "debug"])?;
    Ok(Ctx { rt, tb, pg: Mutex::new(pg), pg_sock })
}

/// Stops pullgate and the testbed (containerd, shims, registry).
fn teardown(c: &Ctx) {
    if let Ok(mut pg) = c.pg.lock() {
        pg.terminate(Duration::from_secs(10));
    }
    c.tb.clean();
}

fn main() {
    let mut args = Arguments::from_args();
    // One testbed, shared; one trial restarts containerd, so no two trials overlap.
    args.test_threads = Some(1);
    let tests: Vec<testbed::Trial<Ctx>> = vec![
        ("version_matches_direct", version_matches_direct),
        ("image_calls_match_direct", image_calls_match_direct),
        ("pod_lifecycle_matches_direct", pod_lifecycle_matches_direct),
        ("container_events_stream_through", container_events_stream_through),
        ("container_events_counted_to_the_end", container_events_counted_to_the_end),
        ("intercepted_calls_answer_exactly_as_direct", intercepted_calls_answer_exactly_as_direct),
        ("expired_deadline_answers_as_direct", expired_deadline_answers_as_direct),
        ("unknown_methods_reach_containerd", unknown_methods_reach_containerd),
        ("python_grpcio_client_with_socket_path_authority", python_grpcio_client),
        ("peer_credentials_are_checked", peer_credentials_are_checked),
        ("intercepted_calls_are_logged", intercepted_calls_are_logged),
        ("containerd_restart_is_survived", containerd_restart_is_survived),
        ("sigterm_drains_in_flight_calls_and_removes_socket", sigterm_drains),
        ("stale_socket_replaced_live_socket_refused", stale_and_live_sockets),
        ("systemd_socket_activation_keeps_socket", systemd_activation),
        ("invalid_config_exits_64_before_binding", invalid_config),
    ];
    let trials = testbed::trials(tests, &CTX, setup, teardown);
    let conclusion = libtest_mimic::run(&args, trials);
    CTX.finish(teardown);
    conclusion.exit();
}

// ---------------------------------------------------------------------------------------------

fn version_matches_direct(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        let req = k8s::VersionRequest { version: "v1".into() };
        let via = cri::runtime(&c.pg_sock).version(req.clone()).await?.into_inner();
        let direct = cri::runtime(&c.direct()).version(req).await?.into_inner();
        assert_eq!(via, direct);
        ensure!(via.runtime_name == "containerd", "unexpected runtime {via:?}");
        Ok(())
    })
}

fn image_spec(image: &str) -> Option<k8s::ImageSpec> {
    Some(k8s::ImageSpec { image: image.into(), ..Default::default() })
}

fn image_calls_match_direct(c: &Ctx) -> TestResult {
    let demo = c.tb.get("DEMO_IMAGE").to_string();
    let digest = c.tb.get("DEMO_DIGEST").to_string();
    let repo = demo.rsplit_once(':').unwrap().0.to_string();
    c.rt.block_on(async {
        let mut via = cri::images(&c.pg_sock);
        let mut direct = cri::images(&c.direct());

        let mut fs_via = via.image_fs_info(k8s::ImageFsInfoRequest {}).await?.into_inner();
        let mut fs_direct = direct.image_fs_info(k8s::ImageFsInfoRequest {}).await?.into_inner();
        for u in fs_via.image_filesystems.iter_mut().chain(fs_direct.image_filesystems.iter_mut()) {
            u.timestamp = 0; // sampled at call time
        }
        assert_eq!(fs_via.image_filesystems.len(), fs_direct.image_filesystems.len());
        for (a, b) in fs_via.image_filesystems.iter().zip(&fs_direct.image_filesystems) {
            assert_eq!(a.fs_id, b.fs_id);
        }

        // Pull by tag through pullgate.
        let pulled = via.pull_image(k8s::PullImageRequest { image: image_spec(&demo), ..Default::default() }).await?.into_inner();
        ensure!(pulled.image_ref.starts_with("sha256:"), "image_ref {:?}", pulled.image_ref);

        let status_req = k8s::ImageStatusRequest { image: image_spec(&demo), verbose: false };
        let st_via = via.image_status(status_req.clone()).await?.into_inner();
        let st_direct = direct.image_status(status_req).await?.into_inner();
        assert_eq!(st_via, st_direct);
        let img = st_via.image.ok_or("pulled image has no status")?;
        ensure!(img.repo_digests.iter().any(|d| d.ends_with(&digest)), "repo digests {:?} lack {digest}", img.repo_digests);

        // Pull by digest: same image.
        let by_digest = format!("{repo}@{digest}");
        let pulled2 = via.pull_image(k8s::PullImageRequest { image: image_spec(&by_digest), ..Default::default() }).await?.into_inner();
        assert_eq!(pulled2.image_ref, pulled.image_ref);

        let list_via = via.list_images(k8s::ListImagesRequest::default()).await?.into_inner();
        let list_direct = direct.list_images(k8s::ListImagesRequest::default()).await?.into_inner();
        assert_eq!(list_via, list_direct);
        ensure!(list_via.images.iter().any(|i| i.id == pulled.image_ref), "pulled image not listed");

        via.remove_image(k8s::RemoveImageRequest { image: image_spec(&pulled.image_ref) }).await?;
        let gone = direct.image_status(k8s::ImageStatusRequest { image: image_spec(&demo), verbose: false }).await?.into_inner();
        ensure!(gone.image.is_none(), "image still present after RemoveImage: {gone:?}");
        Ok(())
    })
}

/// A host-network pod (the testbed has no pod networking).
fn pod_config(c: &Ctx, name: &str) -> k8s::PodSandboxConfig {
    let uid = format!("{name}-{}", std::process::id());
    let log_dir = c.tb.dir.join("podlogs").join(&uid);
    std::fs::create_dir_all(&log_dir).ok();
    k8s::PodSandboxConfig {
        metadata: Some(k8s::PodSandboxMetadata { name: name.into(), uid, namespace: "e2e".into(), attempt: 0 }),
        log_directory: log_dir.to_string_lossy().into_owned(),
        linux: Some(k8s::LinuxPodSandboxConfig {
            security_context: Some(k8s::LinuxSandboxSecurityContext {
                namespace_options: Some(k8s::NamespaceOption { network: k8s::NamespaceMode::Node as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(image: &str, name: &str, command: &[&str]) -> k8s::ContainerConfig {
    k8s::ContainerConfig {
        metadata: Some(k8s::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: image_spec(image),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// Runs a pod with one started container through `socket`; returns (sandbox id, container id).
async fn start_pod(c: &Ctx, socket: &Path, name: &str, command: &[&str]) -> Result<(String, String), Failed> {
    let demo = c.tb.get("DEMO_IMAGE");
    let mut rt = cri::runtime(socket);
    cri::images(socket).pull_image(k8s::PullImageRequest { image: image_spec(demo), ..Default::default() }).await?;
    let cfg = pod_config(c, name);
    let sandbox = rt
        .run_pod_sandbox(k8s::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let created = rt
        .create_container(k8s::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(container_config(demo, "app", command)),
            sandbox_config: Some(cfg),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(k8s::StartContainerRequest { container_id: created.clone() }).await?;
    Ok((sandbox, created))
}

async fn remove_pod(socket: &Path, sandbox: &str, container: &str) -> Result<(), Failed> {
    let mut rt = cri::runtime(socket);
    rt.stop_container(k8s::StopContainerRequest { container_id: container.into(), timeout: 5 }).await?;
    rt.remove_container(k8s::RemoveContainerRequest { container_id: container.into() }).await?;
    rt.stop_pod_sandbox(k8s::StopPodSandboxRequest { pod_sandbox_id: sandbox.into() }).await?;
    rt.remove_pod_sandbox(k8s::RemovePodSandboxRequest { pod_sandbox_id: sandbox.into() }).await?;
    Ok(())
}

fn pod_lifecycle_matches_direct(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        let (sandbox, container) = start_pod(c, &c.pg_sock, "lifecycle", &["/hello"]).await?;
        let mut via = cri::runtime(&c.pg_sock);
        let mut direct = cri::runtime(&c.direct());

        let exec = via
            .exec_sync(k8s::ExecSyncRequest {
                container_id: container.clone(),
                cmd: vec!["/hello".into(), "echo".into(), "hi".into()],
                timeout: 10,
            })
            .await?
            .into_inner();
        assert_eq!(exec.exit_code, 0);
        assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "hi");

        let req = k8s::ContainerStatusRequest { container_id: container.clone(), verbose: true };
        let st_via = via.container_status(req.clone()).await?.into_inner();
        let st_direct = direct.container_status(req).await?.into_inner();
        assert_eq!(st_via, st_direct);
        let state = st_via.status.as_ref().map(|s| s.state);
        ensure!(state == Some(k8s::ContainerState::ContainerRunning as i32), "container state {state:?}");

        let ps = k8s::PodSandboxStatusRequest { pod_sandbox_id: sandbox.clone(), verbose: false };
        assert_eq!(via.pod_sandbox_status(ps.clone()).await?.into_inner(), direct.pod_sandbox_status(ps).await?.into_inner());
        let lc = k8s::ListContainersRequest::default();
        assert_eq!(via.list_containers(lc.clone()).await?.into_inner(), direct.list_containers(lc).await?.into_inner());

        // Exec/Attach/PortForward answer with a URL of containerd's streaming server; pullgate
        // must hand it over untouched.
        let ex = k8s::ExecRequest { container_id: container.clone(), cmd: vec!["/hello".into()], stdout: true, ..Default::default() };
        let url_via = via.exec(ex.clone()).await?.into_inner().url;
        let url_direct = direct.exec(ex).await?.into_inner().url;
        ensure!(url_via.starts_with("http://127.0.0.1:"), "exec url {url_via}");
        ensure!(url_via.split('/').take(4).eq(url_direct.split('/').take(4)), "{url_via} vs {url_direct}");

        remove_pod(&c.pg_sock, &sandbox, &container).await?;
        let left = direct.list_pod_sandbox(k8s::ListPodSandboxRequest::default()).await?.into_inner();
        ensure!(!left.items.iter().any(|p| p.id == sandbox), "sandbox still listed");
        Ok(())
    })
}

/// GetContainerEvents through pullgate behaves exactly as directly. Debian 12's containerd 1.6
/// does not implement it (it came with containerd 1.7's evented PLEG), so against this real
/// containerd both answers are its own `Unimplemented`; streaming itself (messages delivered as
/// they are sent, never buffered; cancellation) is tested in `transparency.rs` against a
/// recording upstream, because no real server here streams.
fn container_events_stream_through(c: &Ctx) -> TestResult {
    type Opened = Result<tonic::Response<tonic::Streaming<k8s::ContainerEventResponse>>, tonic::Status>;
    c.rt.block_on(async {
        // Both streams are opened before the container starts. containerd is the reference:
        // 1.6 refuses at once (Unimplemented), 2.x answers with headers and then streams. A
        // stream's headers may come through pullgate only with its first event, so the pod is
        // started before the answer through pullgate is awaited.
        let open = |sock: PathBuf| tokio::spawn(async move { cri::runtime(&sock).get_container_events(k8s::GetEventsRequest {}).await });
        let via = open(c.pg_sock.clone());
        let mut direct = open(c.direct());
        let direct_opened = tokio::time::timeout(Duration::from_secs(5), &mut direct).await;
        if let Ok(Ok(Err(b))) = direct_opened {
            let a = match tokio::time::timeout(Duration::from_secs(5), via).await {
                Ok(Ok(Err(a))) => a,
                other => return Err(format!("directly {b:?}, through pullgate {other:?}").into()),
            };
            assert_eq!((a.code(), a.message()), (b.code(), b.message()));
            return Ok(());
        }
        let direct = match direct_opened {
            Ok(Ok(Ok(stream))) => tokio::spawn(async move { Ok(stream) }),
            Ok(other) => return Err(format!("directly: {other:?}").into()),
            // headers only with the first event here too: keep waiting below
            Err(_) => direct,
        };
        // A containerd that streams events: CONTAINER_STARTED must arrive on both streams.
        let (sandbox, container) = start_pod(c, &c.pg_sock, "events", &["/hello"]).await?;
        let want = k8s::ContainerEventType::ContainerStartedEvent as i32;
        let wait_started = |opened: tokio::task::JoinHandle<Opened>| {
            let container = container.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(20), async {
                    let mut stream = opened.await.map_err(|e| e.to_string())?.map_err(|s| format!("{s:?}"))?.into_inner();
                    while let Some(ev) = stream.message().await.map_err(|s| format!("{s:?}"))? {
                        if ev.container_id == container && ev.container_event_type == want {
                            return Ok::<_, String>(true);
                        }
                    }
                    Ok(false)
                })
                .await
            }
        };
        let (got_via, got_direct) = tokio::join!(wait_started(via), wait_started(direct));
        remove_pod(&c.pg_sock, &sandbox, &container).await?;
        ensure!(matches!(got_direct, Ok(Ok(true))), "no CONTAINER_STARTED event directly from containerd: {got_direct:?}");
        ensure!(matches!(got_via, Ok(Ok(true))), "no CONTAINER_STARTED event through pullgate: {got_via:?}");
        Ok(())
    })
}

fn unknown_methods_reach_containerd(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        for path in ["/runtime.v1.RuntimeService/UpdatePodSandboxResourcesFromTheFuture", "/example.future.v9.Service/Call"] {
            let via = cri::raw_unary(cri::channel(&c.pg_sock), path, Bytes::from_static(b"\x0a\x01x")).await;
            let direct = cri::raw_unary(cri::channel(&c.direct()), path, Bytes::from_static(b"\x0a\x01x")).await;
            let (via, direct) = (via.expect_err("unknown method succeeded"), direct.expect_err("unknown method succeeded"));
            assert_eq!(via.code(), tonic::Code::Unimplemented, "{via:?}");
            assert_eq!(via.code(), direct.code());
            assert_eq!(via.message(), direct.message());
        }
        // A method newer than pullgate's proto that containerd does know: Status and
        // RuntimeConfig are not in proto/cri_subset.proto. Raw bytes in, identical bytes out.
        let req = Bytes::from_static(b"\x08\x01"); // StatusRequest{verbose: true}
        let via = cri::raw_unary(cri::channel(&c.pg_sock), "/runtime.v1.RuntimeService/Status", req.clone()).await?;
        let direct = cri::raw_unary(cri::channel(&c.direct()), "/runtime.v1.RuntimeService/Status", req).await?;
        ensure!(!via.get_ref().is_empty(), "empty Status");
        // The verbose info embeds timestamps; compare the structured part.
        let a: k8s::StatusResponse = prost::Message::decode(via.into_inner())?;
        let b: k8s::StatusResponse = prost::Message::decode(direct.into_inner())?;
        assert_eq!(a.status, b.status);
        // RuntimeConfig (Kubernetes 1.28+) is newer than containerd 1.6: whatever containerd
        // answers, the same answer comes back.
        let via = cri::raw_unary(cri::channel(&c.pg_sock), "/runtime.v1.RuntimeService/RuntimeConfig", Bytes::new()).await;
        let direct = cri::raw_unary(cri::channel(&c.direct()), "/runtime.v1.RuntimeService/RuntimeConfig", Bytes::new()).await;
        match (via, direct) {
            (Ok(a), Ok(b)) => assert_eq!(a.get_ref(), b.get_ref()),
            (Err(a), Err(b)) => assert_eq!((a.code(), a.message()), (b.code(), b.message())),
            (a, b) => return Err(format!("through pullgate {a:?}, directly {b:?}").into()),
        }
        Ok(())
    })
}

async fn version(socket: &Path) -> Result<k8s::VersionResponse, tonic::Status> {
    Ok(cri::runtime(socket).version(k8s::VersionRequest { version: "v1".into() }).await?.into_inner())
}

fn python() -> PathBuf {
    std::env::var_os("PULLGATE_PYVENV").map(PathBuf::from).unwrap_or_else(|| testbed::repo_root().join("target/pyvenv")).join("bin/python")
}

fn py_client(socket: &Path, uid: Option<u32>) -> std::process::Output {
    let script = testbed::repo_root().join("tests/python/cri_raw_client.py");
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()]).arg(python());
            c
        }
        None => Command::new(python()),
    };
    cmd.arg(script).arg(format!("unix:{}", socket.display())).arg("version");
    cmd.output().expect("run python client")
}

fn python_grpcio_client(c: &Ctx) -> TestResult {
    ensure!(python().exists(), "no Python venv at {} (scripts/setup.sh makes it)", python().display());
    let via = py_client(&c.pg_sock, None);
    ensure!(via.status.success(), "grpcio client failed through pullgate: {}", String::from_utf8_lossy(&via.stderr));
    let direct = py_client(&c.direct(), None);
    ensure!(direct.status.success(), "grpcio client failed directly: {}", String::from_utf8_lossy(&direct.stderr));
    assert_eq!(String::from_utf8_lossy(&via.stdout), String::from_utf8_lossy(&direct.stdout));
    ensure!(String::from_utf8_lossy(&via.stdout).contains("containerd"), "{}", String::from_utf8_lossy(&via.stdout));
    Ok(())
}

fn write_config(c: &Ctx, name: &str, body: &str) -> PathBuf {
    let path = c.tb.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, body).unwrap();
    path
}

fn peer_credentials_are_checked(c: &Ctx) -> TestResult {
    ensure!(python().exists(), "no Python venv at {}", python().display());
    let nobody = 65534;
    let sock = c.sock("peer");
    // Socket open to everyone at the file level, so only the SO_PEERCRED check can refuse.
    let cfg = format!("listen: {}\nupstream: {}\nsocket_mode: \"0666\"\n", sock.display(), c.direct().display());
    let cfg_path = write_config(c, "peer", &cfg);
    let mut pg = Daemon::start(&sock, &["--config", cfg_path.to_str().unwrap()])?;
    let out = py_client(&sock, Some(nobody));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ensure!(!out.status.success(), "uid {nobody} was served");
    ensure!(stderr.contains("PERMISSION_DENIED") && stderr.contains("uid 65534"), "unexpected refusal: {stderr}");
    let root = py_client(&sock, None);
    ensure!(root.status.success(), "root refused: {}", String::from_utf8_lossy(&root.stderr));
    pg.terminate(Duration::from_secs(10));

    let cfg_path = write_config(c, "peer2", &format!("{cfg}access:\n  allowed_uids: [{nobody}]\n"));
    let mut pg = Daemon::start(&sock, &["--config", cfg_path.to_str().unwrap()])?;
    let out = py_client(&sock, Some(nobody));
    ensure!(out.status.success(), "allowed uid refused: {}", String::from_utf8_lossy(&out.stderr));
    pg.terminate(Duration::from_secs(10));

    // With the default mode (0660, root's group) the file permissions keep others out too.
    let cfg_path = write_config(c, "peer3", &format!("listen: {}\nupstream: {}\n", sock.display(), c.direct().display()));
    let mut pg = Daemon::start(&sock, &["--config", cfg_path.to_str().unwrap()])?;
    let mode = std::fs::metadata(&sock)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    pg.terminate(Duration::from_secs(10));
    Ok(())
}

fn intercepted_calls_are_logged(c: &Ctx) -> TestResult {
    let demo = c.tb.get("DEMO_IMAGE").to_string();
    c.rt.block_on(async {
        let mut cfg = pod_config(c, "logged");
        cfg.metadata.as_mut().unwrap().namespace = "team-a".into();
        cri::images(&c.pg_sock)
            .pull_image(k8s::PullImageRequest { image: image_spec(&demo), auth: None, sandbox_config: Some(cfg) })
            .await?;
        Ok::<_, Failed>(())
    })?;
    let wanted = |l: &str| l.contains("method=\"PullImage\"") && l.contains("pod=\"team-a/logged\"");
    let logs = daemon::logs_with(|| c.pg.lock().unwrap().logs(), wanted);
    ensure!(logs.contains("no --config given"), "no pass-through warning in logs:\n{logs}");
    let line = logs.lines().find(|l| wanted(l)).ok_or_else(|| format!("no PullImage log line for pod team-a/logged:\n{logs}"))?;
    ensure!(line.contains(&format!("image=\"{demo}\"")) && line.contains("code=0"), "log line lacks details: {line}");
    Ok(())
}

fn containerd_restart_is_survived(c: &Ctx) -> TestResult {
    c.tb.kill_containerd()?;
    c.rt.block_on(async {
        // While containerd is down: Unavailable, not a hang (the request deadline is far away,
        // so a hang would show up as DeadlineExceeded).
        for _ in 0..3 {
            let mut req = tonic::Request::new(k8s::VersionRequest { version: "v1".into() });
            req.set_timeout(Duration::from_secs(30));
            let err = cri::runtime(&c.pg_sock).version(req).await.expect_err("containerd is down");
            assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
            ensure!(err.message().contains("containerd"), "unhelpful message: {}", err.message());
        }
        Ok::<_, Failed>(())
    })?;
    c.tb.restart_containerd()?;
    c.rt.block_on(async {
        let mut last = None;
        for _ in 0..100 {
            match cri::runtime(&c.pg_sock).version(k8s::VersionRequest { version: "v1".into() }).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("pullgate did not reconnect after containerd came back: {last:?}").into())
    })
}

fn sigterm_drains(c: &Ctx) -> TestResult {
    let sock = c.sock("drain");
    let direct = c.direct();
    let mut pg = Daemon::start(&sock, &["--listen", sock.to_str().unwrap(), "--upstream", direct.to_str().unwrap()])?;
    c.rt.block_on(async {
        let (sandbox, container) = start_pod(c, &c.direct(), "drain", &["/hello"]).await?;
        // An ExecSync that takes a second is in flight when SIGTERM arrives.
        let mut rt = cri::runtime(&sock);
        let call = tokio::spawn(async move {
            rt.exec_sync(k8s::ExecSyncRequest {
                container_id: container.clone(),
                cmd: vec!["/hello".into(), "sleep".into(), "1".into()],
                timeout: 10,
            })
            .await
            .map(|r| (r.into_inner(), container))
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        pg.signal(nix::sys::signal::Signal::SIGTERM);
        let (resp, container) = call.await.map_err(|e| e.to_string())??;
        assert_eq!(resp.exit_code, 0, "in-flight call was cut: {resp:?}");
        let status = pg.wait(Duration::from_secs(15)).ok_or("pullgate did not exit after SIGTERM")?;
        ensure!(status.success(), "exit status {status}");
        ensure!(!sock.exists(), "socket {} left behind", sock.display());
        remove_pod(&c.direct(), &sandbox, &container).await?;
        Ok(())
    })
}

fn stale_and_live_sockets(c: &Ctx) -> TestResult {
    let sock = c.sock("stale");
    let direct = c.direct();
    // A socket file nobody listens on: what a crash leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&sock)?);
    ensure!(std::fs::metadata(&sock)?.file_type().is_socket(), "no stale socket made");
    let args = ["--listen", sock.to_str().unwrap(), "--upstream", direct.to_str().unwrap()];
    let mut first = Daemon::start(&sock, &args)?;
    c.rt.block_on(version(&sock))?;

    let out = Command::new(daemon::binary()).arg("serve").args(args).output()?;
    ensure!(!out.status.success(), "second instance started on a live socket");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("already serving"), "second instance said: {err}");
    // The first instance still serves.
    c.rt.block_on(version(&sock))?;

    // A path that is not a socket is never deleted.
    let file = c.tb.dir.join("not-a-socket");
    std::fs::write(&file, "data")?;
    let out = Command::new(daemon::binary()).arg("serve").args(["--listen", file.to_str().unwrap()]).output()?;
    ensure!(!out.status.success() && file.exists(), "a regular file was replaced");
    first.terminate(Duration::from_secs(10)).ok_or("no exit")?;
    ensure!(!sock.exists(), "socket left behind");
    Ok(())
}

fn systemd_activation(c: &Ctx) -> TestResult {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let sock = c.sock("activated");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock)?;
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(daemon::binary());
    cmd.args(["serve", "--upstream", c.direct().to_str().unwrap(), "--listen", "/nonexistent/ignored.sock"]);
    cmd.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
    // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut pg = Daemon::start_with(&sock, &mut cmd)?;
    drop(listener);
    c.rt.block_on(version(&sock))?;
    pg.terminate(Duration::from_secs(10)).ok_or("no exit")?;
    ensure!(sock.exists(), "the socket systemd owns was removed");
    ensure!(pg.logs().contains("socket activation"), "logs: {}", pg.logs());
    Ok(())
}

fn invalid_config(c: &Ctx) -> TestResult {
    let sock = c.sock("invalid");
    let cfg = write_config(c, "invalid", &format!("listen: {}\nlisten_mode: fast\n", sock.display()));
    let out = Command::new(daemon::binary()).args(["serve", "--config", cfg.to_str().unwrap()]).output()?;
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("invalid.yaml") && err.contains("listen_mode"), "error does not name file and key: {err}");
    ensure!(!sock.exists(), "socket bound despite invalid config");
    let out = Command::new(daemon::binary()).args(["serve", "--config", "/nonexistent/pullgate.yaml"]).output()?;
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(daemon::binary()).args(["config", "check", cfg.to_str().unwrap()]).output()?;
    assert_eq!(out.status.code(), Some(64));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Issue 17's pass-through differences, compared on the wire with containerd's own answers.

/// What one raw HTTP/2 call got back: the answer (response headers, body, trailers), or the
/// reason the server reset the stream. Raw `h2`, so that nothing a client library adds, drops
/// or maps (grpc-go turns a `CANCEL` after its deadline into `DEADLINE_EXCEEDED`) hides a
/// difference.
#[derive(Debug, PartialEq)]
enum Outcome {
    Answer { headers: Vec<(String, String)>, body: Vec<u8>, trailers: Vec<(String, String)> },
    Reset(h2::Reason),
}

impl Outcome {
    /// The gRPC status code of an answer (headers of a trailers-only answer, else trailers).
    fn code(&self) -> Option<String> {
        match self {
            Outcome::Answer { headers, trailers, .. } => {
                headers.iter().chain(trailers).find(|(k, _)| k == "grpc-status").map(|(_, v)| v.clone())
            }
            Outcome::Reset(_) => None,
        }
    }
}

fn header_list(h: &http::HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<_> = h.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    v.sort();
    v
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut v = vec![0u8];
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    v.into()
}

/// One gRPC call as raw HTTP/2 frames on a fresh connection to `socket`.
async fn raw_h2(socket: &Path, path: &str, extra: &[(&str, &str)], message: &[u8]) -> Result<Outcome, Failed> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (client, conn) = h2::client::handshake(stream).await?;
    tokio::spawn(conn);
    let mut client = client.ready().await?;
    let mut req =
        http::Request::post(format!("http://localhost{path}")).header("content-type", "application/grpc").header("te", "trailers");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let (response, mut send) = client.send_request(req.body(())?, false)?;
    send.send_data(grpc_frame(message), true)?;
    let reset = |e: h2::Error| -> Result<Outcome, Failed> {
        match e.reason() {
            Some(r) if e.is_reset() => Ok(Outcome::Reset(r)),
            _ => Err(format!("HTTP/2 error that is not a stream reset: {e}").into()),
        }
    };
    let resp = match response.await {
        Ok(r) => r,
        Err(e) => return reset(e),
    };
    let headers = header_list(resp.headers());
    let mut recv = resp.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        match chunk {
            Ok(c) => {
                let _ = recv.flow_control().release_capacity(c.len());
                body.extend_from_slice(&c);
            }
            Err(e) => return reset(e),
        }
    }
    let trailers = match recv.trailers().await {
        Ok(t) => t.as_ref().map(header_list).unwrap_or_default(),
        Err(e) => return reset(e),
    };
    Ok(Outcome::Answer { headers, body, trailers })
}

fn image_status_message(image: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&k8s::ImageStatusRequest { image: image_spec(image), verbose: false })
}

/// Issue 17, first bug: PullImage, ImageStatus and CreateContainer (the calls pullgate buffers
/// to decode) answered with a `content-length` header containerd never sends. Each answer,
/// headers included, must equal containerd's.
fn intercepted_calls_answer_exactly_as_direct(c: &Ctx) -> TestResult {
    let demo = c.tb.get("DEMO_IMAGE").to_string();
    c.rt.block_on(async {
        let pull = prost::Message::encode_to_vec(&k8s::PullImageRequest { image: image_spec(&demo), ..Default::default() });
        let create = prost::Message::encode_to_vec(&k8s::CreateContainerRequest {
            pod_sandbox_id: "no-such-sandbox".into(),
            config: Some(container_config(&demo, "app", &["/hello"])),
            sandbox_config: Some(pod_config(c, "no-such")),
        });
        let calls: [(&str, Vec<u8>); 5] = [
            (proxy_method::PULL_IMAGE, pull),
            (proxy_method::IMAGE_STATUS, image_status_message(&demo)),
            (proxy_method::IMAGE_STATUS, image_status_message("127.0.0.1:1/not/there:1")),
            (proxy_method::CREATE_CONTAINER, create),
            // Not a CRI message: containerd's own decoding error.
            (proxy_method::IMAGE_STATUS, b"\xff\xff\xff".to_vec()),
        ];
        for (path, msg) in &calls {
            let direct = raw_h2(&c.direct(), path, &[], msg).await?;
            let via = raw_h2(&c.pg_sock, path, &[], msg).await?;
            if let Outcome::Answer { headers, .. } = &via {
                ensure!(!headers.iter().any(|(k, _)| k == "content-length"), "{path}: content-length through pullgate: {headers:?}");
            }
            ensure!(via == direct, "{path}: through pullgate {via:?}\ndirectly {direct:?}");
        }
        Ok(())
    })
}

/// Issue 17, third bug: a PullImage whose deadline (5 ms) runs out in containerd. containerd
/// 2.x (grpc-go's server deadline) resets the stream with `CANCEL` and sends no status, which
/// grpc-go clients report as `DEADLINE_EXCEEDED`; pullgate answered `UNAVAILABLE: ... stream no
/// longer needed` instead. Whatever containerd does (1.6 answers a status), the caller must get
/// the same: the same reset, or the same status.
fn expired_deadline_answers_as_direct(c: &Ctx) -> TestResult {
    let demo = c.tb.get("DEMO2_IMAGE").to_string();
    c.rt.block_on(async {
        let pull = prost::Message::encode_to_vec(&k8s::PullImageRequest { image: image_spec(&demo), ..Default::default() });
        // What containerd does when a 5 ms deadline runs out depends on where its pull is at
        // that moment (a CI machine under load once saw the two paths differ in one round), so
        // a few rounds are made, each direct then through pullgate; a real difference (a reset
        // turned into UNAVAILABLE) shows in every round.
        let mut rounds = Vec::new();
        for _ in 0..3 {
            let mut outcomes = Vec::new();
            for socket in [c.direct(), c.pg_sock.clone()] {
                // Not present, so the pull takes longer than the deadline.
                let _ = cri::images(&c.direct()).remove_image(k8s::RemoveImageRequest { image: image_spec(&demo) }).await;
                let out = raw_h2(&socket, proxy_method::PULL_IMAGE, &[("grpc-timeout", "5m")], &pull).await?;
                outcomes.push(match &out {
                    Outcome::Reset(r) => format!("reset {r:?}"),
                    Outcome::Answer { .. } => format!("status {:?}", out.code()),
                });
            }
            eprintln!("PullImage with a 5 ms deadline: directly {}, through pullgate {}", outcomes[0], outcomes[1]);
            // A pull that finished within 5 ms proves nothing: another round.
            let proves = outcomes[0] != "status Some(\"0\")";
            rounds.push(format!("directly {}, through pullgate {}", outcomes[0], outcomes[1]));
            if proves && outcomes[0] == outcomes[1] {
                return Ok(());
            }
        }
        Err(format!("no round where the deadline ran out showed the same outcome on both paths: {}", rounds.join("; ")).into())
    })
}

/// Issue 17, second bug: on containerd 2.x a GetContainerEvents stream through pullgate was
/// seen to deliver fewer events than one opened directly. Both streams are opened side by side,
/// a warm-up pod proves both are subscribed (containerd acknowledges nothing until the first
/// event: a client that starts working right after opening the stream races its subscription,
/// and one more hop makes that window longer), then a pod with two containers runs its whole
/// life and both streams are read to its last event (the sandbox's removal). They must carry
/// the same events in the same order. On containerd 1.6 both answer `Unimplemented`.
fn container_events_counted_to_the_end(c: &Ctx) -> TestResult {
    use k8s::ContainerEventType as Ev;
    c.rt.block_on(async {
        let open = |socket: PathBuf| async move { cri::runtime(&socket).get_container_events(k8s::GetEventsRequest {}).await };
        // The call resolves with containerd's first event (its response headers come with it).
        let via = tokio::spawn(open(c.pg_sock.clone()));
        let direct = tokio::spawn(open(c.direct()));
        // Every wait below is bounded: a stream that never opens fails the trial, never hangs it.
        let bounded = |secs| Duration::from_secs(secs);
        if c.tb.generation() == Generation::Containerd16 {
            // containerd 1.6: no events API; both answers must be the same error.
            let (via, direct) = (tokio::time::timeout(bounded(10), via).await??, tokio::time::timeout(bounded(10), direct).await??);
            let (a, b) = (via.err().ok_or("stream through pullgate opened")?, direct.err().ok_or("direct stream opened")?);
            ensure!((a.code(), a.message()) == (b.code(), b.message()), "through pullgate {a:?}, directly {b:?}");
            return Ok(());
        }
        let mut rt = cri::runtime(&c.direct());
        let demo = c.tb.get("DEMO_IMAGE").to_string();
        cri::images(&c.direct()).pull_image(k8s::PullImageRequest { image: image_spec(&demo), ..Default::default() }).await?;
        let cfg = pod_config(c, "counted");
        let sandbox = rt
            .run_pod_sandbox(k8s::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let opened = |name: &'static str| move |_| format!("the events stream {name} did not open within 20 s of the sandbox's start");
        let via = tokio::time::timeout(bounded(20), via).await.map_err(opened("through pullgate"))???.into_inner();
        let direct = tokio::time::timeout(bounded(20), direct).await.map_err(opened("directly"))???.into_inner();
        let (mut via, mut direct) = (via, direct);
        // Warm-up: the sandbox's own start reached both streams, so both are subscribed.
        let started = Ev::ContainerStartedEvent as i32;
        for (name, s) in [("through pullgate", &mut via), ("directly", &mut direct)] {
            let seen = tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(ev) = s.message().await? {
                    if ev.container_id == sandbox && ev.container_event_type == started {
                        return Ok::<_, tonic::Status>(true);
                    }
                }
                Ok(false)
            })
            .await;
            ensure!(matches!(seen, Ok(Ok(true))), "{name}: the sandbox's start event never came: {seen:?}");
        }
        let mut ids = vec![sandbox.clone()];
        for name in ["one", "two"] {
            let id = rt
                .create_container(k8s::CreateContainerRequest {
                    pod_sandbox_id: sandbox.clone(),
                    config: Some(container_config(&demo, name, &["/hello"])),
                    sandbox_config: Some(cfg.clone()),
                })
                .await?
                .into_inner()
                .container_id;
            rt.start_container(k8s::StartContainerRequest { container_id: id.clone() }).await?;
            ids.push(id);
        }
        for id in &ids[1..] {
            rt.stop_container(k8s::StopContainerRequest { container_id: id.clone(), timeout: 5 }).await?;
            rt.remove_container(k8s::RemoveContainerRequest { container_id: id.clone() }).await?;
        }
        rt.stop_pod_sandbox(k8s::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() }).await?;
        rt.remove_pod_sandbox(k8s::RemovePodSandboxRequest { pod_sandbox_id: sandbox.clone() }).await?;
        // Read each stream to the end of this pod: the sandbox's removal.
        let deleted = Ev::ContainerDeletedEvent as i32;
        let mut counted = Vec::new();
        for (name, s) in [("through pullgate", &mut via), ("directly", &mut direct)] {
            let events = tokio::time::timeout(Duration::from_secs(30), async {
                let mut seen = Vec::new();
                while let Some(ev) = s.message().await? {
                    if ids.contains(&ev.container_id) {
                        seen.push((ev.container_id.clone(), ev.container_event_type));
                        if ev.container_id == sandbox && ev.container_event_type == deleted {
                            return Ok::<_, tonic::Status>(seen);
                        }
                    }
                }
                Err(tonic::Status::unknown("stream ended before the sandbox's removal"))
            })
            .await;
            match events {
                Ok(Ok(seen)) => counted.push(seen),
                other => return Err(format!("{name}: {other:?}").into()),
            }
        }
        eprintln!(
            "events after the warm-up, counted to the sandbox's removal: through pullgate {}, directly {}",
            counted[0].len(),
            counted[1].len()
        );
        ensure!(counted[0] == counted[1], "through pullgate {:?}\ndirectly {:?}", counted[0], counted[1]);
        // Two containers: created, started, stopped, deleted each; the sandbox: stopped, deleted.
        ensure!(counted[0].len() >= 10, "only {} events: {:?}", counted[0].len(), counted[0]);
        Ok(())
    })
}

/// The gRPC paths pullgate decodes (as in `src/cri/proxy.rs`).
mod proxy_method {
    pub const PULL_IMAGE: &str = "/runtime.v1.ImageService/PullImage";
    pub const IMAGE_STATUS: &str = "/runtime.v1.ImageService/ImageStatus";
    pub const CREATE_CONTAINER: &str = "/runtime.v1.RuntimeService/CreateContainer";
}
