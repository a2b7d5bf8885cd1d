"""``docs/migrating-from-0.2.md`` covers every name of 0.2, and every line of it has an example that runs.

The guide's ```python blocks are run, each as a program of its own, by
``tests/test_docs.py`` (as every page under ``docs/`` is). This module checks
that nothing in the guide escapes them: each 0.2 name has a row in the table,
each name offered exists here and is used by an example, each name not offered
is absent, and each behaviour that changed has its own example.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_readme import python_blocks

import makeparallel as mp

ROOT = Path(__file__).resolve().parent.parent
GUIDE_PATH = ROOT / "docs" / "migrating-from-0.2.md"
GUIDE = GUIDE_PATH.read_text(encoding="utf-8")
EXAMPLES = "\n".join(code for _, code in python_blocks(GUIDE))

# Every public name of makeparallel 0.2.0 (``dir()`` of its module, from its wheel).
NAMES_OF_0_2 = (
    "AsyncHandle",
    "AsyncHandleFast",
    "CallCounter",
    "ParallelContext",
    "ParallelWithDeps",
    "PerformanceMetrics",
    "TaskError",
    "configure_memory_limit",
    "configure_thread_pool",
    "gather",
    "get_active_task_count",
    "get_all_metrics",
    "get_current_task_id",
    "get_metrics",
    "get_thread_pool_info",
    "memoize",
    "memoize_fast",
    "parallel",
    "parallel_fast",
    "parallel_map",
    "parallel_pool",
    "parallel_priority",
    "parallel_with_deps",
    "profiled",
    "report_progress",
    "reset_metrics",
    "reset_shutdown",
    "retry",
    "retry_backoff",
    "retry_cached",
    "set_max_concurrent_tasks",
    "shutdown",
    "start_priority_worker",
    "stop_priority_worker",
    "timer",
)

# The behaviours that changed, each of which needs a section with its example.
CHANGES = (
    "A task's error comes back as itself",
    "Task ids are ints",
    "`on_error` receives the exception",
    "Callbacks run when the task ends, not inside `get()`",
    "`report_progress` outside a task does nothing",
    "A timeout ends the handle as `TaskTimeoutError`, not as cancelled",
    "A function's own `timeout` parameter is passed to it",
    "A group raises its first failure and cancels the rest",
    "A group's `timeout` bounds the whole block",
    "Submitting after `shutdown()` raises `ShutdownError`",
    "`get_all_metrics()` holds records, without `_global_*` totals",
    "Metrics are keyed by `__qualname__`; `__name__` finds them when unambiguous",
    "`reset_metrics()` zeroes instead of removing",
    "`set_max_concurrent_tasks(0)` means no limit",
    "A generator function is refused at decoration",
)


def table_rows() -> dict[str, str]:
    """Each 0.2 name of the table, with what its row says."""
    section = GUIDE.split("## Every name of 0.2", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names, meaning = line.strip("|").split("|", 1)
        for name in re.findall(r"`([A-Za-z_]+)`", names):
            rows[name] = meaning
    return rows


def sections() -> dict[str, str]:
    """The ``###`` sections of "What behaves differently", by title."""
    changes = GUIDE.split("## What behaves differently", 1)[1]
    found: dict[str, str] = {}
    for part in changes.split("\n### ")[1:]:
        title, _, body = part.partition("\n")
        found[title.strip()] = body
    return found


def test_every_name_of_0_2_has_a_row() -> None:
    missing = sorted(set(NAMES_OF_0_2) - set(table_rows()))
    assert not missing, f"0.2 names the guide's table does not mention: {missing}"


@pytest.mark.parametrize("name", NAMES_OF_0_2)
def test_each_row_says_the_truth(name: str) -> None:
    meaning = table_rows()[name]
    if "not offered" in meaning:
        assert not hasattr(mp, name), f"the guide says {name} is not offered, but makeparallel has it"
        return
    if "not built yet" in meaning:
        assert not hasattr(mp, name), f"the guide says {name} is not built yet, but makeparallel has it: update it"
        return
    assert hasattr(mp, name), f"the guide offers {name}, which makeparallel lacks"
    assert re.search(rf"\b{name}\b", EXAMPLES), f"no example of the guide uses {name}"


@pytest.mark.parametrize("title", CHANGES)
def test_each_change_has_its_own_example(title: str) -> None:
    body = sections().get(title)
    assert body is not None, f"the guide has no section {title!r}"
    assert len(python_blocks(body)) == 1, f"section {title!r} needs exactly one ```python example"


def test_every_section_has_an_example() -> None:
    without = [title for title, body in sections().items() if len(python_blocks(body)) != 1]
    assert not without, f"sections without exactly one example: {without}"


def test_the_readme_and_the_site_link_the_guide() -> None:
    assert "(docs/migrating-from-0.2.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "migrating-from-0.2.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
