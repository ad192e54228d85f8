//! Redirects of GET and HEAD answers, followed as containerd does: at most
//! [`MAX_REDIRECTS`] hops, credentials and `hosts.toml` headers only to the endpoint's own
//! host, other hosts only when `registry.redirect_hosts` allows them.

use http::{HeaderValue, Method, StatusCode, Uri};

use super::{Call, ErrorKind, Op, RequestError, Response, Transport, MAX_REDIRECTS};
use crate::registry::hosts::{split_host_port, Endpoint};

impl Transport {
    /// Follows the redirects of a GET or HEAD answer (301, 302, 303, 307, 308, as Go's client
    /// does for containerd) and returns the first answer that is not one. `authorization` and
    /// the endpoint's `hosts.toml` headers go only to the endpoint's own scheme, host and port:
    /// a storage host gets a signed URL and nothing else (containerd's authorizer has nothing for
    /// another host either). Each hop is logged at debug level with its target (never its
    /// query, which may carry a signature); a refusal names the host.
    pub(super) async fn follow_redirects(
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::client::TcpDialer;
    use crate::registry::config::RegistryConfig;

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
