"""Differential runs of walnode: the same sessions through two node.py's.

    python scripts/differential.py corpus [--reference NODE]
        run every fixed case (walctl/differential/cases.py) through NODE twice
        (main's; default /tmp/base761/node.py), check the two runs agree, and
        store the replies in tests/differential_corpus.json.gz (read it with zcat)
    python scripts/differential.py compare --candidate NODE [--reference NODE] [--case NAME]
        the fixed cases through both, side by side
    python scripts/differential.py random --candidate NODE [--reference NODE]
                                          [--seconds S] [--seed N] [--save DIR]
        random sessions (walctl/differential/randomgen.py) through both until S
        seconds pass; a session whose replies differ is saved to DIR as JSON
    python scripts/differential.py damage --candidate NODE [--reference NODE] [--case NAME]
                                          [--loose-recovery]
        the fault sessions (walctl/differential/damagecases.py: rot, torn tails,
        a branch's own files garbled, snapshots damaged, repair, kill -9 at a
        barrier) through both; --loose-recovery ignores status's recovery reports
    python scripts/differential.py replay FILE --candidate NODE [--reference NODE]
        one saved session through both

Exit 0: no difference; 1: a difference (printed). A reference node is any
checkout with a .venv (`git worktree add --detach /tmp/base761 761ee77`,
then `make .venv/bin/.installed` there).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import json
import os
import random
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from walctl.differential.cases import all_cases  # noqa: E402
from walctl.differential.compare import differences  # noqa: E402
from walctl.differential.damagecases import all_damage_cases  # noqa: E402
from walctl.differential.randomgen import random_session  # noqa: E402
from walctl.differential.runner import SessionResult, run_session  # noqa: E402
from walctl.differential.session import Session  # noqa: E402

CORPUS = os.path.join(REPO, "tests", "differential_corpus.json.gz")
DEFAULT_REFERENCE = "/work/main/node.py"


def run_both(
    reference: str, candidate: str, session: Session, loose_recovery: bool = False
) -> list[str]:
    """The session through both nodes at once; the differences, runner problems first."""
    with tempfile.TemporaryDirectory(prefix="diff-") as tmp:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            ref = pool.submit(run_session, reference, session, os.path.join(tmp, "ref"))
            cand = pool.submit(run_session, candidate, session, os.path.join(tmp, "cand"))
            want, got = ref.result(), cand.result()
        found = []
        if problems(want, "") != problems(got, ""):  # the same refusal by both is an answer
            found += problems(want, "reference") + problems(got, "candidate")
        found += differences(want.runs, got.runs, loose_recovery)
        # what each fault did, but for a branch's own files (main has none)
        same = [
            (a, b) for a, b in zip(want.notes, got.notes, strict=False) if not a.startswith("extra")
        ]
        found += [f"fault: reference {a!r}, candidate {b!r}" for a, b in same if a != b]
        if found:
            for name in ("ref", "cand"):
                with open(os.path.join(tmp, name, "stderr"), errors="replace") as f:
                    found.append(f"{name} stderr (tail): {f.read()[-1500:]}")
        return found


def problems(result: SessionResult, label: str) -> list[str]:
    return [f"{label}: {run.problem}" for run in result.runs if run.problem]


def cmd_corpus(args: argparse.Namespace) -> int:
    corpus = {}
    bad = False
    for name, session in all_cases().items():
        with tempfile.TemporaryDirectory(prefix="diff-") as tmp:
            first = run_session(args.reference, session, os.path.join(tmp, "a"))
            second = run_session(args.reference, session, os.path.join(tmp, "b"))
        found = problems(first, "run 1") + problems(second, "run 2")
        found += differences(first.runs, second.runs)
        print(f"{name}: {sum(len(r.lines) for r in first.runs)} replies, {first.seconds:.1f} s")
        for line in found:
            print(f"  not deterministic: {line}")
        bad = bad or bool(found)
        corpus[name] = {"digest": session.digest(), "runs": [r.to_json() for r in first.runs]}
    if bad:
        print("the reference answers differently from run to run: corpus not written")
        return 1
    with gzip.open(args.out, "wt") as f:  # 4 MB of JSON lines, mostly repeated barrier replies
        json.dump({"reference": args.reference, "cases": corpus}, f, indent=0)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    cases = all_cases()
    failed = 0
    for name in args.case or list(cases):
        began = time.monotonic()
        found = run_both(args.reference, args.candidate, cases[name])
        print(f"{name}: {'DIFFERS' if found else 'same'} ({time.monotonic() - began:.1f} s)")
        for line in found:
            print(f"  {line}")
        failed += bool(found)
    return 1 if failed else 0


def cmd_damage(args: argparse.Namespace) -> int:
    cases = all_damage_cases()
    failed = 0
    for name in args.case or list(cases):
        began = time.monotonic()
        found = run_both(args.reference, args.candidate, cases[name], args.loose_recovery)
        print(f"{name}: {'DIFFERS' if found else 'same'} ({time.monotonic() - began:.1f} s)")
        for line in found:
            print(f"  {line}")
        failed += bool(found)
    print(f"{len(args.case or cases)} fault sessions, {failed} differed")
    return 1 if failed else 0


def cmd_random(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    deadline = time.monotonic() + args.seconds
    runs = failed = 0
    while time.monotonic() < deadline:
        session = random_session(seed)
        found = run_both(args.reference, args.candidate, session)
        runs += 1
        if found:
            failed += 1
            os.makedirs(args.save, exist_ok=True)
            path = os.path.join(args.save, f"{session.name}.json")
            with open(path, "w") as f:
                json.dump(session.to_json(), f)
            print(f"seed {seed}: DIFFERS (saved {path})")
            for line in found:
                print(f"  {line}")
        else:
            print(f"seed {seed}: same ({len(session.steps)} steps)", flush=True)
        seed += 1
    print(f"{runs} random sessions, {failed} differed")
    return 1 if failed else 0


def cmd_replay(args: argparse.Namespace) -> int:
    with open(args.file) as f:
        session = Session.from_json(json.load(f))
    found = run_both(args.reference, args.candidate, session)
    for line in found:
        print(line)
    print(f"{session.name}: {'DIFFERS' if found else 'same'}")
    return 1 if found else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    corpus = sub.add_parser("corpus")
    corpus.add_argument("--out", default=CORPUS)
    compare = sub.add_parser("compare")
    compare.add_argument("--case", action="append")
    rand = sub.add_parser("random")
    rand.add_argument("--seconds", type=float, default=300)
    rand.add_argument("--seed", type=int)
    rand.add_argument("--save", default="/tmp/differential-failures")
    damage = sub.add_parser("damage")
    damage.add_argument("--case", action="append")
    damage.add_argument("--loose-recovery", action="store_true")
    replay = sub.add_parser("replay")
    replay.add_argument("file")
    for each in (corpus, compare, rand, damage, replay):
        each.add_argument("--reference", default=DEFAULT_REFERENCE)
        if each is not corpus:
            each.add_argument("--candidate", required=True)
    args = p.parse_args()
    command = {
        "corpus": cmd_corpus,
        "compare": cmd_compare,
        "random": cmd_random,
        "damage": cmd_damage,
    }
    return command.get(args.command, cmd_replay)(args)


if __name__ == "__main__":
    sys.exit(main())
