//! The CRI proxy: every call is forwarded to containerd by its HTTP/2 path, as frames.
//!
//! Nothing is decoded on the pass-through path: headers (metadata, `grpc-timeout`), the request
//! and response bodies, and trailers (status, message, details) go through as they are, streamed
//! in both directions without buffering. That keeps methods newer than pullgate's proto, methods
//! it has never heard of, and fields it does not know intact. A client that goes away cancels its
//! upstream call, because dropping the response body resets the upstream stream.
//!
//! Only the calls pullgate inspects (PullImage, CreateContainer, and with a gate RunPodSandbox;
//! ImageStatus only while debug logging is on, for its log line) are buffered and decoded
//! (`intercept.rs`); even then the original request bytes are forwarded unless a decision
//! changes them.
//!
//! With a gate, only the CRI API passes (`methods.rs`): v1 and v1alpha2 are gated alike, and a
//! path outside CRI (containerd's native API on the same socket) or an `ImageService` method
//! pullgate does not know goes to the gate, which refuses it in enforce mode. Without a gate every
//! path is forwarded, as it always was.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::budget::Budget;
use super::grpc::{self, Buffered, Code};
use super::images::ContainerdImages;
use super::intercept::{CallLine, CreateVerdict, Gate, Unchecked, UncheckedCall};
use super::methods::{self, Route, Surface};
use super::relay::UpstreamBody;
use super::settings::Access;
use super::upstream::Upstream;

/// A request as sent to containerd: the caller's own stream, or bytes pullgate buffered.
pub type RequestBody = Either<CallerBody, Full<Bytes>>;

/// A caller's request body: from hyper's server, or from the frame-level relay for the calls
/// it hands to pullgate (`frame_relay/`).
pub enum CallerBody {
    Hyper(Incoming),
    Relay(super::frame_relay::RelayBody),
}

impl http_body::Body for CallerBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            CallerBody::Hyper(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            CallerBody::Relay(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CallerBody::Hyper(b) => b.is_end_stream(),
            CallerBody::Relay(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            CallerBody::Hyper(b) => b.size_hint(),
            CallerBody::Relay(b) => b.size_hint(),
        }
    }
}
/// A response as sent to the caller: containerd's own stream, or one pullgate made or buffered.
pub type ResponseBody = Either<UpstreamBody, Buffered>;

/// gRPC paths of the calls pullgate decodes.
pub mod method {
    pub const PULL_IMAGE: &str = "/runtime.v1.ImageService/PullImage";
    pub const IMAGE_STATUS: &str = "/runtime.v1.ImageService/ImageStatus";
    pub const CREATE_CONTAINER: &str = "/runtime.v1.RuntimeService/CreateContainer";
}

/// How the proxy serves one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dispatch {
    Forward,
    Decode(Surface),
    Unchecked(Unchecked),
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
    /// containerd's sandbox image, for containerd versions that do not report it (2.x).
    sandbox_image: Option<String>,
    /// Bounds the request bytes all intercepted calls buffer at once (`budget.rs`).
    budget: Budget,
    /// Serve connections with the frame-level relay (`frame_relay/`) instead of hyper (the
    /// daemon's default, `cri.frame_relay`; off unless asked for here).
    frame_relay: bool,
}

impl Proxy {
    pub fn new(upstream: Upstream, access: Access, gate: Option<Arc<dyn Gate>>) -> Self {
        let images = ContainerdImages::new(upstream.path());
        // Decisions finish (and are audited) even when the client goes away mid-call.
        let gate = gate.map(super::detached::Detached::wrap);
        Proxy { upstream, access, gate, images, sandbox_image: None, budget: Budget::default(), frame_relay: false }
    }

    /// Bounds the request bytes intercepted calls buffer at once to `bytes`
    /// (`cri.max_buffered_bytes`).
    pub fn with_buffer_budget(mut self, bytes: u64) -> Self {
        self.budget = Budget::new(bytes);
        self
    }

    /// Serves caller connections with the frame-level relay (`cri.frame_relay`).
    pub fn with_frame_relay(mut self, on: bool) -> Self {
        self.frame_relay = on;
        self
    }

    pub fn frame_relay(&self) -> bool {
        self.frame_relay
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Names containerd's sandbox image, used when containerd does not report it itself.
    pub fn with_sandbox_image(mut self, image: Option<String>) -> Self {
        self.sandbox_image = image;
        self
    }

    pub fn configured_sandbox_image(&self) -> Option<&str> {
        self.sandbox_image.as_deref()
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
    pub fn handle(
        self: Arc<Self>,
        peer: Peer,
        req: Request<CallerBody>,
    ) -> impl std::future::Future<Output = Result<Response<ResponseBody>, h2::Error>> + Send {
        // `map`, not an `async` wrapper: every call's future stays the size of its own states.
        futures_util::FutureExt::map(self.handle_then_log(peer, req), |(resp, line)| {
            line.emit();
            resp
        })
    }

    /// [`Proxy::handle`], with the call's log line left for the caller to write once it has
    /// answered (the frame relay does; the line is then off the call's path).
    pub async fn handle_then_log(
        self: Arc<Self>,
        peer: Peer,
        req: Request<CallerBody>,
    ) -> (Result<Response<ResponseBody>, h2::Error>, CallLine) {
        if !self.admits(&peer) {
            let msg = format!(
                "pullgate: uid {} (gid {}) may not use this socket; allow it with access.allowed_uids or access.allowed_gids",
                peer.uid, peer.gid
            );
            return (Ok(grpc::status_response(Code::PermissionDenied, &msg)), CallLine::default());
        }
        // Boxed below: the intercepted path's state is large, and the future of every call (which
        // tokio copies when it spawns it) would otherwise be that large too.
        let (resp, line) = match self.route(req.uri().path(), inspect_reads()) {
            Dispatch::Decode(surface) => Box::pin(self.intercepted(req, surface)).await,
            Dispatch::Unchecked(kind) => (Box::pin(self.unchecked(peer, req, kind)).await, CallLine::default()),
            Dispatch::Forward => {
                // Per-call detail at debug level; a disabled callsite costs one atomic load.
                tracing::debug!(method = req.uri().path(), uid = peer.uid, pid = peer.pid, "forwarding call");
                (self.forward(req.map(Either::Left)).await, CallLine::default())
            }
        };
        match resp.extensions().get::<grpc::StreamReset>() {
            Some(grpc::StreamReset(reason)) => (Err(h2::Error::from(*reason)), line),
            None => (Ok(resp), line),
        }
    }

    /// Whether the frame-level relay may pass a call of this path straight to containerd (with
    /// the same decision [`Proxy::handle`] makes: it would forward it unread).
    pub fn passes_through(&self, peer: &Peer, path: &str) -> bool {
        self.admits(peer) && self.route(path, inspect_reads()) == Dispatch::Forward
    }

    /// What to do with a path. Without a gate: decode the two v1 calls it logs, forward
    /// everything else. Read-only calls it only logs (ImageStatus, `Surface::Inspect`) are
    /// decoded only when `inspect` (debug logging) asks for their log line; otherwise they cost a
    /// pass-through.
    fn route(&self, path: &str, inspect: bool) -> Dispatch {
        if self.gate.is_none() {
            return match path {
                method::PULL_IMAGE => Dispatch::Decode(Surface::Pull),
                method::IMAGE_STATUS if inspect => Dispatch::Decode(Surface::Inspect),
                method::CREATE_CONTAINER => Dispatch::Decode(Surface::Create),
                _ => Dispatch::Forward,
            };
        }
        match methods::route(path) {
            Route::Known { method, .. } if method.surface == Surface::Inspect && !inspect => Dispatch::Forward,
            Route::Known { method, .. } if method.surface != Surface::Inert => Dispatch::Decode(method.surface),
            Route::Known { .. } | Route::UnknownRuntimeMethod { .. } => Dispatch::Forward,
            Route::UnknownImageMethod { .. } => Dispatch::Unchecked(Unchecked::UnknownImageMethod),
            Route::NotCri => Dispatch::Unchecked(Unchecked::NotCri),
        }
    }

    /// A call the gate judges without an image: forwarded as a stream when it allows it,
    /// `PermissionDenied` with its reason otherwise.
    async fn unchecked(&self, peer: Peer, req: Request<CallerBody>, kind: Unchecked) -> Response<ResponseBody> {
        let Some(gate) = self.gate() else {
            return self.forward(req.map(Either::Left)).await;
        };
        let call = UncheckedCall { path: req.uri().path().to_string(), kind, uid: peer.uid, pid: peer.pid };
        match gate.unchecked(&call).await {
            CreateVerdict::Forward => {
                tracing::info!(
                    method = crate::bounded::field(&call.path).as_ref(),
                    uid = peer.uid,
                    pid = peer.pid,
                    "forwarding a call pullgate does not check"
                );
                self.forward(req.map(Either::Left)).await
            }
            CreateVerdict::Refuse(reason) => {
                let (method, why) = (crate::bounded::field(&call.path), crate::bounded::field(&reason));
                tracing::warn!(
                    method = method.as_ref(),
                    uid = peer.uid,
                    pid = peer.pid,
                    reason = why.as_ref(),
                    "refused a call outside the CRI methods pullgate checks"
                );
                grpc::status_response(Code::PermissionDenied, &format!("pullgate: {reason}"))
            }
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

/// Whether routine reads (ImageStatus) are decoded for their debug log line. A disabled
/// callsite costs one atomic load; the answer follows a log level changed at run time.
fn inspect_reads() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
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

    /// A gate that never gets asked anything here: routing is decided before any gate call.
    struct NoGate;
    impl Gate for NoGate {
        fn pull<'a>(
            &'a self,
            _: &'a super::super::intercept::PullCall,
        ) -> super::super::intercept::BoxFuture<'a, super::super::intercept::PullVerdict> {
            unreachable!()
        }
        fn create<'a>(&'a self, _: &'a super::super::intercept::CreateCall) -> super::super::intercept::BoxFuture<'a, CreateVerdict> {
            unreachable!()
        }
        fn mounts<'a>(
            &'a self,
            _: &'a super::super::intercept::CreateCall,
            _: &'a [super::super::intercept::MountImage],
        ) -> super::super::intercept::BoxFuture<'a, CreateVerdict> {
            unreachable!()
        }
        fn sandbox<'a>(&'a self, _: &'a super::super::intercept::SandboxCall) -> super::super::intercept::BoxFuture<'a, CreateVerdict> {
            unreachable!()
        }
        fn unchecked<'a>(&'a self, _: &'a UncheckedCall) -> super::super::intercept::BoxFuture<'a, CreateVerdict> {
            unreachable!()
        }
    }

    fn proxy(gate: Option<Arc<dyn Gate>>) -> Proxy {
        Proxy::new(Upstream::new(std::path::Path::new("/nonexistent"), Default::default()), Default::default(), gate)
    }

    #[test]
    fn without_a_gate_routing_is_what_it_always_was() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _rt = rt.enter();
        let p = proxy(None);
        assert_eq!(p.route("/runtime.v1.ImageService/PullImage", false), Dispatch::Decode(Surface::Pull));
        assert_eq!(p.route("/runtime.v1.ImageService/ImageStatus", true), Dispatch::Decode(Surface::Inspect));
        assert_eq!(p.route("/runtime.v1.ImageService/ImageStatus", false), Dispatch::Forward);
        assert_eq!(p.route("/runtime.v1.RuntimeService/CreateContainer", false), Dispatch::Decode(Surface::Create));
        for path in [
            "/runtime.v1.RuntimeService/RunPodSandbox",
            "/runtime.v1alpha2.ImageService/PullImage",
            "/containerd.services.images.v1.Images/Create",
            "/runtime.v1.ImageService/FetchImage",
            "/grpc.health.v1.Health/Check",
        ] {
            assert_eq!(p.route(path, true), Dispatch::Forward, "{path}");
        }
    }

    #[test]
    fn with_a_gate_only_cri_passes() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _rt = rt.enter();
        let p = proxy(Some(Arc::new(NoGate)));
        for v in ["v1", "v1alpha2"] {
            assert_eq!(p.route(&format!("/runtime.{v}.ImageService/PullImage"), false), Dispatch::Decode(Surface::Pull));
            assert_eq!(p.route(&format!("/runtime.{v}.RuntimeService/CreateContainer"), false), Dispatch::Decode(Surface::Create));
            assert_eq!(p.route(&format!("/runtime.{v}.RuntimeService/RunPodSandbox"), false), Dispatch::Decode(Surface::Sandbox));
            assert_eq!(p.route(&format!("/runtime.{v}.ImageService/ImageStatus"), true), Dispatch::Decode(Surface::Inspect));
            assert_eq!(p.route(&format!("/runtime.{v}.ImageService/ImageStatus"), false), Dispatch::Forward);
            assert_eq!(p.route(&format!("/runtime.{v}.RuntimeService/Version"), false), Dispatch::Forward);
            assert_eq!(p.route(&format!("/runtime.{v}.ImageService/StreamImages"), false), Dispatch::Forward);
            assert_eq!(p.route(&format!("/runtime.{v}.RuntimeService/SomethingNew"), false), Dispatch::Forward);
            assert_eq!(
                p.route(&format!("/runtime.{v}.ImageService/FetchImage"), false),
                Dispatch::Unchecked(Unchecked::UnknownImageMethod)
            );
        }
        for path in [
            "/containerd.services.images.v1.Images/Create",
            "/containerd.services.transfer.v1.Transfer/Transfer",
            "/grpc.health.v1.Health/Check",
            "/",
        ] {
            assert_eq!(p.route(path, false), Dispatch::Unchecked(Unchecked::NotCri), "{path}");
        }
    }

    #[test]
    fn upstream_uri_keeps_path_and_authority() {
        assert_eq!(
            upstream_uri(&Uri::from_static("/runtime.v1.RuntimeService/Version")),
            "http://localhost/runtime.v1.RuntimeService/Version"
        );
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
        let handle = future_size(move |req: Request<CallerBody>| proxy.handle(peer, req));
        assert!(handle <= 2048, "a call's future is {handle} bytes");
    }
}
