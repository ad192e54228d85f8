//! A minimal HTTP/1.1 client for test helpers (pushing to registries, poking servers): one
//! connection per request, or one kept for requests in a row; no pooling, loopback only.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request to `addr` (`path` may be a full `http://host/...` URL on that address).
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, String)], body: Bytes) -> Result<Answer, String> {
    Connection::open(addr).await?.send(method, path, headers, body).await
}

/// One keep-alive connection to `addr`, for requests sent one after the other on it.
pub struct Connection {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Result<Connection, String> {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(Connection { addr, sender })
    }

    /// Sends one request (`path` may be a full `http://host/...` URL on this address) and reads
    /// the whole answer.
    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, String)], body: Bytes) -> Result<Answer, String> {
        let path = match path.strip_prefix("http://") {
            Some(rest) => rest.find('/').map(|i| rest[i..].to_string()).unwrap_or_else(|| "/".into()),
            None => path.to_string(),
        };
        let mut req = http::Request::builder().method(method).uri(&path).header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = self.sender.send_request(req).await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Answer { status, headers, body })
    }
}
