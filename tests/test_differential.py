"""Differential: each fixed session of walctl/differential/cases.py through this
checkout's node.py, its replies against the ones main (761ee77) gave, stored in
tests/differential_corpus.json.gz (scripts/differential.py corpus writes it from
a main checkout and refuses to when main answers a session differently from
run to run). Equal means: each run's multiset of reply lines byte for byte
(timing fields and each line's own msg_id aside: walctl/differential/compare.py),
the exit statuses, and each stream whole lines with msg_ids 0, 1, 2, ..."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from tests.nodeproc import NODE, REPO
from walctl.differential.cases import CASES
from walctl.differential.compare import differences, stream_problems
from walctl.differential.runner import RunResult, run_session

CORPUS_PATH = os.path.join(REPO, "tests", "differential_corpus.json.gz")


@pytest.fixture(scope="module")
def corpus() -> dict:
    with gzip.open(CORPUS_PATH, "rt") as f:
        return json.load(f)["cases"]


def stored_runs(corpus: dict, name: str) -> list[RunResult]:
    return [RunResult(**run) for run in corpus[name]["runs"]]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", list(CASES))
def test_replies_are_mains(name, corpus, tmp_path):
    session = CASES[name]()
    assert corpus[name]["digest"] == session.digest(), (
        "the session changed since the corpus was written: "
        "python scripts/differential.py corpus --reference MAIN/node.py"
    )
    result = run_session(NODE, session, str(tmp_path))
    found = [run.problem for run in result.runs if run.problem]
    found += differences(stored_runs(corpus, name), result.runs)
    assert not found, "\n".join(found)


def test_the_comparison_finds_each_kind_of_difference(corpus):
    """The checks above can fail: a reply changed, lost, doubled, cut, renumbered."""
    want = stored_runs(corpus, "before_and_at_init")
    assert differences(want, want) == []
    lines = want[0].lines
    append = next(i for i, x in enumerate(lines) if '"wal_append_ok"' in x)

    def changed(new_lines: list[str], partial: str = "", code: int | None = 0) -> list[str]:
        return differences(want, [RunResult(code, new_lines, partial)])

    offset_moved = lines[append].replace('"offset": 0', '"offset": 1')
    assert any(
        "missing reply" in d for d in changed([*lines[:append], offset_moved, *lines[append + 1 :]])
    )
    assert any("missing reply" in d for d in changed(lines[:-1]))
    doubled = [*lines, lines[append].replace(f'"msg_id": {append}}}', f'"msg_id": {len(lines)}}}')]
    assert any("unexpected reply" in d for d in changed(doubled))
    assert any("cut line" in d for d in changed(lines, partial='{"src": "n1", "de'))
    assert any("exit status" in d for d in changed(lines, code=1))
    swapped = [*lines[:append], lines[append + 1], lines[append], *lines[append + 2 :]]
    assert any("not 0, 1, 2" in d for d in stream_problems(RunResult(0, swapped), "run"))
    spaced = lines[append].replace('"src": "n1", "dest"', '"src":"n1", "dest"')
    assert changed([*lines[:append], spaced, *lines[append + 1 :]])  # layout is compared too
