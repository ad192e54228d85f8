//! The calls pullgate decodes: PullImage, CreateContainer (with its image volumes), RunPodSandbox
//! (`sandbox.rs`) and, for its debug log line only, ImageStatus; in CRI v1 and v1alpha2 alike
//! (`methods.rs`).
//!
//! The proxy does the mechanics here (buffer, decode, ask the [`Gate`], edit, forward, refuse);
//! what to decide lives behind the [`Gate`] trait (`crate::enforce`). Without a gate (no
//! `--config`), these calls are only logged and forwarded with their original bytes.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full, Limited};
use prost::Message;

use super::api;
use super::budget::{self, Reservation};
use super::grpc::{self, Buffered, Code};
use super::methods::Surface;
use super::proxy::{method, CallerBody, Proxy, ResponseBody};
use super::wire;

/// Bound on a buffered (intercepted) request or response body. CRI requests are small; a
/// larger one is refused rather than buffered without limit.
const MAX_BUFFERED_BODY: usize = 16 << 20;

/// Bytes past a request's declared message that are read (not reserved) before it is refused
/// as too large.
const NOT_UNARY_SLACK: usize = 64 << 10;

/// Prefix kubelet recognises: it reports the pod's image error as `SignatureValidationFailed`.
pub const REFUSAL_PREFIX: &str = "SignatureValidationFailed: ";

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A PullImage as the gate sees it.
#[derive(Debug, Clone, Default)]
pub struct PullCall {
    /// The reference kubelet asked for, as written.
    pub image: String,
    /// The pod's namespace, from the sandbox config kubelet sends along.
    pub namespace: Option<String>,
    pub pod: String,
    /// Registry credentials kubelet passed (image pull secrets).
    pub auth: Option<api::AuthConfig>,
}

/// What to do with a PullImage.
#[derive(Debug, Clone, PartialEq)]
pub enum PullVerdict {
    /// Forward unchanged.
    Forward,
    /// Have containerd pull exactly `reference` (`repo@sha256:...`, the verified digest), then
    /// point image record `tag_as` (the normalised `repo:tag` kubelet asked for) at it.
    Pin { reference: String, tag_as: Option<String> },
    /// Refuse with this one-line reason.
    Refuse(String),
}

/// A CreateContainer as the gate sees it.
#[derive(Debug, Clone, Default)]
pub struct CreateCall {
    /// The image as given in the container config (an image ID or a reference).
    pub image: String,
    /// The image as the pod spec names it (`ImageSpec.user_specified_image`, field 18, sent by
    /// kubelet since Kubernetes 1.30); `None` when the caller did not send it.
    pub user_specified: Option<String>,
    pub namespace: Option<String>,
    pub pod: String,
    pub container: String,
    /// What containerd knows of that image (`None`: not present).
    pub status: Option<api::Image>,
}

/// What to do with a call (or one image of it) that is not a pull: forward it or refuse it.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateVerdict {
    Forward,
    Refuse(String),
}

/// An image volume of a CreateContainer (`Mount.image`, KEP-4639).
#[derive(Debug, Clone, Default)]
pub struct MountImage {
    /// Where it is mounted in the container; names the mount in refusals.
    pub container_path: String,
    /// The image as given in the mount (kubelet passes PullImage's `image_ref`).
    pub image: String,
    /// What containerd knows of that image (`None`: not present).
    pub status: Option<api::Image>,
}

/// A RunPodSandbox as the gate sees it: the image is containerd's own sandbox image.
#[derive(Debug, Clone, Default)]
pub struct SandboxCall {
    /// containerd's configured sandbox image; `None` when containerd does not report it and
    /// pullgate's configuration does not name it.
    pub image: Option<String>,
    pub namespace: Option<String>,
    pub pod: String,
    /// What containerd knows of that image (`None`: not present).
    pub status: Option<api::Image>,
}

/// Why a call is not checked by image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchecked {
    /// Not the CRI API: containerd's native API, health, anything else on the socket.
    NotCri,
    /// An `ImageService` method pullgate does not know.
    UnknownImageMethod,
}

/// A call pullgate cannot check because it names no image pullgate understands.
#[derive(Debug, Clone)]
pub struct UncheckedCall {
    /// The gRPC path.
    pub path: String,
    pub kind: Unchecked,
    pub uid: u32,
    pub pid: Option<i32>,
}

/// The decision maker behind every surface of `methods.rs`.
pub trait Gate: Send + Sync + 'static {
    fn pull<'a>(&'a self, call: &'a PullCall) -> BoxFuture<'a, PullVerdict>;
    /// The container's own image.
    fn create<'a>(&'a self, call: &'a CreateCall) -> BoxFuture<'a, CreateVerdict>;
    /// The image volumes of the same CreateContainer; one refusal refuses the call.
    fn mounts<'a>(&'a self, call: &'a CreateCall, mounts: &'a [MountImage]) -> BoxFuture<'a, CreateVerdict>;
    /// The sandbox image a RunPodSandbox makes containerd run.
    fn sandbox<'a>(&'a self, call: &'a SandboxCall) -> BoxFuture<'a, CreateVerdict>;
    /// A call outside the CRI methods pullgate knows.
    fn unchecked<'a>(&'a self, call: &'a UncheckedCall) -> BoxFuture<'a, CreateVerdict>;
}

pub(super) fn refusal(reason: &str) -> Response<ResponseBody> {
    // One line, so the kubelet event stays readable, of at most `bounded::REFUSAL_MAX` bytes
    // however long the image string the caller sent.
    let line: String = reason.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    let line = crate::bounded::line(&line, crate::bounded::REFUSAL_MAX - REFUSAL_PREFIX.len());
    grpc::status_response(Code::Unknown, &format!("{REFUSAL_PREFIX}{line}"))
}

pub(super) fn pod_of(cfg: Option<&api::PodSandboxConfig>) -> (Option<String>, String) {
    match cfg.and_then(|c| c.metadata.as_ref()) {
        Some(m) => (Some(m.namespace.clone()), format!("{}/{}", m.namespace, m.name)),
        None => (None, String::new()),
    }
}

impl Proxy {
    /// Serves a call pullgate decodes: the response, and its log line (written by the caller, so
    /// that it can answer first).
    pub(super) async fn intercepted(&self, req: Request<CallerBody>, surface: Surface) -> (Response<ResponseBody>, CallLine) {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        // Held until the call is answered: the request bytes live that long.
        let (body, _reservation) = match self.read_request(body).await {
            Ok(read) => read,
            Err(resp) => return (resp, CallLine::default()),
        };
        let path = parts.uri.path().to_owned();
        let method = path.rsplit('/').next().unwrap_or(&path).to_owned();
        let decoded = grpc::unary_message(&body).map_err(|e| e.to_string());

        let (resp, info) = match (surface, decoded) {
            (Surface::Pull, Ok(msg)) => match api::PullImageRequest::decode(msg.clone()) {
                Ok(r) => self.pull_image(parts, body, &msg, r).await,
                Err(e) => self.undecodable(parts, body, e.to_string()).await,
            },
            (Surface::Create, Ok(msg)) => match api::CreateContainerRequest::decode(msg) {
                Ok(r) => self.create_container(parts, body, r).await,
                Err(e) => self.undecodable(parts, body, e.to_string()).await,
            },
            (Surface::Sandbox, Ok(msg)) => match api::RunPodSandboxRequest::decode(msg) {
                Ok(r) => self.run_pod_sandbox(parts, body, r).await,
                Err(e) => self.undecodable(parts, body, e.to_string()).await,
            },
            (Surface::Inspect, Ok(msg)) => {
                let image = api::ImageStatusRequest::decode(msg).ok().and_then(|r| r.image).map(|i| i.image).unwrap_or_default();
                let resp = self.forward_buffered(parts, body).await;
                (resp, CallLog { image, ..Default::default() })
            }
            (_, Ok(_)) => (self.forward_buffered(parts, body).await, CallLog::default()),
            (_, Err(e)) => self.undecodable(parts, body, e).await,
        };
        let (resp, code, message) = buffer_response(resp).await;
        let ms = format!("{:.3}", started.elapsed().as_secs_f64() * 1000.0);
        // Decisions and state changes at info; routine reads (ImageStatus, decoded only when
        // debug logging is on) at debug.
        let line = CallLine(Some(Box::new(LineFields { debug: surface == Surface::Inspect, method, log: info, code, message, ms })));
        (resp, line)
    }

    /// Reads an intercepted request whole, within the global budget (`budget.rs`): the bytes
    /// its gRPC message header declares are reserved before the message is read. Error: the
    /// response to send instead (`RESOURCE_EXHAUSTED` when the budget stays short).
    async fn read_request(&self, mut body: CallerBody) -> Result<(Bytes, Reservation), Response<ResponseBody>> {
        let too_large = || {
            grpc::status_response(Code::InvalidArgument, &format!("pullgate: cannot read request: larger than {MAX_BUFFERED_BODY} bytes"))
        };
        let mut buf = BytesMut::new();
        let mut reservation = None;
        let mut limit = MAX_BUFFERED_BODY;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| grpc::status_response(Code::InvalidArgument, &format!("pullgate: cannot read request: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
            if reservation.is_none() && buf.len() >= 5 {
                let declared = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                let wanted = declared.checked_add(5).filter(|n| *n <= MAX_BUFFERED_BODY).ok_or_else(too_large)?;
                let budget = self.budget();
                let held = budget
                    .reserve((wanted as u64).min(budget.total()), budget::WAIT)
                    .await
                    .map_err(|e| grpc::status_response(Code::ResourceExhausted, &e.to_string()))?;
                reservation = Some(held);
                // A unary call has one message; a little more is let in (unreserved) so that a
                // malformed request gets the usual "cannot decode" answer.
                limit = (wanted + NOT_UNARY_SLACK).min(MAX_BUFFERED_BODY);
                buf.reserve(wanted.saturating_sub(buf.len()));
            }
        }
        Ok((buf.freeze(), reservation.unwrap_or_default()))
    }

    /// A request pullgate cannot decode: with a gate, it cannot be checked, so it is refused;
    /// without one it is forwarded for containerd to judge.
    async fn undecodable(&self, parts: http::request::Parts, body: Bytes, why: String) -> (Response<ResponseBody>, CallLog) {
        let log = CallLog { undecodable: Some(why.clone()), ..Default::default() };
        if self.gate().is_some() {
            return (refusal(&format!("pullgate cannot decode this {} request ({why}), so it cannot check it", parts.uri.path())), log);
        }
        (self.forward_buffered(parts, body).await, log)
    }

    pub(super) async fn forward_buffered(&self, parts: http::request::Parts, body: Bytes) -> Response<ResponseBody> {
        self.forward(Request::from_parts(parts, Either::Right(Full::new(body)))).await
    }

    async fn pull_image(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        msg: &Bytes,
        req: api::PullImageRequest,
    ) -> (Response<ResponseBody>, CallLog) {
        let (namespace, pod) = pod_of(req.sandbox_config.as_ref());
        let image = req.image.map(|i| i.image).unwrap_or_default();
        let mut log = CallLog { image: crate::bounded::field(&image).into_owned(), pod: pod.clone(), ..Default::default() };
        let Some(gate) = self.gate() else {
            return (self.forward_buffered(parts, body).await, log);
        };
        let call = PullCall { image, namespace, pod, auth: req.auth };
        match gate.pull(&call).await {
            PullVerdict::Forward => {
                log.verdict = Some("forward".into());
                (self.forward_buffered(parts, body).await, log)
            }
            PullVerdict::Refuse(reason) => {
                log.verdict = Some("refused".into());
                (refusal(&reason), log)
            }
            PullVerdict::Pin { reference, tag_as } => {
                log.verdict = Some(format!("pinned to {reference}"));
                let edited = match wire::set_string_field(msg, &[1, 1], reference.as_bytes()) {
                    Ok(m) => grpc::frame(&m),
                    Err(e) => return (refusal(&format!("cannot pin the pull to {reference}: {e}")), log),
                };
                let pulling = Instant::now();
                let resp = self.forward_buffered(parts, edited).await;
                let (resp, code, _) = buffer_response(resp).await;
                tracing::debug!(pinned = %reference, code, ms = pulling.elapsed().as_secs_f64() * 1000.0, "containerd answered the pinned pull");
                if code == 0 {
                    if let Some(tag) = tag_as {
                        // containerd recorded the image under `reference`; add the tag kubelet
                        // asked for so its ImageStatus finds the image.
                        let tagging = Instant::now();
                        let tagged = self.images().tag(&reference, &tag).await;
                        tracing::debug!(image = %tag, ms = tagging.elapsed().as_secs_f64() * 1000.0, "tag record written");
                        if let Err(e) = tagged {
                            tracing::warn!(image = %tag, pinned = %reference, error = %e,
                                "pulled the verified digest but could not tag it; kubelet will not find the image by tag and will pull again");
                        } else {
                            self.await_cri_sees(&tag).await;
                        }
                    }
                }
                (resp, log)
            }
        }
    }

    async fn create_container(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        req: api::CreateContainerRequest,
    ) -> (Response<ResponseBody>, CallLog) {
        let (namespace, pod) = pod_of(req.sandbox_config.as_ref());
        let config = req.config.unwrap_or_default();
        let image = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        let user_specified = config.image.as_ref().map(|i| i.user_specified_image.clone()).filter(|s| !s.is_empty());
        let container = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let mut log = CallLog {
            image: crate::bounded::field(&image).into_owned(),
            pod: pod.clone(),
            container: container.clone(),
            ..Default::default()
        };
        let Some(gate) = self.gate() else {
            return (self.forward_buffered(parts, body).await, log);
        };
        let status = match self.image_status(&image).await {
            Ok(s) => s,
            Err(e) => {
                log.verdict = Some("refused".into());
                return (refusal(&format!("cannot look up image {image} in containerd to check it: {e}")), log);
            }
        };
        let call = CreateCall { image, user_specified, namespace, pod, container, status };
        if let CreateVerdict::Refuse(reason) = gate.create(&call).await {
            log.verdict = Some("refused".into());
            return (refusal(&reason), log);
        }
        let mut mounts = Vec::new();
        for (container_path, image) in image_volumes(&config.mounts) {
            let status = match self.image_status(&image).await {
                Ok(s) => s,
                Err(e) => {
                    log.verdict = Some("refused".into());
                    return (
                        refusal(&format!("image volume {container_path}: cannot look up image {image} in containerd to check it: {e}")),
                        log,
                    );
                }
            };
            mounts.push(MountImage { container_path, image, status });
        }
        if !mounts.is_empty() {
            if let CreateVerdict::Refuse(reason) = gate.mounts(&call, &mounts).await {
                log.verdict = Some("refused".into());
                return (refusal(&reason), log);
            }
        }
        log.verdict = Some("forward".into());
        (self.forward_buffered(parts, body).await, log)
    }

    /// containerd's CRI plugin learns of a name added through its images API from the image
    /// event, asynchronously: answering PullImage before then lets the caller's next ImageStatus
    /// or ListImages miss the tag it pulled (critest's image specs did, now and then), which
    /// containerd's own PullImage never does. Wait until CRI resolves the tag, bounded.
    async fn await_cri_sees(&self, tag: &str) {
        let started = Instant::now();
        let deadline = started + TAG_VISIBLE_WITHIN;
        // containerd's CRI plugin learns of the new record from an event, usually within a
        // millisecond or two: ask again soon, then less often.
        let mut pause = std::time::Duration::from_millis(1);
        for asked in 1u32.. {
            if let Ok(Some(_)) = self.image_status(tag).await {
                tracing::debug!(image = %tag, asked, ms = started.elapsed().as_secs_f64() * 1000.0, "containerd's CRI plugin lists the tag");
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(image = %tag, "tagged the verified digest, but containerd's CRI plugin does not list the tag yet; answering anyway");
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(TAG_POLL_AT_MOST);
        }
    }

    /// containerd's CRI `ImageStatus` for `image`, asked by pullgate itself.
    pub async fn image_status(&self, image: &str) -> Result<Option<api::Image>, String> {
        let req = api::ImageStatusRequest { image: Some(api::ImageSpec { image: image.into(), ..Default::default() }), verbose: false };
        let status: api::ImageStatusResponse = self.unary_upstream(method::IMAGE_STATUS, &req).await?;
        Ok(status.image.filter(|i| !i.id.is_empty()))
    }

    /// One unary CRI call pullgate makes to containerd itself, on the proxy's connection.
    pub(super) async fn unary_upstream<Req: Message, Resp: Message + Default>(
        &self,
        path: &'static str,
        req: &Req,
    ) -> Result<Resp, String> {
        let http_req = Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "10S")
            .body(Either::Right(Full::new(grpc::frame(&req.encode_to_vec()))))
            .map_err(|e| e.to_string())?;
        let (resp, code, message) = buffer_response(self.forward(http_req).await).await;
        let name = path.rsplit('/').next().unwrap_or(path);
        if code != 0 {
            return Err(format!("{name} failed with code {code}: {message}"));
        }
        let bytes = match resp.into_body() {
            Either::Right(b) => b.into_data(),
            Either::Left(_) => None,
        }
        .unwrap_or_default();
        let msg = grpc::unary_message(&bytes).map_err(|e| e.to_string())?;
        Resp::decode(msg).map_err(|e| e.to_string())
    }
}

/// How long a pinned pull waits for containerd's CRI plugin to resolve the tag it added.
const TAG_VISIBLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);
/// The longest pause between two of those lookups.
const TAG_POLL_AT_MOST: std::time::Duration = std::time::Duration::from_millis(8);

/// The image volumes of a container: `(container_path, image)` of every mount whose image is
/// set. containerd treats a mount as an image volume exactly when `Mount.image.image` is not
/// empty; every other mount is a host path.
pub fn image_volumes(mounts: &[api::Mount]) -> Vec<(String, String)> {
    mounts
        .iter()
        .filter_map(|m| m.image.as_ref().filter(|i| !i.image.is_empty()).map(|i| (m.container_path.clone(), i.image.clone())))
        .collect()
}

/// The log line of an intercepted call, written once it has been answered: by [`CallLine::emit`],
/// or when it is dropped (a call whose task is aborted after it was answered is still logged).
/// Boxed: it rides along every call's future.
#[derive(Debug, Default)]
pub struct CallLine(Option<Box<LineFields>>);

#[derive(Debug)]
struct LineFields {
    debug: bool,
    method: String,
    log: CallLog,
    code: i32,
    message: String,
    ms: String,
}

impl CallLine {
    /// Writes the line (nothing for a call that was answered before it was read).
    pub fn emit(self) {}
}

impl Drop for CallLine {
    fn drop(&mut self) {
        let Some(line) = self.0.take() else { return };
        let LineFields { debug, method, log: CallLog { image, pod, container, verdict, undecodable }, code, message, ms } = *line;
        // String values: the human format quotes and escapes them (`image="…"`), so a newline
        // in a caller's string cannot start a forged line; bounded, so it cannot flood the log.
        use crate::bounded::field;
        macro_rules! call_line {
            ($level:ident) => {
                tracing::$level!(
                    method = field(&method).as_ref(),
                    image = field(&image).as_ref(),
                    pod = field(&pod).as_ref(),
                    container = field(&container).as_ref(),
                    verdict = verdict.as_deref().map(field).as_deref(),
                    undecodable = undecodable.as_deref().map(field).as_deref(),
                    code,
                    error = (code != 0).then(|| field(&message).into_owned()),
                    ms,
                    "call"
                )
            };
        }
        if debug {
            call_line!(debug);
        } else {
            call_line!(info);
        }
    }
}

/// What the log line of an intercepted call says.
#[derive(Debug, Default)]
pub(super) struct CallLog {
    pub image: String,
    /// `namespace/name` of the pod.
    pub pod: String,
    pub container: String,
    /// What the gate decided, when there is one.
    pub verdict: Option<String>,
    pub undecodable: Option<String>,
}

/// Reads a (unary) response completely, to learn its status; returns an equivalent response,
/// the gRPC code and message.
pub(super) async fn buffer_response(resp: Response<ResponseBody>) -> (Response<ResponseBody>, i32, String) {
    let header_code = Code::from_header(resp.headers().get("grpc-status"));
    let header_msg = resp.headers().get("grpc-message").map(|v| grpc::decode_message(v.as_bytes()));
    let (parts, body) = resp.into_parts();
    match Limited::new(body, MAX_BUFFERED_BODY).collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            let code = header_code.or_else(|| trailers.as_ref().and_then(|t| Code::from_header(t.get("grpc-status"))));
            let message = header_msg
                .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-message")).map(|v| grpc::decode_message(v.as_bytes())))
                .unwrap_or_default();
            let body = Buffered::new(Some(collected.to_bytes()), trailers);
            (Response::from_parts(parts, Either::Right(body)), code.unwrap_or(Code::Unknown as i32), message)
        }
        Err(e) => {
            // containerd reset the stream after its headers: reset the caller's too.
            if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(grpc::upstream_reset) {
                return (grpc::reset_response(reason), Code::Unavailable as i32, format!("containerd reset the call: {e}"));
            }
            let msg = format!("containerd's response could not be read: {e}");
            (grpc::status_response(Code::Unavailable, &msg), Code::Unavailable as i32, msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CreateContainerRequest as kubelet 1.35 sends it for a pod with an image volume: mounts
    /// carry fields pullgate does not decode (host_path, readonly, propagation, image_sub_path),
    /// and the request carries fields it does not know at all.
    #[test]
    fn image_volumes_are_decoded_from_the_wire() {
        use prost::Message;
        let spec = |image: &str| api::ImageSpec { image: image.into(), ..Default::default() };
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata { name: "app".into(), attempt: 0 }),
            image: Some(spec("sha256:aaaa")),
            mounts: vec![
                api::Mount { container_path: "/etc/config".into(), image: None },
                api::Mount { container_path: "/data".into(), image: Some(spec("sha256:bbbb")) },
                api::Mount { container_path: "/empty".into(), image: Some(spec("")) },
                api::Mount { container_path: "/models".into(), image: Some(spec("reg/models@sha256:cccc")) },
            ],
        };
        let mut config_bytes = config.encode_to_vec();
        // Unknown to pullgate inside ContainerConfig: log_path (11) and tty (14).
        config_bytes.extend_from_slice(b"\x5a\x05a.log\x70\x01");
        let mut mount_with_extras = Vec::new();
        // Mount{container_path: "/x", host_path: "", readonly: true, image: {image: "i"}, image_sub_path: "sub"}
        mount_with_extras.extend_from_slice(b"\x0a\x02/x\x18\x01\x4a\x03\x0a\x01i\x52\x03sub");
        config_bytes.push(0x3a); // field 7, length-delimited
        prost::encoding::encode_varint(mount_with_extras.len() as u64, &mut config_bytes);
        config_bytes.extend_from_slice(&mount_with_extras);
        let mut req = Vec::new();
        req.extend_from_slice(b"\x0a\x03pod"); // pod_sandbox_id
        req.push(0x12);
        prost::encoding::encode_varint(config_bytes.len() as u64, &mut req);
        req.extend_from_slice(&config_bytes);
        req.extend_from_slice(b"\xa0\x06\x07"); // unknown top-level field 100
        let decoded = api::CreateContainerRequest::decode(&req[..]).unwrap();
        let mounts = decoded.config.unwrap().mounts;
        assert_eq!(
            image_volumes(&mounts),
            [
                ("/data".to_string(), "sha256:bbbb".to_string()),
                ("/models".into(), "reg/models@sha256:cccc".into()),
                ("/x".into(), "i".into())
            ]
        );
        assert!(image_volumes(&[]).is_empty());
    }

    #[test]
    fn refusals_are_one_line_with_the_kubelet_prefix() {
        let r = refusal("image x denied:\n  no signatures found");
        let msg = grpc::decode_message(r.headers()["grpc-message"].as_bytes());
        assert_eq!(msg, "SignatureValidationFailed: image x denied: no signatures found");
        assert_eq!(r.headers()["grpc-status"], "2");
        let huge = format!("image reg/{}:1 denied", "a".repeat(10 << 20));
        let r = refusal(&format!("{huge}\r\u{1b}"));
        let raw = r.headers()["grpc-message"].as_bytes();
        assert!(raw.len() <= crate::bounded::REFUSAL_MAX, "{}", raw.len());
        let msg = grpc::decode_message(raw);
        assert!(msg.starts_with("SignatureValidationFailed: image reg/aaa") && msg.contains("sha256:"), "{msg}");
        assert!(!msg.chars().any(char::is_control), "{msg}");
    }
}
