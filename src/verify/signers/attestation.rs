//! Required attestations: which in-toto predicates an authority must also have signed, and
//! the conditions their predicate must meet.
//!
//! The vocabulary follows sigstore policy-controller (`attestations[].predicateType`) and
//! Kyverno (`conditions` on predicate fields), cut down to a small documented set that needs no
//! policy language:
//!
//! | condition | meaning |
//! |---|---|
//! | `equals: V` | the field is `V`, a string, number or boolean (compared by JSON text) |
//! | `matches: RE` | the field is a string that the regular expression matches whole (anchored) |
//! | `oneOf: [A, B]` | the field equals one of the listed values |
//! | `notOlderThan: 7d` | the field is an RFC 3339 time no older than the duration (`s`, `m`, `h`, `d`) |
//!
//! `path` is a dotted path into the statement's `predicate`, with `[N]` for array elements and
//! `["key.with.dots"]` for keys that contain dots: `buildDefinition.resolvedDependencies[0].uri`.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::authority::AuthoritySigners;
use super::identity::StringMatcher;
use crate::verify::error::one_line;

/// Longest value quoted in a condition failure, so a reason stays one short line.
const MAX_QUOTED: usize = 120;
/// Most segments a path may have; deeper is a typo or an attack on the config.
const MAX_SEGMENTS: usize = 32;

/// One attestation an authority requires.
#[derive(Debug, Clone)]
pub struct AttestationRequirement {
    /// The statement's `predicateType`, compared exactly.
    pub predicate_type: String,
    /// Who must have signed it; `None`: the authority's own identities or keys.
    pub signers: Option<AuthoritySigners>,
    /// All must hold on the predicate.
    pub conditions: Vec<Condition>,
}

/// One step of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A dotted path into a JSON value (`a.b[0].c`, `a["x.y"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    segments: Vec<Segment>,
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonPath {
    /// Parses `a.b[0]["c.d"]`; the error says what is wrong in one line.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let mut segments = Vec::new();
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err("empty path".into());
        }
        let mut expect_key = true;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                let close = after.find(']').ok_or_else(|| format!("unclosed `[` in {text:?}"))?;
                let inner = &after[..close];
                if let Some(quoted) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    segments.push(Segment::Key(quoted.to_string()));
                } else {
                    let n = inner
                        .parse::<usize>()
                        .map_err(|_| format!("`[{inner}]` in {text:?} is neither an array index nor a quoted key"))?;
                    segments.push(Segment::Index(n));
                }
                rest = &after[close + 1..];
                expect_key = false;
            } else if let Some(after) = rest.strip_prefix('.') {
                if expect_key {
                    return Err(format!("empty key in {text:?}"));
                }
                rest = after;
                expect_key = true;
                if rest.is_empty() {
                    return Err(format!("{text:?} ends with `.`"));
                }
            } else {
                if !expect_key {
                    return Err(format!("expected `.` or `[` in {text:?}"));
                }
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                segments.push(Segment::Key(rest[..end].to_string()));
                rest = &rest[end..];
                expect_key = false;
            }
            if segments.len() > MAX_SEGMENTS {
                return Err(format!("more than {MAX_SEGMENTS} segments"));
            }
        }
        Ok(JsonPath { text: text.trim().to_string(), segments })
    }

    /// The value at this path, if every step exists.
    pub fn lookup<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        let mut at = root;
        for s in &self.segments {
            at = match s {
                Segment::Key(k) => at.as_object()?.get(k)?,
                Segment::Index(i) => at.as_array()?.get(*i)?,
            };
        }
        Some(at)
    }
}

/// What a condition requires of its field.
#[derive(Debug, Clone)]
pub enum Test {
    /// Equal to this string (numbers and booleans by their JSON text).
    Equals(String),
    /// A string the anchored regular expression matches.
    Matches(StringMatcher),
    /// Equal to one of these strings.
    OneOf(Vec<String>),
    /// An RFC 3339 time no older than this; the text is the duration as configured.
    NotOlderThan(Duration, String),
}

/// One condition on a predicate field.
#[derive(Debug, Clone)]
pub struct Condition {
    /// Where the field is, inside `predicate`.
    pub path: JsonPath,
    /// What it must be.
    pub test: Test,
}

/// A JSON value as a string to compare: strings as they are, numbers and booleans as JSON text.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A value quoted for a reason: JSON text, one line, bounded.
fn quoted(value: &Value) -> String {
    let text = one_line(&value.to_string());
    if text.chars().count() > MAX_QUOTED {
        let cut: String = text.chars().take(MAX_QUOTED).collect();
        format!("{cut}...")
    } else {
        text
    }
}

impl Test {
    /// What is wanted, for a reason.
    fn want(&self) -> String {
        match self {
            Test::Equals(v) => quoted(&Value::String(v.clone())),
            Test::Matches(m) => match m {
                StringMatcher::Exact(v) => quoted(&Value::String(v.clone())),
                StringMatcher::Regex { pattern, .. } => format!("match of /{}/", one_line(pattern)),
            },
            Test::OneOf(vs) => format!("one of {}", quoted(&Value::from(vs.clone()))),
            Test::NotOlderThan(_, text) => format!("a time no older than {text}"),
        }
    }
}

impl Condition {
    /// Checks the condition on `predicate` at `now`; the error is one bounded line:
    /// `path = "got", want "x"`.
    pub fn check(&self, predicate: &Value, now: jiff::Timestamp) -> Result<(), String> {
        let Some(value) = self.path.lookup(predicate) else {
            return Err(format!("{} is missing, want {}", self.path, self.test.want()));
        };
        let ok = match &self.test {
            Test::Equals(want) => scalar(value).is_some_and(|v| &v == want),
            Test::Matches(m) => value.as_str().is_some_and(|v| m.matches(v)),
            Test::OneOf(set) => scalar(value).is_some_and(|v| set.contains(&v)),
            Test::NotOlderThan(max, _) => {
                let Some(time) = value.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) else {
                    return Err(format!("{} = {} is not an RFC 3339 time, want {}", self.path, quoted(value), self.test.want()));
                };
                let age = now.duration_since(time);
                let max = jiff::SignedDuration::try_from(*max).unwrap_or(jiff::SignedDuration::MAX);
                age <= max
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{} = {}, want {}", self.path, quoted(value), self.test.want()))
        }
    }
}

impl AttestationRequirement {
    /// Every condition on `predicate`: the first failure, if any.
    pub fn check_conditions(&self, predicate: &Value, now: jiff::Timestamp) -> Result<(), String> {
        self.conditions.iter().try_for_each(|c| c.check(predicate, now))
    }

    /// The earliest moment one of the `notOlderThan` conditions turns false on `predicate`;
    /// `None` when no condition depends on the time.
    pub fn fresh_until(&self, predicate: &Value) -> Option<jiff::Timestamp> {
        self.conditions.iter().filter_map(|c| c.fresh_until(predicate)).min()
    }
}

impl Condition {
    /// For `notOlderThan`: the field's time plus the allowed age (when the condition turns
    /// false). An unreadable field gives the epoch: the condition does not hold.
    fn fresh_until(&self, predicate: &Value) -> Option<jiff::Timestamp> {
        let Test::NotOlderThan(max, _) = &self.test else {
            return None;
        };
        let time = self.path.lookup(predicate).and_then(Value::as_str).and_then(|s| s.parse::<jiff::Timestamp>().ok());
        let max = jiff::SignedDuration::try_from(*max).unwrap_or(jiff::SignedDuration::MAX);
        Some(match time {
            Some(t) => t.checked_add(max).unwrap_or(jiff::Timestamp::MAX),
            None => jiff::Timestamp::UNIX_EPOCH,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(path: &str, test: Test) -> Condition {
        Condition { path: JsonPath::parse(path).unwrap(), test }
    }

    #[test]
    fn paths_parse_and_look_up() {
        let v = json!({"a": {"b": [{"c": "x"}, {"c": "y"}], "d.e": 1}});
        assert_eq!(JsonPath::parse("a.b[1].c").unwrap().lookup(&v), Some(&json!("y")));
        assert_eq!(JsonPath::parse("a[\"d.e\"]").unwrap().lookup(&v), Some(&json!(1)));
        assert_eq!(JsonPath::parse("a.b[2].c").unwrap().lookup(&v), None);
        assert_eq!(JsonPath::parse("a.b.c").unwrap().lookup(&v), None);
        for bad in ["", "a..b", "a.", ".a", "a[x]", "a[1", "a[0]b", "a[-1]"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(JsonPath::parse(&vec!["a"; 40].join(".")).is_err());
    }

    #[test]
    fn conditions_evaluate_with_reasons() {
        let now: jiff::Timestamp = "2026-12-06T12:00:00Z".parse().unwrap();
        let p = json!({
            "buildDefinition": {"externalParameters": {"workflow": {"ref": "refs/heads/evil", "repository": "https://github.com/org/app"}}},
            "runDetails": {"builder": {"id": "https://github.com/org/builder/.github/workflows/build.yml@refs/tags/v1"}},
            "scan": {"finished": "2026-12-01T00:00:00Z", "count": 3, "ok": true}
        });
        let e = cond("buildDefinition.externalParameters.workflow.ref", Test::Equals("refs/heads/main".into())).check(&p, now).unwrap_err();
        assert_eq!(e, r#"buildDefinition.externalParameters.workflow.ref = "refs/heads/evil", want "refs/heads/main""#);
        assert!(cond("scan.count", Test::Equals("3".into())).check(&p, now).is_ok());
        assert!(cond("scan.ok", Test::OneOf(vec!["true".into()])).check(&p, now).is_ok());
        let m = StringMatcher::regex(r"https://github\.com/org/builder/.*@refs/tags/v.*").unwrap();
        assert!(cond("runDetails.builder.id", Test::Matches(m.clone())).check(&p, now).is_ok());
        assert!(cond("buildDefinition", Test::Matches(m)).check(&p, now).is_err(), "objects never match");
        let e = cond(
            "buildDefinition.externalParameters.workflow.ref",
            Test::OneOf(vec!["refs/heads/main".into(), "refs/heads/release".into()]),
        )
        .check(&p, now)
        .unwrap_err();
        assert!(e.contains(r#"want one of ["refs/heads/main","refs/heads/release"]"#), "{e}");
        let week = Test::NotOlderThan(Duration::from_secs(7 * 86400), "7d".into());
        assert!(cond("scan.finished", week.clone()).check(&p, now).is_ok());
        let day = Test::NotOlderThan(Duration::from_secs(86400), "1d".into());
        let e = cond("scan.finished", day).check(&p, now).unwrap_err();
        assert_eq!(e, r#"scan.finished = "2026-12-01T00:00:00Z", want a time no older than 1d"#);
        let e = cond("scan.count", week.clone()).check(&p, now).unwrap_err();
        assert!(e.contains("not an RFC 3339 time"), "{e}");
        let e = cond("scan.missing", week.clone()).check(&p, now).unwrap_err();
        assert_eq!(e, "scan.missing is missing, want a time no older than 7d");
        // When the freshness conditions turn false: the earliest of them; none without one.
        let req = |conditions| AttestationRequirement { predicate_type: "x:y".into(), signers: None, conditions };
        let three_days = Test::NotOlderThan(Duration::from_secs(3 * 86400), "3d".into());
        let r =
            req(vec![cond("scan.finished", week.clone()), cond("scan.finished", three_days), cond("scan.count", Test::Equals("3".into()))]);
        assert_eq!(r.fresh_until(&p), Some("2026-12-04T00:00:00Z".parse().unwrap()));
        assert_eq!(req(vec![cond("scan.count", Test::Equals("3".into()))]).fresh_until(&p), None);
        assert_eq!(req(vec![cond("scan.missing", week)]).fresh_until(&p), Some(jiff::Timestamp::UNIX_EPOCH));
        // Long values are cut.
        let long = json!({"x": "y".repeat(1000)});
        let e = cond("x", Test::Equals("z".into())).check(&long, now).unwrap_err();
        assert!(e.len() < 200 && !e.contains('\n'), "{e}");
    }
}
