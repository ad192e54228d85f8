//! The little of gRPC-over-HTTP/2 that pullgate needs: message framing for the calls it decodes,
//! and status replies it makes itself.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};

/// gRPC status codes pullgate produces itself (subset of `google.rpc.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Internal = 13,
    Unavailable = 14,
}

impl Code {
    /// The code of a `grpc-status` header or trailer value; unknown values map to `Unknown`.
    pub fn from_header(value: Option<&HeaderValue>) -> Option<i32> {
        value.and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok())
    }
}

/// A response body pullgate made or buffered itself: at most one data frame, then trailers.
#[derive(Debug, Default)]
pub struct Buffered {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Buffered {
    pub fn new(data: Option<Bytes>, trailers: Option<HeaderMap>) -> Self {
        Buffered { data: data.filter(|d| !d.is_empty()), trailers }
    }

    /// The body bytes, if any.
    pub fn into_data(self) -> Option<Bytes> {
        self.data
    }
}

impl Body for Buffered {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    /// Never exact: hyper's server turns an exact hint into a `content-length` response header,
    /// which containerd (grpc-go) never sends, so a buffered answer would differ from the
    /// direct one.
    fn size_hint(&self) -> SizeHint {
        let mut hint = SizeHint::new();
        hint.set_lower(self.data.as_ref().map_or(0, |d| d.len() as u64));
        hint
    }
}

/// A "trailers-only" gRPC reply: HTTP 200 with the status in the headers and no body, which is
/// how gRPC servers answer a call that fails before any message.
pub fn status_response<B: From<Buffered>>(code: Code, message: &str) -> Response<B> {
    let mut resp = Response::new(B::from(Buffered::default()));
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from((code as i32) as u16));
    if let Ok(v) = HeaderValue::from_str(&bounded_message(message)) {
        h.insert("grpc-message", v);
    }
    resp
}

/// `message` percent-encoded in at most [`crate::bounded::REFUSAL_MAX`] bytes: shortened as
/// needed (head, `…`, tail, length and sha256), so that a caller's transport never fails on an
/// oversized header and the caller sees the status pullgate meant (kubelet:
/// `SignatureValidationFailed`).
fn bounded_message(message: &str) -> String {
    let limit = crate::bounded::REFUSAL_MAX;
    let mut max = limit;
    loop {
        let encoded = encode_message(&crate::bounded::shorten(message, max));
        if encoded.len() <= limit || max <= limit / 8 {
            return encoded;
        }
        max = max * 2 / 3;
    }
}

/// Marks a response that stands for containerd resetting the call's stream (RST_STREAM) before
/// it answered: the caller's stream is to be reset with the same reason, with no response
/// headers, so the caller sees what it sees directly. grpc-go clients map a `CANCEL` reset that
/// comes after their deadline to `DEADLINE_EXCEEDED`, which a made-up status would hide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamReset(pub h2::Reason);

/// A placeholder response carrying [`StreamReset`]; the server turns it into an RST_STREAM.
pub fn reset_response<B: From<Buffered>>(reason: h2::Reason) -> Response<B> {
    let mut resp = Response::new(B::from(Buffered::default()));
    resp.extensions_mut().insert(StreamReset(reason));
    resp
}

/// The reason of a reset containerd sent for this stream, if that is what `e` is.
pub fn upstream_reset(e: &h2::Error) -> Option<h2::Reason> {
    (e.is_reset() && e.is_remote()).then(|| e.reason()).flatten()
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec: bytes outside 0x20..0x7E and `%`).
pub fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded `grpc-message`.
pub fn decode_message(value: &[u8]) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' && i + 2 < value.len() {
            if let Ok(b) = u8::from_str_radix(std::str::from_utf8(&value[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(value[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a gRPC request body could not be read as one message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("request body is not one gRPC message ({0} bytes, frame header says otherwise)")]
    Malformed(usize),
    #[error("compressed gRPC messages are not supported on intercepted calls")]
    Compressed,
    #[error("request has {0} gRPC messages; a unary call has one")]
    NotUnary(usize),
}

/// The message of a unary gRPC request body: a 5-byte header (compressed flag, big-endian
/// length) and exactly that many bytes.
pub fn unary_message(body: &Bytes) -> Result<Bytes, FrameError> {
    let mut buf = &body[..];
    if buf.len() < 5 {
        return Err(FrameError::Malformed(body.len()));
    }
    let compressed = buf.get_u8();
    let len = buf.get_u32() as usize;
    if compressed != 0 {
        return Err(FrameError::Compressed);
    }
    if buf.len() < len {
        return Err(FrameError::Malformed(body.len()));
    }
    if buf.len() > len {
        return Err(FrameError::NotUnary(2));
    }
    Ok(body.slice(5..))
}

/// Frames one uncompressed gRPC message.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_encoding_round_trips() {
        let m = "SignatureValidationFailed: 100% wrong\nüber";
        let e = encode_message(m);
        assert!(e.is_ascii() && !e.contains('\n'));
        assert_eq!(decode_message(e.as_bytes()), m);
        assert_eq!(decode_message(b"50%"), "50%");
        assert_eq!(decode_message(b"%zz"), "%zz");
    }

    #[test]
    fn framing() {
        let f = frame(b"abc");
        assert_eq!(unary_message(&f).unwrap(), Bytes::from_static(b"abc"));
        assert_eq!(unary_message(&Bytes::from_static(b"\0\0\0")), Err(FrameError::Malformed(3)));
        assert_eq!(unary_message(&Bytes::from_static(b"\x01\0\0\0\x01a")), Err(FrameError::Compressed));
        assert_eq!(unary_message(&Bytes::from_static(b"\0\0\0\0\x05ab")), Err(FrameError::Malformed(7)));
        let two = [frame(b"a"), frame(b"b")].concat();
        assert!(matches!(unary_message(&Bytes::from(two)), Err(FrameError::NotUnary(_))));
        assert_eq!(unary_message(&frame(b"")).unwrap().len(), 0);
    }
}
