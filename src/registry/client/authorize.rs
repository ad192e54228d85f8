//! Authentication of a request: answering the `WWW-Authenticate` challenge of a `401` once
//! (basic, or a bearer token fetched from the realm), and caching the result per endpoint,
//! repository and credentials.

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri};

use super::{Call, ErrorKind, Op, RequestError, Response, Transport, MAX_AUTH_CACHE, SMALL_BODY_LIMIT, TOKEN_EXPIRY_SLACK, USER_AGENT};
use crate::registry::auth::{parse_challenges, url_encode, AuthMaterial, Challenge, TokenResponse};
use crate::registry::hosts::{split_host_port, Endpoint, Scheme};

impl Transport {
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

    /// Refuses a token realm that is not an http(s) URL with a usable host on a host
    /// [`Transport::realm_allowed`] allows.
    fn check_realm(&self, op: &Op, ep: &Endpoint, realm: &str) -> Result<(), ErrorKind> {
        let (scheme, rest) = if let Some(r) = realm.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = realm.strip_prefix("http://") {
            (Scheme::Http, r)
        } else {
            return Err(ErrorKind::Unauthorized(format!("token realm {realm:?} is not an http(s) URL")));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority.is_empty() || authority.contains('@') {
            return Err(ErrorKind::Unauthorized(format!("token realm {realm:?} has no usable host")));
        }
        if !self.realm_allowed(op, ep, scheme, authority) {
            return Err(ErrorKind::Unauthorized(format!(
                "token realm {realm} is on {authority}, which is not an endpoint of this registry; add it to registry.token_realm_hosts to allow it"
            )));
        }
        Ok(())
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
        self.check_realm(op, ep, realm).map_err(err)?;
        let (method, uri, body, content_type, basic) = token_request(realm, service, scope, material);
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
}

/// What a token request sends: method, URL, body, content type and basic credentials (base64).
/// A refresh token is an OAuth2 form POST; anything else a GET with the query appended.
fn token_request(
    realm: &str,
    service: Option<&str>,
    scope: &str,
    material: &AuthMaterial,
) -> (Method, String, Bytes, Option<&'static str>, Option<String>) {
    let mut query = Vec::new();
    if let Some(s) = service {
        query.push(format!("service={}", url_encode(s)));
    }
    query.push(format!("scope={}", url_encode(scope)));
    match material {
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
    }
}
