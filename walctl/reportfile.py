"""The files a walctl command leaves behind: its JSON report, and its data directory."""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any


def write_json(path: str, data: Any) -> None:
    """`data` as indented JSON with a final newline (`--json FILE`)."""
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def tidy(directory: str, *, given: bool, keep: bool, passed: bool, command: str) -> None:
    """A temporary directory goes after a pass (unless `keep`); kept otherwise, and said so.
    A directory the user gave (`given`) is theirs: left alone."""
    if given:
        return
    if passed and not keep:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        print(f"walctl {command}: data kept in {directory}", file=sys.stderr)
