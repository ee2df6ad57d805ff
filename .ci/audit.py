#!/usr/bin/env python3
"""Checks Cargo.lock against an offline copy of the RustSec advisory database.

Usage: python3 .ci/audit.py [ADVISORY_DB] [Cargo.lock]
(defaults: ../shared/advisory-db and ./Cargo.lock; `just audit`).

For every crate in the lock file that comes from crates.io, reads the
advisories filed under `crates/<name>/` and reports each one whose affected
range holds the locked version (neither `patched` nor `unaffected` covers
it). Withdrawn advisories are skipped. Vulnerabilities make the exit status 1;
informational advisories (unmaintained, unsound, notice) are listed but do not
fail the check, and each one found is listed with its id so that a reviewer
can decide. No network: this is what `cargo audit` does, without installing it.
"""

import pathlib
import re
import sys
import tomllib


def parse_version(text):
    """'1.2.3-beta.1+build' -> ((1, 2, 3), ('beta', 1)); missing parts are 0."""
    text = text.strip().split("+", 1)[0]
    core, _, pre = text.partition("-")
    parts = [int(p) for p in core.split(".") if p != ""]
    while len(parts) < 3:
        parts.append(0)
    pre_key = tuple(int(p) if p.isdigit() else p for p in pre.split(".")) if pre else None
    return tuple(parts[:3]), pre_key


def compare(a, b):
    """Semver ordering of two parsed versions: -1, 0 or 1."""
    if a[0] != b[0]:
        return -1 if a[0] < b[0] else 1
    pa, pb = a[1], b[1]
    if pa == pb:
        return 0
    if pa is None:  # a release sorts after its pre-releases
        return 1
    if pb is None:
        return -1
    for x, y in zip(pa, pb):
        if x == y:
            continue
        if isinstance(x, int) and isinstance(y, int):
            return -1 if x < y else 1
        if isinstance(x, int):
            return -1
        if isinstance(y, int):
            return 1
        return -1 if x < y else 1
    return -1 if len(pa) < len(pb) else 1


def caret_upper(req):
    """The exclusive upper bound of `^req` (Cargo's default requirement)."""
    (major, minor, patch), _ = parse_version(req)
    given = len(req.split("-")[0].split("."))
    if major > 0 or given == 1:
        return (major + 1, 0, 0), None
    if minor > 0 or given == 2:
        return (0, minor + 1, 0), None
    return (0, 0, patch + 1), None


def matches_one(version, comparator):
    comparator = comparator.strip()
    m = re.match(r"^(>=|<=|>|<|=|\^|~)?\s*(.+)$", comparator)
    if not m:
        raise ValueError(f"cannot read version requirement {comparator!r}")
    op, bound_text = m.group(1) or "^", m.group(2)
    bound = parse_version(bound_text)
    c = compare(version, bound)
    if op == ">=":
        return c >= 0
    if op == ">":
        return c > 0
    if op == "<=":
        return c <= 0
    if op == "<":
        return c < 0
    if op == "=":
        return c == 0
    if op == "~":
        (major, minor, _), _ = bound
        given = len(bound_text.split("-")[0].split("."))
        upper = ((major + 1, 0, 0) if given == 1 else (major, minor + 1, 0), None)
        return c >= 0 and compare(version, upper) < 0
    # caret
    return c >= 0 and compare(version, caret_upper(bound_text)) < 0


def matches(version, requirement):
    """Whether `version` satisfies every comma-separated comparator."""
    return all(matches_one(version, part) for part in requirement.split(","))


def front_matter(path):
    text = path.read_text(encoding="utf-8")
    m = re.search(r"```toml\s*\n(.*?)\n```", text, re.S)
    if not m:
        raise ValueError(f"{path}: no TOML front matter")
    return tomllib.loads(m.group(1))


def main():
    db = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/advisory-db")
    lock = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "Cargo.lock")
    crates_dir = db / "crates"
    if not crates_dir.is_dir():
        print(f"audit: no advisory database at {db} (expected {crates_dir})", file=sys.stderr)
        return 2
    packages = tomllib.loads(lock.read_text(encoding="utf-8")).get("package", [])
    vulnerable, informational, checked = [], [], 0
    for package in packages:
        source = package.get("source", "")
        if not source.startswith("registry+"):
            continue  # workspace members and git dependencies
        checked += 1
        name, version_text = package["name"], package["version"]
        version = parse_version(version_text)
        for advisory_file in sorted((crates_dir / name).glob("RUSTSEC-*.md")):
            doc = front_matter(advisory_file)
            advisory, versions = doc.get("advisory", {}), doc.get("versions", {})
            if advisory.get("withdrawn"):
                continue
            safe = versions.get("patched", []) + versions.get("unaffected", [])
            if any(matches(version, req) for req in safe):
                continue
            # The advisory's title is the first heading after the front matter.
            body = advisory_file.read_text(encoding="utf-8").split("```", 2)[-1].splitlines()
            heading = next((t.lstrip("# ").strip() for t in body if t.startswith("#")), "")
            line = f"{advisory.get('id')} {name} {version_text}: {heading}"
            if advisory.get("informational"):
                informational.append(f"{line} [{advisory['informational']}]")
            else:
                vulnerable.append(line)
    snapshot_file = db / "SNAPSHOT.txt"
    snapshot = "unknown"
    if snapshot_file.exists():
        snapshot = (snapshot_file.read_text(encoding="utf-8").strip().splitlines() or ["unknown"])[0]
    print(f"audit: {checked} crates from {lock} against {db} ({snapshot})")
    for line in informational:
        print(f"  informational: {line}")
    for line in vulnerable:
        print(f"  VULNERABLE: {line}")
    print(f"audit: {len(vulnerable)} vulnerabilities, {len(informational)} informational advisories")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
