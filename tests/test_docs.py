"""The documentation site: it builds with no warning, and every example runs.

Each ```python block of the pages under ``docs/`` runs on its own, as a file in a
fresh interpreter, as README blocks do (``tests/test_readme.py``): a reader can
paste any one of them into a file and run it. Blocks that are not meant to run
use ```bash or ```text. ``mkdocs build --strict`` turns every warning (a broken
link or anchor, a page missing from the navigation, a docstring that names a
parameter the function lacks) into a failure.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from test_readme import python_blocks

import makeparallel as mp

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
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    # Every public name has its entry, once: an alias or a constant too, which
    # mkdocstrings leaves out where it has no docstring of its own.
    entries = {name: reference.count(f'id="makeparallel.{name}"') for name in mp.__all__}
    assert {name: count for name, count in entries.items() if count != 1} == {}


def test_getting_started_names_every_extra() -> None:
    """A reader installs from the page: each extra of pyproject.toml is named where it says how."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[project.optional-dependencies]\n", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([a-z][a-z0-9_-]*) = ", section, re.MULTILINE))
    page = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    install = page.split("## Install", 1)[1].split("\n## ", 1)[0]
    assert extras, "no extra found in pyproject.toml"
    assert {extra for extra in extras if f"`{extra}`" not in install and f".[{extra}]" not in install} == set()


def test_the_web_guides_job_registry_forgets_each_job_keep_seconds_after_it_ended() -> None:
    """The "return a task id, poll" example: ended jobs expire, so the registry never fills for good."""
    page = (DOCS / "guides" / "web-services.md").read_text(encoding="utf-8")
    code = next(code for _, code in python_blocks(page) if "class Jobs" in code)
    kept = [
        node
        for node in ast.parse(code).body
        if isinstance(node, ast.Import)  # time, uuid, makeparallel: what the class needs, no web framework
        or (isinstance(node, ast.ImportFrom) and node.module == "collections")
        or (isinstance(node, ast.ClassDef) and node.name == "Jobs")
    ]
    namespace: dict[str, Any] = {}
    exec(compile(ast.Module(kept, type_ignores=[]), "web-services.md", "exec"), namespace)
    now = [1000.0]
    namespace["time"] = types.SimpleNamespace(monotonic=lambda: now[0])  # a fake clock for the example
    jobs = namespace["Jobs"](size=1, keep=60.0)
    ended = mp.parallel(backend="sync")(int)  # each call's task has ended when it returns

    first = jobs.add(ended())
    assert first is not None
    assert jobs.add(ended()) is None  # full: the first job is kept 60 s after its end
    now[0] += 61.0
    assert jobs.add(ended()) is not None
    assert first not in jobs.handles


def _work_per_gil_example_task(code: str) -> int:
    """The size of the pure-Python work each ``on_threads(...)`` task of a GIL example is given."""
    calls = [
        node
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "on_threads"
    ]
    assert calls, "no on_threads(...) call in the example"
    sizes = {ast.literal_eval(call.args[0]) for call in calls}
    assert len(sizes) == 1, sizes
    return sizes.pop()


def test_the_backends_guides_gil_example_gives_the_watch_tasks_that_overlap() -> None:
    """The example under "it says so once" shows the warning, as the README's does.

    Threads that hold the GIL take turns every ``sys.getswitchinterval()`` (5 ms):
    a task shorter than that (``count(50_000)``, about 2 ms) ends before the
    other thread gets the GIL, so the tasks run one after another, never side
    by side, and the watch rightly says nothing: the guide's example printed no
    warning in most runs. The README's ``count(200_000)`` runs about 8 ms, and
    its tasks overlap.
    """
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    guide = (DOCS / "guides" / "backends.md").read_text(encoding="utf-8")
    readme_example = next(code for _, code in python_blocks(readme) if "GilBoundWarning" in code)
    guide_example = next(code for _, code in python_blocks(guide) if "GilBoundWarning" in code)
    assert _work_per_gil_example_task(guide_example) >= _work_per_gil_example_task(readme_example) == 200_000
