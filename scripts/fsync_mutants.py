"""Remove each durability call in wal/ alone and check that a test notices.

    .venv/bin/python scripts/fsync_mutants.py [--only TEXT] [--json FILE]

A durability call is a statement that is a call of `os.fsync`,
`os.fdatasync` or `fsync_dir`, or of a segment's `.sync()`. For each one
the script copies the tree (as it is in the work tree) to a temporary
directory, replaces that one statement with `pass`, and runs TESTS there,
fast files first, stopping at the first failure. KILLED: a test failed.
SURVIVED: none did; then it is either listed in EQUIVALENT, with why no test
can tell (the script says so), or it is a hole in the suite (exit 1).
docs/TESTING.md has the last result.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALL = re.compile(r"^(\s*)(os\.fsync\(|os\.fdatasync\(|fsync_dir\(|[\w.\[\]-]+\.sync\(\)).*$")
TESTS = [
    "tests/test_durability_calls.py",
    "tests/test_cut_states.py",
    "tests/test_wal_library.py",
    "tests/test_segment_index.py",
    "tests/test_walctl_repair.py",
    "tests/test_crash_steps.py",
    "tests/test_disk_faults.py",
    "tests/test_walstore.py",
    "tests/test_powerloss.py",
]
# Survivors no test can kill, by the statement's file and text: why each is redundant.
EQUIVALENT = {
    ("wal/segment.py", "self.sync()", "seal"): "Segment.seal's fdatasync: its only caller, the "
    "roll, calls write_index next, which fdatasyncs the segment before anything else happens "
    "(a Segment method, not an os.fsync/os.fdatasync/fsync_dir call)",
    ("wal/prefill.py", "fsync_dir(self.directory)", "_prepare"): "the preparer's directory "
    "fsync: the roll's fsync_dir after the rename makes the file's entry durable under its "
    "segment's name (and a next.prefill a cut keeps or loses is removed at start either way); "
    "this one only moves that journal work off the roll",
}


def durability_calls() -> list[tuple[str, int, str, str]]:
    """(file, line number, statement, enclosing def) of every durability call in wal/."""
    out = []
    for name in sorted(os.listdir(os.path.join(REPO, "wal"))):
        if not name.endswith(".py"):
            continue
        rel = f"wal/{name}"
        func = ""
        with open(os.path.join(REPO, rel)) as f:
            for n, line in enumerate(f, 1):
                if m := re.match(r"\s*def (\w+)", line):
                    func = m.group(1)
                elif CALL.match(line) and "def " not in line:
                    out.append((rel, n, line.strip().split("  #")[0], func))
    return out


def copy_tree(dest: str) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        if os.path.isfile(os.path.join(REPO, rel)):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, rel), os.path.join(dest, rel))


def run_mutant(tree: str, rel: str, lineno: int) -> tuple[str, str, float]:
    path = os.path.join(tree, rel)
    with open(path) as f:
        lines = f.readlines()
    original = lines[lineno - 1]
    indent = CALL.match(original).group(1)
    lines[lineno - 1] = f"{indent}pass  # mutant: durability call removed\n"
    with open(path, "w") as f:
        f.writelines(lines)
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": tree},
            capture_output=True,
            text=True,
            timeout=1200,
        )
    finally:
        lines[lineno - 1] = original
        with open(path, "w") as f:
            f.writelines(lines)
    failed = re.findall(r"^FAILED (.+?)(?: - .*)?$", done.stdout, re.M)
    verdict = "KILLED" if done.returncode != 0 else "SURVIVED"
    return verdict, failed[0] if failed else "", time.monotonic() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", metavar="TEXT", help="only calls whose file:line or text has TEXT")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = p.parse_args()
    calls = durability_calls()
    if args.only:
        calls = [c for c in calls if args.only in f"{c[0]}:{c[1]} {c[2]} {c[3]}"]
    results, holes = [], 0
    with tempfile.TemporaryDirectory(prefix="walnode-mutants-") as tree:
        copy_tree(tree)
        for rel, lineno, text, func in calls:
            verdict, by, seconds = run_mutant(tree, rel, lineno)
            why = EQUIVALENT.get((rel, text, func))
            if verdict == "SURVIVED":
                verdict = "EQUIVALENT" if why else "SURVIVED"
                holes += why is None
            print(
                f"{verdict:<10} {rel}:{lineno} {func}: {text}  {by or why or ''} ({seconds:.0f} s)"
            )
            sys.stdout.flush()
            results.append(
                {
                    "call": f"{rel}:{lineno}",
                    "in": func,
                    "statement": text,
                    "verdict": verdict,
                    "failed_test": by,
                    "why_equivalent": why,
                }
            )
    killed = sum(r["verdict"] == "KILLED" for r in results)
    print(f"{killed} of {len(results)} killed, {holes} survived unexplained")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 1 if holes else 0


if __name__ == "__main__":
    sys.exit(main())
