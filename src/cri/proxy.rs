//! The CRI proxy: every call is forwarded to containerd by its HTTP/2 path, as frames.
//!
//! Nothing is decoded on the pass-through path: headers (metadata, `grpc-timeout`), the request
//! and response bodies, and trailers (status, message, details) go through as they are, streamed
//! in both directions without buffering. That keeps methods newer than pullgate's proto, methods
//! it has never heard of, and fields it does not know intact. A client that goes away cancels its
//! upstream call, because dropping the response body resets the upstream stream.
//!
//! Only the calls pullgate inspects (PullImage, ImageStatus, CreateContainer) are buffered and
//! decoded; even then the original request bytes are forwarded unless a decision changes them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use prost::Message;

use super::api;
use super::grpc::{self, Buffered, Code};
use super::upstream::Upstream;
use crate::config::Access;

/// A request as sent to containerd: the caller's own stream, or bytes pullgate buffered.
pub type RequestBody = Either<Incoming, Full<Bytes>>;
/// A response as sent to the caller: containerd's own stream, or one pullgate made or buffered.
pub type ResponseBody = Either<Incoming, Buffered>;

/// gRPC paths of the calls pullgate decodes.
pub mod method {
    pub const PULL_IMAGE: &str = "/runtime.v1.ImageService/PullImage";
    pub const IMAGE_STATUS: &str = "/runtime.v1.ImageService/ImageStatus";
    pub const CREATE_CONTAINER: &str = "/runtime.v1.RuntimeService/CreateContainer";
}

/// Bound on a buffered (intercepted) request or response body. CRI requests are small; a
/// larger one is refused rather than buffered without limit.
const MAX_BUFFERED_BODY: usize = 16 << 20;

/// Who is calling, from `SO_PEERCRED` of their connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// The proxy's shared state.
pub struct Proxy {
    upstream: Upstream,
    access: Access,
}

impl Proxy {
    pub fn new(upstream: Upstream, access: Access) -> Self {
        Proxy { upstream, access }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Whether this peer may use the socket.
    pub fn admits(&self, peer: &Peer) -> bool {
        self.access.allows(peer.uid, peer.gid)
    }

    /// Serves one call of a connection.
    pub async fn handle(self: Arc<Self>, peer: Peer, req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
        if !self.admits(&peer) {
            let msg = format!(
                "pullgate: uid {} (gid {}) may not use this socket; allow it with access.allowed_uids or access.allowed_gids",
                peer.uid, peer.gid
            );
            return Ok(grpc::status_response(Code::PermissionDenied, &msg));
        }
        let resp = match req.uri().path() {
            method::PULL_IMAGE | method::IMAGE_STATUS | method::CREATE_CONTAINER => self.intercepted(req).await,
            _ => self.forward(req.map(Either::Left)).await,
        };
        Ok(resp)
    }

    /// Sends a request to containerd and returns its response as a stream.
    pub async fn forward(&self, req: Request<RequestBody>) -> Response<ResponseBody> {
        let mut sender = match self.upstream.sender().await {
            Ok(s) => s,
            Err(e) => return grpc::status_response(Code::Unavailable, &e.to_string()),
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = upstream_uri(&parts.uri);
        match sender.send_request(Request::from_parts(parts, body)).await {
            Ok(resp) => resp.map(Either::Left),
            Err(e) => {
                self.upstream.reset(&sender);
                let msg = format!("containerd at {} failed the call: {e}", self.upstream.path().display());
                grpc::status_response(Code::Unavailable, &msg)
            }
        }
    }

    /// A call pullgate decodes: buffered, logged with what it asked for and how it ended, and
    /// forwarded with its original bytes.
    async fn intercepted(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BUFFERED_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return grpc::status_response(Code::InvalidArgument, &format!("pullgate: cannot read request: {e}")),
        };
        let path = parts.uri.path().to_owned();
        let what = describe_request(&path, &body);
        let resp = self.forward(Request::from_parts(parts, Either::Right(Full::new(body)))).await;
        let (resp, code, message) = buffer_response(resp).await;
        let ms = format!("{:.3}", started.elapsed().as_secs_f64() * 1000.0);
        let method = path.rsplit('/').next().unwrap_or(&path);
        let CallInfo { image, pod, container, undecodable } = what;
        let code = code.unwrap_or(-1);
        tracing::info!(
            method,
            image,
            pod,
            container,
            undecodable,
            code,
            error = (code != 0).then_some(message),
            ms,
            "call"
        );
        resp
    }
}

/// What an intercepted request asks for, for its log line.
#[derive(Debug, Default, PartialEq)]
struct CallInfo {
    image: String,
    /// `namespace/name` of the pod, when the request carries its sandbox config.
    pod: String,
    /// Container name (CreateContainer).
    container: String,
    /// Why the request could not be decoded, if it could not.
    undecodable: Option<String>,
}

fn describe_request(path: &str, body: &Bytes) -> CallInfo {
    let msg = match grpc::unary_message(body) {
        Ok(m) => m,
        Err(e) => return CallInfo { undecodable: Some(e.to_string()), ..Default::default() },
    };
    let pod = |cfg: Option<&api::PodSandboxConfig>| {
        cfg.and_then(|c| c.metadata.as_ref()).map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default()
    };
    let image = |spec: Option<api::ImageSpec>| spec.map(|i| i.image).unwrap_or_default();
    let decoded = match path {
        method::PULL_IMAGE => api::PullImageRequest::decode(msg)
            .map(|r| CallInfo { pod: pod(r.sandbox_config.as_ref()), image: image(r.image), ..Default::default() }),
        method::IMAGE_STATUS => api::ImageStatusRequest::decode(msg).map(|r| CallInfo { image: image(r.image), ..Default::default() }),
        method::CREATE_CONTAINER => api::CreateContainerRequest::decode(msg).map(|r| {
            let c = r.config.unwrap_or_default();
            CallInfo {
                pod: pod(r.sandbox_config.as_ref()),
                image: image(c.image),
                container: c.metadata.map(|m| m.name).unwrap_or_default(),
                undecodable: None,
            }
        }),
        _ => Ok(CallInfo::default()),
    };
    decoded.unwrap_or_else(|e| CallInfo { undecodable: Some(e.to_string()), ..Default::default() })
}

/// Reads a (unary) response completely, to learn its status; returns an equivalent response.
async fn buffer_response(resp: Response<ResponseBody>) -> (Response<ResponseBody>, Option<i32>, String) {
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
            (Response::from_parts(parts, Either::Right(body)), code, message)
        }
        Err(e) => {
            let msg = format!("containerd's response could not be read: {e}");
            (grpc::status_response(Code::Unavailable, &msg), Some(Code::Unavailable as i32), msg)
        }
    }
}

/// The URI to send upstream: HTTP/2 needs a scheme and authority. The caller's authority is kept
/// when it has one; otherwise `localhost`, as grpc-go sends on unix sockets.
fn upstream_uri(uri: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(uri.authority().cloned().unwrap_or_else(|| http::uri::Authority::from_static("localhost")));
    parts.path_and_query = uri.path_and_query().cloned().or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("http://localhost/"))
}

impl From<Buffered> for ResponseBody {
    fn from(b: Buffered) -> Self {
        Either::Right(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_keeps_path_and_authority() {
        assert_eq!(upstream_uri(&Uri::from_static("/runtime.v1.RuntimeService/Version")), "http://localhost/runtime.v1.RuntimeService/Version");
        assert_eq!(upstream_uri(&Uri::from_static("http://foo:1/a.B/C")), "http://foo:1/a.B/C");
    }

    #[test]
    fn describes_pull_requests() {
        let req = api::PullImageRequest {
            image: Some(api::ImageSpec { image: "reg/app:1".into(), ..Default::default() }),
            sandbox_config: Some(api::PodSandboxConfig {
                metadata: Some(api::PodSandboxMetadata { name: "web".into(), namespace: "prod".into(), ..Default::default() }),
            }),
            ..Default::default()
        };
        let body = grpc::frame(&req.encode_to_vec());
        let info = describe_request(method::PULL_IMAGE, &body);
        assert_eq!((info.image.as_str(), info.pod.as_str()), ("reg/app:1", "prod/web"));
        assert!(describe_request(method::PULL_IMAGE, &Bytes::from_static(b"x")).undecodable.is_some());
        assert!(describe_request(method::PULL_IMAGE, &grpc::frame(b"\xff")).undecodable.is_some());
    }
}
