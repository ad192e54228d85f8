//! The audit log: one JSON line per decision, the record operators use to confirm coverage in
//! audit mode before switching to enforce (`pullgate report` reads it).
//!
//! Written to stdout (journald under systemd) or to a file rotated by size (`audit.log`,
//! `audit.log.1`, ... `audit.log.N`). A failing write never blocks or fails a CRI call: it is
//! logged and counted instead.
//!
//! The record format is versioned (`format`, see packaging/AUDIT-LOG.md): format 1 (no `format`
//! field) wrote `"decision":"deny"` for audit-mode calls it let through; format 2 writes what
//! happened (`"decision":"allow"`) and marks what enforce mode would have refused
//! (`"would_deny":true`). Records now also carry `category`, the kind of reason
//! ([`Reason::category`](super::decision::Reason::category)), which metrics and `pullgate
//! report` use; records without it (older pullgate) are classified by their wording when read.
//! [`read_records`] reads all of them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::decision::{legacy_category, Reason, Verdict};
use crate::policy::Mode;

/// The audit record format pullgate writes.
pub const AUDIT_FORMAT: u32 = 2;

/// One decision, as written to the audit log.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    /// Record format: [`AUDIT_FORMAT`] when written; 1 for records without the field.
    #[serde(default = "format_1")]
    pub format: u32,
    /// RFC 3339 UTC.
    pub time: String,
    pub node: String,
    /// `PullImage`, `CreateContainer`, `RunPodSandbox`, or the gRPC path of a call outside the
    /// CRI methods pullgate checks.
    pub call: String,
    pub namespace: String,
    pub pod: String,
    /// The image reference as kubelet asked for it.
    pub image: String,
    /// Which image of the call this record is about, when it is not the call's own image:
    /// `image volume <container path>` (CreateContainer), `sandbox image` (RunPodSandbox),
    /// `not CRI` or `unknown ImageService method` (calls that name no image). Empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub surface: String,
    /// The manifest digest that was (or would have been) verified.
    pub digest: String,
    /// Policies that applied (comma-separated), or `exempt:<name>`, or `unmatched`.
    pub policy: String,
    /// The mode the decision was made in (`enforce` or `audit`); `None` (written `""`) when no
    /// policy was involved (an image containerd does not have, an exemption).
    #[serde(with = "mode_field")]
    pub mode: Option<Mode>,
    /// While deciding: `allow` or `deny` as enforce mode would have it. As written (format 2,
    /// [`AuditRecord::settled`]): what happened to the call, `allow` or `deny`.
    pub decision: String,
    /// Format 2: the call was let through only because of audit mode; enforce mode would have
    /// refused it. Never true with `decision` `deny`.
    #[serde(default)]
    pub would_deny: bool,
    /// One line.
    pub reason: String,
    /// The kind of `reason` (`no_signatures`, `trust_root`, `exempt`, ...: the `reason` label of
    /// `pullgate_decisions_total`); of the refusal when `would_deny`. Empty in records written
    /// before pullgate recorded it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub category: String,
    /// Signer identity found (SAN or key fingerprint), if any.
    pub identity: String,
    /// Where the signature came from (referrer, tag, file).
    pub source: String,
    pub latency_ms: f64,
    /// Whether the answer came from the decision cache.
    pub cached: bool,
    /// Set when a break-glass window let an image through that pullgate refused otherwise
    /// (`pullgate break-glass`): which window, and the refusal it overrode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<super::break_glass::Record>,
}

impl AuditRecord {
    /// The record with every string field shortened to [`crate::bounded::FIELD_MAX`] bytes
    /// (head, `…`, tail, length and sha256): fields carry what a CRI caller sent (a 10 MB image
    /// string), and one call must not write megabytes of audit log. JSON escapes control
    /// characters, so a line cannot be forged; they are kept as sent.
    pub fn bound(mut self) -> AuditRecord {
        let AuditRecord {
            time,
            node,
            call,
            namespace,
            pod,
            image,
            surface,
            digest,
            policy,
            decision,
            reason,
            category,
            identity,
            source,
            ..
        } = &mut self;
        for f in [time, node, call, namespace, pod, image, surface, digest, policy, decision, reason, category, identity, source] {
            if let std::borrow::Cow::Owned(short) = crate::bounded::field(f) {
                *f = short;
            }
        }
        self
    }
}

fn format_1() -> u32 {
    1
}

/// `AuditRecord::mode` as the log has always written it: `"enforce"`, `"audit"`, or `""` for
/// none.
mod mode_field {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::policy::Mode;

    pub fn serialize<S: Serializer>(mode: &Option<Mode>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(mode.map_or("", Mode::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Mode>, D::Error> {
        match String::deserialize(d)?.as_str() {
            "" => Ok(None),
            "enforce" => Ok(Some(Mode::Enforce)),
            "audit" => Ok(Some(Mode::Audit)),
            other => Err(serde::de::Error::invalid_value(serde::de::Unexpected::Str(other), &"\"enforce\", \"audit\" or \"\"")),
        }
    }
}

impl AuditRecord {
    /// Records an allowance (`reason` and its category).
    pub fn allow(&mut self, reason: &Reason) {
        self.decision = "allow".into();
        self.set_reason(reason);
    }

    /// Records what enforce mode refuses (or would refuse, in audit mode).
    pub fn deny(&mut self, reason: &Reason) {
        self.decision = "deny".into();
        self.set_reason(reason);
    }

    /// Sets `reason` and `category` from `reason`.
    pub fn set_reason(&mut self, reason: &Reason) {
        self.reason = reason.to_string();
        self.category = reason.category().as_str().into();
    }

    /// What happened to the call: `deny` (refused), `allow`, or, for a call let through whose
    /// record says enforce mode refuses it, `audit-would-deny`.
    pub fn verdict(&self, refused: bool) -> Verdict {
        Verdict::of(self.decision != "deny", refused)
    }

    /// The record as written: format 2, `decision` is what happened to the call (`verdict`),
    /// and an audit-mode call enforce mode would have refused says `would_deny`.
    pub fn settled(mut self, verdict: Verdict) -> AuditRecord {
        self.format = AUDIT_FORMAT;
        self.decision = if verdict == Verdict::Deny { "deny" } else { "allow" }.into();
        self.would_deny = verdict == Verdict::AuditWouldDeny;
        self
    }

    /// The category of the record: as recorded, or for a record written before categories
    /// were, by its wording.
    pub fn category(&self) -> String {
        if !self.category.is_empty() {
            return self.category.clone();
        }
        legacy_category(if self.would_refuse() { "deny" } else { &self.decision }, &self.reason).to_string()
    }

    /// Whether enforce mode refuses (or would refuse) this call, in either format: format 1 said
    /// `deny` for both, format 2 says `deny` or `would_deny`.
    pub fn would_refuse(&self) -> bool {
        self.decision == "deny" || self.would_deny
    }
}

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, tag = "sink", rename_all = "lowercase")]
pub enum AuditConfig {
    /// Standard output (journald under systemd).
    #[default]
    Stdout,
    /// A file rotated by size.
    File {
        path: PathBuf,
        /// Rotate when the file exceeds this many MiB.
        #[serde(default = "default_max_size_mb")]
        max_size_mb: u64,
        /// How many rotated files to keep.
        #[serde(default = "default_keep")]
        keep: u32,
    },
    /// No audit log.
    Off,
}

fn default_max_size_mb() -> u64 {
    50
}
fn default_keep() -> u32 {
    5
}

enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: Option<File>,
        size: u64,
        max: u64,
        keep: u32,
        /// A write failed (disk full): part of a line may be in the file, so the next record
        /// starts on a new line instead of completing the torn one.
        torn: bool,
    },
    Off,
}

/// The audit writer, shared by all calls.
pub struct AuditLog {
    /// Serialises writes so lines never interleave; held only for one write.
    sink: Mutex<Sink>,
}

impl AuditLog {
    pub fn new(config: &AuditConfig) -> std::io::Result<AuditLog> {
        let sink = match config {
            AuditConfig::Stdout => Sink::Stdout,
            AuditConfig::Off => Sink::Off,
            AuditConfig::File { path, max_size_mb, keep } => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let file = open_append(path)?;
                let size = file.metadata()?.len();
                Sink::File {
                    path: path.clone(),
                    file: Some(file),
                    size,
                    max: max_size_mb.saturating_mul(1 << 20),
                    keep: *keep,
                    torn: false,
                }
            }
        };
        Ok(AuditLog { sink: Mutex::new(sink) })
    }

    /// Appends one record. Errors are reported to the caller for logging, never propagated
    /// into the CRI call.
    pub fn write(&self, record: &AuditRecord) -> Result<(), String> {
        let mut line = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *sink {
            Sink::Off => Ok(()),
            Sink::Stdout => std::io::stdout().lock().write_all(&line).map_err(|e| format!("audit log (stdout): {e}")),
            Sink::File { path, file, size, max, keep, torn } => {
                if *size > 0 && *size + line.len() as u64 > *max {
                    rotate(path, *keep).map_err(|e| format!("audit log rotation of {}: {e}", path.display()))?;
                    *file = None;
                    *size = 0;
                }
                if file.is_none() {
                    *file = Some(open_append(path).map_err(|e| format!("audit log {}: {e}", path.display()))?);
                }
                if *torn {
                    line.insert(0, b'\n');
                }
                let f = file.as_mut().expect("opened above");
                if let Err(e) = f.write_all(&line) {
                    *torn = true;
                    return Err(format!("audit log {}: {e}", path.display()));
                }
                *torn = false;
                *size += line.len() as u64;
                Ok(())
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// `log.N-1` -> `log.N`, ..., `log` -> `log.1`; the oldest beyond `keep` is dropped.
fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(path, keep));
    for n in (1..keep).rev() {
        let from = numbered(path, n);
        if from.exists() {
            std::fs::rename(&from, numbered(path, n + 1))?;
        }
    }
    std::fs::rename(path, numbered(path, 1))
}

/// Reads an audit log file back (for `pullgate report` and tests); bad lines are skipped and
/// counted.
pub fn read_records(path: &Path) -> std::io::Result<(Vec<AuditRecord>, usize)> {
    let text = std::fs::read_to_string(path)?;
    let mut bad = 0;
    let records =
        text.lines().filter(|l| !l.trim().is_empty()).filter_map(|l| serde_json::from_str(l).map_err(|_| bad += 1).ok()).collect();
    Ok((records, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines_and_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::new(&AuditConfig::File { path: path.clone(), max_size_mb: 0, keep: 2 }).unwrap();
        for i in 0..4 {
            let r = AuditRecord { image: format!("img{i}"), decision: "deny".into(), ..Default::default() };
            log.write(&r).unwrap();
        }
        // max 0 MiB: every line after the first rotates. Newest in audit.log, then .1, .2.
        let (now, bad) = read_records(&path).unwrap();
        assert_eq!((now.len(), bad), (1, 0));
        assert_eq!(now[0].image, "img3");
        assert_eq!(read_records(&numbered(&path, 1)).unwrap().0[0].image, "img2");
        assert_eq!(read_records(&numbered(&path, 2)).unwrap().0[0].image, "img1");
        assert!(!numbered(&path, 3).exists());
    }

    #[test]
    fn bound_shortens_every_long_field() {
        let long = format!("reg/{}\n", "a".repeat(1 << 20));
        let r =
            AuditRecord { image: long.clone(), reason: long.clone(), pod: long.clone(), node: "n".into(), ..Default::default() }.bound();
        for f in [&r.image, &r.reason, &r.pod] {
            assert!(f.len() <= crate::bounded::FIELD_MAX && f.starts_with("reg/aaa") && f.contains("sha256:"), "{f}");
        }
        assert_eq!(r.node, "n");
        assert!(serde_json::to_string(&r).unwrap().len() < 4 * crate::bounded::FIELD_MAX);
    }

    #[test]
    fn format_2_says_what_happened_and_reads_format_1() {
        let audit = AuditRecord { decision: "deny".into(), mode: Some(Mode::Audit), ..Default::default() };
        let line = serde_json::to_string(&audit.clone().settled(Verdict::AuditWouldDeny)).unwrap();
        assert!(line.starts_with(r#"{"format":2,"#), "{line}");
        assert!(line.contains(r#""decision":"allow","would_deny":true"#), "{line}");
        let refused = serde_json::to_string(&audit.clone().settled(Verdict::Deny)).unwrap();
        assert!(refused.contains(r#""decision":"deny","would_deny":false"#), "{refused}");
        let allowed = AuditRecord { decision: "allow".into(), ..Default::default() }.settled(Verdict::Allow);
        assert!(!allowed.would_deny && !allowed.would_refuse());
        // Format 1: no `format`, no `would_deny`; an audit-mode `deny` was let through.
        let v1 = r#"{"time":"2024-05-01T10:00:00Z","node":"n","call":"PullImage","namespace":"","pod":"","image":"i","digest":"","policy":"p","mode":"audit","decision":"deny","reason":"r","identity":"","source":"","latency_ms":1.0,"cached":false}"#;
        let r: AuditRecord = serde_json::from_str(v1).unwrap();
        assert_eq!((r.format, r.would_deny, r.would_refuse()), (1, false, true));
        let r: AuditRecord = serde_json::from_str(&line).unwrap();
        assert_eq!((r.format, r.decision.as_str(), r.would_refuse()), (2, "allow", true));
        assert_eq!((audit.verdict(false), audit.verdict(true)), (Verdict::AuditWouldDeny, Verdict::Deny));
    }

    /// The audit log's JSON, pinned: a typed field must not change what is written.
    #[test]
    fn records_are_written_as_before() {
        let base = AuditRecord {
            time: "2026-12-07T06:00:00.123Z".into(),
            node: "n1".into(),
            call: "PullImage".into(),
            namespace: "team-a".into(),
            pod: "app-1".into(),
            image: "reg/app:1".into(),
            digest: "sha256:1".into(),
            policy: "demo".into(),
            identity: "https://ci".into(),
            source: "referrer".into(),
            latency_ms: 1.5,
            ..Default::default()
        };
        let mut audit = AuditRecord { mode: Some(Mode::Audit), ..base.clone() };
        audit.deny(&Reason::NoSignatures("no signatures found".into()));
        let mut enforce = AuditRecord { mode: Some(Mode::Enforce), cached: true, ..base.clone() };
        enforce.allow(&Reason::Verified("verified: 1 of 1".into()));
        let mut none = AuditRecord { call: "CreateContainer".into(), ..base };
        none.allow(&Reason::ImageAbsent("image not present in containerd".into()));
        let line = |r: &AuditRecord, v| serde_json::to_string(&r.clone().settled(v)).unwrap();
        let head = r#""time":"2026-12-07T06:00:00.123Z","node":"n1","#;
        let tail = r#""identity":"https://ci","source":"referrer","latency_ms":1.5,"#;
        assert_eq!(
            line(&audit, Verdict::AuditWouldDeny),
            format!(
                r#"{{"format":2,{head}"call":"PullImage","namespace":"team-a","pod":"app-1","image":"reg/app:1","digest":"sha256:1","policy":"demo","mode":"audit","decision":"allow","would_deny":true,"reason":"no signatures found","category":"no_signatures",{tail}"cached":false}}"#
            )
        );
        assert_eq!(
            line(&enforce, Verdict::Allow),
            format!(
                r#"{{"format":2,{head}"call":"PullImage","namespace":"team-a","pod":"app-1","image":"reg/app:1","digest":"sha256:1","policy":"demo","mode":"enforce","decision":"allow","would_deny":false,"reason":"verified: 1 of 1","category":"verified",{tail}"cached":true}}"#
            )
        );
        let written = line(&none, Verdict::Allow);
        assert!(written.contains(r#""policy":"demo","mode":"","decision":"allow""#), "{written}");
        for (r, v) in [(&audit, Verdict::AuditWouldDeny), (&enforce, Verdict::Allow), (&none, Verdict::Allow)] {
            let back: AuditRecord = serde_json::from_str(&line(r, v)).unwrap();
            assert_eq!(back.mode, r.mode);
        }
        assert!(serde_json::from_str::<AuditRecord>(&written.replace(r#""mode":"""#, r#""mode":"warn""#)).is_err());
    }

    #[test]
    fn config_forms() {
        let c: AuditConfig = serde_json::from_str(r#"{"sink":"file","path":"/var/log/pullgate/audit.log"}"#).unwrap();
        assert_eq!(c, AuditConfig::File { path: "/var/log/pullgate/audit.log".into(), max_size_mb: 50, keep: 5 });
        let c: AuditConfig = serde_json::from_str(r#"{"sink":"off"}"#).unwrap();
        assert_eq!(c, AuditConfig::Off);
        assert!(serde_json::from_str::<AuditConfig>(r#"{"sink":"file"}"#).is_err());
    }
}
