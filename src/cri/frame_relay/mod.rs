//! The frame-level relay: a caller's connection served without terminating HTTP/2 on both sides.
//!
//! Each accepted connection gets its own connection to containerd (1:1). One task reads frames
//! from both sockets and writes them to the other, one write per readable burst, as a byte copy
//! does. Only what routing needs is decoded: the caller's header blocks (for `:path`, with h2's
//! HPACK decoder, checked as h2's server checks them) and, when call metrics are on,
//! containerd's response header blocks (to record each call's `grpc-status`, and so to stay in
//! sync with its encoder; without metrics they pass undecoded).
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
//! it receives; pullgate credits the caller itself for the bytes it keeps, with the next frames
//! for the caller, usually the call's response, or alone once [`CLIENT_CREDIT_BATCH`] of it
//! waits). Toward the caller it
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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use super::calls::{CallObserver, CallProbe};
use super::frames::{self, Head, Settings, HEADER_LEN};
use super::proxy::{Peer, Proxy};
use super::quiet::QuietStream;

mod client;
mod owned;
mod upstream;

pub use owned::RelayBody;
use owned::{Msg, Owned};

/// Extra connection window pullgate gives containerd at once, beyond the 64 KiB default: the
/// most of containerd's data that can wait in pullgate for the caller's window.
const UPSTREAM_EXTRA_WINDOW: u32 = 1 << 20;
/// Credit for containerd is sent once this much has been passed on.
const UPSTREAM_CREDIT_BATCH: u32 = 256 << 10;
/// Credit for the request bytes of the calls pullgate serves waits for the next frames written
/// to the caller (a call's response, usually) until it reaches this much: well under the 64 KiB
/// a caller's connection window starts with, so the caller is never held up by it.
const CLIENT_CREDIT_BATCH: u32 = 16 << 10;
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
    let stop_tx = tx.clone();
    let mut relay = Relay::new(proxy, peer, calls, tx, rx);
    relay.u_in.buf = upstream_first;
    relay.u_in.end = relay.u_in.buf.len();
    // containerd's greeting goes to the caller at once (grpc-go clients wait for it).
    let mut first = std::mem::take(&mut relay.u_in);
    if relay.parse(&mut first, Side::Upstream).is_err() {
        return;
    }
    relay.u_in = first;
    // Shutdown reaches the relay as a message on its channel, from a task that waits for it:
    // polling the watch from the relay itself would register with it again on every wake-up.
    let stopper = tokio::spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
        let _ = stop_tx.send((0, Msg::Stop));
    });
    let mut client = client;
    let mut upstream = upstream;
    let outcome = std::future::poll_fn(|cx| relay.poll(cx, &mut client, &mut upstream)).await;
    if let Err(reason) = outcome {
        tracing::debug!(?reason, "caller connection ended with an error");
    }
    stopper.abort();
    for o in relay.owned.values() {
        o.task.abort();
    }
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
    /// Of the credit owed to the caller, the part for the request bytes of the calls pullgate
    /// serves: sent with the next frames for the caller, or once it reaches
    /// [`CLIENT_CREDIT_BATCH`], so that a unary call pullgate serves costs the caller no write
    /// (and wake-up) of its own. The caller's connection window (65 535 bytes at least) is
    /// never short of it by more than that batch.
    client_credit_later: u32,

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
            client_credit_later: 0,
            c_block: None,
            u_block: None,
            last_client_stream: 0,
            max_owned: 0,
            owned: HashMap::new(),
            closed: VecDeque::new(),
            probes: HashMap::new(),
            upstream_eof: false,
            owned_unread: 0,
        }
    }

    /// Runs until a side closes (`Ok`) or breaks the protocol (`Err`, after a GOAWAY to the
    /// caller).
    fn poll(&mut self, cx: &mut Context<'_>, client: &mut QuietStream, upstream: &mut QuietStream) -> Poll<Result<(), Fatal>> {
        loop {
            let mut progress = false;
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

#[cfg(test)]
mod tests;
