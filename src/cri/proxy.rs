//! The CRI proxy: every call is forwarded to containerd by its HTTP/2 path, as frames.
//!
//! Nothing is decoded on the pass-through path: headers (metadata, `grpc-timeout`), the request
//! and response bodies, and trailers (status, message, details) go through as they are, streamed
//! in both directions without buffering. That keeps methods newer than pullgate's proto, methods
//! it has never heard of, and fields it does not know intact. A client that goes away cancels its
//! upstream call, because dropping the response body resets the upstream stream.
//!
//! Only the calls pullgate inspects (PullImage, ImageStatus, CreateContainer) are buffered and
//! decoded (`intercept.rs`); even then the original request bytes are forwarded unless a
//! decision changes them.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::grpc::{self, Buffered, Code};
use super::images::ContainerdImages;
use super::intercept::Gate;
use super::relay::UpstreamBody;
use super::upstream::Upstream;
use crate::config::Access;

/// A request as sent to containerd: the caller's own stream, or bytes pullgate buffered.
pub type RequestBody = Either<Incoming, Full<Bytes>>;
/// A response as sent to the caller: containerd's own stream, or one pullgate made or buffered.
pub type ResponseBody = Either<UpstreamBody, Buffered>;

/// gRPC paths of the calls pullgate decodes.
pub mod method {
    pub const PULL_IMAGE: &str = "/runtime.v1.ImageService/PullImage";
    pub const IMAGE_STATUS: &str = "/runtime.v1.ImageService/ImageStatus";
    pub const CREATE_CONTAINER: &str = "/runtime.v1.RuntimeService/CreateContainer";
}

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
    /// Decides PullImage and CreateContainer; `None` runs as a pure pass-through.
    gate: Option<Arc<dyn Gate>>,
    /// containerd's image records (to tag digest-pinned pulls).
    images: ContainerdImages,
}

impl Proxy {
    pub fn new(upstream: Upstream, access: Access, gate: Option<Arc<dyn Gate>>) -> Self {
        let images = ContainerdImages::new(upstream.path());
        Proxy { upstream, access, gate, images }
    }

    pub fn gate(&self) -> Option<&Arc<dyn Gate>> {
        self.gate.as_ref()
    }

    pub fn images(&self) -> &ContainerdImages {
        &self.images
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Whether this peer may use the socket.
    pub fn admits(&self, peer: &Peer) -> bool {
        self.access.allows(peer.uid, peer.gid)
    }

    /// Serves one call of a connection. An error resets the caller's stream with its reason,
    /// sending no response headers (containerd reset the call: see [`grpc::StreamReset`]).
    pub async fn handle(self: Arc<Self>, peer: Peer, req: Request<Incoming>) -> Result<Response<ResponseBody>, h2::Error> {
        if !self.admits(&peer) {
            let msg = format!(
                "pullgate: uid {} (gid {}) may not use this socket; allow it with access.allowed_uids or access.allowed_gids",
                peer.uid, peer.gid
            );
            return Ok(grpc::status_response(Code::PermissionDenied, &msg));
        }
        let resp = match req.uri().path() {
            // Boxed: the intercepted path's state is large, and the future of every call (which
            // tokio copies when it spawns it) would otherwise be that large too.
            method::PULL_IMAGE | method::IMAGE_STATUS | method::CREATE_CONTAINER => Box::pin(self.intercepted(req)).await,
            path => {
                // Per-call detail at debug level; a disabled callsite costs one atomic load.
                tracing::debug!(method = path, uid = peer.uid, pid = peer.pid, "forwarding call");
                self.forward(req.map(Either::Left)).await
            }
        };
        match resp.extensions().get::<grpc::StreamReset>() {
            Some(grpc::StreamReset(reason)) => Err(h2::Error::from(*reason)),
            None => Ok(resp),
        }
    }

    /// Sends a request to containerd and returns its response as a stream.
    pub async fn forward(&self, req: Request<RequestBody>) -> Response<ResponseBody> {
        let sender = match self.upstream.sender().await {
            Ok(s) => s,
            Err(e) => return grpc::status_response(Code::Unavailable, &e.to_string()),
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = upstream_uri(&parts.uri);
        prepare_headers(&mut parts, &body);
        match sender.clone().call(Request::from_parts(parts, ()), body).await {
            Ok(resp) => resp.map(Either::Left),
            Err(e) if grpc::upstream_reset(&e).is_some() => grpc::reset_response(grpc::upstream_reset(&e).unwrap_or(h2::Reason::CANCEL)),
            Err(e) => {
                self.upstream.reset(&sender);
                let msg = format!("containerd at {} failed the call: {e}", self.upstream.path().display());
                grpc::status_response(Code::Unavailable, &msg)
            }
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

/// What h2 requires of a request: no connection-specific headers (RFC 9113 8.2.2; `te` only as
/// `trailers`), and a `content-length`, if the caller sent one, that matches the body pullgate
/// sends (a pinned pull changes it). None is added: gRPC clients send none, and containerd
/// must receive what the caller sent.
fn prepare_headers(parts: &mut http::request::Parts, body: &RequestBody) {
    use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE};
    let h = &mut parts.headers;
    for name in [TRANSFER_ENCODING, UPGRADE] {
        h.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        h.remove(name);
    }
    if h.get(TE).is_some_and(|v| v != "trailers") {
        h.remove(TE);
    }
    if let Some(named) = h.remove(CONNECTION) {
        // It may name other headers that are meant for this connection only.
        if let Ok(named) = named.to_str() {
            for name in named.split(',') {
                h.remove(name.trim());
            }
        }
    }
    if let (Some(len), Some(sent)) = (http_body::Body::size_hint(body).exact(), h.get_mut(CONTENT_LENGTH)) {
        *sent = http::HeaderValue::from(len);
    }
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

}

#[cfg(test)]
mod future_size {
    use super::*;

    fn future_size<A, F: std::future::Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every call's future is moved into a tokio task (memcpy'd, more than once): the large
    /// states of the intercepted and connect paths stay boxed so pass-through calls stay cheap.
    #[test]
    fn per_call_future_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _rt = rt.enter();
        let upstream = Upstream::new(std::path::Path::new("/nonexistent"), Default::default());
        let proxy = Arc::new(Proxy::new(upstream, Default::default(), None));
        let peer = Peer { uid: 0, gid: 0, pid: None };
        let handle = future_size(move |req: Request<Incoming>| proxy.handle(peer, req));
        assert!(handle <= 2048, "a call's future is {handle} bytes");
    }
}
