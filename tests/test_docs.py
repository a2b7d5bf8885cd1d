"""The documentation site: it builds with no warning, and every example runs.

Each ```python block of the pages under ``docs/`` runs on its own, as a file in a
fresh interpreter, as README blocks do (``tests/test_readme.py``): a reader can
paste any one of them into a file and run it. Blocks that are not meant to run
use ```bash or ```text. ``mkdocs build --strict`` turns every warning (a broken
link or anchor, a page missing from the navigation, a docstring that names a
parameter the function lacks) into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme import python_blocks

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

BLOCKS = [
    (f"{page.relative_to(DOCS).as_posix()}:{block_id}", code)
    for page in PAGES
    for block_id, code in python_blocks(page.read_text(encoding="utf-8"))
]


def test_the_guides_have_examples() -> None:
    pages_with_examples = {block_id.split(":")[0] for block_id, _ in BLOCKS}
    guides = {page.relative_to(DOCS).as_posix() for page in (DOCS / "guides").glob("*.md")}
    assert guides and guides <= pages_with_examples, f"guides without a runnable example: {guides - pages_with_examples}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("block_id", "code"), BLOCKS, ids=[block_id for block_id, _ in BLOCKS])
def test_docs_block_runs(block_id: str, code: str, tmp_path: Path) -> None:
    program = tmp_path / "example.py"
    program.write_text(code, encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, str(program)],
        cwd=ROOT,  # where the test suite runs, as README blocks do (coverage writes its data here)
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert completed.returncode == 0, (
        f"docs {block_id} exited with {completed.returncode}\n"
        f"--- code ---\n{code}\n--- stdout ---\n{completed.stdout}\n--- stderr ---\n{completed.stderr}"
    )


@pytest.mark.timeout(180)
def test_the_site_builds_with_no_warning(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # a banner, not a warning about this site
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (tmp_path / "site" / "reference" / "index.html").read_text().count('id="makeparallel.parallel_map"') == 1
