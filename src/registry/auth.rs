//! Registry credentials and the `WWW-Authenticate` challenge (Docker token auth, basic auth).
//!
//! Credentials come from kubelet (`PullImageRequest.auth`, a CRI `AuthConfig`) or from
//! pullgate's configuration, per endpoint host. They are sent only to the endpoint they are for:
//! like containerd's CRI plugin, kubelet's credentials with a `server_address` apply only to the
//! endpoint host it names, and without one to every endpoint of the pull. Secrets never reach a
//! log: [`Secret`] and [`Credentials`] print as `<redacted>`.

use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

/// A password or token: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Registry credentials, with the fields of CRI's `AuthConfig` (what kubelet sends in
/// `PullImageRequest.auth`) and the same names in pullgate's configuration.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// base64 of `username:password`, as in Docker's `config.json`.
    pub auth: Option<Secret>,
    /// An OAuth2 refresh token, exchanged at the token server.
    pub identity_token: Option<Secret>,
    /// A bearer token sent to the registry as is.
    pub registry_token: Option<Secret>,
    /// When set, the credentials are only for this host (`host[:port]`, a scheme is ignored).
    pub server_address: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |o: &Option<Secret>| if o.is_some() { "<redacted>" } else { "<none>" };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .field("server_address", &self.server_address)
            .finish()
    }
}

/// Why credentials cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("`auth` is not valid base64")]
    AuthNotBase64,
    #[error("`auth` does not decode to username:password")]
    AuthNoColon,
}

/// Credentials reduced to what is sent (CRI's `ParseAuth` order: username and password,
/// identity token, `auth`; then the registry token, which CRI leaves unused).
#[derive(Clone, PartialEq, Eq)]
pub enum AuthMaterial {
    Anonymous,
    Basic { username: String, password: Secret },
    RefreshToken(Secret),
    Bearer(Secret),
}

impl fmt::Debug for AuthMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthMaterial::Anonymous => f.write_str("Anonymous"),
            AuthMaterial::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            AuthMaterial::RefreshToken(_) => f.write_str("RefreshToken(<redacted>)"),
            AuthMaterial::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl AuthMaterial {
    /// A stable, non-reversible key for caching tokens per credential.
    pub(crate) fn fingerprint(&self) -> String {
        let text = match self {
            AuthMaterial::Anonymous => return "anonymous".into(),
            AuthMaterial::Basic { username, password } => format!("basic\0{username}\0{}", password.expose()),
            AuthMaterial::RefreshToken(t) => format!("refresh\0{}", t.expose()),
            AuthMaterial::Bearer(t) => format!("bearer\0{}", t.expose()),
        };
        crate::digest::Digest::sha256(text.as_bytes()).hex()[..32].to_string()
    }
}

impl Credentials {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials { username: Some(username.into()), password: Some(Secret::new(password)), ..Credentials::default() }
    }

    /// Whether these credentials may be sent to endpoint `host` (`host[:port]`).
    pub fn applies_to(&self, host: &str) -> bool {
        match self.server_address.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => true,
            Some(addr) => {
                let addr = addr.split_once("://").map(|(_, rest)| rest).unwrap_or(addr);
                let addr = addr.split('/').next().unwrap_or(addr);
                addr.eq_ignore_ascii_case(host)
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.material().map(|m| m == AuthMaterial::Anonymous).unwrap_or(false)
    }

    /// What to send, in CRI's order of precedence.
    pub fn material(&self) -> Result<AuthMaterial, CredentialsError> {
        if let Some(username) = self.username.as_deref().filter(|u| !u.is_empty()) {
            let password = self.password.clone().unwrap_or_else(|| Secret::new(""));
            return Ok(AuthMaterial::Basic { username: username.to_string(), password });
        }
        if let Some(t) = self.identity_token.as_ref().filter(|t| !t.0.is_empty()) {
            return Ok(AuthMaterial::RefreshToken(t.clone()));
        }
        if let Some(a) = self.auth.as_ref().filter(|a| !a.0.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD.decode(a.0.trim()).map_err(|_| CredentialsError::AuthNotBase64)?;
            let decoded = String::from_utf8(decoded).map_err(|_| CredentialsError::AuthNoColon)?;
            let (user, pass) = decoded.split_once(':').ok_or(CredentialsError::AuthNoColon)?;
            return Ok(AuthMaterial::Basic { username: user.to_string(), password: Secret::new(pass.trim_matches('\0')) });
        }
        if let Some(t) = self.registry_token.as_ref().filter(|t| !t.0.is_empty()) {
            return Ok(AuthMaterial::Bearer(t.clone()));
        }
        Ok(AuthMaterial::Anonymous)
    }
}

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic { realm: Option<String> },
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// The challenges pullgate can answer from the `WWW-Authenticate` values (RFC 7235 syntax:
/// `Bearer realm="...",service="...",scope="..."`, several challenges possibly in one value).
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for value in values {
        let mut scheme: Option<String> = None;
        let mut params: Vec<(String, String)> = Vec::new();
        let mut flush = |scheme: &mut Option<String>, params: &mut Vec<(String, String)>| {
            if let Some(s) = scheme.take() {
                let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
                match s.to_ascii_lowercase().as_str() {
                    "basic" => out.push(Challenge::Basic { realm: get("realm") }),
                    "bearer" => {
                        if let Some(realm) = get("realm") {
                            out.push(Challenge::Bearer { realm, service: get("service"), scope: get("scope") });
                        }
                    }
                    _ => {}
                }
            }
            params.clear();
        };
        let b = value.as_bytes();
        let mut i = 0;
        loop {
            while i < b.len() && (b[i] == b' ' || b[i] == b',' || b[i] == b'\t') {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            let start = i;
            while i < b.len() && !matches!(b[i], b' ' | b'\t' | b',' | b'=') {
                i += 1;
            }
            let token = &value[start..i];
            let mut j = i;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            if j < b.len() && b[j] == b'=' {
                // auth-param: token = token / quoted-string
                j += 1;
                while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                    j += 1;
                }
                let mut v = String::new();
                if j < b.len() && b[j] == b'"' {
                    j += 1;
                    while j < b.len() && b[j] != b'"' {
                        if b[j] == b'\\' && j + 1 < b.len() {
                            j += 1;
                        }
                        let ch_len = value[j..].chars().next().map(char::len_utf8).unwrap_or(1);
                        v.push_str(&value[j..j + ch_len]);
                        j += ch_len;
                    }
                    j += 1;
                } else {
                    let vs = j;
                    while j < b.len() && b[j] != b',' && b[j] != b' ' {
                        j += 1;
                    }
                    v.push_str(&value[vs..j]);
                }
                params.push((token.to_string(), v));
                i = j.min(b.len());
            } else {
                // a new auth-scheme
                flush(&mut scheme, &mut params);
                scheme = Some(token.to_string());
                i = j;
            }
        }
        flush(&mut scheme, &mut params);
    }
    out
}

/// The token server's answer (Docker token spec: `token`, or OAuth2's `access_token`).
#[derive(Debug, Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    /// Seconds; the spec's default is 60.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn bearer(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.is_empty()).or(self.access_token.as_deref().filter(|t| !t.is_empty()))
    }
}

/// `application/x-www-form-urlencoded` / query encoding of one component.
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials {
            username: Some("bob".into()),
            password: Some(Secret::new("hunter2")),
            auth: Some(Secret::new("Ym9iOmh1bnRlcjI=")),
            identity_token: Some(Secret::new("idtok")),
            registry_token: Some(Secret::new("regtok")),
            server_address: None,
        };
        let s = format!("{c:?} {:?}", c.material().unwrap());
        for secret in ["hunter2", "Ym9iOmh1bnRlcjI=", "idtok", "regtok"] {
            assert!(!s.contains(secret), "{s}");
        }
        assert!(s.contains("bob"));
    }

    #[test]
    fn cri_precedence() {
        let m = |c: Credentials| c.material().unwrap();
        assert_eq!(m(Credentials::default()), AuthMaterial::Anonymous);
        assert!(Credentials::default().is_empty());
        assert_eq!(m(Credentials::basic("u", "p")), AuthMaterial::Basic { username: "u".into(), password: Secret::new("p") });
        let auth = Credentials { auth: Some(Secret::new("dTpwOmFzcw==")), ..Default::default() }; // u:p:ass
        assert_eq!(m(auth), AuthMaterial::Basic { username: "u".into(), password: Secret::new("p:ass") });
        let both = Credentials { identity_token: Some(Secret::new("refresh")), auth: Some(Secret::new("dTpw")), ..Default::default() };
        assert_eq!(m(both), AuthMaterial::RefreshToken(Secret::new("refresh")));
        let reg = Credentials { registry_token: Some(Secret::new("t")), ..Default::default() };
        assert_eq!(m(reg), AuthMaterial::Bearer(Secret::new("t")));
        let bad = Credentials { auth: Some(Secret::new("!!!")), ..Default::default() };
        assert_eq!(bad.material().unwrap_err(), CredentialsError::AuthNotBase64);
        let nocolon = Credentials { auth: Some(Secret::new("dXNlcg==")), ..Default::default() };
        assert_eq!(nocolon.material().unwrap_err(), CredentialsError::AuthNoColon);
    }

    #[test]
    fn server_address_limits_where_credentials_go() {
        let mut c = Credentials::basic("u", "p");
        assert!(c.applies_to("anything:5000"));
        c.server_address = Some("https://mirror.internal:5000/".into());
        assert!(c.applies_to("mirror.internal:5000"));
        assert!(!c.applies_to("mirror.internal"));
        assert!(!c.applies_to("ghcr.io"));
        c.server_address = Some("ghcr.io".into());
        assert!(c.applies_to("GHCR.io"));
    }

    #[test]
    fn challenges() {
        let c = parse_challenges([r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#]);
        assert_eq!(
            c,
            [Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into())
            }]
        );
        let c = parse_challenges([r#"Basic realm="Registry Realm""#]);
        assert_eq!(c, [Challenge::Basic { realm: Some("Registry Realm".into()) }]);
        // several challenges in one value, unknown schemes skipped, escapes, unquoted values
        let c = parse_challenges([r#"Negotiate, Basic realm="a \"q\"", bearer realm=https://t/x, service=s"#]);
        assert_eq!(
            c,
            [
                Challenge::Basic { realm: Some("a \"q\"".into()) },
                Challenge::Bearer { realm: "https://t/x".into(), service: Some("s".into()), scope: None }
            ]
        );
        assert!(parse_challenges(["Bearer service=\"x\""]).is_empty(), "bearer without realm is useless");
        assert!(parse_challenges(["", "  ,, ", "=\"", "Basic realm=\"unterminated"]).len() <= 2);
    }

    #[test]
    fn token_responses() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"a","expires_in":300}"#).unwrap();
        assert_eq!((t.bearer(), t.expires_in), (Some("a"), Some(300)));
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"b","issued_at":"x"}"#).unwrap();
        assert_eq!(t.bearer(), Some("b"));
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(t.bearer(), None);
        assert_eq!(url_encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
