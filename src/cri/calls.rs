//! Watching CRI calls on the pass-through path: the contract a call observer (admin's call
//! metrics) implements, and the probe that tells it how each call ended.
//!
//! Nothing is decoded and nothing is allocated per call: the observer names the call's method
//! once (by its request path), the gRPC status is read from the `grpc-status` header or trailer
//! as the response streams by, and the observer hears of the call once, when it ends.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::grpc::Code;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// A gRPC status code (0 to 16): the one in the response's headers or trailers; `Unknown`
    /// when the response ended without one (as gRPC clients report it); `Cancelled` when the
    /// caller went away first.
    Status(u8),
    /// A `grpc-status` that is not a code.
    InvalidStatus,
    /// The response stream failed before any status (reset by containerd or the connection).
    StreamError,
}

/// Hears of every CRI call pullgate serves. Called on the pass-through path: implementations
/// keep to a few atomic operations.
pub trait CallObserver: Send + Sync {
    /// The observer's key for the method of a request path, taken when the call arrives.
    fn method(&self, path: &str) -> usize;
    /// A call to `method` that arrived at `started` ended.
    fn ended(&self, method: usize, end: CallEnd, started: Instant);
}

/// Starts watching a call to `path`, if there is an observer.
pub fn start(observer: Option<&'static dyn CallObserver>, path: &str) -> Option<CallProbe> {
    observer.map(|o| CallProbe { observer: o, method: o.method(path), started: Instant::now(), end: None, done: false })
}

/// One call being watched; reports itself once, when its response ends or is dropped.
pub struct CallProbe {
    observer: &'static dyn CallObserver,
    method: usize,
    started: Instant,
    /// The status, once seen.
    end: Option<CallEnd>,
    done: bool,
}

fn status_of(value: Option<&http::HeaderValue>) -> Option<CallEnd> {
    value.map(|v| match Code::from_header(Some(v)) {
        Some(c @ 0..=16) => CallEnd::Status(c as u8),
        _ => CallEnd::InvalidStatus,
    })
}

impl CallProbe {
    /// Notes a status sent in the response headers (a trailers-only response).
    pub fn headers(&mut self, headers: &http::HeaderMap) {
        if let Some(end) = status_of(headers.get("grpc-status")) {
            self.end = Some(end);
        }
    }

    /// The response ended (the frame relay saw containerd's END_STREAM): reports the status
    /// seen in its headers or trailers, else Unknown, as [`Metered`] does.
    pub fn end(mut self) {
        self.finish(CallEnd::Status(Code::Unknown as u8));
    }

    /// containerd reset the stream after its response headers, as a failing [`Metered`] body.
    pub fn failed(mut self) {
        self.finish(CallEnd::StreamError);
    }

    fn finish(&mut self, fallback: CallEnd) {
        if !self.done {
            self.done = true;
            self.observer.ended(self.method, self.end.unwrap_or(fallback), self.started);
        }
    }
}

impl Drop for CallProbe {
    /// A response dropped before its end: the caller went away (or the connection did). hyper
    /// also drops a body it knows has ended without polling it again; its status is noted by
    /// then.
    fn drop(&mut self) {
        self.finish(CallEnd::Status(Code::Cancelled as u8));
    }
}

/// A response body that reports its call when it ends.
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
                    if let Some(end) = frame.trailers_ref().and_then(|t| status_of(t.get("grpc-status"))) {
                        probe.end = Some(end);
                    }
                }
                Poll::Ready(Some(Err(_))) => probe.finish(CallEnd::StreamError),
                // The end: the status came in the trailers, or in the headers of a
                // trailers-only response; with neither, gRPC clients report Unknown.
                Poll::Ready(None) => probe.finish(CallEnd::Status(Code::Unknown as u8)),
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
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(usize, CallEnd)>>);

    impl CallObserver for Seen {
        fn method(&self, path: &str) -> usize {
            path.len()
        }
        fn ended(&self, method: usize, end: CallEnd, _: Instant) {
            self.0.lock().unwrap().push((method, end));
        }
    }

    #[test]
    fn probes_report_their_status_once() {
        let seen: &'static Seen = Box::leak(Box::default());
        let path = "/runtime.v1.RuntimeService/Version";
        let mut p = start(Some(seen), path).unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        p.headers(&h);
        p.end();
        drop(start(Some(seen), path));
        let mut p = start(Some(seen), path).unwrap();
        h.insert("grpc-status", http::HeaderValue::from_static("99"));
        p.headers(&h);
        p.failed();
        start(Some(seen), "/x").unwrap().failed();
        let n = path.len();
        assert_eq!(
            *seen.0.lock().unwrap(),
            [(n, CallEnd::Status(5)), (n, CallEnd::Status(Code::Cancelled as u8)), (n, CallEnd::InvalidStatus), (2, CallEnd::StreamError)],
            "a dropped call counts as cancelled"
        );
        assert!(start(None, path).is_none());
    }
}
