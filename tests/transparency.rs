//! Byte-level transparency of the pass-through path.
//!
//! What containerd *receives* cannot be observed from outside it, and no real server here streams
//! (Debian 12's containerd 1.6 does not implement GetContainerEvents), so these tests put a
//! recording HTTP/2 gRPC server (a fake, on purpose) behind the real `pullgate` binary and check
//! that requests, metadata, deadlines, bodies, trailers and errors arrive exactly as sent, that a
//! server stream is delivered message by message (not buffered), and that a client that goes away
//! cancels the upstream call. `e2e_proxy.rs` covers the same path against real containerd.

#[path = "support/daemon.rs"]
mod daemon;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{mpsc, Mutex, Notify};

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the recording upstream saw of one call.
#[derive(Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

struct Upstream {
    seen: mpsc::UnboundedSender<Seen>,
    /// Releases the second message of `/test.Echo/Stream`.
    release: Notify,
    /// Signalled when a `/test.Echo/Hang` call is dropped (its client went away).
    cancelled: Notify,
}

struct OnDrop(Arc<Upstream>);
impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.cancelled.notify_one();
    }
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut v = vec![0u8];
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    v.into()
}

fn ok_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t.insert("x-trailer", HeaderValue::from_static("kept"));
    t.insert("grpc-status-details-bin", HeaderValue::from_static("AAEC"));
    t
}

async fn upstream_call(up: Arc<Upstream>, req: Request<Incoming>) -> Result<Response<BoxBody>, h2::Error> {
    let path = req.uri().path().to_owned();
    if req.headers().contains_key("x-reset-with-cancel") {
        // As containerd 2.x does when a call's deadline expires: RST_STREAM(CANCEL), no headers.
        return Err(h2::Error::from(h2::Reason::CANCEL));
    }
    let (parts, body) = req.into_parts();
    if path == "/test.Echo/Hang" {
        let _guard = OnDrop(up.clone());
        std::future::pending::<()>().await;
    }
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let _ = up.seen.send(Seen { path: path.clone(), headers: parts.headers, body: body.clone() });
    let mut resp = Response::builder().header("content-type", "application/grpc").header("x-response-header", "r");
    match path.as_str() {
        "/test.Echo/Fail" => {
            resp = resp.header("grpc-status", "9").header("grpc-message", "precondition%20failed%3A%20%C3%BC");
            Ok(resp.body(Full::new(Bytes::new()).boxed()).unwrap())
        }
        "/test.Echo/Stream" => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(grpc_frame(b"first")))).await;
                up.release.notified().await;
                let _ = tx.send(Ok(Frame::data(grpc_frame(b"second")))).await;
                let _ = tx.send(Ok(Frame::trailers(ok_trailers()))).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
            Ok(resp.body(StreamBody::new(stream).boxed()).unwrap())
        }
        _ => {
            // Echo the request body, then trailers.
            let frames = vec![Ok(Frame::data(body)), Ok(Frame::trailers(ok_trailers()))];
            let stream = futures_util::stream::iter(frames);
            Ok(resp.body(StreamBody::new(stream).boxed()).unwrap())
        }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    pg: daemon::Daemon,
    socket: PathBuf,
    seen: Mutex<mpsc::UnboundedReceiver<Seen>>,
    up: Arc<Upstream>,
}

async fn setup() -> Setup {
    let dir = tempfile::Builder::new().prefix("pg-tr").tempdir_in("/tmp").unwrap();
    let up_sock = dir.path().join("upstream.sock");
    let (tx, rx) = mpsc::unbounded_channel();
    let up = Arc::new(Upstream { seen: tx, release: Notify::new(), cancelled: Notify::new() });
    let listener = tokio::net::UnixListener::bind(&up_sock).unwrap();
    let up2 = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let up = up2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| upstream_call(up.clone(), req));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    let socket = dir.path().join("pullgate.sock");
    // Allow non-root callers: the test may run unprivileged.
    let cfg = dir.path().join("config.yaml");
    let uid = nix::unistd::Uid::effective().as_raw();
    std::fs::write(&cfg, format!("listen: {}\nupstream: {}\naccess:\n  allowed_uids: [{uid}]\n", socket.display(), up_sock.display()))
        .unwrap();
    let pg = daemon::Daemon::start(&socket, &["--config", cfg.to_str().unwrap()]).unwrap();
    Setup { _dir: dir, pg, socket, seen: Mutex::new(rx), up }
}

async fn client(socket: &Path) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

fn grpc_request(path: &str, body: Bytes) -> Request<BoxBody> {
    Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "5S")
        .header("x-custom", "value")
        .header("x-bin-bin", "AQID")
        .header("user-agent", "grpc-go/1.60.0")
        .body(Full::new(body).boxed())
        .unwrap()
}

#[tokio::test]
async fn unary_request_and_response_pass_byte_for_byte() {
    let s = setup().await;
    let mut c = client(&s.socket).await;
    // A message with a field no proto of pullgate's knows (field 999), on a method nobody knows.
    let msg = grpc_frame(b"\x0a\x03abc\xba\x3e\x05hello");
    let resp = c.send_request(grpc_request("/example.v2.Future/Method", msg.clone())).await.unwrap();
    assert_eq!(resp.headers()["x-response-header"], "r");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(collected.to_bytes(), msg);
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-trailer"], "kept");
    assert_eq!(trailers["grpc-status-details-bin"], "AAEC");

    let seen = s.seen.lock().await.recv().await.unwrap();
    assert_eq!(seen.path, "/example.v2.Future/Method");
    assert_eq!(seen.body, msg);
    for (k, v) in
        [("grpc-timeout", "5S"), ("x-custom", "value"), ("x-bin-bin", "AQID"), ("user-agent", "grpc-go/1.60.0"), ("te", "trailers")]
    {
        assert_eq!(seen.headers.get(k).map(|v| v.to_str().unwrap()), Some(v), "header {k}: {:?}", seen.headers);
    }
}

#[tokio::test]
async fn intercepted_calls_forward_original_bytes() {
    let s = setup().await;
    let mut c = client(&s.socket).await;
    // PullImageRequest{image: ImageSpec{image: "reg/app:1", field 77: "x"}, field 99: 7}: the
    // unknown fields must reach the upstream untouched although pullgate decodes this call.
    let image_spec = b"\x0a\x09reg/app:1\xea\x04\x01x";
    let mut msg = vec![0x0a, image_spec.len() as u8];
    msg.extend_from_slice(image_spec);
    msg.extend_from_slice(b"\x98\x06\x07");
    let body = grpc_frame(&msg);
    for path in ["/runtime.v1.ImageService/PullImage", "/runtime.v1.ImageService/ImageStatus", "/runtime.v1.RuntimeService/CreateContainer"]
    {
        let resp = c.send_request(grpc_request(path, body.clone())).await.unwrap();
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-trailer"], "kept");
        assert_eq!(collected.to_bytes(), body);
        let seen = s.seen.lock().await.recv().await.unwrap();
        assert_eq!((seen.path.as_str(), &seen.body), (path, &body));
        assert_eq!(seen.headers["x-custom"], "value");
    }
}

/// Issue 17: the answers of intercepted calls (buffered by pullgate) carry no header the
/// upstream did not send (pullgate's buffered bodies used to add `content-length`), and the
/// upstream receives none the caller did not send either.
#[tokio::test]
async fn intercepted_calls_add_no_content_length() {
    let s = setup().await;
    let mut c = client(&s.socket).await;
    for path in ["/runtime.v1.ImageService/PullImage", "/runtime.v1.ImageService/ImageStatus", "/runtime.v1.RuntimeService/CreateContainer"]
    {
        // A streamed body, so the client sends no content-length (as gRPC clients do).
        let mut req = grpc_request(path, Bytes::new());
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![Ok(Frame::data(grpc_frame(b"\x0a\x03\x0a\x01x")))];
        *req.body_mut() = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let resp = c.send_request(req).await.unwrap();
        assert!(resp.headers().get("content-length").is_none(), "{path}: {:?}", resp.headers());
        let seen = s.seen.lock().await.recv().await.unwrap();
        assert!(seen.headers.get("content-length").is_none(), "{path} upstream: {:?}", seen.headers);
    }
}

/// Issue 17: a stream the upstream resets (containerd 2.x on an expired deadline) is reset for
/// the caller with the same reason, intercepted or not, instead of becoming an UNAVAILABLE
/// status made up by pullgate.
#[tokio::test]
async fn upstream_reset_reaches_the_caller() {
    let s = setup().await;
    for path in ["/runtime.v1.ImageService/PullImage", "/runtime.v1.RuntimeService/ListContainers"] {
        let mut c = client(&s.socket).await;
        let mut req = grpc_request(path, grpc_frame(b""));
        req.headers_mut().insert("x-reset-with-cancel", HeaderValue::from_static("1"));
        let err = c.send_request(req).await.expect_err("the call was answered, not reset");
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut reason = None;
        while let Some(e) = source {
            if let Some(h2e) = e.downcast_ref::<h2::Error>() {
                reason = h2e.reason();
            }
            source = e.source();
        }
        assert_eq!(reason, Some(h2::Reason::CANCEL), "{path}: {err:?}");
    }
}

#[tokio::test]
async fn error_status_and_message_pass_through() {
    let s = setup().await;
    let mut c = client(&s.socket).await;
    let resp = c.send_request(grpc_request("/test.Echo/Fail", grpc_frame(b""))).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "9");
    assert_eq!(resp.headers()["grpc-message"], "precondition%20failed%3A%20%C3%BC");
}

#[tokio::test]
async fn server_stream_is_not_buffered() {
    let s = setup().await;
    let mut c = client(&s.socket).await;
    let resp = c.send_request(grpc_request("/test.Echo/Stream", grpc_frame(b""))).await.unwrap();
    let mut body = resp.into_body();
    // The first message arrives while the upstream is still holding back the second one.
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("first message not delivered").unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), grpc_frame(b"first"));
    s.up.release.notify_one();
    let second = body.frame().await.unwrap().unwrap();
    assert_eq!(second.into_data().unwrap(), grpc_frame(b"second"));
    let trailers = body.frame().await.unwrap().unwrap().into_trailers().unwrap();
    assert_eq!(trailers["x-trailer"], "kept");
}

#[tokio::test]
async fn client_going_away_cancels_upstream_call() {
    let s = setup().await;
    let mut c = client(&s.socket).await;
    let call = tokio::spawn(c.send_request(grpc_request("/test.Echo/Hang", grpc_frame(b""))));
    tokio::time::sleep(Duration::from_millis(200)).await;
    call.abort(); // drops the client's stream: RST_STREAM(CANCEL) to pullgate
    tokio::time::timeout(Duration::from_secs(10), s.up.cancelled.notified())
        .await
        .expect("upstream call was not cancelled when the client went away");
    drop(s.pg);
}
