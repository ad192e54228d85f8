//! A unix stream that wakes pullgate only when there is something to read.
//!
//! tokio registers every socket for read and write readiness (edge-triggered epoll). On a unix
//! socket the kernel signals "writable" every time the peer reads, so each request or response
//! pullgate writes comes back as one more wake-up of the runtime that no task waits for: on the
//! sequential path, one per call on each of the two sockets. A [`QuietStream`] is registered for
//! read readiness only. Writes go straight to the socket; only a write that would block (the
//! peer reads slowly) registers a duplicate of the descriptor for write readiness, and that
//! registration is dropped again as soon as the socket takes bytes.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

pub struct QuietStream {
    /// The socket, registered for read readiness only.
    read: AsyncFd<UnixStream>,
    /// A duplicate of the socket registered for write readiness, while a write waits.
    write: Option<AsyncFd<OwnedFd>>,
}

impl QuietStream {
    /// Takes a connected stream over from tokio's own registration.
    pub fn new(stream: tokio::net::UnixStream) -> io::Result<QuietStream> {
        // `into_std` deregisters it and leaves it non-blocking.
        let std = stream.into_std()?;
        Ok(QuietStream { read: register(std, Interest::READABLE)?, write: None })
    }

    /// Writes with `op`; waits for write readiness only when the socket is full.
    fn poll_write_with(&mut self, cx: &mut Context<'_>, op: impl Fn(&UnixStream) -> io::Result<usize>) -> Poll<io::Result<usize>> {
        let retry = |s: &UnixStream| loop {
            match op(s) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        };
        if self.write.is_none() {
            match retry(self.read.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let dup = self.read.get_ref().as_fd().try_clone_to_owned()?;
                    self.write = Some(register(dup, Interest::WRITABLE)?);
                }
                other => return Poll::Ready(other),
            }
        }
        let Some(waiting) = self.write.as_ref() else { unreachable!("registered above") };
        let stream = self.read.get_ref();
        let result = loop {
            let mut guard = ready!(waiting.poll_write_ready(cx))?;
            if let Ok(result) = guard.try_io(|_| retry(stream)) {
                break result;
            }
        };
        self.write = None;
        Poll::Ready(result)
    }
}

/// Registers `fd` with the runtime for `interest`.
///
/// `AsyncFd::with_interest` is deprecated in favour of an `unsafe` function because a type
/// could hand out a descriptor it does not own; this crate forbids `unsafe`, and the two types
/// used here (`UnixStream`, `OwnedFd`) own their descriptor and never replace or close it while
/// registered, which is what the safe function requires.
#[allow(deprecated)]
fn register<T: std::os::fd::AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(fd, interest)
}

impl AsyncRead for QuietStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.read.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let wanted = unfilled.len();
            match guard.get_inner().read(unfilled) {
                Ok(n) => {
                    // A short read emptied the socket: wait for the next edge instead of
                    // asking again (what tokio's own streams do; the guard's tick keeps an
                    // edge that arrived meanwhile).
                    if n > 0 && n < wanted {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for QuietStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |mut s| s.write(buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |mut s| s.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.read.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (QuietStream, QuietStream) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        (QuietStream::new(a).unwrap(), QuietStream::new(b).unwrap())
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_and_shutdown_ends_the_read() {
        let (mut a, mut b) = pair();
        a.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        b.write_all(b"pong").await.unwrap();
        b.shutdown().await.unwrap();
        let mut rest = vec![];
        a.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"pong");
    }

    /// A writer that fills the socket waits (registered for write readiness) and finishes once
    /// the reader drains it; nothing is lost or reordered.
    #[tokio::test]
    async fn a_full_socket_makes_the_writer_wait_not_fail() {
        let (mut a, mut b) = pair();
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&data).await.unwrap();
            a.shutdown().await.unwrap();
            a.write.is_none()
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert!(got == expected, "{} bytes read, {} written", got.len(), expected.len());
        assert!(writer.await.unwrap(), "write registration kept after the socket drained");
    }

    #[tokio::test]
    async fn vectored_writes_keep_order() {
        let (mut a, mut b) = pair();
        let bufs = [IoSlice::new(b"he"), IoSlice::new(b"llo")];
        let n = std::future::poll_fn(|cx| Pin::new(&mut a).poll_write_vectored(cx, &bufs)).await.unwrap();
        assert_eq!(n, 5);
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
