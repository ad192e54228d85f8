//! CRI call counts and latencies, recorded on the pass-through path.
//!
//! Nothing is decoded and nothing is allocated per call: the method is found by the request
//! path in a sorted table of the CRI v1 methods (unknown paths share one `other` row), the
//! gRPC status is read from the `grpc-status` header or trailer as the response streams by, and
//! a call costs three relaxed atomic additions when it ends (its code's counter, its latency
//! bucket, the latency sum). Label sets are built only when Prometheus scrapes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use crate::cri::grpc::Code;

/// Every CRI v1 method (Kubernetes 1.32 `api.proto`), sorted: looked up by binary search.
const METHODS: &[&str] = &[
    "/runtime.v1.ImageService/ImageFsInfo",
    "/runtime.v1.ImageService/ImageStatus",
    "/runtime.v1.ImageService/ListImages",
    "/runtime.v1.ImageService/PullImage",
    "/runtime.v1.ImageService/RemoveImage",
    "/runtime.v1.RuntimeService/Attach",
    "/runtime.v1.RuntimeService/CheckpointContainer",
    "/runtime.v1.RuntimeService/ContainerStats",
    "/runtime.v1.RuntimeService/ContainerStatus",
    "/runtime.v1.RuntimeService/CreateContainer",
    "/runtime.v1.RuntimeService/Exec",
    "/runtime.v1.RuntimeService/ExecSync",
    "/runtime.v1.RuntimeService/GetContainerEvents",
    "/runtime.v1.RuntimeService/ListContainerStats",
    "/runtime.v1.RuntimeService/ListContainers",
    "/runtime.v1.RuntimeService/ListMetricDescriptors",
    "/runtime.v1.RuntimeService/ListPodSandbox",
    "/runtime.v1.RuntimeService/ListPodSandboxMetrics",
    "/runtime.v1.RuntimeService/ListPodSandboxStats",
    "/runtime.v1.RuntimeService/PodSandboxStats",
    "/runtime.v1.RuntimeService/PodSandboxStatus",
    "/runtime.v1.RuntimeService/PortForward",
    "/runtime.v1.RuntimeService/RemoveContainer",
    "/runtime.v1.RuntimeService/RemovePodSandbox",
    "/runtime.v1.RuntimeService/ReopenContainerLog",
    "/runtime.v1.RuntimeService/RunPodSandbox",
    "/runtime.v1.RuntimeService/RuntimeConfig",
    "/runtime.v1.RuntimeService/StartContainer",
    "/runtime.v1.RuntimeService/Status",
    "/runtime.v1.RuntimeService/StopContainer",
    "/runtime.v1.RuntimeService/StopPodSandbox",
    "/runtime.v1.RuntimeService/UpdateContainerResources",
    "/runtime.v1.RuntimeService/UpdatePodSandboxResources",
    "/runtime.v1.RuntimeService/UpdateRuntimeConfig",
    "/runtime.v1.RuntimeService/Version",
];

/// Row of calls whose path is not a known CRI v1 method (newer methods, other services).
const OTHER: usize = METHODS.len();

/// `code` label values: the gRPC codes, then what pullgate saw instead of a status.
const CODE_NAMES: [&str; 19] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    // A `grpc-status` that is not a code.
    "InvalidStatus",
    // The response stream failed before any status (reset by containerd or the connection).
    "StreamError",
];
const INVALID_STATUS: usize = 17;
const STREAM_ERROR: usize = 18;
const CANCELED: usize = Code::Cancelled as usize;

/// Upper bounds of the latency buckets, in microseconds (the last bucket is +Inf).
const BUCKETS_US: [u64; 16] =
    [500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 120_000_000];

/// One method's counters: every field is only ever added to.
#[derive(Default)]
struct Row {
    codes: [AtomicU64; CODE_NAMES.len()],
    /// Non-cumulative; summed up at scrape time. The last is +Inf.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// CRI call counts by method and code, latency by method.
pub struct CallMetrics {
    rows: Box<[Row]>,
}

impl std::fmt::Debug for CallMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMetrics").finish_non_exhaustive()
    }
}

impl Default for CallMetrics {
    fn default() -> Self {
        CallMetrics { rows: (0..=OTHER).map(|_| Row::default()).collect() }
    }
}

/// `service` and `method` labels of a row.
fn labels_of(row: usize) -> (&'static str, &'static str) {
    match METHODS.get(row) {
        Some(path) => {
            let rest = path.trim_start_matches("/runtime.v1.");
            rest.split_once('/').unwrap_or(("other", "other"))
        }
        None => ("other", "other"),
    }
}

fn bucket_of(us: u64) -> usize {
    BUCKETS_US.partition_point(|bound| *bound < us)
}

impl CallMetrics {
    /// The row of a request path.
    pub fn method(&self, path: &str) -> usize {
        METHODS.binary_search(&path).unwrap_or(OTHER)
    }

    /// Notes one finished call.
    pub fn record(&self, method: usize, code: usize, started: Instant) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let row = &self.rows[method.min(OTHER)];
        row.codes[code.min(CODE_NAMES.len() - 1)].fetch_add(1, Ordering::Relaxed);
        row.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        row.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Starts timing a call to `path`.
    pub fn start(&'static self, path: &str) -> CallProbe {
        CallProbe { metrics: self, method: self.method(path), started: Instant::now(), code: None, done: false }
    }
}

impl Collector for CallMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut calls = encoder.encode_descriptor("cri_calls", "CRI calls served, by method and gRPC status code", None, MetricType::Counter)?;
            for (i, row) in self.rows.iter().enumerate() {
                let (service, method) = labels_of(i);
                for (c, count) in row.codes.iter().enumerate() {
                    let n = count.load(Ordering::Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let labels = [("service", service), ("method", method), ("code", CODE_NAMES[c])];
                    ConstCounter::new(n).encode(calls.encode_family(&labels)?)?;
                }
            }
        }
        let unit = prometheus_client::registry::Unit::Seconds;
        let mut latency = encoder.encode_descriptor(
            "cri_call_duration",
            "Time from a CRI call's arrival to the end of its response (the whole stream for streaming calls)",
            Some(&unit),
            MetricType::Histogram,
        )?;
        for (i, row) in self.rows.iter().enumerate() {
            let mut cumulative = 0;
            let mut buckets = [(0.0, 0u64); BUCKETS_US.len() + 1];
            for (b, slot) in buckets.iter_mut().enumerate() {
                cumulative += row.buckets[b].load(Ordering::Relaxed);
                let bound = BUCKETS_US.get(b).map(|us| *us as f64 / 1e6).unwrap_or(f64::INFINITY);
                *slot = (bound, cumulative);
            }
            if cumulative == 0 {
                continue;
            }
            let (service, method) = labels_of(i);
            let labels = [("service", service), ("method", method)];
            let sum = row.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            latency.encode_family(&labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, cumulative, &buckets, None)?;
        }
        Ok(())
    }
}

/// One call being timed; records itself once, when its response ends or is dropped.
pub struct CallProbe {
    metrics: &'static CallMetrics,
    method: usize,
    started: Instant,
    /// Index into `CODE_NAMES`, once the status is seen.
    code: Option<usize>,
    done: bool,
}

fn code_index(value: Option<&http::HeaderValue>) -> Option<usize> {
    value.map(|v| match Code::from_header(Some(v)) {
        Some(c) if (0..=16).contains(&c) => c as usize,
        _ => INVALID_STATUS,
    })
}

impl CallProbe {
    /// Notes a status sent in the response headers (a trailers-only response).
    pub fn headers(&mut self, headers: &http::HeaderMap) {
        if let Some(c) = code_index(headers.get("grpc-status")) {
            self.code = Some(c);
        }
    }

    /// The response ended (the frame relay saw containerd's END_STREAM): records the status
    /// seen in its headers or trailers, else Unknown, as [`Metered`] does.
    pub fn end(mut self) {
        self.finish(Code::Unknown as usize);
    }

    /// containerd reset the stream after its response headers, as a failing [`Metered`] body.
    pub fn failed(mut self) {
        self.finish(STREAM_ERROR);
    }

    fn finish(&mut self, fallback: usize) {
        if !self.done {
            self.done = true;
            self.metrics.record(self.method, self.code.unwrap_or(fallback), self.started);
        }
    }
}

impl Drop for CallProbe {
    /// A response dropped before its end: the caller went away (or the connection did). hyper
    /// also drops a body it knows has ended without polling it again; its status is noted by
    /// then.
    fn drop(&mut self) {
        self.finish(CANCELED);
    }
}

/// A response body that records its call when it ends.
pub struct Metered<B> {
    inner: B,
    probe: Option<CallProbe>,
}

impl<B> Metered<B> {
    pub fn new(inner: B, probe: Option<CallProbe>) -> Self {
        Metered { inner, probe }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let me = &mut *self;
        let polled = Pin::new(&mut me.inner).poll_frame(cx);
        if let Some(probe) = me.probe.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(c) = frame.trailers_ref().and_then(|t| code_index(t.get("grpc-status"))) {
                        probe.code = Some(c);
                    }
                }
                Poll::Ready(Some(Err(_))) => probe.finish(STREAM_ERROR),
                // The end: the status came in the trailers, or in the headers of a
                // trailers-only response; with neither, gRPC clients report Unknown.
                Poll::Ready(None) => probe.finish(Code::Unknown as usize),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_sorted_and_unique() {
        assert!(METHODS.windows(2).all(|w| w[0] < w[1]), "METHODS must stay sorted for binary search");
    }

    #[test]
    fn paths_map_to_rows_and_labels() {
        let m = CallMetrics::default();
        let v = m.method("/runtime.v1.RuntimeService/Version");
        assert_eq!(labels_of(v), ("RuntimeService", "Version"));
        assert_eq!(labels_of(m.method("/runtime.v1.ImageService/PullImage")), ("ImageService", "PullImage"));
        assert_eq!(m.method("/runtime.v1.RuntimeService/SomethingNew"), OTHER);
        assert_eq!(m.method("/grpc.health.v1.Health/Check"), OTHER);
        assert_eq!(labels_of(OTHER), ("other", "other"));
    }

    #[test]
    fn buckets() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(500), 0);
        assert_eq!(bucket_of(501), 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS_US.len());
    }

    #[test]
    fn probes_record_their_code_once() {
        let m: &'static CallMetrics = Box::leak(Box::default());
        let path = "/runtime.v1.RuntimeService/Version";
        let mut p = m.start(path);
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        p.headers(&h);
        p.finish(0);
        drop(p);
        drop(m.start(path));
        let row = &m.rows[m.method(path)];
        assert_eq!(row.codes[5].load(Ordering::Relaxed), 1);
        assert_eq!(row.codes[CANCELED].load(Ordering::Relaxed), 1, "a dropped call counts as canceled");
        assert_eq!(row.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum::<u64>(), 2);
    }
}
