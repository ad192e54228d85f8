//! CRI call counts and latencies: the [`CallObserver`] the proxy reports its calls to.
//!
//! Nothing is allocated per call: the method is found by the request path in a sorted table of
//! the CRI v1 methods (unknown paths share one `other` row), and a call costs three relaxed
//! atomic additions when it ends (its code's counter, its latency bucket, the latency sum).
//! Label sets are built only when Prometheus scrapes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use crate::cri::calls::{CallEnd, CallObserver};

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

/// Upper bounds of the latency buckets, in microseconds (the last bucket is +Inf).
const BUCKETS_US: [u64; 16] = [
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    120_000_000,
];

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
}

impl CallObserver for CallMetrics {
    fn method(&self, path: &str) -> usize {
        CallMetrics::method(self, path)
    }

    fn ended(&self, method: usize, end: CallEnd, started: Instant) {
        let code = match end {
            CallEnd::Status(c) => usize::from(c),
            CallEnd::InvalidStatus => INVALID_STATUS,
            CallEnd::StreamError => STREAM_ERROR,
        };
        self.record(method, code, started);
    }
}

impl Collector for CallMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut calls =
                encoder.encode_descriptor("cri_calls", "CRI calls served, by method and gRPC status code", None, MetricType::Counter)?;
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
        let mut p = crate::cri::calls::start(Some(m), path).unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        p.headers(&h);
        p.end();
        drop(crate::cri::calls::start(Some(m), path));
        crate::cri::calls::start(Some(m), path).unwrap().failed();
        let row = &m.rows[m.method(path)];
        assert_eq!(row.codes[5].load(Ordering::Relaxed), 1);
        assert_eq!(row.codes[crate::cri::grpc::Code::Cancelled as usize].load(Ordering::Relaxed), 1, "a dropped call counts as canceled");
        assert_eq!(row.codes[STREAM_ERROR].load(Ordering::Relaxed), 1);
        assert_eq!(row.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum::<u64>(), 3);
    }
}
