use super::*;
use crate::verify::signers::Test;

const KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6Ie0Fvwx1B3bMWPAMjMt5LIpn/pd\nG3EeWqgqk4XyV3U/cQGJwdZdWSmV0Nf1E0hu8fVUnM6u8oqvXs5yBn0CUQ==\n-----END PUBLIC KEY-----\n";

fn parse(yaml: &str) -> Result<PolicySet, String> {
    let cfg: PolicyConfig = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
    cfg.compile(1).map_err(|e| e.to_string())
}

fn names(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

const BASE: &str = r#"
exemptions:
  - name: sandbox
    images: ["registry.internal/pause:*"]
policies:
  - name: team-a
    images: ["registry.internal/team-a/**"]
    namespaces: ["team-a", "team-a-*"]
    authorities:
      - name: ci
        keyless:
          identities:
            - issuer: https://token.actions.githubusercontent.com
              subject_regexp: https://github.com/org/app/.*
              extensions:
                github-workflow-repository: org/app
  - name: all-internal
    images: ["registry.internal/**"]
    mode: audit
    authorities:
      - name: key
        key:
          data: |
            -----BEGIN PUBLIC KEY-----
            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6Ie0Fvwx1B3bMWPAMjMt5LIpn/pd
            G3EeWqgqk4XyV3U/cQGJwdZdWSmV0Nf1E0hu8fVUnM6u8oqvXs5yBn0CUQ==
            -----END PUBLIC KEY-----
"#;

#[test]
fn matching_by_glob_and_namespace() {
    let set = parse(BASE).unwrap();
    let applicable = |n: &[&str], ns| match set.applicable(&names(n), ns) {
        Applicable::Exempt(e) => format!("exempt:{e}"),
        Applicable::Policies(p) => p.iter().map(|p| p.name.clone()).collect::<Vec<_>>().join(","),
        Applicable::Unmatched(u) => format!("unmatched:{u:?}"),
    };
    assert_eq!(applicable(&["registry.internal/team-a/app", "registry.internal/team-a/app:1"], Some("team-a")), "team-a,all-internal");
    assert_eq!(applicable(&["registry.internal/team-a/deep/app"], Some("team-a-dev")), "team-a,all-internal");
    assert_eq!(applicable(&["registry.internal/team-a/app"], Some("other")), "all-internal");
    assert_eq!(applicable(&["registry.internal/team-a/app"], None), "all-internal");
    assert_eq!(applicable(&["registry.internal/pause", "registry.internal/pause:3.9"], None), "exempt:sandbox");
    assert_eq!(applicable(&["docker.io/library/nginx", "docker.io/library/nginx:1"], None), "unmatched:Deny");
    // `*` does not cross `/`.
    let set2 = parse("policies:\n  - name: p\n    images: [\"reg/*\"]\n    authorities:\n      - name: k\n        key:\n          data: |\n            -----BEGIN PUBLIC KEY-----\n            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6Ie0Fvwx1B3bMWPAMjMt5LIpn/pd\n            G3EeWqgqk4XyV3U/cQGJwdZdWSmV0Nf1E0hu8fVUnM6u8oqvXs5yBn0CUQ==\n            -----END PUBLIC KEY-----\n").unwrap();
    assert!(matches!(set2.applicable(&names(&["reg/a/b"]), None), Applicable::Unmatched(_)));
    assert!(matches!(set2.applicable(&names(&["reg/a"]), None), Applicable::Policies(_)));
}

#[test]
fn attestations_compile() {
    let yaml = r#"
policies:
  - name: p
    images: ["a/**"]
    authorities:
      - name: ci
        keyless:
          identities:
            - issuer: https://token.actions.githubusercontent.com
              subject_regexp: https://github.com/org/app/.*
        attestations:
          - predicateType: https://slsa.dev/provenance/v1
            conditions:
              - path: buildDefinition.externalParameters.workflow.ref
                equals: refs/heads/main
              - path: runDetails.builder.id
                matches: https://github\.com/org/builder/.*
          - predicate_type: https://cosign.sigstore.dev/attestation/vuln/v1
            signer:
              keyless:
                identities:
                  - issuer: https://token.actions.githubusercontent.com
                    subject: https://github.com/org/scanner/.github/workflows/scan.yml@refs/heads/main
            conditions:
              - path: metadata.scanFinishedOn
                notOlderThan: 7d
              - path: scanner.result.summary.critical
                oneOf: ["0"]
"#;
    let set = parse(yaml).unwrap();
    let p = &set.policies()[0];
    assert!(p.identity.has_attestations());
    let a = &p.identity.authorities()[0];
    assert_eq!(a.attestations.len(), 2);
    assert_eq!(a.attestations[0].predicate_type, "https://slsa.dev/provenance/v1");
    assert!(a.attestations[0].signers.is_none() && a.attestations[1].signers.is_some());
    assert!(matches!(a.attestations[1].conditions[0].test, Test::NotOlderThan(d, _) if d.as_secs() == 7 * 86400));
    assert!(!parse(BASE).unwrap().policies()[0].identity.has_attestations());
    // `equals` and `oneOf` take numbers and booleans as well as strings, compared by their
    // JSON text.
    let typed = yaml.replace(r#"oneOf: ["0"]"#, r#"oneOf: [0, false, "x", 1.5]"#).replace("equals: refs/heads/main", "equals: 3");
    let set = parse(&typed).unwrap();
    let a = &set.policies()[0].identity.authorities()[0];
    assert!(matches!(&a.attestations[0].conditions[0].test, Test::Equals(v) if v == "3"));
    let want: Vec<String> = ["0", "false", "x", "1.5"].map(String::from).to_vec();
    assert!(matches!(&a.attestations[1].conditions[1].test, Test::OneOf(v) if *v == want), "{:?}", a.attestations[1].conditions[1].test);
    let p =
        serde_json::json!({"metadata": {"scanFinishedOn": "2026-12-06T00:00:00Z"}, "scanner": {"result": {"summary": {"critical": 0}}}});
    assert!(a.attestations[1].conditions[1].check(&p, jiff::Timestamp::now()).is_ok());
}

#[test]
fn readme_attestation_example_compiles() {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("### Attestations").expect("README section")..];
    let start = section.find("```yaml\n").unwrap() + 8;
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let body: String = block.lines().map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l))).collect();
    let yaml = format!("policies:\n  - name: p\n    images: [\"a/**\"]\n{body}");
    let set = parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(set.policies()[0].identity.authorities()[0].attestations.len(), 2);
}

#[test]
fn tag_exemptions_do_not_admit_digests() {
    let set = parse(BASE).unwrap();
    let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    assert!(matches!(set.applicable(&names(&["registry.internal/pause", "registry.internal/pause:3.9"]), None), Applicable::Exempt(_)));
    // `pause:1@sha256:...` is matched as `pause@sha256:...`: not exempt by `pause:*`.
    assert!(matches!(
        set.applicable(&names(&["registry.internal/pause", &format!("registry.internal/pause@{d}")]), None),
        Applicable::Policies(_)
    ));
    let by_digest = parse(&BASE.replace("registry.internal/pause:*", &format!("registry.internal/pause@{d}"))).unwrap();
    assert!(matches!(
        by_digest.applicable(&names(&["registry.internal/pause", &format!("registry.internal/pause@{d}")]), None),
        Applicable::Exempt(_)
    ));
    let cfg: PolicyConfig = serde_saphyr::from_str(BASE).unwrap();
    let w = cfg.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("names a tag, not a digest") && w[0].contains("exemptions[0].images[0]"), "{w:?}");
}

#[test]
fn invalid_policies_name_the_key() {
    let cases = [
            ("policies:\n  - name: p\n    images: []\n    authorities: []\n", "policy.policies[0].images"),
            ("policies:\n  - name: p\n    images: [\"a/**\"]\n    authorities: []\n", "policy.policies[0].authorities"),
            ("policies:\n  - name: p\n    images: [\"a/[\"]\n    authorities: []\n", "policy.policies[0].images[0]"),
            (
                "policies:\n  - name: p\n    images: [\"a\"]\n    authorities:\n      - name: x\n        keyless:\n          identities:\n            - subject: s\n",
                "policy.policies[0].authorities[0].keyless.identities[0]",
            ),
            (
                "policies:\n  - name: p\n    images: [\"a\"]\n    authorities:\n      - name: x\n        keyless:\n          identities:\n            - subject_regexp: \"(\"\n              issuer: i\n",
                "policy.policies[0].authorities[0].keyless.identities[0].subject_regexp",
            ),
            (
                "policies:\n  - name: p\n    images: [\"a\"]\n    authorities:\n      - name: x\n        keyless:\n          identities:\n            - subject: s\n              issuer: i\n              extensions:\n                favourite-colour: blue\n",
                "policy.policies[0].authorities[0].keyless.identities[0].extensions.favourite-colour",
            ),
            ("policies:\n  - name: p\n    images: [\"a\"]\n    threshold: 2\n    authorities:\n      - name: x\n        key:\n          data: nonsense\n", "policy.policies[0].authorities[0].key"),
            ("policies:\n  - name: p\n    images: [\"a\"]\n    authorities:\n      - name: x\n", "policy.policies[0].authorities[0]"),
        ];
    for (yaml, key) in cases {
        let e = parse(yaml).unwrap_err();
        assert!(e.contains(&format!("key `{key}`")), "{yaml}\n=> {e}");
    }
    let att = |conditions: &str| {
        format!(
                "policies:\n  - name: p\n    images: [\"a\"]\n    authorities:\n      - name: x\n        keyless:\n          identities:\n            - subject: s\n              issuer: i\n        attestations:\n          - predicateType: https://slsa.dev/provenance/v1\n{conditions}"
            )
    };
    let a = "policy.policies[0].authorities[0].attestations[0]";
    let attestation_cases = [
        ("            conditions:\n              - path: a..b\n                equals: x\n", format!("{a}.conditions[0].path")),
        ("            conditions:\n              - path: a\n", format!("{a}.conditions[0]")),
        (
            "            conditions:\n              - path: a\n                equals: x\n                matches: y\n",
            format!("{a}.conditions[0]"),
        ),
        (
            "            conditions:\n              - path: a\n              - path: b\n                matches: \"(\"\n",
            format!("{a}.conditions[0]"),
        ),
        ("            conditions:\n              - path: b\n                matches: \"(\"\n", format!("{a}.conditions[0].matches")),
        (
            "            conditions:\n              - path: b\n                notOlderThan: soon\n",
            format!("{a}.conditions[0].notOlderThan"),
        ),
        ("            conditions:\n              - path: b\n                notOlderThan: 0s\n", format!("{a}.conditions[0].notOlderThan")),
        ("            conditions:\n              - path: b\n                oneOf: []\n", format!("{a}.conditions[0].oneOf")),
        ("            conditions:\n              - path: b\n                equals: [1]\n", format!("{a}.conditions[0].equals")),
        ("            conditions:\n              - path: b\n                equals: {x: 1}\n", format!("{a}.conditions[0].equals")),
        ("            conditions:\n              - path: b\n                oneOf: [0, {x: 1}]\n", format!("{a}.conditions[0].oneOf[1]")),
        ("            conditions:\n              - path: b\n                equals: null\n", format!("{a}.conditions[0]")),
        (
            "            signer:\n              keyless:\n                identities:\n                  - subject: s\n",
            format!("{a}.signer.keyless.identities[0]"),
        ),
        ("            signer: {}\n", format!("{a}.signer")),
    ];
    for (conditions, key) in attestation_cases {
        let yaml = att(conditions);
        let e = parse(&yaml).unwrap_err();
        assert!(e.contains(&format!("key `{key}`")), "{yaml}\n=> {e}");
    }
    let bad_type = att("").replace("https://slsa.dev/provenance/v1", "slsa");
    assert!(parse(&bad_type).unwrap_err().contains(&format!("key `{a}.predicateType`")));
    let twice = att("          - predicateType: https://slsa.dev/provenance/v1\n");
    assert!(parse(&twice).unwrap_err().contains("policy.policies[0].authorities[0].attestations[1].predicateType"));
    // Unknown condition keys are refused by name at parse time.
    assert!(parse(&att("            conditions:\n              - path: a\n                equal: x\n")).unwrap_err().contains("equal"));
    let two = format!(
            "policies:\n  - name: p\n    images: [\"a\"]\n    threshold: 2\n    authorities:\n      - name: x\n        key:\n          data: \"{}\"\n",
            KEY.replace('\n', "\\n")
        );
    assert!(parse(&two).unwrap_err().contains("threshold"));
}
