//! The generator behind `tests/fuzz_decoders.rs`: a seeded PRNG, structure-aware mutation of
//! real seed inputs (bytes, JSON, line-oriented text), and a case runner that catches panics
//! (on the test thread and in tasks it runs) and measures what each case allocates.
//!
//! Stable Rust has no coverage-guided fuzzer (cargo-fuzz and libFuzzer need nightly), so this is
//! mutation fuzzing without coverage feedback: every case starts from a real input (the repo's
//! own test material, `../shared/vectors`, `../shared/tuf`) and applies a few random edits that
//! keep it close enough to valid to get deep into the decoder. Deterministic: a seed and a case
//! number name one input, so a failure is replayed with the seed and case count it prints.
//!
//! Allocation is measured per thread by [`CountingAlloc`], which the fuzz test binary (and only
//! it) installs as its global allocator: the peak of live bytes allocated by the thread during a
//! case, and the largest single allocation. A decoder that trusts a length written in its input
//! (a gRPC frame header saying 4 GiB, a protobuf length, a JSON `size`) shows up as an
//! allocation far beyond the size of the input.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use serde_json::Value;

// --- configuration ------------------------------------------------------------------------------

/// Cases for a target of relative cost 1: `PULLGATE_FUZZ_CASES`, default 10000. Targets whose
/// cases are dearer (signature checks, HTTP round trips, files) divide it by their cost.
pub const DEFAULT_CASES: usize = 10_000;
/// Default seed: fixed, so CI runs the same inputs every time.
pub const DEFAULT_SEED: u64 = 0x70_75_6c_6c_67_61_74_65; // "pullgate"

pub fn base_cases() -> usize {
    std::env::var("PULLGATE_FUZZ_CASES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_CASES)
}

pub fn base_seed() -> u64 {
    std::env::var("PULLGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(DEFAULT_SEED)
}

/// The shared folder of real upstream material: `$PULLGATE_SHARED`, else the repository's
/// `../shared`; `None` (with a message) when `sub` is not in it.
pub fn shared(sub: &str) -> Option<PathBuf> {
    let base = match std::env::var_os("PULLGATE_SHARED") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    let dir = base.join(sub);
    if dir.exists() {
        Some(dir)
    } else {
        eprintln!("skipping seeds from {}: not found (set PULLGATE_SHARED to the shared folder)", dir.display());
        None
    }
}

// --- PRNG ---------------------------------------------------------------------------------------

/// SplitMix64: tiny, deterministic, good enough to pick mutations.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A size skewed towards small values: mostly under 16, sometimes up to `max`.
    pub fn size(&mut self, max: usize) -> usize {
        match self.below(8) {
            0..=4 => self.below(16.min(max + 1)),
            5 | 6 => self.below(256.min(max + 1)),
            _ => self.below(max + 1),
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A stable 64-bit hash of a target name, so each target draws its own stream from one seed.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3))
}

// --- mutators -----------------------------------------------------------------------------------

/// Upper bound on a mutated input: big enough for decoders' own size limits to matter, small
/// enough that thousands of cases stay fast.
pub const MAX_INPUT: usize = 256 << 10;

/// Values that break assumptions about lengths and counts, in the encodings inputs use.
const INTERESTING_U32: &[u32] = &[0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff];

/// Byte-level mutation: 1 to 6 edits (bit flips, interesting bytes and integers, insertions,
/// deletions, duplicated and repeated chunks, dictionary tokens, splices from other seeds).
pub fn mutate_bytes(rng: &mut Rng, input: &[u8], others: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(6) {
        let len = out.len();
        match rng.below(13) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'}', b'[', b']', b':', b',', b'\n', b'\\', b'%', b'-']);
            }
            2 => {
                let i = rng.below(len + 1);
                let n = rng.size(32);
                let ins = rng.bytes(n);
                out.splice(i..i, ins);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = rng.size(len - i).max(1);
                out.drain(i..i + n.min(len - i));
            }
            4 if len > 0 => {
                // Duplicate a chunk somewhere else.
                let i = rng.below(len);
                let n = rng.size(len - i).max(1).min(len - i);
                let chunk = out[i..i + n].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, chunk);
            }
            5 if len > 0 => {
                // Repeat a small chunk many times (long runs, deep nesting).
                let i = rng.below(len);
                let n = rng.size(8).max(1).min(len - i);
                let times = 2 + rng.size(4096);
                let chunk = out[i..i + n].repeat(times);
                out.splice(i..i, chunk);
            }
            6 if !dict.is_empty() => {
                let tok = rng.pick(dict).to_vec();
                let at = rng.below(len + 1);
                if rng.chance(1, 2) && at < len {
                    let end = (at + tok.len()).min(len);
                    out.splice(at..end, tok);
                } else {
                    out.splice(at..at, tok);
                }
            }
            7 if !others.is_empty() => {
                let other = rng.pick(others);
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = rng.size(other.len() - i).max(1).min(other.len() - i);
                    let at = rng.below(len + 1);
                    let cut = rng.size(len - at).min(len - at);
                    out.splice(at..at + cut, other[i..i + n].iter().copied());
                }
            }
            8 if len > 0 => out.truncate(rng.below(len)),
            9 if len >= 4 => {
                let v = *rng.pick(INTERESTING_U32);
                let i = rng.below(len - 3);
                let b = if rng.chance(1, 2) { v.to_be_bytes() } else { v.to_le_bytes() };
                out[i..i + 4].copy_from_slice(&b);
            }
            10 => {
                // A protobuf varint of a large value (a length or a field key).
                let v = *rng.pick(&[u64::MAX, 1 << 62, 1 << 32, u64::from(u32::MAX), 1 << 31, 16 << 20]);
                let at = rng.below(len + 1);
                out.splice(at..at, varint(v));
            }
            11 if len > 0 => {
                // A decimal number swapped for a huge or negative one.
                let i = rng.below(len);
                if let Some(j) = (i..len).find(|&j| out[j].is_ascii_digit()) {
                    let end = (j..len).find(|&k| !out[k].is_ascii_digit()).unwrap_or(len);
                    let n = *rng.pick(&[
                        "-1",
                        "0",
                        "18446744073709551615",
                        "18446744073709551616",
                        "9223372036854775808",
                        "4294967296",
                        "1e308",
                        "99999999999999999999999999",
                    ]);
                    out.splice(j..end, n.bytes());
                }
            }
            _ => {
                if len > 0 {
                    let i = rng.below(len);
                    out[i] = rng.next() as u8;
                }
            }
        }
        out.truncate(MAX_INPUT);
    }
    out
}

pub fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// Every node of a JSON value, as paths of object keys and array indexes.
fn nodes(v: &Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(path.clone());
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                path.push(Step::Key(k.clone()));
                nodes(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(Step::Index(i));
                nodes(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn node_mut<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    let mut cur = v;
    for s in path {
        cur = match (s, cur) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A value of a surprising kind or size.
fn odd_value(rng: &mut Rng, doc: &Value, all: &[Vec<Step>]) -> Value {
    match rng.below(14) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(1, 2)),
        2 => serde_json::json!(*rng.pick(&[0i64, -1, i64::MIN, i64::MAX, 1 << 32, 1 << 53])),
        3 => serde_json::json!(u64::MAX),
        4 => serde_json::json!(*rng.pick(&[1e308f64, -1e308, 0.5, -0.0])),
        5 => Value::String(String::new()),
        6 => Value::String("A".repeat(1 + rng.size(64 << 10))),
        7 => Value::String(
            rng.pick(&[
                "sha256:",
                "sha256:zz",
                "sha512:00",
                "../../etc/passwd",
                "\u{0}\u{7f}\u{feff}é\u{10ffff}",
                "%00%ff",
                "=",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "MIIB",
                "null",
                "2026-13-45T99:99:99Z",
                "1970-01-01T00:00:00Z",
                "9999-12-31T23:59:59Z",
            ])
            .to_string(),
        ),
        8 => Value::Object(Default::default()),
        9 => Value::Array(Vec::new()),
        10 => {
            // Deep nesting, past serde_json's recursion limit sometimes.
            let depth = 1 + rng.size(300);
            let mut v = Value::Null;
            for _ in 0..depth {
                v = if rng.chance(1, 2) { Value::Array(vec![v]) } else { serde_json::json!({ "a": v }) };
            }
            v
        }
        11 => {
            // Many elements.
            let n = 1 + rng.size(5000);
            Value::Array((0..n).map(|i| serde_json::json!(i)).collect())
        }
        _ => {
            // A copy of another node of the document (structure that fits elsewhere).
            let path = rng.pick(all).clone();
            let mut copy = doc.clone();
            node_mut(&mut copy, &path).map(|v| v.take()).unwrap_or(Value::Null)
        }
    }
}

/// Structure-aware JSON mutation: 1 to 4 edits of nodes (replaced by values of other kinds or
/// sizes or by other nodes, deleted, duplicated, keys renamed, arrays multiplied).
pub fn mutate_json(rng: &mut Rng, doc: &Value) -> Value {
    let mut v = doc.clone();
    for _ in 0..1 + rng.below(4) {
        let mut all = Vec::new();
        nodes(&v, &mut Vec::new(), &mut all);
        let path = rng.pick(&all).clone();
        let replacement = odd_value(rng, &v, &all);
        let op = rng.below(6);
        if path.is_empty() {
            if op == 0 {
                v = replacement;
            }
            continue;
        }
        let (last, parent_path) = path.split_last().unwrap();
        let Some(parent) = node_mut(&mut v, parent_path) else { continue };
        // Not collapsed into guards: an out-of-range removal (op 3) must do nothing, not fall
        // through to the arm that duplicates items.
        #[allow(clippy::collapsible_match)]
        match (op, parent, last) {
            (0..=2, p, _) => {
                if let Some(n) = node_mut(p, std::slice::from_ref(last)) {
                    *n = replacement;
                }
            }
            (3, Value::Object(m), Step::Key(k)) => {
                m.remove(k);
            }
            (3, Value::Array(a), Step::Index(i)) => {
                if *i < a.len() {
                    a.remove(*i);
                }
            }
            (4, Value::Object(m), Step::Key(k)) => {
                if let Some(val) = m.remove(k) {
                    let mut name = k.clone();
                    match rng.below(3) {
                        0 => name = name.to_uppercase(),
                        1 => name.push('_'),
                        _ => name = String::new(),
                    }
                    m.insert(name, val);
                }
            }
            (_, Value::Array(a), Step::Index(i)) => {
                if let Some(item) = a.get(*i).cloned() {
                    let times = 1 + rng.size(200);
                    for _ in 0..times {
                        a.insert(*i, item.clone());
                    }
                }
            }
            (_, Value::Object(m), Step::Key(_)) => {
                m.insert(format!("unknown{}", rng.below(100)), replacement);
            }
            _ => {}
        }
    }
    v
}

/// A mutated JSON document as bytes: mostly structural edits, sometimes byte edits on top.
pub fn mutate_json_bytes(rng: &mut Rng, doc: &Value, raw: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(8) {
        0 | 1 => mutate_bytes(rng, raw, others, JSON_DICT),
        2 => {
            let text = serde_json::to_vec(&mutate_json(rng, doc)).unwrap_or_default();
            mutate_bytes(rng, &text, others, JSON_DICT)
        }
        _ => {
            let mut text = serde_json::to_vec(&mutate_json(rng, doc)).unwrap_or_default();
            text.truncate(MAX_INPUT);
            text
        }
    }
}

pub const JSON_DICT: &[&[u8]] = &[
    b"null",
    b"true",
    b"{}",
    b"[]",
    b"\"\"",
    b"\\u0000",
    b"\\ud800",
    b"1e99999",
    b"-0",
    b",",
    b":",
    b"\"mediaType\"",
    b"\"digest\"",
    b"\"size\"",
    b"\"sha256:\"",
];

/// Line-oriented text mutation for YAML and TOML: lines deleted, duplicated, swapped,
/// re-indented, values replaced by dictionary tokens, lines from other seeds spliced in; then
/// sometimes byte edits.
pub fn mutate_lines(rng: &mut Rng, text: &str, others: &[Vec<u8>], dict: &[&str]) -> Vec<u8> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(4) {
        let n = lines.len();
        match rng.below(8) {
            0 if n > 0 => {
                lines.remove(rng.below(n));
            }
            1 if n > 0 => {
                let i = rng.below(n);
                let l = lines[i].clone();
                let times = 1 + rng.size(100);
                for _ in 0..times {
                    lines.insert(i, l.clone());
                }
            }
            2 if n > 1 => {
                let (a, b) = (rng.below(n), rng.below(n));
                lines.swap(a, b);
            }
            3 if n > 0 => {
                let i = rng.below(n);
                let l = lines[i].trim_start().to_string();
                lines[i] = format!("{}{l}", " ".repeat(rng.size(12)));
            }
            4 | 5 if n > 0 && !dict.is_empty() => {
                // Replace what follows the first `:` or `=` (a value) or append a token.
                let i = rng.below(n);
                let tok = *rng.pick(dict);
                let l = &lines[i];
                lines[i] = match l.find([':', '=']) {
                    Some(j) => format!("{} {tok}", &l[..=j]),
                    None => format!("{l}{tok}"),
                };
            }
            6 if !dict.is_empty() => {
                let at = rng.below(n + 1);
                lines.insert(at, rng.pick(dict).to_string());
            }
            _ if !others.is_empty() => {
                let other = String::from_utf8_lossy(&others[rng.below(others.len())]).into_owned();
                let ol: Vec<&str> = other.lines().collect();
                if !ol.is_empty() {
                    let at = rng.below(n + 1);
                    lines.insert(at, ol[rng.below(ol.len())].to_string());
                }
            }
            _ => {}
        }
    }
    let mut out = lines.join("\n").into_bytes();
    if rng.chance(1, 4) {
        out = mutate_bytes(rng, &out, others, &[]);
    }
    out.truncate(MAX_INPUT);
    out
}

/// A generator: one of `seeds`, line-mutated (YAML, TOML).
pub fn lines_of<'a>(seeds: &'a [Vec<u8>], dict: &'a [&'a str]) -> impl FnMut(&mut Rng) -> Vec<u8> + 'a {
    move |rng| {
        let seed = &seeds[rng.below(seeds.len())];
        mutate_lines(rng, &String::from_utf8_lossy(seed), seeds, dict)
    }
}

/// A generator: one of `seeds`, byte-mutated with `dict` tokens.
pub fn bytes_of<'a>(seeds: &'a [Vec<u8>], dict: &'a [&'a [u8]]) -> impl FnMut(&mut Rng) -> Vec<u8> + 'a {
    move |rng| {
        let seed = &seeds[rng.below(seeds.len())];
        mutate_bytes(rng, seed, seeds, dict)
    }
}

// --- allocation accounting ---------------------------------------------------------------------

thread_local! {
    /// Bytes allocated minus bytes freed by this thread (can go below the start when a thread
    /// frees what another allocated; only differences within one case are used).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, counting per thread. Installed by the fuzz test binary only:
/// `#[global_allocator] static A: fuzz::CountingAlloc = fuzz::CountingAlloc;`.
pub struct CountingAlloc;

fn account(grow: isize, size: usize) {
    // `try_with`: no accounting during thread teardown. The cells are const-initialised and need
    // no destructor, so touching them never allocates.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + grow;
        live.set(now);
        let _ = PEAK.try_with(|p| {
            if now > p.get() {
                p.set(now);
            }
        });
    });
    if grow > 0 {
        let _ = LARGEST.try_with(|l| {
            if size > l.get() {
                l.set(size);
            }
        });
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// bookkeeping touches only thread-local `Cell`s and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize, layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize, layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize), 0);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(new_size as isize - layout.size() as isize, new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What one case allocated on this thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocated {
    /// Peak of live bytes above where the case started.
    pub peak: usize,
    /// The largest single allocation (or reallocation target).
    pub largest: usize,
}

fn measure<R>(f: impl FnOnce() -> R) -> (R, Allocated) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    LARGEST.with(|l| l.set(0));
    let r = f();
    let peak = PEAK.with(Cell::get) - start;
    (r, Allocated { peak: peak.max(0) as usize, largest: LARGEST.with(Cell::get) })
}

/// How much a case may allocate: `per_byte` times the input plus `fixed`. Generous on purpose:
/// what it catches is an allocation sized by a length the input claims (megabytes to
/// gigabytes from a few bytes), not a decoder's ordinary overhead.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub per_byte: usize,
    pub fixed: usize,
}

impl Budget {
    pub const fn new(per_byte: usize, fixed: usize) -> Budget {
        Budget { per_byte, fixed }
    }

    pub fn limit(&self, input_len: usize) -> usize {
        input_len.saturating_mul(self.per_byte).saturating_add(self.fixed)
    }
}

fn install_panic_counter() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANICS.try_with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

/// Keeps a failing input for replay: `target/fuzz-failures/<target>-<seed>-<case>.bin`.
fn keep_failure(target: &str, seed: u64, case: usize, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{seed:#x}-{case}.bin"));
    let _ = std::fs::write(&path, input);
    path
}

fn preview(input: &[u8]) -> String {
    let head = &input[..input.len().min(160)];
    format!("{:?}{}", String::from_utf8_lossy(head), if input.len() > head.len() { " ..." } else { "" })
}

/// Summary of a run.
#[derive(Debug, Default)]
pub struct Summary {
    pub cases: usize,
    /// The largest peak and single allocation of any case.
    pub max_peak: usize,
    pub max_largest: usize,
    /// How far cases got, by the label `check` returned (how deep the mutations reach).
    pub outcomes: std::collections::BTreeMap<&'static str, usize>,
}

/// Runs `cases` generated inputs through `check`, each under `budget`. A panic anywhere on this
/// thread during a case (including tasks of a current-thread runtime that `check` drives) or an
/// allocation over budget fails the test, naming the seed and case and keeping the input.
/// `check` returns how far the input got (a label, counted in the summary), or `Err` for a
/// property violation (an answer that is wrong, not just a refusal).
pub fn run(
    target: &str,
    cost: usize,
    budget: Budget,
    mut generate: impl FnMut(&mut Rng) -> Vec<u8>,
    mut check: impl FnMut(&[u8]) -> Result<&'static str, String>,
) -> Summary {
    install_panic_counter();
    let seed = base_seed();
    let cases = (base_cases() / cost.max(1)).max(1);
    let mut rng = Rng::new(seed ^ name_hash(target));
    let mut summary = Summary { cases, ..Summary::default() };
    for case in 0..cases {
        let input = generate(&mut rng);
        let panics_before = PANICS.with(Cell::get);
        let (outcome, allocated) = measure(|| std::panic::catch_unwind(AssertUnwindSafe(|| check(&input))));
        let panicked = PANICS.with(Cell::get) != panics_before;
        let failure = match outcome {
            Err(_) => Some("panicked".to_string()),
            Ok(_) if panicked => Some("a task it ran panicked".to_string()),
            Ok(Err(e)) => Some(e),
            Ok(Ok(label)) => {
                *summary.outcomes.entry(label).or_default() += 1;
                let limit = budget.limit(input.len());
                if allocated.peak > limit || allocated.largest > limit {
                    Some(format!(
                        "allocated {} bytes at peak (largest single allocation {}) for a {}-byte input: over the budget of {limit}",
                        allocated.peak,
                        allocated.largest,
                        input.len()
                    ))
                } else {
                    None
                }
            }
        };
        summary.max_peak = summary.max_peak.max(allocated.peak);
        summary.max_largest = summary.max_largest.max(allocated.largest);
        if let Some(why) = failure {
            let kept = keep_failure(target, seed, case, &input);
            panic!(
                "{target}: case {case} {why}\n  input ({} bytes, kept in {}): {}\n  replay: PULLGATE_FUZZ_SEED={seed:#x} PULLGATE_FUZZ_CASES={} cargo test --release --locked --test fuzz_decoders {target}",
                input.len(),
                kept.display(),
                preview(&input),
                (case + 1) * cost.max(1),
            );
        }
    }
    let outcomes: Vec<String> = summary.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    eprintln!(
        "{target}: {cases} cases (seed {seed:#x}): {}; peak allocation {} bytes, largest single {}",
        outcomes.join(", "),
        summary.max_peak,
        summary.max_largest
    );
    summary
}
