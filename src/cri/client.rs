//! CRI calls pullgate makes itself: `Version` (is containerd, or pullgate, answering?) and
//! `ListImages` (what is on the node), for `/ready` and `pullgate doctor`.
//!
//! Built on [`Upstream`], the same HTTP/2 connection handling the proxy uses towards containerd
//! (lazy connect, fail fast while backing off, reconnect after a restart), so a probe sees
//! containerd exactly as forwarded calls do.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Either, Full};
use prost::Message;

use super::api;
use super::grpc::{self, Code};
use super::settings::UpstreamConnection;
use super::upstream::{Upstream, UpstreamError};

/// Why a call made by pullgate itself failed; one line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{method} failed with gRPC code {code}: {message}")]
    Status { method: &'static str, code: i32, message: String },
    #[error("{method}: cannot read the answer: {reason}")]
    Malformed { method: &'static str, reason: String },
}

/// A CRI client on one unix socket.
pub struct CriClient {
    upstream: Upstream,
    /// Bound on one call, connecting included.
    timeout: Duration,
}

impl CriClient {
    pub fn new(socket: &Path, settings: UpstreamConnection, timeout: Duration) -> CriClient {
        CriClient { upstream: Upstream::new(socket, settings), timeout }
    }

    pub fn socket(&self) -> &Path {
        self.upstream.path()
    }

    /// `RuntimeService/Version`.
    pub async fn version(&self) -> Result<api::VersionResponse, CallError> {
        let req = api::VersionRequest { version: "v1".into() };
        self.unary("/runtime.v1.RuntimeService/Version", "Version", &req).await
    }

    /// `ImageService/ListImages`: every image containerd's CRI plugin knows.
    pub async fn list_images(&self) -> Result<Vec<api::Image>, CallError> {
        let resp: api::ListImagesResponse =
            self.unary("/runtime.v1.ImageService/ListImages", "ListImages", &api::ListImagesRequest {}).await?;
        Ok(resp.images)
    }

    /// `RuntimeService/Status` with `verbose`: containerd's `info` map (its CRI configuration).
    pub async fn status_info(&self) -> Result<std::collections::HashMap<String, String>, CallError> {
        let resp: api::StatusResponse =
            self.unary("/runtime.v1.RuntimeService/Status", "Status", &api::StatusRequest { verbose: true }).await?;
        Ok(resp.info)
    }

    async fn unary<Req: Message, Resp: Message + Default>(
        &self,
        path: &'static str,
        method: &'static str,
        req: &Req,
    ) -> Result<Resp, CallError> {
        match tokio::time::timeout(self.timeout, self.unary_unbounded(path, method, req)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(self.timeout)),
        }
    }

    async fn unary_unbounded<Req: Message, Resp: Message + Default>(
        &self,
        path: &'static str,
        method: &'static str,
        req: &Req,
    ) -> Result<Resp, CallError> {
        let sender = self.upstream.sender().await.map_err(|e| {
            // `UpstreamError` speaks of containerd; this client also calls pullgate itself.
            let (UpstreamError::Connect { path, reason } | UpstreamError::BackingOff { path, reason, .. }) = e;
            CallError::Unreachable(format!("cannot connect to {}: {reason}", path.display()))
        })?;
        let head = Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| CallError::Malformed { method, reason: e.to_string() })?;
        let body = Either::Right(Full::new(grpc::frame(&req.encode_to_vec())));
        let resp = match sender.clone().call(head, body).await {
            Ok(r) => r,
            Err(e) => {
                self.upstream.reset(&sender);
                return Err(CallError::Unreachable(format!("{} failed the call: {e}", self.upstream.path().display())));
            }
        };
        let header_code = Code::from_header(resp.headers().get("grpc-status"));
        let header_msg = resp.headers().get("grpc-message").map(|v| grpc::decode_message(v.as_bytes()));
        let collected = resp.into_body().collect().await.map_err(|e| CallError::Unreachable(format!("answer cut short: {e}")))?;
        let trailers = collected.trailers().cloned();
        let code =
            header_code.or_else(|| trailers.as_ref().and_then(|t| Code::from_header(t.get("grpc-status")))).unwrap_or(Code::Unknown as i32);
        if code != 0 {
            let message = header_msg
                .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-message")).map(|v| grpc::decode_message(v.as_bytes())))
                .unwrap_or_default();
            return Err(CallError::Status { method, code, message });
        }
        let bytes: Bytes = collected.to_bytes();
        let msg = grpc::unary_message(&bytes).map_err(|e| CallError::Malformed { method, reason: e.to_string() })?;
        Resp::decode(msg).map_err(|e| CallError::Malformed { method, reason: e.to_string() })
    }
}
