//! Bounded, escaped text from requests: what goes into refusals, log lines and audit records.
//!
//! A CRI caller controls the image strings, pod names and paths pullgate echoes. Echoed whole,
//! a 10 MB image string makes a 13 MB `grpc-message` (the client's transport fails with
//! `RESOURCE_EXHAUSTED` instead of showing `SignatureValidationFailed`) and tens of MB of log;
//! echoed raw, a newline in it starts a forged log line. So every such field is shortened to a
//! bound, keeping its head and tail around an ellipsis and naming the whole by its length and
//! sha256 (an operator can still tell two long strings apart and match one they hold), and
//! control characters are escaped where the output is a text line.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Most bytes of a refusal message (the `grpc-message` kubelet shows as the pod's event).
pub const REFUSAL_MAX: usize = 1024;

/// Most bytes of one field of a log line or an audit record.
pub const FIELD_MAX: usize = 2048;

/// `s` when it is at most `max` bytes; otherwise its head and tail around `…`, followed by
/// `[N bytes, sha256:…]` naming the whole, in at most `max` bytes (`max` below ~100 bytes
/// leaves room for the length and hash only).
pub fn shorten(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let hash = crate::digest::Digest::sha256(s.as_bytes());
    let suffix = format!(" [{} bytes, {hash}]", s.len());
    let room = max.saturating_sub(suffix.len() + '…'.len_utf8());
    let head = floor_boundary(s, room * 2 / 3);
    let tail = ceil_boundary(s, s.len() - (room - head));
    let mut out = String::with_capacity(max);
    out.push_str(&s[..head]);
    out.push('…');
    out.push_str(&s[tail..]);
    out.push_str(&suffix);
    Cow::Owned(out)
}

/// `s` with every control character (and the Unicode line and paragraph separators) escaped,
/// so that it stays on one line: `\n`, `\r`, `\t`, `\\u{1b}`.
pub fn escape(s: &str) -> Cow<'_, str> {
    let needs = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One line of at most `max` bytes: `s` escaped, then shortened.
pub fn line(s: &str, max: usize) -> String {
    let escaped = escape(s);
    shorten(&escaped, max).into_owned()
}

/// A field for a log line or an audit record: shortened to [`FIELD_MAX`]. Log formatters
/// quote and escape string values themselves (`image="…"`), JSON escapes them.
pub fn field(s: &str) -> Cow<'_, str> {
    shorten(s, FIELD_MAX)
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_untouched() {
        assert!(matches!(shorten("reg/demo/app:1", 64), Cow::Borrowed("reg/demo/app:1")));
        assert!(matches!(escape("reg/demo/app:1"), Cow::Borrowed(_)));
    }

    #[test]
    fn long_strings_keep_head_and_tail_and_name_the_whole() {
        let long = format!("reg.example/{}:tail-{}", "a".repeat(10 << 20), "é".repeat(10));
        let s = shorten(&long, REFUSAL_MAX);
        assert!(s.len() <= REFUSAL_MAX, "{}", s.len());
        assert!(s.starts_with("reg.example/aaa"), "{s}");
        assert!(s.contains("…") && s.contains(&format!("[{} bytes, sha256:", long.len())), "{s}");
        let hash = crate::digest::Digest::sha256(long.as_bytes()).to_string();
        assert!(s.contains(&hash), "{s}");
        assert!(s.split(" [").next().unwrap().ends_with("éé"), "{s}");
        // Char boundaries hold for any bound.
        for max in 0..200 {
            assert!(shorten(&"é".repeat(300), max).len() <= max.max(100));
        }
    }

    #[test]
    fn lines_cannot_be_broken() {
        let forged = "x:1\n2026-01-01T00:00:00Z  INFO pullgate: allowed\r\u{1b}[2J\u{2028}";
        let l = line(forged, FIELD_MAX);
        assert!(!l.chars().any(|c| c.is_control() || c == '\u{2028}'), "{l}");
        assert_eq!(l, "x:1\\n2026-01-01T00:00:00Z  INFO pullgate: allowed\\r\\u{1b}[2J\\u{2028}");
    }
}
