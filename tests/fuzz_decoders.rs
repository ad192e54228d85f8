//! Fuzz tests, on stable Rust, of every decoder that reads input from outside pullgate: gRPC
//! framing and the CRI subset (requests from kubelet or any socket client, responses from
//! containerd) with the in-place edit of PullImage, hosts.toml, the configuration and policy
//! YAML, OCI manifests, indexes and referrer lists served by a mirror, Sigstore bundles, cosign
//! legacy signature layers and Rekor SET annotations, TUF metadata and trusted roots.
//!
//! Each test mutates real seed inputs (the repository's own test material, and
//! `../shared/vectors` and `../shared/tuf` when present: seeds from an absent folder are skipped
//! with a message) with the seeded generator of `tests/support/fuzz.rs`, and asserts for every
//! case: no panic (on the test thread or in any task the case runs), allocation bounded by the
//! size of the input (a length field claiming gigabytes must not be believed), and where a
//! decoder accepts a mutated input, that the answer is still right (an edit keeps every other
//! byte; a resolved digest is the digest of the bytes served; a TUF mirror never yields another
//! trusted root).
//!
//! ```text
//! cargo test --release --locked --test fuzz_decoders          # bounded run (CI), seconds
//! PULLGATE_FUZZ_CASES=1000000 cargo test --release --locked --test fuzz_decoders  # longer
//! PULLGATE_FUZZ_SEED=0x1234 cargo test --release --locked --test fuzz_decoders   # other inputs
//! ```
//! `PULLGATE_FUZZ_CASES` (default 10000) is the number of cases of a cheap target; targets whose
//! cases cost more (signature checks, HTTP round trips to the fake registry, files) run that
//! number divided by their cost. `PULLGATE_FUZZ_SEED` (default fixed, so CI is reproducible)
//! picks other inputs. A failure prints the seed, the case and the command that replays it, and
//! keeps the input under `target/fuzz-failures/`.

#[path = "support/fuzz.rs"]
mod fuzz;
mod support;
#[path = "support/tuf/mod.rs"]
mod tuf;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use fuzz::{bytes_of, lines_of, mutate_bytes, mutate_json_bytes, run, varint, Budget, Rng, JSON_DICT};
use k8s_cri::v1 as k8s;
use prost::Message;
use pullgate::cri::{api, grpc, methods, wire};
use pullgate::verify::{parse_bundle, ArtifactRef, ExpectedSigner, LegacySignature, PublicKey, RekorSetBundle, TrustMaterial};
use serde_json::{json, Value};
use support::registry::fake::{FakeRegistry, Fault};
use support::sigstore::{image_digest, Stack};

#[global_allocator]
static ALLOC: fuzz::CountingAlloc = fuzz::CountingAlloc;

/// Budgets: a decoder may use some multiple of its input plus a fixed overhead; a length taken
/// from the input and believed shows up as far more.
const SMALL: Budget = Budget::new(32, 1 << 20);
const JSON: Budget = Budget::new(128, 4 << 20);
/// TOML and YAML parsers build a tree with a hundred bytes or more per item of a few bytes
/// (`a=1` lines: about 80 times the input, measured).
const TEXT: Budget = Budget::new(256, 4 << 20);
/// The configuration, as TEXT, plus regexes in policies, which compile under the regex crate's
/// own size limit (10 MiB by default).
const POLICY: Budget = Budget::new(256, 40 << 20);
/// HTTP client and server of a whole image inspection, connection pools included.
const NETWORK: Budget = Budget::new(64, 16 << 20);

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The harness itself: a decoder that believes a length written in its input is caught (so the
/// allocation assertion of every target below means something), and so is a panic.
#[test]
fn harness_catches_believed_lengths_and_panics() {
    fn naive(input: &[u8]) -> Vec<u8> {
        let claimed = u32::from_be_bytes(input[1..5].try_into().unwrap()) as usize;
        let mut out = Vec::with_capacity(claimed);
        out.extend_from_slice(&input[5..]);
        out
    }
    let believed = std::panic::catch_unwind(|| {
        run(
            "harness_believed_length",
            1,
            SMALL,
            |_| [&[0u8][..], &(64u32 << 20).to_be_bytes(), b"abc"].concat(),
            |input| Ok(if naive(input).is_empty() { "empty" } else { "decoded" }),
        )
    });
    let message = believed.expect_err("a 64 MiB allocation for an 8-byte input must fail the budget");
    let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("over the budget"), "{message}");
    let panicked = std::panic::catch_unwind(|| run("harness_panic", 1, SMALL, |_| vec![1], |input| Ok(["x"][input[0] as usize])));
    let message = panicked.expect_err("a panicking decoder must fail").downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("panicked"), "{message}");
}

// --- gRPC framing and the CRI subset ------------------------------------------------------------

fn sandbox_config() -> k8s::PodSandboxConfig {
    k8s::PodSandboxConfig {
        metadata: Some(k8s::PodSandboxMetadata { name: "web-0".into(), uid: "8a1c-77".into(), namespace: "team".into(), attempt: 1 }),
        hostname: "web-0".into(),
        log_directory: "/var/log/pods/team_web-0_8a1c-77".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        annotations: [("kubernetes.io/config.source".to_string(), "api".to_string())].into(),
        linux: Some(k8s::LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/burstable/pod8a1c".into(),
            security_context: Some(k8s::LinuxSandboxSecurityContext {
                namespace_options: Some(k8s::NamespaceOption { network: k8s::NamespaceMode::Node as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn spec(image: &str) -> Option<k8s::ImageSpec> {
    Some(k8s::ImageSpec {
        image: image.into(),
        annotations: [("io.kubernetes.cri.pod".to_string(), "web-0".to_string())].into(),
        user_specified_image: "registry.internal/team/app:1".into(),
        runtime_handler: "runc".into(),
    })
}

/// Real CRI messages as kubelet sends them (the full k8s CRI API, so they carry fields pullgate's
/// subset does not know), and answers as containerd sends them; (method path, message bytes).
fn cri_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let pull = k8s::PullImageRequest {
        image: spec("registry.internal/team/app:1"),
        auth: Some(k8s::AuthConfig {
            username: "robot".into(),
            password: "s3cret".into(),
            server_address: "registry.internal".into(),
            ..Default::default()
        }),
        sandbox_config: Some(sandbox_config()),
    };
    let create = k8s::CreateContainerRequest {
        pod_sandbox_id: "4f5c0d".into(),
        config: Some(k8s::ContainerConfig {
            metadata: Some(k8s::ContainerMetadata { name: "app".into(), attempt: 0 }),
            image: spec("sha256:5f481572d088dc4023afb35fced9530ced3d9b03bf7299c6f492163cb9f0452e"),
            command: vec!["/hello".into()],
            args: vec!["sleep".into(), "3600".into()],
            working_dir: "/".into(),
            envs: vec![k8s::KeyValue { key: "A".into(), value: "b".into() }],
            mounts: vec![
                k8s::Mount {
                    container_path: "/data".into(),
                    host_path: String::new(),
                    image: spec("registry.internal/team/data:1"),
                    ..Default::default()
                },
                k8s::Mount {
                    container_path: "/etc/hosts".into(),
                    host_path: "/var/lib/kubelet/pods/x/etc-hosts".into(),
                    ..Default::default()
                },
            ],
            labels: [("io.kubernetes.container.name".to_string(), "app".to_string())].into(),
            log_path: "app/0.log".into(),
            ..Default::default()
        }),
        sandbox_config: Some(sandbox_config()),
    };
    let sandbox = k8s::RunPodSandboxRequest { config: Some(sandbox_config()), runtime_handler: "runc".into() };
    let status = k8s::ImageStatusRequest { image: spec("registry.internal/team/app:1"), verbose: true };
    let image = k8s::Image {
        id: "sha256:7a0c".into(),
        repo_tags: vec!["registry.internal/team/app:1".into()],
        repo_digests: vec!["registry.internal/team/app@sha256:5f48".into()],
        size: 4_096_000,
        uid: Some(k8s::Int64Value { value: 0 }),
        spec: spec("registry.internal/team/app:1"),
        pinned: true,
        ..Default::default()
    };
    let status_resp = k8s::ImageStatusResponse {
        image: Some(image.clone()),
        info: [("info".to_string(), "{\"chainID\":\"sha256:1\"}".to_string())].into(),
    };
    let list_resp = k8s::ListImagesResponse { images: vec![image.clone(), image] };
    let runtime_status = k8s::StatusResponse {
        status: Some(k8s::RuntimeStatus {
            conditions: vec![k8s::RuntimeCondition { r#type: "RuntimeReady".into(), status: true, ..Default::default() }],
        }),
        info: [("config".to_string(), "{\"sandboxImage\":\"registry.internal/pause:3.9\",\"containerd\":{}}".to_string())].into(),
        ..Default::default()
    };
    let pull_resp = k8s::PullImageResponse { image_ref: "sha256:7a0c".into() };
    vec![
        ("/runtime.v1.ImageService/PullImage", pull.encode_to_vec()),
        ("/runtime.v1.RuntimeService/CreateContainer", create.encode_to_vec()),
        ("/runtime.v1.RuntimeService/RunPodSandbox", sandbox.encode_to_vec()),
        ("/runtime.v1.ImageService/ImageStatus", status.encode_to_vec()),
        ("/runtime.v1.ImageService/ImageStatus#response", status_resp.encode_to_vec()),
        ("/runtime.v1.ImageService/ListImages#response", list_resp.encode_to_vec()),
        ("/runtime.v1.RuntimeService/Status#response", runtime_status.encode_to_vec()),
        ("/runtime.v1.ImageService/PullImage#response", pull_resp.encode_to_vec()),
    ]
}

/// A message with protobuf-level edits: byte mutations, plus lengths and keys that lie.
fn mutate_message(rng: &mut Rng, msg: &[u8], all: &[Vec<u8>]) -> Vec<u8> {
    let mut out = mutate_bytes(rng, msg, all, &[b"\x0a", b"\x12", b"\x1a", b"\x0a\xff\xff\xff\xff\x0f", b"\x0b", b"\x0c", b"\x0f"]);
    if rng.chance(1, 4) {
        // A length-delimited field 1 claiming far more than there is.
        let mut lie = vec![0x0a];
        lie.extend(varint(*rng.pick(&[u64::from(u32::MAX), 1 << 40, u64::MAX >> 1, 64 << 20])));
        let at = rng.below(out.len() + 1);
        out.splice(at..at, lie);
    }
    out
}

/// gRPC message framing: any body gives one message of exactly the length its header gives, or
/// an error; a header claiming up to 4 GiB never makes pullgate allocate it.
#[test]
fn grpc_unary_framing() {
    let seeds: Vec<Vec<u8>> = cri_seeds().into_iter().map(|(_, m)| grpc::frame(&m).to_vec()).collect();
    run(
        "grpc_unary_framing",
        1,
        SMALL,
        |rng| {
            let seed = rng.pick(&seeds).clone();
            match rng.below(4) {
                0 => {
                    // A header that lies about the length (up to 4 GiB), compressed flag random.
                    let mut out = seed;
                    let len = *rng.pick(&[0u32, 1, 4, 0x7fff_ffff, 0xffff_ffff, 16 << 20, (out.len() as u32).wrapping_sub(4)]);
                    out[0] = if rng.chance(1, 4) { rng.next() as u8 } else { 0 };
                    out[1..5].copy_from_slice(&len.to_be_bytes());
                    out.truncate(rng.below(out.len() + 1).max(rng.below(6)));
                    out
                }
                1 => {
                    // Several frames in one body.
                    let n = 2 + rng.below(3);
                    (0..n).flat_map(|_| rng.pick(&seeds).clone()).collect()
                }
                _ => mutate_bytes(rng, &seed, &seeds, &[b"\0\0\0\0\0", b"\xff\xff\xff\xff", b"\x01"]),
            }
        },
        |input| {
            let body = Bytes::copy_from_slice(input);
            Ok(match grpc::unary_message(&body) {
                Ok(msg) => {
                    let claimed = u32::from_be_bytes(input[1..5].try_into().unwrap()) as usize;
                    if input[0] != 0 || msg.len() != claimed || input.len() != 5 + claimed || msg[..] != input[5..] {
                        return Err(format!(
                            "accepted a body that is not one uncompressed frame: {} bytes, message {}",
                            input.len(),
                            msg.len()
                        ));
                    }
                    if grpc::frame(&msg)[..] != input[..] {
                        return Err("re-framing the message does not give the body back".into());
                    }
                    "one message"
                }
                Err(e) => {
                    if input.len() >= 5 && input[0] == 0 && u32::from_be_bytes(input[1..5].try_into().unwrap()) as usize == input.len() - 5
                    {
                        return Err("refused a well-formed uncompressed frame".into());
                    }
                    match e {
                        grpc::FrameError::Malformed(_) => "malformed",
                        grpc::FrameError::Compressed => "compressed",
                        grpc::FrameError::NotUnary(_) => "not unary",
                    }
                }
            })
        },
    );
}

/// `grpc-message` percent-encoding (refusals pullgate writes, and containerd's messages it
/// reads): decoding any bytes never panics, and any text round-trips through the encoding as
/// one header-safe line.
#[test]
fn grpc_status_message_codec() {
    let seeds: Vec<Vec<u8>> = vec![
        b"SignatureValidationFailed: image registry.internal/team/app:1 denied by policy team: 100% wrong".to_vec(),
        "über\nline two\r\t%zz%4".as_bytes().to_vec(),
        b"%E2%9C%93 ok %0A%25%".to_vec(),
    ];
    run(
        "grpc_status_message_codec",
        1,
        SMALL,
        bytes_of(&seeds, &[b"%", b"%0", b"%ZZ", b"%FF", b"%C3%A9", "\u{2028}".as_bytes()]),
        |input| {
            let decoded = grpc::decode_message(input);
            let text = String::from_utf8_lossy(input);
            let encoded = grpc::encode_message(&text);
            if !encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
                return Err(format!("encoded message is not printable ASCII: {encoded:?}"));
            }
            if http::HeaderValue::from_str(&encoded).is_err() {
                return Err("encoded message is not a valid header value".into());
            }
            if grpc::decode_message(encoded.as_bytes()) != text {
                return Err(format!("round trip changed {text:?}"));
            }
            Ok(if decoded.len() < input.len() { "percent-decoded" } else { "verbatim" })
        },
    );
}

/// Routing of gRPC paths (any `:path` a client sends): never panics, and a path that routes to
/// a decoded surface is exactly a CRI method of the table.
#[test]
fn cri_method_routing() {
    let seeds: Vec<Vec<u8>> = [
        "/runtime.v1.ImageService/PullImage",
        "/runtime.v1alpha2.RuntimeService/CreateContainer",
        "/runtime.v1.RuntimeService/RunPodSandbox",
        "/containerd.services.images.v1.Images/Create",
        "/grpc.health.v1.Health/Check",
        "/runtime.v1.ImageService/FuturePull",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    run("cri_method_routing", 1, SMALL, bytes_of(&seeds, &[b"/", b"//", b".", b"runtime.v1", b"ImageService", b"\xc3\xa9"]), |input| {
        let path = String::from_utf8_lossy(input);
        let route = methods::route(&path);
        if let Some(surface) = methods::decoded_surface(&path) {
            let methods::Route::Known { method, .. } = route else {
                return Err(format!("{path:?} decoded as {surface:?} but routed as {route:?}"));
            };
            if !path.ends_with(&format!("/{}", method.name)) {
                return Err(format!("{path:?} routed to method {}", method.name));
            }
        }
        let _ = methods::allowable_image_method(&path);
        Ok(match route {
            methods::Route::Known { .. } => "known method",
            methods::Route::UnknownImageMethod { .. } => "unknown image method",
            methods::Route::UnknownRuntimeMethod { .. } => "unknown runtime method",
            methods::Route::NotCri => "not CRI",
        })
    });
}

/// The CRI subset pullgate decodes (requests at every intercepted surface, containerd's answers
/// it reads back): any bytes decode or fail, within bounds; lengths that lie are not believed.
#[test]
fn cri_subset_decode() {
    let seeds = cri_seeds();
    let all: Vec<Vec<u8>> = seeds.iter().map(|(_, m)| m.clone()).collect();
    run(
        "cri_subset_decode",
        1,
        SMALL,
        |rng| {
            let i = rng.below(seeds.len());
            let mut out = vec![i as u8];
            out.extend(mutate_message(rng, &seeds[i].1, &all));
            out
        },
        |input| {
            let (which, msg) = input.split_first().unwrap();
            let msg = Bytes::copy_from_slice(msg);
            // Every decoder on every input: a surface may be sent any message.
            let own = [
                api::PullImageRequest::decode(msg.clone()).is_ok(),
                api::CreateContainerRequest::decode(msg.clone()).is_ok(),
                api::RunPodSandboxRequest::decode(msg.clone()).is_ok(),
                api::ImageStatusRequest::decode(msg.clone()).is_ok(),
                api::ImageStatusResponse::decode(msg.clone()).is_ok(),
                api::ListImagesResponse::decode(msg.clone()).is_ok(),
                match api::StatusResponse::decode(msg.clone()) {
                    Ok(status) => {
                        let _ = pullgate::cri::sandbox::reported_sandbox_image(&status.info);
                        true
                    }
                    Err(_) => false,
                },
                api::PullImageResponse::decode(msg.clone()).is_ok(),
            ];
            let _ = api::VersionResponse::decode(msg);
            Ok(if own.get(*which as usize).copied().unwrap_or(false) { "decoded" } else { "refused" })
        },
    );
}

/// The in-place edit of PullImage (`image.image` set to the verified digest): on any message it
/// either refuses or gives a message that decodes exactly like the original (under the full
/// k8s CRI API too, so fields pullgate does not know survive) with only the image changed.
#[test]
fn cri_pull_image_in_place_edit() {
    let seeds = cri_seeds();
    let pulls: Vec<Vec<u8>> = seeds.iter().filter(|(p, _)| p.ends_with("/PullImage")).map(|(_, m)| m.clone()).collect();
    let all: Vec<Vec<u8>> = seeds.iter().map(|(_, m)| m.clone()).collect();
    const PINNED: &str = "registry.internal/team/app@sha256:5f481572d088dc4023afb35fced9530ced3d9b03bf7299c6f492163cb9f0452e";
    run(
        "cri_pull_image_in_place_edit",
        1,
        SMALL,
        |rng| {
            let seed = rng.pick(&pulls).clone();
            if rng.chance(1, 3) {
                // Structural: extra occurrences of field 1, unknown fields around it.
                let mut out = seed.clone();
                let extra = k8s::PullImageRequest { image: spec(&"x".repeat(rng.size(300))), ..Default::default() }.encode_to_vec();
                let at = if rng.chance(1, 2) { 0 } else { out.len() };
                out.splice(at..at, extra);
                out.extend([0xa0, 0x06, rng.next() as u8 & 0x7f]);
                out
            } else {
                mutate_message(rng, &seed, &all)
            }
        },
        |input| {
            let edited = match wire::set_string_field(input, &[1, 1], PINNED.as_bytes()) {
                Ok(e) => e,
                Err(_) => return Ok("edit refused"),
            };
            // Each occurrence of the field (at least 2 bytes each) grows by at most the new value
            // and two longer length prefixes.
            if edited.len() > input.len() + (input.len() / 2 + 1) * (PINNED.len() + 20) {
                return Err(format!("edit grew {} bytes into {}", input.len(), edited.len()));
            }
            let check =
                |original: Result<k8s::PullImageRequest, _>, after: Result<k8s::PullImageRequest, _>| -> Result<&'static str, String> {
                    match (original, after) {
                        (Ok(mut o), Ok(a)) => {
                            if let Some(spec) = o.image.as_mut() {
                                spec.image = PINNED.into();
                            }
                            if o != a {
                                return Err(format!("edit changed more than the image:\n  want {o:?}\n  got  {a:?}"));
                            }
                            Ok("edited, all else kept")
                        }
                        (Ok(_), Err(e)) => Err(format!("the original decodes but the edited message does not: {e}")),
                        _ => Ok("edited, original undecodable"),
                    }
                };
            let label = check(k8s::PullImageRequest::decode(input), k8s::PullImageRequest::decode(&edited[..]))?;
            if let (Ok(_), Ok(a)) = (api::PullImageRequest::decode(input), api::PullImageRequest::decode(edited.clone())) {
                if a.image.map(|i| i.image).as_deref() != Some(PINNED) {
                    return Err("edited message does not name the pinned reference".into());
                }
            }
            Ok(label)
        },
    );
}

// --- hosts.toml, configuration and policy ---------------------------------------------------------

const HOSTS_SEEDS: &[&str] = &[
    "server = \"https://registry.internal\"\n\n[host.\"https://mirror.internal:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"/etc/containerd/certs.d/mirror.crt\"\n  skip_verify = false\n  dial_timeout = \"2s\"\n  [host.\"https://mirror.internal:5000\".header]\n    x-custom = [\"a\", \"b\"]\n",
    "server = \"http://127.0.0.1:5000\"\n[host]\n",
    "[host.\"http://10.0.0.5/v2/proxy\"]\n  capabilities = [\"pull\"]\n  override_path = true\n  client = [[\"/etc/certs/client.cert\", \"/etc/certs/client.key\"]]\n[host.\"https://backup.internal\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  client = \"/etc/certs/one.pem\"\n  header = { authorization = \"Basic eDp5\" }\n",
    "server = \"https://[::1]:5443\"\nca = [\"a.crt\", \"b.crt\"]\nskip_verify = true\n",
];

const TEXT_DICT: &[&str] = &[
    "\"\"",
    "[]",
    "{}",
    "true",
    "null",
    "~",
    "-1",
    "99999999999999999999",
    "1e999",
    "\"http://\"",
    "\"https://a@b\"",
    "\"h:99999\"",
    "[[\"a\"]]",
    "&a [1]",
    "*a",
    "!!binary AAAA",
    "'",
    "\"\\u0000\"",
    "\t",
    "---",
    "...",
    "? complex",
    "[host.\"x\"]",
    "[[host]]",
    "= 1",
    "\"\\uD800\"",
];

/// hosts.toml (containerd's registry host configuration, written by node tooling): any text
/// parses or fails with an error, and the endpoints of a parsed file are well-formed.
#[test]
fn hosts_toml() {
    let seeds: Vec<Vec<u8>> = HOSTS_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect();
    let base = Path::new("/etc/containerd/certs.d/registry.internal");
    run("hosts_toml", 1, TEXT, lines_of(&seeds, TEXT_DICT), |input| {
        let text = String::from_utf8_lossy(input);
        Ok(match pullgate::registry::hosts::parse_hosts_toml(&text, base, &base.join("hosts.toml")) {
            Ok(_) => "parsed",
            Err(pullgate::registry::HostsError::Toml { .. }) => "not TOML",
            Err(_) => "invalid",
        })
    });
}

/// hosts.toml read from a hosts directory the way a pull resolves a registry: mutated files
/// (and their certificates' names) give endpoints or an error naming the file.
#[test]
fn hosts_dir_resolution() {
    let seeds: Vec<Vec<u8>> = HOSTS_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let dir = HostsDirFixture::new(tmp.path());
    run("hosts_dir_resolution", 5, TEXT, lines_of(&seeds, TEXT_DICT), |input| {
        std::fs::write(dir.file(), input).unwrap();
        let Ok(res) = dir.hosts.resolve("registry.internal") else { return Ok("refused") };
        for ep in &res.endpoints {
            if ep.host_name().is_empty() || !ep.url().contains("://") {
                return Err(format!("resolved to a malformed endpoint {:?}", ep.url()));
            }
        }
        Ok("endpoints")
    });
}

struct HostsDirFixture {
    root: PathBuf,
    hosts: pullgate::registry::HostsDir,
}

impl HostsDirFixture {
    fn new(root: &Path) -> HostsDirFixture {
        std::fs::create_dir_all(root.join("registry.internal")).unwrap();
        HostsDirFixture { root: root.to_owned(), hosts: pullgate::registry::HostsDir::new(vec![root.to_owned()]) }
    }

    fn file(&self) -> PathBuf {
        self.root.join("registry.internal/hosts.toml")
    }
}

fn config_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![repo_file("packaging/config.yaml").into_bytes(), repo_file("packaging/policy-example.yaml").into_bytes()];
    seeds.push(
        br#"listen: /run/pullgate/pullgate.sock
upstream: /run/containerd/containerd.sock
log: {format: json, level: "info,pullgate=debug"}
registry:
  hosts_dir: /etc/containerd/certs.d:/etc/docker/certs.d
  max_manifest_bytes: 4MiB
  aliases: {"registry.internal": ["registry.internal:443", "10.0.0.5"]}
  credentials: {"registry.internal": {username: robot, password: x}}
cache: {capacity: 1024}
cri: {allow_image_methods: ["runtime.v1.ImageService/FutureList"], sandbox_image: "registry.internal/pause@sha256:5f481572d088dc4023afb35fced9530ced3d9b03bf7299c6f492163cb9f0452e"}
policy:
  unmatched: deny
  policies:
    - name: team
      images: ["registry.internal/team/**", "*.internal/{a,b}/[a-z]*"]
      namespaces: ["team-*"]
      mode: enforce
      multi_arch: either
      authorities:
        - name: keyless
          keyless:
            identities:
              - issuer_regexp: ^https://token\.actions\.githubusercontent\.com$
                subject_regexp: ^https://github\.com/org/(app|web)/.+@refs/tags/v[0-9]+(\.[0-9]+){2}$
                extensions: {github-workflow-repository: org/app, 1.3.6.1.4.1.57264.1.12: x}
"#
        .to_vec(),
    );
    // Alias expansion (a "billion laughs" document): must be refused or bounded, not expanded.
    let mut bomb = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (i, prev) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().enumerate() {
        let name = ["b", "c", "d", "e", "f", "g", "h", "i"][i];
        bomb.push_str(&format!("{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    seeds.push(bomb.clone().into_bytes());
    seeds.push(format!("policy:\n  policies:\n    - name: x\n      images: *i\n{bomb}").into_bytes());
    seeds
}

/// The configuration file (YAML, with its policy): any text is a valid configuration or one
/// error naming the key; alias bombs and deep nesting stay bounded.
#[test]
fn config_yaml() {
    let seeds = config_seeds();
    for seed in seeds.iter().filter(|s| !String::from_utf8_lossy(s).contains("&a")) {
        pullgate::config::Config::parse(std::str::from_utf8(seed).unwrap(), Path::new("seed.yaml"))
            .unwrap_or_else(|e| panic!("seed configuration is invalid: {e}"));
    }
    run("config_yaml", 2, POLICY, lines_of(&seeds, TEXT_DICT), |input| {
        let text = String::from_utf8_lossy(input);
        match pullgate::config::Config::parse(&text, Path::new("/etc/pullgate/config.yaml")) {
            Ok(c) if c.policy.is_some() => Ok("valid, with a policy"),
            Ok(_) => Ok("valid"),
            Err(e) => {
                let line = e.to_string();
                if line.contains('\n') {
                    return Err(format!("configuration error is not one line: {line:?}"));
                }
                Ok(if e.key.is_some() { "refused, naming a key" } else { "refused" })
            }
        }
    });
}

/// Policies (YAML, then compiled: image and namespace globs, identity regexes, keys), and the
/// compiled policy matching any image name and namespace.
#[test]
fn policy_yaml() {
    let seeds: Vec<Vec<u8>> = config_seeds()
        .into_iter()
        .filter_map(|s| {
            let text = String::from_utf8(s).ok()?;
            let at = text.find("\npolicy:")?;
            // The policy section, unindented.
            let body: Vec<String> = text[at + 9..]
                .lines()
                .take_while(|l| l.is_empty() || l.starts_with(' '))
                .map(|l| l.strip_prefix("  ").unwrap_or(l).to_string())
                .collect();
            Some(body.join("\n").into_bytes())
        })
        .collect();
    assert!(!seeds.is_empty());
    for seed in &seeds {
        let cfg: pullgate::policy::PolicyConfig =
            serde_saphyr::from_str(std::str::from_utf8(seed).unwrap()).unwrap_or_else(|e| panic!("seed policy does not parse: {e}"));
        cfg.compile(0).unwrap_or_else(|e| panic!("seed policy does not compile: {e:?}"));
    }
    let names = [
        "registry.internal/team/app:1",
        "registry.internal/platform/x@sha256:00",
        "docker.io/library/nginx:latest",
        "",
        "registry.internal//",
        "*",
    ];
    run("policy_yaml", 2, POLICY, lines_of(&seeds, TEXT_DICT), |input| {
        let text = String::from_utf8_lossy(input);
        let Ok(cfg) = serde_saphyr::from_str::<pullgate::policy::PolicyConfig>(&text) else { return Ok("not a policy") };
        let _ = cfg.warnings();
        let Ok(set) = cfg.compile(1) else { return Ok("does not compile") };
        for n in names {
            let _ = set.applicable(&[n.to_string(), text.chars().take(64).collect()], Some("team-a"));
            let _ = set.exemption(&[n.to_string()]);
        }
        Ok("compiled and matched")
    });
}

/// Image references and digests (from kubelet, from pod specs, from mirrors' answers).
#[test]
fn image_references() {
    let seeds: Vec<Vec<u8>> = [
        "registry.internal/team/app:1",
        "registry.internal:5000/team/app@sha256:5f481572d088dc4023afb35fced9530ced3d9b03bf7299c6f492163cb9f0452e",
        "nginx",
        "docker.io/library/nginx:1.27@sha256:5f481572d088dc4023afb35fced9530ced3d9b03bf7299c6f492163cb9f0452e",
        "[::1]:5000/a/b/c:tag",
        "sha512:5f481572d088dc4023afb35fced9530ced3d9b03bf7299c6f492163cb9f0452e5f481572d088dc4023afb35fced9530ced3d9b03bf7299c6f492163cb9f0452e",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    run(
        "image_references",
        1,
        SMALL,
        bytes_of(&seeds, &[b"/", b":", b"@", b"sha256:", b"..", b"-", b"_", b"__", b"localhost", b"\xc3\xa9", b"A"]),
        |input| {
            let text = String::from_utf8_lossy(input);
            let mut label = "refused";
            if let Ok(r) = pullgate::registry::Reference::parse(&text) {
                label = "reference";
                // A parsed reference prints as something that parses to the same reference.
                let again = pullgate::registry::Reference::parse(&r.to_string()).map_err(|e| format!("{r} does not parse again: {e}"))?;
                if again != r {
                    return Err(format!("{text:?} -> {r} -> {again}"));
                }
                let _ = (r.name(), r.with_digest(pullgate::registry::Digest::sha256(b"x")));
            }
            if let Ok(d) = pullgate::registry::Digest::parse(&text) {
                label = "digest";
                let _ = (d.referrers_tag(), d.cosign_signature_tag(), d.file_stem(), d.matches(input));
            }
            if let Ok(d) = text.parse::<pullgate::verify::Digest>() {
                let _ = d.hex();
            }
            Ok(label)
        },
    );
}

/// `WWW-Authenticate` challenges from a mirror (RFC 7235 syntax with quoted strings).
#[test]
fn registry_auth_challenges() {
    let seeds: Vec<Vec<u8>> = [
        "Bearer realm=\"https://auth.internal/token\",service=\"registry.internal\",scope=\"repository:team/app:pull\"",
        "Basic realm=\"registry\", Bearer realm=\"https://a/t\"",
        "bearer REALM=\"x\\\"y\" , scope=\"a b\"",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    run("registry_auth_challenges", 1, SMALL, bytes_of(&seeds, &[b"\"", b"\\", b",", b"=", b" ", b"Bearer ", b"realm="]), |input| {
        let text = String::from_utf8_lossy(input);
        let values: Vec<&str> = text.split('\n').collect();
        Ok(if pullgate::registry::auth::parse_challenges(values).is_empty() { "no challenge" } else { "challenges" })
    });
}

// --- OCI manifests, indexes and referrer lists, from a (fake) mirror ------------------------------

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// A fake mirror, a hosts directory pointing `mirror.internal` at it, and a current-thread
/// runtime, so that everything a case runs (client and server) is on the test thread, where
/// panics and allocations are counted.
struct Mirror {
    rt: tokio::runtime::Runtime,
    fake: FakeRegistry,
    registry: pullgate::registry::Registry,
    _dir: tempfile::TempDir,
}

impl Mirror {
    fn start() -> Mirror {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let fake = rt.block_on(FakeRegistry::start(true));
        let dir = tempfile::tempdir().unwrap();
        support::registry::write_hosts(dir.path(), "mirror.internal", &format!("server = \"http://{}\"\n[host]\n", fake.host()));
        let config = pullgate::registry::RegistryConfig {
            hosts_dir: vec![dir.path().to_owned()],
            bundle_dir: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            discovery_timeout: Duration::from_secs(10),
            platform: pullgate::registry::Platform { os: "linux".into(), architecture: "amd64".into(), variant: None },
            ..Default::default()
        };
        let registry = pullgate::registry::Registry::new(config);
        Mirror { rt, fake, registry, _dir: dir }
    }

    fn inspect(&self, reference: &str) -> Result<pullgate::registry::Report, String> {
        self.rt.block_on(self.registry.inspect(reference, None)).map_err(|e| e.to_string())
    }
}

fn image_manifest(config: &pullgate::registry::Digest, config_len: usize, layers: usize) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_len},
        "layers": (0..layers).map(|i| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": pullgate::registry::Digest::sha256(format!("layer {i}").as_bytes()).to_string(), "size": 100 + i, "annotations": {"org.opencontainers.image.title": format!("l{i}")}})).collect::<Vec<_>>(),
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}
    })
}

/// Manifests and indexes a mirror serves at a tag: mutated ones resolve to the digest of the
/// bytes served (never another one) or fail with an error naming the image.
#[test]
fn oci_manifests_and_indexes() {
    let m = Mirror::start();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = m.fake.put_blob(config);
    let platform_manifest = serde_json::to_vec(&image_manifest(&config_digest, config.len(), 2)).unwrap();
    let platform_digest = m.fake.put_manifest("team/app", None, OCI_MANIFEST, &platform_manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": pullgate::registry::Digest::sha256(b"arm").to_string(), "size": 3, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": platform_digest.to_string(), "size": platform_manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": pullgate::registry::Digest::sha256(b"att").to_string(), "size": 9, "platform": {"os": "unknown", "architecture": "unknown"}, "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
        ]
    });
    let docker_list = {
        let mut v = index.clone();
        v["mediaType"] = json!("application/vnd.docker.distribution.manifest.list.v2+json");
        v
    };
    let docs = [image_manifest(&config_digest, config.len(), 3), index, docker_list];
    let raws: Vec<Vec<u8>> = docs.iter().map(|d| serde_json::to_vec_pretty(d).unwrap()).collect();
    let media_types = [OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json", "text/plain", ""];
    run(
        "oci_manifests_and_indexes",
        10,
        NETWORK,
        |rng| {
            // [media type][0: the tagged document mutated, 1: the platform manifest an index picks]
            let i = rng.below(docs.len());
            let through_index = rng.chance(1, 4);
            let mut out = vec![rng.below(media_types.len()) as u8, u8::from(through_index)];
            if through_index {
                out.extend(mutate_json_bytes(rng, &docs[0], &platform_manifest, &raws));
            } else {
                out.extend(mutate_json_bytes(rng, &docs[i], &raws[i], &raws));
            }
            out
        },
        |input| {
            let (mt, body) = (input[0] as usize, &input[2..]);
            let served = if input[1] == 1 {
                let d = m.fake.put_manifest("team/app", None, OCI_MANIFEST, body);
                let mut index = docs[1].clone();
                index["manifests"][1]["digest"] = json!(d.to_string());
                index["manifests"][1]["size"] = json!(body.len());
                m.fake.put_manifest("team/app", Some("1"), OCI_INDEX, &serde_json::to_vec(&index).unwrap())
            } else {
                m.fake.put_manifest("team/app", Some("1"), media_types[mt], body)
            };
            match m.inspect("mirror.internal/team/app:1") {
                Ok(report) if report.image.digest != served => {
                    Err(format!("resolved {} but the mirror served {served}", report.image.digest))
                }
                Ok(report) => {
                    let _ = report.to_string();
                    Ok(match (&report.image.platform, &report.image.config) {
                        (Some(_), _) => "index and platform manifest",
                        (None, Some(_)) => "manifest",
                        (None, None) => "index without the platform",
                    })
                }
                Err(e) if e.contains('\n') => Err(format!("error is not one line: {e:?}")),
                Err(_) => Ok("refused"),
            }
        },
    );
}

/// Referrer lists a mirror serves (the referrers API answer, the referrers tag schema index,
/// cosign's `.sig` manifest): discovery finds candidates or reports problems, never more than its
/// limits, and every candidate's bytes match its digest.
#[test]
fn oci_referrer_lists() {
    let m = Mirror::start();
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = m.fake.put_blob(config);
    let subject_bytes = serde_json::to_vec(&image_manifest(&config_digest, config.len(), 1)).unwrap();
    let subject = m.fake.put_manifest("team/app", Some("1"), OCI_MANIFEST, &subject_bytes);
    let bundle = br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","pullgateFuzz":true}"#;
    let bundle_digest = m.fake.put_blob(bundle);
    let empty = m.fake.put_blob(b"{}");
    let referrer = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": BUNDLE_V03,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": 2},
        "layers": [{"mediaType": BUNDLE_V03, "digest": bundle_digest.to_string(), "size": bundle.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": subject_bytes.len()},
        "annotations": {"dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1", "dev.sigstore.bundle.content": "dsse-envelope"}
    });
    let referrer_bytes = serde_json::to_vec(&referrer).unwrap();
    let referrer_digest = m.fake.put_manifest("team/app", None, OCI_MANIFEST, &referrer_bytes);
    let listing = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": referrer_digest.to_string(), "size": referrer_bytes.len(), "artifactType": BUNDLE_V03, "annotations": referrer["annotations"].clone()},
            {"mediaType": OCI_MANIFEST, "digest": pullgate::registry::Digest::sha256(b"slsa").to_string(), "size": 4, "artifactType": BUNDLE_V03, "annotations": {"dev.sigstore.bundle.predicateType": "https://slsa.dev/provenance/v1"}}
        ]
    });
    let payload = support::registry::push::simple_signing_payload("mirror.internal/team/app", &subject);
    let payload_digest = m.fake.put_blob(&payload);
    let sig_manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": empty.to_string(), "size": 2},
        "layers": [{"mediaType": SIMPLE_SIGNING, "digest": payload_digest.to_string(), "size": payload.len(), "annotations": {
            "dev.cosignproject.cosign/signature": "MEUCIQ==",
            "dev.sigstore.cosign/certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "dev.sigstore.cosign/bundle": "{\"SignedEntryTimestamp\":\"MEUC\",\"Payload\":{\"logIndex\":1}}"
        }}]
    });
    // What each listing is: 0 referrers API answer, 1 referrers tag index, 2 `.sig` manifest,
    // 3 the referrer manifest itself.
    let docs = [listing.clone(), listing, sig_manifest, referrer];
    let raws: Vec<Vec<u8>> = docs.iter().map(|d| serde_json::to_vec(d).unwrap()).collect();
    let referrers_path = format!("/referrers/{subject}");
    run(
        "oci_referrer_lists",
        10,
        NETWORK,
        |rng| {
            let i = rng.below(docs.len());
            let mut out = vec![i as u8];
            out.extend(mutate_json_bytes(rng, &docs[i], &raws[i], &raws));
            out
        },
        |input| {
            let (which, body) = input.split_first().unwrap();
            // Reset to the valid listings, then put the mutated one in its place.
            m.fake.clear_faults();
            m.fake.put_manifest("team/app", Some(&subject.referrers_tag()), OCI_INDEX, &raws[1]);
            m.fake.put_manifest("team/app", Some(&subject.cosign_signature_tag()), OCI_MANIFEST, &raws[2]);
            m.fake.put_manifest("team/app", None, OCI_MANIFEST, &raws[3]);
            match which {
                0 => m.fake.fault(&referrers_path, Fault::Body(Bytes::copy_from_slice(body))),
                1 => {
                    m.fake.put_manifest("team/app", Some(&subject.referrers_tag()), OCI_INDEX, body);
                }
                2 => {
                    m.fake.put_manifest("team/app", Some(&subject.cosign_signature_tag()), OCI_MANIFEST, body);
                }
                _ => {
                    // The referrer manifest itself, listed under its own digest.
                    let d = m.fake.put_manifest("team/app", None, OCI_MANIFEST, body);
                    let mut l: Value = serde_json::from_slice(&raws[0]).unwrap();
                    l["manifests"][0]["digest"] = json!(d.to_string());
                    l["manifests"][0]["size"] = json!(body.len());
                    m.fake.fault(&referrers_path, Fault::Body(Bytes::from(serde_json::to_vec(&l).unwrap())));
                }
            }
            let report = match m.inspect("mirror.internal/team/app:1") {
                Ok(r) => r,
                Err(e) => return Err(format!("the image itself did not change, yet: {e}")),
            };
            if report.image.digest != subject {
                return Err(format!("resolved {} instead of {subject}", report.image.digest));
            }
            if report.discovery.materials.len() > 3 * 64 {
                return Err(format!("{} candidates: over the discovery limits", report.discovery.materials.len()));
            }
            for mat in &report.discovery.materials {
                match mat {
                    pullgate::registry::Material::Bundle { json, digest, .. } if !digest.matches(json) => {
                        return Err(format!("bundle candidate does not hash to {digest}"))
                    }
                    pullgate::registry::Material::LegacySignature { payload, digest, .. } if !digest.matches(payload) => {
                        return Err(format!("legacy candidate does not hash to {digest}"))
                    }
                    _ => {}
                }
            }
            let _ = report.to_string();
            let problems = report.discovery.steps.iter().any(|s| {
                !s.problems.is_empty()
                    || !matches!(s.outcome, pullgate::registry::Outcome::Found { .. } | pullgate::registry::Outcome::NotFound)
            });
            Ok(match (report.discovery.materials.is_empty(), problems) {
                (false, false) => "candidates",
                (false, true) => "candidates, problems reported",
                (true, true) => "no candidates, problems reported",
                (true, false) => "no candidates",
            })
        },
    );
}

// --- Sigstore bundles, legacy signature layers, Rekor SETs -------------------------------------

/// A seed bundle with what it verifies against.
struct BundleSeed {
    json: Vec<u8>,
    doc: Value,
    trust: std::rc::Rc<TrustMaterial>,
    artifact: pullgate::verify::Digest,
    key: Option<PublicKey>,
}

fn bundle_seeds() -> Vec<BundleSeed> {
    let mut out = Vec::new();
    let mut stack = Stack::new();
    let trust = std::rc::Rc::new(stack.trust());
    let opts = stack.options();
    for n in 0..3 {
        let image = image_digest(n);
        let json = stack.sign_image_v3(&image, &opts).json().into_bytes();
        out.push(BundleSeed { doc: serde_json::from_slice(&json).unwrap(), json, trust: trust.clone(), artifact: image, key: None });
    }
    if let Some(dir) = fuzz::shared("vectors") {
        let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
        let production = std::rc::Rc::new(TrustMaterial::from_json(sigstore_verify::trust_root::SIGSTORE_PRODUCTION_TRUSTED_ROOT).unwrap());
        let mut roots: HashMap<String, std::rc::Rc<TrustMaterial>> = HashMap::new();
        for c in cases.iter().filter(|c| c["format"] == "sigstore-bundle") {
            let Some(bundle) = c["bundle"].as_str().and_then(|p| std::fs::read(dir.join(p)).ok()) else { continue };
            let Ok(doc) = serde_json::from_slice::<Value>(&bundle) else { continue };
            let trust = match c["trusted_root"].as_str() {
                Some(p) => match roots.get(p) {
                    Some(t) => t.clone(),
                    None => match std::fs::read_to_string(dir.join(p)).ok().and_then(|j| TrustMaterial::from_json(&j).ok()) {
                        Some(t) => roots.entry(p.to_string()).or_insert(std::rc::Rc::new(t)).clone(),
                        None => continue,
                    },
                },
                None => production.clone(),
            };
            let Some(artifact) = c["digest"].as_str().and_then(|d| d.parse().ok()) else { continue };
            let key =
                c["key"].as_str().and_then(|p| std::fs::read_to_string(dir.join(p)).ok()).and_then(|pem| PublicKey::from_pem(&pem).ok());
            out.push(BundleSeed { json: bundle, doc, trust, artifact, key });
        }
    }
    out
}

/// Sigstore bundles (from referrers or the bundle directory): parsed within the size limit, then
/// verified cryptographically against their trust root; mutated bundles never panic either step.
#[test]
fn sigstore_bundles() {
    let seeds = bundle_seeds();
    let raws: Vec<Vec<u8>> = seeds.iter().map(|s| s.json.clone()).collect();
    eprintln!("sigstore_bundles: {} seed bundles", seeds.len());
    run(
        "sigstore_bundles",
        4,
        JSON,
        |rng| {
            let i = rng.below(seeds.len());
            let mut out = vec![i as u8];
            out.extend(mutate_json_bytes(rng, &seeds[i].doc, &seeds[i].json, &raws));
            out
        },
        |input| {
            let (i, json) = input.split_first().unwrap();
            let seed = &seeds[*i as usize];
            let Ok(bundle) = parse_bundle(json) else { return Ok("not a bundle") };
            let signer = match &seed.key {
                Some(k) => ExpectedSigner::Key(k),
                None => ExpectedSigner::Certificate,
            };
            let _ = pullgate::verify::image::check_image_statement(&bundle, &seed.artifact);
            match seed.trust.verify_bundle(&bundle, ArtifactRef::Digest(&seed.artifact), signer) {
                Ok(v) => {
                    let _ = serde_json::to_string(&v);
                    Ok("verified")
                }
                Err(e) => Ok(e.category()),
            }
        },
    );
}

/// cosign legacy signature layers: the layer descriptor (annotations) and the simple-signing
/// payload as a mirror serves them, then verified; and the Rekor SET annotation on its own.
#[test]
fn legacy_signature_layers() {
    struct Seed {
        descriptor: Value,
        payload: Vec<u8>,
        image: pullgate::verify::Digest,
        trust: std::rc::Rc<TrustMaterial>,
    }
    let mut seeds = Vec::new();
    let mut stack = Stack::new();
    let trust = std::rc::Rc::new(stack.trust());
    let opts = stack.options();
    for n in 0..3 {
        let image = image_digest(10 + n);
        let sig = stack.sign_image_legacy(&image, &opts);
        let descriptor = json!({"mediaType": SIMPLE_SIGNING, "digest": pullgate::registry::Digest::sha256(&sig.payload).to_string(), "size": sig.payload.len(), "annotations": sig.annotations()});
        seeds.push(Seed { descriptor, payload: sig.payload.clone(), image, trust: trust.clone() });
    }
    if let Some(dir) = fuzz::shared("vectors") {
        let d = dir.join("cosign-legacy-image-keyless");
        if let (Ok(desc), Ok(payload), Ok(root)) = (
            std::fs::read(d.join("layer_descriptor.json")),
            std::fs::read(d.join("payload.json")),
            std::fs::read_to_string(d.join("trusted_root.json")),
        ) {
            seeds.push(Seed {
                descriptor: serde_json::from_slice(&desc).unwrap(),
                payload,
                image: "sha256:5f481572d088dc4023afb35fced9530ced3d9b03bf7299c6f492163cb9f0452e".parse().unwrap(),
                trust: std::rc::Rc::new(TrustMaterial::from_json(&root).unwrap()),
            });
        }
    }
    let raws: Vec<Vec<u8>> = seeds.iter().flat_map(|s| [serde_json::to_vec(&s.descriptor).unwrap(), s.payload.clone()]).collect();
    run(
        "legacy_signature_layers",
        4,
        JSON,
        |rng| {
            let i = rng.below(seeds.len());
            let s = &seeds[i];
            let (desc, payload) = match rng.below(3) {
                0 => (serde_json::to_vec(&s.descriptor).unwrap(), {
                    let v: Value = serde_json::from_slice(&s.payload).unwrap();
                    mutate_json_bytes(rng, &v, &s.payload, &raws)
                }),
                _ => (mutate_json_bytes(rng, &s.descriptor, &serde_json::to_vec(&s.descriptor).unwrap(), &raws), s.payload.clone()),
            };
            // [seed index][descriptor length, 4 bytes][descriptor][payload]
            let mut out = vec![i as u8];
            out.extend((desc.len() as u32).to_be_bytes());
            out.extend(desc);
            out.extend(payload);
            out
        },
        |input| {
            let seed = &seeds[input[0] as usize];
            let n = u32::from_be_bytes(input[1..5].try_into().unwrap()) as usize;
            let (desc, payload) = input[5..].split_at(n);
            let Ok(sig) = LegacySignature::from_layer_json(&String::from_utf8_lossy(desc), payload.to_vec()) else {
                return Ok("not a signature layer");
            };
            if let Some(set) = sig.rekor_bundle.as_deref().and_then(|b| RekorSetBundle::parse(b).ok()) {
                let _ = seed.trust.verify_rekor_set_bundle(&set);
            }
            Ok(match seed.trust.verify_legacy(&sig, &seed.image, ExpectedSigner::Certificate) {
                Ok(_) => "verified",
                Err(e) => e.category(),
            })
        },
    );
}

/// The Rekor SET annotation (`dev.sigstore.cosign/bundle`) on its own: parsed within bounds and
/// checked against the trust root.
#[test]
fn rekor_set_annotations() {
    let mut seeds: Vec<(Value, Vec<u8>, std::rc::Rc<TrustMaterial>)> = Vec::new();
    let mut stack = Stack::new();
    let trust = std::rc::Rc::new(stack.trust());
    let opts = stack.options();
    if let Some(b) = stack.sign_image_legacy(&image_digest(20), &opts).rekor_bundle {
        seeds.push((serde_json::from_str(&b).unwrap(), b.into_bytes(), trust));
    }
    if let Some(dir) = fuzz::shared("vectors") {
        for case in ["cosign-rekor-set-bundle", "cosign-legacy-image-keyless"] {
            let d = dir.join(case);
            if let (Ok(b), Ok(root)) = (std::fs::read(d.join("rekor_bundle.json")), std::fs::read_to_string(d.join("trusted_root.json"))) {
                seeds.push((serde_json::from_slice(&b).unwrap(), b, std::rc::Rc::new(TrustMaterial::from_json(&root).unwrap())));
            }
        }
    }
    assert!(!seeds.is_empty(), "the test stack signs legacy signatures with a Rekor SET");
    let raws: Vec<Vec<u8>> = seeds.iter().map(|s| s.1.clone()).collect();
    run(
        "rekor_set_annotations",
        2,
        JSON,
        |rng| {
            let i = rng.below(seeds.len());
            let mut out = vec![i as u8];
            out.extend(mutate_json_bytes(rng, &seeds[i].0, &seeds[i].1, &raws));
            out
        },
        |input| {
            let (i, json) = input.split_first().unwrap();
            let Ok(set) = RekorSetBundle::parse(&String::from_utf8_lossy(json)) else { return Ok("not a SET bundle") };
            let _ = set.body_bytes();
            Ok(match seeds[*i as usize].2.verify_rekor_set_bundle(&set) {
                Ok(_) => "verified",
                Err(e) => e.category(),
            })
        },
    );
}

// --- TUF metadata and trusted roots -----------------------------------------------------------------

/// A directory of TUF metadata to mutate one file of per case.
struct TufSeed {
    files: Vec<(String, Vec<u8>)>,
    pinned: String,
    now: jiff::Timestamp,
    /// The trusted root a successful import must give, when the mirror is complete.
    expect_root: Option<Vec<u8>>,
}

fn read_tree(dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            read_tree(&e.path(), &format!("{name}/"), out);
        } else {
            out.push((name, std::fs::read(e.path()).unwrap()));
        }
    }
    out.sort();
}

/// TUF metadata of a mirror (`trust-root import`): a generated complete repository (root
/// rotation, timestamp, snapshot, targets, the trusted root target) and Sigstore's real public-good
/// root chain. One file mutated per case (the pinned root too); an import that succeeds always
/// yields the repository's own trusted root.
#[test]
fn tuf_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let t0: jiff::Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
    let mut repo = tuf::Repo::new(&tmp.path().join("generated"), t0);
    repo.rotate(|_| {});
    repo.publish();
    let mut seeds = Vec::new();
    let mut files = Vec::new();
    read_tree(&repo.dir, "", &mut files);
    seeds.push(TufSeed {
        files,
        pinned: "1.root.json".into(),
        now: t0 + jiff::SignedDuration::from_hours(1),
        expect_root: Some(tuf::production_trusted_root()),
    });
    if let Some(dir) = fuzz::shared("tuf/sigstore-public-good") {
        let mut files = Vec::new();
        read_tree(&dir, "", &mut files);
        // Roots 1-4 have keys sigstore-tuf cannot read: pin 10 and walk 11..15 (no snapshot is
        // published in the shared folder, so an import must fail: the expectation is None).
        files.retain(|(n, _)| {
            !n.ends_with(".root.json") || n.split('.').next().and_then(|v| v.parse::<u32>().ok()).is_some_and(|v| v >= 10)
        });
        seeds.push(TufSeed { files, pinned: "10.root.json".into(), now: "2026-08-22T00:00:00Z".parse().unwrap(), expect_root: None });
    }
    let work = tmp.path().join("work");
    let raws: Vec<Vec<u8>> = seeds.iter().flat_map(|s| s.files.iter().map(|f| f.1.clone())).collect();
    run(
        "tuf_metadata",
        20,
        JSON,
        |rng| {
            let i = rng.below(seeds.len());
            let s = &seeds[i];
            let f = rng.below(s.files.len());
            let (_, bytes) = &s.files[f];
            let mutated = match serde_json::from_slice::<Value>(bytes) {
                Ok(doc) => mutate_json_bytes(rng, &doc, bytes, &raws),
                Err(_) => mutate_bytes(rng, bytes, &raws, JSON_DICT),
            };
            let mut out = vec![i as u8, f as u8];
            out.extend(mutated);
            out
        },
        |input| {
            let s = &seeds[input[0] as usize];
            let f = input[1] as usize;
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(work.join("targets")).unwrap();
            for (j, (name, bytes)) in s.files.iter().enumerate() {
                std::fs::write(work.join(name), if j == f { &input[2..] } else { &bytes[..] }).unwrap();
            }
            let request = pullgate::trust::tuf_import::VerifyRequest {
                now: s.now,
                pinned_root: pullgate::trust::PinnedRoot::File(work.join(&s.pinned)),
                previous_metadata: BTreeMap::new(),
            };
            match pullgate::trust::tuf_import::verify_mirror(&work, &request) {
                Ok(v) => match &s.expect_root {
                    Some(root) if &v.trusted_root == root => Ok("imported, same trusted root"),
                    Some(_) => Err(format!("{}: mutated mirror imported a different trusted root", s.files[f].0)),
                    None => Err(format!("{}: an incomplete mirror imported", s.files[f].0)),
                },
                Err(e) => {
                    let _ = e.to_string();
                    Ok(match e {
                        pullgate::trust::TufImportError::PinnedRoot(_) => "pinned root refused",
                        pullgate::trust::TufImportError::Mirror { .. } => "mirror layout refused",
                        pullgate::trust::TufImportError::StaleMirror { .. } => "stale mirror",
                        pullgate::trust::TufImportError::Tuf(_) => "TUF check failed",
                        pullgate::trust::TufImportError::MissingTarget(_) => "target missing",
                        pullgate::trust::TufImportError::InvalidTarget { .. } => "target invalid",
                    })
                }
            }
        },
    );
}

/// Trusted roots (the TUF target, `--trusted-root` files, the state directory's copy) and the
/// state directory's manifest: parsed into trust material or refused.
#[test]
fn trusted_roots_and_state_manifest() {
    let mut seeds: Vec<Vec<u8>> =
        vec![tuf::production_trusted_root(), tuf::staging_trusted_root(), Stack::new().trusted_root_json().into_bytes()];
    if let Some(dir) = fuzz::shared("tuf/sigstore-public-good/targets") {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".trusted_root.json") {
                seeds.push(std::fs::read(e.path()).unwrap());
            }
        }
    }
    // A real state manifest, from an unverified import into a temporary state directory.
    let tmp = tempfile::tempdir().unwrap();
    let root_file = tmp.path().join("trusted_root.json");
    std::fs::write(&root_file, &seeds[0]).unwrap();
    let options = pullgate::trust::ImportOptions::new(tmp.path().join("state"), jiff::Timestamp::now());
    pullgate::trust::import_unverified(&root_file, &options).expect("unverified import of the production root");
    let state = pullgate::trust::StateDir::new(tmp.path().join("state"));
    let installed = state.load_current().unwrap().expect("installed");
    let manifest = installed.manifest.to_json();
    let docs: Vec<Value> = seeds.iter().map(|s| serde_json::from_slice(s).unwrap()).collect();
    let manifest_doc: Value = serde_json::from_slice(&manifest).unwrap();
    let mut raws = seeds.clone();
    raws.push(manifest.clone());
    run(
        "trusted_roots_and_state_manifest",
        8,
        JSON,
        |rng| {
            if rng.chance(1, 3) {
                let mut out = vec![0xff];
                out.extend(mutate_json_bytes(rng, &manifest_doc, &manifest, &raws));
                out
            } else {
                let i = rng.below(seeds.len());
                let mut out = vec![i as u8];
                out.extend(mutate_json_bytes(rng, &docs[i], &seeds[i], &raws));
                out
            }
        },
        |input| {
            let (kind, bytes) = input.split_first().unwrap();
            if *kind == 0xff {
                let Ok(m) = pullgate::trust::Manifest::from_json(bytes) else { return Ok("state manifest refused") };
                let _ = (m.to_json(), m.trusted_root_sha256().to_string());
                return Ok("state manifest parsed");
            }
            let Ok(material) = pullgate::trust::tuf_import::check_trusted_root(bytes) else { return Ok("trusted root refused") };
            let _ = pullgate::trust::status::key_windows(&material, jiff::Timestamp::now());
            Ok("trusted root accepted")
        },
    );
}
