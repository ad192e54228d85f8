//! The HTTP side: one small client per endpoint on hyper, with bounds on everything.
//!
//! Why not a registry client crate: `oci-client` (the maintained Rust OCI client) is built on
//! reqwest and has no notion of containerd's `override_path`, per-host headers or TLS client
//! certificates per mirror, and pullgate must ask exactly the endpoints containerd asks with
//! exactly its settings; the OCI distribution calls pullgate needs are few (HEAD/GET manifest,
//! GET blob, GET referrers, token), so this is a thin layer on the hyper stack pullgate already
//! ships.
//!
//! Every request:
//! - goes only to the endpoint it was built for (or a token realm on a host that endpoint
//!   configuration allows): connections are made by a [`Dialer`], which tests replace to record
//!   every connection attempt;
//! - waits for a per-endpoint-host permit (`max_concurrent_requests`), then has
//!   `connect_timeout` to connect and `request_timeout` (or what is left of the operation's
//!   budget, if less) for the whole exchange;
//! - reads at most its size limit, refusing at once when `Content-Length` says more;
//! - on `401` answers the `WWW-Authenticate` challenge once (basic, or a bearer token from the
//!   realm) and caches the result per endpoint, repository and credentials;
//! - follows redirects of GET and HEAD as containerd does (registries on object storage answer
//!   blob GETs with `307` to a storage host): at most [`MAX_REDIRECTS`] hops, credentials and
//!   `hosts.toml` headers only to the endpoint's own host, other hosts only when
//!   `registry.redirect_hosts` allows them. What comes back is checked by digest as always.
//!
//! Errors name the endpoint, the request and what went wrong, in one line.

mod authorize;
mod connect;
mod redirect;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use self::connect::{ConnectError, Connector};
use super::auth::{AuthMaterial, Credentials};
use super::config::RegistryConfig;
use super::hosts::Endpoint;
use super::tls;

const USER_AGENT: &str = concat!("pullgate/", env!("CARGO_PKG_VERSION"));
/// Error bodies and token answers are small; read no more of them.
const SMALL_BODY_LIMIT: u64 = 64 * 1024;
/// Endpoint clients kept (each holds a connection pool); more are rebuilt on demand.
const MAX_CLIENTS: usize = 64;
/// Cached authorizations (per endpoint, repository and credentials); cleared when full.
const MAX_AUTH_CACHE: usize = 1024;
/// Bearer tokens are used until this long before they expire.
const TOKEN_EXPIRY_SLACK: Duration = Duration::from_secs(5);
/// Redirects followed for one request: containerd's bound (its resolver stops "after 10
/// redirects", as Go's HTTP client does by default).
pub const MAX_REDIRECTS: usize = 10;

/// Opens TCP connections. The default resolves and connects; tests substitute one that records
/// every attempt, which is how pullgate shows it talks to nothing but the configured mirrors.
pub trait Dialer: Send + Sync + 'static {
    fn dial(&self, host: &str, port: u16) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;
}

/// Plain TCP to `host:port` (resolved with the system resolver).
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial(&self, host: &str, port: u16) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> {
        let host = host.to_string();
        Box::pin(async move {
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            let _ = stream.set_nodelay(true);
            Ok(stream)
        })
    }
}

/// A request that failed, in one line: `http://mirror:5000: GET /v2/app/manifests/1: <why>`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{endpoint}: {method} {path}: {kind}")]
pub struct RequestError {
    /// The endpoint, as a URL without path.
    pub endpoint: String,
    pub method: String,
    /// Path (and query) of the request.
    pub path: String,
    pub kind: ErrorKind,
}

impl RequestError {
    /// Whether the endpoint could not be reached at all (so it is skipped for the rest of the
    /// operation).
    pub fn is_unreachable(&self) -> bool {
        matches!(self.kind, ErrorKind::Connect(_) | ErrorKind::ConnectTimeout(_) | ErrorKind::Tls(_))
    }
}

/// What went wrong with a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("budget of {0:?} for this image exhausted (registry.discovery_timeout)")]
    Budget(Duration),
    #[error("HTTP {status}{detail}")]
    Status { status: u16, detail: String },
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("answer is {size} bytes, over the {limit}-byte limit ({setting})")]
    TooLarge { size: u64, limit: u64, setting: &'static str },
    #[error("served content with digest {got}, not the requested {want}: the mirror serves other bytes than asked for")]
    DigestMismatch { got: String, want: String },
    #[error("invalid answer: {0}")]
    Invalid(String),
    #[error("redirect not followed: {0}")]
    Redirect(String),
    #[error("{0}")]
    Http(String),
}

/// An answer: status, headers and the (bounded) body.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// ` (MANIFEST_UNKNOWN: manifest unknown)` from a registry error body, for messages.
    pub fn detail(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Errors {
            errors: Vec<ErrorItem>,
        }
        #[derive(serde::Deserialize)]
        struct ErrorItem {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        match serde_json::from_slice::<Errors>(&self.body) {
            Ok(e) if !e.errors.is_empty() => {
                let first = &e.errors[0];
                let text: String = format!("{}: {}", first.code, first.message).chars().take(200).collect();
                format!(" ({})", text.replace(['\n', '\r'], " "))
            }
            _ => String::new(),
        }
    }
}

/// One request to send.
pub(crate) struct Call<'a> {
    pub method: Method,
    /// Path and query below the endpoint's host, including the endpoint's API path.
    pub path: String,
    pub accept: &'a str,
    pub limit: u64,
    /// The setting that bounds this answer, named in errors.
    pub limit_setting: &'static str,
    /// Repository the request is about (the token scope).
    pub repository: &'a str,
}

/// Shared state of one resolve-and-discover operation: its deadline, the endpoints that
/// turned out unreachable (not tried again in this operation), and whose credentials it uses.
pub(crate) struct Op {
    pub deadline: Instant,
    pub budget: Duration,
    dead: Mutex<HashSet<String>>,
    pub credentials: Option<Credentials>,
    /// Endpoint hosts of this registry: token realms on them are allowed.
    pub endpoint_hosts: Vec<String>,
}

impl Op {
    pub fn new(budget: Duration, credentials: Option<Credentials>, endpoint_hosts: Vec<String>) -> Op {
        Op { deadline: Instant::now() + budget, budget, dead: Mutex::new(HashSet::new()), credentials, endpoint_hosts }
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn is_dead(&self, ep: &Endpoint) -> bool {
        self.dead.lock().map(|d| d.contains(&ep.url())).unwrap_or(false)
    }

    fn mark_dead(&self, ep: &Endpoint) {
        if let Ok(mut d) = self.dead.lock() {
            d.insert(ep.url());
        }
    }
}

/// The transport shared by all operations: endpoint clients, per-host permits, auth cache.
pub(crate) struct Transport {
    dialer: Arc<dyn Dialer>,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_concurrent: usize,
    static_credentials: Vec<(String, Credentials)>,
    token_realm_hosts: Vec<String>,
    /// Hosts redirects may lead to besides the endpoint's own; `None`: any host.
    redirect_hosts: Option<Vec<String>>,
    clients: Mutex<HashMap<String, Arc<EndpointClient>>>,
    /// One semaphore per endpoint host: bounds requests in flight to it across all pulls.
    permits: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// `Authorization` values per (endpoint, repository, credentials fingerprint), with expiry.
    auth: Mutex<HashMap<String, (HeaderValue, Instant)>>,
}

struct EndpointClient {
    client: Client<Connector, Full<Bytes>>,
}

impl Transport {
    pub fn new(config: &RegistryConfig, dialer: Arc<dyn Dialer>) -> Transport {
        Transport {
            dialer,
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            max_concurrent: config.max_concurrent_requests.max(1),
            static_credentials: config.credentials.iter().map(|(h, c)| (h.clone(), c.clone())).collect(),
            token_realm_hosts: config.token_realm_hosts.clone(),
            redirect_hosts: config.redirect_hosts.clone(),
            clients: Mutex::new(HashMap::new()),
            permits: Mutex::new(HashMap::new()),
            auth: Mutex::new(HashMap::new()),
        }
    }

    fn error(ep: &Endpoint, call: &Call<'_>, kind: ErrorKind) -> RequestError {
        RequestError { endpoint: ep.url(), method: call.method.to_string(), path: call.path.clone(), kind }
    }

    fn client_for(&self, ep: &Endpoint) -> Result<Arc<EndpointClient>, ErrorKind> {
        let key = format!("{ep:?}");
        let mut clients = self.clients.lock().map_err(|_| ErrorKind::Http("client cache poisoned".into()))?;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let tls = tls::client_config(&ep.tls).map_err(|e| ErrorKind::Tls(e.to_string()))?;
        let connector = Connector::new(
            self.dialer.clone(),
            tokio_rustls::TlsConnector::from(tls),
            ep.dial_timeout.unwrap_or(self.connect_timeout),
            ep.http_fallback.then(|| ep.host.to_ascii_lowercase()),
        );
        let client =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).pool_max_idle_per_host(4).build(connector);
        let c = Arc::new(EndpointClient { client });
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, c.clone());
        Ok(c)
    }

    fn permits_for(&self, host: &str) -> Arc<Semaphore> {
        let mut permits = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded like the clients: hosts come from requests (one per distinct registry named);
        // a semaphore no request holds is dropped (a fresh one is equivalent).
        if permits.len() >= MAX_CLIENTS {
            permits.retain(|_, s| Arc::strong_count(s) > 1);
        }
        permits.entry(host.to_ascii_lowercase()).or_insert_with(|| Arc::new(Semaphore::new(self.max_concurrent))).clone()
    }

    /// The credentials for endpoint `host`: kubelet's when they apply to it, else the
    /// configured ones for that host, else none.
    fn material_for(&self, op: &Op, host: &str) -> Result<AuthMaterial, ErrorKind> {
        let creds = op
            .credentials
            .as_ref()
            .filter(|c| c.applies_to(host) && !c.is_empty())
            .or_else(|| self.static_credentials.iter().find(|(h, _)| h.eq_ignore_ascii_case(host)).map(|(_, c)| c));
        match creds {
            None => Ok(AuthMaterial::Anonymous),
            Some(c) => c.material().map_err(|e| ErrorKind::Unauthorized(format!("credentials for {host}: {e}"))),
        }
    }

    async fn round_trip(
        &self,
        op: &Op,
        ep: &Endpoint,
        call: &Call<'_>,
        uri: &str,
        authorization: Option<HeaderValue>,
        endpoint_headers: bool,
    ) -> Result<Response, RequestError> {
        let err = |kind| Self::error(ep, call, kind);
        let uri: Uri = uri.parse().map_err(|e| err(ErrorKind::Http(format!("invalid URL: {e}"))))?;
        let mut req = Request::builder()
            .method(call.method.clone())
            .uri(uri)
            .header(http::header::ACCEPT, call.accept)
            .header(http::header::USER_AGENT, USER_AGENT);
        if endpoint_headers {
            for (name, value) in &ep.headers {
                req = req.header(name.as_str(), value.as_str());
            }
        }
        if let Some(a) = authorization {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        self.exchange(op, ep, call, req, Bytes::new()).await
    }

    /// One HTTP exchange within the endpoint host's permits and the time bounds.
    async fn exchange(
        &self,
        op: &Op,
        ep: &Endpoint,
        call: &Call<'_>,
        req: http::request::Builder,
        body: Bytes,
    ) -> Result<Response, RequestError> {
        let err = |kind| Self::error(ep, call, kind);
        let started = Instant::now();
        let remaining = op.remaining();
        if remaining.is_zero() {
            return Err(err(ErrorKind::Budget(op.budget)));
        }
        let req = req.body(Full::new(body)).map_err(|e| err(ErrorKind::Http(format!("cannot build request: {e}"))))?;
        let host = req.uri().authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        let client = self.client_for(ep).map_err(err)?;
        let permits = self.permits_for(&host);
        let _permit = match tokio::time::timeout(remaining, permits.acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(err(ErrorKind::Http("request permits closed".into()))),
            Err(_) => return Err(err(ErrorKind::Budget(op.budget))),
        };
        let (limit, budget_bound) = {
            let remaining = op.remaining();
            (self.request_timeout.min(remaining), remaining < self.request_timeout)
        };
        let is_head = call.method == Method::HEAD;
        let exchange = async {
            let resp = client.client.request(req).await.map_err(classify)?;
            let (parts, body) = resp.into_parts();
            let success = parts.status.is_success();
            let max = if success { call.limit } else { SMALL_BODY_LIMIT };
            if !is_head && success {
                if let Some(len) = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
                    if len > max {
                        return Err(ErrorKind::TooLarge { size: len, limit: max, setting: call.limit_setting });
                    }
                }
            }
            let body = if is_head {
                Bytes::new()
            } else {
                match Limited::new(body, max as usize).collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                        if success {
                            return Err(ErrorKind::TooLarge { size: max + 1, limit: max, setting: call.limit_setting });
                        }
                        Bytes::new()
                    }
                    Err(e) => return Err(ErrorKind::Http(format!("reading the answer: {}", chain(&*e)))),
                }
            };
            Ok(Response { status: parts.status, headers: parts.headers, body })
        };
        let result = match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r,
            Err(_) if budget_bound => Err(ErrorKind::Budget(op.budget)),
            Err(_) => Err(ErrorKind::Timeout(limit)),
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match &result {
            Ok(r) => {
                tracing::debug!(endpoint = %ep.url(), method = %call.method, path = %call.path, status = r.status.as_u16(), bytes = r.body.len(), ms, "registry request")
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep.url(), method = %call.method, path = %call.path, error = %e, ms, "registry request failed")
            }
        }
        let result = result.map_err(err);
        if let Err(e) = &result {
            if e.is_unreachable() {
                op.mark_dead(ep);
            }
        }
        result
    }
}

/// Describes a hyper client error by its cause (the connector's, when connecting failed).
fn classify(e: hyper_util::client::legacy::Error) -> ErrorKind {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            return c.kind.clone();
        }
        source = s.source();
    }
    ErrorKind::Http(chain(&e))
}

/// An error and its causes, `: `-joined, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out.replace(['\n', '\r'], " ")
}
