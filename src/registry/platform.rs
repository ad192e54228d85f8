//! containerd's platform rules (`github.com/containerd/platforms`, as containerd 2.x vendors it),
//! reimplemented so that pullgate picks from a multi-arch index exactly the manifest containerd
//! picks:
//!
//! - [`normalize`]: os lower-cased (empty: `linux`, `macos`: `darwin`); architecture and variant
//!   lower-cased and mapped (`x86_64`/`x86-64` -> `amd64`, `amd64/v1` -> `amd64`, `aarch64` ->
//!   `arm64`, `arm64/v8` (and `8`, `v8.0`) -> `arm64`, `arm64/9` -> `arm64/v9`, `armhf` ->
//!   `arm/v7`, `armel` -> `arm/v6`, `arm` -> `arm/v7`, `i386` -> `386`).
//! - [`Matcher::only`] (containerd's default matcher, `platforms.Only(DefaultSpec())`): an ordered
//!   list of platforms the node runs, best first (`amd64/vN` then `vN-1`..`v1`, then `386`;
//!   `arm/vN` then older arm versions; `arm64/v9.x` then lower `arm64` versions then `arm/v8`..`v5`).
//!   An entry matches a platform of the list when os, architecture and variant are equal after
//!   normalisation: a variant the node does not have (`amd64/v9` on a plain amd64 node) never
//!   matches, and no variant matches only no variant.
//! - [`select`]: containerd's choice from an index (`images.FilterPlatforms`, `LimitManifests`,
//!   `images.Manifest`): the entries that match (or have no platform at all), stably sorted by
//!   their rank in the list, entries without platform last; the first one wins. Among equally
//!   good entries the first in index order wins.
//!
//! containerd 1.6 vendors an older copy whose one difference that matters here is that
//! `x86_64/<variant>` normalises to plain `amd64`; pullgate does not depend on the two agreeing
//! for security (see the README's platform rule): an allowed pull is pinned to the manifest that
//! was verified, and CreateContainer checks the image ID.

use super::config::Platform;

/// An OS, architecture and variant after containerd's normalisation (variant empty: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

impl std::fmt::Display for Normalized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// containerd's `normalizeOS`.
fn normalize_os(os: &str) -> String {
    if os.is_empty() {
        // containerd uses runtime.GOOS; pullgate only runs where containerd runs Linux images.
        return "linux".into();
    }
    let os = os.to_lowercase();
    if os == "macos" {
        "darwin".into()
    } else {
        os
    }
}

/// containerd's `normalizeArch`.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let (arch, variant) = (arch.to_lowercase(), variant.to_lowercase());
    match arch.as_str() {
        "i386" => ("386".into(), String::new()),
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), if variant == "v1" { String::new() } else { variant }),
        "aarch64" | "arm64" => {
            let variant = match variant.as_str() {
                "8" | "v8" | "v8.0" => String::new(),
                "9" | "9.0" | "v9.0" => "v9".into(),
                _ => variant,
            };
            ("arm64".into(), variant)
        }
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => {
            let variant = match variant.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".into(), variant)
        }
        _ => (arch, variant),
    }
}

/// containerd's `Normalize`.
pub fn normalize(os: &str, architecture: &str, variant: &str) -> Normalized {
    let (architecture, variant) = normalize_arch(architecture, variant);
    Normalized { os: normalize_os(os), architecture, variant }
}

/// `vN` -> N.
fn version(variant: &str) -> Option<u32> {
    variant.strip_prefix('v').unwrap_or(variant).parse().ok()
}

/// arm64 variants a node of each variant runs, as (major versions, highest minor per major)
/// (containerd's `arm64variantToVersion`).
fn arm64_versions(variant: &str) -> Option<(&'static [u32], &'static [u32])> {
    const V8: &[u32] = &[8];
    const V98: &[u32] = &[9, 8];
    Some(match variant {
        "v8" | "v8.0" => (V8, &[0]),
        "v8.1" => (V8, &[1]),
        "v8.2" => (V8, &[2]),
        "v8.3" => (V8, &[3]),
        "v8.4" => (V8, &[4]),
        "v8.5" => (V8, &[5]),
        "v8.6" => (V8, &[6]),
        "v8.7" => (V8, &[7]),
        "v8.8" => (V8, &[8]),
        "v8.9" => (V8, &[9]),
        "v9" | "v9.0" => (V98, &[0, 5]),
        "v9.1" => (V98, &[1, 6]),
        "v9.2" => (V98, &[2, 7]),
        "v9.3" => (V98, &[3, 8]),
        "v9.4" => (V98, &[4, 9]),
        "v9.5" => (V98, &[5, 9]),
        "v9.6" => (V98, &[6, 9]),
        "v9.7" => (V98, &[7, 9]),
        _ => return None,
    })
}

/// containerd's `platformVector`: the platforms a node of platform `p` (normalised) runs, best
/// first.
fn vector(p: &Normalized) -> Vec<Normalized> {
    let with = |architecture: &str, variant: String| Normalized { os: p.os.clone(), architecture: architecture.into(), variant };
    let mut out = vec![p.clone()];
    match p.architecture.as_str() {
        "amd64" => {
            if let Some(v) = version(&p.variant).filter(|v| *v > 1) {
                for v in (1..v).rev() {
                    out.push(with("amd64", format!("v{v}")));
                }
            }
            out.push(with("386", String::new()));
        }
        "arm" => {
            if let Some(v) = version(&p.variant).filter(|v| *v > 5) {
                for v in (5..v).rev() {
                    out.push(with("arm", format!("v{v}")));
                }
            }
        }
        "arm64" => {
            let mut variant = if p.variant.is_empty() { "v8".to_string() } else { p.variant.clone() };
            out.clear();
            if let Some((majors, minors)) = arm64_versions(&variant) {
                for (major, top) in majors.iter().zip(minors) {
                    for minor in (0..=*top).rev() {
                        let v = if minor == 0 { format!("v{major}") } else { format!("v{major}.{minor}") };
                        out.push(with("arm64", v));
                    }
                }
            }
            if variant.starts_with("v8") || variant.starts_with("v9") {
                variant = "v8".into();
            }
            out.extend(vector(&with("arm", variant)));
        }
        _ => {}
    }
    out
}

/// containerd's default platform matcher for one node platform (`platforms.Only`).
#[derive(Debug, Clone)]
pub struct Matcher {
    /// The platforms accepted, best first, each normalised (containerd's `NewMatcher`
    /// normalises each of them again).
    accepted: Vec<Normalized>,
}

impl Matcher {
    pub fn only(platform: &Platform) -> Matcher {
        let p = normalize(&platform.os, &platform.architecture, platform.variant.as_deref().unwrap_or(""));
        let accepted = vector(&p).iter().map(|v| normalize(&v.os, &v.architecture, &v.variant)).collect();
        Matcher { accepted }
    }

    /// Position of the best accepted platform that `os/architecture/variant` is, if any.
    pub fn rank(&self, os: &str, architecture: &str, variant: &str) -> Option<usize> {
        let n = normalize(os, architecture, variant);
        self.accepted.iter().position(|a| *a == n)
    }

    pub fn matches(&self, os: &str, architecture: &str, variant: &str) -> bool {
        self.rank(os, architecture, variant).is_some()
    }
}

/// An index entry's platform as written in the index (`None`: the entry has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPlatform {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

/// The position of the entry containerd pulls and runs from an index with these entry
/// platforms, or `None` when none fits the node (containerd fails the pull then).
pub fn select(matcher: &Matcher, entries: &[Option<EntryPlatform>]) -> Option<usize> {
    // (rank, position): no platform ranks after every platform; the sort is stable.
    let mut candidates: Vec<(usize, usize)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            None => Some((usize::MAX, i)),
            Some(p) => matcher.rank(&p.os, &p.architecture, &p.variant).map(|r| (r, i)),
        })
        .collect();
    candidates.sort_by_key(|(rank, _)| *rank);
    candidates.first().map(|(_, i)| *i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    fn e(os: &str, arch: &str, variant: &str) -> Option<EntryPlatform> {
        Some(EntryPlatform { os: os.into(), architecture: arch.into(), variant: variant.into() })
    }

    /// containerd/platforms `TestNormalize`-style cases (input -> normalised).
    #[test]
    fn normalisation_follows_containerd() {
        let cases = [
            (("linux", "x86_64", ""), "linux/amd64"),
            (("linux", "x86-64", ""), "linux/amd64"),
            (("Linux", "AMD64", ""), "linux/amd64"),
            (("linux", "amd64", "v1"), "linux/amd64"),
            (("linux", "amd64", "V3"), "linux/amd64/v3"),
            (("linux", "x86_64", "v2"), "linux/amd64/v2"),
            (("linux", "i386", "x"), "linux/386"),
            (("linux", "aarch64", ""), "linux/arm64"),
            (("linux", "arm64", "v8"), "linux/arm64"),
            (("linux", "arm64", "8"), "linux/arm64"),
            (("linux", "arm64", "v8.0"), "linux/arm64"),
            (("linux", "arm64", "9"), "linux/arm64/v9"),
            (("linux", "arm64", "v8.2"), "linux/arm64/v8.2"),
            (("linux", "armhf", ""), "linux/arm/v7"),
            (("linux", "armel", ""), "linux/arm/v6"),
            (("linux", "arm", ""), "linux/arm/v7"),
            (("linux", "arm", "7"), "linux/arm/v7"),
            (("linux", "arm", "6"), "linux/arm/v6"),
            (("linux", "arm", "v5"), "linux/arm/v5"),
            (("", "amd64", ""), "linux/amd64"),
            (("macOS", "arm64", ""), "darwin/arm64"),
            (("windows", "amd64", ""), "windows/amd64"),
        ];
        for ((os, arch, v), want) in cases {
            assert_eq!(normalize(os, arch, v).to_string(), want, "{os}/{arch}/{v}");
        }
    }

    /// containerd/platforms `TestOnly` cases: what a node of each platform accepts.
    #[test]
    fn only_accepts_what_containerd_accepts() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "linux/amd64",
                &["linux/amd64", "linux/x86_64", "linux/amd64/v1", "linux/386", "linux/i386"],
                &["linux/amd64/v2", "linux/amd64/v9", "linux/arm64", "windows/amd64", "linux/arm/v7"],
            ),
            ("linux/amd64/v3", &["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"], &["linux/amd64/v4"]),
            (
                "linux/arm64",
                &[
                    "linux/arm64",
                    "linux/arm64/v8",
                    "linux/aarch64",
                    "linux/arm/v8",
                    "linux/arm/v7",
                    "linux/arm/v6",
                    "linux/arm/v5",
                    "linux/arm",
                ],
                &["linux/arm64/v8.1", "linux/arm64/v9", "linux/amd64"],
            ),
            (
                "linux/arm64/v8.2",
                &["linux/arm64/v8.2", "linux/arm64/v8.1", "linux/arm64", "linux/arm/v7"],
                &["linux/arm64/v8.3", "linux/arm64/v9"],
            ),
            (
                "linux/arm64/v9",
                &["linux/arm64/v9", "linux/arm64/v8.5", "linux/arm64", "linux/arm/v8"],
                &["linux/arm64/v9.1", "linux/arm64/v8.6"],
            ),
            (
                "linux/arm/v7",
                &["linux/arm", "linux/arm/v7", "linux/armhf", "linux/arm/v6", "linux/armel", "linux/arm/v5"],
                &["linux/arm/v8", "linux/arm64"],
            ),
            ("linux/arm/v6", &["linux/arm/v6", "linux/arm/v5", "linux/armel"], &["linux/arm/v7", "linux/armhf", "linux/arm"]),
        ];
        for (node, yes, no) in cases {
            let m = Matcher::only(&p(node));
            for s in *yes {
                let q = p(s);
                assert!(m.matches(&q.os, &q.architecture, q.variant.as_deref().unwrap_or("")), "{node} should run {s}");
            }
            for s in *no {
                let q = p(s);
                assert!(!m.matches(&q.os, &q.architecture, q.variant.as_deref().unwrap_or("")), "{node} should not run {s}");
            }
        }
        // Case is normalised on the entry side too.
        assert!(Matcher::only(&p("linux/amd64")).matches("Linux", "AMD64", ""));
    }

    #[test]
    fn selection_is_containerds() {
        let amd64 = Matcher::only(&p("linux/amd64"));
        // The attack shapes of issue 10: containerd picks the entry pullgate must pick.
        assert_eq!(select(&amd64, &[e("linux", "amd64", "v9"), e("linux", "amd64", "")]), Some(1));
        assert_eq!(select(&amd64, &[e("linux", "x86_64", ""), e("linux", "amd64", "")]), Some(0));
        assert_eq!(select(&amd64, &[e("Linux", "AMD64", ""), e("linux", "amd64", "")]), Some(0));
        // Better-ranked wins over index order; 386 only when no amd64.
        assert_eq!(select(&amd64, &[e("linux", "386", ""), e("linux", "amd64", "")]), Some(1));
        assert_eq!(select(&amd64, &[e("linux", "arm64", ""), e("linux", "386", "")]), Some(1));
        // No platform: kept, but after every matching entry.
        assert_eq!(select(&amd64, &[None, e("linux", "amd64", "")]), Some(1));
        assert_eq!(select(&amd64, &[e("linux", "arm64", ""), None]), Some(1));
        assert_eq!(select(&amd64, &[e("linux", "arm64", ""), e("windows", "amd64", "")]), None);
        let v3 = Matcher::only(&p("linux/amd64/v3"));
        assert_eq!(select(&v3, &[e("linux", "amd64", ""), e("linux", "amd64", "v2"), e("linux", "amd64", "v3")]), Some(2));
        assert_eq!(select(&v3, &[e("linux", "amd64", ""), e("linux", "amd64", "v2")]), Some(1));
        let arm64 = Matcher::only(&p("linux/arm64"));
        assert_eq!(select(&arm64, &[e("linux", "arm", "v7"), e("linux", "arm64", "v8")]), Some(1));
        assert_eq!(select(&arm64, &[e("linux", "arm", "v6"), e("linux", "arm", "v7")]), Some(1));
    }
}
