//! In-place edits of protobuf messages at the wire level.
//!
//! When pullgate must change a request (pin `PullImageRequest.image.image` to the verified
//! digest), it edits the original bytes instead of decoding and re-encoding: prost drops fields
//! it does not know, and kubelet may send fields newer than pullgate's proto. Every byte outside
//! the edited field, including unknown fields and their order, is kept.

use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed protobuf message: {0}")]
    Malformed(&'static str),
    #[error("field {0} not present in the message")]
    Missing(u32),
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const SGROUP: u8 = 3;
const EGROUP: u8 = 4;
const I32: u8 = 5;

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or(WireError::Malformed("truncated varint"))?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::Malformed("varint longer than 10 bytes"))
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// One top-level field: its number, wire type, the whole field's byte range (key included), and
/// for length-delimited fields the payload range.
struct Field {
    number: u32,
    wire: u8,
    whole: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
}

fn fields(buf: &[u8]) -> impl Iterator<Item = Result<Field, WireError>> + '_ {
    let mut pos = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pos >= buf.len() {
            return None;
        }
        let start = pos;
        let parsed = (|| {
            let key = read_varint(buf, &mut pos)?;
            let number = u32::try_from(key >> 3).map_err(|_| WireError::Malformed("field number out of range"))?;
            let wire = (key & 7) as u8;
            if number == 0 {
                return Err(WireError::Malformed("field number 0"));
            }
            let payload_start;
            match wire {
                VARINT => {
                    read_varint(buf, &mut pos)?;
                    payload_start = start;
                }
                I64 | I32 => {
                    let n = if wire == I64 { 8 } else { 4 };
                    payload_start = pos;
                    pos = pos.checked_add(n).filter(|p| *p <= buf.len()).ok_or(WireError::Malformed("truncated fixed field"))?;
                }
                LEN => {
                    let len = usize::try_from(read_varint(buf, &mut pos)?).map_err(|_| WireError::Malformed("length out of range"))?;
                    payload_start = pos;
                    pos =
                        pos.checked_add(len).filter(|p| *p <= buf.len()).ok_or(WireError::Malformed("truncated length-delimited field"))?;
                }
                SGROUP | EGROUP => return Err(WireError::Malformed("groups are not used by CRI")),
                _ => return Err(WireError::Malformed("unknown wire type")),
            }
            Ok(Field { number, wire, whole: start..pos, payload: payload_start..pos })
        })();
        if parsed.is_err() {
            failed = true;
        }
        Some(parsed)
    })
}

/// Sets the string (or bytes) field at `path` (field numbers from the outermost message down) to
/// `value` in every occurrence, keeping all other bytes. Messages on the path must be present.
pub fn set_string_field(msg: &[u8], path: &[u32], value: &[u8]) -> Result<Bytes, WireError> {
    let mut out = BytesMut::with_capacity(msg.len() + value.len());
    edit(msg, path, value, &mut out)?;
    Ok(out.freeze())
}

fn edit(msg: &[u8], path: &[u32], value: &[u8], out: &mut BytesMut) -> Result<(), WireError> {
    let (&target, rest) = path.split_first().ok_or(WireError::Malformed("empty field path"))?;
    let mut found = false;
    for field in fields(msg) {
        let field = field?;
        if field.number != target {
            out.put_slice(&msg[field.whole.clone()]);
            continue;
        }
        if field.wire != LEN {
            return Err(WireError::Malformed("field on the path is not length-delimited"));
        }
        found = true;
        put_varint(out, (u64::from(target) << 3) | u64::from(LEN));
        if rest.is_empty() {
            put_varint(out, value.len() as u64);
            out.put_slice(value);
        } else {
            let mut inner = BytesMut::new();
            edit(&msg[field.payload.clone()], rest, value, &mut inner)?;
            put_varint(out, inner.len() as u64);
            out.put_slice(&inner);
        }
    }
    if found {
        Ok(())
    } else {
        Err(WireError::Missing(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::api;
    use prost::Message;

    fn pull_request(image: &str) -> Vec<u8> {
        api::PullImageRequest {
            image: Some(api::ImageSpec {
                image: image.into(),
                annotations: [("a".to_string(), "b".to_string())].into(),
                user_specified_image: "u".into(),
                runtime_handler: String::new(),
            }),
            auth: Some(api::AuthConfig { username: "me".into(), ..Default::default() }),
            sandbox_config: None,
        }
        .encode_to_vec()
    }

    #[test]
    fn replaces_only_the_image_name() {
        let original = pull_request("reg/app:1");
        let edited = set_string_field(&original, &[1, 1], b"reg/app@sha256:00").unwrap();
        let decoded = api::PullImageRequest::decode(edited.clone()).unwrap();
        let spec = decoded.image.unwrap();
        assert_eq!(spec.image, "reg/app@sha256:00");
        assert_eq!(spec.user_specified_image, "u");
        assert_eq!(spec.annotations["a"], "b");
        assert_eq!(decoded.auth.unwrap().username, "me");
        // Setting it back gives the original bytes exactly.
        assert_eq!(set_string_field(&edited, &[1, 1], b"reg/app:1").unwrap(), original);
    }

    #[test]
    fn unknown_fields_survive_in_place() {
        // ImageSpec{image: "x", field 77: "y"}, then top-level field 99 (varint 7) and a fixed64.
        let msg = b"\x0a\x07\x0a\x01x\xea\x04\x01y\x98\x06\x07\xa1\x06\x01\x02\x03\x04\x05\x06\x07\x08";
        let edited = set_string_field(msg, &[1, 1], b"longer-name").unwrap();
        assert_eq!(&edited[..], &b"\x0a\x11\x0a\x0blonger-name\xea\x04\x01y\x98\x06\x07\xa1\x06\x01\x02\x03\x04\x05\x06\x07\x08"[..]);
    }

    #[test]
    fn malformed_and_missing_are_errors_not_panics() {
        assert_eq!(set_string_field(b"", &[1, 1], b"x"), Err(WireError::Missing(1)));
        assert_eq!(set_string_field(b"\x12\x00", &[1, 1], b"x"), Err(WireError::Missing(1)));
        assert!(set_string_field(b"\x0a\x05ab", &[1, 1], b"x").is_err());
        assert!(set_string_field(b"\x0a", &[1, 1], b"x").is_err());
        assert!(set_string_field(b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", &[1], b"x").is_err());
        assert!(set_string_field(b"\x08\x01", &[1, 1], b"x").is_err());
        assert!(set_string_field(b"\x0b", &[1], b"x").is_err());
        // Arbitrary bytes never panic.
        let mut seed = 0x1234_5678u32;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            let _ = set_string_field(&junk, &[1, 1], b"x");
        }
    }

    #[test]
    fn repeated_occurrences_are_all_replaced() {
        // Two ImageSpec occurrences (protobuf merges them); both get the new name.
        let msg = b"\x0a\x03\x0a\x01a\x0a\x03\x0a\x01b";
        let edited = set_string_field(msg, &[1, 1], b"c").unwrap();
        assert_eq!(&edited[..], b"\x0a\x03\x0a\x01c\x0a\x03\x0a\x01c");
        assert_eq!(api::PullImageRequest::decode(edited).unwrap().image.unwrap().image, "c");
    }
}
