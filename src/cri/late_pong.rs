//! A stream that acknowledges containerd's pings after the work they arrived with.
//!
//! containerd (grpc-go) sends a PING with its answer to most requests (its flow-control window
//! estimate). On pullgate's own connection to containerd (the calls pullgate serves itself),
//! h2 writes the 17-byte acknowledgement as soon as it has read the answer, before the task
//! waiting for that answer has run. That write wakes containerd, and it lies on the call's path:
//! a served CreateContainer paid it twice (its image lookup, then the create), a served
//! PullImage once, before its answer went to the caller.
//!
//! [`LatePong`] holds a write that carries nothing but PING acknowledgements, and sends it with
//! the next bytes pullgate writes to containerd (on a node, the next request comes within
//! milliseconds), or alone after [`HOLD_FOR`] if nothing else is written. Each served call then
//! wakes containerd once per request instead of twice, and its answer is not preceded by a write
//! to containerd. Nothing is reordered and nothing is lost: held bytes go out before any later
//! byte, a flush or shutdown completes only once they are written, and at most [`HOLD_AT_MOST`]
//! bytes are held. HTTP/2 asks for a prompt acknowledgement, not an immediate one (RFC 9113,
//! 6.7); grpc-go uses the acknowledgement only to estimate its flow-control window.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::frames::{self, Head};

/// An HTTP/2 PING frame: the header and 8 bytes of payload.
const PING_LEN: usize = frames::HEADER_LEN + 8;
/// Acknowledgements held at most (a flood of pings is written as it comes).
const HOLD_AT_MOST: usize = 16 * PING_LEN;
/// How long an acknowledgement waits for other bytes to go with.
const HOLD_FOR: Duration = Duration::from_millis(10);

pub struct LatePong<S> {
    inner: S,
    /// Acknowledgements accepted from h2 but not written yet.
    held: Vec<u8>,
    /// When `held` is written even if nothing else is.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> LatePong<S> {
    pub fn new(inner: S) -> LatePong<S> {
        LatePong { inner, held: Vec::new(), deadline: None }
    }

    /// Holds `bufs`; starts the wait when nothing was held.
    fn hold(&mut self, bufs: &[IoSlice<'_>]) {
        if self.held.is_empty() {
            let at = Instant::now() + HOLD_FOR;
            match &mut self.deadline {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        for b in bufs {
            self.held.extend_from_slice(b);
        }
    }
}

/// Whether `bufs` hold nothing but whole PING frames with the ACK flag, on stream 0.
fn only_ping_acks(bufs: &[IoSlice<'_>]) -> bool {
    let len: usize = bufs.iter().map(|b| b.len()).sum();
    if len == 0 || !len.is_multiple_of(PING_LEN) || len > HOLD_AT_MOST {
        return false;
    }
    let mut all = [0u8; HOLD_AT_MOST];
    let mut at = 0;
    for b in bufs {
        all[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    }
    all[..len].chunks_exact(PING_LEN).all(|f| {
        Head::parse(f).is_some_and(|h| {
            h.len == PING_LEN - frames::HEADER_LEN && h.kind == frames::PING && h.flags & frames::ACK != 0 && h.stream == 0
        })
    })
}

impl<S: AsyncWrite + Unpin> LatePong<S> {
    /// Writes the held bytes, then as much of `bufs` as the socket takes in the same write;
    /// returns how much of `bufs` was written.
    fn poll_write_after_held(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        while !self.held.is_empty() {
            let mut slices = [IoSlice::new(&[]); 4];
            slices[0] = IoSlice::new(&self.held);
            let more = bufs.len().min(slices.len() - 1);
            slices[1..=more].copy_from_slice(&bufs[..more]);
            let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..=more]))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            if n < self.held.len() {
                self.held.drain(..n);
                continue;
            }
            let past = n - self.held.len();
            self.held.clear();
            if past > 0 || bufs.iter().all(|b| b.is_empty()) {
                return Poll::Ready(Ok(past));
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LatePong<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if me.held.len() + len <= HOLD_AT_MOST && only_ping_acks(bufs) {
            me.hold(bufs);
            return Poll::Ready(Ok(len));
        }
        me.poll_write_after_held(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.held.is_empty() {
            if let Some(deadline) = me.deadline.as_mut() {
                ready!(deadline.as_mut().poll(cx));
            }
            if ready!(me.poll_write_after_held(cx, &[]))? == 0 && !me.held.is_empty() {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.held.is_empty() && ready!(me.poll_write_after_held(cx, &[]))? == 0 && !me.held.is_empty() {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LatePong<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests;
