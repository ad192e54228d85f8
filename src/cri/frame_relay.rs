//! The frame-level relay: a caller's connection served without terminating HTTP/2 on both sides.
//!
//! Each accepted connection gets its own connection to containerd (1:1). One task reads frames
//! from both sockets and writes them to the other, one write per readable burst, as a byte copy
//! does. Only what routing needs is decoded: the caller's header blocks (for `:path`, with h2's
//! HPACK decoder, checked as h2's server checks them) and containerd's response header blocks
//! (to stay in sync with its encoder and to record each call's `grpc-status`).
//!
//! - Calls [`Proxy::passes_through`] lets through go on the 1:1 connection. Their header blocks
//!   are re-encoded toward containerd with pullgate's own encoder (the header list unchanged):
//!   the blocks of the calls pullgate keeps never reach containerd, so the caller's encoder and
//!   containerd's decoder cannot share a table. containerd's frames go back verbatim.
//! - Every other call is handed to [`Proxy::handle`], as the hyper server does: its request
//!   body arrives through a [`RelayBody`], and its response is written back by the relay with
//!   literal header fields only, so it never touches the caller's HPACK table. A caller's
//!   RST_STREAM drops the call's future, as hyper does.
//!
//! Flow control. Toward containerd the connection window is end to end (containerd credits what
//! it receives; pullgate credits the caller itself for the bytes it keeps). Toward the caller it
//! is hop by hop: pullgate consumes the caller's connection-level WINDOW_UPDATEs, sends nothing
//! past the caller's window (containerd's DATA waits, in order, split if it must), and credits
//! containerd as it passes bytes on, so what waits is bounded by that credit. Stream windows stay
//! end to end for relayed calls; for its own calls pullgate keeps the caller's stream windows
//! and initial window size, and gives the caller's bytes back as the call reads them.
//!
//! Anything that breaks the protocol ends the connection with GOAWAY; nothing panics and no
//! buffer grows past the bounds below.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use h2::hpack_export::{Decoder, Encoder};
use h2::Reason;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::sync::Semaphore;

use super::calls::{CallObserver, CallProbe, Metered};
use super::frames::{self, BlockError, Head, Settings, HEADER_LEN};
use super::proxy::{CallerBody, Peer, Proxy};
use super::quiet::QuietStream;

/// Extra connection window pullgate gives containerd at once, beyond the 64 KiB default: the
/// most of containerd's data that can wait in pullgate for the caller's window.
const UPSTREAM_EXTRA_WINDOW: u32 = 1 << 20;
/// Credit for containerd is sent once this much has been passed on.
const UPSTREAM_CREDIT_BATCH: u32 = 256 << 10;
/// Reading a side stops while this much waits to be written to the other.
const OUT_CAP: usize = 2 << 20;
/// Read buffer, grown to the largest frame a side may send.
const READ_CHUNK: usize = 64 << 10;
/// Calls pullgate serves itself at once on one connection (hyper's setting was 1000 streams).
const MAX_OWNED: usize = 1000;
/// Response bytes a call may hand to the relay before they are written out.
const CALL_SEND_BUFFER: usize = 256 << 10;
/// Unread request bytes of the calls pullgate serves that are credited to the caller at once.
const OWNED_CONN_WINDOW: usize = 16 << 20;
/// Calls pullgate finished, remembered so that late frames for them are dropped.
const CLOSED_MEMORY: usize = 256;

/// Serves one caller connection over `upstream` until either side ends it.
///
/// When `stop` turns true (pullgate shuts down), the caller gets a GOAWAY: the calls it has
/// started finish, and it closes the connection.
pub async fn serve(
    client: QuietStream,
    upstream: QuietStream,
    upstream_first: Vec<u8>,
    proxy: Arc<Proxy>,
    peer: Peer,
    calls: Option<&'static dyn CallObserver>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut relay = Relay::new(proxy, peer, calls, tx, rx);
    relay.u_in.buf = upstream_first;
    relay.u_in.end = relay.u_in.buf.len();
    // containerd's greeting goes to the caller at once (grpc-go clients wait for it).
    let mut first = std::mem::take(&mut relay.u_in);
    if relay.parse(&mut first, Side::Upstream).is_err() {
        return;
    }
    relay.u_in = first;
    relay.stop = Some(Box::pin(async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    let mut client = client;
    let mut upstream = upstream;
    let outcome = std::future::poll_fn(|cx| relay.poll(cx, &mut client, &mut upstream)).await;
    if let Err(reason) = outcome {
        tracing::debug!(?reason, "caller connection ended with an error");
    }
    for o in relay.owned.values() {
        o.task.abort();
    }
}

/// A request body of a call pullgate serves itself, fed by the relay.
pub struct RelayBody {
    stream: u32,
    rx: mpsc::UnboundedReceiver<BodyEvent>,
    relay: mpsc::UnboundedSender<(u32, Msg)>,
    ended: bool,
}

#[derive(Debug)]
enum BodyEvent {
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
enum Msg {
    Head(http::StatusCode, http::HeaderMap, bool),
    /// Response data; its bytes hold permits of the call's send buffer until written.
    Data(Bytes, bool),
    Trailers(http::HeaderMap),
    Reset(Reason),
    /// The call read this many (flow-controlled) bytes of its request.
    Consumed(usize),
}

/// What waits to be written toward the caller, in order.
enum Queued {
    Raw(Bytes),
    /// Unpadded DATA; `upstream` when it came from containerd (its bytes are credited to
    /// containerd once written).
    Data {
        stream: u32,
        end: bool,
        payload: Bytes,
        upstream: bool,
    },
}

/// A call pullgate serves itself.
struct Owned {
    /// Where its request body goes; `None` once the request ended.
    body: Option<mpsc::UnboundedSender<BodyEvent>>,
    task: tokio::task::AbortHandle,
    /// What the caller may still send on it.
    recv_window: i64,
    /// What pullgate may still send the caller on it.
    send_window: i64,
    /// Request bytes handed to the call and not read yet.
    unconsumed: usize,
    /// Of those, the bytes not yet credited to the caller's connection window: credited as the
    /// call reads them, and all at once when the call ends (as h2 gives back what a dropped
    /// stream never read), so no call leaks the caller's window.
    uncredited: usize,
    /// Response frames waiting for the stream window.
    pending: VecDeque<Out>,
    permits: Arc<Semaphore>,
}

enum Out {
    Frames(Bytes, bool),
    Data(Bytes, bool),
}

/// A header block being assembled from HEADERS and CONTINUATION frames.
struct PendingBlock {
    stream: u32,
    end_stream: bool,
    prio: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received (containerd's are passed on verbatim).
    raw: Vec<u8>,
}

#[derive(Default)]
struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    /// Makes room to read, for a frame of `need` bytes at most.
    fn room(&mut self, need: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let need = need.max(READ_CHUNK);
        if self.buf.len() - self.start < need || self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        &mut self.buf[self.end..]
    }
}

/// The side a frame came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

struct Relay {
    proxy: Arc<Proxy>,
    peer: Peer,
    calls: Option<&'static dyn CallObserver>,
    tx: mpsc::UnboundedSender<(u32, Msg)>,
    rx: mpsc::UnboundedReceiver<(u32, Msg)>,

    c_in: InBuf,
    u_in: InBuf,
    c_out: BytesMut,
    u_out: BytesMut,
    /// Frames for the caller waiting for its connection window.
    c_queue: VecDeque<Queued>,
    preface_done: bool,
    first_settings_seen: bool,

    /// What the caller announced (governs what is sent to it).
    client_settings: Settings,
    /// What containerd announced (governs what is sent to it).
    server_settings: Settings,
    req_decoder: Decoder,
    encoder: Encoder,
    resp_decoder: Decoder,

    /// The caller's connection window for what pullgate sends it.
    client_window: i64,
    /// Credit owed to containerd (connection level) for bytes passed on.
    upstream_credit: u32,
    /// Credit owed to the caller (connection level) for bytes pullgate kept or dropped.
    client_credit: u32,

    c_block: Option<PendingBlock>,
    u_block: Option<PendingBlock>,
    last_client_stream: u32,
    max_owned: u32,
    owned: HashMap<u32, Owned>,
    closed: VecDeque<u32>,
    probes: HashMap<u32, (CallProbe, bool)>,
    upstream_eof: bool,
    /// Request bytes of the calls pullgate serves that they have not read yet.
    owned_unread: usize,
    stop: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

type Fatal = Reason;

impl Relay {
    fn new(
        proxy: Arc<Proxy>,
        peer: Peer,
        calls: Option<&'static dyn CallObserver>,
        tx: mpsc::UnboundedSender<(u32, Msg)>,
        rx: mpsc::UnboundedReceiver<(u32, Msg)>,
    ) -> Self {
        Relay {
            proxy,
            peer,
            calls,
            tx,
            rx,
            c_in: InBuf::default(),
            u_in: InBuf::default(),
            c_out: BytesMut::with_capacity(READ_CHUNK),
            u_out: BytesMut::with_capacity(READ_CHUNK),
            c_queue: VecDeque::new(),
            preface_done: false,
            first_settings_seen: false,
            client_settings: Settings::default(),
            server_settings: Settings::default(),
            req_decoder: Decoder::new(frames::DEFAULT_TABLE),
            encoder: Encoder::new(frames::DEFAULT_TABLE, 0),
            resp_decoder: Decoder::new(frames::DEFAULT_TABLE),
            client_window: frames::DEFAULT_WINDOW,
            upstream_credit: 0,
            client_credit: 0,
            c_block: None,
            u_block: None,
            last_client_stream: 0,
            max_owned: 0,
            owned: HashMap::new(),
            closed: VecDeque::new(),
            probes: HashMap::new(),
            upstream_eof: false,
            owned_unread: 0,
            stop: None,
        }
    }

    /// Runs until a side closes (`Ok`) or breaks the protocol (`Err`, after a GOAWAY to the
    /// caller).
    fn poll(&mut self, cx: &mut Context<'_>, client: &mut QuietStream, upstream: &mut QuietStream) -> Poll<Result<(), Fatal>> {
        loop {
            let mut progress = false;
            if self.stop.as_mut().is_some_and(|s| s.as_mut().poll(cx).is_ready()) {
                self.stop = None;
                frames::goaway(&mut self.c_out, self.last_client_stream, Reason::NO_ERROR);
            }
            while let Poll::Ready(Some((stream, msg))) = self.rx.poll_recv(cx) {
                self.on_msg(stream, msg);
                progress = true;
            }
            if self.u_out.len() < OUT_CAP {
                match self.read(cx, client, Side::Client) {
                    Poll::Ready(Ok(true)) => progress = true,
                    Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                    Poll::Ready(Err(reason)) => return self.fail(cx, client, reason),
                    Poll::Pending => {}
                }
            }
            if !self.upstream_eof && self.c_out.len() + self.queued_len() < OUT_CAP {
                match self.read(cx, upstream, Side::Upstream) {
                    Poll::Ready(Ok(true)) => progress = true,
                    Poll::Ready(Ok(false)) => self.upstream_eof = true,
                    Poll::Ready(Err(reason)) => return self.fail(cx, client, reason),
                    Poll::Pending => {}
                }
            }
            self.flush_credit();
            if write_out(cx, client, &mut self.c_out).is_err() || write_out(cx, upstream, &mut self.u_out).is_err() {
                return Poll::Ready(Ok(()));
            }
            if self.upstream_eof && self.c_out.is_empty() {
                // containerd is gone: what it sent has reached the caller; end the connection.
                return Poll::Ready(Ok(()));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    fn queued_len(&self) -> usize {
        self.c_queue
            .iter()
            .map(|q| match q {
                Queued::Raw(b) => b.len(),
                Queued::Data { payload, .. } => payload.len() + HEADER_LEN,
            })
            .sum()
    }

    /// Sends GOAWAY with `reason` to the caller (best effort) and ends.
    fn fail(&mut self, cx: &mut Context<'_>, client: &mut QuietStream, reason: Reason) -> Poll<Result<(), Fatal>> {
        frames::goaway(&mut self.c_out, self.last_client_stream, reason);
        let _ = write_out(cx, client, &mut self.c_out);
        Poll::Ready(Err(reason))
    }

    /// Reads once from a side and handles every whole frame; `Ok(false)` at end of stream.
    fn read(&mut self, cx: &mut Context<'_>, io: &mut QuietStream, side: Side) -> Poll<Result<bool, Fatal>> {
        let mut inb = std::mem::take(match side {
            Side::Client => &mut self.c_in,
            Side::Upstream => &mut self.u_in,
        });
        let limit = self.frame_limit(side);
        let result = (|| {
            let room = inb.room(HEADER_LEN + limit);
            let mut rb = ReadBuf::new(room);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(false)),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(false));
            }
            inb.end += n;
            Poll::Ready(self.parse(&mut inb, side).map(|()| true))
        })();
        *match side {
            Side::Client => &mut self.c_in,
            Side::Upstream => &mut self.u_in,
        } = inb;
        result
    }

    /// The largest frame a side may send: what its peer announced (at most ever, so a change
    /// not yet acknowledged is honoured).
    fn frame_limit(&self, side: Side) -> usize {
        match side {
            Side::Client => self.server_settings.max_frame_ever as usize,
            Side::Upstream => self.client_settings.max_frame_ever as usize,
        }
    }

    fn parse(&mut self, inb: &mut InBuf, side: Side) -> Result<(), Fatal> {
        if side == Side::Client && !self.preface_done {
            let have = &inb.buf[inb.start..inb.end];
            let n = have.len().min(frames::PREFACE.len());
            if have[..n] != frames::PREFACE[..n] {
                return Err(Reason::PROTOCOL_ERROR);
            }
            if n < frames::PREFACE.len() {
                return Ok(());
            }
            self.u_out.extend_from_slice(frames::PREFACE);
            inb.start += frames::PREFACE.len();
            self.preface_done = true;
        }
        let limit = self.frame_limit(side);
        while let Some(head) = Head::parse(&inb.buf[inb.start..inb.end]) {
            if head.len > limit {
                return Err(Reason::FRAME_SIZE_ERROR);
            }
            if inb.end - inb.start < HEADER_LEN + head.len {
                break;
            }
            let at = inb.start;
            inb.start += HEADER_LEN + head.len;
            let whole = &inb.buf[at..at + HEADER_LEN + head.len];
            match side {
                Side::Client => self.on_client_frame(head, whole)?,
                Side::Upstream => self.on_upstream_frame(head, whole)?,
            }
        }
        Ok(())
    }

    // ===== caller -> containerd =====

    fn on_client_frame(&mut self, head: Head, whole: &[u8]) -> Result<(), Fatal> {
        let payload = &whole[HEADER_LEN..];
        if !self.first_settings_seen {
            if head.kind != frames::SETTINGS || head.flags & frames::ACK != 0 {
                return Err(Reason::PROTOCOL_ERROR);
            }
            self.first_settings_seen = true;
            self.on_client_settings(head, payload)?;
            self.u_out.extend_from_slice(whole);
            // Pullgate's credit for containerd's data, which waits in pullgate when the caller's
            // window is short.
            frames::window_update(&mut self.u_out, 0, UPSTREAM_EXTRA_WINDOW);
            return Ok(());
        }
        if let Some(block) = self.c_block.as_mut() {
            if head.kind != frames::CONTINUATION || head.stream != block.stream {
                return Err(Reason::PROTOCOL_ERROR);
            }
            if block.fragment.len() + payload.len() > frames::MAX_HEADER_BLOCK {
                return Err(Reason::ENHANCE_YOUR_CALM);
            }
            block.fragment.extend_from_slice(payload);
            if head.flags & frames::END_HEADERS != 0 {
                let block = self.c_block.take().expect("checked above");
                self.client_block(block)?;
            }
            return Ok(());
        }
        let s = head.stream;
        match head.kind {
            frames::DATA => {
                if s == 0 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                let data = frames::unpad(head.flags, payload)?;
                if let Some(o) = self.owned.get_mut(&s) {
                    let flow = payload.len();
                    o.recv_window -= flow as i64;
                    let sent = match (&o.body, o.recv_window >= 0) {
                        (Some(tx), true) => tx.send(BodyEvent::Data(Bytes::copy_from_slice(data), flow)).is_ok(),
                        _ => false,
                    };
                    if sent {
                        // Credited at once while the calls' unread bytes stay within
                        // OWNED_CONN_WINDOW (what hyper's connection window allowed), so calls
                        // that wait (for the buffer budget) do not hold the caller's connection
                        // window; past it, as they are read.
                        o.unconsumed += flow;
                        self.owned_unread += flow;
                        if self.owned_unread <= OWNED_CONN_WINDOW {
                            self.client_credit += flow as u32;
                        } else {
                            o.uncredited += flow;
                        }
                    } else {
                        self.client_credit += flow as u32;
                    }
                    if o.recv_window < 0 {
                        self.reset_owned(s, Reason::FLOW_CONTROL_ERROR);
                    } else if head.flags & frames::END_STREAM != 0 {
                        if let Some(tx) = o.body.take() {
                            let _ = tx.send(BodyEvent::End);
                        }
                    }
                } else if self.is_dropped(s) {
                    self.client_credit += payload.len() as u32;
                } else {
                    self.u_out.extend_from_slice(whole);
                }
            }
            frames::HEADERS => {
                if s == 0 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                let (fragment, prio) = frames::headers_fragment(head.flags, payload)?;
                let block = PendingBlock {
                    stream: s,
                    end_stream: head.flags & frames::END_STREAM != 0,
                    prio,
                    fragment: fragment.to_vec(),
                    raw: Vec::new(),
                };
                if head.flags & frames::END_HEADERS != 0 {
                    self.client_block(block)?;
                } else {
                    self.c_block = Some(block);
                }
            }
            frames::CONTINUATION | frames::PUSH_PROMISE => return Err(Reason::PROTOCOL_ERROR),
            frames::RST_STREAM => {
                if payload.len() != 4 {
                    return Err(Reason::FRAME_SIZE_ERROR);
                }
                if let Some(o) = self.owned.remove(&s) {
                    // The caller cancelled a call pullgate serves: drop it, as hyper does.
                    o.task.abort();
                    self.client_credit += o.uncredited as u32;
                    self.owned_unread -= o.unconsumed;
                    self.remember_closed(s);
                } else if !self.is_dropped(s) {
                    // The caller cancelled a relayed call (counted as cancelled, as hyper's
                    // dropped response does).
                    self.probes.remove(&s);
                    self.u_out.extend_from_slice(whole);
                }
            }
            frames::SETTINGS => {
                if head.flags & frames::ACK == 0 {
                    self.on_client_settings(head, payload)?;
                }
                self.u_out.extend_from_slice(whole);
            }
            frames::WINDOW_UPDATE => {
                let inc = frames::window_increment(payload)?;
                if s == 0 {
                    self.client_window += i64::from(inc);
                    if self.client_window > frames::MAX_WINDOW {
                        return Err(Reason::FLOW_CONTROL_ERROR);
                    }
                    self.drain_queue();
                } else if let Some(o) = self.owned.get_mut(&s) {
                    o.send_window += i64::from(inc);
                    if o.send_window > frames::MAX_WINDOW {
                        self.reset_owned(s, Reason::FLOW_CONTROL_ERROR);
                    } else {
                        self.pump(s);
                    }
                } else if !self.is_dropped(s) {
                    self.u_out.extend_from_slice(whole);
                }
            }
            frames::PING => {
                if s != 0 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                if payload.len() != 8 {
                    return Err(Reason::FRAME_SIZE_ERROR);
                }
                if head.flags & frames::ACK != 0 {
                    // The answer to containerd's own PING.
                    self.u_out.extend_from_slice(whole);
                } else {
                    // Answered here, as hyper did: part of what the caller receives on this
                    // connection comes from pullgate, and gRPC clients ping after receiving data
                    // (BDP estimation). Passed on, those pings reach a containerd that sent
                    // nothing, which counts them as abuse and closes the connection with
                    // GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") (grpc-go's keepalive
                    // enforcement). The relay ends with either socket, so a PING answered here
                    // still says the path to containerd is up.
                    frames::ping_ack(&mut self.c_out, payload);
                }
            }
            frames::PRIORITY if self.owned.contains_key(&s) || self.is_dropped(s) => {}
            // PRIORITY, GOAWAY, extensions: containerd's business.
            _ => self.u_out.extend_from_slice(whole),
        }
        Ok(())
    }

    fn on_client_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream != 0 {
            return Err(Reason::PROTOCOL_ERROR);
        }
        let before = self.client_settings;
        self.client_settings.apply(payload)?;
        if self.client_settings.header_table_size != before.header_table_size {
            self.resp_decoder.queue_size_update(self.client_settings.header_table_size);
        }
        let delta = self.client_settings.initial_window - before.initial_window;
        if delta != 0 {
            let ids: Vec<u32> = self.owned.keys().copied().collect();
            for id in ids {
                let Some(o) = self.owned.get_mut(&id) else { continue };
                o.send_window += delta;
                if o.send_window > frames::MAX_WINDOW {
                    return Err(Reason::FLOW_CONTROL_ERROR);
                }
                self.pump(id);
            }
        }
        Ok(())
    }

    /// Frames for a stream pullgate served and closed, or that was never opened: dropped.
    fn is_dropped(&self, stream: u32) -> bool {
        stream > self.last_client_stream || self.closed.contains(&stream)
    }

    fn remember_closed(&mut self, stream: u32) {
        if self.closed.len() == CLOSED_MEMORY {
            self.closed.pop_front();
        }
        self.closed.push_back(stream);
    }

    /// A whole header block from the caller: a new call, or trailers.
    fn client_block(&mut self, block: PendingBlock) -> Result<(), Fatal> {
        let s = block.stream;
        let decoded = match frames::decode_block(&mut self.req_decoder, &block.fragment) {
            Ok(d) => d,
            Err(BlockError::Connection(r)) => return Err(r),
            Err(BlockError::Malformed) => return Err(Reason::PROTOCOL_ERROR),
        };
        if s <= self.last_client_stream {
            // Trailers (or a HEADERS on a closed stream).
            if let Some(o) = self.owned.get_mut(&s) {
                match o.body.take() {
                    Some(tx) if block.end_stream && !decoded.malformed && !decoded.has_pseudo() => {
                        let _ = tx.send(BodyEvent::Trailers(decoded.header_map()));
                    }
                    _ => self.reset_owned(s, Reason::PROTOCOL_ERROR),
                }
            } else if !self.closed.contains(&s) {
                if decoded.malformed || decoded.has_pseudo() || !block.end_stream {
                    frames::rst_stream(&mut self.c_out, s, Reason::PROTOCOL_ERROR);
                    frames::rst_stream(&mut self.u_out, s, Reason::PROTOCOL_ERROR);
                } else {
                    self.forward_block(s, true, block.prio, decoded.fields);
                }
            }
            return Ok(());
        }
        if s.is_multiple_of(2) {
            return Err(Reason::PROTOCOL_ERROR);
        }
        self.last_client_stream = s;
        if decoded.malformed || decoded.check_request().is_err() {
            frames::rst_stream(&mut self.c_out, s, Reason::PROTOCOL_ERROR);
            self.remember_closed(s);
            return Ok(());
        }
        let path = decoded.path().unwrap_or("/");
        let path = path.split('?').next().unwrap_or(path);
        if self.proxy.passes_through(&self.peer, path) {
            if let Some(probe) = super::calls::start(self.calls, path) {
                self.probes.insert(s, (probe, false));
            }
            self.forward_block(s, block.end_stream, block.prio, decoded.fields);
            return Ok(());
        }
        if self.owned.len() >= MAX_OWNED {
            frames::rst_stream(&mut self.c_out, s, Reason::REFUSED_STREAM);
            self.remember_closed(s);
            return Ok(());
        }
        let req = match decoded.request() {
            Ok(r) => r,
            Err(_) => {
                frames::rst_stream(&mut self.c_out, s, Reason::PROTOCOL_ERROR);
                self.remember_closed(s);
                return Ok(());
            }
        };
        self.own(s, req, block.end_stream);
        Ok(())
    }

    fn forward_block(&mut self, stream: u32, end_stream: bool, prio: Option<[u8; 5]>, fields: Vec<h2::hpack_export::Header>) {
        let mut encoded = BytesMut::new();
        frames::encode_block(&mut self.encoder, fields, &mut encoded);
        frames::header_frames(&mut self.u_out, stream, end_stream, prio, &encoded, self.server_settings.max_frame as usize);
    }

    /// Hands a call to [`Proxy::handle`] in a task of its own.
    fn own(&mut self, stream: u32, req: http::Request<()>, ended: bool) {
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

    // ===== containerd -> caller =====

    fn on_upstream_frame(&mut self, head: Head, whole: &[u8]) -> Result<(), Fatal> {
        let payload = &whole[HEADER_LEN..];
        if let Some(block) = self.u_block.as_mut() {
            if head.kind != frames::CONTINUATION || head.stream != block.stream {
                return Err(Reason::INTERNAL_ERROR);
            }
            if block.raw.len() + whole.len() > frames::MAX_HEADER_BLOCK {
                return Err(Reason::INTERNAL_ERROR);
            }
            block.fragment.extend_from_slice(payload);
            block.raw.extend_from_slice(whole);
            if head.flags & frames::END_HEADERS != 0 {
                let block = self.u_block.take().expect("checked above");
                self.upstream_block(block)?;
            }
            return Ok(());
        }
        let s = head.stream;
        match head.kind {
            frames::DATA => {
                let data = frames::unpad(head.flags, payload).map_err(|_| Reason::INTERNAL_ERROR)?;
                let end = head.flags & frames::END_STREAM != 0;
                if end {
                    if let Some((probe, _)) = self.probes.remove(&s) {
                        probe.end();
                    }
                }
                let padding = payload.len() - data.len();
                if padding > 0 {
                    // Passed on unpadded: containerd gets the padding's credit back at once.
                    self.upstream_credit += padding as u32;
                    if !end {
                        frames::window_update(&mut self.u_out, s, padding as u32);
                    }
                }
                if self.c_queue.is_empty() && self.client_window >= data.len() as i64 && padding == 0 {
                    self.client_window -= data.len() as i64;
                    self.upstream_credit += data.len() as u32;
                    self.c_out.extend_from_slice(whole);
                } else {
                    self.c_queue.push_back(Queued::Data { stream: s, end, payload: Bytes::copy_from_slice(data), upstream: true });
                    self.drain_queue();
                }
            }
            frames::HEADERS => {
                let (fragment, _) = frames::headers_fragment(head.flags, payload).map_err(|_| Reason::INTERNAL_ERROR)?;
                let block = PendingBlock {
                    stream: s,
                    end_stream: head.flags & frames::END_STREAM != 0,
                    prio: None,
                    fragment: fragment.to_vec(),
                    raw: whole.to_vec(),
                };
                if head.flags & frames::END_HEADERS != 0 {
                    self.upstream_block(block)?;
                } else {
                    self.u_block = Some(block);
                }
            }
            // containerd never pushes (the caller disables it); a stray CONTINUATION is broken.
            frames::PUSH_PROMISE | frames::CONTINUATION => return Err(Reason::INTERNAL_ERROR),
            frames::RST_STREAM => {
                if let Some((probe, answered)) = self.probes.remove(&s) {
                    if answered {
                        probe.failed();
                    }
                }
                self.queue_raw_for_client(whole);
            }
            frames::SETTINGS => {
                if head.flags & frames::ACK == 0 {
                    let before = self.server_settings;
                    self.server_settings.apply(payload).map_err(|_| Reason::INTERNAL_ERROR)?;
                    if self.server_settings.header_table_size != before.header_table_size {
                        self.encoder.update_max_size(self.server_settings.header_table_size);
                        self.req_decoder.queue_size_update(self.server_settings.header_table_size);
                    }
                    let delta = self.server_settings.initial_window - before.initial_window;
                    for o in self.owned.values_mut() {
                        o.recv_window += delta;
                    }
                }
                self.queue_raw_for_client(whole);
            }
            frames::GOAWAY if payload.len() >= 8 => {
                // The caller must not retry a call pullgate answered itself: its stream is
                // counted as processed.
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
                let mut frame = whole.to_vec();
                frame[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&last.max(self.max_owned).to_be_bytes());
                self.queue_raw_for_client(&frame);
            }
            _ => self.queue_raw_for_client(whole),
        }
        Ok(())
    }

    fn upstream_block(&mut self, block: PendingBlock) -> Result<(), Fatal> {
        // Decoded to stay in sync with containerd's encoder, and for the call's status.
        let decoded = frames::decode_block(&mut self.resp_decoder, &block.fragment).map_err(|_| Reason::INTERNAL_ERROR)?;
        if let Some((probe, answered)) = self.probes.get_mut(&block.stream) {
            if let Some(status) = decoded.get("grpc-status") {
                let mut map = http::HeaderMap::new();
                map.insert("grpc-status", status.clone());
                probe.headers(&map);
            }
            *answered = true;
            if block.end_stream {
                if let Some((probe, _)) = self.probes.remove(&block.stream) {
                    probe.end();
                }
            }
        }
        self.queue_raw_for_client(&block.raw);
        Ok(())
    }

    fn queue_raw_for_client(&mut self, bytes: &[u8]) {
        if self.c_queue.is_empty() {
            self.c_out.extend_from_slice(bytes);
        } else {
            self.c_queue.push_back(Queued::Raw(Bytes::copy_from_slice(bytes)));
        }
    }

    fn queue_for_client(&mut self, q: Queued) {
        self.c_queue.push_back(q);
        self.drain_queue();
    }

    /// Writes out what waits for the caller's connection window, in order; splits a DATA
    /// frame larger than the window or the caller's frame size.
    fn drain_queue(&mut self) {
        let max = self.client_settings.max_frame as usize;
        while let Some(front) = self.c_queue.front_mut() {
            match front {
                Queued::Raw(b) => {
                    self.c_out.extend_from_slice(b);
                    self.c_queue.pop_front();
                }
                Queued::Data { stream, end, payload, upstream } => {
                    let n = payload.len().min(max).min(self.client_window.max(0) as usize);
                    if n == 0 && !payload.is_empty() {
                        return;
                    }
                    let chunk = payload.split_to(n);
                    let last = payload.is_empty();
                    let flags = if last && *end { frames::END_STREAM } else { 0 };
                    frames::frame(&mut self.c_out, frames::DATA, flags, *stream, &chunk);
                    self.client_window -= n as i64;
                    if *upstream {
                        self.upstream_credit += n as u32;
                    }
                    if last {
                        self.c_queue.pop_front();
                    }
                }
            }
        }
    }

    /// Sends the connection credit owed to each side.
    fn flush_credit(&mut self) {
        if self.client_credit > 0 {
            frames::window_update(&mut self.c_out, 0, self.client_credit);
            self.client_credit = 0;
        }
        if self.upstream_credit >= UPSTREAM_CREDIT_BATCH {
            frames::window_update(&mut self.u_out, 0, self.upstream_credit);
            self.upstream_credit = 0;
        }
    }

    // ===== calls pullgate serves =====

    fn on_msg(&mut self, stream: u32, msg: Msg) {
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
            Msg::Consumed(_) => {}
        }
        self.pump(stream);
    }

    /// Moves a call's response frames toward the caller as its stream window allows.
    fn pump(&mut self, stream: u32) {
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

    fn reset_owned(&mut self, stream: u32, reason: Reason) {
        if let Some(o) = self.owned.remove(&stream) {
            o.task.abort();
            self.client_credit += o.uncredited as u32;
            self.owned_unread -= o.unconsumed;
            frames::rst_stream(&mut self.c_out, stream, reason);
            self.remember_closed(stream);
        }
    }
}

/// Writes what it can of `out`; `Err` when the socket is gone.
fn write_out(cx: &mut Context<'_>, io: &mut QuietStream, out: &mut BytesMut) -> Result<(), ()> {
    while !out.is_empty() {
        match Pin::new(&mut *io).poll_write(cx, out) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
            Poll::Ready(Ok(n)) => {
                let _ = out.split_to(n);
            }
            Poll::Pending => return Ok(()),
        }
    }
    out.clear();
    Ok(())
}

/// One call pullgate serves: [`Proxy::handle`], then its response handed to the relay.
async fn serve_call(
    proxy: Arc<Proxy>,
    peer: Peer,
    calls: Option<&'static dyn CallObserver>,
    req: http::Request<CallerBody>,
    stream: u32,
    relay: mpsc::UnboundedSender<(u32, Msg)>,
    permits: Arc<Semaphore>,
) {
    let probe = super::calls::start(calls, req.uri().path());
    let resp = match proxy.handle(peer, req).await {
        Ok(r) => r,
        Err(e) => {
            let _ = relay.send((stream, Msg::Reset(e.reason().unwrap_or(Reason::INTERNAL_ERROR))));
            return;
        }
    };
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
                let _ = relay.send((stream, Msg::Reset(super::relay::h2_reason(&*e))));
                return;
            }
            None => {
                let _ = relay.send((stream, Msg::Data(Bytes::new(), true)));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn proxy() -> Arc<Proxy> {
        let upstream = super::super::upstream::Upstream::new(std::path::Path::new("/nonexistent/containerd.sock"), Default::default());
        Arc::new(Proxy::new(upstream, Default::default(), None))
    }

    const PEER: Peer = Peer { uid: 0, gid: 0, pid: None };

    /// A relay between an in-memory caller socket and an in-memory "containerd"; returns the
    /// caller's end and containerd's end.
    fn relay() -> (tokio::net::UnixStream, tokio::net::UnixStream, tokio::sync::watch::Sender<bool>) {
        let (client, relay_client) = tokio::net::UnixStream::pair().unwrap();
        let (relay_up, upstream) = tokio::net::UnixStream::pair().unwrap();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(serve(
            QuietStream::new(relay_client).unwrap(),
            QuietStream::new(relay_up).unwrap(),
            Vec::new(),
            proxy(),
            PEER,
            None,
            stop,
        ));
        (client, upstream, stop_tx)
    }

    /// containerd stand-in: echoes each request body back, then `grpc-status: 0` trailers.
    async fn echo_server(io: tokio::net::UnixStream) {
        let mut conn = h2::server::handshake(io).await.unwrap();
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            tokio::spawn(async move {
                let path = req.uri().path().to_string();
                let mut body = req.into_body();
                let mut got = Vec::new();
                while let Some(Ok(c)) = body.data().await {
                    let _ = body.flow_control().release_capacity(c.len());
                    got.extend_from_slice(&c);
                }
                let resp = http::Response::builder().header("content-type", "application/grpc").header("x-path", path).body(()).unwrap();
                let mut send = respond.send_response(resp, false).unwrap();
                send.reserve_capacity(got.len());
                send.send_data(Bytes::from(got), false).unwrap();
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                send.send_trailers(t).unwrap();
            });
        }
    }

    async fn call(client: &h2::client::SendRequest<Bytes>, path: &str, body: Bytes) -> (http::HeaderMap, Vec<u8>, Option<http::HeaderMap>) {
        let mut client = client.clone().ready().await.unwrap();
        let req = http::Request::post(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        let mut rest = body;
        if rest.is_empty() {
            send.send_data(Bytes::new(), true).unwrap();
        }
        while !rest.is_empty() {
            send.reserve_capacity(rest.len());
            // None: the server answered and reset the request (NO_ERROR), as it may.
            let Some(Ok(cap)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await else { break };
            let chunk = rest.split_to(cap.min(rest.len()));
            send.send_data(chunk, rest.is_empty()).unwrap();
        }
        let resp = resp.await.unwrap();
        let (parts, mut body) = resp.into_parts();
        let mut data = Vec::new();
        while let Some(Ok(c)) = body.data().await {
            let _ = body.flow_control().release_capacity(c.len());
            data.extend_from_slice(&c);
        }
        let trailers = body.trailers().await.unwrap();
        (parts.headers, data, trailers)
    }

    /// Relayed calls of every size arrive intact, concurrently, past every window; a call
    /// pullgate serves itself (PullImage, with containerd unreachable through `Upstream`) is
    /// answered by pullgate on the same connection, and the HPACK state of both sides stays
    /// consistent throughout.
    #[tokio::test]
    async fn relayed_and_served_calls_share_one_connection() {
        let (client_io, upstream_io, _stop) = relay();
        tokio::spawn(echo_server(upstream_io));
        let (client, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(conn);
        let mut tasks = Vec::new();
        for i in 0..40usize {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let size = [0, 5, 1000, 70_000, 300_000][i % 5];
                let body = Bytes::from((0..size).map(|j| (j % 251) as u8).collect::<Vec<u8>>());
                if i % 7 == 3 {
                    // An empty PullImageRequest: decoded, then refused (containerd unreachable).
                    let _ = body;
                    let (h, data, t) = call(&client, "/runtime.v1.ImageService/PullImage", Bytes::from_static(&[0; 5])).await;
                    assert_eq!(h["grpc-status"], "14", "{h:?}");
                    assert!(data.is_empty() && t.is_none());
                } else {
                    let path = format!("/runtime.v1.RuntimeService/Call{i}");
                    let (h, data, t) = call(&client, &path, body.clone()).await;
                    assert_eq!(h["x-path"], path.as_str());
                    assert!(data == body, "call {i}: {} bytes back of {size}", data.len());
                    assert_eq!(t.unwrap()["grpc-status"], "0");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    /// Reads frames from a raw caller socket until a GOAWAY; returns its error code.
    async fn goaway_code(io: &mut tokio::net::UnixStream) -> Option<u32> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let mut at = 0;
            while let Some(h) = Head::parse(&buf[at..]) {
                if buf.len() < at + HEADER_LEN + h.len {
                    break;
                }
                if h.kind == frames::GOAWAY {
                    let p = &buf[at + HEADER_LEN..at + HEADER_LEN + h.len];
                    return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                }
                at += HEADER_LEN + h.len;
            }
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn hostile(frames_after_preface: &[u8]) -> Option<u32> {
        let (mut client, upstream, _stop) = relay();
        // containerd's side only reads.
        tokio::spawn(async move {
            let mut upstream = upstream;
            let mut sink = vec![0u8; 1 << 16];
            while matches!(upstream.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let mut out = BytesMut::new();
        out.extend_from_slice(frames::PREFACE);
        frames::frame(&mut out, frames::SETTINGS, 0, 0, &[]);
        out.extend_from_slice(frames_after_preface);
        let _ = client.write_all(&out).await;
        tokio::time::timeout(std::time::Duration::from_secs(10), goaway_code(&mut client)).await.ok().flatten()
    }

    /// The frames in `buf` (after the preface when `preface`): kind, flags, payload.
    fn frames_in(buf: &[u8], preface: bool) -> Vec<(u8, u8, Vec<u8>)> {
        let mut at = if preface { frames::PREFACE.len().min(buf.len()) } else { 0 };
        let mut out = Vec::new();
        while let Some(h) = Head::parse(&buf[at..]) {
            if buf.len() < at + HEADER_LEN + h.len {
                break;
            }
            out.push((h.kind, h.flags, buf[at + HEADER_LEN..at + HEADER_LEN + h.len].to_vec()));
            at += HEADER_LEN + h.len;
        }
        out
    }

    #[tokio::test]
    async fn the_callers_pings_are_answered_by_pullgate_and_containerds_are_passed_on() {
        // gRPC clients ping after receiving data; part of that data comes from pullgate, so
        // containerd must not see those pings (it would close the connection with
        // too_many_pings). containerd's own PING and the caller's ACK of it go through.
        let (mut client, mut upstream, _stop) = relay();
        let mut out = BytesMut::new();
        out.extend_from_slice(frames::PREFACE);
        frames::frame(&mut out, frames::SETTINGS, 0, 0, &[]);
        frames::frame(&mut out, frames::PING, 0, 0, b"caller-1");
        client.write_all(&out).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !frames_in(&got, false).iter().any(|(k, f, p)| *k == frames::PING && *f == frames::ACK && p == b"caller-1") {
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "relay closed the caller's connection");
            got.extend_from_slice(&chunk[..n]);
        }
        // containerd's PING reaches the caller; the caller's ACK reaches containerd.
        let mut ping = BytesMut::new();
        frames::frame(&mut ping, frames::SETTINGS, 0, 0, &[]);
        frames::frame(&mut ping, frames::PING, 0, 0, b"contain!");
        upstream.write_all(&ping).await.unwrap();
        got.clear();
        while !frames_in(&got, false).iter().any(|(k, f, p)| *k == frames::PING && *f == 0 && p == b"contain!") {
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "relay closed the caller's connection");
            got.extend_from_slice(&chunk[..n]);
        }
        let mut ack = BytesMut::new();
        frames::ping_ack(&mut ack, b"contain!");
        client.write_all(&ack).await.unwrap();
        let mut seen = Vec::new();
        while !frames_in(&seen, true).iter().any(|(k, f, _)| *k == frames::PING && *f == frames::ACK) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), upstream.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "relay closed containerd's connection");
            seen.extend_from_slice(&chunk[..n]);
        }
        let pings: Vec<_> = frames_in(&seen, true).into_iter().filter(|(k, _, _)| *k == frames::PING).collect();
        assert_eq!(pings, vec![(frames::PING, frames::ACK, b"contain!".to_vec())], "containerd saw the caller's own PING");
    }

    #[tokio::test]
    async fn an_oversized_frame_ends_the_connection() {
        let mut f = BytesMut::new();
        Head { len: 20_000, kind: frames::DATA, flags: 0, stream: 1 }.write(&mut f);
        f.extend_from_slice(&[0u8; 20_000]);
        assert_eq!(hostile(&f).await, Some(u32::from(Reason::FRAME_SIZE_ERROR)));
    }

    #[tokio::test]
    async fn a_continuation_flood_ends_the_connection() {
        let mut f = BytesMut::new();
        frames::frame(&mut f, frames::HEADERS, 0, 1, &[0x82]);
        for _ in 0..(frames::MAX_HEADER_BLOCK / 16_000 + 2) {
            frames::frame(&mut f, frames::CONTINUATION, 0, 1, &[0x82; 16_000]);
        }
        assert_eq!(hostile(&f).await, Some(u32::from(Reason::ENHANCE_YOUR_CALM)));
    }

    #[tokio::test]
    async fn bad_hpack_ends_the_connection() {
        let mut f = BytesMut::new();
        frames::frame(&mut f, frames::HEADERS, frames::END_HEADERS, 1, &[0xff, 0xff, 0x7f]);
        assert_eq!(hostile(&f).await, Some(u32::from(Reason::COMPRESSION_ERROR)));
    }

    #[tokio::test]
    async fn a_connection_window_overflow_ends_the_connection() {
        let mut f = BytesMut::new();
        frames::window_update(&mut f, 0, 0x7fff_ffff);
        assert_eq!(hostile(&f).await, Some(u32::from(Reason::FLOW_CONTROL_ERROR)));
    }

    #[tokio::test]
    async fn a_connection_must_start_with_the_preface_and_settings() {
        let mut f = BytesMut::new();
        frames::frame(&mut f, frames::CONTINUATION, frames::END_HEADERS, 1, &[0x82]);
        assert_eq!(hostile(&f).await, Some(u32::from(Reason::PROTOCOL_ERROR)));
        let (mut client, _up, _stop) = relay();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(goaway_code(&mut client).await, Some(u32::from(Reason::PROTOCOL_ERROR)));
    }
}
