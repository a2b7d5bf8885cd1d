"""Structured groups: ``ParallelContext`` (also ``TaskGroup``).

A group owns the tasks submitted through it: leaving the block waits for them; a
failure in the body or in a task cancels the rest and is raised at exit; a group
timeout cancels the rest and raises ``TaskTimeoutError``. Orderings are forced
with events; a task that must notice its cancellation polls ``check_cancelled()``.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import re
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pool_helpers import hold_the_pool, wait_until

import makeparallel as mp
from makeparallel import _interruptible, _runtime
from makeparallel._admission import Limiter
from makeparallel.testing import wait_until_idle

BACKENDS = ["thread", "sync"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


class Boom(Exception):
    """A user error with a custom signature."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code


def add(a: int, b: int = 0) -> int:
    return a + b


def square(x: int) -> int:
    return x * x


def fail(code: int = 1) -> None:
    raise Boom(code, "failed on purpose")


def stuck_for_good(folder: str) -> None:
    """A process task that says it started, then never ends (a hung read): only its worker's end stops it."""
    (Path(folder) / "started").write_text(str(os.getpid()))
    threading.Event().wait()


def fail_once_the_other_started(folder: str) -> None:
    while not (Path(folder) / "started").exists():
        time.sleep(0.01)
    raise Boom(5, "after its sibling started")


class Cancellable:
    """A task body that signals it started, then waits for the gate while polling
    ``check_cancelled()``; it records whether it saw its cancellation."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.started = threading.Event()
        self.saw_cancellation = threading.Event()

    def __call__(self) -> str:
        self.started.set()
        try:
            for _ in range(1000):  # at most ~10 s
                if self.gate.wait(0.01):
                    return "released"
                mp.check_cancelled()
        except mp.TaskCancelledError:
            self.saw_cancellation.set()
            raise
        raise AssertionError("the test never opened the gate nor cancelled the task")


class Recorder:
    """A task body that records that it ran."""

    def __init__(self) -> None:
        self.ran = threading.Event()

    def __call__(self) -> str:
        self.ran.set()
        return "ran"


# -- submitting and collecting ------------------------------------------------------------


def test_task_group_is_parallel_context() -> None:
    assert mp.TaskGroup is mp.ParallelContext


def test_submit_plain_and_decorated_functions(backend: str) -> None:
    @mp.parallel(backend=backend)
    def decorated(x: int) -> str:
        return f"decorated {x}"

    with mp.ParallelContext(backend=backend) as ctx:
        a = ctx.submit(add, 1, 2)
        b = ctx.submit(decorated, 3)
        c = ctx.submit(add, 4, b=5)
        d = ctx.submit(square, 6)
    assert all(isinstance(h, mp.AsyncHandle) for h in (a, b, c, d))
    assert all(h.done() for h in (a, b, c, d))  # the exit waited for every task
    assert ctx.results() == [3, "decorated 3", 9, 36]
    assert ctx.handles == [a, b, c, d]


@pytest.mark.timeout(20)
def test_submit_and_map_run_a_static_method_object(backend: str) -> None:
    # As read in its class's body (or from vars(cls)): callable since Python 3.10, as the function it holds.
    class Steps:
        @staticmethod
        def double(x: int) -> int:
            return 2 * x

        @mp.parallel
        @staticmethod
        def triple(x: int) -> int:
            return 3 * x

        steps = (double, triple)  # the staticmethod objects themselves, not bound by a lookup

    plain, decorated = Steps.steps
    with mp.ParallelContext(backend=backend) as ctx:
        ctx.submit(plain, 1)
        ctx.submit(func=decorated, args=(2,))
        ctx.map(plain, [3])
    assert ctx.results() == [2, 6, 6]


class Rates:
    """A ``@parallel`` class method, ``@classmethod`` over it: a plain bound method of it from Python 3.13."""

    base = 10

    @classmethod
    @mp.parallel
    def scaled(cls, x: int) -> int:
        return cls.base * x


@pytest.mark.timeout(20)
def test_a_static_method_object_of_a_parallel_class_method_runs_its_plain_function(backend: str) -> None:
    # The group turned a bound method of a @parallel function into the bound function it stands
    # for before it took the function a staticmethod holds: on Python 3.13 such a method, held by
    # a staticmethod (a table of steps), ran as a function returning handles, its tasks' results.
    step = staticmethod(Rates.scaled)
    with mp.ParallelContext(backend=backend) as ctx:
        ctx.submit(step, 1)
        ctx.map(step, [2])
    assert ctx.results() == [10, 20]


@pytest.mark.timeout(20)
def test_a_static_method_object_made_for_one_submit_runs_its_own_function(backend: str) -> None:
    # The group's functions are keyed by id: it kept the function a staticmethod holds, not the
    # staticmethod, whose id the next one made took once it was freed, and that one's submit ran
    # the first one's function.
    def times(k: int) -> Callable[[int], int]:
        return lambda x: k * x

    functions = [times(k) for k in range(20)]
    with mp.ParallelContext(backend=backend) as ctx:
        for function in functions:
            ctx.submit(staticmethod(function), 1)  # freed as the submit returns
    assert ctx.results() == list(range(20))


class Meter:
    """An object with a plain method and a ``@parallel`` one, read anew (bound) at each submit."""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    def read(self, x: int) -> int:
        return self.scale * x

    @mp.parallel
    def read_parallel(self, x: int) -> int:
        return self.scale * x


@pytest.mark.timeout(20)
def test_a_method_read_at_each_submit_is_made_parallel_once_per_instance(backend: str) -> None:
    # Each read of a method makes a new bound method, and the group keyed what it made parallel
    # by its id: one entry per submit, kept to the block's end, each a new parallel function
    # for a plain method (several times a plain function's submit).
    first, second = Meter(1), Meter(10)
    with mp.ParallelContext(backend=backend) as ctx:
        for x in range(5):
            ctx.submit(first.read, x)
            ctx.submit(second.read, x)
            ctx.submit(first.read_parallel, x)
            ctx.submit(Rates.scaled, x)
        assert len(ctx._functions) == 4
    assert ctx.results() == [result for x in range(5) for result in (x, 10 * x, x, 10 * x)]


def test_submit_the_peer_tuple_form(backend: str) -> None:
    def pair(value: Any) -> Any:
        return value

    with mp.ParallelContext(backend=backend) as ctx:
        ctx.submit(add, (1, 2))  # the tuple's items are the arguments
        ctx.submit(add, (5,))
        ctx.submit(pair, ((1, 2),))  # one tuple as the only argument
    assert ctx.results() == [3, 5, (1, 2)]


def test_map_returns_handles_in_item_order(backend: str) -> None:
    with mp.ParallelContext(backend=backend) as ctx:
        handles = ctx.map(square, range(10))
    assert len(handles) == 10
    assert all(isinstance(h, mp.AsyncHandle) for h in handles)
    assert [h.get() for h in handles] == [i * i for i in range(10)]
    assert ctx.results() == [i * i for i in range(10)]


def test_map_passes_a_tuple_item_as_one_argument(backend: str) -> None:
    with mp.ParallelContext(backend=backend) as ctx:
        ctx.map(len, [(1, 2, 3), ("a",), ()])
    assert ctx.results() == [3, 1, 0]


def test_results_inside_the_block_waits_for_the_tasks_so_far(backend: str) -> None:
    with mp.ParallelContext(backend=backend) as ctx:
        ctx.map(square, [1, 2])
        assert ctx.results() == [1, 4]
        ctx.submit(square, 3)
    assert ctx.results() == [1, 4, 9]


def test_an_empty_group() -> None:
    with mp.ParallelContext() as ctx:
        pass
    assert ctx.results() == []
    assert ctx.errors == []


def test_exit_waits_for_every_task(gate: threading.Event) -> None:
    mp.configure_thread_pool(2)
    started = threading.Barrier(3)
    finished: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        if i < 2:
            started.wait(5)  # two tasks certainly run on workers
        assert gate.wait(5)
        total = sum(range(200_000))  # some work left after the gate opens
        with lock:
            finished.append(i)
        return total

    with mp.ParallelContext(backend="thread") as ctx:
        for i in range(6):
            ctx.submit(work, i)
        started.wait(5)
        gate.set()  # the last thing the body does; the tasks still have work to do
    assert all(h.done() for h in ctx.handles)
    assert sorted(finished) == list(range(6))


# -- failures ---------------------------------------------------------------------------------


def test_body_error_cancels_unfinished_tasks_and_propagates(gate: threading.Event) -> None:
    sibling = Cancellable(gate)
    with pytest.raises(KeyError, match="from the body"):
        with mp.ParallelContext(backend="thread") as ctx:
            running = ctx.submit(sibling)
            assert sibling.started.wait(5)
            raise KeyError("from the body")
    assert running.cancelled()
    assert sibling.saw_cancellation.wait(5), "the running task never saw its cancellation"


def test_body_error_propagates_on_every_backend(backend: str) -> None:
    with pytest.raises(KeyError):
        with mp.ParallelContext(backend=backend) as ctx:
            ctx.submit(square, 2)
            raise KeyError("body")


def test_body_error_leaves_queued_tasks_never_run(gate: threading.Event) -> None:
    blockers = hold_the_pool(gate)
    queued = Recorder()
    with pytest.raises(KeyError):
        with mp.ParallelContext(backend="thread") as ctx:
            handle = ctx.submit(queued)
            raise KeyError("body")
    assert handle.cancelled()
    gate.set()
    assert all(b.wait(5) for b in blockers)
    assert not queued.ran.is_set()


def test_task_failure_is_raised_at_exit_as_itself(backend: str) -> None:
    with pytest.raises(Boom) as caught:
        with mp.ParallelContext(backend=backend) as ctx:
            ctx.submit(fail, 5)
    assert caught.value.code == 5
    assert ctx.errors == [caught.value]


def test_task_failure_cancels_a_running_sibling(gate: threading.Event) -> None:
    sibling = Cancellable(gate)
    with pytest.raises(Boom):
        with mp.ParallelContext(backend="thread") as ctx:
            running = ctx.submit(sibling)
            assert sibling.started.wait(5)
            failing = ctx.submit(fail, 2)
    assert failing.status == "failed"
    assert running.cancelled()
    assert sibling.saw_cancellation.wait(5), "the running sibling never saw its cancellation"
    assert len(ctx.errors) == 1 and isinstance(ctx.errors[0], Boom)


def test_task_failure_cancels_a_queued_sibling_that_never_runs(gate: threading.Event) -> None:
    blockers = hold_the_pool(gate)
    queued = Recorder()
    with pytest.raises(Boom):
        with mp.ParallelContext(backend="thread") as ctx:
            failing = ctx.submit(fail, 3)
            sibling = ctx.submit(queued)
            assert failing.wait()  # queued behind the blockers: runs here, inline, and fails
            assert sibling.cancelled()
    gate.set()
    assert all(b.wait(5) for b in blockers)
    assert wait_until_idle(5)
    assert not queued.ran.is_set(), "a sibling queued behind a failed task ran"


def test_a_sibling_queued_behind_a_failure_on_the_same_worker_never_runs() -> None:
    # One worker: it runs the failing task, and the sibling waits in the queue
    # behind it. The group must cancel the sibling before it can start.
    mp.configure_thread_pool(1)
    assert wait_until(
        lambda: mp.get_thread_pool_info()["live_threads"] <= 1
        and mp.get_thread_pool_info()["stuck_threads"] == 0
    ), mp.get_thread_pool_info()
    go = threading.Event()
    queued = Recorder()

    def fail_when_told() -> None:
        assert go.wait(5)
        raise Boom(4, "on the worker")

    with pytest.raises(Boom):
        with mp.ParallelContext(backend="thread") as ctx:
            failing = ctx.submit(fail_when_told)
            sibling = ctx.submit(queued)
            go.set()
            assert failing.wait(5)  # bounded: never runs it inline
    assert sibling.cancelled()
    # Let the worker finish whatever it took on, then look.
    assert wait_until(lambda: mp.get_thread_pool_info()["stuck_threads"] == 0)
    assert not queued.ran.is_set(), "a sibling queued behind a failed task ran"


def test_every_failure_is_on_errors_and_the_first_is_raised(backend: str) -> None:
    with pytest.raises(LookupError) as caught:
        with mp.ParallelContext(backend=backend) as ctx:
            failing = ctx.submit(fail, 6)
            failing.wait(5)
            raise LookupError("the body fails after the task did")
    # the body's error propagates; the task's failure is kept too
    assert len(ctx.errors) == 2
    assert isinstance(ctx.errors[0], Boom) and ctx.errors[0].code == 6
    assert ctx.errors[1] is caught.value


def test_submitting_to_a_failed_group_raises_cancelled(backend: str) -> None:
    with pytest.raises(Boom):
        with mp.ParallelContext(backend=backend) as ctx:
            ctx.submit(fail, 7).wait(5)
            with pytest.raises(mp.TaskCancelledError, match="ctx.errors"):
                ctx.submit(square, 2)
            with pytest.raises(mp.TaskCancelledError):
                ctx.map(square, [1, 2])
    assert len(ctx.handles) == 1


def test_a_body_refused_by_its_failed_group_raises_the_first_failure(backend: str) -> None:
    """A body that submits on after a task failed (a loop of submits) ends with the failure, not the refusal.

    The refusal is the group's own doing: raising it hid the failure behind
    "the group already failed", as often as the failing task ended before the
    loop of submits did, and ``except`` on the task's error missed it.
    """
    with pytest.raises(Boom) as caught:
        with mp.ParallelContext(backend=backend) as ctx:
            ctx.submit(fail, 11).wait(5)
            ctx.submit(square, 2)
    assert caught.value.code == 11
    assert ctx.errors == [caught.value]
    with pytest.raises(Boom):
        with mp.ParallelContext(backend=backend) as ctx:
            ctx.submit(fail, 12).wait(5)
            ctx.map(square, [1, 2])


def fail_from_a_cause(code: int) -> None:
    try:
        raise KeyError(code)
    except KeyError as cause:
        raise Boom(code, "failed on purpose") from cause


def test_the_failure_a_refused_body_raises_keeps_its_cause(backend: str) -> None:
    with pytest.raises(Boom) as caught:
        with mp.ParallelContext(backend=backend) as ctx:
            ctx.submit(fail_from_a_cause, 14).wait(5)
            ctx.submit(square, 2)
    assert isinstance(caught.value.__cause__, KeyError)


class Request:
    """What a reader's frame holds, as a request handler's holds its request."""


def _read_and_swallow(handle: mp.AsyncHandle[Any]) -> weakref.ref[Request]:
    """Read a failed task's error from a frame holding a ``Request``, and let the error go; return a weak reference to it."""
    request = Request()
    try:
        handle.get()
    except Boom:
        pass
    return weakref.ref(request)


def test_the_failure_a_refused_body_raises_lists_no_earlier_readers_frames(backend: str) -> None:
    """The block's end raises the failure from its first traceback, after a refusal too (as without one).

    It was raised as it was: below the block's end, its traceback listed the
    body's last read of it (a ``get()`` whose error the body caught), and kept
    that reader's frame alive with its locals.
    """
    with pytest.raises(Boom) as caught, mp.ParallelContext(backend=backend) as ctx:
        handle = ctx.submit(fail, 15)
        handle.wait(5)
        readers = [_read_and_swallow(handle) for _ in range(2)]
        ctx.submit(square, 2)
    shown = [entry.name for entry in traceback.extract_tb(caught.tb)]
    assert "_read_and_swallow" not in shown, f"the traceback lists an earlier reader: {shown}"
    assert shown[-1] == "fail", shown
    gc.collect()
    assert [reader() for reader in readers] == [None, None], "an earlier reader's frame is kept alive"


def test_a_refusal_by_an_outer_group_fails_the_inner_group_as_the_body_s_error(backend: str) -> None:
    with pytest.raises(Boom) as caught:
        with mp.ParallelContext(backend=backend) as outer:
            outer.submit(fail, 13).wait(5)
            with mp.ParallelContext(backend=backend) as inner:
                outer.submit(square, 2)
    assert caught.value.code == 13
    assert len(inner.errors) == 1 and isinstance(inner.errors[0], mp.TaskCancelledError)
    assert outer.errors == [caught.value]


def test_results_raise_the_first_failure(backend: str) -> None:
    with pytest.raises(Boom):
        with mp.ParallelContext(backend=backend) as ctx:
            ctx.submit(square, 2)
            ctx.submit(fail, 8)
            with pytest.raises(Boom):
                ctx.results()


# -- timeouts ---------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_group_timeout_cancels_the_rest_and_raises(gate: threading.Event) -> None:
    slow = Cancellable(gate)
    with pytest.raises(mp.TaskTimeoutError, match="timed out") as caught:
        with mp.ParallelContext(timeout=0.2, backend="thread") as ctx:
            done = ctx.submit(square, 3)
            running = ctx.submit(slow)
            assert slow.started.wait(5)
            assert done.wait(5)  # finished before the deadline, however slow the machine
    assert isinstance(caught.value, TimeoutError)
    assert done.get() == 9
    assert running.cancelled()
    assert slow.saw_cancellation.wait(5)


@pytest.mark.timeout(20)
def test_group_timeout_does_not_record_its_own_cancellations_as_failures(gate: threading.Event) -> None:
    # As when a task fails: the siblings the group cancels itself are not
    # failures of theirs, so ctx.errors must not hold their TaskCancelledError.
    mp.configure_thread_pool(2)
    first, second = Cancellable(gate), Cancellable(gate)
    with pytest.raises(mp.TaskTimeoutError):
        with mp.ParallelContext(timeout=0.1, backend="thread") as ctx:
            ctx.submit(first)
            ctx.submit(second)
            assert first.started.wait(5) and second.started.wait(5)
    cancelled = [e for e in ctx.errors if isinstance(e, mp.TaskCancelledError)]
    assert cancelled == [], f"ctx.errors after a group timeout: {ctx.errors!r}"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("asked", ["after the block", "inside the block"])
def test_results_of_a_group_that_timed_out_raise_its_timeout(gate: threading.Event, asked: str) -> None:
    # results() raises what leaving the block raised: the group's TaskTimeoutError, not
    # the TaskCancelledError of the first task its timeout cancelled.
    slow = Cancellable(gate)
    with pytest.raises(mp.TaskTimeoutError) as caught, mp.ParallelContext(timeout=0.1, backend="thread") as ctx:
        done = ctx.submit(square, 3)
        ctx.submit(slow)
        assert slow.started.wait(5) and done.wait(5)
        if asked == "inside the block":
            try:
                ctx.results()  # meets the deadline: raises the timeout, as the block's end does
            except mp.TaskTimeoutError:
                pass
            with pytest.raises(mp.TaskTimeoutError) as again:
                ctx.results()  # every task has ended now: nothing left to wait for
            assert "its 1 unfinished task(s) were cancelled" in str(again.value)
    with pytest.raises(mp.TaskTimeoutError) as asked_after:
        ctx.results()
    assert str(asked_after.value) == str(caught.value)
    assert slow.saw_cancellation.wait(5)


GROUP_TIMEOUT_MET_BY = ["the block's end", "results()", "submit", "map", "another thread's submit"]


def _raised_by_a_submit_on_another_thread(ctx: mp.ParallelContext) -> BaseException:
    """What ``ctx.submit(square, 2)`` raised on a thread of its own, given back to the test's thread; it must raise."""
    told: list[BaseException] = []

    def give() -> None:
        try:
            ctx.submit(square, 2)
        except BaseException as error:  # noqa: BLE001  # (given back to the test's thread)
            told.append(error)

    giver = threading.Thread(target=give)
    giver.start()
    giver.join(10)
    assert len(told) == 1, told
    return told[0]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("met_by", GROUP_TIMEOUT_MET_BY)
def test_the_groups_own_timeout_is_no_failure_wherever_it_is_raised(gate: threading.Event, met_by: str) -> None:
    # Met by the block's end, the group's timeout left ctx.errors empty: it is the
    # group's own ending, not a task's failure. Met by ctx.results() or a submit (or
    # ctx.map) waiting for a slot inside the block, it left the block as the body's
    # error, and was kept in ctx.errors as a failure. Wherever met, the block raises
    # the group's TaskTimeoutError and ctx.errors holds no failure.
    mp.configure_thread_pool(2)
    slow = Cancellable(gate)
    timed_out = pytest.raises(mp.TaskTimeoutError, match="the group timed out after 0.2 s")
    with timed_out as caught, mp.ParallelContext(timeout=0.2, max_concurrent=1, backend="thread") as ctx:
        ctx.submit(slow)  # holds the group's one slot past its timeout
        assert slow.started.wait(5)
        if met_by == "results()":
            ctx.results()
        elif met_by == "submit":
            ctx.submit(square, 2)  # no slot until the deadline
        elif met_by == "map":
            ctx.map(square, [2, 3])
        elif met_by == "another thread's submit":
            raise _raised_by_a_submit_on_another_thread(ctx)  # the body raises what its thread was told
    assert ctx.errors == [], f"the group's own timeout, met by {met_by}, was kept as a failure: {ctx.errors!r}"
    assert slow.saw_cancellation.wait(5)
    if met_by != "the block's end":
        with pytest.raises(mp.TaskTimeoutError) as asked_after:
            ctx.results()
        assert str(asked_after.value) == str(caught.value)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("met_by", ["results(), caught", "another thread's submit"])
@pytest.mark.parametrize("then", ["submit", "map"])
def test_a_submit_refused_after_the_groups_timeout_gives_way_to_it(
    gate: threading.Event, met_by: str, then: str
) -> None:
    # The timeout met where the body does not end (results() caught, a submit on another
    # thread), the body's next submit is refused with TaskCancelledError ("the group timed
    # out ... takes no new tasks"). Left to end the block (a loop of submits), that refusal
    # was kept in ctx.errors as the body's failure and raised instead of the group's
    # timeout; a refusal after a failure gives way to the failure, this one to the timeout.
    mp.configure_thread_pool(2)
    slow = Cancellable(gate)
    timed_out = pytest.raises(mp.TaskTimeoutError, match="the group timed out after 0.2 s")
    with timed_out as caught, mp.ParallelContext(timeout=0.2, max_concurrent=1, backend="thread") as ctx:
        ctx.submit(slow)  # holds the group's one slot past its timeout
        assert slow.started.wait(5)
        if met_by == "results(), caught":
            with pytest.raises(mp.TaskTimeoutError):
                ctx.results()
        else:
            told = _raised_by_a_submit_on_another_thread(ctx)
            assert isinstance(told, mp.TaskTimeoutError), told
        if then == "submit":
            for n in range(3):
                ctx.submit(square, n)
        else:
            ctx.map(square, [1, 2])
    assert ctx.errors == [], f"a refusal after the group's timeout was kept as a failure: {ctx.errors!r}"
    shown = "".join(traceback.format_exception(caught.type, caught.value, caught.tb))
    assert "takes no new tasks" not in shown, f"the refusal is shown as what the timeout was raised in handling: {shown}"
    with pytest.raises(mp.TaskTimeoutError) as asked_after:
        ctx.results()
    assert str(asked_after.value) == str(caught.value)


@pytest.mark.timeout(20)
def test_an_inner_groups_timeout_is_a_failure_of_the_outer_group(gate: threading.Event) -> None:
    # Only a group's own timeout is not its failure: an inner group's, raised out of
    # the outer block, is the outer body's error, as any other.
    slow = Cancellable(gate)
    inner = mp.ParallelContext(timeout=0.1, backend="thread")
    with pytest.raises(mp.TaskTimeoutError) as caught, mp.ParallelContext(backend="thread") as outer, inner:
        inner.submit(slow)
        assert slow.started.wait(5)
    assert outer.errors == [caught.value]
    assert inner.errors == []


@pytest.mark.timeout(20)
def test_group_timeout_leaves_queued_tasks_never_run(gate: threading.Event) -> None:
    blockers = hold_the_pool(gate)
    queued = Recorder()
    with pytest.raises(mp.TaskTimeoutError):
        with mp.ParallelContext(timeout=0.1, backend="thread") as ctx:
            handle = ctx.submit(queued)
    assert handle.cancelled()
    gate.set()
    assert all(b.wait(5) for b in blockers)
    assert not queued.ran.is_set()


_AFTER_THE_BLOCK = r"this ParallelContext's with block has already ended .* start a new group"


@pytest.mark.parametrize(
    "give",
    [
        lambda ctx, task: ctx.submit(task),
        lambda ctx, task: ctx.submit(func=task, args=()),
        lambda ctx, task: ctx.map(lambda _: task(), [1]),
        lambda ctx, task: ctx.submit(mp.parallel(task)),
        lambda ctx, task: ctx.submit(mp.parallel(task, max_concurrent=1)),
    ],
    ids=["submit", "submit-0.2", "map", "parallel-function", "limited-function"],
)
@pytest.mark.parametrize("max_concurrent", [None, 2], ids=["unbounded", "max_concurrent"])
def test_a_group_whose_block_ended_refuses_new_tasks(
    backend: str, max_concurrent: int | None, give: Any
) -> None:
    # Taken, a task given after the block ran outside any wait: its error reached no one.
    late = Recorder()
    with mp.ParallelContext(backend=backend, max_concurrent=max_concurrent) as ctx:
        ctx.submit(add, 1, 2)
    with pytest.raises(RuntimeError, match=_AFTER_THE_BLOCK) as refused:
        give(ctx, late)
    assert "1 task(s)" in str(refused.value)
    assert wait_until_idle(5)
    assert not late.ran.is_set(), "a task given after the block ran"
    assert ctx.results() == [3]  # the group still tells what its block did
    assert len(ctx.handles) == 1 and not ctx.errors


def test_a_group_whose_block_ended_cannot_be_entered_again() -> None:
    with mp.ParallelContext() as ctx:
        ctx.submit(add, 1)
    with pytest.raises(RuntimeError, match=_AFTER_THE_BLOCK), ctx:
        pass
    assert ctx.results() == [1]


@pytest.mark.timeout(60)
def test_a_task_given_just_after_the_blocks_last_wait_is_waited_for_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another thread's submit that gets in after the wait found every task ended, and before
    # the group closed, is taken: the block must wait for it as well, not leave it unwatched.
    late: list[mp.AsyncHandle[int]] = []
    with mp.ParallelContext(backend="thread") as ctx:
        ctx.submit(add, 1)
        wait_all = ctx._wait_all

        def wait_then_give(waited: int = 0) -> int:
            waited = wait_all(waited)
            if not late:  # once, on another thread, as the wait returns
                giver = threading.Thread(target=lambda: late.append(ctx.submit(add, 2)))
                giver.start()
                giver.join(30)
            return waited

        monkeypatch.setattr(ctx, "_wait_all", wait_then_give)
    assert len(late) == 1 and ctx.handles == [ctx.handles[0], late[0]]
    assert late[0].done(), "the block ended before a task it took"
    assert ctx.results() == [1, 2]


@pytest.mark.timeout(60)
def test_a_submit_under_way_as_the_block_ends_is_waited_for_not_refused_after_its_task_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another thread's submit that passed the group's check before the block's last wait,
    # and appended its task after the group closed, was refused with RuntimeError once
    # its task had been made: the task ran all the same (here to its end, inline), and
    # the caller was told it was not taken. The block now waits for a submit under way.
    inside, go = threading.Event(), threading.Event()
    given: list[Any] = []

    def late() -> str:
        inside.set()
        go.wait(30)
        return "late"

    def give(ctx: mp.ParallelContext) -> None:
        try:
            given.append(ctx.submit(late))
        except BaseException as error:  # noqa: BLE001  # (told below, in the test's thread)
            given.append(error)

    with mp.ParallelContext(backend="sync") as ctx:  # (sync: the task runs in the giver's submit)
        ctx.submit(add, 1)
        giver = threading.Thread(target=give, args=(ctx,))
        giver.start()
        assert inside.wait(30)
        wait_all = ctx._wait_all

        def wait_then_let_the_task_run(waited: int = 0) -> int:
            waited = wait_all(waited)
            go.set()  # as the wait returns, the task goes on, and its submit after it
            return waited

        monkeypatch.setattr(ctx, "_wait_all", wait_then_let_the_task_run)
    giver.join(30)
    assert len(given) == 1 and isinstance(given[0], mp.AsyncHandle), f"the submit was refused: {given[0]!r}"
    assert given[0].done(), "the block ended before a task it took"
    assert ctx.results() == [1, "late"]


@pytest.mark.timeout(60)
def test_the_wait_for_a_submit_under_way_ends_at_the_groups_timeout() -> None:
    # The block waits for another thread's submit still making its task, but no longer
    # than the group's timeout: then it times out as for an unfinished task.
    inside, go = threading.Event(), threading.Event()
    given: list[mp.AsyncHandle[str]] = []

    def late() -> str:
        inside.set()
        go.wait(30)
        return "late"

    giver = threading.Thread(target=lambda: given.append(ctx.submit(late)))
    try:
        with pytest.raises(mp.TaskTimeoutError, match="the group timed out"):  # noqa: SIM117
            with mp.ParallelContext(backend="sync", timeout=0.2) as ctx:
                giver.start()
                assert inside.wait(30)
    finally:
        go.set()
        giver.join(30)
    assert ctx.handles == given  # taken as the group ended: cancelled (here it had ended), not lost


@pytest.mark.timeout(30)
def test_a_ctrl_c_as_a_submit_gives_its_count_back_leaves_the_blocks_end_free(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ctrl-C that lands as a submit gives back its count (at the call's entry, as
    # CPython raises a pending one) left it counted as under way: the block, its
    # interrupt caught, ended waiting for that submit, on its own thread, for good.
    made_one = mp.ParallelContext._made_one_locked
    interrupted: list[bool] = []

    def interrupted_once(ctx: mp.ParallelContext, *args: Any) -> None:
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        made_one(ctx, *args)

    monkeypatch.setattr(mp.ParallelContext, "_made_one_locked", interrupted_once)
    with mp.ParallelContext(backend=backend) as ctx:
        with pytest.raises(KeyboardInterrupt):
            ctx.submit(abs, -1)
        ctx.submit(abs, -2)
    assert interrupted == [True]
    assert ctx.results() == [1, 2]  # the interrupted submit's task was taken, and waited for


@pytest.mark.timeout(60)
@pytest.mark.parametrize("failure", ["body-error", "ctrl-c", "task-failure"])
def test_a_failed_group_ends_without_waiting_for_a_submit_still_waiting_for_a_slot(
    backend: str, failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another thread's submit waits for the one global slot, held by a task outside the
    # group until the block has ended. The group fails (its body raises, or a task of
    # it fails): its end waited for that submit, that is for the slot, though the task
    # would only be cancelled as made; here it waited for good (the slot frees after
    # the block). A failed group ends at once. (One that ends well does not wait for such
    # a submit either: test_a_block_that_ends_well_does_not_wait_for_a_submit_still_waiting_for_a_slot.)
    mp.set_max_concurrent_tasks(1)
    holding, fail_now, release = (threading.Event() for _ in range(3))
    groups: list[mp.ParallelContext] = []

    def hold() -> None:  # the slot's holder, outside the group; it fails the group from inside a task
        holding.set()
        if fail_now.wait(30) and failure == "task-failure":
            groups[0].submit(fail, 3)  # (from a task: no wait for a slot)
        release.wait(20)

    holder = threading.Thread(target=lambda: mp.parallel(backend="sync")(hold)())
    holder.start()
    assert holding.wait(30)
    given: list[Any] = []

    def give() -> None:
        try:
            given.append(groups[0].submit(add, 1))
        except BaseException as error:  # noqa: BLE001  # (told below, in the test's thread)
            given.append(error)

    giver = threading.Thread(target=give)
    waiting = threading.Event()
    sleep = _interruptible.wait

    def sleep_telling(condition: threading.Condition, timeout: float | None) -> None:
        if threading.current_thread() is giver:  # asleep in its wait: it found no slot free (see SlotWaits)
            waiting.set()
        sleep(condition, timeout)

    monkeypatch.setattr(_interruptible, "wait", sleep_telling)
    raised = KeyboardInterrupt if failure == "ctrl-c" else Boom
    try:
        with pytest.raises(raised), mp.ParallelContext(backend=backend) as ctx:
            groups.append(ctx)
            giver.start()
            assert waiting.wait(30)
            if failure == "task-failure":
                fail_now.set()
                assert wait_until(lambda: bool(ctx.errors), 30)
            elif failure == "body-error":
                raise Boom(2, "the body failed")
            else:
                raise KeyboardInterrupt
        assert holder.is_alive(), "the failed group's end waited for the slot its submit under way waited for"
    finally:
        fail_now.set()
        release.set()
        holder.join(30)
        giver.join(30)
    assert len(given) == 1
    # Refused as the group failed, its wait for the slot ended: no task made (made once the
    # slot came, it was cancelled as it joined the group; on "sync" it ran to its end first).
    assert isinstance(given[0], mp.TaskCancelledError), given[0]
    assert wait_until(lambda: _runtime.global_limiter.in_flight == 0, 30), _runtime.global_limiter.in_flight


@pytest.fixture
def previous_limit() -> Any:
    """Put ``mp.set_max_concurrent_tasks`` back as it was before the test."""
    limit = _runtime.global_limiter.limit
    yield
    mp.set_max_concurrent_tasks(limit)


class SlotWaits:
    """One slot of a limit, held by a task until ``release``; a giver thread's submit to a group waits for it.

    ``limit``: ``"global"`` (``mp.set_max_concurrent_tasks(1)``), ``"function"``
    (the submitted function's ``max_concurrent=1``) or ``"group"`` (the group's
    ``max_concurrent=1``: the holder is the group's first task, see
    :meth:`hold_in`). The holder may fail the group from inside its task
    (``fail_now``), which no slot wait holds up. ``late`` is what the giver
    submits: it records whether it ran. ``waiting`` is set once the giver
    sleeps in its wait for the slot.
    """

    def __init__(self, limit: str, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.limit = limit
        self.holding, self.release, self.fail_now, self.waiting = (threading.Event() for _ in range(4))
        self.late = Recorder()
        self.given: list[Any] = []
        self.group: mp.ParallelContext | None = None
        self.holder: threading.Thread | None = None
        self.giver = threading.Thread(target=self._give)
        if limit == "global":
            mp.set_max_concurrent_tasks(1)
        limited = mp.parallel(max_concurrent=1, backend=backend)(self._work)
        self.submitted: tuple[Callable[..., Any], ...] = (limited, False) if limit == "function" else (self.late,)
        sleep = _interruptible.wait

        # Told as the giver sleeps in its wait, not as it asks for a slot: till it has
        # found none free, a slot freed meanwhile (the test letting the holder go) was
        # taken as free, with no wait, and the submit made its task.
        def sleep_telling(condition: threading.Condition, timeout: float | None) -> None:
            if threading.current_thread() is self.giver:
                self.waiting.set()
            sleep(condition, timeout)

        monkeypatch.setattr(_interruptible, "wait", sleep_telling)
        if limit != "group":  # (on its own thread: on "sync" the holder runs in its submit)
            work = limited if limit == "function" else mp.parallel(backend=backend)(self._work)
            self.holder = threading.Thread(target=lambda: work(True).get(60))  # alive while the slot is held
            self.holder.start()
            assert self.holding.wait(30)

    def _work(self, hold: bool) -> str:
        if not hold:
            return self.late()
        self.holding.set()
        if self.fail_now.wait(30) and self.group is not None:
            self.group.submit(fail, 3)  # (from a task: admitted over the limits)
        self.release.wait(30)
        return "held"

    def _give(self) -> None:
        assert self.group is not None
        try:
            self.given.append(self.group.submit(*self.submitted))
        except BaseException as error:  # noqa: BLE001  # (told in the test's thread)
            self.given.append(error)

    def give_in(self, ctx: mp.ParallelContext) -> None:
        """Start the giver's submit to ``ctx`` (holding the group's slot first, for that limit); return as it waits."""
        self.group = ctx
        if self.limit == "group":
            ctx.submit(mp.parallel(backend="thread")(self._work), True)
            assert self.holding.wait(30)
        self.giver.start()
        assert self.waiting.wait(30)

    def let_go(self) -> None:
        """End the holder's task: its slot frees."""
        self.group = None  # (the holder, let go, fails no group)
        self.fail_now.set()
        self.release.set()

    def end(self) -> None:
        self.let_go()
        for thread in (self.holder, self.giver):
            if thread is not None and thread.ident is not None:
                thread.join(30)


def held_until(slot: SlotWaits, inside: threading.Event, closing: threading.Event) -> Callable[[], str]:
    """``slot.late``, as a task that tells it runs (``inside``), then waits for ``closing``."""

    def late() -> str:
        inside.set()
        assert closing.wait(30)
        return slot.late()

    return late


def close_as_the_end_waits(ctx: mp.ParallelContext, closing: threading.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set ``closing`` as the block's end begins to wait for a submit under way."""
    wait_for_submits = ctx._wait_for_submits_locked

    def tell_then_wait() -> bool:
        closing.set()
        return wait_for_submits()

    monkeypatch.setattr(ctx, "_wait_for_submits_locked", tell_then_wait)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("failure", ["body-error", "task-failure"])
@pytest.mark.parametrize("limit", ["global", "function", "group"])
def test_a_submit_waiting_for_a_slot_as_its_group_fails_makes_no_task(
    backend: str, limit: str, failure: str, monkeypatch: pytest.MonkeyPatch, previous_limit: None
) -> None:
    # Another thread's submit waits for a slot as the group fails. It waited on for the
    # slot, made its task, and only then had it cancelled as it joined the failed group;
    # on "sync" (or a free worker) the task ran first. The failure now ends the wait: the
    # submit is refused as any after the failure is, and runs nothing.
    slot = SlotWaits(limit, backend, monkeypatch)
    try:
        max_concurrent = 1 if limit == "group" else None
        with pytest.raises(Boom), mp.ParallelContext(backend=backend, max_concurrent=max_concurrent) as ctx:
            slot.give_in(ctx)
            if failure == "body-error":
                raise Boom(2, "the body failed")
            slot.fail_now.set()
            assert wait_until(lambda: bool(ctx.errors), 30)
        slot.giver.join(30)
        assert not slot.giver.is_alive(), "the submit waited for its slot after the group failed"
    finally:
        slot.end()
    assert len(slot.given) == 1
    assert isinstance(slot.given[0], mp.TaskCancelledError), slot.given[0]
    assert "the group already failed" in str(slot.given[0])
    assert not slot.late.ran.is_set(), "the refused submit's task ran"
    assert wait_until(lambda: _runtime.global_limiter.in_flight == 0, 30), _runtime.global_limiter.in_flight


@pytest.mark.timeout(120)
@pytest.mark.parametrize("limit", ["global", "function"])
def test_a_block_that_ends_well_does_not_wait_for_a_submit_still_waiting_for_a_slot(
    backend: str, limit: str, monkeypatch: pytest.MonkeyPatch, previous_limit: None
) -> None:
    # Another thread's submit waits for a slot of a limit the group does not own, held by
    # a task that waits for what comes after the block: the block's end waited for that
    # submit, that is for the slot, for good. It ends now, and the submit, whose task was
    # not made, is refused as one after the block's end is.
    slot = SlotWaits(limit, backend, monkeypatch)
    try:
        with mp.ParallelContext(backend=backend) as ctx:
            slot.give_in(ctx)
        assert not slot.release.is_set() and slot.holder is not None and slot.holder.is_alive(), (
            "the block's end waited for the slot of a submit still waiting for it"
        )
        slot.giver.join(30)
        assert not slot.giver.is_alive(), "the submit waited for its slot after the block ended"
    finally:
        slot.end()
    assert len(slot.given) == 1
    assert isinstance(slot.given[0], RuntimeError), slot.given[0]
    assert re.search(_AFTER_THE_BLOCK, str(slot.given[0])), slot.given[0]
    assert not slot.late.ran.is_set(), "the refused submit's task ran"
    assert ctx.handles == []
    assert wait_until(lambda: _runtime.global_limiter.in_flight == 0, 30), _runtime.global_limiter.in_flight


@pytest.mark.timeout(120)
def test_a_submit_whose_slot_comes_as_the_block_ends_is_refused_and_gives_the_slot_back(
    backend: str, monkeypatch: pytest.MonkeyPatch, previous_limit: None
) -> None:
    # The slot comes to another thread's submit as the block ends, before the submit
    # tells the group its wait ended: the block ends without it, and the submit, seeing
    # that, gives the slot back and refuses; its task is never made.
    slot = SlotWaits("global", backend, monkeypatch)
    got_the_slot, closed = threading.Event(), threading.Event()
    try:
        with mp.ParallelContext(backend=backend) as ctx:
            slot_wait_ends = ctx._slot_wait_ends

            def tell_once_closed(limiter: Limiter) -> None:
                if threading.current_thread() is slot.giver:
                    got_the_slot.set()
                    assert closed.wait(30)
                slot_wait_ends(limiter)

            monkeypatch.setattr(ctx, "_slot_wait_ends", tell_once_closed)
            slot.give_in(ctx)
            slot.let_go()
            assert got_the_slot.wait(30)
            assert _runtime.global_limiter.in_flight == 1  # the giver's now
        closed.set()
        slot.giver.join(30)
    finally:
        closed.set()
        slot.end()
    assert len(slot.given) == 1 and isinstance(slot.given[0], RuntimeError), slot.given
    assert not slot.late.ran.is_set() and ctx.handles == []
    assert wait_until(lambda: _runtime.global_limiter.in_flight == 0, 30), _runtime.global_limiter.in_flight


@pytest.mark.timeout(120)
def test_a_submit_whose_slot_came_before_the_block_ends_is_waited_for(
    monkeypatch: pytest.MonkeyPatch, previous_limit: None
) -> None:
    # The slot came first: the submit, making its task (inline, on "sync"), is waited
    # for as the block ends, and its task is the group's, not lost.
    slot = SlotWaits("global", "sync", monkeypatch)
    inside, closing = threading.Event(), threading.Event()
    slot.submitted = (held_until(slot, inside, closing),)
    try:
        with mp.ParallelContext(backend="sync") as ctx:
            slot.give_in(ctx)
            slot.let_go()
            assert inside.wait(30)
            close_as_the_end_waits(ctx, closing, monkeypatch)
        slot.giver.join(30)
    finally:
        closing.set()
        slot.end()
    assert len(slot.given) == 1 and isinstance(slot.given[0], mp.AsyncHandle), slot.given
    assert ctx.handles == slot.given and slot.given[0].done(), "the block ended before a task it took"
    assert ctx.results() == ["ran"]


@pytest.mark.timeout(120)
def test_a_submit_interrupted_in_its_wait_for_a_slot_leaves_no_wait_behind(
    monkeypatch: pytest.MonkeyPatch, previous_limit: None
) -> None:
    # A Ctrl-C (here raised where the wait sleeps) ends a submit's wait for a slot: it
    # takes nothing, and the group forgets the wait, so that the block's end waits for
    # that thread's next submit, which got its slot (here still making its task, inline).
    slot = SlotWaits("global", "sync", monkeypatch)
    interrupted, inside, closing = threading.Event(), threading.Event(), threading.Event()
    given: list[Any] = []
    sleep = _interruptible.wait

    def interrupted_once(condition: threading.Condition, timeout: float | None) -> None:
        if threading.current_thread() is slot.giver and not interrupted.is_set():
            interrupted.set()
            raise KeyboardInterrupt
        sleep(condition, timeout)

    late = held_until(slot, inside, closing)

    def give_twice(ctx: mp.ParallelContext) -> None:
        try:
            ctx.submit(slot.late)
        except BaseException as error:  # noqa: BLE001  # (told below, in the test's thread)
            given.append(error)
        assert wait_until(lambda: _runtime.global_limiter.in_flight == 0, 30)
        given.append(ctx.submit(late))

    monkeypatch.setattr(_interruptible, "wait", interrupted_once)
    try:
        with mp.ParallelContext(backend="sync") as ctx:
            slot.giver = threading.Thread(target=give_twice, args=(ctx,))
            slot.giver.start()
            assert interrupted.wait(30)
            slot.let_go()
            assert inside.wait(30)
            close_as_the_end_waits(ctx, closing, monkeypatch)
        slot.giver.join(30)
    finally:
        closing.set()
        slot.end()
    assert len(given) == 2 and isinstance(given[0], KeyboardInterrupt), given
    assert ctx.handles == given[1:] and given[1].done(), "the block ended before the task it took"
    assert ctx.results() == ["ran"]
    assert ctx._slot_waits == {} and ctx._making == {}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("met_by", ["the block's end", "another thread"])
@pytest.mark.parametrize("limit", ["global", "function", "group"])
def test_a_submit_waiting_for_a_slot_as_the_group_times_out_raises_the_timeout(
    limit: str, met_by: str, monkeypatch: pytest.MonkeyPatch, previous_limit: None
) -> None:
    # A submit waits for a slot as the group's timeout passes, met first by another of the
    # group's waits (the block's end, or ctx.results() on another thread), which woke it:
    # it raised TaskCancelledError ("takes no new tasks"), as a submit made after the
    # timeout does, and made by the body, the block raised that, not the timeout, and
    # kept it in ctx.errors as a failure. It raises the group's TaskTimeoutError, as when
    # its own wait meets the deadline first (here pushed back: the other wait meets it).
    release, holding, waiting = threading.Event(), threading.Event(), threading.Event()

    def hold(wait: bool = True) -> int:
        if wait:
            holding.set()
            release.wait(30)
        return 1

    limited = mp.parallel(backend="thread", max_concurrent=1)(hold)
    outside: mp.AsyncHandle[int] | None = None
    if limit == "global":
        mp.set_max_concurrent_tasks(2)  # one for the task outside, one for the group's
    if limit != "group":
        outside = (limited if limit == "function" else mp.parallel(backend="thread")(hold))()
        assert holding.wait(30)
        holding.clear()
    submitted: tuple[Any, ...] = (limited, False) if limit == "function" else (add, 1)
    waiter: list[threading.Thread] = []
    given: list[Any] = []
    acquire = Limiter.acquire

    def acquire_late(limiter: Limiter, deadline: float | None = None, *args: Any) -> bool:
        if waiter and threading.current_thread() is waiter[0] and deadline is not None:
            deadline += 3600  # its own wait meets the timeout last
        return acquire(limiter, deadline, *args)

    def give(ctx: mp.ParallelContext) -> None:
        try:
            given.append(ctx.submit(*submitted))
        except BaseException as error:  # noqa: BLE001  # (told below, in the test's thread)
            given.append(error)

    def collect(ctx: mp.ParallelContext) -> None:
        assert waiting.wait(30)
        with pytest.raises(mp.TaskTimeoutError):
            ctx.results()
        collected.set()

    monkeypatch.setattr(Limiter, "acquire", acquire_late)
    other: threading.Thread | None = None
    collected = threading.Event()
    try:
        timed_out = pytest.raises(mp.TaskTimeoutError, match="the group timed out after 0.5 s")
        with timed_out, mp.ParallelContext(timeout=0.5, max_concurrent=1 if limit == "group" else None) as ctx:
            slot_wait_begins = ctx._slot_wait_begins

            def tell_it_waits(limiter: Limiter) -> None:
                slot_wait_begins(limiter)
                if waiter and threading.current_thread() is waiter[0]:
                    waiting.set()

            monkeypatch.setattr(ctx, "_slot_wait_begins", tell_it_waits)
            held = ctx.submit(mp.parallel(backend="thread")(hold))  # runs past the timeout
            assert holding.wait(30)
            if met_by == "another thread":  # the body's own submit waits; ctx.results() meets the timeout
                waiter.append(threading.current_thread())
                other = threading.Thread(target=collect, args=(ctx,))
                other.start()
                give(ctx)
            else:  # another thread's submit waits; the block's end meets the timeout
                waiter.append(threading.Thread(target=give, args=(ctx,)))
                waiter[0].start()
                assert waiting.wait(30)
            if given and isinstance(given[0], BaseException):
                raise given[0]
        if met_by == "the block's end":
            waiter[0].join(30)
    finally:
        release.set()
        if other is not None:
            other.join(30)
    assert met_by == "the block's end" or collected.is_set(), "ctx.results() did not meet the timeout"
    assert len(given) == 1 and isinstance(given[0], mp.TaskTimeoutError), given
    assert not any(isinstance(error, mp.TaskCancelledError) for error in ctx.errors), ctx.errors
    assert ctx.handles == [held] and held.cancelled()
    if outside is not None:
        assert outside.get(30) == 1
    assert wait_until(lambda: _runtime.global_limiter.in_flight == 0, 30), _runtime.global_limiter.in_flight
    assert limited(False).get(30) == 1 and mp.parallel(backend="thread")(hold)(False).get(30) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limit", ["global", "group"])
def test_a_timeout_met_by_another_threads_submit_is_raised_by_the_block_too(limit: str) -> None:
    # Another thread's submit waits for the one slot, held by a task of the group, past
    # the group's timeout: it cancels the group's tasks and raises TaskTimeoutError, to
    # that thread. The block then found every task ended (cancelled) and ended without
    # an error, as if they had all succeeded: it raises the group's timeout too.
    release = threading.Event()
    if limit == "global":
        mp.set_max_concurrent_tasks(1)
    given: list[BaseException] = []

    def give(ctx: mp.ParallelContext) -> None:
        try:
            ctx.submit(add, 1)
        except BaseException as error:  # noqa: BLE001  # (told below, in the test's thread)
            given.append(error)

    try:
        timed_out = pytest.raises(mp.TaskTimeoutError, match=r"the group timed out after 0.3 s; its 1 unfinished task")
        with timed_out, mp.ParallelContext(timeout=0.3, max_concurrent=1 if limit == "group" else None) as ctx:
            held = ctx.submit(release.wait, 30)
            giver = threading.Thread(target=give, args=(ctx,))
            giver.start()
            giver.join(30)
            assert len(given) == 1 and isinstance(given[0], mp.TaskTimeoutError), given
    finally:
        release.set()
    assert held.cancelled()
    assert wait_until(lambda: _runtime.global_limiter.in_flight == 0, 30), _runtime.global_limiter.in_flight


@pytest.mark.timeout(20)
def test_a_task_still_running_after_the_group_timed_out_cannot_add_tasks(gate: threading.Event) -> None:
    # As after a failure: the group had cancelled its tasks and raised, and a task
    # of its that ran on (it had not polled check_cancelled yet) added one that ran
    # after the block, which no one waited for.
    started, ended = threading.Event(), threading.Event()
    late = Recorder()
    refusals: list[mp.TaskCancelledError] = []

    def parent(ctx: mp.ParallelContext) -> None:
        started.set()
        try:
            assert gate.wait(10)  # busy as the group times out
            ctx.submit(late)
        except mp.TaskCancelledError as refused:
            refusals.append(refused)
        finally:
            ended.set()

    with pytest.raises(mp.TaskTimeoutError):
        with mp.ParallelContext(timeout=0.2, backend="thread") as ctx:
            ctx.submit(parent, ctx)
            assert started.wait(5)
    gate.set()
    assert ended.wait(10)
    assert wait_until_idle(5)
    assert not late.ran.is_set(), "a task added after the group timed out ran"
    assert len(refusals) == 1 and "timed out" in str(refusals[0])
    assert len(ctx.handles) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["timeout", "failure"])
def test_a_process_task_a_group_cancelled_gives_up_its_worker(ending: str, tmp_path: Path) -> None:
    # Cancelled, a running process task went on to its end, or for good: its worker
    # stayed busy after the group had ended, and the pool's next tasks waited for it.
    mp.configure_process_pool(2)
    stopped = mp.get_process_pool_info()["worker_restart_reasons"].get("stopped", 0)
    with pytest.raises(mp.TaskTimeoutError if ending == "timeout" else Boom):
        with mp.ParallelContext(backend="process", timeout=0.5 if ending == "timeout" else None) as ctx:
            stuck = ctx.submit(stuck_for_good, str(tmp_path))
            if ending == "failure":
                ctx.submit(fail_once_the_other_started, str(tmp_path))
            assert wait_until(lambda: (tmp_path / "started").exists(), 30)  # it runs as the group ends
    assert stuck.cancelled()
    # Its worker is replaced, as a map's stopped chunk's is: no incident for health().
    assert wait_until(lambda: mp.get_process_pool_info()["worker_restart_reasons"].get("stopped", 0) == stopped + 1, 30)
    assert mp.get_process_pool_info()["restarts_in_window"] == 0
    pid = int((tmp_path / "started").read_text())
    assert pid not in mp.get_process_pool_info()["worker_pids"]


def test_group_timeout_not_reached(backend: str) -> None:
    with mp.ParallelContext(timeout=30, backend=backend) as ctx:
        ctx.map(square, range(5))
    assert ctx.results() == [0, 1, 4, 9, 16]


@pytest.mark.timeout(20)
def test_a_group_whose_tasks_all_ended_does_not_time_out_past_its_deadline() -> None:
    """Past the deadline, nothing is left to cancel: the block exits and results() returns."""
    with mp.ParallelContext(timeout=0, backend="sync") as ctx:  # each task ends inside submit()
        ctx.map(square, range(3))
    assert ctx.results() == [0, 1, 4]


# -- nesting ------------------------------------------------------------------------------------


def test_groups_nest_inside_groups(backend: str) -> None:
    with mp.ParallelContext(backend=backend) as outer:
        outer.submit(square, 2)
        with mp.ParallelContext(backend=backend) as inner:
            inner.map(square, [3, 4])
        outer.submit(add, *inner.results())
    assert inner.results() == [9, 16]
    assert outer.results() == [4, 25]


def test_an_inner_failure_fails_the_outer_group(gate: threading.Event) -> None:
    sibling = Cancellable(gate)
    with pytest.raises(Boom):
        with mp.ParallelContext(backend="thread") as outer:
            running = outer.submit(sibling)
            assert sibling.started.wait(5)
            with mp.ParallelContext(backend="thread") as inner:
                inner.submit(fail, 9)
    assert len(inner.errors) == 1
    assert running.cancelled()
    assert sibling.saw_cancellation.wait(5)


@pytest.mark.parametrize("threads", [1, 2])
def test_groups_nest_inside_tasks(threads: int) -> None:
    # More outer tasks than threads, each waiting for its own group: waiting runs
    # queued tasks inline, so this cannot deadlock even on one thread.
    mp.configure_thread_pool(threads)

    @mp.parallel(backend="thread")
    def fan_out(n: int) -> int:
        with mp.ParallelContext() as ctx:
            ctx.map(square, range(n))
        return sum(ctx.results())

    with mp.ParallelContext() as ctx:
        ctx.map(fan_out, range(6))
    assert ctx.results() == [sum(i * i for i in range(n)) for n in range(6)]


def test_a_failing_group_inside_a_task_fails_that_task(backend: str) -> None:
    @mp.parallel(backend=backend)
    def fan_out() -> None:
        with mp.ParallelContext(backend=backend) as ctx:
            ctx.submit(square, 1)
            ctx.submit(fail, 10)

    with pytest.raises(Boom) as caught:
        fan_out().get(5)
    assert caught.value.code == 10


# -- max_concurrent -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_max_concurrent_bounds_the_tasks_in_flight() -> None:
    mp.configure_thread_pool(4)  # room for more than the bound
    lock = threading.Lock()
    running = 0
    high_water = 0
    pair = threading.Barrier(2)

    def work(i: int) -> int:
        nonlocal running, high_water
        with lock:
            running += 1
            high_water = max(high_water, running)
        try:
            pair.wait(5)  # two at a time meet here: the bound is reached, not undershot
        finally:
            with lock:
                running -= 1
        return i

    with mp.ParallelContext(max_concurrent=2, backend="thread") as ctx:
        ctx.map(work, range(8))
    assert ctx.results() == list(range(8))
    assert high_water == 2


@pytest.mark.timeout(20)
def test_a_submit_waiting_for_a_slot_takes_a_group_timeout_longer_than_a_lock_accepts() -> None:
    mp.configure_thread_pool(2)
    release = threading.Event()
    started = threading.Event()

    def first() -> int:
        started.set()
        assert release.wait(15)
        return 1

    with mp.ParallelContext(timeout=threading.TIMEOUT_MAX * 10, max_concurrent=1, backend="thread") as ctx:
        ctx.submit(first)
        assert started.wait(5)
        threading.Timer(0, release.set).start()  # the slot frees while the next submit waits for it
        ctx.submit(lambda: 2)
    assert ctx.results() == [1, 2]


@pytest.mark.timeout(20)
def test_the_group_timeout_ends_a_submit_waiting_for_a_slot(gate: threading.Event) -> None:
    mp.configure_thread_pool(2)
    started = threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(15)

    with pytest.raises(mp.TaskTimeoutError, match="timed out"):
        with mp.ParallelContext(timeout=0.2, max_concurrent=1, backend="thread") as ctx:
            first = ctx.submit(hold)
            assert started.wait(5)
            ctx.submit(hold)  # no slot until the gate opens: the group's deadline ends the wait
    assert not gate.is_set()
    assert first.cancelled()
    assert len(ctx.handles) == 1


class _OpensWhenWaitedOn:
    """A group's limiter that opens ``gate`` as a submit starts waiting for a slot."""

    def __init__(self, limiter: Any, gate: threading.Event) -> None:
        self._limiter = limiter
        self._gate = gate

    def acquire(self, *args: Any) -> bool:
        self._gate.set()
        return bool(self._limiter.acquire(*args))

    def release(self) -> None:
        self._limiter.release()


@pytest.mark.timeout(20)
def test_a_submit_waiting_for_the_slot_a_failure_frees_is_refused(gate: threading.Event) -> None:
    mp.configure_thread_pool(2)
    late = Recorder()

    def fail_at_the_gate() -> None:
        assert gate.wait(5)
        fail(9)

    with pytest.raises(Boom):
        with mp.ParallelContext(max_concurrent=1, backend="thread") as ctx:
            ctx.submit(fail_at_the_gate)
            ctx._limiter = _OpensWhenWaitedOn(ctx._limiter, gate)  # type: ignore[assignment]
            with pytest.raises(mp.TaskCancelledError, match="ctx.errors"):
                ctx.submit(late)  # the failure frees the only slot: the group has failed by then
    assert not late.ran.is_set()
    assert len(ctx.handles) == 1
    assert isinstance(ctx.errors[0], Boom) and ctx.errors[0].code == 9


@pytest.mark.timeout(20)
def test_a_task_submitted_as_the_group_fails_is_cancelled_with_the_rest(gate: threading.Event) -> None:
    """The group fails while a submit makes its task: after the submit's check, before the group holds the task.

    The failure (here a sibling cancelled from outside, as the new task is
    announced to listeners) cancelled the group's tasks without the new one,
    which then ran after the group had failed.
    """
    blockers = hold_the_pool(gate)
    late = Recorder()
    failure_counted = threading.Event()

    def late_task() -> str:
        return late()

    def fail_the_group_meanwhile(event: mp.TaskEvent) -> None:
        if event.kind == "submitted" and event.name.endswith("late_task"):
            first.cancel()
            assert failure_counted.wait(10), "the group never counted its first task's cancellation"

    mp.add_task_listener(fail_the_group_meanwhile)
    try:
        with pytest.raises(mp.TaskCancelledError):
            with mp.ParallelContext(backend="thread") as ctx:
                first = ctx.submit(Recorder())  # queued behind the blockers
                first.add_done_callback(lambda _: failure_counted.set())  # after the group's own
                ctx.submit(late_task)
    finally:
        mp.remove_task_listener(fail_the_group_meanwhile)
        gate.set()
    assert all(b.wait(5) for b in blockers)
    assert wait_until_idle(5)
    assert not late.ran.is_set(), "a task submitted as the group failed ran after it"
    assert all(handle.cancelled() for handle in ctx.handles)


@pytest.mark.timeout(20)
def test_max_concurrent_makes_submit_wait(gate: threading.Event) -> None:
    mp.configure_thread_pool(4)
    releases = [threading.Event() for _ in range(3)]
    started = [threading.Event() for _ in range(3)]
    submitted = [threading.Event() for _ in range(3)]

    def work(i: int) -> int:
        started[i].set()
        assert releases[i].wait(5)
        return i

    with mp.ParallelContext(max_concurrent=2, backend="thread") as ctx:

        def submitter() -> None:
            for i in range(3):
                ctx.submit(work, i)
                submitted[i].set()

        thread = threading.Thread(target=submitter)
        thread.start()
        try:
            assert started[0].wait(5) and started[1].wait(5)
            assert submitted[1].wait(5)
            # the third submission waits for a free slot (negative check, bounded)
            assert not submitted[2].wait(0.2)
            assert not started[2].is_set()
            releases[0].set()
            assert submitted[2].wait(5) and started[2].wait(5)
        finally:
            for release in releases:
                release.set()
            thread.join(5)
    assert ctx.results() == [0, 1, 2]


# -- max_concurrent and the group's own tasks ---------------------------------------------------


def double(x: int) -> int:
    return 2 * x


NESTED_SUBMITS = ["child", "two_parents_at_a_limit_of_two", "grandchild", "async_parent", "sync_backend", "child_on_a_process"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", NESTED_SUBMITS)
def test_a_task_of_a_group_at_its_limit_submits_into_the_group(way: str) -> None:
    # Every slot is held by a parent that submits into the group and waits for
    # what it submitted: only the parents' own ends could free a slot. Such a
    # submission is admitted over the limit. Before, it waited for good (here
    # until the group's timeout, which then failed the group).
    mp.configure_thread_pool(4)
    parents = 2 if way == "two_parents_at_a_limit_of_two" else 1
    every_slot_held = threading.Barrier(parents)
    backend = {"sync_backend": "sync", "child_on_a_process": "process"}.get(way, "thread")
    parent_backend = "sync" if way == "sync_backend" else "thread"

    with mp.ParallelContext(timeout=30, max_concurrent=parents, backend=backend) as ctx:

        @mp.parallel(backend=parent_backend)
        def grandparent_of_the_child(x: int) -> int:  # a task of the task, not of the group
            return ctx.submit(double, x).get()

        @mp.parallel(backend=parent_backend)
        def parent(x: int) -> int:
            every_slot_held.wait(20)
            if way == "grandchild":
                return grandparent_of_the_child(x).get()
            return ctx.submit(double, x).get()

        async def async_parent(x: int) -> int:
            every_slot_held.wait(20)
            return await ctx.submit(double, x)

        for x in range(parents):
            ctx.submit(async_parent if way == "async_parent" else parent, x + 1)
    assert ctx.results()[:parents] == [2 * (x + 1) for x in range(parents)]
    assert ctx._limiter is not None and ctx._limiter.in_flight == 0  # each task over the limit gave its slot back


@pytest.mark.timeout(30)
def test_a_submission_over_the_limit_is_counted_and_the_others_still_wait(gate: threading.Event) -> None:
    # The parent holds the only slot and its child is admitted over it: two in
    # flight. A submission from the block's code holds no slot of the group:
    # it waits until both have ended.
    mp.configure_thread_pool(4)
    child_started = threading.Event()
    later_submitted = threading.Event()

    def child() -> str:
        child_started.set()
        assert gate.wait(15)
        return "child"

    with mp.ParallelContext(max_concurrent=1, backend="thread") as ctx:
        ctx.submit(lambda: ctx.submit(child).get())

        def submit_later() -> None:
            ctx.submit(lambda: "later")
            later_submitted.set()

        submitter = threading.Thread(target=submit_later)
        submitter.start()
        try:
            assert child_started.wait(10)
            assert ctx._limiter is not None and ctx._limiter.in_flight == 2
            assert not later_submitted.wait(0.2)  # negative check, bounded
        finally:
            gate.set()
            submitter.join(10)
        assert later_submitted.is_set()
    assert ctx.results() == ["child", "child", "later"]
    assert ctx._limiter.in_flight == 0


@pytest.mark.timeout(30)
def test_a_group_opened_inside_a_task_still_bounds_that_task_s_submissions(gate: threading.Event) -> None:
    # The task runs the block: it holds no slot of this group, so its second
    # submission waits for the first task's end, as from outside any task.
    mp.configure_thread_pool(4)
    first_started = threading.Event()
    second_submitted = threading.Event()

    def first() -> str:
        first_started.set()
        assert gate.wait(15)
        return "first"

    @mp.parallel(backend="thread")
    def outer() -> list[str]:
        with mp.ParallelContext(max_concurrent=1, backend="thread") as ctx:
            ctx.submit(first)
            ctx.submit(lambda: "second")
            second_submitted.set()
        return ctx.results()

    handle = outer()
    try:
        assert first_started.wait(10)
        assert not second_submitted.wait(0.2)  # negative check, bounded
    finally:
        gate.set()
    assert handle.get(timeout=10) == ["first", "second"]


# -- bad options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    [
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "timeout"),
        ({"max_concurrent": 0}, ValueError, "max_concurrent"),
        ({"max_concurrent": 1.5}, TypeError, "max_concurrent"),
        ({"backend": "gpu"}, ValueError, "backend"),
    ],
)
def test_bad_group_options(options: dict[str, Any], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        mp.ParallelContext(**options)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("raised_by", ["get", "results"])
def test_a_task_s_failure_the_block_raises_again_is_one_failure(raised_by: str, backend: str) -> None:
    # The body met the task's error and let it out of the block: the same
    # failure, which ctx.errors listed twice.
    with pytest.raises(Boom), mp.ParallelContext(backend=backend) as ctx:
        handle = ctx.submit(fail, 7)
        handle.wait(10)
        handle.get() if raised_by == "get" else ctx.results()
    assert len(ctx.errors) == 1 and isinstance(ctx.errors[0], Boom) and ctx.errors[0].code == 7


@pytest.mark.timeout(30)
def test_a_body_s_own_error_is_listed_beside_the_task_s(backend: str) -> None:
    with pytest.raises(KeyError), mp.ParallelContext(backend=backend) as ctx:
        ctx.submit(fail).wait(10)
        raise KeyError("the body's")
    assert [type(error) for error in ctx.errors] == [Boom, KeyError]


@pytest.fixture
def callbacks_held_after_the_end(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold a worker thread between a task's end and its callbacks; return (ended, let_go).

    A handle reads as ended before its callbacks run: this widens that window
    until the test lets go.
    """
    settle = mp.AsyncHandle._after_settle
    ended, let_go = threading.Event(), threading.Event()
    test_thread = threading.current_thread()

    def held(handle: mp.AsyncHandle[Any], announce: Any) -> None:
        if threading.current_thread() is not test_thread:  # a worker thread that ran a task
            ended.set()
            let_go.wait(15)
        settle(handle, announce)

    monkeypatch.setattr(mp.AsyncHandle, "_after_settle", held)
    yield ended, let_go
    let_go.set()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["block", "results"])
def test_a_failure_whose_callbacks_have_not_run_yet_still_fails_the_group(
    how: str, callbacks_held_after_the_end: tuple[threading.Event, threading.Event]
) -> None:
    # The block's end found the task ended, its callback (the group's count of
    # its end) still to come: it ended without the failure, its slot taken.
    ended, let_go = callbacks_held_after_the_end
    go = threading.Event()

    def fails() -> None:
        assert go.wait(10)
        raise ValueError("not lost")

    try:
        with pytest.raises(ValueError, match="not lost"), mp.ParallelContext(max_concurrent=2, backend="thread") as ctx:
            ctx.submit(fails)
            go.set()
            assert ended.wait(10)
            if how == "results":
                ctx.results()
        assert len(ctx.errors) == 1
        assert ctx._limiter is not None and ctx._limiter.in_flight == 0
    finally:
        let_go.set()
    wait_until_idle(10)
    assert len(ctx.errors) == 1  # the callback, run late, counted nothing again
    assert ctx._limiter.in_flight == 0


@pytest.mark.timeout(30)
def test_a_child_whose_callbacks_have_not_run_yet_has_given_its_slot_back_at_the_block_s_end(
    callbacks_held_after_the_end: tuple[threading.Event, threading.Event],
) -> None:
    # A parent holds the one slot and waits for its child, admitted over the
    # limit; the child's end wakes it before the child's callback gives that
    # slot back. The block's end came first and left it counted.
    ended, let_go = callbacks_held_after_the_end
    mp.configure_thread_pool(4)
    try:
        with mp.ParallelContext(max_concurrent=1, backend="thread") as ctx:
            ctx.submit(lambda: ctx.submit(double, 21).get())
            assert ended.wait(10)
            assert ctx.handles[0].get(10) == 42  # the parent's get() returned meanwhile
        assert ctx._limiter is not None and ctx._limiter.in_flight == 0
    finally:
        let_go.set()
    wait_until_idle(10)
    assert ctx._limiter.in_flight == 0 and ctx.results() == [42, 42]


def _read_once(shared: cf.Future[None], both_submitted: threading.Barrier) -> None:
    """Read ``shared`` once both tasks run and were submitted: each raises its one exception object.

    Neither ends before the other started (a worker that settles a task claims
    a queued one, here held with it), nor before its submit added the group's
    callback (added to a task ended, it runs at once, on the test's thread).
    """
    both_submitted.wait(10)
    shared.result()


def _two_tasks_reading_one_failed_future(
    ctx: mp.ParallelContext,
) -> tuple[cf.Future[None], mp.AsyncHandle[None], mp.AsyncHandle[None]]:
    """Submit two ``_read_once`` tasks of one failed future to ``ctx``: the future and their handles, both ended.

    The test meets the tasks at their barrier, so both were submitted before
    either read the future.
    """
    shared: cf.Future[None] = cf.Future()
    shared.set_exception(ConnectionError("the database is gone"))
    both_submitted = threading.Barrier(3)
    first, second = (ctx.submit(_read_once, shared, both_submitted) for _ in range(2))
    both_submitted.wait(10)
    assert wait_until(lambda: first.done() and second.done())  # (waiters are woken after the callbacks)
    return shared, first, second


@pytest.mark.timeout(30)
def test_two_tasks_that_fail_with_one_error_object_are_two_failures(
    callbacks_held_after_the_end: tuple[threading.Event, threading.Event],
) -> None:
    # Both tasks read one failed future: each raises the same exception object.
    # A failure recorded already was taken for the block raising it again, and
    # the second task's failure was not listed. (Its callbacks held, neither end
    # is counted, nor the other task cancelled, before the block's end.)
    _, let_go = callbacks_held_after_the_end
    mp.configure_thread_pool(4)
    try:
        with pytest.raises(ConnectionError), mp.ParallelContext(backend="thread") as ctx:
            shared, first, second = _two_tasks_reading_one_failed_future(ctx)
        assert [first.exception(), second.exception()] == [shared.exception()] * 2
        assert len(ctx.errors) == 2 and all(error is shared.exception() for error in ctx.errors)
    finally:
        let_go.set()
    wait_until_idle(10)
    assert len(ctx.errors) == 2  # the callbacks, run late, counted nothing again


@pytest.mark.timeout(30)
def test_a_shared_error_the_block_raises_first_is_the_task_s_failure_once(
    callbacks_held_after_the_end: tuple[threading.Event, threading.Event],
) -> None:
    # The body raises the task's error before the group counted the task's end
    # (its callbacks held): one failure, and the other task's, the same object, a second.
    _, let_go = callbacks_held_after_the_end
    mp.configure_thread_pool(4)
    try:
        with pytest.raises(ConnectionError), mp.ParallelContext(backend="thread") as ctx:
            shared, first, _ = _two_tasks_reading_one_failed_future(ctx)
            first.get(10)
        assert len(ctx.errors) == 2 and all(error is shared.exception() for error in ctx.errors)
    finally:
        let_go.set()
    wait_until_idle(10)
    assert len(ctx.errors) == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("in_a_task", [False, True], ids=["outside_a_task", "in_a_task"])
def test_the_block_end_tries_to_run_inline_only_the_tasks_still_queued(
    in_a_task: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The block's end runs a queued task of the group itself (cancelled with
    # the task it runs in); one that ended, or runs on a worker, has nothing to
    # run there. Asked for every task, a group of 20,000 no-ops took 0.5 us
    # more per task to end (about 9%): one call each, a listing in a task.
    tried: list[mp.AsyncHandle[Any]] = []
    run_owned = mp.AsyncHandle._run_owned_here_if_queued

    def counted(handle: mp.AsyncHandle[Any]) -> bool:
        tried.append(handle)
        return run_owned(handle)

    monkeypatch.setattr(mp.AsyncHandle, "_run_owned_here_if_queued", counted)

    def group_of_ended_tasks() -> list[int]:
        with mp.ParallelContext(backend="thread") as ctx:
            for i in range(5):
                assert ctx.submit(int, i).wait(10)
        return ctx.results()

    if in_a_task:
        results = mp.parallel(backend="thread")(group_of_ended_tasks)().get(timeout=30)
    else:
        results = group_of_ended_tasks()
    assert results == [0, 1, 2, 3, 4]
    assert tried == [], f"the block's end tried to run {len(tried)} ended task(s) inline"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("tasks", "says"), [(1, "no task of it was left unfinished"), (2, "its 1 unfinished task(s)")])
def test_a_group_timeout_counts_only_the_tasks_it_cancelled(
    tasks: int, says: str, gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The timeout counted the unfinished tasks, then cancelled them: the first task
    # ended in between, and was reported cancelled ("its 0 unfinished task(s) were
    # cancelled" once it was the last). The first task's end is held until then.
    first_gate, rest_gate = threading.Event(), gate
    cancel_unfinished = mp.ParallelContext._cancel_unfinished
    ended_first: list[mp.AsyncHandle[Any]] = []

    def first_ends_then_cancel(ctx: mp.ParallelContext) -> Any:
        first_gate.set()
        assert ctx.handles[0].wait(20), "the first task did not end"
        ended_first.append(ctx.handles[0])
        return cancel_unfinished(ctx)

    monkeypatch.setattr(mp.ParallelContext, "_cancel_unfinished", first_ends_then_cancel)
    with pytest.raises(mp.TaskTimeoutError) as caught, mp.ParallelContext(timeout=0.05, backend="thread") as ctx:
        ctx.submit(first_gate.wait, 20)
        for _ in range(tasks - 1):
            ctx.submit(rest_gate.wait, 20)
    message = str(caught.value)
    assert message.startswith("the group timed out after 0.05 s; ") and says in message, message
    assert ended_first and ctx.handles[0].get(0) is True  # ended by itself, not cancelled
    assert all(handle.cancelled() for handle in ctx.handles[1:])


@pytest.mark.timeout(30)
def test_a_group_timeout_met_on_another_thread_is_raised_by_the_block_with_its_own_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another thread's submit, waiting for the one slot, meets the timeout; the task
    # holding the slot ends by itself just then, and the block ends. The block raises
    # the timeout that thread met, with the count of tasks it cancelled (none), once
    # that count is known: the block is seen waiting for it before the cancel ends.
    release, giver_times_out, block_waits = threading.Event(), threading.Event(), threading.Event()
    cancel_unfinished = mp.ParallelContext._cancel_unfinished
    given: list[BaseException] = []

    def held_ends_then_cancel(ctx: mp.ParallelContext) -> Any:
        if threading.current_thread() is threading.main_thread():  # the block met it first
            block_waits.set()
            return cancel_unfinished(ctx)
        release.set()
        assert ctx.handles[0].wait(20), "the task holding the slot did not end"
        giver_times_out.set()  # the body ends now
        try:
            return cancel_unfinished(ctx)
        finally:
            assert block_waits.wait(20), "the block never waited for the timeout's message"

    class Watched(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            if threading.current_thread() is threading.main_thread() and getattr(ctx, "_timing_out", False):
                block_waits.set()
            return super().wait(timeout)

    def give(ctx: mp.ParallelContext) -> None:
        try:
            ctx.submit(add, 1)
        except BaseException as error:  # noqa: BLE001  # (told below, in the test's thread)
            given.append(error)

    monkeypatch.setattr(mp.ParallelContext, "_cancel_unfinished", held_ends_then_cancel)
    giver: threading.Thread | None = None
    try:
        with pytest.raises(mp.TaskTimeoutError) as caught, mp.ParallelContext(timeout=0.2, max_concurrent=1) as ctx:
            ctx._made = Watched(ctx._lock)
            held = ctx.submit(release.wait, 20)
            giver = threading.Thread(target=give, args=(ctx,))
            giver.start()
            assert giver_times_out.wait(20), "the other thread's submit never met the timeout"
    finally:
        block_waits.set()
        release.set()
        if giver is not None:
            giver.join(30)
    assert held.get(0) is True
    message = str(caught.value)
    assert "no task of it was left unfinished" in message, message
    assert len(given) == 1 and str(given[0]) == message, given


@pytest.mark.timeout(30)
def test_a_ctrl_c_just_after_the_first_wait_meets_the_group_timeout_leaves_no_other_wait_hung(
    gate: threading.Event,
) -> None:
    # The block's end met the deadline first and marked the group as timing out; a
    # Ctrl-C noted meanwhile is raised as the mark's lock is let go, before the
    # cancel. Another thread's submit, waiting for a slot, met the deadline too and
    # waited for the timeout's message, which the interrupted wait never made: it
    # waited for good. Here the Ctrl-C is raised as that lock is let go.
    time_out = mp.ParallelContext._time_out.__code__
    other_waits, block_marked = threading.Event(), threading.Event()
    interrupted: list[bool] = []
    given: list[BaseException] = []

    class CtrlCAsLetGo:
        def __init__(self) -> None:
            self._lock = threading.Lock()

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            return self._lock.acquire(blocking, timeout)

        def release(self) -> None:
            self._lock.release()

        def __enter__(self) -> bool:
            if sys._getframe(1).f_code is time_out and threading.current_thread() is not threading.main_thread():
                block_marked.wait(20)  # the block's end meets the deadline first (else either may)
            return self.acquire()

        def __exit__(self, *exc_info: object) -> None:
            self.release()
            caller = sys._getframe(1)
            on_main = threading.current_thread() is threading.main_thread()
            # The block's end marked the group first: it raises the Ctrl-C as it lets the lock go.
            if caller.f_code is time_out and on_main and not interrupted and caller.f_locals.get("first"):
                interrupted.append(True)
                block_marked.set()
                assert other_waits.wait(20), "the other thread's submit never met the timeout"
                raise KeyboardInterrupt

    class Watched(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            if threading.current_thread() is not threading.main_thread():
                other_waits.set()
            return super().wait(timeout)

    def give(ctx: mp.ParallelContext) -> None:
        try:
            ctx.submit(add, 1)
        except BaseException as error:  # noqa: BLE001  # (told below, in the test's thread)
            given.append(error)
        finally:
            other_waits.set()  # it met the deadline first, or was refused: nothing to wait for

    giver: threading.Thread | None = None
    ctx = mp.ParallelContext(timeout=0.2, max_concurrent=1, backend="thread")
    ctx._lock = CtrlCAsLetGo()  # type: ignore[assignment]
    ctx._made = Watched(ctx._lock)  # type: ignore[arg-type]
    try:
        with pytest.raises(KeyboardInterrupt), ctx:
            ctx.submit(gate.wait, 20)
            giver = threading.Thread(target=give, args=(ctx,), daemon=True)
            giver.start()
            wait_until(lambda: bool(ctx._slot_waits))
    finally:
        block_marked.set()
        gate.set()
        if giver is not None:
            giver.join(10)
    assert interrupted, "the block's end did not meet the timeout first"
    assert giver is not None and not giver.is_alive(), "the other thread's submit waited for good"
    assert len(given) == 1 and isinstance(given[0], (mp.TaskTimeoutError, mp.TaskCancelledError)), given
