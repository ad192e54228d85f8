//! A redirecting front for a real registry, as registries on object storage behave (Harbor,
//! Quay, Artifactory, distribution with a redirecting storage middleware): the *mirror* address
//! wants Basic credentials and answers every blob GET with `307` to a *storage* address on
//! another host (`127.0.0.2`); everything else, and what storage is asked, is passed to the real
//! registry behind. It is test code in front of the real registry, not a fake of one: the bytes
//! come from docker-registry. Both sides record what they were sent, so a test can see where
//! credentials went. What storage does is switchable ([`Storage`]) to provoke loops, endless
//! redirect chains and foreign bytes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the storage side does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Serve what the registry has.
    Serve,
    /// Redirect to the very same URL (a loop).
    Loop,
    /// Redirect to a new URL every time (a chain that never ends).
    Chain,
    /// Serve other bytes than the registry has for blobs.
    Tamper,
}

/// One request a side saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub side: &'static str,
    pub method: String,
    pub path: String,
    pub user_agent: String,
    pub authorization: Option<String>,
}

pub struct Front {
    pub mirror: SocketAddr,
    pub storage: SocketAddr,
    pub mode: Arc<Mutex<Storage>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

struct State {
    registry: SocketAddr,
    storage: SocketAddr,
    basic: String,
    mode: Arc<Mutex<Storage>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Front {
    /// Starts the front on `127.0.0.1` (mirror) and `127.0.0.2` (storage), in front of the
    /// registry at `registry`; the mirror wants `user:password`.
    pub async fn start(registry: SocketAddr, user: &str, password: &str) -> std::io::Result<Front> {
        let mirror_l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let storage_l = tokio::net::TcpListener::bind("127.0.0.2:0").await?;
        let (mirror, storage) = (mirror_l.local_addr()?, storage_l.local_addr()?);
        let mode = Arc::new(Mutex::new(Storage::Serve));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            registry,
            storage,
            basic: format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))),
            mode: mode.clone(),
            seen: seen.clone(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        for (listener, side) in [(mirror_l, "mirror"), (storage_l, "storage")] {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { return };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(state.clone(), side, req));
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
            });
        }
        Ok(Front { mirror, storage, mode, seen })
    }

    pub fn set(&self, mode: Storage) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

fn reply(status: StatusCode, headers: &[(&str, String)], body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(Full::new(body)).unwrap()
}

fn is_blob_get(req: &Request<Incoming>) -> bool {
    req.method() == http::Method::GET && req.uri().path().contains("/blobs/sha256:")
}

async fn handle(state: Arc<State>, side: &'static str, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let path_q = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    state.seen.lock().unwrap().push(Seen {
        side,
        method: req.method().to_string(),
        path: path_q.clone(),
        user_agent: header("user-agent").unwrap_or_default(),
        authorization: header("authorization"),
    });
    if side == "mirror" {
        if header("authorization").as_deref() != Some(state.basic.as_str()) {
            let h = [("www-authenticate", "Basic realm=\"front\"".to_string()), ("content-type", "application/json".into())];
            return Ok(reply(
                StatusCode::UNAUTHORIZED,
                &h,
                Bytes::from_static(br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#),
            ));
        }
        if is_blob_get(&req) {
            // A signed URL, as object storage hands out: the signature is in the query.
            let to = format!("http://{}{}?X-Signature=s3cr3t-sig", state.storage, req.uri().path());
            return Ok(reply(StatusCode::TEMPORARY_REDIRECT, &[("location", to)], Bytes::new()));
        }
        return Ok(proxy(&state, req).await);
    }
    let mode = *state.mode.lock().unwrap();
    match mode {
        Storage::Loop => {
            let to = format!("http://{}{}", state.storage, path_q);
            Ok(reply(StatusCode::TEMPORARY_REDIRECT, &[("location", to)], Bytes::new()))
        }
        Storage::Chain => {
            let hop = state.seen.lock().unwrap().len();
            let to = format!("http://{}{}?hop={hop}", state.storage, req.uri().path());
            Ok(reply(StatusCode::FOUND, &[("location", to)], Bytes::new()))
        }
        Storage::Tamper if is_blob_get(&req) => {
            let other = Bytes::from_static(b"{\"not\":\"the bytes that were signed\"}");
            Ok(reply(StatusCode::OK, &[("content-length", other.len().to_string())], other))
        }
        _ => Ok(proxy(&state, req).await),
    }
}

/// Passes a request to the registry (without credentials: it has none) and its answer back.
async fn proxy(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let uri = format!("http://{}{}", state.registry, parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut out = Request::builder().method(parts.method).uri(uri);
    for (k, v) in &parts.headers {
        if k != http::header::HOST && k != http::header::AUTHORIZATION {
            out = out.header(k, v);
        }
    }
    let Ok(out) = out.body(Full::new(body)) else {
        return reply(StatusCode::BAD_GATEWAY, &[], Bytes::new());
    };
    match state.client.request(out).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let mut r = Response::from_parts(parts, Full::new(body));
            r.headers_mut().remove(http::header::TRANSFER_ENCODING);
            r
        }
        Err(e) => reply(StatusCode::BAD_GATEWAY, &[], Bytes::from(e.to_string())),
    }
}
