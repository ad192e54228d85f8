//! A registry mirror that misbehaves on demand: an HTTP/1.1 relay in front of the real registry
//! that can go down (its port closed), stall in the middle of a manifest's body, lie (answer a
//! manifest asked for by digest with other bytes), redirect manifest requests to another host,
//! or answer with an endless or a huge body. [`FaultRelay::set`] switches the fault while
//! pullgate keeps using the relay as its mirror, so a test sees the fault and then the recovery.
//!
//! One request per connection (`Connection: close` both ways): simple, and pullgate's client
//! reconnects as it would to any server that closes.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the relay does to the requests it applies to (manifest requests, unless `Pass`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything unchanged.
    Pass,
    /// The port is closed: connections are refused.
    Down,
    /// A manifest GET gets its headers and half its body, then nothing more.
    Stall,
    /// A manifest GET by digest is answered with these bytes instead (headers kept, length fixed).
    Lie(Vec<u8>),
    /// Manifest GETs and HEADs answer `307` to this origin (`http://host:port`), same path.
    Redirect(String),
    /// A manifest GET is answered `200` without a length, then zeros until the client leaves.
    EndlessBody,
    /// A manifest GET is answered `200` with a `Content-Length` of 64 GiB, then zeros.
    HugeBody,
}

pub struct FaultRelay {
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    /// Request lines seen (`GET /v2/...`), in order.
    seen: Arc<Mutex<Vec<String>>>,
    /// Bytes of endless or huge bodies written before the client went away.
    pub junk_sent: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultRelay {
    /// Starts a relay to `upstream` on a free loopback port, on `rt`.
    pub fn start(rt: &tokio::runtime::Runtime, upstream: SocketAddr) -> std::io::Result<FaultRelay> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (fault, rx) = watch::channel(Fault::Pass);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let junk_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = {
            let _guard = rt.enter();
            let listener = TcpListener::from_std(std_listener)?;
            let (seen, junk) = (seen.clone(), junk_sent.clone());
            rt.spawn(accept_loop(listener, addr, upstream, rx, seen, junk))
        };
        Ok(FaultRelay { addr, fault, seen, junk_sent, task })
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Writes a `hosts.toml` directory that makes `registry`'s only endpoint this relay.
    pub fn hosts_dir(&self, dir: &std::path::Path, registry: &str) -> std::io::Result<()> {
        let origin = self.origin();
        std::fs::create_dir_all(dir.join(registry))?;
        std::fs::write(
            dir.join(registry).join("hosts.toml"),
            format!("server = \"{origin}\"\n[host.\"{origin}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    first: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut rx: watch::Receiver<Fault>,
    seen: Arc<Mutex<Vec<String>>>,
    junk: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut listener = Some(first);
    loop {
        if *rx.borrow() == Fault::Down {
            listener = None;
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            // Back up: the same port again (nothing else takes a just-closed loopback port in
            // the moment between; if it did, the test fails on refused connections, not wrongly).
            None => match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            accepted = l.accept() => {
                listener = Some(l);
                if let Ok((conn, _)) = accepted {
                    let fault = rx.borrow().clone();
                    tokio::spawn(serve(conn, upstream, fault, rx.clone(), seen.clone(), junk.clone()));
                }
            }
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                listener = Some(l);
            }
        }
    }
}

/// Reads one request head (and a body by `Content-Length`, if any).
async fn read_request(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 {
            return None;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((head, buf[head_end..head_end + len].to_vec()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The head with `Connection: close` instead of any connection header.
fn closing(head: &str) -> String {
    let mut out: Vec<&str> =
        head.trim_end_matches("\r\n\r\n").split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
    out.push("Connection: close");
    format!("{}\r\n\r\n", out.join("\r\n"))
}

async fn serve(
    mut conn: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
    mut rx: watch::Receiver<Fault>,
    seen: Arc<Mutex<Vec<String>>>,
    junk: Arc<std::sync::atomic::AtomicU64>,
) {
    let Some((head, body)) = read_request(&mut conn).await else { return };
    let line = head.lines().next().unwrap_or_default().to_string();
    seen.lock().unwrap().push(line.clone());
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
    let manifest = path.contains("/manifests/");
    let get = method == "GET";

    match &fault {
        Fault::Redirect(to) if manifest && (get || method == "HEAD") => {
            let answer =
                format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = conn.write_all(answer.as_bytes()).await;
            return;
        }
        Fault::EndlessBody | Fault::HugeBody if manifest && get => {
            let length = match fault {
                Fault::HugeBody => "Content-Length: 68719476736\r\n",
                _ => "",
            };
            let answer =
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n{length}Connection: close\r\n\r\n");
            if conn.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            let zeros = vec![b' '; 64 << 10];
            // Until the client goes away (bounded, so a client that never stops cannot keep a
            // test running forever: 8 GiB).
            for _ in 0..(128 * 1024) {
                if conn.write_all(&zeros).await.is_err() {
                    return;
                }
                junk.fetch_add(zeros.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            return;
        }
        _ => {}
    }

    // Forward to the registry and read its whole answer (it closes after it).
    let Ok(mut up) = TcpStream::connect(upstream).await else { return };
    if up.write_all(closing(&head).as_bytes()).await.is_err() || up.write_all(&body).await.is_err() {
        return;
    }
    let mut answer = Vec::new();
    if up.read_to_end(&mut answer).await.is_err() {
        return;
    }
    let Some(split) = find(&answer, b"\r\n\r\n").map(|i| i + 4) else { return };
    let (resp_head, resp_body) = (String::from_utf8_lossy(&answer[..split]).to_string(), answer[split..].to_vec());

    match fault {
        Fault::Lie(bytes) if manifest && get && path.contains("/manifests/sha256:") => {
            let head = resp_head
                .trim_end_matches("\r\n\r\n")
                .split("\r\n")
                .filter(|l| !l.to_ascii_lowercase().starts_with("content-length:"))
                .collect::<Vec<_>>()
                .join("\r\n");
            let _ = conn.write_all(format!("{head}\r\nContent-Length: {}\r\n\r\n", bytes.len()).as_bytes()).await;
            let _ = conn.write_all(&bytes).await;
        }
        Fault::Stall if manifest && get && resp_body.len() > 1 => {
            let _ = conn.write_all(resp_head.as_bytes()).await;
            let _ = conn.write_all(&resp_body[..resp_body.len() / 2]).await;
            let _ = conn.flush().await;
            // Silence until the fault is switched off (or a minute): the client must give up.
            let _ = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|f| *f != Fault::Stall)).await;
        }
        _ => {
            let _ = conn.write_all(&answer).await;
        }
    }
}
