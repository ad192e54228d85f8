//! The admin HTTP server: `/metrics`, `/live`, `/ready` on `admin.listen`.
//!
//! HTTP/1.1 on hyper, GET and HEAD only. It shares nothing with the CRI path but the state it
//! reads, so a slow scraper cannot delay kubelet's calls.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::health::Health;
use super::metrics::Metrics;

/// Bound on admin connections served at once, so a misbehaving client cannot exhaust file
/// descriptors the CRI side needs.
const MAX_CONNECTIONS: usize = 32;
/// A scrape reuses a containerd probe younger than this instead of making a new one.
const PROBE_MAX_AGE: Duration = Duration::from_secs(5);

/// What the endpoints serve.
pub struct Admin {
    pub metrics: Metrics,
    pub health: Health,
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until the task is dropped (the daemon's runtime ends with `serve`).
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin endpoints /metrics, /live, /ready listening");
    }
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(admin.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}

async fn handle(admin: Arc<Admin>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET and HEAD\n".into()));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            // Prometheus asks for OpenMetrics; anything else gets the classic text format.
            let openmetrics = req
                .headers()
                .get_all(http::header::ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
            admin.health.probe_if_older(PROBE_MAX_AGE).await;
            let body = admin.metrics.encode(openmetrics);
            if openmetrics {
                text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", body)
            } else {
                text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body)
            }
        }
        "/live" => text(StatusCode::OK, PLAIN, "live\n".into()),
        "/ready" => {
            let (ready, body) = admin.health.ready().await;
            text(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, PLAIN, body)
        }
        _ => text(StatusCode::NOT_FOUND, PLAIN, "pullgate admin endpoints: /metrics /live /ready\n".into()),
    })
}
