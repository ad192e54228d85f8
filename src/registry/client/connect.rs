//! Connections of one endpoint's client: TCP through the [`Dialer`], TLS with the endpoint's
//! settings for `https` URLs, and containerd 2.x's fallback to plain HTTP.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{Dialer, ErrorKind};

/// Why a connection could not be made.
#[derive(Debug)]
pub(crate) struct ConnectError {
    pub(super) kind: ErrorKind,
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
pub(super) struct Connector {
    dialer: Arc<dyn Dialer>,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    /// For an endpoint with HTTP fallback: its host and what worked (unknown, TLS, plain).
    fallback: Option<(String, Arc<AtomicU8>)>,
}

impl Connector {
    /// `fallback_host`: the endpoint host (lower case) when it has containerd's HTTP fallback.
    pub(super) fn new(
        dialer: Arc<dyn Dialer>,
        tls: tokio_rustls::TlsConnector,
        connect_timeout: Duration,
        fallback_host: Option<String>,
    ) -> Connector {
        Connector { dialer, tls, connect_timeout, fallback: fallback_host.map(|h| (h, Arc::new(AtomicU8::new(FALLBACK_UNKNOWN)))) }
    }

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
pub(super) struct Conn(TokioIo<Io>);

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
