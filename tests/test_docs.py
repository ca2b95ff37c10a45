"""The documentation stands alone: every relative link in README.md and
docs/*.md resolves inside the repository, and none sends the reader to
files outside it (such as ../shared/, which a clone does not have)."""

from __future__ import annotations

import glob
import os
import re

from tests.nodeproc import REPO

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
DOCS = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]


def test_links_resolve_inside_the_repository():
    for path in DOCS:
        with open(path) as f:
            text = f.read()
        assert "../shared" not in text, f"{path} points outside the repository"
        for target in LINK.findall(text):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
            assert resolved.startswith(REPO + os.sep), (path, target)
            assert os.path.exists(resolved), f"{path}: link {target} does not resolve"


def test_the_protocol_doc_is_linked_from_the_entry_points():
    wanted = {
        "README.md": "](docs/PROTOCOL.md)",
        "docs/DESIGN.md": "](PROTOCOL.md)",
        "docs/DEPLOY.md": "](PROTOCOL.md)",
        "node.py": "docs/PROTOCOL.md",
    }
    for name, link in wanted.items():
        with open(os.path.join(REPO, name)) as f:
            assert link in f.read(), name
