"""Nested parallelism never deadlocks: tasks that submit tasks and wait for them.

A waiter that finds its task still queued runs it inline, so a pool whose every
worker is blocked waiting for children still makes progress; limits admit
submissions from inside tasks at once. The tests saturate a 2-thread pool, with
no limit, a global limit of 1 and a per-function limit of 1.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

import makeparallel as mp


@dataclass
class Limits:
    options: dict[str, Any] = field(default_factory=dict)  # for @mp.parallel
    global_limit: int | None = None

    def apply_global(self) -> None:
        mp.set_max_concurrent_tasks(self.global_limit)


@pytest.fixture(params=["no limit", "global limit 1", "function limit 1"])
def limits(request: pytest.FixtureRequest) -> Limits:
    mp.configure_thread_pool(num_threads=2)
    if request.param == "global limit 1":
        return Limits(global_limit=1)
    if request.param == "function limit 1":
        return Limits(options={"max_concurrent": 1})
    return Limits()


@pytest.mark.timeout(30)
def test_tasks_waiting_for_their_children_on_a_full_pool(limits: Limits) -> None:
    limits.apply_global()

    @mp.parallel(**limits.options)
    def child(i: int) -> int:
        return i * i

    @mp.parallel(**limits.options)
    def parent(base: int) -> list[int]:
        children = [child(base + i) for i in range(10)]
        return [h.get() for h in children]

    # Four parents on two workers: each worker ends up waiting on children.
    parents = [parent(10 * p) for p in range(4)]
    results = [h.get(timeout=20) for h in parents]
    assert results == [[(10 * p + i) ** 2 for i in range(10)] for p in range(4)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("limit_after_submitting", [False, True])
def test_parents_blocked_together_with_every_worker_busy(limit_after_submitting: bool) -> None:
    """Both workers are known to be inside a parent before any parent collects."""
    mp.configure_thread_pool(num_threads=2)
    both = threading.Barrier(2)

    @mp.parallel
    def child(i: int) -> int:
        return i + 1

    @mp.parallel
    def parent(base: int) -> int:
        children = [child(base + i) for i in range(10)]
        both.wait(5)  # every worker now holds a parent with 10 queued children
        return sum(h.get() for h in children)

    parents = [parent(0), parent(100)]
    if limit_after_submitting:
        # Reached at once by the children; they must be admitted all the same.
        mp.set_max_concurrent_tasks(1)
    assert [h.get(timeout=20) for h in parents] == [55, 1055]


@pytest.mark.timeout(30)
def test_three_levels_of_recursive_fan_out(limits: Limits) -> None:
    limits.apply_global()

    @mp.parallel(**limits.options)
    def fib(n: int) -> int:
        if n < 2:
            return n
        left, right = fib(n - 1), fib(n - 2)
        return left.get() + right.get()

    assert [h.get(timeout=20) for h in [fib(n) for n in (8, 9, 10)]] == [21, 34, 55]


@pytest.mark.timeout(30)
def test_three_levels_of_fan_out_with_every_worker_in_a_parent(limits: Limits) -> None:
    """Top-level tasks submitted at once, each fanning out two more levels."""
    limits.apply_global()

    @mp.parallel(**limits.options)
    def level(depth: int, width: int) -> int:
        if depth == 0:
            return 1
        return sum(h.get() for h in [level(depth - 1, width) for _ in range(width)])

    tops = [level(3, 3) for _ in range(4)]
    assert [h.get(timeout=20) for h in tops] == [27] * 4


@pytest.mark.timeout(30)
def test_nested_children_collected_with_bounded_waits_still_finish(limits: Limits) -> None:
    """Bounded waits never run a task inline: the workers alone must drain the children."""
    limits.apply_global()

    @mp.parallel(**limits.options)
    def child(i: int) -> int:
        return -i

    @mp.parallel(**limits.options)
    def parent(n: int) -> int:
        children = [child(i) for i in range(n)]
        return sum(h.get(timeout=10) for h in children)

    # One parent: one worker waits, the other drains its children.
    assert parent(20).get(timeout=20) == -190


@pytest.mark.timeout(30)
def test_a_parent_run_inline_by_the_main_thread_nests_too(
    limits: Limits, gate: threading.Event
) -> None:
    """Both workers held: the parent and its children can only run on this thread."""
    started = threading.Barrier(3)

    @mp.parallel
    def held() -> None:
        started.wait(5)
        assert gate.wait(30)

    blockers = [held(), held()]
    started.wait(5)
    limits.apply_global()  # the blockers were admitted before the limit: not counted
    ran_on: list[int] = []

    @mp.parallel(**limits.options)
    def leaf(i: int) -> int:
        ran_on.append(threading.get_ident())
        return i

    @mp.parallel(**limits.options)
    def parent() -> int:
        ran_on.append(threading.get_ident())
        return sum(h.get() for h in [leaf(i) for i in range(5)])

    assert parent().get() == 10
    assert ran_on == [threading.get_ident()] * 6
    gate.set()
    for handle in blockers:
        assert handle.wait(5)
