//! The settings vocabulary every module's configuration shares: durations and sizes written as
//! text, YAML parsing with errors naming the file and key, and [`ConfigError`], the one-line
//! configuration problem.
//!
//! A bottom module: `registry`, `trust`, `policy` and `config` use it, and it uses none of them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as a number and a unit: `500ms`, `10s`, `5m`, `24h`, `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected a number and a unit (ms, s, m, h, d), like \"10s\""))?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => None,
    };
    d.ok_or_else(|| format!("invalid duration {s:?}: expected a number and a unit (ms, s, m, h, d), like \"10s\""))
}

/// Deserializes a duration written as in [`parse_duration`].
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// A size in bytes: a number, or a number and `B`, `KiB`, `MiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || format!("invalid size {s:?}: expected bytes, or a number and a unit (B, KiB, MiB), like \"4MiB\"");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Deserializes a size written as a number of bytes or as in [`parse_size`].
pub fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        N(u64),
        S(String),
    }
    match Size::deserialize(d)? {
        Size::N(n) => Ok(n),
        Size::S(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// A configuration problem, reported as one line.
#[derive(Debug)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// Dotted key path (`access.allowed_uids[1]`), when the problem is at a key.
    pub key: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Deserializes YAML text into `T`, with errors naming `file`, the key path and the location.
/// An empty file (or one holding only comments) is `T::default()`.
pub fn parse_yaml<T: serde::de::DeserializeOwned + Default>(text: &str, file: &Path) -> Result<T, ConfigError> {
    if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return Ok(T::default());
    }
    let mut key_path = None;
    let options = serde_saphyr::options! { with_snippet: false };
    let parsed = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            let path = e.path().to_string();
            if path != "." {
                key_path = Some(path);
            }
            e.into_inner()
        })
    });
    parsed.map_err(|e| {
        let mut message = first_line(&e.to_string());
        // serde-saphyr ends its message with the location; say it once, at the end.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        if let Some(l) = e.location().filter(|l| l.line() > 0) {
            message.push_str(&format!(" (line {}, column {})", l.line(), l.column()));
        }
        ConfigError { file: file.to_owned(), key: key_path.clone(), message }
    })
}

/// serde-saphyr appends its own location after a newline; keep the message itself.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30d").unwrap(), Duration::from_secs(30 * 86400));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("10KiB"), Ok(10240));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("99999999999999999MiB").is_err());
    }
}
