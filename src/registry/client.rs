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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::auth::{parse_challenges, url_encode, AuthMaterial, Challenge, Credentials, TokenResponse};
use super::config::RegistryConfig;
use super::hosts::{split_host_port, Endpoint, Scheme};
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
        let connector = Connector {
            dialer: self.dialer.clone(),
            tls: tokio_rustls::TlsConnector::from(tls),
            connect_timeout: ep.dial_timeout.unwrap_or(self.connect_timeout),
            fallback: ep.http_fallback.then(|| (ep.host.to_ascii_lowercase(), Arc::new(AtomicU8::new(FALLBACK_UNKNOWN)))),
        };
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

    /// Sends `call` to `ep`, answering one authentication challenge. Any status comes back as a
    /// [`Response`] except a 401 that survives authentication.
    pub async fn send(&self, op: &Op, ep: &Endpoint, call: &Call<'_>) -> Result<Response, RequestError> {
        let err = |kind| Self::error(ep, call, kind);
        let material = self.material_for(op, &ep.host).map_err(err)?;
        let auth_key = format!("{}\0{}\0{}", ep.url(), call.repository, material.fingerprint());
        let authorization = match &material {
            AuthMaterial::Bearer(t) => HeaderValue::from_str(&format!("Bearer {}", t.expose())).ok(),
            _ => self.cached_auth(&auth_key),
        };
        let uri = format!("{}://{}{}", ep.scheme.as_str(), ep.host, call.path);
        let resp = self.round_trip(op, ep, call, &uri, authorization.clone(), true).await?;
        if resp.status != StatusCode::UNAUTHORIZED {
            return self.follow_redirects(op, ep, call, &uri, resp, authorization).await;
        }
        // A cached authorization that is refused (token expired, password changed) is dropped.
        self.forget_auth(&auth_key);
        let challenges = parse_challenges(resp.headers.get_all(http::header::WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()));
        let who = match &material {
            AuthMaterial::Anonymous => {
                "anonymous access refused; the registry needs credentials (kubelet's, or registry.credentials for this host)"
            }
            _ => "the registry refused the credentials",
        };
        let bearer = challenges.iter().find(|c| matches!(c, Challenge::Bearer { .. }));
        let basic = challenges.iter().find(|c| matches!(c, Challenge::Basic { .. }));
        let (header, ttl) = match (bearer, basic, &material) {
            (Some(Challenge::Bearer { realm, service, scope }), _, m) if !matches!(m, AuthMaterial::Bearer(_)) => {
                let scope = scope.clone().unwrap_or_else(|| format!("repository:{}:pull", call.repository));
                let (token, ttl) = self.fetch_token(op, ep, call, realm, service.as_deref(), &scope, m).await?;
                let v = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| err(ErrorKind::Unauthorized("token server returned a token that is not a valid header value".into())))?;
                (v, ttl)
            }
            (_, Some(_), AuthMaterial::Basic { username, password }) => {
                let raw = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
                let v = HeaderValue::from_str(&format!("Basic {raw}"))
                    .map_err(|_| err(ErrorKind::Unauthorized("username or password has characters a header cannot carry".into())))?;
                (v, op.budget.max(Duration::from_secs(300)))
            }
            _ if challenges.is_empty() => return Err(err(ErrorKind::Unauthorized(format!("{who} (HTTP 401 without a usable challenge)")))),
            _ => return Err(err(ErrorKind::Unauthorized(who.to_string()))),
        };
        let mut header = header;
        header.set_sensitive(true);
        let resp = self.round_trip(op, ep, call, &uri, Some(header.clone()), true).await?;
        if resp.status == StatusCode::UNAUTHORIZED {
            return Err(err(ErrorKind::Unauthorized(who.to_string())));
        }
        self.remember_auth(auth_key, header.clone(), ttl);
        self.follow_redirects(op, ep, call, &uri, resp, Some(header)).await
    }

    /// Follows the redirects of a GET or HEAD answer (301, 302, 303, 307, 308, as Go's client
    /// does for containerd) and returns the first answer that is not one. `authorization` and
    /// the endpoint's `hosts.toml` headers go only to the endpoint's own scheme, host and port:
    /// a storage host gets a signed URL and nothing else (containerd's authorizer has nothing for
    /// another host either). Each hop is logged at debug level with its target (never its
    /// query, which may carry a signature); a refusal names the host.
    async fn follow_redirects(
        &self,
        op: &Op,
        ep: &Endpoint,
        call: &Call<'_>,
        first: &str,
        mut resp: Response,
        authorization: Option<HeaderValue>,
    ) -> Result<Response, RequestError> {
        if !matches!(call.method, Method::GET | Method::HEAD) {
            return Ok(resp);
        }
        let err = |kind| Self::error(ep, call, kind);
        let origin: Uri = first.parse().map_err(|e| err(ErrorKind::Http(format!("invalid URL: {e}"))))?;
        let mut current = origin.clone();
        // Whole URLs: a chain that only changes the query is no loop (the hop limit ends it).
        let mut visited = vec![origin.to_string()];
        while is_redirect(resp.status) {
            let status = resp.status.as_u16();
            let location = resp
                .header("location")
                .ok_or_else(|| err(ErrorKind::Invalid(format!("HTTP {status} redirect without a Location header"))))?;
            let next = resolve_location(&current, location)
                .map_err(|why| err(ErrorKind::Redirect(format!("HTTP {status} to {location:?}: {why}"))))?;
            let shown = without_query(&next);
            let host = next.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
            if visited.contains(&next.to_string()) {
                return Err(err(ErrorKind::Redirect(format!("redirect loop: {shown} was already visited in this request"))));
            }
            if visited.len() > MAX_REDIRECTS {
                return Err(err(ErrorKind::Redirect(format!("more than {MAX_REDIRECTS} redirects (the last to {shown})"))));
            }
            let same_origin = next.scheme() == origin.scheme() && authority_key(&next) == authority_key(&origin);
            if !same_origin && !self.redirect_allowed(&next) {
                return Err(err(ErrorKind::Redirect(format!(
                    "HTTP {status} to host {host}, which is not in registry.redirect_hosts; add it there to allow it"
                ))));
            }
            tracing::debug!(endpoint = %ep.url(), path = %call.path, status, to = %shown, hop = visited.len(), credentials = same_origin && authorization.is_some(), "following redirect");
            let auth = if same_origin { authorization.clone() } else { None };
            resp = self.round_trip(op, ep, call, &next.to_string(), auth, same_origin).await.map_err(|mut e| {
                // Name the host that could not be reached; limits and digests keep their kind.
                e.kind = match e.kind {
                    k @ (ErrorKind::Connect(_)
                    | ErrorKind::ConnectTimeout(_)
                    | ErrorKind::Tls(_)
                    | ErrorKind::Timeout(_)
                    | ErrorKind::Http(_)) => ErrorKind::Redirect(format!("redirect target {host}: {k}")),
                    other => other,
                };
                e
            })?;
            if !same_origin && resp.status == StatusCode::UNAUTHORIZED {
                return Err(err(ErrorKind::Unauthorized(format!(
                    "redirect target {host} asks for credentials; pullgate sends credentials only to the endpoint itself"
                ))));
            }
            visited.push(next.to_string());
            current = next;
        }
        if visited.len() > 1 && !resp.status.is_success() {
            tracing::debug!(endpoint = %ep.url(), path = %call.path, status = resp.status.as_u16(), from = %without_query(&current), "redirect target answered with an error");
        }
        Ok(resp)
    }

    /// Whether a redirect may lead to `uri`'s host: any host unless `registry.redirect_hosts`
    /// is set; then one of its entries (`host` for any port, or `host:port`).
    fn redirect_allowed(&self, uri: &Uri) -> bool {
        let Some(allowed) = &self.redirect_hosts else { return true };
        let (name, port) = authority_key(uri);
        allowed.iter().any(|entry| match split_host_port(entry) {
            (h, Some(p)) => h.eq_ignore_ascii_case(&name) && p == port,
            (h, None) => h.eq_ignore_ascii_case(&name),
        })
    }

    fn cached_auth(&self, key: &str) -> Option<HeaderValue> {
        let cache = self.auth.lock().ok()?;
        cache.get(key).filter(|(_, exp)| *exp > Instant::now()).map(|(v, _)| v.clone())
    }

    fn remember_auth(&self, key: String, value: HeaderValue, ttl: Duration) {
        if let Ok(mut cache) = self.auth.lock() {
            if cache.len() >= MAX_AUTH_CACHE {
                cache.clear();
            }
            cache.insert(key, (value, Instant::now() + ttl));
        }
    }

    fn forget_auth(&self, key: &str) {
        if let Ok(mut cache) = self.auth.lock() {
            cache.remove(key);
        }
    }

    /// Whether a token realm on `authority` may be contacted for endpoint `ep`: the endpoint's
    /// own host, another endpoint of the same registry, or a host in `token_realm_hosts` (with
    /// or without port).
    fn realm_allowed(&self, op: &Op, ep: &Endpoint, scheme: Scheme, authority: &str) -> bool {
        let key = |s: Scheme, a: &str| {
            let (h, p) = split_host_port(a);
            (h.to_ascii_lowercase(), p.unwrap_or(if s == Scheme::Http { 80 } else { 443 }))
        };
        let want = key(scheme, authority);
        let name = want.0.clone();
        key(ep.scheme, &ep.host) == want
            || op.endpoint_hosts.iter().any(|h| key(scheme, h) == want)
            || self.token_realm_hosts.iter().any(|h| match split_host_port(h) {
                (_, Some(_)) => key(scheme, h) == want,
                (n, None) => n.eq_ignore_ascii_case(&name),
            })
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_token(
        &self,
        op: &Op,
        ep: &Endpoint,
        call: &Call<'_>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        material: &AuthMaterial,
    ) -> Result<(String, Duration), RequestError> {
        let err = |kind| Self::error(ep, call, kind);
        let (scheme, rest) = if let Some(r) = realm.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = realm.strip_prefix("http://") {
            (Scheme::Http, r)
        } else {
            return Err(err(ErrorKind::Unauthorized(format!("token realm {realm:?} is not an http(s) URL"))));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority.is_empty() || authority.contains('@') {
            return Err(err(ErrorKind::Unauthorized(format!("token realm {realm:?} has no usable host"))));
        }
        if !self.realm_allowed(op, ep, scheme, authority) {
            return Err(err(ErrorKind::Unauthorized(format!(
                "token realm {realm} is on {authority}, which is not an endpoint of this registry; add it to registry.token_realm_hosts to allow it"
            ))));
        }
        let mut query = Vec::new();
        if let Some(s) = service {
            query.push(format!("service={}", url_encode(s)));
        }
        query.push(format!("scope={}", url_encode(scope)));
        let (method, uri, body, content_type, basic) = match material {
            AuthMaterial::RefreshToken(t) => {
                // OAuth2 refresh-token grant (what an identity token is for).
                let mut form = vec![
                    "grant_type=refresh_token".to_string(),
                    format!("refresh_token={}", url_encode(t.expose())),
                    "client_id=pullgate".to_string(),
                ];
                form.extend(query);
                (Method::POST, realm.to_string(), Bytes::from(form.join("&")), Some("application/x-www-form-urlencoded"), None)
            }
            m => {
                let sep = if realm.contains('?') { '&' } else { '?' };
                let basic = match m {
                    AuthMaterial::Basic { username, password } => {
                        Some(base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose())))
                    }
                    _ => None,
                };
                (Method::GET, format!("{realm}{sep}{}", query.join("&")), Bytes::new(), None, basic)
            }
        };
        let token_call = Call {
            method: method.clone(),
            path: format!("{} (token for {})", realm.split('?').next().unwrap_or(realm), call.path),
            accept: "application/json",
            limit: SMALL_BODY_LIMIT,
            limit_setting: "token answers",
            repository: call.repository,
        };
        let terr = |kind| Self::error(ep, &token_call, kind);
        let uri: Uri = uri.parse().map_err(|_| terr(ErrorKind::Unauthorized("token realm is not a valid URL".into())))?;
        let mut req = Request::builder().method(method).uri(uri).header(http::header::USER_AGENT, USER_AGENT);
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        if let Some(b) = basic {
            let mut v = HeaderValue::from_str(&format!("Basic {b}"))
                .map_err(|_| terr(ErrorKind::Unauthorized("username or password has characters a header cannot carry".into())))?;
            v.set_sensitive(true);
            req = req.header(http::header::AUTHORIZATION, v);
        }
        let resp = self.exchange(op, ep, &token_call, req, body).await?;
        if !resp.status.is_success() {
            let what = if matches!(material, AuthMaterial::Anonymous) { "anonymous token refused" } else { "credentials refused" };
            return Err(terr(ErrorKind::Unauthorized(format!("token server answered HTTP {}: {what}", resp.status.as_u16()))));
        }
        let parsed: TokenResponse = serde_json::from_slice(&resp.body)
            .map_err(|e| terr(ErrorKind::Invalid(format!("token answer is not the expected JSON: {e}"))))?;
        let token = parsed.bearer().ok_or_else(|| terr(ErrorKind::Invalid("token answer has no token".into())))?;
        let ttl = Duration::from_secs(parsed.expires_in.unwrap_or(60).max(1)).saturating_sub(TOKEN_EXPIRY_SLACK);
        Ok((token.to_string(), ttl.max(Duration::from_secs(1))))
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

/// The redirect statuses Go's HTTP client (so containerd) follows for GET and HEAD.
fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// `Location` resolved against the URL it answered (RFC 9110 10.2.2: it may be relative).
fn resolve_location(base: &Uri, location: &str) -> Result<Uri, String> {
    let location = location.trim();
    if location.starts_with("http://") || location.starts_with("https://") {
        let uri: Uri = location.parse().map_err(|e| format!("not a valid URL: {e}"))?;
        if uri.authority().is_none_or(|a| a.as_str().contains('@') || a.host().is_empty()) {
            return Err("no usable host".into());
        }
        return Ok(uri);
    }
    if location.contains("://") {
        return Err("only http and https redirects are followed".into());
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    let joined = if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{scheme}://{authority}{dir}/{location}")
    };
    joined.parse().map_err(|e| format!("not a valid URL: {e}"))
}

/// `scheme://host[:port]/path` of a URL, for logs and messages: the query of a storage
/// redirect carries its signature.
fn without_query(uri: &Uri) -> String {
    format!("{}://{}{}", uri.scheme_str().unwrap_or("http"), uri.authority().map(|a| a.as_str()).unwrap_or(""), uri.path())
}

/// Lower-case host and port (the scheme's default if none) of a URL.
fn authority_key(uri: &Uri) -> (String, u16) {
    let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    (host, port)
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

/// Why a connection could not be made.
#[derive(Debug)]
pub(crate) struct ConnectError {
    kind: ErrorKind,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl std::error::Error for ConnectError {}

const FALLBACK_UNKNOWN: u8 = 0;
const FALLBACK_TLS: u8 = 1;
const FALLBACK_PLAIN: u8 = 2;

/// Makes the connections of one endpoint's client: TCP through the [`Dialer`], TLS for
/// `https` URLs with the endpoint's settings, and containerd 2.x's HTTP fallback.
#[derive(Clone)]
struct Connector {
    dialer: Arc<dyn Dialer>,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    /// For an endpoint with HTTP fallback: its host and what worked (unknown, TLS, plain).
    fallback: Option<(String, Arc<AtomicU8>)>,
}

impl Connector {
    async fn dial(&self, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
        match tokio::time::timeout(self.connect_timeout, self.dialer.dial(host, port)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ConnectError { kind: ErrorKind::Connect(format!("{host}:{port}: {}", io_reason(&e))) }),
            Err(_) => Err(ConnectError { kind: ErrorKind::ConnectTimeout(self.connect_timeout) }),
        }
    }

    async fn connect(self, uri: Uri) -> Result<Conn, ConnectError> {
        let authority = uri.authority().map(|a| a.as_str().to_ascii_lowercase()).unwrap_or_default();
        let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_string();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = self.dial(&host, port).await?;
        if !https {
            return Ok(Conn(TokioIo::new(Io::Plain(tcp))));
        }
        let fallback = self.fallback.as_ref().filter(|(h, _)| *h == authority).map(|(_, s)| s.clone());
        if let Some(state) = &fallback {
            if state.load(Ordering::Relaxed) == FALLBACK_PLAIN {
                return Ok(Conn(TokioIo::new(Io::Plain(tcp))));
            }
        }
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| ConnectError { kind: ErrorKind::Tls(format!("{host:?} is not a valid TLS server name")) })?;
        let handshake = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp)).await;
        match handshake {
            Ok(Ok(s)) => {
                if let Some(state) = &fallback {
                    state.store(FALLBACK_TLS, Ordering::Relaxed);
                }
                Ok(Conn(TokioIo::new(Io::Tls(Box::new(s)))))
            }
            Ok(Err(e)) if fallback.as_ref().is_some_and(|s| s.load(Ordering::Relaxed) == FALLBACK_UNKNOWN) && speaks_plain_http(&e) => {
                tracing::debug!(endpoint = %authority, "TLS handshake failed, falling back to plain HTTP");
                let tcp = self.dial(&host, port).await?;
                if let Some(state) = &fallback {
                    state.store(FALLBACK_PLAIN, Ordering::Relaxed);
                }
                Ok(Conn(TokioIo::new(Io::Plain(tcp))))
            }
            Ok(Err(e)) => Err(ConnectError { kind: ErrorKind::Tls(format!("handshake with {authority}: {}", io_reason(&e))) }),
            Err(_) => Err(ConnectError { kind: ErrorKind::ConnectTimeout(self.connect_timeout) }),
        }
    }
}

/// A handshake failure that means the server answered in plain HTTP (Go's
/// `tls.RecordHeaderError`, which containerd's fallback looks for); certificate errors never
/// fall back.
fn speaks_plain_http(e: &io::Error) -> bool {
    match e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidMessage(_)) => true,
        Some(_) => false,
        None => e.kind() == io::ErrorKind::UnexpectedEof,
    }
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection as hyper's pooled client wants it.
struct Conn(TokioIo<Io>);

impl hyper::rt::Read for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: hyper::rt::ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn locations_resolve_against_the_answering_url() {
        let base = uri("https://mirror:5000/v2/app/blobs/sha256:ab?x=1");
        let r = |l: &str| resolve_location(&base, l).map(|u| u.to_string());
        assert_eq!(r("https://s3.internal/bucket/ab?sig=1").unwrap(), "https://s3.internal/bucket/ab?sig=1");
        assert_eq!(r("/other/path").unwrap(), "https://mirror:5000/other/path");
        assert_eq!(r("//cdn.internal/x").unwrap(), "https://cdn.internal/x");
        assert_eq!(r("sibling").unwrap(), "https://mirror:5000/v2/app/blobs/sibling");
        assert!(r("ftp://files/x").unwrap_err().contains("only http and https"));
        assert!(r("https://user@evil/x").unwrap_err().contains("no usable host"));
        assert!(r("http://").is_err());
    }

    #[test]
    fn redirect_statuses_are_gos() {
        for s in [301, 302, 303, 307, 308] {
            assert!(is_redirect(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 300, 304, 305, 401, 404] {
            assert!(!is_redirect(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn logged_targets_carry_no_query() {
        assert_eq!(without_query(&uri("https://s3/b/k?X-Amz-Signature=secret")), "https://s3/b/k");
        assert_eq!(authority_key(&uri("https://S3.internal/x")), ("s3.internal".into(), 443));
        assert_eq!(authority_key(&uri("http://[fd00::1]:9000/x")), ("fd00::1".into(), 9000));
    }

    #[test]
    fn redirect_allow_list_matches_host_and_port() {
        let mut config = RegistryConfig::default();
        let t = Transport::new(&config, Arc::new(TcpDialer));
        assert!(t.redirect_allowed(&uri("https://anywhere/x")), "no list: any host");
        config.redirect_hosts = Some(vec!["s3.internal".into(), "10.0.0.5:9000".into()]);
        let t = Transport::new(&config, Arc::new(TcpDialer));
        assert!(t.redirect_allowed(&uri("https://S3.internal/x")));
        assert!(t.redirect_allowed(&uri("http://s3.internal:8080/x")), "an entry without port: any port");
        assert!(t.redirect_allowed(&uri("http://10.0.0.5:9000/x")));
        assert!(!t.redirect_allowed(&uri("http://10.0.0.5/x")), "port 80 is not 9000");
        assert!(!t.redirect_allowed(&uri("https://s3.internal.evil/x")));
        config.redirect_hosts = Some(vec![]);
        assert!(!Transport::new(&config, Arc::new(TcpDialer)).redirect_allowed(&uri("https://s3.internal/x")));
    }
}
