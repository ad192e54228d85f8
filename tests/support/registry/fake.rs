//! FAKE registry and FAKE token server, for tests only.
//!
//! No registry that implements the OCI 1.1 referrers API installs on this machine (the testbed's
//! Debian `docker-registry` is distribution 2.8, which has none), and none with Docker token
//! auth. So this is a small in-memory registry following the OCI distribution spec for what
//! pullgate uses: `GET/HEAD /v2/<name>/manifests/<ref>`, `GET/HEAD /v2/<name>/blobs/<digest>`,
//! monolithic uploads, manifest PUT, and `GET /v2/<name>/referrers/<digest>` (computed from the
//! stored manifests' `subject`, with the `artifactType` filter and `OCI-Filters-Applied`). It can
//! require basic auth or bearer tokens from the fake token server, and inject faults: other bytes
//! than the digest asked for, oversized answers, error statuses, non-JSON bodies, hangs.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use pullgate::registry::Digest;
use serde_json::{json, Value};

/// A fault injected for requests whose path (without query) ends with a suffix.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer 200 with these bytes instead (and the requested digest in `Docker-Content-Digest`).
    Body(Bytes),
    /// Answer 200 with `n` bytes, announced in `Content-Length`.
    Oversize(usize),
    /// Answer 200 with `n` bytes, chunked (no `Content-Length`).
    OversizeChunked(usize),
    Status(u16),
    /// Answer 200 with an HTML page.
    NotJson,
    /// Never answer.
    Hang,
}

#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Basic {
        user: String,
        password: String,
    },
    /// Bearer tokens issued by the fake token server at `realm`.
    Bearer {
        realm: String,
        service: String,
        tokens: Arc<Mutex<HashSet<String>>>,
    },
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Bytes>,
    /// (repo, digest) → (media type, bytes)
    manifests: HashMap<(String, String), (String, Bytes)>,
    tags: HashMap<(String, String), String>,
    referrers_api: bool,
    auth: Option<Auth>,
    faults: Vec<(String, Fault)>,
    log: Vec<String>,
    uploads: u64,
    /// Omit `Docker-Content-Digest` on HEAD (some mirrors do), forcing a GET.
    no_digest_header: bool,
    /// Delay before answering each request, so that concurrency shows.
    delay: Option<std::time::Duration>,
    in_flight: usize,
    max_in_flight: usize,
}

/// The fake registry: serves on 127.0.0.1 until dropped.
pub struct FakeRegistry {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRegistry {
    /// Starts a fake registry; `referrers_api` turns the referrers endpoint on.
    pub async fn start(referrers_api: bool) -> FakeRegistry {
        FakeRegistry::start_with(referrers_api, None).await
    }

    /// Serving HTTPS with `tls` instead of plain HTTP.
    pub async fn start_tls(referrers_api: bool, tls: Arc<rustls::ServerConfig>) -> FakeRegistry {
        FakeRegistry::start_with(referrers_api, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(referrers_api: bool, tls: Option<tokio_rustls::TlsAcceptor>) -> FakeRegistry {
        let state = Arc::new(Mutex::new(State { referrers_api, ..State::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), addr, req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(hyper_util::rt::TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        FakeRegistry { addr, state, task }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_auth(&self, auth: Auth) {
        self.state.lock().unwrap().auth = Some(auth);
    }

    pub fn fault(&self, path_suffix: &str, fault: Fault) {
        self.state.lock().unwrap().faults.push((path_suffix.to_string(), fault));
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Delays every answer by `d`.
    pub fn delay(&self, d: std::time::Duration) {
        self.state.lock().unwrap().delay = Some(d);
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    pub fn omit_digest_header(&self, omit: bool) {
        self.state.lock().unwrap().no_digest_header = omit;
    }

    /// Requests seen, as `METHOD path` (query included), with ` auth` when authorized.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// Stores a blob directly.
    pub fn put_blob(&self, bytes: &[u8]) -> Digest {
        let d = Digest::sha256(bytes);
        self.state.lock().unwrap().blobs.insert(d.to_string(), Bytes::copy_from_slice(bytes));
        d
    }

    /// Stores a manifest directly, optionally tagged.
    pub fn put_manifest(&self, repo: &str, tag: Option<&str>, media_type: &str, bytes: &[u8]) -> Digest {
        self.put_manifest_as(repo, tag, media_type, bytes, Digest::sha256(bytes))
    }

    /// Stores a manifest under `d` (a digest of `bytes` with any algorithm), optionally tagged.
    pub fn put_manifest_as(&self, repo: &str, tag: Option<&str>, media_type: &str, bytes: &[u8], d: Digest) -> Digest {
        let mut st = self.state.lock().unwrap();
        st.manifests.insert((repo.into(), d.to_string()), (media_type.into(), Bytes::copy_from_slice(bytes)));
        if let Some(t) = tag {
            st.tags.insert((repo.into(), t.into()), d.to_string());
        }
        d
    }

    /// A small single-platform image (config + one layer) at `repo:tag`.
    pub fn put_image(&self, repo: &str, tag: &str, label: &str) -> (Digest, usize) {
        let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "pullgate": label})).unwrap();
        let layer = format!("layer of {label}").into_bytes();
        let cd = self.put_blob(&config);
        let ld = self.put_blob(&layer);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": layer.len()}]
        }))
        .unwrap();
        (self.put_manifest(repo, Some(tag), "application/vnd.oci.image.manifest.v1+json", &manifest), manifest.len())
    }
}

fn resp(status: u16, headers: &[(&str, String)], body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v.as_str());
    }
    r.body(Full::new(body)).unwrap()
}

fn error(status: u16, code: &str, msg: &str) -> Response<Full<Bytes>> {
    let body = json!({"errors": [{"code": code, "message": msg}]}).to_string();
    resp(status, &[("content-type", "application/json".into())], Bytes::from(body))
}

#[allow(clippy::result_large_err)]
fn authorized(auth: &Option<Auth>, req: &Request<Incoming>) -> Result<bool, Response<Full<Bytes>>> {
    let header = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    match auth {
        None | Some(Auth::None) => Ok(!header.is_empty()),
        Some(Auth::Basic { user, password }) => {
            let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
            if header == want {
                Ok(true)
            } else {
                let mut r = error(401, "UNAUTHORIZED", "authentication required");
                r.headers_mut().insert("www-authenticate", "Basic realm=\"fake-registry\"".parse().unwrap());
                Err(r)
            }
        }
        Some(Auth::Bearer { realm, service, tokens }) => {
            let ok = header.strip_prefix("Bearer ").is_some_and(|t| tokens.lock().unwrap().contains(t));
            if ok {
                Ok(true)
            } else {
                let path = req.uri().path();
                let repo = path.strip_prefix("/v2/").and_then(|p| p.split("/manifests/").next()).unwrap_or("");
                let repo = repo.split("/blobs/").next().unwrap_or(repo).split("/referrers/").next().unwrap_or(repo);
                let mut r = error(401, "UNAUTHORIZED", "authentication required");
                let challenge = format!("Bearer realm=\"{realm}\",service=\"{service}\",scope=\"repository:{repo}:pull\"");
                r.headers_mut().insert("www-authenticate", challenge.parse().unwrap());
                Err(r)
            }
        }
    }
}

async fn handle(state: Arc<Mutex<State>>, addr: SocketAddr, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay = {
        let mut st = state.lock().unwrap();
        st.in_flight += 1;
        st.max_in_flight = st.max_in_flight.max(st.in_flight);
        st.delay
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let r = answer(state.clone(), addr, req).await;
    state.lock().unwrap().in_flight -= 1;
    r
}

async fn answer(state: Arc<Mutex<State>>, addr: SocketAddr, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let (auth, fault) = {
        let st = state.lock().unwrap();
        (st.auth.clone(), st.faults.iter().rev().find(|(s, _)| path.ends_with(s.as_str())).map(|(_, f)| f.clone()))
    };
    let authed = match authorized(&auth, &req) {
        Ok(a) => a,
        Err(r) => {
            state
                .lock()
                .unwrap()
                .log
                .push(format!("{method} {path}{} 401", if query.is_empty() { String::new() } else { format!("?{query}") }));
            return Ok(r);
        }
    };
    state.lock().unwrap().log.push(format!(
        "{method} {path}{}{}",
        if query.is_empty() { String::new() } else { format!("?{query}") },
        if authed { " auth" } else { "" }
    ));
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if let Some(f) = fault {
        let want = path.rsplit('/').next().unwrap_or("").to_string();
        return Ok(match f {
            Fault::Body(b) => {
                resp(200, &[("docker-content-digest", want), ("content-type", "application/vnd.oci.image.manifest.v1+json".into())], b)
            }
            Fault::Oversize(n) => resp(200, &[], Bytes::from(vec![b'x'; n])),
            Fault::OversizeChunked(n) => {
                // A streamed body: hyper sends it chunked since no length is known up front.
                let _ = n;
                let stream = Bytes::from(vec![b'{'; n]);
                let mut r = Response::builder().status(200);
                r = r.header("transfer-encoding", "chunked");
                r.body(Full::new(stream)).unwrap()
            }
            Fault::Status(s) => error(s, "INJECTED", "injected failure"),
            Fault::NotJson => resp(200, &[("content-type", "text/html".into())], Bytes::from_static(b"<html>not a registry</html>")),
            Fault::Hang => {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                error(500, "HANG", "")
            }
        });
    }
    let head = method == "HEAD";
    let strip = |r: Response<Full<Bytes>>| if head { r.map(|_| Full::new(Bytes::new())) } else { r };
    if path == "/v2/" || path == "/v2" {
        return Ok(resp(200, &[], Bytes::from_static(b"{}")));
    }
    let Some(rest) = path.strip_prefix("/v2/") else { return Ok(error(404, "NOT_FOUND", "not found")) };
    let mut st = state.lock().unwrap();
    if let Some((repo, id)) = rest.rsplit_once("/manifests/") {
        match method.as_str() {
            "PUT" => {
                let ct = "application/vnd.oci.image.manifest.v1+json".to_string();
                let d = Digest::sha256(&body);
                let mt = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["mediaType"].as_str().map(String::from)).unwrap_or(ct);
                st.manifests.insert((repo.into(), d.to_string()), (mt, body));
                if Digest::parse(id).is_err() {
                    st.tags.insert((repo.into(), id.into()), d.to_string());
                }
                return Ok(resp(
                    201,
                    &[("docker-content-digest", d.to_string()), ("location", format!("/v2/{repo}/manifests/{d}"))],
                    Bytes::new(),
                ));
            }
            "GET" | "HEAD" => {
                let digest = if Digest::parse(id).is_ok() {
                    Some(id.to_string())
                } else {
                    st.tags.get(&(repo.to_string(), id.to_string())).cloned()
                };
                let Some((mt, bytes)) = digest.as_ref().and_then(|d| st.manifests.get(&(repo.to_string(), d.clone()))).cloned() else {
                    return Ok(strip(error(404, "MANIFEST_UNKNOWN", "manifest unknown")));
                };
                let mut headers = vec![("content-type", mt), ("content-length", bytes.len().to_string())];
                if !(head && st.no_digest_header) {
                    headers.push(("docker-content-digest", digest.unwrap()));
                }
                return Ok(strip(resp(200, &headers, bytes)));
            }
            _ => return Ok(error(405, "UNSUPPORTED", "method")),
        }
    }
    if let Some((repo, _)) = rest.rsplit_once("/blobs/uploads") {
        if method == "POST" {
            st.uploads += 1;
            return Ok(resp(202, &[("location", format!("http://{addr}/v2/{repo}/blobs/uploads/u{}", st.uploads))], Bytes::new()));
        }
        if method == "PUT" {
            let digest = query.split('&').find_map(|kv| kv.strip_prefix("digest=")).unwrap_or("").replace("%3A", ":");
            if !Digest::parse(&digest).is_ok_and(|d| d.matches(&body)) {
                return Ok(error(400, "DIGEST_INVALID", "digest mismatch"));
            }
            st.blobs.insert(digest.clone(), body);
            return Ok(resp(201, &[("docker-content-digest", digest)], Bytes::new()));
        }
    }
    if let Some((_repo, digest)) = rest.rsplit_once("/blobs/") {
        return Ok(match st.blobs.get(digest) {
            Some(b) => strip(resp(200, &[("content-length", b.len().to_string()), ("docker-content-digest", digest.into())], b.clone())),
            None => strip(error(404, "BLOB_UNKNOWN", "blob unknown")),
        });
    }
    if let Some((repo, digest)) = rest.rsplit_once("/referrers/") {
        if !st.referrers_api {
            return Ok(error(404, "NOT_FOUND", "no such route"));
        }
        let filter = query.split('&').find_map(|kv| kv.strip_prefix("artifactType=")).map(|s| s.replace("%2B", "+").replace("%2F", "/"));
        let mut manifests = Vec::new();
        let mut entries: Vec<_> = st.manifests.iter().filter(|((r, _), _)| r == repo).collect();
        entries.sort_by(|a, b| a.0 .1.cmp(&b.0 .1));
        for ((_, d), (mt, bytes)) in entries {
            let Ok(v) = serde_json::from_slice::<Value>(bytes) else { continue };
            if v["subject"]["digest"].as_str() != Some(digest) {
                continue;
            }
            let at = v["artifactType"].as_str().or(v["config"]["mediaType"].as_str()).unwrap_or("").to_string();
            if filter.as_ref().is_some_and(|f| *f != at) {
                continue;
            }
            let mut desc = json!({"mediaType": mt, "digest": d, "size": bytes.len(), "artifactType": at});
            if v["annotations"].is_object() {
                desc["annotations"] = v["annotations"].clone();
            }
            manifests.push(desc);
        }
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        let mut headers = vec![("content-type", "application/vnd.oci.image.index.v1+json".to_string())];
        if filter.is_some() {
            headers.push(("oci-filters-applied", "artifactType".into()));
        }
        return Ok(resp(200, &headers, Bytes::from(index.to_string())));
    }
    Ok(error(404, "NOT_FOUND", "not found"))
}

/// The fake token server (Docker token auth): `GET /token` with basic credentials or
/// anonymously, and `POST /token` with an OAuth2 refresh-token grant. Issues tokens into the
/// set the fake registry checks.
pub struct TokenServer {
    pub addr: SocketAddr,
    pub tokens: Arc<Mutex<HashSet<String>>>,
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Who the token server accepts.
#[derive(Clone, Default)]
pub struct TokenPolicy {
    pub anonymous: bool,
    pub users: Vec<(String, String)>,
    pub refresh_tokens: Vec<String>,
}

impl TokenServer {
    pub async fn start(policy: TokenPolicy) -> TokenServer {
        let tokens = Arc::new(Mutex::new(HashSet::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (t, l) = (tokens.clone(), log.clone());
        let task = tokio::spawn(async move {
            let counter = Arc::new(Mutex::new(0u64));
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (t, l, p, c) = (t.clone(), l.clone(), policy.clone(), counter.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (t, l, p, c) = (t.clone(), l.clone(), p.clone(), c.clone());
                        async move { Ok::<_, Infallible>(token(req, &t, &l, &p, &c).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                });
            }
        });
        TokenServer { addr, tokens, log, task }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Requests seen: `METHOD query-or-form [basic]`.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

async fn token(
    req: Request<Incoming>,
    tokens: &Mutex<HashSet<String>>,
    log: &Mutex<Vec<String>>,
    policy: &TokenPolicy,
    counter: &Mutex<u64>,
) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let form = String::from_utf8_lossy(&body).to_string();
    log.lock().unwrap().push(format!(
        "{method} {}{}",
        if method == "POST" { &form } else { &query },
        if auth.is_empty() { "" } else { " basic" }
    ));
    let ok = if method == "POST" {
        let refresh = form.split('&').find_map(|kv| kv.strip_prefix("refresh_token=")).unwrap_or("");
        form.contains("grant_type=refresh_token") && policy.refresh_tokens.iter().any(|t| t == refresh)
    } else if let Some(b) = auth.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(b).ok().and_then(|d| String::from_utf8(d).ok()).unwrap_or_default();
        policy.users.iter().any(|(u, p)| decoded == format!("{u}:{p}"))
    } else {
        policy.anonymous
    };
    if !ok {
        return resp(401, &[], Bytes::from_static(b"{\"details\":\"denied\"}"));
    }
    let mut n = counter.lock().unwrap();
    *n += 1;
    let tok = format!("tok-{n}");
    tokens.lock().unwrap().insert(tok.clone());
    let body = if method == "POST" { json!({"access_token": tok, "expires_in": 300}) } else { json!({"token": tok, "expires_in": 300}) };
    resp(200, &[("content-type", "application/json".into())], Bytes::from(body.to_string()))
}
