#!/usr/bin/env python3
"""Compare critest runs: directly against containerd and through pullgate.

usage: critest_report.py RESULTS_DIR

RESULTS_DIR holds Ginkgo JSON reports (critest --ginkgo.json-report) named
GENERATION--PATH.json, PATH being `direct`, `passthrough` or `enforce` (pullgate's mode).
Prints, per generation and path, the passed / failed / skipped counts and the failed specs
(with the first line of their failure), then for each pullgate path the difference from
`direct` of the same generation. Exit 1 when a spec passed directly but did not pass through
pullgate (a regression pullgate causes); 0 otherwise. Standard library only.
"""
import json
import os
import sys

PATHS = ("direct", "passthrough", "enforce")


def spec_name(r):
    return " ".join([t for t in r.get("ContainerHierarchyTexts") or [] if t] + [r.get("LeafNodeText", "")]).strip()


def load(path):
    """-> {spec name: (state, first failure line)}; suite-level failures under their node type."""
    with open(path) as f:
        reports = json.load(f)
    out = {}
    for suite in reports:
        for r in suite.get("SpecReports") or []:
            kind = r.get("LeafNodeType", "")
            state = r.get("State", "")
            msg = ((r.get("Failure") or {}).get("Message") or "").strip().splitlines()
            first = msg[0] if msg else ""
            if kind != "It":
                if state not in ("passed", "skipped"):
                    out[f"[{kind}]"] = (state, first)
                continue
            out[spec_name(r)] = (state, first)
    return out


def counts(specs):
    c = {"passed": 0, "failed": 0, "skipped": 0, "other": 0}
    for state, _ in specs.values():
        if state in ("passed", "skipped"):
            c[state] += 1
        elif state in ("failed", "panicked", "timedout", "interrupted", "aborted"):
            c["failed"] += 1
        else:
            c["other"] += 1
    return c


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 64
    d = sys.argv[1]
    runs = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".json") and "--" in fn:
            gen, path = fn[:-5].split("--", 1)
            if path in PATHS:
                runs[(gen, path)] = load(os.path.join(d, fn))
    if not runs:
        print(f"no reports in {d}", file=sys.stderr)
        return 2
    gens = sorted({g for g, _ in runs})
    print("| containerd | path | passed | failed | skipped |")
    print("|---|---|---|---|---|")
    for g in gens:
        for p in PATHS:
            if (g, p) in runs:
                c = counts(runs[(g, p)])
                extra = f" (+{c['other']} other)" if c["other"] else ""
                print(f"| {g} | {p} | {c['passed']} | {c['failed']}{extra} | {c['skipped']} |")
    regressions = 0
    for g in gens:
        for p in PATHS:
            specs = runs.get((g, p))
            if specs is None:
                continue
            failed = sorted(n for n, (s, _) in specs.items() if s not in ("passed", "skipped"))
            print(f"\n## containerd {g}, {p}: {len(failed)} failed")
            for n in failed:
                print(f"- {n}\n    {specs[n][1][:300]}")
            # specs that skipped themselves (critest's Skip(), with its reason); the ones the
            # script filters out by name or focus carry no message
            self_skipped = sorted(n for n, (s, m) in specs.items() if s == "skipped" and m)
            if self_skipped:
                print(f"\n## containerd {g}, {p}: {len(self_skipped)} skipped by critest itself")
                for n in self_skipped:
                    print(f"- {n}\n    {specs[n][1][:300]}")
        direct = runs.get((g, "direct"))
        for p in PATHS[1:]:
            through = runs.get((g, p))
            if direct is None or through is None:
                continue
            lost = sorted(n for n, (s, _) in direct.items()
                          if s == "passed" and through.get(n, ("missing", ""))[0] != "passed")
            gained = sorted(n for n, (s, _) in through.items()
                            if s == "passed" and direct.get(n, ("missing", ""))[0] != "passed")
            print(f"\n## containerd {g}: direct vs pullgate {p}: "
                  f"{len(lost)} pass only directly, {len(gained)} pass only through pullgate")
            for n in lost:
                st, msg = through.get(n, ("missing", ""))
                print(f"- LOST {n}\n    through pullgate: {st}: {msg[:300]}")
            for n in gained:
                st, msg = direct.get(n, ("missing", ""))
                print(f"- GAINED {n}\n    directly: {st}: {msg[:300]}")
            regressions += len(lost)
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
