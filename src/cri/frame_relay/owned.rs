//! The calls pullgate serves itself on a relayed connection: each runs [`Proxy::handle`] in a
//! task fed by a [`RelayBody`], and its response is framed back to the caller.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use h2::Reason;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::sync::Semaphore;

use super::super::calls::CallProbe;
use super::super::proxy::ResponseBody;
use super::{Queued, Relay, CALL_SEND_BUFFER};
use crate::cri::calls::{CallObserver, Metered};
use crate::cri::frames;
use crate::cri::proxy::{CallerBody, Peer, Proxy};

/// A request body of a call pullgate serves itself, fed by the relay.
pub struct RelayBody {
    stream: u32,
    rx: mpsc::UnboundedReceiver<BodyEvent>,
    relay: mpsc::UnboundedSender<(u32, Msg)>,
    ended: bool,
}

#[derive(Debug)]
pub(super) enum BodyEvent {
    /// Data, and the flow-controlled length it took (padding included).
    Data(Bytes, usize),
    Trailers(http::HeaderMap),
    End,
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(BodyEvent::Data(data, flow))) => {
                let _ = self.relay.send((self.stream, Msg::Consumed(flow)));
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(BodyEvent::Trailers(t))) => {
                self.ended = true;
                Poll::Ready(Some(Ok(Frame::trailers(t))))
            }
            Poll::Ready(Some(BodyEvent::End)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            // The relay went away: the connection is gone.
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(Err(h2::Error::from(Reason::CANCEL))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// What a call pullgate serves tells the relay.
#[derive(Debug)]
pub(super) enum Msg {
    Head(http::StatusCode, http::HeaderMap, bool),
    /// Response data; its bytes hold permits of the call's send buffer until written.
    Data(Bytes, bool),
    Trailers(http::HeaderMap),
    Reset(Reason),
    /// The call read this many (flow-controlled) bytes of its request.
    Consumed(usize),
    /// pullgate is shutting down (sent once, with stream 0, by the connection's stop watcher).
    Stop,
}

/// A call pullgate serves itself.
pub(super) struct Owned {
    /// Where its request body goes; `None` once the request ended.
    pub(super) body: Option<mpsc::UnboundedSender<BodyEvent>>,
    pub(super) task: tokio::task::AbortHandle,
    /// What the caller may still send on it.
    pub(super) recv_window: i64,
    /// What pullgate may still send the caller on it.
    pub(super) send_window: i64,
    /// Request bytes handed to the call and not read yet.
    pub(super) unconsumed: usize,
    /// Of those, the bytes not yet credited to the caller's connection window: credited as the
    /// call reads them, and all at once when the call ends (as h2 gives back what a dropped
    /// stream never read), so no call leaks the caller's window.
    pub(super) uncredited: usize,
    /// Response frames waiting for the stream window.
    pub(super) pending: VecDeque<Out>,
    pub(super) permits: Arc<Semaphore>,
}

pub(super) enum Out {
    Frames(Bytes, bool),
    Data(Bytes, bool),
}

impl Relay {
    /// Hands a call to [`Proxy::handle`] in a task of its own.
    pub(super) fn own(&mut self, stream: u32, req: http::Request<()>, ended: bool) {
        let (body_tx, body_rx) = mpsc::unbounded_channel();
        let body = RelayBody { stream, rx: body_rx, relay: self.tx.clone(), ended };
        let req = req.map(|()| CallerBody::Relay(body));
        let permits = Arc::new(Semaphore::new(CALL_SEND_BUFFER));
        let task = tokio::spawn(serve_call(self.proxy.clone(), self.peer, self.calls, req, stream, self.tx.clone(), permits.clone()));
        self.max_owned = self.max_owned.max(stream);
        self.owned.insert(
            stream,
            Owned {
                body: (!ended).then_some(body_tx),
                task: task.abort_handle(),
                recv_window: self.server_settings.initial_window,
                send_window: self.client_settings.initial_window,
                unconsumed: 0,
                uncredited: 0,
                pending: VecDeque::new(),
                permits,
            },
        );
    }

    pub(super) fn on_msg(&mut self, stream: u32, msg: Msg) {
        if let Msg::Stop = msg {
            frames::goaway(&mut self.c_out, self.last_client_stream, Reason::NO_ERROR);
            return;
        }
        if let Msg::Consumed(n) = msg {
            // A call that ended had its uncredited bytes credited then; what it read before
            // is part of them.
            if let Some(o) = self.owned.get_mut(&stream) {
                let n = n.min(o.unconsumed);
                o.unconsumed -= n;
                self.owned_unread -= n;
                let credit = n.min(o.uncredited);
                o.uncredited -= credit;
                self.client_credit += credit as u32;
                if o.body.is_some() && n > 0 {
                    o.recv_window += n as i64;
                    frames::window_update(&mut self.c_out, stream, n as u32);
                }
            }
            return;
        }
        let max = self.client_settings.max_frame as usize;
        let Some(o) = self.owned.get_mut(&stream) else { return };
        match msg {
            Msg::Head(status, headers, end) => {
                let mut block = BytesMut::new();
                frames::literal_block(Some(status), &headers, &mut block);
                let mut out = BytesMut::new();
                frames::header_frames(&mut out, stream, end, None, &block, max);
                o.pending.push_back(Out::Frames(out.freeze(), end));
            }
            Msg::Data(data, end) => o.pending.push_back(Out::Data(data, end)),
            Msg::Trailers(t) => {
                let mut block = BytesMut::new();
                frames::literal_block(None, &t, &mut block);
                let mut out = BytesMut::new();
                frames::header_frames(&mut out, stream, true, None, &block, max);
                o.pending.push_back(Out::Frames(out.freeze(), true));
            }
            Msg::Reset(reason) => {
                self.reset_owned(stream, reason);
                return;
            }
            Msg::Consumed(_) | Msg::Stop => {}
        }
        self.pump(stream);
    }

    /// Moves a call's response frames toward the caller as its stream window allows.
    pub(super) fn pump(&mut self, stream: u32) {
        let mut done = false;
        let mut out = Vec::new();
        if let Some(o) = self.owned.get_mut(&stream) {
            while let Some(front) = o.pending.front_mut() {
                match front {
                    Out::Frames(b, end) => {
                        done |= *end;
                        out.push(Queued::Raw(b.clone()));
                        o.pending.pop_front();
                    }
                    Out::Data(d, end) => {
                        let n = d.len().min(o.send_window.max(0) as usize);
                        if n == 0 && !d.is_empty() {
                            break;
                        }
                        let chunk = d.split_to(n);
                        o.send_window -= n as i64;
                        o.permits.add_permits(n);
                        let last = d.is_empty();
                        done |= last && *end;
                        out.push(Queued::Data { stream, end: last && *end, payload: chunk, upstream: false });
                        if last {
                            o.pending.pop_front();
                        }
                    }
                }
            }
        }
        for q in out {
            self.queue_for_client(q);
        }
        if done {
            if let Some(o) = self.owned.get_mut(&stream) {
                if o.body.take().is_some() {
                    // Answered before the request ended: as h2 does, tell the caller to stop.
                    frames::rst_stream(&mut self.c_out, stream, Reason::NO_ERROR);
                }
            }
            self.finish_owned(stream);
        }
    }

    fn finish_owned(&mut self, stream: u32) {
        if let Some(o) = self.owned.remove(&stream) {
            self.client_credit += o.uncredited as u32;
            self.owned_unread -= o.unconsumed;
            self.remember_closed(stream);
        }
    }

    pub(super) fn reset_owned(&mut self, stream: u32, reason: Reason) {
        if let Some(o) = self.owned.remove(&stream) {
            o.task.abort();
            self.client_credit += o.uncredited as u32;
            self.owned_unread -= o.unconsumed;
            frames::rst_stream(&mut self.c_out, stream, reason);
            self.remember_closed(stream);
        }
    }
}

/// One call pullgate serves: [`Proxy::handle`], then its response handed to the relay.
pub(super) async fn serve_call(
    proxy: Arc<Proxy>,
    peer: Peer,
    calls: Option<&'static dyn CallObserver>,
    req: http::Request<CallerBody>,
    stream: u32,
    relay: mpsc::UnboundedSender<(u32, Msg)>,
    permits: Arc<Semaphore>,
) {
    let probe = super::super::calls::start(calls, req.uri().path());
    // The call's log line is written when `_line` drops: after the relay has written the
    // answer (it runs before this task resumes from the yield below), so the caller does not
    // wait for the log; or when this task is aborted.
    let (resp, _line) = proxy.handle_then_log(peer, req).await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let _ = relay.send((stream, Msg::Reset(e.reason().unwrap_or(Reason::INTERNAL_ERROR))));
            return;
        }
    };
    answer(resp, probe, stream, &relay, &permits).await;
    tokio::task::yield_now().await;
}

/// Hands a call's response to the relay, frame by frame, within the call's send buffer.
async fn answer(
    resp: http::Response<ResponseBody>,
    probe: Option<CallProbe>,
    stream: u32,
    relay: &mpsc::UnboundedSender<(u32, Msg)>,
    permits: &Semaphore,
) {
    let (parts, body) = resp.into_parts();
    let mut probe = probe;
    if let Some(p) = probe.as_mut() {
        p.headers(&parts.headers);
    }
    let mut body = Metered::new(body, probe);
    let end = body.is_end_stream();
    if relay.send((stream, Msg::Head(parts.status, parts.headers, end))).is_err() || end {
        if end {
            // Polled to its end so the probe records the trailers-only status.
            let _ = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        }
        return;
    }
    loop {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    while !data.is_empty() {
                        let n = data.len().min(CALL_SEND_BUFFER);
                        let Ok(p) = permits.acquire_many(n as u32).await else { return };
                        p.forget();
                        let end = n == data.len() && body.is_end_stream();
                        if relay.send((stream, Msg::Data(data.split_to(n), end))).is_err() {
                            return;
                        }
                        if end {
                            // Polled to its end so the probe records the call.
                            let _ = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
                            return;
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        let _ = relay.send((stream, Msg::Trailers(t)));
                        // The body ends after its trailers; polled once more for the probe.
                        let _ = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
                        return;
                    }
                }
            },
            Some(Err(e)) => {
                let _ = relay.send((stream, Msg::Reset(super::super::relay::h2_reason(&*e))));
                return;
            }
            None => {
                let _ = relay.send((stream, Msg::Data(Bytes::new(), true)));
                return;
            }
        }
    }
}
