use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;

use super::*;

/// A PING acknowledgement as h2 writes it.
fn ack(n: u8) -> Vec<u8> {
    let mut f = bytes::BytesMut::new();
    frames::ping_ack(&mut f, &[n; 8]);
    f.to_vec()
}

/// A writer that records what reaches it and in how many writes; takes at most `max` bytes
/// per write.
#[derive(Clone)]
struct Sink {
    out: Arc<Mutex<Vec<u8>>>,
    writes: Arc<Mutex<usize>>,
    max: usize,
}

impl Sink {
    fn new(max: usize) -> Sink {
        Sink { out: Arc::default(), writes: Arc::default(), max }
    }
    fn out(&self) -> Vec<u8> {
        self.out.lock().unwrap().clone()
    }
    fn writes(&self) -> usize {
        *self.writes.lock().unwrap()
    }
}

impl AsyncWrite for Sink {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }
    fn poll_write_vectored(self: Pin<&mut Self>, _: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut out = self.out.lock().unwrap();
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(self.max - n);
            out.extend_from_slice(&b[..take]);
            n += take;
        }
        *self.writes.lock().unwrap() += 1;
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn poll_once<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    f(&mut Context::from_waker(std::task::Waker::noop()))
}

#[tokio::test]
async fn an_ack_alone_is_written_after_the_hold() {
    let sink = Sink::new(usize::MAX);
    let mut s = LatePong::new(sink.clone());
    let started = tokio::time::Instant::now();
    s.write_all(&ack(1)).await.unwrap();
    assert!(sink.out().is_empty(), "written before the flush");
    assert!(poll_once(|cx| Pin::new(&mut s).poll_flush(cx)).is_pending(), "the first flush waits");
    assert!(poll_once(|cx| Pin::new(&mut s).poll_flush(cx)).is_pending(), "a second poll wrote it");
    assert!(sink.out().is_empty());
    s.flush().await.unwrap();
    assert!(started.elapsed() >= HOLD_FOR, "written after {:?}", started.elapsed());
    assert_eq!(sink.out(), ack(1));
    assert_eq!(sink.writes(), 1);
}

/// What the type is for: a task the runtime has ready (the call waiting for containerd's
/// answer) runs before the acknowledgement is written.
#[tokio::test]
async fn tasks_already_woken_run_before_the_ack_is_written() {
    let sink = Sink::new(usize::MAX);
    let mut s = LatePong::new(sink.clone());
    let go = Arc::new(tokio::sync::Notify::new());
    let seen = tokio::spawn({
        let (go, sink) = (go.clone(), sink.clone());
        async move {
            go.notified().await;
            sink.out().len()
        }
    });
    tokio::task::yield_now().await; // the other task now waits on `go`
    s.write_all(&ack(1)).await.unwrap();
    go.notify_one();
    s.flush().await.unwrap();
    assert_eq!(seen.await.unwrap(), 0, "the ack was written before the woken task ran");
    assert_eq!(sink.out(), ack(1));
}

#[tokio::test]
async fn held_acks_go_out_first_in_the_next_write() {
    let sink = Sink::new(usize::MAX);
    let mut s = LatePong::new(sink.clone());
    s.write_all(&ack(1)).await.unwrap();
    s.write_all(&ack(2)).await.unwrap();
    let next = b"\0\0\x05\x01\x04\0\0\0\x03hello".to_vec();
    let n = poll_once(|cx| Pin::new(&mut s).poll_write(cx, &next));
    assert!(matches!(n, Poll::Ready(Ok(n)) if n == next.len()));
    assert_eq!(sink.out(), [ack(1), ack(2), next].concat());
    assert_eq!(sink.writes(), 1, "the acks and the next frame in one write");
    assert!(poll_once(|cx| Pin::new(&mut s).poll_flush(cx)).is_ready(), "nothing left to wait for");
}

#[tokio::test]
async fn other_writes_are_not_held() {
    let mut ping = ack(1);
    ping[4] = 0; // a PING pullgate sends, not an acknowledgement
    let mut on_stream = ack(1);
    on_stream[8] = 1;
    let mut not_ping = ack(1);
    not_ping[3] = 0x8;
    let with_more = [ack(1), vec![0]].concat();
    for bytes in [ping, on_stream, not_ping, with_more, vec![0; 17]] {
        let sink = Sink::new(usize::MAX);
        let mut s = LatePong::new(sink.clone());
        s.write_all(&bytes).await.unwrap();
        assert_eq!(sink.out(), bytes, "held: {bytes:?}");
    }
}

#[tokio::test]
async fn short_writes_keep_the_order() {
    let sink = Sink::new(5);
    let mut s = LatePong::new(sink.clone());
    s.write_all(&ack(1)).await.unwrap();
    let data: Vec<u8> = (0..40).collect();
    s.write_all(&data).await.unwrap();
    s.write_all(&ack(2)).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(sink.out(), [ack(1), data, ack(2)].concat());
}

#[tokio::test]
async fn shutdown_writes_what_is_held() {
    let sink = Sink::new(3);
    let mut s = LatePong::new(sink.clone());
    s.write_all(&ack(7)).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(sink.out(), ack(7));
}

#[tokio::test]
async fn a_flood_of_acks_is_not_held_past_the_bound() {
    let sink = Sink::new(usize::MAX);
    let mut s = LatePong::new(sink.clone());
    let bound = HOLD_AT_MOST / PING_LEN;
    for i in 0..bound {
        s.write_all(&ack(i as u8)).await.unwrap();
    }
    assert!(sink.out().is_empty());
    s.write_all(&ack(0xff)).await.unwrap();
    let all: Vec<u8> = (0..bound).flat_map(|i| ack(i as u8)).chain(ack(0xff)).collect();
    assert_eq!(sink.out(), all, "held past {HOLD_AT_MOST} bytes");
}
