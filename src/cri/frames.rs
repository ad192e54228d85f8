//! HTTP/2 frames as the frame-level relay (`frame_relay/`) sees them: the 9-byte header, the
//! few payloads it reads (SETTINGS, WINDOW_UPDATE, DATA padding, HEADERS flags), and header
//! blocks, decoded with h2's own HPACK codec and checked as h2's server checks them.
//!
//! Everything here is bounded by its caller's limits and returns an error for hostile input;
//! nothing panics.

use std::io::Cursor;
use std::ops::ControlFlow;

use bytes::{BufMut, Bytes, BytesMut};
use h2::hpack_export::{Decoder, Encoder, Header};
use h2::Reason;
use http::{HeaderMap, HeaderValue, Method, Request};

pub const HEADER_LEN: usize = 9;
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// RFC 9113 6.5.2 defaults.
pub const DEFAULT_MAX_FRAME: u32 = 16_384;
pub const DEFAULT_WINDOW: i64 = 65_535;
pub const MAX_WINDOW: i64 = (1 << 31) - 1;
pub const DEFAULT_TABLE: usize = 4_096;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const PRIORITY: u8 = 2;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PUSH_PROMISE: u8 = 5;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// Bound on one header block, compressed (HEADERS plus its CONTINUATIONs) and decoded: a
/// CONTINUATION flood or an HPACK bomb ends the connection instead of growing memory.
pub const MAX_HEADER_BLOCK: usize = 256 << 10;

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    pub fn parse(b: &[u8]) -> Option<Head> {
        let h: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Head {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize,
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        })
    }

    pub fn write(&self, out: &mut BytesMut) {
        let len = (self.len as u32).to_be_bytes();
        out.put_slice(&len[1..]);
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.stream);
    }
}

/// Appends a whole frame.
pub fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    Head { len: payload.len(), kind, flags, stream }.write(out);
    out.put_slice(payload);
}

pub fn window_update(out: &mut BytesMut, stream: u32, inc: u32) {
    frame(out, WINDOW_UPDATE, 0, stream, &(inc & 0x7fff_ffff).to_be_bytes());
}

pub fn rst_stream(out: &mut BytesMut, stream: u32, reason: Reason) {
    frame(out, RST_STREAM, 0, stream, &u32::from(reason).to_be_bytes());
}

/// The acknowledgement of a PING: the same 8 bytes, ACK set.
pub fn ping_ack(out: &mut BytesMut, payload: &[u8]) {
    frame(out, PING, ACK, 0, payload);
}

pub fn goaway(out: &mut BytesMut, last_stream: u32, reason: Reason) {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&last_stream.to_be_bytes());
    p[4..].copy_from_slice(&u32::from(reason).to_be_bytes());
    frame(out, GOAWAY, 0, 0, &p);
}

/// The settings pullgate needs to know of one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub header_table_size: usize,
    pub initial_window: i64,
    pub max_frame: u32,
    /// The largest frame size this side has ever announced: what is accepted from its peer
    /// while a smaller value may not be acknowledged yet.
    pub max_frame_ever: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            header_table_size: DEFAULT_TABLE,
            initial_window: DEFAULT_WINDOW,
            max_frame: DEFAULT_MAX_FRAME,
            max_frame_ever: DEFAULT_MAX_FRAME,
        }
    }
}

impl Settings {
    /// Applies a SETTINGS payload (not an ACK); errors are connection errors.
    pub fn apply(&mut self, payload: &[u8]) -> Result<(), Reason> {
        if !payload.len().is_multiple_of(6) {
            return Err(Reason::FRAME_SIZE_ERROR);
        }
        for s in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                1 => self.header_table_size = v as usize,
                2 if v > 1 => return Err(Reason::PROTOCOL_ERROR),
                4 if i64::from(v) > MAX_WINDOW => return Err(Reason::FLOW_CONTROL_ERROR),
                4 => self.initial_window = i64::from(v),
                5 if !(DEFAULT_MAX_FRAME..=0xff_ffff).contains(&v) => return Err(Reason::PROTOCOL_ERROR),
                5 => {
                    self.max_frame = v;
                    self.max_frame_ever = self.max_frame_ever.max(v);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The WINDOW_UPDATE increment; 0 and a bad length are errors (RFC 9113 6.9).
pub fn window_increment(payload: &[u8]) -> Result<u32, Reason> {
    let b: [u8; 4] = payload.try_into().map_err(|_| Reason::FRAME_SIZE_ERROR)?;
    match u32::from_be_bytes(b) & 0x7fff_ffff {
        0 => Err(Reason::PROTOCOL_ERROR),
        n => Ok(n),
    }
}

/// A DATA payload without its padding.
pub fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], Reason> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or(Reason::PROTOCOL_ERROR)?;
    rest.len().checked_sub(pad as usize).map(|n| &rest[..n]).ok_or(Reason::PROTOCOL_ERROR)
}

/// The header block fragment of a HEADERS payload, and its priority fields (5 bytes) if any.
pub fn headers_fragment(flags: u8, payload: &[u8]) -> Result<(&[u8], Option<[u8; 5]>), Reason> {
    let mut p = unpad(flags, payload)?;
    let mut prio = None;
    if flags & PRIORITY_FLAG != 0 {
        let (dep, rest) = p.split_at_checked(5).ok_or(Reason::PROTOCOL_ERROR)?;
        prio = Some([dep[0], dep[1], dep[2], dep[3], dep[4]]);
        p = rest;
    }
    Ok((p, prio))
}

/// Writes a header block as HEADERS (with `prio` and END_STREAM if asked) and as many
/// CONTINUATIONs as frames of at most `max_frame` bytes need.
pub fn header_frames(out: &mut BytesMut, stream: u32, end_stream: bool, prio: Option<[u8; 5]>, block: &[u8], max_frame: usize) {
    let first_room = max_frame - if prio.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let prio_len = prio.map_or(0, |_| 5);
    if let Some(p) = prio {
        flags |= PRIORITY_FLAG;
        Head { len: first.len() + prio_len, kind: HEADERS, flags, stream }.write(out);
        out.put_slice(&p);
        out.put_slice(first);
    } else {
        frame(out, HEADERS, flags, stream, first);
    }
    while !rest.is_empty() {
        let (chunk, r) = rest.split_at(rest.len().min(max_frame));
        rest = r;
        frame(out, CONTINUATION, if rest.is_empty() { END_HEADERS } else { 0 }, stream, chunk);
    }
}

/// Why a header block was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The HPACK state cannot be trusted any more, or the block is abusive: end the connection.
    Connection(Reason),
    /// The block decoded but is not a valid request or trailers: reset the stream.
    Malformed,
}

/// A decoded header block, in the order it was sent.
#[derive(Debug, Default)]
pub struct Block {
    pub fields: Vec<Header>,
    pub malformed: bool,
}

impl Block {
    pub fn path(&self) -> Option<&str> {
        self.fields.iter().find_map(|h| match h {
            Header::Path(p) => Some(&**p),
            _ => None,
        })
    }

    /// The value of a regular field.
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.fields.iter().find_map(|h| match h {
            Header::Field { name: n, value } if n == name => Some(value),
            _ => None,
        })
    }

    pub fn has_pseudo(&self) -> bool {
        self.fields.iter().any(|h| !matches!(h, Header::Field { .. }))
    }

    /// The regular fields as a map.
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len());
        for h in &self.fields {
            if let Header::Field { name, value } = h {
                map.append(name.clone(), value.clone());
            }
        }
        map
    }

    /// The checks h2's server makes of a request's pseudo-headers, without building it.
    pub fn check_request(&self) -> Result<(), BlockError> {
        let (mut method, mut scheme, mut path) = (false, false, false);
        for h in &self.fields {
            match h {
                Header::Method(m) if *m == Method::CONNECT => return Err(BlockError::Malformed),
                Header::Method(_) => method = true,
                Header::Scheme(_) => scheme = true,
                Header::Path(p) => path = !p.is_empty(),
                Header::Protocol(_) | Header::Status(_) => return Err(BlockError::Malformed),
                Header::Authority(_) | Header::Field { .. } => {}
            }
        }
        if method && scheme && path {
            Ok(())
        } else {
            Err(BlockError::Malformed)
        }
    }

    /// The request it opens, built as h2's server builds it (pseudo-headers checked, an
    /// `:authority` that names a unix socket taken as none).
    pub fn request(&self) -> Result<Request<()>, BlockError> {
        use http::uri;
        let (mut method, mut scheme, mut authority, mut path) = (None, None, None, None);
        for h in &self.fields {
            match h {
                Header::Method(m) => method = Some(m.clone()),
                Header::Scheme(s) => scheme = Some(s),
                Header::Authority(a) => authority = Some(a),
                Header::Path(p) => path = Some(p),
                Header::Protocol(_) | Header::Status(_) => return Err(BlockError::Malformed),
                Header::Field { .. } => {}
            }
        }
        let method = method.ok_or(BlockError::Malformed)?;
        if method == Method::CONNECT {
            return Err(BlockError::Malformed);
        }
        let mut parts = uri::Parts::default();
        if let Some(a) = authority {
            match uri::Authority::from_maybe_shared(Bytes::copy_from_slice(a.as_bytes())) {
                Ok(a) => parts.authority = Some(a),
                Err(_) if h2::hpack_export::is_unix_socket_authority(a) => {}
                Err(_) => return Err(BlockError::Malformed),
            }
        }
        let scheme: uri::Scheme = scheme.ok_or(BlockError::Malformed)?.parse().map_err(|_| BlockError::Malformed)?;
        if parts.authority.is_some() {
            parts.scheme = Some(scheme);
        }
        let path = path.filter(|p| !p.is_empty()).ok_or(BlockError::Malformed)?;
        parts.path_and_query =
            Some(uri::PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(path.as_bytes())).map_err(|_| BlockError::Malformed)?);
        let mut req =
            Request::builder().version(http::Version::HTTP_2).method(method).uri(parts).body(()).map_err(|_| BlockError::Malformed)?;
        *req.headers_mut() = self.header_map();
        Ok(req)
    }
}

/// Decodes a whole header block with `decoder` (kept in sync with the peer's encoder: the
/// block is decoded to its end even when it is malformed, as h2 does). Marks the block
/// malformed as h2's server would: a pseudo-header after a regular one or repeated,
/// connection-specific fields, `te` other than `trailers`.
pub fn decode_block(decoder: &mut Decoder, block: &[u8]) -> Result<Block, BlockError> {
    if block.len() > MAX_HEADER_BLOCK {
        return Err(BlockError::Connection(Reason::ENHANCE_YOUR_CALM));
    }
    let mut buf = BytesMut::from(block);
    let mut cursor = Cursor::new(&mut buf);
    let mut out = Block::default();
    let (mut regular, mut size, mut too_large) = (false, 0usize, false);
    let mut seen = [false; 6];
    let res = decoder.decode(&mut cursor, |h| {
        size += h.len();
        if size > MAX_HEADER_BLOCK {
            too_large = true;
            return ControlFlow::Break(());
        }
        let pseudo = match &h {
            Header::Field { name, value } => {
                use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
                if name == CONNECTION
                    || name == TRANSFER_ENCODING
                    || name == UPGRADE
                    || name == "keep-alive"
                    || name == "proxy-connection"
                    || (name == TE && value != "trailers")
                {
                    out.malformed = true;
                }
                regular = true;
                None
            }
            Header::Authority(_) => Some(0),
            Header::Method(_) => Some(1),
            Header::Scheme(_) => Some(2),
            Header::Path(_) => Some(3),
            Header::Protocol(_) => Some(4),
            Header::Status(_) => Some(5),
        };
        if let Some(i) = pseudo {
            if regular || seen[i] {
                out.malformed = true;
            }
            seen[i] = true;
        }
        out.fields.push(h);
        ControlFlow::Continue(())
    });
    if too_large {
        return Err(BlockError::Connection(Reason::ENHANCE_YOUR_CALM));
    }
    res.map_err(|_| BlockError::Connection(Reason::COMPRESSION_ERROR))?;
    Ok(out)
}

/// Re-encodes decoded fields with pullgate's own encoder (toward containerd).
pub fn encode_block(encoder: &mut Encoder, fields: Vec<Header>, dst: &mut BytesMut) {
    encoder.encode(
        fields.into_iter().map(|h| match h {
            Header::Field { name, value } => Header::Field { name: Some(name), value },
            Header::Authority(v) => Header::Authority(v),
            Header::Method(v) => Header::Method(v),
            Header::Scheme(v) => Header::Scheme(v),
            Header::Path(v) => Header::Path(v),
            Header::Protocol(v) => Header::Protocol(v),
            Header::Status(v) => Header::Status(v),
        }),
        dst,
    );
}

/// A header block of pullgate's own (a response or trailers to the caller) that never touches
/// the caller's HPACK dynamic table: `:status` (if any) and every field as literals without
/// indexing (RFC 7541 6.2.2), new names, no Huffman, no table size update.
pub fn literal_block(status: Option<http::StatusCode>, fields: &HeaderMap, dst: &mut BytesMut) {
    if let Some(s) = status {
        literal(dst, b":status", s.as_str().as_bytes());
    }
    for (name, value) in fields {
        literal(dst, name.as_str().as_bytes(), value.as_bytes());
    }
}

fn literal(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.put_u8(0);
    string(dst, name);
    string(dst, value);
}

fn string(dst: &mut BytesMut, s: &[u8]) {
    integer(dst, s.len(), 7, 0);
    dst.put_slice(s);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1).
fn integer(dst: &mut BytesMut, mut v: usize, n: u32, first: u8) {
    let max = (1usize << n) - 1;
    if v < max {
        dst.put_u8(first | v as u8);
        return;
    }
    dst.put_u8(first | max as u8);
    v -= max;
    while v >= 128 {
        dst.put_u8((v % 128) as u8 | 0x80);
        v /= 128;
    }
    dst.put_u8(v as u8);
}

#[cfg(test)]
fn bytes_str(s: &str) -> Option<h2::hpack_export::BytesStr> {
    h2::hpack_export::BytesStr::try_from(Bytes::copy_from_slice(s.as_bytes())).ok()
}

#[cfg(test)]
fn field(name: &str, value: &str) -> Option<Header> {
    Some(Header::Field { name: http::HeaderName::from_bytes(name.as_bytes()).ok()?, value: HeaderValue::from_str(value).ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(fields: Vec<Header>) -> BytesMut {
        let mut enc = Encoder::new(DEFAULT_TABLE, 0);
        let mut out = BytesMut::new();
        encode_block(&mut enc, fields, &mut out);
        out
    }

    fn request_fields(path: &str) -> Vec<Header> {
        vec![
            Header::Method(Method::POST),
            Header::Scheme(bytes_str("http").unwrap()),
            Header::Authority(bytes_str("%2Frun%2Fcontainerd.sock").unwrap()),
            Header::Path(bytes_str(path).unwrap()),
            field("content-type", "application/grpc").unwrap(),
            field("te", "trailers").unwrap(),
        ]
    }

    #[test]
    fn frame_header_round_trips_and_ignores_the_reserved_bit() {
        let mut out = BytesMut::new();
        frame(&mut out, HEADERS, END_HEADERS, 7, b"abc");
        assert_eq!(Head::parse(&out), Some(Head { len: 3, kind: HEADERS, flags: END_HEADERS, stream: 7 }));
        out[5] |= 0x80;
        assert_eq!(Head::parse(&out).unwrap().stream, 7);
        assert_eq!(Head::parse(&out[..8]), None);
    }

    #[test]
    fn hostile_settings_and_window_updates_are_errors() {
        let mut s = Settings::default();
        assert_eq!(s.apply(&[0, 4, 0x80, 0, 0, 0]), Err(Reason::FLOW_CONTROL_ERROR));
        assert_eq!(s.apply(&[0, 5, 0, 0, 0, 1]), Err(Reason::PROTOCOL_ERROR));
        assert_eq!(s.apply(&[0, 5, 0x01, 0, 0, 0]), Err(Reason::PROTOCOL_ERROR));
        assert_eq!(s.apply(&[0, 5, 0, 0]), Err(Reason::FRAME_SIZE_ERROR));
        assert_eq!(s.apply(&[0, 5, 0, 0, 0x80, 0, 0, 4, 0, 1, 0, 0]), Ok(()));
        assert_eq!((s.max_frame, s.initial_window), (32_768, 65_536));
        assert_eq!(s.apply(&[0, 5, 0, 0, 0x40, 0]), Ok(()));
        assert_eq!((s.max_frame, s.max_frame_ever), (16_384, 32_768));
        assert_eq!(window_increment(&[0, 0, 0, 0]), Err(Reason::PROTOCOL_ERROR));
        assert_eq!(window_increment(&[0, 0, 1]), Err(Reason::FRAME_SIZE_ERROR));
        assert_eq!(window_increment(&[0xff, 0xff, 0xff, 0xff]), Ok(0x7fff_ffff));
    }

    #[test]
    fn padding_longer_than_the_payload_is_an_error() {
        assert_eq!(unpad(PADDED, &[2, b'a', 0, 0]), Ok(&b"a"[..]));
        assert_eq!(unpad(PADDED, &[4, b'a', 0, 0]), Err(Reason::PROTOCOL_ERROR));
        assert_eq!(unpad(PADDED, &[]), Err(Reason::PROTOCOL_ERROR));
        assert_eq!(headers_fragment(PRIORITY_FLAG, &[0, 0, 0]), Err(Reason::PROTOCOL_ERROR));
        assert_eq!(headers_fragment(PRIORITY_FLAG, &[0, 0, 0, 1, 9, 0x82]), Ok((&[0x82u8][..], Some([0, 0, 0, 1, 9]))));
    }

    #[test]
    fn a_request_block_decodes_and_re_encodes_to_the_same_list() {
        let block = encode(request_fields("/runtime.v1.RuntimeService/Version"));
        let mut dec = Decoder::new(DEFAULT_TABLE);
        let b = decode_block(&mut dec, &block).unwrap();
        assert!(!b.malformed);
        assert_eq!(b.path(), Some("/runtime.v1.RuntimeService/Version"));
        let req = b.request().unwrap();
        assert_eq!(req.uri(), "/runtime.v1.RuntimeService/Version", "a unix-socket authority counts as none");
        assert_eq!(req.headers()["content-type"], "application/grpc");
        let fields = b.fields.clone();
        let mut again = BytesMut::new();
        encode_block(&mut Encoder::new(DEFAULT_TABLE, 0), b.fields, &mut again);
        let b2 = decode_block(&mut Decoder::new(DEFAULT_TABLE), &again).unwrap();
        assert_eq!(b2.fields, fields);
    }

    #[test]
    fn malformed_requests_are_stream_errors() {
        let mut dec = Decoder::new(DEFAULT_TABLE);
        // A pseudo-header after a regular one, a repeated one, a connection header, bad te.
        let mut f = request_fields("/a");
        f.swap(0, 4);
        assert!(decode_block(&mut dec, &encode(f)).unwrap().malformed);
        let mut f = request_fields("/a");
        f.push(Header::Path(bytes_str("/b").unwrap()));
        f.swap(3, 6);
        assert!(decode_block(&mut dec, &encode(f)).unwrap().malformed);
        for (n, v) in [("connection", "close"), ("te", "gzip"), ("upgrade", "x")] {
            let mut f = request_fields("/a");
            f.push(field(n, v).unwrap());
            assert!(decode_block(&mut Decoder::new(DEFAULT_TABLE), &encode(f)).unwrap().malformed, "{n}");
        }
        // Missing :path, missing :method.
        let f: Vec<Header> = request_fields("/a").into_iter().filter(|h| !matches!(h, Header::Path(_))).collect();
        assert_eq!(decode_block(&mut Decoder::new(DEFAULT_TABLE), &encode(f)).unwrap().request().err(), Some(BlockError::Malformed));
        let f: Vec<Header> = request_fields("/a").into_iter().filter(|h| !matches!(h, Header::Method(_))).collect();
        assert_eq!(decode_block(&mut Decoder::new(DEFAULT_TABLE), &encode(f)).unwrap().request().err(), Some(BlockError::Malformed));
    }

    #[test]
    fn bad_hpack_and_bombs_end_the_connection() {
        // An index past both tables; a truncated literal; a size update above the limit.
        for bad in [&[0xff, 0xff, 0x7f][..], &[0x00, 0x05, b'a'], &[0x3f, 0xe1, 0xff, 0x03]] {
            assert_eq!(
                decode_block(&mut Decoder::new(DEFAULT_TABLE), bad).err(),
                Some(BlockError::Connection(Reason::COMPRESSION_ERROR)),
                "{bad:?}"
            );
        }
        // One 4000-byte entry indexed once, then referenced 100 000 times: 400 MB decoded.
        let mut dec = Decoder::new(DEFAULT_TABLE);
        let mut block = BytesMut::new();
        block.put_u8(0x40);
        string(&mut block, b"x-big");
        string(&mut block, &[b'v'; 4000]);
        block.put_slice(&[0xbe; 100_000]);
        assert_eq!(decode_block(&mut dec, &block).err(), Some(BlockError::Connection(Reason::ENHANCE_YOUR_CALM)));
        assert_eq!(
            decode_block(&mut dec, &vec![0x82; MAX_HEADER_BLOCK + 1]).err(),
            Some(BlockError::Connection(Reason::ENHANCE_YOUR_CALM))
        );
    }

    #[test]
    fn pullgate_blocks_never_touch_the_callers_table() {
        let mut fields = HeaderMap::new();
        fields.insert("grpc-status", HeaderValue::from_static("7"));
        fields.insert("grpc-message", HeaderValue::from_str(&"m".repeat(300)).unwrap());
        let mut block = BytesMut::new();
        literal_block(Some(http::StatusCode::OK), &fields, &mut block);
        let mut dec = Decoder::new(DEFAULT_TABLE);
        let b = decode_block(&mut dec, &block).unwrap();
        assert!(matches!(b.fields[0], Header::Status(s) if s == 200));
        assert_eq!(b.get("grpc-status").unwrap(), "7");
        assert_eq!(b.get("grpc-message").unwrap().len(), 300);
        // The table is still empty: index 62 (the first dynamic entry) does not resolve.
        assert!(decode_block(&mut dec, &[0xbe]).is_err());
    }

    #[test]
    fn long_blocks_are_split_into_continuations() {
        let block = vec![0x82u8; 40_000];
        let mut out = BytesMut::new();
        header_frames(&mut out, 3, true, Some([0, 0, 0, 1, 0]), &block, 16_384);
        let mut at = 0;
        let mut got = Vec::new();
        let mut kinds = Vec::new();
        while at < out.len() {
            let h = Head::parse(&out[at..]).unwrap();
            assert!(h.len <= 16_384);
            let p = &out[at + 9..at + 9 + h.len];
            let frag = if h.kind == HEADERS { headers_fragment(h.flags, p).unwrap().0 } else { p };
            got.extend_from_slice(frag);
            kinds.push((h.kind, h.flags));
            at += 9 + h.len;
        }
        assert_eq!(got, block);
        assert_eq!(kinds, [(HEADERS, END_STREAM | PRIORITY_FLAG), (CONTINUATION, 0), (CONTINUATION, END_HEADERS)]);
    }
}
