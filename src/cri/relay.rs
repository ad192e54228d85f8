//! Moving one call's bodies between kubelet's HTTP/2 stream (hyper server) and containerd's
//! (an `h2` client stream), frame by frame, without buffering.
//!
//! pullgate drives the upstream `h2` connection itself instead of through hyper's client: hyper
//! sends a request's HEADERS and its DATA in two separate writes (the body is piped by another
//! task that only starts once the stream is open), which costs a syscall and a wake-up of
//! containerd on every call. Here the first request chunk is queued right behind the HEADERS,
//! so a unary request leaves in one write; later chunks wait for flow-control capacity, as
//! hyper's pipe does.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};

use super::upstream::ConnState;

/// containerd's response body: the data and trailers of the upstream stream.
///
/// Dropping it before the end resets the upstream stream (`CANCEL`), which is how a caller that
/// goes away cancels its call in containerd.
pub struct UpstreamBody {
    recv: RecvStream,
    data_done: bool,
    /// Marks a call in flight on its connection until the body ends (see `Upstream`'s
    /// keep-alive, which pings only while calls are in flight).
    in_flight: Option<Arc<ConnState>>,
}

impl UpstreamBody {
    pub fn new(recv: RecvStream, in_flight: Arc<ConnState>) -> Self {
        UpstreamBody { recv, data_done: false, in_flight: Some(in_flight) }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let me = &mut *self;
        if !me.data_done {
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(bytes)) => {
                    let _ = me.recv.flow_control().release_capacity(bytes.len());
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                // RFC 9113 8.1: RST_STREAM(NO_ERROR) after a complete response ends the body
                // without failing it (as hyper's own body does).
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return self.finish(),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => me.data_done = true,
            }
        }
        match ready!(me.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => self.finish(),
            Err(e) if e.reason() == Some(Reason::NO_ERROR) => self.finish(),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl UpstreamBody {
    fn finish(mut self: Pin<&mut Self>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        self.in_flight = None;
        Poll::Ready(None)
    }
}

/// Sends a request body to containerd's stream: data frames, then trailers or end of stream.
///
/// If kubelet's side fails (it reset its stream), containerd's stream is reset with the same
/// reason; if containerd resets its stream (it answered early or gave up), sending stops.
pub struct RequestPipe<B> {
    body: B,
    send: SendStream<Bytes>,
    /// A chunk read from `body` that waits for send capacity.
    pending: Option<(Bytes, bool)>,
    /// Whether a chunk was already handed to h2 (the first one goes without waiting).
    sent_any: bool,
}

impl<B> RequestPipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    pub fn new(body: B, send: SendStream<Bytes>) -> Self {
        RequestPipe { body, send, pending: None, sent_any: false }
    }
}

impl<B> Future for RequestPipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = &mut *self;
        loop {
            if let Poll::Ready(r) = me.send.poll_reset(cx) {
                tracing::debug!(reason = ?r.ok(), "containerd reset the stream; request body not sent further");
                return Poll::Ready(());
            }
            if let Some((data, eos)) = me.pending.take() {
                // The first chunk is queued right away, behind the HEADERS (one write for a
                // unary call); later ones only once the stream has capacity again, so a peer
                // that reads slowly holds back the caller instead of filling pullgate's memory.
                // Empty frames (an explicit end of stream) need no capacity.
                if me.sent_any && !data.is_empty() {
                    while me.send.capacity() == 0 {
                        match me.send.poll_capacity(cx) {
                            Poll::Pending => {
                                me.pending = Some((data, eos));
                                return Poll::Pending;
                            }
                            Poll::Ready(Some(Ok(_))) => {}
                            Poll::Ready(Some(Err(e))) => {
                                tracing::debug!(error = %e, "request body not sent");
                                return Poll::Ready(());
                            }
                            Poll::Ready(None) => return Poll::Ready(()),
                        }
                    }
                }
                me.sent_any = true;
                if let Err(e) = me.send.send_data(data, eos) {
                    tracing::debug!(error = %e, "request body not sent");
                    return Poll::Ready(());
                }
                if eos {
                    return Poll::Ready(());
                }
                continue;
            }
            match ready!(Pin::new(&mut me.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let eos = me.body.is_end_stream();
                        if me.sent_any && !data.is_empty() {
                            // Ask for a minimal claim only (hyper#4003: a larger speculative
                            // claim can starve other streams of connection window).
                            me.send.reserve_capacity(1);
                        }
                        me.pending = Some((data, eos));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            me.send.reserve_capacity(0);
                            if let Err(e) = me.send.send_trailers(trailers) {
                                tracing::debug!(error = %e, "request trailers not sent");
                            }
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(e)) => {
                    let e: Box<dyn StdError + Send + Sync> = e.into();
                    let reason = h2_reason(&*e);
                    tracing::debug!(error = %e, ?reason, "caller's request body failed; resetting the call upstream");
                    me.send.send_reset(reason);
                    return Poll::Ready(());
                }
                None => {
                    if let Err(e) = me.send.send_data(Bytes::new(), true) {
                        tracing::debug!(error = %e, "end of request not sent");
                    }
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// The HTTP/2 reason somewhere in an error's chain (a caller's RST_STREAM), else INTERNAL_ERROR,
/// as hyper does when a body fails.
pub(super) fn h2_reason(e: &(dyn StdError + 'static)) -> Reason {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2e) = err.downcast_ref::<h2::Error>() {
            if let Some(r) = h2e.reason() {
                return r;
            }
        }
        cur = err.source();
    }
    Reason::INTERNAL_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    type Frames = Vec<Result<Frame<Bytes>, h2::Error>>;

    /// Pipes `frames` as a request body through an in-memory HTTP/2 connection; returns what
    /// the server received: data, trailers, or the reset reason.
    async fn pipe_through(frames: Frames) -> (Vec<u8>, Option<http::HeaderMap>, Option<Reason>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(b).await.unwrap();
            let (req, _respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut body = req.into_body();
            let mut data = vec![];
            while let Some(chunk) = body.data().await {
                match chunk {
                    Ok(c) => {
                        let _ = body.flow_control().release_capacity(c.len());
                        data.extend_from_slice(&c);
                    }
                    Err(e) => return (data, None, e.reason()),
                }
            }
            match body.trailers().await {
                Ok(t) => (data, t, None),
                Err(e) => (data, None, e.reason()),
            }
        });
        let (client, conn) = h2::client::handshake(a).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::post("http://localhost/a.B/C").body(()).unwrap();
        let (_response, send) = client.send_request(req, false).unwrap();
        let body = StreamBody::new(futures_util::stream::iter(frames));
        tokio::spawn(RequestPipe::new(body, send));
        server.await.unwrap()
    }

    #[tokio::test]
    async fn request_chunks_and_trailers_arrive_in_order() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-t", "1".parse().unwrap());
        let big = Bytes::from(vec![7u8; 200_000]);
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::new())),
            Ok(Frame::data(big.clone())),
            Ok(Frame::trailers(trailers)),
        ];
        let (data, t, reset) = pipe_through(frames).await;
        assert_eq!(reset, None);
        assert_eq!(data.len(), 2 + big.len());
        assert_eq!(&data[..2], b"ab");
        assert_eq!(t.unwrap()["x-t"], "1");
    }

    #[tokio::test]
    async fn request_ends_without_trailers() {
        let (data, t, reset) = pipe_through(vec![Ok(Frame::data(Bytes::from_static(b"xyz")))]).await;
        assert_eq!((data.as_slice(), t, reset), (&b"xyz"[..], None, None));
    }

    #[tokio::test]
    async fn failing_caller_body_resets_the_upstream_stream_with_its_reason() {
        let frames = vec![Ok(Frame::data(Bytes::from_static(b"a"))), Err(h2::Error::from(Reason::CANCEL))];
        let (_, _, reset) = pipe_through(frames).await;
        assert_eq!(reset, Some(Reason::CANCEL));
    }

    #[test]
    fn reason_is_found_in_the_chain() {
        #[derive(Debug)]
        struct Wrap(h2::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "wrapped")
            }
        }
        impl StdError for Wrap {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(h2_reason(&Wrap(h2::Error::from(Reason::CANCEL))), Reason::CANCEL);
        assert_eq!(h2_reason(&std::io::Error::other("x")), Reason::INTERNAL_ERROR);
    }
}
