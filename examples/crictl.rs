//! A tiny kubelet-like CRI client for the demo and for poking at pullgate by hand
//! (Debian 12 packages no `crictl`).
//!
//! ```text
//! cargo run --release --example crictl -- -r /run/pullgate/pullgate.sock version
//! ... pull IMAGE [--namespace NS] [--pod NAME]
//! ... inspecti IMAGE | images | rmi IMAGE
//! ... run IMAGE [--namespace NS] [CMD...]   host-network pod + container, exec CMD, clean up
//! ```
//! Errors are printed the way kubelet reports them in pod events: `Failed to pull image
//! "IMAGE": rpc error: code = CODE desc = MESSAGE`; the exit code is 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as k8s;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

fn channel(socket: &Path) -> Channel {
    let socket = socket.to_owned();
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
    }))
}

fn spec(image: &str) -> Option<k8s::ImageSpec> {
    Some(k8s::ImageSpec { image: image.into(), ..Default::default() })
}

fn pod(namespace: &str, name: &str) -> k8s::PodSandboxConfig {
    let uid = format!("{name}-{}", std::process::id());
    let logs = std::env::temp_dir().join(format!("crictl-{uid}"));
    let _ = std::fs::create_dir_all(&logs);
    k8s::PodSandboxConfig {
        metadata: Some(k8s::PodSandboxMetadata { name: name.into(), uid, namespace: namespace.into(), attempt: 0 }),
        log_directory: logs.to_string_lossy().into_owned(),
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

fn rpc_error(what: &str, e: tonic::Status) -> String {
    format!("{what}: rpc error: code = {:?} desc = {}", e.code(), e.message())
}

fn opt(args: &mut Vec<String>, name: &str, default: &str) -> String {
    match args.iter().position(|a| a == name) {
        Some(i) if i + 1 < args.len() => {
            let v = args.remove(i + 1);
            args.remove(i);
            v
        }
        _ => default.to_string(),
    }
}

async fn run(socket: PathBuf, mut args: Vec<String>) -> Result<(), String> {
    let ch = channel(&socket);
    let mut images = ImageServiceClient::new(ch.clone());
    let mut runtime = RuntimeServiceClient::new(ch);
    let namespace = opt(&mut args, "--namespace", "default");
    let pod_name = opt(&mut args, "--pod", "demo");
    let cmd = if args.is_empty() { String::new() } else { args.remove(0) };
    match (cmd.as_str(), args.as_slice()) {
        ("version", []) => {
            let v = runtime.version(k8s::VersionRequest { version: "v1".into() }).await.map_err(|e| rpc_error("Version", e))?.into_inner();
            println!("RuntimeName:  {}\nRuntimeVersion:  {}\nRuntimeApiVersion:  {}", v.runtime_name, v.runtime_version, v.runtime_api_version);
        }
        ("pull", [image]) => {
            let req = k8s::PullImageRequest { image: spec(image), auth: None, sandbox_config: Some(pod(&namespace, &pod_name)) };
            let r = images.pull_image(req).await.map_err(|e| rpc_error(&format!("Failed to pull image \"{image}\""), e))?;
            println!("Image is up to date for {}", r.into_inner().image_ref);
        }
        ("inspecti", [image]) => {
            let r = images.image_status(k8s::ImageStatusRequest { image: spec(image), verbose: false }).await.map_err(|e| rpc_error("ImageStatus", e))?;
            match r.into_inner().image {
                Some(i) => println!("id: {}\nrepoTags: {:?}\nrepoDigests: {:?}\nsize: {}", i.id, i.repo_tags, i.repo_digests, i.size),
                None => return Err(format!("no such image {image} present")),
            }
        }
        ("images", []) => {
            let r = images.list_images(k8s::ListImagesRequest::default()).await.map_err(|e| rpc_error("ListImages", e))?;
            println!("{:<60} {:<20}", "IMAGE", "IMAGE ID");
            for i in r.into_inner().images {
                let name = i.repo_tags.first().or(i.repo_digests.first()).cloned().unwrap_or_default();
                println!("{:<60} {:<20}", name, &i.id[..i.id.len().min(19)]);
            }
        }
        ("rmi", [image]) => {
            images.remove_image(k8s::RemoveImageRequest { image: spec(image) }).await.map_err(|e| rpc_error("RemoveImage", e))?;
            println!("Deleted: {image}");
        }
        ("run", [image, exec @ ..]) => {
            let cfg = pod(&namespace, &pod_name);
            let sandbox = runtime
                .run_pod_sandbox(k8s::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
                .await
                .map_err(|e| rpc_error("RunPodSandbox", e))?
                .into_inner()
                .pod_sandbox_id;
            let result = run_container(&mut runtime, &sandbox, cfg, image, exec).await;
            let _ = runtime.stop_pod_sandbox(k8s::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() }).await;
            let _ = runtime.remove_pod_sandbox(k8s::RemovePodSandboxRequest { pod_sandbox_id: sandbox }).await;
            result?;
        }
        _ => return Err("usage: crictl -r SOCKET (version | pull IMAGE | inspecti IMAGE | images | rmi IMAGE | run IMAGE [CMD...]) [--namespace NS] [--pod NAME]".into()),
    }
    Ok(())
}

async fn run_container(
    runtime: &mut RuntimeServiceClient<Channel>,
    sandbox: &str,
    cfg: k8s::PodSandboxConfig,
    image: &str,
    exec: &[String],
) -> Result<(), String> {
    let config = k8s::ContainerConfig {
        metadata: Some(k8s::ContainerMetadata { name: "app".into(), attempt: 0 }),
        image: spec(image),
        log_path: "app.log".into(),
        ..Default::default()
    };
    let id = runtime
        .create_container(k8s::CreateContainerRequest { pod_sandbox_id: sandbox.into(), config: Some(config), sandbox_config: Some(cfg) })
        .await
        .map_err(|e| rpc_error("CreateContainer", e))?
        .into_inner()
        .container_id;
    runtime.start_container(k8s::StartContainerRequest { container_id: id.clone() }).await.map_err(|e| rpc_error("StartContainer", e))?;
    println!("container {} running", &id[..12.min(id.len())]);
    if !exec.is_empty() {
        let r = runtime
            .exec_sync(k8s::ExecSyncRequest { container_id: id.clone(), cmd: exec.to_vec(), timeout: 10 })
            .await
            .map_err(|e| rpc_error("ExecSync", e))?
            .into_inner();
        print!("{}", String::from_utf8_lossy(&r.stdout));
    }
    let _ = runtime.stop_container(k8s::StopContainerRequest { container_id: id.clone(), timeout: 5 }).await;
    let _ = runtime.remove_container(k8s::RemoveContainerRequest { container_id: id }).await;
    Ok(())
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let socket = PathBuf::from(opt(&mut args, "-r", "/run/pullgate/pullgate.sock"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match rt.block_on(run(socket, args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
